//! Where each distribution keeps its certificates, what certrotd calls each one, and which component
//! consumes it. kubeadm's file set is fixed (kubeadm-spec.md); RKE2 and k3s keep theirs in directories
//! that are walked.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::root::Root;

/// A distribution's way of laying out a node's PKI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// kubeadm: /etc/kubernetes and the kubelet's /var/lib/kubelet/pki.
    Kubeadm,
    /// RKE2: /var/lib/rancher/rke2 and /etc/rancher/rke2.
    Rke2,
    /// k3s: /var/lib/rancher/k3s and /etc/rancher/k3s.
    K3s,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Kubeadm => "kubeadm",
            Layout::Rke2 => "rke2",
            Layout::K3s => "k3s",
        })
    }
}

/// A process that reads a certificate and must be restarted to use a renewed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// The kube-apiserver static pod.
    KubeApiserver,
    /// The kube-controller-manager static pod.
    KubeControllerManager,
    /// The kube-scheduler static pod.
    KubeScheduler,
    /// etcd (static pod or unit).
    Etcd,
    /// The kubelet (systemd unit).
    Kubelet,
    /// RKE2's server or agent unit, which runs every component itself.
    Rke2,
    /// k3s's unit, which runs every component itself.
    K3s,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::Etcd => "etcd",
            Component::Kubelet => "kubelet",
            Component::Rke2 => "rke2",
            Component::K3s => "k3s",
        })
    }
}

/// How a known file holds its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileShape {
    /// A certificate file with its key in another file.
    CertKey {
        /// The key's node path.
        key: PathBuf,
    },
    /// Certificate and key in one file (the kubelet's client certificate).
    Combined,
    /// A kubeconfig whose users carry client certificates.
    Kubeconfig,
    /// A key pair without a certificate (the service-account signing key).
    KeyPair {
        /// The public key's node path.
        public: PathBuf,
    },
}

/// One file a layout knows about.
#[derive(Debug, Clone)]
pub struct Known {
    /// The name operators know (`apiserver`, `admin.conf`, …).
    pub name: String,
    /// The node path of the file.
    pub path: PathBuf,
    /// How it holds its certificate.
    pub shape: FileShape,
    /// Who reads it.
    pub consumers: Vec<Component>,
}

/// The kubelet's configuration file, where `rotateCertificates` is set.
pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
/// The kubelet's certificate directory.
pub const KUBELET_PKI: &str = "/var/lib/kubelet/pki";
/// kubeadm's certificate directory.
pub const KUBEADM_PKI: &str = "/etc/kubernetes/pki";

/// Whether the layout keeps a symlink at this node path: the kubelet's `*-current.pem`, which it
/// points at its newest timestamped file. Links anywhere else are not certrotd's to follow.
pub fn link_may_live_at(node: &Path) -> bool {
    node.parent() == Some(Path::new(KUBELET_PKI))
        && node
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("-current.pem") && n.len() > "-current.pem".len())
}

/// Which layouts a node root has.
pub fn detect(root: &Root) -> Vec<Layout> {
    let mut out = Vec::new();
    let kubeadm = [KUBEADM_PKI, "/etc/kubernetes/kubelet.conf", KUBELET_PKI];
    if kubeadm.iter().any(|p| root.join(p).exists()) {
        out.push(Layout::Kubeadm);
    }
    for (layout, dir) in [
        (Layout::Rke2, "/var/lib/rancher/rke2"),
        (Layout::K3s, "/var/lib/rancher/k3s"),
    ] {
        if root.join(dir).exists() || root.join(dist_kubeconfig(layout)).exists() {
            out.push(layout);
        }
    }
    out
}

fn dist_kubeconfig(layout: Layout) -> String {
    format!("/etc/rancher/{layout}/{layout}.yaml")
}

