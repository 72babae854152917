//! One rotation as the daemon runs it: plan under the rotation lock, take the lease, check the
//! components are healthy (unless certificates already expired: rotating is the cure), install
//! crash-safely with the lease as the guard of every disruptive step, restart exactly the
//! consumers, prove each serves its new certificate and is healthy, and on failure put the backup
//! back and restart again. Every step is recorded in history and the journal. After a crash, the
//! next start finishes what recovery could not: the restarts, the proof and the record.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::task::spawn_blocking;

use crate::config::Settings;
use crate::control::proto::{HistoryRecord, HistoryState, RotationProgress};
use crate::events;
use crate::history::History;
use crate::inventory::Inventory;
use crate::lease::Held;
use crate::pki::cert::Cert;
use crate::pki::layout::Component;
use crate::report::rfc3339;
use crate::restart::probe::{ComponentProbe, Expected};
use crate::restart::{Restarter, Strategy};
use crate::root::Root;
use crate::rotation::execute::{self, Report};
use crate::rotation::journal::{Journal, Phase};
use crate::rotation::plan::{self, Plan, PlanOptions};
use crate::rotation::{Context, Guard as _, Selection, StateDirs, lock, recover, select};

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
    /// Told each step as it begins (the daemon mirrors it into the lease's holder record).
    pub on_step: &'a (dyn Fn(&str) + Sync),
}

/// An [`Env::on_step`] that tells no one.
pub fn no_step_hook(_step: &str) {}

/// Runs one rotation. `started` learns the rotation id as soon as it is planned. `clock` gives the
/// time at each step (the daemon passes the wall clock, tests may pass their own). Returns the final
/// history record (Success or Failed); an `Err` is a rotation that never started (nothing to do,
/// refused, or the plan failed), with the reason.
pub async fn rotate(
    env: &Env<'_>,
    req: Request,
    lease: Held,
    started: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
    clock: &(dyn Fn() -> OffsetDateTime + Sync),
) -> Result<HistoryRecord, String> {
    let plan = plan_for(env, &req, started, clock).await?;
    run_planned(env, req, plan, lease, clock).await
}

/// Plans a rotation under the rotation lock; `started` learns its id (or why there is none).
/// The daemon plans before it waits for the lease, so the lease's holder record and queue can
/// name the rotation, and `certrotd rotate` answers without waiting its turn.
pub async fn plan_for(
    env: &Env<'_>,
    req: &Request,
    started: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
    clock: &(dyn Fn() -> OffsetDateTime + Sync),
) -> Result<Plan, String> {
    let planned = make_plan(env, &req.selection, clock()).await;
    match (started, &planned) {
        (Some(tx), _) => {
            let _ = tx.send(planned.as_ref().map(|p| p.id.clone()).map_err(Clone::clone));
        }
        (None, Err(why)) => record_not_started(env, req, why, clock()),
        (None, Ok(_)) => {}
    }
    planned
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
                Some(format!("not started: {why}")),
                now,
            )
        });
    if let Err(e) = recorded {
        tracing::error!("recording rotation {id} in history: {e:#}");
    }
}

/// Runs a planned rotation with `lease` held (or, for a recovery, a token-less stand-in).
pub async fn run_planned(
    env: &Env<'_>,
    req: Request,
    plan: Plan,
    lease: Held,
    clock: &(dyn Fn() -> OffsetDateTime + Sync),
) -> Result<HistoryRecord, String> {
    let names: Vec<String> = plan.items.iter().map(|i| i.name().to_owned()).collect();
    let node = env.settings.node_name.clone();
    let mut record = env
        .history
        .start(
            &plan.id,
            &node,
            names.clone(),
            Some(req.why.clone()),
            clock(),
        )
        .map_err(|e| format!("{e:#}"))?;
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
    let step = |s: &str| set_step(env, &plan.id, s, &names, clock());
    let consumers = consumers(&plan);

    step("health-gate");
    if !req.skip_health_gate
        && let Err(why) = health_gate(env, &consumers).await
    {
        return Ok(finish(env, record, Err(why), clock()));
    }

    step("install");
    record.disruptive_from = Some(rfc3339(clock()));
    let installed = install(env, plan.clone(), lease.clone()).await;
    let report = match installed {
        Ok(r) => r,
        Err(e) => {
            record.disruptive_to = Some(rfc3339(clock()));
            return Ok(finish(env, record, Err(e), clock()));
        }
    };

    let installed = Installed {
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
    };
    Ok(restart_and_prove(env, &plan.id, &installed, lease, record, clock).await)
}

