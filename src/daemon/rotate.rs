//! One rotation as the daemon runs it: plan under the rotation lock, take the lease, check the
//! components are healthy (unless certificates already expired: rotating is the cure), install
//! crash-safely with the lease as the guard of every disruptive step, restart exactly the
//! consumers, prove each serves its new certificate and is healthy, and on failure put the backup
//! back and restart again. Every step is recorded in history and the journal.

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
use crate::rotation::plan::{self, Plan, PlanOptions};
use crate::rotation::{Context, Selection, StateDirs, lock, recover, select};

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
}

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
    let plan = match make_plan(env, &req.selection, clock()).await {
        Ok(p) => p,
        Err(e) => {
            if let Some(tx) = started {
                let _ = tx.send(Err(e.clone()));
            }
            return Err(e);
        }
    };
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
    record.fencing_token = Some(lease.fencing_token);
    if let Some(tx) = started {
        let _ = tx.send(Ok(plan.id.clone()));
    }
    events::rotation_started(&node, &plan.id, &names, &req.why);
    let step = |s: &str| set_step(env.progress, &plan.id, s, &names, clock());
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

    step("restart");
    let outcome = match restart_all(env, &plan.id, &report.consumers, clock()).await {
        Ok(()) => {
            step("verify");
            prove_all(env, &report, Serving::Renewed, clock).await
        }
        Err(e) => Err(e),
    };
    if let Err(why) = outcome {
        step("rollback");
        let rolled = roll_back(env, &plan.id, lease.clone()).await;
        // The record must say whether the components are back on the old certificates: a
        // rollback whose restart failed (or whose component stays down) leaves the node broken,
        // and the operator has to know. After a failed restore the files are not known to be
        // whole, so nothing is restarted onto them.
        let reason = match rolled {
            Err(e) => format!("{why}; ROLLBACK FAILED: {e}"),
            Ok(()) => {
                let back = match restart_all(env, &plan.id, &report.consumers, clock()).await {
                    Ok(()) => prove_all(env, &report, Serving::OnDisk, clock).await,
                    Err(e) => Err(e),
                };
                match back {
                    Ok(()) => format!(
                        "{why}; rolled back to the previous certificates, which are served again"
                    ),
                    Err(e) => format!(
                        "{why}; rolled back to the previous certificates, but after the rollback: {e}"
                    ),
                }
            }
        };
        record.disruptive_to = Some(rfc3339(clock()));
        return Ok(finish(env, record, Err(reason), clock()));
    }
    record.disruptive_to = Some(rfc3339(clock()));
    for r in &report.renewed {
        if let Some(name) = r.names.first() {
            let path = plan
                .items
                .iter()
                .find(|i| i.names.contains(name))
                .map(|i| i.cert_path.clone())
                .unwrap_or_default();
            events::rotated(&node, &plan.id, name, &path, r.cert.not_after);
        }
    }
    Ok(finish(env, record, Ok(()), clock()))
}

fn set_step(progress: &Progress, id: &str, step: &str, names: &[String], now: OffsetDateTime) {
    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
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
    let (settings, root, state) = (env.settings.clone(), env.root.clone(), env.state.clone());
    spawn_blocking(move || {
        let _lock = lock::acquire(&state).map_err(|e| format!("{e:#}"))?;
        let ctx = Context {
            root: &root,
            state: &state,
            backups_keep: settings.renew.backups_keep,
            guard: &lease,
        };
        execute::run(&ctx, &plan).map_err(|e| format!("{e:#}"))
    })
    .await
    .map_err(|e| format!("install task failed: {e}"))?
}

async fn roll_back(env: &Env<'_>, id: &str, lease: Held) -> Result<(), String> {
    let (settings, root, state, id) = (
        env.settings.clone(),
        env.root.clone(),
        env.state.clone(),
        id.to_owned(),
    );
    spawn_blocking(move || {
        let _lock = lock::acquire(&state).map_err(|e| format!("{e:#}"))?;
        let ctx = Context {
            root: &root,
            state: &state,
            backups_keep: settings.renew.backups_keep,
            guard: &lease,
        };
        recover::restore(&ctx, &id)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    })
    .await
    .map_err(|e| format!("rollback task failed: {e}"))?
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
    report: &Report,
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
    for &c in &report.consumers {
        if strategy(env.settings, env.root, c).is_none() {
            continue;
        }
        let (certs, cas) = expected_for(&inv, report, c, serving);
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
    report: &Report,
    component: Component,
    serving: Serving,
) -> (Vec<(String, Cert)>, Vec<Cert>) {
    let mut certs = Vec::new();
    let mut cas = Vec::new();
    for r in &report.renewed {
        let Some(name) = r.names.first() else {
            continue;
        };
        let Some(entry) = inv.get(name) else { continue };
        if !entry.consumers.contains(&component) {
            continue;
        }
        let ca = entry
            .signer
            .as_deref()
            .and_then(|s| inv.get(s))
            .and_then(|s| s.cert.clone())
            .unwrap_or_else(|| r.cert.clone());
        let cert = match serving {
            Serving::Renewed => r.cert.clone(),
            Serving::OnDisk => match &entry.cert {
                Some(c) => c.clone(),
                None => continue,
            },
        };
        certs.push((name.clone(), cert));
        cas.push(ca);
    }
    (certs, cas)
}
