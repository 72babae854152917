//! Proving a restart worked: the component serves the new certificate (its serial, on each of its
//! TLS endpoints), the chain it serves leads to the CA that signed it, and its health endpoint
//! answers.
//!
//! Which certificate is served and whether it is trusted are separate questions, answered
//! separately: the handshake records whatever the server presents (so a wrong or untrusted
//! certificate is reported as what it is, not as a handshake failure), and [`verify_chain`] then
//! judges that chain against the expected CA.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    ServerName, UnixTime,
};
use rustls::{
    AlertDescription, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{EndpointSpec, ProbeSettings};
use crate::pki::cert::{Cert, San};
use crate::pki::layout::{Component, KUBEADM_PKI};
use crate::pki::pem;
use crate::root::Root;

/// Health bodies are a few bytes; a server sending more is not answering a health check.
const MAX_HEALTH_BODY: usize = 64 * 1024;
/// How much of an unexpected health body an error quotes.
const QUOTE_BODY: usize = 200;

/// The aws-lc-rs provider, explicitly: the dependency tree also enables ring (through
/// etcd-client), so rustls cannot pick a process default on its own.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// A client certificate and its key, presented to servers that require one (etcd).
#[derive(Clone)]
pub struct ClientIdentity {
    inner: Arc<IdentityInner>,
}

struct IdentityInner {
    cert_path: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ClientIdentity {
    // The key never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClientIdentity({}, key redacted)",
            self.inner.cert_path.display()
        )
    }
}

impl ClientIdentity {
    /// Reads a PEM certificate (chain) and its PEM private key; `key` may be the same file as
    /// `cert` (the kubelet's combined `kubelet-client-current.pem`).
    pub fn from_files(cert: &Path, key: &Path) -> Result<ClientIdentity, ProbeError> {
        let identity_error = |path: &Path, reason: String| ProbeError::Identity {
            path: path.to_owned(),
            reason,
        };
        let read = |path: &Path| {
            pem::read_capped(path)
                .and_then(|data| pem::blocks(path, &data))
                .map_err(|e| identity_error(path, e.to_string()))
        };
        let chain: Vec<CertificateDer<'static>> = read(cert)?
            .into_iter()
            .filter(|b| b.label == "CERTIFICATE")
            .map(|mut b| CertificateDer::from(std::mem::take(&mut b.der)))
            .collect();
        if chain.is_empty() {
            return Err(identity_error(cert, "no CERTIFICATE block".to_owned()));
        }
        // Errors below name the file and the label only: never the key's bytes.
        let mut key_der = None;
        for mut block in read(key)? {
            key_der = match block.label.as_str() {
                "RSA PRIVATE KEY" => {
                    Some(PrivatePkcs1KeyDer::from(std::mem::take(&mut block.der)).into())
                }
                "EC PRIVATE KEY" => {
                    Some(PrivateSec1KeyDer::from(std::mem::take(&mut block.der)).into())
                }
                "PRIVATE KEY" => {
                    Some(PrivatePkcs8KeyDer::from(std::mem::take(&mut block.der)).into())
                }
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(identity_error(
                        key,
                        "the private key is encrypted".to_owned(),
                    ));
                }
                _ => continue,
            };
            break;
        }
        let key_der: PrivateKeyDer<'static> =
            key_der.ok_or_else(|| identity_error(key, "no private key block".to_owned()))?;
        let identity = ClientIdentity {
            inner: Arc::new(IdentityInner {
                cert_path: cert.to_owned(),
                chain,
                key: key_der,
            }),
        };
        // Building a configuration checks that the key is usable and belongs to the
        // certificate, so a mismatch is reported here, naming the files, and not as a failed
        // handshake later.
        client_config(Arc::new(Recorder::new()), Some(&identity)).map_err(|e| {
            identity_error(
                cert,
                format!("unusable with the key {}: {e}", key.display()),
            )
        })?;
        Ok(identity)
    }

    /// The certificate file, for messages.
    pub fn cert_path(&self) -> &Path {
        &self.inner.cert_path
    }
}

/// A TLS endpoint to probe.
#[derive(Debug, Clone)]
pub struct TlsEndpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The name sent as SNI (an IP address sends none).
    pub server_name: String,
    /// The client certificate to present, for servers that require one.
    pub client: Option<ClientIdentity>,
}

