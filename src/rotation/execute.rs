//! Execute: take a plan through every step of a rotation, journaling each before it begins.
//!
//! Until the journal says `installing`, a failure abandons the rotation (nothing was installed, so
//! there is nothing to undo). Once installing, a failure restores the backup; a lost guard stops
//! at once and leaves the journal saying `installing`, so whoever next holds the guard rolls the
//! rotation forward from its staged contents.

use std::collections::BTreeSet;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::build::{self, Renewed};
use super::journal::{self, Change, Journal, Outcome, Phase};
use super::plan::Plan;
use super::{Context, RotationError, check_guard, stage};
use crate::failpoint::{self, Failpoint};
use crate::pki::layout::Component;
use crate::store::{self, Backup, Expect, FileMode, NodeFile, RestoreReport};

/// What a committed rotation did.
#[derive(Debug)]
pub struct Report {
    /// The rotation id (and backup name).
    pub id: String,
    /// The new certificates.
    pub renewed: Vec<Renewed>,
    /// Every path changed (real paths).
    pub paths: Vec<PathBuf>,
    /// Components that must be restarted to use them.
    pub consumers: Vec<Component>,
    /// The backup of the old files.
    pub backup_dir: PathBuf,
    /// What the issuers had to say (the plan's own notes are in the plan).
    pub notes: Vec<String>,
    /// Backups deleted to keep only the configured number.
    pub pruned: Vec<String>,
}

