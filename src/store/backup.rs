//! The backup of one rotation: before the first install, what every path it will touch held (a
//! file's copy, a link's target, or nothing), under a manifest rewritten atomically after each save.

use std::fs::{self, DirBuilder};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{ResolveFlag, readlinkat};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::root::fd::{self, FileId, Kind};

use super::atomic::{
    Dest, Expect, Meta, Replaces, dir_and_name, fsync_dir, install_file, install_symlink,
    remove_durably, set_mode, write_atomic,
};
use super::catalog::validate_rotation_id;
use super::node_file::{read_no_follow, sha256_hex};
use super::{Result, StoreError, io_err};

/// Name of the manifest inside each backup directory.
pub(super) const MANIFEST: &str = "manifest.json";
/// Manifest format version, so a future format change is detected instead of misread.
const MANIFEST_VERSION: u32 = 1;
/// Mode of the backups root, each backup directory and every copy: backups hold private keys.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of copies and manifests inside a backup.
const PRIVATE_FILE_MODE: u32 = 0o600;

/// What a path held before the rotation, as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SavedState {
    /// A regular file, copied into the backup.
    File {
        /// Permission bits (including set-id and sticky bits).
        mode: u32,
        /// Owner user id.
        uid: u32,
        /// Owner group id.
        gid: u32,
        /// Hex SHA-256 of the content, checked before every restore.
        sha256: String,
        /// Name of the copy inside the backup directory.
        stored: String,
        /// Which file it was, so the install replaces that very file or nothing (absent in
        /// manifests written before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inode: Option<Inode>,
    },
    /// A symlink; only its target text is recorded (the file it points to is a path of its own).
    Symlink {
        /// The link's target, exactly as `readlink` returned it.
        target: PathBuf,
        /// Owner user id of the link.
        uid: u32,
        /// Owner group id of the link.
        gid: u32,
        /// Which link it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inode: Option<Inode>,
    },
    /// Nothing was there: the rotation creates it, and restore removes it.
    Absent,
}

/// Device and inode of a saved file, as the manifest records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl From<FileId> for Inode {
    fn from(id: FileId) -> Self {
        Inode {
            dev: id.dev,
            ino: id.ino,
        }
    }
}

/// One saved path of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    /// The absolute path as it was saved.
    pub path: PathBuf,
    /// What it held before the rotation.
    #[serde(flatten)]
    pub state: SavedState,
}

/// The on-disk manifest of one backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) version: u32,
    pub(super) rotation_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(super) created_at: OffsetDateTime,
    pub(super) entries: Vec<BackupEntry>,
}

/// What [`Backup::restore`] did, path by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Paths rewritten with their backed-up file or symlink.
    pub restored: Vec<PathBuf>,
    /// Paths the rotation had created, now removed.
    pub removed: Vec<PathBuf>,
    /// Paths already identical to the backup (e.g. on a retried restore), left alone.
    pub unchanged: Vec<PathBuf>,
}

/// The backup of one rotation: a 0700 directory `<backups_root>/<rotation id>` holding a manifest
/// and a copy of every regular file saved.
#[derive(Debug)]
pub struct Backup {
    dir: PathBuf,
    manifest: Manifest,
}

