//! CA rotation end to end (issue 13) on a real three-member TLS etcd cluster: every member a unit
//! under its node's real `systemd --user` manager, and an API-server stand-in per node
//! (`kube-apiserver.service`) that copies `etcd/ca.crt` and `apiserver-etcd-client` when it starts
//! and then writes to its local member continuously, logging every acknowledged write.
//!
//! The rotation is driven by certrotd's CA driver on each node (`certrotd::ca::drive`, three of
//! them in this process, each with its own etcd lease and record connection), taking turns
//! through the etcd lease. The judges are independent: `etcdctl` and `openssl s_client` with a
//! client that trusts only the old CA, `openssl verify`, the stand-ins' write logs, and the
//! files on disk.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use certrotd::ca::drive::{Conn, Connect as _, Driver, Tick};
use certrotd::ca::etcd::{EtcdConnect, EtcdHooks};
use certrotd::ca::phase::{Level, Phase};
use certrotd::ca::record::CaRecord;
use certrotd::ca::settings::CaSettings;
use certrotd::ca::{Track, node};
use certrotd::config::{LeaseBackend, LeaseSettings};
use certrotd::pki::layout::Component;
use support::cluster::{Cluster, ETCD_UNIT, PeerNode};
use support::standin::{
    STANDIN, aggregated_accepts, assert_old_ca_served, etcd_start_context, etcd_starts,
    files_holding, judge_writes, now_ms, old_client, pki, start_aggregated, start_standin,
    starts_since, wait_writing,
};
use time::OffsetDateTime;

const YEAR: Duration = Duration::from_secs(365 * 86400);
const TIMEOUT: Duration = Duration::from_secs(150);

fn lease_settings(c: &Cluster) -> LeaseSettings {
    LeaseSettings {
        backend: LeaseBackend::Etcd,
        endpoints: c.endpoints(),
        cluster: "ca-test".to_owned(),
        ttl: Duration::from_secs(3),
        ..LeaseSettings::default()
    }
}

pub(crate) fn driver(c: &Cluster, n: &PeerNode) -> (Arc<Driver>, EtcdConnect) {
    let hooks = EtcdHooks {
        pki: pki(n),
        endpoints: c.endpoints(),
        node: n.name.clone(),
        bus: Some(n.manager.bus_address().to_owned()),
        units: vec![
            (Component::Etcd, ETCD_UNIT.to_owned()),
            (Component::KubeApiserver, STANDIN.to_owned()),
        ],
        timeout: Duration::from_secs(60),
    };
    let d = Driver {
        node: n.name.clone(),
        cluster: "ca-test".to_owned(),
        track: Track::EtcdCa,
        pki: pki(n),
        backups: n.work().join("backups"),
        settings: CaSettings::sandbox(),
        hooks: Arc::new(hooks),
    };
    let connect = EtcdConnect {
        pki: pki(n),
        lease: lease_settings(c),
        node: n.name.clone(),
    };
    (Arc::new(d), connect)
}

