//! The inventory against certificate sets that real kubeadm, RKE2, k3s and easy-rsa installations
//! generated (tests/fixtures): every certificate found, every signer right, and every parsed field
//! in agreement with openssl, on the certificates as those clusters wrote them; every key checked
//! on the same sets re-signed with generated keys (tests/fixtures/README.md), which are shown to
//! differ from the real ones in nothing but keys and signatures.
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).

use crate::support;

use std::collections::BTreeMap;

use certrotd::inventory::{Inventory, KeyState, Origin};
use certrotd::pki::layout::{Component, Layout};
use support::*;

fn signers(inv: &Inventory) -> BTreeMap<String, Option<String>> {
    inv.entries
        .iter()
        .map(|e| (e.name.clone(), e.signer.clone()))
        .collect()
}

fn expect_signers(inv: &Inventory, expected: &[(&str, &str)]) {
    let got = signers(inv);
    for (name, signer) in expected {
        assert_eq!(
            got.get(*name).cloned().flatten().as_deref(),
            Some(*signer),
            "signer of {name}; inventory: {got:?}"
        );
    }
}

const KUBEADM_SIGNERS: &[(&str, &str)] = &[
    ("ca", "ca"),
    ("apiserver", "ca"),
    ("apiserver-kubelet-client", "ca"),
    ("front-proxy-ca", "front-proxy-ca"),
    ("front-proxy-client", "front-proxy-ca"),
    ("etcd-ca", "etcd-ca"),
    ("etcd-server", "etcd-ca"),
    ("etcd-peer", "etcd-ca"),
    ("etcd-healthcheck-client", "etcd-ca"),
    ("apiserver-etcd-client", "etcd-ca"),
    ("admin.conf", "ca"),
    ("controller-manager.conf", "ca"),
    ("scheduler.conf", "ca"),
];

/// What the certificates alone show: layout, signers, CAs, consumers, openssl's agreement.
fn assert_kubeadm_certs(inv: &Inventory) {
    assert_eq!(inv.layouts, vec![Layout::Kubeadm]);
    expect_signers(inv, KUBEADM_SIGNERS);
    for ca in ["ca", "front-proxy-ca", "etcd-ca"] {
        assert!(inv.get(ca).unwrap().is_ca(), "{ca} is a CA");
    }
    // The five kubeconfigs embed ca.crt; those copies must not show up as further CAs.
    let cas: Vec<&str> = inv
        .entries
        .iter()
        .filter(|e| e.is_ca())
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(cas, vec!["ca", "front-proxy-ca", "etcd-ca"]);
    assert_eq!(
        inv.get("apiserver").unwrap().consumers,
        vec![Component::KubeApiserver]
    );
    assert_eq!(
        inv.get("etcd-server").unwrap().consumers,
        vec![Component::Etcd]
    );
    assert!(inv.get("admin.conf").unwrap().consumers.is_empty());
    assert_agrees_with_openssl(inv);
}

/// The real set holds no private key: a CA's may live elsewhere, every other one is reported
/// missing (the kubeconfigs' embedded ones are blanked), and every certificate is external.
fn assert_kubeadm_keys_missing(inv: &Inventory) {
    for (name, signer) in KUBEADM_SIGNERS {
        let e = inv.get(name).unwrap();
        assert!(e.externally_managed, "{name}: no CA key is here");
        if name == signer {
            assert_eq!(e.key, KeyState::Absent, "{name}: key");
            assert!(e.problems.is_empty(), "{name}: {:?}", e.problems);
        } else {
            assert_eq!(e.key, KeyState::Broken, "{name}: key");
            assert!(
                e.problems.len() == 1
                    && (e.problems[0].ends_with(".key: private key not found")
                        || e.problems[0].ends_with(".conf: no PEM block found")),
                "{name}: {:?}",
                e.problems
            );
        }
    }
    // The service-account pair is found by its private key, which is not here.
    assert!(inv.key_pairs.is_empty(), "{:?}", inv.key_pairs);
}

/// The re-signed set: every key here and matching, nothing external, no problem.
fn assert_kubeadm_keys(inv: &Inventory) {
    for (name, _) in KUBEADM_SIGNERS {
        let e = inv.get(name).unwrap();
        assert_eq!(e.key, KeyState::Match, "{name}: key");
        assert!(
            !e.externally_managed,
            "{name}: CA keys are all on this node"
        );
        assert!(e.problems.is_empty(), "{name}: {:?}", e.problems);
    }
    let sa = &inv.key_pairs[0];
    assert_eq!(sa.name, "sa");
    assert_eq!(sa.key_match, Some(true));
    assert_eq!(sa.key_algorithm.as_deref(), Some("RSA-2048"));
}

