//! Finishing interrupted rotations: finish or undo every rotation a crash (or a lost guard) left
//! unfinished, so that each one's files are all-old or all-new. (`certrotd recover` runs this;
//! the word "recovery" elsewhere means the all-expired etcd case, `daemon::cluster_recovery`.
//! Putting a chosen rotation's backup back on request is [`super::restore`].)
//!
//! | journal phase            | staged contents verify | what finishing does                        |
//! |--------------------------|------------------------|--------------------------------------------|
//! | (no journal)             | –                      | removes the empty rotation directory       |
//! | (unreadable, unknown)    | –                      | quarantines it, touches none of its files  |
//! | planned, backed-up       | –                      | abandons it: nothing was installed         |
//! | staged                   | yes / no               | rolls forward / abandons it                |
//! | installing               | yes / no               | rolls forward / restores the backup        |
//! | rolling-back             | –                      | restores the backup (again)                |
//! | committed, rolled-back   | –                      | deletes leftover staged keys (and the      |
//! |                          |                        | backup of an abandoned one)                |
//!
//! "Verify" means more than the digests: every staged certificate is judged again at the time
//! of the recovery ([`super::recheck`]), and every file not installed yet must still hold what
//! was backed up (someone else may have written it since the crash). A staged rotation that fails
//! either is abandoned; an installing one is restored, naming the file.
//!
//! Each rotation is dealt with on its own: one whose journal cannot be trusted (unreadable, an
//! unknown version, paths outside the node root) is moved whole to `<state>/quarantine/<id>` and
//! the others are still recovered, so one bad file never stops the daemon.
//!
//! Neither rolling forward nor restoring silently loses a file someone else wrote meanwhile: a
//! file that is neither the rotation's old nor its new content is copied to
//! `<rotation>/displaced/` first.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use tracing::{error, info, warn};

use super::execute;
use super::journal::{self, Change, Journal, Outcome, Phase};
use super::{Context, RotationError, check_guard, recheck, stage};
use crate::failpoint::Failpoint;
use crate::pki::layout::Component;
use crate::store::{self, Backup};

/// What recovery did to one rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// It had installed nothing; it was closed as rolled back (and its backup deleted).
    Abandoned,
    /// Its staged contents were installed and it was committed.
    RolledForward,
    /// Its backup was restored.
    RolledBack,
    /// It was finished already; leftovers (staged keys, an empty directory) were removed.
    CleanedUp,
    /// Its journal could not be trusted; the rotation's directory was moved to
    /// `<state>/quarantine/` and none of its files was touched.
    Quarantined {
        /// Why (names the journal or the path; never file contents).
        reason: String,
        /// Where the rotation's directory is now.
        moved_to: PathBuf,
    },
    /// Recovering it failed (an I/O error, a backup that cannot be restored); it stays open and
    /// the next recovery tries again.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// One rotation recovery dealt with.
#[derive(Debug, Clone)]
pub struct Interrupted {
    /// The rotation id.
    pub id: String,
    /// What was done.
    pub action: Resolution,
    /// Components to restart (after a roll-forward installed new certificates).
    pub consumers: Vec<Component>,
    /// Things an operator should know (a file displaced, why staged contents were refused).
    pub warnings: Vec<String>,
}