impl Backup {
    /// Creates an empty backup for `rotation_id`, failing if one already exists. `now` is recorded
    /// as its creation time.
    pub fn create(backups_root: &Path, rotation_id: &str, now: OffsetDateTime) -> Result<Backup> {
        validate_rotation_id(rotation_id)?;
        ensure_private_dir_all(backups_root)?;
        let dir = backups_root.join(rotation_id);
        match DirBuilder::new().mode(PRIVATE_DIR_MODE).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::BackupExists {
                    id: rotation_id.to_owned(),
                    path: dir,
                });
            }
            Err(e) => return Err(io_err("create backup directory", &dir)(e)),
        }
        // The umask may have narrowed the mode; set it exactly.
        set_mode(&dir, PRIVATE_DIR_MODE)?;
        let backup = Backup {
            dir,
            manifest: Manifest {
                version: MANIFEST_VERSION,
                rotation_id: rotation_id.to_owned(),
                created_at: now,
                entries: Vec::new(),
            },
        };
        backup.write_manifest()?;
        fsync_dir(backups_root)?;
        Ok(backup)
    }

    /// Opens the existing backup of `rotation_id` (e.g. for `certrotd restore <id>` or crash recovery).
    pub fn open(backups_root: &Path, rotation_id: &str) -> Result<Backup> {
        validate_rotation_id(rotation_id)?;
        let dir = backups_root.join(rotation_id);
        let manifest_path = dir.join(MANIFEST);
        let manifest = match read_manifest(&manifest_path)? {
            Some(m) => m,
            None => {
                return Err(StoreError::BackupNotFound {
                    id: rotation_id.to_owned(),
                    path: dir,
                });
            }
        };
        if manifest.rotation_id != rotation_id {
            return Err(StoreError::ManifestInvalid {
                path: manifest_path,
                reason: format!(
                    "it belongs to rotation {:?}, not {rotation_id:?}",
                    manifest.rotation_id
                ),
            });
        }
        Ok(Backup { dir, manifest })
    }

    /// The rotation id.
    pub fn id(&self) -> &str {
        &self.manifest.rotation_id
    }

    /// The backup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// When the backup was created.
    pub fn created_at(&self) -> OffsetDateTime {
        self.manifest.created_at
    }

    /// Every saved path, in the order saved.
    pub fn entries(&self) -> &[BackupEntry] {
        &self.manifest.entries
    }

    /// The entry saved for `path`, if any.
    pub fn entry(&self, path: &Path) -> Option<&BackupEntry> {
        self.manifest.entries.iter().find(|e| e.path == path)
    }

    /// Records what `path` holds now, before the rotation touches it; when this returns, the copy
    /// and the manifest are durable. Saving a path again keeps the first record.
    ///
    /// `path` must be absolute, and its directory is opened with no symlink on the way. A symlink
    /// is saved as a link (its target text), never followed; a device, FIFO, socket or directory
    /// is refused. The device and inode are recorded, so [`Backup::expect`] can tell an install
    /// to replace that very file or nothing.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        const OP: &str = "back up";
        if !path.is_absolute() {
            return Err(StoreError::BadPath {
                op: OP,
                path: path.to_path_buf(),
                reason: "backups need an absolute path",
            });
        }
        dir_and_name(OP, path)?;
        if self.entry(path).is_some() {
            return Ok(());
        }
        let dest = Dest::open(OP, path, true)?;
        let state = match dest.seen()? {
            Some(s) if s.kind == Kind::File => self.copy_in(&dest)?,
            Some(s) if s.kind == Kind::Symlink => SavedState::Symlink {
                target: readlinkat(&dest.dir, dest.name)
                    .map(PathBuf::from)
                    .map_err(|e| io_err("read symlink", path)(e.into()))?,
                uid: s.uid,
                gid: s.gid,
                inode: Some(s.id.into()),
            },
            Some(s) => {
                return Err(StoreError::Unsupported {
                    op: OP,
                    path: path.to_path_buf(),
                    found: s.kind.name(),
                });
            }
            None => SavedState::Absent,
        };
        self.manifest.entries.push(BackupEntry {
            path: path.to_path_buf(),
            state,
        });
        if let Err(e) = self.write_manifest() {
            // Memory must not claim what the disk does not hold.
            self.manifest.entries.pop();
            return Err(e);
        }
        Ok(())
    }

    /// Copies the regular file at `dest` into the backup and describes it.
    fn copy_in(&self, dest: &Dest<'_>) -> Result<SavedState> {
        let path = dest.path;
        // No link followed, nothing but a regular file opened: if it became something else
        // since it was inspected, refuse rather than back up whatever is there now.
        let no_links = ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH;
        let (mut file, seen) =
            match fd::open_regular(&dest.dir, Path::new(dest.name), false, no_links) {
                Ok(opened) => opened,
                Err(fd::OpenError::NotRegular(kind)) => {
                    return Err(StoreError::Unsupported {
                        op: "back up",
                        path: path.to_path_buf(),
                        found: kind.name(),
                    });
                }
                Err(fd::OpenError::Symlink) => {
                    return Err(StoreError::Changed {
                        op: "back up",
                        path: path.to_path_buf(),
                    });
                }
                Err(fd::OpenError::Missing) => {
                    return Err(io_err("open for backup", path)(
                        io::ErrorKind::NotFound.into(),
                    ));
                }
                Err(fd::OpenError::Io(e)) => return Err(io_err("open for backup", path)(e)),
            };
        let mut contents = Vec::with_capacity(usize::try_from(seen.size).unwrap_or(0));
        file.read_to_end(&mut contents)
            .map_err(io_err("read for backup", path))?;
        let stored = stored_name(self.manifest.entries.len(), path);
        let copy = self.dir.join(&stored);
        write_atomic(&copy, &contents, PRIVATE_FILE_MODE)?;
        Ok(SavedState::File {
            mode: seen.mode,
            uid: seen.uid,
            gid: seen.gid,
            sha256: sha256_hex(&contents),
            stored,
            inode: Some(seen.id.into()),
        })
    }

    /// What an install at `path` may replace: the file or link saved there (same device and
    /// inode), or nothing if nothing was there. A path not saved, or saved by an older certrotd
    /// that did not record inodes, expects whatever regular file the install finds.
    pub fn expect(&self, path: &Path) -> Expect {
        let inode = match self.entry(path).map(|e| &e.state) {
            Some(SavedState::Absent) => return Expect::Absent,
            Some(SavedState::File { inode, .. } | SavedState::Symlink { inode, .. }) => *inode,
            None => None,
        };
        match inode {
            Some(i) => Expect::Same(FileId {
                dev: i.dev,
                ino: i.ino,
            }),
            None => Expect::Seen,
        }
    }

    /// Is what is at `path` now identical to what was saved (same kind; for a file the same
    /// content, mode and owner; for a symlink the same target and owner; or still absent)?
    ///
    /// Crash recovery uses it to tell a path's old state from the rotation's new one.
    pub fn matches_current(&self, path: &Path) -> Result<bool> {
        let entry = self.entry(path).ok_or_else(|| StoreError::NotSaved {
            id: self.id().to_owned(),
            path: path.to_path_buf(),
        })?;
        matches_on_disk(entry)
    }

    /// Puts every saved path back as it was: files (content, mode, owner) first, then symlinks,
    /// then removal of what the rotation created, so no link is ever left pointing at nothing.
    ///
    /// Every copy is checked against its digest before anything is touched; a corrupt copy stops
    /// the restore with [`StoreError::Corrupt`]. Paths already as saved are left alone, so a restore
    /// interrupted by a crash can simply be run again.
    pub fn restore(&self) -> Result<RestoreReport> {
        let mut copies = Vec::new();
        for entry in &self.manifest.entries {
            if let SavedState::File { sha256, stored, .. } = &entry.state {
                let stored_path = self.stored_path(stored)?;
                let data =
                    fs::read(&stored_path).map_err(io_err("read backup copy", &stored_path))?;
                if !sha256_hex(&data).eq_ignore_ascii_case(sha256) {
                    return Err(StoreError::Corrupt {
                        path: entry.path.clone(),
                        stored: stored_path,
                    });
                }
                copies.push((entry, data));
            }
        }

        let mut report = RestoreReport::default();
        for (entry, data) in &copies {
            let SavedState::File { mode, uid, gid, .. } = entry.state else {
                continue;
            };
            if matches_on_disk(entry)? {
                report.unchanged.push(entry.path.clone());
            } else {
                install_file(
                    &Dest::open("restore", &entry.path, true)?,
                    data,
                    Meta::Exact { mode, uid, gid },
                    Expect::Seen,
                    Replaces::AnyButDir,
                )?;
                report.restored.push(entry.path.clone());
            }
        }
        for entry in &self.manifest.entries {
            if let SavedState::Symlink {
                target, uid, gid, ..
            } = &entry.state
            {
                if matches_on_disk(entry)? {
                    report.unchanged.push(entry.path.clone());
                } else {
                    install_symlink(
                        &Dest::open("restore", &entry.path, true)?,
                        target,
                        Some((*uid, *gid)),
                        Expect::Seen,
                        Replaces::AnyButDir,
                    )?;
                    report.restored.push(entry.path.clone());
                }
            }
        }
        for entry in &self.manifest.entries {
            if entry.state == SavedState::Absent {
                if remove_durably(&entry.path)? {
                    report.removed.push(entry.path.clone());
                } else {
                    report.unchanged.push(entry.path.clone());
                }
            }
        }
        Ok(report)
    }

    /// The path of a copy, refusing names that could lead outside the backup directory.
    fn stored_path(&self, stored: &str) -> Result<PathBuf> {
        if !is_stored_name(stored) {
            return Err(StoreError::ManifestInvalid {
                path: self.dir.join(MANIFEST),
                reason: format!("copy name {stored:?} is not one this store writes"),
            });
        }
        Ok(self.dir.join(stored))
    }

    /// Atomically rewrites the manifest (which fsyncs it and the backup directory).
    fn write_manifest(&self) -> Result<()> {
        let path = self.dir.join(MANIFEST);
        let json =
            serde_json::to_vec_pretty(&self.manifest).map_err(|source| StoreError::Manifest {
                op: "encode",
                path: path.clone(),
                source,
            })?;
        write_atomic(&path, &json, PRIVATE_FILE_MODE)
    }
}

