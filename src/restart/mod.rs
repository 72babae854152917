//! Restarting the components that read a renewed certificate: systemd units through D-Bus, static
//! pods by stopping their container's scope or by annotating their manifest.

pub mod manifest;
pub mod pod_uid;
pub mod probe;
pub mod reload;
pub mod static_pod;
pub mod systemd;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::pki::layout::Component;
use crate::root::Root;
use manifest::ManifestError;
use pod_uid::KubeletRecords;
use static_pod::{Action, Decoy, Host};
use systemd::{JobOutcome, Systemd, SystemdError};

/// Where kubeadm keeps static pod manifests on a node.
pub const MANIFESTS_DIR: &str = "/etc/kubernetes/manifests";
/// How long a restart job may take before certrotd stops waiting by default. Generous: the kubelet
/// and etcd take a while to stop, and a job that is merely slow is not a failed one.
pub use crate::config::DEFAULT_JOB_TIMEOUT;

/// How a component is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// `RestartUnit` on the component's systemd unit, waiting for the job's result.
    Unit,
    /// Stop the static pod's container through its systemd scope; the kubelet starts it again.
    KillScope,
    /// Annotate the static pod's manifest; the kubelet recreates the pod.
    Manifest,
}

impl From<crate::config::StaticPodRestart> for Strategy {
    fn from(choice: crate::config::StaticPodRestart) -> Self {
        match choice {
            crate::config::StaticPodRestart::KillScope => Strategy::KillScope,
            crate::config::StaticPodRestart::Manifest => Strategy::Manifest,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Unit => "unit",
            Strategy::KillScope => "kill-scope",
            Strategy::Manifest => "manifest",
        })
    }
}

/// What a component and strategy come down to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Restart the first of these units that is active (else the first that is installed).
    Unit {
        /// Candidate unit names, most likely first.
        candidates: &'static [&'static str],
    },
    /// Stop the static pod's processes running this executable (see [`static_pod::scan`]).
    Process {
        /// The executable's name, which is also the static pod's.
        name: &'static str,
    },
    /// Annotate the static pod's manifest, `<pod>.yaml` in the manifest directory.
    Manifest {
        /// The static pod's name.
        pod: &'static str,
    },
}

/// Errors restarting a component; each names what was being done and to what.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// systemd refused or failed.
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    /// The manifest could not be annotated.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The process table could not be read.
    #[error("scan {} for {process} processes: {source}", path.display())]
    Scan {
        /// The procfs root.
        path: PathBuf,
        /// The process name looked for.
        process: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Which pod is the static pod is unknown while the component's executable runs in pods'
    /// containers: none of them is signalled.
    #[error(
        "restart {process}: PIDs {pids:?} run it in pods' containers, but which pod is the static pod is unknown, so none was signalled: {why}"
    )]
    StaticPodUnknown {
        /// The executable's name.
        process: String,
        /// The processes left alone.
        pids: Vec<u32>,
        /// Why the static pod's UID is unknown.
        why: String,
    },
    /// A process could not be signalled.
    #[error("send SIGTERM to {process} (PID {pid}): {source}")]
    Signal {
        /// The process name.
        process: String,
        /// The process.
        pid: u32,
        /// The operating system's error.
        #[source]
        source: nix::Error,
    },
    /// The strategy makes no sense for the component.
    #[error("restart {component} with the {strategy} strategy: {reason}")]
    NotApplicable {
        /// The component.
        component: Component,
        /// The strategy asked for.
        strategy: Strategy,
        /// Why it does not apply.
        reason: &'static str,
    },
}

