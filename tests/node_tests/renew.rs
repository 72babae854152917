//! `certrotd renew` on sandbox kubeadm nodes, judged by openssl and kubectl: every renewed
//! certificate verifies against its CA and differs from the old one only in serial, validity and
//! key; every kubeconfig is read by kubectl and keeps everything but its credential; modes, key
//! formats, the kubelet's symlink swap, dry runs, refusals, restore, the lock and backup pruning.
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).

use crate::support;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use certrotd::inventory::Inventory;
use certrotd::pki::encode::KeySpec;
use certrotd::pki::layout::Layout;
use certrotd::sandbox::SandboxOptions;
use support::renewal::*;
use support::{openssl, scan};

fn inventory(node: &Node) -> Inventory {
    scan(&node.root, Some(vec![Layout::Kubeadm]), &[])
}

fn committed_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("rotation ")
                .and_then(|r| r.split_once(" committed"))
                .map(|(id, _)| id.to_owned())
        })
        .unwrap_or_else(|| panic!("no committed rotation in:\n{stdout}"))
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The paths whose content differs between two snapshots.
fn changed(before: &std::collections::BTreeMap<PathBuf, Held>, root: &Path) -> BTreeSet<String> {
    let after = snapshot(root);
    let keys: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("/{}", k.display()))
        .collect()
}

