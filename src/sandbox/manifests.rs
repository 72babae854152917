//! The YAML the node's components read: kubeconfigs with embedded client certificates and the
//! static pod manifests, with the flags kubeadm v1.29+ writes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use base64::Engine as _;
use serde_json::json;

use super::pki::{Ca, Leaf, Node, key_pem};
use super::*;

/// A kubeconfig user, per kubeadm's `getKubeConfigSpecsBase`.
struct KubeconfigSpec<'a> {
    file: &'a str,
    cn: &'a str,
    org: Option<&'a str>,
}

impl Node<'_> {
    pub(super) fn kubeconfigs(&mut self, ca: &Ca) -> Result<(), SandboxError> {
        let node_user = format!("system:node:{}", self.opts.node_name);
        let mut specs = vec![KubeconfigSpec {
            file: "admin.conf",
            cn: "kubernetes-admin",
            org: Some("kubeadm:cluster-admins"),
        }];
        if self.opts.super_admin {
            specs.push(KubeconfigSpec {
                file: "super-admin.conf",
                cn: "kubernetes-super-admin",
                org: Some("system:masters"),
            });
        }
        specs.extend([
            KubeconfigSpec {
                file: "controller-manager.conf",
                cn: "system:kube-controller-manager",
                org: None,
            },
            KubeconfigSpec {
                file: "scheduler.conf",
                cn: "system:kube-scheduler",
                org: None,
            },
        ]);

        for spec in &specs {
            let path = self.w.path(&format!("/etc/kubernetes/{}", spec.file));
            let user = self.embedded_user(ca, &Leaf::client(spec.cn, spec.org), &path)?;
            self.kubeconfig(&path, ca, spec.cn, user)?;
        }

        let path = self.w.path("/etc/kubernetes/kubelet.conf");
        let user = if self.opts.kubelet_conf_embedded {
            let leaf = Leaf::client(&node_user, Some("system:nodes"));
            self.embedded_user(ca, &leaf, &path)?
        } else {
            // What kubeadm's kubelet-finalize phase rewrites kubelet.conf to since v1.22.
            json!({
                "client-certificate": KUBELET_CLIENT_CURRENT,
                "client-key": KUBELET_CLIENT_CURRENT,
            })
        };
        self.kubeconfig(&path, ca, &node_user, user)
    }

    /// A kubeconfig user entry with a freshly issued client certificate and key embedded.
    fn embedded_user(
        &self,
        ca: &Ca,
        leaf: &Leaf<'_>,
        path: &Path,
    ) -> Result<serde_json::Value, SandboxError> {
        let (cert, key) = self.issue(ca, leaf, self.opts.key, path)?;
        let key = key_pem(&key, self.opts.key.native_format(), path)?;
        Ok(json!({
            "client-certificate-data": b64(&cert),
            "client-key-data": b64(&key),
        }))
    }

    /// Writes one kubeconfig shaped exactly like kubeadm's (cluster `kubernetes`, context
    /// `<user>@kubernetes`).
    fn kubeconfig(
        &mut self,
        path: &Path,
        ca: &Ca,
        user_name: &str,
        user: serde_json::Value,
    ) -> Result<(), SandboxError> {
        let context = format!("{user_name}@kubernetes");
        let doc = json!({
            "apiVersion": "v1",
            "clusters": [{
                "cluster": {
                    "certificate-authority-data": b64(&ca.pem),
                    "server": format!("https://{}", self.api_endpoint()),
                },
                "name": "kubernetes",
            }],
            "contexts": [{
                "context": { "cluster": "kubernetes", "user": user_name },
                "name": context,
            }],
            "current-context": context,
            "kind": "Config",
            "preferences": {},
            "users": [{ "name": user_name, "user": user }],
        });
        self.yaml(path, &doc, 0o600)
    }

    fn api_endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.opts.advertise_address, API_PORT)
    }

    pub(super) fn yaml(
        &mut self,
        path: &Path,
        doc: &serde_json::Value,
        mode: u32,
    ) -> Result<(), SandboxError> {
        let text = serde_yaml_ng::to_string(doc).map_err(|source| SandboxError::Yaml {
            path: path.to_owned(),
            source,
        })?;
        self.w.file_at(path, text.as_bytes(), mode)
    }

    /// The four static pod manifests, with the flags kubeadm v1.29+ writes (sorted, as kubeadm
    /// sorts them): later stages map certificate files to components through them.
    pub(super) fn manifests(&mut self) -> Result<(), SandboxError> {
        let adv = self.opts.advertise_address;
        let node = &self.opts.node_name;
        let client_url = |ip: IpAddr| format!("https://{}", SocketAddr::new(ip, 2379));
        let peer_url = format!("https://{}", SocketAddr::new(adv, 2380));
        let mut listen_client = vec![client_url(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        if adv != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            listen_client.push(client_url(adv));
        }
        let image = |name: &str| format!("registry.k8s.io/{name}:{KUBERNETES_VERSION}");
        let certs = ("k8s-certs", KUBEADM_PKI, "DirectoryOrCreate");
        let ca_certs = ("ca-certs", "/etc/ssl/certs", "DirectoryOrCreate");

        let pods = [
            static_pod(
                "etcd",
                ETCD_IMAGE,
                json!({ "kubeadm.kubernetes.io/etcd.advertise-client-urls": client_url(adv) }),
                ETCD_FLAGS,
                vec![
                    format!("--advertise-client-urls={}", client_url(adv)),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster={node}={peer_url}"),
                    format!("--listen-client-urls={}", listen_client.join(",")),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--name={node}"),
                ],
                &[
                    (
                        "etcd-certs",
                        "/etc/kubernetes/pki/etcd",
                        "DirectoryOrCreate",
                    ),
                    ("etcd-data", "/var/lib/etcd", "DirectoryOrCreate"),
                ],
            ),
            static_pod(
                "kube-apiserver",
                &image("kube-apiserver"),
                json!({
                    "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint":
                        self.api_endpoint().to_string(),
                }),
                APISERVER_FLAGS,
                vec![
                    format!("--advertise-address={adv}"),
                    format!("--secure-port={API_PORT}"),
                ],
                &[ca_certs, certs],
            ),
            static_pod(
                "kube-controller-manager",
                &image("kube-controller-manager"),
                json!({}),
                CONTROLLER_MANAGER_FLAGS,
                Vec::new(),
                &[
                    ca_certs,
                    certs,
                    (
                        "kubeconfig",
                        "/etc/kubernetes/controller-manager.conf",
                        "FileOrCreate",
                    ),
                ],
            ),
            static_pod(
                "kube-scheduler",
                &image("kube-scheduler"),
                json!({}),
                SCHEDULER_FLAGS,
                Vec::new(),
                &[(
                    "kubeconfig",
                    "/etc/kubernetes/scheduler.conf",
                    "FileOrCreate",
                )],
            ),
        ];
        for (name, doc) in pods {
            let path = self
                .w
                .path(&format!("/etc/kubernetes/manifests/{name}.yaml"));
            // kubeadm writes static pod manifests 0600.
            self.yaml(&path, &doc, 0o600)?;
        }
        Ok(())
    }
}

