//! A corpus of broken input. Every case becomes a named problem on its entry (naming the file),
//! nothing panics, nothing is written, and the rest of the node is still inventoried.
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).

use crate::support;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use certrotd::inventory::KeyState;
use certrotd::pki::pem;
use support::*;

fn write(root: &Path, node: &str, data: impl AsRef<[u8]>) {
    let p = root.join(node.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, data).unwrap();
}

fn read(root: &Path, node: &str) -> Vec<u8> {
    std::fs::read(root.join(node.trim_start_matches('/'))).unwrap()
}

/// A kubeadm node (a real set, re-signed with generated keys) with one broken file per case, plus
/// extra files in /extra.
fn corpus() -> tempfile::TempDir {
    let tmp = kubeadm_resigned_root("kubeadm-zeta");
    let r = tmp.path();
    for e in walk(r) {
        // The fixture files are read-only copies; the corpus rewrites some of them.
        std::fs::set_permissions(&e, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let pki = "/etc/kubernetes/pki";
    let ca = read(r, &format!("{pki}/ca.crt"));
    let ca_text = String::from_utf8(ca.clone()).unwrap();
    let der = pem::blocks(Path::new("ca"), &ca).unwrap()[0].der.clone();
    // kubeadm files, broken in place
    let apiserver = read(r, &format!("{pki}/apiserver.crt"));
    write(
        r,
        &format!("{pki}/apiserver.crt"),
        &apiserver[..apiserver.len() / 2],
    );
    write(
        r,
        &format!("{pki}/front-proxy-client.crt"),
        b"\x00\x01garbage\xff\xfe binary",
    );
    write(r, &format!("{pki}/etcd/server.crt"), b"");
    std::fs::remove_file(r.join("etc/kubernetes/pki/etcd/peer.crt")).unwrap();
    std::fs::create_dir(r.join("etc/kubernetes/pki/etcd/peer.crt")).unwrap();
    std::fs::remove_file(r.join("etc/kubernetes/pki/apiserver-kubelet-client.crt")).unwrap();
    symlink(
        "/nonexistent/x.crt",
        r.join("etc/kubernetes/pki/apiserver-kubelet-client.crt"),
    )
    .unwrap();
    std::fs::remove_file(r.join("etc/kubernetes/pki/etcd/healthcheck-client.crt")).unwrap();
    symlink(
        "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
        r.join("etc/kubernetes/pki/etcd/healthcheck-client.crt"),
    )
    .unwrap();
    let big = vec![b'A'; 50 * 1024 * 1024];
    write(r, &format!("{pki}/apiserver-etcd-client.crt"), &big);
    // A key that belongs to another certificate.
    let other_key = read(r, &format!("{pki}/front-proxy-ca.key"));
    write(r, &format!("{pki}/etcd/ca.key"), &other_key);
    // sa.pub of another key
    let sa_other = openssl(
        &["pkey", "-pubout"],
        Some(&read(r, &format!("{pki}/ca.key"))),
    );
    write(r, &format!("{pki}/sa.pub"), sa_other);
    // kubeconfigs
    let admin = String::from_utf8(read(r, "/etc/kubernetes/admin.conf")).unwrap();
    let broken_b64 = admin.replacen(
        "client-certificate-data: ",
        "client-certificate-data: x-y_z",
        1,
    );
    write(r, "/etc/kubernetes/admin.conf", broken_b64);
    write(
        r,
        "/etc/kubernetes/scheduler.conf",
        "{{{ this: is: not yaml",
    );
    write(
        r,
        "/etc/kubernetes/controller-manager.conf",
        "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\n",
    );
    // extra files, one case each
    let x = "/extra";
    write(r, &format!("{x}/crlf.crt"), ca_text.replace('\n', "\r\n"));
    write(r, &format!("{x}/der.crt"), &der);
    write(
        r,
        &format!("{x}/publickey-only.crt"),
        pem::encode("PUBLIC KEY", b"\x30\x00"),
    );
    write(
        r,
        &format!("{x}/not-x509.crt"),
        pem::encode("CERTIFICATE", b"\x30\x03\x02\x01\x05"),
    );
    write(
        r,
        &format!("{x}/bad-base64.crt"),
        "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
    );
    write(
        r,
        &format!("{x}/no-end.crt"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    );
    write(
        r,
        &format!("{x}/text-only.crt"),
        "just some notes, no certificate here\n",
    );
    // A certificate whose key file holds something else.
    write(r, &format!("{x}/keyisacert.crt"), &ca);
    write(r, &format!("{x}/keyisacert.key"), &ca);
    write(r, &format!("{x}/encrypted.crt"), &ca);
    write(
        r,
        &format!("{x}/encrypted.key"),
        pem::encode("ENCRYPTED PRIVATE KEY", b"\x30\x00"),
    );
    write(r, &format!("{x}/dsa.crt"), &ca);
    write(
        r,
        &format!("{x}/dsa.key"),
        pem::encode("DSA PRIVATE KEY", b"\x30\x00"),
    );
    write(r, &format!("{x}/corrupt-key.crt"), &ca);
    write(
        r,
        &format!("{x}/corrupt-key.key"),
        pem::encode("RSA PRIVATE KEY", b"\x30\x03\x02\x01\x00"),
    );
    // A leaf naming "kubernetes" as issuer but signed by another CA of that name, not on the node.
    write(r, &format!("{x}/forged.crt"), forged_leaf());
    nix::unistd::mkfifo(
        &r.join("extra/fifo.crt"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    write(
        r,
        &format!("{x}/kubeconfig-missing-ref.kubeconfig"),
        "apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n    client-certificate: /nope/u.crt\n    client-key: /nope/u.key\nclusters: []\n",
    );
    tmp
}

fn forged_leaf() -> String {
    let d = tempfile::tempdir().unwrap();
    let p = |f: &str| d.path().join(f).to_str().unwrap().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    // The same name in the same encoding as kubeadm's CA (PrintableString, as Go writes it), so
    // the issuer matches byte for byte and only the signature tells the two CAs apart.
    let config = p("req.cnf");
    std::fs::write(
        &config,
        "[ req ]\ndistinguished_name = dn\nstring_mask = default\n[ dn ]\n",
    )
    .unwrap();
    let mut ca = vec!["req", "-x509", "-config", &config];
    ca.extend(ec);
    let (ca_key, ca_crt, leaf_key, csr) = (p("ca.key"), p("ca.crt"), p("leaf.key"), p("leaf.csr"));
    ca.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_crt,
        "-subj",
        "/CN=kubernetes",
        "-days",
        "2",
    ]);
    openssl(&ca, None);
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-keyout",
        &leaf_key,
        "-out",
        &csr,
        "-subj",
        "/CN=kube-apiserver",
    ]);
    openssl(&req, None);
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-days",
            "1",
            "-set_serial",
            "7",
        ],
        None,
    )
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(walk(&e.path()));
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    out
}

