//! One rotation session: the rotation lock held, the context every step runs in, and the
//! recovery of whatever a crash left, in that order. `certrotd renew`, `restore`, `recover` and
//! the daemon (planning, installing, rolling back, resuming) all open one, so the order —
//! lock first, then recovery, then the work — is written once.
//!
//! Also the one plan pipeline: resolve the selection, plan it, and read the plan the same way
//! everywhere ([`Plan::unrenewable`](super::plan::Plan::unrenewable) is left out and named, a
//! certificate named with `--cert` that cannot be renewed is refused).

use time::OffsetDateTime;

use super::finish_interrupted::{self, Interrupted};
use super::lock::{self, RotationLock};
use super::plan::{self, Plan, PlanOptions};
use super::select::{self, SelectError};
use super::{Context, Guard, RotationError, Selection, StateDirs};
use crate::inventory::Inventory;
use crate::root::Root;

/// The rotation lock, held until the session is dropped, and where rotations happen.
#[derive(Debug)]
pub struct Session {
    _lock: RotationLock,
    root: Root,
    state: StateDirs,
    backups_keep: usize,
}

impl Session {
    /// Takes the rotation lock (waiting for no one: a held lock is an error).
    pub fn open(
        root: &Root,
        state: &StateDirs,
        backups_keep: usize,
    ) -> Result<Self, RotationError> {
        Ok(Session {
            _lock: lock::acquire(state)?,
            root: root.clone(),
            state: state.clone(),
            backups_keep,
        })
    }

    /// The context a step runs in, asking `guard` before every disruptive step.
    pub fn context<'a>(&'a self, guard: &'a dyn Guard) -> Context<'a> {
        Context {
            root: &self.root,
            state: &self.state,
            backups_keep: self.backups_keep,
            guard,
        }
    }

    /// Finishes or rolls back every rotation a crash left, asking `guard` before each install
    /// of a roll-forward; see [`finish_interrupted::finish_all_at`].
    pub fn finish_interrupted(
        &self,
        guard: &dyn Guard,
        now: OffsetDateTime,
    ) -> Result<Vec<Interrupted>, RotationError> {
        finish_interrupted::finish_all_at(&self.context(guard), now)
    }
}

/// The plan for `selection` on the node `inv` describes: every selected certificate becomes an
/// item, or is skipped (externally managed), left out as unrenewable (selected by type but
/// broken), or refused (named with `--cert` but broken).
pub fn plan(
    inv: &Inventory,
    selection: &Selection,
    root: &Root,
    opts: &PlanOptions,
    now: OffsetDateTime,
) -> Result<Plan, SelectError> {
    let selected = select::select(inv, selection)?;
    Ok(plan::make(inv, &selected, root, opts, now))
}
