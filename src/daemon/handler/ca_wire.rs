//! The boundary between the daemon's CA view (`ca::view::CaView`, domain types holding the
//! whole cluster record) and the control protocol's plain CA answers (`control::proto_ca`).
//!
//! Only fingerprints, subjects, levels and times cross it: the record's wrapped key and its
//! certificates' PEM stay behind, so no answer on the socket carries them.

use crate::ca::Track;
use crate::ca::record::CaRecord;
use crate::ca::view::{CaView, DiskCa, TrackView};
use crate::control::proto_ca::{
    CaNodeStep, CaOnDisk, CaPhaseMark, CaRotationStatus, CaStatusView, CaTrackStatus,
    CaTrackSummary,
};
use crate::timefmt::rfc3339;

/// `certrotd ca status`'s answer for `view`, as the daemon on `node` holds it.
pub fn status(view: &CaView, node: &str) -> CaStatusView {
    CaStatusView {
        node: node.to_owned(),
        as_of: view.as_of.map(rfc3339),
        tracks: view.tracks.iter().map(track).collect(),
    }
}

/// The CA tracks `status --cluster` adds to the lease's view: each track's phase and how many
/// members have done its step.
pub fn summaries(view: &CaView) -> Vec<CaTrackSummary> {
    view.tracks
        .iter()
        .map(|t| {
            let (rotation_id, phase, done, members) = match &t.record {
                Some(r) => (
                    r.rotation_id.clone(),
                    r.phase.name(),
                    members_done(r),
                    r.members.len(),
                ),
                None => (String::new(), "-".to_owned(), 0, 0),
            };
            CaTrackSummary {
                track: t.track.as_str().to_owned(),
                rotation_id,
                phase,
                members_done: count(done),
                members: count(members),
                blockers: t.blockers.clone(),
            }
        })
        .collect()
}

/// Parses a track as the command line and the wire name it, or says which names there are.
pub fn parse_track(name: &str) -> Result<Track, String> {
    Track::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Track::ALL.iter().map(|t| t.as_str()).collect();
        format!(
            "unknown CA track {name:?}: certrotd rotates {}",
            known.join(" and ")
        )
    })
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn track(t: &TrackView) -> CaTrackStatus {
    CaTrackStatus {
        track: t.track.as_str().to_owned(),
        disk: t.disk.as_ref().map(disk),
        disk_error: t.disk_error.clone(),
        rotation: t.record.as_ref().map(rotation),
        order: t.order.clone(),
        blockers: t.blockers.clone(),
        error: t.error.clone(),
    }
}

fn disk(d: &DiskCa) -> CaOnDisk {
    CaOnDisk {
        subject: d.subject.clone(),
        not_after: rfc3339(d.not_after),
        fingerprint: d.fingerprint.clone(),
        rotates_from: rfc3339(d.due_from),
    }
}

/// Members whose proved level is the one the current phase asks for.
fn members_done(r: &CaRecord) -> usize {
    let target = r.phase.target();
    r.members
        .iter()
        .filter(|m| r.nodes.get(*m).is_some_and(|s| s.level == target))
        .count()
}

