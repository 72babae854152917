//! The control protocol, whole: what a client may ask, what the daemon answers, and how both travel.
//!
//! Two serde enums, [`Request`] and [`Response`], as in kanidm's unixd. Each message is one frame:
//! a 4-byte big-endian length, then that many bytes of JSON. The length is checked against a cap
//! before anything is allocated, so a peer cannot make the other side reserve memory it did not
//! agree to: [`MAX_REQUEST_BYTES`] for requests (the server reads those from anyone the socket
//! admits) and [`MAX_RESPONSE_BYTES`] for responses (a node with thousands of certificates has a
//! big status, and the client trusts the daemon it asked).
//!
//! Every struct takes `#[serde(default)]` for missing fields and ignores unknown ones, so a field
//! added later (as [`LeaseStatus`]'s queue position and the retry state were) neither breaks an older client reading a
//! newer daemon nor the reverse.

use std::io;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request frame the server reads: a request is a few names, never more.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest response frame either side accepts: room for the status of thousands of certificates.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Bytes of the length prefix.
const PREFIX: usize = 4;

/// What a client asks the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Every certificate, the rotation in progress and the lease. Anyone the socket admits.
    Status,
    /// Start a rotation now, with all the daemon's safety. Root only.
    Rotate {
        /// Rotation types, as `certrotd renew --type` names them (e.g. `kubernetes-leaf`).
        #[serde(default)]
        types: Vec<String>,
        /// Single certificates, by the names `certrotd status` shows.
        #[serde(default)]
        certs: Vec<String>,
    },
    /// Activity records, newest first. Anyone the socket admits.
    History {
        /// At most this many records; `None` for all that are kept.
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Re-read the configuration (as SIGHUP does). Root only.
    Reload,
    /// The cluster as the lease sees it: every node's summary, the slots' holders and the
    /// queue. Anyone the socket admits. (A daemon older than this answers it as a bad request.)
    Cluster,
}

impl Request {
    /// Whether the request changes the daemon's state, and so needs a privileged peer.
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Status | Request::History { .. } | Request::Cluster => false,
            Request::Rotate { .. } | Request::Reload => true,
        }
    }

    /// The request's name, for logs that must not carry its contents.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Rotate { .. } => "rotate",
            Request::History { .. } => "history",
            Request::Reload => "reload",
            Request::Cluster => "cluster",
        }
    }
}

/// What the daemon answers.
// One answer per request, moved a couple of times: boxing the status would buy nothing
// but a less direct type for every caller to match on.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::Status`].
    Status(StatusReport),
    /// A rotation was started.
    Rotate {
        /// Its id, as history and the journal will name it.
        rotation_id: String,
    },
    /// The answer to [`Request::History`]: the latest state of each record, newest first.
    History(Vec<HistoryRecord>),
    /// The configuration was reloaded.
    Reloaded,
    /// The answer to [`Request::Cluster`].
    Cluster(crate::lease::ClusterView),
    /// The request was not carried out.
    Error {
        /// Why, as a program should tell it apart.
        kind: ErrorKind,
        /// Why, for people.
        message: String,
    },
}

/// Why a request was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The peer may not do this (only root may change state).
    Forbidden,
    /// The request was malformed, too large, incomplete, or named something unknown.
    BadRequest,
    /// The daemon cannot do it now (e.g. a rotation is already running); try again later.
    Busy,
    /// The daemon tried and failed.
    Failed,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::Busy => "busy",
            ErrorKind::Failed => "failed",
        })
    }
}

/// The daemon's view of the node, as `certrotd status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusReport {
    /// This node's Kubernetes name.
    pub node: String,
    /// When the report was made, RFC 3339.
    pub generated_at: String,
    /// The daemon answering.
    pub daemon: DaemonInfo,
    /// Every certificate the daemon knows, CAs and leaves.
    pub certificates: Vec<CertStatus>,
    /// The rotation in progress, if any.
    pub rotation: Option<RotationProgress>,
    /// Who may disrupt the cluster now.
    pub lease: LeaseStatus,
    /// Notices the daemon has given (certificates entering `notify_before`, a rejected reload...).
    pub notices: Vec<String>,
    /// The one-line summary sd_notify's STATUS carries, e.g.
    /// "17 certificates ok; next renewal apiserver in 29d".
    pub summary: String,
    /// Renewals failing and being retried with backoff (e.g. the remote CA unreachable).
    pub retry: Option<RetryStatus>,
}

