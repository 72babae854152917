//! Links and special files someone else put where certrotd reads and writes, on sandbox kubeadm
//! nodes driven through the real binary: a symlink owned by `nobody` in place of a key (before the
//! renewal, swapped in during it from an inotify watcher, and found by recovery after a crash),
//! links to device nodes and device nodes themselves (never opened: inotify would see it), a key
//! left at 0644, and the kubelet's own `*-current.pem` link, followed only inside its directory.
//!
//! These tests need root (to plant files owned by another user and to make device nodes), which
//! `make test` has.
// Helpers outside #[test] functions panic on purpose too.

use crate::support;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use certrotd::sandbox::SandboxOptions;
use notify::{EventKind, RecursiveMode, Watcher as _};
use support::renewal::*;

/// `nobody`: a user that is neither root nor certrotd.
const NOBODY: u32 = 65534;
/// `/var/tmp/stolen.key` as seen from `/etc/kubernetes/pki`: a relative link text names the same
/// file under a sandbox root as on a node (an absolute one would leave the sandbox).
const RELATIVE_STOLEN: &str = "../../../var/tmp/stolen.key";

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/node_tests/planted_links.rs plants files owned by another user: run it as root (make test does)"
    );
}

/// Digest of the content, mode and owner: what must not change in a file certrotd must not
/// touch (a digest, so a failing assertion never prints a key).
fn held(p: &Path) -> (String, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    assert!(m.is_file(), "{} should be a regular file", p.display());
    let digest = certrotd::store::sha256_hex(&std::fs::read(p).unwrap());
    (digest, m.mode() & 0o7777, m.uid())
}

