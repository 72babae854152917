//! Prometheus exposition: the x509-certificate-exporter compatible series ([`x509`]) and
//! certrotd's own ([`own`]), rendered in the text format ([`encode`]), served over HTTP
//! ([`server`]) or written for node_exporter's textfile collector ([`textfile`]).
//!
//! The daemon feeds it at a few points (each published status, each move of the state machine,
//! each rotation's end), always with the time passed in; a scrape only reads what was fed, under
//! a short lock, and never waits for the daemon's loop.

pub mod ca;
pub mod encode;
pub mod own;
pub mod server;
pub mod textfile;
pub mod x509;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;

use crate::config::MetricsSettings;
use crate::control::proto::{HistoryRecord, StatusReport};
use crate::inventory::Inventory;
pub use own::Outcome;

/// The daemon's metrics: cheap to clone, shared by the loop and the HTTP server.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Whether anything reads them; otherwise every feed is a no-op (no cost when off).
    enabled: bool,
    x509_compat: bool,
    /// Real path of the textfile, when configured.
    textfile: Option<PathBuf>,
    version: &'static str,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Which inventory `x509` was made from, so an unchanged one is not read again.
    inventory_hash: Option<u64>,
    x509: x509::Snapshot,
    /// Each certificate's own labels, so an inventory change re-reads only what changed.
    cache: x509::Cache,
    source_errors: BTreeMap<&'static str, u64>,
    own: own::Own,
    /// The CA tracks as the daemon last read them, with the `[ca]` settings they are judged by.
    ca: Option<(crate::ca::view::CaView, crate::ca::settings::CaSettings)>,
    /// What the textfile holds, so it is rewritten only on change.
    written: Option<String>,
}

impl Metrics {
    /// Metrics as `settings` configure them; `textfile` is the real path of `settings.textfile`.
    pub fn new(settings: &MetricsSettings, textfile: Option<PathBuf>) -> Metrics {
        Metrics(Arc::new(Inner {
            enabled: settings.enabled(),
            x509_compat: settings.x509_compat,
            textfile,
            version: env!("CARGO_PKG_VERSION"),
            state: Mutex::new(State::default()),
        }))
    }

    /// Metrics that nothing reads.
    pub fn off() -> Metrics {
        let settings = MetricsSettings::default();
        Metrics::new(&settings, None)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the inventory (read under node root `root`) and the status as just published.
    pub fn observe(
        &self,
        inv: &Inventory,
        root: &Path,
        report: &StatusReport,
        last: Option<&HistoryRecord>,
    ) {
        if !self.0.enabled {
            return;
        }
        let hash = self.0.x509_compat.then(|| fingerprint(inv));
        let mut st = self.state();
        if hash.is_some() && hash != st.inventory_hash {
            let mut cache = std::mem::take(&mut st.cache);
            st.x509 = x509::snapshot_cached(inv, root, &mut cache);
            st.cache = cache;
            st.inventory_hash = hash;
        }
        st.own.status(report, last);
    }

    /// The state machine moved to the mode named `mode` at `now`.
    pub fn mode(&self, mode: &'static str, now: OffsetDateTime) {
        if self.0.enabled {
            self.state().own.mode(mode, now);
        }
    }

    /// A rotation ended as `outcome`, with its history record when it had one.
    pub fn rotation(&self, outcome: Outcome, record: Option<&HistoryRecord>) {
        if self.0.enabled {
            self.state().own.rotation(outcome, record);
        }
    }

    /// The CA tracks as the daemon's last CA poll read them.
    pub fn ca(&self, view: &crate::ca::view::CaView, settings: &crate::ca::settings::CaSettings) {
        if self.0.enabled {
            self.state().ca = Some((view.clone(), settings.clone()));
        }
    }

    /// The exposition at `now`: what a scrape returns.
    pub fn render(&self, now: OffsetDateTime) -> String {
        let mut st = self.state();
        self.render_locked(&mut st, now)
    }

    fn render_locked(&self, st: &mut State, now: OffsetDateTime) -> String {
        let mut out = String::with_capacity(1024 + st.x509.series.len() * 3 * 400);
        if self.0.x509_compat {
            // The exporter counts a failed read at every scrape; so does this.
            for kind in &st.x509.errors {
                *st.source_errors.entry(kind).or_default() += 1;
            }
            let errors: Vec<(&str, u64)> = st.source_errors.iter().map(|(k, n)| (*k, *n)).collect();
            x509::render(&mut out, &st.x509, &errors, now.unix_timestamp());
        }
        st.own.render(&mut out, self.0.version);
        if let Some((view, settings)) = &st.ca {
            ca::render(&mut out, view, settings, now);
        }
        out
    }

    /// Writes the textfile (when configured) if its content changed: after each inventory and
    /// rotation, never on a timer, so an idle daemon does not wake for it.
    pub fn write_textfile(&self, now: OffsetDateTime) -> Result<(), textfile::TextfileError> {
        let Some(path) = &self.0.textfile else {
            return Ok(());
        };
        let mut st = self.state();
        let text = self.render_locked(&mut st, now);
        if st.written.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        textfile::write(path, &text)?;
        st.written = Some(text);
        Ok(())
    }
}

/// What identifies an inventory's certificates: their places and serials.
fn fingerprint(inv: &Inventory) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for e in inv.as_read() {
        e.name.hash(&mut h);
        e.node_path.hash(&mut h);
        for c in e.cert.iter().chain(&e.chain) {
            c.der.hash(&mut h);
        }
    }
    h.finish()
}
