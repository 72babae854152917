//! Crash safety: `certrotd renew` is killed (abort) at every failpoint of a rotation in turn,
//! each occurrence separately; then `certrotd recover` must leave that rotation's files all-old or
//! all-new (byte for byte, as its journal and the snapshot taken before say), the node's PKI whole
//! (every key matches its certificate, openssl verifies every chain, no temp file anywhere), and
//! `certrotd renew` must work again. Crashes inside recovery, rollback and restore are covered
//! too, and every failpoint in `certrotd::failpoint::Failpoint::ROTATION` must have fired.
//!
//! Needs the `failpoints` feature (`cargo test --features failpoints`; `make test` passes it).
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).

#[cfg(not(feature = "failpoints"))]
#[test]
fn crash_tests_need_the_failpoints_feature() {
    panic!(
        "tests/node_tests/crash.rs injects crashes through failpoints, which this build lacks: \
         run `cargo test --features failpoints` (make test does)"
    );
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::os::unix::process::ExitStatusExt as _;
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use certrotd::failpoint::{ENV, Failpoint, TRACE_ENV};
    use certrotd::pki::encode::KeySpec;
    use certrotd::pki::layout::Layout;
    use certrotd::rotation::journal::{Change, Journal, Phase};
    use certrotd::sandbox::SandboxOptions;
    use certrotd::store::sha256_hex;

    use crate::support::renewal::*;

    type Snapshot = BTreeMap<PathBuf, Held>;

    /// The failpoints that fired (the process died there).
    static FIRED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

    /// An ECDSA node: the crash cases are about the state machine, and ECDSA keys are instant (the
    /// kubelet's serving certificate stays RSA, so RSA still goes through every step).
    fn template() -> Node {
        Node::sandbox(&SandboxOptions {
            key: KeySpec::EcdsaP256,
            ..SandboxOptions::default()
        })
    }

    const RENEW_ALL: &[&str] = &["--type", "all"];

    /// Runs a command with the failpoint trace on and returns the failpoints reached, in order.
    fn trace(node: &Node, cmd: &str, args: &[&str], env: &[(&str, &str)]) -> (Run, Vec<String>) {
        let file = node.tmp.path().join(format!("trace-{}", rand_suffix()));
        let mut env: Vec<(&str, &str)> = env.to_vec();
        let path = file.to_str().unwrap().to_owned();
        env.push((TRACE_ENV, &path));
        let run = node.run_env(cmd, args, &env);
        let hits = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        (run, hits)
    }

    fn rand_suffix() -> usize {
        static N: AtomicUsize = AtomicUsize::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    /// Each (failpoint, occurrence) of a trace, in order.
    fn occurrences(hits: &[String]) -> Vec<(String, u32)> {
        let mut seen: HashMap<&str, u32> = HashMap::new();
        hits.iter()
            .map(|h| {
                let n = seen.entry(h).or_insert(0);
                *n += 1;
                (h.clone(), *n)
            })
            .collect()
    }

    fn name_of(point: &str) -> &'static str {
        Failpoint::ROTATION
            .iter()
            .map(|p| p.name())
            .find(|n| *n == point)
            .unwrap_or_else(|| panic!("unknown failpoint {point}"))
    }

    /// Runs a command that must die at `point:n`, and records that it did.
    fn crash(node: &Node, cmd: &str, args: &[&str], point: &str, n: u32) {
        let spec = format!("{point}:{n}");
        let run = node.run_env(cmd, args, &[(ENV, &spec)]);
        assert_eq!(
            run.status.signal(),
            Some(6),
            "{cmd} should have aborted at {spec}:\n{}",
            run.text()
        );
        assert!(
            run.stderr.contains(&format!("failpoint {spec} reached")),
            "{}",
            run.text()
        );
        FIRED.lock().unwrap().insert(name_of(point));
    }

    /// After recovery the rotation is final and its files are all-old or all-new; the node's PKI
    /// is whole and the staged keys are gone. Returns the phase it ended in.
    fn judge(node: &Node, before: &Snapshot, id: &str, what: &str) -> Phase {
        let dir = node.state().join("rotations").join(id);
        let j = Journal::load(&dir).unwrap().expect("journal");
        let now = snapshot(&node.root);
        match j.phase {
            Phase::RolledBack => {
                let diff: Vec<&PathBuf> = before
                    .keys()
                    .chain(now.keys())
                    .filter(|k| before.get(*k) != now.get(*k))
                    .collect();
                assert!(diff.is_empty(), "{what}: rolled back but changed: {diff:?}");
            }
            Phase::Committed => {
                assert!(!j.changes.is_empty(), "{what}");
                let mut touched = BTreeSet::new();
                for c in &j.changes {
                    let rel = c.path().strip_prefix(&node.root).unwrap().to_owned();
                    match (c, now.get(&rel)) {
                        (Change::File { sha256, .. }, Some(Held::File(data, _))) => {
                            assert_eq!(
                                &sha256_hex(data),
                                sha256,
                                "{what}: {} is not new",
                                rel.display()
                            );
                        }
                        (Change::Symlink { target, .. }, Some(Held::Link(t))) => {
                            assert_eq!(t, target, "{what}: {} not swapped", rel.display());
                        }
                        (_, held) => panic!("{what}: {} holds {held:?}", rel.display()),
                    }
                    assert_ne!(
                        before.get(&rel),
                        now.get(&rel),
                        "{what}: {} unchanged",
                        rel.display()
                    );
                    touched.insert(rel);
                }
                for (k, v) in &now {
                    if !touched.contains(k) {
                        assert_eq!(before.get(k), Some(v), "{what}: {} changed", k.display());
                    }
                }
                for k in before.keys() {
                    assert!(now.contains_key(k), "{what}: {} vanished", k.display());
                }
            }
            other => panic!("{what}: recovery left the rotation {other:?}"),
        }
        assert!(
            !dir.join("staged").exists(),
            "{what}: staged keys left behind"
        );
        assert_consistent(&node.root, Some(vec![Layout::Kubeadm]), &[]);
        j.phase
    }

    /// Runs `jobs` on every core (each case works on its own copy of the node).
    fn parallel<T: Sync>(jobs: &[T], f: impl Fn(&T) + Sync) {
        let next = AtomicUsize::new(0);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        f(job);
                    }
                });
            }
        });
    }

    /// A crash at every occurrence of every failpoint of `renew --type all`.
    fn crash_at_every_step_of_renew() {
        let base = template();
        let (run, hits) = trace(&base.copy(), "renew", RENEW_ALL, &[]);
        run.ok();
        let cases = occurrences(&hits);
        let renew_points: BTreeSet<&str> = cases.iter().map(|(p, _)| name_of(p)).collect();
        for p in [
            Failpoint::JournalPlanned,
            Failpoint::BackupSaved,
            Failpoint::StagedFile,
            Failpoint::Installed,
            Failpoint::InstalledVerified,
            Failpoint::Pruned,
        ] {
            assert!(
                renew_points.contains(p.name()),
                "renew never reached {}",
                p.name()
            );
        }
        let outcomes: Mutex<BTreeMap<&'static str, usize>> = Mutex::new(BTreeMap::new());
        parallel(&cases, |(point, n)| {
            let what = format!("crash at {point}:{n}");
            let node = base.copy();
            let before = snapshot(&node.root);
            crash(&node, "renew", RENEW_ALL, point, *n);
            let ids = node.rotations();
            assert_eq!(ids.len(), 1, "{what}: {ids:?}");

            node.run("recover", &[]).ok();
            let phase = judge(&node, &before, &ids[0], &what);
            *outcomes.lock().unwrap().entry(phase.as_str()).or_default() += 1;

            // And the node renews again.
            node.run("renew", RENEW_ALL).ok();
            assert_consistent(&node.root, Some(vec![Layout::Kubeadm]), &[]);
        });
        let outcomes = outcomes.into_inner().unwrap();
        // Crashes before installing roll back; from staged on, they roll forward.
        assert!(outcomes.get("rolled-back") > Some(&0), "{outcomes:?}");
        assert!(outcomes.get("committed") > Some(&0), "{outcomes:?}");
        assert_eq!(outcomes.values().sum::<usize>(), cases.len());
    }

    /// A failure (not a crash) at every occurrence of every failpoint of `renew --type all`: the
    /// run itself abandons or rolls back, or, once committed, only leaves tidying to the next start.
    fn error_at_every_step_of_renew() {
        let base = template();
        let (run, hits) = trace(&base.copy(), "renew", RENEW_ALL, &[]);
        run.ok();
        let cases = occurrences(&hits);
        let after_commit = [
            Failpoint::JournalCommitted.name(),
            Failpoint::StagedRemoved.name(),
            Failpoint::Pruned.name(),
        ];
        parallel(&cases, |(point, n)| {
            let what = format!("error at {point}:{n}");
            let node = base.copy();
            let before = snapshot(&node.root);
            let spec = format!("{point}:{n}:error");
            let run = node.run_env("renew", RENEW_ALL, &[(ENV, &spec)]);
            assert!(
                run.stderr
                    .contains(&format!("failpoint {point}:{n} reached, failing")),
                "{what}: {}",
                run.text()
            );
            let id = node.rotations()[0].clone();
            let j = Journal::load(&node.state().join("rotations").join(&id))
                .unwrap()
                .unwrap();
            if after_commit.contains(&point.as_str()) {
                assert!(run.status.success(), "{what}: {}", run.text());
                assert!(
                    run.stdout.contains("cleaning up after the commit failed"),
                    "{what}"
                );
                assert_eq!(j.phase, Phase::Committed, "{what}");
            } else {
                run.code(1);
                assert!(
                    run.stderr.contains("rolled back, nothing changed"),
                    "{what}: {}",
                    run.text()
                );
                assert_eq!(j.phase, Phase::RolledBack, "{what}");
                // Rolled back in the same run: the node is as it was before any recovery.
                assert_eq!(snapshot(&node.root), before, "{what}");
            }
            node.run("recover", &[]).ok();
            judge(&node, &before, &id, &what);
        });
    }

    /// `renew` recovers before it plans.
    fn renew_itself_recovers_an_interrupted_rotation_first() {
        let node = template();
        crash(&node, "renew", RENEW_ALL, Failpoint::Installed.name(), 5);
        let first = node.rotations()[0].clone();
        let out = node.run("renew", &["--cert", "apiserver"]);
        assert!(
            out.ok().contains(&format!(
                "recovered rotation {first}: was interrupted while installing; finished from its staged files"
            )),
            "{}",
            out.text()
        );
        assert_consistent(&node.root, Some(vec![Layout::Kubeadm]), &[]);
        assert_eq!(node.rotations().len(), 2);
    }

    /// A copy of `base` left with an unfinished rotation by a crash at `installed:7`, and that
    /// rotation's id. (A node is copied before the crash, never after: journals and backups hold
    /// real paths, which would still point into the original.)
    fn interrupted(base: &Node) -> (Node, String) {
        let node = base.copy();
        crash(&node, "renew", RENEW_ALL, Failpoint::Installed.name(), 7);
        let id = node.rotations()[0].clone();
        (node, id)
    }

    /// A crash at every step of a roll-forward.
    fn crash_inside_recovery() {
        let base = template();
        let (node, _) = interrupted(&base);
        // A copy of a node with an unfinished rotation must not be recovered into the original.
        let copy = node.copy();
        let before = snapshot(&node.root);
        let r = copy.run("recover", &[]);
        r.code(1);
        assert!(r.stderr.contains("outside the node root"), "{}", r.text());
        assert_eq!(snapshot(&node.root), before);
        let (run, hits) = trace(&node, "recover", &[], &[]);
        run.ok();
        let cases = occurrences(&hits);
        assert!(
            cases
                .iter()
                .any(|(p, _)| p == Failpoint::RollForwardInstalled.name()),
            "{cases:?}"
        );
        parallel(&cases, |(point, n)| {
            let what = format!("crash in recovery at {point}:{n}");
            let before = snapshot(&base.root);
            let (node, id) = interrupted(&base);
            crash(&node, "recover", &[], point, *n);
            node.run("recover", &[]).ok();
            assert_eq!(
                judge(&node, &before, &id, &what),
                Phase::Committed,
                "{what}"
            );
        });
    }

    /// Like [`interrupted`], with one staged file gone bad (disk error, tampering), so that
    /// rolling forward is impossible.
    fn corrupted(base: &Node) -> (Node, String) {
        let (node, id) = interrupted(base);
        let staged = node.state().join("rotations").join(&id).join("staged");
        let victim = std::fs::read_dir(&staged)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&victim, b"garbage").unwrap();
        (node, id)
    }

    /// Staged contents that fail their digest are restored from the backup, through crashes.
    fn corrupt_staged_contents_roll_back_even_through_crashes() {
        let base = template();
        let before = snapshot(&base.root);
        let (node, id) = corrupted(&base);
        let (run, hits) = trace(&node, "recover", &[], &[]);
        assert!(
            run.ok().contains("rolled back from its backup"),
            "{}",
            run.text()
        );
        assert_eq!(
            judge(&node, &before, &id, "corrupt staged"),
            Phase::RolledBack
        );
        let cases = occurrences(&hits);
        for p in [Failpoint::JournalRollingBack, Failpoint::Restored] {
            assert!(cases.iter().any(|(c, _)| c == p.name()), "{cases:?}");
        }
        parallel(&cases, |(point, n)| {
            let what = format!("crash in rollback at {point}:{n}");
            let (node, id) = corrupted(&base);
            crash(&node, "recover", &[], point, *n);
            node.run("recover", &[]).ok();
            assert_eq!(
                judge(&node, &before, &id, &what),
                Phase::RolledBack,
                "{what}"
            );
        });
    }

    /// A copy of `base` with one committed rotation of everything, and its id.
    fn renewed(base: &Node) -> (Node, String) {
        let node = base.copy();
        let out = node.run("renew", RENEW_ALL);
        let id = out
            .ok()
            .lines()
            .find_map(|l| {
                l.strip_prefix("rotation ")?
                    .split_once(" committed")
                    .map(|(i, _)| i.to_owned())
            })
            .unwrap();
        (node, id)
    }

    /// `restore` crashed at every step is finished by the next start.
    fn crash_inside_restore() {
        let base = template();
        let before = snapshot(&base.root);
        let (node, id) = renewed(&base);
        let (run, hits) = trace(&node, "restore", &[&id], &[]);
        run.ok();
        assert_eq!(judge(&node, &before, &id, "restore"), Phase::RolledBack);
        let cases = occurrences(&hits);
        assert!(!cases.is_empty());
        parallel(&cases, |(point, n)| {
            let what = format!("crash in restore at {point}:{n}");
            let (node, id) = renewed(&base);
            crash(&node, "restore", &[&id], point, *n);
            node.run("recover", &[]).ok();
            assert_eq!(
                judge(&node, &before, &id, &what),
                Phase::RolledBack,
                "{what}"
            );
        });
    }

    fn rotation_dir(node: &Node, id: &str) -> PathBuf {
        node.state().join("rotations").join(id)
    }

    fn journal_of(node: &Node, id: &str) -> Journal {
        Journal::load(&rotation_dir(node, id)).unwrap().unwrap()
    }

    /// Writes a rotation directory holding `journal` as its journal text.
    fn plant(node: &Node, id: &str, journal: &str) {
        let dir = rotation_dir(node, id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("journal.json"), journal).unwrap();
    }

    /// A journal that cannot be read, one of an unknown version and one naming another node's
    /// files are each quarantined (moved whole, nothing they name touched), and the genuine
    /// interrupted rotation next to them is still finished; the next recovery has nothing to do.
    #[test]
    fn untrusted_journals_are_quarantined_and_the_others_still_recovered() {
        let base = template();
        let before = snapshot(&base.root);
        let (node, id) = interrupted(&base);
        let good = std::fs::read_to_string(rotation_dir(&node, &id).join("journal.json")).unwrap();
        assert!(good.contains("\"version\": 1,"), "{good}");
        plant(&node, "00-corrupt", "{\"version\": 1, \"id\": ");
        plant(
            &node,
            "00-version",
            &good
                .replace(&id, "00-version")
                .replace("\"version\": 1,", "\"version\": 99,"),
        );
        // Every path of this one leads into another node (the one it was copied from).
        let other = node.root.to_str().unwrap();
        plant(
            &node,
            "00-outside",
            &good
                .replace(&id, "00-outside")
                .replace(other, base.root.to_str().unwrap()),
        );

        let r = node.run("recover", &[]);
        r.code(1);
        for (bad, why) in [
            ("00-corrupt", "rotation journal"),
            ("00-version", "unknown journal version 99"),
            ("00-outside", "outside the node root"),
        ] {
            let line = r
                .stderr
                .lines()
                .find(|l| l.starts_with(&format!("rotation {bad} quarantined")))
                .unwrap_or_else(|| panic!("{bad} not quarantined:\n{}", r.text()));
            assert!(line.contains(why), "{line}");
            let moved = node.state().join("quarantine").join(bad);
            assert!(moved.join("journal.json").is_file(), "{bad}");
        }
        assert!(
            r.stdout.contains(&format!(
                "recovered rotation {id}: was interrupted while installing; finished from its staged files"
            )),
            "{}",
            r.text()
        );
        assert_eq!(
            judge(&node, &before, &id, "next to bad journals"),
            Phase::Committed
        );
        assert_eq!(
            snapshot(&base.root),
            before,
            "another node's files were touched"
        );
        assert_eq!(node.rotations(), std::slice::from_ref(&id));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(node.state().join("quarantine"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);

        let again = node.run("recover", &[]);
        assert!(
            again.ok().contains("nothing to recover"),
            "{}",
            again.text()
        );
        // And the node rotates again.
        node.run("renew", RENEW_ALL).ok();
        assert_consistent(&node.root, Some(vec![Layout::Kubeadm]), &[]);
    }

    /// A rotation whose journal is sound but whose recovery fails (it is rolling back and its
    /// backup is gone) is reported and stays open, listed by `journal::open` so the daemon keeps
    /// its certificates due; the rotation next to it is recovered all the same.
    #[test]
    fn a_rotation_that_cannot_be_recovered_stays_open_and_the_others_go_on() {
        let base = template();
        let before = snapshot(&base.root);
        let (node, id) = interrupted(&base);
        let good = std::fs::read_to_string(rotation_dir(&node, &id).join("journal.json")).unwrap();
        plant(
            &node,
            "00-nobackup",
            &good
                .replace(&id, "00-nobackup")
                .replace("\"phase\": \"installing\"", "\"phase\": \"rolling-back\""),
        );
        let r = node.run("recover", &[]);
        r.code(1);
        assert!(
            r.stderr.contains("rotation 00-nobackup: recovery failed: ")
                && r.stderr.contains("it stays open"),
            "{}",
            r.text()
        );
        assert_eq!(
            judge(&node, &before, &id, "next to a failing one"),
            Phase::Committed
        );
        let state = certrotd::rotation::StateDirs { dir: node.state() };
        let open = certrotd::rotation::journal::open(&state);
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(open[0].id, "00-nobackup");
        assert_eq!(open[0].phase, Phase::RollingBack);
        // `renew` does not start another rotation while one is open.
        let r = node.run("renew", &["--cert", "apiserver"]);
        r.code(1);
        assert!(r.stderr.contains("still unfinished"), "{}", r.text());
    }

    /// A copy of `base` whose rotation a crash stopped right after the journal said staged.
    fn staged(base: &Node) -> (Node, String) {
        let node = base.copy();
        crash(
            &node,
            "renew",
            RENEW_ALL,
            Failpoint::JournalStaged.name(),
            1,
        );
        let id = node.rotations()[0].clone();
        (node, id)
    }

    fn first_file(j: &Journal, ext: &str) -> PathBuf {
        j.changes
            .iter()
            .find_map(|c| match c {
                Change::File { path, .. } if path.extension().is_some_and(|e| e == ext) => {
                    Some(path.clone())
                }
                _ => None,
            })
            .unwrap()
    }

    /// Before a recovered rotation rolls forward, every file it has not installed must still
    /// hold what was backed up, and what it staged must still pass its checks; otherwise a staged
    /// rotation is abandoned and an installing one restored, naming the file.
    #[test]
    fn a_recovered_rotation_is_rechecked_before_it_rolls_forward() {
        let base = template();
        let before = snapshot(&base.root);

        // Staged, then someone else wrote one of its files.
        let (node, id) = staged(&base);
        let victim = first_file(&journal_of(&node, &id), "crt");
        let rel = victim.strip_prefix(&node.root).unwrap().to_owned();
        std::fs::write(&victim, b"written by someone else\n").unwrap();
        let r = node.run("recover", &[]);
        let out = r.ok();
        assert!(
            out.contains(&format!(
                "recovered rotation {id}: was interrupted before installing anything; abandoned"
            )),
            "{out}"
        );
        let warning = format!("{} changed since it was backed up", victim.display());
        assert!(out.contains(&warning), "{out}");
        let j = journal_of(&node, &id);
        assert_eq!(j.phase, Phase::RolledBack);
        assert!(!j.installed_anything());
        assert!(j.outcome.unwrap().to_string().contains(&warning));
        let mut expected = before.clone();
        let Some(Held::File(_, mode)) = before.get(&rel) else {
            panic!("{rel:?}")
        };
        expected.insert(
            rel,
            Held::File(b"written by someone else\n".to_vec(), *mode),
        );
        assert_eq!(snapshot(&node.root), expected);
        assert!(!rotation_dir(&node, &id).join("staged").exists());
        assert!(
            !node.state().join("backups").join(&id).exists(),
            "an abandoned rotation kept its backup (old private keys)"
        );

        // Staged, with a key whose digest the journal agrees with but that belongs to no staged
        // certificate (a disk that returned another file, tampering).
        let (node, id) = staged(&base);
        let dir = rotation_dir(&node, &id);
        let mut j = journal_of(&node, &id);
        let stranger = std::fs::read(node.path("/etc/kubernetes/pki/sa.key")).unwrap();
        let key_path = first_file(&j, "key");
        for c in &mut j.changes {
            if let Change::File {
                path,
                staged,
                sha256,
                ..
            } = c
                && *path == key_path
            {
                std::fs::write(dir.join("staged").join(&*staged), &stranger).unwrap();
                *sha256 = sha256_hex(&stranger);
            }
        }
        j.save(&dir).unwrap();
        let out = node.run("recover", &[]);
        let out = out.ok();
        assert!(out.contains("abandoned"), "{out}");
        assert!(
            out.contains(&key_path.display().to_string())
                && out.contains("belongs to none of the staged certificates"),
            "{out}"
        );
        assert_eq!(snapshot(&node.root), before);

        // Installing, and a file it had not reached yet was written meanwhile: restored, with
        // that file kept aside.
        let (node, id) = interrupted(&base);
        let j = journal_of(&node, &id);
        let victim = j
            .changes
            .iter()
            .find_map(|c| match c {
                Change::File { path, sha256, .. }
                    if sha256_hex(&std::fs::read(path).unwrap()) != *sha256 =>
                {
                    Some(path.clone())
                }
                _ => None,
            })
            .expect("a file not installed yet");
        std::fs::write(&victim, b"written by someone else\n").unwrap();
        let out = node.run("recover", &[]);
        let out = out.ok();
        assert!(out.contains("rolled back from its backup"), "{out}");
        assert!(out.contains("kept as"), "{out}");
        assert_eq!(
            judge(&node, &before, &id, "changed while installing"),
            Phase::RolledBack
        );
        let displaced: Vec<Vec<u8>> = std::fs::read_dir(rotation_dir(&node, &id).join("displaced"))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(displaced, [b"written by someone else\n".to_vec()]);
    }

    /// Fifty failed attempts after a committed rotation: none leaves a backup (they hold the
    /// node's private keys) or piles up journals, and the committed rotation's backup, the only
    /// way back from it, survives them and the pruning of the next rotation that commits.
    #[test]
    fn failed_attempts_leave_no_backup_and_never_evict_a_committed_one() {
        let node = template();
        let backups = |node: &Node| -> Vec<String> {
            let mut ids: Vec<String> = std::fs::read_dir(node.state().join("backups"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            ids.sort();
            ids
        };
        node.run("renew", &["--cert", "apiserver"]).ok();
        let committed = node.rotations();
        assert_eq!(committed.len(), 1);
        assert_eq!(backups(&node), committed);
        let before = snapshot(&node.root);
        let fail = format!("{}:1:error", Failpoint::StagedFile.name());
        for attempt in 0..50 {
            let r = node.run_env("renew", &["--cert", "apiserver"], &[(ENV, &fail)]);
            r.code(1);
            assert!(
                r.stderr.contains("rolled back, nothing changed"),
                "attempt {attempt}: {}",
                r.text()
            );
        }
        assert_eq!(snapshot(&node.root), before);
        assert_eq!(backups(&node), committed, "abandoned attempts left backups");
        let journals = node.rotations();
        assert!(journals.len() <= 2, "journals pile up: {journals:?}");
        assert!(journals.contains(&committed[0]));

        node.run("renew", &["--cert", "apiserver"]).ok();
        let after = backups(&node);
        assert_eq!(after.len(), 2, "{after:?}");
        assert!(after.contains(&committed[0]));
    }

    /// One test runs every scenario in turn (each spreads its cases over the cores) and then
    /// checks that every failpoint fired: a failpoint added without a way to reach it fails here.
    #[test]
    fn every_failpoint_crashes_and_recovers() {
        crash_at_every_step_of_renew();
        error_at_every_step_of_renew();
        renew_itself_recovers_an_interrupted_rotation_first();
        crash_inside_recovery();
        corrupt_staged_contents_roll_back_even_through_crashes();
        crash_inside_restore();
        let fired = FIRED.lock().unwrap().clone();
        let all: BTreeSet<&str> = Failpoint::ROTATION.iter().map(|p| p.name()).collect();
        let missing: Vec<&&str> = all.difference(&fired).collect();
        assert!(missing.is_empty(), "never crashed at {missing:?}");
    }
}
