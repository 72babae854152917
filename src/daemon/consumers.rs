//! The components a rotation touches: the health gate before it, their restarts (the lease confirmed
//! before each), and the proof that each serves what is on disk (the new certificates, or the old
//! ones again after a rollback) and is healthy.

use std::path::PathBuf;

use tokio::task::spawn_blocking;

use super::components::Expect;
use super::failure::RotationFailure;
use super::mode::Step;
use super::rotate::{Env, confirm, step};
use crate::events;
use crate::inventory::Inventory;
use crate::lease::Held;
use crate::pki::cert::Cert;
use crate::pki::layout::Component;
use crate::rotation::execute::Report;
use crate::rotation::journal::Journal;
use crate::rotation::plan::Plan;

/// What an installed rotation changed: the components that must be restarted, and the new
/// certificates (name, path, certificate) they must be seen serving.
pub(super) struct Installed {
    pub(super) consumers: Vec<Component>,
    pub(super) renewed: Vec<(String, PathBuf, Cert)>,
}

impl Installed {
    pub(super) fn from_report(report: &Report, plan: &Plan) -> Installed {
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
    pub(super) fn from_journal(j: &Journal, inv: &Inventory) -> Installed {
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

/// Restarts each consumer in turn, confirming the lease before each: a restart is the
/// disruption itself, and with the lease lost another node may be disrupting its own now.
pub(super) async fn restart_all(
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
pub(super) async fn health_gate(
    env: &Env<'_>,
    components: &[Component],
) -> Result<(), RotationFailure> {
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
pub(super) enum Serving {
    /// The rotation's new ones.
    Renewed,
    /// Those on disk now (the old ones again, after a rollback).
    OnDisk,
}

pub(super) async fn inventory(env: &Env<'_>) -> Result<Inventory, String> {
    let settings = env.settings.clone();
    spawn_blocking(move || Inventory::for_settings(&settings))
        .await
        .map_err(|e| format!("inventory after install: {e}"))
}

/// Proves every restarted component serves its new certificates (or, after a rollback, those
/// on disk) and is healthy.
pub(super) async fn prove_all(
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
pub(super) fn expected_for(
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