fn yaml(p: &Path) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn decode(v: &serde_yaml_ng::Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

const PKI_PAIRS: &[(&str, &str)] = &[
    ("apiserver", "/etc/kubernetes/pki/apiserver"),
    (
        "apiserver-kubelet-client",
        "/etc/kubernetes/pki/apiserver-kubelet-client",
    ),
    (
        "front-proxy-client",
        "/etc/kubernetes/pki/front-proxy-client",
    ),
    ("etcd-server", "/etc/kubernetes/pki/etcd/server"),
    ("etcd-peer", "/etc/kubernetes/pki/etcd/peer"),
    (
        "etcd-healthcheck-client",
        "/etc/kubernetes/pki/etcd/healthcheck-client",
    ),
    (
        "apiserver-etcd-client",
        "/etc/kubernetes/pki/apiserver-etcd-client",
    ),
];
const KUBECONFIGS: &[&str] = &[
    "admin.conf",
    "super-admin.conf",
    "controller-manager.conf",
    "scheduler.conf",
];

#[test]
fn renew_all_is_judged_faithful_by_openssl_and_kubectl() {
    let node = Node::sandbox(&SandboxOptions::default());
    let before = snapshot(&node.root);
    let old = inventory(&node);

    // A dry run prints the plan and changes nothing, not even the state directory.
    let dry = node.run("renew", &["--type", "all", "--dry-run"]);
    let out = dry.ok();
    for name in [
        "apiserver",
        "etcd-peer",
        "admin.conf",
        "kubelet-serving",
        "kubelet.conf",
    ] {
        assert!(out.contains(name), "{name} missing from the plan:\n{out}");
    }
    assert!(out.contains("new RSA-2048 (PKCS#1)"), "{out}");
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    assert!(changed(&before, &node.root).is_empty());
    assert!(!node.state().exists());

    let run = node.run("renew", &["--type", "all"]);
    let out = run.ok();
    let id = committed_id(out);
    assert!(
        out.contains(
            "restart to use the new certificates: kube-apiserver, kube-controller-manager, \
             kube-scheduler, etcd, kubelet"
        ),
        "{out}"
    );
    assert!(out.contains(&format!("certrotd restore {id}")), "{out}");
    let new = inventory(&node);
    assert_consistent(&node.root, Some(vec![Layout::Kubeadm]), &[]);

    // Leaves renewed from a CA: faithful copies with a new key.
    for (name, base) in PKI_PAIRS {
        let o = old.get(name).unwrap().cert.as_ref().unwrap();
        let n = new.get(name).unwrap().cert.as_ref().unwrap();
        assert_renewed_faithfully(name, o, n, false);
        let crt = node.path(&format!("{base}.crt"));
        let key = node.path(&format!("{base}.key"));
        assert_eq!(mode(&crt), 0o644, "{name}");
        assert_eq!(mode(&key), 0o600, "{name}");
        let key_pem = std::fs::read(&key).unwrap();
        assert!(
            key_pem.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"),
            "{name}: PKCS#1"
        );
        assert_openssl_key_matches(name, &std::fs::read(&crt).unwrap(), &key_pem);
    }
    for file in KUBECONFIGS {
        let o = old.get(file).unwrap().cert.as_ref().unwrap();
        let n = new.get(file).unwrap().cert.as_ref().unwrap();
        assert_renewed_faithfully(file, o, n, false);
        let path = node.path(&format!("/etc/kubernetes/{file}"));
        assert_eq!(mode(&path), 0o600, "{file}");
        let view = assert_kubectl_reads(&path);
        assert!(view.contains("client-certificate-data"), "{view}");
        // Everything but the credential is as it was.
        let (mut was, mut now) = (
            serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(
                match &before[&PathBuf::from(format!("etc/kubernetes/{file}"))] {
                    Held::File(d, _) => d,
                    Held::Link(_) => panic!("{file} is a file"),
                },
            )
            .unwrap(),
            yaml(&path),
        );
        let user = now["users"][0]["user"].clone();
        let cert = decode(&user["client-certificate-data"]);
        let key = decode(&user["client-key-data"]);
        assert!(
            key.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"),
            "{file}"
        );
        assert_openssl_key_matches(file, &cert, &key);
        for doc in [&mut was, &mut now] {
            doc["users"][0]["user"] = serde_yaml_ng::Value::Null;
        }
        assert_eq!(was, now, "{file}: only the credential changes");
    }

    // The kubelet's client certificate: a new timestamped file and a swapped absolute symlink;
    // the old file is kept, as the kubelet keeps it.
    let link = node.path("/var/lib/kubelet/pki/kubelet-client-current.pem");
    let target = std::fs::read_link(&link).unwrap();
    assert!(target.is_absolute(), "{}", target.display());
    let name = target.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("kubelet-client-2") && name.ends_with(".pem"),
        "{name}"
    );
    let new_file = node.path(target.to_str().unwrap());
    assert_eq!(mode(&new_file), 0o600);
    let bundle = std::fs::read_to_string(&new_file).unwrap();
    assert!(
        bundle.contains("-----BEGIN EC PRIVATE KEY-----"),
        "SEC1 as before"
    );
    assert_openssl_key_matches("kubelet client", bundle.as_bytes(), bundle.as_bytes());
    let (o, n) = (
        old.get("kubelet-client-current")
            .unwrap()
            .cert
            .as_ref()
            .unwrap(),
        new.get("kubelet-client-current")
            .unwrap()
            .cert
            .as_ref()
            .unwrap(),
    );
    assert_renewed_faithfully("kubelet-client-current", o, n, false);
    let kubelet_files: Vec<&PathBuf> = before
        .keys()
        .filter(|k| {
            k.to_string_lossy()
                .starts_with("var/lib/kubelet/pki/kubelet-client-2")
        })
        .collect();
    assert_eq!(kubelet_files.len(), 1);
    assert_eq!(
        snapshot(&node.root).get(kubelet_files[0]),
        before.get(kubelet_files[0])
    );
    assert_kubectl_reads(&node.path("/etc/kubernetes/kubelet.conf"));

    // The serving certificate: regenerated like client-go, with a fresh throwaway CA.
    let (o, n) = (
        old.get("kubelet-serving").unwrap().cert.as_ref().unwrap(),
        new.get("kubelet-serving").unwrap().cert.as_ref().unwrap(),
    );
    let serving = std::fs::read(node.path("/var/lib/kubelet/pki/kubelet.crt")).unwrap();
    let blocks = certrotd::pki::pem::blocks(Path::new("kubelet.crt"), &serving).unwrap();
    assert_eq!(blocks.len(), 2, "leaf then its CA");
    let ca = certrotd::pki::cert::Cert::from_der(&blocks[1].der).unwrap();
    assert!(ca.is_self_signed() && ca.is_ca);
    assert_ne!(
        ca.public_key,
        old.get("kubelet-serving:ca")
            .unwrap()
            .cert
            .as_ref()
            .unwrap()
            .public_key
    );
    openssl_verify(&ca.der, &[&n.der], "kubelet serving against its new CA");
    let cn = n.subject_cn.clone().unwrap();
    let (host, ts) = cn.rsplit_once('@').unwrap();
    assert_eq!(host, "sandbox-cp1");
    assert_eq!(
        ca.subject_cn.clone().unwrap(),
        format!("sandbox-cp1-ca@{ts}")
    );
    assert_eq!(
        ts.parse::<i64>().unwrap() - 3600,
        n.not_before.unix_timestamp(),
        "client-go starts validity an hour back"
    );
    assert_eq!(n.sans, o.sans);
    assert_eq!(n.ext_key_usages, o.ext_key_usages);
    assert_eq!(n.key_usages, o.key_usages);
    assert_ne!(n.public_key, o.public_key);
    assert_eq!(mode(&node.path("/var/lib/kubelet/pki/kubelet.key")), 0o600);

    // Exactly the files of the rotation changed; CAs, sa.*, manifests and config are untouched.
    let mut want: BTreeSet<String> = PKI_PAIRS
        .iter()
        .flat_map(|(_, b)| [format!("{b}.crt"), format!("{b}.key")])
        .collect();
    want.extend(KUBECONFIGS.iter().map(|f| format!("/etc/kubernetes/{f}")));
    want.extend(
        [
            "/var/lib/kubelet/pki/kubelet-client-current.pem",
            "/var/lib/kubelet/pki/kubelet.crt",
            "/var/lib/kubelet/pki/kubelet.key",
        ]
        .map(String::from),
    );
    want.insert(format!("/{}", target.display()).replace("//", "/"));
    assert_eq!(changed(&before, &node.root), want);

    // The backup and journal are private and the staged keys are gone.
    let backup = node.state().join("backups").join(&id);
    assert_eq!(mode(&backup), 0o700);
    assert_eq!(mode(&node.state().join("backups")), 0o700);
    let rot = node.state().join("rotations").join(&id);
    assert_eq!(mode(&rot), 0o700);
    assert!(!rot.join("staged").exists());
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rot.join("journal.json")).unwrap()).unwrap();
    assert_eq!(journal["phase"], "committed");
    let text = std::fs::read_to_string(rot.join("journal.json")).unwrap();
    assert!(
        !text.contains("PRIVATE KEY"),
        "no key material in the journal"
    );
    assert!(!out.contains("PRIVATE KEY") && !run.stderr.contains("PRIVATE KEY"));
}

