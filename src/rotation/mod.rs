//! Rotation: renewing a set of leaf certificates as one crash-safe unit.
//!
//! A rotation goes through these steps, and the journal (`<state>/rotations/<id>/journal.json`)
//! is rewritten atomically before each one, so the next start knows exactly where it stopped:
//!
//! ```text
//! select → plan → journal(planned) → backup every file touched → journal(backed-up)
//!        → build and self-check every new certificate, key and file → stage them (fsync'd, digests)
//!        → journal(staged) → journal(installing) → install (atomic writes, symlinks last)
//!        → read back → journal(committed) → remove staged keys → prune old backups
//! ```
//!
//! Finishing interrupted rotations ([`finish_interrupted`]) runs before anything else under the same lock: a rotation that stopped
//! before installing is abandoned (nothing was changed), one whose staged contents are complete and
//! verify is rolled forward, and one that cannot be rolled forward is restored from its backup. So
//! after that every file of a rotation is all-old or all-new.
//!
//! A [`Guard`] is asked before every disruptive step; a step that finds it lost stops there and
//! installs nothing more (the journal then says where, and the next holder finishes the rotation).

pub mod build;
pub mod execute;
pub mod finish_interrupted;
pub mod journal;
pub mod lock;
pub mod obtain;
pub mod plan;
pub mod recheck;
pub mod restore;
pub mod select;
pub mod session;
pub mod stage;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::root::Root;

/// The rotation types operators know from the commercial platforms.
// The command line's adapter is `cli::TypeArg`; the control protocol carries the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RotationType {
    /// apiserver, apiserver-kubelet-client, front-proxy-client and every kubeconfig but kubelet.conf.
    KubernetesLeaf,
    /// etcd-server, etcd-peer, etcd-healthcheck-client and apiserver-etcd-client.
    EtcdLeaf,
    /// kubelet.conf and the kubelet's client and serving certificates.
    Kubelet,
    /// Every leaf certificate on the node.
    All,
}

impl RotationType {
    /// The name as typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationType::KubernetesLeaf => "kubernetes-leaf",
            RotationType::EtcdLeaf => "etcd-leaf",
            RotationType::Kubelet => "kubelet",
            RotationType::All => "all",
        }
    }

    /// The inventory names a type covers (every leaf for `all`).
    pub fn members(self) -> &'static [&'static str] {
        match self {
            RotationType::KubernetesLeaf => &[
                "apiserver",
                "apiserver-kubelet-client",
                "front-proxy-client",
                "admin.conf",
                "super-admin.conf",
                "controller-manager.conf",
                "scheduler.conf",
            ],
            RotationType::EtcdLeaf => &[
                "etcd-server",
                "etcd-peer",
                "etcd-healthcheck-client",
                "apiserver-etcd-client",
            ],
            RotationType::Kubelet => &["kubelet.conf", "kubelet-client-current", "kubelet-serving"],
            RotationType::All => &[],
        }
    }
}

impl RotationType {
    /// Every type, in the order help texts list them.
    pub const ALL: [RotationType; 4] = [
        RotationType::KubernetesLeaf,
        RotationType::EtcdLeaf,
        RotationType::Kubelet,
        RotationType::All,
    ];
}

impl std::str::FromStr for RotationType {
    type Err = String;

    /// The type a name as typed on the command line (any case) names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RotationType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown rotation type {s:?} (kubernetes-leaf, etcd-leaf, kubelet, all)")
            })
    }
}

impl fmt::Display for RotationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operator asked to renew.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Rotation types.
    pub types: Vec<RotationType>,
    /// Single certificates, by inventory name.
    pub certs: Vec<String>,
}

/// The guard was lost: whoever held the right to disrupt this node no longer does.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct GuardLost(pub String);

/// Asked before every disruptive step of a rotation (each install, the commit, each roll-forward
/// step of recovery). The CLI runs unguarded; the daemon plugs in its lease.
pub trait Guard: Sync {
    /// `Ok` while the rotation may go on; `step` names what is about to happen.
    fn check(&self, step: &str) -> Result<(), GuardLost>;
}

/// The guard of a process that alone decides for this node (the CLI).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unguarded;

impl Guard for Unguarded {
    fn check(&self, _step: &str) -> Result<(), GuardLost> {
        Ok(())
    }
}

/// Where certrotd keeps rotation state (real paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDirs {
    /// The state directory itself.
    pub dir: PathBuf,
}

