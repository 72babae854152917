//! The cluster phases of a CA rotation and the node level each one asks for.
//!
//! A node's files are always at one of four levels, each provable from its disk
//! ([`super::node::prove`]): `Original` (old CA only), `TrustBoth` (bundle old+new, old key and
//! leaves), `IssueNew` (bundle new+old, new key, leaves from the new CA), `DistrustOld` (new CA
//! only). A forward phase asks every node for the next level; rolling back walks the levels
//! down one at a time, each a cluster barrier of its own, because a peer that trusts only the new
//! CA would refuse a member that went straight back to old-CA certificates.

use serde::{Deserialize, Serialize};

/// What a node's files hold, in the order a rotation passes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Before the rotation: the old CA alone.
    Original,
    /// Bundle `old,new`; the old key signs; leaves from the old CA.
    TrustBoth,
    /// Bundle `new,old`; the new key signs; leaves from the new CA.
    IssueNew,
    /// Bundle `new`: the old CA is trusted nowhere.
    DistrustOld,
}

impl Level {
    /// The level above (None at the top).
    pub fn up(self) -> Option<Level> {
        match self {
            Level::Original => Some(Level::TrustBoth),
            Level::TrustBoth => Some(Level::IssueNew),
            Level::IssueNew => Some(Level::DistrustOld),
            Level::DistrustOld => None,
        }
    }

    /// The level below (None at the bottom).
    pub fn down(self) -> Option<Level> {
        match self {
            Level::Original => None,
            Level::TrustBoth => Some(Level::Original),
            Level::IssueNew => Some(Level::TrustBoth),
            Level::DistrustOld => Some(Level::IssueNew),
        }
    }

    /// The name used in the record, backups and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Original => "original",
            Level::TrustBoth => "trust-both",
            Level::IssueNew => "issue-new",
            Level::DistrustOld => "distrust-old",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cluster phase of one track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase", content = "to")]
pub enum Phase {
    /// Recorded, the new CA made; no node has changed anything.
    Planned,
    /// Every node trusts both CAs.
    TrustBoth,
    /// Every node issues from the new CA.
    IssueNew,
    /// Every node trusts only the new CA.
    DistrustOld,
    /// Done; the old CA is in no file.
    Completed,
    /// Walking back down: every node is asked for this level, then the one below.
    RollingBack(Level),
    /// Rolled back: every node holds the old CA alone again.
    RolledBack,
}

/// A transition the phase machine refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CA rotation cannot move from {from} to {to}")]
pub struct BadTransition {
    /// Where it stood.
    pub from: Phase,
    /// Where it was asked to go.
    pub to: Phase,
}

impl Phase {
    /// The level every node must reach (and prove) before this phase may end.
    pub fn target(self) -> Level {
        match self {
            Phase::Planned | Phase::RolledBack => Level::Original,
            Phase::TrustBoth => Level::TrustBoth,
            Phase::IssueNew => Level::IssueNew,
            Phase::DistrustOld | Phase::Completed => Level::DistrustOld,
            Phase::RollingBack(to) => to,
        }
    }

    /// Whether the rotation is over (a new one may start).
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Completed | Phase::RolledBack)
    }

    /// The phase that follows once every node has reached [`Phase::target`] and the dwell passed.
    pub fn next(self) -> Option<Phase> {
        Some(match self {
            Phase::Planned => Phase::TrustBoth,
            Phase::TrustBoth => Phase::IssueNew,
            Phase::IssueNew => Phase::DistrustOld,
            Phase::DistrustOld => Phase::Completed,
            Phase::RollingBack(Level::Original) => Phase::RolledBack,
            Phase::RollingBack(level) => Phase::RollingBack(level.down()?),
            Phase::Completed | Phase::RolledBack => return None,
        })
    }

    /// The phase an abort leads to: one level below what the nodes were asked for, or straight
    /// to `RolledBack` when nothing was changed yet. `None` when there is nothing to abort.
    pub fn abort(self) -> Option<Phase> {
        match self {
            Phase::Planned => Some(Phase::RolledBack),
            Phase::TrustBoth | Phase::IssueNew | Phase::DistrustOld => {
                Some(Phase::RollingBack(self.target().down()?))
            }
            Phase::RollingBack(_) | Phase::Completed | Phase::RolledBack => None,
        }
    }

    /// Checks that `self → to` is a step of the machine: the next phase, or an abort.
    pub fn check(self, to: Phase) -> Result<(), BadTransition> {
        if self.next() == Some(to) || self.abort() == Some(to) {
            Ok(())
        } else {
            Err(BadTransition { from: self, to })
        }
    }

    /// The name shown by `certrotd ca status` and in events.
    pub fn name(self) -> String {
        match self {
            Phase::Planned => "Planned".to_owned(),
            Phase::TrustBoth => "TrustBoth".to_owned(),
            Phase::IssueNew => "IssueNew".to_owned(),
            Phase::DistrustOld => "DistrustOld".to_owned(),
            Phase::Completed => "Completed".to_owned(),
            Phase::RollingBack(to) => format!("RollingBack({to})"),
            Phase::RolledBack => "RolledBack".to_owned(),
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forward_path_raises_the_level_one_step_per_phase() {
        let mut p = Phase::Planned;
        let mut seen = vec![p.target()];
        while let Some(n) = p.next() {
            p.check(n).unwrap();
            p = n;
            seen.push(p.target());
        }
        assert_eq!(p, Phase::Completed);
        assert_eq!(
            seen,
            [
                Level::Original,
                Level::TrustBoth,
                Level::IssueNew,
                Level::DistrustOld,
                Level::DistrustOld
            ]
        );
    }

    #[test]
    fn an_abort_walks_down_one_level_per_barrier_to_the_old_ca() {
        let mut p = Phase::DistrustOld.abort().unwrap();
        Phase::DistrustOld.check(p).unwrap();
        let mut levels = vec![p.target()];
        while let Some(n) = p.next() {
            p.check(n).unwrap();
            p = n;
            levels.push(p.target());
        }
        assert_eq!(p, Phase::RolledBack);
        assert_eq!(
            levels,
            [
                Level::IssueNew,
                Level::TrustBoth,
                Level::Original,
                Level::Original
            ]
        );
        assert_eq!(Phase::Planned.abort(), Some(Phase::RolledBack));
        assert_eq!(
            Phase::TrustBoth.abort(),
            Some(Phase::RollingBack(Level::Original))
        );
    }

    #[test]
    fn skipping_a_phase_or_leaving_a_final_one_is_refused() {
        assert!(Phase::Planned.check(Phase::IssueNew).is_err());
        assert!(Phase::TrustBoth.check(Phase::Completed).is_err());
        assert!(
            Phase::Completed
                .check(Phase::RollingBack(Level::IssueNew))
                .is_err()
        );
        assert!(Phase::RolledBack.check(Phase::TrustBoth).is_err());
        assert!(Phase::Completed.abort().is_none());
        assert!(
            Phase::RollingBack(Level::TrustBoth)
                .check(Phase::TrustBoth)
                .is_err()
        );
    }

    #[test]
    fn phases_read_back_from_json() {
        for p in [Phase::IssueNew, Phase::RollingBack(Level::TrustBoth)] {
            let text = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Phase>(&text).unwrap(), p, "{text}");
        }
    }
}