#[test]
fn reuse_keeps_every_key_and_changes_only_certificates() {
    let node = Node::sandbox(&SandboxOptions::default());
    let config = node.root.join("certrotd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("key_policy = \"new\"", "key_policy = \"reuse\""),
    )
    .unwrap();
    let before = snapshot(&node.root);
    let old = inventory(&node);
    let out = node.run("renew", &["--type", "all"]);
    assert!(out.ok().contains("key policy reuse"), "{}", out.text());
    let new = inventory(&node);
    assert_consistent(&node.root, Some(vec![Layout::Kubeadm]), &[]);
    for (name, base) in PKI_PAIRS {
        let key = PathBuf::from(format!("{}.key", &base[1..]));
        assert_eq!(
            snapshot(&node.root).get(&key),
            before.get(&key),
            "{name}: key file untouched"
        );
        let (o, n) = (
            old.get(name).unwrap().cert.as_ref().unwrap(),
            new.get(name).unwrap().cert.as_ref().unwrap(),
        );
        assert_renewed_faithfully(name, o, n, true);
    }
    for file in KUBECONFIGS {
        let path = node.path(&format!("/etc/kubernetes/{file}"));
        let was = serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(
            match &before[&PathBuf::from(format!("etc/kubernetes/{file}"))] {
                Held::File(d, _) => d,
                Held::Link(_) => panic!(),
            },
        )
        .unwrap();
        let now = yaml(&path);
        assert_eq!(
            now["users"][0]["user"]["client-key-data"], was["users"][0]["user"]["client-key-data"],
            "{file}"
        );
        let (o, n) = (
            old.get(file).unwrap().cert.as_ref().unwrap(),
            new.get(file).unwrap().cert.as_ref().unwrap(),
        );
        assert_renewed_faithfully(file, o, n, true);
    }
    let (o, n) = (
        old.get("kubelet-client-current")
            .unwrap()
            .cert
            .as_ref()
            .unwrap(),
        new.get("kubelet-client-current")
            .unwrap()
            .cert
            .as_ref()
            .unwrap(),
    );
    assert_renewed_faithfully("kubelet-client-current", o, n, true);
    // The serving certificate keeps its key; only its throwaway CA is new.
    let key = PathBuf::from("var/lib/kubelet/pki/kubelet.key");
    assert_eq!(snapshot(&node.root).get(&key), before.get(&key));
}