/// Flags of the static pods that do not depend on the node, as kubeadm v1.29+ writes them.
const ETCD_FLAGS: &[&str] = &[
    "--cert-file=/etc/kubernetes/pki/etcd/server.crt",
    "--client-cert-auth=true",
    "--data-dir=/var/lib/etcd",
    "--key-file=/etc/kubernetes/pki/etcd/server.key",
    "--listen-metrics-urls=http://127.0.0.1:2381",
    "--peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt",
    "--peer-client-cert-auth=true",
    "--peer-key-file=/etc/kubernetes/pki/etcd/peer.key",
    "--peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt",
    "--snapshot-count=10000",
    "--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt",
];
const APISERVER_FLAGS: &[&str] = &[
    "--allow-privileged=true",
    "--authorization-mode=Node,RBAC",
    "--client-ca-file=/etc/kubernetes/pki/ca.crt",
    "--enable-admission-plugins=NodeRestriction",
    "--enable-bootstrap-token-auth=true",
    "--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt",
    "--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt",
    "--etcd-keyfile=/etc/kubernetes/pki/apiserver-etcd-client.key",
    "--etcd-servers=https://127.0.0.1:2379",
    "--kubelet-client-certificate=/etc/kubernetes/pki/apiserver-kubelet-client.crt",
    "--kubelet-client-key=/etc/kubernetes/pki/apiserver-kubelet-client.key",
    "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
    "--proxy-client-cert-file=/etc/kubernetes/pki/front-proxy-client.crt",
    "--proxy-client-key-file=/etc/kubernetes/pki/front-proxy-client.key",
    "--requestheader-allowed-names=front-proxy-client",
    "--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt",
    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
    "--requestheader-group-headers=X-Remote-Group",
    "--requestheader-username-headers=X-Remote-User",
    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
    "--service-account-key-file=/etc/kubernetes/pki/sa.pub",
    "--service-account-signing-key-file=/etc/kubernetes/pki/sa.key",
    "--service-cluster-ip-range=10.96.0.0/12",
    "--tls-cert-file=/etc/kubernetes/pki/apiserver.crt",
    "--tls-private-key-file=/etc/kubernetes/pki/apiserver.key",
];
const CONTROLLER_MANAGER_FLAGS: &[&str] = &[
    "--allocate-node-cidrs=true",
    "--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf",
    "--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf",
    "--bind-address=127.0.0.1",
    "--client-ca-file=/etc/kubernetes/pki/ca.crt",
    "--cluster-name=kubernetes",
    "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt",
    "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key",
    "--controllers=*,bootstrapsigner,tokencleaner",
    "--kubeconfig=/etc/kubernetes/controller-manager.conf",
    "--leader-elect=true",
    "--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt",
    "--root-ca-file=/etc/kubernetes/pki/ca.crt",
    "--service-account-private-key-file=/etc/kubernetes/pki/sa.key",
    "--service-cluster-ip-range=10.96.0.0/12",
    "--use-service-account-credentials=true",
];
const SCHEDULER_FLAGS: &[&str] = &[
    "--authentication-kubeconfig=/etc/kubernetes/scheduler.conf",
    "--authorization-kubeconfig=/etc/kubernetes/scheduler.conf",
    "--bind-address=127.0.0.1",
    "--kubeconfig=/etc/kubernetes/scheduler.conf",
    "--leader-elect=true",
];

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A static pod manifest in kubeadm's shape, named `component`, running the binary of the same
/// name with the fixed and node-specific flags sorted together.
fn static_pod(
    component: &str,
    image: &str,
    annotations: serde_json::Value,
    fixed_flags: &[&str],
    node_flags: Vec<String>,
    volumes: &[(&str, &str, &str)],
) -> (String, serde_json::Value) {
    let mut flags: Vec<String> = fixed_flags.iter().map(|f| (*f).to_owned()).collect();
    flags.extend(node_flags);
    flags.sort();
    let command: Vec<String> = std::iter::once(component.to_owned()).chain(flags).collect();
    let mut metadata = json!({
        "creationTimestamp": null,
        "labels": { "component": component, "tier": "control-plane" },
        "name": component,
        "namespace": "kube-system",
    });
    if annotations.as_object().is_some_and(|a| !a.is_empty()) {
        metadata["annotations"] = annotations;
    }
    // kubeadm mounts etcd's certificates and data read-write, everything else read-only.
    let read_only = component != "etcd";
    let mounts: Vec<_> = volumes
        .iter()
        .map(|(name, path, _)| {
            if read_only {
                json!({ "mountPath": path, "name": name, "readOnly": true })
            } else {
                json!({ "mountPath": path, "name": name })
            }
        })
        .collect();
    let vols: Vec<_> = volumes
        .iter()
        .map(|(name, path, kind)| json!({ "hostPath": { "path": path, "type": kind }, "name": name }))
        .collect();
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [{
                "command": command,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "name": component,
                "resources": { "requests": { "cpu": "25m" } },
                "volumeMounts": mounts,
            }],
            "hostNetwork": true,
            "priority": 2_000_001_000,
            "priorityClassName": "system-node-critical",
            "securityContext": { "seccompProfile": { "type": "RuntimeDefault" } },
            "volumes": vols,
        },
        "status": {},
    });
    (component.to_owned(), doc)
}
