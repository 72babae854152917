//! What the daemon tells its metrics, one call per event (a status published, a turn ended), and
//! the `/metrics` server it runs beside the control socket. The translation from the daemon's
//! types lives here so the metrics module knows nothing of the daemon.

use std::sync::Arc;

use time::OffsetDateTime;

use super::node::Daemon;
use super::rotate::Finished;
use super::status::Report;
use super::turn::Turned;
use crate::config::Settings;
use crate::history::State;
use crate::metrics::{Metrics, Outcome, server};

/// The metrics `settings` configure.
pub fn metrics(settings: &Settings) -> Metrics {
    let textfile = settings
        .metrics
        .textfile
        .as_ref()
        .map(|p| settings.in_root(p));
    Metrics::new(&settings.metrics, textfile)
}

impl Daemon {
    /// A status was published at `now`: the series follow it, and the textfile is rewritten if
    /// anything it shows changed.
    pub fn metered_status(&self, report: &Report, now: OffsetDateTime) {
        let root = self.settings.root.as_path();
        self.metrics
            // The metrics read the protocol's words: converted here, at the daemon's edge.
            .observe(
                &self.inventory,
                root,
                &report.to_wire(),
                self.last_rotation.as_ref().map(|r| r.to_wire()).as_ref(),
            );
        if let Err(e) = self.metrics.write_textfile(now) {
            tracing::warn!("{e}");
        }
    }

    /// A turn ended: count each rotation by its result.
    pub fn metered_turn(&self, turned: &Turned) {
        match turned {
            Turned::Stopping(_) => {}
            Turned::NotStarted(_) => self.metrics.rotation(Outcome::NotStarted, None),
            Turned::Ran(finished) => {
                for f in finished {
                    let outcome = match f {
                        Finished::LeftOpen { .. } => Outcome::LeftOpen,
                        Finished::Closed { record, .. } if record.state == State::Success => {
                            Outcome::Success
                        }
                        Finished::Closed { .. } => Outcome::Failed,
                    };
                    self.metrics.rotation(outcome, Some(&f.record().to_wire()));
                }
            }
        }
    }
}

/// The `/metrics` server, running until stopped.
pub struct MetricsServer {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl MetricsServer {
    /// Starts serving when `[metrics] listen` is set: bound before the daemon reports ready, so a
    /// port in use fails the start instead of a scrape later.
    pub async fn start(d: &Daemon) -> anyhow::Result<Option<MetricsServer>> {
        let Some(addr) = d.settings.metrics.listen else {
            return Ok(None);
        };
        let listener = server::bind(addr).await?;
        tracing::info!(
            "serving metrics on http://{}/metrics",
            listener.local_addr()?
        );
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let clock = Arc::clone(&d.clock);
        let now: server::Now = Arc::new(move || clock.now());
        let task = tokio::spawn(server::serve(
            listener,
            d.metrics.clone(),
            now,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        Ok(Some(MetricsServer { task, stop }))
    }

    /// Stops accepting and waits for the accept loop to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::mode::Mode;
    use crate::metrics::own::MODES;

    #[test]
    fn every_mode_is_in_the_state_set() {
        let modes = [
            Mode::Starting,
            Mode::Idle,
            Mode::Waiting {
                id: String::new(),
                detail: String::new(),
            },
            Mode::BackingOff {
                until: time::OffsetDateTime::UNIX_EPOCH,
            },
        ];
        for m in &modes {
            assert!(MODES.contains(&m.name()), "{}", m.name());
        }
    }
}