/// Failed renewals being retried.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryStatus {
    /// Failed attempts in a row.
    pub attempts: u32,
    /// Why the last one failed.
    pub last_error: String,
    /// When the first of them failed, RFC 3339.
    pub failing_since: Option<String>,
    /// When the next attempt may start, RFC 3339.
    pub next_retry: Option<String>,
}

/// The daemon process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DaemonInfo {
    /// certrotd's version.
    pub version: String,
    /// When the daemon started, RFC 3339.
    pub started_at: String,
    /// Its process id.
    pub pid: u32,
    /// The configuration files it runs with, in the order they were applied.
    pub config_sources: Vec<String>,
}

/// One certificate and what the daemon will do about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertStatus {
    /// kubeadm-style name (`apiserver`, `etcd-server`, `admin.conf`) or file name.
    pub name: String,
    /// Node path of the file holding it.
    pub path: String,
    /// "ca" or "leaf".
    pub kind: String,
    /// "ok", "notify", "renew", "expired" or "invalid".
    pub status: String,
    /// NotAfter, RFC 3339; `None` when the certificate could not be read.
    pub not_after: Option<String>,
    /// Seconds until NotAfter (negative once expired).
    pub residual_seconds: Option<i64>,
    /// "none", "notify", "renew", "renew-now" or "blocked: <why>".
    pub next_action: String,
    /// When the next action is due, RFC 3339; `None` for "none" and while blocked.
    pub next_action_at: Option<String>,
    /// Components that read it and are restarted when it changes.
    pub consumers: Vec<String>,
    /// What is wrong with it.
    pub problems: Vec<String>,
}

impl CertStatus {
    /// Whether `certrotd status` should exit 1 because of this certificate: due, expired or
    /// unusable (the same rule as `certrotd check`).
    pub fn needs_attention(&self) -> bool {
        matches!(self.status.as_str(), "renew" | "expired" | "invalid")
    }
}

/// The rotation the daemon is carrying out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RotationProgress {
    /// Its id.
    pub id: String,
    /// The step it is at (e.g. "issue", "install", "restart kube-apiserver", "verify").
    pub step: String,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// The certificates it renews.
    pub certificates: Vec<String>,
}

/// The lease that lets one node at a time disrupt its components.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseStatus {
    /// "local" (single node) or "etcd".
    pub backend: String,
    /// Whether this node holds it.
    pub held: bool,
    /// The node holding it, if any.
    pub holder: Option<String>,
    /// Since when it has been held, RFC 3339.
    pub since: Option<String>,
    /// Anything else worth knowing (e.g. why the backend is unreachable).
    pub detail: Option<String>,
}

/// One rotation as the activity log tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// The rotation id.
    pub id: String,
    /// The node it ran on.
    pub node: String,
    /// The certificates it renewed.
    #[serde(default)]
    pub certificates: Vec<String>,
    /// Where it stands.
    pub state: HistoryState,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// When it ended, RFC 3339; `None` while it runs.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Why it started (e.g. "expires in 29d", "certrotd rotate"), or why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// When the first component restart began, RFC 3339.
    #[serde(default)]
    pub disruptive_from: Option<String>,
    /// When the last component was verified serving the new certificate, RFC 3339.
    #[serde(default)]
    pub disruptive_to: Option<String>,
    /// The lease's fencing token while it ran, so records from competing nodes can be ordered.
    #[serde(default)]
    pub fencing_token: Option<u64>,
    /// A recovery: run WITHOUT the lease (no fencing token) because this node's etcd
    /// certificates had expired, so the cluster could not be up.
    #[serde(default)]
    pub recovery: bool,
    /// The components that picked up the new certificates by themselves, proved by what they
    /// serve (or, for what nothing can probe, by the reload table), and were not restarted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reloaded: Vec<String>,
    /// The components that were restarted onto the new certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarted: Vec<String>,
}

