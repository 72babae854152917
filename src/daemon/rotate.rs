//! One rotation as the daemon runs it: plan under the rotation lock, check the components are
//! healthy (unless certificates already expired: rotating is the cure), install crash-safely,
//! restart exactly the consumers, prove each serves its new certificate and is healthy, and on
//! failure put the backup back and restart again. Every step is recorded in history and the
//! journal.
//!
//! The lease is confirmed in etcd before every disruptive step (the install, each restart, each
//! restart after a rollback); a step whose confirmation fails does not happen, and the rotation
//! is left open ([`Finished::LeftOpen`]): history keeps it Initiated, and the next turn with the
//! lease finishes it ([`resume`]): rolls its files forward or back, restarts and proves its
//! consumers. Restoring a backup never waits for the lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use super::clock::Clock;
use super::components::Components;
use super::consumers::{Installed, Serving, health_gate, prove_all, restart_all};
use super::engine::{consumers, install, make_plan, roll_back};
use super::failure::RotationFailure;
use super::mode::Step;
use super::reload::reload_or_restart;
pub use super::resume::{finish_interrupted_locked, interrupted, record_quarantined, resume};
use super::status::Underway;
use crate::config::Settings;
use crate::events;
use crate::history::History;
use crate::history::{Record, State};
use crate::lease::{Held, Lease};
use crate::root::Root;
use crate::rotation::plan::Plan;
use crate::rotation::{Selection, StateDirs};

/// What to rotate and why.
#[derive(Debug, Clone)]
pub struct RotationRequest {
    /// The certificates.
    pub selection: Selection,
    /// Why (for history and the journal).
    pub why: String,
    /// Skip the health gate: certificates are already expired, so the components cannot be
    /// healthy, and rotating is the cure.
    pub skip_health_gate: bool,
    /// A recovery (see [`super::cluster_recovery`]): runs without the lease, records no fencing token,
    /// and is never rolled back onto the expired certificates it replaces.
    pub cluster_recovery: bool,
}

/// The rotation in progress, shared with `certrotd status`.
pub type Progress = Arc<Mutex<Option<Underway>>>;

/// The lease a rotation runs under: `None` for a recovery, which has none.
#[derive(Clone, Copy)]
pub struct Fence<'a> {
    /// The lease to confirm with.
    pub lease: Option<&'a dyn Lease>,
    /// The TTL that must be left for a disruptive step to start.
    pub min_ttl: Duration,
}

impl Fence<'_> {
    /// No lease: planning, and a recovery.
    pub fn none() -> Self {
        Fence {
            lease: None,
            min_ttl: Duration::ZERO,
        }
    }
}

/// Where and how the daemon rotates.
pub struct Env<'a> {
    /// The configuration.
    pub settings: &'a Settings,
    /// The node root.
    pub root: &'a Root,
    /// The state directory.
    pub state: &'a StateDirs,
    /// Activity records.
    pub history: &'a History,
    /// The rotation in progress.
    pub progress: &'a Progress,
    /// The node's components.
    pub components: &'a dyn Components,
    /// The lease, confirmed before every disruptive step.
    pub fence: Fence<'a>,
    /// Told each step as it begins (the daemon moves its state machine, feeds its pulse and
    /// mirrors it into the lease's holder record).
    pub on_step: &'a (dyn Fn(&Step) + Sync),
    /// The time.
    pub clock: &'a dyn Clock,
}

/// How a rotation ended.
#[derive(Debug)]
pub enum Finished {
    /// Closed in history as Success (no failure) or Failed.
    Closed {
        /// Its final record.
        record: Record,
        /// Why it failed.
        failure: Option<RotationFailure>,
    },
    /// Stopped half-way by a lost lease: history keeps it Initiated and the next turn finishes it.
    LeftOpen {
        /// Its record, still Initiated.
        record: Record,
        /// What stopped it.
        failure: RotationFailure,
    },
}

impl Finished {
    /// Its record.
    pub fn record(&self) -> &Record {
        match self {
            Finished::Closed { record, .. } | Finished::LeftOpen { record, .. } => record,
        }
    }
}

/// Plans a rotation under the rotation lock; `started` learns its id (or why there is none).
/// The daemon plans before it waits for the lease, so the lease's holder record and queue can
/// name the rotation, and `certrotd rotate` answers without waiting its turn.
pub async fn plan_for(
    env: &Env<'_>,
    req: &RotationRequest,
    started: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
) -> Result<Plan, RotationFailure> {
    let planned = make_plan(env, &req.selection, env.clock.now()).await;
    match (started, &planned) {
        (Some(tx), _) => {
            let _ = tx.send(planned.as_ref().map(|p| p.id.clone()).map_err(Clone::clone));
        }
        (None, Err(why)) => record_not_started(env, req, why, env.clock.now()),
        (None, Ok(_)) => {}
    }
    planned.map_err(RotationFailure::NotStarted)
}

