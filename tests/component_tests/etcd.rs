//! A real etcd (Debian's etcd-server) started with the renewed server and peer certificates
//! answers `etcdctl endpoint health` made with the renewed healthcheck client certificate, serves
//! the renewed certificates on both ports, and accepts the renewed apiserver-etcd-client.
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).

use crate::support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::etcd::free_port;

use certrotd::pki::layout::Layout;
use certrotd::sandbox::SandboxOptions;
use support::renewal::*;

/// The etcd process, stopped by PID when dropped (also when an assertion fails).
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The first certificate a TLS server presents, as PEM (openssl s_client with a client cert).
fn served_cert(port: u16, node: &Node) -> String {
    let pki = |n: &str| node.path(&format!("/etc/kubernetes/pki/etcd/{n}"));
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
            s(&pki("ca.crt")),
            "-cert",
            s(&pki("healthcheck-client.crt")),
            "-key",
            s(&pki("healthcheck-client.key")),
            "-verify_return_error",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| {
        panic!(
            "s_client to {port}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    format!("{}\n", &text[start..end])
}

fn etcdctl(port: u16, node: &Node, client: &str, args: &[&str]) -> (bool, String) {
    let pki = |n: &str| node.path(&format!("/etc/kubernetes/pki/{n}"));
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &format!("https://127.0.0.1:{port}"),
            "--cacert",
            s(&pki("etcd/ca.crt")),
            "--cert",
            s(&pki(&format!("{client}.crt"))),
            "--key",
            s(&pki(&format!("{client}.key"))),
            "--dial-timeout",
            "2s",
        ])
        .args(args)
        .output()
        .expect("etcdctl must be installed (make test installs etcd-client)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn real_etcd_serves_and_accepts_the_renewed_certificates() {
    let node = Node::sandbox(&SandboxOptions::default());
    let old_server = std::fs::read(node.path("/etc/kubernetes/pki/etcd/server.crt")).unwrap();
    node.run("renew", &["--type", "etcd-leaf"]).ok();
    assert_consistent(&node.root, Some(vec![Layout::Kubeadm]), &[]);
    let pki = |n: &str| node.path(&format!("/etc/kubernetes/pki/etcd/{n}"));
    let new_server = std::fs::read_to_string(pki("server.crt")).unwrap();
    assert_ne!(new_server.as_bytes(), old_server.as_slice());

    let (client, peer) = (free_port(), free_port());
    let data = node.tmp.path().join("etcd-data");
    let log = std::fs::File::create(node.tmp.path().join("etcd.log")).unwrap();
    let name = "sandbox-cp1";
    let peer_url = format!("https://127.0.0.1:{peer}");
    let client_url = format!("https://127.0.0.1:{client}");
    let etcd = Etcd(
        Command::new("etcd")
            .args([
                "--name",
                name,
                "--data-dir",
                s(&data),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("{name}={peer_url}"),
                "--cert-file",
                s(&pki("server.crt")),
                "--key-file",
                s(&pki("server.key")),
                "--client-cert-auth",
                "--trusted-ca-file",
                s(&pki("ca.crt")),
                "--peer-cert-file",
                s(&pki("peer.crt")),
                "--peer-key-file",
                s(&pki("peer.key")),
                "--peer-client-cert-auth",
                "--peer-trusted-ca-file",
                s(&pki("ca.crt")),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd must be installed (make test installs etcd-server)"),
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        let (ok, text) = etcdctl(
            client,
            &node,
            "etcd/healthcheck-client",
            &["endpoint", "health"],
        );
        if ok {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "etcd never became healthy: {text}\n{}",
            std::fs::read_to_string(node.tmp.path().join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(health.contains("is healthy"), "{health}");

    // It serves the renewed certificates, on the client and the peer port.
    assert_eq!(served_cert(client, &node), new_server);
    assert_eq!(
        served_cert(peer, &node),
        std::fs::read_to_string(pki("peer.crt")).unwrap()
    );
    // And the renewed apiserver-etcd-client can write and read, as the apiserver would.
    let (ok, text) = etcdctl(
        client,
        &node,
        "apiserver-etcd-client",
        &["put", "/certrotd", "renewed"],
    );
    assert!(ok, "{text}");
    let (ok, text) = etcdctl(
        client,
        &node,
        "apiserver-etcd-client",
        &["get", "/certrotd"],
    );
    assert!(ok && text.contains("renewed"), "{text}");
    drop(etcd);
}
