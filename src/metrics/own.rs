//! certrotd's own series (`certrotd_*`): what the exporter cannot know. Each certificate's status
//! and next renewal, rotations by result with their duration and disruptive interval, the time
//! spent waiting for the lease, the retry state, the daemon's mode, the last success, build info.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::encode::{self, Kind, Labels};
use crate::control::proto::{HistoryRecord, HistoryState, StatusReport};

/// Every mode of the daemon's state machine (`daemon::mode::Mode::name`), all exposed so that
/// `certrotd_mode{mode="…"} == 1` selects the current one (a state set).
pub const MODES: [&str; 8] = [
    "starting",
    "recovering",
    "resuming",
    "idle",
    "waiting",
    "rotating",
    "backing-off",
    "stopping",
];

/// Every certificate status `certrotd status` shows, exposed as a state set.
pub const STATUSES: [&str; 5] = ["ok", "notify", "renew", "expired", "invalid"];

/// How a rotation ended, the `result` label of `certrotd_rotations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Every component serves the new certificates.
    Success,
    /// Rolled back or stopped.
    Failed,
    /// Stopped half-way by a lost lease; the next turn finishes it.
    LeftOpen,
    /// Could not start (no CA answer, the lease unreachable...).
    NotStarted,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Success,
        Outcome::Failed,
        Outcome::LeftOpen,
        Outcome::NotStarted,
    ];

    fn word(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::LeftOpen => "left_open",
            Outcome::NotStarted => "not_started",
        }
    }
}

/// A cumulative histogram with fixed bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        encode::family(out, name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let mut le = String::new();
            encode::number(&mut le, *b);
            encode::sample(out, &bucket, &encode::extend("", "le", &le), *c as f64);
        }
        encode::sample(
            out,
            &bucket,
            &encode::extend("", "le", "+Inf"),
            self.count as f64,
        );
        encode::sample(out, &format!("{name}_sum"), "", self.sum);
        encode::sample(out, &format!("{name}_count"), "", self.count as f64);
    }
}

