//! The lease's TLS credentials, from the node's own PKI: the etcd CA, and a client certificate
//! (kubeadm's `apiserver-etcd-client`, or `etcd/healthcheck-client` when that is absent).
//!
//! A node whose certificates all expired still has to reach etcd to take its turn; if the etcd
//! CA's key is on the node, a short-lived client certificate is minted in memory for the lease.
//! It is never written to disk: it is the lease's own credential, not part of the node's PKI.

use std::fmt;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::LeaseError;
use crate::config::{DEFAULT_LEASE_CERT, DEFAULT_LEASE_KEY, LeaseSettings};
use crate::pki::cert::Cert;
use crate::pki::key::PrivateKey;
use crate::pki::pem::{self, Block, ReadError};
use crate::root::Root;

/// kubeadm's other etcd client certificate, tried when the default one is absent.
pub const FALLBACK_CERT: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.crt";
/// Its key.
pub const FALLBACK_KEY: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.key";

/// How long a minted client certificate lives: long enough for a rotation, short enough that
/// losing it in memory matters little.
pub const MINTED_VALIDITY: time::Duration = time::Duration::hours(1);

/// What the lease presents to etcd.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The CA bundle (PEM) etcd's serving certificate must chain to; `None` for plain http.
    pub ca_pem: Option<String>,
    /// The client certificate (PEM), if any.
    pub cert_pem: Option<String>,
    key_pem: Option<String>,
    /// Where the client certificate came from: a node path, or "minted in memory ...".
    pub source: String,
    /// Whether the client certificate was minted in memory.
    pub minted: bool,
    /// The client certificate's validity, when there is one.
    validity: Option<(OffsetDateTime, OffsetDateTime)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials(ca: {}, client: {}, key: <redacted>)",
            self.ca_pem.is_some(),
            self.source
        )
    }
}

impl Credentials {
    /// No TLS: for plain http endpoints (a lab).
    pub fn plain() -> Credentials {
        Credentials {
            source: "none (plain http)".to_owned(),
            ..Credentials::default()
        }
    }

    /// The client certificate and its key, both PEM, when there is one.
    pub fn identity(&self) -> Option<(&str, &str)> {
        Some((self.cert_pem.as_deref()?, self.key_pem.as_deref()?))
    }

    /// Credentials from PEM text (tests, and callers with their own files).
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str, source: &str) -> Credentials {
        let validity = pem::blocks(Path::new(source), cert_pem.as_bytes())
            .ok()
            .and_then(|blocks| blocks.into_iter().find(|b| b.label == "CERTIFICATE"))
            .and_then(|b| Cert::from_der(&b.der).ok())
            .map(|c| (c.not_before, c.not_after));
        Credentials {
            ca_pem: Some(ca_pem.to_owned()),
            cert_pem: Some(cert_pem.to_owned()),
            key_pem: Some(key_pem.to_owned()),
            source: source.to_owned(),
            minted: false,
            validity,
        }
    }

    /// When the client certificate in use stops being valid (a minted one: its hour is up);
    /// `None` without one.
    pub fn not_after(&self) -> Option<OffsetDateTime> {
        self.validity.map(|(_, to)| to)
    }

    /// When the client certificate in use became valid.
    pub fn not_before(&self) -> Option<OffsetDateTime> {
        self.validity.map(|(from, _)| from)
    }

    /// From when on a new client should be made: [`renewal_margin`] before NotAfter.
    pub fn renew_from(&self) -> Option<OffsetDateTime> {
        let (from, to) = self.validity?;
        Some(to - renewal_margin(from, to))
    }

    /// Whether `other` presents the same client certificate (the same file content, or the
    /// same minted certificate).
    pub fn same_identity(&self, other: &Credentials) -> bool {
        self.ca_pem == other.ca_pem && self.cert_pem == other.cert_pem
    }
}

/// How long before a client certificate's NotAfter the lease connects again with credentials
/// read anew: a tenth of its lifetime, at least five minutes, so a minted hour-long one is
/// replaced six minutes before it runs out and a year-long one a month before (when certrotd
/// has renewed it on disk, or rereads it every minute until it has).
pub fn renewal_margin(not_before: OffsetDateTime, not_after: OffsetDateTime) -> time::Duration {
    let lifetime = (not_after - not_before).max(time::Duration::ZERO);
    (lifetime / 10_i32).max(MIN_RENEWAL_MARGIN)
}

/// The least [`renewal_margin`].
pub const MIN_RENEWAL_MARGIN: time::Duration = time::Duration::minutes(5);

