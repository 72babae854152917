//! Peers end to end: a real three-member etcd cluster on loopback, each member one sandbox node
//! with its own root, its own `systemd --user` manager running the member as `etcd.service`, and
//! its own certrotd daemon (the real binary) taking turns through `[lease] backend = "etcd"`.
//! Every assertion about turns is made from the daemons' history files: each rotation record
//! carries `disruptive_from`, `disruptive_to` and `fencing_token`.
//!
//! Covered: all nodes due at once (every node rotates, no two disruptive intervals overlap,
//! fencing tokens increase in time order, etcd healthy and every certificate valid after, the
//! cluster view over `status --cluster`); kill -9 of the holder mid-rotation (another node goes
//! after the TTL, the killed node finishes its rotation from its journal when started again); one
//! member stopped during the rotations; and a cluster powered off for 400 days (every leaf expired,
//! members cannot talk) brought back by the daemons alone.
//!
//! The kill test arms a failpoint: `cargo test --features failpoints`.

use crate::support;

use std::time::Duration;

use certrotd::control::client;
use certrotd::control::proto::{HistoryRecord, HistoryState, Request, Response};
use support::cluster::{Cluster, ETCD_LEAVES, ETCD_UNIT, rfc3339};
use support::wait_for;
use time::OffsetDateTime;

/// Long enough for three daemons taking turns on two shared cores.
const TIMEOUT: Duration = Duration::from_secs(180);
/// The lease TTL in these tests: a dead holder's slot frees itself quickly.
const TTL: &str = "3s";
/// A leaf lifetime inside every window of the sandbox policy (renew_before 30d, emergency 7d).
const DUE: Duration = Duration::from_secs(2 * 86400);
const YEAR: Duration = Duration::from_secs(365 * 86400);

/// Every node's finished rotation records (Success or Failed), with the node's name.
fn finished(c: &Cluster) -> Vec<HistoryRecord> {
    c.nodes
        .iter()
        .flat_map(|n| n.history())
        .filter(|r| r.state != HistoryState::Initiated)
        .collect()
}

/// Waits until every node has a successful rotation.
async fn every_node_rotated(c: &Cluster) -> Vec<HistoryRecord> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let ok = c.nodes.iter().all(|n| {
            n.history()
                .iter()
                .any(|r| r.state == HistoryState::Success && !r.recovery)
        });
        if ok {
            return finished(c);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every node rotated within {TIMEOUT:?}: {:#?}\n{}",
            finished(c),
            logs(c)
        );
        tokio::time::sleep(support::cluster::POLL).await;
    }
}

/// No two disruptive intervals of lease-holding rotations overlap, and fencing tokens increase
/// in the order the intervals come.
fn assert_turns_taken(records: &[HistoryRecord], logs: &str) {
    let mut spans: Vec<(OffsetDateTime, OffsetDateTime, u64, String)> = records
        .iter()
        .filter(|r| !r.recovery && r.disruptive_from.is_some())
        .map(|r| {
            let to = r
                .disruptive_to
                .as_deref()
                .unwrap_or_else(|| panic!("{}: disruptive_from without disruptive_to", r.id));
            let token = r.fencing_token.unwrap_or_else(|| {
                panic!("{}: a lease-holding rotation without a fencing token", r.id)
            });
            (
                rfc3339(r.disruptive_from.as_deref().unwrap()),
                rfc3339(to),
                token,
                format!("{} on {}", r.id, r.node),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "disruptive intervals overlap: {} [{} .. {}] and {} [{} .. {}]\n{logs}",
            w[0].3,
            w[0].0,
            w[0].1,
            w[1].3,
            w[1].0,
            w[1].1
        );
        assert!(
            w[0].2 < w[1].2,
            "fencing tokens do not increase in time order: {} has {}, {} has {}",
            w[0].3,
            w[0].2,
            w[1].3,
            w[1].2
        );
    }
}

fn logs(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| format!("--- {} certrotd log\n{}", n.name, n.log()))
        .collect()
}

