//! Tests of the store: atomic writes, backups and their catalog.

#![allow(clippy::unwrap_used)]

use super::atomic::*;
use super::backup::*;
use super::catalog::*;
use super::node_file::*;
use super::*;
use std::cell::RefCell;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use time::OffsetDateTime;

use crate::failpoint::{self, Failpoint, Injected};
use crate::root::fd::{self, FileId};
use tempfile::TempDir;
use time::macros::datetime;

const T0: OffsetDateTime = datetime!(2025-01-01 00:00 UTC);

/// Makes every write on this thread fail at `point` until the guard is dropped.
fn fail_at(point: Failpoint) -> failpoint::Armed {
    failpoint::on(point, move |_| Err(Injected::at(point)))
}

/// The mode of the temp file at each step of the writes on this thread, while it lives.
struct TempModes {
    seen: Rc<RefCell<Vec<(Failpoint, u32)>>>,
    _armed: Vec<failpoint::Armed>,
}

impl TempModes {
    fn record() -> TempModes {
        let seen: Rc<RefCell<Vec<(Failpoint, u32)>>> = Rc::default();
        let armed = Failpoint::WRITE
            .iter()
            .map(|&point| {
                let seen = seen.clone();
                failpoint::on(point, move |tmp| {
                    if let Some(m) = tmp.and_then(|t| fs::symlink_metadata(t).ok()) {
                        seen.borrow_mut().push((point, m.mode() & 0o7777));
                    }
                    Ok(())
                })
            })
            .collect();
        TempModes {
            seen,
            _armed: armed,
        }
    }

