//! CA rotation driven by the daemons (issue 13): real `certrotd run` processes, one per node, on
//! the real three-member TLS etcd cluster of `support::cluster` (every member a unit of its
//! node's `systemd --user` manager), each node with an API-server stand-in that reads
//! `etcd/ca.crt` and `apiserver-etcd-client` when it starts and writes to etcd continuously.
//!
//! Nothing here calls the CA engine: a rotation starts because `[ca] rotate_before` makes the CAs
//! due, or through `certrotd ca rotate|abort` on a node's socket. The tests follow the phase by
//! reading the cluster record (`/certrotd/<cluster>/ca/<track>`, JSON) with `etcdctl`, and judge
//! with what is not certrotd's: `etcdctl` and `openssl s_client` with a client that trusts only
//! the old CA, the stand-ins' write logs against what etcd holds, etcd's own log for member
//! starts, `openssl s_server` for front-proxy-ca, and the files on disk.
//!
//! Covered: a whole etcd-ca rotation by the daemons alone (with the numbers the closing note
//! needs); the coordinator killed with kill -9 in each phase; a node killed inside its own step
//! (failpoint `ca-step-installed`); `certrotd ca abort` from each phase; front-proxy-ca on a
//! single node with the local backend, judged by an aggregated-server stand-in.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use certrotd::ca::phase::{Level, Phase};
use certrotd::ca::record::{CaRecord, LocalStore, RecordStore as _, etcd_key};
use certrotd::ca::{Track, node};
use support::cluster::{Cluster, PeerNode};
use support::standin::{
    QuorumWatch, STANDIN, aggregated_accepts, assert_old_ca_refused, assert_old_ca_served,
    etcd_as_unit, etcd_start_context, etcd_starts, files_holding, judge_writes, now_ms, old_client,
    pki, restart_config, share_front_proxy_ca, standin_starts, start_aggregated,
    start_health_standin, start_kubelet_standin, start_standin, starts_since, wait_writing,
};
use support::wait_for;
use time::OffsetDateTime;

const YEAR: Duration = Duration::from_secs(365 * 86400);
/// Long enough for a whole rotation of three nodes on two shared cores.
const TIMEOUT: Duration = Duration::from_secs(240);
/// The lease TTL: a killed holder's slot frees itself quickly.
const TTL: &str = "3s";
/// `[lease] cluster` as `Cluster::configure` writes it.
const CLUSTER: &str = "peers-test";

/// `[ca]`: every phase dwells `dwell`; with `due`, every CA is inside `rotate_before` (the
/// sandbox's CAs live ten years), so every daemon finds its CAs due and starts a rotation; the new
/// CAs live twenty years, so a completed rotation does not make them due in turn.
fn ca_config(dwell: &str, due: bool) -> String {
    format!(
        "[ca]\ndwell_trust_both = \"{dwell}\"\ndwell_issue_new = \"{dwell}\"\ndwell_distrust_old = \"{dwell}\"\n{}",
        if due {
            "rotate_before = \"5000d\"\nvalidity = \"7300d\"\n"
        } else {
            ""
        }
    )
}

/// The cluster record of `track`, read with `etcdctl` and each node's current files (they
/// change with the node's steps, so the first node that answers is taken).
fn record(c: &Cluster, track: Track) -> Option<CaRecord> {
    let key = etcd_key(CLUSTER, track);
    for n in &c.nodes {
        let (ok, out) = n.spec.etcdctl(
            "healthcheck-client",
            &["get", &key, "--print-value-only", "--command-timeout=2s"],
        );
        if ok {
            let line = out.lines().find(|l| l.starts_with('{'))?;
            return Some(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("the record {key} does not parse: {e}: {line}")),
            );
        }
    }
    None
}

