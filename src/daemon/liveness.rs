//! Liveness: systemd's watchdog is fed in every mode, but only while the loop makes progress.
//!
//! Every step the daemon takes says what it is doing and how long it may take at most (a
//! [`Pulse`] beat: "restarting kube-apiserver", the restart job's timeout plus a margin). While a
//! step runs, [`Liveness::drive`] wakes every half `WatchdogSec=` and sends `WATCHDOG=1` only if
//! the step is still inside its bound. A step that hangs past its bound starves the watchdog, and
//! systemd restarts the daemon, whose next start finishes the rotation from its journal; a long
//! but healthy wait (the lease held by another node for an hour) keeps beating and is never
//! killed. `STATUS=` follows the beat, so `systemctl status` says what the daemon is doing.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::notify::Notifier;

/// The longest a beat may be overdue when the unit has no watchdog: only for the log line.
const NO_WATCHDOG: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Beat {
    what: String,
    at: Instant,
    bound: Duration,
}

/// What the daemon is doing now, and until when that is still progress. Shared with the steps.
#[derive(Debug, Clone)]
pub struct Pulse(Arc<Mutex<Beat>>);

impl Default for Pulse {
    fn default() -> Self {
        Pulse(Arc::new(Mutex::new(Beat {
            what: "starting".to_owned(),
            at: Instant::now(),
            bound: NO_WATCHDOG,
        })))
    }
}

/// A step that ran past its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue {
    /// What it was doing.
    pub what: String,
    /// How long it was allowed.
    pub bound: Duration,
}

impl Pulse {
    /// A new step begins: `what` it is, and the longest it may take.
    pub fn beat(&self, what: impl Into<String>, bound: Duration) {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *b = Beat {
            what: what.into(),
            at: Instant::now(),
            bound,
        };
    }

    /// The step's words while it is inside its bound.
    pub fn alive(&self) -> Result<String, Overdue> {
        let b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if b.at.elapsed() <= b.bound {
            Ok(b.what.clone())
        } else {
            Err(Overdue {
                what: b.what.clone(),
                bound: b.bound,
            })
        }
    }
}

/// The daemon's line to systemd's watchdog and STATUS.
#[derive(Debug)]
pub struct Liveness {
    /// The sd_notify channel.
    pub notifier: Notifier,
    /// Half of `WatchdogSec=`, or none when the unit has no watchdog.
    interval: Option<Duration>,
    /// The step under way.
    pub pulse: Pulse,
    /// Whether the starving was logged (once per overdue step).
    starving: bool,
    /// Keep-alives sent so far.
    fed: u64,
}

impl Liveness {
    /// With `interval` (half `WatchdogSec=`), or none without a watchdog.
    pub fn new(notifier: Notifier, interval: Option<Duration>) -> Liveness {
        Liveness {
            notifier,
            interval,
            pulse: Pulse::default(),
            starving: false,
            fed: 0,
        }
    }

    /// How often the loop must call [`Liveness::tick`] (never, without a watchdog).
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// How many keep-alives were sent.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Feeds the watchdog if the step under way is within its bound, and shows it in STATUS.
    /// Returns whether it was fed.
    pub fn tick(&mut self) -> bool {
        match self.pulse.alive() {
            Ok(what) => {
                self.starving = false;
                self.notifier.status(&what);
                if self.interval.is_some() {
                    self.notifier.watchdog();
                    self.fed += 1;
                }
                true
            }
            Err(overdue) => {
                if !self.starving {
                    self.starving = true;
                    tracing::error!(
                        "{} has taken longer than its bound of {}: no longer feeding the watchdog",
                        overdue.what,
                        crate::duration::format(overdue.bound)
                    );
                    self.notifier.status(&format!("{} (overdue)", overdue.what));
                }
                false
            }
        }
    }

    /// Shows the step under way in STATUS, without feeding the watchdog.
    pub fn show(&mut self) {
        if let Ok(what) = self.pulse.alive() {
            self.notifier.status(&what);
        }
    }

    /// Runs `fut` to its end, ticking every interval meanwhile: the watchdog is fed while the
    /// steps inside keep within their bounds, and starved once one does not.
    pub async fn drive<F: Future>(&mut self, fut: F) -> F::Output {
        tokio::pin!(fut);
        let Some(every) = self.interval else {
            return fut.await;
        };
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                _ = ticks.tick() => { self.tick(); }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_step_within_its_bound_beats_and_one_past_it_starves() {
        let mut l = Liveness::new(Notifier::default(), Some(Duration::from_secs(2)));
        let pulse = l.pulse.clone();
        pulse.beat("restarting etcd", Duration::from_secs(10));
        assert!(l.tick());
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(l.tick());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!l.tick());
        assert_eq!(
            pulse.alive(),
            Err(Overdue {
                what: "restarting etcd".into(),
                bound: Duration::from_secs(10)
            })
        );
        // The next step beats again.
        pulse.beat("proving", Duration::from_secs(5));
        assert!(l.tick());
    }

    #[tokio::test(start_paused = true)]
    async fn drive_counts_the_beats_of_a_long_step() {
        let mut l = Liveness::new(Notifier::default(), Some(Duration::from_secs(2)));
        let pulse = l.pulse.clone();
        pulse.beat("waiting for the lease", Duration::from_secs(7));
        let started = Instant::now();
        let out = l
            .drive(async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                42
            })
            .await;
        assert_eq!(out, 42);
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        // Fed at 2, 4 and 6 s; from 8 s on the step was past its bound.
        assert_eq!(l.fed(), 3);
        // Past 7 s the step was overdue: no beat any more, whatever the future does.
        assert!(pulse.alive().is_err());
    }
}
