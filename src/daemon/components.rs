//! The components a rotation disrupts, behind one trait: restart one, check its health, prove it
//! serves the expected certificates. The daemon uses [`NodeComponents`] (systemd over D-Bus, the
//! TLS and health probes); the state machine's unit tests plug in their own.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use super::failure::ComponentError;
use crate::config::Settings;
use crate::lease::BoxFuture;
use crate::pki::cert::Cert;
use crate::pki::layout::Component;
use crate::restart::probe::{ComponentProbe, Expected};
use crate::restart::{Restarter, Strategy};
use crate::root::Root;

/// A certificate a component must be seen serving, with the CA it must chain to.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Its inventory name (matched against the probe endpoints' `serves`).
    pub name: String,
    /// The certificate.
    pub cert: Cert,
    /// Its CA.
    pub ca: Cert,
}

/// Restarting, health-checking and proving the node's components.
pub trait Components: Send + Sync {
    /// Whether certrotd restarts `component` on this node (restarts of its kind may be off).
    fn restarts(&self, component: Component) -> bool;
    /// Restarts it; returns what was done, for the journal.
    fn restart<'a>(
        &'a self,
        component: Component,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<String, ComponentError>>;
    /// Its health check passes (within a short timeout), or it has none.
    fn healthy<'a>(&'a self, component: Component) -> BoxFuture<'a, Result<(), ComponentError>>;
    /// It serves `expected` and is healthy, before `deadline`; returns the proof, for the log.
    fn prove<'a>(
        &'a self,
        component: Component,
        expected: &'a [Expect],
        now: OffsetDateTime,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<String, ComponentError>>;
}

/// The node's real components: systemd over D-Bus, TLS and health probes.
#[derive(Debug, Clone)]
pub struct NodeComponents {
    settings: Settings,
    root: Root,
}

/// How long the health gate waits for one component.
const HEALTH_GATE_TIMEOUT: Duration = Duration::from_secs(10);

impl NodeComponents {
    /// The components of the node `settings` describe.
    pub fn new(settings: &Settings, root: &Root) -> NodeComponents {
        NodeComponents {
            settings: settings.clone(),
            root: root.clone(),
        }
    }

    fn probe(&self, component: Component) -> Result<ComponentProbe, ComponentError> {
        Ok(ComponentProbe::new(
            component,
            &self.settings.probe,
            &self.root,
        )?)
    }
}

impl Components for NodeComponents {
    fn restarts(&self, component: Component) -> bool {
        strategy(&self.settings, &self.root, component).is_some()
    }

    fn restart<'a>(
        &'a self,
        component: Component,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<String, ComponentError>> {
        Box::pin(async move {
            let Some(strategy) = strategy(&self.settings, &self.root, component) else {
                return Ok("not restarted: restarts of its kind are off in [restart]".to_owned());
            };
            let mut r = Restarter::new(&self.root, &self.settings.node_name);
            r.bus = Some(self.settings.restart.dbus_address.clone()).filter(|a| !a.is_empty());
            r.job_timeout = self.settings.restart.job_timeout;
            Ok(r.restart(component, strategy, now).await?.to_string())
        })
    }

    fn healthy<'a>(&'a self, component: Component) -> BoxFuture<'a, Result<(), ComponentError>> {
        Box::pin(async move {
            if let Some(check) = &self.probe(component)?.health {
                crate::restart::probe::health(check, HEALTH_GATE_TIMEOUT).await?;
            }
            Ok(())
        })
    }

    fn prove<'a>(
        &'a self,
        component: Component,
        expected: &'a [Expect],
        now: OffsetDateTime,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<String, ComponentError>> {
        Box::pin(async move {
            let probe = self.probe(component)?;
            let list: Vec<Expected<'_>> = expected
                .iter()
                .map(|e| Expected {
                    name: &e.name,
                    cert: &e.cert,
                    ca_bundle: std::slice::from_ref(&e.ca),
                })
                .collect();
            Ok(probe.prove(&list, now, deadline).await?.to_string())
        })
    }
}

/// How a component is restarted on this node, or `None` when restarts of its kind are off.
pub fn strategy(settings: &Settings, root: &Root, component: Component) -> Option<Strategy> {
    let r = &settings.restart;
    match component {
        Component::KubeApiserver | Component::KubeControllerManager | Component::KubeScheduler => {
            r.static_pods.map(Strategy::from)
        }
        // kubeadm's stacked etcd is a static pod; an external etcd is a unit.
        Component::Etcd => {
            let manifest = root.join(format!("{}/etcd.yaml", crate::restart::MANIFESTS_DIR));
            if manifest.exists() {
                r.static_pods.map(Strategy::from)
            } else {
                r.units.then_some(Strategy::Unit)
            }
        }
        Component::Kubelet | Component::Rke2 | Component::K3s => r.units.then_some(Strategy::Unit),
    }
}
