//! The control socket's requests, answered by the daemon: status from the live snapshot, history
//! from the state directory, rotations and reloads handed to the daemon's loop, the cluster view
//! from the lease through a short-lived cache.
//!
//! A request whose client hung up is dropped by the server (`control::server`), and with it the
//! receiving end of its reply: the loop sees that with [`Command::client_gone`] and need not
//! start a rotation nobody waits for.

pub mod ca_wire;

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::rotate::Progress;
use super::status::Report;
use crate::control::proto::{self, HistoryRecord, StatusReport};
use crate::control::server::{Handler, HandlerError, HandlerFuture};
use crate::history::History;
use crate::lease::{ClusterView, Lease};

use crate::rotation::{RotationType, Selection};

/// What the loop is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Rotate now; the reply carries the rotation id once planned.
    Rotate {
        /// What to rotate.
        selection: Selection,
        /// Where the id (or why not) goes.
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Re-read the configuration.
    Reload {
        /// Whether it was taken.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// `certrotd ca rotate TRACK [--from DIR]`: start a CA rotation (the `Planned` record); the
    /// reply carries the rotation id, or why not.
    CaRotate {
        /// Which CA.
        track: crate::ca::Track,
        /// The operator's new CA (`ca.crt` and `ca.key` in it); `None`: generate one.
        from: Option<std::path::PathBuf>,
        /// Where the id (or why not) goes.
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `certrotd ca abort [TRACK]`: roll the open rotation back (every open one when `None`);
    /// the reply says which tracks now roll back, from which phase.
    CaAbort {
        /// Which CA.
        track: Option<crate::ca::Track>,
        /// What was done (or why not).
        reply: oneshot::Sender<Result<String, String>>,
    },
}

impl Command {
    /// Whether the client that asked for this went away before being answered (it hung up, or
    /// gave up waiting): its reply can no longer be delivered, and a rotation it asked for should
    /// not be started. Cheap; check it before starting and while waiting for the lease.
    pub fn client_gone(&self) -> bool {
        match self {
            Command::Rotate { reply, .. } => reply.is_closed(),
            Command::Reload { reply } => reply.is_closed(),
            Command::CaRotate { reply, .. } | Command::CaAbort { reply, .. } => reply.is_closed(),
        }
    }
}

/// What the handler shares with the loop.
#[derive(Debug)]
pub struct Shared {
    /// The last status the loop built.
    pub status: RwLock<Report>,
    /// The rotation in progress (live, so status shows its step while the loop is busy).
    pub progress: Progress,
    /// Activity records.
    pub history: RwLock<Arc<History>>,
    /// The loop's inbox.
    pub commands: mpsc::Sender<Command>,
    /// The lease, once open: `status --cluster` is answered from it without the loop.
    pub lease: super::peers::SharedLease,
    /// The CA tracks as the loop last read them: `ca status` is answered from it.
    pub ca: RwLock<crate::ca::view::CaView>,
}

/// How long `status --cluster` waits for the lease's view before answering that it cannot.
const VIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a cluster view (or the failure to read one) is served again before the lease is
/// asked anew: however many clients ask, etcd sees at most one read per this interval.
pub const VIEW_MAX_AGE: Duration = Duration::from_secs(2);

/// The last cluster view read from the lease, shared by every client of `status --cluster`.
#[derive(Debug)]
pub struct ViewCache {
    max_age: Duration,
    /// Held while the lease is being read: clients that come meanwhile wait for that read
    /// rather than sending their own.
    reading: tokio::sync::Mutex<()>,
    /// When the last read started, and what it gave.
    last: Mutex<Option<(Instant, Result<ClusterView, String>)>>,
}

impl Default for ViewCache {
    fn default() -> Self {
        ViewCache::new(VIEW_MAX_AGE)
    }
}

impl ViewCache {
    /// A cache that serves a read for `max_age`.
    pub fn new(max_age: Duration) -> ViewCache {
        ViewCache {
            max_age,
            reading: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
        }
    }

    /// Forgets the last read (the lease was replaced).
    pub fn clear(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The cluster view from `lease`, read anew only when the last read is older than the
    /// cache's age; a read waits at most `timeout` for the lease.
    pub async fn get(&self, lease: &dyn Lease, timeout: Duration) -> Result<ClusterView, String> {
        if let Some(fresh) = self.fresh() {
            return fresh;
        }
        let _reading = self.reading.lock().await;
        // Whoever held the lock before may just have read it.
        if let Some(fresh) = self.fresh() {
            return fresh;
        }
        // Stamped with the start of the read: the view is at least that new.
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, lease.view()).await {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(e)) => Err(format!("reading the cluster view: {e}")),
            Err(_) => Err(format!(
                "reading the cluster view: no answer from {} within {timeout:?}",
                lease.describe()
            )),
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((started, result.clone()));
        result
    }

    fn fresh(&self) -> Option<Result<ClusterView, String>> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, result) = last.as_ref()?;
        (at.elapsed() < self.max_age).then(|| result.clone())
    }
}

/// The daemon's [`Handler`].
#[derive(Debug, Clone)]
pub struct DaemonHandler(pub Arc<Shared>);