impl TlsEndpoint {
    /// An endpoint named by its address, without a client certificate.
    pub fn new(addr: SocketAddr) -> TlsEndpoint {
        TlsEndpoint {
            addr,
            server_name: addr.ip().to_string(),
            client: None,
        }
    }
}

impl fmt::Display for TlsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if self.server_name != self.addr.ip().to_string() {
            write!(f, " ({})", self.server_name)?;
        }
        Ok(())
    }
}

/// Why one attempt to reach an endpoint failed. Carries no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Nothing listens there (yet).
    #[error("connection refused")]
    Refused,
    /// Connecting, the handshake or the request took longer than allowed.
    #[error("timed out after {}", seconds(*.0))]
    TimedOut(Duration),
    /// The TCP connection failed otherwise.
    #[error("connect: {0}")]
    Connect(String),
    /// The TLS handshake failed before the server presented a certificate.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The server refused the client certificate presented.
    #[error("the server refused our client certificate {}: TLS alert {alert}", cert.display())]
    ClientCertRefused {
        /// The certificate presented.
        cert: PathBuf,
        /// The alert the server sent.
        alert: String,
    },
    /// The server requires a client certificate and none was presented.
    #[error("the server requires a client certificate and none was presented: TLS alert {alert}")]
    ClientCertRequired {
        /// The alert the server sent.
        alert: String,
    },
    /// The handshake completed without a server certificate (cannot happen with TLS ≤ 1.3).
    #[error("the server presented no certificate")]
    NoCertificate,
    /// The served certificate cannot be parsed.
    #[error("the served certificate cannot be parsed: {0}")]
    BadCertificate(String),
    /// The HTTP exchange failed.
    #[error("HTTP request failed: {0}")]
    Http(String),
}

/// What a probe saw last before giving up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastSeen {
    /// No attempt was made: the deadline had passed already.
    Nothing,
    /// The endpoint served a certificate with another serial.
    Serial(String),
    /// The attempt failed.
    Failure(Failure),
}

impl fmt::Display for LastSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LastSeen::Nothing => f.write_str("nothing: the deadline had already passed"),
            LastSeen::Serial(serial) => write!(f, "old serial {serial}"),
            LastSeen::Failure(failure) => write!(f, "{failure}"),
        }
    }
}

/// Errors proving a restart; each names what was being done and where.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// One attempt at an endpoint failed.
    #[error("{op} {endpoint}: {failure}")]
    Endpoint {
        /// What was being done.
        op: &'static str,
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        failure: Failure,
    },
    /// The endpoint did not serve the expected serial before the deadline.
    #[error(
        "waiting for {endpoint} to serve certificate serial {expected}: gave up after {} \
         ({attempts} attempts); last seen: {last}",
        seconds(*waited)
    )]
    SerialTimeout {
        /// The endpoint.
        endpoint: String,
        /// The serial expected, normalised.
        expected: String,
        /// How long it was waited for.
        waited: Duration,
        /// How many handshakes were tried.
        attempts: u32,
        /// What the last attempt saw.
        last: LastSeen,
    },
    /// The served chain does not lead to the expected CA (or is expired, or not for servers).
    #[error("verifying the certificate {endpoint} serves (serial {serial}) against {ca}: {reason}")]
    Chain {
        /// The endpoint.
        endpoint: String,
        /// The served leaf's serial.
        serial: String,
        /// The CA bundle, by subject.
        ca: String,
        /// Why it does not verify.
        reason: String,
    },
    /// The health check answered, and not with "healthy".
    #[error("{check}: unhealthy: {detail}")]
    Unhealthy {
        /// The check, e.g. `etcd health https://127.0.0.1:2379/health`.
        check: String,
        /// What it answered.
        detail: String,
    },
    /// The health check did not pass before the deadline.
    #[error("waiting for {check} to pass: gave up after {}; last: {last}", seconds(*waited))]
    HealthTimeout {
        /// The check.
        check: String,
        /// How long it was waited for.
        waited: Duration,
        /// The last error.
        last: String,
    },
    /// A client certificate for probes could not be read or used.
    #[error("reading the client certificate for probes {}: {reason}", path.display())]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong (never key material).
        reason: String,
    },
    /// The component cannot be probed as configured.
    #[error("proving {component}: {reason}")]
    Plan {
        /// The component.
        component: Component,
        /// What is missing.
        reason: String,
    },
}

