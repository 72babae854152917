//! A node cut off from etcd after its own step of a CA rotation puts the step back (issue 13):
//! on a real TLS etcd member under the node's real `systemd --user` manager, the node takes its
//! etcd-ca TrustBoth step, its member is stopped (etcd really unreachable, nothing mocked), and
//! once `lost_etcd_rollback` has passed the node's files are back as they were before the
//! step, the member is started again by the rollback's restart, and the node's true level goes
//! into the record when etcd answers, so the phase waits until the node has taken the step again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use certrotd::ca::drive::{Connect as _, Tick};
use certrotd::ca::lost::{Lost, Watch, seen_path};
use certrotd::ca::phase::{Level, Phase};
use certrotd::ca::{Track, node};
use support::cluster::{Cluster, ETCD_UNIT};
use time::OffsetDateTime;

use super::ca_rotation::{driver, start_alone_and_trust_both, track_files};
use crate::support;
use support::standin::{pki, start_standin};

const LIMIT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_after_its_step_puts_the_step_back() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("certrotd=info")
        .with_test_writer()
        .try_init();
    let c = Cluster::new(
        1,
        OffsetDateTime::now_utc(),
        Duration::from_secs(365 * 86400),
    )
    .await;
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    let n = &c.nodes[0];
    let before = track_files(n, Track::EtcdCa);
    // The API-server stand-in (the track's other consumer), restarted with the member.
    start_standin(n).await;
    let (d, connect) = driver(&c, n);
    let mut d = Arc::into_inner(d).unwrap();
    // TrustBoth dwells, so the record stays in the phase of the node's step.
    d.settings.dwell_trust_both = Duration::from_secs(3600);
    d.settings.lost_etcd_rollback = LIMIT;
    let state = n.work().join("state");
    let mut watch = Watch::open(&state, Track::EtcdCa, d.settings.lost_etcd_rollback);
    // Nothing seen yet: nothing to put back, however long etcd is gone.
    assert_eq!(
        watch
            .lost(&d, OffsetDateTime::now_utc() + time::Duration::hours(1))
            .await
            .unwrap(),
        Lost::Nothing
    );

    let conn = connect.connect().await.unwrap();
    let record = start_alone_and_trust_both(&d, &conn, n).await;
    let (r, _) = conn.store.load(Track::EtcdCa).await.unwrap().unwrap();
    assert_eq!(r.phase, Phase::TrustBoth);
    watch.reached(Some(&r)).unwrap();
    drop(conn);
    // The record as seen is kept in the state directory, for a restart with etcd gone.
    let kept: certrotd::ca::record::CaRecord =
        serde_json::from_slice(&std::fs::read(seen_path(&state, Track::EtcdCa)).unwrap()).unwrap();
    assert_eq!(kept, r);
    let level = || {
        node::prove(Track::EtcdCa, &pki(n), &record.old_fp, &record.new_fp)
            .unwrap()
            .level
    };
    assert_eq!(level(), Level::TrustBoth);

    // etcd gone: the member stopped by its manager.
    n.manager.systemctl(&["stop", ETCD_UNIT]).await;
    let cut = Instant::now();
    let mut waited = Vec::new();
    let outcome = loop {
        let reached = match connect.connect().await {
            Ok(c) => c.store.load(Track::EtcdCa).await.is_ok(),
            Err(_) => false,
        };
        assert!(!reached, "etcd answered with its member stopped");
        match watch.lost(&d, OffsetDateTime::now_utc()).await.unwrap() {
            Lost::Waiting(left) => {
                // Inside the limit the step stays.
                assert_eq!(level(), Level::TrustBoth);
                waited.push(left);
            }
            other => break other,
        }
        assert!(cut.elapsed() < Duration::from_secs(60), "{waited:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let took = cut.elapsed();
    assert_eq!(outcome, Lost::RolledBack(Level::Original, Vec::new()));
    assert!(took > LIMIT, "put back after {took:?}");
    assert!(!waited.is_empty());
    // The files are exactly as before the step, and the restart started the member again.
    assert_eq!(level(), Level::Original);
    assert_eq!(track_files(n, Track::EtcdCa), before);
    c.wait_healthy(Duration::from_secs(60)).await;
    eprintln!("lost etcd: put back {took:?} after the member stopped (limit {LIMIT:?})");

    // etcd answers again: the node's true level goes into the record, the phase waits on it,
    // and it takes its step again.
    let conn = connect.connect().await.unwrap();
    let tick = d.tick(&conn, &OffsetDateTime::now_utc).await.unwrap();
    assert_eq!(tick, Tick::Stepped(Level::TrustBoth, None));
    assert_eq!(level(), Level::TrustBoth);
    let (r, _) = conn.store.load(Track::EtcdCa).await.unwrap().unwrap();
    assert_eq!(r.phase, Phase::TrustBoth);
    assert_eq!(r.nodes[&n.name].level, Level::TrustBoth);
    watch.reached(Some(&r)).unwrap();
    // Reached: counted from zero again.
    assert!(matches!(
        watch.lost(&d, OffsetDateTime::now_utc()).await.unwrap(),
        Lost::Waiting(_)
    ));
}
