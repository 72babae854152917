//! Signing through a remote cfssl server, for certificates whose CA key is not on the node.
//!
//! The node makes the key and a CSR with the old certificate's subject and SANs (`csr.rs`), posts
//! it to cfssl's authenticated endpoint `POST /api/v1/cfssl/authsign`, and checks the answer
//! (`check.rs`) before anything is made of it. The request is authenticated as cfssl's "standard"
//! auth keys expect: `{"token": base64(HMAC-SHA256(key, request)), "request": base64(request)}`.
//!
//! The rotation builds synchronously on the blocking pool (and `certrotd renew` has no runtime at
//! all), so the one HTTP exchange runs on a thread of its own with a current-thread runtime:
//! that works from anywhere, including from inside another runtime's blocking task.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use rcgen::PublicKeyData as _;

use super::{IssueError, Issued, check, csr};
use crate::pki::cert::Cert;
use crate::pki::pem;
use crate::pki::secret::SecretBytes;

/// cfssl's signing endpoint with HMAC authentication.
const AUTHSIGN: &str = "/api/v1/cfssl/authsign";
/// A signed certificate is a few KiB; a server sending more is not answering a signing request.
const MAX_ANSWER: usize = 1024 * 1024;
/// The shortest auth key accepted (128 bits): a shorter one is guessable.
const MIN_KEY_BYTES: usize = 16;
/// How much of an unexpected answer an error quotes.
const QUOTE: usize = 200;

/// Where a cfssl server is and how to reach it, as `[issuer]` says (built from its table in
/// [`super`]), so this file does not depend on the configuration's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The server's base URL.
    pub url: String,
    /// The hex auth key's path.
    pub auth_key_file: PathBuf,
    /// The server's CA bundle (`None`: plain http).
    pub ca_bundle: Option<PathBuf>,
    /// Connect and answer timeout.
    pub timeout: Duration,
}

/// A cfssl server and the credentials to ask it.
pub struct CfsslClient {
    url: String,
    host: String,
    port: u16,
    path: String,
    key: SecretBytes,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
}

impl fmt::Debug for CfsslClient {
    // The auth key never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CfsslClient({}, <auth key redacted>)", self.url)
    }
}

/// What to ask the server for.
pub struct SignRequest<'a> {
    /// The certificate being renewed (subject, SANs, usages).
    pub template: &'a Cert,
    /// The key the new certificate certifies; it signs the CSR.
    pub key: &'a rcgen::KeyPair,
    /// The CA certificate the old one chained to, which must sign the new one.
    pub ca: &'a Cert,
    /// The cfssl profile.
    pub profile: &'a str,
    /// The time of issue.
    pub now: OffsetDateTime,
}

