//! The inventory against certificate sets that real kubeadm, RKE2, k3s and easy-rsa installations
//! generated (../shared/fixtures): every certificate found, every signer right, every key checked,
//! and every parsed field in agreement with openssl.
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

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

fn assert_kubeadm_node(inv: &Inventory) {
    assert_eq!(inv.layouts, vec![Layout::Kubeadm]);
    expect_signers(inv, KUBEADM_SIGNERS);
    for (name, _) in KUBEADM_SIGNERS {
        let e = inv.get(name).unwrap();
        assert_eq!(e.key, KeyState::Match, "{name}: key");
        assert!(
            !e.externally_managed,
            "{name}: CA keys are all on this node"
        );
        assert!(e.problems.is_empty(), "{name}: {:?}", e.problems);
    }
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
    let sa = &inv.key_pairs[0];
    assert_eq!(sa.name, "sa");
    assert_eq!(sa.key_match, Some(true));
    assert_eq!(sa.key_algorithm.as_deref(), Some("RSA-2048"));
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

#[test]
fn kubeadm_v1_29_node() {
    let root = kubeadm_fixture_root("kubeadm-zeta");
    let inv = scan(root.path(), None, &[]);
    assert_kubeadm_node(&inv);
    expect_signers(&inv, &[("super-admin.conf", "ca")]);
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

#[test]
fn kubeadm_v1_16_node() {
    let root = kubeadm_fixture_root("kubeadm-maxxmoney");
    let inv = scan(root.path(), None, &[]);
    assert_kubeadm_node(&inv);
    expect_signers(&inv, &[("kubelet.conf", "ca")]);
    let k = inv.get("kubelet.conf").unwrap();
    assert!(matches!(k.origin, Origin::KubeconfigEmbedded { .. }));
    assert_eq!(k.key, KeyState::Match);
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

#[test]
fn rke2_files_and_mismatched_user_pair() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixtures().join("rke2-kubelabs"), &tmp.path().join("fx"));
    let inv = scan(
        tmp.path(),
        Some(vec![]),
        &[
            "/fx/*.crt",
            "/fx/*.kubeconfig",
            "/fx/new-config",
            "/fx/history-0efac49/*.crt",
        ],
    );
    assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    let carlos = inv.get("carlos.crt").unwrap();
    assert_eq!(
        carlos.key,
        KeyState::Mismatch,
        "the committed key is not carlos.crt's"
    );
    assert!(carlos.problems.iter().any(|p| p.contains("does not match")));
    assert_eq!(carlos.signer.as_deref(), Some("server-ca.crt"));
    let history = inv.get("/fx/history-0efac49/carlos.crt").unwrap();
    assert_eq!(history.key, KeyState::Match);
    assert_eq!(history.signer.as_deref(), Some("server-ca.crt"));
    // The kubeconfig references carlos.crt/carlos.key relative to itself.
    let kc = inv.get("carlos.kubeconfig").unwrap();
    assert!(matches!(kc.origin, Origin::KubeconfigReference { .. }));
    assert_eq!(kc.key, KeyState::Mismatch);
    // new-config: a leaf + client CA bundle, signed by the bundled CA, whose key is not here.
    let nc = inv.get("new-config").unwrap();
    assert_eq!(nc.signer.as_deref(), Some("new-config:ca"));
    assert_eq!(nc.key, KeyState::Match);
    assert!(nc.externally_managed);
    assert!(inv.get("new-config:prod").unwrap().is_ca());
    // server-ca's key is here (SEC1 ECDSA); client-ca's is not.
    assert_eq!(inv.get("server-ca.crt").unwrap().key, KeyState::Match);
    assert!(!inv.get("server-ca.crt").unwrap().externally_managed);
    assert!(inv.get("client-ca.crt").unwrap().externally_managed);
    assert!(!carlos.externally_managed, "server-ca's key is on the node");
    assert_agrees_with_openssl(&inv);
}

#[test]
fn k3s_kubeconfig_with_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixtures().join("k3s-jungen"), tmp.path());
    let inv = scan(tmp.path(), None, &[]);
    assert_eq!(inv.layouts, vec![Layout::K3s]);
    let e = inv.get("k3s.yaml").unwrap();
    assert_eq!(e.key, KeyState::Match);
    assert_eq!(e.signer.as_deref(), Some("k3s.yaml:ca"));
    assert_eq!(
        e.cert.as_ref().unwrap().key_algorithm.to_string(),
        "ECDSA-P256"
    );
    assert!(inv.get("k3s.yaml:default").unwrap().is_ca());
    assert_agrees_with_openssl(&inv);
}

#[test]
fn easyrsa_text_preamble_and_pkcs8_keys() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(
        &fixtures().join("variant-icp-easyrsa"),
        &tmp.path().join("fx"),
    );
    let inv = scan(tmp.path(), Some(vec![]), &["/fx/*.crt"]);
    assert_eq!(inv.entries.len(), 2);
    for e in &inv.entries {
        assert_eq!(e.key, KeyState::Match, "{}: PKCS#8 key", e.name);
        assert_eq!(e.signer, None, "{}: its CA is not in the set", e.name);
        assert!(e.externally_managed);
        assert!(e.problems.is_empty(), "{:?}", e.problems);
    }
    assert_agrees_with_openssl(&inv);
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
    let req = certrotd::inventory::Request {
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
