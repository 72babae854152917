//! The backups root as a whole: which ids are acceptable directory names, which backups are
//! there, and deleting the ones no longer needed.

use std::fs;
use std::io;
use std::path::Path;

use time::OffsetDateTime;

use super::atomic::fsync_dir;
use super::backup::{MANIFEST, read_manifest};
use super::{Result, StoreError, io_err};

/// Longest rotation id accepted; ids become directory names and appear in CLI output.
const MAX_ID_LEN: usize = 128;

/// Checks that a rotation id is safe to use as a directory name under the backups root.
///
/// Accepted: 1 to 128 characters from `[A-Za-z0-9._-]`, starting with a letter or digit (so never
/// `.`, `..`, a hidden name or something that looks like a CLI flag), and no `..` anywhere.
pub fn validate_rotation_id(id: &str) -> Result<()> {
    let refuse = |reason| {
        Err(StoreError::InvalidId {
            id: id.chars().take(MAX_ID_LEN + 8).collect(),
            reason,
        })
    };
    if id.is_empty() {
        return refuse("it is empty");
    }
    if id.len() > MAX_ID_LEN {
        return refuse("it is longer than 128 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return refuse("only letters, digits, '.', '_' and '-' are allowed");
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return refuse("it must start with a letter or digit");
    }
    if id.contains("..") {
        return refuse("it must not contain '..'");
    }
    Ok(())
}

/// One backup as [`list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The rotation id.
    pub id: String,
    /// When the backup was created.
    pub created_at: OffsetDateTime,
    /// How many paths it saved.
    pub entries: usize,
}

/// Lists the complete backups under `backups_root`, oldest first (a missing root means none).
///
/// A directory without a manifest (a crash inside [`Backup::create`](super::Backup::create)) is skipped; a manifest that
/// cannot be parsed is an error naming it, so a damaged backup is reported, not silently ignored.
pub fn list(backups_root: &Path) -> Result<Vec<BackupSummary>> {
    let (complete, _) = scan(backups_root)?;
    Ok(complete)
}

/// Complete backups (oldest first) and ids of directories with no manifest.
fn scan(backups_root: &Path) -> Result<(Vec<BackupSummary>, Vec<String>)> {
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    let entries = match fs::read_dir(backups_root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((complete, incomplete)),
        Err(e) => return Err(io_err("list backups in", backups_root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list backups in", backups_root))?;
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Anything not named like a rotation id was not made by this store; leave it alone.
        if validate_rotation_id(&id).is_err() {
            continue;
        }
        let path = entry.path();
        if !entry
            .file_type()
            .map_err(io_err("inspect", &path))?
            .is_dir()
        {
            continue;
        }
        let manifest_path = path.join(MANIFEST);
        match read_manifest(&manifest_path)? {
            Some(m) if m.rotation_id == id => complete.push(BackupSummary {
                id,
                created_at: m.created_at,
                entries: m.entries.len(),
            }),
            Some(m) => {
                return Err(StoreError::ManifestInvalid {
                    path: manifest_path,
                    reason: format!("it belongs to rotation {:?}, not {id:?}", m.rotation_id),
                });
            }
            None => incomplete.push(id),
        }
    }
    complete.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    incomplete.sort();
    Ok((complete, incomplete))
}

/// Deletes all but the newest `keep` backups, never one whose id is in `protect` (the rotation in
/// progress), plus unprotected directories left without a manifest by a crash. Backups whose id is
/// in `expendable` (rotations that were rolled back or abandoned: the node holds what they saved)
/// go first, so a committed rotation's backup, the only way back from it, is never evicted while
/// one of theirs is kept. Returns the ids deleted: incomplete ones, then expendable ones, then the
/// others, oldest first within each.
pub fn prune(
    backups_root: &Path,
    keep: usize,
    protect: &[&str],
    expendable: &[&str],
) -> Result<Vec<String>> {
    let (complete, incomplete) = scan(backups_root)?;
    let surplus = complete.len().saturating_sub(keep);
    let (cheap, dear): (Vec<_>, Vec<_>) = complete
        .into_iter()
        .map(|s| s.id)
        .partition(|id| expendable.contains(&id.as_str()));
    let doomed = incomplete
        .into_iter()
        .chain(cheap.into_iter().chain(dear).take(surplus))
        .filter(|id| !protect.contains(&id.as_str()));
    let mut deleted = Vec::new();
    for id in doomed {
        delete_backup(backups_root, &id)?;
        deleted.push(id);
    }
    Ok(deleted)
}

/// Deletes the backup of rotation `id` (a rotation that installed nothing: it holds old private
/// keys and nothing worth restoring). A backup that is not there is fine.
pub fn remove(backups_root: &Path, id: &str) -> Result<()> {
    validate_rotation_id(id)?;
    if fs::symlink_metadata(backups_root.join(id)).is_err() {
        return Ok(());
    }
    delete_backup(backups_root, id)
}

/// Deletes one backup so that a crash half-way leaves a manifest-less directory (which [`list`]
/// skips and [`prune`] finishes), never a manifest describing copies that are gone.
fn delete_backup(backups_root: &Path, id: &str) -> Result<()> {
    let dir = backups_root.join(id);
    let manifest = dir.join(MANIFEST);
    match fs::remove_file(&manifest) {
        Ok(()) => fsync_dir(&dir)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove backup manifest", &manifest)(e)),
    }
    fs::remove_dir_all(&dir).map_err(io_err("remove backup directory", &dir))?;
    fsync_dir(backups_root)
}