#[test]
fn types_and_names_touch_only_their_files() {
    let base = Node::sandbox(&SandboxOptions::default());

    let node = base.copy();
    let before = snapshot(&node.root);
    node.run("renew", &["--type", "etcd-leaf"]).ok();
    let etcd: BTreeSet<String> = PKI_PAIRS[3..]
        .iter()
        .flat_map(|(_, b)| [format!("{b}.crt"), format!("{b}.key")])
        .collect();
    assert_eq!(changed(&before, &node.root), etcd);

    // kubelet.conf references kubelet-client-current.pem: one certificate, renewed once.
    let node = base.copy();
    let before = snapshot(&node.root);
    let out = node.run(
        "renew",
        &["--cert", "kubelet.conf", "--cert", "kubelet-client-current"],
    );
    assert!(
        out.ok().contains("1 certificates renewed"),
        "{}",
        out.text()
    );
    let diff = changed(&before, &node.root);
    assert_eq!(diff.len(), 2, "{diff:?}");
    assert!(diff.contains("/var/lib/kubelet/pki/kubelet-client-current.pem"));

    let node = base.copy();
    let before = snapshot(&node.root);
    node.run(
        "renew",
        &["--type", "kubernetes-leaf", "--cert", "etcd-peer"],
    )
    .ok();
    let mut want: BTreeSet<String> = PKI_PAIRS[..3]
        .iter()
        .chain(&PKI_PAIRS[4..5])
        .flat_map(|(_, b)| [format!("{b}.crt"), format!("{b}.key")])
        .collect();
    want.extend(KUBECONFIGS.iter().map(|f| format!("/etc/kubernetes/{f}")));
    assert_eq!(changed(&before, &node.root), want);
    assert_consistent(&node.root, Some(vec![Layout::Kubeadm]), &[]);

    // Usage errors exit 2.
    base.run("renew", &[]).code(2);
    let r = base.run("renew", &["--cert", "no-such-cert"]);
    r.code(2);
    assert!(r.stderr.contains("no-such-cert"), "{}", r.text());
}

#[test]
fn ecdsa_node_with_embedded_kubelet_conf_renews_in_sec1() {
    let node = Node::sandbox(&SandboxOptions {
        key: KeySpec::EcdsaP256,
        kubelet_conf_embedded: true,
        super_admin: false,
        ..SandboxOptions::default()
    });
    let old = inventory(&node);
    node.run("renew", &["--type", "all"]).ok();
    assert_consistent(&node.root, Some(vec![Layout::Kubeadm]), &[]);
    let new = inventory(&node);
    for (name, base) in PKI_PAIRS {
        let key = std::fs::read(node.path(&format!("{base}.key"))).unwrap();
        assert!(key.starts_with(b"-----BEGIN EC PRIVATE KEY-----"), "{name}");
        let (o, n) = (
            old.get(name).unwrap().cert.as_ref().unwrap(),
            new.get(name).unwrap().cert.as_ref().unwrap(),
        );
        assert_renewed_faithfully(name, o, n, false);
    }
    let kc = node.path("/etc/kubernetes/kubelet.conf");
    assert_kubectl_reads(&kc);
    let user = yaml(&kc)["users"][0]["user"].clone();
    let key = decode(&user["client-key-data"]);
    assert!(key.starts_with(b"-----BEGIN EC PRIVATE KEY-----"));
    assert_openssl_key_matches(
        "kubelet.conf",
        &decode(&user["client-certificate-data"]),
        &key,
    );
    let (o, n) = (
        old.get("kubelet.conf").unwrap().cert.as_ref().unwrap(),
        new.get("kubelet.conf").unwrap().cert.as_ref().unwrap(),
    );
    assert_renewed_faithfully("kubelet.conf", o, n, false);
}

