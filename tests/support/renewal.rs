//! Harness for renewal tests: sandbox nodes driven through the real `certrotd` binary, snapshots of
//! a node's files, and the independent judges (openssl, kubectl) applied to a whole node.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use certrotd::inventory::{Entry, KeyState, Origin};
use certrotd::pki::cert::Cert;
use certrotd::pki::encode;
use certrotd::pki::layout::Layout;
use certrotd::sandbox::{self, SandboxOptions};
use time::OffsetDateTime;

use super::{copy_tree, openssl, scan};

/// The node directories a rotation may touch (relative to the root).
pub const NODE_DIRS: &[&str] = &["etc/kubernetes", "var/lib/kubelet"];

/// What one `certrotd` run did.
#[derive(Debug)]
pub struct Run {
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Run {
    /// Both streams, for assertion messages.
    pub fn text(&self) -> String {
        format!(
            "status: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Asserts exit code 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "certrotd failed:\n{}", self.text());
        &self.stdout
    }

    /// Asserts this exit code.
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(self.status.code(), Some(code), "{}", self.text());
        self
    }
}

/// A node root in a temp directory, with the certrotd configuration the sandbox wrote.
pub struct Node {
    /// Keeps the directory alive.
    pub tmp: tempfile::TempDir,
    /// The node root.
    pub root: PathBuf,
}

impl Node {
    /// A sandbox kubeadm node made now.
    pub fn sandbox(opts: &SandboxOptions) -> Node {
        Self::sandbox_at(opts, OffsetDateTime::now_utc())
    }

    /// A sandbox kubeadm node made at `now`.
    pub fn sandbox_at(opts: &SandboxOptions, now: OffsetDateTime) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let sb = sandbox::write(&tmp.path().join("node"), opts, now).unwrap();
        Node { root: sb.dir, tmp }
    }

    /// A node root around a copy of a directory tree (`config` is written as its certrotd.toml).
    pub fn from_tree(from: &Path, at: &str, config: &str) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("node");
        copy_tree(from, &root.join(at));
        std::fs::write(root.join("certrotd.toml"), config).unwrap();
        Node {
            root: root.canonicalize().unwrap(),
            tmp,
        }
    }

    /// An independent copy of this node (files, modes and symlinks).
    pub fn copy(&self) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("node");
        copy_tree(&self.root, &root);
        Node {
            root: root.canonicalize().unwrap(),
            tmp,
        }
    }

    /// The real path of a node path.
    pub fn path(&self, node_path: &str) -> PathBuf {
        self.root.join(node_path.trim_start_matches('/'))
    }

    /// The state directory (the sandbox configures /var/lib/certrotd).
    pub fn state(&self) -> PathBuf {
        self.path("/var/lib/certrotd")
    }

    /// Runs `certrotd <cmd> --root R --config R/certrotd.toml <extra…>` with extra environment.
    pub fn run_env(&self, cmd: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
        let root = self.root.to_str().unwrap();
        let config = self.root.join("certrotd.toml");
        let mut c = Command::new(env!("CARGO_BIN_EXE_certrotd"));
        c.arg(cmd)
            .args(["--root", root, "--config", config.to_str().unwrap()])
            .args(extra)
            .env("CERTROTD_LOG", "warn");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a certrotd command on this node.
    pub fn run(&self, cmd: &str, extra: &[&str]) -> Run {
        self.run_env(cmd, extra, &[])
    }

    /// The rotation ids that have a journal, oldest first.
    pub fn rotations(&self) -> Vec<String> {
        let dir = self.state().join("rotations");
        let mut ids: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

/// What a path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// A regular file: content and permission bits.
    File(Vec<u8>, u32),
    /// A symlink and its target text.
    Link(PathBuf),
}

/// Every file and symlink under the node directories, by path relative to the root.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Held> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Held>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            if meta.file_type().is_symlink() {
                out.insert(rel, Held::Link(std::fs::read_link(&p).unwrap()));
            } else if meta.is_dir() {
                walk(root, &p, out);
            } else {
                let mode = meta.permissions().mode() & 0o7777;
                out.insert(rel, Held::File(std::fs::read(&p).unwrap(), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    for d in NODE_DIRS {
        walk(root, &root.join(d), &mut out);
    }
    out
}

/// The leaf entries of a node's inventory (what `--type all` covers).
pub fn leaves(entries: &[Entry]) -> impl Iterator<Item = &Entry> {
    entries.iter().filter(|e| {
        !e.is_ca()
            && !matches!(
                e.origin,
                Origin::Bundled { .. } | Origin::KubeconfigCa { .. }
            )
    })
}

/// The node's PKI is whole: every leaf parses, has its matching key and a signer on the node,
/// `openssl verify` accepts it against that signer, and no temp file is left anywhere.
pub fn assert_consistent(root: &Path, layouts: Option<Vec<Layout>>, extra: &[&str]) {
    let inv = scan(root, layouts, extra);
    let mut by_signer: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut n = 0;
    for e in leaves(&inv.entries) {
        assert!(e.problems.is_empty(), "{}: {:?}", e.name, e.problems);
        let cert = e
            .cert
            .as_ref()
            .unwrap_or_else(|| panic!("{} unreadable", e.name));
        assert_eq!(e.key, KeyState::Match, "{}: key", e.name);
        let signer = e
            .signer
            .clone()
            .unwrap_or_else(|| panic!("{}: no signer on the node", e.name));
        by_signer
            .entry(signer)
            .or_default()
            .push((e.name.clone(), cert.der.clone()));
        n += 1;
    }
    assert!(n > 0, "no leaf certificate under {}", root.display());
    for (signer, certs) in by_signer {
        let ca = inv.get(&signer).unwrap().cert.as_ref().unwrap();
        let names: Vec<&str> = certs.iter().map(|(n, _)| n.as_str()).collect();
        let ders: Vec<&[u8]> = certs.iter().map(|(_, d)| d.as_slice()).collect();
        openssl_verify(&ca.der, &ders, &format!("{names:?} against {signer}"));
    }
    assert_no_temps(root);
}

/// No `.certrotd-tmp.` file anywhere under the root.
pub fn assert_no_temps(root: &Path) {
    fn walk(dir: &Path) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".certrotd-tmp."),
                "temp file left: {}",
                e.path().display()
            );
            if e.file_type().unwrap().is_dir() {
                walk(&e.path());
            }
        }
    }
    walk(root);
}

