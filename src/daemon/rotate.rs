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

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::task::spawn_blocking;

use super::clock::Clock;
use super::components::{Components, Expect};
use super::failure::RotationFailure;
use super::mode::Step;
use crate::config::Settings;
use crate::control::proto::{HistoryRecord, HistoryState, RotationProgress};
use crate::events;
use crate::history::History;
use crate::inventory::Inventory;
use crate::lease::{Held, Lease};
use crate::pki::cert::Cert;
use crate::pki::layout::Component;
use crate::report::rfc3339;
use crate::root::Root;
use crate::rotation::execute::{self, Report};
use crate::rotation::journal::{Journal, Phase};
use crate::rotation::plan::{self, Plan, PlanOptions};
use crate::rotation::{
    Context, Guard, RotationError, Selection, StateDirs, Unguarded, lock, recover, select,
};

/// What to rotate and why.
#[derive(Debug, Clone)]
pub struct Request {
    /// The certificates.
    pub selection: Selection,
    /// Why (for history and the journal).
    pub why: String,
    /// Skip the health gate: certificates are already expired, so the components cannot be
    /// healthy, and rotating is the cure.
    pub skip_health_gate: bool,
    /// A recovery (see [`super::recovery`]): runs without the lease, records no fencing token,
    /// and is never rolled back onto the expired certificates it replaces.
    pub recovery: bool,
}

/// The rotation in progress, shared with `certrotd status`.
pub type Progress = Arc<Mutex<Option<RotationProgress>>>;

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
        record: HistoryRecord,
        /// Why it failed.
        failure: Option<RotationFailure>,
    },
    /// Stopped half-way by a lost lease: history keeps it Initiated and the next turn finishes it.
    LeftOpen {
        /// Its record, still Initiated.
        record: HistoryRecord,
        /// What stopped it.
        failure: RotationFailure,
    },
}

impl Finished {
    /// Its record.
    pub fn record(&self) -> &HistoryRecord {
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
    req: &Request,
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
pub fn record_failed_attempt(env: &Env<'_>, req: &Request, failure: &RotationFailure) {
    record_not_started(env, req, &failure.to_string(), env.clock.now());
}

/// An automatic rotation that could not even be planned (a remote CA's auth key unreadable, a
/// certificate refused) leaves a Failed record, so history shows every attempt the backoff
/// makes, not only those that got as far as building. (A requested one answers its caller.)
fn record_not_started(env: &Env<'_>, req: &Request, why: &str, now: OffsetDateTime) {
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
                HistoryState::Failed,
                Some(RotationFailure::NotStarted(why.to_owned()).to_string()),
                now,
            )
        });
    if let Err(e) = recorded {
        tracing::error!("recording rotation {id} in history: {e:#}");
    }
}