/// Scans a kubeadm set twice, as written and re-signed, and checks both.
fn kubeadm_node(set: &str) -> (Inventory, Inventory) {
    let real = kubeadm_fixture_root(set);
    let real = scan(real.path(), None, &[]);
    assert_kubeadm_certs(&real);
    assert_kubeadm_keys_missing(&real);
    let resigned = kubeadm_resigned_root(set);
    let resigned = scan(resigned.path(), None, &[]);
    assert_kubeadm_certs(&resigned);
    assert_kubeadm_keys(&resigned);
    assert_resigned_from(&real, &resigned);
    (real, resigned)
}

#[test]
fn kubeadm_v1_29_node() {
    let (inv, resigned) = kubeadm_node("kubeadm-zeta");
    for inv in [&inv, &resigned] {
        expect_signers(inv, &[("super-admin.conf", "ca")]);
        let admin = inv.get("admin.conf").unwrap();
        assert!(matches!(admin.origin, Origin::KubeconfigEmbedded { .. }));
        assert_eq!(
            admin.cert.as_ref().unwrap().organizations,
            vec!["kubeadm:cluster-admins"]
        );
        // v1.29 kubelet.conf references the kubelet's rotated certificate, which this set lacks.
        let kubelet = inv.get("kubelet.conf").unwrap();
        assert!(matches!(kubelet.origin, Origin::KubeconfigReference { .. }));
        assert!(kubelet.cert.is_none());
        assert!(
            kubelet.problems[0].contains("/var/lib/kubelet/pki/kubelet-client-current.pem"),
            "{:?}",
            kubelet.problems
        );
    }
}

#[test]
fn kubeadm_v1_16_node() {
    let (inv, resigned) = kubeadm_node("kubeadm-maxxmoney");
    for inv in [&inv, &resigned] {
        expect_signers(inv, &[("kubelet.conf", "ca")]);
        let k = inv.get("kubelet.conf").unwrap();
        assert!(matches!(k.origin, Origin::KubeconfigEmbedded { .. }));
        assert_eq!(
            inv.get("etcd-healthcheck-client")
                .unwrap()
                .cert
                .as_ref()
                .unwrap()
                .organizations,
            vec!["system:masters"]
        );
        // v1.16 leaves carry no basic constraints at all.
        assert!(
            !inv.get("apiserver")
                .unwrap()
                .cert
                .as_ref()
                .unwrap()
                .has_basic_constraints
        );
    }
    // Its kubelet.conf embeds its key: blanked in the copy, generated in the re-signed set.
    assert_eq!(inv.get("kubelet.conf").unwrap().key, KeyState::Broken);
    assert_eq!(resigned.get("kubelet.conf").unwrap().key, KeyState::Match);
}

/// A set placed at /fx of a node root, scanned through `extra` paths only.
fn scan_at_fx(set: &std::path::Path, extra: &[&str]) -> (tempfile::TempDir, Inventory) {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(set, &tmp.path().join("fx"));
    let inv = scan(tmp.path(), Some(vec![]), extra);
    (tmp, inv)
}

const RKE2_PATHS: &[&str] = &[
    "/fx/*.crt",
    "/fx/*.kubeconfig",
    "/fx/new-config",
    "/fx/history-0efac49/*.crt",
];

#[test]
fn rke2_files_and_mismatched_user_pair() {
    let (_real_dir, real) = scan_at_fx(&fixtures().join("rke2-kubelabs"), RKE2_PATHS);
    let (_dir, inv) = scan_at_fx(&resigned().join("rke2-kubelabs"), RKE2_PATHS);
    for inv in [&real, &inv] {
        let signer = |name: &str| inv.get(name).unwrap().signer.clone();
        assert_eq!(signer("carlos.crt").as_deref(), Some("server-ca.crt"));
        assert_eq!(
            signer("/fx/history-0efac49/carlos.crt").as_deref(),
            Some("server-ca.crt")
        );
        // new-config: a leaf + client CA bundle, signed by the bundled CA.
        assert_eq!(signer("new-config").as_deref(), Some("new-config:ca"));
        assert!(inv.get("new-config:prod").unwrap().is_ca());
        assert!(inv.get("client-ca.crt").unwrap().externally_managed);
        assert!(inv.get("new-config").unwrap().externally_managed);
        assert_agrees_with_openssl(inv);
    }
    // As written: no key at all, so server-ca is external too.
    assert!(real.warnings.is_empty(), "{:?}", real.warnings);
    assert_eq!(real.get("carlos.crt").unwrap().key, KeyState::Absent);
    assert_eq!(real.get("carlos.kubeconfig").unwrap().key, KeyState::Broken);
    assert_eq!(real.get("new-config").unwrap().key, KeyState::Broken);
    assert!(real.get("server-ca.crt").unwrap().externally_managed);
    assert_resigned_from(&real, &inv);

    assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    let carlos = inv.get("carlos.crt").unwrap();
    assert_eq!(
        carlos.key,
        KeyState::Mismatch,
        "the committed key is not carlos.crt's"
    );
    assert!(carlos.problems.iter().any(|p| p.contains("does not match")));
    let history = inv.get("/fx/history-0efac49/carlos.crt").unwrap();
    assert_eq!(history.key, KeyState::Match);
    // The kubeconfig references carlos.crt/carlos.key relative to itself.
    let kc = inv.get("carlos.kubeconfig").unwrap();
    assert!(matches!(kc.origin, Origin::KubeconfigReference { .. }));
    assert_eq!(kc.key, KeyState::Mismatch);
    // new-config's client CA key is not in the set, its own key is.
    assert_eq!(inv.get("new-config").unwrap().key, KeyState::Match);
    // server-ca's key is here (SEC1 ECDSA); client-ca's is not.
    assert_eq!(inv.get("server-ca.crt").unwrap().key, KeyState::Match);
    assert!(!inv.get("server-ca.crt").unwrap().externally_managed);
    assert!(!carlos.externally_managed, "server-ca's key is on the node");
}

