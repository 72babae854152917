//! Shared test harness: node roots from fixtures and sandboxes, and openssl as an independent judge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cfssl;
pub mod cluster;
pub mod etcd;
pub mod systemd;

use std::path::{Path, PathBuf};
use std::process::Command;

use certrotd::inventory::{self, Inventory};
use certrotd::pki::layout::Layout;
use certrotd::root::Root;

pub mod renewal;

/// The real-world certificate sets as those clusters wrote them (`tests/fixtures/<set>`):
/// certificates, public keys and kubeconfigs, without the clusters' private keys.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The same sets made whole again (`tests/fixtures/resigned/<set>`): every private key generated
/// in its original's format, every certificate re-signed by its issuer's generated key with
/// everything but its public key kept (tests/fixtures/README.md). Tests that need a key or a
/// matching pair use these.
pub fn resigned() -> PathBuf {
    fixtures().join("resigned")
}

/// Copies a directory tree (files, dirs and symlinks), keeping modes.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dst);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// A node root holding the real kubeadm set `name` at /etc/kubernetes, as its README says to
/// place it (certificates only: its private keys are not in the repository).
pub fn kubeadm_fixture_root(name: &str) -> tempfile::TempDir {
    kubeadm_root_from(&fixtures().join(name))
}

/// A node root holding the re-signed kubeadm set `name` (with keys) at /etc/kubernetes.
pub fn kubeadm_resigned_root(name: &str) -> tempfile::TempDir {
    kubeadm_root_from(&resigned().join(name))
}

fn kubeadm_root_from(set: &Path) -> tempfile::TempDir {
    assert!(set.is_dir(), "{} is not a fixture set", set.display());
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(set, &tmp.path().join("etc/kubernetes"));
    tmp
}

/// Scans a root.
pub fn scan(root: &Path, layouts: Option<Vec<Layout>>, extra: &[&str]) -> Inventory {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    inventory::scan(&inventory::ScanRequest {
        root: &Root::new(root),
        layouts,
        extra_paths: &extra,
    })
}

/// Runs openssl and returns stdout; panics with stderr on failure.
pub fn openssl(args: &[&str], stdin: Option<&[u8]>) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl must be installed (make test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What openssl says about a DER certificate: (CN, [O…], notBefore unix, notAfter unix, serial hex).
pub struct OpensslView {
    pub cn: Option<String>,
    pub organizations: Vec<String>,
    pub issuer_cn: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub serial: String,
}

pub fn openssl_view(der: &[u8]) -> OpensslView {
    let text = openssl(
        &[
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-subject",
            "-issuer",
            "-dates",
            "-serial",
            "-nameopt",
            "multiline,utf8,-esc_msb",
        ],
        Some(der),
    );
    let mut view = OpensslView {
        cn: None,
        organizations: vec![],
        issuer_cn: None,
        not_before: 0,
        not_after: 0,
        serial: String::new(),
    };
    let mut section = "";
    for line in text.lines() {
        let t = line.trim();
        if line.starts_with("subject=") {
            section = "subject";
        } else if line.starts_with("issuer=") {
            section = "issuer";
        } else if let Some(v) = t.strip_prefix("commonName") {
            let v = v.trim_start().trim_start_matches('=').trim().to_string();
            match section {
                "subject" => view.cn = Some(v),
                _ => view.issuer_cn = Some(v),
            }
        } else if let Some(v) = t.strip_prefix("organizationName") {
            if section == "subject" {
                view.organizations
                    .push(v.trim_start().trim_start_matches('=').trim().to_string());
            }
        } else if let Some(v) = t.strip_prefix("notBefore=") {
            view.not_before = openssl_date(v);
        } else if let Some(v) = t.strip_prefix("notAfter=") {
            view.not_after = openssl_date(v);
        } else if let Some(v) = t.strip_prefix("serial=") {
            view.serial = normalize_serial(v);
        }
    }
    view
}

pub fn normalize_serial(s: &str) -> String {
    let t = s.trim().trim_start_matches('0').to_ascii_lowercase();
    if t.is_empty() { "0".into() } else { t }
}

fn openssl_date(s: &str) -> i64 {
    // "Mar 23 22:47:03 2022 GMT" (day padded with a space)
    let parts: Vec<&str> = s.split_whitespace().collect();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[0])
    .unwrap() as u8
        + 1;
    let day: u8 = parts[1].parse().unwrap();
    let hms: Vec<u8> = parts[2].split(':').map(|x| x.parse().unwrap()).collect();
    let year: i32 = parts[3].parse().unwrap();
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).unwrap(), day).unwrap();
    date.with_hms(hms[0], hms[1], hms[2])
        .unwrap()
        .assume_utc()
        .unix_timestamp()
}

