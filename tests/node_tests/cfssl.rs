//! Renewal through a remote CA: a real `cfssl serve` (tests/support/cfssl.rs) holds the cluster
//! CA's key, the node does not (its `ca.key` is removed, as on a worker or an externally managed
//! control plane). Covered: a mixed node renewed end to end over TLS (cfssl for the CA whose key is
//! gone, the local key for the others) with openssl and kubectl as judges; a wrong auth key and a
//! server that is down refused with clear errors and no file changed; answers that were altered
//! (another subject or SANs, a CA other than the old one's, a lifetime no longer than the old
//! one's) refused by a tiny real HTTP server that answers with such certificates.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use certrotd::control::client;
use certrotd::control::proto::{HistoryRecord, HistoryState, Request, Response, StatusReport};
use certrotd::issuer::tbs;
use certrotd::pki::cert::Cert;
use certrotd::pki::encode::{self, KeySpec};
use certrotd::pki::key::PrivateKey;
use certrotd::pki::pem;
use certrotd::sandbox::SandboxOptions;
use support::cfssl::{Broken, Cfssl, Tamper, Tamperer};
use support::renewal::{self, Node};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::time::Instant;

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

// ---------------------------------------------------------------------------------------------
// The daemon: backoff while the remote CA is down, and the kubelet's own rotation
// ---------------------------------------------------------------------------------------------