/// What an installed rotation changed: the components that must be restarted, and the new
/// certificates (name, path, certificate) they must be seen serving.
struct Installed {
    consumers: Vec<Component>,
    renewed: Vec<(String, PathBuf, Cert)>,
}

/// Everything after the install: restart the consumers and prove they serve the new
/// certificates; otherwise roll back, restart again and prove they serve the old ones. Finishes
/// the record.
async fn restart_and_prove(
    env: &Env<'_>,
    id: &str,
    installed: &Installed,
    lease: Held,
    mut record: HistoryRecord,
    clock: &(dyn Fn() -> OffsetDateTime + Sync),
) -> HistoryRecord {
    let names = record.certificates.clone();
    let step = |s: &str| set_step(env, id, s, &names, clock());
    // A restart is the disruption itself: with the lease lost, another node may be disrupting
    // its components now, so nothing is restarted. The new files stay installed (they are
    // valid); the components read them at their next restart.
    if let Err(lost) = lease.check("restart") {
        record.disruptive_to = Some(rfc3339(clock()));
        let reason = format!("{lost}; the new certificates are installed, nothing was restarted");
        return finish(env, record, Err(reason), clock());
    }
    step("restart");
    let outcome = match restart_all(env, id, &installed.consumers, clock()).await {
        Ok(()) => {
            step("verify");
            prove_all(env, installed, Serving::Renewed, clock).await
        }
        Err(e) => Err(e),
    };
    if let Err(why) = &outcome
        && record.recovery
    {
        // The previous certificates are expired: putting them back cannot bring anything up.
        // Most likely the member is waiting for peers that are still recovering.
        record.disruptive_to = Some(rfc3339(clock()));
        let reason = format!(
            "{why}; not rolled back: the previous certificates are expired (its peers may still be recovering)"
        );
        return finish(env, record, Err(reason), clock());
    }
    if let Err(why) = outcome {
        step("rollback");
        let rolled = roll_back(env, id, lease).await;
        // The record must say whether the components are back on the old certificates: a
        // rollback whose restart failed (or whose component stays down) leaves the node broken,
        // and the operator has to know. After a failed restore the files are not known to be
        // whole, so nothing is restarted onto them.
        let reason = match rolled {
            Err(e) => format!("{why}; ROLLBACK FAILED: {e}"),
            Ok(()) => match restart_onto_disk(env, id, installed, clock).await {
                Ok(()) => format!(
                    "{why}; rolled back to the previous certificates, which are served again"
                ),
                Err(e) => format!(
                    "{why}; rolled back to the previous certificates, but after the rollback: {e}"
                ),
            },
        };
        record.disruptive_to = Some(rfc3339(clock()));
        return finish(env, record, Err(reason), clock());
    }
    record.disruptive_to = Some(rfc3339(clock()));
    for (name, path, cert) in &installed.renewed {
        events::rotated(&record.node, id, name, path, cert.not_after);
    }
    finish(env, record, Ok(()), clock())
}

/// Restarts the consumers onto the certificates on disk now, and proves they serve them.
async fn restart_onto_disk(
    env: &Env<'_>,
    id: &str,
    installed: &Installed,
    clock: &(dyn Fn() -> OffsetDateTime + Sync),
) -> Result<(), String> {
    restart_all(env, id, &installed.consumers, clock()).await?;
    prove_all(env, installed, Serving::OnDisk, clock).await
}