/// What a restart did, for the caller to log and record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A unit was restarted and its job finished with "done".
    UnitRestarted(JobOutcome),
    /// A static pod's processes were stopped; empty when none was running.
    StaticPod {
        /// The process name looked for.
        process: String,
        /// What was done to each process found.
        actions: Vec<Action>,
        /// Processes by that name that are not the static pod's, left alone.
        decoys: Vec<Decoy>,
    },
    /// A static pod's manifest was annotated.
    ManifestAnnotated {
        /// The manifest's real path.
        path: PathBuf,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::UnitRestarted(job) => write!(f, "restarted {}: job {}", job.unit, job.result),
            Outcome::StaticPod {
                process,
                actions,
                decoys,
            } => {
                if actions.is_empty() {
                    write!(f, "{process} is not running: nothing to restart")?;
                } else {
                    write!(f, "{process}: ")?;
                    for (i, a) in actions.iter().enumerate() {
                        if i > 0 {
                            f.write_str("; ")?;
                        }
                        write!(f, "{a}")?;
                    }
                }
                for d in decoys {
                    write!(f, "; left alone {d}")?;
                }
                Ok(())
            }
            Outcome::ManifestAnnotated { path } => {
                write!(
                    f,
                    "annotated {} for the kubelet to recreate the pod",
                    path.display()
                )
            }
        }
    }
}

/// The process name (argv[0]) of a component that kubeadm runs as a static pod; its manifest is
/// `<name>.yaml`.
pub fn static_pod_name(component: Component) -> Option<&'static str> {
    match component {
        Component::KubeApiserver => Some("kube-apiserver"),
        Component::KubeControllerManager => Some("kube-controller-manager"),
        Component::KubeScheduler => Some("kube-scheduler"),
        Component::Etcd => Some("etcd"),
        Component::Kubelet | Component::Rke2 | Component::K3s => None,
    }
}

/// What a component and strategy come down to, or why they do not go together.
pub fn target(component: Component, strategy: Strategy) -> Result<Target, RestartError> {
    use Component::*;
    let not_applicable = |reason| RestartError::NotApplicable {
        component,
        strategy,
        reason,
    };
    let static_pod = || {
        static_pod_name(component).ok_or_else(|| {
            not_applicable("it runs as a systemd unit, not as a static pod; use the unit strategy")
        })
    };
    Ok(match strategy {
        Strategy::Unit => Target::Unit {
            candidates: match component {
                Kubelet => &["kubelet.service"],
                // External etcd (kubespray and hand-made clusters) runs as a unit of its own.
                Etcd => &["etcd.service"],
                // The installers put both units on every node and enable one of them.
                Rke2 => &["rke2-server.service", "rke2-agent.service"],
                K3s => &["k3s.service", "k3s-agent.service"],
                KubeApiserver | KubeControllerManager | KubeScheduler => {
                    return Err(not_applicable(
                        "it runs as a static pod; use the kill-scope or manifest strategy",
                    ));
                }
            },
        },
        Strategy::KillScope => Target::Process {
            name: static_pod()?,
        },
        Strategy::Manifest => Target::Manifest { pod: static_pod()? },
    })
}

/// Restarts components the way the node runs them.
#[derive(Debug, Clone)]
pub struct Restarter {
    /// The D-Bus address of systemd's bus; None for the system bus.
    pub bus: Option<String>,
    /// Where the process table and the cgroups are (`/proc`, `/sys/fs/cgroup`).
    pub host: Host,
    /// The real path of the static pod manifest directory.
    pub manifests_dir: PathBuf,
    /// Where the kubelet records the pods it runs, which tells the static pod's UID.
    pub kubelet: KubeletRecords,
    /// This node's Kubernetes name, part of a static pod's name.
    pub node_name: String,
    /// How long to wait for a unit's restart job.
    pub job_timeout: Duration,
}

impl Restarter {
    /// A restarter for the node at `root` named `node_name`, using the system bus, `/proc` and
    /// `/sys/fs/cgroup`.
    pub fn new(root: &Root, node_name: &str) -> Restarter {
        Restarter {
            bus: None,
            host: Host::default(),
            manifests_dir: root.join(MANIFESTS_DIR),
            kubelet: KubeletRecords::for_root(root),
            node_name: node_name.to_owned(),
            job_timeout: DEFAULT_JOB_TIMEOUT,
        }
    }

