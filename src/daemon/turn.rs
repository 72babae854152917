//! Taking a turn: a rotation planned, this node's turn waited for (a stop while waiting is
//! prompt), the rotation run with the lease confirmed before every disruptive step and each step
//! mirrored into the holder record, the lease given back. Resuming an open rotation and recovering
//! an all-expired etcd take the same path (the recovery without a lease). Every long wait is driven
//! by [`Liveness::drive`], so the watchdog is fed while the steps keep within their bounds.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::failure::RotationFailure;
use super::handler::Shared;
use super::liveness::{Liveness, Pulse};
use super::mode::{Machine, Mode, Step};
use super::node::Daemon;
use super::peers;
use super::rotate::{self, Env, Fence, Finished, RotationRequest};
use super::shutdown::Shutdown;
use crate::config::Settings;
use crate::control::proto::LeaseStatus;
use crate::history::State;
use crate::lease::{Held, Lease};
use crate::rotation::obtain::{self, Obtained};
use crate::rotation::plan::Plan;
use crate::timefmt::rfc3339;

/// How a turn ended.
#[derive(Debug)]
pub enum Turned {
    /// The rotation (or resumption) ran; what became of each.
    Ran(Vec<Finished>),
    /// It could not start (nothing to do, a refusal, the plan failed).
    NotStarted(RotationFailure),
    /// A stop was requested while waiting for the lease: nothing was started.
    Stopping(&'static str),
}

/// What a turn runs.
enum Job {
    /// A planned rotation.
    Planned {
        /// What and why.
        req: RotationRequest,
        /// Its plan (boxed: a plan is large, and the other job empty).
        plan: Box<crate::rotation::plan::Plan>,
    },
    /// The rotations left open.
    Resume,
}

/// How long one wait for the lease may go without news before it counts as hung: the wait loop
/// looks up its place every few seconds and every retry beats, so only a stuck loop misses this.
const WAIT_BOUND: Duration = Duration::from_secs(60);
/// Margin on top of a step's own timeout before it counts as hung.
const MARGIN: Duration = Duration::from_secs(30);
/// The longest pause between attempts to open the lease.
const OPEN_RETRY_MAX: Duration = Duration::from_secs(10);

/// The longest each step may take before the watchdog is starved.
pub fn bound(settings: &Settings, step: &Step) -> Duration {
    match step {
        Step::Restart(_) => settings.restart.job_timeout + MARGIN,
        Step::Verify => settings.probe.timeout + MARGIN,
        Step::Reload(_) => settings.restart.reload_period + MARGIN,
        // Backups, key generation and atomic writes of a node's files: seconds; a remote CA's
        // answers are bounded by its own timeouts.
        Step::Plan | Step::Obtain | Step::Install | Step::HealthGate => {
            Duration::from_secs(300) + MARGIN
        }
        // A restore, then every consumer restarted and proved again.
        Step::Rollback => {
            Duration::from_secs(60) + settings.restart.job_timeout + settings.probe.timeout
        }
    }
}

impl Daemon {
    /// Plans `req`, waits for this node's turn and runs it.
    pub async fn rotate(
        &mut self,
        shared: &Shared,
        req: RotationRequest,
        reply: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
        shutdown: &mut Shutdown,
    ) -> Turned {
        let planned = {
            let env = self.env(&|_: &Step| {}, Fence::none());
            rotate::plan_for(&env, &req, reply).await
        };
        let mut plan = match planned {
            Ok(p) => p,
            Err(f) => {
                tracing::warn!("rotation not started: {f}");
                return Turned::NotStarted(f);
            }
        };
        let id = plan.id.clone();
        if obtain::needed(&plan) {
            match self.obtain(&plan, &req).await {
                Ok(o) => plan.obtained = Some(Arc::new(o)),
                Err(f) => {
                    tracing::warn!("rotation {id} not started: {f}");
                    return Turned::NotStarted(f);
                }
            }
        }
        if req.cluster_recovery {
            // The cluster is down (this member cannot talk to anyone): there is no lease to take.
            self.go(Mode::Recovering {
                id: id.clone(),
                step: Step::HealthGate,
            });
            self.publish_summary().await;
            let held = Held::new(&self.settings.node_name, 0);
            let finished = self
                .run_leased(
                    shared,
                    None,
                    held,
                    shutdown,
                    Job::Planned {
                        req,
                        plan: Box::new(plan),
                    },
                )
                .await;
            return Turned::Ran(finished);
        }
        let certs = req.selection.certs.clone();
        let job = Job::Planned {
            req,
            plan: Box::new(plan),
        };
        self.leased_turn(shared, id, &certs, shutdown, job).await
    }