/// Finishes the rotations a crash (or SIGKILL) interrupted: those history still shows as
/// Initiated, after recovery has made their files all-old or all-new. Recovery alone leaves the
/// components on whatever they read before the crash, and the record saying Initiated forever.
/// A committed rotation is restarted and proved (and rolled back if that fails), as it would have
/// been; one rolled back after installing has its components restarted onto the old
/// certificates; one that installed nothing is only recorded. Returns the records closed.
pub async fn resume(
    env: &Env<'_>,
    lease: Held,
    clock: &(dyn Fn() -> OffsetDateTime + Sync),
) -> Vec<HistoryRecord> {
    let mut closed = Vec::new();
    for mut record in interrupted(env.history) {
        let id = record.id.clone();
        record.fencing_token = Some(lease.fencing_token);
        let journal = Journal::load(&env.state.rotation(&record.id));
        let installed = |j: &Journal| {
            let inv = crate::commands::check::inventory(env.settings);
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
        };
        tracing::warn!(rotation_id = %record.id, "finishing rotation {} that was interrupted", record.id);
        let done = match journal {
            Ok(Some(j)) if j.phase == Phase::Committed => {
                record.reason = Some(format!(
                    "{}; interrupted after installing, finished by the next start",
                    record.reason.as_deref().unwrap_or("rotation")
                ));
                let installed = installed(&j);
                // The disruption this start causes: the restarts and proof, under its own lease.
                record.disruptive_from = Some(rfc3339(clock()));
                record.disruptive_to = None;
                restart_and_prove(env, &id, &installed, lease.clone(), record, clock).await
            }
            // "abandoned": closed before anything was installed, so nothing read the new files.
            Ok(Some(j))
                if j.phase == Phase::RolledBack
                    && !j.outcome.as_deref().unwrap_or("").starts_with("abandoned") =>
            {
                let why = "interrupted, and rolled back to the previous certificates";
                record.disruptive_from = Some(rfc3339(clock()));
                let reason = match restart_onto_disk(env, &id, &installed(&j), clock).await {
                    Ok(()) => format!("{why}, which are served again"),
                    Err(e) => format!("{why}, but after the rollback: {e}"),
                };
                record.disruptive_to = Some(rfc3339(clock()));
                finish(env, record, Err(reason), clock())
            }
            Ok(_) => finish(
                env,
                record,
                Err("interrupted before anything was installed; nothing was changed".into()),
                clock(),
            ),
            Err(e) => finish(
                env,
                record,
                Err(format!("interrupted; its journal cannot be read: {e}")),
                clock(),
            ),
        };
        closed.push(done);
    }
    closed
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

fn set_step(env: &Env<'_>, id: &str, step: &str, names: &[String], now: OffsetDateTime) {
    (env.on_step)(step);
    let mut p = env.progress.lock().unwrap_or_else(|e| e.into_inner());
    let started_at = p
        .as_ref()
        .filter(|p| p.id == id)
        .map(|p| p.started_at.clone())
        .unwrap_or_else(|| rfc3339(now));
    *p = Some(RotationProgress {
        id: id.to_owned(),
        step: step.to_owned(),
        started_at,
        certificates: names.to_vec(),
    });
}

/// Records the end of a rotation and clears the progress.
fn finish(
    env: &Env<'_>,
    mut record: HistoryRecord,
    result: Result<(), String>,
    now: OffsetDateTime,
) -> HistoryRecord {
    *env.progress.lock().unwrap_or_else(|e| e.into_inner()) = None;
    record.finished_at = Some(rfc3339(now));
    match result {
        Ok(()) => record.state = HistoryState::Success,
        Err(reason) => {
            events::rotation_failed(&record.node, &record.id, &record.certificates, &reason);
            record.state = HistoryState::Failed;
            record.reason = Some(reason);
        }
    }
    if let Err(e) = env.history.append(&record) {
        tracing::error!("recording rotation {} in history: {e:#}", record.id);
    }
    record
}

/// Plans under the rotation lock, after finishing or rolling back anything a crash left.
async fn make_plan(env: &Env<'_>, sel: &Selection, now: OffsetDateTime) -> Result<Plan, String> {
    let (settings, root, state, sel) = (
        env.settings.clone(),
        env.root.clone(),
        env.state.clone(),
        sel.clone(),
    );
    spawn_blocking(move || {
        let _lock = lock::acquire(&state).map_err(|e| format!("{e:#}"))?;
        recover_locked(&root, &state, &settings)?;
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

/// Finishes or rolls back rotations a crash interrupted (the caller holds the lock).
pub fn recover_locked(root: &Root, state: &StateDirs, settings: &Settings) -> Result<(), String> {
    let ctx = Context {
        root,
        state,
        backups_keep: settings.renew.backups_keep,
        guard: &crate::rotation::Unguarded,
    };
    for r in recover::recover(&ctx).map_err(|e| format!("{e:#}"))? {
        tracing::warn!(rotation_id = %r.id, "recovered interrupted rotation {}: {:?}", r.id, r.action);
    }
    Ok(())
}

async fn install(env: &Env<'_>, plan: Plan, lease: Held) -> Result<Report, String> {
    under_lock(env, lease, "install", move |ctx| {
        execute::run(ctx, &plan).map_err(|e| format!("{e:#}"))
    })
    .await
}

async fn roll_back(env: &Env<'_>, id: &str, lease: Held) -> Result<(), String> {
    let id = id.to_owned();
    under_lock(env, lease, "rollback", move |ctx| {
        recover::restore(ctx, &id)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    })
    .await
}

/// Runs a blocking rotation step on the blocking pool, under the rotation lock, with the lease as
/// its guard.
async fn under_lock<T: Send + 'static>(
    env: &Env<'_>,
    lease: Held,
    what: &'static str,
    step: impl FnOnce(&Context<'_>) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (settings, root, state) = (env.settings.clone(), env.root.clone(), env.state.clone());
    spawn_blocking(move || {
        let _lock = lock::acquire(&state).map_err(|e| format!("{e:#}"))?;
        let ctx = Context {
            root: &root,
            state: &state,
            backups_keep: settings.renew.backups_keep,
            guard: &lease,
        };
        step(&ctx)
    })
    .await
    .map_err(|e| format!("{what} task failed: {e}"))?
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

/// How a component is restarted on this node, or `None` when restarts of its kind are off.
pub fn strategy(settings: &Settings, root: &Root, component: Component) -> Option<Strategy> {
    let r = &settings.restart;
    match component {
        Component::KubeApiserver | Component::KubeControllerManager | Component::KubeScheduler => {
            r.static_pods
        }
        // kubeadm's stacked etcd is a static pod; an external etcd is a unit.
        Component::Etcd => {
            let manifest = root.join(format!("{}/etcd.yaml", crate::restart::MANIFESTS_DIR));
            if manifest.exists() {
                r.static_pods
            } else {
                r.units.then_some(Strategy::Unit)
            }
        }
        Component::Kubelet | Component::Rke2 | Component::K3s => r.units.then_some(Strategy::Unit),
    }
}

fn restarter(env: &Env<'_>) -> Restarter {
    let mut r = Restarter::new(env.root);
    r.bus = Some(env.settings.restart.dbus_address.clone()).filter(|a| !a.is_empty());
    r.job_timeout = env.settings.restart.job_timeout;
    r
}

async fn restart_all(
    env: &Env<'_>,
    id: &str,
    components: &[Component],
    now: OffsetDateTime,
) -> Result<(), String> {
    let restarter = restarter(env);
    for &c in components {
        let Some(strategy) = strategy(env.settings, env.root, c) else {
            tracing::info!(rotation_id = %id, "not restarting {c}: restarts of its kind are off in [restart]");
            continue;
        };
        let outcome = restarter
            .restart(c, strategy, now)
            .await
            .map_err(|e| format!("restart {c}: {e}"))?;
        events::restarted(
            &env.settings.node_name,
            id,
            &c.to_string(),
            &outcome.to_string(),
        );
    }
    Ok(())
}

/// Before a planned rotation, the components it will restart must be healthy: rotating a sick
/// control plane only adds a second problem.
async fn health_gate(env: &Env<'_>, components: &[Component]) -> Result<(), String> {
    for &c in components {
        if strategy(env.settings, env.root, c).is_none() {
            continue;
        }
        let probe = ComponentProbe::new(c, &env.settings.probe, env.root)
            .map_err(|e| format!("health check of {c} before rotating: {e}"))?;
        if let Some(check) = &probe.health {
            crate::restart::probe::health(check, Duration::from_secs(10))
                .await
                .map_err(|e| {
                    format!("{c} is not healthy before rotating, so nothing was changed: {e}")
                })?;
        }
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

/// Proves every restarted component serves its new certificates (or, after a rollback, those
/// on disk) and is healthy.
async fn prove_all(
    env: &Env<'_>,
    installed: &Installed,
    serving: Serving,
    clock: &(dyn Fn() -> OffsetDateTime + Sync),
) -> Result<(), String> {
    let inv = {
        let settings = env.settings.clone();
        spawn_blocking(move || crate::commands::check::inventory(&settings))
            .await
            .map_err(|e| format!("inventory after install: {e}"))?
    };
    let deadline = tokio::time::Instant::now() + env.settings.probe.timeout;
    for &c in &installed.consumers {
        if strategy(env.settings, env.root, c).is_none() {
            continue;
        }
        let (certs, cas) = expected_for(&inv, installed, c, serving);
        let expected: Vec<Expected<'_>> = certs
            .iter()
            .zip(&cas)
            .map(|((name, cert), ca)| Expected {
                name,
                cert,
                ca_bundle: std::slice::from_ref(ca),
            })
            .collect();
        let probe = ComponentProbe::new(c, &env.settings.probe, env.root)
            .map_err(|e| format!("probe {c}: {e}"))?;
        let proof = probe
            .prove(&expected, clock(), deadline)
            .await
            .map_err(|e| match serving {
                Serving::Renewed => format!("{c} did not prove its new certificates: {e}"),
                Serving::OnDisk => {
                    format!("{c} did not come back on the previous certificates: {e}")
                }
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
) -> (Vec<(String, Cert)>, Vec<Cert>) {
    let mut certs = Vec::new();
    let mut cas = Vec::new();
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
        certs.push((name.clone(), cert));
        cas.push(ca);
    }
    (certs, cas)
}
