//! Restore: `certrotd restore <id>` puts the backup of one chosen rotation back, on request.
//! Unlike finishing an interrupted rotation ([`super::finish_interrupted`]), which decides for
//! itself between rolling forward and back, this always rolls back, and only when asked.

use super::execute;
use super::finish_interrupted::open_backup;
use super::journal::{Journal, Outcome};
use super::{Context, RotationError, check_guard};
use crate::pki::layout::Component;
use crate::store::{self, RestoreReport};

/// What `restore` did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Paths put back, removed or already as saved.
    pub report: RestoreReport,
    /// Components that read those files.
    pub consumers: Vec<Component>,
}

/// Puts the backup of rotation `id` back (journaled, so a crash mid-way is finished by the next
/// recovery). The caller holds the rotation lock and has run recovery.
pub fn restore(ctx: &Context<'_>, id: &str) -> Result<Restored, RotationError> {
    store::validate_rotation_id(id)?;
    let backup = open_backup(ctx, id)?;
    check_guard(ctx.guard, "restoring the backup")?;
    let dir = ctx.state.rotation(id);
    match Journal::load(&dir)? {
        Some(mut j) => {
            let report = execute::restore(&dir, &mut j, &backup, Outcome::RestoredOnRequest)?;
            Ok(Restored {
                report,
                consumers: j.consumers,
            })
        }
        None => Ok(Restored {
            report: backup.restore()?,
            consumers: Vec::new(),
        }),
    }
}
