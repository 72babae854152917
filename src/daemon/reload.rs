//! Prove first, restart only if needed. After an install, each consumer the reload table says
//! re-reads every certificate it was given (see [`crate::restart::reload`]) is given
//! `[restart] reload_period` to serve the new serial on a fresh connection and pass its health
//! check, judged by the same probe that proves a restart. Only one that does not is restarted
//! (the lease confirmed first, as every restart) and proved again as before. Nothing is assumed:
//! a component whose endpoints still serve the old serial at the end of the period is restarted
//! even though the table says it reloads.

use std::time::Duration;

use super::components::Expect;
use super::consumers::{Installed, Serving, expected_for, inventory, prove_all, restart_all};
use super::failure::RotationFailure;
use super::mode::Step;
use super::rotate::{Env, step};
use crate::config::RestartSettings;
use crate::events;
use crate::history::Record;
use crate::lease::Held;
use crate::pki::layout::Component;
use crate::restart::reload::reload_of;

/// Why `component` is restarted without waiting for it to reload, or `None` when it may be
/// given the chance: every certificate it was given is one it re-reads by itself.
pub(super) fn restart_reason(
    settings: &RestartSettings,
    component: Component,
    certs: &[&str],
) -> Option<String> {
    if !settings.prefer_reload {
        return Some("[restart] prefer_reload = false".to_owned());
    }
    if certs.is_empty() {
        // Nothing of this rotation it is known to serve or use: nothing to wait for.
        return Some("none of the renewed certificates is known to be read by it".to_owned());
    }
    let not: Vec<String> = certs
        .iter()
        .filter_map(|&name| {
            let how = reload_of(component, name);
            (!how.by_itself()).then(|| format!("{name}: {how}"))
        })
        .collect();
    (!not.is_empty()).then(|| not.join("; "))
}

/// Lets each consumer reload by itself where it can and proves it did; restarts the others and
/// proves those as before. Records which was which on `record`.
pub(super) async fn reload_or_restart(
    env: &Env<'_>,
    id: &str,
    installed: &Installed,
    lease: &Held,
    record: &mut Record,
) -> Result<(), RotationFailure> {
    let names = record.certificates.clone();
    let inv = inventory(env)
        .await
        .map_err(|e| RotationFailure::NotStarted(e.to_string()))?;
    let period = env.settings.restart.reload_period;
    let mut to_restart = Vec::new();
    for &c in &installed.consumers {
        if !env.components.restarts(c) {
            continue;
        }
        let expected = expected_for(&inv, installed, c, Serving::Renewed);
        let certs: Vec<&str> = expected.iter().map(|e| e.name.as_str()).collect();
        if let Some(why) = restart_reason(&env.settings.restart, c, &certs) {
            tracing::info!(rotation_id = %id, component = %c, "{c} is restarted: {why}");
            to_restart.push(c);
            continue;
        }
        step(env, id, &names, Step::Reload(c));
        match prove_reloaded(env, c, &expected, period).await {
            Ok(proof) => {
                events::component_reloaded(&record.node, id, &c.to_string(), &proof);
                record.reloaded.push(c.to_string());
            }
            Err(why) => {
                tracing::warn!(
                    rotation_id = %id,
                    component = %c,
                    "{c} did not serve its new certificates within the reload period ({}s): {why}; restarting it",
                    period.as_secs()
                );
                to_restart.push(c);
            }
        }
    }
    if to_restart.is_empty() {
        tracing::info!(
            rotation_id = %id,
            "rotation {id}: every consumer picked up its new certificates by itself; nothing was restarted"
        );
        return Ok(());
    }
    restart_all(env, id, &names, &to_restart, lease).await?;
    record.restarted = to_restart.iter().map(ToString::to_string).collect();
    step(env, id, &names, Step::Verify);
    let restarted = Installed {
        consumers: to_restart,
        renewed: installed.renewed.clone(),
    };
    prove_all(env, &restarted, Serving::Renewed).await
}

/// Waits up to `period` for `component` to serve `expected` on fresh connections and be
/// healthy; the proof for the journal, or why not.
async fn prove_reloaded(
    env: &Env<'_>,
    component: Component,
    expected: &[Expect],
    period: Duration,
) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + period;
    env.components
        .prove(component, expected, env.clock.now(), deadline)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_components_that_reread_everything_they_were_given_wait() {
        let mut s = RestartSettings::default();
        let etcd = ["etcd-server", "etcd-peer"];
        assert_eq!(restart_reason(&s, Component::Etcd, &etcd), None);
        // One file it reads once is enough to restart it.
        let why = restart_reason(&s, Component::Etcd, &["etcd-server", "etcd-ca"]).unwrap();
        assert!(why.contains("etcd-ca: reads it once"), "{why}");
        assert!(restart_reason(&s, Component::Etcd, &[]).is_some());
        assert!(restart_reason(&s, Component::KubeScheduler, &["scheduler.conf"]).is_some());
        assert!(restart_reason(&s, Component::Kubelet, &["kubelet-serving"]).is_none());
        s.prefer_reload = false;
        assert_eq!(
            restart_reason(&s, Component::Etcd, &etcd).as_deref(),
            Some("[restart] prefer_reload = false")
        );
    }
}