/// Where a rotation stands, serialised as the word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryState {
    /// Started and not yet finished.
    Initiated,
    /// Every component serves the new certificates.
    Success,
    /// Rolled back, or stopped; `reason` says why.
    Failed,
}

impl std::fmt::Display for HistoryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HistoryState::Initiated => "Initiated",
            HistoryState::Success => "Success",
            HistoryState::Failed => "Failed",
        })
    }
}

/// Why a frame could not be read or written. Messages never carry the frame's contents.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames: the normal end of a conversation.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("the connection closed after {got} of {expected} bytes of a frame")]
    Truncated {
        /// Bytes received, prefix included.
        got: usize,
        /// Bytes the frame should have had, prefix included (4 while the prefix is incomplete).
        expected: usize,
    },
    /// The frame's length is over the cap; its body was not read.
    #[error("a frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The length the prefix announced, or the length of the message to send.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The frame did not arrive, or could not be sent, in time.
    #[error("no complete frame within {0:?}")]
    Timeout(Duration),
    /// The frame is not JSON of the expected message.
    #[error("the frame is not a valid message: {0}")]
    Malformed(#[source] serde_json::Error),
    /// Reading or writing the socket failed.
    #[error("socket i/o failed")]
    Io(#[source] io::Error),
}

/// Encodes a message as one frame (length prefix included), refusing one over `max`.
pub fn encode<T: Serialize>(message: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; PREFIX];
    serde_json::to_writer(&mut buf, message).map_err(FrameError::Malformed)?;
    let len = buf.len() - PREFIX;
    // The prefix is 32 bits, so a cap above u32::MAX would be meaningless; both caps are far below.
    let prefix = u32::try_from(len)
        .ok()
        .filter(|_| len <= max)
        .ok_or(FrameError::TooLarge { len, max })?;
    buf[..PREFIX].copy_from_slice(&prefix.to_be_bytes());
    Ok(buf)
}

/// Writes one frame, giving up after `timeout` (a peer that does not read must not hold the
/// writer forever).
pub async fn write_frame<W, T>(
    writer: &mut W,
    message: &T,
    max: usize,
    timeout: Duration,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode(message, max)?;
    let write = async {
        writer.write_all(&frame).await?;
        writer.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(result) => result.map_err(FrameError::Io),
        Err(_) => Err(FrameError::Timeout(timeout)),
    }
}

/// Reads one frame, which must arrive whole within `timeout` (so a client that sends half a
/// frame and stalls is dropped instead of holding a connection slot), and decodes it.
pub async fn read_frame<R, T>(
    reader: &mut R,
    max: usize,
    timeout: Duration,
) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let body = match tokio::time::timeout(timeout, read_body(reader, max)).await {
        Ok(body) => body?,
        Err(_) => return Err(FrameError::Timeout(timeout)),
    };
    serde_json::from_slice(&body).map_err(FrameError::Malformed)
}

async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; PREFIX];
    let got = read_full(reader, &mut prefix).await?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < PREFIX {
        return Err(FrameError::Truncated {
            got,
            expected: PREFIX,
        });
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    let got = read_full(reader, &mut body).await?;
    if got < len {
        return Err(FrameError::Truncated {
            got: PREFIX + got,
            expected: PREFIX + len,
        });
    }
    Ok(body)
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(filled)
}

/// Reads a request (capped at [`MAX_REQUEST_BYTES`]).
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
    timeout: Duration,
) -> Result<Request, FrameError> {
    read_frame(reader, MAX_REQUEST_BYTES, timeout).await
}

/// Writes a request (capped at [`MAX_REQUEST_BYTES`], so the server never has to refuse it).
pub async fn write_request<W: AsyncWrite + Unpin>(
    writer: &mut W,
    request: &Request,
    timeout: Duration,
) -> Result<(), FrameError> {
    write_frame(writer, request, MAX_REQUEST_BYTES, timeout).await
}

/// Reads a response (capped at [`MAX_RESPONSE_BYTES`]).
pub async fn read_response<R: AsyncRead + Unpin>(
    reader: &mut R,
    timeout: Duration,
) -> Result<Response, FrameError> {
    read_frame(reader, MAX_RESPONSE_BYTES, timeout).await
}

