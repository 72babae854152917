//! Recover: finish or undo every rotation a crash (or a lost guard) left unfinished, so that each
//! one's files are all-old or all-new; and `restore`, which puts a rotation's backup back.
//!
//! | journal phase            | staged contents verify | what recovery does                         |
//! |--------------------------|------------------------|--------------------------------------------|
//! | (no journal)             | –                      | removes the empty rotation directory       |
//! | planned, backed-up       | –                      | abandons it: nothing was installed         |
//! | staged                   | yes / no               | rolls forward / abandons it                |
//! | installing               | yes / no               | rolls forward / restores the backup        |
//! | rolling-back             | –                      | restores the backup (again)                |
//! | committed, rolled-back   | –                      | deletes leftover staged keys               |
//!
//! Rolling forward never silently loses a file someone else wrote meanwhile: a file that is
//! neither the rotation's old nor its new content is copied to `<rotation>/displaced/` first.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::execute;
use super::journal::{self, Change, Journal, Phase};
use super::{Context, RotationError, check_guard, stage};
use crate::failpoint::Failpoint;
use crate::pki::layout::Component;
use crate::store::{self, Backup, RestoreReport};

/// What recovery did to one rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// It had installed nothing; it was closed as rolled back.
    Abandoned,
    /// Its staged contents were installed and it was committed.
    RolledForward,
    /// Its backup was restored.
    RolledBack,
    /// It was finished already; leftovers (staged keys, an empty directory) were removed.
    CleanedUp,
}

/// One rotation recovery dealt with.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The rotation id.
    pub id: String,
    /// What was done.
    pub action: Action,
    /// Components to restart (after a roll-forward installed new certificates).
    pub consumers: Vec<Component>,
    /// Things an operator should know (a file displaced, why staged contents were refused).
    pub warnings: Vec<String>,
}

/// Recovers every unfinished rotation, oldest first. The caller holds the rotation lock.
pub fn recover(ctx: &Context<'_>) -> Result<Vec<Recovered>, RotationError> {
    let mut out = Vec::new();
    for (id, dir) in journal::list(ctx.state)? {
        let Some(j) = Journal::load(&dir)? else {
            // A crash between creating the directory and the first journal write: nothing else
            // of this rotation exists yet.
            std::fs::remove_dir_all(&dir)
                .map_err(RotationError::io("remove empty rotation directory", &dir))?;
            store::fsync_dir(&ctx.state.rotations())?;
            out.push(Recovered {
                id,
                action: Action::CleanedUp,
                consumers: Vec::new(),
                warnings: Vec::new(),
            });
            continue;
        };
        if j.phase.is_final() {
            if stage::dir(&dir).exists() {
                stage::remove(&dir)?;
                out.push(Recovered {
                    id,
                    action: Action::CleanedUp,
                    consumers: Vec::new(),
                    warnings: Vec::new(),
                });
            }
            continue;
        }
        out.push(recover_one(ctx, &dir, j)?);
    }
    Ok(out)
}

fn recover_one(ctx: &Context<'_>, dir: &Path, mut j: Journal) -> Result<Recovered, RotationError> {
    info!(rotation = %j.id, phase = j.phase.as_str(), "recovering an unfinished rotation");
    let named = j.paths.iter().map(PathBuf::as_path);
    inside_root(ctx, &j.id, named.chain(j.changes.iter().map(Change::path)))?;
    remove_temps(ctx, dir, &j);
    let mut warnings = Vec::new();
    let id = j.id.clone();
    let action = match j.phase {
        Phase::Planned | Phase::BackedUp => {
            abandon_after_crash(dir, &mut j, "interrupted before anything was installed")?
        }
        Phase::Staged | Phase::Installing => match stage::read_all(dir, &j.changes) {
            Ok(contents) => {
                roll_forward(ctx, dir, &mut j, &contents, &mut warnings)?;
                Action::RolledForward
            }
            Err(e) if j.phase == Phase::Staged => {
                warnings.push(e.to_string());
                abandon_after_crash(dir, &mut j, &format!("staged contents unusable: {e}"))?
            }
            Err(e) => {
                warnings.push(e.to_string());
                check_guard(ctx.guard, "restoring the backup")?;
                let backup = open_backup(ctx, &id)?;
                execute::restore(
                    dir,
                    &mut j,
                    &backup,
                    &format!("rolled back by recovery: {e}"),
                )?;
                Action::RolledBack
            }
        },
        Phase::RollingBack => {
            check_guard(ctx.guard, "restoring the backup")?;
            let backup = open_backup(ctx, &id)?;
            let outcome = j
                .outcome
                .clone()
                .unwrap_or_else(|| "rolled back by recovery".into());
            execute::restore(dir, &mut j, &backup, &outcome)?;
            Action::RolledBack
        }
        Phase::Committed | Phase::RolledBack => Action::CleanedUp,
    };
    for w in &warnings {
        warn!(rotation = %id, "{w}");
    }
    info!(rotation = %id, action = ?action, "rotation recovered");
    Ok(Recovered {
        id,
        consumers: if action == Action::RolledForward {
            j.consumers.clone()
        } else {
            Vec::new()
        },
        action,
        warnings,
    })
}

fn abandon_after_crash(dir: &Path, j: &mut Journal, why: &str) -> Result<Action, RotationError> {
    j.outcome = Some(format!("abandoned by recovery: {why}"));
    j.advance(dir, Phase::RolledBack)?;
    stage::remove(dir)?;
    Ok(Action::Abandoned)
}

/// Installs what is not installed yet, then commits as a normal run would.
fn roll_forward(
    ctx: &Context<'_>,
    dir: &Path,
    j: &mut Journal,
    contents: &[Option<Vec<u8>>],
    warnings: &mut Vec<String>,
) -> Result<(), RotationError> {
    // Without a readable backup nothing tells old content from a stranger's; still roll forward.
    let backup = open_backup(ctx, &j.id).ok();
    if j.phase == Phase::Staged {
        check_guard(ctx.guard, "installing")?;
        j.advance(dir, Phase::Installing)?;
    }
    let mut pending: Vec<(Change, Option<&[u8]>)> = Vec::new();
    for (i, (change, data)) in j.changes.iter().zip(contents).enumerate() {
        if execute::is_installed(change)? {
            continue;
        }
        let is_old = match &backup {
            Some(b) => b.matches_current(change.path()).unwrap_or(false),
            None => true,
        };
        if !is_old && let Some(saved) = displace(dir, i, change.path())? {
            warnings.push(format!(
                "{} held neither the old nor the new content of rotation {}; it was kept as {}",
                change.path().display(),
                j.id,
                saved.display()
            ));
        }
        pending.push((change.clone(), data.as_deref()));
    }
    let changes: Vec<Change> = pending.iter().map(|(c, _)| c.clone()).collect();
    let data: Vec<Option<&[u8]>> = pending.iter().map(|(_, d)| *d).collect();
    execute::install_all(ctx, &changes, &data, Failpoint::RecoverInstalled, None)?;
    execute::verify_installed(dir, &j.changes)?;
    j.outcome = Some("rolled forward by recovery".into());
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
    match paths.find(|p| !p.starts_with(ctx.root.dir())) {
        Some(p) => Err(RotationError::OutsideRoot {
            id: id.to_owned(),
            path: p.to_owned(),
            root: ctx.root.dir().to_owned(),
        }),
        None => Ok(()),
    }
}

/// Opens a rotation's backup, refusing one that would restore outside the node root.
fn open_backup(ctx: &Context<'_>, id: &str) -> Result<Backup, RotationError> {
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
            let report = execute::restore(&dir, &mut j, &backup, "restored on request")?;
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
