//! The daemon's end of the control socket.
//!
//! [`bind`] creates the socket so that its mode and group are in place before `listen`: between
//! `bind` and `listen` a connect is refused, so no client can slip in while the file still has the
//! umask's mode. [`serve`] takes the listener, the [`Handler`] and a shutdown future as arguments
//! (as mini-redis does), so tests run the real server in process.
//!
//! Who may do what is decided by the peer's credentials (`SO_PEERCRED`), never by anything the
//! client says: reading (status, history, cluster, ca status) for anyone the socket's mode
//! admits, changing state (rotate, reload, ca rotate, ca abort) for root only.
//!
//! Every client is bounded, and none can lock root out: each user but root holds at most
//! [`ServerOptions::max_per_uid`] connections (more are refused at once), a connection that sends
//! no complete request within [`ServerOptions::read_timeout`] is closed, and
//! [`ServerOptions::root_reserve`] connections beyond the shared limit are kept for root, so that
//! `rotate` is answered even while others hold every shared slot. A client that hangs up while its
//! request is being answered has that request dropped (see `daemon::handler`).

use std::fs::{self, DirBuilder};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};

use super::admission::{Peer, PerUid, Slot, admit, refuse_connection};
use super::frame::{self, FrameError};
use super::proto::{self, ErrorKind, HistoryRecord, Request, Response, StatusReport};

/// Mode of the socket's directory when [`bind`] has to create it: others must be able to reach
/// the socket, whose own mode then decides who may connect.
const PARENT_DIR_MODE: u32 = 0o755;

/// Most connections served at once, whatever the file-descriptor budget allows.
pub const MAX_CONNECTIONS: usize = 4096;

/// Connections one user other than root may hold at once by default: enough for a few
/// terminals and a monitoring agent, far too few to crowd out anyone else.
pub const DEFAULT_MAX_PER_UID: usize = 8;

/// Connections kept for root beyond the shared limit by default.
pub const DEFAULT_ROOT_RESERVE: usize = 16;

/// What a handler's method returns.
pub type HandlerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, HandlerError>> + Send + 'a>>;

/// What the daemon does with each request the server lets through.
///
/// The server has already checked the peer: `rotate`, `reload`, `ca_rotate` and `ca_abort` are
/// only called for root.
/// The methods return boxed futures so that the trait stays object-safe (`Arc<dyn Handler>`).
pub trait Handler: Send + Sync {
    /// The node's status now.
    fn status(&self) -> HandlerFuture<'_, StatusReport>;
    /// Starts a rotation of these types and certificates; returns its id without waiting for it.
    fn rotate(&self, types: Vec<String>, certs: Vec<String>) -> HandlerFuture<'_, String>;
    /// The latest state of at most `limit` activity records, newest first.
    fn history(&self, limit: Option<usize>) -> HandlerFuture<'_, Vec<HistoryRecord>>;
    /// Re-reads the configuration; a bad one is refused and the old one kept.
    fn reload(&self) -> HandlerFuture<'_, ()>;
    /// The cluster as the lease sees it. A handler without a lease says so.
    fn cluster(&self) -> HandlerFuture<'_, proto::ClusterView> {
        Box::pin(async {
            Err(HandlerError::failed(
                "this daemon has no lease to show the cluster from",
            ))
        })
    }
    /// Starts rotating the CA `track` (from the operator's files in the absolute directory
    /// `from`, or a new one); returns the rotation id. Only called for root.
    fn ca_rotate(&self, track: String, from: Option<String>) -> HandlerFuture<'_, String> {
        let _ = (track, from);
        Box::pin(async { Err(HandlerError::failed(NO_CA)) })
    }
    /// Every CA track as the daemon last read it.
    fn ca_status(&self) -> HandlerFuture<'_, proto::CaStatusView> {
        Box::pin(async { Err(HandlerError::failed(NO_CA)) })
    }
    /// Rolls back the open CA rotation of `track` (every open one when `None`); says what it
    /// did. Only called for root.
    fn ca_abort(&self, track: Option<String>) -> HandlerFuture<'_, String> {
        let _ = track;
        Box::pin(async { Err(HandlerError::failed(NO_CA)) })
    }
}

/// What a handler without CA rotation answers the CA requests.
const NO_CA: &str = "this daemon does not rotate CAs";

/// Why a handler did not carry out a request; sent to the client as [`Response::Error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    /// Which kind of refusal.
    pub kind: ErrorKind,
    /// Why, for the operator (no key material, ever).
    pub message: String,
}

impl HandlerError {
    /// The request named something unknown or was contradictory.
    pub fn bad_request(message: impl Into<String>) -> Self {
        HandlerError {
            kind: ErrorKind::BadRequest,
            message: message.into(),
        }
    }