/// Starts a rotation of `n` alone and ticks until its TrustBoth step is taken: the record.
pub(crate) async fn start_alone_and_trust_both(d: &Driver, conn: &Conn, n: &PeerNode) -> CaRecord {
    let record = d
        .start(
            conn,
            None,
            std::slice::from_ref(&n.name),
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let mut ticks = Vec::new();
    while !matches!(ticks.last(), Some(Tick::Stepped(Level::TrustBoth, None))) {
        ticks.push(d.tick(conn, &OffsetDateTime::now_utc).await.unwrap());
        assert!(ticks.len() < 5, "{ticks:?}");
    }
    record
}

/// Runs every node's driver until each sees the rotation final; returns that phase.
async fn drive_all(c: &Cluster) -> Phase {
    let mut tasks = Vec::new();
    for n in &c.nodes {
        let (d, connect) = driver(c, n);
        tasks.push(tokio::spawn(async move {
            d.run(
                &connect,
                &OffsetDateTime::now_utc,
                Duration::from_millis(200),
                std::future::pending(),
            )
            .await
        }));
    }
    let mut last = None;
    for t in tasks {
        let p = tokio::time::timeout(TIMEOUT, t)
            .await
            .expect("the rotation did not end in time")
            .unwrap();
        last = p;
    }
    last.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_ca_is_rotated_to_completed_by_the_nodes_alone_with_no_write_lost() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("certrotd=info")
        .with_test_writer()
        .try_init();
    // The write gaps are judged: no other cluster runs beside it.
    let c = Cluster::new_alone(3, OffsetDateTime::now_utc(), YEAR).await;
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    for n in &c.nodes {
        start_standin(n).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    old_client(&c.ca_pki(), &old);
    let old_ca_pem = std::fs::read_to_string(old.join("ca.crt")).unwrap();
    let starts_before: Vec<usize> = c.nodes.iter().map(etcd_starts).collect();
    wait_writing(&c).await;

    let members: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let (d0, connect0) = driver(&c, &c.nodes[0]);
    let conn = connect0.connect().await.unwrap();
    let began = Instant::now();
    let began_ms = now_ms();
    let record = d0
        .start(&conn, None, &members, OffsetDateTime::now_utc())
        .await
        .unwrap();
    drop(conn);
    assert_eq!(drive_all(&c).await, Phase::Completed);
    let took = began.elapsed();
    let ended_ms = now_ms();

    // Every node proved at DistrustOld from its own disk; the old CA is in no file.
    for n in &c.nodes {
        let p = node::prove(Track::EtcdCa, &pki(n), &record.old_fp, &record.new_fp).unwrap();
        assert_eq!(p.level, Level::DistrustOld, "{}: {}", n.name, p.detail);
        let holding = files_holding(&n.sandbox.dir, &old_ca_pem);
        assert!(
            holding.is_empty(),
            "{}: old CA still in {holding:?}",
            n.name
        );
        n.assert_all_valid(OffsetDateTime::now_utc());
    }
    c.wait_healthy(Duration::from_secs(60)).await;
    // A client that trusts only the old CA (with an old-CA client certificate) is refused by
    // every member, by etcdctl and by openssl; the new CA's clients are served.
    support::standin::assert_old_ca_refused(&c, &old).await;
    // The record holds the new key only wrapped: the API server's etcd client reads it, and
    // finds no private key in it.
    let n0 = &c.nodes[0];
    let (ok, value) = n0.spec.etcdctl(
        "../apiserver-etcd-client",
        &["get", "/certrotd/ca-test/ca/etcd-ca", "--print-value-only"],
    );
    assert!(ok, "{value}");
    let new_key = std::fs::read_to_string(pki(n0).join("etcd/ca.key")).unwrap();
    let key_line = new_key.lines().nth(1).unwrap();
    assert!(
        !value.contains("PRIVATE KEY") && !value.contains(key_line),
        "{value}"
    );
    assert!(value.contains("\"wrapped_key\":\"v1:"), "{value}");

    // No acknowledged write lost; the write gaps.
    let writes = judge_writes(&c, began_ms, ended_ms).await;
    let restarts: Vec<usize> = starts_since(&c, &starts_before, etcd_starts);
    eprintln!(
        "etcd-ca rotation of 3 nodes, zero dwell: {took:?}; member restarts {restarts:?}; {writes}"
    );
    let starts = etcd_start_context(&c);
    // Once per phase; a member that exits on its own is started again by its unit, and the
    // starts before each are shown.
    assert!(
        restarts.iter().all(|r| (3..=4).contains(r)),
        "each member restarts once per phase: {restarts:?}\n{starts}"
    );
    if restarts.iter().any(|r| *r != 3) {
        eprintln!("an extra member start:\n{starts}");
    }
    assert!(
        writes.any_gap <= 2000,
        "no stand-in wrote for {} ms",
        writes.any_gap
    );
}

/// The bytes of every file of the track on a node.
pub(crate) fn track_files(n: &PeerNode, t: Track) -> Vec<(String, Vec<u8>)> {
    let mut rels = vec![t.ca_cert(), t.ca_key()];
    rels.extend(t.leaves().iter().map(|l| l.cert));
    rels.into_iter()
        .map(|r| (r.to_owned(), std::fs::read(pki(n).join(r)).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_in_issue_new_brings_every_node_back_to_the_old_ca_alone() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("certrotd=info")
        .with_test_writer()
        .try_init();
    let c = Cluster::new(3, OffsetDateTime::now_utc(), YEAR).await;
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    let before: Vec<_> = c
        .nodes
        .iter()
        .map(|n| track_files(n, Track::EtcdCa))
        .collect();
    for n in &c.nodes {
        start_standin(n).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    old_client(&c.ca_pki(), &old);
    let members: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let (d0, connect0) = driver(&c, &c.nodes[0]);
    let conn = connect0.connect().await.unwrap();
    let record = d0
        .start(&conn, None, &members, OffsetDateTime::now_utc())
        .await
        .unwrap();
    drop(conn);
    let all = drive_all_until_abort(&c, Phase::IssueNew).await;
    assert_eq!(all, Phase::RolledBack);
    for (n, files) in c.nodes.iter().zip(&before) {
        let p = node::prove(Track::EtcdCa, &pki(n), &record.old_fp, &record.new_fp).unwrap();
        assert_eq!(p.level, Level::Original, "{}: {}", n.name, p.detail);
        assert_eq!(&track_files(n, Track::EtcdCa), files, "{}", n.name);
        let holding = files_holding(&n.sandbox.dir, &record.new_ca_pem);
        assert!(
            holding.is_empty(),
            "{}: new CA still in {holding:?}",
            n.name
        );
    }
    c.wait_healthy(Duration::from_secs(60)).await;
    assert_old_ca_served(&c, &old, "after the rollback");
}

/// Runs every node's driver; once the record reaches `abort_in` with one node's step taken,
/// aborts it (retrying on a concurrent write); returns the final phase.
async fn drive_all_until_abort(c: &Cluster, abort_in: Phase) -> Phase {
    let (d0, connect0) = driver(c, &c.nodes[0]);
    let watcher = async move {
        loop {
            if let Ok(conn) = connect0.connect().await
                && let Ok(Some((r, _))) = conn.store.load(Track::EtcdCa).await
                && r.phase == abort_in
                && r.nodes.values().any(|s| s.level == abort_in.target())
            {
                match d0.abort(&conn, OffsetDateTime::now_utc()).await {
                    Ok(to) => return to,
                    Err(e) => eprintln!("abort: {e}; again"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (aborted, last) = tokio::join!(tokio::time::timeout(TIMEOUT, watcher), drive_all(c));
    assert_eq!(aborted.unwrap(), Phase::RollingBack(Level::TrustBoth));
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_proxy_ca_on_a_single_node_with_the_local_backend_is_judged_by_an_aggregated_server()
{
    use certrotd::ca::record::LocalStore;
    use certrotd::ca::units::UnitHooks;
    use certrotd::lease::local::LocalLease;

    let c = Cluster::new(1, OffsetDateTime::now_utc(), YEAR).await;
    let n = &c.nodes[0];
    let p = pki(n);
    // The aggregated API server stand-in: verifies client certificates against
    // front-proxy-ca.crt, read when it starts.
    let port = support::etcd::free_port();
    start_aggregated(n, port, None).await;
    let client = (
        p.join("front-proxy-client.crt"),
        p.join("front-proxy-client.key"),
    );
    support::wait_for(
        "the aggregated stand-in",
        Duration::from_secs(20),
        || async { aggregated_accepts(port, &client.0, &client.1).then_some(()) },
    )
    .await;
    // An old-CA client of the test's own, from a copy of the old front-proxy CA.
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::copy(p.join("front-proxy-ca.crt"), old.join("ca.crt")).unwrap();
    std::fs::copy(p.join("front-proxy-ca.key"), old.join("ca.key")).unwrap();
    let now = OffsetDateTime::now_utc();
    support::etcd::issue_leaf(
        &old,
        &old,
        "client",
        "old-proxy",
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    );
    let old_client = (old.join("client.crt"), old.join("client.key"));

    let state = n.work().join("state");
    let conn = Conn {
        lease: Arc::new(LocalLease::new(&state, &n.name)),
        store: Arc::new(LocalStore::new(&state)),
    };
    let d = Driver {
        node: n.name.clone(),
        cluster: "single".to_owned(),
        track: Track::FrontProxyCa,
        pki: p.clone(),
        backups: state.join("backups"),
        settings: CaSettings::sandbox(),
        hooks: Arc::new(UnitHooks {
            bus: Some(n.manager.bus_address().to_owned()),
            units: vec![(
                Component::KubeApiserver,
                support::standin::AGGREGATED.to_owned(),
            )],
            timeout: Duration::from_secs(30),
        }),
    };
    let record = d
        .start(
            &conn,
            None,
            std::slice::from_ref(&n.name),
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let tick = d.tick(&conn, &OffsetDateTime::now_utc).await.unwrap();
        let (r, _) = conn.store.load(Track::FrontProxyCa).await.unwrap().unwrap();
        let level = node::prove(Track::FrontProxyCa, &p, &record.old_fp, &record.new_fp)
            .unwrap()
            .level;
        // Restarted on its new bundle, the aggregated server accepts front-proxy-client in every
        // phase, and the old CA's clients until the old CA is distrusted.
        let accepts_client = aggregated_accepts(port, &client.0, &client.1);
        let accepts_old = aggregated_accepts(port, &old_client.0, &old_client.1);
        seen.push((r.phase, level, accepts_client, accepts_old));
        if let Tick::Final(_) = tick {
            break;
        }
        assert!(seen.len() < 20, "{seen:?}");
    }
    assert!(
        seen.iter().all(|s| s.2),
        "front-proxy-client refused: {seen:?}"
    );
    for (_, level, _, old_ok) in &seen {
        assert_eq!(*old_ok, *level < Level::DistrustOld, "{seen:?}");
    }
    assert_eq!(seen.last().unwrap().0, Phase::Completed, "{seen:?}");
    assert!(seen.iter().any(|s| s.1 == Level::IssueNew), "{seen:?}");
}

/// The etcd-ca step's proof over TLS (`ca::probe`): in-memory clients of the new and the old CA
/// presented to the node's own member. The driver runs it after every forward step (a member
/// that does not do what the level asks fails the step); here it is also asked for what the
/// member must NOT do, so a probe that always passed would fail this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_ca_step_is_proved_over_tls_with_clients_of_both_cas() {
    use certrotd::ca::probe;

    let c = Cluster::new(1, OffsetDateTime::now_utc(), YEAR).await;
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    let n = &c.nodes[0];
    start_standin(n).await;
    let (d, connect) = driver(&c, n);
    let mut d = Arc::into_inner(d).unwrap();
    d.settings.dwell_trust_both = Duration::from_secs(3600);
    let url = format!("https://127.0.0.1:{}", n.spec.client_port);
    let conn = connect.connect().await.unwrap();
    let record = start_alone_and_trust_both(&d, &conn, n).await;
    drop(conn);
    let (p, b) = (pki(n), n.work().join("backups"));
    let now = OffsetDateTime::now_utc;
    // TrustBoth: both CAs' clients served; so a probe asking for the old one's refusal fails.
    let seen = probe::member(&url, "ca-test", &p, &b, &record, Level::TrustBoth, now())
        .await
        .unwrap();
    assert_eq!(seen, ["new-CA client accepted", "old-CA client accepted"]);
    let err = probe::member(&url, "ca-test", &p, &b, &record, Level::DistrustOld, now())
        .await
        .unwrap_err();
    assert!(err.contains("accepted a client of the old CA"), "{err}");

    // On to Completed (each step probed by the driver itself).
    d.settings.dwell_trust_both = Duration::ZERO;
    let mut conn = connect.connect().await.unwrap();
    let mut ticks = Vec::new();
    loop {
        match d.tick(&conn, &OffsetDateTime::now_utc).await {
            Ok(Tick::Final(p)) => {
                assert_eq!(p, Phase::Completed);
                break;
            }
            Ok(t) => ticks.push(t),
            Err(e) => panic!("{e}; after {ticks:?}"),
        }
        assert!(ticks.len() < 12, "{ticks:?}");
        conn = connect.connect().await.unwrap();
    }
    // DistrustOld: the old CA's client (its key from the IssueNew step's backup) is refused.
    let seen = probe::member(&url, "ca-test", &p, &b, &record, Level::DistrustOld, now())
        .await
        .unwrap();
    assert_eq!(seen, ["new-CA client accepted", "old-CA client refused"]);
    let err = probe::member(&url, "ca-test", &p, &b, &record, Level::IssueNew, now())
        .await
        .unwrap_err();
    assert!(err.contains("refused a client of the old CA"), "{err}");
}
