//! What the lease store holds, as JSON under the cluster's prefix: the holders' records, the
//! queue of waiting nodes, and each node's published summary.

use serde::{Deserialize, Serialize};

use crate::control::proto;

/// Where a node stands in the fair order (etcd members first, then other control planes, then
/// workers), as Rancher orders its nodes: etcd's quorum is the most fragile thing to disrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs an etcd member.
    EtcdMember,
    /// Runs the API server but no etcd member.
    ControlPlane,
    /// Neither.
    Worker,
}

impl Role {
    /// The name as records write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::EtcdMember => "etcd-member",
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The holder's record stored under the slot key (JSON).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HolderRecord {
    /// The slot held (0-based).
    pub slot: u32,
    /// The holding node.
    pub node: String,
    /// The rotation it holds the slot for.
    pub rotation_id: String,
    /// When it took the slot (RFC 3339).
    pub since: String,
    /// The step it is in ("acquired", "install", "restart etcd", ...).
    pub step: String,
    /// Strictly increasing across holders: the etcd revision that created the slot key.
    pub fencing_token: u64,
}

/// A waiting node (JSON under the queue key), in queue order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// The waiting node.
    pub node: String,
    /// Its role.
    pub role: Role,
    /// The soonest NotAfter it renews (RFC 3339).
    pub earliest_expiry: String,
    /// When it started waiting (RFC 3339).
    pub since: String,
}

/// What each daemon publishes about its node (JSON, with its own TTL).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
// Fields added later must not break older peers' records or clients: absent means default.
#[serde(default)]
pub struct NodeSummary {
    /// The node.
    pub node: String,
    /// Its role, once its inventory is known.
    pub role: Option<Role>,
    /// The soonest NotAfter among its certificates (RFC 3339).
    pub earliest_expiry: Option<String>,
    /// What its daemon is doing ("idle", "waiting", "rotating", "failed", ...).
    pub state: String,
    /// When it last finished a rotation (RFC 3339).
    pub last_rotation: Option<String>,
    /// When this summary was written (RFC 3339).
    pub updated: String,
}

impl NodeSummary {
    /// Whether two summaries say the same thing, apart from when they were written.
    pub fn same_news(&self, other: &NodeSummary) -> bool {
        NodeSummary {
            updated: String::new(),
            ..self.clone()
        } == NodeSummary {
            updated: String::new(),
            ..other.clone()
        }
    }
}

/// The whole cluster as the lease store sees it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
// Fields added later must not break older peers' records or clients: absent means default.
#[serde(default)]
pub struct ClusterView {
    /// The cluster's name (the key prefix's).
    pub cluster: String,
    /// How many nodes may be disrupted at once.
    pub slots: u32,
    /// Who holds a slot, by slot.
    pub holders: Vec<HolderRecord>,
    /// Who waits, in the order they will go.
    pub queue: Vec<QueueEntry>,
    /// Every node that published a summary, by name.
    pub nodes: Vec<NodeSummary>,
}

impl ClusterView {
    /// As the control protocol carries it (`certrotd status --cluster`).
    pub fn to_wire(&self) -> proto::ClusterView {
        proto::ClusterView {
            cluster: self.cluster.clone(),
            slots: self.slots,
            holders: self
                .holders
                .iter()
                .map(|h| proto::SlotHolder {
                    slot: h.slot,
                    node: h.node.clone(),
                    rotation_id: h.rotation_id.clone(),
                    since: h.since.clone(),
                    step: h.step.clone(),
                    fencing_token: h.fencing_token,
                })
                .collect(),
            queue: self
                .queue
                .iter()
                .map(|q| proto::QueuedNode {
                    node: q.node.clone(),
                    role: q.role.as_str().to_owned(),
                    earliest_expiry: q.earliest_expiry.clone(),
                    since: q.since.clone(),
                })
                .collect(),
            nodes: self
                .nodes
                .iter()
                .map(|n| proto::NodeSummary {
                    node: n.node.clone(),
                    role: n.role.map(|r| r.as_str().to_owned()),
                    earliest_expiry: n.earliest_expiry.clone(),
                    state: n.state.clone(),
                    last_rotation: n.last_rotation.clone(),
                    updated: n.updated.clone(),
                })
                .collect(),
            // The daemon's handler adds the CA tracks; the lease knows nothing of them.
            ca: Vec::new(),
        }
    }
}

/// A record as the lease store holds it: one JSON value per key. Reading goes through
/// [`Record::from_json`] alone, so the fuzz targets ([`crate::fuzzing`]) read what peers wrote
/// exactly as the lease does.
pub trait Record: Serialize + serde::de::DeserializeOwned {
    /// Reads a record from a key's value.
    fn from_json(value: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(value)
    }
}

impl Record for HolderRecord {}
impl Record for QueueEntry {}
impl Record for NodeSummary {}

/// RFC 3339, as every record writes time.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_and_summaries_missing_fields_parse_as_defaults() {
        let v: ClusterView = serde_json::from_str(r#"{"cluster":"c1"}"#).unwrap();
        assert_eq!(v.cluster, "c1");
        assert!(v.holders.is_empty() && v.queue.is_empty() && v.nodes.is_empty());
        let n: NodeSummary = serde_json::from_str(r#"{"node":"cp1"}"#).unwrap();
        assert_eq!(n.node, "cp1");
        assert_eq!(n.role, None);
    }

    #[test]
    fn roles_order_and_spell_as_documented() {
        assert!(Role::EtcdMember < Role::ControlPlane && Role::ControlPlane < Role::Worker);
        assert_eq!(
            serde_json::to_string(&Role::ControlPlane).unwrap(),
            "\"control-plane\""
        );
        let e: QueueEntry = serde_json::from_str(
            r#"{"node":"a","role":"etcd-member","earliest_expiry":"2026-01-01T00:00:00Z","since":"x"}"#,
        )
        .unwrap();
        assert_eq!(e.role, Role::EtcdMember);
    }

    #[test]
    fn the_wire_view_is_the_lease_view_byte_for_byte() {
        // `certrotd status --cluster -o json` printed the lease's own view before the protocol
        // had its types: the conversion must not change a byte of it.
        let view = ClusterView {
            cluster: "prod".into(),
            slots: 2,
            holders: vec![HolderRecord {
                slot: 1,
                node: "cp2".into(),
                rotation_id: "20260501T095930Z-abcdef".into(),
                since: "2026-05-01T09:59:30Z".into(),
                step: "restart".into(),
                fencing_token: 42,
            }],
            queue: vec![QueueEntry {
                node: "w1".into(),
                role: Role::Worker,
                earliest_expiry: "2026-05-02T00:00:00Z".into(),
                since: "2026-05-01T09:58:00Z".into(),
            }],
            nodes: vec![
                NodeSummary {
                    node: "cp1".into(),
                    role: Some(Role::EtcdMember),
                    earliest_expiry: Some("2027-05-01T10:00:00Z".into()),
                    state: "idle".into(),
                    last_rotation: Some("x Success 2026-05-01T09:00:00Z".into()),
                    updated: "2026-05-01T09:59:00Z".into(),
                },
                NodeSummary::default(),
            ],
        };
        assert_eq!(
            serde_json::to_string_pretty(&view).unwrap(),
            serde_json::to_string_pretty(&view.to_wire()).unwrap()
        );
    }
}
