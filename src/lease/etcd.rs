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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use futures_util::FutureExt as _;
use tokio::time::{Instant, timeout, timeout_at};

use super::credentials::Credentials;
use super::record::{ClusterView, HolderRecord, NodeSummary, QueueEntry, Record as _, rfc3339};
use super::{BoxFuture, Held, Lease, LeaseError, Want, queue};

mod fence;

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

/// What an etcd holder needs to update and give back its slot; lives inside [`Held`].
#[derive(Debug)]
pub struct Holding {
    lease_id: i64,
    key: String,
    record: std::sync::Mutex<HolderRecord>,
    keepalive: AbortOnDrop,
}

/// The node's published summary and the lease that keeps it.
#[derive(Default)]
struct Published {
    lease_id: Option<i64>,
    last: Option<NodeSummary>,
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

    /// The queue and the slots (one range: `queue/` sorts right before `slots/`).
    async fn snapshot(&self) -> Result<Snapshot, LeaseError> {
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

    /// A watch on the queue and the slots from `revision` on.
    async fn watch_from(&self, revision: i64) -> Result<WatchStream, LeaseError> {
        let from = self.key("queue", "");
        let to = format!("{}slots0", self.prefix);
        self.call(&format!("watching {from}"), |c| {
            let (from, to) = (from.clone(), to.clone());
            async move {
                let options = WatchOptions::new()
                    .with_range(to)
                    .with_start_revision(revision);
                c.watch_client().watch(from, Some(options)).await
            }
        })
        .await
    }

    /// Waits until the queue or the slots change (or a safety interval passes: a watch can miss
    /// nothing, but a broken one is only noticed by reading again).
    async fn wait_change(&self, watch: &mut Option<WatchStream>, revision: i64) {
        let Some(stream) = watch.as_mut() else {
            tokio::time::sleep(self.op_timeout() / 2).await;
            *watch = self.watch_from(revision + 1).await.ok();
            return;
        };
        let deadline = Instant::now() + self.ttl;
        loop {
            match timeout_at(deadline, stream.message()).await {
                Err(_) => return,
                Ok(Ok(Some(resp))) if resp.canceled() || resp.compact_revision() > 0 => {
                    *watch = None;
                    return;
                }
                Ok(Ok(Some(resp))) if resp.events().is_empty() => continue,
                Ok(Ok(Some(_))) => break,
                Ok(Ok(None) | Err(_)) => {
                    *watch = None;
                    return;
                }
            }
        }
        // Several changes often come together (a release deletes a slot and a queue entry):
        // one read covers them all.
        while let Some(Ok(Some(_))) = stream.message().now_or_never() {}
    }

    async fn acquire_inner(&self, want: &Want) -> Result<Held, LeaseError> {
        let started = Instant::now();
        let lease_id = self.grant(self.ttl).await?;
        let mut revoke = RevokeOnDrop {
            client: Some(self.client.clone()),
            lease_id,
        };
        let held = Held::new(&want.node, 0);
        let keepalive = AbortOnDrop(tokio::spawn(keep_alive(
            self.client.clone(),
            lease_id,
            self.ttl,
            held.clone(),
            self.requests.clone(),
        )));
        let queue_key = self.key("queue", &want.node);
        let entry = QueueEntry {
            node: want.node.clone(),
            role: want.role,
            earliest_expiry: rfc3339(want.earliest_expiry),
            since: rfc3339(want.now),
        };
        // A failure here is retried by the loop, which puts the entry back whenever it is missing.
        if let Err(e) = self.put(&queue_key, json(&entry), lease_id).await {
            tracing::debug!("lease: {e}; retrying");
        }
        let mut watch = None;
        loop {
            if !held.is_held() {
                return Err(LeaseError::Lost(format!(
                    "while waiting in the queue: {}",
                    held.why_lost()
                )));
            }
            let snap = match self.snapshot().await {
                Ok(snap) => snap,
                // Transient (a member restarting): the keep-alive decides when to give up.
                Err(e) => {
                    tracing::debug!("lease: {e}; retrying");
                    tokio::time::sleep(self.op_timeout() / 2).await;
                    continue;
                }
            };
            if watch.is_none() {
                watch = self.watch_from(snap.revision + 1).await.ok();
            }
            // A take whose answer was lost on the way back is found here, by its lease.
            let mine = snap.holders.iter().find(|(id, _)| *id == lease_id);
            if let Some((_, record)) = mine {
                revoke.client = None;
                return Ok(self.holding(held, record.clone(), lease_id, keepalive));
            }
            if !snap.queue.iter().any(|e| e.node == want.node) {
                if let Err(e) = self.put(&queue_key, json(&entry), lease_id).await {
                    tracing::debug!("lease: {e}; retrying");
                    tokio::time::sleep(self.op_timeout() / 2).await;
                }
                continue;
            }
            if let Some(slot) = snap.slot_for(&want.node, self.slots) {
                let record = HolderRecord {
                    slot,
                    node: want.node.clone(),
                    rotation_id: want.rotation_id.clone(),
                    since: rfc3339(want.now + started.elapsed()),
                    step: "acquired".to_owned(),
                    fencing_token: 0,
                };
                match self.take_slot(&record, &queue_key, lease_id).await {
                    Ok(Some(token)) => {
                        revoke.client = None;
                        let record = HolderRecord {
                            fencing_token: token,
                            ..record
                        };
                        return Ok(self.holding(held, record, lease_id, keepalive));
                    }
                    // Someone was faster: the next read shows who.
                    Ok(None) => {}
                    // The answer may have been lost after the take: the next read tells.
                    Err(e) => tracing::debug!("lease: {e}; retrying"),
                }
                continue;
            }
            self.wait_change(&mut watch, snap.revision).await;
        }
    }

    /// Makes `held` the holder of `record`'s slot.
    fn holding(
        &self,
        mut held: Held,
        record: HolderRecord,
        lease_id: i64,
        keepalive: AbortOnDrop,
    ) -> Held {
        tracing::info!(
            "lease: {} took slot {} of cluster {} (fencing token {})",
            record.node,
            record.slot,
            self.cluster,
            record.fencing_token
        );
        held.fencing_token = record.fencing_token;
        held.etcd = Some(Arc::new(Holding {
            lease_id,
            key: self.key("slots", &record.slot.to_string()),
            record: std::sync::Mutex::new(record),
            keepalive,
        }));
        held
    }

    /// Creates the slot key if absent and removes the queue entry, in one transaction; the
    /// fencing token (the transaction's revision, so the key's create revision) when it worked,
    /// `None` when someone was faster.
    async fn take_slot(
        &self,
        record: &HolderRecord,
        queue_key: &str,
        lease_id: i64,
    ) -> Result<Option<u64>, LeaseError> {
        let key = self.key("slots", &record.slot.to_string());
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Compare::version(queue_key, CompareOp::Greater, 0),
            ])
            .and_then([
                TxnOp::put(
                    key.clone(),
                    json(record),
                    Some(PutOptions::new().with_lease(lease_id)),
                ),
                TxnOp::delete(queue_key, None),
            ]);
        let resp = self.txn(&format!("taking {key}"), txn).await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(Some(u64::try_from(revision).unwrap_or(0)))
    }

    async fn set_step_inner(&self, held: &Held, step: &str) -> Result<(), LeaseError> {
        let holding = holding(held)?;
        if !held.is_held() {
            return Err(LeaseError::Lost(held.why_lost()));
        }
        let record = {
            let mut record = holding.record.lock().unwrap_or_else(|p| p.into_inner());
            record.step = step.to_owned();
            record.clone()
        };
        let token = i64::try_from(held.fencing_token).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when([Compare::create_revision(
                holding.key.clone(),
                CompareOp::Equal,
                token,
            )])
            .and_then([TxnOp::put(
                holding.key.clone(),
                json(&record),
                Some(PutOptions::new().with_lease(holding.lease_id)),
            )]);
        let resp = self.txn(&format!("writing {}", holding.key), txn).await?;
        if !resp.succeeded() {
            let why = format!(
                "{} is no longer held by fencing token {} (the TTL ran out)",
                holding.key, held.fencing_token
            );
            held.mark_lost(&why);
            return Err(LeaseError::Lost(why));
        }
        Ok(())
    }

    async fn release_inner(&self, held: Held) -> Result<(), LeaseError> {
        let holding = holding(&held)?;
        holding.keepalive.0.abort();
        held.mark_lost("released");
        let id = holding.lease_id;
        let revoked = self
            .call(
                &format!("revoking the lease of {}", holding.key),
                |c| async move { c.lease_client().revoke(id).await },
            )
            .await;
        match revoked {
            Ok(_) => Ok(()),
            // Expired already (the keep-alive lost it): the slot is free, as release wants.
            Err(LeaseError::Etcd { error, .. }) if error.contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn publish_inner(&self, summary: &NodeSummary) -> Result<(), LeaseError> {
        let mut published = self.published.lock().await;
        if published.lease_id.is_some()
            && published
                .last
                .as_ref()
                .is_some_and(|l| l.same_news(summary))
        {
            // Nothing new: the refresher keeps the published one alive, at no cost here.
            return Ok(());
        }
        let lease_id = match published.lease_id {
            Some(id) => id,
            None => self.grant(self.summary_ttl).await?,
        };
        let lease_id = match self.put_summary(summary, lease_id).await {
            Ok(()) => lease_id,
            // The summary's lease ran out while etcd was away: take a new one.
            Err(_) if published.lease_id.is_some() => {
                let id = self.grant(self.summary_ttl).await?;
                self.put_summary(summary, id).await?;
                id
            }
            Err(e) => return Err(e),
        };
        published.lease_id = Some(lease_id);
        published.last = Some(summary.clone());
        let mut refresher = self.refresher.lock().unwrap_or_else(|e| e.into_inner());
        if refresher.is_none() {
            *refresher = Some(AbortOnDrop(tokio::spawn(refresh_summary(
                self.client.clone(),
                self.published.clone(),
                self.key("nodes", &self.node),
                self.summary_ttl,
                self.requests.clone(),
            ))));
        }
        Ok(())
    }

    async fn put_summary(&self, summary: &NodeSummary, lease_id: i64) -> Result<(), LeaseError> {
        self.put(&self.key("nodes", &self.node), json(summary), lease_id)
            .await
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

    async fn view_inner(&self) -> Result<ClusterView, LeaseError> {
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

/// The queue and slots as one read saw them.
#[derive(Debug, Default)]
struct Snapshot {
    revision: i64,
    /// Each holder's record, with the etcd lease its slot key is attached to.
    holders: Vec<(i64, HolderRecord)>,
    /// Slot numbers taken, including records that could not be read (taken is the safe guess).
    taken: Vec<u32>,
    /// Slot keys present, whatever their number.
    held_keys: usize,
    queue: Vec<QueueEntry>,
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
    fn slot_for(&self, node: &str, slots: u32) -> Option<u32> {
        let free: Vec<u32> = (0..slots).filter(|n| !self.taken.contains(n)).collect();
        // A peer configured with more slots may hold keys beyond ours: they count too.
        let free_count = free
            .len()
            .min((slots as usize).saturating_sub(self.held_keys));
        let position = queue::may_take(&self.queue, node, free_count)?;
        free.get(position).copied()
    }
}

/// Revokes a waiter's etcd lease when `acquire` is dropped before it returned (the daemon
/// stopping), so its queue entry goes at once rather than after the TTL.
struct RevokeOnDrop {
    client: Option<Client>,
    lease_id: i64,
}

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        let (Some(client), Ok(runtime)) =
            (self.client.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let id = self.lease_id;
        runtime.spawn(async move {
            let _ = timeout(Duration::from_secs(2), client.lease_client().revoke(id)).await;
        });
    }
}

/// Renews a holder's (or waiter's) etcd lease every third of its TTL. When no renewal has been
/// answered for a whole TTL, counted from when the last answered one was sent (so earlier than
/// etcd's own expiry), or etcd says the lease is gone, marks `held` lost and ends.
async fn keep_alive(
    client: Client,
    lease_id: i64,
    ttl: Duration,
    held: Held,
    requests: Arc<AtomicU64>,
) {
    let interval = ttl / 3;
    let mut renewed = Instant::now();
    let mut next = renewed + interval;
    loop {
        let deadline = renewed + ttl;
        tokio::time::sleep_until(next.min(deadline)).await;
        if Instant::now() >= deadline {
            held.mark_lost(&format!(
                "no keep-alive of etcd lease {lease_id:x} was answered for {}",
                crate::duration::format(ttl)
            ));
            return;
        }
        let sent = Instant::now();
        requests.fetch_add(1, Ordering::Relaxed);
        match timeout_at(deadline, client.lease_client().keep_alive(lease_id)).await {
            Ok(Ok(_)) => {
                renewed = sent;
                next = sent + interval;
            }
            Ok(Err(e)) if chain(&e).contains("lease not found") => {
                held.mark_lost(&format!("etcd lease {lease_id:x} expired"));
                return;
            }
            // Retry soon: the balancer may have picked a dead member, and another may answer.
            Ok(Err(e)) => {
                tracing::debug!("lease: keep-alive of {lease_id:x} failed: {}", chain(&e));
                next = Instant::now() + (interval / 3).min(MAX_RETRY_PAUSE);
            }
            Err(_) => next = Instant::now(),
        }
    }
}

/// Keeps the node's summary alive every third of its TTL (the only request an idle node makes);
/// when its lease is gone (etcd was away longer than the TTL), takes a new one and writes the
/// last summary again, so the node reappears in the cluster view without waiting for news.
async fn refresh_summary(
    client: Client,
    published: Arc<tokio::sync::Mutex<Published>>,
    key: String,
    summary_ttl: Duration,
    requests: Arc<AtomicU64>,
) {
    loop {
        tokio::time::sleep(summary_ttl / 3).await;
        let mut state = published.lock().await;
        if let Some(id) = state.lease_id {
            requests.fetch_add(1, Ordering::Relaxed);
            match timeout(CONNECT_TIMEOUT, client.lease_client().keep_alive(id)).await {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) if chain(&e).contains("lease not found") => state.lease_id = None,
                _ => {
                    tracing::debug!("lease: refreshing the node summary failed; retrying later");
                    continue;
                }
            }
        }
        let Some(last) = state.last.clone() else {
            continue;
        };
        requests.fetch_add(2, Ordering::Relaxed);
        let secs = i64::try_from(summary_ttl.as_secs()).unwrap_or(i64::MAX);
        let again = async {
            let id = client.lease_client().grant(secs, None).await?.id();
            let options = PutOptions::new().with_lease(id);
            client
                .kv_client()
                .put(key.clone(), json(&last), Some(options))
                .await?;
            Ok::<i64, etcd_client::Error>(id)
        };
        match timeout(CONNECT_TIMEOUT, again).await {
            Ok(Ok(id)) => state.lease_id = Some(id),
            _ => tracing::debug!("lease: republishing the node summary failed; retrying later"),
        }
    }
}

fn holding(held: &Held) -> Result<&Holding, LeaseError> {
    held.etcd.as_deref().ok_or_else(|| {
        LeaseError::Lost("this lease was not taken from etcd (a local lease?)".to_owned())
    })
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