#[test]
fn k3s_kubeconfig_with_bundle() {
    let mut scans = vec![];
    for set in [fixtures(), resigned()] {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(&set.join("k3s-jungen"), tmp.path());
        let inv = scan(tmp.path(), None, &[]);
        assert_eq!(inv.layouts, vec![Layout::K3s]);
        let e = inv.get("k3s.yaml").unwrap();
        assert_eq!(e.signer.as_deref(), Some("k3s.yaml:ca"));
        assert_eq!(
            e.cert.as_ref().unwrap().key_algorithm.to_string(),
            "ECDSA-P256"
        );
        assert!(inv.get("k3s.yaml:default").unwrap().is_ca());
        assert_agrees_with_openssl(&inv);
        scans.push(inv);
    }
    // Its embedded SEC1 key: blanked as written, generated in the re-signed set.
    assert_eq!(scans[0].get("k3s.yaml").unwrap().key, KeyState::Broken);
    assert_eq!(scans[1].get("k3s.yaml").unwrap().key, KeyState::Match);
    assert_resigned_from(&scans[0], &scans[1]);
}

#[test]
fn easyrsa_text_preamble_and_pkcs8_keys() {
    let (_real_dir, real) = scan_at_fx(&fixtures().join("variant-icp-easyrsa"), &["/fx/*.crt"]);
    let (_dir, inv) = scan_at_fx(&resigned().join("variant-icp-easyrsa"), &["/fx/*.crt"]);
    for inv in [&real, &inv] {
        assert_eq!(inv.entries.len(), 2);
        for e in &inv.entries {
            assert_eq!(e.signer, None, "{}: its CA is not in the set", e.name);
            assert!(e.externally_managed);
        }
        assert_agrees_with_openssl(inv);
    }
    for e in &inv.entries {
        assert_eq!(e.key, KeyState::Match, "{}: PKCS#8 key", e.name);
        assert!(e.problems.is_empty(), "{:?}", e.problems);
    }
    assert_resigned_from(&real, &inv);
}

#[test]
fn a_change_re_reads_that_file_only() {
    let root = kubeadm_fixture_root("kubeadm-zeta");
    let r = root.path();
    let mut inv = scan(r, None, &[]);
    let pki = r.join("etc/kubernetes/pki");
    for f in ["apiserver.crt", "front-proxy-client.crt"] {
        std::fs::remove_file(pki.join(f)).unwrap();
        std::fs::write(pki.join(f), b"broken").unwrap();
    }
    let req_root = certrotd::root::Root::new(r);
    let req = certrotd::inventory::ScanRequest {
        root: &req_root,
        layouts: None,
        extra_paths: &[],
    };
    // Only apiserver.crt is reported: only it is read again.
    inv.refresh(&req, &[pki.join("apiserver.crt")]);
    assert!(inv.get("apiserver").unwrap().cert.is_none());
    assert!(inv.get("front-proxy-client").unwrap().cert.is_some());
    assert_eq!(
        inv.get("front-proxy-client").unwrap().signer.as_deref(),
        Some("front-proxy-ca")
    );
    // A change no entry accounts for reads everything again.
    inv.refresh(&req, &[r.join("etc/somewhere/else")]);
    assert!(inv.get("front-proxy-client").unwrap().cert.is_none());
    assert_eq!(inv.entries.len(), scan(r, None, &[]).entries.len());
}
