//! The daemon's state machine against real components only (issue 10, "How it is verified"):
//!
//! - the packaged unit under a real systemd manager with `WatchdogSec=5s`, waiting ~20 s for a
//!   slot another lease client holds: the watchdog keeps being fed while it waits, the rotation
//!   then succeeds, and systemd never restarted it (`NRestarts=0`, `Result=success`, same MainPID);
//! - on a real three-member etcd cluster: the slot taken over between two component restarts
//!   (the second restart does not happen, the rotation stays open and the next turn finishes it);
//!   the lease lost between a certificate and its key (the pair is left mismatched on disk, the
//!   next turn rolls forward, restarts and proves); a lease client certificate that expires while
//!   the daemon runs is replaced and rotations go on.
//!
//! The judges are independent of the code under test: `systemctl show` against the manager,
//! `etcdctl` (slot keys, lease revocation, health), `openssl` (does the key match the
//! certificate), and the history file read from disk.
//!
//! The lease-lost test arms a failpoint: `cargo test --features failpoints --test state_machine`.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use certrotd::control::proto::{HistoryRecord, HistoryState};
use certrotd::issuer::local::LocalCa;
use certrotd::issuer::{IssueRequest, Issuer as _};
use certrotd::lease::etcd::EtcdLease;
use certrotd::lease::{Held, Lease as _, Role, Want, credentials};
use certrotd::pki::encode;
use certrotd::root::Root;
use support::cluster::{Cluster, ETCD_LEAVES, ETCD_UNIT, PeerNode, etcd_ca, rfc3339};
use support::wait_for;
use time::OffsetDateTime;
use tokio::time::Instant;

/// Generous: four clusters' worth of processes share two cores.
const TIMEOUT: Duration = Duration::from_secs(150);
/// A short lease TTL: a lost keep-alive shows within a second (a third of it).
const TTL: &str = "3s";
/// A leaf lifetime inside every window of the sandbox policy (renew_before 30d).
const DUE: Duration = Duration::from_secs(2 * 86400);
const YEAR: Duration = Duration::from_secs(365 * 86400);
/// The unit the packages install.
const UNIT: &str = include_str!("../../packaging/systemd/certrotd.service");
const BIN: &str = env!("CARGO_BIN_EXE_certrotd");
/// Where the lease's slot keys live (`cluster = "peers-test"` in the harness's drop-in).
const SLOTS: &str = "/certrotd/peers-test/slots/";
/// The kubelet stand-in's unit (tests/support/cluster.rs).
const KUBELET_UNIT: &str = "kubelet.service";

#[cfg(not(feature = "failpoints"))]
fn needs_failpoints() {
    panic!("this test arms certrotd's failpoints: run `cargo test --features failpoints`");
}

#[cfg(feature = "failpoints")]
fn needs_failpoints() {}

