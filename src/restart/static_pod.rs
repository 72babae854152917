//! Restarting a static pod's container without touching its manifest: find exactly that pod's
//! process of the component, stop its container's scope through systemd (or the process itself),
//! so that the kubelet starts the container again.
//!
//! A process is the static pod's only when the kernel says so, never by its name alone:
//!
//! * its executable (`/proc/PID/exe`, resolved by the kernel, not `argv[0]`, which anyone sets
//!   with `exec -a`) is the component's binary;
//! * its cgroup is a container's under the kubelet's pod hierarchy:
//!   `kubepods.slice/[kubepods-<qos>.slice/]kubepods-[<qos>-]pod<UID>.slice/<container>` with the
//!   systemd cgroup driver, `kubepods/[<qos>/]pod<UID>/<container>` with cgroupfs;
//! * that pod is the static pod: its UID is the one the manifest gives (`metadata.uid`) or, for a
//!   manifest without one (kubeadm's), the one the kubelet derived and recorded in its own pod
//!   directories (see [`super::pod_uid`]). When that UID cannot be found, no process is taken
//!   for the static pod's: [`restart`] refuses and names the candidates;
//! * every directory of that cgroup belongs to root: a user's systemd manager may create a
//!   `kubepods.slice` in the subtree delegated to it, but that subtree is the user's.
//!
//! Anything else found by that name (an `exec -a kube-apiserver` in an ssh session, a vcluster's
//! `etcd` in a pod of its own) is a decoy: never signalled, reported with its PID and cgroup.
//!
//! With the systemd cgroup driver every container runs in a scope of its own
//! (`cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`), and `KillUnit` on that
//! scope with SIGTERM stops exactly that container. Under the cgroupfs driver the process itself
//! is signalled.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::RestartError;
use super::pod_uid::PodUids;
use super::systemd::{KillWhom, Systemd};

/// Where a node's process table and cgroups are, injectable so that tests can give fake trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The process table (`/proc`).
    pub proc_root: PathBuf,
    /// Where the cgroup file systems are mounted (`/sys/fs/cgroup`): the unified hierarchy there
    /// or in `unified/`, systemd's v1 hierarchy in `systemd/`.
    pub cgroup_root: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            proc_root: PathBuf::from("/proc"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// What was done to one process of the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Its container's scope was sent SIGTERM through systemd; the kubelet starts the container
    /// again.
    ScopeKilled {
        /// The process found.
        pid: u32,
        /// The scope that held it.
        unit: String,
    },
    /// It was sent SIGTERM directly (a container under the cgroupfs driver has no scope).
    ProcessSignalled {
        /// The process.
        pid: u32,
        /// Its container's cgroup.
        cgroup: String,
    },
    /// It exited between being found and being signalled.
    Exited {
        /// The process found.
        pid: u32,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::ScopeKilled { pid, unit } => write!(f, "sent SIGTERM to {unit} (PID {pid})"),
            Action::ProcessSignalled { pid, cgroup } => {
                write!(f, "sent SIGTERM to PID {pid} (in {cgroup})")
            }
            Action::Exited { pid } => write!(f, "PID {pid} had already exited"),
        }
    }
}

/// A process that goes by the component's name but is not the static pod's: left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoy {
    /// The process.
    pub pid: u32,
    /// Its cgroup (systemd's view; empty when unreadable).
    pub cgroup: String,
    /// Why it is not the static pod's process.
    pub why: String,
}

impl fmt::Display for Decoy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PID {} in {} ({})", self.pid, self.cgroup, self.why)
    }
}

/// A process proved to be the static pod's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProcess {
    /// The process.
    pub pid: u32,
    /// Its cgroup.
    pub cgroup: String,
    /// Where it sits in the pod hierarchy.
    pub pod: PodCgroup,
}

/// What a scan of the process table found for one component.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// The static pod's processes, in ascending PID order.
    pub pod: Vec<PodProcess>,
    /// Processes by that name that are not the static pod's.
    pub decoys: Vec<Decoy>,
    /// Processes of the component's executable in a pod's container, when which pod is the
    /// static pod is unknown: neither taken nor ruled out, so [`restart`] refuses.
    pub unconfirmed: Vec<PodProcess>,
}