fn rotation(r: &CaRecord) -> CaRotationStatus {
    let target = r.phase.target();
    // Members first, in the record's order; then any node with a step that is no longer a
    // member (it left the control plane), so nothing the record holds is hidden.
    let mut names: Vec<&String> = r.members.iter().collect();
    names.extend(r.nodes.keys().filter(|n| !r.members.contains(n)));
    let nodes = names
        .into_iter()
        .map(|name| match r.nodes.get(name) {
            Some(s) => CaNodeStep {
                node: name.clone(),
                level: Some(s.level.as_str().to_owned()),
                done: s.level == target,
                proved_at: Some(rfc3339(s.proved_at)),
                fencing_token: Some(s.fencing_token),
                detail: s.detail.clone(),
            },
            None => CaNodeStep {
                node: name.clone(),
                ..CaNodeStep::default()
            },
        })
        .collect();
    CaRotationStatus {
        rotation_id: r.rotation_id.clone(),
        phase: r.phase.name(),
        target_level: target.as_str().to_owned(),
        finished: r.phase.is_final(),
        phase_started_at: r.phase_started().map(rfc3339),
        old_fingerprint: r.old_fp.clone(),
        new_fingerprint: r.new_fp.clone(),
        members: r.members.clone(),
        nodes,
        phases: r
            .phases
            .iter()
            .map(|m| CaPhaseMark {
                phase: m.phase.name(),
                started_at: rfc3339(m.started_at),
                by: m.by.clone(),
                fencing_token: m.fencing_token,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use time::macros::datetime;

    use super::*;
    use crate::ca::record::{NodeStep, PhaseMark};
    use crate::ca::{Level, Phase};

    fn record() -> CaRecord {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "cp1".to_owned(),
            NodeStep {
                level: Level::IssueNew,
                fencing_token: 7,
                proved_at: datetime!(2026-05-01 10:02:00 UTC),
                detail: "bundle new,old".into(),
            },
        );
        nodes.insert(
            "cp2".to_owned(),
            NodeStep {
                level: Level::TrustBoth,
                fencing_token: 5,
                proved_at: datetime!(2026-05-01 10:00:30 UTC),
                detail: String::new(),
            },
        );
        CaRecord {
            track: Track::EtcdCa,
            rotation_id: "ca-1".into(),
            phase: Phase::IssueNew,
            old_fp: "aa".repeat(32),
            new_fp: "bb".repeat(32),
            old_ca_pem: "-----BEGIN CERTIFICATE-----old".into(),
            new_ca_pem: "-----BEGIN CERTIFICATE-----new".into(),
            wrapped_key: "WRAPPED-SECRET".into(),
            members: vec!["cp1".into(), "cp2".into(), "cp3".into()],
            nodes,
            phases: vec![
                PhaseMark {
                    phase: Phase::TrustBoth,
                    started_at: datetime!(2026-05-01 10:00:00 UTC),
                    by: "cp1".into(),
                    fencing_token: 4,
                },
                PhaseMark {
                    phase: Phase::IssueNew,
                    started_at: datetime!(2026-05-01 10:01:00 UTC),
                    by: "cp1".into(),
                    fencing_token: 6,
                },
            ],
        }
    }

    fn view() -> CaView {
        CaView {
            as_of: Some(datetime!(2026-05-01 10:03:00 UTC)),
            tracks: vec![
                TrackView {
                    track: Track::EtcdCa,
                    disk: Some(DiskCa {
                        fingerprint: "bb".repeat(32),
                        subject: "CN=etcd-ca".into(),
                        not_after: datetime!(2036-05-01 10:00:00 UTC),
                        due_from: datetime!(2035-04-01 10:00:00 UTC),
                    }),
                    disk_error: None,
                    record: Some(record()),
                    order: vec!["cp1".into(), "cp2".into(), "cp3".into()],
                    blockers: vec!["cp2 has not proved issue-new".into()],
                    error: None,
                },
                TrackView {
                    track: Track::FrontProxyCa,
                    disk: None,
                    disk_error: Some("front-proxy-ca.crt: no such file".into()),
                    record: None,
                    order: vec![],
                    blockers: vec![],
                    error: None,
                },
            ],
        }
    }

    #[test]
    fn the_status_carries_steps_and_marks_but_no_key_or_pem() {
        let s = status(&view(), "cp1");
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("WRAPPED-SECRET"), "{json}");
        assert!(!json.contains("BEGIN"), "{json}");
        let r = s.tracks[0].rotation.as_ref().unwrap();
        assert_eq!(r.phase, "IssueNew");
        assert_eq!(r.target_level, "issue-new");
        assert_eq!(r.phase_started_at.as_deref(), Some("2026-05-01T10:01:00Z"));
        let names: Vec<&str> = r.nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(names, ["cp1", "cp2", "cp3"]);
        assert!(r.nodes[0].done && !r.nodes[1].done && !r.nodes[2].done);
        assert_eq!(r.nodes[1].fencing_token, Some(5));
        assert_eq!(r.nodes[2].level, None);
        assert_eq!(
            s.tracks[0].disk.as_ref().unwrap().rotates_from,
            "2035-04-01T10:00:00Z"
        );
        assert!(s.tracks[1].rotation.is_none());
        assert!(s.tracks[1].disk_error.is_some());
    }

    #[test]
    fn summaries_count_the_members_at_the_phase_level() {
        let s = summaries(&view());
        assert_eq!(s[0].phase, "IssueNew");
        assert_eq!((s[0].members_done, s[0].members), (1, 3));
        assert_eq!(s[1].phase, "-");
        assert_eq!(s[1].rotation_id, "");
    }

    #[test]
    fn a_bad_track_name_is_named_with_the_known_ones() {
        assert_eq!(parse_track("front-proxy-ca"), Ok(Track::FrontProxyCa));
        let e = parse_track("kubernetes-ca").unwrap_err();
        assert!(e.contains("\"kubernetes-ca\""), "{e}");
        assert!(e.contains("etcd-ca and front-proxy-ca"), "{e}");
    }
}