/// Long enough for two shared cores; every wait ends as soon as its condition holds.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Re-issues the kubelet's client certificate (same key and attributes, signed with the CA key the
/// cfssl server holds) valid from `since` ago for `left` more, replacing its file atomically.
fn reissue_kubelet_client(r: &Remote, since: time::Duration, left: time::Duration) -> Cert {
    let link = r
        .node
        .path("/var/lib/kubelet/pki/kubelet-client-current.pem");
    let file = r
        .node
        .path(std::fs::read_link(link).unwrap().to_str().unwrap());
    let data = std::fs::read(&file).unwrap();
    let blocks = pem::blocks(&file, &data).unwrap();
    let old = Cert::from_der(&blocks[0].der).unwrap();
    let ca = r.ca();
    let ca_key_file = r.cfssl.dir.join("ca.key");
    let ca_key = PrivateKey::from_blocks(
        &pem::blocks(&ca_key_file, &std::fs::read(&ca_key_file).unwrap()).unwrap(),
    )
    .unwrap();
    let now = OffsetDateTime::now_utc();
    let der = tbs::renew(
        &old.der,
        &tbs::Changes {
            serial: certrotd::issuer::local::random_serial(),
            not_before: now - since,
            not_after: now + left,
            spki: &old.spki_der,
            issuer_subject: &ca.subject_der,
            issuer_key_id: ca.subject_key_id.as_deref(),
        },
        &ca_key.pair,
    )
    .unwrap();
    let mut text = encode::cert_pem(&der);
    for b in blocks.iter().filter(|b| b.label != "CERTIFICATE") {
        text.push_str(&pem::encode(&b.label, &b.der));
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    Cert::from_der(&der).unwrap()
}

/// `certrotd::daemon::run` in process, stopped through its shutdown future.
struct Daemon {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    socket: PathBuf,
}

impl Daemon {
    fn start(node: &Node) -> Daemon {
        let (stop, stopped) = oneshot::channel::<()>();
        let opts = certrotd::daemon::Options {
            config: Some(node.root.join("certrotd.toml")),
            root: None,
        };
        let task = tokio::spawn(certrotd::daemon::run(opts, async move {
            let _ = stopped.await;
        }));
        Daemon {
            stop: Some(stop),
            task,
            socket: node.path("/run/certrotd/certrotd.sock"),
        }
    }

    async fn status(&self) -> Option<StatusReport> {
        match client::request(&self.socket, Request::Status, Duration::from_secs(5)).await {
            Ok(Response::Status(s)) => Some(s),
            _ => None,
        }
    }

    async fn history(&self) -> Vec<HistoryRecord> {
        match client::request(
            &self.socket,
            Request::History { limit: None },
            Duration::from_secs(5),
        )
        .await
        {
            Ok(Response::History(h)) => h,
            other => panic!("history: {other:?}"),
        }
    }

    /// Polls status until `check` says yes.
    async fn wait_for(&self, what: &str, check: impl Fn(&StatusReport) -> bool) -> StatusReport {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(s) = self.status().await.filter(|s| check(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waited {TIMEOUT:?} for {what} in vain; last status: {:#?}",
                self.status().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(TIMEOUT, &mut self.task)
            .await
            .expect("the daemon stops")
            .unwrap()
            .unwrap();
    }
}

fn next_action(s: &StatusReport, name: &str) -> String {
    s.certificates
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} not in status"))
        .next_action
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_backs_off_while_cfssl_is_down_then_takes_the_kubelet_certificate_over() {
    let mut r = Remote::new(false);
    r.configure("retry_initial = \"1s\"\nretry_max = \"2s\"\n");
    // The kubelet rotates its own certificate, but this one is late and about to expire.
    let old = reissue_kubelet_client(&r, time::Duration::days(100), time::Duration::days(2));
    let before = renewal::snapshot(&r.node.root);
    let d = Daemon::start(&r.node);

    // cfssl is down: each attempt fails, nothing changes, and the pauses are visible.
    let s = d
        .wait_for("two failed attempts", |s| {
            s.retry.as_ref().is_some_and(|r| r.attempts >= 2)
        })
        .await;
    let retry = s.retry.unwrap();
    assert!(
        retry.last_error.contains(&r.cfssl.url()) && retry.last_error.contains("connecting"),
        "{retry:?}"
    );
    assert!(retry.next_retry.is_some() && retry.failing_since.is_some());
    assert!(
        s.notices.iter().any(|n| n.contains("failed (attempt 1)")),
        "{:?}",
        s.notices
    );
    let failed: Vec<HistoryRecord> = d
        .history()
        .await
        .into_iter()
        .filter(|h| h.state == HistoryState::Failed)
        .collect();
    assert!(!failed.is_empty());
    assert!(
        failed[0]
            .certificates
            .contains(&"kubelet-client-current".to_owned())
            && failed[0]
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("remote CA"),
        "{failed:#?}"
    );
    assert!(renewal::snapshot(&r.node.root) == before, "files changed");

    // Back: the next attempt renews it through cfssl, and the retry state is gone.
    r.cfssl.start();
    d.wait_for("the retry state cleared", |s| s.retry.is_none())
        .await;
    let done = d.history().await;
    assert!(
        done.iter().any(|h| h.state == HistoryState::Success),
        "{done:#?}"
    );
    d.stop().await;
    let new = kubelet_client(&r.node);
    assert_ne!(new.serial, old.serial);
    assert_eq!(new.subject_der, old.subject_der);
    renewal::openssl_verify(
        &r.ca().der,
        &[&new.der],
        "the taken-over kubelet certificate",
    );
    assert!(r.cfssl.signed() >= 1);
    renewal::assert_kubectl_reads(&r.node.path("/etc/kubernetes/kubelet.conf"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_auth_key_is_retried_and_recorded_and_changes_nothing() {
    let r = Remote::new(false);
    r.configure("retry_initial = \"1s\"\nretry_max = \"2s\"\n");
    // Late for the kubelet and about to expire: due at once.
    reissue_kubelet_client(&r, time::Duration::days(100), time::Duration::days(2));
    let key_file = r.node.path("/etc/certrotd/cfssl.key");
    std::fs::remove_file(&key_file).unwrap();
    let before = renewal::snapshot(&r.node.root);
    let d = Daemon::start(&r.node);

    let s = d
        .wait_for("two failed attempts", |s| {
            s.retry.as_ref().is_some_and(|r| r.attempts >= 2)
        })
        .await;
    let error = s.retry.unwrap().last_error;
    assert!(error.contains(&key_file.display().to_string()), "{error}");
    // Planning failed before any rotation began, yet history shows each attempt and why.
    let failed: Vec<HistoryRecord> = d
        .history()
        .await
        .into_iter()
        .filter(|h| h.state == HistoryState::Failed)
        .collect();
    assert!(failed.len() >= 2, "{failed:#?}");
    let reason = failed[0].reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("not started:") && reason.contains(&key_file.display().to_string()),
        "{reason}"
    );
    assert!(
        failed[0]
            .certificates
            .contains(&"kubelet-client-current".to_owned()),
        "{failed:#?}"
    );
    d.stop().await;
    assert!(renewal::snapshot(&r.node.root) == before, "files changed");
    assert_eq!(r.cfssl.signed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelets_own_rotation_is_left_alone_and_warned_about_when_late() {
    let mut r = Remote::new(false);
    r.configure("");
    r.cfssl.start();
    let d = Daemon::start(&r.node);
    let name = "kubelet-client-current";
    // Healthy: watched, not touched, no word about it.
    let s = d.wait_for("status", |_| true).await;
    assert_eq!(next_action(&s, name), "renew");
    assert!(!s.notices.iter().any(|n| n.contains("kubelet is late")));

    // Past 90% of its lifetime but not yet within emergency_before (7d): warned, left alone.
    let late = reissue_kubelet_client(&r, time::Duration::days(95), time::Duration::days(8));
    let s = d
        .wait_for("the late warning", |s| {
            s.notices.iter().any(|n| n.contains("the kubelet is late"))
        })
        .await;
    assert_eq!(next_action(&s, name), "renew", "{s:#?}");
    assert!(d.history().await.is_empty());
    d.stop().await;
    assert_eq!(kubelet_client(&r.node).serial, late.serial);
    assert_eq!(r.cfssl.signed(), 0, "{}", r.cfssl.log());
}

#[test]
fn a_slow_failing_or_garbled_server_changes_nothing() {
    let r = Remote::new(false);
    let cases: [(Duration, &str, &[&str]); 3] = [
        (
            Duration::from_secs(5),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            &["no answer within 1s (issuer.timeout)"],
        ),
        (
            Duration::ZERO,
            "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\nConnection: close\r\n\r\nbad gateway",
            &["HTTP 502", "not cfssl's JSON", "bad gateway"],
        ),
        (
            Duration::ZERO,
            "HTTP/1.1 200 OK\r\nContent-Length: 45\r\nConnection: close\r\n\r\n{\"success\":true,\"result\":{\"certificate\":\"x\"}}",
            &["the answer's certificate", "no PEM block"],
        ),
    ];
    for (delay, answer, words) in cases {
        let server = Broken::start(delay, answer);
        r.configure_url(&server.url(), "");
        let config = r.node.root.join("certrotd.toml");
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("timeout = \"5s\"", "timeout = \"1s\"");
        std::fs::write(&config, text).unwrap();
        assert_refused(&r, &["scheduler.conf"], words);
    }
}
