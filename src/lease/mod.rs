//! Taking turns: a node holds a lease across every disruptive step of a rotation, so that only one
//! node (or `slots` nodes) disrupts its components at a time. `local` is the single-node lease;
//! the etcd-backed one shares a cluster's slots between its nodes.

pub mod credentials;
pub mod etcd;
pub mod local;
pub mod queue;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::rotation::{Guard, GuardLost};

pub use record::{ClusterView, HolderRecord, NodeSummary, QueueEntry, Role};

/// A boxed future, so that [`Lease`] can be used as a trait object.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What a node asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// This node's name.
    pub node: String,
    /// The rotation the lease is for (shown in the holder record).
    pub rotation_id: String,
    /// Where the node stands in the fair order.
    pub role: Role,
    /// The soonest NotAfter among the certificates the rotation renews: soonest goes first.
    pub earliest_expiry: time::OffsetDateTime,
    /// Now, as the caller's clock says.
    pub now: time::OffsetDateTime,
}

/// Why the lease could not be taken, kept, read or given back.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// No etcd endpoint could be reached.
    #[error("connecting to etcd at {endpoints}: {error}")]
    Connect {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// Why.
        error: String,
    },
    /// A credential file could not be read or used (never its contents).
    #[error("lease credentials {}: {error}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// An etcd request failed.
    #[error("etcd lease: {op}: {error}")]
    Etcd {
        /// What was being done ("granting a lease", "reading /certrotd/c1/").
        op: String,
        /// Why.
        error: String,
    },
    /// A record under the prefix could not be read.
    #[error("etcd lease: key {key}: {error}")]
    Record {
        /// The key.
        key: String,
        /// Why.
        error: String,
    },
    /// The lease was lost (keep-alive failed, TTL ran out, slot taken over).
    #[error("lease lost: {0}")]
    Lost(String),
    /// The local lease's state could not be written.
    #[error("local lease: {op} {}: {error}", path.display())]
    Local {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
}

/// Taking turns with the other nodes of a cluster.
pub trait Lease: Send + Sync {
    /// "local lease" / "etcd lease cluster=c1 slots=1 endpoints=https://..": for logs and status.
    fn describe(&self) -> String;
    /// Waits this node's turn in the fair queue and takes a slot. Cancel-safe: dropping the future
    /// (the daemon selects it against shutdown) leaves no queue entry or slot behind (at worst
    /// until TTL). While held, a keep-alive runs in the background; when it fails or the TTL runs
    /// out it calls [`Held::mark_lost`], so every later disruptive step's guard check fails.
    fn acquire<'a>(&'a self, want: &'a Want) -> BoxFuture<'a, Result<Held, LeaseError>>;
    /// Records the step the holder is in (shown in the cluster view). Fails if the lease is lost.
    fn set_step<'a>(
        &'a self,
        held: &'a Held,
        step: &'a str,
    ) -> BoxFuture<'a, Result<(), LeaseError>>;
    /// Gives the slot back (revokes the etcd lease, stops the keep-alive).
    fn release<'a>(&'a self, held: Held) -> BoxFuture<'a, Result<(), LeaseError>>;
    /// Publishes this node's summary (etcd: under the prefix with its own TTL; local: in memory).
    fn publish<'a>(&'a self, summary: &'a NodeSummary) -> BoxFuture<'a, Result<(), LeaseError>>;
    /// Reads the cluster view (local: this node only).
    fn view<'a>(&'a self) -> BoxFuture<'a, Result<ClusterView, LeaseError>>;
    /// Confirms, before a disruptive step, that `held` is still this node's with `min_ttl` left.
    fn confirm<'a>(
        &'a self,
        held: &'a Held,
        step: &'a str,
        _min_ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            use crate::rotation::Guard as _;
            held.check(step).map_err(|e| LeaseError::Lost(e.0))
        })
    }
}

/// Opens the configured lease: `local` → [`local::LocalLease`] (in `state_dir`, a real path),
/// `etcd` → [`etcd::EtcdLease::connect`] with credentials from the node's PKI under `root`.
pub async fn open(
    settings: &crate::config::Settings,
    root: &crate::root::Root,
    state_dir: &Path,
    now: time::OffsetDateTime,
) -> Result<Arc<dyn Lease>, LeaseError> {
    use crate::config::LeaseBackend;
    let lease = &settings.lease;
    Ok(match lease.backend {
        LeaseBackend::Local => Arc::new(local::LocalLease::new(state_dir, &settings.node_name)),
        LeaseBackend::Etcd => {
            let credentials = credentials::load(lease, root, now)?;
            Arc::new(etcd::EtcdLease::connect(lease, &settings.node_name, credentials).await?)
        }
    })
}

/// The node's role from its inventory: etcd member if it holds etcd server/peer certificates,
/// control plane if it holds the apiserver's, worker otherwise. Judged by which component reads
/// each leaf, so RKE2's and k3s's trees count as kubeadm's names do; CA certificates say nothing
/// (every node holds the cluster CA).
pub fn role_of(inv: &crate::inventory::Inventory) -> Role {
    use crate::pki::layout::Component;
    let leaf_for = |component: Component| {
        inv.entries
            .iter()
            .any(|e| e.cert.is_some() && !e.is_ca() && e.consumers.contains(&component))
    };
    if leaf_for(Component::Etcd) {
        Role::EtcdMember
    } else if leaf_for(Component::KubeApiserver) {
        Role::ControlPlane
    } else {
        Role::Worker
    }
}

/// A lease held by this node.
#[derive(Debug, Clone)]
pub struct Held {
    /// Increases with every acquisition, so records and writes can be ordered across holders.
    pub fencing_token: u64,
    /// Who holds it (this node).
    pub holder: String,
    lost: Arc<AtomicBool>,
    why_lost: Arc<std::sync::Mutex<String>>,
    /// The etcd lease behind it (none for a local lease); dropping every clone stops its
    /// keep-alive, so a forgotten lease frees its slot after the TTL.
    etcd: Option<Arc<etcd::Holding>>,
}

impl Held {
    /// A held lease with a fencing token.
    pub fn new(holder: &str, fencing_token: u64) -> Held {
        Held {
            fencing_token,
            holder: holder.to_owned(),
            lost: Arc::new(AtomicBool::new(false)),
            why_lost: Arc::new(std::sync::Mutex::new(String::new())),
            etcd: None,
        }
    }

    /// Marks the lease lost (its keep-alive failed, its TTL ran out): every later guard check fails.
    pub fn mark_lost(&self, why: &str) {
        *self.why_lost.lock().unwrap_or_else(|p| p.into_inner()) = why.to_owned();
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Whether it is still held.
    pub fn is_held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    /// Why it was lost (empty while held).
    pub fn why_lost(&self) -> String {
        self.why_lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Guard for Held {
    fn check(&self, step: &str) -> Result<(), GuardLost> {
        if self.is_held() {
            return Ok(());
        }
        let why = self.why_lost();
        Err(GuardLost(format!(
            "lease lost before {step}: {why}; stopping without further changes"
        )))
    }
}
