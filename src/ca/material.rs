//! The new CA: the old one's subject, key algorithm and size, a fresh key, the configured
//! lifetime, subject and authority key identifiers — generated once by the coordinator, or taken
//! from files the operator provides (`certrotd ca rotate TRACK --from DIR`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use rcgen::PublicKeyData as _;

use crate::issuer::tbs::{self, Changes};
use crate::issuer::{BACKDATE, local::random_serial};
use crate::pki::cert::Cert;
use crate::pki::encode::{self, KeySpec};
use crate::pki::key::PrivateKey;
use crate::pki::pem;
use crate::pki::secret::SecretString;

use super::track::Track;

/// A CA certificate with its key.
pub struct Material {
    /// The certificate.
    pub cert: Cert,
    /// Its PEM.
    pub cert_pem: String,
    /// The key, usable for signing.
    pub key: PrivateKey,
    /// The key's PEM, in the old key's format (zeroed when dropped).
    pub key_pem: SecretString,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Material({}, key: <redacted>)", self.cert.subject)
    }
}

/// Why a new CA could not be made or was refused. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    /// A file could not be read or parsed.
    #[error("{}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// The new CA does not fit (subject, algorithm, not a CA, key mismatch, same as the old).
    #[error("new CA refused: {0}")]
    Refused(String),
    /// Generating or signing failed.
    #[error("making the new CA: {0}")]
    Make(String),
}

/// Makes the successor of `old` (whose key is `old_key`): same subject and extensions, a new
/// key of the same algorithm and size, valid from `now` (backdated like kubeadm) for `validity`.
pub fn generate(
    old: &Cert,
    old_key: &PrivateKey,
    validity: Duration,
    now: OffsetDateTime,
) -> Result<Material, MaterialError> {
    let spec = KeySpec::of(&old_key.pair).ok_or_else(|| {
        MaterialError::Refused(format!(
            "the old CA's key ({}) is of an algorithm certrotd cannot generate",
            old.key_algorithm
        ))
    })?;
    let pair = encode::generate(spec).map_err(|e| MaterialError::Make(e.to_string()))?;
    let spki = pair.subject_public_key_info();
    let key_id = tbs::key_id(&spki);
    let not_after = time::Duration::try_from(validity)
        .ok()
        .and_then(|v| now.checked_add(v))
        .ok_or_else(|| {
            MaterialError::Make("validity past the last date a certificate holds".into())
        })?;
    let der = tbs::successor_ca(
        &old.der,
        &Changes {
            serial: random_serial(),
            not_before: now - BACKDATE,
            not_after,
            spki: &spki,
            issuer_subject: &old.subject_der,
            issuer_key_id: Some(&key_id),
        },
        &pair,
    )
    .map_err(|e| MaterialError::Make(e.to_string()))?;
    let key_pem = encode::private_key_pem(&pair, old_key.format)
        .map_err(|e| MaterialError::Make(e.to_string()))?;
    from_pem(
        old,
        &encode::cert_pem(&der),
        &key_pem,
        Path::new("(generated)"),
    )
}

/// Reads the operator's new CA from `dir`: the track's own file names (`ca.crt`/`ca.key` for
/// etcd-ca, `front-proxy-ca.crt`/`.key` for front-proxy-ca), and checks it against `old`.
pub fn from_dir(dir: &Path, track: Track, old: &Cert) -> Result<Material, MaterialError> {
    let base = |rel: &str| dir.join(Path::new(rel).file_name().unwrap_or_default());
    let (cert_path, key_path) = (base(track.ca_cert()), base(track.ca_key()));
    let read = |p: &Path| {
        pem::read_capped(p).map_err(|e| MaterialError::Read {
            path: p.to_path_buf(),
            error: e.to_string(),
        })
    };
    let cert_bytes = read(&cert_path)?;
    let key_bytes = read(&key_path)?;
    let cert_pem = std::str::from_utf8(&cert_bytes).map_err(|_| MaterialError::Read {
        path: cert_path.clone(),
        error: "not PEM text".into(),
    })?;
    let key_pem = std::str::from_utf8(&key_bytes).map_err(|_| MaterialError::Read {
        path: key_path.clone(),
        error: "not PEM text".into(),
    })?;
    from_pem(
        old,
        cert_pem,
        &SecretString::new(key_pem.to_owned()),
        &key_path,
    )
}

/// Builds the material from PEM (the record's certificate and the unwrapped key) and checks it
/// against `old`: one certificate, a CA, the old subject byte for byte, the same key algorithm
/// and size, a subject key identifier, the key matching, and not the old CA itself.
pub fn from_pem(
    old: &Cert,
    cert_pem: &str,
    key_pem: &SecretString,
    key_path: &Path,
) -> Result<Material, MaterialError> {
    let read_err = |path: &Path, error: String| MaterialError::Read {
        path: path.to_path_buf(),
        error,
    };
    let cert_path = key_path.with_extension("crt");
    let blocks = pem::blocks(&cert_path, cert_pem.as_bytes())
        .map_err(|e| read_err(&cert_path, e.to_string()))?;
    let certs: Vec<_> = blocks.iter().filter(|b| b.label == "CERTIFICATE").collect();
    if certs.len() != 1 {
        return Err(MaterialError::Refused(format!(
            "expected one certificate, found {}",
            certs.len()
        )));
    }
    let cert = Cert::from_der(&certs[0].der).map_err(|e| read_err(&cert_path, e.to_string()))?;
    let key_blocks =
        pem::blocks(key_path, key_pem.as_bytes()).map_err(|e| read_err(key_path, e.to_string()))?;
    let key =
        PrivateKey::from_blocks(&key_blocks).map_err(|e| read_err(key_path, e.to_string()))?;
    check(old, &cert, &key)?;
    Ok(Material {
        cert_pem: encode::cert_pem(&cert.der),
        cert,
        key,
        key_pem: key_pem.clone(),
    })
}

