//! What the coordinator (whichever control-plane node holds the lease) decides from the cluster
//! record: start a rotation, record a node's proved step, move the phase on when every member
//! has reached its level and the phase's dwell has passed, abort. Pure functions on the record;
//! the caller reads it, decides, and writes it back with compare-and-swap.

use time::OffsetDateTime;

use super::fingerprint;
use super::material::Material;
use super::node::Proof;
use super::phase::{BadTransition, Phase};
use super::record::{CaRecord, NodeStep, PhaseMark};
use super::settings::CaSettings;
use super::track::Track;
use super::wrap::{self, WrapError};
use crate::pki::cert::Cert;
use crate::pki::encode;
use crate::pki::key::PrivateKey;

/// A new rotation's record, in `Planned`: the new CA's certificate, its key wrapped for the
/// holders of `old_key`, the members that must each take every step.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    track: Track,
    cluster: &str,
    members: &[String],
    old: &Cert,
    old_key: &PrivateKey,
    new: &Material,
    now: OffsetDateTime,
    by: &str,
    fencing_token: u64,
) -> Result<CaRecord, WrapError> {
    let new_fp = fingerprint(&new.cert.der);
    let ctx = wrap::context(cluster, track.as_str(), &new_fp);
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    Ok(CaRecord {
        track,
        rotation_id: format!("ca-{}-{stamp}", track.as_str()),
        phase: Phase::Planned,
        old_fp: fingerprint(&old.der),
        new_fp,
        old_ca_pem: encode::cert_pem(&old.der),
        new_ca_pem: new.cert_pem.clone(),
        wrapped_key: wrap::wrap(&new.key_pem, old_key, &ctx)?,
        members: members.to_vec(),
        nodes: Default::default(),
        phases: vec![PhaseMark {
            phase: Phase::Planned,
            started_at: now,
            by: by.to_owned(),
            fencing_token,
        }],
    })
}

/// The wrap context of a record (what its key is bound to).
pub fn wrap_context(cluster: &str, record: &CaRecord) -> String {
    wrap::context(cluster, record.track.as_str(), &record.new_fp)
}

/// Records `node`'s proved step under its fencing token.
pub fn record_step(
    record: &mut CaRecord,
    node: &str,
    proof: &Proof,
    fencing_token: u64,
    now: OffsetDateTime,
) {
    record.nodes.insert(
        node.to_owned(),
        NodeStep {
            level: proof.level,
            fencing_token,
            proved_at: now,
            detail: proof.detail.clone(),
        },
    );
}

/// What the coordinator does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Move the record to this phase.
    Advance(Phase),
    /// Not yet: what blocks the next phase, one line each.
    Wait(Vec<String>),
    /// The rotation is over.
    Done,
}

/// What keeps the record's phase from ending now: members not yet at its level, and its dwell.
pub fn blockers(record: &CaRecord, settings: &CaSettings, now: OffsetDateTime) -> Vec<String> {
    let target = record.phase.target();
    let mut out: Vec<String> = record
        .members
        .iter()
        .filter_map(|m| match record.nodes.get(m) {
            Some(s) if s.level == target => None,
            Some(s) => Some(format!("{m}: at {}, needs {target}", s.level)),
            None => Some(format!("{m}: no step recorded, needs {target}")),
        })
        .collect();
    let dwell =
        time::Duration::try_from(settings.dwell(record.phase)).unwrap_or(time::Duration::MAX);
    if let Some(started) = record.phase_started() {
        let left = started.checked_add(dwell).map(|end| end - now);
        match left {
            Some(l) if l > time::Duration::ZERO => out.push(format!(
                "dwell: {} left of {}",
                crate::duration::format(l.unsigned_abs()),
                crate::duration::format(settings.dwell(record.phase))
            )),
            Some(_) => {}
            None => out.push("dwell: unbounded".to_owned()),
        }
    }
    out
}

