//! The JSON programs read — `certrotd check -o json`, `status -o json`, `history -o json` — and the
//! history file on disk, byte for byte, for fixed inputs and a fixed clock. The expected documents
//! (tests/golden/) were written by the code before wire types were split from domain types, so
//! any later change to how the daemon holds its state that leaks into what it prints fails here.
//!
//! `GOLDEN_BLESS=1` rewrites the expected files (only ever on purpose, with the change that
//! warrants it explained in the commit).

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use certrotd::config::Settings;
use certrotd::control::proto::{DaemonInfo, LeaseStatus, RetryStatus};
use certrotd::daemon::mode::Step;
use certrotd::daemon::status::Underway;
use certrotd::decide::{self, Policy};
use certrotd::history::{History, State};
use certrotd::inventory::Inventory;
use certrotd::pki::layout::Component;
use certrotd::policy::Thresholds;
use certrotd::report::CheckReport;
use support::*;
use time::OffsetDateTime;
use time::macros::datetime;

/// 24 days before kubeadm-zeta's leaves expire (inside renew_before), its CAs years from it.
const NOW: OffsetDateTime = datetime!(2025-01-10 12:00:00 UTC);

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `got` with the golden file `name`, or rewrites it under `GOLDEN_BLESS=1`.
fn assert_golden(name: &str, got: &[u8]) {
    let path = golden(name);
    if std::env::var_os("GOLDEN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if want != got {
        let got_path = path.with_extension("got");
        std::fs::write(&got_path, got).unwrap();
        panic!(
            "{} differs from what the code prints now (written to {}); diff them",
            path.display(),
            got_path.display()
        );
    }
}