/// Every node's leaves valid and verified, and every member healthy.
async fn assert_all_healthy(c: &Cluster) {
    c.wait_healthy(Duration::from_secs(60)).await;
    let now = OffsetDateTime::now_utc();
    for n in &c.nodes {
        n.assert_all_valid(now);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_due_at_once_rotates_in_turn_and_the_cluster_stays_healthy() {
    let mut c = Cluster::new(3, OffsetDateTime::now_utc(), YEAR).await;
    let ca = c.ca_pki();
    for n in &c.nodes {
        n.reissue(ETCD_LEAVES, &ca, OffsetDateTime::now_utc(), DUE);
    }
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    c.configure(TTL, "");
    for n in &mut c.nodes {
        n.start_daemon(&[]);
    }
    let records = every_node_rotated(&c).await;
    let logs = logs(&c);
    assert!(
        records.iter().all(|r| r.state == HistoryState::Success),
        "{records:#?}\n{logs}"
    );
    assert_turns_taken(&records, &logs);
    assert_all_healthy(&c).await;

    // The cluster view, through one daemon's socket: every node, no holder left.
    let socket = c.nodes[0].socket();
    let view = wait_for(
        "every node in the cluster view",
        Duration::from_secs(30),
        || async {
            match client::request(&socket, Request::Cluster, Duration::from_secs(10)).await {
                Ok(Response::Cluster(v)) if v.nodes.len() == 3 && v.holders.is_empty() => Some(v),
                _ => None,
            }
        },
    )
    .await;
    for n in &c.nodes {
        let s = view.nodes.iter().find(|s| s.node == n.name).unwrap();
        assert!(s.last_rotation.is_some(), "{s:?}");
    }
    // And through the command line, as an operator reads it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certrotd"))
        .args(["status", "--cluster", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in &c.nodes {
        assert!(text.contains(&n.name), "{text}");
    }
    assert!(text.contains("lease: free"), "{text}");
    for n in &mut c.nodes {
        n.stop_daemon();
    }
}

/// Tests that arm failpoints in the binary fail plainly without them.
#[cfg(not(feature = "failpoints"))]
fn needs_failpoints() {
    panic!("this test arms certrotd's failpoints: run `cargo test --features failpoints`");
}

#[cfg(feature = "failpoints")]
fn needs_failpoints() {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_rotation_frees_its_slot_at_the_ttl_and_finishes_from_its_journal() {
    needs_failpoints();
    let mut c = Cluster::new(3, OffsetDateTime::now_utc(), YEAR).await;
    let ca = c.ca_pki();
    for n in &c.nodes {
        n.reissue(ETCD_LEAVES, &ca, OffsetDateTime::now_utc(), DUE);
    }
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    c.configure(TTL, "");

    // peer-1 takes the lease and stops after installing (committed, nothing restarted yet).
    let trace = c.nodes[0].work().join("failpoints");
    let never = c.nodes[0].work().join("never-released");
    c.nodes[0].start_daemon(&[
        ("CERTROTD_FAILPOINT", "journal-committed:1:pause".to_owned()),
        ("CERTROTD_FAILPOINT_RELEASE", never.display().to_string()),
        ("CERTROTD_FAILPOINT_TRACE", trace.display().to_string()),
    ]);
    wait_for("peer-1 paused after installing", TIMEOUT, || async {
        std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .contains("journal-committed")
            .then_some(())
    })
    .await;
    // The others queue behind it; nobody proceeds while it holds the slot.
    c.nodes[1].start_daemon(&[]);
    c.nodes[2].start_daemon(&[]);
    let socket = c.nodes[1].socket();
    wait_for(
        "peer-1 holding and another node queued",
        TIMEOUT,
        || async {
            match client::request(&socket, Request::Cluster, Duration::from_secs(10)).await {
                Ok(Response::Cluster(v))
                    if v.holders.iter().any(|h| h.node == "peer-1") && !v.queue.is_empty() =>
                {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;
    // Status keeps answering while a node waits, and says where it stands.
    let detail = wait_for(
        "peer-2's status showing its place in the queue",
        TIMEOUT,
        || async {
            match client::request(&socket, Request::Status, Duration::from_secs(10)).await {
                Ok(Response::Status(s)) => s
                    .lease
                    .detail
                    .filter(|d| d.contains("waiting for the lease, position")),
                _ => None,
            }
        },
    )
    .await;
    assert!(detail.contains("held by peer-1"), "{detail}");
    // A stop while queued is prompt (nothing was started), and the node queues again after.
    let asked = std::time::Instant::now();
    c.nodes[2].stop_daemon();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "stopping a queued daemon took {:?}",
        asked.elapsed()
    );
    c.nodes[2].start_daemon(&[]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        finished(&c).is_empty(),
        "nobody may rotate while peer-1 holds the lease: {:#?}",
        finished(&c)
    );

    let killed = OffsetDateTime::now_utc();
    c.nodes[0].kill_daemon();
    wait_for(
        "peer-2 and peer-3 rotated after the kill",
        TIMEOUT,
        || async {
            let done = c.nodes[1..]
                .iter()
                .all(|n| n.history().iter().any(|r| r.state == HistoryState::Success));
            done.then_some(())
        },
    )
    .await;
    for n in &c.nodes[1..] {
        let r = n
            .history()
            .into_iter()
            .find(|r| r.state == HistoryState::Success)
            .unwrap();
        let from = rfc3339(r.disruptive_from.as_deref().unwrap());
        assert!(
            from > killed,
            "{}: disrupted at {from}, before the holder was killed at {killed}",
            n.name
        );
    }
    // peer-1's rotation is still open in its history, until it starts again.
    let open: Vec<HistoryRecord> = c.nodes[0]
        .history()
        .into_iter()
        .filter(|r| r.state == HistoryState::Initiated)
        .collect();
    assert_eq!(open.len(), 1, "{open:#?}");

    c.nodes[0].start_daemon(&[]);
    let id = open[0].id.clone();
    let resumed = wait_for(
        "peer-1 finished its rotation from its journal",
        TIMEOUT,
        || async {
            c.nodes[0]
                .history()
                .into_iter()
                .find(|r| r.id == id && r.state != HistoryState::Initiated)
        },
    )
    .await;
    let logs = logs(&c);
    assert_eq!(resumed.state, HistoryState::Success, "{resumed:#?}\n{logs}");
    assert!(
        resumed
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("finished by the next start"),
        "{resumed:#?}"
    );
    // Its disruption (the restart and proof after the crash) is recorded under its new lease.
    assert!(
        resumed.disruptive_from.is_some() && resumed.disruptive_to.is_some(),
        "{resumed:#?}"
    );
    assert!(resumed.fencing_token.is_some(), "{resumed:#?}");
    assert_turns_taken(&finished(&c), &logs);
    assert_all_healthy(&c).await;
    for n in &mut c.nodes {
        n.stop_daemon();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_member_stopped_turns_never_overlap_and_progress_resumes_when_it_returns() {
    let mut c = Cluster::new(3, OffsetDateTime::now_utc(), YEAR).await;
    let ca = c.ca_pki();
    for n in &c.nodes {
        n.reissue(ETCD_LEAVES, &ca, OffsetDateTime::now_utc(), DUE);
    }
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    // Longer than a member's restart plus an election: with one member away, every restart of
    // another costs the quorum for a moment.
    c.configure("10s", "");
    c.nodes[2].manager.systemctl(&["stop", ETCD_UNIT]).await;
    c.nodes[0].start_daemon(&[]);
    c.nodes[1].start_daemon(&[]);
    // The two others make progress without the third member...
    wait_for("one rotation with a member stopped", TIMEOUT, || async {
        finished(&c)
            .iter()
            .any(|r| r.state == HistoryState::Success)
            .then_some(())
    })
    .await;
    // ...and when it returns, its node takes its turn too.
    c.nodes[2].manager.start_unit(ETCD_UNIT).await;
    c.nodes[2].start_daemon(&[]);
    let records = every_node_rotated(&c).await;
    let logs = logs(&c);
    assert_turns_taken(&records, &logs);
    assert_all_healthy(&c).await;
    for n in &mut c.nodes {
        n.stop_daemon();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_powered_off_for_400_days_is_brought_back_by_the_daemons_alone() {
    let then = OffsetDateTime::now_utc() - time::Duration::days(400);
    let mut c = Cluster::new(3, then, YEAR).await;
    // Every leaf is due, the kubelet's too: it needs a kubelet to restart and probe.
    c.start_kubelets().await;
    c.configure(TTL, "");
    // Every leaf expired 35 days ago: the members start, but cannot talk to each other.
    c.start_etcd().await;
    for n in &mut c.nodes {
        n.start_daemon(&[]);
    }
    c.wait_healthy(TIMEOUT).await;
    let records = every_node_rotated(&c).await;
    let logs = logs(&c);
    for n in &c.nodes {
        let history = n.history();
        let recovery = history
            .iter()
            .find(|r| r.recovery)
            .unwrap_or_else(|| panic!("{}: no recovery in history: {history:#?}\n{logs}", n.name));
        assert_eq!(recovery.fencing_token, None, "{recovery:#?}");
        assert!(
            recovery
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("RECOVERY"),
            "{recovery:#?}"
        );
        assert!(
            n.log().contains("RECOVERY"),
            "{}: the journal must say so loudly",
            n.name
        );
    }
    assert_turns_taken(&records, &logs);
    // Quorum: every member answers its health check; every certificate is valid again.
    wait_for("every certificate renewed", TIMEOUT, || async {
        let now = OffsetDateTime::now_utc();
        c.nodes
            .iter()
            .all(|n| {
                n.inventory()
                    .entries
                    .iter()
                    .filter(|e| !e.is_ca())
                    .filter_map(|e| e.cert.as_ref())
                    .all(|cert| cert.not_after > now)
            })
            .then_some(())
    })
    .await;
    assert_all_healthy(&c).await;
    for n in &mut c.nodes {
        n.stop_daemon();
    }
}
