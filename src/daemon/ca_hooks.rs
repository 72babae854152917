//! What a CA turn needs from the daemon's node ([`crate::ca::drive::Hooks`]): the track's
//! consumers restarted through the same [`Components`] leaf rotations use (static pods or units,
//! exact process identity), each waited for until it answers again; and, for etcd-ca, etcd's own
//! judgement: members in order with the leader last, and no member restarted unless the others
//! keep quorum.

use std::sync::Arc;
use std::time::Duration;

use super::clock::SharedClock;
use super::components::Components;
use crate::ca::drive::Hooks;
use crate::ca::etcd::EtcdJudge;
use crate::lease::BoxFuture;
use crate::pki::layout::Component;

/// How long a restarted consumer may take to answer its health check again.
pub const ANSWER_AGAIN: Duration = Duration::from_secs(120);

/// The daemon's hooks for one track.
pub struct NodeHooks {
    /// Restarts and health checks.
    pub components: Arc<dyn Components>,
    /// etcd's judgement (etcd-ca on a node with the etcd lease); `None`: no quorum to keep here
    /// (front-proxy-ca, or a single node with the local lease).
    pub etcd: Option<EtcdJudge>,
    /// The time, for the restart's records.
    pub clock: SharedClock,
}

impl NodeHooks {
    /// Waits until `component` passes its health check, at most [`ANSWER_AGAIN`].
    async fn answers(&self, component: Component) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + ANSWER_AGAIN;
        loop {
            match self.components.healthy(component).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!(
                        "{component} did not answer its health check within {ANSWER_AGAIN:?} \
                         after its restart: {e}"
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

impl Hooks for NodeHooks {
    fn restart(&self, component: Component) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if !self.components.restarts(component) {
                // Restarts of its kind are off in [restart]: the operator restarts it, and the
                // step's proof from disk still holds.
                tracing::warn!(
                    "CA step: {component} reads the changed CA files only when restarted, and \
                     restarts of its kind are off in [restart]"
                );
                return Ok(());
            }
            let done = self
                .components
                .restart(component, self.clock.now())
                .await
                .map_err(|e| format!("restarting {component}: {e}"))?;
            tracing::info!("CA step: {component}: {done}");
            self.answers(component).await?;
            if component == Component::Etcd
                && let Some(judge) = &self.etcd
            {
                judge.wait_member(ANSWER_AGAIN).await?;
            }
            Ok(())
        })
    }

    fn order<'a>(&'a self, members: &'a [String]) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            match &self.etcd {
                Some(judge) => judge.order(members).await,
                None => members.to_vec(),
            }
        })
    }

    fn may_disrupt(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match &self.etcd {
                Some(judge) => judge.may_disrupt().await,
                None => Ok(()),
            }
        })
    }
}
