//! Checking what a remote CA sent back before anything is made of it.
//!
//! A remote CA is another party: its profile may add or drop usages, rewrite the subject or the
//! SANs, sign with another CA, or answer with somebody else's certificate. certrotd installs only
//! a certificate that is the old one renewed: the same subject (DER), the same SANs, the key it
//! asked for, at least the old usages, signed by the CA the old one chained to, valid now.

use std::collections::BTreeSet;

use time::OffsetDateTime;

use crate::pki::cert::{Cert, San};

use super::CLOCK_SKEW as SKEW;

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
    if !new.is_signed_by(ca) {
        diffs.push(format!(
            "it is not signed by the CA \"{}\" the old certificate chained to (issuer \"{}\")",
            ca.subject, new.issuer
        ));
    }
    if new.not_before > now + SKEW {
        diffs.push(format!(
            "it is valid only from {}",
            crate::report::rfc3339(new.not_before)
        ));
    }
    if new.not_after <= now {
        diffs.push(format!(
            "it expired at {}",
            crate::report::rfc3339(new.not_after)
        ));
    }
    if new.not_after > ca.not_after {
        diffs.push(format!(
            "it outlives its CA ({} > {})",
            crate::report::rfc3339(new.not_after),
            crate::report::rfc3339(ca.not_after)
        ));
    }
    if diffs.is_empty() {
        Ok(new)
    } else {
        Err(Altered(diffs))
    }
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
        let inv = crate::inventory::scan(&crate::inventory::Request {
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
}