    /// The daemon cannot do it now (e.g. a rotation is running).
    pub fn busy(message: impl Into<String>) -> Self {
        HandlerError {
            kind: ErrorKind::Busy,
            message: message.into(),
        }
    }

    /// The daemon tried and failed.
    pub fn failed(message: impl Into<String>) -> Self {
        HandlerError {
            kind: ErrorKind::Failed,
            message: message.into(),
        }
    }
}

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

/// How the server treats its clients.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// A request must arrive whole within this, counted from the connection or the previous
    /// answer; a stalled or idle client is then dropped and its slot freed.
    pub read_timeout: Duration,
    /// An answer must be taken by the client within this.
    pub write_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog, holding no fd.
    /// Root may hold [`ServerOptions::root_reserve`] more.
    pub max_connections: usize,
    /// Connections one user other than root may hold at once; more are refused with "busy".
    pub max_per_uid: usize,
    /// Connections beyond `max_connections` that only root may take, so that others holding
    /// every shared slot never lock root out.
    pub root_reserve: usize,
    /// How long [`serve_with`], once shut down, waits for connections in progress to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_connections: default_max_connections(),
            max_per_uid: DEFAULT_MAX_PER_UID,
            root_reserve: DEFAULT_ROOT_RESERVE,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// [`MAX_CONNECTIONS`], or half the soft file-descriptor limit if that is smaller: under
/// systemd's default soft limit of 1024, 4096 connections would exhaust the descriptors the
/// daemon needs to read certificates.
pub fn default_max_connections() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => usize::try_from(soft / 2)
            .unwrap_or(MAX_CONNECTIONS)
            .clamp(16, MAX_CONNECTIONS),
        Err(_) => 256,
    }
}

/// Serves the control socket with [`ServerOptions::default`] until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, handler, shutdown, ServerOptions::default()).await;
}

/// Serves the control socket until `shutdown` completes, then stops accepting and waits (at most
/// `shutdown_grace`) for the connections in progress.
pub async fn serve_with(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()>,
    options: ServerOptions,
) {
    let max = options.max_connections.clamp(1, MAX_CONNECTIONS);
    let reserve = options.root_reserve.min(MAX_CONNECTIONS);
    let slots = Arc::new(Semaphore::new(max));
    let root_slots = Arc::new(Semaphore::new(reserve));
    let per_uid = PerUid::new(options.max_per_uid.max(1));
    let (stop, stopped) = watch::channel(false);
    let options = Arc::new(options);
    tokio::pin!(shutdown);
    loop {
        // A slot is taken before accepting, so that with every slot busy clients wait in the
        // kernel's backlog rather than as open descriptors here. A root slot will do: the
        // connection then proves to be root's, or is refused at once.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => Slot::Shared(permit),
                Err(_) => break,
            },
            permit = root_slots.clone().acquire_owned(), if reserve > 0 => match permit {
                Ok(permit) => Slot::Root(permit),
                Err(_) => break,
            },
        };
        let mut stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(&e, &mut shutdown).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer {
                uid: cred.uid(),
                pid: cred.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "control connection without peer credentials: closed");
                continue;
            }
        };
        let admitted = admit(peer, slot, &slots, &per_uid);
        let (permit, counted) = match admitted {
            Ok(admitted) => admitted,
            Err(why) => {
                refuse_connection(&mut stream, peer, &why).await;
                continue;
            }
        };
        let handler = handler.clone();
        let options = options.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            connection(stream, peer, handler, &options, stopped).await;
            drop(counted);
            drop(permit);
        });
    }
    let _ = stop.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let all_root = u32::try_from(reserve).unwrap_or(u32::MAX);
    let drained = async {
        let _shared = slots.acquire_many(all).await;
        let _root = root_slots.acquire_many(all_root).await;
    };
    if tokio::time::timeout(options.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            in_progress =
                max - slots.available_permits() + reserve - root_slots.available_permits(),
            "control socket stopped with connections still in progress"
        );
    }
}

/// Logs a failed accept; when the process is out of descriptors or memory, waits a little so the
/// loop does not spin while the condition lasts.
async fn accept_failed(e: &io::Error, shutdown: &mut Pin<&mut impl Future<Output = ()>>) {
    let exhausted = matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
    );
    if exhausted {
        tracing::warn!(error = %e, "cannot accept control connections: out of resources");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = shutdown.as_mut() => {}
        }
    } else {
        tracing::debug!(error = %e, "accepting a control connection failed");
    }
}

