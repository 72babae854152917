//! The daemon (`certrotd run`): one loop that owns the node's state and supervises the
//! subsystems. It inventories the node, decides, renews what is due, and otherwise sleeps until the
//! next deadline, a file change, a control request or a signal: no polling.
//!
//! `run` is a library function that takes its configuration and a shutdown future, so the
//! integration tests drive the real daemon in process (pueue, mini-redis).

pub mod backoff;
pub mod handler;
pub mod notify;
pub mod peers;
pub mod recovery;
pub mod rotate;
pub mod status;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{self, LoadOptions, Settings};
use crate::control::proto::{DaemonInfo, LeaseStatus, StatusReport};
use crate::decide::{self, Decision, Policy, Threshold};
use crate::events;
use crate::history::History;
use crate::inventory::Inventory;
use crate::lease::Held;
use crate::report::rfc3339;
use crate::root::Root;
use crate::rotation::{Selection, StateDirs, lock};
use handler::{Command, DaemonHandler, Shared};
use notify::Notifier;
use rotate::{Env, Progress, Request};

/// How the daemon finds its configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--root`.
    pub root: Option<PathBuf>,
}

/// How long file events are gathered before the inventory is read again: long enough that a
/// rotation's several renames arrive as one change, short enough to show in status at once.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Notices kept for `certrotd status`.
const NOTICES_KEPT: usize = 50;

/// Runs the daemon until `shutdown` completes (or SIGTERM/SIGINT arrives).
pub async fn run(opts: Options, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let load = |opts: &Options| {
        config::load(&LoadOptions {
            config: opts.config.as_deref(),
            root: opts.root.as_deref(),
        })
    };
    let settings = load(&opts)?;
    let mut daemon = Daemon::start(settings, OffsetDateTime::now_utc())?;
    let (tx, mut commands) = mpsc::channel(16);
    let shared = Arc::new(Shared {
        status: RwLock::new(StatusReport::default()),
        progress: daemon.progress.clone(),
        history: RwLock::new(daemon.history.clone()),
        commands: tx,
        lease: daemon.peers.shared(),
    });
    let control = daemon.start_control(Arc::clone(&shared))?;
    // The inventory first: it is what says which files to watch.
    daemon.refresh(OffsetDateTime::now_utc());
    let mut watched = daemon.watched();
    let (mut watcher, mut changes) = crate::watch::Watcher::new(&watched, DEBOUNCE)?;

    let now = OffsetDateTime::now_utc();
    let decision = daemon.decide(now);
    daemon.publish(&shared, &decision, now);
    daemon.notifier.ready(&daemon.summary(&decision, now));
    events::started(
        &daemon.settings.node_name,
        daemon.inventory.entries.len(),
        &daemon.summary(&decision, now),
    );

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let watchdog = notify::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    // SIGTERM, SIGINT and the caller's shutdown are one request to stop, so the daemon behaves
    // the same in tests as under systemd, also in the middle of a rotation.
    let stop = async move {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
            () = shutdown => "shutdown requested",
        }
    };
    tokio::pin!(stop);

    // A cluster whose certificates all expired first: its lease cannot be reached, so nothing
    // below that needs it may run before this node's etcd is back.
    if daemon.recover(&shared, &mut stop).await {
        return daemon.stop(control).await;
    }
    daemon.publish_summary("idle").await;
    // Rotations a crash interrupted: recovery in `Daemon::start` made their files whole; their
    // components still have to be restarted and proved, and their records closed.
    if daemon.resume_guarded(&shared, &mut stop).await {
        return daemon.stop(control).await;
    }

    loop {
        // A rotation or someone else may have added or removed files (a new
        // kubelet-client-<time>.pem): keep watching exactly what the inventory names.
        let now_watched = daemon.watched();
        if now_watched != watched {
            if let Err(e) = watcher.set_paths(&now_watched) {
                tracing::warn!("updating watched files: {e}");
            }
            watched = now_watched;
        }
        if daemon.recover(&shared, &mut stop).await {
            break;
        }
        let now = OffsetDateTime::now_utc();
        let decision = daemon.decide(now);
        daemon.announce(&decision);
        if !decision.due.is_empty() {
            let req = Request {
                selection: Selection {
                    types: Vec::new(),
                    certs: decision.due.clone(),
                },
                why: if decision.expired {
                    "certificates expired: rotating without the health gate, it is the cure".into()
                } else if decision.emergency {
                    "inside emergency_before".into()
                } else {
                    "inside renew_before".into()
                },
                skip_health_gate: decision.expired,
                recovery: false,
            };
            let stopped = daemon.rotate_guarded(&shared, req, None, &mut stop).await;
            if stopped {
                break;
            }
            // A failed rotation would be retried at once: back off (and say louder as the
            // deadline nears); a success starts afresh.
            if daemon.last_failed {
                daemon.back_off(&decision, OffsetDateTime::now_utc());
            } else {
                daemon.backoff.clear();
            }
            continue;
        }
        if !decision.deferred.is_empty() {
            events::deferred(
                &daemon.settings.node_name,
                &decision.deferred,
                "outside the maintenance windows",
            );
        }
        daemon.publish(&shared, &decision, now);
        let sleep = sleep_until(decision.next_wake, now);
        let publish_at = daemon
            .peers
            .next_publish
            .unwrap_or_else(|| tokio::time::Instant::now() + peers::PUBLISH_EVERY);
        tokio::select! {
            _ = sleep => {}
            () = tokio::time::sleep_until(publish_at) => daemon.publish_summary("idle").await,
            Some(paths) = changes.recv() => daemon.on_change(&paths),
            Some(cmd) = commands.recv() => match cmd {
                Command::Rotate { selection, reply } => {
                    let req = Request {
                        selection,
                        why: "requested with certrotd rotate".into(),
                        skip_health_gate: false,
                        recovery: false,
                    };
                    let stopped = daemon.rotate_guarded(&shared, req, Some(reply), &mut stop).await;
                    if stopped { break; }
                }
                Command::Reload { reply } => {
                    let r = daemon.reload(load(&opts), &mut watcher, &shared);
                    let _ = reply.send(r);
                }
            },
            _ = sighup.recv() => { let _ = daemon.reload(load(&opts), &mut watcher, &shared); }
            _ = watchdog_tick.tick(), if watchdog.is_some() => daemon.notifier.watchdog(),
            why = &mut stop => {
                tracing::info!("{why}: stopping");
                break;
            }
        }
    }
    daemon.stop(control).await
}