/// Writes a response (capped at [`MAX_RESPONSE_BYTES`]).
pub async fn write_response<W: AsyncWrite + Unpin>(
    writer: &mut W,
    response: &Response,
    timeout: Duration,
) -> Result<(), FrameError> {
    write_frame(writer, response, MAX_RESPONSE_BYTES, timeout).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn requests_have_a_stable_wire_form() {
        let json = |r: &Request| serde_json::to_string(r).unwrap();
        assert_eq!(json(&Request::Status), r#""Status""#);
        assert_eq!(json(&Request::Reload), r#""Reload""#);
        assert_eq!(
            json(&Request::Rotate {
                types: vec!["etcd-leaf".into()],
                certs: vec![]
            }),
            r#"{"Rotate":{"types":["etcd-leaf"],"certs":[]}}"#
        );
        assert_eq!(
            json(&Request::History { limit: Some(3) }),
            r#"{"History":{"limit":3}}"#
        );
        // Fields left out by an older or terser client take their defaults.
        let r: Request = serde_json::from_str(r#"{"Rotate":{"certs":["apiserver"]}}"#).unwrap();
        assert_eq!(
            r,
            Request::Rotate {
                types: vec![],
                certs: vec!["apiserver".into()]
            }
        );
        let r: Request = serde_json::from_str(r#"{"History":{}}"#).unwrap();
        assert_eq!(r, Request::History { limit: None });
    }

    #[test]
    fn history_state_is_the_word() {
        let s = serde_json::to_string(&HistoryState::Success).unwrap();
        assert_eq!(s, r#""Success""#);
        assert_eq!(HistoryState::Failed.to_string(), "Failed");
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_default() {
        // A newer daemon's lease with a field this client does not know, and no `held`.
        let lease: LeaseStatus =
            serde_json::from_str(r#"{"backend":"etcd","holder":"cp2","term":7}"#).unwrap();
        assert_eq!(lease.backend, "etcd");
        assert!(!lease.held);
        assert_eq!(lease.holder.as_deref(), Some("cp2"));
        let report: StatusReport = serde_json::from_str(r#"{"node":"cp1"}"#).unwrap();
        assert_eq!(report.node, "cp1");
        assert!(report.certificates.is_empty());
    }

    #[tokio::test]
    async fn frames_round_trip_and_caps_hold() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_request(&mut a, &Request::History { limit: Some(5) }, T)
            .await
            .unwrap();
        assert_eq!(
            read_request(&mut b, T).await.unwrap(),
            Request::History { limit: Some(5) }
        );

        // A prefix announcing more than the cap is refused before the body is read.
        a.write_all(&(MAX_REQUEST_BYTES as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        match read_request(&mut b, T).await {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!((len, max), (MAX_REQUEST_BYTES + 1, MAX_REQUEST_BYTES));
            }
            other => panic!("{other:?}"),
        }

        // Nothing is sent that the other side would refuse.
        let huge = Request::Rotate {
            types: vec![],
            certs: vec!["x".repeat(MAX_REQUEST_BYTES)],
        };
        assert!(matches!(
            write_request(&mut a, &huge, T).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_truncated_and_an_empty_stream_closed() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 10, b'{']).await.unwrap();
        drop(a);
        assert!(matches!(
            read_request(&mut b, T).await,
            Err(FrameError::Truncated {
                got: 5,
                expected: 14
            })
        ));
        let (a, mut b) = tokio::io::duplex(1024);
        drop(a);
        assert!(matches!(
            read_request(&mut b, T).await,
            Err(FrameError::Closed)
        ));
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_request(&mut b, T).await,
            Err(FrameError::Truncated {
                got: 2,
                expected: 4
            })
        ));
    }

    #[tokio::test]
    async fn garbage_is_malformed_and_a_stall_times_out() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 3, b'a', b'b', b'c']).await.unwrap();
        assert!(matches!(
            read_request(&mut b, T).await,
            Err(FrameError::Malformed(_))
        ));
        // tokio's paused clock needs its test-util feature, which this crate does not enable;
        // a short real timeout costs 50 ms.
        a.write_all(&[0, 0, 0, 10]).await.unwrap();
        assert!(matches!(
            read_request(&mut b, Duration::from_millis(50)).await,
            Err(FrameError::Timeout(_))
        ));
    }
}