    fn seen(&self) -> Vec<(Failpoint, u32)> {
        self.seen.borrow().clone()
    }
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn owner_of(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// An owner other than the process's when running as root, so preservation is really tested.
fn foreign_owner() -> (u32, u32) {
    if is_root() {
        (1234, 5678)
    } else {
        let m = fs::metadata("/proc/self").unwrap();
        (m.uid(), m.gid())
    }
}

#[test]
fn new_file_gets_new_mode_and_content() {
    let t = TempDir::new().unwrap();
    let key = t.path().join("apiserver.key");
    write_atomic(&key, b"secret", 0o600).unwrap();
    assert_eq!(fs::read(&key).unwrap(), b"secret");
    assert_eq!(mode_of(&key), 0o600);
    assert_eq!(names_in(t.path()), ["apiserver.key"]);
}

#[test]
fn replacing_keeps_mode_and_owner_and_temp_is_private() {
    let t = TempDir::new().unwrap();
    let crt = t.path().join("apiserver.crt");
    fs::write(&crt, b"old").unwrap();
    let (uid, gid) = foreign_owner();
    std::os::unix::fs::chown(&crt, Some(uid), Some(gid)).unwrap();
    set_mode(&crt, 0o644).unwrap();

    let probe = TempModes::record();
    write_atomic(&crt, b"new", 0o600).unwrap();

    assert_eq!(fs::read(&crt).unwrap(), b"new");
    assert_eq!(mode_of(&crt), 0o644);
    assert_eq!(owner_of(&crt), (uid, gid));
    let seen = probe.seen();
    // While the content sits in the temp file, nobody else may read it.
    assert!(seen.contains(&(Failpoint::TempCreated, 0o600)), "{seen:?}");
    assert!(seen.contains(&(Failpoint::TempWritten, 0o600)), "{seen:?}");
    assert!(seen.contains(&(Failpoint::TempOwned, 0o644)), "{seen:?}");
}

#[test]
fn a_symlink_at_the_destination_is_refused_not_followed() {
    let t = TempDir::new().unwrap();
    let target = t.path().join("elsewhere.key");
    let link = t.path().join("apiserver.key");
    fs::write(&target, b"old").unwrap();
    set_mode(&target, 0o644).unwrap();
    symlink(&target, &link).unwrap();
    let dangling = t.path().join("current.pem");
    symlink(t.path().join("missing.pem"), &dangling).unwrap();

    for write in [
        &(|p: &Path| write_atomic(p, b"new", 0o600)) as &dyn Fn(&Path) -> Result<()>,
        &|p: &Path| write_node_file(p, b"new", FileMode::Secret { new: 0o600 }, Expect::Seen),
        &|p: &Path| write_node_file(p, b"new", FileMode::Keep { new: 0o600 }, Expect::Absent),
    ] {
        for p in [&link, &dangling] {
            let err = write(p).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::Unsupported {
                        found: "symlink",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
    assert_eq!(fs::read(&target).unwrap(), b"old");
    assert_eq!(mode_of(&target), 0o644);
    assert!(!t.path().join("missing.pem").exists());
    assert_eq!(
        names_in(t.path()),
        ["apiserver.key", "current.pem", "elsewhere.key"]
    );
}

#[test]
fn node_writes_refuse_a_symlink_on_the_way() {
    let t = TempDir::new().unwrap();
    fs::create_dir(t.path().join("real")).unwrap();
    symlink("real", t.path().join("pki")).unwrap();
    let err = write_node_file(
        &t.path().join("pki/ca.key"),
        b"x",
        FileMode::Secret { new: 0o600 },
        Expect::Seen,
    )
    .unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("a symlink is on the way"), "{source}");
    assert!(names_in(&t.path().join("real")).is_empty());
}

#[test]
fn keys_are_narrowed_to_0600_and_keep_their_owner() {
    let t = TempDir::new().unwrap();
    let key = t.path().join("apiserver.key");
    fs::write(&key, b"old").unwrap();
    set_mode(&key, 0o644).unwrap();
    let (uid, gid) = foreign_owner();
    std::os::unix::fs::chown(&key, Some(uid), Some(gid)).unwrap();
    write_node_file(&key, b"new", FileMode::Secret { new: 0o600 }, Expect::Seen).unwrap();
    assert_eq!((mode_of(&key), owner_of(&key)), (0o600, (uid, gid)));
    // Stricter stays stricter.
    set_mode(&key, 0o400).unwrap();
    write_node_file(
        &key,
        b"newer",
        FileMode::Secret { new: 0o600 },
        Expect::Seen,
    )
    .unwrap();
    assert_eq!(mode_of(&key), 0o400);
    assert_eq!(fs::read(&key).unwrap(), b"newer");
}

#[test]
fn a_file_swapped_during_the_write_is_not_replaced() {
    let t = TempDir::new().unwrap();
    let key = t.path().join("apiserver.key");
    let theirs = t.path().join("theirs.key");
    fs::write(&key, b"old").unwrap();
    fs::write(&theirs, b"attacker").unwrap();
    let before = fd::stat_at(fd::open_dir(t.path()).unwrap(), OsStr::new("apiserver.key"))
        .unwrap()
        .unwrap();
    let (k, th) = (key.clone(), theirs.clone());
    // Another process swaps the destination for a link once the temp is ready.
    let meanwhile = failpoint::on(Failpoint::TempSynced, move |_| {
        fs::remove_file(&k).unwrap();
        symlink(&th, &k).unwrap();
        Ok(())
    });
    let err = write_node_file(
        &key,
        b"new",
        FileMode::Secret { new: 0o600 },
        Expect::Same(before.id),
    )
    .unwrap_err();
    drop(meanwhile);
    assert!(matches!(err, StoreError::Changed { .. }), "{err}");
    assert_eq!(fs::read(&theirs).unwrap(), b"attacker");
    assert!(fs::symlink_metadata(&key).unwrap().file_type().is_symlink());
    assert_eq!(names_in(t.path()), ["apiserver.key", "theirs.key"]);

    // A file created where nothing was expected is not replaced either.
    let new = t.path().join("new.pem");
    fs::write(&new, b"someone's").unwrap();
    let err =
        write_node_file(&new, b"x", FileMode::Keep { new: 0o644 }, Expect::Absent).unwrap_err();
    assert!(matches!(err, StoreError::Changed { .. }), "{err}");
    assert_eq!(fs::read(&new).unwrap(), b"someone's");
}

#[test]
fn reading_node_files_opens_only_regular_files() {
    let t = TempDir::new().unwrap();
    let f = t.path().join("a.crt");
    fs::write(&f, b"x").unwrap();
    symlink("/dev/zero", t.path().join("zero")).unwrap();
    assert_eq!(read_node_file(&f).unwrap(), NodeFile::File(b"x".to_vec()));
    assert_eq!(
        read_node_file(&t.path().join("zero")).unwrap(),
        NodeFile::Other("symlink")
    );
    assert_eq!(
        read_node_file(Path::new("/dev/zero")).unwrap(),
        NodeFile::Other("character device")
    );
    assert_eq!(
        read_node_file(&t.path().join("none")).unwrap(),
        NodeFile::Absent
    );
}

#[test]
fn failure_at_any_step_leaves_original_and_no_temp() {
    for &stage in Failpoint::WRITE {
        let t = TempDir::new().unwrap();
        let crt = t.path().join("ca.crt");
        fs::write(&crt, b"original").unwrap();
        set_mode(&crt, 0o644).unwrap();

        let failing = fail_at(stage);
        let err = write_atomic(&crt, b"replacement", 0o600).unwrap_err();
        drop(failing);

        assert!(err.to_string().contains(&*crt.to_string_lossy()), "{err}");
        assert_eq!(fs::read(&crt).unwrap(), b"original", "stage {stage:?}");
        assert_eq!(mode_of(&crt), 0o644);
        assert_eq!(names_in(t.path()), ["ca.crt"], "stage {stage:?}");
    }
}

#[test]
fn missing_or_non_directory_parent_fails_cleanly() {
    let t = TempDir::new().unwrap();
    let err = write_atomic(&t.path().join("nope/ca.crt"), b"x", 0o600).unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err}");
    let file = t.path().join("file");
    fs::write(&file, b"keep").unwrap();
    let err = write_atomic(&file.join("ca.crt"), b"x", 0o600).unwrap_err();
    assert!(err.to_string().contains("file/"), "{err}");
    assert_eq!(names_in(t.path()), ["file"]);
    assert_eq!(fs::read(&file).unwrap(), b"keep");
}

#[test]
fn directory_at_destination_is_refused() {
    let t = TempDir::new().unwrap();
    let d = t.path().join("pki");
    fs::create_dir(&d).unwrap();
    let err = write_atomic(&d, b"x", 0o600).unwrap_err();
    assert!(matches!(
        err,
        StoreError::Unsupported {
            found: "directory",
            ..
        }
    ));
    assert!(d.is_dir());
    assert_eq!(names_in(t.path()), ["pki"]);
}

#[test]
fn errors_never_contain_contents() {
    let t = TempDir::new().unwrap();
    let failing = fail_at(Failpoint::TempSynced);
    let err = write_atomic(&t.path().join("k.key"), b"PRIVATE-KEY-BYTES", 0o600).unwrap_err();
    drop(failing);
    let text = format!("{err} {err:?}");
    assert!(!text.contains("PRIVATE-KEY-BYTES"));
}

#[test]
fn replace_symlink_swaps_and_creates() {
    let t = TempDir::new().unwrap();
    let link = t.path().join("kubelet-client-current.pem");
    replace_symlink(
        &link,
        Path::new("/var/lib/kubelet/pki/a.pem"),
        Expect::Absent,
    )
    .unwrap();
    assert_eq!(
        fs::read_link(&link).unwrap(),
        Path::new("/var/lib/kubelet/pki/a.pem")
    );
    replace_symlink(&link, Path::new("b.pem"), Expect::Seen).unwrap();
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("b.pem"));
    assert_eq!(names_in(t.path()), ["kubelet-client-current.pem"]);
}

#[test]
fn replace_symlink_failure_keeps_old_link_and_no_temp() {
    let t = TempDir::new().unwrap();
    let link = t.path().join("current.pem");
    symlink("old.pem", &link).unwrap();
    let failing = fail_at(Failpoint::TempOwned);
    assert!(replace_symlink(&link, Path::new("new.pem"), Expect::Seen).is_err());
    drop(failing);
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("old.pem"));
    assert_eq!(names_in(t.path()), ["current.pem"]);
}

#[test]
fn stale_temp_cleanup_removes_only_ours() {
    let t = TempDir::new().unwrap();
    let d = t.path();
    let ours = [
        ".ca.key.certrotd-tmp.0123456789abcdef",
        ".current.pem.certrotd-tmp.fedcba9876543210",
    ];
    fs::write(d.join(ours[0]), b"x").unwrap();
    symlink("x", d.join(ours[1])).unwrap();
    let theirs = [
        "ca.key",
        ".ca.key.certrotd-tmp.0123",                 // too short
        ".ca.key.certrotd-tmp.0123456789ABCDEF",     // not our hex
        "ca.key.certrotd-tmp.0123456789abcdef",      // not hidden
        ".ca.key.other-tmp.0123456789abcdef",        // someone else's
        ".ca.key.certrotd-tmp.0123456789abcdef.bak", // suffix
    ];
    for n in theirs {
        fs::write(d.join(n), b"x").unwrap();
    }
    fs::create_dir(d.join(".dir.certrotd-tmp.0123456789abcdef")).unwrap();

    let removed = remove_stale_temps(d).unwrap();
    let mut want: Vec<PathBuf> = ours.iter().map(|n| d.join(n)).collect();
    want.sort();
    assert_eq!(removed, want);
    let mut left: Vec<&str> = theirs.to_vec();
    left.push(".dir.certrotd-tmp.0123456789abcdef");
    left.sort();
    assert_eq!(names_in(d), left);
}

#[test]
fn temp_names_are_recognised() {
    let tmp = temp_path(Path::new("/x"), b"apiserver.key");
    assert!(is_temp_name(tmp.file_name().unwrap().as_bytes()));
    let long = vec![b'a'; 255];
    let tmp = temp_path(Path::new("/x"), &long);
    assert!(tmp.file_name().unwrap().len() <= 255);
    assert!(is_temp_name(tmp.file_name().unwrap().as_bytes()));
}

/// A small node: a key (0600, foreign owner), a cert, a symlink, and a path to be created.
struct Node {
    _t: TempDir,
    root: PathBuf,
    key: PathBuf,
    crt: PathBuf,
    link: PathBuf,
    new: PathBuf,
}

fn node() -> Node {
    let t = TempDir::new().unwrap();
    let pki = t.path().join("pki");
    fs::create_dir(&pki).unwrap();
    let key = pki.join("apiserver.key");
    let crt = pki.join("apiserver.crt");
    let link = pki.join("kubelet-client-current.pem");
    let new = pki.join("kubelet-client-2026.pem");
    fs::write(&key, b"old key").unwrap();
    set_mode(&key, 0o600).unwrap();
    let (uid, gid) = foreign_owner();
    std::os::unix::fs::chown(&key, Some(uid), Some(gid)).unwrap();
    fs::write(&crt, b"old cert").unwrap();
    set_mode(&crt, 0o644).unwrap();
    symlink("kubelet-client-2025.pem", &link).unwrap();
    Node {
        root: t.path().join("state/backups"),
        _t: t,
        key,
        crt,
        link,
        new,
    }
}

fn rotate(n: &Node) {
    write_atomic(&n.key, b"new key", 0o600).unwrap();
    write_atomic(&n.crt, b"new cert", 0o644).unwrap();
    write_atomic(&n.new, b"new kubelet", 0o600).unwrap();
    replace_symlink(&n.link, &n.new, Expect::Seen).unwrap();
}

fn backup_all(n: &Node, id: &str) -> Backup {
    let mut b = Backup::create(&n.root, id, T0).unwrap();
    for p in [&n.key, &n.crt, &n.link, &n.new] {
        b.save(p).unwrap();
    }
    b
}

#[test]
fn backup_and_restore_round_trip() {
    let n = node();
    let b = backup_all(&n, "r1");
    assert_eq!(mode_of(&n.root), 0o700);
    assert_eq!(mode_of(b.dir()), 0o700);
    for e in b.entries() {
        if let SavedState::File { stored, .. } = &e.state {
            assert_eq!(mode_of(&b.dir().join(stored)), 0o600);
        }
    }
    assert!(matches!(
        b.entries()[0].state,
        SavedState::File { mode: 0o600, .. }
    ));
    assert!(matches!(b.entries()[2].state, SavedState::Symlink { .. }));
    assert_eq!(b.entries()[3].state, SavedState::Absent);
    for p in [&n.key, &n.crt, &n.link, &n.new] {
        assert!(b.matches_current(p).unwrap(), "{}", p.display());
    }

    rotate(&n);
    for p in [&n.key, &n.crt, &n.link, &n.new] {
        assert!(!b.matches_current(p).unwrap(), "{}", p.display());
    }

    // Restore from a freshly opened backup, as crash recovery would.
    let b = Backup::open(&n.root, "r1").unwrap();
    let report = b.restore().unwrap();
    assert_eq!(
        report.restored,
        [n.key.clone(), n.crt.clone(), n.link.clone()]
    );
    assert_eq!(report.removed, std::slice::from_ref(&n.new));
    assert!(report.unchanged.is_empty());

    assert_eq!(fs::read(&n.key).unwrap(), b"old key");
    assert_eq!(mode_of(&n.key), 0o600);
    assert_eq!(owner_of(&n.key), foreign_owner());
    assert_eq!(fs::read(&n.crt).unwrap(), b"old cert");
    assert_eq!(mode_of(&n.crt), 0o644);
    assert_eq!(
        fs::read_link(&n.link).unwrap(),
        Path::new("kubelet-client-2025.pem")
    );
    assert!(!n.new.exists());
    for p in [&n.key, &n.crt, &n.link, &n.new] {
        assert!(b.matches_current(p).unwrap());
    }

    // Running it again (a retry after a crash mid-restore) changes nothing.
    let again = b.restore().unwrap();
    assert!(again.restored.is_empty() && again.removed.is_empty());
    assert_eq!(again.unchanged.len(), 4);
}

#[test]
fn restore_puts_back_mode_and_owner_changed_by_rotation() {
    let n = node();
    let b = backup_all(&n, "r1");
    set_mode(&n.key, 0o644).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&n.key, Some(0), Some(0)).unwrap();
    }
    assert!(!b.matches_current(&n.key).unwrap());
    b.restore().unwrap();
    assert_eq!(mode_of(&n.key), 0o600);
    assert_eq!(owner_of(&n.key), foreign_owner());
}

