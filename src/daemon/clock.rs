//! Where the daemon's time comes from. The loop and every step it runs ask a [`Clock`] passed in at
//! start, never the wall clock directly, so tests can run a rotation that lasts minutes in
//! milliseconds (`tokio::time::pause()` with a [`TokioClock`]).

use std::sync::Arc;

use time::OffsetDateTime;

/// Tells the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that starts at a given time and advances with tokio's clock: paused in tests, it jumps
/// forward exactly when tokio's auto-advance does, so deadlines and timestamps agree.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: OffsetDateTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that says `base` now.
    pub fn starting_at(base: OffsetDateTime) -> TokioClock {
        TokioClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        let elapsed = tokio::time::Instant::now() - self.start;
        self.base + time::Duration::try_from(elapsed).unwrap_or(time::Duration::ZERO)
    }
}

/// The clock every part of the daemon shares.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let base = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let clock = TokioClock::starting_at(base);
        assert_eq!(clock.now(), base);
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        assert_eq!(clock.now(), base + time::Duration::minutes(10));
    }
}
