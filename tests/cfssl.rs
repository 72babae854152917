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
use support::cfssl::Cfssl;
use support::renewal::{self, Node};

/// A sandbox node (ECDSA: quick to renew) whose cluster CA key has moved to a cfssl server.
struct Remote {
    node: Node,
    cfssl: Cfssl,
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
        Remote { node, cfssl }
    }

    /// Appends the `[issuer]` table for the server (plus `extra`) to the node's configuration.
    fn configure(&self, extra: &str) {
        let table = self
            .cfssl
            .issuer_config(&self.node.root, "/etc/certrotd/cfssl.key", extra);
        let config = self.node.root.join("certrotd.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push('\n');
        text.push_str(&table);
        std::fs::write(config, text).unwrap();
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
