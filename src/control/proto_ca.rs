//! The control protocol's CA-rotation answers: `certrotd ca status` and the CA tracks that
//! `status --cluster` adds to the cluster view.
//!
//! Plain wire types like [`super::proto`]'s (strings, numbers, RFC 3339 times), converted from
//! the daemon's `ca::view::CaView` at the boundary (`daemon::handler`). They hold fingerprints,
//! subjects and per-node steps; never the wrapped CA key nor a certificate's PEM, so nothing a
//! client prints can help anyone to the key.

use serde::{Deserialize, Serialize};

/// The answer to `Request::CaStatus`: every track this daemon rotates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaStatusView {
    /// This node's name.
    pub node: String,
    /// When the daemon last read the cluster records, RFC 3339 (`None`: not yet).
    pub as_of: Option<String>,
    /// The tracks, in the order the daemon lists them (etcd-ca, front-proxy-ca).
    pub tracks: Vec<CaTrackStatus>,
}

/// One CA track.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaTrackStatus {
    /// The track: "etcd-ca" or "front-proxy-ca".
    pub track: String,
    /// The CA on this node's disk (`None`: no such CA here, or it does not read).
    pub disk: Option<CaOnDisk>,
    /// Why the CA on disk could not be read, when it could not.
    pub disk_error: Option<String>,
    /// The rotation the cluster record holds, open or last finished (`None`: never rotated).
    pub rotation: Option<CaRotationStatus>,
    /// The order the members take their steps in (the etcd leader last).
    pub order: Vec<String>,
    /// What keeps the next phase from starting, as the coordinator would judge it now.
    pub blockers: Vec<String>,
    /// The last error of this node's turn on the track.
    pub error: Option<String>,
}

/// A CA certificate as this node's disk holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaOnDisk {
    /// Its subject.
    pub subject: String,
    /// NotAfter, RFC 3339.
    pub not_after: String,
    /// SHA-256 of its DER, lower-case hex.
    pub fingerprint: String,
    /// From when on the daemon rotates it by itself (`[ca] rotate_before`), RFC 3339.
    pub rotates_from: String,
}

/// A rotation of one track, as the cluster record tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaRotationStatus {
    /// Its id.
    pub rotation_id: String,
    /// "Planned", "TrustBoth", "IssueNew", "DistrustOld", "Completed", "RollingBack(<level>)"
    /// or "RolledBack".
    pub phase: String,
    /// The level every member must prove before the phase may end ("original", "trust-both",
    /// "issue-new", "distrust-old").
    pub target_level: String,
    /// Whether the rotation is over (Completed or RolledBack).
    pub finished: bool,
    /// When the current phase started, RFC 3339.
    pub phase_started_at: Option<String>,
    /// SHA-256 of the old CA.
    pub old_fingerprint: String,
    /// SHA-256 of the new CA.
    pub new_fingerprint: String,
    /// Every control-plane node taking part.
    pub members: Vec<String>,
    /// Each member's last proved step, by node name (members without a step are listed with
    /// no level).
    pub nodes: Vec<CaNodeStep>,
    /// When each phase started and who moved the record into it, oldest first.
    pub phases: Vec<CaPhaseMark>,
}

/// One node's last proved step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaNodeStep {
    /// The node.
    pub node: String,
    /// The level its files were proved to hold (`None`: no step recorded yet).
    pub level: Option<String>,
    /// Whether that is the level the current phase asks for.
    pub done: bool,
    /// When it was proved, RFC 3339.
    pub proved_at: Option<String>,
    /// The lease's fencing token when it took the step.
    pub fencing_token: Option<u64>,
    /// What the proof saw (fingerprints, issuers).
    pub detail: String,
}

/// When a phase started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaPhaseMark {
    /// The phase.
    pub phase: String,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// The node that moved the record into it.
    pub by: String,
    /// That node's fencing token.
    pub fencing_token: u64,
}

/// One track as `status --cluster` shows it: phase and how many members are done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaTrackSummary {
    /// The track.
    pub track: String,
    /// The rotation's id (empty: never rotated).
    pub rotation_id: String,
    /// Its phase ("-" when never rotated).
    pub phase: String,
    /// Members whose proved level is the one the phase asks for.
    pub members_done: u32,
    /// Members taking part.
    pub members: u32,
    /// What keeps the next phase from starting.
    pub blockers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_default_and_unknown_ones_are_ignored() {
        let t: CaTrackStatus =
            serde_json::from_str(r#"{"track":"etcd-ca","future":{"x":1}}"#).unwrap();
        assert_eq!(t.track, "etcd-ca");
        assert!(t.rotation.is_none() && t.blockers.is_empty());
        let s: CaTrackSummary = serde_json::from_str(r#"{"track":"etcd-ca"}"#).unwrap();
        assert_eq!(s.members_done, 0);
    }
}