/// Puts a file owned by `nobody` at `node_path`, readable by all, holding `data`.
fn attacker_file(node: &Node, node_path: &str, data: &[u8]) -> PathBuf {
    let p = node.path(node_path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    p
}

/// Replaces the file at `at` (a node path) by a symlink to `target`, owned by `owner`, in one
/// rename, as someone with write access to the directory would.
fn plant_link(node: &Node, at: &str, target: &str, owner: u32) {
    let at = node.path(at);
    let tmp = at.with_file_name(".planted");
    symlink(target, &tmp).unwrap();
    std::os::unix::fs::lchown(&tmp, Some(owner), Some(owner)).unwrap();
    std::fs::rename(&tmp, &at).unwrap();
}

fn is_link(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

#[test]
fn a_link_planted_before_the_renewal_is_named_and_never_written_through() {
    need_root();
    // Its target outside the PKI directory, and inside it.
    for target in [
        "/var/tmp/stolen.key",
        "/etc/kubernetes/pki/apiserver-old.key",
    ] {
        let node = Node::sandbox(&SandboxOptions::default());
        let key = "/etc/kubernetes/pki/apiserver.key";
        // The target holds the valid key, so nothing but the link itself gives it away.
        let stolen = attacker_file(&node, target, &std::fs::read(node.path(key)).unwrap());
        plant_link(&node, key, target, NOBODY);
        let before = held(&stolen);

        let renew = node.run("renew", &["--cert", "apiserver"]);
        assert_eq!(held(&stolen), before, "{target} must not be touched");
        assert!(!renew.status.success(), "{}", renew.text());
        assert!(renew.text().contains("apiserver"), "{}", renew.text());

        let check = node.run("check", &[]);
        let text = check.text();
        assert!(
            text.contains("apiserver: ") && text.contains("owned by uid 65534"),
            "check must name the planted link as apiserver's problem:\n{text}"
        );
        assert!(is_link(&node.path(key)));
        assert_eq!(
            std::fs::read_link(node.path(key)).unwrap(),
            Path::new(target)
        );
    }
}

#[test]
fn a_link_swapped_in_during_the_renewal_is_never_written_through() {
    need_root();
    let node = Node::sandbox(&SandboxOptions::default());
    let key = "/etc/kubernetes/pki/apiserver.key";
    let target = "/var/tmp/stolen.key";
    let stolen = attacker_file(&node, target, &std::fs::read(node.path(key)).unwrap());
    let before = held(&stolen);
    // Relative, so it names that file under a sandbox root as it would on a node.
    let target = RELATIVE_STOLEN;

    // The backup of the rotation gets its directory once the plan is made and checked; the link
    // goes in then, while the backup and the build run.
    let backups = node.state().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    for d in [node.state(), backups.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).unwrap();
    watcher
        .watch(&backups, RecursiveMode::NonRecursive)
        .unwrap();
    let swapper = {
        let link = node.path(key);
        std::thread::spawn(move || {
            let _watching = watcher;
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                let Ok(Ok(event)) = rx.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                if matches!(event.kind, EventKind::Create(_)) {
                    let tmp = link.with_file_name(".planted");
                    symlink(target, &tmp).unwrap();
                    std::os::unix::fs::lchown(&tmp, Some(NOBODY), Some(NOBODY)).unwrap();
                    std::fs::rename(&tmp, &link).unwrap();
                    return true;
                }
            }
            false
        })
    };

    let renew = node.run("renew", &["--cert", "apiserver"]);
    assert!(
        swapper.join().unwrap(),
        "the watcher never saw the backup begin:\n{}",
        renew.text()
    );
    assert_eq!(held(&stolen), before, "the renewal wrote through the link");
    assert!(!renew.status.success(), "{}", renew.text());
    // Either the link is still there (the rotation saw the change before installing) or the
    // roll-back put the old key back in its place; never a key written into the target. The
    // install right after the checks is covered without a race below.
    let key_path = node.path(key);
    assert!(is_link(&key_path) || std::fs::metadata(&key_path).unwrap().is_file());

    let recover = node.run("recover", &[]);
    assert!(recover.status.success(), "{}", recover.text());
    assert_eq!(held(&stolen), before, "recovery wrote through the link");
    assert_no_temps(&node.root);
}

#[cfg(feature = "failpoints")]
#[test]
fn a_link_swapped_in_between_two_installs_is_never_written_through() {
    use certrotd::failpoint::{ENV, RELEASE_ENV, TRACE_ENV};
    need_root();
    let node = Node::sandbox(&SandboxOptions::default());
    let key = "/etc/kubernetes/pki/apiserver.key";
    let target = "/var/tmp/stolen.key";
    let stolen = attacker_file(&node, target, &std::fs::read(node.path(key)).unwrap());
    let before = held(&stolen);
    let target = RELATIVE_STOLEN;

    // The renewal stops after installing the certificate, before the key: every check before
    // the install has passed, and the link goes in exactly then.
    let trace = node.tmp.path().join("trace");
    let release = node.tmp.path().join("release");
    let config = node.root.join("certrotd.toml");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_certrotd"))
        .args(["renew", "--root", node.root.to_str().unwrap()])
        .args(["--config", config.to_str().unwrap(), "--cert", "apiserver"])
        .env("CERTROTD_LOG", "warn")
        .env(ENV, "installed:1:pause")
        .env(TRACE_ENV, &trace)
        .env(RELEASE_ENV, &release)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&trace).is_ok_and(|t| t.contains("installed")) {
        assert!(
            Instant::now() < deadline,
            "the renewal never reached its first install"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    plant_link(&node, key, target, NOBODY);
    std::fs::write(&release, b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        held(&stolen),
        before,
        "the renewal wrote through the link:\n{text}"
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("rolled back"), "{text}");

    let recover = node.run("recover", &[]);
    assert!(recover.status.success(), "{}", recover.text());
    assert_eq!(held(&stolen), before, "recovery wrote through the link");
    // The roll-back put the old key back in place of the link (renaming over it).
    assert!(std::fs::symlink_metadata(node.path(key)).unwrap().is_file());
    assert_consistent(&node.root, None, &[]);
}

#[cfg(feature = "failpoints")]
#[test]
fn recovery_after_a_crash_replaces_a_planted_link_without_following_it() {
    need_root();
    let node = Node::sandbox(&SandboxOptions::default());
    let key = "/etc/kubernetes/pki/apiserver.key";
    let target = "/var/tmp/stolen.key";
    let stolen = attacker_file(&node, target, &std::fs::read(node.path(key)).unwrap());
    let before = held(&stolen);

    // Crash after the first install (the certificate), then plant the link at the key.
    let crash = node.run_env(
        "renew",
        &["--cert", "apiserver"],
        &[(certrotd::failpoint::ENV, "installed:1")],
    );
    assert!(!crash.status.success(), "{}", crash.text());
    plant_link(&node, key, target, NOBODY);

    let recover = node.run("recover", &[]);
    assert!(
        recover.status.success(),
        "recovery must not fail the start over a planted link:\n{}",
        recover.text()
    );
    assert_eq!(held(&stolen), before, "recovery wrote through the link");
    let (_, mode, uid) = held(&node.path(key));
    assert_eq!((mode, uid), (0o600, 0));
    // What stood there is written down, not lost.
    let id = node.rotations().pop().unwrap();
    let displaced = node.state().join("rotations").join(&id).join("displaced");
    let notes: Vec<String> = std::fs::read_dir(&displaced)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("a symlink to /var/tmp/stolen.key owned by uid 65534")),
        "{notes:?}"
    );
    assert_consistent(&node.root, None, &[]);
}

