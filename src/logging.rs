//! Logging: structured events to journald when running under systemd, to stderr otherwise.
//!
//! Under systemd (`JOURNAL_STREAM` or `INVOCATION_ID` set) events go to journald with their
//! fields as journal fields, unprefixed, so `journalctl -u certrotd CERTROTD_EVENT=rotated` works.
//! `CERTROTD_LOG` sets the filter (`info` by default). On stderr, levels are coloured only when
//! stderr is a terminal and `NO_COLOR` is unset or empty (<https://no-color.org>): a log
//! redirected to a file or a pipe stays plain text.

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// The systemd journal.
    Journald,
    /// Standard error.
    Stderr,
}

/// Whether this process was started by systemd with its output connected to the journal.
pub fn under_systemd() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some()
}

/// Sets up the global subscriber; returns where logs go. Falls back to stderr when journald
/// cannot be reached.
pub fn init(prefer_journald: bool) -> Sink {
    let filter = EnvFilter::try_from_env("CERTROTD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if prefer_journald && let Ok(layer) = tracing_journald::layer() {
        let layer = layer
            .with_field_prefix(None)
            .with_syslog_identifier("certrotd".to_owned());
        if tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init()
            .is_ok()
        {
            return Sink::Journald;
        }
        return Sink::Stderr;
    }
    let no_color = std::env::var_os("NO_COLOR");
    let ansi = colour(std::io::stderr().is_terminal(), no_color.as_deref());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(filter)
        .try_init();
    Sink::Stderr
}

/// Whether stderr logs carry ANSI colour: only a terminal shows it (escape codes would litter a
/// file or a pipe), and a non-empty `NO_COLOR` turns it off even there.
fn colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(
            colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(
            !colour(false, None),
            "a file or a pipe gets no escape codes"
        );
        assert!(!colour(false, Some(OsStr::new("1"))));
    }
}
