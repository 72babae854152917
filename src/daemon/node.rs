//! The daemon's knowledge of its node: settings, inventory, history, notices, the retry state and
//! what status shows. Owned by the loop; every method takes `now` from the caller.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use super::backoff::Backoff;
use super::clock::SharedClock;
use super::components::{Components, NodeComponents};
use super::failure::RotationFailure;
use super::handler::Shared;
use super::liveness::Liveness;
use super::mode::{Machine, Mode};
use super::notify::Notifier;
use super::peers::{self, Peers};
use super::rotate::Progress;
use super::status;
use crate::config::{self, Settings};
use crate::control::proto::{DaemonInfo, LeaseStatus};
use crate::decide::{self, Decision, Policy, Threshold};
use crate::events;
use crate::history::History;
use crate::history::Record;
use crate::inventory::Inventory;
use crate::root::Root;
use crate::rotation::{StateDirs, Unguarded};
use crate::timefmt::rfc3339;

/// Notices kept for `certrotd status`.
const NOTICES_KEPT: usize = 50;

/// The daemon's state of its node, owned by its loop.
pub struct Daemon {
    /// The configuration in force.
    pub settings: Settings,
    /// The node root.
    pub root: Root,
    /// Where rotation state lives.
    pub state: StateDirs,
    /// The node's certificates, as last read.
    pub inventory: Inventory,
    /// Notices made (certificate, serial, threshold), so each is made once.
    pub announced: BTreeSet<(String, String, Threshold)>,
    /// Notices for `certrotd status`, newest last.
    pub notices: Vec<String>,
    /// Activity records.
    pub history: Arc<History>,
    /// The rotation in progress, for status.
    pub progress: Progress,
    /// The state machine (shared with the steps of a rotation, which move it).
    pub machine: Arc<Mutex<Machine>>,
    /// Watchdog and STATUS.
    pub live: Liveness,
    /// The daemon itself, for status.
    pub info: DaemonInfo,
    /// The lease as status shows it.
    pub lease: LeaseStatus,
    /// Retrying failed automatic rotations.
    pub backoff: Backoff,
    /// The lease shared with the other nodes, and the node's summary for them.
    pub peers: Peers,
    /// The last rotation finished, for the node's summary.
    pub last_rotation: Option<Record>,
    /// The time.
    pub clock: SharedClock,
    /// The components rotations restart and prove.
    pub components: Arc<dyn Components>,
    /// Components given at start (tests), kept across reloads; otherwise built from settings.
    fixed_components: bool,
    /// A lease given at start (tests), used instead of the one `[lease]` configures.
    pub fixed_lease: Option<Arc<dyn crate::lease::Lease>>,
    /// What Prometheus reads (`[metrics]`; fixed at start, a reload does not move it).
    pub metrics: crate::metrics::Metrics,
    /// The CA rotation turns between polls.
    pub ca: super::ca_turn::CaTurns,
}