/// Decides from the record alone.
pub fn decide(record: &CaRecord, settings: &CaSettings, now: OffsetDateTime) -> Decision {
    let Some(next) = record.phase.next() else {
        return Decision::Done;
    };
    // Planned has no node step: the record itself is the proof the new CA exists.
    if record.phase == Phase::Planned {
        return Decision::Advance(next);
    }
    let blocked = blockers(record, settings, now);
    if blocked.is_empty() {
        Decision::Advance(next)
    } else {
        Decision::Wait(blocked)
    }
}

/// Moves the record to `to`, if the phase machine allows it, stamping who and when.
pub fn advance(
    record: &mut CaRecord,
    to: Phase,
    now: OffsetDateTime,
    by: &str,
    fencing_token: u64,
) -> Result<(), BadTransition> {
    record.phase.check(to)?;
    record.phase = to;
    record.phases.push(PhaseMark {
        phase: to,
        started_at: now,
        by: by.to_owned(),
        fencing_token,
    });
    Ok(())
}

/// `certrotd ca abort`: starts rolling back from the current phase.
pub fn abort(
    record: &mut CaRecord,
    now: OffsetDateTime,
    by: &str,
    fencing_token: u64,
) -> Result<Phase, BadTransition> {
    let to = record.phase.abort().ok_or(BadTransition {
        from: record.phase,
        to: Phase::RolledBack,
    })?;
    advance(record, to, now, by, fencing_token)?;
    Ok(to)
}

/// The member that takes its step next: the first, in `order`, not yet at the phase's level.
/// The caller orders the members with the etcd leader last.
pub fn next_member<'a>(record: &CaRecord, order: &'a [String]) -> Option<&'a str> {
    let target = record.phase.target();
    order
        .iter()
        .find(|m| {
            record
                .nodes
                .get(m.as_str())
                .is_none_or(|s| s.level != target)
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::phase::Level;
    use crate::ca::record::tests::record;
    use std::time::Duration;
    use time::macros::datetime;

    fn proof(level: Level) -> Proof {
        Proof {
            level,
            detail: String::new(),
        }
    }

    #[test]
    fn a_phase_ends_only_when_every_member_proved_its_level_and_the_dwell_passed() {
        let mut r = record();
        let t0 = datetime!(2026-12-07 0:00 UTC);
        let s = CaSettings {
            dwell_trust_both: Duration::from_secs(60),
            ..CaSettings::sandbox()
        };
        assert_eq!(decide(&r, &s, t0), Decision::Advance(Phase::TrustBoth));
        advance(&mut r, Phase::TrustBoth, t0, "cp1", 8).unwrap();
        let Decision::Wait(b) = decide(&r, &s, t0) else {
            panic!()
        };
        assert_eq!(b.len(), 3, "{b:?}");
        assert_eq!(next_member(&r, &r.members.clone()), Some("cp1"));
        record_step(&mut r, "cp1", &proof(Level::TrustBoth), 8, t0);
        assert_eq!(next_member(&r, &r.members.clone()), Some("cp2"));
        record_step(&mut r, "cp2", &proof(Level::TrustBoth), 9, t0);
        let Decision::Wait(b) = decide(&r, &s, t0 + time::Duration::seconds(30)) else {
            panic!()
        };
        assert_eq!(b, ["dwell: 30s left of 1m"]);
        assert_eq!(
            decide(&r, &s, t0 + time::Duration::seconds(60)),
            Decision::Advance(Phase::IssueNew)
        );
        // A jump is refused; an abort walks back.
        assert!(advance(&mut r, Phase::Completed, t0, "cp1", 9).is_err());
        assert_eq!(
            abort(&mut r, t0, "cp2", 10).unwrap(),
            Phase::RollingBack(Level::Original)
        );
        assert_eq!(r.phase_started(), Some(t0));
        assert_eq!(r.phases.last().unwrap().by, "cp2");
        let Decision::Wait(b) = decide(&r, &s, t0) else {
            panic!()
        };
        assert_eq!(b.len(), 2, "{b:?}");
    }
}
