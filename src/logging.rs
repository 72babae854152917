//! Logging: structured events to journald when running under systemd, to stderr otherwise.
//!
//! Under systemd (`JOURNAL_STREAM` or `INVOCATION_ID` set) events go to journald with their
//! fields as journal fields, unprefixed, so `journalctl -u certrotd CERTROTD_EVENT=rotated` works.
//! `CERTROTD_LOG` sets the filter (`info` by default). Events under
//! [`CRITICAL_TARGET`](crate::events::CRITICAL_TARGET) are journald priority 2 (critical), which
//! tracing's levels cannot say. On stderr, levels are coloured only when
//! stderr is a terminal and `NO_COLOR` is unset or empty (<https://no-color.org>): a log
//! redirected to a file or a pipe stays plain text.

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use tracing::{Event, Metadata, Subscriber};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::events::{CERT_SPAN_TARGET, CRITICAL_TARGET};

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
    if prefer_journald && let Ok(layer) = Journald::new() {
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
    // The spans that carry a multi-certificate event's names are for journald; on stderr the
    // message already lists them.
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| !is_cert_span(m)));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .try_init();
    Sink::Stderr
}

fn is_cert_span(m: &Metadata<'_>) -> bool {
    m.is_span() && m.target() == CERT_SPAN_TARGET
}

/// The journald layer: fields unprefixed, `SYSLOG_IDENTIFIER=certrotd`, and events under
/// [`CRITICAL_TARGET`] sent at priority 2. One inner layer keeps the spans' fields (a span's
/// fields are stored once, in its extensions); the critical one reads them from there too.
struct Journald {
    normal: tracing_journald::Layer,
    critical: tracing_journald::Layer,
}

impl Journald {
    fn new() -> std::io::Result<Journald> {
        let layer = || -> std::io::Result<tracing_journald::Layer> {
            Ok(tracing_journald::layer()?
                .with_field_prefix(None)
                .with_syslog_identifier("certrotd".to_owned()))
        };
        Ok(Journald {
            normal: layer()?,
            critical: layer()?.with_priority_mappings(PriorityMappings {
                error: Priority::Critical,
                ..PriorityMappings::new()
            }),
        })
    }
}

impl<S> Layer<S> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        self.normal.on_new_span(attrs, id, ctx);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        self.normal.on_record(id, values, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() == CRITICAL_TARGET {
            self.critical.on_event(event, ctx);
        } else {
            self.normal.on_event(event, ctx);
        }
    }
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
