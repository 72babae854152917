//! The sandbox generator judged by independent tools: openssl verifies and prints every
//! certificate and key, kubectl reads every kubeconfig, and x509-parser checks what openssl's text
//! does not show plainly (exact dates, serials, raw names).
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use certrotd::pki::encode::KeySpec;
use certrotd::sandbox::{self, Sandbox, SandboxError, SandboxOptions};
use time::OffsetDateTime;
use x509_parser::parse_x509_certificate;

const DAY: u64 = 86_400;

/// The current time without sub-second part, as certificates store it.
fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("zero nanoseconds is valid")
}

/// Runs a command; returns (success, stdout + stderr).
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, text) = run(program, args);
    assert!(ok, "{program} {args:?} failed:\n{text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o777
}

/// The PEM blocks of a file, each as its own string.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END ") {
            blocks.push(std::mem::take(&mut cur));
        }
    }
    blocks
}

fn der_of(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("PEM body is base64")
}

/// Extension value lines as `openssl x509 -text` prints them, with " critical" kept on the name.
fn extension(text: &str, name: &str) -> Option<(bool, String)> {
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix(name) {
            let critical = rest.contains("critical");
            let value = lines.next().unwrap_or_default().trim().to_owned();
            return Some((critical, value));
        }
    }
    None
}

/// What the spec says one certificate must look like.
struct Expect<'a> {
    subject: &'a str,
    issuer_ca: &'a str,
    san: Option<&'a str>,
    eku: Option<&'a str>,
    is_ca: bool,
}

/// Checks one certificate file (first PEM block) against the spec with openssl and x509-parser.
fn check_cert(sb: &Sandbox, crt: &Path, want: &Expect<'_>, now: OffsetDateTime, leaf_ttl: u64) {
    let ca_path = sb.path(want.issuer_ca);
    let ca_file = s(&ca_path);
    let verify = must(
        "openssl",
        &["verify", "-x509_strict", "-CAfile", ca_file, s(crt)],
    );
    assert!(verify.trim_end().ends_with("OK"), "{verify}");

    let text = must("openssl", &["x509", "-noout", "-text", "-in", s(crt)]);
    let subject = must("openssl", &["x509", "-noout", "-subject", "-in", s(crt)]);
    assert_eq!(
        subject.trim(),
        format!("subject={}", want.subject),
        "{crt:?}"
    );

    let ku = extension(&text, "X509v3 Key Usage:").expect("key usage");
    assert!(ku.0, "key usage is critical in {crt:?}");
    let bc = extension(&text, "X509v3 Basic Constraints:").expect("basic constraints");
    assert!(bc.0, "basic constraints are critical in {crt:?}");
    assert_eq!(
        bc.1,
        if want.is_ca { "CA:TRUE" } else { "CA:FALSE" },
        "{crt:?}"
    );
    assert_eq!(
        extension(&text, "X509v3 Subject Alternative Name:").map(|e| e.1),
        want.san.map(str::to_owned),
        "{crt:?}"
    );
    assert_eq!(
        extension(&text, "X509v3 Extended Key Usage:").map(|e| e.1),
        want.eku.map(str::to_owned),
        "{crt:?}"
    );
    let skid = extension(&text, "X509v3 Subject Key Identifier:");
    let akid = extension(&text, "X509v3 Authority Key Identifier:");
    if want.is_ca {
        assert_eq!(
            ku.1, "Digital Signature, Key Encipherment, Certificate Sign",
            "{crt:?}"
        );
        assert!(
            skid.is_some() && akid.is_none(),
            "CA {crt:?}: SKID, no AKID"
        );
    } else {
        assert!(
            skid.is_none() && akid.is_some(),
            "leaf {crt:?}: AKID, no SKID"
        );
    }

    // The same facts through x509-parser: dates, serial, and issuer bytes equal to the CA's
    // subject bytes (Go's verifier compares them raw).
    let pem = fs::read_to_string(crt).expect("read cert");
    let der = der_of(&pem_blocks(&pem)[0]);
    let (_, cert) = parse_x509_certificate(&der).expect("x509-parser reads it");
    let ca_der = der_of(&fs::read_to_string(&ca_path).expect("read CA"));
    let (_, ca) = parse_x509_certificate(&ca_der).expect("CA parses");
    assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw(), "{crt:?}");
    let validity = cert.validity();
    assert_eq!(
        validity.not_before.to_datetime(),
        now - time::Duration::minutes(5),
        "{crt:?}"
    );
    let ttl = if want.is_ca { 3650 * DAY } else { leaf_ttl };
    let ttl = time::Duration::seconds(i64::try_from(ttl).expect("small"));
    assert_eq!(validity.not_after.to_datetime(), now + ttl, "{crt:?}");
    let serial = cert.serial.clone();
    assert!(
        serial.bits() <= 63 && serial.bits() > 0,
        "{crt:?}: serial {serial}"
    );
}

