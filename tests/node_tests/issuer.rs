//! The local issuer against real kubeadm and RKE2 sets (re-signed with generated CA keys,
//! tests/fixtures/README.md): every renewed certificate verifies with
//! `openssl verify`, and differs from the old one only in serial, validity and key.
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).

use crate::support;

use std::time::Duration;

use certrotd::inventory::{Inventory, KeyState};
use certrotd::issuer::local::LocalCa;
use certrotd::issuer::{IssueRequest, Issuer};
use certrotd::pki::cert::Cert;
use certrotd::pki::encode::{self, KeySpec};
use certrotd::pki::key::PrivateKey;
use certrotd::pki::pem;
use rcgen::PublicKeyData as _;
use support::renewal::comparable_text;
use support::*;
use time::OffsetDateTime;

fn local_ca(inv: &Inventory, name: &str) -> LocalCa {
    let e = inv.get(name).unwrap();
    assert_eq!(e.key, KeyState::Match, "{name} key");
    let key_path = e.key_path.as_ref().unwrap();
    let blocks = pem::blocks(key_path, &std::fs::read(key_path).unwrap()).unwrap();
    LocalCa::new(
        name,
        e.cert.clone().unwrap(),
        PrivateKey::from_blocks(&blocks).unwrap(),
    )
    .unwrap()
}

fn renew_all_and_judge(inv: &Inventory, now: OffsetDateTime) -> usize {
    let mut renewed = 0;
    for e in inv
        .entries
        .iter()
        .filter(|e| !e.is_ca() && !e.externally_managed)
    {
        let Some(signer) = &e.signer else { continue };
        let ca = local_ca(inv, signer);
        let old = e.cert.as_ref().unwrap();
        let spec = match old.key_algorithm {
            certrotd::pki::cert::KeyAlgorithm::Rsa(bits) => KeySpec::Rsa(bits),
            certrotd::pki::cert::KeyAlgorithm::EcdsaP256 => KeySpec::EcdsaP256,
            other => panic!("unexpected {other}"),
        };
        let key = encode::generate(spec).unwrap();
        let issued = ca
            .issue(&IssueRequest {
                template: old,
                spki: &key.subject_public_key_info(),
                validity: Duration::from_secs(365 * 86400),
                now,
            })
            .unwrap();
        let new = Cert::from_der(&issued.der).unwrap();
        // Our own parser: same subject bytes, issuer is the CA's subject, new serial and key.
        assert_eq!(new.subject_der, old.subject_der, "{}", e.name);
        assert_eq!(new.issuer_der, ca.ca().subject_der, "{}", e.name);
        assert_eq!(new.sans, old.sans, "{}", e.name);
        assert_eq!(new.key_usages, old.key_usages, "{}", e.name);
        assert_eq!(new.ext_key_usages, old.ext_key_usages, "{}", e.name);
        assert_eq!(
            new.has_basic_constraints, old.has_basic_constraints,
            "{}",
            e.name
        );
        assert_ne!(new.serial, old.serial);
        assert_ne!(new.public_key, old.public_key);
        assert!(new.is_signed_by(ca.ca()), "{}", e.name);
        assert_eq!(
            (new.not_before - (now - time::Duration::minutes(5))).whole_seconds(),
            0
        );
        // openssl: verifies against the CA, and its text differs only where allowed.
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = dir.path().join("ca.pem");
        let leaf_pem = dir.path().join("leaf.pem");
        std::fs::write(&ca_pem, encode::cert_pem(&ca.ca().der)).unwrap();
        std::fs::write(&leaf_pem, encode::cert_pem(&issued.der)).unwrap();
        let out = openssl(
            &[
                "verify",
                "-CAfile",
                ca_pem.to_str().unwrap(),
                leaf_pem.to_str().unwrap(),
            ],
            None,
        );
        assert!(out.trim().ends_with(": OK"), "{}: {out}", e.name);
        assert_eq!(
            comparable_text(&issued.der),
            comparable_text(&old.der),
            "{}",
            e.name
        );
        renewed += 1;
    }
    renewed
}

#[test]
fn kubeadm_v1_29_leaves_renew_faithfully() {
    let root = kubeadm_resigned_root("kubeadm-zeta");
    let inv = scan(root.path(), None, &[]);
    // The fixture's leaves are long expired; renew "now" within the CAs' lifetime.
    let now = OffsetDateTime::now_utc();
    assert_eq!(renew_all_and_judge(&inv, now), 11);
}

#[test]
fn kubeadm_v1_16_leaves_without_extensions_renew_faithfully() {
    let root = kubeadm_resigned_root("kubeadm-maxxmoney");
    let inv = scan(root.path(), None, &[]);
    assert_eq!(renew_all_and_judge(&inv, OffsetDateTime::now_utc()), 11);
}

#[test]
fn rke2_ecdsa_ca_renews_an_rsa_v1_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&resigned().join("rke2-kubelabs"), &tmp.path().join("fx"));
    let inv = scan(
        tmp.path(),
        Some(vec![]),
        &["/fx/server-ca.crt", "/fx/history-0efac49/*.crt"],
    );
    assert_eq!(renew_all_and_judge(&inv, OffsetDateTime::now_utc()), 1);
}

#[test]
fn lifetime_is_clamped_to_the_ca() {
    let root = kubeadm_resigned_root("kubeadm-zeta");
    let inv = scan(root.path(), None, &[]);
    let ca = local_ca(&inv, "ca");
    let old = inv.get("apiserver").unwrap().cert.as_ref().unwrap();
    let key = encode::generate(KeySpec::Rsa(2048)).unwrap();
    let now = ca.ca().not_after - time::Duration::days(10);
    let issued = ca
        .issue(&IssueRequest {
            template: old,
            spki: &key.subject_public_key_info(),
            validity: Duration::from_secs(365 * 86400),
            now,
        })
        .unwrap();
    assert_eq!(
        Cert::from_der(&issued.der).unwrap().not_after,
        ca.ca().not_after
    );
    assert!(issued.notes[0].contains("clamped"), "{:?}", issued.notes);
    let err = ca
        .issue(&IssueRequest {
            template: old,
            spki: &key.subject_public_key_info(),
            validity: Duration::from_secs(86400),
            now: ca.ca().not_after + time::Duration::days(1),
        })
        .unwrap_err();
    assert!(err.to_string().contains("has expired"), "{err}");
}
