//! The daemon's side of taking turns with its peers: opening the configured lease (lazily, so a
//! cluster that is down does not hold the daemon up), waiting for this node's turn while a stop
//! request and `certrotd status` are still answered, mirroring the rotation's steps into the
//! holder record, and publishing the node's summary for `certrotd status --cluster`.
//!
//! The lease itself (etcd, the fair queue, credentials) is `crate::lease`; this file only drives it.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Settings;
use crate::history::Record;
use crate::inventory::Inventory;
use crate::lease::credentials::Credentials;
use crate::lease::{self, Held, Lease, LeaseError, NodeSummary, Want};
use crate::root::Root;
use crate::timefmt::rfc3339;

/// How often an idle node republishes its summary: half a request a minute, on top of the lease
/// refreshing the summary's TTL (the budget is two a minute).
pub const PUBLISH_EVERY: Duration = Duration::from_secs(120);
/// The backend's name as the configuration spells it ("local", "etcd").
pub fn backend_name(settings: &Settings) -> String {
    match settings.lease.backend {
        crate::config::LeaseBackend::Local => "local".to_owned(),
        crate::config::LeaseBackend::Etcd => "etcd".to_owned(),
    }
}

/// How long one call to the lease (open, publish, view, set_step, release) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a node waiting for its turn looks up its place in the queue, for status.
const POSITION_EVERY: Duration = Duration::from_secs(2);
/// The longest pause between attempts when the lease cannot be reached.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Once the client certificate is within its renewal margin, how often its files are read again
/// while they still hold the same certificate (certrotd has not renewed it yet).
pub const CREDENTIALS_RECHECK: time::Duration = time::Duration::minutes(1);

/// The open lease, shared with the control handler, which answers `status --cluster` from it
/// through a short-lived cache of its view.
#[derive(Clone, Default)]
pub struct SharedLease {
    lease: Arc<RwLock<Option<Arc<dyn Lease>>>>,
    views: Arc<super::handler::ViewCache>,
}

impl SharedLease {
    /// The lease, if it is open.
    pub fn get(&self) -> Option<Arc<dyn Lease>> {
        self.lease.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The cache of the lease's cluster view.
    pub fn views(&self) -> &super::handler::ViewCache {
        &self.views
    }

    /// Replaces the lease (and forgets the old one's view).
    pub fn set(&self, lease: Option<Arc<dyn Lease>>) {
        *self.lease.write().unwrap_or_else(|e| e.into_inner()) = lease;
        self.views.clear();
    }
}

impl std::fmt::Debug for SharedLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            &self
                .get()
                .map_or_else(|| "not open".to_owned(), |l| l.describe()),
        )
    }
}

/// The lease as the daemon holds it: opened on first use, reopened after a failure, after a
/// connection or TLS error ([`Peers::invalidate`]) and before its client certificate runs out.
#[derive(Debug, Default)]
pub struct Peers {
    lease: SharedLease,
    /// Why the last open failed (status shows it).
    pub open_error: Option<String>,
    /// When the summary is next published.
    pub next_publish: Option<Instant>,
    /// What the open lease presents to etcd (`None` for the local lease).
    credentials: Option<Credentials>,
    /// Within the renewal margin, when the credential files are next read again.
    recheck_at: Option<OffsetDateTime>,
}

impl Peers {
    /// The lease, if it is open.
    pub fn lease(&self) -> Option<Arc<dyn Lease>> {
        self.lease.get()
    }

    /// The lease as the control handler sees it.
    pub fn shared(&self) -> SharedLease {
        self.lease.clone()
    }

    /// Forgets the lease (after a reload: the `[lease]` table may have changed).
    pub fn reset(&mut self) {
        self.lease.set(None);
        self.open_error = None;
        self.credentials = None;
        self.recheck_at = None;
    }

