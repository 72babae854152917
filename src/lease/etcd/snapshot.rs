//! Reading the keys: one range read parsed into a [`Snapshot`] (the queue in fair order, the
//! holders with their fencing tokens, the node summaries), which the waiter decides on and
//! `certrotd status` shows as a [`ClusterView`]. An unreadable value is logged and left out,
//! never obeyed.

use etcd_client::{GetOptions, KeyValue};

use super::EtcdLease;
use crate::lease::record::{ClusterView, HolderRecord, NodeSummary, QueueEntry, Record as _};
use crate::lease::{LeaseError, queue};

/// The queue and slots as one read saw them.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub(super) revision: i64,
    /// Each holder's record, with the etcd lease its slot key is attached to.
    pub(super) holders: Vec<(i64, HolderRecord)>,
    /// Slot numbers taken, including records that could not be read (taken is the safe guess).
    taken: Vec<u32>,
    /// Slot keys present, whatever their number.
    held_keys: usize,
    pub(super) queue: Vec<QueueEntry>,
    nodes: Vec<NodeSummary>,
}

impl Snapshot {
    fn parse(prefix: &str, revision: i64, kvs: &[KeyValue]) -> Snapshot {
        let mut snap = Snapshot {
            revision,
            ..Snapshot::default()
        };
        for kv in kvs {
            let Some(rest) = kv.key_str().ok().and_then(|k| k.strip_prefix(prefix)) else {
                continue;
            };
            let Some((kind, name)) = rest.split_once('/') else {
                continue;
            };
            match kind {
                "slots" => {
                    snap.held_keys += 1;
                    if let Ok(n) = name.parse::<u32>() {
                        snap.taken.push(n);
                    }
                    match HolderRecord::from_json(kv.value()) {
                        Ok(mut r) => {
                            r.fencing_token = u64::try_from(kv.create_revision()).unwrap_or(0);
                            snap.holders.push((kv.lease(), r));
                        }
                        Err(e) => {
                            tracing::warn!("lease: {prefix}{rest}: unreadable holder record: {e}")
                        }
                    }
                }
                "queue" => match QueueEntry::from_json(kv.value()) {
                    Ok(e) => snap.queue.push(e),
                    // Ignored rather than obeyed: an entry nobody can parse would block the queue.
                    Err(e) => tracing::warn!("lease: {prefix}{rest}: unreadable queue entry: {e}"),
                },
                "nodes" => match NodeSummary::from_json(kv.value()) {
                    Ok(s) => snap.nodes.push(s),
                    Err(e) => tracing::warn!("lease: {prefix}{rest}: unreadable summary: {e}"),
                },
                _ => {}
            }
        }
        queue::sort(&mut snap.queue);
        snap
    }

    /// The slot `node` may take now, if its turn has come.
    pub(super) fn slot_for(&self, node: &str, slots: u32) -> Option<u32> {
        let free: Vec<u32> = (0..slots).filter(|n| !self.taken.contains(n)).collect();
        // A peer configured with more slots may hold keys beyond ours: they count too.
        let free_count = free
            .len()
            .min((slots as usize).saturating_sub(self.held_keys));
        let position = queue::may_take(&self.queue, node, free_count)?;
        free.get(position).copied()
    }
}

impl EtcdLease {
    /// The queue and the slots (one range: `queue/` sorts right before `slots/`).
    pub(super) async fn snapshot(&self) -> Result<Snapshot, LeaseError> {
        let from = self.key("queue", "");
        let to = format!("{}slots0", self.prefix); // '0' follows '/'
        let resp = self
            .call(&format!("reading {from}"), |c| {
                let (from, to) = (from.clone(), to.clone());
                async move {
                    c.kv_client()
                        .get(from, Some(GetOptions::new().with_range(to)))
                        .await
                }
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(Snapshot::parse(&self.prefix, revision, resp.kvs()))
    }

    pub(super) async fn view_inner(&self) -> Result<ClusterView, LeaseError> {
        let resp = self
            .call(&format!("reading {}", self.prefix), |c| {
                let prefix = self.prefix.clone();
                async move {
                    c.kv_client()
                        .get(prefix, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        let snap = Snapshot::parse(&self.prefix, 0, resp.kvs());
        let mut queue = snap.queue;
        queue::sort(&mut queue);
        Ok(ClusterView {
            cluster: self.cluster.clone(),
            slots: self.slots,
            holders: snap.holders.into_iter().map(|(_, r)| r).collect(),
            queue,
            nodes: snap.nodes,
        })
    }
}