/// Compares what is at an entry's path now with what the entry recorded.
fn matches_on_disk(entry: &BackupEntry) -> Result<bool> {
    let path = &entry.path;
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    Ok(match (&entry.state, meta) {
        (SavedState::Absent, meta) => meta.is_none(),
        (
            SavedState::File {
                mode,
                uid,
                gid,
                sha256,
                ..
            },
            Some(m),
        ) if m.file_type().is_file() => {
            (m.mode() & 0o7777, m.uid(), m.gid()) == (*mode, *uid, *gid)
                && sha256_hex(&read_no_follow(path)?).eq_ignore_ascii_case(sha256)
        }
        (
            SavedState::Symlink {
                target, uid, gid, ..
            },
            Some(m),
        ) if m.file_type().is_symlink() => {
            (m.uid(), m.gid()) == (*uid, *gid)
                && fs::read_link(path).map_err(io_err("read symlink", path))? == *target
        }
        _ => false,
    })
}

/// The name of the `index`th copy: a sequence number for uniqueness, then the original file name
/// (made safe) so an operator can find a file by eye. Backups and staged files are named alike.
pub fn stored_name(index: usize, path: &Path) -> String {
    let original = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let safe: String = original
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    // "..", which is_stored_name refuses, can only come from the original name; flatten it.
    format!("{index:04}-{}", safe.replace("..", "__"))
}