/// Reads the configured credentials under `root`; mints a client certificate when the one on disk
/// is absent or not valid at `now` and the etcd CA key is at hand. Plain-http endpoints need none.
pub fn load(
    lease: &LeaseSettings,
    root: &Root,
    now: OffsetDateTime,
) -> Result<Credentials, LeaseError> {
    if lease.endpoints.iter().all(|e| e.starts_with("http://")) {
        return Ok(Credentials::plain());
    }
    let ca_path = real(root, &lease.ca_file)?;
    let ca_blocks = read_blocks(&ca_path)?;
    let ca_certs: Vec<&Block> = ca_blocks
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
        .collect();
    let Some(ca_first) = ca_certs.first() else {
        return Err(credentials(&ca_path, "no CERTIFICATE block"));
    };
    let ca_cert =
        Cert::from_der(&ca_first.der).map_err(|e| credentials(&ca_path, &e.to_string()))?;
    let ca_pem: String = ca_certs
        .iter()
        .map(|b| pem::encode("CERTIFICATE", &b.der))
        .collect();

    let (cert_node, key_node) = client_paths(lease, root);
    let cert_path = real(root, &cert_node)?;
    let why_not = match read_blocks(&cert_path) {
        Ok(blocks) => {
            let cert = blocks
                .iter()
                .find(|b| b.label == "CERTIFICATE")
                .ok_or_else(|| credentials(&cert_path, "no CERTIFICATE block"))
                .and_then(|b| {
                    Cert::from_der(&b.der).map_err(|e| credentials(&cert_path, &e.to_string()))
                })?;
            if cert.not_before <= now && now < cert.not_after {
                let key_path = real(root, &key_node)?;
                let key_pem = read_key(&key_path, &cert)?;
                return Ok(Credentials {
                    ca_pem: Some(ca_pem),
                    cert_pem: Some(pem::encode("CERTIFICATE", &cert.der)),
                    key_pem: Some(key_pem),
                    source: cert_node.display().to_string(),
                    minted: false,
                    validity: Some((cert.not_before, cert.not_after)),
                });
            }
            format!(
                "not valid now (valid {} to {})",
                crate::timefmt::rfc3339(cert.not_before),
                crate::timefmt::rfc3339(cert.not_after)
            )
        }
        Err(LeaseError::Credentials { error, .. }) if error == "file not found" => error,
        Err(e) => return Err(e),
    };
    let ca_key_path = ca_path.with_extension("key");
    if !ca_key_path.exists() {
        return Err(credentials(
            &cert_path,
            &format!(
                "{why_not}, and no etcd CA key at {} to mint a short-lived client certificate",
                ca_key_path.display()
            ),
        ));
    }
    let (cert_pem, key_pem, validity) = mint(&ca_cert, &ca_key_path, MINTED_CN, now)?;
    let source = format!(
        "minted in memory for 1h, signed by {} ({} is {why_not})",
        lease.ca_file.display(),
        cert_node.display()
    );
    tracing::warn!(
        "lease credentials: {} is {why_not}; using a client certificate minted in memory, \
         signed by the etcd CA, valid for 1h (never written to disk)",
        cert_node.display()
    );
    Ok(Credentials {
        ca_pem: Some(ca_pem),
        cert_pem: Some(cert_pem),
        key_pem: Some(key_pem),
        source,
        minted: true,
        validity: Some(validity),
    })
}

/// The client certificate's node paths: the configured ones, or kubeadm's healthcheck client when
/// the defaults are configured and the apiserver's client certificate is absent.
fn client_paths(lease: &LeaseSettings, root: &Root) -> (PathBuf, PathBuf) {
    let configured = (lease.cert_file.clone(), lease.key_file.clone());
    let defaults = lease.cert_file == Path::new(DEFAULT_LEASE_CERT)
        && lease.key_file == Path::new(DEFAULT_LEASE_KEY);
    let present = |p: &Path| root.resolve(p).is_ok_and(|r| r.exists());
    if defaults && !present(&lease.cert_file) && present(Path::new(FALLBACK_CERT)) {
        return (PathBuf::from(FALLBACK_CERT), PathBuf::from(FALLBACK_KEY));
    }
    configured
}

/// The common name of a minted certificate: etcd checks no name (kubeadm's etcd has no RBAC),
/// so it only says who made it.
pub const MINTED_CN: &str = "certrotd-lease";