impl CfsslClient {
    /// Opens the configuration of `remote` (its paths resolved on the node already): reads the
    /// auth key and the CA bundle. Errors name the file, never its contents.
    pub fn open(remote: impl Into<Remote>) -> Result<CfsslClient, IssueError> {
        let remote: Remote = remote.into();
        let err = |m: String| IssueError::Remote(format!("cfssl {}: {m}", remote.url));
        let uri: hyper::Uri = remote
            .url
            .parse()
            .map_err(|e| err(format!("url {:?}: {e}", remote.url)))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(err("url must start with http:// or https://".into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| err("url has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = format!("{}{AUTHSIGN}", uri.path().trim_end_matches('/'));
        let key = read_auth_key(&remote.auth_key_file).map_err(err)?;
        let tls = if https {
            let bundle = remote
                .ca_bundle
                .as_ref()
                .ok_or_else(|| err("an https url needs ca_bundle".into()))?;
            Some(Arc::new(tls_config(bundle).map_err(err)?))
        } else {
            None
        };
        Ok(CfsslClient {
            url: remote.url.clone(),
            host,
            port,
            path,
            key,
            tls,
            timeout: remote.timeout,
        })
    }

    /// How plans and logs name it.
    pub fn describe(&self) -> String {
        format!("cfssl {}", self.url)
    }

    /// Asks for the renewed certificate and checks it. Blocks the calling thread (see the module
    /// documentation); the error says what failed and never carries a key.
    pub fn renew(&self, req: &SignRequest<'_>) -> Result<Issued, IssueError> {
        let csr_der = csr::build(req.template, req.key)?;
        let spki = req.key.subject_public_key_info();
        let body = self.body(&csr::pem(&csr_der), req.profile, &csr::hosts(req.template));
        let der = self.exchange(body)?;
        let new = check::answer(&der, req.template, &spki, req.ca, req.now)
            .map_err(|e| IssueError::Remote(format!("{}: refused: {e}", self.describe())))?;
        let mut notes = Vec::new();
        if new.not_after <= req.template.not_after {
            notes.push(format!(
                "the profile {:?} of {} gives it no longer a life than the old one had",
                req.profile,
                self.describe()
            ));
        }
        notes.push(format!(
            "signed by {} (profile {:?}), valid until {}",
            self.describe(),
            req.profile,
            crate::timefmt::rfc3339(new.not_after)
        ));
        Ok(Issued {
            der: new.der,
            notes,
        })
    }

    /// The authsign body: the request, and its HMAC under the auth key.
    fn body(&self, csr_pem: &str, profile: &str, hosts: &[String]) -> Vec<u8> {
        let request = serde_json::json!({
            "certificate_request": csr_pem,
            "profile": profile,
            "hosts": hosts,
        })
        .to_string();
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.key);
        let tag = aws_lc_rs::hmac::sign(&key, request.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::json!({
            "token": b64.encode(tag.as_ref()),
            "request": b64.encode(request.as_bytes()),
        })
        .to_string()
        .into_bytes()
    }

    /// Posts `body` on a thread of its own and returns the certificate's DER.
    fn exchange(&self, body: Vec<u8>) -> Result<Vec<u8>, IssueError> {
        let err = |m: String| IssueError::Remote(format!("{}: {m}", self.describe()));
        let answer = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("starting the HTTP runtime: {e}"))?;
                rt.block_on(self.post(body))
            })
            .join()
            .unwrap_or_else(|_| Err("the HTTP thread panicked".into()))
        })
        .map_err(err)?;
        parse_answer(answer.0, &answer.1).map_err(err)
    }

    async fn post(&self, body: Vec<u8>) -> Result<(u16, Bytes), String> {
        let t = self.timeout;
        let addr = (self.host.as_str(), self.port);
        let tcp = tokio::time::timeout(t, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting timed out after {}", crate::duration::format(t)))?
            .map_err(|e| format!("connecting to {}:{}: {e}", self.host, self.port))?;
        match &self.tls {
            None => self.send(tcp, body).await,
            Some(config) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("server name {:?}: {e}", self.host))?;
                let tls = tokio::time::timeout(
                    t,
                    TlsConnector::from(Arc::clone(config)).connect(name, tcp),
                )
                .await
                .map_err(|_| "TLS handshake timed out".to_owned())?
                .map_err(|e| format!("TLS handshake: {e}"))?;
                self.send(tls, body).await
            }
        }
    }

    async fn send<S>(&self, stream: S, body: Vec<u8>) -> Result<(u16, Bytes), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let t = self.timeout;
        let work = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            let conn = tokio::spawn(conn);
            let request = hyper::Request::post(&self.path)
                .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::USER_AGENT, "certrotd")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| format!("HTTP request: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            let status = response.status().as_u16();
            let data = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            conn.abort();
            Ok::<_, String>((status, data))
        };
        tokio::time::timeout(t, work).await.map_err(|_| {
            format!(
                "no answer within {} (issuer.timeout)",
                crate::duration::format(t)
            )
        })?
    }
}

/// cfssl's API envelope.
#[derive(Deserialize)]
struct Envelope {
    success: bool,
    #[serde(default)]
    result: Option<SignResult>,
    #[serde(default)]
    errors: Vec<ApiMessage>,
}

#[derive(Deserialize)]
struct SignResult {
    certificate: String,
}

#[derive(Deserialize)]
struct ApiMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

