//! What an endpoint serves: the chain and its leaf's serial, waiting until the expected serial
//! is served, and whether the chain leads to the expected CA.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::retry::retry_until;
use super::tls::{Handshake, handshake, provider, with_timeout};
use super::{ClientIdentity, Retry, TlsEndpoint};
use super::{Failure, LastSeen, ProbeError};

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
