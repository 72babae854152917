//! The node step on a kubeadm-shaped PKI written by the sandbox: every level up and back down,
//! proved from disk, idempotent, and repaired after an interrupted write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::macros::datetime;

use super::*;
use crate::ca::coordinate;
use crate::ca::material;
use crate::pki::encode::KeySpec;
use crate::sandbox::{self, SandboxOptions};

struct Node {
    _tmp: tempfile::TempDir,
    pki: PathBuf,
    backups: PathBuf,
}

fn node() -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let sb = sandbox::write(
        &tmp.path().join("root"),
        &SandboxOptions {
            key: KeySpec::EcdsaP256,
            ..SandboxOptions::default()
        },
        datetime!(2026-12-07 0:00 UTC),
    )
    .unwrap();
    Node {
        pki: sb.path("/etc/kubernetes/pki"),
        backups: tmp.path().join("state/backups"),
        _tmp: tmp,
    }
}

const NOW: OffsetDateTime = datetime!(2026-12-07 1:00 UTC);

fn plan(n: &Node, track: Track) -> (CaRecord, Material) {
    let old = read_certs(&n.pki.join(track.ca_cert())).unwrap().remove(0);
    let old_key = read_key(&n.pki.join(track.ca_key())).unwrap();
    let m = material::generate(&old, &old_key, Duration::from_secs(3650 * 86_400), NOW).unwrap();
    let r = coordinate::plan(
        track,
        "c1",
        &["cp1".to_owned()],
        &old,
        &old_key,
        &m,
        NOW,
        "cp1",
        1,
    )
    .unwrap();
    (r, m)
}

fn files(n: &Node, t: Track) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<&str> = vec![t.ca_cert(), t.ca_key()];
    v.extend(t.leaves().iter().map(|l| l.cert));
    v.into_iter()
        .map(|rel| (n.pki.join(rel), std::fs::read(n.pki.join(rel)).unwrap()))
        .collect()
}

fn run(n: &Node, r: &CaRecord, m: Option<&Material>, phase: Phase) -> Outcome {
    step(
        &StepInput {
            track: r.track,
            pki: &n.pki,
            backups: &n.backups,
            record: r,
            new_ca: m,
            now: NOW,
        },
        phase,
    )
    .unwrap()
}

fn openssl_verify(ca: &Path, leaf: &Path) -> bool {
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca)
        .arg(leaf)
        .output()
        .unwrap();
    out.status.success()
}

#[test]
fn every_level_up_is_proved_and_the_way_down_restores_the_very_files() {
    for track in Track::ALL {
        let n = node();
        let original = files(&n, track);
        let (r, m) = plan(&n, track);
        assert_eq!(
            prove(track, &n.pki, &r.old_fp, &r.new_fp).unwrap().level,
            Level::Original
        );
        let mut levels = Vec::new();
        let mut states = vec![original.clone()];
        for phase in [Phase::TrustBoth, Phase::IssueNew, Phase::DistrustOld] {
            let out = run(&n, &r, Some(&m), phase);
            assert!(out.changed, "{track} {phase}");
            levels.push(out.proof.level);
            // Idempotent: the same step again writes nothing.
            let again = run(&n, &r, Some(&m), phase);
            assert!(!again.changed, "{track} {phase} again");
            states.push(files(&n, track));
        }
        assert_eq!(
            levels,
            [Level::TrustBoth, Level::IssueNew, Level::DistrustOld]
        );
        // The independent judge: every leaf verifies against the new CA alone.
        for leaf in track.leaves() {
            assert!(openssl_verify(
                &n.pki.join(track.ca_cert()),
                &n.pki.join(leaf.cert)
            ));
        }
        let now_ca = std::fs::read_to_string(n.pki.join(track.ca_cert())).unwrap();
        assert!(!now_ca.contains(r.old_ca_pem.lines().nth(1).unwrap()));
        // Down, one level at a time, each restoring exactly the files of the level below.
        let mut phase = Phase::DistrustOld.abort().unwrap();
        let mut expect = states.len() - 2;
        loop {
            let out = run(&n, &r, None, phase);
            assert_eq!(out.proof.level, phase.target());
            assert_eq!(files(&n, track), states[expect], "{track} {phase}");
            match phase.next() {
                Some(Phase::RolledBack) | None => break,
                Some(p) => {
                    phase = p;
                    expect -= 1;
                }
            }
        }
        assert_eq!(files(&n, track), original);
    }
}

#[test]
fn a_step_interrupted_between_its_writes_is_finished_by_running_it_again() {
    let n = node();
    let track = Track::EtcdCa;
    let (r, m) = plan(&n, track);
    run(&n, &r, Some(&m), Phase::TrustBoth);
    // Crash after the backup and the key were written, before the bundle: the first
    // certificate no longer matches the key, and the proof says so.
    let input = StepInput {
        track,
        pki: &n.pki,
        backups: &n.backups,
        record: &r,
        new_ca: Some(&m),
        now: NOW,
    };
    backup_for(&input, Level::IssueNew).unwrap();
    std::fs::write(n.pki.join(track.ca_key()), m.key_pem.as_bytes()).unwrap();
    let e = prove(track, &n.pki, &r.old_fp, &r.new_fp).unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    let out = run(&n, &r, Some(&m), Phase::IssueNew);
    assert_eq!(out.proof.level, Level::IssueNew);
    // Rolled back from there, the files are those of TrustBoth with the old key again.
    let out = run(&n, &r, None, Phase::RollingBack(Level::TrustBoth));
    assert_eq!(out.proof.level, Level::TrustBoth);
    let key = read_key(&n.pki.join(track.ca_key())).unwrap();
    assert!(key.matches(&read_certs(&n.pki.join(track.ca_cert())).unwrap()[0]));
}

#[test]
fn a_jump_over_a_level_and_a_foreign_ca_are_refused() {
    let n = node();
    let (r, m) = plan(&n, Track::FrontProxyCa);
    let e = step(
        &StepInput {
            track: r.track,
            pki: &n.pki,
            backups: &n.backups,
            record: &r,
            new_ca: Some(&m),
            now: NOW,
        },
        Phase::IssueNew,
    )
    .unwrap_err();
    assert!(matches!(e, NodeError::Jump { .. }), "{e}");
    let e = run_err(&n, &r, Phase::TrustBoth, Some(&m), "ff");
    assert!(e.to_string().contains("[foreign]"), "{e}");
    // IssueNew without the key.
    run(&n, &r, Some(&m), Phase::TrustBoth);
    let e = run_err(&n, &r, Phase::IssueNew, None, &r.old_fp);
    assert!(matches!(e, NodeError::NoKey(_)), "{e}");
}

fn run_err(n: &Node, r: &CaRecord, phase: Phase, m: Option<&Material>, old_fp: &str) -> NodeError {
    let mut r = r.clone();
    r.old_fp = old_fp.to_owned();
    step(
        &StepInput {
            track: r.track,
            pki: &n.pki,
            backups: &n.backups,
            record: &r,
            new_ca: m,
            now: NOW,
        },
        phase,
    )
    .unwrap_err()
}
