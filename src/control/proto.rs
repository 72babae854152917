//! The control protocol's messages: what a client may ask ([`Request`]) and what the daemon
//! answers ([`Response`]), two serde enums as in kanidm's unixd (`unix_proto.rs`). How they travel
//! (length-prefixed JSON frames with a size cap) is [`super::frame`].
//!
//! These are wire types only: plain data (strings, numbers, times as RFC 3339 text), depending on
//! nothing but serde, so the protocol changes only when this file does. The daemon keeps its
//! state in domain types (`history::Record`, `daemon::status::Report`, `lease::ClusterView`) and
//! converts at the boundary (their `to_wire`); a client reads the words back into domain types
//! where it needs a rule (e.g. `policy::Status::needs_attention` for the exit code).
//!
//! Every struct takes `#[serde(default)]` for missing fields and ignores unknown ones, so a field
//! added later (as [`LeaseStatus`]'s queue position and the retry state were) neither breaks an
//! older client reading a newer daemon nor the reverse.

use serde::{Deserialize, Serialize};

pub use super::proto_ca::{CaStatusView, CaTrackSummary};

/// What a client asks the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Every certificate, the rotation in progress and the lease. Anyone the socket admits.
    Status,
    /// Start a rotation now, with all the daemon's safety. Root only.
    Rotate {
        /// Rotation types, as `certrotd renew --type` names them (e.g. `kubernetes-leaf`).
        #[serde(default)]
        types: Vec<String>,
        /// Single certificates, by the names `certrotd status` shows.
        #[serde(default)]
        certs: Vec<String>,
    },
    /// Activity records, newest first. Anyone the socket admits.
    History {
        /// At most this many records; `None` for all that are kept.
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Re-read the configuration (as SIGHUP does). Root only.
    Reload,
    /// The cluster as the lease sees it: every node's summary, the slots' holders and the
    /// queue. Anyone the socket admits. (A daemon older than this answers it as a bad request.)
    Cluster,
    /// Start rotating a CA (`certrotd ca rotate`). Root only.
    CaRotate {
        /// The track: "etcd-ca" or "front-proxy-ca".
        track: String,
        /// An absolute directory holding the operator's new CA (`ca.crt`, `ca.key`), read by
        /// the daemon; `None`: the daemon makes one.
        #[serde(default)]
        from: Option<String>,
    },
    /// Every CA track: the CA on disk, the rotation's phase and per-node steps. Anyone the
    /// socket admits.
    CaStatus,
    /// Roll back the open CA rotation of `track` (every open one when `None`). Root only.
    CaAbort {
        /// The track, or `None` for every open one.
        #[serde(default)]
        track: Option<String>,
    },
}

impl Request {
    /// Whether the request changes the daemon's state, and so needs a privileged peer.
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Status | Request::History { .. } | Request::Cluster | Request::CaStatus => {
                false
            }
            Request::Rotate { .. }
            | Request::Reload
            | Request::CaRotate { .. }
            | Request::CaAbort { .. } => true,
        }
    }

    /// The request's name, for logs that must not carry its contents.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Rotate { .. } => "rotate",
            Request::History { .. } => "history",
            Request::Reload => "reload",
            Request::Cluster => "cluster",
            Request::CaRotate { .. } => "ca rotate",
            Request::CaStatus => "ca status",
            Request::CaAbort { .. } => "ca abort",
        }
    }
}

/// What the daemon answers.
// One answer per request, moved a couple of times: boxing the status would buy nothing
// but a less direct type for every caller to match on.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::Status`].
    Status(StatusReport),
    /// A rotation was started.
    Rotate {
        /// Its id, as history and the journal will name it.
        rotation_id: String,
    },
    /// The answer to [`Request::History`]: the latest state of each record, newest first.
    History(Vec<HistoryRecord>),
    /// The configuration was reloaded.
    Reloaded,
    /// The answer to [`Request::Cluster`].
    Cluster(ClusterView),
    /// A CA rotation was started.
    CaRotate {
        /// Its id.
        rotation_id: String,
    },
    /// The answer to [`Request::CaStatus`].
    CaStatus(CaStatusView),
    /// An abort was recorded.
    CaAborted {
        /// Which tracks now roll back, from which phase.
        message: String,
    },
    /// The request was not carried out.
    Error {
        /// Why, as a program should tell it apart.
        kind: ErrorKind,
        /// Why, for people.
        message: String,
    },
}

/// Why a request was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The peer may not do this (only root may change state).
    Forbidden,
    /// The request was malformed, too large, incomplete, or named something unknown.
    BadRequest,
    /// The daemon cannot do it now (e.g. a rotation is already running); try again later.
    Busy,
    /// The daemon tried and failed.
    Failed,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::Busy => "busy",
            ErrorKind::Failed => "failed",
        })
    }
}

