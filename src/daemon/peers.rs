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
use crate::control::proto::HistoryRecord;
use crate::inventory::Inventory;
use crate::lease::{self, Held, Lease, NodeSummary, Want};
use crate::report::rfc3339;
use crate::root::Root;

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

/// The lease as the daemon holds it: opened on first use, reopened after a failure.
#[derive(Debug, Default)]
pub struct Peers {
    lease: SharedLease,
    /// Why the last open failed (status shows it).
    pub open_error: Option<String>,
    /// When the summary is next published.
    pub next_publish: Option<Instant>,
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
    }

    /// The lease, opening it first if needed. Opening an etcd lease connects to the cluster,
    /// bounded by [`CALL_TIMEOUT`].
    pub async fn open(
        &mut self,
        settings: &Settings,
        root: &Root,
        state_dir: &Path,
        now: OffsetDateTime,
    ) -> Result<Arc<dyn Lease>, String> {
        if let Some(l) = self.lease.get() {
            return Ok(l);
        }
        let opened =
            tokio::time::timeout(CALL_TIMEOUT, lease::open(settings, root, state_dir, now))
                .await
                .map_err(|_| format!("opening the lease: no answer within {CALL_TIMEOUT:?}"))
                .and_then(|r| r.map_err(|e| format!("opening the lease: {e}")));
        match opened {
            Ok(l) => {
                tracing::info!("lease: {}", l.describe());
                self.open_error = None;
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
    ) {
        self.next_publish = Some(Instant::now() + PUBLISH_EVERY);
        let now = OffsetDateTime::now_utc();
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
    last: Option<&HistoryRecord>,
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
                r.finished_at.as_deref().unwrap_or(&r.started_at)
            )
        }),
        updated: rfc3339(now),
    }
}