/// Runs a planned rotation with `lease` held (or, for a recovery, a token-less stand-in).
pub async fn run_planned(env: &Env<'_>, req: Request, plan: Plan, lease: Held) -> Finished {
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
    if req.recovery {
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
    record.disruptive_from = Some(rfc3339(env.clock.now()));
    let report = match install(env, plan.clone(), lease.clone()).await {
        Ok(r) => r,
        Err(e) => {
            record.disruptive_to = Some(rfc3339(env.clock.now()));
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
        record: HistoryRecord {
            id: id.to_owned(),
            node: node.to_owned(),
            certificates,
            state: HistoryState::Failed,
            started_at: rfc3339(now),
            finished_at: Some(rfc3339(now)),
            reason: Some(failure.to_string()),
            disruptive_from: None,
            disruptive_to: None,
            fencing_token: None,
            recovery: false,
        },
        failure: Some(failure),
    }
}

/// What an installed rotation changed: the components that must be restarted, and the new
/// certificates (name, path, certificate) they must be seen serving.
struct Installed {
    consumers: Vec<Component>,
    renewed: Vec<(String, PathBuf, Cert)>,
}

impl Installed {
    fn from_report(report: &Report, plan: &Plan) -> Installed {
        Installed {
            consumers: report.consumers.clone(),
            renewed: report
                .renewed
                .iter()
                .filter_map(|r| {
                    let name = r.names.first()?;
                    let item = plan.items.iter().find(|i| i.names.contains(name))?;
                    Some((name.clone(), item.cert_path.clone(), r.cert.clone()))
                })
                .collect(),
        }
    }

    /// From a journal, with the certificates as the inventory reads them now.
    fn from_journal(j: &Journal, inv: &Inventory) -> Installed {
        Installed {
            consumers: j.consumers.clone(),
            renewed: j
                .certificates
                .iter()
                .filter_map(|n| {
                    let e = inv.get(n)?;
                    Some((n.clone(), e.path.clone(), e.cert.clone()?))
                })
                .collect(),
        }
    }
}

/// Everything after the install: restart the consumers and prove they serve the new
/// certificates; otherwise roll back, restart again and prove they serve the old ones. Finishes
/// the record, or leaves it open when the lease is lost before a restart.
async fn restart_and_prove(
    env: &Env<'_>,
    id: &str,
    installed: &Installed,
    lease: &Held,
    mut record: HistoryRecord,
) -> Finished {
    let names = record.certificates.clone();
    let outcome = match restart_all(env, id, &names, &installed.consumers, lease).await {
        Ok(()) => {
            step(env, id, &names, Step::Verify);
            prove_all(env, installed, Serving::Renewed).await
        }
        Err(e) => Err(e),
    };
    let failure = match outcome {
        Ok(()) => {
            record.disruptive_to = Some(rfc3339(env.clock.now()));
            for (name, path, cert) in &installed.renewed {
                events::rotated(&record.node, id, name, path, cert.not_after);
            }
            return finish(env, record, None);
        }
        // A restart that did not happen for want of the lease: the new files stay (they are
        // valid), and the next holder restarts and proves.
        Err(f) if f.leaves_open() => {
            record.disruptive_to = Some(rfc3339(env.clock.now()));
            return leave_open(env, record, f);
        }
        Err(f) => f,
    };
    record.disruptive_to = Some(rfc3339(env.clock.now()));
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
                record.disruptive_to = Some(rfc3339(env.clock.now()));
                return leave_open(env, record, failure);
            }
            Err(after) => RotationFailure::RolledBackUnproved {
                cause,
                after: Box::new(after),
            },
        },
    };
    record.disruptive_to = Some(rfc3339(env.clock.now()));
    finish(env, record, Some(result))
}

/// Restarts the consumers onto the certificates on disk now, and proves they serve them.
async fn restart_onto_disk(
    env: &Env<'_>,
    id: &str,
    names: &[String],
    installed: &Installed,
    lease: &Held,
) -> Result<(), RotationFailure> {
    restart_all(env, id, names, &installed.consumers, lease).await?;
    prove_all(env, installed, Serving::OnDisk).await
}