/// The public key of a certificate and of a private key must be the same.
fn check_key_matches(crt: &Path, key: &Path) {
    let from_cert = must("openssl", &["x509", "-noout", "-pubkey", "-in", s(crt)]);
    let from_key = must("openssl", &["pkey", "-pubout", "-in", s(key)]);
    assert_eq!(from_cert, from_key, "{crt:?} and {key:?} belong together");
}

fn first_line(p: &Path) -> String {
    fs::read_to_string(p)
        .expect("read")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn yaml(p: &Path) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&fs::read_to_string(p).expect("read yaml")).expect("valid YAML")
}

fn ystr<'a>(v: &'a serde_yaml_ng::Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for key in path {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[*key],
        };
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is a string"))
}

/// Checks one kubeconfig: kubectl reads it, its shape is kubeadm's, and its embedded client
/// certificate (if any) verifies against ca.crt and matches its key. Returns the user entry.
fn check_kubeconfig(
    sb: &Sandbox,
    file: &str,
    user: &str,
    subject: &str,
    tmp: &Path,
) -> serde_yaml_ng::Value {
    let path = sb.path(format!("/etc/kubernetes/{file}"));
    assert_eq!(mode(&path), 0o600, "{file}");
    let view = must(
        "kubectl",
        &["config", "view", "--raw", "--kubeconfig", s(&path)],
    );
    assert!(
        view.contains(&format!("current-context: {user}@kubernetes")),
        "{view}"
    );

    let doc = yaml(&path);
    assert_eq!(ystr(&doc, &["apiVersion"]), "v1");
    assert_eq!(ystr(&doc, &["kind"]), "Config");
    assert_eq!(ystr(&doc, &["clusters", "0", "name"]), "kubernetes");
    assert_eq!(
        ystr(&doc, &["clusters", "0", "cluster", "server"]),
        "https://127.0.0.1:6443"
    );
    let ca_data = ystr(
        &doc,
        &["clusters", "0", "cluster", "certificate-authority-data"],
    );
    let ca_pem = base64::engine::general_purpose::STANDARD
        .decode(ca_data)
        .expect("base64");
    assert_eq!(
        ca_pem,
        fs::read(sb.path("/etc/kubernetes/pki/ca.crt")).expect("ca.crt"),
        "{file} embeds ca.crt"
    );
    assert_eq!(
        ystr(&doc, &["contexts", "0", "name"]),
        format!("{user}@kubernetes")
    );
    assert_eq!(ystr(&doc, &["contexts", "0", "context", "user"]), user);
    assert_eq!(
        ystr(&doc, &["contexts", "0", "context", "cluster"]),
        "kubernetes"
    );
    assert_eq!(
        ystr(&doc, &["current-context"]),
        format!("{user}@kubernetes")
    );
    assert_eq!(ystr(&doc, &["users", "0", "name"]), user);

    let entry = doc["users"][0]["user"].clone();
    if let Some(cert_data) = entry["client-certificate-data"].as_str() {
        let decode = |d: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(d)
                .expect("base64")
        };
        let crt = tmp.join(format!("{file}.crt"));
        let key = tmp.join(format!("{file}.key"));
        fs::write(&crt, decode(cert_data)).expect("write");
        let key_data = entry["client-key-data"].as_str().expect("client-key-data");
        fs::write(&key, decode(key_data)).expect("write");
        let verify = must(
            "openssl",
            &[
                "verify",
                "-x509_strict",
                "-CAfile",
                s(&sb.path("/etc/kubernetes/pki/ca.crt")),
                s(&crt),
            ],
        );
        assert!(verify.trim_end().ends_with("OK"), "{verify}");
        let got = must("openssl", &["x509", "-noout", "-subject", "-in", s(&crt)]);
        assert_eq!(got.trim(), format!("subject={subject}"), "{file}");
        let text = must("openssl", &["x509", "-noout", "-text", "-in", s(&crt)]);
        assert_eq!(
            extension(&text, "X509v3 Extended Key Usage:").map(|e| e.1),
            Some("TLS Web Client Authentication".to_owned())
        );
        check_key_matches(&crt, &key);
    }
    entry
}

