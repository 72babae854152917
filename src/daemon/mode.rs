//! The daemon's one state machine: what it is doing ([`Mode`]) and, inside a rotation, which step
//! it is at ([`Step`]). Every change of mode goes through [`Machine::go`], which refuses a
//! transition the table below does not allow, so a mode can never be entered from a place the
//! loop did not mean (zincati's update agent works the same way).
//!
//! ```text
//!  Starting ──▶ Idle ◀─────────────┬──────────────┐
//!     │          │  ▲               │              │
//!     │          ▼  │               │              │
//!     │        Waiting ──(lease)──▶ Rotating ──────┤
//!     │          │    ╲─(lease)──▶ Resuming ───────┤
//!     │          ▼                                 ▼
//!     └──▶ Recovering (no lease) ───────────▶ BackingOff ──▶ Waiting / Idle
//!
//!  Starting, Idle, Waiting, BackingOff ──(stop)──▶ Stopping
//! ```
//!
//! A rotation, a resumption or a recovery is carried to its end before the daemon stops: a stop
//! requested meanwhile is remembered by the machine ([`Machine::stop_requested`]) and taken once
//! the mode is back to one a stop may leave from.

use std::fmt;

use time::OffsetDateTime;

use crate::pki::layout::Component;

/// What a rotation is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Planning under the rotation lock.
    Plan,
    /// Obtaining certificates from a remote CA (before the lease is taken).
    Obtain,
    /// Checking the components are healthy before disrupting them.
    HealthGate,
    /// Backing up and installing the new files.
    Install,
    /// Waiting for one component to serve its new certificates by itself (no restart).
    Reload(Component),
    /// Restarting one component.
    Restart(Component),
    /// Proving the components serve their new certificates and are healthy.
    Verify,
    /// Putting the backup back (and restarting onto it).
    Rollback,
}

impl Step {
    /// The step's name as the lease's holder record, status and history show it.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Plan => "plan",
            Step::Obtain => "obtain",
            Step::HealthGate => "health-gate",
            Step::Install => "install",
            Step::Reload(_) => "reload",
            Step::Restart(_) => "restart",
            Step::Verify => "verify",
            Step::Rollback => "rollback",
        }
    }

    /// Whether the step disrupts the node (so the lease must be confirmed before it).
    pub fn is_disruptive(&self) -> bool {
        matches!(self, Step::Install | Step::Restart(_))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Plan => f.write_str("planning"),
            Step::Obtain => f.write_str("obtaining certificates from the remote CA"),
            Step::HealthGate => f.write_str("checking the components are healthy"),
            Step::Install => f.write_str("installing"),
            Step::Reload(c) => write!(f, "waiting for {c} to serve its new certificates by itself"),
            Step::Restart(c) => write!(f, "restarting {c}"),
            Step::Verify => f.write_str("proving the new certificates are served"),
            Step::Rollback => f.write_str("rolling back"),
        }
    }
}

/// What the daemon is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Reading its state, before the first inventory.
    Starting,
    /// Renewing this node's expired etcd certificates without the lease (see `recovery`).
    Recovering {
        /// The rotation.
        id: String,
        /// Its step.
        step: Step,
    },
    /// Finishing a rotation a crash or a lost lease left open.
    Resuming {
        /// The rotation.
        id: String,
        /// Its step.
        step: Step,
    },
    /// Nothing due: sleeping until the next deadline or event.
    Idle,
    /// A rotation is planned; waiting for this node's turn.
    Waiting {
        /// The rotation.
        id: String,
        /// Where it stands ("position 2, held by cp1 at restart").
        detail: String,
    },
    /// Rotating with the lease held.
    Rotating {
        /// The rotation.
        id: String,
        /// Its step.
        step: Step,
    },
    /// Taking this node's part in a CA rotation (its step, or moving the phase on) with the
    /// lease held; like a rotation, carried to its end before a stop.
    CaTurn {
        /// Which CA.
        track: String,
        /// The rotation's phase when the turn started.
        phase: String,
    },
    /// A rotation failed: nothing new starts before `until`.
    BackingOff {
        /// When the next attempt may start.
        until: OffsetDateTime,
    },
    /// On the way out.
    Stopping {
        /// Why.
        why: &'static str,
    },
}

/// The kinds of [`Mode`], for the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`Mode::Starting`].
    Starting,
    /// [`Mode::Recovering`].
    Recovering,
    /// [`Mode::Resuming`].
    Resuming,
    /// [`Mode::Idle`].
    Idle,
    /// [`Mode::Waiting`].
    Waiting,
    /// [`Mode::Rotating`].
    Rotating,
    /// [`Mode::CaTurn`].
    CaTurn,
    /// [`Mode::BackingOff`].
    BackingOff,
    /// [`Mode::Stopping`].
    Stopping,
}

