//! Hot reload, proved by what the components serve: on the real three-member TLS etcd cluster of
//! tests/support/cluster.rs (each member `etcd.service` under its node's real `systemd --user`
//! manager, each node its own certrotd daemon taking turns through the etcd lease), every etcd
//! leaf of every node is rotated with no member restarted: every member keeps its MainPID and
//! NRestarts, serves the new serials to new client and peer connections (judged by `openssl
//! s_client` and `etcdctl`), and writers through every endpoint see no failed write. With
//! `prefer_reload = false` every member is restarted, as before. Stand-ins for a component
//! that reloads (a shell unit around `openssl s_server` that re-reads its files some seconds after
//! they change) show the other cases: one that never re-reads is restarted, one that re-reads late
//! (after `reload_period`) is restarted, one that re-reads in time is not, and one that never
//! serves the new certificate even after the restart is rolled back.
//!
//! The rolling rotations print their measurements (failed writes, the longest gap between
//! successful writes, leader elections by the Raft term) for the closing note.

use crate::support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use certrotd::control::proto::{HistoryRecord, HistoryState};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use support::cluster::{Cluster, ETCD_LEAVES, ETCD_UNIT, PeerNode};
use time::OffsetDateTime;
use tokio::time::Instant;

/// Long enough for three daemons taking turns on two shared cores.
const TIMEOUT: Duration = Duration::from_secs(240);
/// The lease TTL: short, so turns pass quickly.
const TTL: &str = "3s";
/// A leaf lifetime inside every window of the sandbox policy (renew_before 30d, emergency 7d).
const DUE: Duration = Duration::from_secs(2 * 86400);
const YEAR: Duration = Duration::from_secs(365 * 86400);
/// How long one write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What writers through every endpoint saw during a rolling rotation.
#[derive(Debug, Default)]
struct Writes {
    ok: u64,
    failed: u64,
    /// The longest time between two successful writes of one writer.
    longest_gap: Duration,
    /// The same before the daemons started: what this machine's load alone makes it.
    baseline_gap: Duration,
}

/// One writer per member, each connected to that member only, writing in a loop until `stop`.
fn start_writers(
    c: &Cluster,
    stop: Arc<AtomicBool>,
    rotating: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Writes>> {
    let pki = c.nodes[0].etcd_pki();
    let read = |f: &str| std::fs::read(pki.join(f)).unwrap();
    let (ca, cert, key) = (
        read("ca.crt"),
        read("healthcheck-client.crt"),
        read("healthcheck-client.key"),
    );
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    c.endpoints()
        .into_iter()
        .enumerate()
        .map(|(i, endpoint)| {
            let tls = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(ca.clone()))
                .identity(Identity::from_pem(cert.clone(), key.clone()));
            let (stop, rotating) = (stop.clone(), rotating.clone());
            tokio::spawn(async move {
                let options = ConnectOptions::new()
                    .with_tls(tls)
                    .with_connect_timeout(WRITE_TIMEOUT)
                    .with_timeout(WRITE_TIMEOUT);
                let mut client = Client::connect([endpoint], Some(options)).await.unwrap();
                let mut w = Writes::default();
                let mut last_ok = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let put = client.put(format!("writer-{i}"), n.to_string(), None);
                    match tokio::time::timeout(WRITE_TIMEOUT, put).await {
                        Ok(Ok(_)) => {
                            w.ok += 1;
                            let gap = last_ok.elapsed();
                            if rotating.load(Ordering::Relaxed) {
                                w.longest_gap = w.longest_gap.max(gap);
                            } else {
                                w.baseline_gap = w.baseline_gap.max(gap);
                            }
                            last_ok = Instant::now();
                        }
                        _ => w.failed += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                w
            })
        })
        .collect()
}

/// The cluster's Raft term, as the first member that answers tells it: each election raises it.
async fn raft_term(c: &Cluster) -> u64 {
    for node in &c.nodes {
        let spec = node.spec.clone();
        let (ok, text) = tokio::task::spawn_blocking(move || {
            spec.etcdctl(
                "healthcheck-client",
                &["endpoint", "status", "-w", "fields"],
            )
        })
        .await
        .unwrap();
        if !ok {
            continue;
        }
        if let Some(term) = text
            .lines()
            .find(|l| l.starts_with("\"RaftTerm\""))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
        {
            return term;
        }
    }
    panic!("no member reports its Raft term");
}

/// MainPID and NRestarts of every member.
async fn member_processes(c: &Cluster) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for n in &c.nodes {
        out.push((
            n.manager.main_pid(ETCD_UNIT).await,
            n.manager.show(ETCD_UNIT, "NRestarts").await,
        ));
    }
    out
}