/// Every file under the sandbox, symlinks included (not followed).
fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let ft = entry.file_type().expect("file type");
        if ft.is_dir() {
            assert_eq!(mode(&entry.path()), 0o755, "{:?}", entry.path());
            walk(&entry.path(), out);
        } else {
            out.insert(entry.path());
        }
    }
}

#[test]
fn default_node_follows_the_kubeadm_spec() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let now = now();
    let opts = SandboxOptions::default();
    let sb = sandbox::write(tmp.path(), &opts, now).expect("writing the sandbox");
    let leaf_ttl = 365 * DAY;

    assert!(sb.dir.is_absolute());
    assert_eq!(sb.config_path, sb.dir.join("certrotd.toml"));

    // The files list is complete and exact.
    let mut on_disk = BTreeSet::new();
    walk(&sb.dir, &mut on_disk);
    let listed: BTreeSet<PathBuf> = sb.files.iter().cloned().collect();
    assert_eq!(listed.len(), sb.files.len(), "no duplicates");
    assert_eq!(on_disk, listed, "files lists exactly what was written");

    let pki = "/etc/kubernetes/pki";
    let specs: &[(&str, Expect<'_>)] = &[
        (
            "ca",
            Expect {
                subject: "CN = kubernetes",
                issuer_ca: "/etc/kubernetes/pki/ca.crt",
                san: Some("DNS:kubernetes"),
                eku: None,
                is_ca: true,
            },
        ),
        (
            "apiserver",
            Expect {
                subject: "CN = kube-apiserver",
                issuer_ca: "/etc/kubernetes/pki/ca.crt",
                san: Some(
                    "DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, \
                     DNS:kubernetes.default.svc.cluster.local, DNS:sandbox-cp1, \
                     IP Address:10.96.0.1, IP Address:127.0.0.1",
                ),
                eku: Some("TLS Web Server Authentication"),
                is_ca: false,
            },
        ),
        (
            "apiserver-kubelet-client",
            Expect {
                subject: "O = kubeadm:cluster-admins, CN = kube-apiserver-kubelet-client",
                issuer_ca: "/etc/kubernetes/pki/ca.crt",
                san: None,
                eku: Some("TLS Web Client Authentication"),
                is_ca: false,
            },
        ),
        (
            "front-proxy-ca",
            Expect {
                subject: "CN = front-proxy-ca",
                issuer_ca: "/etc/kubernetes/pki/front-proxy-ca.crt",
                san: Some("DNS:front-proxy-ca"),
                eku: None,
                is_ca: true,
            },
        ),
        (
            "front-proxy-client",
            Expect {
                subject: "CN = front-proxy-client",
                issuer_ca: "/etc/kubernetes/pki/front-proxy-ca.crt",
                san: None,
                eku: Some("TLS Web Client Authentication"),
                is_ca: false,
            },
        ),
        (
            "etcd/ca",
            Expect {
                subject: "CN = etcd-ca",
                issuer_ca: "/etc/kubernetes/pki/etcd/ca.crt",
                san: Some("DNS:etcd-ca"),
                eku: None,
                is_ca: true,
            },
        ),
        (
            "etcd/server",
            Expect {
                subject: "CN = sandbox-cp1",
                issuer_ca: "/etc/kubernetes/pki/etcd/ca.crt",
                san: Some(
                    "DNS:localhost, DNS:sandbox-cp1, IP Address:127.0.0.1, \
                     IP Address:0:0:0:0:0:0:0:1",
                ),
                eku: Some("TLS Web Server Authentication, TLS Web Client Authentication"),
                is_ca: false,
            },
        ),
        (
            "etcd/peer",
            Expect {
                subject: "CN = sandbox-cp1",
                issuer_ca: "/etc/kubernetes/pki/etcd/ca.crt",
                san: Some(
                    "DNS:localhost, DNS:sandbox-cp1, IP Address:127.0.0.1, \
                     IP Address:0:0:0:0:0:0:0:1",
                ),
                eku: Some("TLS Web Server Authentication, TLS Web Client Authentication"),
                is_ca: false,
            },
        ),
        (
            "etcd/healthcheck-client",
            Expect {
                subject: "CN = kube-etcd-healthcheck-client",
                issuer_ca: "/etc/kubernetes/pki/etcd/ca.crt",
                san: None,
                eku: Some("TLS Web Client Authentication"),
                is_ca: false,
            },
        ),
        (
            "apiserver-etcd-client",
            Expect {
                subject: "CN = kube-apiserver-etcd-client",
                issuer_ca: "/etc/kubernetes/pki/etcd/ca.crt",
                san: None,
                eku: Some("TLS Web Client Authentication"),
                is_ca: false,
            },
        ),
    ];
    for (base, want) in specs {
        let crt = sb.path(format!("{pki}/{base}.crt"));
        let key = sb.path(format!("{pki}/{base}.key"));
        check_cert(&sb, &crt, want, now, leaf_ttl);
        check_key_matches(&crt, &key);
        assert_eq!(
            first_line(&key),
            "-----BEGIN RSA PRIVATE KEY-----",
            "{base}"
        );
        must("openssl", &["rsa", "-check", "-noout", "-in", s(&key)]);
        assert_eq!(mode(&crt), 0o644, "{base}.crt");
        assert_eq!(mode(&key), 0o600, "{base}.key");
        let text = must("openssl", &["x509", "-noout", "-text", "-in", s(&crt)]);
        assert!(text.contains("Public-Key: (2048 bit)"), "{base}: RSA-2048");
        assert!(text.contains("sha256WithRSAEncryption"), "{base}");
        if !want.is_ca {
            let ku = extension(&text, "X509v3 Key Usage:").expect("ku").1;
            assert_eq!(ku, "Digital Signature, Key Encipherment", "{base}");
        }
    }

    // sa.key / sa.pub: a PKCS#1 private key and its PKIX public key.
    let sa_key = sb.path(format!("{pki}/sa.key"));
    let sa_pub = sb.path(format!("{pki}/sa.pub"));
    assert_eq!(first_line(&sa_key), "-----BEGIN RSA PRIVATE KEY-----");
    assert_eq!(first_line(&sa_pub), "-----BEGIN PUBLIC KEY-----");
    let derived = must("openssl", &["pkey", "-pubout", "-in", s(&sa_key)]);
    assert_eq!(derived, fs::read_to_string(&sa_pub).expect("sa.pub"));
    assert_eq!((mode(&sa_key), mode(&sa_pub)), (0o600, 0o600));

    // Kubeconfigs.
    for (file, user, subject) in [
        (
            "admin.conf",
            "kubernetes-admin",
            "O = kubeadm:cluster-admins, CN = kubernetes-admin",
        ),
        (
            "super-admin.conf",
            "kubernetes-super-admin",
            "O = system:masters, CN = kubernetes-super-admin",
        ),
        (
            "controller-manager.conf",
            "system:kube-controller-manager",
            "CN = system:kube-controller-manager",
        ),
        (
            "scheduler.conf",
            "system:kube-scheduler",
            "CN = system:kube-scheduler",
        ),
    ] {
        let entry = check_kubeconfig(&sb, file, user, subject, scratch.path());
        let key = entry["client-key-data"].as_str().expect("embedded key");
        let key = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("base64");
        assert!(
            key.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"),
            "{file}"
        );
    }
    let kubelet_entry = check_kubeconfig(
        &sb,
        "kubelet.conf",
        "system:node:sandbox-cp1",
        "",
        scratch.path(),
    );
    let current = "/var/lib/kubelet/pki/kubelet-client-current.pem";
    assert_eq!(kubelet_entry["client-certificate"].as_str(), Some(current));
    assert_eq!(kubelet_entry["client-key"].as_str(), Some(current));
    assert!(kubelet_entry["client-certificate-data"].is_null());

    // The kubelet's rotated client certificate behind an absolute symlink.
    let link = sb.path(current);
    let target = fs::read_link(&link).expect("kubelet-client-current.pem is a symlink");
    let stamp = now
        .format(time::macros::format_description!(
            "[year]-[month]-[day]-[hour]-[minute]-[second]"
        ))
        .expect("format");
    assert_eq!(
        target,
        PathBuf::from(format!("/var/lib/kubelet/pki/kubelet-client-{stamp}.pem"))
    );
    let real = sb.path(&target);
    assert_eq!(mode(&real), 0o600);
    let bundle = fs::read_to_string(&real).expect("kubelet client pem");
    let blocks = pem_blocks(&bundle);
    assert_eq!(blocks.len(), 2, "cert then key in one file");
    assert!(blocks[0].starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(blocks[1].starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let client_crt = scratch.path().join("kubelet-client.crt");
    let client_key = scratch.path().join("kubelet-client.key");
    fs::write(&client_crt, &blocks[0]).expect("write");
    fs::write(&client_key, &blocks[1]).expect("write");
    must(
        "openssl",
        &["ec", "-check", "-noout", "-in", s(&client_key)],
    );
    check_key_matches(&client_crt, &client_key);
    let verify = must(
        "openssl",
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            s(&sb.path("/etc/kubernetes/pki/ca.crt")),
            s(&real),
        ],
    );
    assert!(verify.trim_end().ends_with("OK"), "{verify}");
    let text = must("openssl", &["x509", "-noout", "-text", "-in", s(&real)]);
    let subject = must("openssl", &["x509", "-noout", "-subject", "-in", s(&real)]);
    assert_eq!(
        subject.trim(),
        "subject=O = system:nodes, CN = system:node:sandbox-cp1"
    );
    assert!(text.contains("ASN1 OID: prime256v1"), "ECDSA P-256");
    assert_eq!(
        extension(&text, "X509v3 Extended Key Usage:").map(|e| e.1),
        Some("TLS Web Client Authentication".to_owned())
    );

    // The kubelet's self-signed serving certificate: leaf, then its own CA, whose key is gone.
    let kubelet_crt = sb.path("/var/lib/kubelet/pki/kubelet.crt");
    let kubelet_key = sb.path("/var/lib/kubelet/pki/kubelet.key");
    let chain = pem_blocks(&fs::read_to_string(&kubelet_crt).expect("kubelet.crt"));
    assert_eq!(chain.len(), 2);
    let serving_ca = scratch.path().join("kubelet-ca.crt");
    fs::write(&serving_ca, &chain[1]).expect("write");
    let verify = must(
        "openssl",
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            s(&serving_ca),
            s(&kubelet_crt),
        ],
    );
    assert!(verify.trim_end().ends_with("OK"), "{verify}");
    let ts = now.unix_timestamp();
    let subject = must(
        "openssl",
        &["x509", "-noout", "-subject", "-in", s(&kubelet_crt)],
    );
    assert_eq!(subject.trim(), format!("subject=CN = sandbox-cp1@{ts}"));
    let issuer = must(
        "openssl",
        &["x509", "-noout", "-issuer", "-in", s(&kubelet_crt)],
    );
    assert_eq!(issuer.trim(), format!("issuer=CN = sandbox-cp1-ca@{ts}"));
    let text = must(
        "openssl",
        &["x509", "-noout", "-text", "-in", s(&kubelet_crt)],
    );
    assert_eq!(
        extension(&text, "X509v3 Subject Alternative Name:").map(|e| e.1),
        Some("DNS:sandbox-cp1".to_owned())
    );
    assert_eq!(first_line(&kubelet_key), "-----BEGIN RSA PRIVATE KEY-----");
    check_key_matches(&kubelet_crt, &kubelet_key);
    assert_eq!((mode(&kubelet_crt), mode(&kubelet_key)), (0o644, 0o600));
    assert!(
        !sb.files.iter().any(|f| f.ends_with("kubelet-ca.key")),
        "the serving CA's key is discarded"
    );

    let kubelet_config = yaml(&sb.path("/var/lib/kubelet/config.yaml"));
    assert_eq!(ystr(&kubelet_config, &["kind"]), "KubeletConfiguration");
    assert_eq!(
        kubelet_config["rotateCertificates"].as_bool(),
        Some(true),
        "rotateCertificates"
    );

    // Static pod manifests: kubeadm's flags, and every file they name exists in the sandbox.
    let mut flags = Vec::new();
    for component in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let path = sb.path(format!("/etc/kubernetes/manifests/{component}.yaml"));
        assert_eq!(mode(&path), 0o600, "{component}");
        let pod = yaml(&path);
        assert_eq!(ystr(&pod, &["kind"]), "Pod");
        assert_eq!(ystr(&pod, &["metadata", "name"]), component);
        assert_eq!(ystr(&pod, &["metadata", "namespace"]), "kube-system");
        assert_eq!(ystr(&pod, &["metadata", "labels", "component"]), component);
        let command = pod["spec"]["containers"][0]["command"]
            .as_sequence()
            .expect("command list");
        assert_eq!(command[0].as_str(), Some(component));
        for arg in command.iter().filter_map(|a| a.as_str()) {
            if let Some((_, value)) = arg.split_once('=')
                && value.starts_with("/etc/kubernetes/")
                && !value.ends_with('/')
            {
                assert!(
                    sb.path(value).exists(),
                    "{component}: {arg} names a file the sandbox wrote"
                );
            }
            flags.push(arg.to_owned());
        }
    }
    for flag in [
        "--tls-cert-file=/etc/kubernetes/pki/apiserver.crt",
        "--tls-private-key-file=/etc/kubernetes/pki/apiserver.key",
        "--kubelet-client-certificate=/etc/kubernetes/pki/apiserver-kubelet-client.crt",
        "--proxy-client-cert-file=/etc/kubernetes/pki/front-proxy-client.crt",
        "--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt",
        "--service-account-key-file=/etc/kubernetes/pki/sa.pub",
        "--cert-file=/etc/kubernetes/pki/etcd/server.crt",
        "--peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt",
        "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key",
        "--kubeconfig=/etc/kubernetes/scheduler.conf",
    ] {
        assert!(flags.iter().any(|f| f == flag), "missing {flag}");
    }

    // certrotd.toml with the config schema's keys and the default windows.
    let config: toml::Table = fs::read_to_string(&sb.config_path)
        .expect("config")
        .parse()
        .expect("valid TOML");
    assert_eq!(config["root"].as_str(), sb.dir.to_str());
    assert_eq!(config["node_name"].as_str(), Some("sandbox-cp1"));
    assert_eq!(config["layout"].as_str(), Some("kubeadm"));
    assert_eq!(config["state_dir"].as_str(), Some("/var/lib/certrotd"));
    assert_eq!(config["policy"]["notify_before"].as_str(), Some("60d"));
    assert_eq!(config["policy"]["renew_before"].as_str(), Some("30d"));
    assert_eq!(config["policy"]["emergency_before"].as_str(), Some("7d"));
    assert_eq!(config["renew"]["validity"].as_str(), Some("365d"));
    assert_eq!(config["renew"]["key_policy"].as_str(), Some("new"));
    assert!(config["renew"]["backups_keep"].as_integer().is_some());
}