/// The re-signed kubeadm-zeta node with admin.conf's client certificate corrupt and apiserver's
/// key swapped for front-proxy-client's: every status (ok, renew, invalid) shows.
fn node() -> (tempfile::TempDir, Inventory) {
    let root = kubeadm_resigned_root("kubeadm-zeta");
    let k8s = root.path().join("etc/kubernetes");
    let admin = std::fs::read_to_string(k8s.join("admin.conf")).unwrap();
    let corrupt: String = admin
        .lines()
        .map(|l| match l.split_once("client-certificate-data:") {
            Some((indent, _)) => format!("{indent}client-certificate-data: bm90IGEgY2VydA==\n"),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(admin, corrupt, "admin.conf has client-certificate-data");
    std::fs::write(k8s.join("admin.conf"), corrupt).unwrap();
    std::fs::copy(
        k8s.join("pki/front-proxy-client.key"),
        k8s.join("pki/apiserver.key"),
    )
    .unwrap();
    let inv = scan(root.path(), None, &[]);
    (root, inv)
}

/// The document with the temporary root's path replaced by `$ROOT`.
fn normalized(root: &Path, json: String) -> Vec<u8> {
    json.replace(root.to_str().unwrap(), "$ROOT").into_bytes()
}

#[test]
fn check_json_is_unchanged() {
    let (root, inv) = node();
    let settings = Settings::default();
    let windows = Thresholds {
        notify_before: settings.policy.notify_before,
        renew_before: settings.policy.renew_before,
    };
    let report = CheckReport::new(root.path().to_path_buf(), &inv, &windows, NOW);
    // As commands::check prints it.
    let json = serde_json::to_string_pretty(&report).unwrap() + "\n";
    assert_golden("check.json", &normalized(root.path(), json));
}

#[test]
fn status_json_is_unchanged() {
    let (root, inv) = node();
    let settings = Settings {
        node_name: "cp1".into(),
        ..Settings::default()
    };
    let decision = decide::decide(
        &inv,
        &Policy::from_settings(&settings),
        &BTreeSet::new(),
        false,
        NOW,
    );
    let daemon = DaemonInfo {
        version: "0.1.0".into(),
        started_at: "2025-01-10T11:00:00Z".into(),
        pid: 4242,
        config_sources: vec!["/etc/certrotd/config.toml".into()],
    };
    let rotation = Underway {
        id: "20250110T115900Z-00abcd".into(),
        step: Step::Restart(Component::KubeApiserver),
        started_at: datetime!(2025-01-10 11:59:00 UTC),
        certificates: vec!["apiserver".into(), "front-proxy-client".into()],
    };
    let lease = LeaseStatus {
        backend: "etcd".into(),
        held: true,
        holder: Some("cp1".into()),
        since: Some("2025-01-10T11:58:30Z".into()),
        detail: None,
    };
    let notices = vec!["apiserver expires in 24d".to_owned()];
    let mut report = certrotd::daemon::status::report(
        &certrotd::daemon::status::Inputs {
            node: "cp1",
            daemon: &daemon,
            inventory: &inv,
            decision: &decision,
            rotation: Some(&rotation),
            lease: &lease,
            notices: &notices,
        },
        NOW,
    )
    .to_wire();
    report.retry = Some(RetryStatus {
        attempts: 2,
        last_error: "the remote CA did not answer".into(),
        failing_since: Some("2025-01-10T10:00:00Z".into()),
        next_retry: Some("2025-01-10T12:04:00Z".into()),
    });
    // As commands::status prints it.
    let json = serde_json::to_string_pretty(&report).unwrap() + "\n";
    assert_golden("status.json", &normalized(root.path(), json));
}

/// Records written through the history's API: a success under the lease with its disruptive
/// span, a failure, a recovery, and one still open.
fn write_history(h: &History) {
    let t = |s: i64| NOW + time::Duration::seconds(s);
    let certs = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let mut r = h
        .start(
            "20250110T120000Z-000001",
            "cp1",
            certs(&["apiserver", "front-proxy-client"]),
            Some("expires in 24d".into()),
            t(0),
        )
        .unwrap();
    r.fencing_token = Some(7);
    r.disruptive_from = Some(t(30));
    h.append(&r).unwrap();
    r.disruptive_to = Some(t(95));
    r.state = State::Success;
    r.finished_at = Some(t(100));
    h.append(&r).unwrap();

    h.start(
        "20250110T130000Z-000002",
        "cp1",
        certs(&["etcd-server"]),
        Some("certrotd rotate".into()),
        t(3600),
    )
    .unwrap();
    h.update(
        "20250110T130000Z-000002",
        State::Failed,
        Some("not started: the remote CA refused".into()),
        t(3605),
    )
    .unwrap();

    let mut r = h
        .start(
            "20250110T140000Z-000003",
            "cp1",
            certs(&["etcd-peer"]),
            Some("certificates expired".into()),
            t(7200),
        )
        .unwrap();
    r.recovery = true;
    h.append(&r).unwrap();
    h.update("20250110T140000Z-000003", State::Success, None, t(7300))
        .unwrap();

    h.start(
        "20250110T150000Z-000004",
        "cp1",
        certs(&["kubelet.conf"]),
        None,
        t(10800),
    )
    .unwrap();
}

#[test]
fn history_file_and_json_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::new(dir.path().join("history.jsonl"));
    write_history(&h);
    assert_golden(
        "history.jsonl",
        &std::fs::read(dir.path().join("history.jsonl")).unwrap(),
    );
    let records: Vec<_> = h
        .read(None)
        .unwrap()
        .records
        .iter()
        .map(|r| r.to_wire())
        .collect();
    // As commands::history prints it.
    let json = serde_json::to_string_pretty(&records).unwrap() + "\n";
    assert_golden("history.json", json.as_bytes());
}

/// A history file as earlier versions wrote it (records without the fields added since, a torn
/// last line) keeps loading: old files are never rewritten on upgrade.
#[test]
fn an_old_history_file_keeps_loading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    std::fs::copy(golden("history-old.jsonl"), &path).unwrap();
    let read = History::new(&path).read(None).unwrap();
    assert_eq!(read.skipped, 1, "the torn last line");
    let records: Vec<_> = read.records.iter().map(|r| r.to_wire()).collect();
    let json = serde_json::to_string_pretty(&records).unwrap() + "\n";
    assert_golden("history-old.json", json.as_bytes());
}