/// What [`restart`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restarted {
    /// What was done to each of the static pod's processes (empty: it was not running).
    pub actions: Vec<Action>,
    /// What was left alone.
    pub decoys: Vec<Decoy>,
}

/// A container's place in the kubelet's pod hierarchy, read from its cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's UID, as the API spells it (the systemd driver writes its dashes as `_`).
    pub pod_uid: String,
    /// The container's scope under the systemd cgroup driver (`cri-containerd-<id>.scope`).
    pub scope: Option<String>,
}

/// Where `path` (a cgroup path as `/proc/PID/cgroup` gives it) is in the kubelet's pod hierarchy:
/// None unless it is a container's cgroup inside a pod's, inside `kubepods`. The hierarchy may
/// sit below a prefix (a node in a container, a test's manager); [`scan`] requires every
/// directory of the path to belong to root, so a prefix cannot be someone else's.
pub fn pod_cgroup(path: &str) -> Option<PodCgroup> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let top = parts
        .iter()
        .position(|p| *p == "kubepods.slice" || *p == "kubepods")?;
    let systemd = parts[top] == "kubepods.slice";
    let mut at = top + 1;
    let is_qos = |p: &str| {
        if systemd {
            p == "kubepods-burstable.slice" || p == "kubepods-besteffort.slice"
        } else {
            p == "burstable" || p == "besteffort"
        }
    };
    if parts.get(at).is_some_and(|p| is_qos(p)) {
        at += 1;
    }
    let pod = parts.get(at)?;
    let uid = if systemd {
        let name = pod.strip_prefix("kubepods-")?.strip_suffix(".slice")?;
        let (qos, uid) = name.rsplit_once("pod")?;
        // "kubepods-pod<UID>" (guaranteed) or "kubepods-<qos>-pod<UID>", matching the QoS slice.
        let parent_qos = parts[top + 1..at]
            .first()
            .and_then(|p| p.strip_prefix("kubepods-")?.strip_suffix(".slice"));
        match (qos, parent_qos) {
            ("", None) => {}
            (q, Some(p)) if q.strip_suffix('-') == Some(p) => {}
            _ => return None,
        }
        uid.replace('_', "-")
    } else {
        pod.strip_prefix("pod")?.to_owned()
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if uid.is_empty() || !uid.chars().all(valid) {
        return None;
    }
    // The pod's own cgroup holds no process: one must be in a container below it.
    let container = parts.get(at + 1..).filter(|rest| !rest.is_empty())?;
    let scope = container
        .last()
        .filter(|leaf| systemd && leaf.ends_with(".scope"))
        .map(|leaf| (*leaf).to_owned());
    Some(PodCgroup {
        pod_uid: uid,
        scope,
    })
}

/// The PIDs under `proc_root` (normally `/proc`) whose argv[0] has `name` as its last path
/// component, in ascending order. Processes that vanish during the scan are skipped. A name is
/// what anyone can claim: use [`scan`] to tell the component from its decoys.
pub fn find_processes(proc_root: &Path, name: &str) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    if name.is_empty() {
        return Ok(found);
    }
    for pid in pids(proc_root)? {
        if argv0_base(proc_root, pid).as_deref() == Some(name.as_bytes()) {
            found.push(pid);
        }
    }
    Ok(found)
}

