//! Hooks for a track whose consumers are plain units and whose turns need no quorum guard
//! (front-proxy-ca: the API server and the controller manager): restart through systemd, in the
//! members' own order.

use std::time::Duration;

use super::drive::Hooks;
use crate::lease::BoxFuture;
use crate::pki::layout::Component;

/// Restarts consumers through the systemd manager at `bus`.
pub struct UnitHooks {
    /// The D-Bus address of the manager (`None`: the system bus).
    pub bus: Option<String>,
    /// The unit of each consumer this node runs; a consumer without one is not restarted.
    pub units: Vec<(Component, String)>,
    /// How long a restart job may take.
    pub timeout: Duration,
}

impl Hooks for UnitHooks {
    fn restart(&self, component: Component) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let Some((_, unit)) = self.units.iter().find(|(c, _)| *c == component) else {
                return Ok(());
            };
            let systemd = crate::restart::systemd::Systemd::connect(self.bus.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            systemd
                .restart_unit(unit, self.timeout)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn order<'a>(&'a self, members: &'a [String]) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move { members.to_vec() })
    }

    fn may_disrupt(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}