/// Finishes the rotations a crash, SIGKILL or a lost lease left open: those history still shows
/// as Initiated. First their files are made all-old or all-new (recovery, now with the lease as
/// its guard); then a committed rotation is restarted and proved (and rolled back if that fails),
/// as it would have been; one rolled back after installing has its components restarted onto
/// the old certificates; one that installed nothing is only recorded.
pub async fn resume(env: &Env<'_>, lease: &Held) -> Vec<Finished> {
    let mut finished = Vec::new();
    let open = interrupted(env.history);
    if open.is_empty() {
        return finished;
    }
    if let Err(e) = recover_guarded(env, lease).await {
        tracing::error!("finishing interrupted rotations: {e}");
    }
    let inv = match inventory(env).await {
        Ok(inv) => inv,
        Err(e) => {
            tracing::error!("finishing interrupted rotations: {e}");
            return finished;
        }
    };
    for mut record in open {
        let id = record.id.clone();
        let names = record.certificates.clone();
        if !record.recovery {
            record.fencing_token = Some(lease.fencing_token);
        }
        tracing::warn!(rotation_id = %id, "finishing rotation {id}, which was interrupted");
        let journal = Journal::load(&env.state.rotation(&id));
        let done = match journal {
            Ok(Some(j)) if j.phase == Phase::Committed => {
                record.reason = Some(format!(
                    "{}; interrupted after installing, finished by the next start",
                    record.reason.as_deref().unwrap_or("rotation")
                ));
                // The disruption this start causes: the restarts and proof, under its own lease.
                record.disruptive_from = Some(rfc3339(env.clock.now()));
                record.disruptive_to = None;
                let installed = Installed::from_journal(&j, &inv);
                restart_and_prove(env, &id, &installed, lease, record).await
            }
            Ok(Some(j)) if j.phase == Phase::RolledBack && j.installed_anything() => {
                record.disruptive_from = Some(rfc3339(env.clock.now()));
                let installed = Installed::from_journal(&j, &inv);
                let after = restart_onto_disk(env, &id, &names, &installed, lease).await;
                record.disruptive_to = Some(rfc3339(env.clock.now()));
                match after {
                    Ok(()) => finish(env, record, Some(RotationFailure::InterruptedRolledBack)),
                    Err(f) if f.leaves_open() => leave_open(env, record, f),
                    Err(f) => finish(
                        env,
                        record,
                        Some(RotationFailure::InterruptedUnproved(Box::new(f))),
                    ),
                }
            }
            // Still unfinished after recovery: recovery could not run (the lease was lost
            // again, or it failed); the next turn tries again.
            Ok(Some(j)) if !j.phase.is_final() => leave_open(
                env,
                record,
                RotationFailure::NotStarted(format!(
                    "its journal still says {} after recovery",
                    j.phase.as_str()
                )),
            ),
            Ok(_) => finish(env, record, Some(RotationFailure::InterruptedBeforeInstall)),
            Err(e) => finish(
                env,
                record,
                Some(RotationFailure::JournalUnreadable(e.to_string())),
            ),
        };
        let left_open = matches!(done, Finished::LeftOpen { .. });
        finished.push(done);
        if left_open {
            // The lease is gone: the rest waits for the next turn too.
            break;
        }
    }
    finished
}

/// The rotations history shows as Initiated: started, never finished.
pub fn interrupted(history: &History) -> Vec<HistoryRecord> {
    match history.read(None) {
        Ok(h) => h
            .records
            .into_iter()
            .filter(|r| r.state == HistoryState::Initiated)
            .collect(),
        Err(e) => {
            tracing::warn!("reading history for interrupted rotations: {e:#}");
            Vec::new()
        }
    }
}

/// Marks the step: the daemon's hook first (state machine, pulse, lease mirror), then the
/// progress status shows.
fn step(env: &Env<'_>, id: &str, names: &[String], step: Step) {
    (env.on_step)(&step);
    let now = env.clock.now();
    let mut p = env.progress.lock().unwrap_or_else(|e| e.into_inner());
    let started_at = p
        .as_ref()
        .filter(|p| p.id == id)
        .map(|p| p.started_at.clone())
        .unwrap_or_else(|| rfc3339(now));
    *p = Some(RotationProgress {
        id: id.to_owned(),
        step: step.name().to_owned(),
        started_at,
        certificates: names.to_vec(),
    });
}

/// Confirms the lease in etcd before a disruptive step: this node still holds its slot with its
/// token, with enough TTL left. A recovery has no lease to confirm.
async fn confirm(env: &Env<'_>, held: &Held, step: &Step) -> Result<(), RotationFailure> {
    let Some(lease) = env.fence.lease else {
        return Ok(());
    };
    let what = step.to_string();
    super::peers::confirm(lease, held, &what, env.fence.min_ttl)
        .await
        .map_err(|source| RotationFailure::Fenced { step: what, source })
}

