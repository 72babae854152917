//! Node files through file descriptors, so that what was checked is what gets used.
//!
//! certrotd runs as root next to directories others can write. A path resolved once and opened
//! again later can lead somewhere else by then, so here a directory is opened in one `openat2`
//! step (or, where a seccomp filter refuses that call, the same walk one component at a time: see
//! [`super::walk`]) with no symlink on the way, a name in it is inspected with `fstatat(AT_SYMLINK_NOFOLLOW)`,
//! and a file is opened `O_PATH` (which never runs a device's `open`) and `fstat`ed before it is
//! reopened for reading: a device node, FIFO or socket is never opened at all.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

/// Whether files or links owned by `uid` may be trusted: root's, or certrotd's own when it runs
/// unprivileged (tests, sandboxes). Anyone else may have planted them.
pub fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// A file's identity: the same device and inode means the same file, whatever its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device number of the filesystem.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// What kind of thing stands at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A directory.
    Dir,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

impl Kind {
    /// How messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Symlink => "symlink",
            Kind::Dir => "directory",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        }
    }
}

/// What `lstat`/`fstat` said about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Its kind.
    pub kind: Kind,
    /// Its identity.
    pub id: FileId,
    /// Permission bits (with set-id and sticky bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
}

impl Seen {
    fn from_stat(st: &FileStat) -> Seen {
        let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let kind = match fmt {
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFLNK => Kind::Symlink,
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFCHR => Kind::CharDevice,
            SFlag::S_IFBLK => Kind::BlockDevice,
            SFlag::S_IFIFO => Kind::Fifo,
            _ => Kind::Socket,
        };
        Seen {
            kind,
            id: FileId {
                dev: st.st_dev,
                ino: st.st_ino,
            },
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
        }
    }
}

/// Opens a directory (readable, so it can be fsync'd) with no symlink anywhere on `path`: node
/// paths reach certrotd with their links already resolved, so a link found now was planted since.
pub fn open_dir_no_links(path: &Path) -> io::Result<OwnedFd> {
    super::walk::open(
        AT_FDCWD,
        dir_or_dot(path),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        ResolveFlag::RESOLVE_NO_SYMLINKS,
    )
    .map_err(io::Error::from)
}

/// Opens one of certrotd's own directories (the state directory), resolved by the kernel.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    super::walk::open(
        AT_FDCWD,
        dir_or_dot(path),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        ResolveFlag::empty(),
    )
    .map_err(io::Error::from)
}

/// `Path::parent` gives "" for a bare name, which means the current directory.
fn dir_or_dot(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

/// What stands at `name` in `dir`, never following a link (`None` when nothing does).
pub fn stat_at(dir: impl AsFd, name: &OsStr) -> io::Result<Option<Seen>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(Seen::from_stat(&st))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What `fstat` says about an open file.
pub fn stat_fd(fd: impl AsFd) -> io::Result<Seen> {
    Ok(Seen::from_stat(&fstat(fd)?))
}

/// Why [`open_regular`] opened nothing.
#[derive(Debug)]
pub enum OpenError {
    /// Nothing is there.
    Missing,
    /// A symlink is there and links were not to be followed.
    Symlink,
    /// Something other than a regular file is there (it was not opened).
    NotRegular(Kind),
    /// The system said no.
    Io(io::Error),
}

impl From<Errno> for OpenError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::ENOENT => OpenError::Missing,
            other => OpenError::Io(other.into()),
        }
    }
}

/// Opens the regular file at `path` (relative to `dir`) for reading.
///
/// The file is first opened `O_PATH`, which reaches the inode without opening it (a device's
/// driver is never called, a FIFO never blocks), and `fstat`ed; only a regular file is then
/// reopened for reading through `/proc/self/fd`, which names exactly that inode. With
/// `follow_final` false a final symlink is [`OpenError::Symlink`]; `resolve` restricts the rest
/// of the walk (`RESOLVE_NO_SYMLINKS`, `RESOLVE_IN_ROOT`…).
pub fn open_regular(
    dir: impl AsFd,
    path: &Path,
    follow_final: bool,
    resolve: ResolveFlag,
) -> Result<(File, Seen), OpenError> {
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if !follow_final {
        flags |= OFlag::O_NOFOLLOW;
    }
    let handle = match super::walk::open(dir, dir_or_dot(path), flags, resolve) {
        Ok(fd) => fd,
        // RESOLVE_NO_SYMLINKS reports a link anywhere on the way as ELOOP.
        Err(Errno::ELOOP) => return Err(OpenError::Symlink),
        Err(e) => return Err(e.into()),
    };
    let seen = stat_fd(&handle).map_err(OpenError::Io)?;
    match seen.kind {
        Kind::File => {}
        // O_PATH|O_NOFOLLOW on a link opens the link itself.
        Kind::Symlink => return Err(OpenError::Symlink),
        other => return Err(OpenError::NotRegular(other)),
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOCTTY.bits())
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .map_err(OpenError::Io)?;
    Ok((file, seen))
}

/// The permission bits as a nix [`Mode`].
pub fn mode(bits: u32) -> Mode {
    Mode::from_bits_truncate(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::os::unix::fs::symlink;

    #[test]
    fn regular_files_open_and_everything_else_is_named() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("a.crt"), b"x").unwrap();
        symlink("a.crt", d.join("link")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let none = ResolveFlag::empty();
        let (mut f, seen) = open_regular(AT_FDCWD, &d.join("a.crt"), false, none).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), seen.kind), ("x", Kind::File));
        assert!(matches!(
            open_regular(AT_FDCWD, &d.join("link"), false, none),
            Err(OpenError::Symlink)
        ));
        assert!(open_regular(AT_FDCWD, &d.join("link"), true, none).is_ok());
        // A FIFO with no writer would block a plain open; O_PATH never does.
        assert!(matches!(
            open_regular(AT_FDCWD, &d.join("fifo"), false, none),
            Err(OpenError::NotRegular(Kind::Fifo))
        ));
        assert!(matches!(
            open_regular(AT_FDCWD, d, false, none),
            Err(OpenError::NotRegular(Kind::Dir))
        ));
        assert!(matches!(
            open_regular(AT_FDCWD, &d.join("nope"), false, none),
            Err(OpenError::Missing)
        ));
    }

    #[test]
    fn directories_with_a_link_on_the_way_are_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("real")).unwrap();
        symlink("real", t.path().join("via")).unwrap();
        open_dir_no_links(&t.path().join("real")).unwrap();
        let e = open_dir_no_links(&t.path().join("via")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ELOOP));
        open_dir(&t.path().join("via")).unwrap();
        let seen = stat_at(open_dir(t.path()).unwrap(), OsStr::new("via"))
            .unwrap()
            .unwrap();
        assert_eq!(seen.kind, Kind::Symlink);
    }
}