fn pids(proc_root: &Path) -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(proc_root)? {
        if let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

fn argv0_base(proc_root: &Path, pid: u32) -> Option<Vec<u8>> {
    // A process may exit at any time; its vanished cmdline is no error. Kernel threads and
    // zombies have an empty one.
    let cmdline = std::fs::read(proc_root.join(pid.to_string()).join("cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Some(
        argv0
            .rsplit(|b| *b == b'/')
            .next()
            .unwrap_or_default()
            .to_vec(),
    )
}

/// The executable's file name, as the kernel resolved it (`/proc/PID/exe`).
fn exe_base(proc_root: &Path, pid: u32) -> Option<String> {
    let exe = std::fs::read_link(proc_root.join(pid.to_string()).join("exe")).ok()?;
    // A binary replaced or removed since it started reads "<path> (deleted)": not the name.
    exe.file_name()?.to_str().map(str::to_owned)
}

/// The process's cgroup paths, each with the directories where that hierarchy may be mounted
/// under the cgroup root: the unified one first, then systemd's v1 one.
fn cgroups_of(host: &Host, pid: u32) -> Vec<(String, [PathBuf; 2])> {
    let Ok(text) = std::fs::read_to_string(host.proc_root.join(pid.to_string()).join("cgroup"))
    else {
        return Vec::new();
    };
    let root = &host.cgroup_root;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            out.insert(0, (path.to_owned(), [root.clone(), root.join("unified")]));
        } else if controllers == "name=systemd" {
            out.push((
                path.to_owned(),
                [root.join("systemd"), root.join("systemd")],
            ));
        }
    }
    out
}

/// Why `path` (in a hierarchy mounted at one of `mounts`) cannot be trusted as the kubelet's,
/// or None: every directory on it must exist and belong to root.
fn foreign_owner(path: &str, mounts: &[PathBuf; 2]) -> Option<String> {
    let rel = path.trim_start_matches('/');
    let Some(mount) = mounts.iter().find(|m| m.join(rel).is_dir()) else {
        return Some(format!("its cgroup is not under {}", mounts[0].display()));
    };
    let mut dir = mount.clone();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.uid() == 0 && meta.is_dir() => {}
            Ok(meta) => {
                return Some(format!(
                    "its cgroup {} belongs to uid {}, not root",
                    dir.display(),
                    meta.uid()
                ));
            }
            Err(e) => return Some(format!("its cgroup {}: {e}", dir.display())),
        }
    }
    None
}

/// Finds the processes of `binary` (the component's executable name) that belong to the static
/// pod whose UIDs are `pods`, and those that go by that name but do not, under `host`'s process
/// table. With the UIDs unknown, a process of the binary in a pod's container is neither: it is
/// `unconfirmed`. Processes that vanish meanwhile are skipped; this process is never one of them.
pub fn scan(host: &Host, binary: &str, pods: &PodUids) -> io::Result<Found> {
    let mut found = Found::default();
    if binary.is_empty() {
        return Ok(found);
    }
    let own = std::process::id();
    for pid in pids(&host.proc_root)?.into_iter().filter(|p| *p != own) {
        let exe = exe_base(&host.proc_root, pid);
        let by_exe = exe.as_deref() == Some(binary);
        let by_name = argv0_base(&host.proc_root, pid).as_deref() == Some(binary.as_bytes());
        if !by_exe && !by_name {
            continue;
        }
        let cgroups = cgroups_of(host, pid);
        let Some((cgroup, mounts)) = cgroups
            .iter()
            .find(|(path, _)| pod_cgroup(path).is_some())
            .or(cgroups.first())
            .cloned()
        else {
            // Gone, or a kernel thread: nothing to signal either way.
            continue;
        };
        let decoy = |why: String| Decoy {
            pid,
            cgroup: cgroup.clone(),
            why,
        };
        if !by_exe {
            let exe = exe.unwrap_or_else(|| "unreadable".to_owned());
            found
                .decoys
                .push(decoy(format!("named {binary} but its executable is {exe}")));
            continue;
        }
        let Some(pod) = pod_cgroup(&cgroup) else {
            found
                .decoys
                .push(decoy("not in a container of a kubelet's pod".to_owned()));
            continue;
        };
        if let Some(why) = foreign_owner(&cgroup, &mounts) {
            found.decoys.push(decoy(why));
            continue;
        }
        match pods {
            PodUids::Known(_) if pods.contains(&pod.pod_uid) => {
                found.pod.push(PodProcess { pid, cgroup, pod });
            }
            PodUids::Known(_) => found.decoys.push(decoy(format!(
                "in pod {}, not the static pod {pods}",
                pod.pod_uid
            ))),
            PodUids::Unknown(_) => found.unconfirmed.push(PodProcess { pid, cgroup, pod }),
        }
    }
    Ok(found)
}

