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

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use nix::errno::Errno;
use nix::fcntl::{
    AT_FDCWD, AtFlags, OFlag, RenameFlags, ResolveFlag, openat, readlinkat, renameat, renameat2,
};
use nix::unistd::{UnlinkatFlags, fchownat, fsync, symlinkat, unlinkat};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::root::fd::{self, FileId, Kind, Seen};

/// What marks a temp file as ours; it sits between the original name and the random suffix.
const TEMP_MARKER: &[u8] = b".certrotd-tmp.";
/// Hex digits of randomness in a temp name: 64 bits, so names never collide in practice.
const TEMP_RANDOM_HEX: usize = 16;
/// Longest original name kept in a temp name, so the temp name stays under NAME_MAX (255).
const TEMP_NAME_KEEP: usize = 200;
/// Longest rotation id accepted; ids become directory names and appear in CLI output.
const MAX_ID_LEN: usize = 128;
/// Name of the manifest inside each backup directory.
const MANIFEST: &str = "manifest.json";
/// Manifest format version, so a future format change is detected instead of misread.
const MANIFEST_VERSION: u32 = 1;
/// Mode of the backups root, each backup directory and every copy: backups hold private keys.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of copies and manifests inside a backup.
const PRIVATE_FILE_MODE: u32 = 0o600;

/// Errors of the store; each names the operation and the path, never file contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem call failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
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
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Atomic writes
// ---------------------------------------------------------------------------------------------

/// How the mode of a written file is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// The replaced file's mode; `new` for a new file (certificates, kubeconfigs, state files).
    Keep {
        /// Mode of a file that did not exist.
        new: u32,
    },
    /// A private key: `new` for a new file, and a replaced file's mode narrowed to at most `new`,
    /// so a key someone left at 0644 gets its successor at 0600.
    Secret {
        /// Mode of a file that did not exist, and the widest a replaced one keeps.
        new: u32,
    },
}

/// What a write expects at its destination. It is checked when the write starts and again just
/// before the rename; if it no longer holds, nothing is renamed and the temp file is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever regular file (or nothing) is there when the write starts, still there at the rename.
    Seen,
    /// Nothing: the file is created, never replaced.
    Absent,
    /// This very file or link (device and inode), as it was backed up.
    Same(FileId),
    /// Whatever stands there but a directory: recovery has set it aside already, and it is
    /// replaced by renaming over it, never written through.
    Displaced,
}

impl Expect {
    /// What a write with this expectation may replace.
    fn replaces(self) -> Replaces {
        match self {
            Expect::Displaced => Replaces::AnyButDir,
            _ => Replaces::SameKind,
        }
    }
}

/// Which mode and owner a newly written file gets.
#[derive(Debug, Clone, Copy)]
enum Meta {
    /// Those of the file being replaced (the mode as [`FileMode`] says); for a new file the mode
    /// it names and the process's owner.
    Preserve(FileMode),
    /// Exactly these (restore puts back what the backup recorded).
    Exact { mode: u32, uid: u32, gid: u32 },
}

/// What a write may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replaces {
    /// Only what it writes: a regular file for a file, a symlink for a link (or nothing).
    SameKind,
    /// Anything but a directory (restore, which must put back what the rotation replaced, and
    /// replaces a link by renaming over it, never through it).
    AnyButDir,
}

/// Atomically replaces one of certrotd's own files (its state, history, journals) with `contents`.
///
/// The directory is resolved by the kernel (it is certrotd's own); the file itself is never
/// followed: only a regular file (or nothing) is replaced, a symlink or anything else is refused.
/// Keeps the mode and owner of the file being replaced; a new file gets `new_mode` and the
/// process's owner. On error the original is untouched and no temp file is left behind.
pub fn write_atomic(path: &Path, contents: &[u8], new_mode: u32) -> Result<()> {
    let dest = Dest::open("write", path, false)?;
    install_file(
        &dest,
        contents,
        Meta::Preserve(FileMode::Keep { new: new_mode }),
        Expect::Seen,
        Replaces::SameKind,
    )
}

/// Atomically writes a node file (a certificate, key or kubeconfig) at its real path.
///
/// The directory is opened in one `openat2` step with no symlink anywhere on its path (node paths
/// reach the store with their links resolved, so a link now was planted since), the temp file is
/// created `O_EXCL|O_NOFOLLOW` in it, and the rename happens relative to the same handle. Only a
/// regular file (or nothing) is replaced, and only if it is still what `expect` says just before
/// the rename; a symlink, device, FIFO, socket or directory at `path` is refused, never followed
/// (with [`Expect::Displaced`] anything but a directory is renamed over, still never followed).
pub fn write_node_file(path: &Path, contents: &[u8], mode: FileMode, expect: Expect) -> Result<()> {
    let dest = Dest::open("write", path, true)?;
    install_file(
        &dest,
        contents,
        Meta::Preserve(mode),
        expect,
        expect.replaces(),
    )
}

/// Atomically points the symlink `link` at `target` (creating it if absent), so a reader sees either
/// the old or the new target, never a missing link. Keeps the owner of a link being replaced.
///
/// The directory is opened as for [`write_node_file`]; only a symlink (or nothing) is replaced,
/// and only if it is still what `expect` says just before the rename.
pub fn replace_symlink(link: &Path, target: &Path, expect: Expect) -> Result<()> {
    let dest = Dest::open("replace symlink", link, true)?;
    install_symlink(&dest, target, None, expect, expect.replaces())
}

/// A destination: its directory, opened once, and its name in it.
struct Dest<'a> {
    dir: OwnedFd,
    dir_path: &'a Path,
    name: &'a OsStr,
    path: &'a Path,
}

