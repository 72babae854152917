//! Building a renewed certificate from the old one.
//!
//! kubeadm's rule is that the existing certificate is the authority for every attribute. rcgen
//! cannot express all of them (its distinguished names hold one value per attribute type, so
//! kubeadm's two-O subjects and multi-valued RDNs would change; it marks KeyUsage critical and
//! ExtendedKeyUsage non-critical whatever the original said). So the TBSCertificate is assembled
//! here from the old certificate's own DER: subject and every extension are copied byte for byte,
//! the issuer is the CA's subject byte for byte (so name chaining cannot break), and only what a new
//! certificate must change is new: serial, validity, public key, and the key identifiers derived
//! from keys. The DER writer is yasna; signing is rcgen's `SigningKey` over aws-lc-rs.

use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};
use yasna::models::{GeneralizedTime, ObjectIdentifier, UTCTime};
use yasna::{DERWriter, Tag};

use super::IssueError;

const OID_SKID: &[u64] = &[2, 5, 29, 14];
const OID_AKID: &[u64] = &[2, 5, 29, 35];

/// What changes between the old certificate and the new one.
pub struct Changes<'a> {
    /// New serial (big-endian, positive).
    pub serial: u64,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The new certificate's SubjectPublicKeyInfo DER.
    pub spki: &'a [u8],
    /// The CA's subject DER (becomes the issuer).
    pub issuer_subject: &'a [u8],
    /// The CA's subject key identifier (becomes the authority key identifier), if it has one.
    pub issuer_key_id: Option<&'a [u8]>,
}

/// Builds and signs the renewed certificate. `signer` is the CA's key.
pub fn renew(
    old_der: &[u8],
    changes: &Changes<'_>,
    signer: &rcgen::KeyPair,
) -> Result<Vec<u8>, IssueError> {
    renew_with_subject(old_der, None, changes, signer)
}

/// [`renew`], with the subject replaced by `subject` (DER) when given. Only a regenerated
/// self-signed set needs this: client-go stamps its creation time into the subject's CN.
pub fn renew_with_subject(
    old_der: &[u8],
    subject: Option<&[u8]>,
    changes: &Changes<'_>,
    signer: &rcgen::KeyPair,
) -> Result<Vec<u8>, IssueError> {
    build(old_der, subject, changes, signer, false)
}

/// [`renew`] for a CA's successor (CA rotation): like the old one in every attribute, and with
/// an authority key identifier naming `changes.issuer_key_id` even where the old one had none
/// (Go leaves it out of self-signed certificates), so that chains through either CA name their key.
pub fn successor_ca(
    old_der: &[u8],
    changes: &Changes<'_>,
    signer: &rcgen::KeyPair,
) -> Result<Vec<u8>, IssueError> {
    build(old_der, None, changes, signer, true)
}

fn build(
    old_der: &[u8],
    subject: Option<&[u8]>,
    changes: &Changes<'_>,
    signer: &rcgen::KeyPair,
    add_akid: bool,
) -> Result<Vec<u8>, IssueError> {
    let (_, old) = X509Certificate::from_der(old_der)
        .map_err(|e| IssueError::Template(format!("cannot re-read the old certificate: {e}")))?;
    let sig_alg = signature_algorithm(signer)?;
    let mut extensions = extensions(&old, changes)?;
    if add_akid
        && akid_key_id(&old).is_none()
        && let Some(id) = changes.issuer_key_id
    {
        extensions.push(akid_extension(id));
    }
    let tbs = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            // v1 certificates (no extensions, as some hand-made ones are) stay v1.
            if old.version().0 > 0 {
                w.next()
                    .write_tagged(Tag::context(0), |w| w.write_u32(old.version().0));
            }
            w.next().write_u64(changes.serial);
            w.next().write_der(&sig_alg);
            w.next().write_der(changes.issuer_subject);
            w.next().write_sequence(|w| {
                write_time(w.next(), changes.not_before);
                write_time(w.next(), changes.not_after);
            });
            w.next()
                .write_der(subject.unwrap_or(old.subject().as_raw()));
            w.next().write_der(changes.spki);
            if !extensions.is_empty() {
                w.next().write_tagged(Tag::context(3), |w| {
                    w.write_sequence(|w| {
                        for e in &extensions {
                            w.next().write_der(e);
                        }
                    })
                });
            }
        })
    });
    let signature =
        rcgen::SigningKey::sign(signer, &tbs).map_err(|e| IssueError::Sign(e.to_string()))?;
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(&tbs);
            w.next().write_der(&sig_alg);
            w.next().write_bitvec_bytes(&signature, signature.len() * 8);
        })
    }))
}