/// The checks of [`from_pem`].
pub fn check(old: &Cert, new: &Cert, key: &PrivateKey) -> Result<(), MaterialError> {
    let refuse = |why: String| Err(MaterialError::Refused(why));
    if !new.is_ca {
        return refuse("the certificate is not a CA (basic constraints CA:FALSE or absent)".into());
    }
    if new.subject_der != old.subject_der {
        return refuse(format!(
            "subject {:?} differs from the old CA's {:?} (components match the CA by name)",
            new.subject, old.subject
        ));
    }
    if new.key_algorithm != old.key_algorithm {
        return refuse(format!(
            "key {} differs from the old CA's {}",
            new.key_algorithm, old.key_algorithm
        ));
    }
    if new.subject_key_id.is_none() {
        return refuse("no subject key identifier".into());
    }
    if !key.matches(new) {
        return refuse("the key does not belong to the certificate".into());
    }
    if new.public_key == old.public_key {
        return refuse("it has the old CA's key".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::encode::generate as gen_key;
    use time::macros::datetime;

    /// A kubeadm-like self-signed CA (rcgen), subject CN=etcd-ca, no AKID.
    pub(crate) fn old_ca(spec: KeySpec) -> (Cert, PrivateKey) {
        let pair = gen_key(spec).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "etcd-ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyCertSign,
        ];
        params.use_authority_key_identifier_extension = false;
        params.key_identifier_method = rcgen::KeyIdMethod::Sha256;
        let cert = params.self_signed(&*pair).unwrap();
        let pem_text = pair.serialize_pem();
        let blocks = pem::blocks(Path::new("ca.key"), pem_text.as_bytes()).unwrap();
        (
            Cert::from_der(cert.der()).unwrap(),
            PrivateKey::from_blocks(&blocks).unwrap(),
        )
    }

    #[test]
    fn the_successor_keeps_subject_and_algorithm_and_names_its_own_key() {
        for spec in [KeySpec::EcdsaP256, KeySpec::Rsa(2048)] {
            let (old, old_key) = old_ca(spec);
            let now = datetime!(2026-12-07 0:00 UTC);
            let m = generate(&old, &old_key, Duration::from_secs(3650 * 86_400), now).unwrap();
            assert_eq!(m.cert.subject_der, old.subject_der);
            assert_eq!(m.cert.key_algorithm, old.key_algorithm);
            assert!(m.cert.is_ca && m.cert.is_self_signed());
            assert_ne!(m.cert.public_key, old.public_key);
            let ski = m.cert.subject_key_id.clone().unwrap();
            assert_eq!(m.cert.authority_key_id.as_deref(), Some(ski.as_slice()));
            assert_eq!(m.cert.not_after, now + time::Duration::days(3650));
            assert!(m.key.matches(&m.cert));
            assert_eq!(m.key.format, old_key.format);
            assert!(!format!("{m:?}").contains("PRIVATE"));
        }
    }

    #[test]
    fn an_operator_ca_that_does_not_fit_is_refused() {
        let (old, old_key) = old_ca(KeySpec::EcdsaP256);
        let now = datetime!(2026-12-07 0:00 UTC);
        let good = generate(&old, &old_key, Duration::from_secs(86_400), now).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &good.cert_pem).unwrap();
        std::fs::write(dir.path().join("ca.key"), good.key_pem.as_bytes()).unwrap();
        let m = from_dir(dir.path(), Track::EtcdCa, &old).unwrap();
        assert_eq!(m.cert.der, good.cert.der);
        // The old CA itself.
        let old_pem = encode::cert_pem(&old.der);
        let e = from_pem(&old, &old_pem, &old_key_pem(&old_key), Path::new("k")).unwrap_err();
        assert!(e.to_string().contains("old CA's key"), "{e}");
        // Another algorithm.
        let (rsa, rsa_key) = old_ca(KeySpec::Rsa(2048));
        let other = generate(&rsa, &rsa_key, Duration::from_secs(86_400), now).unwrap();
        let e = from_pem(&old, &other.cert_pem, &other.key_pem, Path::new("k")).unwrap_err();
        assert!(e.to_string().contains("RSA-2048"), "{e}");
        // A key of another CA.
        let e = from_pem(&old, &good.cert_pem, &other.key_pem, Path::new("k")).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
        // Missing files name the path.
        let e = from_dir(dir.path(), Track::FrontProxyCa, &old).unwrap_err();
        assert!(e.to_string().contains("front-proxy-ca.crt"), "{e}");
    }

    fn old_key_pem(k: &PrivateKey) -> SecretString {
        encode::private_key_pem(&k.pair, k.format).unwrap()
    }
}
