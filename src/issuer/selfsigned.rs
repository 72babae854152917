//! Regenerating the kubelet's self-signed serving certificate.
//!
//! client-go's `GenerateSelfSignedCertKey` makes a throwaway CA (`<host>-ca@<unix time>`), signs the
//! serving certificate (`<host>@<unix time>`) with it, writes both into `kubelet.crt` and discards
//! the CA's key. Such a certificate cannot be renewed from a CA, so it is regenerated the same way:
//! a fresh CA key and a fresh CA, the leaf signed by it, every attribute copied byte for byte from
//! the old pair (through `tbs`) except serial, validity, keys, key identifiers and the creation time
//! in the CNs.

use std::time::Duration;

use time::OffsetDateTime;
use x509_parser::oid_registry::OID_X509_COMMON_NAME;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;
use yasna::models::ObjectIdentifier;

use super::IssueError;
use super::local::random_serial;
use super::tbs::{self, Changes};
use crate::pki::cert::Cert;

/// client-go starts the validity an hour before now ("to avoid flakes due to clock skew").
pub const BACKDATE: time::Duration = time::Duration::hours(1);

/// What to regenerate.
pub struct SelfSignedRequest<'a> {
    /// The old serving certificate.
    pub leaf: &'a Cert,
    /// The old throwaway CA that signed it.
    pub ca: &'a Cert,
    /// The SubjectPublicKeyInfo DER of the serving certificate's key (new or reused).
    pub leaf_spki: &'a [u8],
    /// The new throwaway CA's key (used once here, then dropped by the caller).
    pub ca_key: &'a rcgen::KeyPair,
    /// Lifetime of both certificates.
    pub validity: Duration,
    /// The time of issue.
    pub now: OffsetDateTime,
}

/// A regenerated serving certificate and the CA that signed it.
#[derive(Debug, Clone)]
pub struct Regenerated {
    /// The new serving certificate.
    pub leaf_der: Vec<u8>,
    /// The new throwaway CA.
    pub ca_der: Vec<u8>,
}

/// Regenerates a self-signed serving certificate and its CA.
pub fn regenerate(req: &SelfSignedRequest<'_>) -> Result<Regenerated, IssueError> {
    use rcgen::PublicKeyData as _;
    let not_before = req.now - BACKDATE;
    let not_after = super::valid_until(req.now, req.validity)?;
    let ts = req.now.unix_timestamp();
    let ca_subject = restamp(&req.ca.subject_der, ts).unwrap_or_else(|| req.ca.subject_der.clone());
    let leaf_subject = restamp(&req.leaf.subject_der, ts);
    let ca_spki = req.ca_key.subject_public_key_info();
    let ca_key_id = tbs::key_id(&ca_spki);

    let ca_der = tbs::renew_with_subject(
        &req.ca.der,
        Some(&ca_subject),
        &Changes {
            serial: random_serial(),
            not_before,
            not_after,
            spki: &ca_spki,
            issuer_subject: &ca_subject,
            issuer_key_id: Some(&ca_key_id),
        },
        req.ca_key,
    )?;
    let leaf_der = tbs::renew_with_subject(
        &req.leaf.der,
        leaf_subject.as_deref(),
        &Changes {
            serial: random_serial(),
            not_before,
            not_after,
            spki: req.leaf_spki,
            issuer_subject: &ca_subject,
            // Always the new CA's: the old value names a key that no longer exists.
            issuer_key_id: Some(&ca_key_id),
        },
        req.ca_key,
    )?;
    Ok(Regenerated { leaf_der, ca_der })
}

/// A subject `CN=<text>@<unix time>` (client-go's only shape) with the time replaced by `ts`;
/// `None` for any other subject, which is then kept as it was.
pub fn restamp(subject_der: &[u8], ts: i64) -> Option<Vec<u8>> {
    let (_, name) = X509Name::from_der(subject_der).ok()?;
    let mut attrs = name.iter_attributes();
    let cn = attrs.next()?;
    if attrs.next().is_some()
        || name.iter_rdn().count() != 1
        || *cn.attr_type() != OID_X509_COMMON_NAME
    {
        return None;
    }
    let text = cn.as_str().ok()?;
    let (head, old_ts) = text.rsplit_once('@')?;
    if head.is_empty() || old_ts.is_empty() || !old_ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let new = format!("{head}@{ts}");
    let utf8 = cn.attr_value().tag() == x509_parser::der_parser::asn1_rs::Tag::Utf8String;
    // '@' is not a PrintableString character, so Go always writes these as UTF8String.
    if !utf8 {
        return None;
    }
    Some(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_set(|w| {
                w.next().write_sequence(|w| {
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(&[2, 5, 4, 3]));
                    w.next().write_utf8_string(&new);
                })
            })
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(cn: &str) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_set(|w| {
                    w.next().write_sequence(|w| {
                        w.next()
                            .write_oid(&ObjectIdentifier::from_slice(&[2, 5, 4, 3]));
                        w.next().write_utf8_string(cn);
                    })
                })
            })
        })
    }

    #[test]
    fn restamps_client_go_names_only() {
        let out = restamp(&name("node-1-ca@1700000000"), 1800000000).unwrap();
        assert_eq!(out, name("node-1-ca@1800000000"));
        assert!(restamp(&name("kube-apiserver"), 1).is_none());
        assert!(restamp(&name("a@b"), 1).is_none());
        assert!(restamp(&name("@123"), 1).is_none());
    }
}
