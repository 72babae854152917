//! A component's health endpoint: one HTTP(S) GET judged by the component's own rules (etcd's
//! `"health":"true"`, the Kubernetes `/livez` `ok`).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::retry::retry_until;
use super::tls::{Handshake, connect_failure, find_tls_error, handshake, tls_failure};
use super::{ClientIdentity, Retry, TlsEndpoint};
use super::{Failure, ProbeError};

/// Health bodies are a few bytes; a server sending more is not answering a health check.
const MAX_HEALTH_BODY: usize = 64 * 1024;
/// How much of an unexpected health body an error quotes.
pub(super) const QUOTE_BODY: usize = 200;

/// A component's health check.
#[derive(Debug, Clone)]
pub enum HealthCheck {
    /// `GET https://addr/health`; healthy when etcd says `"health":"true"`.
    Etcd {
        /// etcd's client address.
        addr: SocketAddr,
        /// The certificate to present: etcd requires one (kubeadm's healthcheck-client).
        client: Option<ClientIdentity>,
    },
    /// `GET https://addr/livez`; 200 is healthy; 401 and 403 mean it serves TLS but refuses
    /// anonymous requests, which counts as up.
    KubeApiserver {
        /// The API server's address.
        addr: SocketAddr,
        /// A certificate to present, if any.
        client: Option<ClientIdentity>,
    },
    /// `GET http://addr/healthz` (the kubelet's plain-HTTP health port); 200 is healthy.
    Kubelet {
        /// The kubelet's health address (`healthzBindAddress:healthzPort`).
        addr: SocketAddr,
    },
    /// A TLS handshake completes.
    TlsHandshake {
        /// The address.
        addr: SocketAddr,
        /// A certificate to present, if any.
        client: Option<ClientIdentity>,
    },
    /// A TCP connection is accepted.
    Tcp {
        /// The address.
        addr: SocketAddr,
    },
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthCheck::Etcd { addr, .. } => write!(f, "etcd health https://{addr}/health"),
            HealthCheck::KubeApiserver { addr, .. } => {
                write!(f, "kube-apiserver health https://{addr}/livez")
            }
            HealthCheck::Kubelet { addr } => write!(f, "kubelet health http://{addr}/healthz"),
            HealthCheck::TlsHandshake { addr, .. } => write!(f, "TLS handshake with {addr}"),
            HealthCheck::Tcp { addr } => write!(f, "TCP connection to {addr}"),
        }
    }
}

/// A health check that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The component said it is healthy.
    Healthy,
    /// kube-apiserver serves TLS but refuses anonymous requests (HTTP 401 or 403), so its
    /// health is not known, only that it is up.
    UpAnonymousRefused {
        /// The HTTP status.
        status: u16,
    },
    /// A TLS handshake completed.
    HandshakeCompleted,
    /// A TCP connection was accepted.
    Listening,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Healthy => f.write_str("healthy"),
            Health::UpAnonymousRefused { status } => write!(
                f,
                "up: serving TLS, but anonymous access is disabled (HTTP {status}), so only \
                 liveness is known"
            ),
            Health::HandshakeCompleted => f.write_str("up: the TLS handshake completed"),
            Health::Listening => f.write_str("up: accepting connections"),
        }
    }
}

/// Why one health attempt did not pass: the endpoint could not be reached, or it answered
/// unhealthy.
pub(super) enum HealthFailure {
    Unreachable(Failure),
    Unhealthy(String),
}

/// Runs `check` once.
pub async fn health(check: &HealthCheck, timeout: Duration) -> Result<Health, ProbeError> {
    health_attempt(check, timeout)
        .await
        .map_err(|failure| match failure {
            HealthFailure::Unreachable(failure) => ProbeError::Endpoint {
                op: "health check",
                endpoint: check.to_string(),
                failure,
            },
            HealthFailure::Unhealthy(detail) => ProbeError::Unhealthy {
                check: check.to_string(),
                detail,
            },
        })
}

/// Runs `check` until it passes or `deadline` passes.
pub async fn wait_healthy(
    check: &HealthCheck,
    deadline: Instant,
    retry: &Retry,
) -> Result<Health, ProbeError> {
    let outcome = retry_until(deadline, retry, |timeout| health(check, timeout)).await;
    outcome.map_err(|gave_up| ProbeError::HealthTimeout {
        check: check.to_string(),
        waited: gave_up.waited,
        last: gave_up.last.map_or_else(
            || "no attempt was made: the deadline had already passed".to_owned(),
            |e| e.to_string(),
        ),
    })
}