/// Seconds with millisecond precision, for messages.
fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// A TLS server certificate verifier that records the chain presented and accepts it.
///
/// It still checks the handshake signatures, so the recorded leaf is one whose private key the
/// server holds, not bytes it merely sent.
#[derive(Debug)]
struct Recorder {
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<Vec<CertificateDer<'static>>>>,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            provider: provider(),
            seen: Mutex::new(None),
        }
    }

    fn take(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(chain);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(
    recorder: Arc<Recorder>,
    client: Option<&ClientIdentity>,
) -> Result<ClientConfig, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(recorder);
    match client {
        Some(identity) => builder
            .with_client_auth_cert(identity.inner.chain.clone(), identity.inner.key.clone_key()),
        None => Ok(builder.with_no_client_auth()),
    }
}

fn connect_failure(error: &io::Error) -> Failure {
    if error.kind() == io::ErrorKind::ConnectionRefused {
        Failure::Refused
    } else {
        Failure::Connect(error.to_string())
    }
}

/// The rustls error somewhere in an error's chain (tokio-rustls wraps it in an `io::Error`,
/// hyper wraps that again).
fn find_tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source` skips the wrapped error itself; `get_ref` reaches it.
        if let Some(tls) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// Turns a TLS error into what it means for the probe: a refused client certificate reads as
/// such, naming the certificate.
fn tls_failure(error: &rustls::Error, client: Option<&ClientIdentity>) -> Failure {
    use AlertDescription as A;
    if let rustls::Error::AlertReceived(alert) = error {
        let about_our_certificate = matches!(
            alert,
            A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::CertificateRequired
        );
        // A TLS 1.2 server that cannot verify our CertificateVerify signature, or finds our
        // certificate signed by another CA of the same name (every kubeadm etcd CA is "etcd-ca"),
        // answers decrypt_error: about our certificate only if we presented one.
        let about_our_signature = *alert == A::DecryptError && client.is_some();
        if about_our_certificate || about_our_signature {
            return match client {
                Some(identity) => Failure::ClientCertRefused {
                    cert: identity.cert_path().to_owned(),
                    alert: format!("{alert:?}"),
                },
                None => Failure::ClientCertRequired {
                    alert: format!("{alert:?}"),
                },
            };
        }
    }
    Failure::Handshake(error.to_string())
}

fn io_tls_failure(error: &io::Error, client: Option<&ClientIdentity>) -> Failure {
    match find_tls_error(error) {
        Some(tls) => tls_failure(tls, client),
        None => Failure::Handshake(error.to_string()),
    }
}

/// A TLS connection and the chain the server presented, or the chain alone when the handshake
/// failed after the server had presented it.
enum Handshake {
    Connected(Box<TlsStream<TcpStream>>, Vec<CertificateDer<'static>>),
    /// TLS 1.2: the server sends its certificate, then refuses ours.
    FailedAfterCertificate(Vec<CertificateDer<'static>>, Failure),
}

async fn handshake(endpoint: &TlsEndpoint) -> Result<Handshake, Failure> {
    let recorder = Arc::new(Recorder::new());
    let config = client_config(recorder.clone(), endpoint.client.as_ref())
        .map_err(|e| Failure::Handshake(format!("client configuration: {e}")))?;
    let server_name = ServerName::try_from(endpoint.server_name.clone())
        .map_err(|e| Failure::Handshake(format!("server name: {e}")))?;
    let tcp = TcpStream::connect(endpoint.addr)
        .await
        .map_err(|e| connect_failure(&e))?;
    // Probes are small request/response exchanges; Nagle would only add latency.
    tcp.set_nodelay(true).ok();
    match TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
    {
        Ok(tls) => {
            let chain = recorder.take().ok_or(Failure::NoCertificate)?;
            Ok(Handshake::Connected(Box::new(tls), chain))
        }
        Err(e) => {
            let failure = io_tls_failure(&e, endpoint.client.as_ref());
            match recorder.take() {
                Some(chain) => Ok(Handshake::FailedAfterCertificate(chain, failure)),
                None => Err(failure),
            }
        }
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(Failure::TimedOut(timeout)))
}

/// What a TLS server presented.
#[derive(Debug, Clone)]
pub struct Served {
    /// The certificates presented, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Set when the handshake failed after the server presented its certificate, e.g. because
    /// it refused our client certificate under TLS 1.2.
    pub handshake_error: Option<Failure>,
}

impl Served {
    /// The leaf certificate's DER.
    pub fn leaf(&self) -> &[u8] {
        self.chain.first().map_or(&[], |c| c.as_ref())
    }

    /// The leaf's serial as lowercase hex without leading zeros.
    pub fn serial(&self) -> Result<String, Failure> {
        serial_of(self.leaf())
    }
}

/// A certificate's serial as lowercase hex without leading zeros.
pub fn serial_of(der: &[u8]) -> Result<String, Failure> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Failure::BadCertificate(e.to_string()))?;
    Ok(normalize_serial(&hex::encode(cert.raw_serial())))
}

/// Normalises a hex serial as openssl, kubeadm or certrotd write it (`0A:1B`, `0a1b`) to
/// lowercase hex without separators or leading zeros.
pub fn normalize_serial(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

async fn served_chain_attempt(
    endpoint: &TlsEndpoint,
    timeout: Duration,
) -> Result<Served, Failure> {
    with_timeout(timeout, async {
        Ok(match handshake(endpoint).await? {
            Handshake::Connected(tls, chain) => {
                // Close politely: servers log abrupt disconnects as errors.
                let mut tls = tls;
                tokio::io::AsyncWriteExt::shutdown(&mut tls).await.ok();
                Served {
                    chain,
                    handshake_error: None,
                }
            }
            Handshake::FailedAfterCertificate(chain, failure) => Served {
                chain,
                handshake_error: Some(failure),
            },
        })
    })
    .await
}

/// The chain `endpoint` presents in a TLS handshake, trusted or not.
pub async fn served_chain(endpoint: &TlsEndpoint, timeout: Duration) -> Result<Served, ProbeError> {
    served_chain_attempt(endpoint, timeout)
        .await
        .map_err(|failure| ProbeError::Endpoint {
            op: "TLS handshake with",
            endpoint: endpoint.to_string(),
            failure,
        })
}

/// The leaf certificate (DER) the server at `addr` presents, trusted or not; still reported when
/// the server refuses `client` after presenting its own.
pub async fn served_certificate(
    addr: SocketAddr,
    server_name: &str,
    client: Option<&ClientIdentity>,
    timeout: Duration,
) -> Result<Vec<u8>, ProbeError> {
    let endpoint = TlsEndpoint {
        addr,
        server_name: server_name.to_owned(),
        client: client.cloned(),
    };
    Ok(served_chain(&endpoint, timeout).await?.leaf().to_vec())
}

/// How a probe retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The pause after the first failed attempt; it doubles after each.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
    /// How long one attempt (connect, handshake, request) may take.
    pub attempt_timeout: Duration,
}

impl Default for Retry {
    /// Short pauses: a component that restarts is back within seconds, and each second of
    /// probing is a second the rotation holds the lease.
    fn default() -> Self {
        Retry {
            first: Duration::from_millis(50),
            max: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

/// Why retrying stopped.
#[derive(Debug)]
struct GaveUp<E> {
    attempts: u32,
    waited: Duration,
    /// The last attempt's error; `None` when the deadline had passed before the first.
    last: Option<E>,
}

/// Retries `attempt` with backoff until it succeeds or the deadline passes. The deadline is on
/// tokio's clock, so tests can pause time; no attempt starts or runs past it.
async fn retry_until<T, E, F, Fut>(
    deadline: Instant,
    retry: &Retry,
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut pause = retry.first;
    let mut attempts = 0;
    let mut last = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(GaveUp {
                attempts,
                waited: now - started,
                last,
            });
        }
        attempts += 1;
        match attempt(retry.attempt_timeout.min(deadline - now)).await {
            Ok(done) => return Ok(done),
            Err(e) => last = Some(e),
        }
        let wake = (Instant::now() + pause).min(deadline);
        tokio::time::sleep_until(wake).await;
        pause = (pause * 2).min(retry.max);
    }
}

/// Retries a handshake with `endpoint` until it serves `expected_serial_hex` (any case, with or
/// without colons and leading zeros), or `deadline` passes; the error then says what was seen
/// last: connection refused, an old serial, a handshake error.
pub async fn wait_for_serial(
    endpoint: &TlsEndpoint,
    expected_serial_hex: &str,
    deadline: Instant,
    retry: &Retry,
) -> Result<Served, ProbeError> {
    let expected = normalize_serial(expected_serial_hex);
    let outcome = retry_until(deadline, retry, |timeout| {
        let expected = &expected;
        async move {
            let served = served_chain_attempt(endpoint, timeout)
                .await
                .map_err(LastSeen::Failure)?;
            match served.serial().map_err(LastSeen::Failure)? {
                serial if serial == *expected => Ok(served),
                serial => Err(LastSeen::Serial(serial)),
            }
        }
    })
    .await;
    outcome.map_err(|gave_up| ProbeError::SerialTimeout {
        endpoint: endpoint.to_string(),
        expected,
        waited: gave_up.waited,
        attempts: gave_up.attempts,
        last: gave_up.last.unwrap_or(LastSeen::Nothing),
    })
}

/// Checks that `chain` (leaf first, as served) leads to one of `ca_bundle` at `now`, that the leaf
/// may serve TLS (extended key usage), and, when `server_name` is given, that it is valid for
/// that name. Returns why not, as text for [`ProbeError::Chain`].
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    ca_bundle: &[CertificateDer<'_>],
    server_name: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), String> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("no certificate was served".to_owned());
    };
    let mut roots = RootCertStore::empty();
    for ca in ca_bundle {
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| format!("the CA bundle holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA bundle is empty".to_owned());
    }
    let parsed = rustls::server::ParsedCertificate::try_from(leaf).map_err(|e| e.to_string())?;
    let now = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(now.unix_timestamp()).unwrap_or(0),
    ));
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        intermediates,
        now,
        provider().signature_verification_algorithms.all,
    )
    .map_err(|e| chain_reason(&e))?;
    if let Some(name) = server_name {
        let name = ServerName::try_from(name).map_err(|e| format!("server name {name:?}: {e}"))?;
        rustls::client::verify_server_name(&parsed, &name).map_err(|e| chain_reason(&e))?;
    }
    Ok(())
}

/// rustls's verdict in an operator's words, keeping rustls's own name for it.
fn chain_reason(error: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(e) = error else {
        return error.to_string();
    };
    let meaning = match e {
        C::UnknownIssuer => "no certificate in the CA bundle issued it",
        // webpki found a CA of the right name whose key did not sign it: kubeadm names every
        // cluster's CAs alike, so this is what a certificate from another cluster looks like.
        C::BadSignature => {
            "a CA in the bundle has the issuer's name, but its key did not sign it (another CA \
             of the same name?)"
        }
        C::Expired | C::ExpiredContext { .. } => "it has expired",
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet",
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it is not valid for the server name"
        }
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "its extended key usage does not allow serving TLS"
        }
        _ => return error.to_string(),
    };
    format!("{meaning} ({error})")
}

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
enum HealthFailure {
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

fn etcd_health(status: u16, body: &[u8]) -> Result<Health, HealthFailure> {
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
fn quote(body: &[u8]) -> String {
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

/// A certificate a restarted component must now serve.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The certificate's name (`etcd-server`), matched against the endpoints' `serves`.
    pub name: &'a str,
    /// The new certificate.
    pub cert: &'a Cert,
    /// The CA bundle it must chain to (the CA that signed it).
    pub ca_bundle: &'a [Cert],
}

/// What a component is probed with after a restart.
#[derive(Debug, Clone)]
pub struct ComponentProbe {
    /// The component.
    pub component: Component,
    /// Its TLS endpoints and what each serves.
    pub endpoints: Vec<EndpointSpec>,
    /// The client certificate presented on its TLS endpoints, if it requires one.
    pub client: Option<ClientIdentity>,
    /// Its health check.
    pub health: Option<HealthCheck>,
    /// How attempts are retried.
    pub retry: Retry,
}

/// The client certificates etcd probes present, first found first: kubeadm's etcd health client
/// (what kubeadm's own etcd liveness probe uses), then the API server's etcd client, which a
/// control-plane node with external etcd has without the former. Relative to kubeadm's PKI.
pub const ETCD_PROBE_CLIENTS: [&str; 2] = ["etcd/healthcheck-client", "apiserver-etcd-client"];

impl ComponentProbe {
    /// The probe for `component` on the node at `root`, from the `[probe]` settings; reads the
    /// client certificate etcd requires (see [`ETCD_PROBE_CLIENTS`]). Build it after the new
    /// certificates are installed: a renewed health client is then the one presented.
    pub fn new(
        component: Component,
        settings: &ProbeSettings,
        root: &Root,
    ) -> Result<ComponentProbe, ProbeError> {
        let client = match component {
            Component::Etcd => Some(etcd_client(root)?),
            _ => None,
        };
        let health = settings
            .health
            .get(&component)
            .map(|&addr| match component {
                Component::Etcd => HealthCheck::Etcd {
                    addr,
                    client: client.clone(),
                },
                Component::KubeApiserver => HealthCheck::KubeApiserver { addr, client: None },
                Component::Kubelet => HealthCheck::Kubelet { addr },
                Component::KubeControllerManager
                | Component::KubeScheduler
                | Component::Rke2
                | Component::K3s => HealthCheck::TlsHandshake { addr, client: None },
            });
        Ok(ComponentProbe {
            component,
            endpoints: settings
                .endpoints
                .get(&component)
                .cloned()
                .unwrap_or_default(),
            client,
            health,
            retry: Retry::default(),
        })
    }

    /// Proves the component is back on its new certificates: every endpoint serving one of
    /// `expected` serves it (by serial) with a chain that verifies at `now`, and the health
    /// check passes; all before `deadline`. Endpoints serving a certificate not in `expected`
    /// are not asked about it.
    pub async fn prove(
        &self,
        expected: &[Expected<'_>],
        now: OffsetDateTime,
        deadline: Instant,
    ) -> Result<Proof, ProbeError> {
        let started = Instant::now();
        let mut served = Vec::new();
        for spec in &self.endpoints {
            let Some(want) = expected.iter().find(|e| e.name == spec.serves) else {
                continue;
            };
            let endpoint = TlsEndpoint {
                addr: SocketAddr::new(endpoint_host(spec, want.cert), spec.port),
                server_name: spec
                    .server_name
                    .clone()
                    .unwrap_or_else(|| endpoint_host(spec, want.cert).to_string()),
                client: self.client.clone(),
            };
            let got = wait_for_serial(&endpoint, &want.cert.serial, deadline, &self.retry).await?;
            let serial = normalize_serial(&want.cert.serial);
            let ca_bundle: Vec<CertificateDer<'_>> = want
                .ca_bundle
                .iter()
                .map(|c| CertificateDer::from(c.der.as_slice()))
                .collect();
            verify_chain(&got.chain, &ca_bundle, spec.server_name.as_deref(), now).map_err(
                |reason| ProbeError::Chain {
                    endpoint: endpoint.to_string(),
                    serial: serial.clone(),
                    ca: ca_names(want.ca_bundle),
                    reason,
                },
            )?;
            served.push(ServedProof {
                name: spec.serves.clone(),
                endpoint: endpoint.to_string(),
                serial,
            });
        }
        let health = match &self.health {
            Some(check) => Some(wait_healthy(check, deadline, &self.retry).await?),
            None => None,
        };
        Ok(Proof {
            component: self.component,
            served,
            health,
            elapsed: Instant::now() - started,
        })
    }
}

/// The first of [`ETCD_PROBE_CLIENTS`] whose certificate exists on the node.
fn etcd_client(root: &Root) -> Result<ClientIdentity, ProbeError> {
    let file = |name: &str, ext: &str| root.join(format!("{KUBEADM_PKI}/{name}.{ext}"));
    for name in ETCD_PROBE_CLIENTS {
        let cert = file(name, "crt");
        if cert.exists() {
            return ClientIdentity::from_files(&cert, &file(name, "key"));
        }
    }
    Err(ProbeError::Plan {
        component: Component::Etcd,
        reason: format!(
            "etcd requires a client certificate and none of {} exists",
            ETCD_PROBE_CLIENTS
                .iter()
                .map(|name| file(name, "crt").display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// The host an endpoint is reached at: as configured, else the first IP address the certificate
/// names, preferring one that is not loopback, else loopback.
fn endpoint_host(spec: &EndpointSpec, cert: &Cert) -> IpAddr {
    if let Some(host) = spec.host {
        return host;
    }
    let ips: Vec<IpAddr> = cert
        .sans
        .iter()
        .filter_map(|san| match san {
            San::Ip(ip) => Some(*ip),
            _ => None,
        })
        .collect();
    ips.iter()
        .find(|ip| !ip.is_loopback())
        .or_else(|| ips.first())
        .copied()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn ca_names(bundle: &[Cert]) -> String {
    if bundle.is_empty() {
        return "an empty CA bundle".to_owned();
    }
    bundle
        .iter()
        .map(|c| format!("CA {:?}", c.subject))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One endpoint shown to serve its new certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedProof {
    /// The certificate's name.
    pub name: String,
    /// The endpoint.
    pub endpoint: String,
    /// The serial it serves.
    pub serial: String,
}

/// What proved a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The component.
    pub component: Component,
    /// The endpoints that serve their new certificates.
    pub served: Vec<ServedProof>,
    /// The health check's result, when the component has one.
    pub health: Option<Health>,
    /// How long proving took.
    pub elapsed: Duration,
}

impl fmt::Display for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.component)?;
        for (i, s) in self.served.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{} serves {} serial {}", s.endpoint, s.name, s.serial)?;
        }
        if let Some(health) = &self.health {
            write!(f, "; {health}")?;
        }
        write!(f, " (after {})", seconds(self.elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_as_numbers_written_in_hex() {
        assert_eq!(normalize_serial("00:8A:0b"), "8a0b");
        assert_eq!(normalize_serial("008a0b"), "8a0b");
        assert_eq!(normalize_serial("8A0B"), "8a0b");
        assert_eq!(normalize_serial("00"), "0");
    }

    #[test]
    fn last_seen_reads_as_the_issue_asks() {
        assert_eq!(LastSeen::Serial("ab".into()).to_string(), "old serial ab");
        assert_eq!(
            LastSeen::Failure(Failure::Refused).to_string(),
            "connection refused"
        );
    }

    #[test]
    fn health_bodies_are_quoted_short_and_printable() {
        let body = format!("line1\nline2{}", "x".repeat(500));
        let quoted = quote(body.as_bytes());
        assert!(quoted.starts_with("line1 line2"));
        assert!(quoted.ends_with('…'));
        assert!(quoted.chars().count() <= QUOTE_BODY + 1);
        assert!(matches!(
            etcd_health(200, br#"{"health":"true","reason":""}"#),
            Ok(Health::Healthy)
        ));
        let Err(HealthFailure::Unhealthy(detail)) =
            etcd_health(503, br#"{"health":"false","reason":"RAFT NO LEADER"}"#)
        else {
            panic!("unhealthy etcd passed");
        };
        assert_eq!(detail, "HTTP 503, health \"false\", reason: RAFT NO LEADER");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_and_stop_at_the_deadline() {
        let retry = Retry::default();
        let start = Instant::now();
        let deadline = start + Duration::from_secs(3);
        let mut times = Vec::new();
        let outcome: Result<(), _> = retry_until(deadline, &retry, |timeout| {
            times.push((Instant::now() - start, timeout));
            async { Err("down") }
        })
        .await;
        let GaveUp {
            attempts,
            waited,
            last,
        } = outcome.unwrap_err();
        assert_eq!(waited, Duration::from_secs(3));
        assert_eq!(last, Some("down"));
        let at: Vec<u64> = times.iter().map(|(t, _)| t.as_millis() as u64).collect();
        // 50, 100, 200, 400, 800 ms pauses, then 1 s at most.
        assert_eq!(at, [0, 50, 150, 350, 750, 1550, 2550]);
        assert_eq!(attempts, 7);
        // The last attempt may only use what is left before the deadline.
        assert_eq!(times.last().unwrap().1, Duration::from_millis(450));
    }
}
