//! Crash-safe file store: atomic installs of files and symlinks, and per-rotation backups that can be
//! restored after a crash.
//!
//! Every write goes to a temp file in the destination's own directory (so the rename cannot cross a
//! filesystem), is fsync'd, renamed over the destination and followed by an fsync of the directory,
//! so after a crash the path holds either the whole old or the whole new content. Temp files are
//! named `.<name>.certrotd-tmp.<16 hex digits>` so that [`remove_stale_temps`] can find exactly ours.
//!
//! A [`Backup`] records, before the first install of a rotation, what every path the rotation will
//! touch held: a regular file (copied), a symlink (its target) or nothing. Its manifest is rewritten
//! atomically after each save, so what is on disk is always a complete, checkable backup.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;

/// What marks a temp file as ours; it sits between the original name and the random suffix.
const TEMP_MARKER: &[u8] = b".certrotd-tmp.";
/// Hex digits of randomness in a temp name: 64 bits, so names never collide in practice.
const TEMP_RANDOM_HEX: usize = 16;
/// Longest original name kept in a temp name, so the temp name stays under NAME_MAX (255).
const TEMP_NAME_KEEP: usize = 200;
/// How many links [`write_atomic`] follows before calling it a loop (Linux's own limit).
const MAX_LINKS: usize = 40;

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
    /// The path holds something the store never replaces or backs up (a directory, device, socket...).
    #[error("cannot {op} {}: it is a {found}, not a regular file or symlink", path.display())]
    Unsupported {
        /// What was being done.
        op: &'static str,
        /// The offending path.
        path: PathBuf,
        /// What was found there.
        found: &'static str,
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

/// Which mode and owner a newly written file gets.
#[derive(Debug, Clone, Copy)]
enum Meta {
    /// Those of the file being replaced; for a new file this mode and the process's owner.
    Preserve { new_mode: u32 },
}

/// Atomically replaces the file at `path` with `contents`.
///
/// Keeps the mode and owner of the file being replaced; a new file gets `new_mode` and the process's
/// owner. If `path` is a symlink its final target is replaced and the link is left alone. On error
/// the original is untouched and no temp file is left behind.
pub fn write_atomic(path: &Path, contents: &[u8], new_mode: u32) -> Result<()> {
    let dest = resolve_links(path)?;
    install_file(&dest, contents, Meta::Preserve { new_mode })
}

/// Follows `path` through symlinks to the file they finally name (which may not exist yet).
///
/// Only the last component is followed here; the kernel resolves the directories on the way.
fn resolve_links(path: &Path) -> Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..=MAX_LINKS {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&current).map_err(io_err("read symlink", &current))?;
                current = match current.parent() {
                    Some(parent) if target.is_relative() => parent.join(target),
                    _ => target,
                };
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(io_err("inspect", &current)(e)),
        }
    }
    Err(io_err("resolve symlinks of", path)(Errno::ELOOP.into()))
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

/// A fresh temp name for `name` in `dir`, recognisable by [`is_temp_name`].
fn temp_path(dir: &Path, name: &[u8]) -> PathBuf {
    let kept = &name[..name.len().min(TEMP_NAME_KEEP)];
    let mut tmp = Vec::with_capacity(1 + kept.len() + TEMP_MARKER.len() + TEMP_RANDOM_HEX);
    tmp.push(b'.');
    tmp.extend_from_slice(kept);
    tmp.extend_from_slice(TEMP_MARKER);
    tmp.extend_from_slice(format!("{:016x}", rand::random::<u64>()).as_bytes());
    dir.join(std::ffi::OsStr::from_bytes(&tmp))
}

/// Is this a name [`temp_path`] could have made?
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

/// Names a file type for error messages.
fn kind_name(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "regular file"
    }
}

/// Writes `contents` to a temp file next to `dest` and renames it over `dest` (never following a
/// link at `dest`: a symlink there is replaced by the file).
fn install_file(dest: &Path, contents: &[u8], meta: Meta) -> Result<()> {
    const OP: &str = "write";
    let (dir, name) = dir_and_name(OP, dest)?;
    let existing = match fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_file() => Some(m),
        // Reached only by restore, which must put a file back where the rotation left a link.
        Ok(m) if m.file_type().is_symlink() => None,
        Ok(m) => {
            return Err(StoreError::Unsupported {
                op: OP,
                path: dest.to_path_buf(),
                found: kind_name(m.file_type()),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("inspect", dest)(e)),
    };
    let (mode, owner) = match (meta, &existing) {
        (Meta::Preserve { .. }, Some(m)) => (m.mode(), Some((m.uid(), m.gid()))),
        (Meta::Preserve { new_mode }, None) => (new_mode, None),
    };
    let mode = mode & 0o7777;

    let (tmp, mut file) = create_temp_file(dir, name)?;
    let result = (|| {
        checkpoint("created", &tmp)?;
        file.write_all(contents)?;
        checkpoint("written", &tmp)?;
        if let Some((uid, gid)) = owner {
            let current = file.metadata()?;
            if (current.uid(), current.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
        }
        // After fchown, which clears set-id bits, and before fsync, so the mode is durable too.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        checkpoint("owned", &tmp)?;
        file.sync_all()?;
        checkpoint("synced", &tmp)?;
        Ok(())
    })();
    drop(file);
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io {
            op: "write temp file for",
            path: dest.to_path_buf(),
            source,
        });
    }
    if let Err(source) = fs::rename(&tmp, dest) {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io {
            op: "rename temp file over",
            path: dest.to_path_buf(),
            source,
        });
    }
    fsync_dir(dir)
}