/// Runs a plan (its refusals must be empty). The caller holds the rotation lock and has run
/// recovery, so no other rotation is unfinished.
pub fn run(ctx: &Context<'_>, plan: &Plan) -> Result<Report, RotationError> {
    if let Some(r) = plan.refused.first() {
        return Err(RotationError::Renew {
            name: r.name.clone(),
            reason: r.reason.clone(),
        });
    }
    let rotations = ctx.state.rotations();
    create_private_dir(&rotations)?;
    let dir = ctx.state.rotation(&plan.id);
    DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(RotationError::io("create rotation directory", &dir))?;
    store::fsync_dir(&rotations)?;

    let mut paths: Vec<PathBuf> = Vec::new();
    for item in &plan.items {
        for p in item.files() {
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    let consumers: BTreeSet<Component> = plan
        .items
        .iter()
        .flat_map(|i| i.consumers.iter().copied())
        .collect();
    let mut journal = Journal::new(
        &plan.id,
        plan.now,
        plan.items.iter().map(|i| i.name().to_owned()).collect(),
        consumers.into_iter().collect(),
        paths.clone(),
    );
    journal.save(&dir)?;
    info!(rotation = %plan.id, certificates = plan.items.len(), "rotation planned");

    let prepared = prepare(ctx, plan, &dir, &mut journal, &paths)
        .and_then(|p| check_guard(ctx.guard, "installing").map(|()| p));
    let (backup, built) = match prepared {
        Ok(p) => p,
        Err(cause) => return Err(abandon(ctx, &dir, &mut journal, cause)),
    };
    if let Err(cause) = journal.advance(&dir, Phase::Installing) {
        // The journal still says staged: nothing was installed.
        return Err(abandon(ctx, &dir, &mut journal, cause));
    }

    let contents: Vec<Option<&[u8]>> = journal
        .changes
        .iter()
        .map(|c| {
            built
                .files
                .iter()
                .find(|f| f.path == c.path() && matches!(c, Change::File { .. }))
                .map(|f| f.contents.as_slice())
        })
        .collect();
    let installed = failpoint::hit(Failpoint::JournalInstalling)
        .map_err(RotationError::from)
        .and_then(|()| {
            install_all(
                ctx,
                &journal.changes,
                &contents,
                Failpoint::Installed,
                Some(&backup),
            )
        })
        .and_then(|()| verify_installed(&dir, &journal.changes))
        .and_then(|()| failpoint::hit(Failpoint::InstalledVerified).map_err(Into::into));
    match installed {
        Ok(()) => {}
        // Stop where we are; the journal says installing and the next holder rolls forward.
        Err(e @ RotationError::GuardLost { .. }) => return Err(e),
        Err(cause) => return Err(roll_back(&dir, &mut journal, &backup, cause)),
    }
    // If this write fails the journal still says installing, and every change is in place: the
    // next start rolls it forward, which here only commits.
    journal.advance(&dir, Phase::Committed)?;
    info!(rotation = %plan.id, "rotation committed");

    // Committed is committed: what follows only tidies up, and the next start finishes it.
    let mut notes = built.notes;
    let pruned = match failpoint::hit(Failpoint::JournalCommitted)
        .map_err(RotationError::from)
        .and_then(|()| finish(ctx, &plan.id, &dir))
    {
        Ok(pruned) => pruned,
        Err(e) => {
            warn!(rotation = %plan.id, error = %e, "cleaning up after the commit failed");
            notes.push(format!(
                "cleaning up after the commit failed ({e}); the next start finishes it"
            ));
            Vec::new()
        }
    };

    Ok(Report {
        id: plan.id.clone(),
        renewed: built.renewed,
        paths,
        consumers: journal.consumers.clone(),
        backup_dir: backup.dir().to_owned(),
        notes,
        pruned,
    })
}

/// Backup, build, stage: everything before the first install.
fn prepare(
    ctx: &Context<'_>,
    plan: &Plan,
    dir: &Path,
    journal: &mut Journal,
    paths: &[PathBuf],
) -> Result<(Backup, build::Built), RotationError> {
    failpoint::hit(Failpoint::JournalPlanned)?;
    let mut backup = Backup::create(&ctx.state.backups(), &plan.id, plan.now)?;
    failpoint::hit(Failpoint::BackupCreated)?;
    for p in paths {
        backup.save(p)?;
        failpoint::hit(Failpoint::BackupSaved)?;
    }
    journal.advance(dir, Phase::BackedUp)?;
    failpoint::hit(Failpoint::JournalBackedUp)?;

    let built = build::build(plan)?;
    journal.changes = stage::persist(dir, &built)?;
    journal.advance(dir, Phase::Staged)?;
    failpoint::hit(Failpoint::JournalStaged)?;

    // Another writer (the kubelet rotating its own certificate, an operator) must not be
    // overwritten: every file must still be what was backed up and built upon.
    for p in paths {
        if !backup.matches_current(p)? {
            return Err(RotationError::Changed { path: p.clone() });
        }
    }
    Ok((backup, built))
}

/// Installs every change in order (files, then symlinks), asking the guard before each.
/// `contents[i]` is the new content of `changes[i]` when it is a file. With the rotation's
/// `backup`, each install replaces only the very file or link that was backed up, or creates
/// what was absent; without it (recovery, after [`super::finish_interrupted`] set aside what it found),
/// whatever stands there is replaced, never followed.
pub(crate) fn install_all(
    ctx: &Context<'_>,
    changes: &[Change],
    contents: &[Option<&[u8]>],
    point: Failpoint,
    backup: Option<&Backup>,
) -> Result<(), RotationError> {
    for (change, data) in changes.iter().zip(contents) {
        check_guard(
            ctx.guard,
            &format!("installing {}", change.path().display()),
        )?;
        let expect = backup.map_or(Expect::Displaced, |b| b.expect(change.path()));
        install(change, *data, expect)?;
        failpoint::hit(point)?;
    }
    Ok(())
}

/// Installs one change atomically, replacing only what `expect` allows. A file holding a
/// private key is written 0600 or stricter, whatever the mode of the file it replaces.
pub(crate) fn install(
    change: &Change,
    data: Option<&[u8]>,
    expect: Expect,
) -> Result<(), RotationError> {
    match change {
        Change::File { path, new_mode, .. } => {
            let data = data.ok_or_else(|| RotationError::StagedCorrupt {
                path: path.clone(),
                staged: PathBuf::new(),
            })?;
            let mode = if holds_private_key(path, data) {
                FileMode::Secret {
                    new: new_mode & 0o600,
                }
            } else {
                FileMode::Keep { new: *new_mode }
            };
            store::write_node_file(path, data, mode, expect)?;
        }
        Change::Symlink { path, target } => store::replace_symlink(path, target, expect)?,
    }
    Ok(())
}

/// Whether new content carries a PEM private key (a key file, or certificate and key together).
fn holds_private_key(path: &Path, data: &[u8]) -> bool {
    crate::pki::pem::blocks(path, data).is_ok_and(|blocks| {
        blocks
            .iter()
            .any(|b| crate::pki::key::is_key_label(&b.label))
    })
}

/// Whether a change is in place: the file holds the staged digest, the link says the target.
/// Nothing is followed: a link, device or FIFO where a file belongs is simply not the change,
/// and is never opened.
pub(crate) fn is_installed(change: &Change) -> Result<bool, RotationError> {
    match change {
        Change::File { path, sha256, .. } => Ok(match store::read_node_file(path)? {
            NodeFile::File(data) => store::sha256_hex(&data).eq_ignore_ascii_case(sha256),
            NodeFile::Absent | NodeFile::Other(_) => false,
        }),
        Change::Symlink { path, target } => match std::fs::read_link(path) {
            Ok(t) => Ok(t == *target),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(false),
            Err(e) => Err(RotationError::io("read symlink", path)(e)),
        },
    }
}

/// Reads every change back: what is on disk must be what was staged.
pub(crate) fn verify_installed(dir: &Path, changes: &[Change]) -> Result<(), RotationError> {
    for c in changes {
        if !is_installed(c)? {
            return Err(RotationError::SelfCheck {
                what: format!("{} after installing it", c.path().display()),
                reason: format!(
                    "it does not hold what rotation {} staged",
                    dir.file_name().unwrap_or_default().to_string_lossy()
                ),
            });
        }
    }
    Ok(())
}

/// Gives up a rotation that installed nothing: the journal says so, the staged keys go, and so
/// does its backup.
pub(crate) fn abandon(
    ctx: &Context<'_>,
    dir: &Path,
    journal: &mut Journal,
    cause: RotationError,
) -> RotationError {
    warn!(rotation = %journal.id, error = %cause, "rotation abandoned before installing anything");
    journal.outcome = Some(Outcome::Abandoned {
        why: cause.to_string(),
    });
    let closed = journal
        .advance(dir, Phase::RolledBack)
        .and_then(|()| stage::remove(dir));
    if closed.is_ok() {
        discard_backup(ctx, &journal.id);
    }
    given_up(journal, dir, cause, closed)
}

/// How a rotation given up for `cause` ended: rolled back once `closing` it worked, stuck (a
/// person must look) when closing it failed too.
fn given_up(
    journal: &Journal,
    dir: &Path,
    cause: RotationError,
    closing: Result<(), RotationError>,
) -> RotationError {
    let id = journal.id.clone();
    match closing {
        Ok(()) => RotationError::RolledBack {
            id,
            cause: Box::new(cause),
        },
        Err(e) => RotationError::Stuck {
            id,
            dir: dir.to_owned(),
            cause: Box::new(cause),
            rollback: Box::new(e),
        },
    }
}

/// Deletes the backup of a rotation closed before it installed anything, and the journals of
/// older rotations that are over and have no backup left. A failed attempt (a remote CA that
/// does not answer, retried every few minutes) must not leave a copy of the node's private keys
/// behind each time, nor a journal. If the backup cannot be deleted now, the next recovery does.
pub(crate) fn discard_backup(ctx: &Context<'_>, id: &str) {
    if let Err(e) = store::remove(&ctx.state.backups(), id) {
        warn!(rotation = %id, error = %e, "cannot delete the backup of an abandoned rotation");
        return;
    }
    if let Err(e) = drop_orphan_journals(ctx, id) {
        warn!(error = %e, "cannot delete the journals of finished rotations");
    }
}

/// Restores the backup of a rotation that may have installed some changes.
pub(crate) fn roll_back(
    dir: &Path,
    journal: &mut Journal,
    backup: &Backup,
    cause: RotationError,
) -> RotationError {
    warn!(rotation = %journal.id, error = %cause, "rolling back");
    let outcome = Outcome::RolledBack {
        why: cause.to_string(),
    };
    let restored = restore(dir, journal, backup, outcome).map(drop);
    given_up(journal, dir, cause, restored)
}

/// Journals `rolling-back`, restores the backup, journals `rolled-back` with `outcome`, and
/// deletes the staged keys. Safe to run again after a crash at any point.
pub(crate) fn restore(
    dir: &Path,
    journal: &mut Journal,
    backup: &Backup,
    outcome: Outcome,
) -> Result<RestoreReport, RotationError> {
    journal.advance(dir, Phase::RollingBack)?;
    failpoint::hit(Failpoint::JournalRollingBack)?;
    let report = backup.restore()?;
    failpoint::hit(Failpoint::Restored)?;
    journal.outcome = Some(outcome);
    journal.advance(dir, Phase::RolledBack)?;
    stage::remove(dir)?;
    Ok(report)
}

/// After a commit: delete the staged keys, keep only the newest backups, and drop the journals
/// of rotations whose backups are gone.
pub(crate) fn finish(
    ctx: &Context<'_>,
    id: &str,
    dir: &Path,
) -> Result<Vec<String>, RotationError> {
    stage::remove(dir)?;
    failpoint::hit(Failpoint::StagedRemoved)?;
    // Backups of rotations that were undone hold what the node holds again: they go first.
    let undone: Vec<String> = store::list(&ctx.state.backups())?
        .into_iter()
        .map(|s| s.id)
        .filter(|other| {
            matches!(
                Journal::load(&ctx.state.rotation(other)),
                Ok(Some(j)) if j.phase == Phase::RolledBack
            )
        })
        .collect();
    let undone: Vec<&str> = undone.iter().map(String::as_str).collect();
    let pruned = store::prune(&ctx.state.backups(), ctx.backups_keep, &[id], &undone)?;
    drop_orphan_journals(ctx, id)?;
    failpoint::hit(Failpoint::Pruned)?;
    Ok(pruned)
}

/// Deletes the directories of rotations (other than `id`) that are over and whose backups are
/// gone: nothing can restore them any more. An unreadable journal is kept for a person.
fn drop_orphan_journals(ctx: &Context<'_>, id: &str) -> Result<(), RotationError> {
    let kept: BTreeSet<String> = store::list(&ctx.state.backups())?
        .into_iter()
        .map(|s| s.id)
        .collect();
    for (other, other_dir) in journal::list(ctx.state)? {
        if other == id || kept.contains(&other) {
            continue;
        }
        if let Ok(Some(j)) = Journal::load(&other_dir)
            && j.phase.is_final()
        {
            std::fs::remove_dir_all(&other_dir).map_err(RotationError::io(
                "remove old rotation directory",
                &other_dir,
            ))?;
        }
    }
    Ok(())
}

/// Creates a directory (and parents) that will hold private keys: 0700.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), RotationError> {
    if !dir.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(RotationError::io("create directory", dir))?;
        if let Some(parent) = dir.parent() {
            store::fsync_dir(parent)?;
        }
    }
    Ok(())
}
