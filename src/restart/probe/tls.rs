//! One TLS handshake with an endpoint: the client identity presented, the chain the server
//! presents recorded (not judged), and each failure named for what it is.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    ServerName, UnixTime,
};
use rustls::{AlertDescription, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::pki::pem;

use super::{Failure, ProbeError};

/// The aws-lc-rs provider, explicitly: the dependency tree also enables ring (through
/// etcd-client), so rustls cannot pick a process default on its own.
pub(super) fn provider() -> Arc<CryptoProvider> {
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

pub(super) fn connect_failure(error: &io::Error) -> Failure {
    if error.kind() == io::ErrorKind::ConnectionRefused {
        Failure::Refused
    } else {
        Failure::Connect(error.to_string())
    }
}

/// The rustls error somewhere in an error's chain (tokio-rustls wraps it in an `io::Error`,
/// hyper wraps that again).
pub(super) fn find_tls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
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
pub(super) fn tls_failure(error: &rustls::Error, client: Option<&ClientIdentity>) -> Failure {
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
pub(super) enum Handshake {
    Connected(Box<TlsStream<TcpStream>>, Vec<CertificateDer<'static>>),
    /// TLS 1.2: the server sends its certificate, then refuses ours.
    FailedAfterCertificate(Vec<CertificateDer<'static>>, Failure),
}

pub(super) async fn handshake(endpoint: &TlsEndpoint) -> Result<Handshake, Failure> {
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

pub(super) async fn with_timeout<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(Failure::TimedOut(timeout)))
}
