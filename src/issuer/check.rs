//! Checking what a remote CA sent back before anything is made of it.
//!
//! A remote CA is another party: its profile may add or drop usages, rewrite the subject or the
//! SANs, sign with another CA, or answer with somebody else's certificate. certrotd installs only
//! a certificate that is the old one renewed: the same subject (DER), the same SANs, the key it
//! asked for, at least the old usages, signed by the CA the old one chained to (its issuer Name
//! that CA's subject byte for byte, as Go chains), valid now, and with no critical extension
//! certrotd does not understand (its consumers would refuse it, or obey a constraint unchecked).

use std::collections::BTreeSet;

use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::pki::cert::{Cert, San};

use super::CLOCK_SKEW as SKEW;

/// The extensions certrotd understands, and so accepts as critical in an answer: those it checks
/// above (basic constraints, key usage, extended key usage, subject alternative names) and the
/// key identifiers, which only name keys. Anything else marked critical is a constraint whose
/// meaning certrotd cannot check, and which Go's verifier refuses as an unhandled critical
/// extension when it does not know it either.
const KNOWN_CRITICAL: &[(&str, &str)] = &[
    ("2.5.29.19", "basicConstraints"),
    ("2.5.29.15", "keyUsage"),
    ("2.5.29.37", "extKeyUsage"),
    ("2.5.29.17", "subjectAltName"),
    ("2.5.29.14", "subjectKeyIdentifier"),
    ("2.5.29.35", "authorityKeyIdentifier"),
];

/// What is wrong with an answer: every difference, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the remote CA's certificate differs from what was asked for: {}", .0.join("; "))]
pub struct Altered(pub Vec<String>);