/// Signs a fresh client certificate with the etcd CA, valid from a minute ago for
/// [`MINTED_VALIDITY`]; returns (certificate PEM, key PEM, (NotBefore, NotAfter)).
fn mint(
    ca: &Cert,
    ca_key_path: &Path,
    cn: &str,
    now: OffsetDateTime,
) -> Result<(String, String, (OffsetDateTime, OffsetDateTime)), LeaseError> {
    if ca.not_after <= now {
        return Err(credentials(
            ca_key_path,
            &format!(
                "cannot mint a client certificate: the etcd CA expired at {}",
                crate::timefmt::rfc3339(ca.not_after)
            ),
        ));
    }
    let ca_key = PrivateKey::from_blocks(&read_blocks(ca_key_path)?)
        .map_err(|e| credentials(ca_key_path, &e.to_string()))?;
    if !ca_key.matches(ca) {
        return Err(credentials(
            ca_key_path,
            "the etcd CA key does not belong to the etcd CA certificate",
        ));
    }
    let sign_error = |e: rcgen::Error| credentials(ca_key_path, &format!("minting: {e}"));
    let issuer = rcgen::Issuer::from_ca_cert_der(&ca.der.as_slice().into(), &ca_key.pair)
        .map_err(sign_error)?;
    let key = rcgen::KeyPair::generate().map_err(sign_error)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(sign_error)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = (now + MINTED_VALIDITY).min(ca.not_after);
    params.serial_number = Some(crate::issuer::local::random_serial().into());
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let validity = (params.not_before, params.not_after);
    let cert = params.signed_by(&key, &issuer).map_err(sign_error)?;
    Ok((cert.pem(), key.serialize_pem(), validity))
}

/// Reads a key file and checks it belongs to `cert`; returns its key block as PEM, in the
/// format the file has (PKCS#1, SEC1 or PKCS#8: rustls reads them all).
fn read_key(path: &Path, cert: &Cert) -> Result<String, LeaseError> {
    let blocks = read_blocks(path)?;
    let key = PrivateKey::from_blocks(&blocks).map_err(|e| credentials(path, &e.to_string()))?;
    if !key.matches(cert) {
        return Err(credentials(
            path,
            "the key does not belong to the client certificate",
        ));
    }
    let block = blocks
        .iter()
        .find(|b| crate::pki::key::is_key_label(&b.label))
        .ok_or_else(|| credentials(path, "no private key block"))?;
    Ok(pem::encode(&block.label, &block.der))
}

/// The real path of a node path under the root.
fn real(root: &Root, node: &Path) -> Result<PathBuf, LeaseError> {
    root.resolve(node)
        .map_err(|e| credentials(&root.join(node), &e.to_string()))
}

fn read_blocks(path: &Path) -> Result<Vec<Block>, LeaseError> {
    let data = pem::read_capped(path).map_err(|e| match e {
        ReadError::Missing { .. } => credentials(path, "file not found"),
        other => credentials(path, &other.to_string()),
    })?;
    pem::blocks(path, &data).map_err(|e| credentials(path, &e.to_string()))
}

fn credentials(path: &Path, error: &str) -> LeaseError {
    LeaseError::Credentials {
        path: path.to_owned(),
        error: error.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;
    use time::macros::datetime;

    #[test]
    fn the_margin_is_a_tenth_of_the_lifetime_but_never_under_five_minutes() {
        let t0 = datetime!(2026-12-01 00:00 UTC);
        // A minted credential: an hour (and the minute it is backdated) → its tenth, 6 min 6 s.
        assert_eq!(
            renewal_margin(t0 - Duration::minutes(1), t0 + MINTED_VALIDITY),
            Duration::seconds(366)
        );
        // A year-long kubeadm client certificate: 36.5 days before NotAfter.
        assert_eq!(
            renewal_margin(t0, t0 + Duration::days(365)),
            Duration::hours(876)
        );
        // Short ones (a test's, a lab's) get the floor.
        assert_eq!(
            renewal_margin(t0, t0 + Duration::minutes(10)),
            MIN_RENEWAL_MARGIN
        );
        assert_eq!(
            renewal_margin(t0, t0 + Duration::minutes(50)),
            MIN_RENEWAL_MARGIN
        );
        assert_eq!(
            renewal_margin(t0, t0 + Duration::minutes(51)),
            Duration::seconds(306)
        );
        // NotAfter before NotBefore (a broken certificate): the floor, not a negative margin.
        assert_eq!(
            renewal_margin(t0, t0 - Duration::hours(1)),
            MIN_RENEWAL_MARGIN
        );
    }

    #[test]
    fn renewal_starts_the_margin_before_not_after_and_plain_http_never_renews() {
        let t0 = datetime!(2026-12-01 00:00 UTC);
        let creds = Credentials {
            validity: Some((t0, t0 + Duration::days(10))),
            ..Credentials::plain()
        };
        assert_eq!(creds.not_after(), Some(t0 + Duration::days(10)));
        assert_eq!(creds.renew_from(), Some(t0 + Duration::days(9)));
        let plain = Credentials::plain();
        assert_eq!(plain.not_after(), None);
        assert_eq!(plain.renew_from(), None);
    }
}