#[test]
fn device_nodes_and_links_to_them_are_reported_and_never_opened() {
    need_root();
    let node = Node::sandbox(&SandboxOptions::default());
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let zero = |p: &Path| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(p);
        // /dev/zero's numbers: a read of it never ends.
        mknod(
            p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 5),
        )
        .unwrap();
    };
    let dev_zero = node.path("/dev/zero");
    zero(&dev_zero);
    plant_link(&node, "/etc/kubernetes/pki/apiserver.crt", "/dev/zero", 0);
    let device = node.path("/etc/kubernetes/pki/front-proxy-client.crt");
    zero(&device);
    let fifo = node.path("/etc/kubernetes/pki/etcd/server.crt");
    std::fs::remove_file(&fifo).unwrap();
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();

    // inotify reports every open of these inodes: there must be none.
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).unwrap();
    for p in [&dev_zero, &device, &fifo] {
        watcher.watch(p, RecursiveMode::NonRecursive).unwrap();
    }

    let started = Instant::now();
    let check = node.run("check", &[]);
    let renew = node.run("renew", &["--cert", "apiserver"]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "check and renew took {:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(watcher);
    let opened: Vec<_> = rx
        .try_iter()
        .filter_map(Result::ok)
        .filter(|e| matches!(e.kind, EventKind::Access(_)))
        .collect();
    assert!(
        opened.is_empty(),
        "a device node or FIFO was opened: {opened:?}"
    );
    let text = check.text();
    for expected in [
        "apiserver: ",
        "symlink to /dev/zero (a character device)",
        "front-proxy-client: ",
        "not a regular file (a character device)",
        "etcd-server: ",
        "not a regular file (a fifo)",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    assert!(!renew.status.success(), "{}", renew.text());
}

#[test]
fn a_key_left_at_0644_gets_its_successor_at_0600_and_keeps_its_owner() {
    need_root();
    let node = Node::sandbox(&SandboxOptions::default());
    let key = node.path("/etc/kubernetes/pki/apiserver.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&key, Some(0), Some(NOBODY)).unwrap();
    let old = held(&key).0;
    let crt = node.path("/etc/kubernetes/pki/apiserver.crt");
    std::fs::set_permissions(&crt, std::fs::Permissions::from_mode(0o640)).unwrap();

    node.run("renew", &["--cert", "apiserver"]).ok();
    let m = std::fs::metadata(&key).unwrap();
    assert_ne!(held(&key).0, old, "a new key was written");
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!((m.uid(), m.gid()), (0, NOBODY));
    // A certificate keeps its mode.
    assert_eq!(std::fs::metadata(&crt).unwrap().mode() & 0o7777, 0o640);
}

#[test]
fn the_kubelets_current_link_is_followed_only_inside_its_directory() {
    need_root();
    let link = "/var/lib/kubelet/pki/kubelet-client-current.pem";

    // Root's link to a file beside it: renewed, as the kubelet itself would.
    let node = Node::sandbox(&SandboxOptions::default());
    let was = std::fs::read_link(node.path(link)).unwrap();
    node.run("check", &[]).ok();
    node.run("renew", &["--cert", "kubelet-client-current"])
        .ok();
    let now = std::fs::read_link(node.path(link)).unwrap();
    assert_ne!(now, was);
    assert_eq!(now.parent(), Some(Path::new("/var/lib/kubelet/pki")));
    assert_consistent(&node.root, None, &[]);

    // Root's link to a file outside the kubelet's directory: named and refused.
    let node = Node::sandbox(&SandboxOptions::default());
    let outside = "/var/lib/kubelet/kubelet-client.pem";
    let real_outside = node.path(outside);
    let current = node.path(
        std::fs::read_link(node.path(link))
            .unwrap()
            .to_str()
            .unwrap(),
    );
    std::fs::copy(&current, &real_outside).unwrap();
    plant_link(&node, link, outside, 0);
    let before = held(&real_outside);
    let check = node.run("check", &[]);
    assert!(
        check
            .text()
            .contains("refused: it points outside its own directory"),
        "{}",
        check.text()
    );
    let renew = node.run("renew", &["--cert", "kubelet-client-current"]);
    assert!(!renew.status.success(), "{}", renew.text());
    assert_eq!(held(&real_outside), before);
    assert_eq!(
        std::fs::read_link(node.path(link)).unwrap(),
        Path::new(outside)
    );

    // The same link owned by nobody is refused too, even pointing beside itself.
    let node = Node::sandbox(&SandboxOptions::default());
    let beside = std::fs::read_link(node.path(link)).unwrap();
    plant_link(&node, link, beside.to_str().unwrap(), NOBODY);
    let check = node.run("check", &[]);
    assert!(
        check.text().contains("owned by uid 65534"),
        "{}",
        check.text()
    );
    let renew = node.run("renew", &["--cert", "kubelet-client-current"]);
    assert!(!renew.status.success(), "{}", renew.text());
}