/// Creates a new temp file with mode 0600, so key material is never readable by others, not even
/// for the moment before the final mode is set.
fn create_temp_file(dir: &Path, name: &[u8]) -> Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = temp_path(dir, name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OFlag::O_CLOEXEC.bits())
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((tmp, e)),
            Err(e) => return Err(io_err("create temp file", &tmp)(e)),
        }
    }
    let (tmp, e) = last.expect("the loop ran at least once");
    Err(io_err("create temp file", &tmp)(e))
}

/// Atomically points the symlink `link` at `target` (creating it if absent), so a reader sees either
/// the old or the new target, never a missing link. Keeps the owner of a link being replaced.
pub fn replace_symlink(link: &Path, target: &Path) -> Result<()> {
    install_symlink(link, target, None)
}

/// Swaps in a symlink; `owner` overrides the owner of the replaced link (restore uses it).
fn install_symlink(link: &Path, target: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    const OP: &str = "replace symlink";
    let (dir, name) = dir_and_name(OP, link)?;
    let owner = match fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_dir() => {
            return Err(StoreError::Unsupported {
                op: OP,
                path: link.to_path_buf(),
                found: "directory",
            });
        }
        Ok(m) => owner.or(Some((m.uid(), m.gid()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => owner,
        Err(e) => return Err(io_err("inspect", link)(e)),
    };

    let tmp = create_temp_symlink(dir, name, target)?;
    let result = (|| {
        checkpoint("created", &tmp)?;
        if let Some((uid, gid)) = owner {
            let current = fs::symlink_metadata(&tmp)?;
            if (current.uid(), current.gid()) != (uid, gid) {
                std::os::unix::fs::lchown(&tmp, Some(uid), Some(gid))?;
            }
        }
        checkpoint("owned", &tmp)?;
        fs::rename(&tmp, link)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io {
            op: "swap in new symlink at",
            path: link.to_path_buf(),
            source,
        });
    }
    fsync_dir(dir)
}

/// Creates a temp symlink next to where the real one goes.
fn create_temp_symlink(dir: &Path, name: &[u8], target: &Path) -> Result<PathBuf> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = temp_path(dir, name);
        match std::os::unix::fs::symlink(target, &tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((tmp, e)),
            Err(e) => return Err(io_err("create temp symlink", &tmp)(e)),
        }
    }
    let (tmp, e) = last.expect("the loop ran at least once");
    Err(io_err("create temp symlink", &tmp)(e))
}

/// Fsyncs a directory, making renames, creations and removals in it durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
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

// Test-only fault injection: lets tests fail a write at a chosen step and observe the temp file,
// which is the only way to exercise cleanup paths when tests run as root (no EACCES to provoke).
#[cfg(test)]
thread_local! {
    static FAIL_AT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
    static SEEN_TEMP_MODES: std::cell::RefCell<Vec<(&'static str, u32)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A named step of a write; under test it records the temp's mode and may inject a failure.
#[cfg(test)]
fn checkpoint(stage: &'static str, tmp: &Path) -> io::Result<()> {
    if let Ok(m) = fs::symlink_metadata(tmp) {
        SEEN_TEMP_MODES.with(|s| s.borrow_mut().push((stage, m.mode() & 0o7777)));
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    fn fail_at(stage: Option<&'static str>) {
        FAIL_AT.with(|f| f.set(stage));
    }

    fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
        fs::set_permissions(p, fs::Permissions::from_mode(mode))
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
    fn writing_through_a_symlink_replaces_the_target() {
        let t = TempDir::new().unwrap();
        let target = t.path().join("kubelet-client-2025.pem");
        let link = t.path().join("kubelet-client-current.pem");
        fs::write(&target, b"old").unwrap();
        set_mode(&target, 0o600).unwrap();
        symlink("kubelet-client-2025.pem", &link).unwrap();

        write_atomic(&link, b"new", 0o644).unwrap();

        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("kubelet-client-2025.pem")
        );
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(mode_of(&target), 0o600);
    }

    #[test]
    fn writing_through_a_dangling_symlink_creates_the_target() {
        let t = TempDir::new().unwrap();
        let link = t.path().join("current.pem");
        symlink(t.path().join("missing.pem"), &link).unwrap();
        write_atomic(&link, b"new", 0o640).unwrap();
        assert_eq!(fs::read(t.path().join("missing.pem")).unwrap(), b"new");
        assert_eq!(mode_of(&t.path().join("missing.pem")), 0o640);
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let t = TempDir::new().unwrap();
        symlink("b", t.path().join("a")).unwrap();
        symlink("a", t.path().join("b")).unwrap();
        let err = write_atomic(&t.path().join("a"), b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("resolve symlinks"), "{err}");
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
        replace_symlink(&link, Path::new("/var/lib/kubelet/pki/a.pem")).unwrap();
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("/var/lib/kubelet/pki/a.pem")
        );
        replace_symlink(&link, Path::new("b.pem")).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("b.pem"));
        assert_eq!(names_in(t.path()), ["kubelet-client-current.pem"]);
    }

    #[test]
    fn replace_symlink_failure_keeps_old_link_and_no_temp() {
        let t = TempDir::new().unwrap();
        let link = t.path().join("current.pem");
        symlink("old.pem", &link).unwrap();
        fail_at(Some("owned"));
        assert!(replace_symlink(&link, Path::new("new.pem")).is_err());
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
}
