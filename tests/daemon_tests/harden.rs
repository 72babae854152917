//! Hardening that shows from outside: signers matched by the issuer Name's DER (as Go matches
//! them), and the daemon's memory kept out of reach (not dumpable) from its first instant.

use crate::support;

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use certrotd::pki::encode::{self, KeyFormat, KeySpec};
use certrotd::pki::layout::Layout;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use support::{scan, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_certrotd");
/// `nobody`: an unprivileged user whose processes' /proc entries it owns itself when dumpable.
const NOBODY: u32 = 65534;

/// A CA named CN=kubernetes, the CN encoded as `cn`, for `key`.
fn ca_params(cn: DnValue) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn write_pair(dir: &Path, stem: &str, cert_pem: &str, key: &KeyPair) {
    std::fs::write(dir.join(format!("{stem}.crt")), cert_pem).unwrap();
    let key_pem = encode::private_key_pem(key, KeyFormat::Sec1).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key_pem.as_bytes()).unwrap();
}

#[test]
fn a_ca_whose_subject_only_prints_like_the_issuer_is_not_the_signer() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("etc/kubernetes/pki");
    std::fs::create_dir_all(&pki).unwrap();
    // One key under two encodings of one name (a CA re-issued by another tool): both verify
    // every signature the key made, so only the names' bytes tell whose certificate is whose.
    let ca_key = encode::generate(KeySpec::EcdsaP256).unwrap();
    let utf8 = ca_params(DnValue::Utf8String("kubernetes".into()));
    let printable = ca_params(DnValue::PrintableString("kubernetes".try_into().unwrap()));
    write_pair(
        &pki,
        "ca",
        &utf8.self_signed(&*ca_key).unwrap().pem(),
        &ca_key,
    );
    write_pair(
        &pki,
        "ca-printable",
        &printable.self_signed(&*ca_key).unwrap().pem(),
        &ca_key,
    );
    for (stem, issuer) in [("by-utf8", &utf8), ("by-printable", &printable)] {
        let key = encode::generate(KeySpec::EcdsaP256).unwrap();
        let mut p = CertificateParams::new(vec![format!("{stem}.example")]).unwrap();
        p.distinguished_name.push(DnType::CommonName, stem);
        let cert = p
            .signed_by(&*key, &Issuer::from_params(issuer, &*ca_key))
            .unwrap();
        write_pair(&pki, stem, &cert.pem(), &key);
    }

    let inv = scan(tmp.path(), Some(vec![Layout::Kubeadm]), &[]);
    let names: Vec<&str> = inv.entries.iter().map(|e| e.name.as_str()).collect();
    let signer = |name: &str| {
        inv.get(name)
            .unwrap_or_else(|| panic!("{name} not in {names:?}"))
            .signer
            .clone()
    };
    assert_eq!(signer("by-utf8").as_deref(), Some("ca"));
    assert_eq!(signer("by-printable").as_deref(), Some("ca-printable"));

    // Without the CA that really named it, the look-alike is no signer, and the entry says why.
    std::fs::remove_file(pki.join("ca-printable.crt")).unwrap();
    std::fs::remove_file(pki.join("ca-printable.key")).unwrap();
    let inv = scan(tmp.path(), Some(vec![Layout::Kubeadm]), &[]);
    let e = inv.get("by-printable").unwrap();
    assert_eq!(e.signer, None);
    assert!(
        e.problems
            .iter()
            .any(|p| p.contains("encoded differently from the subject of ca")),
        "{:?}",
        e.problems
    );
    assert_eq!(inv.get("by-utf8").unwrap().signer.as_deref(), Some("ca"));
}

/// The owner of /proc/PID/status: the process's own user while it is dumpable, root once it is
/// not (the kernel's task_dump_owner), which is what keeps its memory, environment and file
/// descriptors out of reach of other processes of that user.
fn proc_owner(pid: u32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid()
}

/// A process of `nobody` stopped (by its PID) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_is_not_dumpable_from_its_start() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "run as root: the test starts processes as nobody"
    );
    let tmp = tempfile::Builder::new()
        .prefix("certrotd-harden-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let node = tmp.path().join("node");
    let out = Command::new(BIN)
        .args(["sandbox", "--dir"])
        .arg(&node)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = tmp.path().join("certrotd.log");
    std::fs::write(&log, "").unwrap();
    for entry in walk(tmp.path()) {
        std::os::unix::fs::lchown(&entry, Some(NOBODY), Some(NOBODY)).unwrap();
    }

    // The judge itself: an ordinary process of nobody's has its /proc entries owned by nobody.
    let plain = Child(
        Command::new("sleep")
            .arg("60")
            .uid(NOBODY)
            .gid(NOBODY)
            .spawn()
            .unwrap(),
    );
    assert_eq!(proc_owner(plain.0.id()), NOBODY);

    let out = std::fs::File::options().append(true).open(&log).unwrap();
    let daemon = Child(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(node.join("certrotd.toml"))
            .env_remove("JOURNAL_STREAM")
            .env_remove("INVOCATION_ID")
            .env_remove("NOTIFY_SOCKET")
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let pid = daemon.0.id();
    // Once it has read the node (CA keys included) and serves, it must be non-dumpable.
    let mut daemon = daemon;
    wait_for(
        "certrotd run (as nobody) to read the node and serve",
        Duration::from_secs(60),
        || {
            let exited = daemon.0.try_wait().unwrap();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(exited.is_none(), "certrotd exited: {exited:?}\n{text}");
            async move { text.contains("certrotd started").then_some(()) }
        },
    )
    .await;
    assert_eq!(
        proc_owner(pid),
        0,
        "certrotd's /proc entries belong to nobody: it is dumpable\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );
}

/// Every path under `dir`, `dir` included.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                out.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    out
}