impl<'a> Dest<'a> {
    /// Opens the directory of `path`; with `no_links` there may be no symlink on the way.
    fn open(op: &'static str, path: &'a Path, no_links: bool) -> Result<Dest<'a>> {
        let (dir_path, name) = dir_and_name(op, path)?;
        let opened = if no_links {
            fd::open_dir_no_links(dir_path)
        } else {
            fd::open_dir(dir_path)
        };
        let dir = opened.map_err(|e| {
            let e = if e.raw_os_error() == Some(nix::libc::ELOOP) {
                io::Error::other(
                    "a symlink is on the way to it, and node files are written only along paths \
                     without links",
                )
            } else {
                e
            };
            io_err("open the directory of", path)(e)
        })?;
        Ok(Dest {
            dir,
            dir_path,
            name: OsStr::from_bytes(name),
            path,
        })
    }

    /// What stands at the name now, never following a link.
    fn seen(&self) -> Result<Option<Seen>> {
        fd::stat_at(&self.dir, self.name).map_err(io_err("inspect", self.path))
    }

    /// Refuses a destination that is not what the write may replace or not what it expects.
    fn check(
        &self,
        op: &'static str,
        seen: Option<Seen>,
        want: Kind,
        replaces: Replaces,
        expect: Expect,
    ) -> Result<()> {
        if let Some(s) = seen {
            let allowed = match replaces {
                Replaces::SameKind => s.kind == want,
                Replaces::AnyButDir => s.kind != Kind::Dir,
            };
            if !allowed {
                return Err(StoreError::Unsupported {
                    op,
                    path: self.path.to_path_buf(),
                    found: s.kind.name(),
                });
            }
        }
        let ok = match (expect, seen) {
            (Expect::Seen | Expect::Displaced, _) => true,
            (Expect::Absent, s) => s.is_none(),
            (Expect::Same(id), Some(s)) => s.id == id,
            (Expect::Same(_), None) => false,
        };
        if !ok {
            return Err(StoreError::Changed {
                op,
                path: self.path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Renames the temp `tmp` over the name if the name still holds what was seen at the start;
    /// otherwise removes the temp and refuses. Then makes the rename durable.
    fn commit(&self, op: &'static str, tmp: &OsStr, seen: Option<Seen>) -> Result<()> {
        let undo = |e: StoreError| {
            let _ = unlinkat(&self.dir, tmp, UnlinkatFlags::NoRemoveDir);
            Err(e)
        };
        let now = match self.seen() {
            Ok(n) => n,
            Err(e) => return undo(e),
        };
        if now.map(|s| (s.kind, s.id)) != seen.map(|s| (s.kind, s.id)) {
            return undo(StoreError::Changed {
                op,
                path: self.path.to_path_buf(),
            });
        }
        let renamed = if seen.is_none() {
            // Nothing was there: nothing may be there now either, not even for an instant.
            renameat2(
                &self.dir,
                tmp,
                &self.dir,
                self.name,
                RenameFlags::RENAME_NOREPLACE,
            )
        } else {
            renameat(&self.dir, tmp, &self.dir, self.name)
        };
        match renamed {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                return undo(StoreError::Changed {
                    op,
                    path: self.path.to_path_buf(),
                });
            }
            Err(e) => {
                return undo(StoreError::Io {
                    op: "rename temp file over",
                    path: self.path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
        fsync(&self.dir).map_err(|e| io_err("fsync directory", self.dir_path)(e.into()))
    }
}

/// Splits a destination into its directory and file name, refusing paths without a name.
fn dir_and_name<'a>(op: &'static str, path: &'a Path) -> Result<(&'a Path, &'a [u8])> {
    let name = path.file_name().ok_or_else(|| StoreError::BadPath {
        op,
        path: path.to_path_buf(),
        reason: "the path has no file name",
    })?;
    // A bare name lives in the current directory; Path::parent gives "" for it.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name.as_bytes()))
}

/// A fresh temp name for `name`, recognisable by [`is_temp_name`].
fn temp_name(name: &[u8]) -> std::ffi::OsString {
    let kept = &name[..name.len().min(TEMP_NAME_KEEP)];
    let mut tmp = Vec::with_capacity(1 + kept.len() + TEMP_MARKER.len() + TEMP_RANDOM_HEX);
    tmp.push(b'.');
    tmp.extend_from_slice(kept);
    tmp.extend_from_slice(TEMP_MARKER);
    tmp.extend_from_slice(format!("{:016x}", rand::random::<u64>()).as_bytes());
    std::ffi::OsString::from_vec(tmp)
}

/// A fresh temp path for `name` in `dir`.
#[cfg(test)]
fn temp_path(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(temp_name(name))
}

/// Is this a name [`temp_name`] could have made?
fn is_temp_name(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(b".") else {
        return false;
    };
    if rest.len() < TEMP_MARKER.len() + TEMP_RANDOM_HEX {
        return false;
    }
    let (head, random) = rest.split_at(rest.len() - TEMP_RANDOM_HEX);
    head.ends_with(TEMP_MARKER)
        && random
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Writes `contents` to a temp file in the destination's directory and renames it over the name
/// (a link there is replaced, never followed; restore alone may do that).
fn install_file(
    dest: &Dest<'_>,
    contents: &[u8],
    meta: Meta,
    expect: Expect,
    replaces: Replaces,
) -> Result<()> {
    const OP: &str = "write";
    let seen = dest.seen()?;
    dest.check(OP, seen, Kind::File, replaces, expect)?;
    let existing = seen.filter(|s| s.kind == Kind::File);
    let (mode, owner) = match (meta, existing) {
        (Meta::Exact { mode, uid, gid }, _) => (mode, Some((uid, gid))),
        (Meta::Preserve(FileMode::Keep { .. }), Some(s)) => (s.mode, Some((s.uid, s.gid))),
        (Meta::Preserve(FileMode::Secret { new }), Some(s)) => {
            (s.mode & new & 0o7777, Some((s.uid, s.gid)))
        }
        (Meta::Preserve(FileMode::Keep { new } | FileMode::Secret { new }), None) => (new, None),
    };
    let mode = mode & 0o7777;

    let (tmp, mut file) = create_temp_file(dest)?;
    let tmp_path = dest.dir_path.join(&tmp);
    let result = (|| {
        checkpoint("created", &tmp_path)?;
        file.write_all(contents)?;
        checkpoint("written", &tmp_path)?;
        if let Some((uid, gid)) = owner {
            let current = file.metadata()?;
            if (current.uid(), current.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
        }
        // After fchown, which clears set-id bits, and before fsync, so the mode is durable too.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        checkpoint("owned", &tmp_path)?;
        file.sync_all()?;
        checkpoint("synced", &tmp_path)?;
        Ok(())
    })();
    drop(file);
    if let Err(source) = result {
        let _ = unlinkat(&dest.dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return Err(StoreError::Io {
            op: "write temp file for",
            path: dest.path.to_path_buf(),
            source,
        });
    }
    dest.commit(OP, &tmp, seen)
}

/// Creates a new temp file with mode 0600 in the destination's directory (`O_EXCL|O_NOFOLLOW`:
/// never an existing file or a link someone made under that name), so key material is never
/// readable by others, not even for the moment before the final mode is set.
fn create_temp_file(dest: &Dest<'_>) -> Result<(std::ffi::OsString, File)> {
    let flags = OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_EXCL
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY;
    let mut last = None;
    for _ in 0..8 {
        let tmp = temp_name(dest.name.as_bytes());
        match openat(&dest.dir, tmp.as_os_str(), flags, fd::mode(0o600)) {
            Ok(owned) => return Ok((tmp, File::from(owned))),
            Err(Errno::EEXIST) => last = Some(tmp),
            Err(e) => {
                return Err(io_err("create temp file", &dest.dir_path.join(&tmp))(
                    e.into(),
                ));
            }
        }
    }
    let tmp = last.expect("the loop ran at least once");
    Err(io_err("create temp file", &dest.dir_path.join(&tmp))(
        Errno::EEXIST.into(),
    ))
}

/// Swaps in a symlink; `owner` overrides the owner of the replaced link (restore uses it).
fn install_symlink(
    dest: &Dest<'_>,
    target: &Path,
    owner: Option<(u32, u32)>,
    expect: Expect,
    replaces: Replaces,
) -> Result<()> {
    const OP: &str = "replace symlink";
    let seen = dest.seen()?;
    dest.check(OP, seen, Kind::Symlink, replaces, expect)?;
    let owner = owner.or(seen
        .filter(|s| s.kind == Kind::Symlink)
        .map(|s| (s.uid, s.gid)));

    let tmp = create_temp_symlink(dest, target)?;
    let tmp_path = dest.dir_path.join(&tmp);
    let result = (|| {
        checkpoint("created", &tmp_path)?;
        if let Some((uid, gid)) = owner {
            let current = fd::stat_at(&dest.dir, &tmp)?
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            if (current.uid, current.gid) != (uid, gid) {
                fchownat(
                    &dest.dir,
                    tmp.as_os_str(),
                    Some(uid.into()),
                    Some(gid.into()),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(io::Error::from)?;
            }
        }
        checkpoint("owned", &tmp_path)?;
        Ok(())
    })();
    if let Err(source) = result {
        let _ = unlinkat(&dest.dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return Err(StoreError::Io {
            op: "swap in new symlink at",
            path: dest.path.to_path_buf(),
            source,
        });
    }
    dest.commit(OP, &tmp, seen)
}

/// Creates a temp symlink next to where the real one goes.
fn create_temp_symlink(dest: &Dest<'_>, target: &Path) -> Result<std::ffi::OsString> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = temp_name(dest.name.as_bytes());
        match symlinkat(target, &dest.dir, tmp.as_os_str()) {
            Ok(()) => return Ok(tmp),
            Err(Errno::EEXIST) => last = Some(tmp),
            Err(e) => {
                return Err(io_err("create temp symlink", &dest.dir_path.join(&tmp))(
                    e.into(),
                ));
            }
        }
    }
    let tmp = last.expect("the loop ran at least once");
    Err(io_err("create temp symlink", &dest.dir_path.join(&tmp))(
        Errno::EEXIST.into(),
    ))
}

/// Removes `path` (anything but a directory) if present and makes the removal durable. The
/// directory is opened with no link on the way. Returns whether something was removed.
fn remove_durably(path: &Path) -> Result<bool> {
    const OP: &str = "remove";
    let dest = Dest::open(OP, path, true)?;
    match dest.seen()? {
        Some(s) if s.kind == Kind::Dir => {
            return Err(StoreError::Unsupported {
                op: OP,
                path: path.to_path_buf(),
                found: "directory",
            });
        }
        Some(_) => {}
        None => return Ok(false),
    }
    match unlinkat(&dest.dir, dest.name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(io_err(OP, path)(e.into())),
    }
    fsync(&dest.dir).map_err(|e| io_err("fsync directory", dest.dir_path)(e.into()))?;
    Ok(true)
}

/// Fsyncs a directory, making renames, creations and removals in it durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Sets a path's permission bits.
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// Removes the temp files and temp symlinks certrotd left in `dir` when it crashed mid-write, and
/// returns their paths. Anything not named like our temps is left alone.
///
/// Call it only when no write into `dir` is in flight (at startup, before rotations resume).
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list directory", dir))? {
        let entry = entry.map_err(io_err("list directory", dir))?;
        if !is_temp_name(entry.file_name().as_bytes()) {
            continue;
        }
        let path = entry.path();
        let ft = entry.file_type().map_err(io_err("inspect", &path))?;
        if !(ft.is_file() || ft.is_symlink()) {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove stale temp file", &path)(e)),
        }
    }
    if !removed.is_empty() {
        fsync_dir(dir)?;
    }
    removed.sort();
    Ok(removed)
}

/// Something another process does at a named step of a write (a test stands in for it).
#[cfg(test)]
type Meanwhile = Option<(&'static str, Box<dyn Fn()>)>;

// Test-only fault injection: lets tests fail a write at a chosen step and observe the temp file,
// which is the only way to exercise cleanup paths when tests run as root (no EACCES to provoke).
#[cfg(test)]
thread_local! {
    static FAIL_AT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
    static SEEN_TEMP_MODES: std::cell::RefCell<Vec<(&'static str, u32)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// Runs at a checkpoint: what another process could do in the middle of a write.
    static MEANWHILE: std::cell::RefCell<Meanwhile> = std::cell::RefCell::new(None);
}

/// A named step of a write; under test it records the temp's mode and may inject a failure.
#[cfg(test)]
fn checkpoint(stage: &'static str, tmp: &Path) -> io::Result<()> {
    if let Ok(m) = fs::symlink_metadata(tmp) {
        SEEN_TEMP_MODES.with(|s| s.borrow_mut().push((stage, m.mode() & 0o7777)));
    }
    MEANWHILE.with(|m| {
        if let Some((at, action)) = &*m.borrow()
            && *at == stage
        {
            action();
        }
    });
    if FAIL_AT.with(|f| f.get()) == Some(stage) {
        return Err(io::Error::other(format!("injected failure at {stage}")));
    }
    Ok(())
}

/// A named step of a write; a no-op outside tests.
#[cfg(not(test))]
#[inline(always)]
fn checkpoint(_stage: &'static str, _tmp: &Path) -> io::Result<()> {
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Backups
// ---------------------------------------------------------------------------------------------

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
struct Manifest {
    version: u32,
    rotation_id: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    entries: Vec<BackupEntry>,
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
        install_file(
            &Dest::open("write", &copy, false)?,
            &contents,
            Meta::Preserve(FileMode::Keep {
                new: PRIVATE_FILE_MODE,
            }),
            Expect::Seen,
            Replaces::SameKind,
        )?;
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
        install_file(
            &Dest::open("write", &path, false)?,
            &json,
            Meta::Preserve(FileMode::Keep {
                new: PRIVATE_FILE_MODE,
            }),
            Expect::Seen,
            Replaces::SameKind,
        )
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

/// Reads a regular file without following a link that may have replaced it.
fn read_no_follow(path: &Path) -> Result<Vec<u8>> {
    match read_node_file(path)? {
        NodeFile::File(data) => Ok(data),
        NodeFile::Absent => Err(io_err("read", path)(io::ErrorKind::NotFound.into())),
        NodeFile::Other(found) => Err(StoreError::Unsupported {
            op: "read",
            path: path.to_path_buf(),
            found,
        }),
    }
}

/// What a node path holds, as [`read_node_file`] found it.
#[derive(PartialEq, Eq)]
pub enum NodeFile {
    /// Nothing.
    Absent,
    /// A regular file, with its content.
    File(Vec<u8>),
    /// Something else, never opened: a symlink (there or on the way), a device, FIFO, socket
    /// or directory.
    Other(&'static str),
}

impl std::fmt::Debug for NodeFile {
    // Node files hold private keys: never print the contents.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeFile::Absent => f.write_str("Absent"),
            NodeFile::File(d) => write!(f, "File({} bytes)", d.len()),
            NodeFile::Other(kind) => write!(f, "Other({kind})"),
        }
    }
}

/// Reads the node file at `path` following no link at all, neither on the way nor at the end,
/// and opening nothing but a regular file (its type is checked on an `O_PATH` handle first).
pub fn read_node_file(path: &Path) -> Result<NodeFile> {
    let no_links = ResolveFlag::RESOLVE_NO_SYMLINKS;
    let (mut file, seen) = match fd::open_regular(AT_FDCWD, path, false, no_links) {
        Ok(opened) => opened,
        Err(fd::OpenError::Missing) => return Ok(NodeFile::Absent),
        Err(fd::OpenError::Symlink) => return Ok(NodeFile::Other(Kind::Symlink.name())),
        Err(fd::OpenError::NotRegular(kind)) => return Ok(NodeFile::Other(kind.name())),
        Err(fd::OpenError::Io(e)) => return Err(io_err("open", path)(e)),
    };
    let mut data = Vec::with_capacity(usize::try_from(seen.size).unwrap_or(0));
    file.read_to_end(&mut data).map_err(io_err("read", path))?;
    Ok(NodeFile::File(data))
}

/// Hex SHA-256 of `data` (the digest manifests and rotation journals record).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data).as_ref())
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
fn read_manifest(path: &Path) -> Result<Option<Manifest>> {
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

/// Lists the complete backups under `backups_root`, oldest first (a missing root means none).
///
/// A directory without a manifest (a crash inside [`Backup::create`]) is skipped; a manifest that
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2025-01-01 00:00 UTC);

    fn fail_at(stage: Option<&'static str>) {
        FAIL_AT.with(|f| f.set(stage));
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn owner_of(p: &Path) -> (u32, u32) {
        let m = fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// An owner other than the process's when running as root, so preservation is really tested.
    fn foreign_owner() -> (u32, u32) {
        if is_root() {
            (1234, 5678)
        } else {
            let m = fs::metadata("/proc/self").unwrap();
            (m.uid(), m.gid())
        }
    }

    #[test]
    fn new_file_gets_new_mode_and_content() {
        let t = TempDir::new().unwrap();
        let key = t.path().join("apiserver.key");
        write_atomic(&key, b"secret", 0o600).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        assert_eq!(mode_of(&key), 0o600);
        assert_eq!(names_in(t.path()), ["apiserver.key"]);
    }

    #[test]
    fn replacing_keeps_mode_and_owner_and_temp_is_private() {
        let t = TempDir::new().unwrap();
        let crt = t.path().join("apiserver.crt");
        fs::write(&crt, b"old").unwrap();
        let (uid, gid) = foreign_owner();
        std::os::unix::fs::chown(&crt, Some(uid), Some(gid)).unwrap();
        set_mode(&crt, 0o644).unwrap();

        SEEN_TEMP_MODES.with(|s| s.borrow_mut().clear());
        write_atomic(&crt, b"new", 0o600).unwrap();

        assert_eq!(fs::read(&crt).unwrap(), b"new");
        assert_eq!(mode_of(&crt), 0o644);
        assert_eq!(owner_of(&crt), (uid, gid));
        let seen = SEEN_TEMP_MODES.with(|s| s.borrow().clone());
        // While the content sits in the temp file, nobody else may read it.
        assert!(seen.contains(&("created", 0o600)), "{seen:?}");
        assert!(seen.contains(&("written", 0o600)), "{seen:?}");
        assert!(seen.contains(&("owned", 0o644)), "{seen:?}");
    }

    #[test]
    fn a_symlink_at_the_destination_is_refused_not_followed() {
        let t = TempDir::new().unwrap();
        let target = t.path().join("elsewhere.key");
        let link = t.path().join("apiserver.key");
        fs::write(&target, b"old").unwrap();
        set_mode(&target, 0o644).unwrap();
        symlink(&target, &link).unwrap();
        let dangling = t.path().join("current.pem");
        symlink(t.path().join("missing.pem"), &dangling).unwrap();

        for write in [
            &(|p: &Path| write_atomic(p, b"new", 0o600)) as &dyn Fn(&Path) -> Result<()>,
            &|p: &Path| write_node_file(p, b"new", FileMode::Secret { new: 0o600 }, Expect::Seen),
            &|p: &Path| write_node_file(p, b"new", FileMode::Keep { new: 0o600 }, Expect::Absent),
        ] {
            for p in [&link, &dangling] {
                let err = write(p).unwrap_err();
                assert!(
                    matches!(
                        err,
                        StoreError::Unsupported {
                            found: "symlink",
                            ..
                        }
                    ),
                    "{err}"
                );
            }
        }
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(mode_of(&target), 0o644);
        assert!(!t.path().join("missing.pem").exists());
        assert_eq!(
            names_in(t.path()),
            ["apiserver.key", "current.pem", "elsewhere.key"]
        );
    }

    #[test]
    fn node_writes_refuse_a_symlink_on_the_way() {
        let t = TempDir::new().unwrap();
        fs::create_dir(t.path().join("real")).unwrap();
        symlink("real", t.path().join("pki")).unwrap();
        let err = write_node_file(
            &t.path().join("pki/ca.key"),
            b"x",
            FileMode::Secret { new: 0o600 },
            Expect::Seen,
        )
        .unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("a symlink is on the way"), "{source}");
        assert!(names_in(&t.path().join("real")).is_empty());
    }

    #[test]
    fn keys_are_narrowed_to_0600_and_keep_their_owner() {
        let t = TempDir::new().unwrap();
        let key = t.path().join("apiserver.key");
        fs::write(&key, b"old").unwrap();
        set_mode(&key, 0o644).unwrap();
        let (uid, gid) = foreign_owner();
        std::os::unix::fs::chown(&key, Some(uid), Some(gid)).unwrap();
        write_node_file(&key, b"new", FileMode::Secret { new: 0o600 }, Expect::Seen).unwrap();
        assert_eq!((mode_of(&key), owner_of(&key)), (0o600, (uid, gid)));
        // Stricter stays stricter.
        set_mode(&key, 0o400).unwrap();
        write_node_file(
            &key,
            b"newer",
            FileMode::Secret { new: 0o600 },
            Expect::Seen,
        )
        .unwrap();
        assert_eq!(mode_of(&key), 0o400);
        assert_eq!(fs::read(&key).unwrap(), b"newer");
    }

    #[test]
    fn a_file_swapped_during_the_write_is_not_replaced() {
        let t = TempDir::new().unwrap();
        let key = t.path().join("apiserver.key");
        let theirs = t.path().join("theirs.key");
        fs::write(&key, b"old").unwrap();
        fs::write(&theirs, b"attacker").unwrap();
        let before = fd::stat_at(fd::open_dir(t.path()).unwrap(), OsStr::new("apiserver.key"))
            .unwrap()
            .unwrap();
        let (k, th) = (key.clone(), theirs.clone());
        MEANWHILE.with(|m| {
            *m.borrow_mut() = Some((
                "synced",
                Box::new(move || {
                    fs::remove_file(&k).unwrap();
                    symlink(&th, &k).unwrap();
                }),
            ))
        });
        let err = write_node_file(
            &key,
            b"new",
            FileMode::Secret { new: 0o600 },
            Expect::Same(before.id),
        )
        .unwrap_err();
        MEANWHILE.with(|m| *m.borrow_mut() = None);
        assert!(matches!(err, StoreError::Changed { .. }), "{err}");
        assert_eq!(fs::read(&theirs).unwrap(), b"attacker");
        assert!(fs::symlink_metadata(&key).unwrap().file_type().is_symlink());
        assert_eq!(names_in(t.path()), ["apiserver.key", "theirs.key"]);

        // A file created where nothing was expected is not replaced either.
        let new = t.path().join("new.pem");
        fs::write(&new, b"someone's").unwrap();
        let err =
            write_node_file(&new, b"x", FileMode::Keep { new: 0o644 }, Expect::Absent).unwrap_err();
        assert!(matches!(err, StoreError::Changed { .. }), "{err}");
        assert_eq!(fs::read(&new).unwrap(), b"someone's");
    }

    #[test]
    fn reading_node_files_opens_only_regular_files() {
        let t = TempDir::new().unwrap();
        let f = t.path().join("a.crt");
        fs::write(&f, b"x").unwrap();
        symlink("/dev/zero", t.path().join("zero")).unwrap();
        assert_eq!(read_node_file(&f).unwrap(), NodeFile::File(b"x".to_vec()));
        assert_eq!(
            read_node_file(&t.path().join("zero")).unwrap(),
            NodeFile::Other("symlink")
        );
        assert_eq!(
            read_node_file(Path::new("/dev/zero")).unwrap(),
            NodeFile::Other("character device")
        );
        assert_eq!(
            read_node_file(&t.path().join("none")).unwrap(),
            NodeFile::Absent
        );
    }

    #[test]
    fn failure_at_any_step_leaves_original_and_no_temp() {
        for stage in ["created", "written", "owned", "synced"] {
            let t = TempDir::new().unwrap();
            let crt = t.path().join("ca.crt");
            fs::write(&crt, b"original").unwrap();
            set_mode(&crt, 0o644).unwrap();

            fail_at(Some(stage));
            let err = write_atomic(&crt, b"replacement", 0o600).unwrap_err();
            fail_at(None);

            assert!(err.to_string().contains(&*crt.to_string_lossy()), "{err}");
            assert_eq!(fs::read(&crt).unwrap(), b"original", "stage {stage}");
            assert_eq!(mode_of(&crt), 0o644);
            assert_eq!(names_in(t.path()), ["ca.crt"], "stage {stage}");
        }
    }

    #[test]
    fn missing_or_non_directory_parent_fails_cleanly() {
        let t = TempDir::new().unwrap();
        let err = write_atomic(&t.path().join("nope/ca.crt"), b"x", 0o600).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        let file = t.path().join("file");
        fs::write(&file, b"keep").unwrap();
        let err = write_atomic(&file.join("ca.crt"), b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("file/"), "{err}");
        assert_eq!(names_in(t.path()), ["file"]);
        assert_eq!(fs::read(&file).unwrap(), b"keep");
    }

    #[test]
    fn directory_at_destination_is_refused() {
        let t = TempDir::new().unwrap();
        let d = t.path().join("pki");
        fs::create_dir(&d).unwrap();
        let err = write_atomic(&d, b"x", 0o600).unwrap_err();
        assert!(matches!(
            err,
            StoreError::Unsupported {
                found: "directory",
                ..
            }
        ));
        assert!(d.is_dir());
        assert_eq!(names_in(t.path()), ["pki"]);
    }

    #[test]
    fn errors_never_contain_contents() {
        let t = TempDir::new().unwrap();
        fail_at(Some("synced"));
        let err = write_atomic(&t.path().join("k.key"), b"PRIVATE-KEY-BYTES", 0o600).unwrap_err();
        fail_at(None);
        let text = format!("{err} {err:?}");
        assert!(!text.contains("PRIVATE-KEY-BYTES"));
    }

    #[test]
    fn replace_symlink_swaps_and_creates() {
        let t = TempDir::new().unwrap();
        let link = t.path().join("kubelet-client-current.pem");
        replace_symlink(
            &link,
            Path::new("/var/lib/kubelet/pki/a.pem"),
            Expect::Absent,
        )
        .unwrap();
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("/var/lib/kubelet/pki/a.pem")
        );
        replace_symlink(&link, Path::new("b.pem"), Expect::Seen).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("b.pem"));
        assert_eq!(names_in(t.path()), ["kubelet-client-current.pem"]);
    }

    #[test]
    fn replace_symlink_failure_keeps_old_link_and_no_temp() {
        let t = TempDir::new().unwrap();
        let link = t.path().join("current.pem");
        symlink("old.pem", &link).unwrap();
        fail_at(Some("owned"));
        assert!(replace_symlink(&link, Path::new("new.pem"), Expect::Seen).is_err());
        fail_at(None);
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("old.pem"));
        assert_eq!(names_in(t.path()), ["current.pem"]);
    }

    #[test]
    fn stale_temp_cleanup_removes_only_ours() {
        let t = TempDir::new().unwrap();
        let d = t.path();
        let ours = [
            ".ca.key.certrotd-tmp.0123456789abcdef",
            ".current.pem.certrotd-tmp.fedcba9876543210",
        ];
        fs::write(d.join(ours[0]), b"x").unwrap();
        symlink("x", d.join(ours[1])).unwrap();
        let theirs = [
            "ca.key",
            ".ca.key.certrotd-tmp.0123",                 // too short
            ".ca.key.certrotd-tmp.0123456789ABCDEF",     // not our hex
            "ca.key.certrotd-tmp.0123456789abcdef",      // not hidden
            ".ca.key.other-tmp.0123456789abcdef",        // someone else's
            ".ca.key.certrotd-tmp.0123456789abcdef.bak", // suffix
        ];
        for n in theirs {
            fs::write(d.join(n), b"x").unwrap();
        }
        fs::create_dir(d.join(".dir.certrotd-tmp.0123456789abcdef")).unwrap();

        let removed = remove_stale_temps(d).unwrap();
        let mut want: Vec<PathBuf> = ours.iter().map(|n| d.join(n)).collect();
        want.sort();
        assert_eq!(removed, want);
        let mut left: Vec<&str> = theirs.to_vec();
        left.push(".dir.certrotd-tmp.0123456789abcdef");
        left.sort();
        assert_eq!(names_in(d), left);
    }

    #[test]
    fn temp_names_are_recognised() {
        let tmp = temp_path(Path::new("/x"), b"apiserver.key");
        assert!(is_temp_name(tmp.file_name().unwrap().as_bytes()));
        let long = vec![b'a'; 255];
        let tmp = temp_path(Path::new("/x"), &long);
        assert!(tmp.file_name().unwrap().len() <= 255);
        assert!(is_temp_name(tmp.file_name().unwrap().as_bytes()));
    }

    /// A small node: a key (0600, foreign owner), a cert, a symlink, and a path to be created.
    struct Node {
        _t: TempDir,
        root: PathBuf,
        key: PathBuf,
        crt: PathBuf,
        link: PathBuf,
        new: PathBuf,
    }

    fn node() -> Node {
        let t = TempDir::new().unwrap();
        let pki = t.path().join("pki");
        fs::create_dir(&pki).unwrap();
        let key = pki.join("apiserver.key");
        let crt = pki.join("apiserver.crt");
        let link = pki.join("kubelet-client-current.pem");
        let new = pki.join("kubelet-client-2026.pem");
        fs::write(&key, b"old key").unwrap();
        set_mode(&key, 0o600).unwrap();
        let (uid, gid) = foreign_owner();
        std::os::unix::fs::chown(&key, Some(uid), Some(gid)).unwrap();
        fs::write(&crt, b"old cert").unwrap();
        set_mode(&crt, 0o644).unwrap();
        symlink("kubelet-client-2025.pem", &link).unwrap();
        Node {
            root: t.path().join("state/backups"),
            _t: t,
            key,
            crt,
            link,
            new,
        }
    }

    fn rotate(n: &Node) {
        write_atomic(&n.key, b"new key", 0o600).unwrap();
        write_atomic(&n.crt, b"new cert", 0o644).unwrap();
        write_atomic(&n.new, b"new kubelet", 0o600).unwrap();
        replace_symlink(&n.link, &n.new, Expect::Seen).unwrap();
    }

    fn backup_all(n: &Node, id: &str) -> Backup {
        let mut b = Backup::create(&n.root, id, T0).unwrap();
        for p in [&n.key, &n.crt, &n.link, &n.new] {
            b.save(p).unwrap();
        }
        b
    }

    #[test]
    fn backup_and_restore_round_trip() {
        let n = node();
        let b = backup_all(&n, "r1");
        assert_eq!(mode_of(&n.root), 0o700);
        assert_eq!(mode_of(b.dir()), 0o700);
        for e in b.entries() {
            if let SavedState::File { stored, .. } = &e.state {
                assert_eq!(mode_of(&b.dir().join(stored)), 0o600);
            }
        }
        assert!(matches!(
            b.entries()[0].state,
            SavedState::File { mode: 0o600, .. }
        ));
        assert!(matches!(b.entries()[2].state, SavedState::Symlink { .. }));
        assert_eq!(b.entries()[3].state, SavedState::Absent);
        for p in [&n.key, &n.crt, &n.link, &n.new] {
            assert!(b.matches_current(p).unwrap(), "{}", p.display());
        }

        rotate(&n);
        for p in [&n.key, &n.crt, &n.link, &n.new] {
            assert!(!b.matches_current(p).unwrap(), "{}", p.display());
        }

        // Restore from a freshly opened backup, as crash recovery would.
        let b = Backup::open(&n.root, "r1").unwrap();
        let report = b.restore().unwrap();
        assert_eq!(
            report.restored,
            [n.key.clone(), n.crt.clone(), n.link.clone()]
        );
        assert_eq!(report.removed, std::slice::from_ref(&n.new));
        assert!(report.unchanged.is_empty());

        assert_eq!(fs::read(&n.key).unwrap(), b"old key");
        assert_eq!(mode_of(&n.key), 0o600);
        assert_eq!(owner_of(&n.key), foreign_owner());
        assert_eq!(fs::read(&n.crt).unwrap(), b"old cert");
        assert_eq!(mode_of(&n.crt), 0o644);
        assert_eq!(
            fs::read_link(&n.link).unwrap(),
            Path::new("kubelet-client-2025.pem")
        );
        assert!(!n.new.exists());
        for p in [&n.key, &n.crt, &n.link, &n.new] {
            assert!(b.matches_current(p).unwrap());
        }

        // Running it again (a retry after a crash mid-restore) changes nothing.
        let again = b.restore().unwrap();
        assert!(again.restored.is_empty() && again.removed.is_empty());
        assert_eq!(again.unchanged.len(), 4);
    }

    #[test]
    fn restore_puts_back_mode_and_owner_changed_by_rotation() {
        let n = node();
        let b = backup_all(&n, "r1");
        set_mode(&n.key, 0o644).unwrap();
        if is_root() {
            std::os::unix::fs::chown(&n.key, Some(0), Some(0)).unwrap();
        }
        assert!(!b.matches_current(&n.key).unwrap());
        b.restore().unwrap();
        assert_eq!(mode_of(&n.key), 0o600);
        assert_eq!(owner_of(&n.key), foreign_owner());
    }

    #[test]
    fn restore_replaces_a_link_left_where_a_file_was() {
        let n = node();
        let b = backup_all(&n, "r1");
        fs::remove_file(&n.crt).unwrap();
        symlink("elsewhere.crt", &n.crt).unwrap();
        b.restore().unwrap();
        assert!(fs::symlink_metadata(&n.crt).unwrap().is_file());
        assert_eq!(fs::read(&n.crt).unwrap(), b"old cert");
    }

    #[test]
    fn failed_save_records_nothing_and_can_be_retried() {
        let n = node();
        let mut b = Backup::create(&n.root, "r1", T0).unwrap();
        fail_at(Some("synced"));
        assert!(b.save(&n.key).is_err());
        fail_at(None);
        assert!(b.entries().is_empty());
        assert!(Backup::open(&n.root, "r1").unwrap().entries().is_empty());
        b.save(&n.key).unwrap();
        assert_eq!(Backup::open(&n.root, "r1").unwrap().entries().len(), 1);
    }

    #[test]
    fn interrupted_restore_can_be_run_again() {
        let n = node();
        let b = backup_all(&n, "r1");
        rotate(&n);
        fail_at(Some("written"));
        assert!(b.restore().is_err());
        fail_at(None);
        // Nothing half-written: the key is still wholly the new one.
        assert_eq!(fs::read(&n.key).unwrap(), b"new key");
        b.restore().unwrap();
        for p in [&n.key, &n.crt, &n.link, &n.new] {
            assert!(b.matches_current(p).unwrap(), "{}", p.display());
        }
    }

    #[test]
    fn saving_twice_keeps_the_first_record() {
        let n = node();
        let mut b = Backup::create(&n.root, "r1", T0).unwrap();
        b.save(&n.crt).unwrap();
        write_atomic(&n.crt, b"new cert", 0o644).unwrap();
        b.save(&n.crt).unwrap();
        assert_eq!(b.entries().len(), 1);
        let b = Backup::open(&n.root, "r1").unwrap();
        assert_eq!(b.entries().len(), 1);
        b.restore().unwrap();
        assert_eq!(fs::read(&n.crt).unwrap(), b"old cert");
    }

    #[test]
    fn tampered_copy_is_refused_and_nothing_is_touched() {
        let n = node();
        let b = backup_all(&n, "r1");
        rotate(&n);
        let SavedState::File { stored, .. } = &b.entries()[1].state else {
            panic!("crt should be a file entry");
        };
        let stored_path = b.dir().join(stored);
        fs::write(&stored_path, b"garbage").unwrap();

        let err = b.restore().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&*stored_path.to_string_lossy()), "{text}");
        assert!(text.contains(&*n.crt.to_string_lossy()), "{text}");
        // Verification happens before any write: the key is still the new one.
        assert_eq!(fs::read(&n.key).unwrap(), b"new key");
        assert_eq!(fs::read(&n.crt).unwrap(), b"new cert");
    }

    #[test]
    fn missing_copy_is_an_error_naming_it() {
        let n = node();
        let b = backup_all(&n, "r1");
        let SavedState::File { stored, .. } = &b.entries()[0].state else {
            panic!("key should be a file entry");
        };
        fs::remove_file(b.dir().join(stored)).unwrap();
        let err = b.restore().unwrap_err();
        assert!(err.to_string().contains(stored.as_str()), "{err}");
    }

    #[test]
    fn tampered_manifest_cannot_point_outside_the_backup() {
        let n = node();
        let b = backup_all(&n, "r1");
        let mpath = b.dir().join(MANIFEST);
        let text = fs::read_to_string(&mpath).unwrap();
        let SavedState::File { stored, .. } = &b.entries()[0].state else {
            panic!("key should be a file entry");
        };
        fs::write(&mpath, text.replace(stored.as_str(), "../../../etc/shadow")).unwrap();
        let err = Backup::open(&n.root, "r1").unwrap_err();
        assert!(matches!(err, StoreError::ManifestInvalid { .. }), "{err}");
        fs::write(&mpath, b"{ not json").unwrap();
        let err = Backup::open(&n.root, "r1").unwrap_err();
        assert!(
            matches!(err, StoreError::Manifest { op: "parse", .. }),
            "{err}"
        );
        assert!(list(&n.root).is_err());
    }

    #[test]
    fn manifest_records_what_the_brief_asks() {
        let n = node();
        let b = backup_all(&n, "r1");
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(b.dir().join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(v["rotation_id"], "r1");
        assert_eq!(v["created_at"], "2025-01-01T00:00:00Z");
        let key = &v["entries"][0];
        assert_eq!(key["kind"], "file");
        assert_eq!(key["path"], n.key.to_str().unwrap());
        assert_eq!(key["mode"], 0o600);
        assert_eq!(key["sha256"], sha256_hex(b"old key"));
        // The inode, so an install replaces that very file or nothing.
        let ino = fs::symlink_metadata(&n.key).unwrap().ino();
        assert_eq!(key["inode"]["ino"], ino);
        assert!(matches!(b.expect(&n.key), Expect::Same(FileId { ino: i, .. }) if i == ino));
        assert_eq!(b.expect(&n.new), Expect::Absent);
        assert!(matches!(b.expect(&n.link), Expect::Same(_)));
        assert_eq!(v["entries"][2]["kind"], "symlink");
        assert_eq!(v["entries"][2]["target"], "kubelet-client-2025.pem");
        assert_eq!(v["entries"][3]["kind"], "absent");
    }

    #[test]
    fn save_refuses_relative_paths_and_directories() {
        let n = node();
        let mut b = Backup::create(&n.root, "r1", T0).unwrap();
        assert!(matches!(
            b.save(Path::new("pki/ca.crt")).unwrap_err(),
            StoreError::BadPath { .. }
        ));
        let dir = n.key.parent().unwrap();
        assert!(matches!(
            b.save(dir).unwrap_err(),
            StoreError::Unsupported {
                found: "directory",
                ..
            }
        ));
        assert!(b.entries().is_empty());
        assert!(matches!(
            b.matches_current(&n.key).unwrap_err(),
            StoreError::NotSaved { .. }
        ));
    }

    #[test]
    fn create_refuses_an_existing_id_and_open_a_missing_one() {
        let n = node();
        Backup::create(&n.root, "r1", T0).unwrap();
        assert!(matches!(
            Backup::create(&n.root, "r1", T0).unwrap_err(),
            StoreError::BackupExists { .. }
        ));
        assert!(matches!(
            Backup::open(&n.root, "r2").unwrap_err(),
            StoreError::BackupNotFound { .. }
        ));
    }

    #[test]
    fn create_tightens_an_existing_root_to_0700() {
        let t = TempDir::new().unwrap();
        let root = t.path().join("backups");
        fs::create_dir(&root).unwrap();
        set_mode(&root, 0o755).unwrap();
        Backup::create(&root, "r1", T0).unwrap();
        assert_eq!(mode_of(&root), 0o700);
    }

    #[test]
    fn bad_ids_are_rejected_everywhere() {
        let t = TempDir::new().unwrap();
        let root = t.path().join("backups");
        for id in [
            "",
            ".",
            "..",
            "../escape",
            "a/b",
            "/etc",
            "a..b",
            ".hidden",
            "-rf",
            "a b",
            "a\0b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(validate_rotation_id(id), Err(StoreError::InvalidId { .. })),
                "{id:?}"
            );
            assert!(Backup::create(&root, id, T0).is_err(), "{id:?}");
            assert!(
                matches!(Backup::open(&root, id), Err(StoreError::InvalidId { .. })),
                "{id:?}"
            );
        }
        assert!(!t.path().join("escape").exists());
        for id in ["20250101T000000Z-abc", "r1", "a.b_c-d", &"x".repeat(128)] {
            validate_rotation_id(id).unwrap();
        }
    }

    #[test]
    fn list_is_oldest_first_and_prune_keeps_newest_and_protected() {
        let t = TempDir::new().unwrap();
        let root = t.path().join("backups");
        assert!(list(&root).unwrap().is_empty());
        let ids = ["e", "d", "c", "b", "a"];
        for (i, id) in ids.iter().enumerate() {
            let mut b = Backup::create(&root, id, T0 + time::Duration::hours(i as i64)).unwrap();
            b.save(&t.path().join("absent")).unwrap();
        }
        // A crash inside create leaves a directory with no manifest; someone else's file is ignored.
        fs::create_dir(root.join("crashed")).unwrap();
        fs::write(root.join("README"), b"not a backup").unwrap();

        let listed = list(&root).unwrap();
        let order: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(order, ids);
        assert_eq!(listed[0].entries, 1);
        assert_eq!(listed[0].created_at, T0);

        let deleted = prune(&root, 2, &["e"], &[]).unwrap();
        assert_eq!(deleted, ["crashed", "d", "c"]);
        let order: Vec<String> = list(&root).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(order, ["e", "b", "a"]);
        assert_eq!(names_in(&root), ["README", "a", "b", "e"]);

        assert!(prune(&root, 5, &[], &[]).unwrap().is_empty());
        assert_eq!(prune(&root, 0, &["a"], &[]).unwrap(), ["e", "b"]);
        assert_eq!(names_in(&root), ["README", "a"]);
    }

    #[test]
    fn prune_evicts_backups_of_rolled_back_rotations_before_committed_ones() {
        let t = TempDir::new().unwrap();
        let root = t.path().join("backups");
        // "old" committed first, then three rolled back, then the rotation just committed.
        let ids = ["old", "rb1", "rb2", "rb3", "new"];
        for (i, id) in ids.iter().enumerate() {
            let mut b = Backup::create(&root, id, T0 + time::Duration::hours(i as i64)).unwrap();
            b.save(&t.path().join("absent")).unwrap();
        }
        let deleted = prune(&root, 2, &["new"], &["rb1", "rb2", "rb3"]).unwrap();
        assert_eq!(deleted, ["rb1", "rb2", "rb3"]);
        assert_eq!(names_in(&root), ["new", "old"]);
        // Past the committed ones' share, the oldest committed one goes as before.
        assert_eq!(prune(&root, 1, &["new"], &[]).unwrap(), ["old"]);

        remove(&root, "new").unwrap();
        remove(&root, "new").unwrap();
        assert!(names_in(&root).is_empty());
        assert!(remove(&root, "../x").is_err());
    }
}
