//! `certrotd renew` on the certificate sets real clusters generated, re-signed with generated keys
//! (tests/fixtures/resigned: the real certificates' subjects, extensions, versions and validity,
//! with keys in the originals' formats): every set that holds its CA keys renews, and every renewed
//! certificate verifies with openssl and differs from the old one only in serial, validity and
//! key; sets without their CA keys are left alone, in kubeadm's words.
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).

use crate::support;

use std::collections::BTreeMap;

use certrotd::inventory::{Inventory, KeyState};
use certrotd::pki::layout::Layout;
use support::renewal::*;
use support::{resigned, scan};

/// Every leaf named renews faithfully (new key) and openssl verifies it against its signer.
fn assert_renewed(old: &Inventory, new: &Inventory, names: &[&str]) {
    let mut by_signer: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for name in names {
        let (o, n) = (old.get(name).unwrap(), new.get(name).unwrap());
        let (oc, nc) = (o.cert.as_ref().unwrap(), n.cert.as_ref().unwrap());
        assert_renewed_faithfully(name, oc, nc, false);
        assert_eq!(n.key, KeyState::Match, "{name}");
        assert!(
            nc.not_after > time::OffsetDateTime::now_utc(),
            "{name} valid now"
        );
        by_signer
            .entry(n.signer.clone().unwrap())
            .or_default()
            .push(nc.der.clone());
    }
    for (signer, ders) in by_signer {
        let ca = new.get(&signer).unwrap().cert.as_ref().unwrap();
        let ders: Vec<&[u8]> = ders.iter().map(Vec::as_slice).collect();
        openssl_verify(&ca.der, &ders, &signer);
    }
}

const KUBEADM_LEAVES: &[&str] = &[
    "apiserver",
    "apiserver-kubelet-client",
    "front-proxy-client",
    "etcd-server",
    "etcd-peer",
    "etcd-healthcheck-client",
    "apiserver-etcd-client",
    "admin.conf",
    "controller-manager.conf",
    "scheduler.conf",
];

#[test]
fn kubeadm_v1_16_renews_everything_including_its_embedded_kubelet_conf() {
    let node = Node::from_tree(
        &resigned().join("kubeadm-maxxmoney"),
        "etc/kubernetes",
        "layout = \"kubeadm\"\n",
    );
    let kubeadm = || Some(vec![Layout::Kubeadm]);
    let old = scan(&node.root, kubeadm(), &[]);
    node.run("renew", &["--type", "all"]).ok();
    let new = scan(&node.root, kubeadm(), &[]);
    let mut names = KUBEADM_LEAVES.to_vec();
    names.push("kubelet.conf");
    assert_renewed(&old, &new, &names);
    assert_consistent(&node.root, kubeadm(), &[]);
    for f in [
        "admin.conf",
        "controller-manager.conf",
        "scheduler.conf",
        "kubelet.conf",
    ] {
        assert_kubectl_reads(&node.path(&format!("/etc/kubernetes/{f}")));
    }
}

#[test]
fn kubeadm_v1_29_renews_around_its_dangling_kubelet_conf_and_names_it() {
    let node = Node::from_tree(
        &resigned().join("kubeadm-zeta"),
        "etc/kubernetes",
        "layout = \"kubeadm\"\n",
    );
    let kubeadm = || Some(vec![Layout::Kubeadm]);
    let old = scan(&node.root, kubeadm(), &[]);
    let kubelet_conf = std::fs::read(node.path("/etc/kubernetes/kubelet.conf")).unwrap();

    // Its kubelet.conf points at a kubelet-client-current.pem the set does not include: it
    // cannot be renewed, so renew names it, renews the rest, and exits 1 (in an emergency the
    // operator must not have to name every other certificate by hand).
    let r = node.run("renew", &["--type", "all"]);
    r.code(1);
    assert!(
        r.stdout
            .contains("NOT RENEWED kubelet.conf: it cannot be read")
            && r.stdout.contains("kubelet-client-current.pem")
            && r.stderr.contains("not renewed")
            && r.stderr.contains("kubelet.conf"),
        "{}",
        r.text()
    );
    assert_eq!(
        std::fs::read(node.path("/etc/kubernetes/kubelet.conf")).unwrap(),
        kubelet_conf
    );
    let new = scan(&node.root, kubeadm(), &[]);
    let mut names = KUBEADM_LEAVES.to_vec();
    names.push("super-admin.conf");
    assert_renewed(&old, &new, &names);
    // v1.29's two-O and no-O subjects are kept exactly.
    let admin = new.get("admin.conf").unwrap().cert.as_ref().unwrap();
    assert_eq!(admin.organizations, ["kubeadm:cluster-admins"]);
    for f in [
        "admin.conf",
        "super-admin.conf",
        "controller-manager.conf",
        "scheduler.conf",
    ] {
        assert_kubectl_reads(&node.path(&format!("/etc/kubernetes/{f}")));
    }
}

