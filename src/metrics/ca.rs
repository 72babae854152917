//! The CA rotation series (`certrotd_ca_*`), rendered from the daemon's [`CaView`]: each track's
//! phase (a state set), whether a rotation is open, the CA's expiry and due date on this node,
//! each member's level, and how long the current phase has lasted against its dwell — what the
//! alerts in packaging/prometheus/certrotd-alerts.yaml need to say "a CA expires soon and nothing
//! rotates it" and "a rotation is stuck".

use time::OffsetDateTime;

use super::encode::{self, Kind, Labels};
use crate::ca::phase::{Level, Phase};
use crate::ca::settings::CaSettings;
use crate::ca::view::CaView;

/// Every value of the `phase` label (`none`: no rotation was ever recorded).
pub const PHASES: [&str; 8] = [
    "none",
    "planned",
    "trust-both",
    "issue-new",
    "distrust-old",
    "completed",
    "rolling-back",
    "rolled-back",
];

fn phase_word(p: Option<Phase>) -> &'static str {
    match p {
        None => "none",
        Some(Phase::Planned) => "planned",
        Some(Phase::TrustBoth) => "trust-both",
        Some(Phase::IssueNew) => "issue-new",
        Some(Phase::DistrustOld) => "distrust-old",
        Some(Phase::Completed) => "completed",
        Some(Phase::RollingBack(_)) => "rolling-back",
        Some(Phase::RolledBack) => "rolled-back",
    }
}

/// A level as a number: 0 original, 1 trust-both, 2 issue-new, 3 distrust-old.
fn level_number(l: Level) -> f64 {
    match l {
        Level::Original => 0.0,
        Level::TrustBoth => 1.0,
        Level::IssueNew => 2.0,
        Level::DistrustOld => 3.0,
    }
}

fn ts(t: OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64
}