/// Another node's lease client, presenting `node`'s own credentials under the name `name`.
async fn other_client(node: &PeerNode, name: &str) -> EtcdLease {
    let settings = certrotd::config::load(&certrotd::config::LoadOptions {
        config: Some(&node.sandbox.config_path),
        root: None,
    })
    .unwrap();
    let creds = credentials::load(
        &settings.lease,
        &Root::new(&node.sandbox.dir),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    EtcdLease::connect(&settings.lease, name, creds)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// What the other client asks for: a control-plane node whose certificates expire first, so
/// it goes before a waiting daemon.
fn want(name: &str) -> Want {
    let now = OffsetDateTime::now_utc();
    Want {
        node: name.to_owned(),
        rotation_id: format!("held-by-{name}"),
        role: Role::ControlPlane,
        earliest_expiry: now,
        now,
    }
}

/// Takes the slot with `client`, bounded.
async fn take(client: &EtcdLease, name: &str) -> Held {
    tokio::time::timeout(Duration::from_secs(60), client.acquire(&want(name)))
        .await
        .unwrap_or_else(|_| panic!("{name}: no slot within 60 s"))
        .unwrap()
}

/// Revokes the etcd lease behind every slot key (asked through `via`'s member), as etcd does
/// when a holder's keep-alives stop: its slot key goes, and its keep-alive learns it is lost.
/// Returns how many were revoked.
fn revoke_slots(via: &PeerNode) -> usize {
    let (ok, out) = via.spec.etcdctl(
        "healthcheck-client",
        &["get", "--prefix", SLOTS, "-w", "json"],
    );
    assert!(ok, "etcdctl get {SLOTS}: {out}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let leases: Vec<i64> = json["kvs"]
        .as_array()
        .map(|kvs| kvs.iter().filter_map(|kv| kv["lease"].as_i64()).collect())
        .unwrap_or_default();
    for id in &leases {
        let (ok, out) = via.spec.etcdctl(
            "healthcheck-client",
            &["lease", "revoke", &format!("{id:x}")],
        );
        assert!(ok, "etcdctl lease revoke {id:x}: {out}");
    }
    leases.len()
}

/// The latest state of rotation `id` in the node's history.
fn record(node: &PeerNode, id: &str) -> Option<HistoryRecord> {
    node.history().into_iter().find(|r| r.id == id)
}

/// What a rotation left open for the next turn says in its reason.
const LEFT_OPEN: &str = "the next turn with the lease finishes it";

/// Waits for the node's rotation `id` to reach `state` (Initiated: left open for the next turn).
async fn wait_state(node: &PeerNode, id: &str, state: HistoryState, what: &str) -> HistoryRecord {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(r) = record(node, id).filter(|r| {
            r.state == state
                && (state != HistoryState::Initiated
                    || r.reason.as_deref().unwrap_or("").contains(LEFT_OPEN))
        }) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: rotation {id} not {state:?} within {TIMEOUT:?}: {:#?}\n{}",
            record(node, id),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The id of the node's first rotation, once history has one.
async fn first_rotation(node: &PeerNode) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(r) = node.history().into_iter().find(|r| !r.recovery) {
            return r.id;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation started within {TIMEOUT:?}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `unit` of the node's manager is in `state` (ActiveState).
async fn wait_active_state(node: &PeerNode, unit: &str, state: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if node.manager.show(unit, "ActiveState").await == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unit} never {state} within {TIMEOUT:?}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a drop-in for `unit` next to its unit file (its FragmentPath) and
/// reloads the manager; what runs now is not affected.
async fn drop_in(node: &PeerNode, unit: &str, name: &str, text: &str) {
    let path = PathBuf::from(node.manager.show(unit, "FragmentPath").await);
    assert!(path.is_file(), "{unit}: FragmentPath {}", path.display());
    let dir = path.with_extension("service.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
    node.manager.systemctl(&["daemon-reload"]).await;
}

/// Makes the node's etcd an external etcd (a systemd unit, which it is in this harness) rather
/// than kubeadm's static pod: without its manifest, certrotd restarts `etcd.service` over D-Bus
/// (static pod restarts are off in the harness, so a stacked etcd would never be restarted).
fn etcd_as_unit(node: &PeerNode) {
    let manifest = node.sandbox.path("/etc/kubernetes/manifests/etcd.yaml");
    std::fs::remove_file(&manifest)
        .unwrap_or_else(|e| panic!("remove {}: {e}", manifest.display()));
}

/// The public key of a PEM certificate or private key file, as openssl reads it.
fn public_key(path: &Path, cert: bool) -> String {
    let args: &[&str] = if cert {
        &["x509", "-noout", "-pubkey", "-in"]
    } else {
        &["pkey", "-pubout", "-in"]
    };
    let out = Command::new("openssl")
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The etcd certificate/key pairs of a node (node paths, without extension).
const ETCD_PAIRS: &[&str] = &[
    "/etc/kubernetes/pki/etcd/server",
    "/etc/kubernetes/pki/etcd/peer",
    "/etc/kubernetes/pki/etcd/healthcheck-client",
    "/etc/kubernetes/pki/apiserver-etcd-client",
];

/// The pairs whose key does not match their certificate, by openssl.
fn mismatched(node: &PeerNode) -> Vec<String> {
    ETCD_PAIRS
        .iter()
        .filter(|p| {
            let crt = node.sandbox.path(format!("{p}.crt"));
            let key = node.sandbox.path(format!("{p}.key"));
            public_key(&crt, true) != public_key(&key, false)
        })
        .map(|p| (*p).to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The watchdog under the real systemd manager.

/// The packaged unit for the harness's manager: the built binary on the node's configuration,
/// the node's directory the one writable path, `WatchdogSec=5s` and `NotifyAccess=main`, and
/// only what cannot work in the harness left out: PrivateTmp (the manager's notify socket lives
/// under /tmp and would be hidden, so READY=1 and WATCHDOG=1 would never arrive) and
/// ProtectHome when the checkout is under a home directory.
fn watchdog_unit(config: &Path, node_dir: &Path, log: &Path) -> String {
    let under_home = ["/home", "/root", "/run/user"]
        .iter()
        .any(|h| Path::new(env!("CARGO_MANIFEST_DIR")).starts_with(h));
    let mut out = String::new();
    for line in UNIT.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        match key {
            "PrivateTmp" => continue,
            "ProtectHome" if under_home => continue,
            "ExecStart" => {
                out.push_str(&format!(
                    "ExecStart={BIN} run --config {}\n",
                    config.display()
                ));
            }
            "ReadWritePaths" => {
                out.push_str(&format!("ReadWritePaths={}\n", node_dir.display()));
            }
            "WatchdogSec" => out.push_str("WatchdogSec=5s\nNotifyAccess=main\n"),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
        if line == "[Service]" {
            out.push_str(&format!(
                "StandardOutput=append:{}\nStandardError=inherit\nEnvironment=CERTROTD_LOG=info\n",
                log.display()
            ));
        }
    }
    assert!(out.contains("WatchdogSec=5s"), "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_a_long_wait_for_the_lease_feeds_the_watchdog_and_the_rotation_succeeds() {
    const SERVICE: &str = "certrotd.service";
    const HOLD: Duration = Duration::from_secs(20);
    let c = Cluster::new(1, OffsetDateTime::now_utc(), YEAR).await;
    let node = &c.nodes[0];
    node.reissue(ETCD_LEAVES, &c.ca_pki(), OffsetDateTime::now_utc(), DUE);
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    // etcd stays kubeadm's static pod (never restarted: static pod restarts are off), so the
    // one member keeps serving the lease throughout.
    c.configure("10s", "");

    // Another node holds the only slot before certrotd even starts.
    let other = other_client(node, "other-node").await;
    let held = take(&other, "other-node").await;

    let unit = watchdog_unit(&node.sandbox.config_path, node.tmp.path(), &node.log_path());
    node.manager.write_unit(SERVICE, &unit).await;
    // Type=notify: the start job ends at READY=1.
    node.manager.start_unit(SERVICE).await;
    let pid = node.manager.main_pid(SERVICE).await;
    assert_ne!(pid, 0);
    assert_eq!(node.manager.show(SERVICE, "WatchdogUSec").await, "5s");

    // STATUS= says it waits, while the other node holds the slot.
    let status = wait_for("STATUS= saying it waits for the lease", TIMEOUT, || async {
        let s = node.manager.show(SERVICE, "StatusText").await;
        s.contains("waiting for the lease").then_some(s)
    })
    .await;
    let waiting_since = OffsetDateTime::now_utc();
    let held_at = Instant::now();
    eprintln!("status while waiting: {status:?}");

    // While it waits, systemd sees the keep-alives (WatchdogTimestamp moves) at least every
    // WatchdogSec; sampled every 200 ms.
    let mut last = node
        .manager
        .show(SERVICE, "WatchdogTimestampMonotonic")
        .await;
    let mut last_change = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut pings = 0;
    while held_at.elapsed() < HOLD {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ts = node
            .manager
            .show(SERVICE, "WatchdogTimestampMonotonic")
            .await;
        if ts != last {
            max_gap = max_gap.max(last_change.elapsed());
            last_change = Instant::now();
            last = ts;
            pings += 1;
        }
        assert_eq!(
            node.manager.show(SERVICE, "ActiveState").await,
            "active",
            "{}",
            node.log()
        );
    }
    max_gap = max_gap.max(last_change.elapsed());
    let released_at = OffsetDateTime::now_utc();
    other.release(held).await.unwrap();

    let id = first_rotation(node).await;
    let done = wait_state(node, &id, HistoryState::Success, "after the slot was freed").await;
    let from = rfc3339(done.disruptive_from.as_deref().unwrap());
    let waited = from - waiting_since;
    eprintln!(
        "waited {waited} for the lease; {pings} watchdog keep-alives seen while waiting, \
         longest gap {max_gap:?}"
    );
    // History keeps whole seconds.
    assert!(
        from + time::Duration::SECOND >= released_at,
        "disrupted at {from}, before the other node released at {released_at}"
    );
    assert!(waited > time::Duration::seconds(15), "waited only {waited}");
    assert!(
        max_gap < Duration::from_secs(5),
        "no keep-alive for {max_gap:?} while waiting (WatchdogSec=5s)"
    );
    assert!(pings >= 5, "only {pings} keep-alives in {HOLD:?}");

    assert_never_killed(node, SERVICE, pid).await;
    c.wait_healthy(Duration::from_secs(60)).await;
    node.assert_all_valid(OffsetDateTime::now_utc());
    node.manager.systemctl(&["stop", SERVICE]).await;
}

/// systemd never stepped in: no restart, no watchdog timeout, the same main process.
async fn assert_never_killed(node: &PeerNode, service: &str, pid: u32) {
    for (property, expected) in [
        ("NRestarts", "0".to_owned()),
        ("Result", "success".to_owned()),
        ("ActiveState", "active".to_owned()),
        ("MainPID", pid.to_string()),
    ] {
        assert_eq!(
            node.manager.show(service, property).await,
            expected,
            "{property}\n{}\n{}",
            node.log(),
            node.manager.log()
        );
    }
    assert!(
        !node.manager.log().contains("Watchdog timeout"),
        "{}",
        node.manager.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_a_slow_proof_feeds_the_watchdog_and_the_rotation_succeeds() {
    const SERVICE: &str = "certrotd.service";
    // The kubelet stand-in serves TLS only this long after each (re)start.
    const SLOW: u64 = 20;
    // Every leaf written 363 days ago for a year: due now; the rotation restarts the kubelet.
    let then = OffsetDateTime::now_utc() - time::Duration::days(363);
    let mut c = Cluster::new(1, then, YEAR).await;
    c.start_kubelets().await;
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    c.configure("10s", "");
    let node = &c.nodes[0];
    // From its next start on, the kubelet takes SLOW seconds to serve: the proof waits for it.
    let (tls, _) = node.kubelet.unwrap();
    let pki = node.sandbox.path("/var/lib/kubelet/pki");
    let slow = format!(
        "[Service]\nExecStart=/bin/sh -c 'sleep {SLOW}; exec {} s_server -quiet -www -accept 127.0.0.1:{tls} -cert {} -key {}'\n\
         Restart=always\nRestartSec=200ms\nStandardOutput=null\n",
        support::which("openssl").display(),
        pki.join("kubelet.crt").display(),
        pki.join("kubelet.key").display()
    );
    node.manager.write_unit(KUBELET_UNIT, &slow).await;
    let kubelet_before = node.manager.main_pid(KUBELET_UNIT).await;

    let unit = watchdog_unit(&node.sandbox.config_path, node.tmp.path(), &node.log_path());
    node.manager.write_unit(SERVICE, &unit).await;
    node.manager.start_unit(SERVICE).await;
    let pid = node.manager.main_pid(SERVICE).await;
    let status = wait_for("STATUS= saying it proves", TIMEOUT, || async {
        let s = node.manager.show(SERVICE, "StatusText").await;
        s.contains("proving").then_some(s)
    })
    .await;
    let proving_since = Instant::now();
    eprintln!("status while proving: {status:?}");
    let id = first_rotation(node).await;
    let mut last = node
        .manager
        .show(SERVICE, "WatchdogTimestampMonotonic")
        .await;
    let mut last_change = Instant::now();
    let (mut max_gap, mut pings) = (Duration::ZERO, 0);
    let done = loop {
        if let Some(r) = record(node, &id).filter(|r| r.state != HistoryState::Initiated) {
            break r;
        }
        assert!(
            proving_since.elapsed() < TIMEOUT,
            "not finished\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ts = node
            .manager
            .show(SERVICE, "WatchdogTimestampMonotonic")
            .await;
        if ts != last {
            max_gap = max_gap.max(last_change.elapsed());
            last_change = Instant::now();
            last = ts;
            pings += 1;
        }
    };
    let proving = proving_since.elapsed();
    eprintln!(
        "proof took {proving:?}; {pings} watchdog keep-alives seen meanwhile, longest gap {max_gap:?}"
    );
    assert_eq!(
        done.state,
        HistoryState::Success,
        "{done:#?}\n{}",
        node.log()
    );
    assert!(
        proving > Duration::from_secs(15),
        "the proof took only {proving:?}"
    );
    assert!(
        max_gap < Duration::from_secs(5),
        "no keep-alive for {max_gap:?} while proving (WatchdogSec=5s)"
    );
    assert_ne!(node.manager.main_pid(KUBELET_UNIT).await, kubelet_before);
    assert_never_killed(node, SERVICE, pid).await;
    node.manager.systemctl(&["stop", SERVICE]).await;
}

// ---------------------------------------------------------------------------------------------
// 2a. The slot taken over between two component restarts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_taken_over_between_two_restarts_stops_the_second_and_the_next_turn_finishes() {
    // Every leaf written 363 days ago for a year, so due now (the policy is a year's): peer-1's
    // rotation restarts etcd, then the kubelet (static pods are off).
    let then = OffsetDateTime::now_utc() - time::Duration::days(363);
    let mut c = Cluster::new(3, then, YEAR).await;
    c.start_kubelets().await;
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    c.configure(TTL, "");
    let node = &c.nodes[0];
    etcd_as_unit(node);
    // etcd's restart on peer-1 takes 8 s: the window in which another node takes the slot.
    drop_in(
        node,
        ETCD_UNIT,
        "50-slow.conf",
        "[Service]\nExecStartPre=/bin/sleep 8\n",
    )
    .await;
    let etcd_before = node.manager.main_pid(ETCD_UNIT).await;
    let kubelet_before = node.manager.main_pid(KUBELET_UNIT).await;
    let other = other_client(&c.nodes[1], "peer-2").await;

    c.nodes[0].start_daemon(&[]);
    let node = &c.nodes[0];
    wait_active_state(node, ETCD_UNIT, "activating").await;
    // The first restart is under way: the slot goes to another node.
    assert_eq!(revoke_slots(&c.nodes[1]), 1, "peer-1 holds the only slot");
    let held = take(&other, "peer-2").await;

    let id = first_rotation(node).await;
    let open = wait_state(node, &id, HistoryState::Initiated, "slot taken").await;
    let reason = open.reason.clone().unwrap_or_default();
    assert!(reason.contains("restarting kubelet"), "{open:#?}");
    wait_active_state(node, ETCD_UNIT, "active").await;
    let etcd_after_first = node.manager.main_pid(ETCD_UNIT).await;
    assert_ne!(etcd_after_first, etcd_before, "etcd was restarted first");
    // While peer-2 holds the slot, the kubelet is not restarted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        node.manager.main_pid(KUBELET_UNIT).await,
        kubelet_before,
        "the kubelet was restarted without the lease\n{}",
        node.log()
    );
    assert_eq!(
        record(node, &id).unwrap().state,
        HistoryState::Initiated,
        "{:#?}",
        record(node, &id)
    );

    other.release(held).await.unwrap();
    let released = Instant::now();
    let done = wait_state(node, &id, HistoryState::Success, "after peer-2 released").await;
    eprintln!(
        "slot taken: left open, kubelet untouched; finished {:?} after peer-2 released",
        released.elapsed()
    );
    assert!(
        done.reason
            .as_deref()
            .unwrap_or("")
            .contains("finished by the next start"),
        "{done:#?}"
    );
    assert_ne!(
        node.manager.main_pid(KUBELET_UNIT).await,
        kubelet_before,
        "the next turn restarted the kubelet"
    );
    assert_ne!(
        node.manager.main_pid(ETCD_UNIT).await,
        etcd_after_first,
        "the next turn restarted etcd again (its proof needs the restart)"
    );
    c.wait_healthy(Duration::from_secs(60)).await;
    node.assert_all_valid(OffsetDateTime::now_utc());
    c.nodes[0].stop_daemon();
}

// ---------------------------------------------------------------------------------------------
// 2b. The lease lost between a certificate and its key.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_between_a_certificate_and_its_key_is_finished_by_the_next_turn() {
    needs_failpoints();
    let mut c = Cluster::new(3, OffsetDateTime::now_utc(), YEAR).await;
    let ca = c.ca_pki();
    c.nodes[0].reissue(ETCD_LEAVES, &ca, OffsetDateTime::now_utc(), DUE);
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    c.configure(TTL, "");
    let other = other_client(&c.nodes[1], "peer-2").await;
    etcd_as_unit(&c.nodes[0]);
    let etcd_before = c.nodes[0].manager.main_pid(ETCD_UNIT).await;

    // peer-1 stops right after installing its first file.
    let trace = c.nodes[0].work().join("failpoints");
    let release = c.nodes[0].work().join("release");
    c.nodes[0].start_daemon(&[
        ("CERTROTD_FAILPOINT", "installed:1:pause".to_owned()),
        ("CERTROTD_FAILPOINT_RELEASE", release.display().to_string()),
        ("CERTROTD_FAILPOINT_TRACE", trace.display().to_string()),
    ]);
    let node = &c.nodes[0];
    wait_for("peer-1 paused after its first file", TIMEOUT, || async {
        std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .contains("installed")
            .then_some(())
    })
    .await;
    let half = mismatched(node);
    assert_eq!(half.len(), 1, "one certificate without its key: {half:?}");

    // The lease is lost (etcd revokes it) and another node takes the slot.
    assert_eq!(revoke_slots(&c.nodes[1]), 1, "peer-1 holds the only slot");
    let held = take(&other, "peer-2").await;
    // Its keep-alive (every second) learns it before the install goes on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(&release, b"").unwrap();

    let id = first_rotation(node).await;
    let open = wait_state(node, &id, HistoryState::Initiated, "lease lost").await;
    assert!(
        open.reason.as_deref().unwrap_or("").contains("lease lost"),
        "{open:#?}"
    );
    // Nothing more was installed without the lease, nothing restarted.
    assert_eq!(mismatched(node), half, "{}", node.log());
    assert_eq!(node.manager.main_pid(ETCD_UNIT).await, etcd_before);

    other.release(held).await.unwrap();
    let released = Instant::now();
    let done = wait_state(node, &id, HistoryState::Success, "after peer-2 released").await;
    eprintln!(
        "lease lost between {half:?} and its key: finished {:?} after peer-2 released: {:?}",
        released.elapsed(),
        done.reason
    );
    assert_eq!(mismatched(node), Vec::<String>::new(), "{}", node.log());
    assert_ne!(
        node.manager.main_pid(ETCD_UNIT).await,
        etcd_before,
        "etcd restarted onto the finished rotation\n{}",
        node.log()
    );
    assert!(done.disruptive_to.is_some(), "{done:#?}");
    c.wait_healthy(Duration::from_secs(60)).await;
    node.assert_all_valid(OffsetDateTime::now_utc());
    c.nodes[0].stop_daemon();
}

// ---------------------------------------------------------------------------------------------
// 2c. The lease client's certificate expires while the daemon runs.

/// Issues a client certificate for the lease (healthcheck-client's name and key) valid for
/// `life` from now, into `/etc/certrotd-lease/` of the node: outside every directory certrotd
/// renews, so it is never rotated, only used.
fn short_lease_client(node: &PeerNode, ca_pki: &Path, life: Duration) -> OffsetDateTime {
    let inv = node.inventory();
    let hc = inv.get("etcd-healthcheck-client").unwrap();
    let template = hc.cert.as_ref().unwrap();
    let (ca_cert, ca_key) = etcd_ca(ca_pki);
    let issuer = LocalCa::new("etcd-ca", ca_cert, ca_key).unwrap();
    let issued = issuer
        .issue(&IssueRequest {
            template,
            spki: &template.spki_der,
            validity: life,
            now: OffsetDateTime::now_utc(),
        })
        .unwrap();
    let dir = node.sandbox.path("/etc/certrotd-lease");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("client.crt"), encode::cert_pem(&issued.der)).unwrap();
    std::fs::copy(
        node.sandbox
            .path("/etc/kubernetes/pki/etcd/healthcheck-client.key"),
        dir.join("client.key"),
    )
    .unwrap();
    let crt = dir.join("client.crt");
    let cert = certrotd::pki::cert::Cert::from_der(
        &certrotd::pki::pem::blocks(&crt, &std::fs::read(&crt).unwrap()).unwrap()[0].der,
    )
    .unwrap();
    cert.not_after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_client_certificate_that_expires_while_running_is_replaced() {
    const LIFE: Duration = Duration::from_secs(40);
    let mut c = Cluster::new(3, OffsetDateTime::now_utc(), YEAR).await;
    let ca = c.ca_pki();
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    c.configure(
        TTL,
        "cert_file = \"/etc/certrotd-lease/client.crt\"\nkey_file = \"/etc/certrotd-lease/client.key\"\n",
    );
    // A first rotation (a leaf nothing restarts for) under the short-lived client.
    let hc = ["etcd-healthcheck-client"];
    c.nodes[0].reissue(&hc, &ca, OffsetDateTime::now_utc(), DUE);
    let expires = short_lease_client(&c.nodes[0], &ca, LIFE);
    c.nodes[0].start_daemon(&[]);
    let node = &c.nodes[0];
    let first = first_rotation(node).await;
    wait_state(node, &first, HistoryState::Success, "first rotation").await;
    assert!(
        OffsetDateTime::now_utc() < expires,
        "the first rotation ran after the client certificate expired: the test proves nothing"
    );

    // The certificate runs out; every member restarts, so no connection made with it survives.
    let wait = (expires - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    tokio::time::sleep(Duration::try_from(wait).unwrap() + Duration::from_secs(1)).await;
    for n in &c.nodes {
        n.manager.systemctl(&["restart", ETCD_UNIT]).await;
    }
    c.wait_healthy(Duration::from_secs(60)).await;
    let expired_at = OffsetDateTime::now_utc();

    // A second rotation still gets the lease.
    c.nodes[0].reissue(&hc, &ca, OffsetDateTime::now_utc(), DUE);
    let node = &c.nodes[0];
    let second = wait_for("a second rotation", TIMEOUT, || async {
        node.history()
            .into_iter()
            .find(|r| r.id != first && !r.recovery)
    })
    .await;
    let done = wait_state(node, &second.id, HistoryState::Success, "second rotation").await;
    let from = rfc3339(done.disruptive_from.as_deref().unwrap());
    // History keeps whole seconds.
    assert!(from + time::Duration::SECOND >= expired_at, "{done:#?}");
    assert!(done.fencing_token.is_some(), "{done:#?}");
    let log = node.log();
    assert!(
        log.contains("minted in memory"),
        "the lease connected again with a minted client certificate:\n{log}"
    );
    eprintln!(
        "{}",
        log.lines()
            .filter(|l| l.contains("lease:") || l.contains("lease credentials"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    c.nodes[0].stop_daemon();
}
