//! `/metrics` over HTTP, on the daemon's runtime. A scrape renders from what the daemon last fed
//! ([`Metrics`]) under a short lock and never waits for the daemon's loop. Every input is bounded:
//! the request head's size, each connection's lifetime, and the number of connections at once
//! (more are closed at accept, so a flood cannot hold the daemon's memory).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Metrics;

/// Connections served at once; a Prometheus server or two, and an operator's curl.
const MAX_CONNECTIONS: usize = 8;
/// The longest a request head may be: a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// How long the head may take to arrive, and how long a connection may live in all.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// The classic text format, which Prometheus and node_exporter both read.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("listening for metrics on {addr}: {source}")]
pub struct BindError {
    /// The configured address.
    pub addr: SocketAddr,
    /// What failed.
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` (the daemon does it before serving, so a busy port fails the start loudly).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// The time a scrape is rendered at (the daemon's clock, injected).
pub type Now = Arc<dyn Fn() -> time::OffsetDateTime + Send + Sync>;

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    now: Now,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: pause instead of spinning on the error.
                    tracing::warn!("accepting a metrics connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Full: closing at once answers the client fastest and costs nothing.
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        let now = Arc::clone(&now);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let body = answer(&req, &metrics, now());
                async move { Ok::<_, Infallible>(body) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_DEADLINE)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
            drop(slot);
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    metrics: &Metrics,
    now: time::OffsetDateTime,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut r = reply(StatusCode::OK, metrics.render(now));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "certrotd: the metrics are at /metrics\n".to_owned(),
        ),
        (&Method::GET | &Method::HEAD, _) => reply(StatusCode::NOT_FOUND, "not found\n".to_owned()),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".to_owned(),
        ),
    }
}