/// kubeadm's and the kubelet's fixed file set (kubeadm-spec.md).
pub fn kubeadm_known() -> Vec<Known> {
    use Component::*;
    let pki = |name: &str, file: &str, consumers: &[Component]| Known {
        name: name.to_owned(),
        path: PathBuf::from(format!("{KUBEADM_PKI}/{file}.crt")),
        shape: FileShape::CertKey {
            key: PathBuf::from(format!("{KUBEADM_PKI}/{file}.key")),
        },
        consumers: consumers.to_vec(),
    };
    let conf = |file: &str, consumers: &[Component]| Known {
        name: file.to_owned(),
        path: PathBuf::from(format!("/etc/kubernetes/{file}")),
        shape: FileShape::Kubeconfig,
        consumers: consumers.to_vec(),
    };
    vec![
        pki("ca", "ca", &[KubeApiserver, KubeControllerManager, Kubelet]),
        pki("apiserver", "apiserver", &[KubeApiserver]),
        pki(
            "apiserver-kubelet-client",
            "apiserver-kubelet-client",
            &[KubeApiserver],
        ),
        pki(
            "front-proxy-ca",
            "front-proxy-ca",
            &[KubeApiserver, KubeControllerManager],
        ),
        pki("front-proxy-client", "front-proxy-client", &[KubeApiserver]),
        pki("etcd-ca", "etcd/ca", &[Etcd, KubeApiserver]),
        pki("etcd-server", "etcd/server", &[Etcd]),
        pki("etcd-peer", "etcd/peer", &[Etcd]),
        pki("etcd-healthcheck-client", "etcd/healthcheck-client", &[]),
        pki(
            "apiserver-etcd-client",
            "apiserver-etcd-client",
            &[KubeApiserver],
        ),
        Known {
            name: "sa".to_owned(),
            path: PathBuf::from(format!("{KUBEADM_PKI}/sa.key")),
            shape: FileShape::KeyPair {
                public: PathBuf::from(format!("{KUBEADM_PKI}/sa.pub")),
            },
            consumers: vec![KubeApiserver, KubeControllerManager],
        },
        conf("admin.conf", &[]),
        conf("super-admin.conf", &[]),
        conf("controller-manager.conf", &[KubeControllerManager]),
        conf("scheduler.conf", &[KubeScheduler]),
        conf("kubelet.conf", &[Kubelet]),
        Known {
            name: "kubelet-client-current".to_owned(),
            path: PathBuf::from(format!("{KUBELET_PKI}/kubelet-client-current.pem")),
            shape: FileShape::Combined,
            consumers: vec![Kubelet],
        },
        Known {
            name: "kubelet-serving".to_owned(),
            path: PathBuf::from(format!("{KUBELET_PKI}/kubelet.crt")),
            shape: FileShape::CertKey {
                key: PathBuf::from(format!("{KUBELET_PKI}/kubelet.key")),
            },
            consumers: vec![Kubelet],
        },
    ]
}

/// A directory whose certificate files belong to a layout but whose names are not fixed.
#[derive(Debug, Clone)]
pub struct Tree {
    /// The node path of the directory.
    pub dir: PathBuf,
    /// Whether subdirectories are walked too.
    pub recursive: bool,
    /// Prefix for entry names, so that files from two trees do not share a name.
    pub name_prefix: &'static str,
    /// Who reads what is inside.
    pub consumers: Vec<Component>,
}

/// The trees a layout keeps certificates in (for kubeadm: the rest of /etc/kubernetes/pki, since an
/// inventory covers everything there, not only kubeadm's own files).
pub fn trees(layout: Layout) -> Vec<Tree> {
    match layout {
        Layout::Kubeadm => vec![Tree {
            dir: PathBuf::from(KUBEADM_PKI),
            recursive: true,
            name_prefix: "",
            consumers: vec![],
        }],
        Layout::Rke2 | Layout::K3s => {
            let c = if layout == Layout::Rke2 {
                Component::Rke2
            } else {
                Component::K3s
            };
            let base = format!("/var/lib/rancher/{layout}");
            vec![
                Tree {
                    dir: PathBuf::from(format!("{base}/server/tls")),
                    recursive: true,
                    name_prefix: "",
                    consumers: vec![c],
                },
                Tree {
                    dir: PathBuf::from(format!("{base}/server/cred")),
                    recursive: false,
                    name_prefix: "cred/",
                    consumers: vec![c],
                },
                Tree {
                    dir: PathBuf::from(format!("{base}/agent")),
                    recursive: false,
                    name_prefix: "agent/",
                    consumers: vec![c],
                },
            ]
        }
    }
}

/// Fixed files of RKE2 and k3s (their admin kubeconfig).
pub fn dist_known(layout: Layout) -> Vec<Known> {
    match layout {
        Layout::Kubeadm => kubeadm_known(),
        Layout::Rke2 | Layout::K3s => vec![Known {
            name: format!("{layout}.yaml"),
            path: PathBuf::from(dist_kubeconfig(layout)),
            shape: FileShape::Kubeconfig,
            consumers: vec![],
        }],
    }
}

/// What a file found in a tree is, judged by its name: certificates end in `.crt` or `.pem`,
/// kubeconfigs in `.kubeconfig`, `.conf` or `.yaml`; keys are found next to their certificate.
pub fn shape_by_name(path: &Path) -> Option<FileShape> {
    let name = path.file_name()?.to_str()?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if name.ends_with("-key.pem") || ext == "key" || name.contains(".certrotd-tmp.") {
        return None;
    }
    match ext {
        "crt" | "pem" | "cer" => Some(FileShape::CertKey {
            key: key_beside(path),
        }),
        "kubeconfig" | "conf" | "yaml" | "yml" => Some(FileShape::Kubeconfig),
        _ => None,
    }
}

/// The conventional key file for a certificate file: `x.crt` → `x.key`, `x.pem` → `x-key.pem`.
pub fn key_beside(cert: &Path) -> PathBuf {
    match cert.extension().and_then(|e| e.to_str()) {
        Some("pem") => {
            let stem = cert.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            cert.with_file_name(format!("{stem}-key.pem"))
        }
        _ => cert.with_extension("key"),
    }
}