impl Interrupted {
    fn only(id: &str, action: Resolution) -> Interrupted {
        Interrupted {
            id: id.to_owned(),
            action,
            consumers: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Recovers every unfinished rotation, oldest first, judging staged certificates at the current
/// time (the CLI's entry; the daemon passes its clock to [`finish_all_at`]). The caller holds the
/// rotation lock.
pub fn finish_all(ctx: &Context<'_>) -> Result<Vec<Interrupted>, RotationError> {
    finish_all_at(ctx, OffsetDateTime::now_utc())
}

/// Recovers every unfinished rotation, oldest first, each on its own: a rotation that cannot be
/// trusted is quarantined and one that fails stays open, and either is reported in its
/// [`Interrupted`] while the others go on. Errors only when nothing can go on: the rotations
/// directory cannot be read, or the guard was lost. The caller holds the rotation lock.
pub fn finish_all_at(
    ctx: &Context<'_>,
    now: OffsetDateTime,
) -> Result<Vec<Interrupted>, RotationError> {
    let mut out = Vec::new();
    for (id, dir) in journal::list(ctx.state)? {
        let result = match Journal::load(&dir) {
            Ok(j) => finish_dir(ctx, &id, &dir, j, now),
            Err(e) => Err(Trouble::Untrusted(e)),
        };
        match result {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(Trouble::Failed(e @ RotationError::GuardLost { .. })) => return Err(e),
            Err(Trouble::Failed(e)) => {
                error!(rotation = %id, error = %e, "recovering the rotation failed; it stays open");
                out.push(Interrupted::only(
                    &id,
                    Resolution::Failed {
                        error: e.to_string(),
                    },
                ));
            }
            Err(Trouble::Untrusted(e)) => out.push(quarantine(ctx, &id, &dir, &e)),
        }
    }
    Ok(out)
}

/// Why one rotation could not be recovered.
enum Trouble {
    /// Its journal or backup cannot be trusted: quarantine it, guess nothing.
    Untrusted(RotationError),
    /// Something failed on the way: it stays open.
    Failed(RotationError),
}

impl From<RotationError> for Trouble {
    fn from(e: RotationError) -> Trouble {
        match e {
            RotationError::OutsideRoot { .. } | RotationError::Journal { .. } => {
                Trouble::Untrusted(e)
            }
            e => Trouble::Failed(e),
        }
    }
}

fn finish_dir(
    ctx: &Context<'_>,
    id: &str,
    dir: &Path,
    j: Option<Journal>,
    now: OffsetDateTime,
) -> Result<Option<Interrupted>, Trouble> {
    let Some(j) = j else {
        // A crash between creating the directory and the first journal write: nothing else of
        // this rotation exists yet.
        std::fs::remove_dir_all(dir)
            .map_err(RotationError::io("remove empty rotation directory", dir))?;
        store::fsync_dir(&ctx.state.rotations()).map_err(RotationError::from)?;
        return Ok(Some(Interrupted::only(id, Resolution::CleanedUp)));
    };
    if !j.phase.is_final() {
        return finish_one(ctx, dir, j, now).map(Some);
    }
    let mut cleaned = false;
    if stage::dir(dir).exists() {
        stage::remove(dir)?;
        cleaned = true;
    }
    // A crash between closing an abandoned rotation and deleting its backup.
    let abandoned = j.outcome.as_ref().is_some_and(Outcome::is_abandoned);
    if abandoned && ctx.state.backups().join(id).exists() {
        store::remove(&ctx.state.backups(), id).map_err(RotationError::from)?;
        cleaned = true;
    }
    Ok(cleaned.then(|| Interrupted::only(id, Resolution::CleanedUp)))
}

/// Moves a rotation that cannot be trusted to `<state>/quarantine/<id>` (another name if that is
/// taken), touching nothing it names.
fn quarantine(ctx: &Context<'_>, id: &str, dir: &Path, why: &RotationError) -> Interrupted {
    let reason = why.to_string();
    let moved = (|| -> Result<PathBuf, RotationError> {
        let q = ctx.state.quarantine();
        execute::create_private_dir(&q)?;
        let mut to = q.join(id);
        let mut n = 1;
        while std::fs::symlink_metadata(&to).is_ok() {
            to = q.join(format!("{id}.{n}"));
            n += 1;
        }
        std::fs::rename(dir, &to).map_err(RotationError::io("move to quarantine", dir))?;
        store::fsync_dir(&q)?;
        store::fsync_dir(&ctx.state.rotations())?;
        Ok(to)
    })();
    match moved {
        Ok(to) => {
            error!(
                rotation = %id,
                reason = %reason,
                quarantine = %to.display(),
                "rotation quarantined: its journal cannot be trusted, its files were left as they are"
            );
            Interrupted::only(
                id,
                Resolution::Quarantined {
                    reason,
                    moved_to: to,
                },
            )
        }
        Err(e) => Interrupted::only(
            id,
            Resolution::Failed {
                error: format!("{reason}; moving it to quarantine failed: {e}"),
            },
        ),
    }
}

fn finish_one(
    ctx: &Context<'_>,
    dir: &Path,
    mut j: Journal,
    now: OffsetDateTime,
) -> Result<Interrupted, Trouble> {
    info!(rotation = %j.id, phase = j.phase.as_str(), "recovering an unfinished rotation");
    let named = j.paths.iter().map(PathBuf::as_path);
    inside_root(ctx, &j.id, named.chain(j.changes.iter().map(Change::path)))?;
    // A backup naming a path outside the root is refused before anything is touched; one that
    // is missing or damaged only matters where it is needed.
    let backup = match open_backup(ctx, &j.id) {
        Ok(b) => Ok(b),
        Err(e @ RotationError::OutsideRoot { .. }) => return Err(Trouble::Untrusted(e)),
        Err(e) => Err(e),
    };
    remove_temps(ctx, dir, &j);
    let mut warnings = Vec::new();
    let id = j.id.clone();
    let action = match j.phase {
        Phase::Planned | Phase::BackedUp => abandon_after_crash(
            ctx,
            dir,
            &mut j,
            "interrupted before anything was installed".into(),
        )?,
        Phase::Staged | Phase::Installing => {
            match forward_blocker(dir, &j, backup.as_ref().ok(), now) {
                Ok(contents) => {
                    roll_forward(
                        ctx,
                        dir,
                        &mut j,
                        backup.as_ref().ok(),
                        &contents,
                        &mut warnings,
                    )?;
                    Resolution::RolledForward
                }
                Err(why) if j.phase == Phase::Staged => {
                    warnings.push(why.clone());
                    abandon_after_crash(ctx, dir, &mut j, why)?
                }
                Err(why) => {
                    warnings.push(why.clone());
                    let backup = backup?;
                    restore_after_crash(ctx, dir, &mut j, &backup, why, &mut warnings)?;
                    Resolution::RolledBack
                }
            }
        }
        Phase::RollingBack => {
            let backup = backup?;
            check_guard(ctx.guard, "restoring the backup")?;
            let outcome = j
                .outcome
                .clone()
                .unwrap_or(Outcome::RolledBackInterrupted { why: String::new() });
            execute::restore(dir, &mut j, &backup, outcome)?;
            Resolution::RolledBack
        }
        Phase::Committed | Phase::RolledBack => Resolution::CleanedUp,
    };
    for w in &warnings {
        warn!(rotation = %id, "{w}");
    }
    info!(rotation = %id, action = ?action, "rotation recovered");
    Ok(Interrupted {
        id,
        consumers: if action == Resolution::RolledForward {
            j.consumers.clone()
        } else {
            Vec::new()
        },
        action,
        warnings,
    })
}

/// The staged contents if rolling forward is safe, or why it is not: a staged content is
/// missing or corrupt, a staged certificate no longer passes its checks at `now`, or a file not
/// installed yet no longer holds what was backed up.
fn forward_blocker(
    dir: &Path,
    j: &Journal,
    backup: Option<&Backup>,
    now: OffsetDateTime,
) -> Result<Vec<Option<Vec<u8>>>, String> {
    let contents = stage::read_all(dir, &j.changes).map_err(|e| e.to_string())?;
    recheck::staged(&j.changes, &contents, now).map_err(|e| e.to_string())?;
    for change in &j.changes {
        if execute::is_installed(change).map_err(|e| e.to_string())? {
            continue;
        }
        let path = change.path();
        match backup {
            // Unreadable counts as changed: nothing proves it is the old content.
            Some(b) if !b.matches_current(path).unwrap_or(false) => {
                return Err(RotationError::Changed {
                    path: path.to_owned(),
                }
                .to_string());
            }
            Some(_) => {}
            // Nothing tells old content from a stranger's: only a rotation that installed
            // nothing yet can be given up safely; one that did is finished (displacing
            // whatever is neither old nor new).
            None if j.phase == Phase::Staged => {
                return Err(format!(
                    "its backup cannot be read, so nothing proves {} still holds what the \
                     rotation built on",
                    path.display()
                ));
            }
            None => {}
        }
    }
    Ok(contents)
}

fn abandon_after_crash(
    ctx: &Context<'_>,
    dir: &Path,
    j: &mut Journal,
    why: String,
) -> Result<Resolution, RotationError> {
    j.outcome = Some(Outcome::AbandonedInterrupted { why });
    j.advance(dir, Phase::RolledBack)?;
    stage::remove(dir)?;
    execute::discard_backup(ctx, &j.id);
    Ok(Resolution::Abandoned)
}

/// Restores the backup of a rotation that installed part of its changes, keeping aside a file
/// someone else wrote meanwhile.
fn restore_after_crash(
    ctx: &Context<'_>,
    dir: &Path,
    j: &mut Journal,
    backup: &Backup,
    why: String,
    warnings: &mut Vec<String>,
) -> Result<(), RotationError> {
    check_guard(ctx.guard, "restoring the backup")?;
    for (i, change) in j.changes.iter().enumerate() {
        let old = backup.matches_current(change.path()).unwrap_or(false);
        if !old && !execute::is_installed(change)? {
            keep_aside(dir, i, change.path(), &j.id, warnings)?;
        }
    }
    execute::restore(dir, j, backup, Outcome::RolledBackInterrupted { why })?;
    Ok(())
}

/// Copies a file that is neither a rotation's old nor its new content aside, and says so.
fn keep_aside(
    dir: &Path,
    index: usize,
    path: &Path,
    id: &str,
    warnings: &mut Vec<String>,
) -> Result<(), RotationError> {
    if let Some(saved) = displace(dir, index, path)? {
        warnings.push(format!(
            "{} held neither the old nor the new content of rotation {id}; it was kept as {}",
            path.display(),
            saved.display()
        ));
    }
    Ok(())
}

/// Installs what is not installed yet, then commits as a normal run would.
fn roll_forward(
    ctx: &Context<'_>,
    dir: &Path,
    j: &mut Journal,
    backup: Option<&Backup>,
    contents: &[Option<Vec<u8>>],
    warnings: &mut Vec<String>,
) -> Result<(), RotationError> {
    if j.phase == Phase::Staged {
        check_guard(ctx.guard, "installing")?;
        j.advance(dir, Phase::Installing)?;
    }
    let mut pending: Vec<(Change, Option<&[u8]>)> = Vec::new();
    for (i, (change, data)) in j.changes.iter().zip(contents).enumerate() {
        if execute::is_installed(change)? {
            continue;
        }
        // Without a readable backup nothing tells old content from a stranger's: installing
        // is all that is left (forward_blocker allowed it only for an installing rotation).
        let is_old = match backup {
            Some(b) => b.matches_current(change.path()).unwrap_or(false),
            None => true,
        };
        if !is_old {
            keep_aside(dir, i, change.path(), &j.id, warnings)?;
        }
        pending.push((change.clone(), data.as_deref()));
    }
    let changes: Vec<Change> = pending.iter().map(|(c, _)| c.clone()).collect();
    let data: Vec<Option<&[u8]>> = pending.iter().map(|(_, d)| *d).collect();
    execute::install_all(ctx, &changes, &data, Failpoint::RollForwardInstalled, None)?;
    execute::verify_installed(dir, &j.changes)?;
    j.outcome = Some(Outcome::RolledForward);
    j.advance(dir, Phase::Committed)?;
    // Committed is committed: tidying up is retried by the next start if it fails now.
    if let Err(e) = execute::finish(ctx, &j.id, dir) {
        warnings.push(format!("cleaning up after the commit failed: {e}"));
    }
    Ok(())
}

/// Refuses a rotation whose journal or backup names a path outside the node root.
fn inside_root<'a>(
    ctx: &Context<'_>,
    id: &str,
    mut paths: impl Iterator<Item = &'a Path>,
) -> Result<(), RotationError> {
    // Component-wise: `<root>/../etc` starts with the root but leads out of it.
    let outside = |p: &Path| {
        !p.starts_with(ctx.root.dir())
            || p.components().any(|c| {
                matches!(
                    c,
                    std::path::Component::ParentDir | std::path::Component::CurDir
                )
            })
    };
    match paths.find(|p| outside(p)) {
        Some(p) => Err(RotationError::OutsideRoot {
            id: id.to_owned(),
            path: p.to_owned(),
            root: ctx.root.dir().to_owned(),
        }),
        None => Ok(()),
    }
}

/// Opens a rotation's backup, refusing one that would restore outside the node root.
pub(super) fn open_backup(ctx: &Context<'_>, id: &str) -> Result<Backup, RotationError> {
    let backup = Backup::open(&ctx.state.backups(), id)?;
    inside_root(ctx, id, backup.entries().iter().map(|e| e.path.as_path()))?;
    Ok(backup)
}

/// Sets aside what stands at `path` before recovery overwrites it, into
/// `<rotation>/displaced/` (0600: it may hold a key). A regular file is copied. Anything else (a
/// symlink someone planted, a device, FIFO or socket) is never followed nor opened: what it is
/// gets written down instead, and the install then renames over it. A directory where a file
/// belongs is refused by the install itself.
fn displace(dir: &Path, index: usize, path: &Path) -> Result<Option<PathBuf>, RotationError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let (name, data) = match store::read_node_file(path)? {
        store::NodeFile::Absent | store::NodeFile::Other("directory") => return Ok(None),
        store::NodeFile::File(data) => (format!("{index:04}-{name}"), data),
        store::NodeFile::Other(kind) => {
            let what = match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => format!(
                    "a symlink to {} owned by uid {}, not followed\n",
                    std::fs::read_link(path).unwrap_or_default().display(),
                    m.uid()
                ),
                Ok(m) => format!("a {kind} owned by uid {}, not opened\n", m.uid()),
                Err(_) => format!("a {kind} (a symlink on its path), not followed\n"),
            };
            let file = format!("{index:04}-{name}.{}", kind.replace(' ', "-"));
            (file, format!("{} held {what}", path.display()).into_bytes())
        }
    };
    let displaced = dir.join("displaced");
    execute::create_private_dir(&displaced)?;
    let to = displaced.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&to)
        .map_err(RotationError::io("create", &to))?;
    f.write_all(&data)
        .and_then(|()| f.sync_all())
        .map_err(RotationError::io("write", &to))?;
    store::fsync_dir(&displaced)?;
    Ok(Some(to))
}

/// Removes temp files a crash left next to the rotation's files, in its backup and beside its
/// journal.
fn remove_temps(ctx: &Context<'_>, dir: &Path, j: &Journal) {
    let mut dirs: Vec<PathBuf> = j
        .paths
        .iter()
        .filter_map(|p| p.parent().map(Path::to_owned))
        .collect();
    dirs.push(ctx.state.backups().join(&j.id));
    dirs.push(dir.to_owned());
    dirs.sort();
    dirs.dedup();
    // A crash before the backup existed leaves no backup directory to clean.
    for d in dirs.into_iter().filter(|d| d.is_dir()) {
        match store::remove_stale_temps(&d) {
            Ok(removed) => {
                for r in removed {
                    info!(path = %r.display(), "removed a temp file left by a crash");
                }
            }
            Err(e) => warn!(error = %e, "cannot clean temp files"),
        }
    }
}
