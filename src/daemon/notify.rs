//! Talking to the service manager (sd_notify): READY after the first inventory, a one-line STATUS,
//! WATCHDOG keep-alives when the unit sets `WatchdogSec=`, STOPPING on the way out. Outside
//! systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// The daemon's line to the service manager.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    last_status: String,
}

impl Notifier {
    /// Startup is finished.
    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_owned();
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// The one-line summary `systemctl status` shows (sent only when it changed).
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_owned();
            send(&[NotifyState::Status(status)]);
        }
    }

    /// A watchdog keep-alive.
    pub fn watchdog(&self) {
        send(&[NotifyState::Watchdog]);
    }

    /// Reloading the configuration.
    pub fn reloading(&self) {
        send(&[NotifyState::Reloading]);
    }

    /// Done reloading (whether the new configuration was taken or refused): the service runs.
    pub fn reloaded(&self) {
        send(&[NotifyState::Ready, NotifyState::Status(&self.last_status)]);
    }

    /// Stopping.
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

/// How often to send WATCHDOG=1: half the unit's `WatchdogSec=`, as sd_watchdog_enabled(3)
/// recommends; `None` when the unit has no watchdog (then the daemon never wakes for it).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}