/// Asserts that certrotd's parse of every certificate in the inventory agrees with openssl's.
pub fn assert_agrees_with_openssl(inv: &Inventory) {
    let mut checked = 0;
    for e in &inv.entries {
        for c in e.cert.iter().chain(e.chain.iter()) {
            let v = openssl_view(&c.der);
            assert_eq!(c.subject_cn, v.cn, "{}: CN", e.name);
            assert_eq!(c.organizations, v.organizations, "{}: O", e.name);
            assert_eq!(
                c.not_before.unix_timestamp(),
                v.not_before,
                "{}: notBefore",
                e.name
            );
            assert_eq!(
                c.not_after.unix_timestamp(),
                v.not_after,
                "{}: notAfter",
                e.name
            );
            assert_eq!(normalize_serial(&c.serial), v.serial, "{}: serial", e.name);
            assert!(
                c.issuer.contains(v.issuer_cn.as_deref().unwrap_or("")),
                "{}: issuer",
                e.name
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no certificate was compared");
}

/// A certificate's signed bytes with its public key cut out: what re-signing a fixture keeps.
pub fn tbs_without_key(der: &[u8]) -> Vec<u8> {
    let (_, x) = x509_parser::parse_x509_certificate(der).unwrap();
    let tbs = x.tbs_certificate.as_ref();
    let spki = x.tbs_certificate.subject_pki.raw;
    let at = tbs
        .windows(spki.len())
        .position(|w| w == spki)
        .expect("the key lies inside the signed bytes");
    [&tbs[..at], &tbs[at + spki.len()..]].concat()
}

/// Asserts that `resigned` (a scan of a re-signed set) holds the certificates of `real` (a scan
/// of the set as written), entry by entry, each differing only in its public key and signature.
pub fn assert_resigned_from(real: &Inventory, resigned: &Inventory) {
    let names = |inv: &Inventory| {
        inv.entries
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(real), names(resigned), "the same entries");
    let mut compared = 0;
    for (r, n) in real.entries.iter().zip(&resigned.entries) {
        let old: Vec<_> = r.cert.iter().chain(&r.chain).collect();
        let new: Vec<_> = n.cert.iter().chain(&n.chain).collect();
        assert_eq!(old.len(), new.len(), "{}: certificates", r.name);
        for (o, n) in old.into_iter().zip(new) {
            assert_eq!(
                tbs_without_key(&o.der),
                tbs_without_key(&n.der),
                "{}: everything signed but the key is kept",
                r.name
            );
            assert_ne!(o.public_key, n.public_key, "{}: a generated key", r.name);
            assert_ne!(o.der, n.der, "{}", r.name);
            compared += 1;
        }
    }
    assert!(compared > 0, "no certificate was compared");
}

/// The path of `program`, or a panic saying that `make test` installs it: a test never skips
/// because a component is missing.
pub fn which(program: &str) -> std::path::PathBuf {
    systemd::find_program(program)
        .unwrap_or_else(|| panic!("{program} not found: make test installs it"))
}

/// Asks `check` every 25 ms until it says `Some`, or panics naming `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {timeout:?} for {what} in vain"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
