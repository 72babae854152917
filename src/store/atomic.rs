//! Atomic installs of one file or symlink: temp file in the same directory, fsync, rename, fsync
//! of the directory, with the destination checked against what the caller expects.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat, renameat2};
use nix::unistd::{UnlinkatFlags, fchownat, fsync, symlinkat, unlinkat};

use crate::failpoint::{self, Failpoint};
use crate::root::fd::{self, FileId, Kind, Seen};

use super::{PathIo, Result, StoreError, io_err};

/// What marks a temp file as ours; it sits between the original name and the random suffix.
const TEMP_MARKER: &[u8] = b".certrotd-tmp.";
/// Hex digits of randomness in a temp name: 64 bits, so names never collide in practice.
const TEMP_RANDOM_HEX: usize = 16;
/// Longest original name kept in a temp name, so the temp name stays under NAME_MAX (255).
const TEMP_NAME_KEEP: usize = 200;

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
pub(super) enum Meta {
    /// Those of the file being replaced (the mode as [`FileMode`] says); for a new file the mode
    /// it names and the process's owner.
    Preserve(FileMode),
    /// Exactly these (restore puts back what the backup recorded).
    Exact { mode: u32, uid: u32, gid: u32 },
}

/// What a write may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replaces {
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
pub(super) struct Dest<'a> {
    pub(super) dir: OwnedFd,
    pub(super) dir_path: &'a Path,
    pub(super) name: &'a OsStr,
    pub(super) path: &'a Path,
}

impl<'a> Dest<'a> {
    /// Opens the directory of `path`; with `no_links` there may be no symlink on the way.
    pub(super) fn open(op: &'static str, path: &'a Path, no_links: bool) -> Result<Dest<'a>> {
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
    pub(super) fn seen(&self) -> Result<Option<Seen>> {
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

    /// Ends a write: if preparing the temp `tmp` failed (`preparing` names the step), removes it
    /// and fails; otherwise renames it into place as [`Dest::commit`] does.
    fn finish(
        &self,
        op: &'static str,
        preparing: &'static str,
        tmp: &OsStr,
        seen: Option<Seen>,
        prepared: io::Result<()>,
    ) -> Result<()> {
        if let Err(source) = prepared {
            let _ = unlinkat(&self.dir, tmp, UnlinkatFlags::NoRemoveDir);
            return Err(StoreError::Io(PathIo {
                op: preparing,
                path: self.path.to_path_buf(),
                source,
            }));
        }
        self.commit(op, tmp, seen)
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
                return undo(StoreError::Io(PathIo {
                    op: "rename temp file over",
                    path: self.path.to_path_buf(),
                    source: e.into(),
                }));
            }
        }
        fsync(&self.dir).map_err(|e| io_err("fsync directory", self.dir_path)(e.into()))
    }
}

/// Splits a destination into its directory and file name, refusing paths without a name.
pub(super) fn dir_and_name<'a>(op: &'static str, path: &'a Path) -> Result<(&'a Path, &'a [u8])> {
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
pub(super) fn temp_path(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(temp_name(name))
}

/// Is this a name [`temp_name`] could have made?
pub(super) fn is_temp_name(name: &[u8]) -> bool {
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
pub(super) fn install_file(
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
    let result = (|| {
        checkpoint(Failpoint::TempCreated, dest, &tmp)?;
        file.write_all(contents)?;
        checkpoint(Failpoint::TempWritten, dest, &tmp)?;
        if let Some((uid, gid)) = owner {
            let current = file.metadata()?;
            if (current.uid(), current.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
        }
        // After fchown, which clears set-id bits, and before fsync, so the mode is durable too.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        checkpoint(Failpoint::TempOwned, dest, &tmp)?;
        file.sync_all()?;
        checkpoint(Failpoint::TempSynced, dest, &tmp)?;
        Ok(())
    })();
    drop(file);
    dest.finish(OP, "write temp file for", &tmp, seen, result)
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
    let (tmp, owned) = with_fresh_temp(dest, "create temp file", |tmp| {
        openat(&dest.dir, tmp, flags, fd::mode(0o600))
    })?;
    Ok((tmp, File::from(owned)))
}

/// Makes something under a fresh temp name in the destination's directory with `make`, which
/// must refuse a name that is taken (`EEXIST`); a taken name is retried with another.
fn with_fresh_temp<T>(
    dest: &Dest<'_>,
    op: &'static str,
    make: impl Fn(&OsStr) -> nix::Result<T>,
) -> Result<(std::ffi::OsString, T)> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = temp_name(dest.name.as_bytes());
        match make(&tmp) {
            Ok(made) => return Ok((tmp, made)),
            Err(Errno::EEXIST) => last = Some(tmp),
            Err(e) => return Err(io_err(op, &dest.dir_path.join(&tmp))(e.into())),
        }
    }
    let tmp = last.expect("the loop ran at least once");
    Err(io_err(op, &dest.dir_path.join(&tmp))(Errno::EEXIST.into()))
}

/// Swaps in a symlink; `owner` overrides the owner of the replaced link (restore uses it).
pub(super) fn install_symlink(
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
    let result = (|| {
        checkpoint(Failpoint::TempCreated, dest, &tmp)?;
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
        checkpoint(Failpoint::TempOwned, dest, &tmp)?;
        Ok(())
    })();
    dest.finish(OP, "swap in new symlink at", &tmp, seen, result)
}

/// Creates a temp symlink next to where the real one goes.
fn create_temp_symlink(dest: &Dest<'_>, target: &Path) -> Result<std::ffi::OsString> {
    let (tmp, ()) = with_fresh_temp(dest, "create temp symlink", |tmp| {
        symlinkat(target, &dest.dir, tmp)
    })?;
    Ok(tmp)
}

/// Removes `path` (anything but a directory) if present and makes the removal durable. The
/// directory is opened with no link on the way. Returns whether something was removed.
pub(super) fn remove_durably(path: &Path) -> Result<bool> {
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
pub(super) fn set_mode(path: &Path, mode: u32) -> Result<()> {
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

/// A step of a write: a failpoint about the temp file (a unit test fails the write there, looks
/// at the temp's mode, or acts as another process would in the middle of the write).
fn checkpoint(point: Failpoint, dest: &Dest<'_>, tmp: &OsStr) -> io::Result<()> {
    failpoint::hit_on(point, || dest.dir_path.join(tmp)).map_err(io::Error::other)
}