impl StateDirs {
    /// The state directory of a node: `state_dir` (a node path) resolved inside `root`.
    pub fn new(root: &Root, state_dir: &Path) -> std::io::Result<StateDirs> {
        Ok(StateDirs {
            dir: root.resolve(state_dir)?,
        })
    }

    /// `<state>/rotations`: one directory per rotation, holding its journal and staged contents.
    pub fn rotations(&self) -> PathBuf {
        self.dir.join("rotations")
    }

    /// `<state>/rotations/<id>`.
    pub fn rotation(&self, id: &str) -> PathBuf {
        self.rotations().join(id)
    }

    /// `<state>/backups`: one [`crate::store::Backup`] per rotation.
    pub fn backups(&self) -> PathBuf {
        self.dir.join("backups")
    }

    /// `<state>/quarantine`: rotations whose journal recovery could not trust (unreadable, an
    /// unknown version, paths outside the root), moved aside whole for a person to look at.
    pub fn quarantine(&self) -> PathBuf {
        self.dir.join("quarantine")
    }

    /// `<state>/lock`: held while a rotation, a recovery or a restore runs.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
}

/// What every rotation step needs to know about where it runs.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The node root.
    pub root: &'a Root,
    /// Where state lives.
    pub state: &'a StateDirs,
    /// How many backups to keep after a rotation commits.
    pub backups_keep: usize,
    /// Asked before every disruptive step.
    pub guard: &'a dyn Guard,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("root", &self.root)
            .field("state", &self.state)
            .field("backups_keep", &self.backups_keep)
            .finish_non_exhaustive()
    }
}

/// Why a rotation step failed. Names the operation and the path; never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A file store operation failed (atomic write, backup, restore).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A filesystem operation on rotation state failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A journal could not be read or written.
    #[error("rotation journal {}: {reason}", path.display())]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate could not be renewed (issuing, key generation, reading its old key).
    #[error("renewing {name}: {reason}")]
    Renew {
        /// The certificate.
        name: String,
        /// Why.
        reason: String,
    },
    /// Something certrotd just made failed its own check before anything was installed.
    #[error("self-check of {what} failed: {reason}")]
    SelfCheck {
        /// What was checked.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A file changed under the rotation (another writer), so nothing is installed.
    #[error("{} changed since it was backed up (another writer?); nothing was installed", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// Staged contents are missing or do not match their digest.
    #[error("staged content {} for {} is missing or corrupt", staged.display(), path.display())]
    StagedCorrupt {
        /// The file the content was for.
        path: PathBuf,
        /// The staged copy.
        staged: PathBuf,
    },
    /// A journal or backup names a path outside the node root: the state was copied or the root
    /// moved, and following it would write into another tree.
    #[error(
        "rotation {id} names {}, outside the node root {} (was the root moved or copied?); \
         refusing to touch it",
        path.display(),
        root.display()
    )]
    OutsideRoot {
        /// The rotation.
        id: String,
        /// The path it names.
        path: PathBuf,
        /// The node root.
        root: PathBuf,
    },
    /// A failpoint set to fail (tests only).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
    /// The guard was lost before a disruptive step.
    #[error("stopped before {step}: {source}")]
    GuardLost {
        /// The step that did not happen.
        step: String,
        /// Why the guard was lost.
        #[source]
        source: GuardLost,
    },
    /// Another certrotd holds the rotation lock.
    #[error(
        "another certrotd is rotating, recovering or restoring on this node (lock {} is held)",
        path.display()
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The rotation failed and was rolled back; the node is as it was.
    #[error("rotation {id} failed and was rolled back, nothing changed: {cause}")]
    RolledBack {
        /// The rotation.
        id: String,
        /// What made it fail.
        cause: Box<RotationError>,
    },
    /// The rotation failed and could not be rolled back; the next start will retry.
    #[error(
        "rotation {id} failed ({cause}) and rolling it back failed too ({rollback}); \
         run `certrotd recover` to retry, or see {}", dir.display()
    )]
    Stuck {
        /// The rotation.
        id: String,
        /// Its state directory.
        dir: PathBuf,
        /// What made it fail.
        cause: Box<RotationError>,
        /// Why the rollback failed.
        rollback: Box<RotationError>,
    },
}

impl RotationError {
    /// Wraps an io::Error with the operation and path.
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| RotationError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Asks the guard, turning a loss into the error that stops the rotation.
pub(crate) fn check_guard(guard: &dyn Guard, step: &str) -> Result<(), RotationError> {
    guard
        .check(step)
        .map_err(|source| RotationError::GuardLost {
            step: step.to_owned(),
            source,
        })
}