/// Appends the `certrotd_ca_*` families for `view` to `out`. `settings`: the dwell of each
/// phase, exposed beside the time spent in it.
pub fn render(out: &mut String, view: &CaView, settings: &CaSettings, now: OffsetDateTime) {
    let track = |t: &crate::ca::view::TrackView| Labels::new().with("track", t.track.as_str());

    encode::family(
        out,
        "certrotd_ca_phase",
        Kind::Gauge,
        "The phase of each CA track's rotation (1 for the current one; none: never rotated).",
    );
    for t in &view.tracks {
        let current = phase_word(t.record.as_ref().map(|r| r.phase));
        for p in PHASES {
            let l = track(t).with("phase", p).finish();
            encode::sample(
                out,
                "certrotd_ca_phase",
                &l,
                f64::from(u8::from(p == current)),
            );
        }
    }

    encode::family(
        out,
        "certrotd_ca_rotation_open",
        Kind::Gauge,
        "1 while a rotation of the CA track is open (not completed or rolled back).",
    );
    for t in &view.tracks {
        let open = t.record.as_ref().is_some_and(|r| !r.phase.is_final());
        encode::sample(
            out,
            "certrotd_ca_rotation_open",
            &track(t).finish(),
            f64::from(u8::from(open)),
        );
    }

    encode::family(
        out,
        "certrotd_ca_not_after_timestamp_seconds",
        Kind::Gauge,
        "When the CA on this node's disk (the first certificate of its file) expires.",
    );
    for t in &view.tracks {
        if let Some(d) = &t.disk {
            encode::sample(
                out,
                "certrotd_ca_not_after_timestamp_seconds",
                &track(t).finish(),
                ts(d.not_after),
            );
        }
    }
    encode::family(
        out,
        "certrotd_ca_rotate_from_timestamp_seconds",
        Kind::Gauge,
        "From when on the CA is rotated by itself ([ca] rotate_before).",
    );
    for t in &view.tracks {
        if let Some(d) = &t.disk {
            encode::sample(
                out,
                "certrotd_ca_rotate_from_timestamp_seconds",
                &track(t).finish(),
                ts(d.due_from),
            );
        }
    }

    encode::family(
        out,
        "certrotd_ca_node_level",
        Kind::Gauge,
        "Each member's recorded level in the open or last rotation: 0 original, 1 trust-both, \
         2 issue-new, 3 distrust-old.",
    );
    for t in &view.tracks {
        let Some(r) = &t.record else { continue };
        for m in &r.members {
            if let Some(s) = r.nodes.get(m) {
                let l = track(t).with("node", m).finish();
                encode::sample(out, "certrotd_ca_node_level", &l, level_number(s.level));
            }
        }
    }

    encode::family(
        out,
        "certrotd_ca_phase_seconds",
        Kind::Gauge,
        "How long the current phase of the CA track's rotation has lasted.",
    );
    for t in &view.tracks {
        if let Some(started) = t.record.as_ref().and_then(|r| r.phase_started()) {
            let secs = (now - started).as_seconds_f64().max(0.0);
            encode::sample(out, "certrotd_ca_phase_seconds", &track(t).finish(), secs);
        }
    }
    encode::family(
        out,
        "certrotd_ca_phase_dwell_seconds",
        Kind::Gauge,
        "The least time the current phase lasts ([ca] dwell_*; 0 for phases without one).",
    );
    for t in &view.tracks {
        if let Some(r) = &t.record {
            let dwell = settings.dwell(r.phase).as_secs_f64();
            encode::sample(
                out,
                "certrotd_ca_phase_dwell_seconds",
                &track(t).finish(),
                dwell,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Track;
    use crate::ca::record::tests::record;
    use crate::ca::view::{DiskCa, TrackView};
    use time::macros::datetime;

    fn tv(track: Track, record: Option<crate::ca::record::CaRecord>) -> TrackView {
        TrackView {
            track,
            disk: Some(DiskCa {
                fingerprint: "aa".into(),
                subject: "CN=etcd-ca".into(),
                not_after: datetime!(2036-01-01 0:00 UTC),
                due_from: datetime!(2031-01-01 0:00 UTC),
            }),
            disk_error: None,
            record,
            order: Vec::new(),
            blockers: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn every_track_shows_its_phase_expiry_levels_and_time_in_phase() {
        let t0 = datetime!(2026-12-07 0:00 UTC);
        let mut r = record();
        crate::ca::coordinate::advance(&mut r, Phase::TrustBoth, t0, "cp1", 1).unwrap();
        crate::ca::coordinate::record_step(
            &mut r,
            "cp1",
            &crate::ca::node::Proof {
                level: Level::TrustBoth,
                detail: String::new(),
            },
            1,
            t0,
        );
        let view = CaView {
            as_of: Some(t0),
            tracks: vec![tv(Track::EtcdCa, Some(r)), tv(Track::FrontProxyCa, None)],
        };
        let mut out = String::new();
        render(
            &mut out,
            &view,
            &CaSettings::default(),
            t0 + time::Duration::seconds(90),
        );
        for line in [
            "certrotd_ca_phase{track=\"etcd-ca\",phase=\"trust-both\"} 1",
            "certrotd_ca_phase{track=\"etcd-ca\",phase=\"none\"} 0",
            "certrotd_ca_phase{track=\"front-proxy-ca\",phase=\"none\"} 1",
            "certrotd_ca_rotation_open{track=\"etcd-ca\"} 1",
            "certrotd_ca_rotation_open{track=\"front-proxy-ca\"} 0",
            "certrotd_ca_not_after_timestamp_seconds{track=\"etcd-ca\"} 2082758400",
            "certrotd_ca_rotate_from_timestamp_seconds{track=\"front-proxy-ca\"} 1924992000",
            "certrotd_ca_node_level{track=\"etcd-ca\",node=\"cp1\"} 1",
            "certrotd_ca_phase_seconds{track=\"etcd-ca\"} 90",
            "certrotd_ca_phase_dwell_seconds{track=\"etcd-ca\"} 600",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "{line} missing from:\n{out}"
            );
        }
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("certrotd_ca_phase{track=\"etcd-ca\""))
                .count(),
            PHASES.len()
        );
        assert!(
            !out.contains("node=\"cp2\""),
            "no step recorded, no level: {out}"
        );
    }
}