const CASES: &[(&str, &str)] = &[
    ("apiserver", "truncated"),
    ("front-proxy-client", "no PEM block"),
    ("etcd-server", "file is empty"),
    ("etcd-peer", "not a regular file (a directory)"),
    (
        "apiserver-kubelet-client",
        "dangling symlink to /nonexistent/x.crt",
    ),
    (
        "etcd-healthcheck-client",
        "too many levels of symbolic links",
    ),
    ("apiserver-etcd-client", "larger than"),
    ("etcd-ca", "private key does not match"),
    (
        "admin.conf",
        "users[kubernetes-admin].client-certificate-data: invalid base64",
    ),
    ("scheduler.conf", "not a valid kubeconfig"),
    ("controller-manager.conf", "holds no client certificate"),
    ("der.crt", "looks like DER"),
    (
        "publickey-only.crt",
        "no CERTIFICATE block (found PUBLIC KEY)",
    ),
    ("not-x509.crt", "not a valid X.509 certificate"),
    ("bad-base64.crt", "base64"),
    ("no-end.crt", "truncated"),
    ("text-only.crt", "no PEM block"),
    ("keyisacert.crt", "no private key block"),
    ("encrypted.crt", "encrypted"),
    ("dsa.crt", "no private key block (found DSA PRIVATE KEY)"),
    (
        "corrupt-key.crt",
        "unsupported or corrupt PKCS#1 RSA private key",
    ),
    ("forged.crt", "signature does not verify against ca"),
    ("fifo.crt", "not a regular file"),
    ("kubeconfig-missing-ref.kubeconfig", "/nope/u.crt"),
];

#[test]
fn every_bad_input_is_a_named_problem() {
    let root = corpus();
    let before = snapshot(root.path());
    let inv = scan(root.path(), None, &["/extra/*"]);
    let mut names: Vec<&str> = inv.entries.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    for (name, expected) in CASES {
        let e = inv
            .get(name)
            .unwrap_or_else(|| panic!("no entry {name}; entries: {names:?}"));
        assert!(
            e.problems.iter().any(|p| p.contains(expected)),
            "{name}: expected a problem containing {expected:?}, got {:?}",
            e.problems
        );
    }
    assert!(CASES.len() >= 20);
    // Problems that are about a file name that file.
    let peer = inv.get("etcd-peer").unwrap();
    assert!(
        peer.problems[0].contains("etcd/peer.crt"),
        "{:?}",
        peer.problems
    );
    // CRLF line endings are simply read.
    let crlf = inv.get("crlf.crt").unwrap();
    assert!(
        crlf.problems.is_empty() && crlf.cert.is_some(),
        "{:?}",
        crlf.problems
    );
    // The rest of the node is still there and fine.
    assert_eq!(inv.get("ca").unwrap().key, KeyState::Match);
    assert!(inv.get("front-proxy-ca").unwrap().problems.is_empty());
    let sa = &inv.key_pairs[0];
    assert_eq!(sa.key_match, Some(false));
    assert!(sa.problems[0].contains("sa.pub"), "{:?}", sa.problems);
    // Nothing was written.
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn check_reports_the_corpus_without_panicking() {
    let root = corpus();
    write(
        root.path(),
        "/etc/certrotd/certrotd.toml",
        "[inventory]\nextra_paths = [\"/extra/*\"]\n",
    );
    for format in ["table", "json"] {
        let out = Command::new(env!("CARGO_BIN_EXE_certrotd"))
            .args(["check", "--root"])
            .arg(root.path())
            .args(["-o", format])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains("invalid"), "{stdout}");
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert!(v["certificates"].as_array().unwrap().len() > 20);
        }
    }
}

#[test]
fn unreadable_files_are_named_when_not_root() {
    // Root reads everything, so the check runs as nobody over a tree it may traverse.
    let root = kubeadm_fixture_root("kubeadm-maxxmoney");
    let mut dirs = vec![root.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
    }
    let secret = root.path().join("etc/kubernetes/pki/apiserver.crt");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bin = env!("CARGO_BIN_EXE_certrotd");
    // The test binary's directory must be reachable by nobody too; target/ normally is.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin,
            "check",
            "-o",
            "json",
            "--root",
        ])
        .arg(root.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let apiserver = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "apiserver")
        .unwrap();
    let problem = apiserver["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("apiserver.crt: cannot read: Permission denied"),
        "{problem}"
    );
}

/// Every file's path, size and modification time.
fn snapshot(root: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = walk(root)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap();
            (p, m.len(), m.modified().unwrap())
        })
        .collect();
    v.sort();
    v
}