/// RFC 5280: UTCTime through 2049, GeneralizedTime from 2050 on; whole seconds.
fn write_time(w: DERWriter<'_>, t: OffsetDateTime) {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    if t.year() < 2050 {
        w.write_utctime(&UTCTime::from_datetime(t));
    } else {
        w.write_generalized_time(&GeneralizedTime::from_datetime(t));
    }
}

/// The AlgorithmIdentifier for signatures made with the CA's key.
pub(crate) fn signature_algorithm(key: &rcgen::KeyPair) -> Result<Vec<u8>, IssueError> {
    let alg = key.algorithm();
    let (oid, null_params): (&[u64], bool) = if alg == &rcgen::PKCS_RSA_SHA256 {
        (&[1, 2, 840, 113549, 1, 1, 11], true)
    } else if alg == &rcgen::PKCS_RSA_SHA384 {
        (&[1, 2, 840, 113549, 1, 1, 12], true)
    } else if alg == &rcgen::PKCS_RSA_SHA512 {
        (&[1, 2, 840, 113549, 1, 1, 13], true)
    } else if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        (&[1, 2, 840, 10045, 4, 3, 2], false)
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        (&[1, 2, 840, 10045, 4, 3, 3], false)
    } else if alg == &rcgen::PKCS_ECDSA_P521_SHA512 {
        (&[1, 2, 840, 10045, 4, 3, 4], false)
    } else if alg == &rcgen::PKCS_ED25519 {
        (&[1, 3, 101, 112], false)
    } else {
        return Err(IssueError::Template(
            "the CA's key algorithm cannot sign certificates here".into(),
        ));
    };
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_oid(&ObjectIdentifier::from_slice(oid));
            if null_params {
                w.next().write_null();
            }
        })
    }))
}

/// The old certificate's extensions, in order, with the key identifiers made for the new keys.
fn extensions(old: &X509Certificate<'_>, c: &Changes<'_>) -> Result<Vec<Vec<u8>>, IssueError> {
    let mut out = Vec::new();
    for ext in old.extensions() {
        let oid: Vec<u64> =
            ext.oid.iter().map(|it| it.collect()).ok_or_else(|| {
                IssueError::Template(format!("extension OID {} too large", ext.oid))
            })?;
        let value: Vec<u8> = if oid == OID_SKID {
            yasna::construct_der(|w| w.write_bytes(&key_id(c.spki)))
        } else if oid == OID_AKID {
            match c.issuer_key_id {
                // The same CA as before: its old value (which may also name the CA's issuer and
                // serial, as easy-rsa writes it) still describes it.
                Some(id) if akid_key_id(old).as_deref() == Some(id) => ext.value.to_vec(),
                Some(id) => yasna::construct_der(|w| {
                    w.write_sequence(|w| {
                        w.next()
                            .write_tagged_implicit(Tag::context(0), |w| w.write_bytes(id))
                    })
                }),
                None => ext.value.to_vec(),
            }
        } else {
            ext.value.to_vec()
        };
        out.push(yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_oid(&ObjectIdentifier::from_slice(&oid));
                if ext.critical {
                    w.next().write_bool(true);
                }
                w.next().write_bytes(&value);
            })
        }));
    }
    Ok(out)
}

/// A non-critical AuthorityKeyIdentifier holding only `id`.
fn akid_extension(id: &[u8]) -> Vec<u8> {
    let value = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next()
                .write_tagged_implicit(Tag::context(0), |w| w.write_bytes(id))
        })
    });
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_oid(&ObjectIdentifier::from_slice(OID_AKID));
            w.next().write_bytes(&value);
        })
    })
}

fn akid_key_id(old: &X509Certificate<'_>) -> Option<Vec<u8>> {
    old.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

/// RFC 5280 §4.2.1.2 method 1 (what Go, and so kubeadm, uses): SHA-1 of the subjectPublicKey bits.
pub fn key_id(spki_der: &[u8]) -> Vec<u8> {
    let bits = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map(|(_, s)| s.subject_public_key.data.to_vec())
        .unwrap_or_default();
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &bits)
        .as_ref()
        .to_vec()
}
