//! What each component re-reads by itself, per certificate: the table certrotd consults before
//! it restarts anything. An entry that says a component reloads is only a reason to *wait and
//! look*: where certrotd can see what the component serves (its `[probe.endpoints]`), the new
//! serial must appear on a fresh connection within the reload period, or the component is
//! restarted after all. Where nothing can be probed (a client certificate, a CA bundle) the table
//! decides alone, so only entries read in the upstream source say "reloads"; everything else,
//! and everything not listed, is restarted.
//!
//! Each entry names the upstream file (and the version it was read in) that shows the behaviour.

use std::fmt;
use std::time::Duration;

use crate::pki::layout::Component;

/// How long a component is given by default to serve its new certificate (owned by the
/// configuration, which depends on no subsystem).
pub use crate::config::DEFAULT_RELOAD_PERIOD;

/// How a component comes to use a replaced file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Reads the file again on every new TLS handshake.
    EachHandshake,
    /// Watches the file (inotify) and re-reads it, with a periodic re-check as a backstop.
    WatchesFile {
        /// The backstop's period: the longest a missed event delays the reload.
        resync: Duration,
    },
    /// Reads it once at start: only a restart brings the new one in.
    ReadsOnce,
    /// Not established from the source here: treated as [`Reload::ReadsOnce`].
    Unknown,
}

impl Reload {
    /// Whether the component picks the new file up without a restart.
    pub fn by_itself(self) -> bool {
        matches!(self, Reload::EachHandshake | Reload::WatchesFile { .. })
    }
}

impl fmt::Display for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reload::EachHandshake => f.write_str("re-reads it on every TLS handshake"),
            Reload::WatchesFile { resync } => write!(
                f,
                "watches the file and re-reads it (re-checked every {}s)",
                resync.as_secs()
            ),
            Reload::ReadsOnce => f.write_str("reads it once at start"),
            Reload::Unknown => f.write_str("not known to re-read it"),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The component.
    pub component: Component,
    /// The inventory name of the certificate (`*`: every certificate of the component).
    pub cert: &'static str,
    /// The flag or file through which the component reads it.
    pub via: &'static str,
    /// What it does when the file is replaced.
    pub reload: Reload,
    /// The versions this holds for.
    pub versions: &'static str,
    /// The upstream source that shows it (repository path, and the version read).
    pub source: &'static str,
}

const MINUTE: Duration = Duration::from_secs(60);