/// `certrotd ca status -o json` for a fixed view: etcd-ca in IssueNew with two of its three
/// members' steps recorded, front-proxy-ca never rotated. The record's wrapped key and PEM are
/// in the view and must stay out of the document.
#[test]
fn ca_status_json_is_unchanged() {
    use certrotd::ca::record::{CaRecord, NodeStep, PhaseMark};
    use certrotd::ca::view::{CaView, DiskCa, TrackView};
    use certrotd::ca::{Level, Phase, Track};

    let step = |level, token, at| NodeStep {
        level,
        fencing_token: token,
        proved_at: at,
        detail: format!("etcd/ca.crt holds {level}"),
    };
    let mark = |phase, at, token| PhaseMark {
        phase,
        started_at: at,
        by: "cp1".into(),
        fencing_token: token,
    };
    let record = CaRecord {
        track: Track::EtcdCa,
        rotation_id: "20250110T113000Z-ca0001".into(),
        phase: Phase::IssueNew,
        old_fp: "0a".repeat(32),
        new_fp: "0b".repeat(32),
        old_ca_pem: "-----BEGIN CERTIFICATE-----\nOLD\n-----END CERTIFICATE-----\n".into(),
        new_ca_pem: "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n".into(),
        wrapped_key: "V1JBUFBFRC1LRVk".into(),
        members: vec!["cp1".into(), "cp2".into(), "cp3".into()],
        nodes: [
            (
                "cp1".to_owned(),
                step(Level::IssueNew, 14, datetime!(2025-01-10 11:50:00 UTC)),
            ),
            (
                "cp2".to_owned(),
                step(Level::TrustBoth, 9, datetime!(2025-01-10 11:40:00 UTC)),
            ),
        ]
        .into(),
        phases: vec![
            mark(Phase::Planned, datetime!(2025-01-10 11:30:00 UTC), 0),
            mark(Phase::TrustBoth, datetime!(2025-01-10 11:31:00 UTC), 7),
            mark(Phase::IssueNew, datetime!(2025-01-10 11:45:00 UTC), 13),
        ],
    };
    let view = CaView {
        as_of: Some(NOW),
        tracks: vec![
            TrackView {
                track: Track::EtcdCa,
                disk: Some(DiskCa {
                    fingerprint: "0b".repeat(32),
                    subject: "CN=etcd-ca".into(),
                    not_after: datetime!(2035-01-08 11:30:00 UTC),
                    due_from: datetime!(2033-12-09 11:30:00 UTC),
                }),
                disk_error: None,
                record: Some(record),
                order: vec!["cp2".into(), "cp3".into(), "cp1".into()],
                blockers: vec![
                    "cp2 has not proved issue-new".into(),
                    "cp3 has not proved issue-new".into(),
                ],
                error: None,
            },
            TrackView {
                track: Track::FrontProxyCa,
                disk: Some(DiskCa {
                    fingerprint: "0c".repeat(32),
                    subject: "CN=front-proxy-ca".into(),
                    not_after: datetime!(2034-11-02 08:00:00 UTC),
                    due_from: datetime!(2033-10-03 08:00:00 UTC),
                }),
                disk_error: None,
                record: None,
                order: vec![],
                blockers: vec![],
                error: Some("reading the record: etcd unreachable".into()),
            },
        ],
    };
    let wire = certrotd::daemon::handler::ca_wire::status(&view, "cp1");
    // As commands::ca prints it.
    let json = serde_json::to_string_pretty(&wire).unwrap() + "\n";
    for secret in ["V1JBUFBFRC1LRVk", "BEGIN"] {
        assert!(!json.contains(secret), "{secret}: {json}");
    }
    assert_golden("ca-status.json", json.as_bytes());
}