    /// Drops the cached client after an error that says its connection is unusable (etcd
    /// unreachable, TLS refused, a client certificate etcd no longer accepts; see
    /// [`LeaseError::is_transport`]), so the next [`Peers::open`] reads the credentials again and
    /// connects anew. A lease held through the old client keeps its own keep-alive until it is
    /// released. Whether the client was dropped.
    pub fn invalidate(&mut self, error: &LeaseError) -> bool {
        if !error.is_transport() || self.lease.get().is_none() {
            return false;
        }
        tracing::info!(
            "lease: dropping the etcd client after: {error}; the next use connects again"
        );
        self.lease.set(None);
        self.credentials = None;
        self.recheck_at = None;
        true
    }

    /// When the client certificate the open lease presents stops being valid (a minted one:
    /// an hour after it was minted); `None` when none is open or it has none.
    pub fn credentials_not_after(&self) -> Option<OffsetDateTime> {
        self.credentials.as_ref().and_then(Credentials::not_after)
    }

    /// The lease, opening it first if needed. Opening an etcd lease connects to the cluster,
    /// bounded by [`CALL_TIMEOUT`]. From [`lease::credentials::renewal_margin`] before the
    /// client certificate's NotAfter on, the credentials are read again (at most every
    /// [`CREDENTIALS_RECHECK`]); when they changed (renewed on disk, or minted anew) the cached
    /// client is dropped and a new one connects.
    pub async fn open(
        &mut self,
        settings: &Settings,
        root: &Root,
        state_dir: &Path,
        now: OffsetDateTime,
    ) -> Result<Arc<dyn Lease>, String> {
        if let Some(l) = self.lease.get() {
            if !self.renewal_due(now) {
                return Ok(l);
            }
            let still_valid = self.credentials_not_after().is_some_and(|t| now < t);
            match lease::load_credentials(settings, root, now) {
                Ok(fresh) if same_identity(fresh.as_ref(), self.credentials.as_ref()) => {
                    self.recheck_at = Some(now + CREDENTIALS_RECHECK);
                    return Ok(l);
                }
                Ok(fresh) => {
                    tracing::info!(
                        "lease: the client certificate expires at {}; connecting again with {}",
                        self.credentials_not_after()
                            .map(rfc3339)
                            .unwrap_or_default(),
                        fresh.as_ref().map_or("no TLS", |c| c.source.as_str())
                    );
                    self.lease.set(None);
                    return self.connect(settings, state_dir, fresh).await;
                }
                Err(e) if still_valid => {
                    tracing::warn!(
                        "lease: reading the client credentials again: {e}; the current one \
                         stays in use until it expires"
                    );
                    self.recheck_at = Some(now + CREDENTIALS_RECHECK);
                    return Ok(l);
                }
                Err(e) => {
                    self.lease.set(None);
                    self.credentials = None;
                    let e = format!("opening the lease: {e}");
                    self.open_error = Some(e.clone());
                    return Err(e);
                }
            }
        }
        match lease::load_credentials(settings, root, now) {
            Ok(credentials) => self.connect(settings, state_dir, credentials).await,
            Err(e) => {
                let e = format!("opening the lease: {e}");
                self.open_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Whether the client certificate in use is within its renewal margin at `now` and its
    /// files are due to be read again (always, once it has run out).
    fn renewal_due(&self, now: OffsetDateTime) -> bool {
        let Some(credentials) = self.credentials.as_ref() else {
            return false;
        };
        let (Some(from), Some(until)) = (credentials.renew_from(), credentials.not_after()) else {
            return false;
        };
        now >= until || (now >= from && self.recheck_at.is_none_or(|at| now >= at))
    }

    /// Connects with `credentials` and caches the lease.
    async fn connect(
        &mut self,
        settings: &Settings,
        state_dir: &Path,
        credentials: Option<Credentials>,
    ) -> Result<Arc<dyn Lease>, String> {
        self.credentials = None;
        self.recheck_at = None;
        let opened = tokio::time::timeout(
            CALL_TIMEOUT,
            lease::open_with(settings, state_dir, credentials.clone()),
        )
        .await
        .map_err(|_| format!("opening the lease: no answer within {CALL_TIMEOUT:?}"))
        .and_then(|r| r.map_err(|e| format!("opening the lease: {e}")));
        match opened {
            Ok(l) => {
                tracing::info!("lease: {}", l.describe());
                self.open_error = None;
                self.credentials = credentials;
                self.lease.set(Some(Arc::clone(&l)));
                Ok(l)
            }
            Err(e) => {
                self.open_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Publishes the node's summary (bounded, never fatal: the view is for operators) and
    /// schedules the next one.
    pub async fn publish(
        &mut self,
        settings: &Settings,
        root: &Root,
        state_dir: &Path,
        summary: &NodeSummary,
        now: OffsetDateTime,
    ) {
        self.next_publish = Some(Instant::now() + PUBLISH_EVERY);
        let lease = match self.open(settings, root, state_dir, now).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("not publishing the node summary: {e}");
                return;
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, lease.publish(summary)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("publishing the node summary: {e}"),
            Err(_) => {
                tracing::warn!("publishing the node summary: no answer within {CALL_TIMEOUT:?}")
            }
        }
    }
}

/// How waiting for a turn ended.
#[derive(Debug)]
pub enum Turn {
    /// This node holds the lease.
    Held(Held),
    /// A stop was requested while waiting (nothing was started).
    Stopping(&'static str),
    /// The lease's channel failed (a connection or TLS error, an expired client certificate):
    /// the caller reconnects, with credentials read again, and waits anew.
    Unreachable(crate::lease::LeaseError),
}

/// Waits for this node's turn: `acquire`, selected against `stop` so a stop while queued is
/// prompt, and retried (with a growing pause) while the lease cannot be reached. Every few
/// seconds the queue is read and `waiting` told this node's place in it (1-based), or why it
/// waits.
pub async fn wait_turn(
    lease: &dyn Lease,
    want: &Want,
    stop: &mut (impl Future<Output = &'static str> + Unpin),
    mut waiting: impl FnMut(String),
) -> Turn {
    let mut pause = Duration::from_millis(500);
    loop {
        let acquire = lease.acquire(want);
        tokio::pin!(acquire);
        let mut tick = tokio::time::interval(POSITION_EVERY);
        let outcome = loop {
            tokio::select! {
                r = &mut acquire => break r,
                why = &mut *stop => return Turn::Stopping(why),
                _ = tick.tick() => {
                    if let Ok(Ok(view)) = tokio::time::timeout(CALL_TIMEOUT, lease.view()).await {
                        waiting(waiting_line(&view, &want.node));
                    }
                }
            }
        };
        match outcome {
            Ok(held) => return Turn::Held(held),
            Err(e) => {
                tracing::warn!("waiting for the lease: {e}; trying again in {pause:?}");
                waiting(format!(
                    "waiting for the lease, which cannot be reached: {e}"
                ));
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    why = &mut *stop => return Turn::Stopping(why),
                }
                // Retrying on the same client would fail the same way for good once its
                // certificate expired: the caller reconnects.
                if e.is_transport() {
                    return Turn::Unreachable(e);
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// "waiting for the lease, position N (holder: cp2 at install)".
fn waiting_line(view: &lease::ClusterView, node: &str) -> String {
    let position = view.queue.iter().position(|q| q.node == node);
    let holders: Vec<String> = view
        .holders
        .iter()
        .map(|h| format!("{} at {}", h.node, h.step))
        .collect();
    let mut line = match position {
        Some(p) => format!("waiting for the lease, position {}", p + 1),
        None => "waiting for the lease".to_owned(),
    };
    if !holders.is_empty() {
        line.push_str(&format!(" (held by {})", holders.join(", ")));
    }
    line
}

/// Mirrors a rotation's steps into the holder record, in order, without holding the rotation up:
/// returns the hook to give the rotation and the task to await (after dropping the hook) before
/// the lease is released.
pub fn step_mirror(
    lease: Arc<dyn Lease>,
    held: Held,
) -> (impl Fn(&str) + Send + Sync, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let task = tokio::spawn(async move {
        while let Some(step) = rx.recv().await {
            match tokio::time::timeout(CALL_TIMEOUT, lease.set_step(&held, &step)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("recording step {step} in the lease: {e}"),
                Err(_) => tracing::warn!("recording step {step} in the lease: no answer"),
            }
        }
    });
    let hook = move |step: &str| {
        let _ = tx.send(step.to_owned());
    };
    (hook, task)
}

/// Confirms in the lease store, right before the disruptive `step` ("install batch 1", "restart
/// kube-apiserver", "rollback restart etcd"), that this node still holds its slot with its
/// fencing token and that at least `min_ttl` of it is left; bounded by [`CALL_TIMEOUT`] (no
/// answer is a failure: fail closed). On failure `held` is marked lost and the error is
/// [`LeaseError::Fenced`], naming the step and why: the step must not happen.
pub async fn confirm(
    lease: &dyn Lease,
    held: &Held,
    step: &str,
    min_ttl: Duration,
) -> Result<(), LeaseError> {
    match tokio::time::timeout(CALL_TIMEOUT, lease.confirm(held, step, min_ttl)).await {
        Ok(result) => result,
        Err(_) => {
            let why = format!("the lease store did not answer within {CALL_TIMEOUT:?}");
            held.mark_lost(&why);
            Err(LeaseError::Fenced {
                step: step.to_owned(),
                why,
            })
        }
    }
}

/// Whether two credentials (either absent: the local lease, or plain http) present the same
/// client certificate.
fn same_identity(a: Option<&Credentials>, b: Option<&Credentials>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_identity(b),
        _ => false,
    }
}

/// Gives the lease back, bounded: a release that cannot reach etcd frees the slot at the TTL.
pub async fn release(lease: &dyn Lease, held: Held) {
    let token = held.fencing_token;
    match tokio::time::timeout(CALL_TIMEOUT, lease.release(held)).await {
        Ok(Ok(())) => tracing::info!("lease released (fencing token {token})"),
        Ok(Err(e)) => tracing::warn!("releasing the lease: {e}; it frees itself at its TTL"),
        Err(_) => tracing::warn!("releasing the lease: no answer; it frees itself at its TTL"),
    }
}

/// What this node wants the lease for: its role and the earliest expiry among `certs` (all its
/// leaves when empty) order it in the queue.
pub fn want(
    node: &str,
    rotation_id: &str,
    inv: &Inventory,
    certs: &[String],
    now: OffsetDateTime,
) -> Want {
    Want {
        node: node.to_owned(),
        rotation_id: rotation_id.to_owned(),
        role: lease::role_of(inv),
        earliest_expiry: earliest_expiry(inv, certs).unwrap_or(now),
        now,
    }
}

/// The earliest `not_after` among `certs` (every leaf when empty).
fn earliest_expiry(inv: &Inventory, certs: &[String]) -> Option<OffsetDateTime> {
    inv.entries
        .iter()
        .filter(|e| !e.is_ca())
        .filter(|e| certs.is_empty() || certs.contains(&e.name))
        .filter_map(|e| e.cert.as_ref().map(|c| c.not_after))
        .min()
}

/// The node's summary for the cluster view, at `now`. `state` says what the daemon is doing
/// ("idle", "waiting", "rotating", "recovering").
pub fn summary(
    node: &str,
    inv: &Inventory,
    state: &str,
    last: Option<&Record>,
    now: OffsetDateTime,
) -> NodeSummary {
    NodeSummary {
        node: node.to_owned(),
        role: Some(lease::role_of(inv)),
        earliest_expiry: earliest_expiry(inv, &[]).map(rfc3339),
        state: state.to_owned(),
        last_rotation: last.map(|r| {
            format!(
                "{} {:?} {}",
                r.id,
                r.state,
                rfc3339(r.finished_at.unwrap_or(r.started_at))
            )
        }),
        updated: rfc3339(now),
    }
}
