//! Renewal through a remote CA: a real `cfssl serve` (tests/support/cfssl.rs) holds the cluster
//! CA's key, the node does not (its `ca.key` is removed, as on a worker or an externally managed
//! control plane). Covered: a mixed node renewed end to end over TLS (cfssl for the CA whose key is
//! gone, the local key for the others) with openssl and kubectl as judges; a wrong auth key and a
//! server that is down refused with clear errors and no file changed; answers that were altered
//! (another subject or SANs, a CA other than the old one's, a lifetime no longer than the old
//! one's) refused by a tiny real HTTP server that answers with such certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use certrotd::pki::cert::Cert;
use certrotd::pki::encode::KeySpec;
use certrotd::pki::pem;
use certrotd::sandbox::SandboxOptions;
use support::cfssl::{Cfssl, Tamper, Tamperer};
use support::renewal::{self, Node};

/// A sandbox node (ECDSA: quick to renew) whose cluster CA key has moved to a cfssl server.
struct Remote {
    node: Node,
    cfssl: Cfssl,
    /// The configuration the sandbox wrote, before any `[issuer]`.
    base: String,
}

impl Remote {
    fn new(tls: bool) -> Remote {
        let node = Node::sandbox(&SandboxOptions {
            key: KeySpec::EcdsaP256,
            ..SandboxOptions::default()
        });
        let ca_key = node.path("/etc/kubernetes/pki/ca.key");
        let cfssl = Cfssl::new(
            &node.tmp.path().join("cfssl"),
            &node.path("/etc/kubernetes/pki/ca.crt"),
            &ca_key,
            tls,
        );
        std::fs::remove_file(&ca_key).unwrap();
        let base = std::fs::read_to_string(node.root.join("certrotd.toml")).unwrap();
        Remote { node, cfssl, base }
    }

    /// Configures the `[issuer]` table for the server (plus `extra`).
    fn configure(&self, extra: &str) {
        self.configure_url(&self.cfssl.url(), extra);
    }

    /// The same, pointed at `url` instead.
    fn configure_url(&self, url: &str, extra: &str) {
        let table = self
            .cfssl
            .issuer_config(&self.node.root, "/etc/certrotd/cfssl.key", extra)
            .replace(&self.cfssl.url(), url);
        let config = self.node.root.join("certrotd.toml");
        std::fs::write(config, format!("{}\n{table}", self.base)).unwrap();
    }

    fn ca(&self) -> Cert {
        cert_at(&self.node.path("/etc/kubernetes/pki/ca.crt"))
    }
}

fn cert_at(path: &Path) -> Cert {
    let data = std::fs::read(path).unwrap();
    let blocks = pem::blocks(path, &data).unwrap();
    Cert::from_der(&blocks[0].der).unwrap()
}

/// The first certificate of a kubeconfig user's embedded data.
fn kubeconfig_cert(path: &Path) -> Cert {
    let data = std::fs::read(path).unwrap();
    let kc = certrotd::pki::kubeconfig::parse(path, &data).unwrap();
    let certrotd::pki::kubeconfig::Source::Embedded(pem_data) = &kc.users[0].cert else {
        panic!("{}: not embedded", path.display());
    };
    let blocks = pem::blocks(path, pem_data).unwrap();
    Cert::from_der(&blocks[0].der).unwrap()
}

/// The kubelet's current client certificate (its symlink names a node path).
fn kubelet_client(node: &Node) -> Cert {
    let link = node.path("/var/lib/kubelet/pki/kubelet-client-current.pem");
    let target = std::fs::read_link(link).unwrap();
    cert_at(&node.path(target.to_str().unwrap()))
}

#[test]
fn a_mixed_node_renews_through_cfssl_over_tls_and_its_local_cas() {
    let mut r = Remote::new(true);
    r.configure("[issuer.profiles]\napiserver = \"server\"\n");
    r.cfssl.start();

    let plan = r
        .node
        .run("renew", &["--dry-run", "--type", "all"])
        .ok()
        .to_owned();
    let row = |name: &str| {
        plan.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not in the plan:\n{plan}"))
            .to_owned()
    };
    assert!(
        row("apiserver ").contains(&format!("ca via cfssl {}", r.cfssl.url()))
            && row("apiserver ").contains("\"server\""),
        "{plan}"
    );
    assert!(row("admin.conf").contains("\"client\""), "{plan}");
    assert!(
        row("etcd-server").contains("etcd-ca") && !row("etcd-server").contains("cfssl"),
        "{plan}"
    );

    let old_api = cert_at(&r.node.path("/etc/kubernetes/pki/apiserver.crt"));
    let old_admin = kubeconfig_cert(&r.node.path("/etc/kubernetes/admin.conf"));
    let out = r.node.run("renew", &["--type", "all"]);
    out.ok();
    let ca = r.ca();
    let api = cert_at(&r.node.path("/etc/kubernetes/pki/apiserver.crt"));
    let admin = kubeconfig_cert(&r.node.path("/etc/kubernetes/admin.conf"));
    let client = kubelet_client(&r.node);
    for (name, old, new) in [
        ("apiserver", &old_api, &api),
        ("admin.conf", &old_admin, &admin),
    ] {
        assert_ne!(new.serial, old.serial, "{name}");
        assert_eq!(new.subject_der, old.subject_der, "{name}");
        assert_eq!(new.sans, old.sans, "{name}");
        let year = time::OffsetDateTime::now_utc() + time::Duration::days(364);
        assert!(new.not_after > year, "{name}: the profile's year");
    }
    renewal::openssl_verify(
        &ca.der,
        &[&api.der, &admin.der, &client.der],
        "cfssl-signed leaves",
    );
    // Signed by cfssl (its log counts them), and the kubeconfigs still read.
    // apiserver, apiserver-kubelet-client, four kubeconfigs and the kubelet client certificate.
    assert_eq!(r.cfssl.signed(), 7, "{}", r.cfssl.log());
    for kc in ["admin.conf", "controller-manager.conf", "scheduler.conf"] {
        renewal::assert_kubectl_reads(&r.node.path(&format!("/etc/kubernetes/{kc}")));
    }
    // The etcd CA's key is still on the node: its leaves were signed locally, and verify.
    let etcd_ca = cert_at(&r.node.path("/etc/kubernetes/pki/etcd/ca.crt"));
    let etcd_server = cert_at(&r.node.path("/etc/kubernetes/pki/etcd/server.crt"));
    renewal::openssl_verify(&etcd_ca.der, &[&etcd_server.der], "etcd-server");
    renewal::assert_consistent(&r.node.root, None, &[]);
}

