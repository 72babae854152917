//! The rotation engine's steps as the daemon calls them: planning, installing and restoring, each
//! on the blocking pool under the rotation lock, with the lease (or nothing) as its guard.

use time::OffsetDateTime;
use tokio::task::spawn_blocking;

use super::resume::{finish_interrupted_locked, record_quarantined, still_open};
use super::rotate::Env;
use crate::history::History;
use crate::lease::Held;
use crate::pki::layout::Component;
use crate::rotation::execute::{self, Report};
use crate::rotation::plan::{Plan, PlanOptions};
use crate::rotation::session::{self, Session};
use crate::rotation::{Context, Guard, RotationError, Selection, Unguarded, restore};

/// Plans under the rotation lock, after finishing or rolling back anything a crash left.
pub(super) async fn make_plan(
    env: &Env<'_>,
    sel: &Selection,
    now: OffsetDateTime,
) -> Result<Plan, String> {
    let (settings, root, state, sel) = (
        env.settings.clone(),
        env.root.clone(),
        env.state.clone(),
        sel.clone(),
    );
    let history = History::for_settings(&settings);
    spawn_blocking(move || {
        let session = Session::open(&root, &state, settings.renew.backups_keep)
            .map_err(|e| format!("{e:#}"))?;
        let recovered = finish_interrupted_locked(&session, &Unguarded, now)?;
        record_quarantined(&history, &settings.node_name, &recovered, now);
        still_open(&recovered)?;
        let inv = crate::inventory::Inventory::for_settings(&settings);
        let opts = PlanOptions {
            key_policy: settings.renew.key_policy,
            validity: settings.renew.validity,
            force: false,
            issuer: settings.issuer.clone(),
        };
        let plan = session::plan(&inv, &sel, &root, &opts, now).map_err(|e| e.to_string())?;
        if let Some(r) = plan.refused.first() {
            return Err(format!("refused to renew {}: {}", r.name, r.reason));
        }
        for r in &plan.unrenewable {
            // Left out, as `certrotd renew` leaves it: the rest is renewed.
            tracing::warn!(rotation_id = %plan.id, "not renewing {}: {}", r.name, r.reason);
        }
        if plan.items.is_empty() {
            return Err("nothing to renew".to_owned());
        }
        Ok(plan)
    })
    .await
    .map_err(|e| format!("planning task failed: {e}"))?
}

pub(super) async fn install(
    env: &Env<'_>,
    plan: Plan,
    lease: Held,
) -> Result<Report, RotationError> {
    under_lock(env, Box::new(lease), move |ctx| execute::run(ctx, &plan)).await
}

/// Puts a rotation's backup back. Never guarded by the lease: a rollback makes the node whole
/// again, and waiting for a lease that may be gone would leave it broken.
pub(super) async fn roll_back(env: &Env<'_>, id: &str) -> Result<(), RotationError> {
    let id = id.to_owned();
    under_lock(env, Box::new(Unguarded), move |ctx| {
        restore::restore(ctx, &id).map(|_| ())
    })
    .await
}

/// Runs a blocking rotation step on the blocking pool, under the rotation lock, with `guard`.
pub(super) async fn under_lock<T: Send + 'static>(
    env: &Env<'_>,
    guard: Box<dyn Guard + Send>,
    step: impl FnOnce(&Context<'_>) -> Result<T, RotationError> + Send + 'static,
) -> Result<T, RotationError> {
    let (settings, root, state) = (env.settings.clone(), env.root.clone(), env.state.clone());
    spawn_blocking(move || {
        let session = Session::open(&root, &state, settings.renew.backups_keep)?;
        step(&session.context(guard.as_ref()))
    })
    .await
    .map_err(|e| RotationError::Io {
        op: "run the rotation task for",
        path: env.state.dir.clone(),
        source: std::io::Error::other(e.to_string()),
    })?
}

pub(super) fn consumers(plan: &Plan) -> Vec<Component> {
    plan.consumers()
}
