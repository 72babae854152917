//! The journal events of a CA rotation (issue 13). Like the leaf events, each carries
//! `CERTROTD_EVENT`, a stable `MESSAGE_ID` and the fields that name what it is about: `TRACK`
//! (`etcd-ca`, `front-proxy-ca`), `ROTATION_ID`, `PHASE` or `LEVEL`. CAs are named by track,
//! subject and fingerprint; the new CA key never appears here (the record holds it wrapped).
//!
//! - `ca-rotation-due`: a CA nears (warning) or enters (notice) `[ca] rotate_before`;
//! - `ca-phase-started`: the lease holder moved the cluster record into a phase;
//! - `ca-step`: this node brought its files to a level (proved from its disk);
//! - `ca-phase-completed`: this node's step is proved, its consumers restarted, and recorded;
//! - `ca-rollback`: a rotation is rolled back (`ca abort`), or this node put its own step back.

use time::OffsetDateTime;

use super::{Severity, ids};
use crate::timefmt::rfc3339;

/// How near a CA is to its automatic rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Due {
    /// Due within the notice period: rotated automatically from `due_from` on (warning).
    Soon,
    /// Inside `rotate_before`: the rotation starts now, on a node holding the CA key.
    Now,
}

impl Due {
    /// The `STAGE` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Due::Soon => "soon",
            Due::Now => "due",
        }
    }
}

/// What a due notice says about one CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaDue<'a> {
    /// The track (`etcd-ca`).
    pub track: &'a str,
    /// The CA's subject.
    pub subject: &'a str,
    /// SHA-256 of the CA certificate.
    pub fingerprint: &'a str,
    /// When it expires.
    pub not_after: OffsetDateTime,
    /// From when on it is rotated by itself.
    pub due_from: OffsetDateTime,
    /// Which notice.
    pub stage: Due,
}

/// A CA nears or entered `[ca] rotate_before`: when it expires and when its rotation starts.
/// Warning some weeks before (an operator may want to provide the new CA with `--from`, or plan
/// the dwell), notice (info) once due.
pub fn ca_rotation_due(node: &str, due: &CaDue<'_>) {
    let (track, stage) = (due.track, due.stage.as_str());
    let not_after = rfc3339(due.not_after);
    let due_from = rfc3339(due.due_from);
    macro_rules! emit {
        ($level:ident, $($msg:tt)+) => {
            tracing::$level!(
                message_id = ids::CA_ROTATION_DUE,
                certrotd_event = "ca-rotation-due",
                node,
                track,
                stage,
                ca_subject = due.subject,
                ca_fingerprint = due.fingerprint,
                not_after = %not_after,
                due_from = %due_from,
                $($msg)+
            )
        };
    }
    match due.stage {
        Due::Soon => emit!(
            warn,
            severity = Severity::Warning.as_str(),
            "CA {track} ({}) expires {not_after}; certrotd rotates it from {due_from} ([ca] rotate_before)",
            due.subject
        ),
        Due::Now => emit!(
            info,
            "CA {track} ({}) expires {not_after} and is due for rotation since {due_from}; \
             the rotation starts",
            due.subject
        ),
    }
}

/// The cluster record of a track moved into `phase`, by `by` (this node: the lease holder).
pub fn ca_phase_started(node: &str, track: &str, rotation_id: &str, phase: &str) {
    tracing::info!(
        message_id = ids::CA_PHASE_STARTED,
        certrotd_event = "ca-phase-started",
        node,
        track,
        rotation_id,
        phase,
        "CA rotation {rotation_id} of {track}: phase {phase} started"
    );
}

/// This node brought its files of `track` to `level` (`changed`: files were written; otherwise
/// they were already there), proved from the disk as `detail` says.
pub fn ca_step(
    node: &str,
    track: &str,
    rotation_id: &str,
    level: &str,
    changed: bool,
    detail: &str,
) {
    tracing::info!(
        message_id = ids::CA_STEP,
        certrotd_event = "ca-step",
        node,
        track,
        rotation_id,
        level,
        changed,
        "CA rotation {rotation_id} of {track}: {node} at {level}{}: {detail}",
        if changed { "" } else { " (already)" }
    );
}

/// This node proved its step to `level`: the files, its consumers restarted on them (and, for
/// etcd-ca, probed over TLS), recorded in the cluster record.
pub fn ca_phase_completed(node: &str, track: &str, rotation_id: &str, level: &str, proof: &str) {
    tracing::info!(
        message_id = ids::CA_PHASE_COMPLETED,
        certrotd_event = "ca-phase-completed",
        node,
        track,
        rotation_id,
        level,
        "CA rotation {rotation_id} of {track}: {node} completed and proved its {level} step: {proof}"
    );
}

/// A rotation is rolled back: `to` is the phase (or level) it goes back to, `why` the cause
/// (`ca abort`, etcd lost for too long). Warning: the rotation did not go through.
pub fn ca_rollback(node: &str, track: &str, rotation_id: &str, to: &str, why: &str) {
    tracing::warn!(
        message_id = ids::CA_ROLLBACK,
        certrotd_event = "ca-rollback",
        severity = Severity::Warning.as_str(),
        node,
        track,
        rotation_id,
        phase = to,
        "CA rotation {rotation_id} of {track}: rolling back to {to}: {why}"
    );
}

#[cfg(test)]
mod tests;