/// Records the end of a rotation and clears the progress.
fn finish(env: &Env<'_>, mut record: HistoryRecord, failure: Option<RotationFailure>) -> Finished {
    *env.progress.lock().unwrap_or_else(|e| e.into_inner()) = None;
    record.finished_at = Some(rfc3339(env.clock.now()));
    match &failure {
        None => record.state = HistoryState::Success,
        Some(f) => {
            let reason = f.to_string();
            events::rotation_failed(&record.node, &record.id, &record.certificates, &reason);
            record.state = HistoryState::Failed;
            record.reason = Some(reason);
        }
    }
    if let Err(e) = env.history.append(&record) {
        tracing::error!("recording rotation {} in history: {e:#}", record.id);
    }
    Finished::Closed { record, failure }
}

/// Keeps a rotation open: history says Initiated, with why it stopped; the next turn finishes it.
fn leave_open(env: &Env<'_>, mut record: HistoryRecord, failure: RotationFailure) -> Finished {
    *env.progress.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let reason = format!("{failure}; the next turn with the lease finishes it");
    tracing::warn!(rotation_id = %record.id, "rotation {} left open: {reason}", record.id);
    record.state = HistoryState::Initiated;
    record.reason = Some(reason);
    if let Err(e) = env.history.append(&record) {
        tracing::error!("recording rotation {} in history: {e:#}", record.id);
    }
    Finished::LeftOpen { record, failure }
}

/// Plans under the rotation lock, after finishing or rolling back anything a crash left.
async fn make_plan(env: &Env<'_>, sel: &Selection, now: OffsetDateTime) -> Result<Plan, String> {
    let (settings, root, state, sel) = (
        env.settings.clone(),
        env.root.clone(),
        env.state.clone(),
        sel.clone(),
    );
    let history = History::for_settings(&settings);
    spawn_blocking(move || {
        let _lock = lock::acquire(&state).map_err(|e| format!("{e:#}"))?;
        let recovered = recover_locked(&root, &state, &settings, &Unguarded, now)?;
        record_quarantined(&history, &settings.node_name, &recovered, now);
        still_open(&recovered)?;
        let inv = crate::commands::check::inventory(&settings);
        let selected = select::select(&inv, &sel).map_err(|e| e.to_string())?;
        let opts = PlanOptions {
            key_policy: settings.renew.key_policy,
            validity: settings.renew.validity,
            force: false,
            issuer: settings.issuer.clone(),
        };
        let plan = plan::make(&inv, &selected, &root, &opts, now);
        if let Some(r) = plan.refused.first() {
            return Err(format!("refused to renew {}: {}", r.name, r.reason));
        }
        if plan.items.is_empty() {
            return Err("nothing to renew".to_owned());
        }
        Ok(plan)
    })
    .await
    .map_err(|e| format!("planning task failed: {e}"))?
}

/// Finishes or rolls back rotations a crash interrupted (the caller holds the lock), asking
/// `guard` before every install of a roll-forward. Returns what it did to each; a rotation it
/// could not recover stays open (`Action::Failed`), one whose journal cannot be trusted is
/// quarantined (`Action::Quarantined`), and the others go on either way.
pub fn recover_locked(
    root: &Root,
    state: &StateDirs,
    settings: &Settings,
    guard: &dyn Guard,
    now: OffsetDateTime,
) -> Result<Vec<recover::Recovered>, String> {
    let ctx = Context {
        root,
        state,
        backups_keep: settings.renew.backups_keep,
        guard,
    };
    let recovered = recover::recover_at(&ctx, now).map_err(|e| format!("{e:#}"))?;
    for r in &recovered {
        tracing::warn!(rotation_id = %r.id, "recovered interrupted rotation {}: {:?}", r.id, r.action);
    }
    Ok(recovered)
}