/// The certificate (DER) in cfssl's answer to `/api/v1/cfssl/authsign`, or why there is none.
/// `status` is the HTTP status the answer came with. Public so that the fuzz targets
/// ([`crate::fuzzing`]) read answers exactly as the issuer does.
pub fn parse_answer(status: u16, body: &[u8]) -> Result<Vec<u8>, String> {
    let quote = || {
        let text = String::from_utf8_lossy(&body[..body.len().min(QUOTE)]).into_owned();
        format!("{:?}{}", text, if body.len() > QUOTE { "…" } else { "" })
    };
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        format!(
            "HTTP {status} with an answer that is not cfssl's JSON ({e}): {}",
            quote()
        )
    })?;
    if !envelope.success || status != 200 {
        let errors: Vec<String> = envelope
            .errors
            .iter()
            .map(|e| format!("{} (code {})", e.message, e.code))
            .collect();
        return Err(format!(
            "HTTP {status}, signing refused: {}",
            if errors.is_empty() {
                "no reason given".to_owned()
            } else {
                errors.join("; ")
            }
        ));
    }
    let pem_text = envelope
        .result
        .ok_or_else(|| "success without a certificate".to_owned())?
        .certificate;
    let blocks = pem::blocks(Path::new("<cfssl answer>"), pem_text.as_bytes())
        .map_err(|e| format!("the answer's certificate: {e}"))?;
    blocks
        .into_iter()
        .find(|b| b.label == "CERTIFICATE")
        .map(|b| b.der.clone())
        .ok_or_else(|| "the answer holds no CERTIFICATE block".to_owned())
}

/// Reads a hex auth key as cfssl's `auth_keys` hold it, zeroed when dropped. Errors name the
/// path only.
pub fn read_auth_key(path: &Path) -> Result<SecretBytes, String> {
    let shown = path.display();
    let data = SecretBytes::new(
        std::fs::read(path).map_err(|e| format!("auth_key_file {shown}: cannot read it: {e}"))?,
    );
    let text = std::str::from_utf8(&data)
        .map_err(|_| format!("auth_key_file {shown}: not hex text"))?
        .trim();
    let key = SecretBytes::new(hex::decode(text).map_err(|_| {
        format!("auth_key_file {shown}: not a hex key as cfssl's auth_keys hold it")
    })?);
    if key.len() < MIN_KEY_BYTES {
        return Err(format!(
            "auth_key_file {shown}: the key is {} bytes; at least {MIN_KEY_BYTES} (32 hex digits) are needed",
            key.len()
        ));
    }
    Ok(key)
}

/// A TLS client configuration trusting the certificates of `bundle`.
fn tls_config(bundle: &Path) -> Result<ClientConfig, String> {
    let shown = bundle.display();
    let data = pem::read_capped(bundle).map_err(|e| format!("ca_bundle: {e}"))?;
    let blocks = pem::blocks(bundle, &data).map_err(|e| format!("ca_bundle: {e}"))?;
    let mut roots = RootCertStore::empty();
    for b in blocks.iter().filter(|b| b.label == "CERTIFICATE") {
        roots
            .add(b.der.clone().into())
            .map_err(|e| format!("ca_bundle {shown}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("ca_bundle {shown}: no certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_are_not_a_certificate_say_why() {
        let e = parse_answer(502, b"<html>bad gateway</html>").unwrap_err();
        assert!(e.contains("HTTP 502") && e.contains("bad gateway"), "{e}");
        let e = parse_answer(
            400,
            br#"{"success":false,"result":null,"errors":[{"code":1000,"message":"invalid token"}],"messages":[]}"#,
        )
        .unwrap_err();
        assert!(e.contains("invalid token (code 1000)"), "{e}");
        let e = parse_answer(200, br#"{"success":true,"result":{"certificate":"x"}}"#).unwrap_err();
        assert!(e.contains("the answer's certificate"), "{e}");
    }

    #[test]
    fn auth_keys_must_be_hex_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "0123456789abcdef\n").unwrap();
        let e = read_auth_key(&p).unwrap_err();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("8 bytes"),
            "{e}"
        );
        assert!(!e.contains("0123"), "the key must not be quoted: {e}");
        std::fs::write(&p, "zz").unwrap();
        assert!(read_auth_key(&p).unwrap_err().contains("not a hex key"));
        std::fs::write(&p, "0123456789abcdef0123456789ABCDEF\n").unwrap();
        assert_eq!(read_auth_key(&p).unwrap().len(), 16);
        let e = read_auth_key(&dir.path().join("absent")).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