/// The table. Order matters only for `*` rows, which come last for their component.
pub const TABLE: &[Entry] = &[
    // etcd: TLSInfo.baseConfig sets GetCertificate and GetClientCertificate to
    // tlsutil.NewCert(CertFile, KeyFile) per call, for client and peer listeners alike (and for
    // the member's own outgoing peer connections); the trusted CA file becomes ClientCAs/RootCAs
    // once, in ServerConfig/ClientConfig.
    Entry {
        component: Component::Etcd,
        cert: "etcd-server",
        via: "--cert-file/--key-file",
        reload: Reload::EachHandshake,
        versions: "3.4, 3.5, 3.6",
        source: "etcd-io/etcd pkg/transport/listener.go (v3.4; client/pkg/transport/listener.go from v3.5), TLSInfo.baseConfig: GetCertificate",
    },
    Entry {
        component: Component::Etcd,
        cert: "etcd-peer",
        via: "--peer-cert-file/--peer-key-file",
        reload: Reload::EachHandshake,
        versions: "3.4, 3.5, 3.6",
        source: "etcd-io/etcd pkg/transport/listener.go (v3.4), TLSInfo.baseConfig: GetCertificate and GetClientCertificate",
    },
    Entry {
        component: Component::Etcd,
        cert: "etcd-ca",
        via: "--trusted-ca-file/--peer-trusted-ca-file",
        reload: Reload::ReadsOnce,
        versions: "3.4, 3.5, 3.6",
        source: "etcd-io/etcd pkg/transport/listener.go (v3.4), TLSInfo.ServerConfig: ClientCAs = tlsutil.NewCertPool(cafiles) once",
    },
    // kube-apiserver: the serving certificate is a DynamicCertKeyPairContent (fsnotify on the
    // cert and key, re-armed every minute); --client-ca-file and --requestheader-client-ca-file
    // are DynamicFileCAContent (same scheme).
    Entry {
        component: Component::KubeApiserver,
        cert: "apiserver",
        via: "--tls-cert-file/--tls-private-key-file",
        reload: Reload::WatchesFile { resync: MINUTE },
        versions: ">= 1.17",
        source: "kubernetes/kubernetes staging/src/k8s.io/apiserver/pkg/server/dynamiccertificates/dynamic_serving_content.go (NewDynamicServingContentFromFiles; watchCertKeyFile, wait.Until 1 min)",
    },
    Entry {
        component: Component::KubeApiserver,
        cert: "ca",
        via: "--client-ca-file",
        reload: Reload::WatchesFile { resync: MINUTE },
        versions: ">= 1.17",
        source: "kubernetes/kubernetes staging/src/k8s.io/apiserver/pkg/server/dynamiccertificates/dynamic_cafile_content.go; pkg/server/options/authentication.go GetClientCAContentProvider: NewDynamicCAContentFromFile(\"client-ca-bundle\")",
    },
    Entry {
        component: Component::KubeApiserver,
        cert: "front-proxy-ca",
        via: "--requestheader-client-ca-file",
        reload: Reload::WatchesFile { resync: MINUTE },
        versions: ">= 1.17",
        source: "kubernetes/kubernetes staging/src/k8s.io/apiserver/pkg/server/dynamiccertificates/dynamic_cafile_content.go (request-header CA provider)",
    },
    // Client certificates of the API server: client-go and the etcd client re-read some of them
    // for NEW connections, but the connections they hold stay on the old one and nothing on the
    // node can show which certificate a component presents. Not established: restart.
    Entry {
        component: Component::KubeApiserver,
        cert: "apiserver-etcd-client",
        via: "--etcd-certfile/--etcd-keyfile",
        reload: Reload::Unknown,
        versions: "all",
        source: "not established (long-lived gRPC connections to etcd keep the certificate of their handshake)",
    },
    Entry {
        component: Component::KubeApiserver,
        cert: "apiserver-kubelet-client",
        via: "--kubelet-client-certificate/--kubelet-client-key",
        reload: Reload::Unknown,
        versions: "all",
        source: "not established (client-go transport/cert_rotation.go re-reads client certificate files every 5 min for some clients; not confirmed for this one)",
    },
    Entry {
        component: Component::KubeApiserver,
        cert: "front-proxy-client",
        via: "--proxy-client-cert-file/--proxy-client-key-file",
        reload: Reload::Unknown,
        versions: "all",
        source: "not established",
    },
    Entry {
        component: Component::KubeApiserver,
        cert: "etcd-ca",
        via: "--etcd-cafile",
        reload: Reload::ReadsOnce,
        versions: "all",
        source: "etcd client TLS config built once at storage backend creation (k8s.io/apiserver pkg/storage/storagebackend/factory/etcd3.go)",
    },
    Entry {
        component: Component::KubeApiserver,
        cert: "sa",
        via: "--service-account-key-file/--service-account-signing-key-file",
        reload: Reload::ReadsOnce,
        versions: "all",
        source: "keys parsed once at start (cmd/kube-apiserver/app/options)",
    },
    // Kubeconfigs with embedded client certificates: client-go's rest.Config holds CertData,
    // read with the kubeconfig once at start.
    Entry {
        component: Component::KubeControllerManager,
        cert: "controller-manager.conf",
        via: "--kubeconfig (embedded client-certificate-data)",
        reload: Reload::ReadsOnce,
        versions: "all",
        source: "k8s.io/client-go tools/clientcmd: embedded certificate data is read with the kubeconfig once",
    },
    Entry {
        component: Component::KubeScheduler,
        cert: "scheduler.conf",
        via: "--kubeconfig (embedded client-certificate-data)",
        reload: Reload::ReadsOnce,
        versions: "all",
        source: "k8s.io/client-go tools/clientcmd: embedded certificate data is read with the kubeconfig once",
    },
    Entry {
        component: Component::KubeControllerManager,
        cert: "ca",
        via: "--cluster-signing-cert-file, --root-ca-file",
        reload: Reload::Unknown,
        versions: "all",
        source: "not established",
    },
    Entry {
        component: Component::KubeControllerManager,
        cert: "front-proxy-ca",
        via: "--requestheader-client-ca-file",
        reload: Reload::Unknown,
        versions: "all",
        source: "not established (delegated authentication reads it from the extension-apiserver-authentication ConfigMap)",
    },
    Entry {
        component: Component::KubeControllerManager,
        cert: "sa",
        via: "--service-account-private-key-file",
        reload: Reload::ReadsOnce,
        versions: "all",
        source: "key parsed once at start (cmd/kube-controller-manager/app)",
    },
    Entry {
        component: Component::Kubelet,
        cert: "ca",
        via: "authentication.x509.clientCAFile",
        reload: Reload::Unknown,
        versions: "all",
        source: "kubernetes/kubernetes cmd/kubelet/app/auth.go BuildAuthn uses NewDynamicCAContentFromFile in current source; the first version doing so was not established, so: restart",
    },
    // kubelet: with tlsCertFile/tlsPrivateKeyFile and ReloadKubeletServerCertificateFile (beta,
    // on by default since 1.31) the serving certificate comes from
    // NewKubeletServerCertificateDynamicFileManager, a dynamic file content.
    Entry {
        component: Component::Kubelet,
        cert: "kubelet-serving",
        via: "tlsCertFile/tlsPrivateKeyFile",
        reload: Reload::WatchesFile { resync: MINUTE },
        versions: ">= 1.31 (feature gate ReloadKubeletServerCertificateFile, default on)",
        source: "kubernetes/kubernetes pkg/kubelet/kubelet.go NewMainKubelet: NewKubeletServerCertificateDynamicFileManager when ReloadKubeletServerCertificateFile is enabled; website feature-gates/ReloadKubeletServerCertificateFile.md (beta, default true, 1.31)",
    },
    Entry {
        component: Component::Kubelet,
        cert: "kubelet-client-current",
        via: "kubelet.conf -> kubelet-client-current.pem",
        reload: Reload::Unknown,
        versions: "all",
        source: "not established: the client certificate manager rotates its own certificate; whether it picks up one replaced by someone else was not confirmed",
    },
    Entry {
        component: Component::Kubelet,
        cert: "kubelet.conf",
        via: "--kubeconfig (embedded client-certificate-data)",
        reload: Reload::ReadsOnce,
        versions: "all",
        source: "k8s.io/client-go tools/clientcmd: embedded certificate data is read with the kubeconfig once",
    },
    // RKE2 and k3s: their own supervisors start the control plane in-process; their docs tell
    // operators to restart the service after `certificate rotate`.
    Entry {
        component: Component::Rke2,
        cert: "*",
        via: "rke2-server / rke2-agent",
        reload: Reload::ReadsOnce,
        versions: "all",
        source: "docs.rke2.io Certificate Management: restart rke2-server after rotating certificates",
    },
    Entry {
        component: Component::K3s,
        cert: "*",
        via: "k3s / k3s-agent",
        reload: Reload::ReadsOnce,
        versions: "all",
        source: "docs.k3s.io cli/certificate: restart K3s after rotating certificates (k3s-io/k3s PR #4632)",
    },
];

