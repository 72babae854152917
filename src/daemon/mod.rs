//! The daemon (`certrotd run`): one explicit state machine ([`mode`]) driven by one loop that owns
//! the node's state and supervises the subsystems. It inventories the node, decides, renews what
//! is due, and otherwise sleeps until the next deadline, a file change, a control request or a
//! stop: no polling. In every mode the watchdog is fed while the loop makes progress
//! ([`liveness`]).
//!
//! Its edges are injected ([`Edges`]): the control socket's listener, the request to stop
//! ([`Shutdown`]), the [`Clock`], how to load the configuration again, SIGHUPs, and optionally
//! the components; `commands/run.rs` wires signals and the real ones, tests their own (pueue,
//! mini-redis).
//!
//! ```text
//! loop: stop requested? ─▶ Stopping
//!       etcd certificates all expired? ─▶ Recovering (no lease)
//!       a rotation left open? ─▶ Waiting ─▶ Resuming
//!       a CA poll due? ─▶ CaTurn (this node's step of a CA rotation) ─▶ Idle
//!       something due? ─▶ Waiting ─▶ Rotating ─▶ Idle | BackingOff
//!       else Idle: select! { deadline, summary, file change, request, SIGHUP, watchdog, stop }
//! ```

pub mod backoff;
pub mod ca_hooks;
pub mod ca_request;
pub mod ca_turn;
pub mod clock;
pub mod cluster_recovery;
pub mod components;
pub mod consumers;
pub mod engine;
pub mod failure;
pub mod handler;
pub mod liveness;
pub mod metered;
pub mod mode;
pub mod node;
pub mod notify;
pub mod peers;
pub mod reload;
pub mod resume;
pub mod rotate;
pub mod shutdown;
pub mod status;
pub mod turn;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

pub use clock::{Clock, SharedClock, SystemClock, TokioClock};
pub use shutdown::{Shutdown, Trigger};

use crate::config::{self, ConfigError, LoadOptions, Settings};
use crate::decide::Decision;
use crate::events;
use crate::rotation::Selection;
use components::Components;
use handler::{Command, DaemonHandler, Shared};
use mode::Mode;
use node::Daemon;
use rotate::RotationRequest;
use turn::Turned;

/// How the daemon finds its configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--root`.
    pub root: Option<PathBuf>,
}

/// Loads the configuration again (a reload).
pub type Loader = Box<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

/// What the daemon is given from outside.
pub struct Edges {
    /// The control socket, bound (its mode set before listening).
    pub listener: UnixListener,
    /// The socket's path, removed on the way out.
    pub socket_path: PathBuf,
    /// The request to stop.
    pub shutdown: Shutdown,
    /// The time.
    pub clock: SharedClock,
    /// Loads the configuration again, for a reload.
    pub reload: Loader,
    /// SIGHUPs (none in tests that do not send them).
    pub hangups: Option<mpsc::Receiver<()>>,
    /// The components to restart and prove; `None`: the node's own, from the settings.
    pub components: Option<Arc<dyn Components>>,
    /// The lease to take turns with; `None`: the one `[lease]` configures, opened on first use.
    pub lease: Option<Arc<dyn crate::lease::Lease>>,
}

/// How long file events are gathered before the inventory is read again: long enough that a
/// rotation's several renames arrive as one change, short enough to show in status at once.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Loads the configuration, binds the control socket and serves until `shutdown` completes,
/// on the wall clock: the daemon as `certrotd run` starts it, less the signals.
pub async fn run(
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = load(&opts)?;
    let (listener, socket_path) = bind_control(&settings)?;
    serve(
        settings,
        Edges {
            listener,
            socket_path,
            shutdown: Shutdown::when(shutdown),
            clock: Arc::new(SystemClock),
            reload: Box::new(move || load(&opts)),
            hangups: None,
            components: None,
            lease: None,
        },
    )
    .await
}

/// Loads the configuration `opts` names.
pub fn load(opts: &Options) -> Result<Settings, ConfigError> {
    config::load(&LoadOptions {
        config: opts.config.as_deref(),
        root: opts.root.as_deref(),
    })
}

/// Binds the control socket `settings` name, with its mode and group set before listening.
pub fn bind_control(settings: &Settings) -> anyhow::Result<(UnixListener, PathBuf)> {
    let c = &settings.control;
    let path = settings.in_root(&c.socket);
    let group = (!c.socket_group.is_empty()).then_some(c.socket_group.as_str());
    let listener = crate::control::server::bind(&path, c.socket_mode, group)?;
    Ok((listener, path))
}