#[test]
fn ecdsa_node_with_embedded_kubelet_conf_and_no_super_admin() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let opts = SandboxOptions {
        node_name: "cp-2.example".to_owned(),
        advertise_address: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        key: KeySpec::EcdsaP256,
        kubelet_conf_embedded: true,
        super_admin: false,
        ..SandboxOptions::default()
    };
    let sb = sandbox::write(tmp.path(), &opts, now()).expect("writing the sandbox");

    for base in [
        "ca",
        "apiserver",
        "etcd/ca",
        "etcd/peer",
        "front-proxy-client",
    ] {
        let key = sb.path(format!("/etc/kubernetes/pki/{base}.key"));
        let crt = sb.path(format!("/etc/kubernetes/pki/{base}.crt"));
        assert_eq!(first_line(&key), "-----BEGIN EC PRIVATE KEY-----", "{base}");
        must("openssl", &["ec", "-check", "-noout", "-in", s(&key)]);
        check_key_matches(&crt, &key);
        let text = must("openssl", &["x509", "-noout", "-text", "-in", s(&crt)]);
        assert!(text.contains("ecdsa-with-SHA256"), "{base}");
    }
    let sa_key = sb.path("/etc/kubernetes/pki/sa.key");
    assert_eq!(first_line(&sa_key), "-----BEGIN EC PRIVATE KEY-----");

    let apiserver = sb.path("/etc/kubernetes/pki/apiserver.crt");
    let text = must(
        "openssl",
        &["x509", "-noout", "-text", "-in", s(&apiserver)],
    );
    assert_eq!(
        extension(&text, "X509v3 Subject Alternative Name:").map(|e| e.1),
        Some(
            "DNS:cp-2.example, DNS:kubernetes, DNS:kubernetes.default, \
             DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, \
             IP Address:10.96.0.1, IP Address:10.1.2.3"
                .to_owned()
        )
    );
    let etcd = sb.path("/etc/kubernetes/pki/etcd/server.crt");
    let text = must("openssl", &["x509", "-noout", "-text", "-in", s(&etcd)]);
    assert_eq!(
        extension(&text, "X509v3 Subject Alternative Name:").map(|e| e.1),
        Some(
            "DNS:cp-2.example, DNS:localhost, IP Address:10.1.2.3, IP Address:127.0.0.1, \
             IP Address:0:0:0:0:0:0:0:1"
                .to_owned()
        )
    );

    assert!(!sb.path("/etc/kubernetes/super-admin.conf").exists());
    let kubelet_conf = sb.path("/etc/kubernetes/kubelet.conf");
    let view = must(
        "kubectl",
        &["config", "view", "--raw", "--kubeconfig", s(&kubelet_conf)],
    );
    assert!(view.contains("server: https://10.1.2.3:6443"), "{view}");
    let doc = yaml(&kubelet_conf);
    let user = &doc["users"][0]["user"];
    assert!(user["client-certificate"].is_null());
    let decode = |key: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(user[key].as_str().expect("embedded"))
            .expect("base64")
    };
    let crt = scratch.path().join("kubelet.crt");
    let key = scratch.path().join("kubelet.key");
    fs::write(&crt, decode("client-certificate-data")).expect("write");
    fs::write(&key, decode("client-key-data")).expect("write");
    assert_eq!(first_line(&key), "-----BEGIN EC PRIVATE KEY-----");
    check_key_matches(&crt, &key);
    let subject = must("openssl", &["x509", "-noout", "-subject", "-in", s(&crt)]);
    assert_eq!(
        subject.trim(),
        "subject=O = system:nodes, CN = system:node:cp-2.example"
    );
    let verify = must(
        "openssl",
        &[
            "verify",
            "-CAfile",
            s(&sb.path("/etc/kubernetes/pki/ca.crt")),
            s(&crt),
        ],
    );
    assert!(verify.trim_end().ends_with("OK"), "{verify}");

    let etcd_manifest = yaml(&sb.path("/etc/kubernetes/manifests/etcd.yaml"));
    let command: Vec<&str> = etcd_manifest["spec"]["containers"][0]["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(command.contains(&"--listen-client-urls=https://127.0.0.1:2379,https://10.1.2.3:2379"));
    assert!(command.contains(&"--initial-cluster=cp-2.example=https://10.1.2.3:2380"));
}