impl Mode {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Mode::Starting => Kind::Starting,
            Mode::Recovering { .. } => Kind::Recovering,
            Mode::Resuming { .. } => Kind::Resuming,
            Mode::Idle => Kind::Idle,
            Mode::Waiting { .. } => Kind::Waiting,
            Mode::Rotating { .. } => Kind::Rotating,
            Mode::CaTurn { .. } => Kind::CaTurn,
            Mode::BackingOff { .. } => Kind::BackingOff,
            Mode::Stopping { .. } => Kind::Stopping,
        }
    }

    /// The state a node publishes for the cluster view (names older peers know).
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Starting => "starting",
            Mode::Recovering { .. } => "recovering",
            Mode::Resuming { .. } => "resuming",
            Mode::Idle => "idle",
            Mode::Waiting { .. } => "waiting",
            Mode::Rotating { .. } => "rotating",
            Mode::CaTurn { .. } => "ca-rotating",
            Mode::BackingOff { .. } => "backing-off",
            Mode::Stopping { .. } => "stopping",
        }
    }

    /// The step, in a mode that runs a rotation.
    pub fn step(&self) -> Option<&Step> {
        match self {
            Mode::Recovering { step, .. }
            | Mode::Resuming { step, .. }
            | Mode::Rotating { step, .. } => Some(step),
            _ => None,
        }
    }

    /// The rotation, in a mode that has one.
    pub fn rotation_id(&self) -> Option<&str> {
        match self {
            Mode::Recovering { id, .. }
            | Mode::Resuming { id, .. }
            | Mode::Rotating { id, .. }
            | Mode::Waiting { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Whether a rotation is under way (one that must be carried to its end before stopping).
    pub fn is_rotating(&self) -> bool {
        self.step().is_some() || matches!(self, Mode::CaTurn { .. })
    }
}

impl fmt::Display for Mode {
    /// The STATUS= line's words: what an operator reading `systemctl status` needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Starting => f.write_str("starting"),
            Mode::Recovering { id, step } => write!(f, "recovering etcd ({id}): {step}"),
            Mode::Resuming { id, step } => write!(f, "finishing interrupted rotation {id}: {step}"),
            Mode::Idle => f.write_str("idle"),
            Mode::Waiting { detail, .. } => f.write_str(detail),
            Mode::Rotating { id, step } => write!(f, "rotation {id}: {step}"),
            Mode::CaTurn { track, phase } => write!(f, "CA rotation of {track}: {phase}"),
            Mode::BackingOff { until } => write!(
                f,
                "backing off after a failed rotation until {}",
                crate::timefmt::rfc3339(*until)
            ),
            Mode::Stopping { why } => write!(f, "stopping ({why})"),
        }
    }
}

/// Whether the machine may go from `from` to `to`.
pub fn allowed(from: Kind, to: Kind) -> bool {
    use Kind::*;
    match (from, to) {
        // Stopping is the end.
        (Stopping, _) => false,
        // A rotation is carried to its end: it stops only by going back to Idle or BackingOff.
        (Recovering | Resuming | Rotating | CaTurn, Stopping) => false,
        (_, Stopping) => true,
        (Starting, Recovering | Idle) => true,
        (Idle, Recovering | Waiting | BackingOff | Idle | CaTurn) => true,
        (BackingOff, Recovering | Waiting | Idle | BackingOff | CaTurn) => true,
        // A CA turn takes the lease inside the engine; it ends where a rotation does.
        (CaTurn, CaTurn | Idle | BackingOff) => true,
        // The lease is held only after waiting for it: a leased rotation starts nowhere else.
        (Waiting, Waiting | Rotating | Resuming | Idle | BackingOff) => true,
        // The same rotation at its next step, or its end.
        (Recovering, Recovering | Idle | BackingOff) => true,
        (Resuming, Resuming | Idle | BackingOff) => true,
        (Rotating, Rotating | Idle | BackingOff) => true,
        _ => false,
    }
}

/// A transition the table refuses: a bug in the loop, logged, never acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the daemon cannot go from {from} to {to}")]
pub struct Refused {
    /// Where it was.
    pub from: &'static str,
    /// Where it was asked to go.
    pub to: &'static str,
}

/// The daemon's mode, changed only through allowed transitions.
#[derive(Debug)]
pub struct Machine {
    mode: Mode,
    stop: Option<&'static str>,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            mode: Mode::Starting,
            stop: None,
        }
    }
}

impl Machine {
    /// The mode now.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Goes to `to` if the table allows it. A rotation's later step must name the same rotation.
    pub fn go(&mut self, to: Mode) -> Result<(), Refused> {
        let (from_kind, to_kind) = (self.mode.kind(), to.kind());
        let same_rotation = match (self.mode.rotation_id(), to.rotation_id()) {
            (Some(a), Some(b)) if from_kind == to_kind || from_kind == Kind::Waiting => a == b,
            _ => true,
        };
        if !allowed(from_kind, to_kind) || !same_rotation {
            let refused = Refused {
                from: self.mode.name(),
                to: to.name(),
            };
            tracing::error!("{refused}");
            return Err(refused);
        }
        self.mode = to;
        Ok(())
    }

