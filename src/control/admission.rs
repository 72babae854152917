//! Who gets a connection to the control socket: root always, everyone else within a per-user cap
//! and the shared limit. Slots beyond the shared limit are kept for root, so others holding every
//! shared slot never lock root out; a refused client is told why and closed at once, holding no
//! descriptor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::frame;
use super::proto::{ErrorKind, Response};

/// How long a refusal ("too many connections") may take to write before the connection is simply
/// closed: the accept loop waits for it, so it must be short.
const REFUSAL_TIMEOUT: Duration = Duration::from_millis(100);

/// Who is on the other end, from the kernel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer {
    /// Its user.
    pub(super) uid: u32,
    /// Its process, when the kernel knows it.
    pub(super) pid: Option<i32>,
}

impl Peer {
    /// Root may change state; so may the user the daemon itself runs as (an unprivileged daemon
    /// on a sandbox), who could do anything the daemon can anyway. As root the two are the same.
    pub(super) fn privileged(self) -> bool {
        self.uid == 0 || self.uid == nix::unistd::geteuid().as_raw()
    }
}

/// The slot a connection was accepted into.
pub(super) enum Slot {
    /// One of the `max_connections` anyone may take.
    Shared(OwnedSemaphorePermit),
    /// One of the `root_reserve` only root may keep.
    Root(OwnedSemaphorePermit),
}

/// Decides whether `peer` may keep the connection accepted into `slot`: root always (in any
/// slot), others in a shared slot and within their own cap. Returns the permit to hold while
/// the connection lives and the user's count, or why it is refused.
pub(super) fn admit(
    peer: Peer,
    slot: Slot,
    slots: &Arc<Semaphore>,
    per_uid: &Arc<PerUid>,
) -> Result<(OwnedSemaphorePermit, Option<Counted>), String> {
    if peer.privileged() {
        let permit = match slot {
            Slot::Shared(p) | Slot::Root(p) => p,
        };
        return Ok((permit, None));
    }
    let permit = match slot {
        Slot::Shared(p) => p,
        // A shared slot may have come free since this one was taken; the root slot goes back.
        Slot::Root(_) => slots.clone().try_acquire_owned().map_err(|_| {
            "the daemon serves as many connections as it can; try again shortly".to_owned()
        })?,
    };
    let counted = per_uid.count(peer.uid).ok_or_else(|| {
        format!(
            "uid {} already holds {} connections, the most one user may",
            peer.uid, per_uid.max
        )
    })?;
    Ok((permit, Some(counted)))
}

/// Open connections per user (root is not counted).
pub(super) struct PerUid {
    max: usize,
    open: Mutex<HashMap<u32, usize>>,
}

impl PerUid {
    pub(super) fn new(max: usize) -> Arc<PerUid> {
        Arc::new(PerUid {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more connection of `uid`, unless it is at its cap.
    fn count(self: &Arc<Self>, uid: u32) -> Option<Counted> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(uid).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Counted {
            of: self.clone(),
            uid,
        })
    }
}

/// One connection counted against its user; uncounted when dropped.
pub(super) struct Counted {
    of: Arc<PerUid>,
    uid: u32,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.of.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                // The map holds only users with a connection open: it cannot grow without bound.
                open.remove(&self.uid);
            }
        }
    }
}

/// Tells a refused client why (briefly: the accept loop waits for this) and logs who it was.
pub(super) async fn refuse_connection(stream: &mut UnixStream, peer: Peer, why: &str) {
    tracing::warn!(
        uid = peer.uid,
        pid = peer.pid,
        "refused a control connection: {why}"
    );
    let refusal = Response::Error {
        kind: ErrorKind::Busy,
        message: format!("connection refused: {why}"),
    };
    let _ = frame::write_response(stream, &refusal, REFUSAL_TIMEOUT).await;
}