impl DaemonHandler {
    /// Hands the loop the command `make` builds around a reply channel and waits for the
    /// reply; the loop's refusal is a failure (it tried, or judged it cannot).
    async fn ask_loop(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<String, String>>) -> Command,
    ) -> Result<String, HandlerError> {
        let (reply, rx) = oneshot::channel();
        self.0
            .commands
            .send(make(reply))
            .await
            .map_err(|_| HandlerError::failed("the daemon is stopping"))?;
        rx.await
            .map_err(|_| HandlerError::failed("the daemon is stopping"))?
            .map_err(HandlerError::failed)
    }
}

impl Handler for DaemonHandler {
    fn status(&self) -> HandlerFuture<'_, StatusReport> {
        Box::pin(async move {
            let mut s = self
                .0
                .status
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            s.rotation = self
                .0
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            Ok(s.to_wire())
        })
    }

    fn rotate(&self, types: Vec<String>, certs: Vec<String>) -> HandlerFuture<'_, String> {
        Box::pin(async move {
            // `certrotd rotate --type etcd-ca` is a CA rotation, which runs on its own.
            if let Some(track) = types.iter().find_map(|t| crate::ca::Track::parse(t)) {
                if types.len() > 1 || !certs.is_empty() {
                    return Err(HandlerError::bad_request(format!(
                        "{track} is a CA rotation and is started alone \
                         (certrotd ca rotate {track}, or rotate --type {track} without other types or certs)"
                    )));
                }
                return self.ca_rotate(track.as_str().to_owned(), None).await;
            }
            let types = types
                .iter()
                .map(|t| t.parse::<RotationType>().map_err(HandlerError::bad_request))
                .collect::<Result<Vec<_>, _>>()?;
            if types.is_empty() && certs.is_empty() {
                return Err(HandlerError::bad_request("name a --type or a --cert"));
            }
            if let Some(p) = self
                .0
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                return Err(HandlerError::busy(format!(
                    "rotation {} is in progress ({})",
                    p.id,
                    p.step.name()
                )));
            }
            let (reply, rx) = oneshot::channel();
            let selection = Selection { types, certs };
            self.0
                .commands
                .send(Command::Rotate { selection, reply })
                .await
                .map_err(|_| HandlerError::failed("the daemon is stopping"))?;
            rx.await
                .map_err(|_| HandlerError::failed("the daemon is stopping"))?
                .map_err(HandlerError::failed)
        })
    }

    fn history(&self, limit: Option<usize>) -> HandlerFuture<'_, Vec<HistoryRecord>> {
        Box::pin(async move {
            let history = self
                .0
                .history
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            tokio::task::spawn_blocking(move || history.read(limit))
                .await
                .map_err(|e| HandlerError::failed(e.to_string()))?
                .map(|r| r.records.iter().map(|r| r.to_wire()).collect())
                .map_err(|e| HandlerError::failed(format!("{e:#}")))
        })
    }

    fn cluster(&self) -> HandlerFuture<'_, proto::ClusterView> {
        Box::pin(async move {
            let lease = self.0.lease.get().ok_or_else(|| {
                HandlerError::failed("the lease is not open yet (is etcd reachable?)")
            })?;
            self.0
                .lease
                .views()
                .get(lease.as_ref(), VIEW_TIMEOUT)
                .await
                .map(|view| {
                    let mut wire = view.to_wire();
                    wire.ca =
                        ca_wire::summaries(&self.0.ca.read().unwrap_or_else(|e| e.into_inner()));
                    wire
                })
                .map_err(HandlerError::failed)
        })
    }

    fn ca_rotate(&self, track: String, from: Option<String>) -> HandlerFuture<'_, String> {
        Box::pin(async move {
            let track = ca_wire::parse_track(&track).map_err(HandlerError::bad_request)?;
            let from = from.map(std::path::PathBuf::from);
            // The daemon runs elsewhere than the client: a relative path would be read from the
            // daemon's working directory, not the operator's.
            if let Some(dir) = from.as_ref().filter(|d| !d.is_absolute()) {
                return Err(HandlerError::bad_request(format!(
                    "--from {}: give an absolute directory",
                    dir.display()
                )));
            }
            self.ask_loop(|reply| Command::CaRotate { track, from, reply })
                .await
        })
    }

    fn ca_status(&self) -> HandlerFuture<'_, proto::CaStatusView> {
        Box::pin(async move {
            let node = self
                .0
                .status
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .node
                .clone();
            let view = self.0.ca.read().unwrap_or_else(|e| e.into_inner());
            Ok(ca_wire::status(&view, &node))
        })
    }

    fn ca_abort(&self, track: Option<String>) -> HandlerFuture<'_, String> {
        Box::pin(async move {
            let track = track
                .map(|t| ca_wire::parse_track(&t))
                .transpose()
                .map_err(HandlerError::bad_request)?;
            self.ask_loop(|reply| Command::CaAbort { track, reply })
                .await
        })
    }

    fn reload(&self) -> HandlerFuture<'_, ()> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.0
                .commands
                .send(Command::Reload { reply })
                .await
                .map_err(|_| HandlerError::failed("the daemon is stopping"))?;
            rx.await
                .map_err(|_| HandlerError::failed("the daemon is stopping"))?
                .map_err(HandlerError::bad_request)
        })
    }
}