    /// Moves the rotation under way to `step` (refused outside a rotation).
    pub fn step(&mut self, step: Step) -> Result<(), Refused> {
        let to = match &self.mode {
            Mode::Recovering { id, .. } => Mode::Recovering {
                id: id.clone(),
                step,
            },
            Mode::Resuming { id, .. } => Mode::Resuming {
                id: id.clone(),
                step,
            },
            Mode::Rotating { id, .. } => Mode::Rotating {
                id: id.clone(),
                step,
            },
            other => {
                return Err(Refused {
                    from: other.name(),
                    to: "a rotation step",
                });
            }
        };
        self.go(to)
    }

    /// Remembers a request to stop; taken at the next mode a stop may leave from.
    pub fn request_stop(&mut self, why: &'static str) {
        self.stop.get_or_insert(why);
    }

    /// The stop requested, if any.
    pub fn stop_requested(&self) -> Option<&'static str> {
        self.stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Kind; 9] = [
        Kind::Starting,
        Kind::Recovering,
        Kind::Resuming,
        Kind::Idle,
        Kind::Waiting,
        Kind::Rotating,
        Kind::CaTurn,
        Kind::BackingOff,
        Kind::Stopping,
    ];

    fn rotating(id: &str, step: Step) -> Mode {
        Mode::Rotating {
            id: id.into(),
            step,
        }
    }

    #[test]
    fn a_rotation_is_never_left_for_stopping() {
        for from in [
            Kind::Recovering,
            Kind::Resuming,
            Kind::Rotating,
            Kind::CaTurn,
        ] {
            assert!(!allowed(from, Kind::Stopping), "{from:?}");
            assert!(allowed(from, Kind::Idle) && allowed(from, Kind::BackingOff));
        }
        for from in [Kind::Starting, Kind::Idle, Kind::Waiting, Kind::BackingOff] {
            assert!(allowed(from, Kind::Stopping), "{from:?}");
        }
        for to in ALL {
            assert!(!allowed(Kind::Stopping, to), "{to:?}");
        }
    }

    #[test]
    fn only_waiting_leads_into_a_leased_rotation() {
        for from in ALL {
            for leased in [Kind::Rotating, Kind::Resuming] {
                assert_eq!(
                    allowed(from, leased),
                    from == Kind::Waiting || from == leased,
                    "{from:?} -> {leased:?}"
                );
            }
        }
    }

    #[test]
    fn the_machine_refuses_what_the_table_refuses_and_stays_put() {
        let mut m = Machine::default();
        assert_eq!(
            m.go(rotating("r1", Step::Install)).unwrap_err().to,
            "rotating"
        );
        assert_eq!(m.mode(), &Mode::Starting);
        m.go(Mode::Idle).unwrap();
        m.go(Mode::Waiting {
            id: "r1".into(),
            detail: "waiting for the lease, position 2".into(),
        })
        .unwrap();
        // Another rotation cannot take over this one's turn.
        assert!(m.go(rotating("r2", Step::HealthGate)).is_err());
        m.go(rotating("r1", Step::HealthGate)).unwrap();
        m.step(Step::Install).unwrap();
        m.step(Step::Restart(Component::Etcd)).unwrap();
        assert_eq!(m.mode().to_string(), "rotation r1: restarting etcd");
        assert!(m.go(Mode::Stopping { why: "SIGTERM" }).is_err());
        m.request_stop("SIGTERM");
        m.request_stop("SIGINT");
        assert_eq!(m.stop_requested(), Some("SIGTERM"));
        m.go(Mode::Idle).unwrap();
        assert!(m.step(Step::Verify).is_err());
        m.go(Mode::Stopping { why: "SIGTERM" }).unwrap();
        assert!(m.go(Mode::Idle).is_err());
    }

    #[test]
    fn names_and_lines_say_what_it_does() {
        let waiting = Mode::Waiting {
            id: "r".into(),
            detail: "waiting for the lease, position 2 (held by cp1 at restart)".into(),
        };
        assert_eq!(waiting.name(), "waiting");
        assert_eq!(
            waiting.to_string(),
            "waiting for the lease, position 2 (held by cp1 at restart)"
        );
        let r = Mode::Resuming {
            id: "r".into(),
            step: Step::Verify,
        };
        assert_eq!(r.step().map(Step::name), Some("verify"));
        assert!(Step::Restart(Component::KubeApiserver).is_disruptive());
        assert!(!Step::Verify.is_disruptive());
    }
}