/// The table's row for `cert` as `component` uses it, if any.
pub fn lookup(component: Component, cert: &str) -> Option<&'static Entry> {
    TABLE
        .iter()
        .find(|e| e.component == component && (e.cert == cert || e.cert == "*"))
}

/// What `component` does when `cert` is replaced: [`Reload::Unknown`] for anything the table
/// does not list.
pub fn reload_of(component: Component, cert: &str) -> Reload {
    lookup(component, cert).map_or(Reload::Unknown, |e| e.reload)
}

/// Whether `component` picks up a replaced `cert` by itself (a CA bundle it re-reads, for the
/// CA rotation's bundle phases, or a leaf).
pub fn by_itself(component: Component, cert: &str) -> bool {
    reload_of(component, cert).by_itself()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::layout::kubeadm_known;

    #[test]
    fn every_consumer_of_kubeadms_files_is_in_the_table() {
        for known in kubeadm_known() {
            for &c in &known.consumers {
                assert!(
                    lookup(c, &known.name).is_some(),
                    "{c} reads {} and the table does not say what it does",
                    known.name
                );
            }
        }
    }

    #[test]
    fn only_what_the_source_shows_is_left_to_reload() {
        assert!(by_itself(Component::Etcd, "etcd-server"));
        assert!(by_itself(Component::Etcd, "etcd-peer"));
        assert!(!by_itself(Component::Etcd, "etcd-ca"));
        assert!(by_itself(Component::KubeApiserver, "apiserver"));
        assert!(by_itself(Component::KubeApiserver, "ca"));
        assert!(!by_itself(
            Component::KubeApiserver,
            "apiserver-etcd-client"
        ));
        assert!(!by_itself(Component::KubeScheduler, "scheduler.conf"));
        assert!(by_itself(Component::Kubelet, "kubelet-serving"));
        assert!(!by_itself(Component::Kubelet, "kubelet-client-current"));
        assert!(!by_itself(Component::K3s, "serving-kube-apiserver"));
        // Not listed: nobody knows, so restart.
        assert!(!by_itself(Component::Etcd, "some-other-file"));
        for e in TABLE {
            assert!(!e.source.is_empty() && !e.versions.is_empty(), "{e:?}");
        }
    }
}