/// Waits until the record of `track` satisfies `pred`; the daemons' logs on a timeout.
async fn wait_record(
    c: &Cluster,
    track: Track,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&CaRecord) -> bool,
) -> CaRecord {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(r) = record(c, track) {
            if pred(&r) {
                return r;
            }
            last = Some(r);
        }
        assert!(
            Instant::now() < deadline,
            "waited {timeout:?} for {track}: {what}; last record: {last:#?}\n{}",
            logs(c)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn logs(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| format!("--- {} certrotd log\n{}", n.name, n.log()))
        .collect()
}

/// The phases the record went through, in order.
fn phases(r: &CaRecord) -> Vec<Phase> {
    r.phases.iter().map(|m| m.phase).collect()
}

/// Every node's files prove `level` of the rotation `r`, and no file under the node's
/// `/etc/kubernetes` holds `gone` (a CA's PEM).
fn assert_level(c: &Cluster, r: &CaRecord, level: Level, gone: &str) {
    for n in &c.nodes {
        let p = node::prove(r.track, &pki(n), &r.old_fp, &r.new_fp)
            .unwrap_or_else(|e| panic!("{}: {e}", n.name));
        assert_eq!(p.level, level, "{}: {}", n.name, p.detail);
        let holding = files_holding(&n.sandbox.path("/etc/kubernetes"), gone);
        assert!(
            holding.is_empty(),
            "{}: a CA that should be gone is still in {holding:?}",
            n.name
        );
    }
}

fn start_daemons(c: &mut Cluster) {
    for n in &mut c.nodes {
        n.start_daemon(&[]);
    }
}

fn stop_daemons(c: &mut Cluster) {
    for n in &mut c.nodes {
        n.stop_daemon();
    }
}

/// A three-member cluster, healthy, with a writing stand-in on every node, configured with
/// `ca` (daemons not started yet). `measured`: the test judges write gaps, so no other cluster
/// runs beside it ([`Cluster::new_alone`]).
async fn cluster_with_standins(ca: &str, measured: bool) -> Cluster {
    let t0 = Instant::now();
    let (at, ttl) = (OffsetDateTime::now_utc(), YEAR);
    let c = if measured {
        Cluster::new_alone(3, at, ttl).await
    } else {
        Cluster::new(3, at, ttl).await
    };
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    share_front_proxy_ca(&c);
    let mut health = Vec::new();
    for n in &c.nodes {
        etcd_as_unit(n);
        start_standin(n).await;
        health.push(start_health_standin(n).await);
        start_kubelet_standin(n).await;
    }
    c.configure(TTL, ca);
    for (n, port) in c.nodes.iter().zip(health) {
        n.drop_in("60-restart.toml", &restart_config(port));
    }
    wait_writing(&c).await;
    eprintln!(
        "cluster, stand-ins and kubelet stand-ins ready in {:?}",
        t0.elapsed()
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_ca_is_rotated_to_completed_by_the_daemons_alone_with_no_write_lost() {
    let t0 = Instant::now();
    let mut c = cluster_with_standins(&ca_config("0s", true), true).await;
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    old_client(&c.ca_pki(), &old);
    let old_ca_pem = std::fs::read_to_string(old.join("ca.crt")).unwrap();
    let etcd_before: Vec<usize> = c.nodes.iter().map(etcd_starts).collect();
    let standin_before: Vec<usize> = c.nodes.iter().map(standin_starts).collect();

    let quorum = QuorumWatch::start(&c);
    let began = Instant::now();
    let began_ms = now_ms();
    start_daemons(&mut c);
    let done = wait_record(&c, Track::EtcdCa, "Completed", TIMEOUT, |r| {
        r.phase.is_final()
    })
    .await;
    let took = began.elapsed();
    let ended_ms = now_ms();
    let (no_quorum, no_quorum_at) = quorum.finish().await;
    assert_eq!(done.phase, Phase::Completed, "{done:#?}\n{}", logs(&c));
    assert_eq!(
        phases(&done),
        [
            Phase::Planned,
            Phase::TrustBoth,
            Phase::IssueNew,
            Phase::DistrustOld,
            Phase::Completed
        ],
        "{done:#?}"
    );
    // front-proxy-ca is due by the same setting: the daemons finish it too.
    let fp = wait_record(&c, Track::FrontProxyCa, "final", TIMEOUT, |r| {
        r.phase.is_final()
    })
    .await;
    assert_eq!(fp.phase, Phase::Completed, "{fp:#?}");

    // Every member serves and peers with new-CA certificates (each node proves DistrustOld from
    // its disk, openssl verifies every leaf against its CA), the old CA is in no file.
    assert_level(&c, &done, Level::DistrustOld, &old_ca_pem);
    for n in &c.nodes {
        n.assert_all_valid(OffsetDateTime::now_utc());
    }
    c.wait_healthy(Duration::from_secs(60)).await;
    // A client that trusts only the old CA is refused by every member.
    assert_old_ca_refused(&c, &old).await;
    // The new key is not in the record in clear, read with the API server's client.
    let (ok, value) = c.nodes[0].spec.etcdctl(
        "../apiserver-etcd-client",
        &[
            "get",
            &etcd_key(CLUSTER, Track::EtcdCa),
            "--print-value-only",
        ],
    );
    assert!(ok, "{value}");
    let new_key = std::fs::read_to_string(pki(&c.nodes[0]).join("etcd/ca.key")).unwrap();
    assert!(
        !value.contains("PRIVATE KEY") && !value.contains(new_key.lines().nth(1).unwrap()),
        "{value}"
    );
    stop_daemons(&mut c);

    // No acknowledged write lost; quorum and writes all along.
    let writes = judge_writes(&c, began_ms, ended_ms).await;
    let restarts: Vec<usize> = starts_since(&c, &etcd_before, etcd_starts);
    let standin_restarts: Vec<usize> = starts_since(&c, &standin_before, standin_starts);
    eprintln!(
        "NUMBERS daemon-driven etcd-ca rotation of 3 nodes, zero dwell (front-proxy-ca rotating \
         alongside): {took:?} from the daemons' start to Completed; member restarts {restarts:?}; \
         stand-in restarts {standin_restarts:?}; longest time without a linearizable health \
         answer {no_quorum} ms; {writes}; whole test {:?}",
        t0.elapsed()
    );
    let starts = etcd_start_context(&c);
    assert!(
        restarts.iter().all(|r| (3..=4).contains(r)),
        "each member restarts once per phase: {restarts:?}\n{starts}"
    );
    assert!(
        writes.any_gap <= 2000,
        "no stand-in wrote for {} ms: {writes}",
        writes.any_gap
    );
    // A leader restart costs an election (etcd's election timeout is 1 s); the watch's
    // resolution is about a second.
    assert!(
        no_quorum <= 3000,
        "no member answered a linearizable read for {no_quorum} ms from {no_quorum_at}"
    );
}

/// The order of the forward phases.
fn rank(p: Phase) -> u8 {
    match p {
        Phase::Planned => 0,
        Phase::TrustBoth => 1,
        Phase::IssueNew => 2,
        Phase::DistrustOld => 3,
        _ => 4,
    }
}

/// The node named `name`.
fn index_of(c: &Cluster, name: &str) -> usize {
    c.nodes.iter().position(|n| n.name == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_killed_in_each_phase_is_taken_over_and_finishes_when_started_again() {
    let t0 = Instant::now();
    let mut c = cluster_with_standins(&ca_config("3s", true), false).await;
    let began_ms = now_ms();
    start_daemons(&mut c);
    let mut notes = Vec::new();
    let mut takeovers = 0;
    for wanted in [Phase::TrustBoth, Phase::IssueNew, Phase::DistrustOld] {
        let r = wait_record(&c, Track::EtcdCa, &format!("{wanted}"), TIMEOUT, |r| {
            rank(r.phase) >= rank(wanted)
        })
        .await;
        if r.phase.is_final() {
            notes.push(format!("over before {wanted} was seen"));
            break;
        }
        let phase = r.phase;
        let by = r.phases.last().unwrap().by.clone();
        // Killed once it has proved its own step of the phase it started: the phase can then
        // only move on through the others (their steps, and the advance one of them makes).
        let r = wait_record(
            &c,
            Track::EtcdCa,
            "the coordinator's own step",
            TIMEOUT,
            |x| x.phase != phase || x.nodes.get(&by).is_some_and(|s| s.level == phase.target()),
        )
        .await;
        if r.phase.is_final() {
            notes.push(format!("over before {by} could be killed in {phase}"));
            break;
        }
        let i = index_of(&c, &by);
        c.nodes[i].kill_daemon();
        let killed_at = OffsetDateTime::now_utc();
        // The others go on without it: their steps, or the phase moved on by one of them, until
        // the record stands still longer than the lease TTL and a dwell (the killed node's
        // step is then what the phase waits for).
        let mut last = record(&c, Track::EtcdCa).unwrap();
        let mut still = Instant::now();
        while still.elapsed() < Duration::from_secs(8) && !last.phase.is_final() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some(now) = record(&c, Track::EtcdCa)
                && now != last
            {
                last = now;
                still = Instant::now();
            }
        }
        let others: Vec<String> = last
            .nodes
            .iter()
            .filter(|(n, s)| **n != by && s.proved_at > killed_at)
            .map(|(n, s)| format!("{n} stepped to {}", s.level))
            .chain(
                last.phases
                    .iter()
                    .filter(|m| m.started_at > killed_at)
                    .map(|m| format!("{} moved it to {}", m.by, m.phase)),
            )
            .collect();
        assert!(
            others.iter().all(|o| !o.starts_with(&by)),
            "the killed {by} acted: {others:?}"
        );
        if others.iter().any(|o| o.contains(" moved it to ")) {
            takeovers += 1;
        }
        notes.push(format!(
            "{by} killed in {phase}; without it: {}",
            if others.is_empty() {
                "nothing (its step is next in order)".to_owned()
            } else {
                others.join(", ")
            }
        ));
        c.nodes[i].start_daemon(&[]);
    }
    let done = wait_record(&c, Track::EtcdCa, "final", TIMEOUT, |r| r.phase.is_final()).await;
    assert_eq!(done.phase, Phase::Completed, "{done:#?}\n{}", logs(&c));
    let took_ms = now_ms() - began_ms;
    // While a killed coordinator was down, another node moved the phase on at least once.
    assert!(
        takeovers >= 1,
        "no phase moved on without its killed coordinator: {notes:?}"
    );
    // Someone other than a killed coordinator moved the rotation on at least once.
    let movers: std::collections::BTreeSet<&str> =
        done.phases.iter().map(|m| m.by.as_str()).collect();
    assert!(movers.len() > 1, "one node moved every phase: {done:#?}");
    assert_level(&c, &done, Level::DistrustOld, &done.old_ca_pem);
    c.wait_healthy(Duration::from_secs(60)).await;
    stop_daemons(&mut c);
    let writes = judge_writes(&c, began_ms, now_ms()).await;
    eprintln!(
        "NUMBERS coordinator kill -9 in each phase (3 s dwells): {}; rotation {took_ms} ms; {writes}; whole test {:?}",
        notes.join("; "),
        t0.elapsed()
    );
}

/// Tests that arm failpoints in the binary fail plainly without them.
#[cfg(not(feature = "failpoints"))]
fn needs_failpoints() {
    panic!("this test arms certrotd's failpoints: run `cargo test --features failpoints`");
}

#[cfg(feature = "failpoints")]
fn needs_failpoints() {}

/// The track whose files on `n` are a level above what the record says `n` proved, with that
/// level: a step interrupted after its install.
fn interrupted(c: &Cluster, n: &PeerNode) -> Option<(Track, Level, CaRecord)> {
    for track in Track::ALL {
        let Some(r) = record(c, track) else { continue };
        let recorded = r.nodes.get(&n.name).map_or(Level::Original, |s| s.level);
        let Ok(disk) = node::prove(track, &pki(n), &r.old_fp, &r.new_fp) else {
            continue;
        };
        let disk = disk.level;
        if disk != recorded {
            return Some((track, disk, r));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_inside_its_own_step_finishes_it_from_its_backup_when_started_again() {
    needs_failpoints();
    let t0 = Instant::now();
    let mut c = cluster_with_standins(&ca_config("0s", true), false).await;
    // peer-1 aborts right after the install of its second step (whichever track it is on).
    c.nodes[0].start_daemon(&[("CERTROTD_FAILPOINT", "ca-step-installed:2".to_owned())]);
    c.nodes[1].start_daemon(&[]);
    c.nodes[2].start_daemon(&[]);
    let exit = {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let child = c.nodes[0].daemon.as_mut().unwrap();
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "peer-1 never reached its second CA step\n{}",
                logs(&c)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    c.nodes[0].daemon = None;
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(exit.signal(), Some(6), "{exit:?}\n{}", c.nodes[0].log());
    assert!(
        c.nodes[0]
            .log()
            .contains("failpoint ca-step-installed:2 reached, aborting"),
        "{}",
        c.nodes[0].log()
    );
    // Its files are at the step's level, the record does not say so, the step's backup exists.
    let (track, level, r) = interrupted(&c, &c.nodes[0])
        .unwrap_or_else(|| panic!("no step of peer-1 left unrecorded\n{}", logs(&c)));
    let backup = backup_dir(&c.nodes[0], &node::backup_id(&r.rotation_id, level));
    assert!(backup.is_dir(), "{} missing", backup.display());
    let files_at_crash = track_files(&c.nodes[0], track);

    // Started again, it finishes that step from what it left: the same files, now recorded.
    c.nodes[0].start_daemon(&[]);
    let recorded = wait_record(&c, track, "peer-1's step recorded", TIMEOUT, |r| {
        r.nodes.get("peer-1").is_some_and(|s| s.level >= level) || r.phase.is_final()
    })
    .await;
    let step = &recorded.nodes["peer-1"];
    if step.level == level {
        assert_eq!(
            track_files(&c.nodes[0], track),
            files_at_crash,
            "peer-1 wrote its step's files again instead of finishing it"
        );
    }
    for t in Track::ALL {
        let done = wait_record(&c, t, "final", TIMEOUT, |r| r.phase.is_final()).await;
        assert_eq!(done.phase, Phase::Completed, "{done:#?}\n{}", logs(&c));
        if t == Track::EtcdCa {
            assert_level(&c, &done, Level::DistrustOld, &done.old_ca_pem);
        }
    }
    c.wait_healthy(Duration::from_secs(60)).await;
    stop_daemons(&mut c);
    eprintln!(
        "NUMBERS node killed inside its {track} step to {level}: finished after restart; whole test {:?}",
        t0.elapsed()
    );
}

/// Where a node's daemon keeps the backup `id`.
fn backup_dir(n: &PeerNode, id: &str) -> PathBuf {
    let settings = certrotd::config::load(&certrotd::config::LoadOptions {
        config: Some(&n.sandbox.config_path),
        root: None,
    })
    .unwrap();
    let state = n.sandbox.path(settings.state_dir.to_str().unwrap());
    state.join("ca-backups").join(id)
}

/// The bytes of every file of the track on a node.
fn track_files(n: &PeerNode, t: Track) -> Vec<(String, Vec<u8>)> {
    let mut rels = vec![t.ca_cert(), t.ca_key()];
    rels.extend(t.leaves().iter().map(|l| l.cert));
    rels.into_iter()
        .map(|r| (r.to_owned(), std::fs::read(pki(n).join(r)).unwrap()))
        .collect()
}

/// `certrotd ca <args> --socket <node's socket>`: (success, stdout + stderr).
fn ca_cli(n: &PeerNode, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certrotd"))
        .arg("ca")
        .args(args)
        .arg("--socket")
        .arg(n.socket())
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// [`ca_cli`] until it succeeds (the daemon may still be starting, or a node's write may have
/// come between the command's read and its write of the record), for up to 30 s.
async fn cli_until_ok(n: &PeerNode, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, text) = ca_cli(n, args);
        if ok {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "certrotd ca {args:?} on {} kept failing: {text}\n{}",
            n.name,
            n.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_abort_from_each_phase_brings_the_cluster_back_to_the_old_ca_alone() {
    let t0 = Instant::now();
    // Not due: the rotations start from the command line.
    let mut c = cluster_with_standins(&ca_config("3s", false), true).await;
    let before: Vec<_> = c
        .nodes
        .iter()
        .map(|n| track_files(n, Track::EtcdCa))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    old_client(&c.ca_pki(), &old);
    start_daemons(&mut c);
    let socket = c.nodes[0].socket();
    wait_for("peer-1's socket", Duration::from_secs(30), || async {
        socket.exists().then_some(())
    })
    .await;
    let began_ms = now_ms();
    let mut notes = Vec::new();
    for phase in [Phase::TrustBoth, Phase::IssueNew, Phase::DistrustOld] {
        let from = now_ms();
        let started = cli_until_ok(&c.nodes[0], &["rotate", "etcd-ca"]).await;
        // A step of this phase taken somewhere, so there is something to roll back.
        let r = wait_record(
            &c,
            Track::EtcdCa,
            &format!("{phase} with a step taken"),
            TIMEOUT,
            |r| r.phase == phase && r.nodes.values().any(|s| s.level == phase.target()),
        )
        .await;
        let aborted = cli_until_ok(&c.nodes[1], &["abort", "etcd-ca"]).await;
        eprintln!("ca rotate said: {started}; ca abort in {phase} said: {aborted}");
        let back = wait_record(&c, Track::EtcdCa, "RolledBack", TIMEOUT, |x| {
            x.rotation_id == r.rotation_id && x.phase.is_final()
        })
        .await;
        assert_eq!(back.phase, Phase::RolledBack, "{back:#?}\n{}", logs(&c));
        // Every node holds the old CA alone, byte for byte as before, the new CA nowhere.
        assert_level(&c, &back, Level::Original, &back.new_ca_pem);
        for (n, files) in c.nodes.iter().zip(&before) {
            assert_eq!(
                &track_files(n, Track::EtcdCa),
                files,
                "{} after {phase}",
                n.name
            );
        }
        c.wait_healthy(Duration::from_secs(60)).await;
        // The old CA's clients are served again by every member.
        assert_old_ca_served(&c, &old, &format!("after abort in {phase}"));
        notes.push(format!("abort in {phase}: {} ms", now_ms() - from));
    }
    stop_daemons(&mut c);
    let writes = judge_writes(&c, began_ms, now_ms()).await;
    eprintln!(
        "NUMBERS ca abort: {}; {writes}; whole test {:?}",
        notes.join("; "),
        t0.elapsed()
    );
    assert!(
        writes.any_gap <= 2000,
        "no stand-in wrote for {} ms: {writes}",
        writes.any_gap
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_proxy_ca_by_the_daemon_is_judged_by_an_aggregated_server_in_every_phase() {
    let t0 = Instant::now();
    let mut c = Cluster::new(1, OffsetDateTime::now_utc(), YEAR).await;
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    let n = &c.nodes[0];
    etcd_as_unit(n);
    start_standin(n).await;
    let health = start_health_standin(n).await;
    start_kubelet_standin(n).await;
    // The aggregated server reads front-proxy-ca.crt when it starts, and starts again with the
    // API server (as it picks up the API server's new request-header CA).
    let port = support::etcd::free_port();
    start_aggregated(n, port, Some(STANDIN)).await;
    let p = pki(n);
    let client = (
        p.join("front-proxy-client.crt"),
        p.join("front-proxy-client.key"),
    );
    wait_for(
        "the aggregated stand-in",
        Duration::from_secs(20),
        || async { aggregated_accepts(port, &client.0, &client.1).then_some(()) },
    )
    .await;
    // An old-CA client of the test's own, from a copy of the old front-proxy CA.
    let tmp = tempfile::tempdir().unwrap();
    let old_ca = tmp.path().join("old-ca");
    std::fs::create_dir_all(&old_ca).unwrap();
    std::fs::copy(p.join("front-proxy-ca.crt"), old_ca.join("ca.crt")).unwrap();
    std::fs::copy(p.join("front-proxy-ca.key"), old_ca.join("ca.key")).unwrap();
    let old = tmp.path().join("old");
    old_client(&old_ca, &old);
    let old_pair = (old.join("client.crt"), old.join("client.key"));

    // One control-plane node, the local backend: the record lives in its state directory.
    c.configure(TTL, &ca_config("2s", true));
    n.drop_in("60-restart.toml", &restart_config(health));
    n.drop_in("60-local.toml", "[lease]\nbackend = \"local\"\n");
    let state = backup_dir(n, "x")
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let store = LocalStore::new(&state);
    c.nodes[0].start_daemon(&[]);
    let n = &c.nodes[0];
    // Retried briefly: the server may be in its restart.
    let accepts = |pair: &(PathBuf, PathBuf)| {
        (0..10).any(|_| {
            aggregated_accepts(port, &pair.0, &pair.1) || {
                std::thread::sleep(Duration::from_millis(200));
                false
            }
        })
    };
    let deadline = Instant::now() + TIMEOUT;
    let mut seen: Vec<(Phase, Level, bool, bool)> = Vec::new();
    loop {
        if let Some((r, _)) = store.load(Track::FrontProxyCa).await.unwrap() {
            // What the node recorded it proved after restarting its consumers on those files;
            // a sample counts only if the files stayed at that level while it was taken (a
            // step writes its files before it restarts anything).
            let level = r.nodes.get(&n.name).map_or(Level::Original, |s| s.level);
            let disk = || {
                node::prove(Track::FrontProxyCa, &p, &r.old_fp, &r.new_fp)
                    .ok()
                    .map(|p| p.level)
            };
            let before = disk();
            let sample = (r.phase, level, accepts(&client), accepts(&old_pair));
            let steady = before == Some(level) && disk() == Some(level);
            if steady && seen.last() != Some(&sample) {
                seen.push(sample);
            }
            if r.phase.is_final() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "front-proxy-ca not rotated in {TIMEOUT:?}: {seen:?}\n{}",
            logs(&c)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        seen.iter().all(|s| s.2),
        "front-proxy-client refused: {seen:?}"
    );
    for (_, level, _, old_ok) in &seen {
        assert_eq!(
            *old_ok,
            *level < Level::DistrustOld,
            "the old CA's client is accepted exactly until DistrustOld: {seen:?}"
        );
    }
    assert_eq!(seen.last().unwrap().0, Phase::Completed, "{seen:?}");
    assert!(
        seen.iter().any(|s| s.1 == Level::DistrustOld),
        "never sampled at DistrustOld: {seen:?}"
    );
    c.nodes[0].stop_daemon();
    eprintln!(
        "NUMBERS front-proxy-ca on one node (local backend, 2 s dwells): samples {seen:?}; whole test {:?}",
        t0.elapsed()
    );
}