#[test]
fn restore_replaces_a_link_left_where_a_file_was() {
    let n = node();
    let b = backup_all(&n, "r1");
    fs::remove_file(&n.crt).unwrap();
    symlink("elsewhere.crt", &n.crt).unwrap();
    b.restore().unwrap();
    assert!(fs::symlink_metadata(&n.crt).unwrap().is_file());
    assert_eq!(fs::read(&n.crt).unwrap(), b"old cert");
}

#[test]
fn failed_save_records_nothing_and_can_be_retried() {
    let n = node();
    let mut b = Backup::create(&n.root, "r1", T0).unwrap();
    let failing = fail_at(Failpoint::TempSynced);
    assert!(b.save(&n.key).is_err());
    drop(failing);
    assert!(b.entries().is_empty());
    assert!(Backup::open(&n.root, "r1").unwrap().entries().is_empty());
    b.save(&n.key).unwrap();
    assert_eq!(Backup::open(&n.root, "r1").unwrap().entries().len(), 1);
}

#[test]
fn interrupted_restore_can_be_run_again() {
    let n = node();
    let b = backup_all(&n, "r1");
    rotate(&n);
    let failing = fail_at(Failpoint::TempWritten);
    assert!(b.restore().is_err());
    drop(failing);
    // Nothing half-written: the key is still wholly the new one.
    assert_eq!(fs::read(&n.key).unwrap(), b"new key");
    b.restore().unwrap();
    for p in [&n.key, &n.crt, &n.link, &n.new] {
        assert!(b.matches_current(p).unwrap(), "{}", p.display());
    }
}

