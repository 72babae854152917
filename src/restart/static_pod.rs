//! Restarting a static pod's container without touching its manifest: find the component's process
//! by its argv[0], ask systemd which unit holds it and stop it there, so that the kubelet starts
//! the container again.
//!
//! With the systemd cgroup driver every container runs in a scope of its own
//! (`cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`), and `KillUnit` on that
//! scope with SIGTERM stops exactly that container. A process in no unit, or in a unit it shares
//! with others (the cgroupfs driver puts containers under `-.slice`), is signalled itself: killing
//! a shared unit would take down its neighbours.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::RestartError;
use super::systemd::{JobOutcome, KillWhom, Systemd};

/// What was done to one process of the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Its scope was sent SIGTERM through systemd; the kubelet starts the container again.
    ScopeKilled {
        /// The process found.
        pid: u32,
        /// The scope that held it.
        unit: String,
    },
    /// It is the main process of a service, which was restarted through systemd (SIGTERM alone
    /// would leave a service without `Restart=always` stopped).
    ServiceRestarted {
        /// The process found.
        pid: u32,
        /// The job that restarted the service.
        job: JobOutcome,
    },
    /// It was sent SIGTERM directly.
    ProcessSignalled {
        /// The process.
        pid: u32,
        /// The unit that holds it without being its own (None: no unit at all).
        unit: Option<String>,
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
            Action::ServiceRestarted { pid, job } => {
                write!(
                    f,
                    "restarted {} (main PID {pid}): job {}",
                    job.unit, job.result
                )
            }
            Action::ProcessSignalled { pid, unit: None } => {
                write!(f, "sent SIGTERM to PID {pid} (in no unit)")
            }
            Action::ProcessSignalled {
                pid,
                unit: Some(unit),
            } => write!(f, "sent SIGTERM to PID {pid} (in {unit}, which it shares)"),
            Action::Exited { pid } => write!(f, "PID {pid} had already exited"),
        }
    }
}

/// The PIDs under `proc_root` (normally `/proc`) whose argv[0] has `name` as its last path
/// component, in ascending order. Processes that vanish during the scan are skipped.
pub fn find_processes(proc_root: &Path, name: &str) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(proc_root)? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit at any time; its vanished cmdline is no error. Kernel threads and
        // zombies have an empty one.
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
        if base == name.as_bytes() && !name.is_empty() {
            found.push(pid);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Stops every running process named `process` (see [`find_processes`]) so that whatever
/// supervises it starts it again: a container scope is killed with SIGTERM, a service whose main
/// process it is gets restarted (waiting up to `job_timeout`), any other process is sent SIGTERM.
/// An empty list means the component was not running.
pub async fn restart(
    systemd: &Systemd,
    proc_root: &Path,
    process: &str,
    job_timeout: Duration,
) -> Result<Vec<Action>, RestartError> {
    let pids = find_processes(proc_root, process).map_err(|source| RestartError::Scan {
        path: proc_root.to_path_buf(),
        process: process.to_owned(),
        source,
    })?;
    let own = std::process::id();
    let mut done_units = BTreeSet::new();
    let mut actions = Vec::new();
    for pid in pids.into_iter().filter(|p| *p != own) {
        let unit = systemd.unit_by_pid(pid).await?;
        let action = match unit {
            // Several processes of one container share its scope: kill it once.
            Some(unit) if done_units.contains(&unit) => continue,
            Some(unit) if is_container_scope(&unit) => {
                systemd
                    .kill_unit(&unit, KillWhom::All, Signal::SIGTERM)
                    .await?;
                done_units.insert(unit.clone());
                Action::ScopeKilled { pid, unit }
            }
            Some(unit)
                if unit.ends_with(".service") && is_main_pid(systemd, &unit, pid).await? =>
            {
                let job = systemd.restart_unit(&unit, job_timeout).await?;
                done_units.insert(unit);
                Action::ServiceRestarted { pid, job }
            }
            unit => signal_process(process, pid, unit)?,
        };
        actions.push(action);
    }
    Ok(actions)
}

/// Whether a unit is a scope that can be killed whole: `init.scope` holds the manager itself.
fn is_container_scope(unit: &str) -> bool {
    unit.ends_with(".scope") && unit != "init.scope"
}

async fn is_main_pid(systemd: &Systemd, unit: &str, pid: u32) -> Result<bool, RestartError> {
    Ok(systemd.unit_status(unit).await?.main_pid == Some(pid))
}

fn signal_process(process: &str, pid: u32, unit: Option<String>) -> Result<Action, RestartError> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(Action::Exited { pid });
    };
    match signal::kill(Pid::from_raw(raw), Signal::SIGTERM) {
        Ok(()) => Ok(Action::ProcessSignalled { pid, unit }),
        Err(Errno::ESRCH) => Ok(Action::Exited { pid }),
        Err(source) => Err(RestartError::Signal {
            process: process.to_owned(),
            pid,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(entries: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (pid, cmdline) in entries {
            let p = dir.path().join(pid);
            std::fs::create_dir(&p).expect("mkdir");
            std::fs::write(p.join("cmdline"), cmdline).expect("write cmdline");
        }
        dir
    }

    #[test]
    fn finds_processes_by_argv0_basename() {
        let proc = fake_proc(&[
            (
                "10",
                b"/usr/local/bin/kube-apiserver\0--advertise-address=10.0.0.1\0",
            ),
            ("11", b"kube-apiserver\0"),
            ("12", b"kube-apiserver-proxy\0"),
            ("13", b"/bin/sh\0-c\0kube-apiserver\0"),
            ("14", b""),
            ("self", b"kube-apiserver\0"),
            ("2", b"etcd\0--name=x\0"),
        ]);
        assert_eq!(
            find_processes(proc.path(), "kube-apiserver").expect("scan"),
            vec![10, 11]
        );
        assert_eq!(find_processes(proc.path(), "etcd").expect("scan"), vec![2]);
        assert!(find_processes(proc.path(), "").expect("scan").is_empty());
    }

    #[test]
    fn only_container_scopes_are_killed_whole() {
        assert!(is_container_scope("cri-containerd-0123abcd.scope"));
        assert!(!is_container_scope("init.scope"));
        assert!(!is_container_scope("kubepods-burstable.slice"));
        assert!(!is_container_scope("containerd.service"));
    }
}