impl Daemon {
    /// Reads its state: finishes or rolls back what a crash left (never fatal: a rotation that
    /// cannot be recovered is reported and left for a person, the others go on), loads notices
    /// and history.
    pub fn start(
        settings: Settings,
        clock: SharedClock,
        components: Option<Arc<dyn Components>>,
    ) -> anyhow::Result<Daemon> {
        let now = clock.now();
        let root = Root::new(&settings.root);
        create_private_dir(&settings.in_root(&settings.state_dir))?;
        let state = StateDirs::new(&root, &settings.state_dir)?;
        let mut notices = Vec::new();
        let history = Arc::new(History::for_settings(&settings));
        match finish_interrupted_at_start(&root, &state, &settings, now) {
            Ok(recovered) => {
                super::rotate::record_quarantined(&history, &settings.node_name, &recovered, now);
                for r in &recovered {
                    if let crate::rotation::finish_interrupted::Resolution::Quarantined {
                        reason,
                        moved_to,
                    } = &r.action
                    {
                        notices.push(format!(
                            "rotation {} was quarantined to {}: {reason}",
                            r.id,
                            moved_to.display()
                        ));
                    }
                }
            }
            Err(e) => {
                tracing::error!("recovering interrupted rotations: {e}");
                notices.push(format!("recovering interrupted rotations failed: {e}"));
            }
        }
        let announced = load_announced(&state.dir);
        let last_rotation = history
            .read(None)
            .ok()
            .and_then(|h| h.records.into_iter().find(|r| r.finished_at.is_some()));
        let fixed_components = components.is_some();
        let components =
            components.unwrap_or_else(|| Arc::new(NodeComponents::new(&settings, &root)));
        let metrics = super::metered::metrics(&settings);
        Ok(Daemon {
            metrics,
            ca: Default::default(),
            history,
            last_rotation,
            peers: Peers::default(),
            info: DaemonInfo {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at: rfc3339(now),
                pid: std::process::id(),
                config_sources: config_sources(&settings),
            },
            lease: LeaseStatus {
                backend: peers::backend_name(&settings),
                ..LeaseStatus::default()
            },
            settings,
            root,
            state,
            inventory: Inventory::default(),
            announced,
            notices,
            progress: Arc::new(Mutex::new(None)),
            machine: Arc::new(Mutex::new(Machine::default())),
            live: Liveness::new(Notifier::default(), super::notify::watchdog_interval()),
            backoff: Backoff::default(),
            clock,
            components,
            fixed_components,
            fixed_lease: None,
        })
    }

    /// The mode now.
    pub fn mode(&self) -> Mode {
        self.machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mode()
            .clone()
    }

    /// Moves the state machine (a refused transition is logged by the machine and ignored here:
    /// the loop's next decision starts from the mode it is really in) and shows the mode.
    pub fn go(&mut self, to: Mode) {
        let line = to.to_string();
        let name = to.name();
        let moved = self
            .machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .go(to)
            .is_ok();
        if moved {
            self.live.pulse.beat(line, IDLE_BOUND);
            self.metrics.mode(name, self.clock.now());
        }
    }