#[test]
fn externally_managed_certificates_are_skipped_in_kubeadm_words() {
    let node = Node::sandbox(&SandboxOptions::default());
    std::fs::remove_file(node.path("/etc/kubernetes/pki/front-proxy-ca.key")).unwrap();
    let before = snapshot(&node.root);

    // Named alone, it is refused and nothing happens.
    let r = node.run("renew", &["--cert", "front-proxy-client"]);
    r.code(1);
    assert!(
        r.stdout.contains(
            "REFUSED front-proxy-client: Detected external front-proxy-ca, front-proxy-client can't be renewed"
        ),
        "{}",
        r.text()
    );
    assert!(changed(&before, &node.root).is_empty());

    // Within a type it is skipped, as kubeadm skips it, and the rest is renewed.
    let out = node.run("renew", &["--type", "kubernetes-leaf"]);
    assert!(
        out.ok()
            .contains("skipped front-proxy-client: Detected external front-proxy-ca"),
        "{}",
        out.text()
    );
    let diff = changed(&before, &node.root);
    assert!(!diff.contains("/etc/kubernetes/pki/front-proxy-client.crt"));
    assert!(diff.contains("/etc/kubernetes/pki/apiserver.crt"));
}

#[test]
fn a_chain_that_does_not_verify_is_refused_unless_forced() {
    let node = Node::sandbox(&SandboxOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let pki = |n: &str| {
        node.path(&format!("/etc/kubernetes/pki/{n}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    // Another CA with the same name as ca.crt signs apiserver.crt.
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kubernetes",
            "-days",
            "30",
            "-keyout",
            &p("other.key"),
            "-out",
            &p("other.crt"),
        ],
        None,
    );
    openssl(
        &[
            "req",
            "-new",
            "-key",
            &pki("apiserver.key"),
            "-subj",
            "/CN=kube-apiserver",
            "-out",
            &p("a.csr"),
        ],
        None,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &p("a.csr"),
            "-CA",
            &p("other.crt"),
            "-CAkey",
            &p("other.key"),
            "-set_serial",
            "7",
            "-days",
            "30",
            "-out",
            &pki("apiserver.crt"),
        ],
        None,
    );
    let before = snapshot(&node.root);
    let r = node.run("renew", &["--cert", "apiserver"]);
    r.code(1);
    assert!(
        r.stdout
            .contains("REFUSED apiserver: its chain does not verify")
            && r.stdout.contains("--force re-issues it from ca"),
        "{}",
        r.text()
    );
    assert!(changed(&before, &node.root).is_empty());

    let out = node.run("renew", &["--cert", "apiserver", "--force"]);
    assert!(
        out.ok().contains("forced: its chain does not verify"),
        "{}",
        out.text()
    );
    assert_consistent(&node.root, Some(vec![Layout::Kubeadm]), &[]);
}

#[test]
fn unreadable_files_are_refused_and_never_rewritten() {
    let node = Node::sandbox(&SandboxOptions::default());
    std::fs::write(
        node.path("/etc/kubernetes/pki/etcd/peer.crt"),
        b"not a certificate\n",
    )
    .unwrap();
    std::fs::write(
        node.path("/etc/kubernetes/pki/apiserver-kubelet-client.key"),
        b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let before = snapshot(&node.root);

    // Named with --cert, an unreadable one is refused and nothing at all is done.
    let r = node.run("renew", &["--cert", "etcd-peer", "--cert", "etcd-server"]);
    r.code(1);
    assert!(
        r.stdout.contains("REFUSED etcd-peer: it cannot be read"),
        "{}",
        r.text()
    );
    assert!(r.stderr.contains("nothing was changed"), "{}", r.text());
    assert!(changed(&before, &node.root).is_empty());
    let r = node.run("renew", &["--cert", "apiserver-kubelet-client"]);
    r.code(1);
    assert!(
        r.stdout
            .contains("REFUSED apiserver-kubelet-client: its private key cannot be read"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("AAAA"));
    assert!(changed(&before, &node.root).is_empty());
    assert!(node.rotations().is_empty(), "no rotation was started");

    // Selected by type, it is left out and named, never rewritten, and the rest is renewed.
    let r = node.run("renew", &["--type", "etcd-leaf"]);
    r.code(1);
    assert!(
        r.stdout
            .contains("NOT RENEWED etcd-peer: it cannot be read"),
        "{}",
        r.text()
    );
    let changed = changed(&before, &node.root);
    assert!(
        changed.contains("/etc/kubernetes/pki/etcd/server.crt")
            && !changed.contains("/etc/kubernetes/pki/etcd/peer.crt"),
        "{changed:?}"
    );
}

#[test]
fn restore_puts_every_file_back() {
    let node = Node::sandbox(&SandboxOptions::default());
    let before = snapshot(&node.root);
    let id = committed_id(node.run("renew", &["--type", "all"]).ok());
    assert!(!changed(&before, &node.root).is_empty());

    let out = node.run("restore", &[&id]);
    let text = out.ok();
    assert!(
        text.contains("removed   /var/lib/kubelet/pki/kubelet-client-"),
        "{text}"
    );
    assert!(
        text.contains("restart to use the restored certificates: kube-apiserver"),
        "{text}"
    );
    assert_eq!(snapshot(&node.root), before, "every file as it was");
    let journal: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            node.state()
                .join("rotations")
                .join(&id)
                .join("journal.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(journal["phase"], "rolled-back");

    // Restoring again changes nothing; bad and unknown ids are refused.
    node.run("restore", &[&id]).ok();
    assert_eq!(snapshot(&node.root), before);
    node.run("restore", &["../../etc"]).code(2);
    let r = node.run("restore", &["20200101T000000Z-000000"]);
    r.code(1);
    assert!(r.stderr.contains("no backup"), "{}", r.text());
}

#[test]
fn a_second_invocation_is_refused_while_the_lock_is_held() {
    use nix::fcntl::{Flock, FlockArg};
    let node = Node::sandbox(&SandboxOptions::default());
    std::fs::create_dir_all(node.state()).unwrap();
    let file = std::fs::File::create(node.state().join("lock")).unwrap();
    let held = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
    let r = node.run("renew", &["--cert", "apiserver"]);
    r.code(1);
    assert!(r.stderr.contains("lock"), "{}", r.text());
    // A dry run only reads and does not wait for the lock.
    node.run("renew", &["--cert", "apiserver", "--dry-run"])
        .ok();
    drop(held);
    node.run("renew", &["--cert", "apiserver"]).ok();
}

#[test]
fn old_backups_are_pruned_to_backups_keep() {
    let node = Node::sandbox(&SandboxOptions {
        key: KeySpec::EcdsaP256,
        ..SandboxOptions::default()
    });
    let config = node.root.join("certrotd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("backups_keep = 5", "backups_keep = 2"),
    )
    .unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(committed_id(
            node.run("renew", &["--cert", "etcd-server"]).ok(),
        ));
    }
    let backups: BTreeSet<String> = std::fs::read_dir(node.state().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(backups, ids[2..].iter().cloned().collect());
    // Ids made within one second are not in time order: compare as sets.
    assert_eq!(
        node.rotations().into_iter().collect::<BTreeSet<_>>(),
        ids[2..].iter().cloned().collect::<BTreeSet<_>>(),
        "journals follow their backups"
    );
    let owner = std::fs::metadata(node.path("/etc/kubernetes/pki/etcd/server.key")).unwrap();
    assert_eq!(owner.mode() & 0o777, 0o600);
}
