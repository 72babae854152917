//! Crash safety: `certrotd renew` is killed (abort) at every failpoint of a rotation in turn,
//! each occurrence separately; then `certrotd recover` must leave that rotation's files all-old or
//! all-new (byte for byte, as its journal and the snapshot taken before say), the node's PKI whole
//! (every key matches its certificate, openssl verifies every chain, no temp file anywhere), and
//! `certrotd renew` must work again. Crashes inside recovery, rollback and restore are covered
//! too, and every failpoint in `certrotd::failpoint::Failpoint::ALL` must have fired.
//!
//! Needs the `failpoints` feature (`cargo test --features failpoints`; `make test` passes it).
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[cfg(not(feature = "failpoints"))]
#[test]
fn crash_tests_need_the_failpoints_feature() {
    panic!(
        "tests/crash.rs injects crashes through failpoints, which this build lacks: \
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
        Failpoint::ALL
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
                .any(|(p, _)| p == Failpoint::RecoverInstalled.name()),
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
        let all: BTreeSet<&str> = Failpoint::ALL.iter().map(|p| p.name()).collect();
        let missing: Vec<&&str> = all.difference(&fired).collect();
        assert!(missing.is_empty(), "never crashed at {missing:?}");
    }
}