    /// Obtains the remote CA's certificates of `plan` before the lease is taken (see
    /// [`obtain`]), feeding the watchdog while the CA answers.
    async fn obtain(
        &mut self,
        plan: &Plan,
        req: &RotationRequest,
    ) -> Result<Obtained, RotationFailure> {
        let step = Step::Obtain;
        self.go(Mode::Waiting {
            id: plan.id.clone(),
            detail: step.to_string(),
        });
        self.live
            .pulse
            .beat(step.to_string(), bound(&self.settings, &step));
        let (p, now) = (plan.clone(), self.clock.now());
        let got = self
            .live
            .drive(tokio::task::spawn_blocking(move || obtain::obtain(&p, now)))
            .await;
        let failure = match got {
            Ok(Ok(o)) => return Ok(o),
            Ok(Err(e)) => RotationFailure::Install(e),
            Err(e) => RotationFailure::NotStarted(format!("obtaining task failed: {e}")),
        };
        // Nothing was changed; an automatic attempt still leaves its Failed record.
        rotate::record_failed_attempt(&self.env(&|_: &Step| {}, Fence::none()), req, &failure);
        Err(failure)
    }

    /// Finishes the rotations a crash or a lost lease left open, under the lease.
    pub async fn resume(&mut self, shared: &Shared, shutdown: &mut Shutdown) -> Turned {
        let open = rotate::interrupted(&self.history);
        let Some(first) = open.first() else {
            return Turned::Ran(Vec::new());
        };
        let (id, certs) = (first.id.clone(), first.certificates.clone());
        self.leased_turn(shared, id, &certs, shutdown, Job::Resume)
            .await
    }

    /// Waits for this node's turn, then runs `job` of rotation `id` under the lease.
    async fn leased_turn(
        &mut self,
        shared: &Shared,
        id: String,
        certs: &[String],
        shutdown: &mut Shutdown,
        job: Job,
    ) -> Turned {
        let Some((lease, held)) = self.take_turn(shared, &id, certs, shutdown).await else {
            let why = shutdown.is_requested().unwrap_or("shutdown requested");
            tracing::info!(
                "{why}: stopping while waiting for the lease; rotation {id} left as it was"
            );
            self.give_back(shared, None, None).await;
            return Turned::Stopping(why);
        };
        self.go(match job {
            Job::Planned { .. } => Mode::Rotating {
                id,
                step: Step::HealthGate,
            },
            Job::Resume => Mode::Resuming {
                id,
                step: Step::Install,
            },
        });
        self.publish_summary().await;
        Turned::Ran(
            self.run_leased(shared, Some(lease), held, shutdown, job)
                .await,
        )
    }

    /// Runs `rotation` with the lease `held` (none for a recovery), the state machine and the
    /// watchdog following its steps, then gives the lease back and reads the node again.
    async fn run_leased(
        &mut self,
        shared: &Shared,
        lease: Option<Arc<dyn Lease>>,
        held: Held,
        shutdown: &mut Shutdown,
        job: Job,
    ) -> Vec<Finished> {
        let (mirror, task) = match &lease {
            Some(l) => {
                let (hook, task) = peers::step_mirror(Arc::clone(l), held.clone());
                (
                    Box::new(hook) as Box<dyn Fn(&str) + Send + Sync>,
                    Some(task),
                )
            }
            None => (
                Box::new(|_: &str| {}) as Box<dyn Fn(&str) + Send + Sync>,
                None,
            ),
        };
        let hook = step_hook(
            Arc::clone(&self.machine),
            self.live.pulse.clone(),
            self.settings.clone(),
            mirror,
        );
        let fence = Fence {
            lease: lease.as_deref(),
            min_ttl: self.settings.lease.ttl / 3,
        };
        let finished = {
            let Daemon {
                settings,
                root,
                state,
                history,
                progress,
                components,
                clock,
                live,
                machine,
                ..
            } = self;
            let env = Env {
                settings,
                root,
                state,
                history: history.as_ref(),
                progress,
                components: components.as_ref(),
                fence,
                on_step: &hook,
                clock: clock.as_ref(),
            };
            let run = async {
                match job {
                    Job::Planned { req, plan } => {
                        vec![rotate::run_planned(&env, req, *plan, held.clone()).await]
                    }
                    Job::Resume => rotate::resume(&env, &held).await,
                }
            };
            carry(live, shutdown, machine, run).await
        };
        drop(hook);
        if let Some(task) = task {
            let _ = task.await;
        }
        self.give_back(shared, lease, Some(held)).await;
        for f in &finished {
            if let Finished::LeftOpen {
                failure: RotationFailure::Fenced { source, .. },
                ..
            } = f
            {
                // A confirmation that failed for the channel's sake: reconnect next time.
                self.peers.invalidate(source);
            }
            let record = f.record();
            if record.state == State::Success {
                // The lease's client certificate may be among those just renewed (or was
                // minted because it had expired): the next use reconnects with what is on disk.
                self.peers.reset();
                if let Some(l) = &self.fixed_lease {
                    self.peers.shared().set(Some(Arc::clone(l)));
                }
            }
            if record.finished_at.is_some() {
                self.last_rotation = Some(record.clone());
            }
        }
        self.refresh();
        // A rotation's key generation and probes ran on several threads and through code the
        // idle daemon will not run again for months: give back the arenas' free memory and the
        // clean code pages (read back from the binary if ever touched again).
        alloc_trim::trim();
        alloc_trim::page_out_code();
        finished
    }