/// The serial `openssl s_client` is served at `addr`, presenting `cert`/`key`.
fn served_serial(addr: &str, cert: &std::path::Path, key: &std::path::Path) -> Option<String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-cert"])
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    let serial = support::openssl(
        &["x509", "-noout", "-serial"],
        Some(text[start..end].as_bytes()),
    );
    Some(support::normalize_serial(
        serial.trim().trim_start_matches("serial="),
    ))
}

/// The serial of `name` on the node's disk now.
fn serial_on_disk(node: &PeerNode, name: &str) -> String {
    let inv = node.inventory();
    let cert = inv.get(name).unwrap().cert.clone().unwrap();
    support::normalize_serial(&cert.serial.replace(':', ""))
}

/// Waits until every node has a successful rotation (not a recovery) and returns each node's.
async fn every_node_rotated(c: &Cluster) -> Vec<HistoryRecord> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let done: Vec<HistoryRecord> = c
            .nodes
            .iter()
            .filter_map(|n| {
                n.history()
                    .into_iter()
                    .find(|r| r.state == HistoryState::Success && !r.recovery)
            })
            .collect();
        if done.len() == c.nodes.len() {
            return done;
        }
        let failed: Vec<HistoryRecord> = c
            .nodes
            .iter()
            .flat_map(|n| n.history())
            .filter(|r| r.state == HistoryState::Failed)
            .collect();
        assert!(
            failed.is_empty(),
            "a rotation failed: {failed:#?}\n{}",
            logs(c)
        );
        assert!(
            Instant::now() < deadline,
            "not every node rotated within {TIMEOUT:?}\n{}",
            logs(c)
        );
        tokio::time::sleep(support::cluster::POLL).await;
    }
}

fn logs(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| format!("--- {} certrotd log\n{}", n.name, n.log()))
        .collect()
}

/// What a rolling rotation of every etcd leaf of every node did.
struct Rolled {
    records: Vec<HistoryRecord>,
    writes: Writes,
    elections: u64,
    before: Vec<(u32, String)>,
    after: Vec<(u32, String)>,
    took: Duration,
}

