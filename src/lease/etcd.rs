//! The cluster's lease in etcd. Keys under `/certrotd/<cluster>/`:
//!
//! - `queue/<node>`: a waiting node's [`QueueEntry`], attached to its etcd lease;
//! - `slots/<n>`: a holder's [`HolderRecord`], created only if absent, attached to the same lease;
//! - `nodes/<node>`: each node's [`NodeSummary`], attached to a long-lived lease of its own.
//!
//! A waiter reads the queue and the slots in one range, and takes a free slot only if it is among
//! the first `free` entries of the fair order ([`super::queue`]); otherwise it waits on a watch of
//! that range, so a release reaches the next node in one round trip. A holder that dies stops
//! renewing its etcd lease, and etcd deletes its slot when the TTL runs out.
//!
//! The fencing token is the etcd revision that created the slot key: etcd revisions only grow, so
//! every later holder of any slot has a larger one.
//!
//! Split by concern: this file is the client (connecting, one retried request, the [`Lease`]
//! trait's entry points); `slot` waits in the queue, takes, holds, renews and gives back a slot;
//! `fence` asks etcd whether the slot is still held before a disruptive step; `snapshot` reads
//! the keys into one picture (for the waiter and for `certrotd status`); `summary` publishes
//! and keeps alive this node's summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, PutOptions, TlsOptions, Txn};
use tokio::time::{Instant, timeout_at};

use super::credentials::Credentials;
use super::record::{ClusterView, NodeSummary};
use super::{BoxFuture, Held, Lease, LeaseError, Want};

mod fence;
mod slot;
mod snapshot;
mod summary;

pub use slot::Holding;
use slot::holding;
use summary::Published;

/// How long to wait before repeating a failed request, at first.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// The longest wait between repeats.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node's summary outlives its daemon, at least. Refreshed every third of it, which
/// is what an idle node costs etcd: one keep-alive every 100 s.
const MIN_SUMMARY_TTL: Duration = Duration::from_secs(300);

/// What the etcd lease is told by the `[lease]` table (built from it in [`super`]), so this file
/// does not depend on the configuration's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// The cluster's name: keys live under `/certrotd/<cluster>/`.
    pub cluster: String,
    /// How many nodes may be in a disruptive step at once.
    pub slots: u32,
    /// How long a slot outlives its holder's last keep-alive.
    pub ttl: Duration,
}

/// A task aborted when dropped, so a forgotten [`Held`] stops renewing its lease.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The lease shared by a cluster's nodes through etcd.
pub struct EtcdLease {
    client: Client,
    node: String,
    cluster: String,
    slots: u32,
    ttl: Duration,
    summary_ttl: Duration,
    endpoints: Vec<String>,
    prefix: String,
    requests: Arc<AtomicU64>,
    published: Arc<tokio::sync::Mutex<Published>>,
    /// Refreshes the published summary's lease. Owned here rather than by `published`, which the
    /// task itself holds: dropping the lease (a reload, new credentials) must end the task.
    refresher: std::sync::Mutex<Option<AbortOnDrop>>,
}