    /// Every file whose change matters: certificates, keys, kubeconfigs, the configuration.
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
        for e in &self.inventory.entries {
            paths.insert(e.path.clone());
            paths.insert(self.root.join(&e.node_path));
            paths.extend(e.key_path.clone());
        }
        for k in &self.inventory.key_pairs {
            paths.insert(k.private_path.clone());
            paths.insert(k.public_path.clone());
        }
        paths.extend(self.settings.sources.iter().cloned());
        paths.into_iter().collect()
    }

    /// Reads the node's certificates again.
    pub fn refresh(&mut self) {
        self.inventory = Inventory::for_settings(&self.settings);
    }

    /// Files changed: read the node again, and say which certificates someone else replaced.
    pub fn on_change(&mut self, paths: &[PathBuf]) {
        let before: Vec<(String, Option<String>)> = self
            .inventory
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.cert.as_ref().map(|c| c.serial.clone())))
            .collect();
        let req = crate::inventory::ScanRequest::for_settings(&self.root, &self.settings);
        self.inventory.refresh(&req, paths);
        let mut replaced = false;
        for e in &self.inventory.entries {
            let serial = e.cert.as_ref().map(|c| c.serial.clone());
            let old = before.iter().find(|(n, _)| *n == e.name).map(|(_, s)| s);
            if old.is_some_and(|s| *s != serial) {
                replaced = true;
                events::changed(
                    &self.settings.node_name,
                    &e.name,
                    &e.path,
                    e.cert.as_ref().map(|c| c.not_after),
                );
            }
        }
        tracing::debug!("inventory re-read after changes to {} files", paths.len());
        // A certificate someone else replaced is a new situation: a failed rotation need not wait
        // out its pause. The daemon's own writes (a rollback's among them) replace nothing the
        // inventory, re-read after every rotation, does not already hold; they must not end the
        // pause, or a failing rotation would be retried at once, again and again.
        if replaced {
            self.backoff.clear();
        }
    }

    /// What is due, deferred and next, at `now`.
    pub fn decide(&self, now: OffsetDateTime) -> Decision {
        let rotates = self.inventory.kubelet.rotate_certificates.unwrap_or(false);
        // A certificate of a rotation left open is due, whatever its inventory problem (a key
        // that does not match its certificate half-way through an install): finishing it is the cure.
        let open = crate::rotation::journal::open(&self.state);
        let mut d = decide::decide_with_open(
            &self.inventory,
            &Policy::from_settings(&self.settings),
            &self.announced,
            rotates,
            &open,
            now,
        );
        if let Some(retry) = self.backoff.waiting(now) {
            // After a failed rotation: nothing starts again before the retry time.
            d.due.clear();
            d.next_wake = Some(d.next_wake.map_or(retry, |w| w.min(retry)));
        }
        d
    }

    /// Makes the decision's notices, once each.
    pub fn announce(&mut self, d: &Decision) {
        if d.notices.is_empty() {
            return;
        }
        for n in &d.notices {
            let path = self
                .inventory
                .get(&n.name)
                .map(|e| e.path.clone())
                .unwrap_or_default();
            events::notice(
                &self.settings.node_name,
                &n.name,
                &path,
                n.not_after,
                n.threshold,
                &n.message,
            );
            self.announced
                .insert((n.name.clone(), n.serial.clone(), n.threshold));
            self.note(n.message.clone());
        }
        save_announced(&self.state.dir, &self.announced);
    }

    /// The one-line summary at `now`.
    pub fn summary(&self, d: &Decision, now: OffsetDateTime) -> String {
        let progress = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        status::summary(&self.inputs(d, progress.as_ref()), now)
    }

    fn inputs<'a>(
        &'a self,
        d: &'a Decision,
        progress: Option<&'a status::Underway>,
    ) -> status::Inputs<'a> {
        status::Inputs {
            node: &self.settings.node_name,
            daemon: &self.info,
            inventory: &self.inventory,
            decision: d,
            rotation: progress,
            lease: &self.lease,
            notices: &self.notices,
        }
    }

    /// Publishes status for the control socket and the STATUS line.
    pub fn publish(&mut self, shared: &Shared, d: &Decision, now: OffsetDateTime) {
        let progress = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let report = status::report(&self.inputs(d, progress.as_ref()), now);
        // Idle, the summary is what an operator wants on the STATUS line; busy, the mode is.
        if matches!(self.mode(), Mode::Idle) {
            self.live.pulse.beat(report.summary.clone(), IDLE_BOUND);
        }
        self.live.show();
        let report = status::Report {
            retry: self.backoff.status(),
            ..report
        };
        self.metered_status(&report, now);
        *shared.status.write().unwrap_or_else(|e| e.into_inner()) = report;
    }

    /// After a failed rotation: wait before trying again, longer after each failure, and tell
    /// the operator, the louder the nearer the certificates are to expiry.
    pub fn back_off(&mut self, d: &Decision, failure: &RotationFailure, now: OffsetDateTime) {
        let error = failure.to_string();
        let issuer = &self.settings.issuer;
        let next = self.backoff.failed(
            now,
            error.clone(),
            issuer.retry_initial,
            issuer.retry_max,
            rand::random::<f64>(),
        );
        let severity = if d.expired {
            events::Severity::Critical
        } else if d.emergency {
            events::Severity::Error
        } else {
            events::Severity::Warning
        };
        events::retrying(
            &self.settings.node_name,
            &d.due,
            self.backoff.attempts,
            &error,
            next,
            severity,
        );
        self.note(format!(
            "renewal of {} failed (attempt {}): {error}; next attempt at {}",
            d.due.join(", "),
            self.backoff.attempts,
            rfc3339(next)
        ));
        self.go(Mode::BackingOff { until: next });
    }

    /// Shows the lease in status while the loop is busy.
    pub fn show_lease(&mut self, shared: &Shared, lease: LeaseStatus) {
        self.lease = lease.clone();
        shared
            .status
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .lease = lease;
    }

    /// Publishes this node's summary for the cluster view, with its mode.
    pub async fn publish_summary(&mut self) {
        let now = self.clock.now();
        let summary = peers::summary(
            &self.settings.node_name,
            &self.inventory,
            self.mode().name(),
            self.last_rotation.as_ref(),
            now,
        );
        if let Some(lease) = &self.fixed_lease {
            self.peers.next_publish = Some(tokio::time::Instant::now() + peers::PUBLISH_EVERY);
            if let Err(e) = lease.publish(&summary).await {
                tracing::warn!("publishing the node summary: {e}");
            }
            return;
        }
        self.peers
            .publish(&self.settings, &self.root, &self.state.dir, &summary, now)
            .await;
    }

    /// Takes a new configuration (or says why not).
    pub fn reload(
        &mut self,
        loaded: Result<Settings, config::ConfigError>,
        shared: &Shared,
    ) -> Result<(), String> {
        self.live.notifier.reloading();
        let result = match loaded {
            Ok(s) => {
                self.settings = s;
                // The [lease] table may name another cluster: opened again on next use.
                self.peers.reset();
                self.ca.reset();
                self.lease.backend = peers::backend_name(&self.settings);
                self.info.config_sources = config_sources(&self.settings);
                self.history = Arc::new(History::for_settings(&self.settings));
                if !self.fixed_components {
                    self.components = Arc::new(NodeComponents::new(&self.settings, &self.root));
                }
                // `certrotd history` reads through the handler: the state directory may have moved.
                *shared.history.write().unwrap_or_else(|e| e.into_inner()) =
                    Arc::clone(&self.history);
                self.refresh();
                Ok(())
            }
            Err(e) => {
                // A SIGHUP has no one to answer: status is where an operator sees it was refused.
                self.note(format!(
                    "configuration reload refused, the previous settings are kept: {e}"
                ));
                Err(e.to_string())
            }
        };
        events::reloaded(
            &self.settings.node_name,
            result.as_ref().map(|_| ()).map_err(String::as_str),
        );
        // RELOADING=1 must be answered by READY=1, or systemd shows the unit reloading for good.
        self.live.notifier.reloaded();
        result
    }

    /// Adds a notice for `certrotd status`, keeping only the latest.
    pub fn note(&mut self, notice: String) {
        self.notices.push(notice);
        let excess = self.notices.len().saturating_sub(NOTICES_KEPT);
        self.notices.drain(..excess);
    }
}

