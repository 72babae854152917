//! Tests of the probe's pure parts.

use super::health::{HealthFailure, QUOTE_BODY, etcd_health, quote};
use super::retry::GaveUp;
use super::*;
use std::time::Duration;
use tokio::time::Instant;

#[test]
fn serials_compare_as_numbers_written_in_hex() {
    assert_eq!(normalize_serial("00:8A:0b"), "8a0b");
    assert_eq!(normalize_serial("008a0b"), "8a0b");
    assert_eq!(normalize_serial("8A0B"), "8a0b");
    assert_eq!(normalize_serial("00"), "0");
}

#[test]
fn last_seen_reads_as_the_issue_asks() {
    assert_eq!(LastSeen::Serial("ab".into()).to_string(), "old serial ab");
    assert_eq!(
        LastSeen::Failure(Failure::Refused).to_string(),
        "connection refused"
    );
}

#[test]
fn health_bodies_are_quoted_short_and_printable() {
    let body = format!("line1\nline2{}", "x".repeat(500));
    let quoted = quote(body.as_bytes());
    assert!(quoted.starts_with("line1 line2"));
    assert!(quoted.ends_with('…'));
    assert!(quoted.chars().count() <= QUOTE_BODY + 1);
    assert!(matches!(
        etcd_health(200, br#"{"health":"true","reason":""}"#),
        Ok(Health::Healthy)
    ));
    let Err(HealthFailure::Unhealthy(detail)) =
        etcd_health(503, br#"{"health":"false","reason":"RAFT NO LEADER"}"#)
    else {
        panic!("unhealthy etcd passed");
    };
    assert_eq!(detail, "HTTP 503, health \"false\", reason: RAFT NO LEADER");
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_and_stop_at_the_deadline() {
    let retry = Retry::default();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(3);
    let mut times = Vec::new();
    let outcome: Result<(), _> = retry_until(deadline, &retry, |timeout| {
        times.push((Instant::now() - start, timeout));
        async { Err("down") }
    })
    .await;
    let GaveUp {
        attempts,
        waited,
        last,
    } = outcome.unwrap_err();
    assert_eq!(waited, Duration::from_secs(3));
    assert_eq!(last, Some("down"));
    let at: Vec<u64> = times.iter().map(|(t, _)| t.as_millis() as u64).collect();
    // 50, 100, 200, 400, 800 ms pauses, then 1 s at most.
    assert_eq!(at, [0, 50, 150, 350, 750, 1550, 2550]);
    assert_eq!(attempts, 7);
    // The last attempt may only use what is left before the deadline.
    assert_eq!(times.last().unwrap().1, Duration::from_millis(450));
}
