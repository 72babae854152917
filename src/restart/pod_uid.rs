//! Which pod on this node is a static pod: its UID, as the kubelet itself recorded it.
//!
//! The kubelet gives a static pod the UID its manifest sets (`metadata.uid`). kubeadm's manifests
//! set none, and then the kubelet derives one (`pkg/kubelet/config/common.go`, `applyDefaults`):
//! the MD5 of the node name, the manifest's path and a deep hash of the decoded Go object, in hex,
//! which is also the pod's `kubernetes.io/config.hash`. That hash cannot be recomputed outside
//! the kubelet, so it is read back from what the kubelet writes on the node, all of it root's:
//!
//! * the pod's log directory, `<podLogsDir>/<namespace>_<name>-<node>_<uid>`
//!   (`pkg/kubelet/kuberuntime/helpers.go`, `BuildPodLogsDirectory`; a static pod's name is the
//!   manifest's with `-<node name>` appended, `generatePodName`; `podLogsDir` is `/var/log/pods`
//!   unless the kubelet's configuration moves it);
//! * the pod's directory `<kubelet root>/pods/<uid>`, which the kubelet makes for every pod it runs.
//!
//! A candidate counts only when its UID has the shape of that hash (32 lowercase hex digits: an
//! API server's pods get dashed random UUIDs, so no pod created through the API can pass), its
//! log directory and pod directory are directories (not links) owned by root, and both exist.
//! While the kubelet replaces the pod of an edited manifest, the old pod's directories linger
//! for a garbage-collection round: both UIDs are then the static pod's, old and new.
//!
//! When no UID is found, the static pod is not known: the caller signals nothing (see
//! [`super::static_pod::scan`]) and says why, rather than guess by the executable's name.

use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::pki::layout::KUBELET_CONFIG;
use crate::root::Root;
use crate::root::fd::trusted_owner;

/// Where the kubelet's pod log directories are unless its configuration says otherwise.
pub const DEFAULT_POD_LOGS_DIR: &str = "/var/log/pods";
/// Where the kubelet keeps one directory per pod it runs (`<root-dir>/pods`).
pub const KUBELET_PODS_DIR: &str = "/var/lib/kubelet/pods";

/// Where the kubelet records its pods on a node, as real paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletRecords {
    /// The pod log directories' parent (`/var/log/pods`).
    pub pod_logs_dir: PathBuf,
    /// The per-pod directories' parent (`/var/lib/kubelet/pods`).
    pub pods_dir: PathBuf,
}

impl KubeletRecords {
    /// The kubelet's records on the node at `root`: `podLogsDir` from the kubelet's configuration
    /// when it sets one (kubelet ≥ 1.29), else the default.
    pub fn for_root(root: &Root) -> KubeletRecords {
        let configured = std::fs::read_to_string(root.join(KUBELET_CONFIG))
            .ok()
            .and_then(|text| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).ok())
            .and_then(|doc| doc.get("podLogsDir")?.as_str().map(str::to_owned))
            .filter(|dir| dir.starts_with('/'));
        KubeletRecords {
            pod_logs_dir: root.join(configured.as_deref().unwrap_or(DEFAULT_POD_LOGS_DIR)),
            pods_dir: root.join(KUBELET_PODS_DIR),
        }
    }
}

/// The static pod's UIDs, or why they are not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodUids {
    /// The UIDs the static pod has: one, or the old and the new one while the kubelet replaces
    /// the pod of an edited manifest.
    Known(Vec<String>),
    /// Why no UID was found: no process may be taken for the static pod's.
    Unknown(String),
}

impl PodUids {
    /// Whether `uid` is one of the static pod's.
    pub fn contains(&self, uid: &str) -> bool {
        matches!(self, PodUids::Known(uids) if uids.iter().any(|u| u == uid))
    }
}

impl fmt::Display for PodUids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodUids::Known(uids) => f.write_str(&uids.join(" or ")),
            PodUids::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// What a static pod manifest says about the pod's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ManifestIdentity {
    name: String,
    namespace: String,
    uid: Option<String>,
}

fn manifest_identity(manifest: &Path) -> Result<ManifestIdentity, String> {
    let text = std::fs::read_to_string(manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| format!("cannot parse {}: {e}", manifest.display()))?;
    let meta = doc.get("metadata");
    let field = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let name =
        field("name").ok_or_else(|| format!("{} has no metadata.name", manifest.display()))?;
    Ok(ManifestIdentity {
        name,
        // The kubelet puts a static pod without a namespace in "default".
        namespace: field("namespace").unwrap_or_else(|| "default".to_owned()),
        uid: field("uid"),
    })
}

/// Whether `uid` has the shape of the UID the kubelet derives for a manifest without one: an
/// MD5 in lowercase hex.
fn is_kubelet_hash(uid: &str) -> bool {
    uid.len() == 32
        && uid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why `path` is not a directory owned by root (or certrotd's own user), or None when it is.
fn not_roots_dir(path: &Path) -> Option<String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_dir() => Some(format!("{} is not a directory", path.display())),
        Ok(m) if !trusted_owner(m.uid()) => Some(format!(
            "{} belongs to uid {}, not root",
            path.display(),
            m.uid()
        )),
        Ok(_) => None,
        Err(e) => Some(format!("{}: {e}", path.display())),
    }
}

