//! Why a rotation did not succeed, as a type: the daemon decides on it (back off, resume at the
//! next turn, stop), and only history and the journal render it as text.

use crate::lease::LeaseError;
use crate::pki::layout::Component;
use crate::restart::RestartError;
use crate::restart::probe::ProbeError;
use crate::rotation::RotationError;

/// A component could not be restarted or proved.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The restart failed.
    #[error(transparent)]
    Restart(#[from] RestartError),
    /// The probe failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The probe task could not run.
    #[error("{0}")]
    Task(String),
}

/// Why a rotation failed, or stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum RotationFailure {
    /// It could not be planned (nothing renewable, a refusal, the remote CA unreachable).
    #[error("not started: {0}")]
    NotStarted(String),
    /// A component was not healthy before anything was changed.
    #[error("{component} is not healthy before rotating, so nothing was changed: {source}")]
    Unhealthy {
        /// The component.
        component: Component,
        /// What the health check said.
        #[source]
        source: ComponentError,
    },
    /// Installing failed (and the engine rolled it back or left it for recovery).
    #[error(transparent)]
    Install(RotationError),
    /// The lease could not be confirmed before a disruptive step, which did not happen (the
    /// lease's error names the step and why).
    #[error("{source}")]
    Fenced {
        /// The step that did not happen ("restarting etcd").
        step: String,
        /// Why.
        #[source]
        source: LeaseError,
    },
    /// A component could not be restarted.
    #[error("restart {component}: {source}")]
    Restart {
        /// The component.
        component: Component,
        /// Why.
        #[source]
        source: ComponentError,
    },
    /// A restarted component did not serve its new certificates, or is unhealthy.
    #[error("{component} did not prove its new certificates: {source}")]
    Proof {
        /// The component.
        component: Component,
        /// Why.
        #[source]
        source: ComponentError,
    },
    /// After a rollback a component did not come back on the previous certificates.
    #[error("{component} did not come back on the previous certificates: {source}")]
    NotBack {
        /// The component.
        component: Component,
        /// Why.
        #[source]
        source: ComponentError,
    },
    /// The failure was rolled back and the components serve the previous certificates again.
    #[error("{cause}; rolled back to the previous certificates, which are served again")]
    RolledBack {
        /// What made it fail.
        cause: Box<RotationFailure>,
    },
    /// The files were rolled back, but the components did not come back cleanly.
    #[error("{cause}; rolled back to the previous certificates, but after the rollback: {after}")]
    RolledBackUnproved {
        /// What made it fail.
        cause: Box<RotationFailure>,
        /// What went wrong after the rollback.
        after: Box<RotationFailure>,
    },
    /// The backup could not be put back.
    #[error("{cause}; ROLLBACK FAILED: {rollback}")]
    RollbackFailed {
        /// What made it fail.
        cause: Box<RotationFailure>,
        /// Why the restore failed.
        rollback: RotationError,
    },
    /// A recovery is never rolled back onto the expired certificates it replaced.
    #[error(
        "{0}; not rolled back: the previous certificates are expired (its peers may still be recovering)"
    )]
    RecoveryUnproved(Box<RotationFailure>),
    /// A rotation a crash interrupted, rolled back by recovery, whose components did not come
    /// back on the old certificates.
    #[error(
        "interrupted, and rolled back to the previous certificates, but after the rollback: {0}"
    )]
    InterruptedUnproved(Box<RotationFailure>),
    /// A rotation a crash interrupted, rolled back by recovery, served the old ones again.
    #[error("interrupted, and rolled back to the previous certificates, which are served again")]
    InterruptedRolledBack,
    /// A rotation interrupted before it installed anything.
    #[error("interrupted before anything was installed; nothing was changed")]
    InterruptedBeforeInstall,
    /// A rotation whose journal could not be read (it was quarantined).
    #[error("interrupted; its journal cannot be read: {0}")]
    JournalUnreadable(String),
}

impl RotationFailure {
    /// Whether the rotation is still open: its files or its consumers are not settled, and the
    /// next turn with the lease must finish it (roll forward or back, restart, prove) before
    /// anything else. A lost lease half-way is the case: the steps after it did not happen.
    pub fn leaves_open(&self) -> bool {
        match self {
            RotationFailure::Fenced { .. } => true,
            RotationFailure::Install(e) => is_guard_lost(e),
            _ => false,
        }
    }
}

/// Whether the engine stopped because its guard (the lease) was lost.
fn is_guard_lost(e: &RotationError) -> bool {
    match e {
        RotationError::GuardLost { .. } => true,
        RotationError::RolledBack { cause, .. } | RotationError::Stuck { cause, .. } => {
            // A rollback closed it: nothing is left open.
            let _ = cause;
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::GuardLost;

    #[test]
    fn a_lost_lease_leaves_the_rotation_open_and_a_rollback_does_not() {
        let lost = RotationFailure::Install(RotationError::GuardLost {
            step: "installing /pki/apiserver.key".into(),
            source: GuardLost("lease lost".into()),
        });
        assert!(lost.leaves_open());
        let fenced = RotationFailure::Fenced {
            step: "restarting etcd".into(),
            source: LeaseError::Fenced {
                step: "restarting etcd".into(),
                why: "slot /certrotd/c1/slots/0 now held by cp2 with token 412, ours was 398"
                    .into(),
            },
        };
        assert!(fenced.leaves_open());
        assert_eq!(
            fenced.to_string(),
            "lease not confirmed before restarting etcd, which did not happen: slot /certrotd/c1/slots/0 now held by cp2 with token 412, ours was 398"
        );
        let rolled = RotationFailure::RolledBack {
            cause: Box::new(RotationFailure::NotStarted("x".into())),
        };
        assert!(!rolled.leaves_open());
        assert!(rolled.to_string().ends_with("which are served again"));
    }
}
