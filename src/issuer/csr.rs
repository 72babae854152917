//! A certificate signing request (PKCS#10) asking a remote CA to renew a certificate as it is.
//!
//! The request is assembled from the old certificate's own DER, as `tbs.rs` assembles a renewed
//! certificate, rather than with rcgen's CSR builder: rcgen re-encodes a subject from one value per
//! attribute type, so a subject with two O's or a multi-valued RDN would not be asked for as it is.
//! Here the subject and the subjectAltName extension are the old certificate's bytes; the key is
//! the new (or reused) one, which signs the request as proof that the node holds it.

use x509_parser::prelude::{FromDer, X509Certificate};
use yasna::Tag;
use yasna::models::ObjectIdentifier;

use rcgen::PublicKeyData as _;

use super::IssueError;
use crate::pki::cert::{Cert, San};

const OID_SAN: &[u64] = &[2, 5, 29, 17];
/// PKCS#9 extensionRequest.
const OID_EXTENSION_REQUEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 14];

/// The CSR (DER) for renewing `template` with the key `key`.
pub fn build(template: &Cert, key: &rcgen::KeyPair) -> Result<Vec<u8>, IssueError> {
    let spki = key.subject_public_key_info();
    let (_, old) = X509Certificate::from_der(&template.der)
        .map_err(|e| IssueError::Template(format!("cannot re-read the old certificate: {e}")))?;
    let san = old
        .extensions()
        .iter()
        .find(|e| e.oid.iter().is_some_and(|i| i.eq(OID_SAN.iter().copied())))
        .map(|e| (e.critical, e.value.to_vec()));
    let info = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(0);
            w.next().write_der(&template.subject_der);
            w.next().write_der(&spki);
            w.next().write_tagged_implicit(Tag::context(0), |w| {
                w.write_set(|w| {
                    let Some((critical, value)) = &san else {
                        return;
                    };
                    w.next().write_sequence(|w| {
                        w.next()
                            .write_oid(&ObjectIdentifier::from_slice(OID_EXTENSION_REQUEST));
                        w.next().write_set(|w| {
                            w.next().write_sequence(|w| {
                                w.next().write_sequence(|w| {
                                    w.next().write_oid(&ObjectIdentifier::from_slice(OID_SAN));
                                    if *critical {
                                        w.next().write_bool(true);
                                    }
                                    w.next().write_bytes(value);
                                })
                            })
                        })
                    })
                })
            });
        })
    });
    let sig_alg = super::tbs::signature_algorithm(key)?;
    let signature =
        rcgen::SigningKey::sign(key, &info).map_err(|e| IssueError::Sign(e.to_string()))?;
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(&info);
            w.next().write_der(&sig_alg);
            w.next().write_bitvec_bytes(&signature, signature.len() * 8);
        })
    }))
}

/// The CSR as PEM, as cfssl reads it.
pub fn pem(der: &[u8]) -> String {
    crate::pki::pem::encode("CERTIFICATE REQUEST", der)
}

/// The SANs as cfssl's `hosts` list (DNS names, IP addresses, e-mail addresses, URIs).
pub fn hosts(template: &Cert) -> Vec<String> {
    template
        .sans
        .iter()
        .filter_map(|s| match s {
            San::Dns(d) => Some(d.clone()),
            San::Ip(ip) => Some(ip.to_string()),
            San::Email(e) => Some(e.clone()),
            San::Uri(u) => Some(u.clone()),
            San::Other(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::encode::{self, KeySpec};

    #[test]
    fn the_request_carries_the_old_subject_and_sans_and_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let opts = crate::sandbox::SandboxOptions {
            key: KeySpec::EcdsaP256,
            ..Default::default()
        };
        crate::sandbox::write(tmp.path(), &opts, now).unwrap();
        let pem_data = std::fs::read(tmp.path().join("etc/kubernetes/pki/apiserver.crt")).unwrap();
        let blocks = crate::pki::pem::blocks(tmp.path(), &pem_data).unwrap();
        let old = Cert::from_der(&blocks[0].der).unwrap();
        let key = encode::generate(KeySpec::EcdsaP256).unwrap();
        let der = build(&old, &key).unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        assert_eq!(
            csr.certification_request_info.subject.as_raw(),
            old.subject_der.as_slice()
        );
        assert_eq!(
            csr.certification_request_info.subject_pki.raw,
            key.subject_public_key_info().as_slice()
        );
        let sans = csr
            .requested_extensions()
            .unwrap()
            .find_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => {
                    Some(s.general_names.len())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(sans, old.sans.len());
        assert!(hosts(&old).contains(&"kubernetes.default".to_owned()));
    }
}
