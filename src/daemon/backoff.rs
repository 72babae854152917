//! Retrying failed renewals: exponential backoff with jitter. A remote CA that is down, slow,
//! refusing or answering wrongly is asked again after `retry_initial`, then after twice that, up
//! to `retry_max`; each pause is drawn between half and all of its nominal length, so that nodes
//! that failed together do not all come back together. Pure: the daemon passes `now` and the
//! random draw in.

use std::time::Duration;

use time::OffsetDateTime;

use crate::control::proto::RetryStatus;
use crate::timefmt::rfc3339;

/// The retry state after failed renewals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Failed attempts in a row.
    pub attempts: u32,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// When the first of them failed.
    pub failing_since: Option<OffsetDateTime>,
    /// Not before this time.
    pub next_retry: Option<OffsetDateTime>,
}

/// The pause after the `attempts`-th failure in a row: `initial · 2^(attempts-1)` capped at `max`,
/// scaled into `[½, 1]` by `draw` (in `[0, 1)`).
pub fn delay(attempts: u32, initial: Duration, max: Duration, draw: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(32);
    let nominal = initial
        .checked_mul(1u32 << doublings.min(31))
        .unwrap_or(max)
        .min(max);
    nominal.mul_f64(0.5 + 0.5 * draw.clamp(0.0, 1.0))
}

impl Backoff {
    /// Records a failure at `now`; returns when to try again.
    pub fn failed(
        &mut self,
        now: OffsetDateTime,
        error: String,
        initial: Duration,
        max: Duration,
        draw: f64,
    ) -> OffsetDateTime {
        self.attempts = self.attempts.saturating_add(1);
        self.failing_since.get_or_insert(now);
        self.last_error = Some(error);
        let wait = delay(self.attempts, initial, max, draw);
        let at = now + time::Duration::try_from(wait).unwrap_or(time::Duration::MAX);
        self.next_retry = Some(at);
        at
    }

    /// A renewal succeeded, or the situation changed (someone else replaced a certificate): start
    /// afresh.
    pub fn clear(&mut self) {
        *self = Backoff::default();
    }

    /// The retry time while it is still ahead of `now`.
    pub fn waiting(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.next_retry.filter(|r| *r > now)
    }

    /// What `certrotd status` shows, while failures are being retried.
    pub fn status(&self) -> Option<RetryStatus> {
        (self.attempts > 0).then(|| RetryStatus {
            attempts: self.attempts,
            last_error: self.last_error.clone().unwrap_or_default(),
            failing_since: self.failing_since.map(rfc3339),
            next_retry: self.next_retry.map(rfc3339),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn pauses_double_up_to_the_cap_and_jitter_stays_within_half() {
        let (initial, max) = (S(30), S(1800));
        assert_eq!(delay(1, initial, max, 0.999_999).as_secs(), 29);
        assert_eq!(delay(1, initial, max, 0.0), S(15));
        assert_eq!(delay(2, initial, max, 0.0), S(30));
        assert_eq!(delay(3, initial, max, 0.0), S(60));
        assert_eq!(delay(7, initial, max, 0.0), S(900));
        assert_eq!(delay(8, initial, max, 0.0), S(900));
        assert_eq!(delay(1000, initial, max, 0.0), S(900));
        for draw in [0.0, 0.3, 0.7, 0.99] {
            let d = delay(4, initial, max, draw);
            assert!(d >= S(120) && d <= S(240), "{d:?}");
        }
    }

    #[test]
    fn failures_count_until_cleared() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut b = Backoff::default();
        assert_eq!(b.status(), None);
        let at = b.failed(now, "cfssl down".into(), S(30), S(60), 0.0);
        assert_eq!(at, now + time::Duration::seconds(15));
        assert_eq!(b.waiting(now), Some(at));
        assert_eq!(b.waiting(at), None);
        let later = now + time::Duration::seconds(20);
        let at2 = b.failed(later, "HTTP 502".into(), S(30), S(60), 0.0);
        assert_eq!(at2, later + time::Duration::seconds(30));
        let s = b.status().unwrap();
        assert_eq!(s.attempts, 2);
        assert_eq!(s.last_error, "HTTP 502");
        assert_eq!(s.failing_since, Some(rfc3339(now)));
        b.clear();
        assert_eq!(b.status(), None);
        assert_eq!(b.waiting(now), None);
    }
}