/// A healthy three-member cluster whose every etcd leaf is due; the daemons rotate them all
/// while writers write through every endpoint.
async fn rolling_rotation(prefer_reload: bool) -> (Cluster, Rolled) {
    let mut c = Cluster::new(3, OffsetDateTime::now_utc(), YEAR).await;
    let ca = c.ca_pki();
    for n in &c.nodes {
        n.reissue(ETCD_LEAVES, &ca, OffsetDateTime::now_utc(), DUE);
        // An external etcd (a unit, as it is in this harness), not kubeadm's static pod: certrotd
        // restarts etcd.service over D-Bus when it has to (static pod restarts are off here).
        std::fs::remove_file(n.sandbox.path("/etc/kubernetes/manifests/etcd.yaml")).unwrap();
    }
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    c.prefer_reload = prefer_reload;
    c.configure(TTL, "");
    let before = member_processes(&c).await;
    let term_before = raft_term(&c).await;
    let stop = Arc::new(AtomicBool::new(false));
    let rotating = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&c, stop.clone(), rotating.clone());
    // The writers are connected and writing before the first rotation begins; their gaps until
    // then are the baseline this machine's load makes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    rotating.store(true, Ordering::Relaxed);
    let started = Instant::now();
    for n in &mut c.nodes {
        n.start_daemon(&[]);
    }
    let records = every_node_rotated(&c).await;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut writes = Writes::default();
    for w in writers {
        let w = w.await.unwrap();
        writes.ok += w.ok;
        writes.failed += w.failed;
        writes.longest_gap = writes.longest_gap.max(w.longest_gap);
        writes.baseline_gap = writes.baseline_gap.max(w.baseline_gap);
    }
    c.wait_healthy(Duration::from_secs(60)).await;
    let elections = raft_term(&c).await - term_before;
    let after = member_processes(&c).await;
    for n in &mut c.nodes {
        n.stop_daemon();
    }
    let rolled = Rolled {
        records,
        writes,
        elections,
        before,
        after,
        took,
    };
    eprintln!(
        "MEASURE prefer_reload={prefer_reload}: {} rotations in {:.1}s; writes ok {} failed {}; \
         longest write gap {} ms (before the rotations: {} ms); leader elections {}; \
         members (MainPID, NRestarts) {:?} -> {:?}",
        rolled.records.len(),
        rolled.took.as_secs_f64(),
        rolled.writes.ok,
        rolled.writes.failed,
        rolled.writes.longest_gap.as_millis(),
        rolled.writes.baseline_gap.as_millis(),
        rolled.elections,
        rolled.before,
        rolled.after
    );
    (c, rolled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_etcd_leaf_of_every_node_rotates_without_a_member_restart() {
    let (c, r) = rolling_rotation(true).await;
    for rec in &r.records {
        assert_eq!(rec.reloaded, ["etcd"], "{rec:#?}\n{}", logs(&c));
        assert!(rec.restarted.is_empty(), "{rec:#?}");
    }
    assert_eq!(r.before, r.after, "a member was restarted\n{}", logs(&c));
    assert_eq!(r.writes.failed, 0, "failed writes: {:?}", r.writes);
    assert!(r.writes.ok > 0, "{:?}", r.writes);
    assert!(
        c.nodes
            .iter()
            .all(|n| n.log().contains("nothing was restarted")),
        "{}",
        logs(&c)
    );
    // Each member serves its new serials to new client and peer connections.
    let now = OffsetDateTime::now_utc();
    for n in &c.nodes {
        n.assert_all_valid(now);
        let pki = n.etcd_pki();
        let client = format!("127.0.0.1:{}", n.spec.client_port);
        let peer = format!("127.0.0.1:{}", n.spec.peer_port);
        let hc = (
            pki.join("healthcheck-client.crt"),
            pki.join("healthcheck-client.key"),
        );
        let pc = (pki.join("peer.crt"), pki.join("peer.key"));
        assert_eq!(
            served_serial(&client, &hc.0, &hc.1),
            Some(serial_on_disk(n, "etcd-server")),
            "{}: client port",
            n.name
        );
        assert_eq!(
            served_serial(&peer, &pc.0, &pc.1),
            Some(serial_on_disk(n, "etcd-peer")),
            "{}: peer port",
            n.name
        );
        // etcdctl with the renewed healthcheck client: the member accepts it and is healthy.
        let (ok, text) = n.health().await;
        assert!(ok, "{}: {text}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prefer_reload_false_every_member_is_restarted() {
    let (c, r) = rolling_rotation(false).await;
    for rec in &r.records {
        assert_eq!(rec.restarted, ["etcd"], "{rec:#?}\n{}", logs(&c));
        assert!(rec.reloaded.is_empty(), "{rec:#?}");
    }
    for (i, (b, a)) in r.before.iter().zip(&r.after).enumerate() {
        assert_ne!(b.0, a.0, "member {} kept its MainPID", i + 1);
    }
    c.wait_healthy(Duration::from_secs(60)).await;
}

// ---- stand-ins for a component that reloads, late or never ------------------------------------

/// A kubelet stand-in: `openssl s_server` on the kubelet's TLS port serving its serving
/// certificate, re-started by its own shell loop `delay` seconds after the certificate file is
/// replaced (a component that re-reads its files by itself, `delay` late); `None`: never (reads
/// its files once). `fixed`: serves a copy taken now, so it never serves a renewed one.
fn standin_unit(node: &PeerNode, delay: Option<u32>, fixed: bool) -> String {
    let (tls, _) = node.kubelet.unwrap();
    let pki = node.sandbox.path("/var/lib/kubelet/pki");
    let (mut cert, mut key) = (pki.join("kubelet.crt"), pki.join("kubelet.key"));
    if fixed {
        let (c, k) = (node.work().join("fixed.crt"), node.work().join("fixed.key"));
        std::fs::copy(&cert, &c).unwrap();
        std::fs::copy(&key, &k).unwrap();
        (cert, key) = (c, k);
    }
    let serve = format!(
        "{} s_server -quiet -www -accept 127.0.0.1:{tls} -cert {} -key {} >/dev/null 2>&1 & pid=$!",
        support::which("openssl").display(),
        cert.display(),
        key.display()
    );
    let body = match delay {
        None => format!("{serve}; wait $pid"),
        Some(d) => format!(
            "{serve}; seen=$(stat -c %i {c}); while sleep 0.2; do now=$(stat -c %i {c} 2>/dev/null) || continue; \
             if [ \"$now\" != \"$seen\" ]; then seen=$now; sleep {d}; kill $pid; wait $pid; {serve}; fi; done",
            c = cert.display()
        ),
    };
    let script = node.work().join("kubelet-standin.sh");
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    format!(
        "[Service]\nExecStart=/bin/sh {}\nKillMode=control-group\nRestart=always\nRestartSec=200ms\n",
        script.display()
    )
}

/// A one-member cluster whose kubelet stand-in (see [`standin_unit`]) has a due serving
/// certificate, the only one due; the daemon (reload period `period`) rotates it. Returns the finished record and
/// whether the stand-in's MainPID changed.
async fn kubelet_rotation(
    delay: Option<u32>,
    fixed: bool,
    period: &str,
) -> (Cluster, HistoryRecord, bool) {
    let mut c = Cluster::new(1, OffsetDateTime::now_utc(), YEAR).await;
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    c.start_kubelets().await;
    let node = &c.nodes[0];
    // Due before the stand-in starts, so a fixed stand-in's copy is what a rollback restores.
    make_kubelet_serving_due(node);
    let unit = standin_unit(node, delay, fixed);
    node.manager.write_unit("kubelet.service", &unit).await;
    node.manager
        .systemctl(&["restart", "kubelet.service"])
        .await;
    c.prefer_reload = true;
    c.configure(TTL, "");
    node.drop_in(
        "60-reload.toml",
        &format!("[restart]\nreload_period = \"{period}\"\n[probe]\ntimeout = \"10s\"\n"),
    );
    // The stand-in listens before its certificate is made due.
    let (tls, _) = node.kubelet.unwrap();
    support::wait_for(
        "the kubelet stand-in to listen",
        Duration::from_secs(20),
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", tls))
                .await
                .ok()
        },
    )
    .await;
    let pid_before = node.manager.main_pid("kubelet.service").await;
    c.nodes[0].start_daemon(&[]);
    let node = &c.nodes[0];
    let record = support::wait_for("the kubelet rotation to finish", TIMEOUT, || async {
        node.history()
            .into_iter()
            .find(|r| r.state != HistoryState::Initiated)
    })
    .await;
    let pid_after = node.manager.main_pid("kubelet.service").await;
    c.nodes[0].stop_daemon();
    (c, record, pid_before != pid_after)
}

/// Replaces the node's kubelet serving pair (a throwaway CA's, as client-go makes it, so it is
/// regenerated, never renewed) with one due: taken from a second sandbox written with due leaves.
fn make_kubelet_serving_due(node: &PeerNode) {
    let tmp = tempfile::tempdir().unwrap();
    let due = certrotd::sandbox::write(
        &tmp.path().join("node"),
        &certrotd::sandbox::SandboxOptions {
            node_name: node.name.clone(),
            leaf_ttl: DUE,
            ..Default::default()
        },
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    for f in ["kubelet.crt", "kubelet.key"] {
        let path = format!("/var/lib/kubelet/pki/{f}");
        std::fs::copy(due.path(&path), node.sandbox.path(&path)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standin_that_reads_its_files_once_is_restarted() {
    let (c, rec, restarted) = kubelet_rotation(None, false, "3s").await;
    assert_eq!(rec.state, HistoryState::Success, "{rec:#?}\n{}", logs(&c));
    assert_eq!(rec.restarted, ["kubelet"], "{rec:#?}");
    assert!(rec.reloaded.is_empty(), "{rec:#?}");
    assert!(restarted, "the stand-in kept its MainPID");
    assert!(
        c.nodes[0]
            .log()
            .contains("did not serve its new certificates within the reload period"),
        "{}",
        logs(&c)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standin_that_reloads_in_time_is_not_restarted() {
    let (c, rec, restarted) = kubelet_rotation(Some(1), false, "20s").await;
    assert_eq!(rec.state, HistoryState::Success, "{rec:#?}\n{}", logs(&c));
    assert_eq!(rec.reloaded, ["kubelet"], "{rec:#?}\n{}", logs(&c));
    assert!(rec.restarted.is_empty(), "{rec:#?}");
    assert!(!restarted, "the stand-in was restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standin_that_reloads_late_is_restarted() {
    let (c, rec, restarted) = kubelet_rotation(Some(30), false, "3s").await;
    assert_eq!(rec.state, HistoryState::Success, "{rec:#?}\n{}", logs(&c));
    assert_eq!(rec.restarted, ["kubelet"], "{rec:#?}\n{}", logs(&c));
    assert!(rec.reloaded.is_empty(), "{rec:#?}");
    assert!(restarted, "the stand-in kept its MainPID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standin_that_never_serves_the_new_certificate_is_rolled_back() {
    let (c, rec, _) = kubelet_rotation(None, true, "2s").await;
    assert_eq!(rec.state, HistoryState::Failed, "{rec:#?}\n{}", logs(&c));
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(reason.contains("rolled back"), "{reason}\n{}", logs(&c));
    assert_eq!(rec.restarted, ["kubelet"], "{rec:#?}");
}
