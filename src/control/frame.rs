//! How the control protocol's messages travel. Each message is one frame: a 4-byte big-endian
//! length, then that many bytes of JSON. The length is checked against a cap before anything is
//! allocated, so a peer cannot make the other side reserve memory it did not agree to:
//! [`MAX_REQUEST_BYTES`] for requests (the server reads those from anyone the socket admits) and
//! [`MAX_RESPONSE_BYTES`] for responses (a node with thousands of certificates has a big status,
//! and the client trusts the daemon it asked).

use std::io;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::proto::{Request, Response};

/// Largest request frame the server reads: a request is a few names, never more.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest response frame either side accepts: room for the status of thousands of certificates.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Bytes of the length prefix.
const PREFIX: usize = 4;

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