async fn health_attempt(check: &HealthCheck, timeout: Duration) -> Result<Health, HealthFailure> {
    let unreachable = HealthFailure::Unreachable;
    let work = async {
        match check {
            HealthCheck::Etcd { addr, client } => {
                let (status, body) = https_get(*addr, client.as_ref(), "/health").await?;
                etcd_health(status, &body)
            }
            HealthCheck::KubeApiserver { addr, client } => {
                let (status, body) = https_get(*addr, client.as_ref(), "/livez").await?;
                match status {
                    200 => Ok(Health::Healthy),
                    401 | 403 => Ok(Health::UpAnonymousRefused { status }),
                    _ => Err(HealthFailure::Unhealthy(http_detail(status, &body))),
                }
            }
            HealthCheck::Kubelet { addr } => {
                let tcp = TcpStream::connect(addr)
                    .await
                    .map_err(|e| unreachable(connect_failure(&e)))?;
                let (status, body) = http_get(tcp, *addr, "/healthz", None).await?;
                if status == 200 {
                    Ok(Health::Healthy)
                } else {
                    Err(HealthFailure::Unhealthy(http_detail(status, &body)))
                }
            }
            HealthCheck::TlsHandshake { addr, client } => {
                let mut endpoint = TlsEndpoint::new(*addr);
                endpoint.client = client.clone();
                match handshake(&endpoint).await.map_err(unreachable)? {
                    Handshake::Connected(mut tls, _) => {
                        tokio::io::AsyncWriteExt::shutdown(&mut tls).await.ok();
                        Ok(Health::HandshakeCompleted)
                    }
                    Handshake::FailedAfterCertificate(_, failure) => Err(unreachable(failure)),
                }
            }
            HealthCheck::Tcp { addr } => {
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| unreachable(connect_failure(&e)))?;
                Ok(Health::Listening)
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(unreachable(Failure::TimedOut(timeout))))
}

pub(super) fn etcd_health(status: u16, body: &[u8]) -> Result<Health, HealthFailure> {
    // etcd answers {"health":"true","reason":""} (3.4+; "reason" from 3.5), with 503 when unhealthy.
    #[derive(serde::Deserialize)]
    struct EtcdHealth {
        health: String,
        #[serde(default)]
        reason: String,
    }
    match serde_json::from_slice::<EtcdHealth>(body) {
        Ok(h) if h.health == "true" && status == 200 => Ok(Health::Healthy),
        Ok(h) => Err(HealthFailure::Unhealthy(format!(
            "HTTP {status}, health {:?}{}",
            h.health,
            if h.reason.is_empty() {
                String::new()
            } else {
                format!(", reason: {}", quote(h.reason.as_bytes()))
            }
        ))),
        Err(_) => Err(HealthFailure::Unhealthy(http_detail(status, body))),
    }
}

fn http_detail(status: u16, body: &[u8]) -> String {
    if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", quote(body))
    }
}

/// The start of a body, printable: what the server said, without flooding a log line.
pub(super) fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTE_BODY)]);
    let mut out: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > QUOTE_BODY {
        out.push('…');
    }
    out
}

async fn https_get(
    addr: SocketAddr,
    client: Option<&ClientIdentity>,
    path: &str,
) -> Result<(u16, Bytes), HealthFailure> {
    let mut endpoint = TlsEndpoint::new(addr);
    endpoint.client = client.cloned();
    match handshake(&endpoint)
        .await
        .map_err(HealthFailure::Unreachable)?
    {
        Handshake::Connected(tls, _) => http_get(*tls, addr, path, client).await,
        Handshake::FailedAfterCertificate(_, failure) => Err(HealthFailure::Unreachable(failure)),
    }
}

/// One HTTP/1.1 GET over `stream`; the status and the body (capped).
async fn http_get<S>(
    stream: S,
    addr: SocketAddr,
    path: &str,
    client: Option<&ClientIdentity>,
) -> Result<(u16, Bytes), HealthFailure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Under TLS 1.3 a server that refuses our client certificate says so only after the
    // handshake, so the refusal surfaces here, as an HTTP error wrapping a TLS alert.
    let failure = |e: &(dyn std::error::Error + 'static)| {
        HealthFailure::Unreachable(match find_tls_error(e) {
            Some(tls) => tls_failure(tls, client),
            None => Failure::Http(error_chain(e)),
        })
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failure(&e))?;
    let connection = AbortOnDrop(tokio::spawn(connection));
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "certrotd-probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| HealthFailure::Unreachable(Failure::Http(e.to_string())))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failure(&e))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_HEALTH_BODY)
        .collect()
        .await
        .map_err(|e| failure(e.as_ref()))?
        .to_bytes();
    drop(connection);
    Ok((status, body))
}

/// An error and its causes, as one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// Ends the HTTP connection task when the request is done or abandoned (timeout).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
