//! Creating the control socket: its directory, a stale socket left by a dead daemon removed (but
//! never one another daemon still listens on), and the socket bound with its mode and group set
//! before `listen`, so no client can connect while the file still has the umask's mode.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use tokio::net::UnixListener;

/// Mode of the socket's directory when [`bind`] has to create it: others must be able to reach
/// the socket, whose own mode then decides who may connect.
const PARENT_DIR_MODE: u32 = 0o755;

/// Why the socket could not be set up. Each error names the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A system call on the socket or its directory failed.
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
    /// Something that is not a socket is at the path; it is never removed.
    #[error("refusing to replace {}: it is a {found}, not a socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What is there.
        found: &'static str,
    },
    /// A live server (another certrotd?) accepts connections on the socket.
    #[error("cannot bind {}: another process is listening on it (is certrotd already running?)", path.display())]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// The socket path is longer than a Unix socket address can hold.
    #[error("cannot bind {}: a socket path has at most 107 bytes, this one has {len}", path.display())]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// `socket_group` names no group on this machine.
    #[error("cannot give {} to group {group:?}: no such group", path.display())]
    UnknownGroup {
        /// The socket.
        path: PathBuf,
        /// The group as configured.
        group: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BindError + 'a {
    move |source| BindError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the control socket at `path`, with `mode` and (when given) `group`, and listens on it.
///
/// The parent directory is created (0755) if missing. A stale socket left by an earlier run is
/// removed; anything else at the path (a regular file, a directory, a symlink) is refused, and
/// so is a socket someone still listens on. `group` is a group name, or a number when no group
/// has that name; `None` keeps the process's group. Must be called within a tokio runtime.
pub fn bind(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, BindError> {
    let len = path.as_os_str().len();
    // sun_path is 108 bytes including the terminating NUL.
    if len > 107 {
        return Err(BindError::PathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    let gid = group.map(|g| group_id(path, g)).transpose()?;
    if let Some(parent) = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        DirBuilder::new()
            .recursive(true)
            .mode(PARENT_DIR_MODE)
            .create(parent)
            .map_err(io_err("create the socket directory", parent))?;
        // The umask may have narrowed the mode (systemd's UMask=0077 would lock everyone out).
        fs::set_permissions(parent, fs::Permissions::from_mode(PARENT_DIR_MODE))
            .map_err(io_err("set the mode of", parent))?;
    }
    remove_stale(path)?;

    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| io_err("create a socket for", path)(e.into()))?;
    let addr = UnixAddr::new(path).map_err(|e| io_err("make an address of", path)(e.into()))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| io_err("bind", path)(e.into()))?;
    // From here on the file is ours: remove it again if setting it up fails.
    let listener = finish(path, fd, mode, gid).inspect_err(|_| {
        let _ = fs::remove_file(path);
    })?;
    tracing::debug!(path = %path.display(), mode = format!("{mode:04o}"), "control socket bound");
    Ok(listener)
}

/// Mode, group, then `listen`: until `listen`, connects are refused, so nobody connects
/// through a mode that was not yet the configured one.
fn finish(
    path: &Path,
    fd: OwnedFd,
    mode: u32,
    gid: Option<u32>,
) -> Result<UnixListener, BindError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("set the mode of", path))?;
    if let Some(gid) = gid {
        std::os::unix::fs::lchown(path, None, Some(gid)).map_err(io_err("chown", path))?;
    }
    socket::listen(&fd, Backlog::MAXCONN).map_err(|e| io_err("listen on", path)(e.into()))?;
    let std_listener = std::os::unix::net::UnixListener::from(fd);
    UnixListener::from_std(std_listener).map_err(io_err("register with the runtime", path))
}

fn group_id(path: &Path, group: &str) -> Result<u32, BindError> {
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => group.parse().map_err(|_| BindError::UnknownGroup {
            path: path.to_path_buf(),
            group: group.to_owned(),
        }),
        Err(e) => Err(io_err("look up the group for", path)(e.into())),
    }
}

/// Removes a socket file nobody listens on; refuses anything else.
fn remove_stale(path: &Path) -> Result<(), BindError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    let ft = meta.file_type();
    if !ft.is_socket() {
        let found = if ft.is_file() {
            "regular file"
        } else if ft.is_dir() {
            "directory"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "special file"
        };
        return Err(BindError::NotASocket {
            path: path.to_path_buf(),
            found,
        });
    }
    if someone_listens(path)? {
        return Err(BindError::InUse {
            path: path.to_path_buf(),
        });
    }
    fs::remove_file(path).map_err(io_err("remove the stale socket", path))?;
    tracing::info!(path = %path.display(), "removed a stale control socket");
    Ok(())
}

/// Whether a server accepts connections on the socket at `path`.
///
/// A non-blocking connect answers at once: refused means stale; accepted, or a full backlog
/// (EAGAIN), means a live server that must not lose its socket.
fn someone_listens(path: &Path) -> Result<bool, BindError> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| io_err("create a socket to probe", path)(e.into()))?;
    let addr = UnixAddr::new(path).map_err(|e| io_err("make an address of", path)(e.into()))?;
    match socket::connect(fd.as_fd().as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => Ok(true),
        Err(Errno::ECONNREFUSED) | Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(io_err("probe", path)(e.into())),
    }
}