/// Runs the daemon until a stop is requested.
pub async fn serve(settings: Settings, edges: Edges) -> anyhow::Result<()> {
    let Edges {
        listener,
        socket_path,
        mut shutdown,
        clock,
        reload,
        mut hangups,
        components,
        lease,
    } = edges;
    let mut d = Daemon::start(settings, clock, components)?;
    if let Some(l) = &lease {
        // `status --cluster` answers from the lease the daemon takes turns with.
        d.peers.shared().set(Some(Arc::clone(l)));
    }
    d.fixed_lease = lease;
    let (tx, mut commands) = mpsc::channel(16);
    let shared = Arc::new(Shared {
        status: RwLock::new(status::Report::default()),
        progress: d.progress.clone(),
        history: RwLock::new(d.history.clone()),
        commands: tx,
        lease: d.peers.shared(),
        ca: Default::default(),
    });
    let control = Control::spawn(listener, socket_path, Arc::clone(&shared));
    let metrics_server = metered::MetricsServer::start(&d).await?;
    // The inventory first: it is what says which files to watch.
    d.refresh();
    let mut watched = d.watched();
    let (mut watcher, mut changes) = crate::watch::Watcher::new(&watched, DEBOUNCE)?;

    let now = d.clock.now();
    let decision = d.decide(now);
    d.go(Mode::Idle);
    d.publish(&shared, &decision, now);
    d.live.notifier.ready(&d.summary(&decision, now));
    events::started(
        &d.settings.node_name,
        d.inventory.entries.len(),
        &d.summary(&decision, now),
    );
    d.publish_summary().await;
    // Start-up read every configuration table and certificate once; idle needs little of it.
    alloc_trim::trim();
    alloc_trim::page_out_code();
    // Rotations a crash or a lost lease left open: their components still have to be restarted
    // and proved under the lease, and their records closed, before anything new starts.
    let mut open = !rotate::interrupted(&d.history).is_empty();

    let mut watchdog = d
        .live
        .interval()
        .map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    loop {
        if let Some(why) = shutdown.is_requested().or(d.machine_stop()) {
            tracing::info!("{why}: stopping");
            d.go(Mode::Stopping { why });
            break;
        }
        // A rotation or someone else may have added or removed files (a new
        // kubelet-client-<time>.pem): keep watching exactly what the inventory names.
        let now_watched = d.watched();
        if now_watched != watched {
            if let Err(e) = watcher.set_paths(&now_watched) {
                tracing::warn!("updating watched files: {e}");
            }
            watched = now_watched;
        }
        let now = d.clock.now();
        let retry_pending = d.backoff.waiting(now).is_some();
        if !retry_pending && let Some(plan) = cluster_recovery::needed(&d.inventory, now) {
            // Announced first: once renewed, nothing expired is left to announce, and the journal
            // would never say which certificates had expired.
            let expired = d.decide(now);
            d.announce(&expired);
            let req = RotationRequest {
                selection: Selection {
                    types: Vec::new(),
                    certs: plan.certs,
                },
                why: plan.why,
                // Expired certificates: the components cannot be healthy, renewing is the cure.
                skip_health_gate: true,
                cluster_recovery: true,
            };
            let turned = d.rotate(&shared, req, None, &mut shutdown).await;
            open |= settle(&mut d, turned, true);
            d.publish_summary().await;
            continue;
        }
        if !retry_pending && open {
            let turned = d.resume(&shared, &mut shutdown).await;
            settle(&mut d, turned, true);
            d.publish_summary().await;
            open = !rotate::interrupted(&d.history).is_empty();
            continue;
        }
        if d.ca.due(tokio::time::Instant::now()) {
            // CA rotations: this node's turn where it has one, a due CA's rotation started.
            d.ca_poll(&shared, &mut shutdown).await;
            continue;
        }
        let decision = d.decide(now);
        d.announce(&decision);
        if !decision.due.is_empty() {
            let req = RotationRequest {
                selection: Selection {
                    types: Vec::new(),
                    certs: decision.due.clone(),
                },
                why: why_due(&decision),
                skip_health_gate: decision.expired,
                cluster_recovery: false,
            };
            let turned = d.rotate(&shared, req, None, &mut shutdown).await;
            open |= settle(&mut d, turned, true);
            d.publish_summary().await;
            continue;
        }
        if !decision.deferred.is_empty() {
            events::deferred(
                &d.settings.node_name,
                &decision.deferred,
                "outside the maintenance windows",
            );
        }
        if !matches!(d.mode(), Mode::BackingOff { .. }) || !retry_pending {
            d.go(Mode::Idle);
        }
        d.publish(&shared, &decision, now);
        let sleep = sleep_until(decision.next_wake, now);
        let publish_at = d
            .peers
            .next_publish
            .unwrap_or_else(|| tokio::time::Instant::now() + peers::PUBLISH_EVERY);
        tokio::select! {
            () = sleep => {}
            () = tokio::time::sleep_until(d.ca.wake()) => {}
            () = tokio::time::sleep_until(publish_at) => d.publish_summary().await,
            Some(paths) = changes.recv() => d.on_change(&paths),
            Some(cmd) = commands.recv() => match cmd {
                cmd @ Command::Rotate { .. } if cmd.client_gone() => {
                    // Its client gave up (or went away) before the loop got to it.
                    tracing::info!("a requested rotation was dropped: its client is gone");
                }
                Command::Rotate { selection, reply } => {
                    let req = RotationRequest {
                        selection,
                        why: "requested with certrotd rotate".into(),
                        skip_health_gate: false,
                        cluster_recovery: false,
                    };
                    let turned = d.rotate(&shared, req, Some(reply), &mut shutdown).await;
                    // A request that could not start was answered; no backoff for it.
                    open |= settle(&mut d, turned, false);
                    d.publish_summary().await;
                }
                Command::Reload { reply } => {
                    let r = reload_now(&mut d, &reload, &mut watcher, &shared);
                    let _ = reply.send(r);
                }
                Command::CaRotate { track, from, reply } => {
                    let r = d
                        .ca_start(track, from, "requested with certrotd ca rotate")
                        .await
                        .map(|r| r.rotation_id);
                    let _ = reply.send(r);
                }
                Command::CaAbort { track, reply } => {
                    let _ = reply.send(d.ca_abort(track).await);
                }
            },
            Some(()) = next_hangup(&mut hangups) => {
                let _ = reload_now(&mut d, &reload, &mut watcher, &shared);
            }
            _ = tick(&mut watchdog) => { d.live.tick(); }
            _ = shutdown.requested() => {}
        }
    }
    control.stop(&mut d).await;
    if let Some(m) = metrics_server {
        m.stop().await;
    }
    Ok(())
}