async fn connection(
    mut stream: UnixStream,
    peer: Peer,
    handler: Arc<dyn Handler>,
    options: &ServerOptions,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let read = tokio::select! {
            read = frame::read_request(&mut stream, options.read_timeout) => read,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let request = match read {
            Ok(request) => request,
            Err(FrameError::Closed) => return,
            Err(e) => {
                refuse_frame(&mut stream, peer, &e, options).await;
                return;
            }
        };
        let name = request.name();
        // A client that hangs up is not answered: its request is dropped, which the daemon sees
        // (a rotation it asked for is not started).
        let response = tokio::select! {
            response = answer(request, peer, handler.as_ref()) => response,
            () = hung_up(&stream) => {
                tracing::info!(
                    uid = peer.uid,
                    pid = peer.pid,
                    request = name,
                    "control client hung up before its answer: request dropped"
                );
                return;
            }
        };
        if let Err(e) = frame::write_response(&mut stream, &response, options.write_timeout).await {
            // Too large to encode means nothing was sent yet: the client can still be told.
            let too_large = matches!(e, FrameError::TooLarge { .. }).then(|| e.to_string());
            tracing::debug!(
                uid = peer.uid,
                pid = peer.pid,
                error = format!("{:#}", anyhow::Error::from(e)),
                "control answer not delivered"
            );
            if let Some(why) = too_large {
                let tell = Response::Error {
                    kind: ErrorKind::Failed,
                    message: format!("the answer is too large to send: {why}"),
                };
                let _ = frame::write_response(&mut stream, &tell, options.write_timeout).await;
            }
            return;
        }
    }
}

/// Completes when the client has closed its end (or the connection broke). A client that sends
/// more (a pipelined request) is still there: then this never completes, and the next read sees
/// what it sent, since it is only peeked at here.
async fn hung_up(stream: &UnixStream) {
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let peeked = stream.try_io(Interest::READABLE, || {
            let mut byte = [0u8; 1];
            socket::recv(
                stream.as_raw_fd(),
                &mut byte,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)
        });
        match peeked {
            Ok(0) => return,
            Ok(_) => return std::future::pending().await,
            // Readiness left over from the request just read: cleared, wait for the next.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Tells the client what was wrong with its frame (if it still listens) and logs who sent it.
/// The log names the kind of fault only: a frame's contents are never logged.
async fn refuse_frame(
    stream: &mut UnixStream,
    peer: Peer,
    e: &FrameError,
    options: &ServerOptions,
) {
    let fault = match e {
        FrameError::TooLarge { .. } => "oversized",
        FrameError::Malformed(_) => "malformed",
        FrameError::Truncated { .. } => "truncated",
        FrameError::Timeout(_) => "incomplete in time",
        FrameError::Closed | FrameError::Io(_) => "unreadable",
    };
    tracing::warn!(
        uid = peer.uid,
        pid = peer.pid,
        fault,
        "refused a control request"
    );
    if matches!(e, FrameError::Io(_)) {
        return;
    }
    let refusal = Response::Error {
        kind: ErrorKind::BadRequest,
        message: format!("request refused: {e}"),
    };
    let _ = frame::write_response(stream, &refusal, options.write_timeout).await;
}

async fn answer(request: Request, peer: Peer, handler: &dyn Handler) -> Response {
    let name = request.name();
    if request.changes_state() {
        if !peer.privileged() {
            tracing::warn!(
                uid = peer.uid,
                pid = peer.pid,
                request = name,
                "refused a control request: only root may change state"
            );
            return Response::Error {
                kind: ErrorKind::Forbidden,
                message: format!("{name} changes the daemon's state: only root may ask for it"),
            };
        }
        tracing::info!(
            uid = peer.uid,
            pid = peer.pid,
            request = name,
            "control request"
        );
    }
    let work = async {
        match request {
            Request::Status => handler.status().await.map(Response::Status),
            Request::Rotate { types, certs } => handler
                .rotate(types, certs)
                .await
                .map(|rotation_id| Response::Rotate { rotation_id }),
            Request::History { limit } => handler.history(limit).await.map(Response::History),
            Request::Reload => handler.reload().await.map(|()| Response::Reloaded),
            Request::Cluster => handler.cluster().await.map(Response::Cluster),
            Request::CaRotate { track, from } => handler
                .ca_rotate(track, from)
                .await
                .map(|rotation_id| Response::CaRotate { rotation_id }),
            Request::CaStatus => handler.ca_status().await.map(Response::CaStatus),
            Request::CaAbort { track } => handler
                .ca_abort(track)
                .await
                .map(|message| Response::CaAborted { message }),
        }
    };
    // A panicking handler must cost one answer, not the connection or the server.
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => Response::Error {
            kind: e.kind,
            message: e.message,
        },
        Err(_) => {
            tracing::error!(request = name, "the control handler panicked");
            Response::Error {
                kind: ErrorKind::Failed,
                message: format!("internal error while answering {name}"),
            }
        }
    }
}