/// Stops the static pod's processes of `binary` (see [`scan`]) so that the kubelet starts the
/// container again: a container's scope is killed with SIGTERM, a container without one (the
/// cgroupfs driver) has its process sent SIGTERM. Decoys are left alone and logged. No action
/// means the component was not running.
///
/// With the static pod's UIDs unknown and the binary running in some pod's container, nothing
/// is signalled and the error says why: taking any pod's process of that executable for the
/// static pod's would stop a vcluster's or a CNI's `etcd` along with (or instead of) it.
pub async fn restart(
    systemd: &Systemd,
    host: &Host,
    binary: &str,
    pods: &PodUids,
) -> Result<Restarted, RestartError> {
    let found = scan(host, binary, pods).map_err(|source| RestartError::Scan {
        path: host.proc_root.clone(),
        process: binary.to_owned(),
        source,
    })?;
    for d in &found.decoys {
        tracing::warn!(
            pid = d.pid,
            cgroup = %d.cgroup,
            "left alone a process named {binary}: {}",
            d.why
        );
    }
    if let (PodUids::Unknown(why), false) = (pods, found.unconfirmed.is_empty()) {
        return Err(RestartError::StaticPodUnknown {
            process: binary.to_owned(),
            pids: found.unconfirmed.iter().map(|p| p.pid).collect(),
            why: why.clone(),
        });
    }
    let mut done_scopes = BTreeSet::new();
    let mut actions = Vec::new();
    for p in found.pod {
        let action = match &p.pod.scope {
            // Several processes of one container share its scope: kill it once.
            Some(scope) if done_scopes.contains(scope) => continue,
            Some(scope) => match systemd.unit_by_pid(p.pid).await? {
                // systemd agrees the process is in that scope: the scope is the container.
                Some(unit) if unit == *scope => {
                    systemd
                        .kill_unit(&unit, KillWhom::All, Signal::SIGTERM)
                        .await?;
                    done_scopes.insert(unit.clone());
                    Action::ScopeKilled { pid: p.pid, unit }
                }
                // Not that manager's scope (a container runtime with its own): the process only.
                _ => signal_process(binary, &p)?,
            },
            None => signal_process(binary, &p)?,
        };
        actions.push(action);
    }
    Ok(Restarted {
        actions,
        decoys: found.decoys,
    })
}