/// The daemon's view of the node, as `certrotd status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusReport {
    /// This node's Kubernetes name.
    pub node: String,
    /// When the report was made, RFC 3339.
    pub generated_at: String,
    /// The daemon answering.
    pub daemon: DaemonInfo,
    /// Every certificate the daemon knows, CAs and leaves.
    pub certificates: Vec<CertStatus>,
    /// The rotation in progress, if any.
    pub rotation: Option<RotationProgress>,
    /// Who may disrupt the cluster now.
    pub lease: LeaseStatus,
    /// Notices the daemon has given (certificates entering `notify_before`, a rejected reload...).
    pub notices: Vec<String>,
    /// The one-line summary sd_notify's STATUS carries, e.g.
    /// "17 certificates ok; next renewal apiserver in 29d".
    pub summary: String,
    /// Renewals failing and being retried with backoff (e.g. the remote CA unreachable).
    pub retry: Option<RetryStatus>,
}

/// Failed renewals being retried.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryStatus {
    /// Failed attempts in a row.
    pub attempts: u32,
    /// Why the last one failed.
    pub last_error: String,
    /// When the first of them failed, RFC 3339.
    pub failing_since: Option<String>,
    /// When the next attempt may start, RFC 3339.
    pub next_retry: Option<String>,
}

/// The daemon process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DaemonInfo {
    /// certrotd's version.
    pub version: String,
    /// When the daemon started, RFC 3339.
    pub started_at: String,
    /// Its process id.
    pub pid: u32,
    /// The configuration files it runs with, in the order they were applied.
    pub config_sources: Vec<String>,
}

/// One certificate and what the daemon will do about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertStatus {
    /// kubeadm-style name (`apiserver`, `etcd-server`, `admin.conf`) or file name.
    pub name: String,
    /// Node path of the file holding it.
    pub path: String,
    /// "ca" or "leaf".
    pub kind: String,
    /// "ok", "notify", "renew", "expired" or "invalid".
    pub status: String,
    /// NotAfter, RFC 3339; `None` when the certificate could not be read.
    pub not_after: Option<String>,
    /// Seconds until NotAfter (negative once expired).
    pub residual_seconds: Option<i64>,
    /// "none", "notify", "renew", "renew-now" or "blocked: <why>".
    pub next_action: String,
    /// When the next action is due, RFC 3339; `None` for "none" and while blocked.
    pub next_action_at: Option<String>,
    /// Components that read it and are restarted when it changes.
    pub consumers: Vec<String>,
    /// What is wrong with it.
    pub problems: Vec<String>,
}

/// The rotation the daemon is carrying out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RotationProgress {
    /// Its id.
    pub id: String,
    /// The step it is at (e.g. "issue", "install", "restart kube-apiserver", "verify").
    pub step: String,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// The certificates it renews.
    pub certificates: Vec<String>,
}

/// The lease that lets one node at a time disrupt its components.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseStatus {
    /// "local" (single node) or "etcd".
    pub backend: String,
    /// Whether this node holds it.
    pub held: bool,
    /// The node holding it, if any.
    pub holder: Option<String>,
    /// Since when it has been held, RFC 3339.
    pub since: Option<String>,
    /// Anything else worth knowing (e.g. why the backend is unreachable).
    pub detail: Option<String>,
}

/// One rotation as the activity log tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// The rotation id.
    pub id: String,
    /// The node it ran on.
    pub node: String,
    /// The certificates it renewed.
    #[serde(default)]
    pub certificates: Vec<String>,
    /// Where it stands.
    pub state: HistoryState,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// When it ended, RFC 3339; `None` while it runs.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Why it started (e.g. "expires in 29d", "certrotd rotate"), or why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// When the first component restart began, RFC 3339.
    #[serde(default)]
    pub disruptive_from: Option<String>,
    /// When the last component was verified serving the new certificate, RFC 3339.
    #[serde(default)]
    pub disruptive_to: Option<String>,
    /// The lease's fencing token while it ran, so records from competing nodes can be ordered.
    #[serde(default)]
    pub fencing_token: Option<u64>,
    /// A recovery: run WITHOUT the lease (no fencing token) because this node's etcd
    /// certificates had expired, so the cluster could not be up.
    #[serde(default)]
    pub recovery: bool,
    /// The components that picked up the new certificates by themselves, proved by what they
    /// serve (or, for what nothing can probe, by the reload table), and were not restarted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reloaded: Vec<String>,
    /// The components that were restarted onto the new certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarted: Vec<String>,
}