/// `openssl verify -CAfile ca` accepts every certificate.
pub fn openssl_verify(ca_der: &[u8], leaves: &[&[u8]], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, encode::cert_pem(ca_der)).unwrap();
    let mut args = vec![
        "verify".to_owned(),
        "-CAfile".to_owned(),
        ca.to_str().unwrap().to_owned(),
    ];
    for (i, der) in leaves.iter().enumerate() {
        let p = dir.path().join(format!("leaf{i}.pem"));
        std::fs::write(&p, encode::cert_pem(der)).unwrap();
        args.push(p.to_str().unwrap().to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = openssl(&args, None);
    assert_eq!(
        out.lines().filter(|l| l.ends_with(": OK")).count(),
        leaves.len(),
        "openssl verify {what}:\n{out}"
    );
}

/// openssl's text dump minus the lines a renewal changes by design (serial, validity, key,
/// signature, and the subject key identifier that follows the key).
pub fn comparable_text(der: &[u8]) -> Vec<String> {
    let text = openssl(&["x509", "-inform", "DER", "-noout", "-text"], Some(der));
    let mut out = Vec::new();
    let mut skip_block = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Serial Number")
            || t.starts_with("Not Before")
            || t.starts_with("Not After")
        {
            skip_block = t.starts_with("Serial Number") && t.ends_with(':');
            continue;
        }
        if t.starts_with("Subject Public Key Info") || t.starts_with("Signature Value") {
            skip_block = true;
            continue;
        }
        if t.starts_with("X509v3 Subject Key Identifier") {
            skip_block = true;
            continue;
        }
        if skip_block {
            if line.starts_with("        ")
                && !t.starts_with("X509v3")
                && !t.starts_with("Subject:")
                && !t.starts_with("Signature Algorithm")
                && !t.starts_with("Issuer:")
            {
                continue;
            }
            skip_block = false;
        }
        out.push(t.to_string());
    }
    out
}

/// A renewed certificate agrees with the old one field by field (openssl's text and our parser)
/// except serial, validity and key; `same_key` says whether the key was reused.
pub fn assert_renewed_faithfully(name: &str, old: &Cert, new: &Cert, same_key: bool) {
    assert_eq!(
        comparable_text(&new.der),
        comparable_text(&old.der),
        "{name}"
    );
    assert_eq!(new.subject_der, old.subject_der, "{name}: subject");
    assert_eq!(new.issuer_der, old.issuer_der, "{name}: issuer");
    assert_eq!(new.organizations, old.organizations, "{name}: O");
    assert_eq!(new.sans, old.sans, "{name}: SANs");
    assert_eq!(new.key_usages, old.key_usages, "{name}: KU");
    assert_eq!(new.ext_key_usages, old.ext_key_usages, "{name}: EKU");
    assert_eq!(
        new.key_algorithm, old.key_algorithm,
        "{name}: key algorithm"
    );
    assert_eq!(
        new.has_basic_constraints, old.has_basic_constraints,
        "{name}: basic constraints"
    );
    assert_ne!(new.serial, old.serial, "{name}: serial");
    // Whole seconds: a node renewed within the second it was made has an equal NotAfter.
    assert!(new.not_after >= old.not_after, "{name}: not after");
    assert_eq!(new.public_key == old.public_key, same_key, "{name}: key");
}

/// `kubectl config view --raw` reads the kubeconfig.
pub fn assert_kubectl_reads(path: &Path) -> String {
    let out = Command::new("kubectl")
        .args([
            "config",
            "view",
            "--raw",
            "--kubeconfig",
            path.to_str().unwrap(),
        ])
        .output()
        .expect("kubectl must be installed (make test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl config view {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// openssl agrees that the private key PEM belongs to the certificate PEM.
pub fn assert_openssl_key_matches(what: &str, cert_pem: &[u8], key_pem: &[u8]) {
    let from_cert = openssl(&["x509", "-noout", "-pubkey"], Some(cert_pem));
    let from_key = openssl(&["pkey", "-pubout"], Some(key_pem));
    assert_eq!(
        from_cert, from_key,
        "{what}: key does not match certificate"
    );
}