    /// A [`Env`] for planning, outside any turn.
    fn env<'a>(&'a self, hook: &'a (dyn Fn(&Step) + Sync), fence: Fence<'a>) -> Env<'a> {
        Env {
            settings: &self.settings,
            root: &self.root,
            state: &self.state,
            history: self.history.as_ref(),
            progress: &self.progress,
            components: self.components.as_ref(),
            fence,
            on_step: hook,
            clock: self.clock.as_ref(),
        }
    }

    /// Waits for this node's turn, showing its place in status: `Ok(None)` when a stop was
    /// requested meanwhile. An unreachable cluster (etcd restarting, a recovery under way
    /// elsewhere) is waited for, not a failed rotation: the lease is the only way forward.
    async fn take_turn(
        &mut self,
        shared: &Shared,
        rotation_id: &str,
        certs: &[String],
        shutdown: &mut Shutdown,
    ) -> Option<(Arc<dyn Lease>, Held)> {
        let waiting = |detail: String| Mode::Waiting {
            id: rotation_id.to_owned(),
            detail,
        };
        self.go(waiting("waiting for the lease".to_owned()));
        loop {
            let lease = self.open_lease(shared, rotation_id, shutdown).await?;
            match self
                .wait_turn(shared, rotation_id, certs, lease, shutdown)
                .await
            {
                Some(Ok(held)) => return Some(held),
                Some(Err(e)) => {
                    // Reconnect (with the credentials read again) and wait anew.
                    self.peers.invalidate(&e);
                }
                None => return None,
            }
        }
    }

    /// Opens the lease, retrying while it cannot be reached; `None` when a stop was requested.
    async fn open_lease(
        &mut self,
        shared: &Shared,
        rotation_id: &str,
        shutdown: &mut Shutdown,
    ) -> Option<Arc<dyn Lease>> {
        let waiting = |detail: String| Mode::Waiting {
            id: rotation_id.to_owned(),
            detail,
        };
        let mut pause = Duration::from_millis(500);
        loop {
            if let Some(l) = &self.fixed_lease {
                return Some(Arc::clone(l));
            }
            let now = self.clock.now();
            let opened = {
                let Daemon {
                    peers,
                    settings,
                    root,
                    state,
                    live,
                    ..
                } = self;
                live.drive(peers.open(settings, root, &state.dir, now))
                    .await
            };
            match opened {
                Ok(l) => return Some(l),
                Err(e) => {
                    tracing::warn!("{e}; trying again in {pause:?}");
                    let detail = format!("waiting for the lease: {e}");
                    self.go(waiting(detail.clone()));
                    self.live.pulse.beat(detail.clone(), WAIT_BOUND);
                    self.show_lease(
                        shared,
                        LeaseStatus {
                            detail: Some(detail),
                            ..self.lease.clone()
                        },
                    );
                    let slept = {
                        let (live, sd) = (&mut self.live, &mut *shutdown);
                        live.drive(async {
                            tokio::select! {
                                () = tokio::time::sleep(pause) => None,
                                why = sd.requested() => Some(why),
                            }
                        })
                        .await
                    };
                    if slept.is_some() {
                        return None;
                    }
                    pause = (pause * 2).min(OPEN_RETRY_MAX);
                }
            }
        }
    }

    /// Waits in the queue of `lease`: the lease and its held slot, `Some(Err)` when the lease's
    /// channel failed (reconnect and wait again), `None` when a stop was requested.
    async fn wait_turn(
        &mut self,
        shared: &Shared,
        rotation_id: &str,
        certs: &[String],
        lease: Arc<dyn Lease>,
        shutdown: &mut Shutdown,
    ) -> Option<Result<(Arc<dyn Lease>, Held), crate::lease::LeaseError>> {
        let now = self.clock.now();
        let want = peers::want(
            &self.settings.node_name,
            rotation_id,
            &self.inventory,
            certs,
            now,
        );
        self.show_lease(
            shared,
            LeaseStatus {
                backend: lease.describe(),
                detail: Some("waiting for the lease".into()),
                ..LeaseStatus::default()
            },
        );
        self.live
            .pulse
            .beat("waiting for the lease".to_owned(), WAIT_BOUND);
        self.publish_summary().await;
        let turn = {
            let (machine, pulse) = (Arc::clone(&self.machine), self.live.pulse.clone());
            let id = rotation_id.to_owned();
            let on_wait = |line: String| {
                let mut s = shared.status.write().unwrap_or_else(|e| e.into_inner());
                s.lease.detail = Some(line.clone());
                let _ = machine
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .go(Mode::Waiting {
                        id: id.clone(),
                        detail: line.clone(),
                    });
                pulse.beat(line, WAIT_BOUND);
            };
            let mut stop = Box::pin(shutdown.requested());
            let fut = peers::wait_turn(lease.as_ref(), &want, &mut stop, on_wait);
            self.live.drive(fut).await
        };
        match turn {
            peers::Turn::Held(held) => {
                self.show_lease(
                    shared,
                    LeaseStatus {
                        backend: lease.describe(),
                        held: true,
                        holder: Some(held.holder.clone()),
                        since: Some(rfc3339(self.clock.now())),
                        detail: Some(format!("fencing token {}", held.fencing_token)),
                    },
                );
                Some(Ok((lease, held)))
            }
            peers::Turn::Unreachable(e) => Some(Err(e)),
            peers::Turn::Stopping(_) => None,
        }
    }

    /// Gives the lease back and shows it so.
    async fn give_back(
        &mut self,
        shared: &Shared,
        lease: Option<Arc<dyn Lease>>,
        held: Option<Held>,
    ) {
        if let (Some(held), Some(lease)) = (held, lease) {
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
}

/// Told each step: moves the state machine, beats the pulse with the step's bound, and mirrors
/// the step into the lease's holder record.
fn step_hook(
    machine: Arc<Mutex<Machine>>,
    pulse: Pulse,
    settings: Settings,
    mirror: Box<dyn Fn(&str) + Send + Sync>,
) -> impl Fn(&Step) + Send + Sync {
    move |step: &Step| {
        let line = {
            let mut m = machine.lock().unwrap_or_else(|e| e.into_inner());
            let _ = m.step(step.clone());
            m.mode().to_string()
        };
        pulse.beat(line, bound(&settings, step));
        mirror(step.name());
    }
}

/// Drives a rotation to its end while feeding the watchdog; a stop requested meanwhile is noted
/// in the machine and taken once the rotation is over: stopping half-way would leave the node
/// half-installed or its components on certificates no longer on disk.
async fn carry<T>(
    live: &mut Liveness,
    shutdown: &mut Shutdown,
    machine: &Mutex<Machine>,
    fut: impl Future<Output = T>,
) -> T {
    let noted = async {
        tokio::pin!(fut);
        let mut stopping = false;
        loop {
            tokio::select! {
                out = &mut fut => return out,
                why = shutdown.requested(), if !stopping => {
                    stopping = true;
                    let mut m = machine.lock().unwrap_or_else(|e| e.into_inner());
                    m.request_stop(why);
                    let id = m.mode().rotation_id().unwrap_or_default().to_owned();
                    tracing::info!(rotation_id = %id, "{why}: finishing rotation {id} first, then stopping");
                }
            }
        }
    };
    live.drive(noted).await
}
