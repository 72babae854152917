//! `certrotd renew` with the rotation session's one semantics (issue 12): certificates selected
//! by type that cannot be renewed are left out and named (exit 1), like externally managed ones
//! are skipped, and the rest is renewed; a certificate named with `--cert` that cannot be renewed
//! is still refused, with nothing changed.

use crate::support;

use certrotd::sandbox::SandboxOptions;
use support::renewal::*;

/// A sandbox node whose admin.conf carries a corrupt client certificate and whose apiserver key
/// belongs to another certificate.
fn broken_node() -> Node {
    let node = Node::sandbox(&SandboxOptions::default());
    let admin = node.path("/etc/kubernetes/admin.conf");
    let text = std::fs::read_to_string(&admin).unwrap();
    let corrupt: String = text
        .lines()
        .map(|l| match l.split_once("client-certificate-data:") {
            Some((indent, _)) => format!("{indent}client-certificate-data: bm90IGEgY2VydA==\n"),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(text, corrupt, "admin.conf embeds its client certificate");
    std::fs::write(&admin, corrupt).unwrap();
    std::fs::copy(
        node.path("/etc/kubernetes/pki/front-proxy-client.key"),
        node.path("/etc/kubernetes/pki/apiserver.key"),
    )
    .unwrap();
    node
}

fn read(node: &Node, p: &str) -> Vec<u8> {
    std::fs::read(node.path(p)).unwrap()
}

#[test]
fn renew_type_all_renews_around_a_corrupt_kubeconfig_and_a_mismatched_key_and_names_them() {
    let node = broken_node();
    let untouched = [
        "/etc/kubernetes/admin.conf",
        "/etc/kubernetes/pki/apiserver.crt",
        "/etc/kubernetes/pki/apiserver.key",
    ];
    let renewed = [
        "/etc/kubernetes/pki/etcd/server.crt",
        "/etc/kubernetes/pki/front-proxy-client.crt",
        "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
        "/etc/kubernetes/scheduler.conf",
    ];
    let before_untouched: Vec<Vec<u8>> = untouched.iter().map(|p| read(&node, p)).collect();
    let before_renewed: Vec<Vec<u8>> = renewed.iter().map(|p| read(&node, p)).collect();

    let r = node.run("renew", &["--type", "all"]);
    r.code(1);
    assert!(
        r.stdout
            .contains("NOT RENEWED admin.conf: it cannot be read")
            && r.stdout
                .contains("NOT RENEWED apiserver: its private key does not match it"),
        "{}",
        r.text()
    );
    assert!(
        r.stderr.contains("not renewed")
            && r.stderr.contains("apiserver")
            && r.stderr.contains("admin.conf"),
        "{}",
        r.text()
    );
    assert!(r.stdout.contains("committed"), "{}", r.text());
    for (p, before) in untouched.iter().zip(&before_untouched) {
        assert_eq!(&read(&node, p), before, "{p} must not be touched");
    }
    for (p, before) in renewed.iter().zip(&before_renewed) {
        assert_ne!(&read(&node, p), before, "{p} must be renewed");
    }
    assert_eq!(node.rotations().len(), 1, "one rotation for the rest");
}

#[test]
fn a_broken_certificate_named_with_cert_is_still_refused_and_nothing_changes() {
    let node = broken_node();
    let before = snapshot(&node.root);
    for cert in ["apiserver", "admin.conf"] {
        let r = node.run("renew", &["--cert", cert, "--cert", "front-proxy-client"]);
        r.code(1);
        assert!(
            r.stdout.contains(&format!("REFUSED {cert}:"))
                && r.stderr.contains("nothing was changed"),
            "{}",
            r.text()
        );
    }
    assert_eq!(snapshot(&node.root), before);
    assert!(node.rotations().is_empty());
}

#[test]
fn a_dry_run_names_what_it_would_leave_out_and_exits_1() {
    let node = broken_node();
    let before = snapshot(&node.root);
    let r = node.run("renew", &["--type", "all", "--dry-run"]);
    r.code(1);
    assert!(
        r.stdout.contains("NOT RENEWED apiserver")
            && r.stdout.contains("dry run: nothing was changed"),
        "{}",
        r.text()
    );
    assert_eq!(snapshot(&node.root), before);
}