impl std::fmt::Debug for EtcdLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl EtcdLease {
    /// Connects to the configured endpoints as `node`, and proves the connection (endpoints, CA,
    /// client certificate) with one read, so a bad credential is reported now, not at the first
    /// rotation.
    pub async fn connect(
        options: impl Into<EtcdOptions>,
        node: &str,
        credentials: Credentials,
    ) -> Result<EtcdLease, LeaseError> {
        let settings: EtcdOptions = options.into();
        let endpoints = settings.endpoints.clone();
        let connect_error = |error: String| LeaseError::Connect {
            endpoints: endpoints.join(","),
            error,
        };
        // tonic falls back to ring when no process-wide provider is set, and ring cannot read
        // every key kubeadm writes; aws-lc (which the rest of certrotd uses) can. Installing
        // fails only if a provider is already set, which tonic then uses.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
        if let Some(ca) = &credentials.ca_pem {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = credentials.identity() {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|e| connect_error(format!("{} {e:?}", chain(&e))))?;
        let lease = EtcdLease {
            client,
            node: node.to_owned(),
            cluster: settings.cluster.clone(),
            slots: settings.slots,
            ttl: settings.ttl,
            summary_ttl: MIN_SUMMARY_TTL.max(settings.ttl * 5),
            prefix: format!("/certrotd/{}/", settings.cluster),
            endpoints: endpoints.clone(),
            requests: Arc::new(AtomicU64::new(0)),
            published: Arc::default(),
            refresher: std::sync::Mutex::new(None),
        };
        lease.snapshot().await.map_err(|e| {
            connect_error(format!("{e} (client certificate: {})", credentials.source))
        })?;
        Ok(lease)
    }

    /// How many requests this client has sent to etcd (keep-alives and watches included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// How long a unary request may take: a third of the TTL, so that a waiter notices a dead
    /// etcd before its lease would run out.
    fn op_timeout(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_secs(1))
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}/{name}", self.prefix)
    }

    /// Runs one request, counting it, and repeats it on failure until the op timeout: after a
    /// member died, the client's balancer still sends some requests to it (refused at once), and
    /// another member answers the next try. Every request here is safe to repeat (a
    /// transaction's compare makes its repeat a no-op, which the caller sees).
    async fn call<T, F, Fut>(&self, op: &str, request: F) -> Result<T, LeaseError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_until(Instant::now() + self.op_timeout(), op, request)
            .await
    }

    /// [`EtcdLease::call`] with a deadline shared by several requests (a confirmation is
    /// bounded as a whole, not per request).
    async fn call_until<T, F, Fut>(
        &self,
        deadline: Instant,
        op: &str,
        request: F,
    ) -> Result<T, LeaseError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let budget = deadline.saturating_duration_since(Instant::now());
        let mut pause = RETRY_PAUSE;
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let error = match timeout_at(deadline, request(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => chain(&e),
                Err(_) => format!("no answer within {budget:?}"),
            };
            if Instant::now() + pause >= deadline {
                return Err(etcd_error(op, &error));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, LeaseError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let resp = self
            .call("granting a lease", |c| async move {
                c.lease_client().grant(secs, None).await
            })
            .await?;
        Ok(resp.id())
    }

    /// Writes a key attached to an etcd lease.
    async fn put(&self, key: &str, value: Vec<u8>, lease_id: i64) -> Result<(), LeaseError> {
        self.call(&format!("writing {key}"), |c| {
            let (key, value) = (key.to_owned(), value.clone());
            async move {
                let options = PutOptions::new().with_lease(lease_id);
                c.kv_client().put(key, value, Some(options)).await
            }
        })
        .await
        .map(drop)
    }

    /// Runs a transaction.
    async fn txn(&self, op: &str, txn: Txn) -> Result<etcd_client::TxnResponse, LeaseError> {
        self.call(op, |c| {
            let txn = txn.clone();
            async move { c.kv_client().txn(txn).await }
        })
        .await
    }
}

impl Lease for EtcdLease {
    fn describe(&self) -> String {
        format!(
            "etcd lease cluster={} slots={} ttl={} endpoints={}",
            self.cluster,
            self.slots,
            crate::duration::format(self.ttl),
            self.endpoints.join(",")
        )
    }

    fn acquire<'a>(&'a self, want: &'a Want) -> BoxFuture<'a, Result<Held, LeaseError>> {
        Box::pin(self.acquire_inner(want))
    }

    fn set_step<'a>(
        &'a self,
        held: &'a Held,
        step: &'a str,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(self.set_step_inner(held, step))
    }

    fn confirm<'a>(
        &'a self,
        held: &'a Held,
        step: &'a str,
        min_ttl: Duration,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(self.confirm_inner(held, step, min_ttl))
    }

    fn release<'a>(&'a self, held: Held) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(self.release_inner(held))
    }

    fn publish<'a>(&'a self, summary: &'a NodeSummary) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(self.publish_inner(summary))
    }

    fn view<'a>(&'a self) -> BoxFuture<'a, Result<ClusterView, LeaseError>> {
        Box::pin(self.view_inner())
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn etcd_error(op: &str, error: &str) -> LeaseError {
    LeaseError::Etcd {
        op: op.to_owned(),
        error: error.to_owned(),
    }
}

/// An error and its sources, as one line: tonic's transport errors say what went wrong only
/// deep in the chain ("invalid peer certificate: Expired").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
