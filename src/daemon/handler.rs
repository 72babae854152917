//! The control socket's requests, answered by the daemon: status from the live snapshot, history
//! from the state directory, rotations and reloads handed to the daemon's loop.

use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use super::rotate::Progress;
use crate::control::proto::{HistoryRecord, StatusReport};
use crate::control::server::{Handler, HandlerError, HandlerFuture};
use crate::history::History;
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
}

/// What the handler shares with the loop.
#[derive(Debug)]
pub struct Shared {
    /// The last status the loop built.
    pub status: RwLock<StatusReport>,
    /// The rotation in progress (live, so status shows its step while the loop is busy).
    pub progress: Progress,
    /// Activity records.
    pub history: RwLock<Arc<History>>,
    /// The loop's inbox.
    pub commands: mpsc::Sender<Command>,
    /// The lease, once open: `status --cluster` is answered from it without the loop.
    pub lease: super::peers::SharedLease,
}

/// How long `status --cluster` waits for the lease's view before answering that it cannot.
const VIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The daemon's [`Handler`].
#[derive(Debug, Clone)]
pub struct DaemonHandler(pub Arc<Shared>);

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
            Ok(s)
        })
    }

    fn rotate(&self, types: Vec<String>, certs: Vec<String>) -> HandlerFuture<'_, String> {
        Box::pin(async move {
            let types = types
                .iter()
                .map(|t| {
                    <RotationType as clap::ValueEnum>::from_str(t, true).map_err(|_| {
                        HandlerError::bad_request(format!(
                            "unknown rotation type {t:?} (kubernetes-leaf, etcd-leaf, kubelet, all)"
                        ))
                    })
                })
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
                    p.id, p.step
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
                .map(|r| r.records)
                .map_err(|e| HandlerError::failed(format!("{e:#}")))
        })
    }

    fn cluster(&self) -> HandlerFuture<'_, crate::lease::ClusterView> {
        Box::pin(async move {
            let lease = self.0.lease.get().ok_or_else(|| {
                HandlerError::failed("the lease is not open yet (is etcd reachable?)")
            })?;
            match tokio::time::timeout(VIEW_TIMEOUT, lease.view()).await {
                Ok(Ok(view)) => Ok(view),
                Ok(Err(e)) => Err(HandlerError::failed(format!(
                    "reading the cluster view: {e}"
                ))),
                Err(_) => Err(HandlerError::failed(format!(
                    "reading the cluster view: no answer from {} within {VIEW_TIMEOUT:?}",
                    lease.describe()
                ))),
            }
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
