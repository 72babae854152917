//! Peers end to end (work in progress).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::cluster::Cluster;
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_forms_a_cluster() {
    let c = Cluster::new(
        3,
        OffsetDateTime::now_utc(),
        Duration::from_secs(365 * 86400),
    )
    .await;
    c.start_etcd().await;
    c.wait_healthy(Duration::from_secs(60)).await;
    let (ok, out) = c.nodes[0]
        .spec
        .etcdctl("healthcheck-client", &["member", "list"]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    c.nodes[0].assert_all_valid(OffsetDateTime::now_utc());
}