    /// Restarts `component` with `strategy`; `now` is what the manifest strategy records.
    ///
    /// A D-Bus connection is made for this call and closed after it, so the daemon holds none (and
    /// no systemd subscription) while idle.
    pub async fn restart(
        &self,
        component: Component,
        strategy: Strategy,
        now: OffsetDateTime,
    ) -> Result<Outcome, RestartError> {
        match target(component, strategy)? {
            Target::Unit { candidates } => {
                let systemd = Systemd::connect(self.bus.as_deref()).await?;
                let unit = pick_unit(&systemd, candidates).await?;
                // A unit that crash-looped (on a certificate it could not use, say) until systemd
                // gave up on it refuses RestartUnit, and this start would count against the same
                // start limit even before it is hit: a deliberate restart clears both, as an
                // operator's `systemctl reset-failed` would. Errors are left to RestartUnit, which
                // reports them better (an unknown unit, a bus that went away).
                if let Err(e) = systemd.reset_failed_unit(unit).await {
                    tracing::debug!("before restarting {unit}: {e}");
                }
                Ok(Outcome::UnitRestarted(
                    systemd.restart_unit(unit, self.job_timeout).await?,
                ))
            }
            Target::Process { name } => {
                let systemd = Systemd::connect(self.bus.as_deref()).await?;
                let manifest = self.manifests_dir.join(format!("{name}.yaml"));
                let pods = pod_uid::static_pod_uids(&manifest, &self.node_name, &self.kubelet);
                let done = static_pod::restart(&systemd, &self.host, name, &pods).await?;
                Ok(Outcome::StaticPod {
                    process: name.to_owned(),
                    actions: done.actions,
                    decoys: done.decoys,
                })
            }
            Target::Manifest { pod } => {
                let path = self.manifests_dir.join(format!("{pod}.yaml"));
                manifest::annotate(&path, now)?;
                Ok(Outcome::ManifestAnnotated { path })
            }
        }
    }
}

/// The first candidate that is active, else the first that is installed; with none installed the
/// error names the first, so it reads like any other "unit not found".
async fn pick_unit(
    systemd: &Systemd,
    candidates: &'static [&'static str],
) -> Result<&'static str, RestartError> {
    if let [only] = candidates {
        return Ok(only);
    }
    let mut installed = None;
    for unit in candidates {
        match systemd.unit_status(unit).await {
            Ok(status) if status.is_active() => return Ok(unit),
            Ok(_) => {
                installed.get_or_insert(*unit);
            }
            Err(SystemdError::NoSuchUnit { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    installed.ok_or_else(|| {
        SystemdError::NoSuchUnit {
            op: "restart",
            unit: candidates.join(" or "),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_map_to_targets() {
        use Component::*;
        assert_eq!(
            target(Kubelet, Strategy::Unit).expect("kubelet"),
            Target::Unit {
                candidates: &["kubelet.service"]
            }
        );
        assert_eq!(
            target(Etcd, Strategy::KillScope).expect("etcd"),
            Target::Process { name: "etcd" }
        );
        assert_eq!(
            target(KubeControllerManager, Strategy::Manifest).expect("kcm"),
            Target::Manifest {
                pod: "kube-controller-manager"
            }
        );
        let err = target(KubeApiserver, Strategy::Unit).unwrap_err();
        assert_eq!(
            err.to_string(),
            "restart kube-apiserver with the unit strategy: it runs as a static pod; use the kill-scope or manifest strategy"
        );
        assert!(target(Kubelet, Strategy::Manifest).is_err());
        assert!(target(Rke2, Strategy::KillScope).is_err());
    }

    #[test]
    fn strategies_read_as_configured() {
        for s in [Strategy::Unit, Strategy::KillScope, Strategy::Manifest] {
            let json = serde_json::to_string(&s).expect("serialise");
            assert_eq!(json, format!("\"{s}\""));
        }
    }
}