/// From a few seconds (a kubelet restart) to an hour (a slow control plane with proofs).
const DURATION_BOUNDS: &[f64] = &[5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];
/// Components restarted until proved: around a second per component, minutes when slow.
const DISRUPTIVE_BOUNDS: &[f64] = &[0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// The lease: free at once, or a queue of control planes each rotating for minutes.
const LEASE_BOUNDS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

/// One certificate as status shows it.
#[derive(Debug, Clone, PartialEq)]
struct CertGauge {
    labels: String,
    status: String,
    next_renewal: Option<i64>,
}

/// The state behind certrotd's own series.
#[derive(Debug, Clone)]
pub struct Own {
    certs: Vec<CertGauge>,
    mode: &'static str,
    waiting_since: Option<OffsetDateTime>,
    rotations: BTreeMap<Outcome, u64>,
    duration: Histogram,
    disruptive: Histogram,
    lease_wait: Histogram,
    retry_attempts: u32,
    retry_next: Option<i64>,
    last_success: Option<i64>,
}

impl Default for Own {
    fn default() -> Self {
        Own {
            certs: Vec::new(),
            mode: "starting",
            waiting_since: None,
            rotations: Outcome::ALL.iter().map(|o| (*o, 0)).collect(),
            duration: Histogram::new(DURATION_BOUNDS),
            disruptive: Histogram::new(DISRUPTIVE_BOUNDS),
            lease_wait: Histogram::new(LEASE_BOUNDS),
            retry_attempts: 0,
            retry_next: None,
            last_success: None,
        }
    }
}

fn unix(rfc3339: Option<&str>) -> Option<OffsetDateTime> {
    rfc3339.and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
}

impl Own {
    /// Takes status as published: certificates, retry state, the last rotation.
    pub fn status(&mut self, report: &StatusReport, last: Option<&HistoryRecord>) {
        self.certs = report
            .certificates
            .iter()
            .map(|c| CertGauge {
                labels: Labels::new()
                    .with("cert", &c.name)
                    .with("path", &c.path)
                    .finish(),
                status: c.status.clone(),
                // Only a renewal's time: a notice's time says nothing about when it renews.
                next_renewal: c
                    .next_action
                    .starts_with("renew")
                    .then(|| unix(c.next_action_at.as_deref()))
                    .flatten()
                    .map(OffsetDateTime::unix_timestamp),
            })
            .collect();
        let retry = report.retry.as_ref();
        self.retry_attempts = retry.map_or(0, |r| r.attempts);
        self.retry_next = retry
            .and_then(|r| unix(r.next_retry.as_deref()))
            .map(OffsetDateTime::unix_timestamp);
        if let Some(r) = last.filter(|r| r.state == HistoryState::Success) {
            let done = unix(r.finished_at.as_deref()).map(OffsetDateTime::unix_timestamp);
            self.last_success = self.last_success.max(done);
        }
    }

    /// The state machine moved to `mode` at `now`; leaving `waiting` ends a wait for the lease.
    pub fn mode(&mut self, mode: &'static str, now: OffsetDateTime) {
        if mode == "waiting" {
            self.waiting_since.get_or_insert(now);
        } else if let Some(since) = self.waiting_since.take() {
            self.lease_wait
                .observe((now - since).as_seconds_f64().max(0.0));
        }
        self.mode = mode;
    }

    /// A rotation ended as `outcome`; `record` is its history record when it had one.
    pub fn rotation(&mut self, outcome: Outcome, record: Option<&HistoryRecord>) {
        *self.rotations.entry(outcome).or_default() += 1;
        let Some(r) = record else { return };
        let span = |from: Option<&str>, to: Option<&str>| match (unix(from), unix(to)) {
            (Some(a), Some(b)) => Some((b - a).as_seconds_f64().max(0.0)),
            _ => None,
        };
        if let Some(d) = span(Some(&r.started_at), r.finished_at.as_deref()) {
            self.duration.observe(d);
        }
        if let Some(d) = span(r.disruptive_from.as_deref(), r.disruptive_to.as_deref()) {
            self.disruptive.observe(d);
        }
        if outcome == Outcome::Success {
            let done = unix(r.finished_at.as_deref()).map(OffsetDateTime::unix_timestamp);
            self.last_success = self.last_success.max(done);
        }
    }

    /// Writes certrotd's families; `now` dates the lease wait in progress.
    pub fn render(&self, out: &mut String, version: &str) {
        encode::family(
            out,
            "certrotd_certificate_status",
            Kind::Gauge,
            "1 for the certificate's status as certrotd status shows it (ok, notify, renew, expired, invalid)",
        );
        for c in &self.certs {
            for s in STATUSES {
                let v = if c.status == s { 1.0 } else { 0.0 };
                let l = encode::extend(&c.labels, "status", s);
                encode::sample(out, "certrotd_certificate_status", &l, v);
            }
        }
        encode::family(
            out,
            "certrotd_next_renewal_timestamp_seconds",
            Kind::Gauge,
            "When certrotd renews the certificate next, Unix seconds (absent until renewal is the next action)",
        );
        for c in &self.certs {
            if let Some(t) = c.next_renewal {
                encode::sample(
                    out,
                    "certrotd_next_renewal_timestamp_seconds",
                    &c.labels,
                    t as f64,
                );
            }
        }
        encode::family(
            out,
            "certrotd_rotations_total",
            Kind::Counter,
            "Rotations since the daemon started, by result",
        );
        for (o, n) in &self.rotations {
            let l = Labels::new().with("result", o.word()).finish();
            encode::sample(out, "certrotd_rotations_total", &l, *n as f64);
        }
        self.duration.render(
            out,
            "certrotd_rotation_duration_seconds",
            "A rotation's duration, from its start to its last component proved",
        );
        self.disruptive.render(
            out,
            "certrotd_rotation_disruptive_seconds",
            "From a rotation's first component restart to its last component proved",
        );
        self.lease_wait.render(
            out,
            "certrotd_lease_wait_seconds",
            "Time a planned rotation waited for this node's turn",
        );
        encode::family(
            out,
            "certrotd_lease_wait_started_timestamp_seconds",
            Kind::Gauge,
            "When the wait for the lease in progress began, Unix seconds (absent when not waiting)",
        );
        if let Some(since) = self.waiting_since {
            encode::sample(
                out,
                "certrotd_lease_wait_started_timestamp_seconds",
                "",
                since.unix_timestamp() as f64,
            );
        }
        self.render_state(out, version);
    }

    fn render_state(&self, out: &mut String, version: &str) {
        encode::family(
            out,
            "certrotd_retry_attempts",
            Kind::Gauge,
            "Failed rotations in a row being retried with backoff (0: none)",
        );
        encode::sample(
            out,
            "certrotd_retry_attempts",
            "",
            f64::from(self.retry_attempts),
        );
        encode::family(
            out,
            "certrotd_retry_next_timestamp_seconds",
            Kind::Gauge,
            "When the next attempt after a failure may start, Unix seconds (absent when not retrying)",
        );
        if let Some(t) = self.retry_next {
            encode::sample(out, "certrotd_retry_next_timestamp_seconds", "", t as f64);
        }
        encode::family(
            out,
            "certrotd_mode",
            Kind::Gauge,
            "1 for the daemon's current mode (its state machine)",
        );
        for m in MODES {
            let v = if self.mode == m { 1.0 } else { 0.0 };
            let l = Labels::new().with("mode", m).finish();
            encode::sample(out, "certrotd_mode", &l, v);
        }
        encode::family(
            out,
            "certrotd_last_success_timestamp_seconds",
            Kind::Gauge,
            "When the last successful rotation finished, Unix seconds (absent before the first)",
        );
        if let Some(t) = self.last_success {
            encode::sample(out, "certrotd_last_success_timestamp_seconds", "", t as f64);
        }
        encode::family(
            out,
            "certrotd_build_info",
            Kind::Gauge,
            "Always 1; the version certrotd was built as",
        );
        let l = Labels::new().with("version", version).finish();
        encode::sample(out, "certrotd_build_info", &l, 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_wait_for_the_lease_is_observed_when_it_ends() {
        let mut own = Own::default();
        own.mode("waiting", datetime!(2026-01-01 00:00 UTC));
        // The detail of the wait changes (its place in the queue): still the same wait.
        own.mode("waiting", datetime!(2026-01-01 00:01 UTC));
        own.mode("rotating", datetime!(2026-01-01 00:10 UTC));
        assert_eq!(own.lease_wait.count, 1);
        assert_eq!(own.lease_wait.sum, 600.0);
        assert_eq!(own.waiting_since, None);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 10.0]);
        h.observe(0.5);
        h.observe(5.0);
        h.observe(50.0);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "x");
        assert!(out.contains("x_seconds_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
    }
}