fn signal_process(binary: &str, p: &PodProcess) -> Result<Action, RestartError> {
    let pid = p.pid;
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(Action::Exited { pid });
    };
    match signal::kill(Pid::from_raw(raw), Signal::SIGTERM) {
        Ok(()) => Ok(Action::ProcessSignalled {
            pid,
            cgroup: p.cgroup.clone(),
        }),
        Err(Errno::ESRCH) => Ok(Action::Exited { pid }),
        Err(source) => Err(RestartError::Signal {
            process: binary.to_owned(),
            pid,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2b3c4d5e6f708192a3b4c5d6e7f80910";
    const API_UID: &str = "5f0c1e5e-7c3a-4b7a-9a51-3d8e1f2a4b6c";

    struct FakeHost {
        _dir: tempfile::TempDir,
        host: Host,
    }

    impl FakeHost {
        fn new() -> FakeHost {
            let dir = tempfile::tempdir().expect("tempdir");
            let host = Host {
                proc_root: dir.path().join("proc"),
                cgroup_root: dir.path().join("cgroup"),
            };
            std::fs::create_dir_all(&host.proc_root).expect("mkdir proc");
            std::fs::create_dir_all(&host.cgroup_root).expect("mkdir cgroup");
            FakeHost { _dir: dir, host }
        }

        /// A process with this argv[0], executable and cgroup (v2), whose cgroup exists.
        fn process(&self, pid: u32, argv0: &str, exe: &str, cgroup: &str) {
            let p = self.host.proc_root.join(pid.to_string());
            std::fs::create_dir(&p).expect("mkdir pid");
            std::fs::write(p.join("cmdline"), format!("{argv0}\0--flag\0")).expect("cmdline");
            std::os::unix::fs::symlink(exe, p.join("exe")).expect("exe");
            std::fs::write(p.join("cgroup"), format!("0::{cgroup}\n")).expect("cgroup");
            std::fs::create_dir_all(self.host.cgroup_root.join(cgroup.trim_start_matches('/')))
                .expect("mkdir cgroup");
        }
    }

    fn known(uid: &str) -> PodUids {
        PodUids::Known(vec![uid.to_owned()])
    }

    fn pids_of(found: &Found) -> (Vec<u32>, Vec<u32>) {
        (
            found.pod.iter().map(|p| p.pid).collect(),
            found.decoys.iter().map(|d| d.pid).collect(),
        )
    }

    #[test]
    fn pod_cgroups_of_both_drivers_are_read() {
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-0a1b.scope",
            API_UID.replace('-', "_")
        );
        assert_eq!(
            pod_cgroup(&systemd),
            Some(PodCgroup {
                pod_uid: API_UID.to_owned(),
                scope: Some("cri-containerd-0a1b.scope".to_owned())
            })
        );
        let guaranteed = format!("/kubepods.slice/kubepods-pod{UID}.slice/crio-77.scope");
        assert_eq!(pod_cgroup(&guaranteed).expect("pod").pod_uid, UID);
        let cgroupfs = format!("/kubepods/besteffort/pod{UID}/0a1b2c3d");
        assert_eq!(
            pod_cgroup(&cgroupfs),
            Some(PodCgroup {
                pod_uid: UID.to_owned(),
                scope: None
            })
        );
        assert!(pod_cgroup(&format!("/kubepods/pod{UID}/0a1b")).is_some());
        // Below a prefix (a node in a container).
        assert!(pod_cgroup(&format!("/docker/abc/kubepods/pod{UID}/0a1b")).is_some());

        for not_a_container in [
            "/user.slice/user-1000.slice/session-3.scope".to_owned(),
            "/system.slice/etcd.service".to_owned(),
            "/init.scope".to_owned(),
            // The pod's own cgroup, the QoS slice, kubepods itself.
            format!("/kubepods.slice/kubepods-pod{UID}.slice"),
            "/kubepods.slice/kubepods-burstable.slice/x.scope".to_owned(),
            "/kubepods.slice/session-2.scope".to_owned(),
            // A QoS that does not match its parent slice.
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{UID}.slice/c.scope"
            ),
            format!("/kubepods/burstable/notpod{UID}/c"),
            "/kubepods/pod/c".to_owned(),
            "/kubepods/pod..%2f/c".to_owned(),
        ] {
            assert_eq!(pod_cgroup(&not_a_container), None, "{not_a_container}");
        }
    }

    #[test]
    fn only_the_static_pods_process_is_found_and_decoys_are_named() {
        let f = FakeHost::new();
        let bin = "/usr/local/bin/kube-apiserver";
        let pod = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice/cri-containerd-aa.scope"
        );
        f.process(100, "kube-apiserver", bin, &pod);
        // exec -a kube-apiserver sleep 1d in an ssh session.
        f.process(
            101,
            "kube-apiserver",
            "/usr/bin/sleep",
            "/user.slice/user-1000.slice/session-4.scope",
        );
        // The real binary, run by hand outside any pod.
        f.process(
            102,
            "/opt/kube-apiserver",
            bin,
            "/user.slice/user-0.slice/session-5.scope",
        );
        // Another pod's container running the same binary (a vcluster).
        let other = format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-bb.scope",
            API_UID.replace('-', "_")
        );
        f.process(103, "kube-apiserver", bin, &other);
        // Unrelated.
        f.process(
            104,
            "kubelet",
            "/usr/bin/kubelet",
            "/system.slice/kubelet.service",
        );

        let found = scan(&f.host, "kube-apiserver", &known(UID)).expect("scan");
        assert_eq!(pids_of(&found), (vec![100], vec![101, 102, 103]));
        assert_eq!(
            found.pod[0].pod.scope.as_deref(),
            Some("cri-containerd-aa.scope")
        );
        assert_eq!(found.pod[0].cgroup, pod);
        let why: Vec<&str> = found.decoys.iter().map(|d| d.why.as_str()).collect();
        assert_eq!(
            why,
            [
                "named kube-apiserver but its executable is sleep",
                "not in a container of a kubelet's pod",
                &format!("in pod {API_UID}, not the static pod {UID}"),
            ]
        );
        assert_eq!(
            found.decoys[0].to_string(),
            "PID 101 in /user.slice/user-1000.slice/session-4.scope (named kube-apiserver but its executable is sleep)"
        );

        // Without the UID, no pod's container is taken, nor ruled out.
        let unknown = PodUids::Unknown("no record".to_owned());
        let found = scan(&f.host, "kube-apiserver", &unknown).expect("scan");
        assert_eq!(pids_of(&found), (vec![], vec![101, 102]));
        assert_eq!(
            found.unconfirmed.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [100, 103]
        );
        assert!(scan(&f.host, "", &unknown).expect("scan").pod.is_empty());

        // Two UIDs (the kubelet replacing an edited manifest's pod): both are the static pod's.
        let both = PodUids::Known(vec![UID.to_owned(), API_UID.to_owned()]);
        let found = scan(&f.host, "kube-apiserver", &both).expect("scan");
        assert_eq!(pids_of(&found), (vec![100, 103], vec![101, 102]));
    }

    #[test]
    fn a_pod_hierarchy_in_a_users_delegated_cgroup_is_a_decoy() {
        let f = FakeHost::new();
        let cg = format!(
            "/user.slice/user-1000.slice/user@1000.service/kubepods.slice/kubepods-pod{UID}.slice/fake.scope"
        );
        f.process(200, "etcd", "/usr/local/bin/etcd", &cg);
        let delegated = f
            .host
            .cgroup_root
            .join("user.slice/user-1000.slice/user@1000.service");
        nix::unistd::chown(&delegated, Some(nix::unistd::Uid::from_raw(1000)), None)
            .expect("chown (the tests run as root)");
        let found = scan(&f.host, "etcd", &known(UID)).expect("scan");
        assert_eq!(pids_of(&found), (vec![], vec![200]));
        assert!(
            found.decoys[0]
                .why
                .ends_with("user@1000.service belongs to uid 1000, not root"),
            "{}",
            found.decoys[0].why
        );
    }

    #[test]
    fn cgroup_v1_hierarchies_are_read_too() {
        let f = FakeHost::new();
        let cg = format!("/kubepods/burstable/pod{UID}/0a1b");
        let p = f.host.proc_root.join("300");
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::write(p.join("cmdline"), b"etcd\0").expect("cmdline");
        std::os::unix::fs::symlink("/usr/local/bin/etcd", p.join("exe")).expect("exe");
        std::fs::write(
            p.join("cgroup"),
            format!("4:memory:{cg}\n1:name=systemd:{cg}\n"),
        )
        .expect("cgroup");
        std::fs::create_dir_all(
            f.host
                .cgroup_root
                .join("systemd")
                .join(cg.trim_start_matches('/')),
        )
        .expect("mkdir");
        let found = scan(&f.host, "etcd", &known(UID)).expect("scan");
        assert_eq!(pids_of(&found), (vec![300], vec![]));
        assert_eq!(found.pod[0].pod.scope, None);
    }

    #[test]
    fn finds_processes_by_argv0_basename() {
        let f = FakeHost::new();
        for (pid, cmdline) in [
            (
                "10",
                &b"/usr/local/bin/kube-apiserver\0--advertise-address=10.0.0.1\0"[..],
            ),
            ("11", b"kube-apiserver\0"),
            ("12", b"kube-apiserver-proxy\0"),
            ("13", b"/bin/sh\0-c\0kube-apiserver\0"),
            ("14", b""),
            ("self", b"kube-apiserver\0"),
            ("2", b"etcd\0--name=x\0"),
        ] {
            let p = f.host.proc_root.join(pid);
            std::fs::create_dir(&p).expect("mkdir");
            std::fs::write(p.join("cmdline"), cmdline).expect("write cmdline");
        }
        let proc = &f.host.proc_root;
        assert_eq!(
            find_processes(proc, "kube-apiserver").expect("scan"),
            vec![10, 11]
        );
        assert_eq!(find_processes(proc, "etcd").expect("scan"), vec![2]);
        assert!(find_processes(proc, "").expect("scan").is_empty());
    }
}