#[test]
fn saving_twice_keeps_the_first_record() {
    let n = node();
    let mut b = Backup::create(&n.root, "r1", T0).unwrap();
    b.save(&n.crt).unwrap();
    write_atomic(&n.crt, b"new cert", 0o644).unwrap();
    b.save(&n.crt).unwrap();
    assert_eq!(b.entries().len(), 1);
    let b = Backup::open(&n.root, "r1").unwrap();
    assert_eq!(b.entries().len(), 1);
    b.restore().unwrap();
    assert_eq!(fs::read(&n.crt).unwrap(), b"old cert");
}

#[test]
fn tampered_copy_is_refused_and_nothing_is_touched() {
    let n = node();
    let b = backup_all(&n, "r1");
    rotate(&n);
    let SavedState::File { stored, .. } = &b.entries()[1].state else {
        panic!("crt should be a file entry");
    };
    let stored_path = b.dir().join(stored);
    fs::write(&stored_path, b"garbage").unwrap();

    let err = b.restore().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&*stored_path.to_string_lossy()), "{text}");
    assert!(text.contains(&*n.crt.to_string_lossy()), "{text}");
    // Verification happens before any write: the key is still the new one.
    assert_eq!(fs::read(&n.key).unwrap(), b"new key");
    assert_eq!(fs::read(&n.crt).unwrap(), b"new cert");
}