/// The cluster as the lease sees it (the answer to [`Request::Cluster`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterView {
    /// The cluster's name (the lease's key prefix's).
    pub cluster: String,
    /// How many nodes may be disrupted at once.
    pub slots: u32,
    /// Who holds a slot, by slot.
    pub holders: Vec<SlotHolder>,
    /// Who waits, in the order they will go.
    pub queue: Vec<QueuedNode>,
    /// Every node that published a summary, by name.
    pub nodes: Vec<NodeSummary>,
    /// The CA tracks as this node's daemon last read them (left out when it has none, so the
    /// document is as before for a daemon without CA rotation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<CaTrackSummary>,
}

/// A node holding a slot of the lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlotHolder {
    /// The slot held (0-based).
    pub slot: u32,
    /// The holding node.
    pub node: String,
    /// The rotation it holds the slot for.
    pub rotation_id: String,
    /// When it took the slot, RFC 3339.
    pub since: String,
    /// The step it is in ("acquired", "install", "restart", ...).
    pub step: String,
    /// The lease's fencing token.
    pub fencing_token: u64,
}

/// A node waiting for the lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueuedNode {
    /// The waiting node.
    pub node: String,
    /// Its role: "etcd-member", "control-plane" or "worker".
    pub role: String,
    /// The soonest NotAfter it renews, RFC 3339.
    pub earliest_expiry: String,
    /// When it started waiting, RFC 3339.
    pub since: String,
}

/// What a node's daemon published about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSummary {
    /// The node.
    pub node: String,
    /// Its role ("etcd-member", "control-plane", "worker"), once its inventory is known.
    pub role: Option<String>,
    /// The soonest NotAfter among its certificates, RFC 3339.
    pub earliest_expiry: Option<String>,
    /// What its daemon is doing ("idle", "waiting", "rotating", "failed", ...).
    pub state: String,
    /// When it last finished a rotation.
    pub last_rotation: Option<String>,
    /// When the summary was written, RFC 3339.
    pub updated: String,
}

/// Where a rotation stands, serialised as the word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryState {
    /// Started and not yet finished.
    Initiated,
    /// Every component serves the new certificates.
    Success,
    /// Rolled back, or stopped; `reason` says why.
    Failed,
}

impl std::fmt::Display for HistoryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HistoryState::Initiated => "Initiated",
            HistoryState::Success => "Success",
            HistoryState::Failed => "Failed",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let json = |r: &Request| serde_json::to_string(r).unwrap();
        assert_eq!(json(&Request::Status), r#""Status""#);
        assert_eq!(json(&Request::Reload), r#""Reload""#);
        assert_eq!(
            json(&Request::Rotate {
                types: vec!["etcd-leaf".into()],
                certs: vec![]
            }),
            r#"{"Rotate":{"types":["etcd-leaf"],"certs":[]}}"#
        );
        assert_eq!(
            json(&Request::History { limit: Some(3) }),
            r#"{"History":{"limit":3}}"#
        );
        // Fields left out by an older or terser client take their defaults.
        let r: Request = serde_json::from_str(r#"{"Rotate":{"certs":["apiserver"]}}"#).unwrap();
        assert_eq!(
            r,
            Request::Rotate {
                types: vec![],
                certs: vec!["apiserver".into()]
            }
        );
        let r: Request = serde_json::from_str(r#"{"History":{}}"#).unwrap();
        assert_eq!(r, Request::History { limit: None });
        assert_eq!(json(&Request::CaStatus), r#""CaStatus""#);
        let r: Request = serde_json::from_str(r#"{"CaRotate":{"track":"etcd-ca"}}"#).unwrap();
        assert_eq!(
            r,
            Request::CaRotate {
                track: "etcd-ca".into(),
                from: None
            }
        );
        assert!(r.changes_state() && !Request::CaStatus.changes_state());
        let r: Request = serde_json::from_str(r#"{"CaAbort":{}}"#).unwrap();
        assert_eq!(r, Request::CaAbort { track: None });
        assert!(r.changes_state());
    }

    #[test]
    fn history_state_is_the_word() {
        let s = serde_json::to_string(&HistoryState::Success).unwrap();
        assert_eq!(s, r#""Success""#);
        assert_eq!(HistoryState::Failed.to_string(), "Failed");
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_default() {
        // A newer daemon's lease with a field this client does not know, and no `held`.
        let lease: LeaseStatus =
            serde_json::from_str(r#"{"backend":"etcd","holder":"cp2","term":7}"#).unwrap();
        assert_eq!(lease.backend, "etcd");
        assert!(!lease.held);
        assert_eq!(lease.holder.as_deref(), Some("cp2"));
        let report: StatusReport = serde_json::from_str(r#"{"node":"cp1"}"#).unwrap();
        assert_eq!(report.node, "cp1");
        assert!(report.certificates.is_empty());
    }
}