#[test]
fn past_now_makes_an_expired_set_and_short_ttls_scale_the_policy() {
    // 400 days ago with one-year leaves: every leaf expired, the CAs still valid.
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = SandboxOptions {
        key: KeySpec::EcdsaP256,
        ..SandboxOptions::default()
    };
    let then = now() - time::Duration::days(400);
    let sb = sandbox::write(tmp.path(), &opts, then).expect("writing the sandbox");
    for leaf in [
        "/etc/kubernetes/pki/apiserver.crt",
        "/etc/kubernetes/pki/etcd/server.crt",
        "/etc/kubernetes/pki/front-proxy-client.crt",
        "/var/lib/kubelet/pki/kubelet-client-current.pem",
        "/var/lib/kubelet/pki/kubelet.crt",
    ] {
        let path = sb.path(leaf);
        let (valid, _) = run(
            "openssl",
            &["x509", "-checkend", "0", "-noout", "-in", s(&path)],
        );
        assert!(!valid, "{leaf} has expired");
    }
    for ca in ["ca", "etcd/ca", "front-proxy-ca"] {
        let path = sb.path(format!("/etc/kubernetes/pki/{ca}.crt"));
        must(
            "openssl",
            &["x509", "-checkend", "0", "-noout", "-in", s(&path)],
        );
    }
    let ca = sb.path("/etc/kubernetes/pki/ca.crt");
    let apiserver = sb.path("/etc/kubernetes/pki/apiserver.crt");
    let (ok, out) = run("openssl", &["verify", "-CAfile", s(&ca), s(&apiserver)]);
    assert!(!ok && out.contains("expired"), "{out}");
    must(
        "openssl",
        &["verify", "-no_check_time", "-CAfile", s(&ca), s(&apiserver)],
    );

    // Ten-minute leaves: the policy windows shrink to fit, so the set renews on its own.
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = SandboxOptions {
        key: KeySpec::EcdsaP256,
        leaf_ttl: Duration::from_secs(600),
        ..SandboxOptions::default()
    };
    let now = now();
    let sb = sandbox::write(tmp.path(), &opts, now).expect("writing the sandbox");
    let config: toml::Table = fs::read_to_string(&sb.config_path)
        .expect("config")
        .parse()
        .expect("valid TOML");
    assert_eq!(config["policy"]["notify_before"].as_str(), Some("6m"));
    assert_eq!(config["policy"]["renew_before"].as_str(), Some("3m"));
    assert_eq!(config["policy"]["emergency_before"].as_str(), Some("1m"));
    assert_eq!(config["renew"]["validity"].as_str(), Some("10m"));
    let apiserver = sb.path("/etc/kubernetes/pki/apiserver.crt");
    must(
        "openssl",
        &["x509", "-checkend", "0", "-noout", "-in", s(&apiserver)],
    );
    let (valid, _) = run(
        "openssl",
        &["x509", "-checkend", "601", "-noout", "-in", s(&apiserver)],
    );
    assert!(!valid, "expires within ten minutes");
}