/// Could [`stored_name`] have made this name? Guards restore against a tampered manifest.
fn is_stored_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_digit()
        && !name.contains("..")
        && name != MANIFEST
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reads and checks a manifest; `None` if it does not exist.
pub(super) fn read_manifest(path: &Path) -> Result<Option<Manifest>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io_err("read backup manifest", path)(e)),
    };
    let manifest: Manifest =
        serde_json::from_slice(&data).map_err(|source| StoreError::Manifest {
            op: "parse",
            path: path.to_path_buf(),
            source,
        })?;
    let invalid = |reason: String| {
        Err(StoreError::ManifestInvalid {
            path: path.to_path_buf(),
            reason,
        })
    };
    if manifest.version != MANIFEST_VERSION {
        return invalid(format!("unknown manifest version {}", manifest.version));
    }
    for entry in &manifest.entries {
        if !entry.path.is_absolute() {
            return invalid(format!("entry {} is not absolute", entry.path.display()));
        }
        if let SavedState::File { stored, .. } = &entry.state
            && !is_stored_name(stored)
        {
            return invalid(format!("copy name {stored:?} is not one this store writes"));
        }
    }
    Ok(Some(manifest))
}

/// Creates `dir` (and missing parents) with mode 0700 and makes sure `dir` itself is 0700.
fn ensure_private_dir_all(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(dir)
            .map_err(io_err("create backups directory", dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
    }
    let mode = fs::metadata(dir)
        .map_err(io_err("inspect", dir))?
        .permissions()
        .mode();
    if mode & 0o7777 != PRIVATE_DIR_MODE {
        set_mode(dir, PRIVATE_DIR_MODE)?;
    }
    Ok(())
}