/// An attempt that failed before anything was changed (the remote CA refused or could not be
/// reached): recorded as Failed, like one that could not be planned.
pub fn record_failed_attempt(env: &Env<'_>, req: &RotationRequest, failure: &RotationFailure) {
    record_not_started(env, req, &failure.to_string(), env.clock.now());
}

/// An automatic rotation that could not even be planned (a remote CA's auth key unreadable, a
/// certificate refused) leaves a Failed record, so history shows every attempt the backoff
/// makes, not only those that got as far as building. (A requested one answers its caller.)
pub(super) fn record_not_started(
    env: &Env<'_>,
    req: &RotationRequest,
    why: &str,
    now: OffsetDateTime,
) {
    let id = crate::rotation::plan::new_id(now);
    let recorded = env
        .history
        .start(
            &id,
            &env.settings.node_name,
            req.selection.certs.clone(),
            Some(req.why.clone()),
            now,
        )
        .and_then(|_| {
            env.history.update(
                &id,
                State::Failed,
                Some(RotationFailure::NotStarted(why.to_owned()).to_string()),
                now,
            )
        });
    if let Err(e) = recorded {
        tracing::error!("recording rotation {id} in history: {e:#}");
    }
}

/// Runs a planned rotation with `lease` held (or, for a recovery, a token-less stand-in).
pub async fn run_planned(env: &Env<'_>, req: RotationRequest, plan: Plan, lease: Held) -> Finished {
    let names: Vec<String> = plan.items.iter().map(|i| i.name().to_owned()).collect();
    let node = env.settings.node_name.clone();
    let started = env
        .history
        .start(
            &plan.id,
            &node,
            names.clone(),
            Some(req.why.clone()),
            env.clock.now(),
        )
        .map_err(|e| format!("{e:#}"));
    let mut record = match started {
        Ok(r) => r,
        Err(e) => {
            // Without a record nothing may be installed: a crash would leave no trace to resume.
            tracing::error!("rotation {} not started: recording it failed: {e}", plan.id);
            return closed_without_record(&plan.id, &node, names, e, env.clock.now());
        }
    };
    if req.cluster_recovery {
        // No lease was taken: a token would claim an order this rotation never had.
        record.recovery = true;
        events::recovery(&node, &plan.id, &names, &req.why);
        // Marked at once, so a crash part-way still leaves the record saying it was a recovery.
        if let Err(e) = env.history.append(&record) {
            tracing::error!("recording recovery {} in history: {e:#}", record.id);
        }
    } else {
        record.fencing_token = Some(lease.fencing_token);
    }
    events::rotation_started(&node, &plan.id, &names, &req.why);
    let consumers = consumers(&plan);

    step(env, &plan.id, &names, Step::HealthGate);
    if !req.skip_health_gate
        && let Err(failure) = health_gate(env, &consumers).await
    {
        return finish(env, record, Some(failure));
    }

    step(env, &plan.id, &names, Step::Install);
    if let Err(failure) = confirm(env, &lease, &Step::Install).await {
        // Nothing was installed: the rotation is over, and the next turn plans afresh.
        return finish(env, record, Some(failure));
    }
    record.disruptive_from = Some(env.clock.now());
    let report = match install(env, plan.clone(), lease.clone()).await {
        Ok(r) => r,
        Err(e) => {
            record.disruptive_to = Some(env.clock.now());
            let failure = RotationFailure::Install(e);
            if failure.leaves_open() {
                return leave_open(env, record, failure);
            }
            return finish(env, record, Some(failure));
        }
    };
    let installed = Installed::from_report(&report, &plan);
    restart_and_prove(env, &plan.id, &installed, &lease, record).await
}

/// A rotation whose history record could not even be started.
fn closed_without_record(
    id: &str,
    node: &str,
    certificates: Vec<String>,
    why: String,
    now: OffsetDateTime,
) -> Finished {
    let failure = RotationFailure::NotStarted(format!("recording it in history failed: {why}"));
    Finished::Closed {
        record: Record {
            state: State::Failed,
            finished_at: Some(now),
            ..Record::initiated(id, node, certificates, Some(failure.to_string()), now)
        },
        failure: Some(failure),
    }
}