/// How long the loop may sit between two ticks while idle before that counts as hung: the idle
/// loop wakes at least every watchdog interval, so this only bounds a stuck handler of an event.
pub const IDLE_BOUND: std::time::Duration = std::time::Duration::from_secs(120);

/// Finishes or rolls back what a crash (or a SIGTERM mid-rotation) left, before anything else.
fn finish_interrupted_at_start(
    root: &Root,
    state: &StateDirs,
    settings: &Settings,
    now: OffsetDateTime,
) -> Result<Vec<crate::rotation::finish_interrupted::Interrupted>, String> {
    let session = crate::rotation::session::Session::open(root, state, settings.renew.backups_keep)
        .map_err(|e| format!("{e:#}"))?;
    super::rotate::finish_interrupted_locked(&session, &Unguarded, now)
}

/// The configuration files of `settings`, as status shows them.
fn config_sources(settings: &Settings) -> Vec<String> {
    settings
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Notices already made survive restarts, so a restart does not announce them again.
fn load_announced(state: &Path) -> BTreeSet<(String, String, Threshold)> {
    std::fs::read(state.join("notices.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_announced(state: &Path, set: &BTreeSet<(String, String, Threshold)>) {
    let Ok(json) = serde_json::to_vec(set) else {
        return;
    };
    if let Err(e) = crate::store::write_atomic(&state.join("notices.json"), &json, 0o600) {
        tracing::warn!("saving announced notices: {e}");
    }
}