/// Why the due certificates are renewed now.
fn why_due(d: &Decision) -> String {
    if d.expired {
        "certificates expired: rotating without the health gate, it is the cure".into()
    } else if d.emergency {
        "inside emergency_before".into()
    } else {
        "inside renew_before".into()
    }
}

/// After a turn: backs off after a failure (when `back_off`), starts afresh after a success, and
/// returns whether a rotation was left open.
fn settle(d: &mut Daemon, turned: Turned, back_off: bool) -> bool {
    d.metered_turn(&turned);
    let now = d.clock.now();
    let mut failure = None;
    let mut left_open = false;
    match turned {
        Turned::Stopping(why) => {
            d.machine_request_stop(why);
            return false;
        }
        Turned::NotStarted(f) => failure = Some(f),
        Turned::Ran(finished) => {
            for f in finished {
                match f {
                    rotate::Finished::Closed {
                        failure: Some(why), ..
                    } => failure = Some(why),
                    rotate::Finished::Closed { failure: None, .. } => {}
                    rotate::Finished::LeftOpen { failure: why, .. } => {
                        left_open = true;
                        failure = Some(why);
                    }
                }
            }
        }
    }
    d.refresh();
    match failure {
        // A rotation left open by a lost lease is finished at the next turn at once (the queue
        // paces it, and a half-installed pair must not wait out a backoff); only when it is left
        // open again does the backoff apply.
        Some(f) if left_open && d.backoff.attempts == 0 => {
            d.backoff
                .failed(now, f.to_string(), Duration::ZERO, Duration::ZERO, 0.0);
            d.go(Mode::Idle);
        }
        // A failed rotation would be retried at once: back off (and say louder as the deadline
        // nears); a rotation left open is retried the same way, once the lease can be had.
        Some(f) if back_off || left_open => {
            let decision = d.decide(now);
            d.back_off(&decision, &f, now);
        }
        Some(_) => d.go(Mode::Idle),
        None => {
            d.backoff.clear();
            d.go(Mode::Idle);
        }
    }
    left_open
}

fn reload_now(
    d: &mut Daemon,
    reload: &Loader,
    watcher: &mut crate::watch::Watcher,
    shared: &Shared,
) -> Result<(), String> {
    let r = d.reload(reload(), shared);
    if r.is_ok()
        && let Err(e) = watcher.set_paths(&d.watched())
    {
        tracing::warn!("updating watched files: {e}");
    }
    r
}

async fn next_hangup(hangups: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match hangups {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
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

impl Daemon {
    /// A stop the state machine took note of during a rotation.
    fn machine_stop(&self) -> Option<&'static str> {
        self.machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop_requested()
    }

    fn machine_request_stop(&self, why: &'static str) {
        self.machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .request_stop(why);
    }
}

/// The control socket's server.
struct Control {
    task: tokio::task::JoinHandle<()>,
    /// The socket it was bound to (a reload may name another; this is the one to remove).
    path: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Control {
    fn spawn(listener: UnixListener, path: PathBuf, shared: Arc<Shared>) -> Control {
        let handler = Arc::new(DaemonHandler(shared));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            crate::control::server::serve(listener, handler, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
        });
        Control { task, path, stop }
    }

    /// Stops: tells systemd, closes the socket and waits for its server to end.
    async fn stop(self, d: &mut Daemon) {
        d.live.notifier.stopping();
        let _ = self.stop.send(true);
        let _ = self.task.await;
        // Gone with the daemon, so `certrotd status` says nothing is running rather than
        // connection refused. Only ours: a socket another daemon serves fails our bind at start.
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), "removing the control socket: {e}");
        }
    }
}
