//! Each CA event carries its kind, MESSAGE_ID, the fields that name it and its level; read back
//! from a subscriber that records every event's fields (the journald layer writes the same
//! fields, upper-cased, as tests/daemon_tests/journald.rs proves for the leaf events).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use time::macros::datetime;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};

use super::*;

type Seen = Arc<Mutex<Vec<(tracing::Level, BTreeMap<String, String>)>>>;

struct Record(Seen);

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Record {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut f = Fields(BTreeMap::new());
        event.record(&mut f);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), f.0));
    }
}

fn capture(emit: impl FnOnce()) -> Vec<(tracing::Level, BTreeMap<String, String>)> {
    let seen = Seen::default();
    let sub = tracing_subscriber::registry().with(Record(seen.clone()));
    tracing::subscriber::with_default(sub, emit);
    seen.lock().unwrap().clone()
}

fn only(
    seen: &[(tracing::Level, BTreeMap<String, String>)],
) -> (tracing::Level, &BTreeMap<String, String>) {
    assert_eq!(seen.len(), 1, "{seen:?}");
    (seen[0].0, &seen[0].1)
}

fn has(f: &BTreeMap<String, String>, want: &[(&str, &str)]) {
    for (k, v) in want {
        assert_eq!(f.get(*k).map(String::as_str), Some(*v), "{k} in {f:?}");
    }
}

#[test]
fn the_phase_events_name_track_rotation_and_phase_or_level() {
    let seen = capture(|| ca_phase_started("cp1", "etcd-ca", "ca-1", "trust-both"));
    let (level, f) = only(&seen);
    assert_eq!(level, tracing::Level::INFO);
    has(
        f,
        &[
            ("certrotd_event", "ca-phase-started"),
            ("message_id", ids::CA_PHASE_STARTED),
            ("node", "cp1"),
            ("track", "etcd-ca"),
            ("rotation_id", "ca-1"),
            ("phase", "trust-both"),
        ],
    );

    let seen = capture(|| {
        ca_step(
            "cp1",
            "etcd-ca",
            "ca-1",
            "issue-new",
            true,
            "etcd/ca.crt: [new, old]",
        )
    });
    let (level, f) = only(&seen);
    assert_eq!(level, tracing::Level::INFO);
    has(
        f,
        &[
            ("certrotd_event", "ca-step"),
            ("message_id", ids::CA_STEP),
            ("level", "issue-new"),
            ("changed", "true"),
        ],
    );
    assert!(f["message"].contains("etcd/ca.crt: [new, old]"), "{f:?}");

    let seen = capture(|| {
        ca_phase_completed(
            "cp2",
            "front-proxy-ca",
            "ca-2",
            "distrust-old",
            "probe refused",
        )
    });
    let (level, f) = only(&seen);
    assert_eq!(level, tracing::Level::INFO);
    has(
        f,
        &[
            ("certrotd_event", "ca-phase-completed"),
            ("message_id", ids::CA_PHASE_COMPLETED),
            ("node", "cp2"),
            ("track", "front-proxy-ca"),
            ("level", "distrust-old"),
        ],
    );

    let seen = capture(|| {
        ca_rollback(
            "cp3",
            "etcd-ca",
            "ca-3",
            "trust-both",
            "etcd unreachable for 10m",
        )
    });
    let (level, f) = only(&seen);
    assert_eq!(level, tracing::Level::WARN, "a rollback is a warning");
    has(
        f,
        &[
            ("certrotd_event", "ca-rollback"),
            ("message_id", ids::CA_ROLLBACK),
            ("phase", "trust-both"),
            ("severity", "warning"),
        ],
    );
    assert!(f["message"].contains("etcd unreachable for 10m"), "{f:?}");
}

#[test]
fn a_due_notice_is_a_warning_before_and_a_notice_once_due_with_both_dates() {
    let mut due = CaDue {
        track: "etcd-ca",
        subject: "CN=etcd-ca",
        fingerprint: "ab12",
        not_after: datetime!(2036-01-01 0:00 UTC),
        due_from: datetime!(2031-01-01 0:00 UTC),
        stage: Due::Soon,
    };
    let seen = capture(|| ca_rotation_due("cp1", &due));
    let (level, f) = only(&seen);
    assert_eq!(level, tracing::Level::WARN);
    has(
        f,
        &[
            ("certrotd_event", "ca-rotation-due"),
            ("message_id", ids::CA_ROTATION_DUE),
            ("stage", "soon"),
            ("track", "etcd-ca"),
            ("ca_fingerprint", "ab12"),
            ("not_after", "2036-01-01T00:00:00Z"),
            ("due_from", "2031-01-01T00:00:00Z"),
        ],
    );
    due.stage = Due::Now;
    let seen = capture(|| ca_rotation_due("cp1", &due));
    let (level, f) = only(&seen);
    assert_eq!(level, tracing::Level::INFO);
    has(f, &[("stage", "due"), ("due_from", "2031-01-01T00:00:00Z")]);
}