#[test]
fn rke2_ecdsa_ca_renews_rsa_clients_and_a_mismatched_key_needs_force() {
    let config = "[inventory]\nextra_paths = [\"/fx/*.crt\", \"/fx/history-0efac49/*.crt\", \"/fx/new-config\"]\n";
    let node = Node::from_tree(&resigned().join("rke2-kubelabs"), "fx", config);
    let extra = ["/fx/*.crt", "/fx/history-0efac49/*.crt", "/fx/new-config"];
    let old = scan(&node.root, None, &extra);
    let history = "/fx/history-0efac49/carlos.crt";

    // carlos.crt's committed key belongs to another certificate: not renewed without --force
    // (named, exit 1), while the rest of the selection is.
    let r = node.run("renew", &["--type", "all"]);
    r.code(1);
    assert!(
        r.stdout
            .contains("NOT RENEWED carlos.crt: its private key does not match it"),
        "{}",
        r.text()
    );
    let after = scan(&node.root, None, &extra);
    assert_renewed(&old, &after, &[history]);
    assert_eq!(
        after.get("carlos.crt").unwrap().cert.as_ref().unwrap().der,
        old.get("carlos.crt").unwrap().cert.as_ref().unwrap().der
    );
    // The RKE2 kubeconfig's client CA key is not here: skipped as kubeadm would.
    assert!(
        r.stdout
            .contains("skipped new-config: Detected external new-config:ca"),
        "{}",
        r.text()
    );

    let out = node.run("renew", &["--type", "all", "--force"]);
    assert!(
        out.ok()
            .contains("forced: its old private key did not match"),
        "{}",
        out.text()
    );
    let new = scan(&node.root, None, &extra);
    assert_renewed(&old, &new, &["carlos.crt", history]);
    let kc = new.get("new-config").unwrap().cert.as_ref().unwrap();
    assert_eq!(
        kc.der,
        old.get("new-config").unwrap().cert.as_ref().unwrap().der
    );
    // The history certificate is X.509 v1 and stays v1; its O is kept.
    let h = new.get(history).unwrap().cert.as_ref().unwrap();
    assert_eq!(h.organizations, ["prod"]);
    assert!(
        support::openssl(&["x509", "-inform", "DER", "-noout", "-text"], Some(&h.der))
            .contains("Version: 1 (0x0)")
    );
}

#[test]
fn sets_without_their_ca_keys_are_left_alone() {
    // k3s: the kubeconfig's client CA key is on the server, not in this set.
    let node = Node::from_tree(&resigned().join("k3s-jungen"), "", "layout = \"k3s\"\n");
    let before = snapshot(&node.root);
    let out = node.run("renew", &["--type", "all"]);
    let text = out.ok();
    assert!(
        text.contains("skipped k3s.yaml: Detected external"),
        "{text}"
    );
    assert!(text.contains("nothing to renew"), "{text}");
    assert_eq!(snapshot(&node.root), before);

    // easy-rsa client certificates whose CA is absent altogether.
    let node = Node::from_tree(
        &resigned().join("variant-icp-easyrsa"),
        "fx",
        "[inventory]\nextra_paths = [\"/fx/*.crt\"]\n",
    );
    let r = node.run("renew", &["--cert", "kubelet.crt"]);
    r.code(1);
    assert!(
        r.stdout
            .contains("REFUSED kubelet.crt: Detected external CA"),
        "{}",
        r.text()
    );
}