/// Checks the remote CA's answer `der` against the certificate it renews (`template`), the key
/// asked for (`spki`) and the CA it must chain to. Returns the parsed certificate.
pub fn answer(
    der: &[u8],
    template: &Cert,
    spki: &[u8],
    ca: &Cert,
    now: OffsetDateTime,
) -> Result<Cert, Altered> {
    let new =
        Cert::from_der(der).map_err(|e| Altered(vec![format!("it is not a certificate ({e})")]))?;
    let mut diffs = Vec::new();
    if new.subject_der != template.subject_der {
        diffs.push(format!(
            "subject is \"{}\", not \"{}\"{}",
            new.subject,
            template.subject,
            if new.subject == template.subject {
                " (same text, different encoding)"
            } else {
                ""
            }
        ));
    }
    let sans = |c: &Cert| c.sans.iter().cloned().collect::<BTreeSet<San>>();
    let (got, want) = (sans(&new), sans(template));
    if got != want {
        let list = |s: Vec<&San>| {
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let added: Vec<&San> = got.difference(&want).collect();
        let missing: Vec<&San> = want.difference(&got).collect();
        let mut d = String::from("SANs differ:");
        if !added.is_empty() {
            d.push_str(&format!(" added {}", list(added)));
        }
        if !missing.is_empty() {
            d.push_str(&format!(" missing {}", list(missing)));
        }
        diffs.push(d);
    }
    if new.spki_der != spki {
        diffs.push("it certifies another public key than the one requested".into());
    }
    let lacking = |have: &[String], need: &[String]| -> Vec<String> {
        need.iter().filter(|u| !have.contains(u)).cloned().collect()
    };
    let ku = lacking(&new.key_usages, &template.key_usages);
    if !ku.is_empty() {
        diffs.push(format!("key usages lack {}", ku.join(", ")));
    }
    let eku = lacking(&new.ext_key_usages, &template.ext_key_usages);
    if !eku.is_empty() {
        diffs.push(format!("extended key usages lack {}", eku.join(", ")));
    }
    if new.is_ca {
        diffs.push("it is a CA certificate (CA:TRUE)".into());
    }
    if !new.names_as_issuer(ca) && new.issuer == ca.subject {
        diffs.push(format!(
            "its issuer \"{}\" is the CA's subject in text but not in DER (another encoding): \
             Kubernetes components would not chain it to the CA",
            new.issuer
        ));
    } else if !new.is_signed_by(ca) {
        diffs.push(format!(
            "it is not signed by the CA \"{}\" the old certificate chained to (issuer \"{}\")",
            ca.subject, new.issuer
        ));
    }
    diffs.extend(unknown_critical(der));
    if new.not_before > now + SKEW {
        diffs.push(format!(
            "it is valid only from {}",
            crate::timefmt::rfc3339(new.not_before)
        ));
    }
    if new.not_after <= now {
        diffs.push(format!(
            "it expired at {}",
            crate::timefmt::rfc3339(new.not_after)
        ));
    }
    if new.not_after > ca.not_after {
        diffs.push(format!(
            "it outlives its CA ({} > {})",
            crate::timefmt::rfc3339(new.not_after),
            crate::timefmt::rfc3339(ca.not_after)
        ));
    }
    if diffs.is_empty() {
        Ok(new)
    } else {
        Err(Altered(diffs))
    }
}

/// Every critical extension of `der` that certrotd does not understand, named by its OID.
fn unknown_critical(der: &[u8]) -> Vec<String> {
    // `der` parsed as a Cert above, so x509-parser reads it again; if it somehow does not, the
    // answer is refused rather than waved through.
    let Ok((_, x)) = X509Certificate::from_der(der) else {
        return vec!["its extensions cannot be read".into()];
    };
    x.extensions()
        .iter()
        .filter(|e| e.critical)
        .map(|e| e.oid.to_id_string())
        .filter(|oid| !KNOWN_CRITICAL.iter().any(|(known, _)| known == oid))
        .map(|oid| {
            format!(
                "it carries a critical extension certrotd does not know (OID {oid}); its \
                 consumers could refuse it, and certrotd cannot check what it constrains"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::local::LocalCa;
    use crate::issuer::{IssueRequest, Issuer as _};
    use crate::pki::encode::{self, KeySpec};
    use crate::pki::key::PrivateKey;
    use rcgen::PublicKeyData as _;

    /// A sandbox node's CAs and leaves, read back.
    struct Pki {
        _tmp: tempfile::TempDir,
        inv: crate::inventory::Inventory,
        now: OffsetDateTime,
    }

    fn pki() -> Pki {
        let tmp = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let opts = crate::sandbox::SandboxOptions {
            key: KeySpec::EcdsaP256,
            ..Default::default()
        };
        crate::sandbox::write(tmp.path(), &opts, now).unwrap();
        let root = crate::root::Root::new(tmp.path());
        let inv = crate::inventory::scan(&crate::inventory::ScanRequest {
            root: &root,
            layouts: None,
            extra_paths: &[],
        });
        Pki {
            _tmp: tmp,
            inv,
            now,
        }
    }

    impl Pki {
        fn cert(&self, name: &str) -> Cert {
            self.inv.get(name).unwrap().cert.clone().unwrap()
        }

        fn ca(&self, name: &str) -> LocalCa {
            let e = self.inv.get(name).unwrap();
            let path = e.key_path.as_ref().unwrap();
            let blocks = crate::pki::pem::blocks(path, &std::fs::read(path).unwrap()).unwrap();
            LocalCa::new(
                name,
                self.cert(name),
                PrivateKey::from_blocks(&blocks).unwrap(),
            )
            .unwrap()
        }

        /// `template` renewed by the CA `ca` for a new key.
        fn renewed(&self, template: &Cert, ca: &str) -> (Vec<u8>, Vec<u8>) {
            let spki = encode::generate(KeySpec::EcdsaP256)
                .unwrap()
                .subject_public_key_info();
            let der = self
                .ca(ca)
                .issue(&IssueRequest {
                    template,
                    spki: &spki,
                    validity: std::time::Duration::from_secs(86400 * 365),
                    now: self.now,
                })
                .unwrap()
                .der;
            (der, spki)
        }
    }

    #[test]
    fn a_faithful_renewal_passes() {
        let p = pki();
        let old = p.cert("apiserver");
        let (der, spki) = p.renewed(&old, "ca");
        let new = answer(&der, &old, &spki, &p.cert("ca"), p.now).unwrap();
        assert_eq!(new.subject_der, old.subject_der);
    }

    #[test]
    fn every_difference_is_named() {
        let p = pki();
        let api = p.cert("apiserver");
        // Another certificate's renewal: other subject, SANs and usages.
        let (der, spki) = p.renewed(&p.cert("apiserver-kubelet-client"), "ca");
        let e = answer(&der, &api, &spki, &p.cert("ca"), p.now).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("CN=kube-apiserver-kubelet-client\", not \"CN=kube-apiserver\""),
            "{text}"
        );
        assert!(
            text.contains("SANs differ: missing DNS:kubernetes"),
            "{text}"
        );
        assert!(
            text.contains("extended key usages lack serverAuth"),
            "{text}"
        );
        // Another key than the one asked for.
        let (der, _) = p.renewed(&api, "ca");
        let other = encode::generate(KeySpec::EcdsaP256)
            .unwrap()
            .subject_public_key_info();
        let e = answer(&der, &api, &other, &p.cert("ca"), p.now).unwrap_err();
        assert_eq!(
            e.0,
            ["it certifies another public key than the one requested"]
        );
        // Another CA (of the same name would not help either: the signature is checked).
        let (der, spki) = p.renewed(&api, "front-proxy-ca");
        let e = answer(&der, &api, &spki, &p.cert("ca"), p.now).unwrap_err();
        assert!(
            e.to_string()
                .contains("not signed by the CA \"CN=kubernetes\""),
            "{e}"
        );
        // Not valid yet, or no longer.
        let (der, spki) = p.renewed(&api, "ca");
        let e = answer(
            &der,
            &api,
            &spki,
            &p.cert("ca"),
            p.now - time::Duration::hours(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("valid only from"), "{e}");
        let e = answer(
            &der,
            &api,
            &spki,
            &p.cert("ca"),
            p.now + time::Duration::days(400),
        )
        .unwrap_err();
        assert!(e.to_string().contains("expired at"), "{e}");
        // Not a certificate at all.
        let e = answer(b"garbage", &api, &spki, &p.cert("ca"), p.now).unwrap_err();
        assert!(e.to_string().contains("it is not a certificate"), "{e}");
    }

    /// A small PKI made with rcgen alone, so that names' encodings and extensions are chosen.
    mod crafted {
        use rcgen::{
            BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
            DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        use time::OffsetDateTime;

        /// A CA certificate for `key` named CN=kubernetes, the CN encoded as `cn`.
        pub fn ca(key: &KeyPair, cn: DnValue, now: OffsetDateTime) -> (CertificateParams, Vec<u8>) {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(3650);
            let der = p.self_signed(key).unwrap().der().to_vec();
            (p, der)
        }

        /// A kube-apiserver serving leaf for `key` signed by (`ca`, `ca_key`), with `extra`
        /// extensions.
        pub fn leaf(
            key: &KeyPair,
            ca: &CertificateParams,
            ca_key: &KeyPair,
            extra: Vec<CustomExtension>,
            now: OffsetDateTime,
        ) -> Vec<u8> {
            let mut p = CertificateParams::new(vec!["kubernetes".to_owned()]).unwrap();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name
                .push(DnType::CommonName, "kube-apiserver");
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.not_before = now - time::Duration::hours(1);
            p.not_after = now + time::Duration::days(365);
            p.custom_extensions = extra;
            let issuer = Issuer::from_params(ca, ca_key);
            p.signed_by(key, &issuer).unwrap().der().to_vec()
        }

        /// A critical extension under a private OID no one knows.
        pub fn unknown_critical() -> CustomExtension {
            let mut e =
                CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00]);
            e.set_criticality(true);
            e
        }

        pub fn printable(s: &str) -> DnValue {
            DnValue::PrintableString(s.try_into().unwrap())
        }

        pub fn utf8(s: &str) -> DnValue {
            DnValue::Utf8String(s.to_owned())
        }
    }

    #[test]
    fn an_issuer_that_prints_like_the_ca_but_differs_in_der_is_refused() {
        use crafted::*;
        let now = OffsetDateTime::now_utc();
        let ca_key = encode::generate(KeySpec::EcdsaP256).unwrap();
        // One key, two encodings of its CA's name: text comparison cannot tell them apart.
        let (utf8_params, utf8_der) = ca(&ca_key, utf8("kubernetes"), now);
        let (printable_params, printable_der) = ca(&ca_key, printable("kubernetes"), now);
        let ca_cert = Cert::from_der(&utf8_der).unwrap();
        let other = Cert::from_der(&printable_der).unwrap();
        assert_eq!(ca_cert.subject, other.subject, "they print the same");
        assert_ne!(ca_cert.subject_der, other.subject_der);

        let old_key = encode::generate(KeySpec::EcdsaP256).unwrap();
        let template = Cert::from_der(&leaf(&old_key, &utf8_params, &ca_key, vec![], now)).unwrap();
        let key = encode::generate(KeySpec::EcdsaP256).unwrap();
        let spki = key.subject_public_key_info();

        let faithful = leaf(&key, &utf8_params, &ca_key, vec![], now);
        answer(&faithful, &template, &spki, &ca_cert, now).unwrap();

        let reencoded = leaf(&key, &printable_params, &ca_key, vec![], now);
        let e = answer(&reencoded, &template, &spki, &ca_cert, now).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(
            e.0[0].contains("the CA's subject in text but not in DER"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_critical_extension_is_refused_naming_its_oid() {
        use crafted::*;
        let now = OffsetDateTime::now_utc();
        let ca_key = encode::generate(KeySpec::EcdsaP256).unwrap();
        let (ca_params, ca_der) = ca(&ca_key, utf8("kubernetes"), now);
        let ca_cert = Cert::from_der(&ca_der).unwrap();
        let old_key = encode::generate(KeySpec::EcdsaP256).unwrap();
        let template = Cert::from_der(&leaf(&old_key, &ca_params, &ca_key, vec![], now)).unwrap();
        let key = encode::generate(KeySpec::EcdsaP256).unwrap();
        let spki = key.subject_public_key_info();

        // The same extension, not critical, is no reason to refuse.
        let mut benign = unknown_critical();
        benign.set_criticality(false);
        let der = leaf(&key, &ca_params, &ca_key, vec![benign], now);
        answer(&der, &template, &spki, &ca_cert, now).unwrap();

        let der = leaf(&key, &ca_params, &ca_key, vec![unknown_critical()], now);
        let e = answer(&der, &template, &spki, &ca_cert, now).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(
            e.0[0].contains("critical extension certrotd does not know (OID 1.3.6.1.4.1.55555.1)"),
            "{e}"
        );
    }
}
