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
    /// A disruptive step was refused because the lease could not be confirmed in etcd: this node
    /// no longer holds its slot with its fencing token, too little TTL is left for the step, or
    /// etcd did not answer in time (failing closed). The held lease is marked lost.
    #[error("lease not confirmed before {step}, which did not happen: {why}")]
    Fenced {
        /// The step that was about to happen ("install batch 1", "restart kube-apiserver").
        step: String,
        /// Why ("slot /certrotd/c1/slots/0 now held by cp2 with token 412, ours was 398").
        why: String,
    },
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

impl LeaseError {
    /// Whether the error says the connection to etcd is unusable (unreachable, TLS, an expired
    /// or refused client certificate), so that a fresh client, with credentials read again, may
    /// fare better. A lost slot or an unreadable record is no reason to reconnect.
    pub fn is_transport(&self) -> bool {
        match self {
            LeaseError::Connect { .. } | LeaseError::Credentials { .. } => true,
            LeaseError::Etcd { error, .. } => transport_text(error),
            LeaseError::Fenced { why, .. } => transport_text(why),
            LeaseError::Record { .. } | LeaseError::Lost(_) | LeaseError::Local { .. } => false,
        }
    }
}

/// Words tonic, rustls, hyper and etcd use when the channel, not the request, failed.
fn transport_text(text: &str) -> bool {
    const SIGNS: [&str; 13] = [
        "transport error",
        "tcp connect",
        "connection refused",
        "connection reset",
        "broken pipe",
        "certificate",
        "tls",
        "handshake",
        "unavailable",
        "unauthenticated",
        "permission denied",
        "no answer within",
        "error trying to connect",
    ];
    let text = text.to_ascii_lowercase();
    SIGNS.iter().any(|s| text.contains(s))
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
    /// Confirms, right before the disruptive `step`, that this node still holds its slot with its
    /// fencing token and that at least `min_ttl` of the lease is left (etcd: one transaction on
    /// the slot key, then the lease's TTL, renewed once if short). On any failure, an unreachable
    /// etcd included, marks `held` lost and returns [`LeaseError::Fenced`]: the step must not
    /// happen.
    fn confirm<'a>(
        &'a self,
        held: &'a Held,
        step: &'a str,
        min_ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), LeaseError>>;
    /// Gives the slot back (revokes the etcd lease, stops the keep-alive).
    fn release<'a>(&'a self, held: Held) -> BoxFuture<'a, Result<(), LeaseError>>;
    /// Publishes this node's summary (etcd: under the prefix with its own TTL; local: in memory).
    fn publish<'a>(&'a self, summary: &'a NodeSummary) -> BoxFuture<'a, Result<(), LeaseError>>;
    /// Reads the cluster view (local: this node only).
    fn view<'a>(&'a self) -> BoxFuture<'a, Result<ClusterView, LeaseError>>;
}

/// Opens the configured lease: `local` → [`local::LocalLease`] (in `state_dir`, a real path),
/// `etcd` → [`etcd::EtcdLease::connect`] with credentials from the node's PKI under `root`.
pub async fn open(
    settings: &crate::config::Settings,
    root: &crate::root::Root,
    state_dir: &Path,
    now: time::OffsetDateTime,
) -> Result<Arc<dyn Lease>, LeaseError> {
    let credentials = load_credentials(settings, root, now)?;
    open_with(settings, state_dir, credentials).await
}

/// The credentials the configured lease needs: `None` for the local lease, the node's etcd
/// client (or one minted in memory) for etcd.
pub fn load_credentials(
    settings: &crate::config::Settings,
    root: &crate::root::Root,
    now: time::OffsetDateTime,
) -> Result<Option<credentials::Credentials>, LeaseError> {
    match settings.lease.backend {
        crate::config::LeaseBackend::Local => Ok(None),
        crate::config::LeaseBackend::Etcd => {
            credentials::load(&settings.lease, root, now).map(Some)
        }
    }
}

/// Opens the configured lease with credentials already loaded ([`load_credentials`]), so a
/// caller can compare them with the ones in use before connecting again. `None` for etcd means
/// no TLS (plain http endpoints).
pub async fn open_with(
    settings: &crate::config::Settings,
    state_dir: &Path,
    credentials: Option<credentials::Credentials>,
) -> Result<Arc<dyn Lease>, LeaseError> {
    use crate::config::LeaseBackend;
    let lease = &settings.lease;
    Ok(match lease.backend {
        LeaseBackend::Local => Arc::new(local::LocalLease::new(state_dir, &settings.node_name)),
        LeaseBackend::Etcd => {
            let credentials = credentials.unwrap_or_else(credentials::Credentials::plain);
            Arc::new(etcd::EtcdLease::connect(lease, &settings.node_name, credentials).await?)
        }
    })
}

impl From<&crate::config::LeaseSettings> for etcd::EtcdOptions {
    fn from(lease: &crate::config::LeaseSettings) -> Self {
        etcd::EtcdOptions {
            endpoints: lease.endpoints.clone(),
            cluster: lease.cluster.clone(),
            slots: lease.slots,
            ttl: lease.ttl,
        }
    }
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

    /// Refuses `step` if the lease is lost already.
    pub(crate) fn confirm_held(&self, step: &str) -> Result<(), LeaseError> {
        if self.is_held() {
            return Ok(());
        }
        Err(LeaseError::Fenced {
            step: step.to_owned(),
            why: self.why_lost(),
        })
    }

    /// Fences `step` for `why`, marking the lease lost so every later step is refused too.
    pub(crate) fn fence(&self, step: &str, why: String) -> LeaseError {
        self.mark_lost(&why);
        LeaseError::Fenced {
            step: step.to_owned(),
            why,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_trouble_asks_for_a_new_client() {
        let etcd = |error: &str| LeaseError::Etcd {
            op: "reading /certrotd/c1/".to_owned(),
            error: error.to_owned(),
        };
        let reconnect = [
            LeaseError::Connect {
                endpoints: "https://10.0.0.1:2379".to_owned(),
                error: "tcp connect error".to_owned(),
            },
            etcd("transport error: error trying to connect: invalid peer certificate: Expired"),
            etcd("grpc request error: status: Unavailable, message: \"connection refused\""),
            etcd("no answer within 1s"),
            etcd("grpc request error: status: Unauthenticated, message: \"bad certificate\""),
        ];
        for e in &reconnect {
            assert!(e.is_transport(), "{e}");
        }
        let keep = [
            LeaseError::Lost("etcd lease 7 expired".to_owned()),
            LeaseError::Record {
                key: "/certrotd/c1/slots/0".to_owned(),
                error: "expected value".to_owned(),
            },
            etcd("lease not found"),
            LeaseError::Fenced {
                step: "install batch 1".to_owned(),
                why: "slot /certrotd/c1/slots/0 now held by cp2 with token 412, ours was 398"
                    .to_owned(),
            },
        ];
        for e in &keep {
            assert!(!e.is_transport(), "{e}");
        }
    }

    #[test]
    fn a_fenced_step_says_which_step_did_not_happen_and_why() {
        let e = LeaseError::Fenced {
            step: "restart kube-apiserver".to_owned(),
            why: "only 3s of TTL left on etcd lease 7 (renewed, configured ttl 3s), the step needs 20s"
                .to_owned(),
        };
        assert_eq!(
            e.to_string(),
            "lease not confirmed before restart kube-apiserver, which did not happen: only 3s of \
             TTL left on etcd lease 7 (renewed, configured ttl 3s), the step needs 20s"
        );
    }
}