#[test]
fn refuses_to_touch_an_existing_pki() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("etc/kubernetes/pki");
    fs::create_dir_all(&pki).expect("mkdir");
    fs::write(pki.join("ca.key"), "precious").expect("write");
    let opts = SandboxOptions {
        key: KeySpec::EcdsaP256,
        ..SandboxOptions::default()
    };
    let err = sandbox::write(tmp.path(), &opts, now()).expect_err("must refuse");
    assert!(matches!(err, SandboxError::PkiExists { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("etc/kubernetes/pki"),
        "error names the PKI: {msg}"
    );
    assert_eq!(
        fs::read_to_string(pki.join("ca.key")).expect("read"),
        "precious"
    );
    assert!(
        !tmp.path().join("certrotd.toml").exists(),
        "nothing written"
    );

    // A sandbox is itself a PKI: writing a second one over it is refused too.
    let tmp = tempfile::tempdir().expect("tempdir");
    sandbox::write(tmp.path(), &opts, now()).expect("first sandbox");
    let err = sandbox::write(tmp.path(), &opts, now()).expect_err("second must refuse");
    assert!(matches!(err, SandboxError::PkiExists { .. }), "{err:?}");

    let bad = SandboxOptions {
        node_name: "Not_A_DNS_Name".to_owned(),
        ..opts
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = sandbox::write(tmp.path(), &bad, now()).expect_err("invalid node name");
    assert!(matches!(err, SandboxError::Options(_)), "{err:?}");
}
