//! Crash-safe file store: atomic installs of files and symlinks, and per-rotation backups that can be
//! restored after a crash.
//!
//! Every write goes to a temp file in the destination's own directory (so the rename cannot cross a
//! filesystem), is fsync'd, renamed over the destination and followed by an fsync of the directory,
//! so after a crash the path holds either the whole old or the whole new content. Temp files are
//! named `.<name>.certrotd-tmp.<16 hex digits>` so that [`remove_stale_temps`] can find exactly ours.
//!
//! certrotd runs as root next to directories others can write, so nothing here follows a link it
//! was not asked to write: the directory is opened once (for node files with no symlink on the
//! way), every later step is relative to that handle, the file being replaced must be a regular
//! file (a link for a link) and still the same inode just before the rename, and a key never
//! keeps a mode wider than 0600.
//!
//! A [`Backup`] records, before the first install of a rotation, what every path the rotation will
//! touch held: a regular file (copied), a symlink (its target) or nothing. Its manifest is rewritten
//! atomically after each save, so what is on disk is always a complete, checkable backup.
//!
//! The store is split by concern: `atomic` installs one file or link, `backup` saves and
//! restores what a rotation touches, `catalog` lists, prunes and names backups under their
//! root, and `node_file` reads a node file without following links.

use std::io;
use std::path::{Path, PathBuf};

mod atomic;
mod backup;
mod catalog;
mod node_file;
#[cfg(test)]
mod tests;

pub use atomic::{
    Expect, FileMode, fsync_dir, remove_stale_temps, replace_symlink, write_atomic, write_node_file,
};
pub use backup::{Backup, BackupEntry, Inode, RestoreReport, SavedState, stored_name};
pub use catalog::{BackupSummary, list, prune, remove, validate_rotation_id};
pub use node_file::{NodeFile, read_node_file, sha256_hex};

/// A filesystem call that failed: what was being done, to which path, and the system's error.
/// The one shape of an I/O error at a path, for the store and the modules built on it.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}", path.display())]
pub struct PathIo {
    /// What was being done.
    pub op: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: io::Error,
}

impl PathIo {
    /// Wraps an io::Error with the operation and path, as `map_err` takes it.
    pub fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PathIo + 'a {
        move |source| PathIo {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Errors of the store; each names the operation and the path, never file contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem call failed.
    #[error(transparent)]
    Io(#[from] PathIo),
    /// The path holds something the store does not replace there (a directory, device, socket, or
    /// a symlink where a file belongs); it is never followed either.
    #[error("cannot {op} {}: a {found} is there, which certrotd neither replaces nor follows", path.display())]
    Unsupported {
        /// What was being done.
        op: &'static str,
        /// The offending path.
        path: PathBuf,
        /// What was found there.
        found: &'static str,
    },
    /// What stands at the path is no longer what the write expected (another file, or a link,
    /// was put there since it was backed up or since the write began): nothing was replaced.
    #[error(
        "refusing to {op} {}: it changed since certrotd looked (another file or a link is there now); nothing was replaced",
        path.display()
    )]
    Changed {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The path cannot be used as given (no file name, or relative where an absolute path is needed).
    #[error("cannot {op} {}: {reason}", path.display())]
    BadPath {
        /// What was being done.
        op: &'static str,
        /// The offending path.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A rotation id that is malformed or could lead outside the backups root.
    #[error("invalid rotation id {id:?}: {reason}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// [`Backup::create`] found a backup with this id already.
    #[error("backup {id} already exists at {}", path.display())]
    BackupExists {
        /// The rotation id.
        id: String,
        /// Its directory.
        path: PathBuf,
    },
    /// [`Backup::open`] found no backup with this id.
    #[error("no backup {id} at {}", path.display())]
    BackupNotFound {
        /// The rotation id.
        id: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A manifest could not be encoded or decoded.
    #[error("cannot {op} backup manifest {}", path.display())]
    Manifest {
        /// What was being done.
        op: &'static str,
        /// The manifest file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest parsed but does not describe a backup this store could have written.
    #[error("backup manifest {} is not trustworthy: {reason}", path.display())]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A backup copy no longer matches the digest recorded when it was made.
    #[error(
        "backup copy {} of {} is corrupt (its SHA-256 does not match the manifest); refusing to restore",
        stored.display(),
        path.display()
    )]
    Corrupt {
        /// The original path the copy would be restored to.
        path: PathBuf,
        /// The damaged copy inside the backup.
        stored: PathBuf,
    },
    /// A path was asked about that the backup never saved.
    #[error("{} was not saved in backup {id}", path.display())]
    NotSaved {
        /// The rotation id.
        id: String,
        /// The path asked about.
        path: PathBuf,
    },
}

/// Shorthand for the store's results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Wraps an io::Error with the operation and path, the shape every store error has.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| PathIo::at(op, path)(source).into()
}
