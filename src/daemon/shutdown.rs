//! One request to stop, shared by everything that must notice it (mini-redis's `Shutdown`). The
//! caller decides what asks for it (SIGTERM and SIGINT in `commands/run.rs`, a test's future);
//! the daemon only listens, from as many places as it likes, without consuming it.

use std::future::Future;

use tokio::sync::watch;

/// Listens for the request to stop. Cheap to clone; every clone sees the same request.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Option<&'static str>>,
}

/// Asks every [`Shutdown`] made with it to stop.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<Option<&'static str>>,
}

impl Trigger {
    /// Requests the stop, saying why (the first reason given is kept).
    pub fn stop(&self, why: &'static str) {
        self.tx.send_if_modified(|r| {
            let first = r.is_none();
            r.get_or_insert(why);
            first
        });
    }
}

impl Shutdown {
    /// A new pair.
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(None);
        (Trigger { tx }, Shutdown { rx })
    }

    /// A shutdown requested when `fut` completes ("shutdown requested"), for callers that have a
    /// future rather than a trigger (tests, the library's `run`).
    pub fn when(fut: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            fut.await;
            trigger.stop("shutdown requested");
        });
        shutdown
    }

    /// One that is never requested.
    pub fn never() -> Shutdown {
        let (trigger, shutdown) = Shutdown::new();
        // The sender must outlive every receiver, or `requested` would return at once.
        std::mem::forget(trigger);
        shutdown
    }

    /// The reason, if a stop was requested.
    pub fn is_requested(&self) -> Option<&'static str> {
        *self.rx.borrow()
    }

    /// Waits for the request (at once if it was made already); cancel-safe, so it can sit in
    /// every `select!`.
    pub async fn requested(&mut self) -> &'static str {
        // The guard `wait_for` returns must not live across an await (it is not Send).
        let why = match self.rx.wait_for(Option::is_some).await {
            Ok(why) => Some((*why).unwrap_or("shutdown requested")),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            // The trigger is gone without a request: nothing can ask any more.
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_first_reason() {
        let (trigger, mut a) = Shutdown::new();
        let mut b = a.clone();
        assert_eq!(a.is_requested(), None);
        trigger.stop("SIGTERM");
        trigger.stop("SIGINT");
        assert_eq!(a.requested().await, "SIGTERM");
        assert_eq!(b.requested().await, "SIGTERM");
        // Asking again answers again: nothing was consumed.
        assert_eq!(a.requested().await, "SIGTERM");
    }

    #[tokio::test(start_paused = true)]
    async fn never_waits_forever() {
        let mut s = Shutdown::never();
        let waited =
            tokio::time::timeout(std::time::Duration::from_secs(3600), s.requested()).await;
        assert!(waited.is_err());
    }
}