#[test]
fn missing_copy_is_an_error_naming_it() {
    let n = node();
    let b = backup_all(&n, "r1");
    let SavedState::File { stored, .. } = &b.entries()[0].state else {
        panic!("key should be a file entry");
    };
    fs::remove_file(b.dir().join(stored)).unwrap();
    let err = b.restore().unwrap_err();
    assert!(err.to_string().contains(stored.as_str()), "{err}");
}

#[test]
fn tampered_manifest_cannot_point_outside_the_backup() {
    let n = node();
    let b = backup_all(&n, "r1");
    let mpath = b.dir().join(MANIFEST);
    let text = fs::read_to_string(&mpath).unwrap();
    let SavedState::File { stored, .. } = &b.entries()[0].state else {
        panic!("key should be a file entry");
    };
    fs::write(&mpath, text.replace(stored.as_str(), "../../../etc/shadow")).unwrap();
    let err = Backup::open(&n.root, "r1").unwrap_err();
    assert!(matches!(err, StoreError::ManifestInvalid { .. }), "{err}");
    fs::write(&mpath, b"{ not json").unwrap();
    let err = Backup::open(&n.root, "r1").unwrap_err();
    assert!(
        matches!(err, StoreError::Manifest { op: "parse", .. }),
        "{err}"
    );
    assert!(list(&n.root).is_err());
}