/// Renews `--cert apiserver` and expects a refusal mentioning every one of `words`; the node's
/// files must be byte for byte as before.
fn assert_refused(r: &Remote, certs: &[&str], words: &[&str]) -> String {
    let before = renewal::snapshot(&r.node.root);
    let mut args = Vec::new();
    for c in certs {
        args.extend(["--cert", c]);
    }
    let out = r.node.run("renew", &args);
    assert!(!out.status.success(), "{}", out.text());
    for w in words {
        assert!(out.text().contains(w), "{w:?} not in:\n{}", out.text());
    }
    assert!(
        renewal::snapshot(&r.node.root) == before,
        "files changed:\n{}",
        out.text()
    );
    out.stderr
}

#[test]
fn a_wrong_auth_key_or_a_server_that_is_down_changes_nothing() {
    let mut r = Remote::new(false);
    r.configure("");
    // cfssl is not running yet: connection refused, named with the server.
    assert_refused(
        &r,
        &["admin.conf"],
        &[
            "renewing admin.conf",
            &r.cfssl.url(),
            "connecting to 127.0.0.1",
        ],
    );
    r.cfssl.start();
    // The node's key is not the server's.
    let key = r.node.path("/etc/certrotd/cfssl.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    let err = assert_refused(&r, &["admin.conf"], &["signing refused", "HTTP"]);
    assert!(!err.contains(&"ab".repeat(16)), "the key leaked: {err}");
    assert!(
        !err.contains(support::cfssl::AUTH_KEY),
        "the key leaked: {err}"
    );
    // A key file too short to be cfssl's is refused before anything is asked, naming the file.
    std::fs::write(&key, "abcd\n").unwrap();
    let signed = r.cfssl.signed();
    assert_refused(&r, &["admin.conf"], &[key.to_str().unwrap(), "2 bytes"]);
    std::fs::remove_file(&key).unwrap();
    assert_refused(&r, &["admin.conf"], &[key.to_str().unwrap(), "cannot read"]);
    assert_eq!(r.cfssl.signed(), signed);
}

#[test]
fn answers_the_remote_ca_altered_are_refused() {
    let mut r = Remote::new(false);
    r.cfssl.start();
    // A profile without the client usage the old certificate has.
    r.configure("[issuer.profiles]\n\"admin.conf\" = \"server\"\n");
    assert_refused(
        &r,
        &["admin.conf"],
        &["refused", "extended key usages lack clientAuth"],
    );

    // Another SAN, and another subject, signed by the real CA through a tampering server.
    for (how, words) in [
        (Tamper::AddSan, &["SANs differ: added DNS:evil.example"][..]),
        (
            Tamper::Subject,
            &["CN=system:masters-evil\", not \"CN=kube-apiserver\""][..],
        ),
    ] {
        let proxy = Tamperer::start(r.cfssl.port, how);
        r.configure_url(&proxy.url(), "[issuer.profiles]\napiserver = \"server\"\n");
        assert_refused(&r, &["apiserver"], words);
    }
    assert!(
        r.cfssl.signed() >= 3,
        "cfssl signed each of them:\n{}",
        r.cfssl.log()
    );

    // A server holding another CA's key (etcd's): its certificate does not chain to the old one's CA.
    let mut other = Cfssl::new(
        &r.node.tmp.path().join("other"),
        &r.node.path("/etc/kubernetes/pki/etcd/ca.crt"),
        &r.node.path("/etc/kubernetes/pki/etcd/ca.key"),
        false,
    );
    other.start();
    let r2 = Remote {
        node: r.node.copy(),
        cfssl: other,
        base: r.base.clone(),
    };
    r2.configure("");
    assert_refused(
        &r2,
        &["admin.conf"],
        &["not signed by the CA \"CN=kubernetes\""],
    );
}