/// Closes in history what recovery quarantined: a Failed record (started if history had none)
/// naming the journal and where it went, and an error event. The daemon goes on with the rest.
pub fn record_quarantined(
    history: &History,
    node: &str,
    recovered: &[recover::Recovered],
    now: OffsetDateTime,
) {
    for r in recovered {
        let recover::Action::Quarantined { reason, moved_to } = &r.action else {
            continue;
        };
        let why = format!(
            "{}; it was moved to {} and none of its files was touched",
            RotationFailure::JournalUnreadable(reason.clone()),
            moved_to.display()
        );
        events::rotation_failed(node, &r.id, &[], &why);
        let known = history
            .read(None)
            .map(|h| h.records.iter().any(|x| x.id == r.id))
            .unwrap_or(false);
        let recorded = if known {
            history.update(&r.id, HistoryState::Failed, Some(why), now)
        } else {
            history
                .start(
                    &r.id,
                    node,
                    Vec::new(),
                    Some("quarantined by recovery".into()),
                    now,
                )
                .and_then(|_| history.update(&r.id, HistoryState::Failed, Some(why), now))
        };
        if let Err(e) = recorded {
            tracing::error!("recording quarantined rotation {} in history: {e:#}", r.id);
        }
    }
}

/// Refuses to plan while recovery left a rotation open: it is finished first, under the lease.
fn still_open(recovered: &[recover::Recovered]) -> Result<(), String> {
    match recovered.iter().find_map(|r| match &r.action {
        recover::Action::Failed { error } => Some((r.id.as_str(), error.as_str())),
        _ => None,
    }) {
        Some((id, error)) => Err(format!(
            "rotation {id} is still open (recovering it failed: {error}); it is finished first"
        )),
        None => Ok(()),
    }
}

/// Recovery under the lock with the lease as its guard (a roll-forward installs files).
async fn recover_guarded(env: &Env<'_>, lease: &Held) -> Result<(), String> {
    let (settings, root, state, lease) = (
        env.settings.clone(),
        env.root.clone(),
        env.state.clone(),
        lease.clone(),
    );
    let now = env.clock.now();
    let history = History::for_settings(&settings);
    spawn_blocking(move || {
        let _lock = lock::acquire(&state).map_err(|e| format!("{e:#}"))?;
        let recovered = recover_locked(&root, &state, &settings, &lease, now)?;
        record_quarantined(&history, &settings.node_name, &recovered, now);
        still_open(&recovered)
    })
    .await
    .map_err(|e| format!("recovery task failed: {e}"))?
}

async fn install(env: &Env<'_>, plan: Plan, lease: Held) -> Result<Report, RotationError> {
    under_lock(env, Box::new(lease), move |ctx| execute::run(ctx, &plan)).await
}

/// Puts a rotation's backup back. Never guarded by the lease: a rollback makes the node whole
/// again, and waiting for a lease that may be gone would leave it broken.
async fn roll_back(env: &Env<'_>, id: &str) -> Result<(), RotationError> {
    let id = id.to_owned();
    under_lock(env, Box::new(Unguarded), move |ctx| {
        recover::restore(ctx, &id).map(|_| ())
    })
    .await
}

/// Runs a blocking rotation step on the blocking pool, under the rotation lock, with `guard`.
async fn under_lock<T: Send + 'static>(
    env: &Env<'_>,
    guard: Box<dyn Guard + Send>,
    step: impl FnOnce(&Context<'_>) -> Result<T, RotationError> + Send + 'static,
) -> Result<T, RotationError> {
    let (settings, root, state) = (env.settings.clone(), env.root.clone(), env.state.clone());
    spawn_blocking(move || {
        let _lock = lock::acquire(&state)?;
        let ctx = Context {
            root: &root,
            state: &state,
            backups_keep: settings.renew.backups_keep,
            guard: guard.as_ref(),
        };
        step(&ctx)
    })
    .await
    .map_err(|e| RotationError::Io {
        op: "run the rotation task for",
        path: env.state.dir.clone(),
        source: std::io::Error::other(e.to_string()),
    })?
}