#[test]
fn manifest_records_what_the_brief_asks() {
    let n = node();
    let b = backup_all(&n, "r1");
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(b.dir().join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(v["rotation_id"], "r1");
    assert_eq!(v["created_at"], "2025-01-01T00:00:00Z");
    let key = &v["entries"][0];
    assert_eq!(key["kind"], "file");
    assert_eq!(key["path"], n.key.to_str().unwrap());
    assert_eq!(key["mode"], 0o600);
    assert_eq!(key["sha256"], sha256_hex(b"old key"));
    // The inode, so an install replaces that very file or nothing.
    let ino = fs::symlink_metadata(&n.key).unwrap().ino();
    assert_eq!(key["inode"]["ino"], ino);
    assert!(matches!(b.expect(&n.key), Expect::Same(FileId { ino: i, .. }) if i == ino));
    assert_eq!(b.expect(&n.new), Expect::Absent);
    assert!(matches!(b.expect(&n.link), Expect::Same(_)));
    assert_eq!(v["entries"][2]["kind"], "symlink");
    assert_eq!(v["entries"][2]["target"], "kubelet-client-2025.pem");
    assert_eq!(v["entries"][3]["kind"], "absent");
}

#[test]
fn save_refuses_relative_paths_and_directories() {
    let n = node();
    let mut b = Backup::create(&n.root, "r1", T0).unwrap();
    assert!(matches!(
        b.save(Path::new("pki/ca.crt")).unwrap_err(),
        StoreError::BadPath { .. }
    ));
    let dir = n.key.parent().unwrap();
    assert!(matches!(
        b.save(dir).unwrap_err(),
        StoreError::Unsupported {
            found: "directory",
            ..
        }
    ));
    assert!(b.entries().is_empty());
    assert!(matches!(
        b.matches_current(&n.key).unwrap_err(),
        StoreError::NotSaved { .. }
    ));
}

#[test]
fn create_refuses_an_existing_id_and_open_a_missing_one() {
    let n = node();
    Backup::create(&n.root, "r1", T0).unwrap();
    assert!(matches!(
        Backup::create(&n.root, "r1", T0).unwrap_err(),
        StoreError::BackupExists { .. }
    ));
    assert!(matches!(
        Backup::open(&n.root, "r2").unwrap_err(),
        StoreError::BackupNotFound { .. }
    ));
}

#[test]
fn create_tightens_an_existing_root_to_0700() {
    let t = TempDir::new().unwrap();
    let root = t.path().join("backups");
    fs::create_dir(&root).unwrap();
    set_mode(&root, 0o755).unwrap();
    Backup::create(&root, "r1", T0).unwrap();
    assert_eq!(mode_of(&root), 0o700);
}

#[test]
fn bad_ids_are_rejected_everywhere() {
    let t = TempDir::new().unwrap();
    let root = t.path().join("backups");
    for id in [
        "",
        ".",
        "..",
        "../escape",
        "a/b",
        "/etc",
        "a..b",
        ".hidden",
        "-rf",
        "a b",
        "a\0b",
        "é",
        &"x".repeat(129),
    ] {
        assert!(
            matches!(validate_rotation_id(id), Err(StoreError::InvalidId { .. })),
            "{id:?}"
        );
        assert!(Backup::create(&root, id, T0).is_err(), "{id:?}");
        assert!(
            matches!(Backup::open(&root, id), Err(StoreError::InvalidId { .. })),
            "{id:?}"
        );
    }
    assert!(!t.path().join("escape").exists());
    for id in ["20250101T000000Z-abc", "r1", "a.b_c-d", &"x".repeat(128)] {
        validate_rotation_id(id).unwrap();
    }
}

#[test]
fn list_is_oldest_first_and_prune_keeps_newest_and_protected() {
    let t = TempDir::new().unwrap();
    let root = t.path().join("backups");
    assert!(list(&root).unwrap().is_empty());
    let ids = ["e", "d", "c", "b", "a"];
    for (i, id) in ids.iter().enumerate() {
        let mut b = Backup::create(&root, id, T0 + time::Duration::hours(i as i64)).unwrap();
        b.save(&t.path().join("absent")).unwrap();
    }
    // A crash inside create leaves a directory with no manifest; someone else's file is ignored.
    fs::create_dir(root.join("crashed")).unwrap();
    fs::write(root.join("README"), b"not a backup").unwrap();

    let listed = list(&root).unwrap();
    let order: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(order, ids);
    assert_eq!(listed[0].entries, 1);
    assert_eq!(listed[0].created_at, T0);

    let deleted = prune(&root, 2, &["e"], &[]).unwrap();
    assert_eq!(deleted, ["crashed", "d", "c"]);
    let order: Vec<String> = list(&root).unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(order, ["e", "b", "a"]);
    assert_eq!(names_in(&root), ["README", "a", "b", "e"]);

    assert!(prune(&root, 5, &[], &[]).unwrap().is_empty());
    assert_eq!(prune(&root, 0, &["a"], &[]).unwrap(), ["e", "b"]);
    assert_eq!(names_in(&root), ["README", "a"]);
}

#[test]
fn prune_evicts_backups_of_rolled_back_rotations_before_committed_ones() {
    let t = TempDir::new().unwrap();
    let root = t.path().join("backups");
    // "old" committed first, then three rolled back, then the rotation just committed.
    let ids = ["old", "rb1", "rb2", "rb3", "new"];
    for (i, id) in ids.iter().enumerate() {
        let mut b = Backup::create(&root, id, T0 + time::Duration::hours(i as i64)).unwrap();
        b.save(&t.path().join("absent")).unwrap();
    }
    let deleted = prune(&root, 2, &["new"], &["rb1", "rb2", "rb3"]).unwrap();
    assert_eq!(deleted, ["rb1", "rb2", "rb3"]);
    assert_eq!(names_in(&root), ["new", "old"]);
    // Past the committed ones' share, the oldest committed one goes as before.
    assert_eq!(prune(&root, 1, &["new"], &[]).unwrap(), ["old"]);

    remove(&root, "new").unwrap();
    remove(&root, "new").unwrap();
    assert!(names_in(&root).is_empty());
    assert!(remove(&root, "../x").is_err());
}
