//! How a probe retries: doubling pauses until a deadline, remembering what was seen last.

use std::time::Duration;

use tokio::time::Instant;

/// How a probe retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The pause after the first failed attempt; it doubles after each.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
    /// How long one attempt (connect, handshake, request) may take.
    pub attempt_timeout: Duration,
}

impl Default for Retry {
    /// Short pauses: a component that restarts is back within seconds, and each second of
    /// probing is a second the rotation holds the lease.
    fn default() -> Self {
        Retry {
            first: Duration::from_millis(50),
            max: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

/// Why retrying stopped.
#[derive(Debug)]
pub(super) struct GaveUp<E> {
    pub(super) attempts: u32,
    pub(super) waited: Duration,
    /// The last attempt's error; `None` when the deadline had passed before the first.
    pub(super) last: Option<E>,
}

/// Retries `attempt` with backoff until it succeeds or the deadline passes. The deadline is on
/// tokio's clock, so tests can pause time; no attempt starts or runs past it.
pub(super) async fn retry_until<T, E, F, Fut>(
    deadline: Instant,
    retry: &Retry,
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut pause = retry.first;
    let mut attempts = 0;
    let mut last = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(GaveUp {
                attempts,
                waited: now - started,
                last,
            });
        }
        attempts += 1;
        match attempt(retry.attempt_timeout.min(deadline - now)).await {
            Ok(done) => return Ok(done),
            Err(e) => last = Some(e),
        }
        let wake = (Instant::now() + pause).min(deadline);
        tokio::time::sleep_until(wake).await;
        pause = (pause * 2).min(retry.max);
    }
}