fn consumers(plan: &Plan) -> Vec<Component> {
    let mut c: Vec<Component> = plan
        .items
        .iter()
        .flat_map(|i| i.consumers.iter().copied())
        .collect();
    c.sort();
    c.dedup();
    c
}

/// Restarts each consumer in turn, confirming the lease before each: a restart is the
/// disruption itself, and with the lease lost another node may be disrupting its own now.
async fn restart_all(
    env: &Env<'_>,
    id: &str,
    names: &[String],
    components: &[Component],
    lease: &Held,
) -> Result<(), RotationFailure> {
    for &c in components {
        if !env.components.restarts(c) {
            tracing::info!(rotation_id = %id, "not restarting {c}: restarts of its kind are off in [restart]");
            continue;
        }
        let s = Step::Restart(c);
        step(env, id, names, s.clone());
        confirm(env, lease, &s).await?;
        let outcome = env
            .components
            .restart(c, env.clock.now())
            .await
            .map_err(|source| RotationFailure::Restart {
                component: c,
                source,
            })?;
        events::restarted(&env.settings.node_name, id, &c.to_string(), &outcome);
    }
    Ok(())
}

/// Before a planned rotation, the components it will restart must be healthy: rotating a sick
/// control plane only adds a second problem.
async fn health_gate(env: &Env<'_>, components: &[Component]) -> Result<(), RotationFailure> {
    for &c in components {
        if !env.components.restarts(c) {
            continue;
        }
        env.components
            .healthy(c)
            .await
            .map_err(|source| RotationFailure::Unhealthy {
                component: c,
                source,
            })?;
    }
    Ok(())
}

/// Which certificates a restarted component must be seen serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serving {
    /// The rotation's new ones.
    Renewed,
    /// Those on disk now (the old ones again, after a rollback).
    OnDisk,
}

async fn inventory(env: &Env<'_>) -> Result<Inventory, String> {
    let settings = env.settings.clone();
    spawn_blocking(move || crate::commands::check::inventory(&settings))
        .await
        .map_err(|e| format!("inventory after install: {e}"))
}

/// Proves every restarted component serves its new certificates (or, after a rollback, those
/// on disk) and is healthy.
async fn prove_all(
    env: &Env<'_>,
    installed: &Installed,
    serving: Serving,
) -> Result<(), RotationFailure> {
    let inv = inventory(env)
        .await
        .map_err(|e| RotationFailure::NotStarted(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + env.settings.probe.timeout;
    for &c in &installed.consumers {
        if !env.components.restarts(c) {
            continue;
        }
        let expected = expected_for(&inv, installed, c, serving);
        let proof = env
            .components
            .prove(c, &expected, env.clock.now(), deadline)
            .await
            .map_err(|source| match serving {
                Serving::Renewed => RotationFailure::Proof {
                    component: c,
                    source,
                },
                Serving::OnDisk => RotationFailure::NotBack {
                    component: c,
                    source,
                },
            })?;
        tracing::info!(component = %c, "{proof}");
    }
    Ok(())
}

/// The certificates of the rotation that `component` serves (renewed, or as on disk now), with
/// the CA each must chain to.
fn expected_for(
    inv: &Inventory,
    installed: &Installed,
    component: Component,
    serving: Serving,
) -> Vec<Expect> {
    let mut out = Vec::new();
    for (name, _, renewed) in &installed.renewed {
        let Some(entry) = inv.get(name) else { continue };
        if !entry.consumers.contains(&component) {
            continue;
        }
        let cert = match serving {
            Serving::Renewed => renewed.clone(),
            Serving::OnDisk => match &entry.cert {
                Some(c) => c.clone(),
                None => continue,
            },
        };
        let ca = entry
            .signer
            .as_deref()
            .and_then(|s| inv.get(s))
            .and_then(|s| s.cert.clone())
            .unwrap_or_else(|| cert.clone());
        out.push(Expect {
            name: name.clone(),
            cert,
            ca,
        });
    }
    out
}
