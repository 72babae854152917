//! The client's end of the control socket: one request, one answer.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::time::Instant;

use super::frame::{self, FrameError};
use super::proto::{Request, Response};

/// How long the client commands wait for the daemon, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the daemon could not be asked. Each error names the socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing accepted the connection.
    #[error("cannot connect to {}: {}", path.display(), connect_hint(.source))]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The daemon did not answer in time.
    #[error("no answer from certrotd on {} within {}", path.display(), crate::duration::format(*.timeout))]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The client could not set up its own async runtime.
    #[error("cannot start the client's runtime")]
    Runtime(#[source] io::Error),
    /// The request could not be sent or the answer not read.
    #[error("talking to certrotd on {}: {source}", path.display())]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// What went wrong with the frames.
        #[source]
        source: FrameError,
    },
}

/// What an operator should read for a failed connect.
fn connect_hint(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "is certrotd running? (connection refused)".to_owned(),
        io::ErrorKind::NotFound => "is certrotd running? (no socket there)".to_owned(),
        io::ErrorKind::PermissionDenied => {
            "permission denied: the socket admits its owner and group only \
             (see [control] socket_mode and socket_group)"
                .to_owned()
        }
        _ => format!("is certrotd running? ({e})"),
    }
}

/// Sends `request` to the daemon listening on `socket` and returns its answer, all within
/// `timeout`.
pub async fn request(
    socket: &Path,
    request: Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let exchange = async {
        let mut stream = connect(socket, deadline).await?;
        let exchange_err = |source| ClientError::Exchange {
            path: socket.to_path_buf(),
            source,
        };
        // The deadline bounds the whole exchange; the frame timeouts only need to be no shorter.
        frame::write_request(&mut stream, &request, timeout)
            .await
            .map_err(exchange_err)?;
        frame::read_response(&mut stream, timeout)
            .await
            .map_err(exchange_err)
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            path: socket.to_path_buf(),
            timeout,
        }),
    }
}

/// Connects, retrying while the server's backlog is full: a Unix socket refuses a non-blocking
/// connect with EAGAIN then, rather than queueing it, and a busy daemon is not a dead one.
async fn connect(socket: &Path, deadline: Instant) -> Result<UnixStream, ClientError> {
    let mut pause = Duration::from_millis(1);
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock && Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(ClientError::Connect {
                    path: socket.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// [`request`] for callers without a tokio runtime (the client commands): runs it on a
/// single-threaded runtime of its own.
pub fn request_blocking(
    socket: &Path,
    req: Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)?;
    runtime.block_on(request(socket, req, timeout))
}