/// The UIDs of the static pod that `manifest` describes on the node named `node_name`, from the
/// manifest itself or else from the kubelet's `records` (see the module's documentation).
pub fn static_pod_uids(manifest: &Path, node_name: &str, records: &KubeletRecords) -> PodUids {
    let id = match manifest_identity(manifest) {
        Ok(id) => id,
        Err(why) => return PodUids::Unknown(why),
    };
    if let Some(uid) = id.uid {
        // The kubelet keeps a UID the manifest sets.
        return PodUids::Known(vec![uid]);
    }
    if node_name.is_empty() {
        return PodUids::Unknown("this node's name is not known (set node_name)".to_owned());
    }
    let pod = format!("{}-{}", id.name, node_name.to_lowercase());
    let prefix = format!("{}_{pod}_", id.namespace);
    let wanted = format!(
        "a directory {prefix}<uid> owned by root in {} with {}/<uid> beside it",
        records.pod_logs_dir.display(),
        records.pods_dir.display()
    );
    if let Some(why) = not_roots_dir(&records.pod_logs_dir) {
        return PodUids::Unknown(format!("no record of {}/{pod}: {why}", id.namespace));
    }
    let entries = match std::fs::read_dir(&records.pod_logs_dir) {
        Ok(entries) => entries,
        Err(e) => {
            return PodUids::Unknown(format!(
                "cannot list {}: {e}",
                records.pod_logs_dir.display()
            ));
        }
    };
    let mut uids = Vec::new();
    let mut refused = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(uid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if !is_kubelet_hash(uid) {
            refused.push(format!("{uid} is not a UID the kubelet derives"));
            continue;
        }
        let why = not_roots_dir(&entry.path())
            .or_else(|| not_roots_dir(&records.pods_dir))
            .or_else(|| not_roots_dir(&records.pods_dir.join(uid)));
        match why {
            Some(why) => refused.push(why),
            None => uids.push(uid.to_owned()),
        }
    }
    if uids.is_empty() {
        let mut why = format!(
            "the kubelet records no static pod {}/{pod}: wanted {wanted}",
            id.namespace
        );
        if !refused.is_empty() {
            why.push_str("; refused ");
            why.push_str(&refused.join("; "));
        }
        return PodUids::Unknown(why);
    }
    uids.sort();
    PodUids::Known(uids)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "2b3c4d5e6f708192a3b4c5d6e7f80910";
    const OLD_HASH: &str = "00112233445566778899aabbccddeeff";
    const KUBEADM_ETCD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  creationTimestamp: null\n  labels:\n    component: etcd\n  name: etcd\n  namespace: kube-system\nspec:\n  containers:\n  - name: etcd\n";

    struct Node {
        dir: tempfile::TempDir,
        records: KubeletRecords,
        manifest: PathBuf,
    }

    impl Node {
        fn new(manifest: &str) -> Node {
            let dir = tempfile::tempdir().expect("tempdir");
            let root = Root::new(dir.path());
            let records = KubeletRecords::for_root(&root);
            std::fs::create_dir_all(&records.pod_logs_dir).expect("mkdir logs");
            std::fs::create_dir_all(&records.pods_dir).expect("mkdir pods");
            let path = root.join("/etc/kubernetes/manifests/etcd.yaml");
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir manifests");
            std::fs::write(&path, manifest).expect("write manifest");
            Node {
                dir,
                records,
                manifest: path,
            }
        }

        /// What the kubelet makes for a pod it runs: its log directory and its pod directory.
        fn pod(&self, log_dir: &str, uid: &str) {
            std::fs::create_dir_all(self.records.pod_logs_dir.join(log_dir).join("etcd"))
                .expect("mkdir log dir");
            std::fs::create_dir_all(self.records.pods_dir.join(uid).join("containers"))
                .expect("mkdir pod dir");
        }

        fn uids(&self, node: &str) -> PodUids {
            static_pod_uids(&self.manifest, node, &self.records)
        }
    }

    #[test]
    fn a_kubeadm_manifests_uid_is_read_from_the_kubelets_pod_directories() {
        let n = Node::new(KUBEADM_ETCD);
        assert_eq!(
            n.records.pod_logs_dir,
            n.dir.path().join("var/log/pods"),
            "the default podLogsDir"
        );
        n.pod(&format!("kube-system_etcd-cp-1_{HASH}"), HASH);
        // Other pods: another node's name, another namespace, a name that only starts the same,
        // an API pod (a dashed UUID) in a vcluster's namespace.
        n.pod(&format!("kube-system_etcd-cp-10_{OLD_HASH}"), OLD_HASH);
        n.pod(&format!("vcluster_etcd-cp-1_{OLD_HASH}"), OLD_HASH);
        n.pod(
            "vcluster_etcd-0_5f0c1e5e-7c3a-4b7a-9a51-3d8e1f2a4b6c",
            "5f0c1e5e-7c3a-4b7a-9a51-3d8e1f2a4b6c",
        );
        assert_eq!(n.uids("cp-1"), PodUids::Known(vec![HASH.to_owned()]));
        // The kubelet lowercases the node name into the pod's.
        assert_eq!(n.uids("CP-1"), PodUids::Known(vec![HASH.to_owned()]));
        assert!(n.uids("cp-1").contains(HASH));
        assert!(!n.uids("cp-1").contains(OLD_HASH));

        // While an edited manifest's pod is replaced, both are the static pod's.
        n.pod(&format!("kube-system_etcd-cp-1_{OLD_HASH}"), OLD_HASH);
        assert_eq!(
            n.uids("cp-1"),
            PodUids::Known(vec![OLD_HASH.to_owned(), HASH.to_owned()])
        );
    }

    #[test]
    fn a_uid_the_manifest_sets_is_the_pods() {
        let n = Node::new(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\n  namespace: kube-system\n  uid: my-own-uid\n",
        );
        assert_eq!(n.uids(""), PodUids::Known(vec!["my-own-uid".to_owned()]));
    }

    #[test]
    fn without_a_record_owned_by_root_the_uid_is_unknown() {
        let n = Node::new(KUBEADM_ETCD);
        let PodUids::Unknown(why) = n.uids("cp-1") else {
            panic!("found a UID with no record");
        };
        assert!(
            why.starts_with("the kubelet records no static pod kube-system/etcd-cp-1: wanted a directory kube-system_etcd-cp-1_<uid> owned by root in "),
            "{why}"
        );
        assert!(matches!(n.uids(""), PodUids::Unknown(w) if w.contains("node_name")));

        // A log directory without the kubelet's pod directory (a log shipper's doing).
        std::fs::create_dir(
            n.records
                .pod_logs_dir
                .join(format!("kube-system_etcd-cp-1_{HASH}")),
        )
        .expect("mkdir");
        let PodUids::Unknown(why) = n.uids("cp-1") else {
            panic!("a log directory alone was taken");
        };
        assert!(
            why.contains(&format!(
                "refused {}",
                n.records.pods_dir.join(HASH).display()
            )),
            "{why}"
        );

        // Both, but the log directory is someone else's.
        std::fs::create_dir(n.records.pods_dir.join(HASH)).expect("mkdir");
        let log_dir = n
            .records
            .pod_logs_dir
            .join(format!("kube-system_etcd-cp-1_{HASH}"));
        nix::unistd::chown(&log_dir, Some(nix::unistd::Uid::from_raw(1000)), None)
            .expect("chown (the tests run as root)");
        let PodUids::Unknown(why) = n.uids("cp-1") else {
            panic!("a directory of uid 1000 was taken");
        };
        assert!(why.ends_with("belongs to uid 1000, not root"), "{why}");

        // A link planted where the log directory would be.
        std::fs::remove_dir(&log_dir).expect("rmdir");
        let elsewhere = n.dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, &log_dir).expect("symlink");
        assert!(matches!(n.uids("cp-1"), PodUids::Unknown(w) if w.contains("is not a directory")));
    }

    #[test]
    fn a_uid_not_shaped_like_the_kubelets_hash_is_refused() {
        let n = Node::new(KUBEADM_ETCD);
        let api_uid = "5f0c1e5e-7c3a-4b7a-9a51-3d8e1f2a4b6c";
        n.pod(&format!("kube-system_etcd-cp-1_{api_uid}"), api_uid);
        let upper = HASH.to_uppercase();
        n.pod(&format!("kube-system_etcd-cp-1_{upper}"), &upper);
        let PodUids::Unknown(why) = n.uids("cp-1") else {
            panic!("an API pod's UID was taken");
        };
        assert!(
            why.contains(&format!("{api_uid} is not a UID the kubelet derives")),
            "{why}"
        );
    }

    #[test]
    fn the_kubelets_configured_pod_logs_dir_is_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Root::new(dir.path());
        let config = root.join(KUBELET_CONFIG);
        std::fs::create_dir_all(config.parent().expect("parent")).expect("mkdir");
        std::fs::write(
            &config,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\npodLogsDir: /srv/pod-logs\n",
        )
        .expect("write");
        let records = KubeletRecords::for_root(&root);
        assert_eq!(records.pod_logs_dir, dir.path().join("srv/pod-logs"));
        assert_eq!(records.pods_dir, dir.path().join("var/lib/kubelet/pods"));
    }

    #[test]
    fn a_manifest_that_cannot_be_read_leaves_the_uid_unknown() {
        let n = Node::new("metadata: [");
        assert!(matches!(n.uids("cp-1"), PodUids::Unknown(w) if w.starts_with("cannot parse ")));
        std::fs::write(&n.manifest, "apiVersion: v1\nkind: Pod\n").expect("write");
        assert!(
            matches!(n.uids("cp-1"), PodUids::Unknown(w) if w.ends_with("has no metadata.name"))
        );
        std::fs::remove_file(&n.manifest).expect("rm");
        assert!(matches!(n.uids("cp-1"), PodUids::Unknown(w) if w.starts_with("cannot read ")));
    }
}