fn sleep_until(wake: Option<OffsetDateTime>, now: OffsetDateTime) -> tokio::time::Sleep {
    // With nothing scheduled, only an event can change anything: sleep "forever" (a day, so a
    // clock jump is noticed) without waking in between.
    let wait = wake
        .map(|w| (w - now).max(time::Duration::ZERO))
        .unwrap_or(time::Duration::days(1));
    let std = Duration::try_from(wait).unwrap_or(Duration::ZERO);
    tokio::time::sleep(std + Duration::from_millis(5))
}

/// The control socket's server.
struct Control {
    task: tokio::task::JoinHandle<()>,
    /// The socket it was bound to (a reload may name another; this is the one to remove).
    path: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Where and how rotations run (an [`Env`] of the daemon's fields, borrowed one by one so the
/// notifier stays free for [`run_to_end`]), with `$on_step` told each step.
macro_rules! rotation_env {
    ($d:expr, $on_step:expr) => {
        Env {
            settings: &$d.settings,
            root: &$d.root,
            state: &$d.state,
            history: &$d.history,
            progress: &$d.progress,
            on_step: $on_step,
        }
    };
}

/// The daemon's state, owned by its loop.
struct Daemon {
    settings: Settings,
    root: Root,
    state: StateDirs,
    inventory: Inventory,
    announced: BTreeSet<(String, String, Threshold)>,
    notices: Vec<String>,
    history: Arc<History>,
    progress: Progress,
    notifier: Notifier,
    info: DaemonInfo,
    lease: LeaseStatus,
    last_failed: bool,
    /// Why the last rotation failed (or did not start).
    last_error: Option<String>,
    /// Retrying failed automatic rotations.
    backoff: backoff::Backoff,
    /// The lease shared with the other nodes, and the node's summary for them.
    peers: peers::Peers,
    /// The last rotation finished, for the node's summary.
    last_rotation: Option<crate::control::proto::HistoryRecord>,
}

impl Daemon {
    fn start(settings: Settings, now: OffsetDateTime) -> anyhow::Result<Daemon> {
        let root = Root::new(&settings.root);
        let state_real = settings.in_root(&settings.state_dir);
        create_private_dir(&state_real)?;
        let state = StateDirs::new(&root, &settings.state_dir)?;
        // Finish or roll back what a crash (or a SIGTERM mid-rotation) left, before anything else.
        {
            let _lock = lock::acquire(&state)?;
            rotate::recover_locked(&root, &state, &settings).map_err(anyhow::Error::msg)?;
        }
        let announced = load_announced(&state.dir);
        let history = Arc::new(History::for_settings(&settings));
        let last_rotation = history
            .read(None)
            .ok()
            .and_then(|h| h.records.into_iter().find(|r| r.finished_at.is_some()));
        Ok(Daemon {
            history,
            last_rotation,
            peers: peers::Peers::default(),
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
            notices: Vec::new(),
            progress: Arc::new(Mutex::new(None)),
            notifier: Notifier::default(),
            last_failed: false,
            last_error: None,
            backoff: backoff::Backoff::default(),
        })
    }

    fn start_control(&self, shared: Arc<Shared>) -> anyhow::Result<Control> {
        let c = &self.settings.control;
        let path = self.settings.in_root(&c.socket);
        let group = (!c.socket_group.is_empty()).then_some(c.socket_group.as_str());
        let listener = crate::control::server::bind(&path, c.socket_mode, group)?;
        let handler = Arc::new(DaemonHandler(shared));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            crate::control::server::serve(listener, handler, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
        });
        Ok(Control { task, path, stop })
    }

    /// Every file whose change matters: certificates, keys, kubeconfigs, the configuration.
    fn watched(&self) -> Vec<PathBuf> {
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

    fn refresh(&mut self, _now: OffsetDateTime) {
        self.inventory = crate::commands::check::inventory(&self.settings);
    }

    /// Files changed: read the node again, and say which certificates someone else replaced.
    fn on_change(&mut self, paths: &[PathBuf]) {
        let before: Vec<(String, Option<String>)> = self
            .inventory
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.cert.as_ref().map(|c| c.serial.clone())))
            .collect();
        let root = Root::new(&self.settings.root);
        let req = crate::inventory::Request {
            root: &root,
            layouts: self.settings.layout.layouts(),
            extra_paths: &self.settings.inventory.extra_paths,
        };
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

    fn decide(&self, now: OffsetDateTime) -> Decision {
        let rotates = self.inventory.kubelet.rotate_certificates.unwrap_or(false);
        let mut d = decide::decide(
            &self.inventory,
            &Policy::from_settings(&self.settings),
            &self.announced,
            rotates,
            now,
        );
        if let Some(retry) = self.backoff.waiting(now) {
            // After a failed rotation: nothing starts again before the retry time.
            d.due.clear();
            d.next_wake = Some(d.next_wake.map_or(retry, |w| w.min(retry)));
        }
        d
    }

    fn announce(&mut self, d: &Decision) {
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
                &n.message,
            );
            self.announced
                .insert((n.name.clone(), n.serial.clone(), n.threshold));
            self.note(n.message.clone());
        }
        save_announced(&self.state.dir, &self.announced);
    }

    fn summary(&self, d: &Decision, now: OffsetDateTime) -> String {
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
        progress: Option<&'a crate::control::proto::RotationProgress>,
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

    fn publish(&mut self, shared: &Shared, d: &Decision, now: OffsetDateTime) {
        let progress = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let report = status::report(&self.inputs(d, progress.as_ref()), now);
        self.notifier.status(&report.summary);
        *shared.status.write().unwrap_or_else(|e| e.into_inner()) = StatusReport {
            retry: self.backoff.status(),
            ..report
        };
    }

    /// After a failed automatic rotation: wait before trying again, longer after each failure, and
    /// tell the operator, the louder the nearer the certificates are to expiry.
    fn back_off(&mut self, d: &Decision, now: OffsetDateTime) {
        let error = self
            .last_error
            .clone()
            .unwrap_or_else(|| "rotation failed".to_owned());
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
    }

    /// Shows the lease in status (and in the STATUS line's summary) while the loop is busy.
    fn show_lease(&mut self, shared: &Shared, lease: LeaseStatus) {
        self.lease = lease.clone();
        shared
            .status
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .lease = lease;
    }

    /// Publishes this node's summary for the cluster view.
    async fn publish_summary(&mut self, state: &str) {
        let now = OffsetDateTime::now_utc();
        let summary = peers::summary(
            &self.settings.node_name,
            &self.inventory,
            state,
            self.last_rotation.as_ref(),
            now,
        );
        self.peers
            .publish(&self.settings, &self.root, &self.state.dir, &summary)
            .await;
    }

    /// Waits for this node's turn (see [`peers::wait_turn`]), showing its place in status.
    async fn take_turn(
        &mut self,
        shared: &Shared,
        rotation_id: &str,
        certs: &[String],
        stop: &mut (impl Future<Output = &'static str> + Unpin),
    ) -> Result<peers::Turn, String> {
        // An unreachable cluster (etcd restarting, a recovery under way elsewhere) is waited
        // for, not a failed rotation: the lease is the only way forward.
        let mut pause = std::time::Duration::from_millis(500);
        let lease = loop {
            let now = OffsetDateTime::now_utc();
            match self
                .peers
                .open(&self.settings, &self.root, &self.state.dir, now)
                .await
            {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!("{e}; trying again in {pause:?}");
                    self.show_lease(
                        shared,
                        LeaseStatus {
                            detail: Some(format!("waiting for the lease: {e}")),
                            ..self.lease.clone()
                        },
                    );
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        why = &mut *stop => return Ok(peers::Turn::Stopping(why)),
                    }
                    pause = (pause * 2).min(std::time::Duration::from_secs(10));
                }
            }
        };
        let now = OffsetDateTime::now_utc();
        let want = peers::want(
            &self.settings.node_name,
            rotation_id,
            &self.inventory,
            certs,
            now,
        );
        let waiting = LeaseStatus {
            backend: lease.describe(),
            detail: Some("waiting for the lease".into()),
            ..LeaseStatus::default()
        };
        self.show_lease(shared, waiting.clone());
        self.publish_summary("waiting").await;
        let turn = peers::wait_turn(lease.as_ref(), &want, stop, |line| {
            let mut s = shared.status.write().unwrap_or_else(|e| e.into_inner());
            s.lease.detail = Some(line);
        })
        .await;
        if let peers::Turn::Held(held) = &turn {
            self.show_lease(
                shared,
                LeaseStatus {
                    backend: lease.describe(),
                    held: true,
                    holder: Some(held.holder.clone()),
                    since: Some(rfc3339(OffsetDateTime::now_utc())),
                    detail: Some(format!("fencing token {}", held.fencing_token)),
                },
            );
        }
        Ok(turn)
    }

    /// Recovers this node's etcd without the lease when its certificates all expired (see
    /// [`recovery`]): renews them, restarts etcd and waits until it answers. Returns whether the
    /// daemon is stopping.
    async fn recover(
        &mut self,
        shared: &Shared,
        stop: &mut (impl Future<Output = &'static str> + Unpin),
    ) -> bool {
        let now = OffsetDateTime::now_utc();
        if self.backoff.waiting(now).is_some() {
            return false;
        }
        let Some(plan) = recovery::needed(&self.inventory, now) else {
            return false;
        };
        let req = Request {
            selection: Selection {
                types: Vec::new(),
                certs: plan.certs,
            },
            why: plan.why,
            // Expired certificates: the components cannot be healthy, renewing is the cure.
            skip_health_gate: true,
            recovery: true,
        };
        let stopping = self.rotate_guarded(shared, req, None, stop).await;
        if self.last_failed {
            let error = self
                .last_error
                .clone()
                .unwrap_or_else(|| "recovery failed".to_owned());
            let issuer = &self.settings.issuer;
            self.backoff.failed(
                OffsetDateTime::now_utc(),
                error,
                issuer.retry_initial,
                issuer.retry_max,
                rand::random::<f64>(),
            );
        } else {
            self.backoff.clear();
        }
        stopping
    }

    /// Gives the lease back and shows it so.
    async fn give_back(&mut self, shared: &Shared, held: Option<Held>) {
        if let (Some(held), Some(lease)) = (held, self.peers.lease()) {
            peers::release(lease.as_ref(), held).await;
        }
        let backend = self.lease.backend.clone();
        self.show_lease(
            shared,
            LeaseStatus {
                backend,
                ..LeaseStatus::default()
            },
        );
    }

    /// Runs a rotation to its end: planned first (so `certrotd rotate` gets its id at once and
    /// the queue can name it), then this node waits its turn (a stop while waiting is prompt),
    /// then the rotation runs with the lease as the guard of every disruptive step, each step
    /// mirrored into the holder record. A recovery takes no lease. A request to stop during the
    /// rotation is noted, and the daemon stops once it is over: stopping half-way would leave the
    /// node half-installed or its components on certificates no longer on disk. Every step left
    /// (install, restart, proof, rollback) is bounded by its timeout. Returns whether the daemon
    /// is stopping.
    async fn rotate_guarded(
        &mut self,
        shared: &Shared,
        req: Request,
        reply: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
        stop: &mut (impl Future<Output = &'static str> + Unpin),
    ) -> bool {
        let clock = OffsetDateTime::now_utc;
        let on_step = rotate::no_step_hook;
        let planned = {
            let env = rotation_env!(self, &on_step);
            rotate::plan_for(&env, &req, reply, &clock).await
        };
        let plan = match planned {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("rotation not started: {e}");
                self.last_failed = true;
                self.last_error = Some(e);
                return false;
            }
        };
        let held = if req.recovery {
            // The cluster is down (this member cannot talk to anyone): there is no lease to take.
            Held::new(&self.settings.node_name, 0)
        } else {
            match self
                .take_turn(shared, &plan.id, &req.selection.certs, stop)
                .await
            {
                Ok(peers::Turn::Held(h)) => h,
                Ok(peers::Turn::Stopping(why)) => {
                    tracing::info!(
                        "{why}: stopping while waiting for the lease; rotation {} not started",
                        plan.id
                    );
                    self.give_back(shared, None).await;
                    return true;
                }
                Err(why) => {
                    tracing::error!("rotation {} not started: {why}", plan.id);
                    self.last_failed = true;
                    self.last_error = Some(why);
                    return false;
                }
            }
        };
        self.publish_summary(if req.recovery {
            "recovering"
        } else {
            "rotating"
        })
        .await;
        let (hook, mirror) = match (req.recovery, self.peers.lease()) {
            (false, Some(lease)) => {
                let (hook, task) = peers::step_mirror(lease, held.clone());
                (
                    Box::new(hook) as Box<dyn Fn(&str) + Send + Sync>,
                    Some(task),
                )
            }
            _ => (
                Box::new(rotate::no_step_hook) as Box<dyn Fn(&str) + Send + Sync>,
                None,
            ),
        };
        let (result, stopping) = {
            let env = rotation_env!(self, hook.as_ref());
            let fut = rotate::run_planned(&env, req.clone(), plan, held.clone(), &clock);
            run_to_end(fut, stop, &self.progress, &mut self.notifier).await
        };
        drop(hook);
        if let Some(task) = mirror {
            let _ = task.await;
        }
        self.give_back(shared, (!req.recovery).then_some(held))
            .await;
        (self.last_failed, self.last_error) = match &result {
            Ok(r) if r.state == crate::control::proto::HistoryState::Failed => {
                (true, r.reason.clone())
            }
            Ok(_) => (false, None),
            Err(e) => {
                tracing::warn!("rotation not started: {e}");
                (true, Some(e.clone()))
            }
        };
        if let Ok(r) = result {
            // The lease's client certificate may be among those just renewed (or was minted
            // because it had expired): the next use reconnects with what is on disk now.
            if r.state == crate::control::proto::HistoryState::Success {
                self.peers.reset();
            }
            self.last_rotation = Some(r);
        }
        self.refresh(OffsetDateTime::now_utc());
        self.publish_summary("idle").await;
        stopping
    }

    /// Finishes the rotations a crash interrupted (see [`rotate::resume`]), under the lease.
    /// Returns whether the daemon is stopping.
    async fn resume_guarded(
        &mut self,
        shared: &Shared,
        stop: &mut (impl Future<Output = &'static str> + Unpin),
    ) -> bool {
        let interrupted = rotate::interrupted(&self.history);
        let Some(first) = interrupted.first() else {
            return false;
        };
        let (id, certs) = (first.id.clone(), first.certificates.clone());
        let held = match self.take_turn(shared, &id, &certs, stop).await {
            Ok(peers::Turn::Held(h)) => h,
            Ok(peers::Turn::Stopping(why)) => {
                tracing::info!("{why}: stopping while waiting for the lease to finish {id}");
                self.give_back(shared, None).await;
                return true;
            }
            Err(why) => {
                tracing::error!("not finishing interrupted rotations: {why}");
                return false;
            }
        };
        let clock = OffsetDateTime::now_utc;
        let (hook, mirror) = match self.peers.lease() {
            Some(lease) => {
                let (hook, task) = peers::step_mirror(lease, held.clone());
                (
                    Box::new(hook) as Box<dyn Fn(&str) + Send + Sync>,
                    Some(task),
                )
            }
            None => (
                Box::new(rotate::no_step_hook) as Box<dyn Fn(&str) + Send + Sync>,
                None,
            ),
        };
        let (closed, stopping) = {
            let env = rotation_env!(self, hook.as_ref());
            let fut = rotate::resume(&env, held.clone(), &clock);
            run_to_end(fut, stop, &self.progress, &mut self.notifier).await
        };
        drop(hook);
        if let Some(task) = mirror {
            let _ = task.await;
        }
        self.give_back(shared, Some(held)).await;
        if let Some(r) = closed.into_iter().last() {
            self.last_rotation = Some(r);
        }
        self.refresh(OffsetDateTime::now_utc());
        self.publish_summary("idle").await;
        stopping
    }

    /// Stops: tells systemd, closes the socket and waits for its server to end.
    async fn stop(self, control: Control) -> anyhow::Result<()> {
        self.notifier.stopping();
        let _ = control.stop.send(true);
        let _ = control.task.await;
        // Gone with the daemon, so `certrotd status` says nothing is running rather than
        // connection refused. Only ours: a socket another daemon serves fails our bind at start.
        if let Err(e) = std::fs::remove_file(&control.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %control.path.display(), "removing the control socket: {e}");
        }
        Ok(())
    }

    fn reload(
        &mut self,
        loaded: Result<Settings, config::ConfigError>,
        watcher: &mut crate::watch::Watcher,
        shared: &Shared,
    ) -> Result<(), String> {
        self.notifier.reloading();
        let result = match loaded {
            Ok(s) => {
                self.settings = s;
                // The [lease] table may name another cluster: opened again on next use.
                self.peers.reset();
                self.lease.backend = peers::backend_name(&self.settings);
                self.info.config_sources = config_sources(&self.settings);
                self.history = Arc::new(History::for_settings(&self.settings));
                // `certrotd history` reads through the handler: the state directory may have moved.
                *shared.history.write().unwrap_or_else(|e| e.into_inner()) =
                    Arc::clone(&self.history);
                self.refresh(OffsetDateTime::now_utc());
                if let Err(e) = watcher.set_paths(&self.watched()) {
                    tracing::warn!("updating watched files: {e}");
                }
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
        self.notifier.reloaded();
        result
    }

    /// Adds a notice for `certrotd status`, keeping only the latest.
    fn note(&mut self, notice: String) {
        self.notices.push(notice);
        let excess = self.notices.len().saturating_sub(NOTICES_KEPT);
        self.notices.drain(..excess);
    }
}

/// Drives a rotation (or a resumption) to its end while watching for a request to stop, which
/// is logged and answered once it is over. Returns its result and whether to stop.
async fn run_to_end<T>(
    fut: impl Future<Output = T>,
    stop: &mut (impl Future<Output = &'static str> + Unpin),
    progress: &Progress,
    notifier: &mut Notifier,
) -> (T, bool) {
    tokio::pin!(fut);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            r = &mut fut => break r,
            why = &mut *stop, if !stopping => {
                stopping = true;
                let id = progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(|p| p.id.clone())
                    .unwrap_or_default();
                tracing::info!(rotation_id = %id, "{why}: finishing rotation {id} first, then stopping");
                notifier.status(&format!("stopping once rotation {id} is finished"));
            }
        }
    };
    (result, stopping)
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