/// Everything after the install: let the consumers reload by themselves where they can, restart
/// the others (see [`super::reload`]), and prove they serve the new certificates; otherwise roll back, restart again and prove they serve the old ones. Finishes
/// the record, or leaves it open when the lease is lost before a restart.
pub(super) async fn restart_and_prove(
    env: &Env<'_>,
    id: &str,
    installed: &Installed,
    lease: &Held,
    mut record: Record,
) -> Finished {
    let names = record.certificates.clone();
    let outcome = reload_or_restart(env, id, installed, lease, &mut record).await;
    let failure = match outcome {
        Ok(()) => {
            record.disruptive_to = Some(env.clock.now());
            for (name, path, cert) in &installed.renewed {
                events::rotated(&record.node, id, name, path, cert.not_after);
            }
            return finish(env, record, None);
        }
        // A restart that did not happen for want of the lease: the new files stay (they are
        // valid), and the next holder restarts and proves.
        Err(f) if f.leaves_open() => {
            record.disruptive_to = Some(env.clock.now());
            return leave_open(env, record, f);
        }
        Err(f) => f,
    };
    record.disruptive_to = Some(env.clock.now());
    if record.recovery {
        // The previous certificates are expired: putting them back cannot bring anything up.
        // Most likely the member is waiting for peers that are still recovering.
        return finish(
            env,
            record,
            Some(RotationFailure::RecoveryUnproved(Box::new(failure))),
        );
    }
    step(env, id, &names, Step::Rollback);
    // The record must say whether the components are back on the old certificates: a
    // rollback whose restart failed (or whose component stays down) leaves the node broken,
    // and the operator has to know. After a failed restore the files are not known to be
    // whole, so nothing is restarted onto them.
    let cause = Box::new(failure);
    let result = match roll_back(env, id).await {
        Err(rollback) => RotationFailure::RollbackFailed { cause, rollback },
        Ok(()) => match restart_onto_disk(env, id, &names, installed, lease).await {
            Ok(()) => RotationFailure::RolledBack { cause },
            Err(after) if after.leaves_open() => {
                // Rolled back on disk, but not restarted onto it: the next turn does that.
                let failure = RotationFailure::RolledBackUnproved {
                    cause,
                    after: Box::new(after),
                };
                record.disruptive_to = Some(env.clock.now());
                return leave_open(env, record, failure);
            }
            Err(after) => RotationFailure::RolledBackUnproved {
                cause,
                after: Box::new(after),
            },
        },
    };
    record.disruptive_to = Some(env.clock.now());
    finish(env, record, Some(result))
}

/// Restarts the consumers onto the certificates on disk now, and proves they serve them.
pub(super) async fn restart_onto_disk(
    env: &Env<'_>,
    id: &str,
    names: &[String],
    installed: &Installed,
    lease: &Held,
) -> Result<(), RotationFailure> {
    restart_all(env, id, names, &installed.consumers, lease).await?;
    prove_all(env, installed, Serving::OnDisk).await
}

/// Marks the step: the daemon's hook first (state machine, pulse, lease mirror), then the
/// progress status shows.
pub(super) fn step(env: &Env<'_>, id: &str, names: &[String], step: Step) {
    (env.on_step)(&step);
    let now = env.clock.now();
    let mut p = env.progress.lock().unwrap_or_else(|e| e.into_inner());
    let started_at = p
        .as_ref()
        .filter(|p| p.id == id)
        .map(|p| p.started_at)
        .unwrap_or(now);
    *p = Some(Underway {
        id: id.to_owned(),
        step,
        started_at,
        certificates: names.to_vec(),
    });
}

/// Confirms the lease in etcd before a disruptive step: this node still holds its slot with its
/// token, with enough TTL left. A recovery has no lease to confirm.
pub(super) async fn confirm(
    env: &Env<'_>,
    held: &Held,
    step: &Step,
) -> Result<(), RotationFailure> {
    let Some(lease) = env.fence.lease else {
        return Ok(());
    };
    let what = step.to_string();
    super::peers::confirm(lease, held, &what, env.fence.min_ttl)
        .await
        .map_err(|source| RotationFailure::Fenced { step: what, source })
}

/// Records the end of a rotation and clears the progress.
pub(super) fn finish(
    env: &Env<'_>,
    mut record: Record,
    failure: Option<RotationFailure>,
) -> Finished {
    *env.progress.lock().unwrap_or_else(|e| e.into_inner()) = None;
    record.finished_at = Some(env.clock.now());
    match &failure {
        None => record.state = State::Success,
        Some(f) => {
            let reason = f.to_string();
            events::rotation_failed(&record.node, &record.id, &record.certificates, &reason);
            record.state = State::Failed;
            record.reason = Some(reason);
        }
    }
    if let Err(e) = env.history.append(&record) {
        tracing::error!("recording rotation {} in history: {e:#}", record.id);
    }
    Finished::Closed { record, failure }
}

/// Keeps a rotation open: history says Initiated, with why it stopped; the next turn finishes it.
pub(super) fn leave_open(env: &Env<'_>, mut record: Record, failure: RotationFailure) -> Finished {
    *env.progress.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let reason = format!("{failure}; the next turn with the lease finishes it");
    tracing::warn!(rotation_id = %record.id, "rotation {} left open: {reason}", record.id);
    record.state = State::Initiated;
    record.reason = Some(reason);
    if let Err(e) = env.history.append(&record) {
        tracing::error!("recording rotation {} in history: {e:#}", record.id);
    }
    Finished::LeftOpen { record, failure }
}
