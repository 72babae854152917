//! A complete kubeadm-shaped control-plane node (v1.29+) written under a directory, for tests and
//! demos: the PKI, kubeconfigs, static pod manifests, the kubelet's own certificates and a
//! certrotd configuration, following `kubeadm-spec.md`.
//!
//! Time is a parameter so that tests can make already-expired or nearly-expired sets.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::pki::encode::{self, EncodeError, KeyFormat, KeySpec};
use crate::pki::secret::{SecretKeyPair, SecretString};

/// kubeadm backdates every certificate by this much to tolerate small clock jumps.
const BACKDATE: time::Duration = time::Duration::minutes(5);
/// client-go backdates the kubelet's self-signed serving certificate by an hour.
const KUBELET_SERVING_BACKDATE: time::Duration = time::Duration::hours(1);
/// kubeadm's default leaf lifetime (`CertificateValidityPeriod`).
const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(365 * 86_400);
/// kubeadm's default CA lifetime (`CACertificateValidityPeriod`).
const DEFAULT_CA_TTL: Duration = Duration::from_secs(3650 * 86_400);
/// Policy windows written into the sandbox's certrotd.toml for a full-length lifetime; shorter
/// lifetimes get proportionally smaller windows (see `Windows::for_ttl`).
const NOTIFY_BEFORE: Duration = Duration::from_secs(60 * 86_400);
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
const EMERGENCY_BEFORE: Duration = Duration::from_secs(7 * 86_400);
/// The first address of kubeadm's default service subnet 10.96.0.0/12.
const SERVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1));
const API_PORT: u16 = 6443;
const KUBERNETES_VERSION: &str = "v1.30.14";
const ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.5.15-0";
/// Where the kubelet keeps its certificates, as a node path.
const KUBELET_PKI: &str = "/var/lib/kubelet/pki";
const KUBELET_CLIENT_CURRENT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";

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

/// What kind of node to write.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The node's name (kubeadm's `nodeRegistration.name`); must be a DNS-1123 subdomain.
    pub node_name: String,
    /// The API server's advertise address; loopback by default so tests can run etcd on it.
    pub advertise_address: IpAddr,
    /// Lifetime of every leaf certificate, counted from `now`.
    pub leaf_ttl: Duration,
    /// Lifetime of the three CAs, counted from `now`.
    pub ca_ttl: Duration,
    /// Key algorithm of everything kubeadm generates (kubeadm's `encryptionAlgorithm`).
    pub key: KeySpec,
    /// Embed the kubelet's client certificate in kubelet.conf (kubeadm < 1.22) instead of
    /// pointing at kubelet-client-current.pem.
    pub kubelet_conf_embedded: bool,
    /// Write super-admin.conf, as kubeadm ≥ 1.29 does on the first control-plane node.
    pub super_admin: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            node_name: "sandbox-cp1".to_owned(),
            advertise_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            leaf_ttl: DEFAULT_LEAF_TTL,
            ca_ttl: DEFAULT_CA_TTL,
            key: KeySpec::Rsa(2048),
            kubelet_conf_embedded: false,
            super_admin: true,
        }
    }
}

/// A written sandbox node.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The node root (absolute, canonical): `dir/etc/kubernetes/...` is the node's `/etc/kubernetes/...`.
    pub dir: PathBuf,
    /// The certrotd configuration written for this node (`dir/certrotd.toml`).
    pub config_path: PathBuf,
    /// Every file written, symlink included, in the order written.
    pub files: Vec<PathBuf>,
}

impl Sandbox {
    /// Where a node path such as `/etc/kubernetes/pki/ca.crt` lives in this sandbox.
    pub fn path(&self, node_path: impl AsRef<Path>) -> PathBuf {
        under_root(&self.dir, node_path.as_ref())
    }
}

/// Why a sandbox could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The directory already holds a PKI, which a sandbox must never touch.
    #[error("writing a sandbox: refusing to touch {}, which already exists", path.display())]
    PkiExists {
        /// The existing PKI directory.
        path: PathBuf,
    },
    /// The options cannot describe a node.
    #[error("writing a sandbox: invalid options: {0}")]
    Options(String),
    /// A file system operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A key could not be made or encoded.
    #[error("making the key for {}", path.display())]
    Key {
        /// The file the key was for.
        path: PathBuf,
        /// The error.
        #[source]
        source: EncodeError,
    },
    /// A certificate could not be signed.
    #[error("signing the certificate for {}", path.display())]
    Sign {
        /// The file the certificate was for.
        path: PathBuf,
        /// The error.
        #[source]
        source: rcgen::Error,
    },
    /// The system's random number generator failed.
    #[error("drawing a random serial for {}: the system random number generator failed", path.display())]
    Random {
        /// The file the certificate was for.
        path: PathBuf,
    },
    /// A YAML document could not be serialised.
    #[error("serialising {}", path.display())]
    Yaml {
        /// The file being written.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_yaml_ng::Error,
    },
}

/// Writes a kubeadm v1.29+ control-plane node under `dir` (created if missing), as of `now`.
///
/// Refuses if `dir/etc/kubernetes/pki` exists, and never replaces any existing file (every file
/// is created exclusively). A failure part-way leaves what was already written in place.
pub fn write(
    dir: &Path,
    opts: &SandboxOptions,
    now: OffsetDateTime,
) -> Result<Sandbox, SandboxError> {
    validate(opts)?;
    // Certificates hold UTC; the kubelet file name is derived from the same instant.
    let times = Times::new(opts, now.to_offset(time::UtcOffset::UTC))?;

    fs::create_dir_all(dir).map_err(io_err("creating the sandbox directory", dir))?;
    let root = dir
        .canonicalize()
        .map_err(io_err("resolving the sandbox directory", dir))?;
    let pki = under_root(&root, Path::new("/etc/kubernetes/pki"));
    match pki.symlink_metadata() {
        Ok(_) => return Err(SandboxError::PkiExists { path: pki }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("checking for an existing PKI at", &pki)(e)),
    }

    let mut node = Node {
        w: Writer {
            root,
            files: Vec::new(),
        },
        opts,
        times,
    };
    node.write_all()?;

    let config_path = node.w.root.join("certrotd.toml");
    let config = certrotd_config(&node.w.root, opts);
    node.w.file_at(&config_path, config.as_bytes(), 0o644)?;

    Ok(Sandbox {
        dir: node.w.root,
        config_path,
        files: node.w.files,
    })
}

fn validate(opts: &SandboxOptions) -> Result<(), SandboxError> {
    // kubeadm insists on a DNS-1123 subdomain; it also keeps the name safe in SANs, YAML and paths.
    let name = &opts.node_name;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(SandboxError::Options(format!(
            "node_name {name:?} is not a DNS-1123 subdomain"
        )));
    }
    if opts.leaf_ttl < Duration::from_secs(1) || opts.ca_ttl < Duration::from_secs(1) {
        return Err(SandboxError::Options(
            "leaf_ttl and ca_ttl must be at least one second".to_owned(),
        ));
    }
    Ok(())
}

/// The validity periods of everything in one sandbox.
struct Times {
    now: OffsetDateTime,
    not_before: OffsetDateTime,
    leaf_not_after: OffsetDateTime,
    ca_not_after: OffsetDateTime,
}

impl Times {
    fn new(opts: &SandboxOptions, now: OffsetDateTime) -> Result<Times, SandboxError> {
        let after = |ttl: Duration, what: &str| {
            time::Duration::try_from(ttl)
                .ok()
                .and_then(|ttl| now.checked_add(ttl))
                .ok_or_else(|| SandboxError::Options(format!("{what} is too long")))
        };
        Ok(Times {
            now,
            not_before: now - BACKDATE,
            leaf_not_after: after(opts.leaf_ttl, "leaf_ttl")?,
            ca_not_after: after(opts.ca_ttl, "ca_ttl")?,
        })
    }
}

/// A CA: its parameters (rcgen signs with them), key and certificate.
struct Ca {
    params: CertificateParams,
    key: SecretKeyPair,
    pem: String,
}

/// Who a leaf certificate is for.
struct Leaf<'a> {
    cn: &'a str,
    org: Option<&'a str>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    usages: &'a [ExtendedKeyUsagePurpose],
    key_usages: &'a [KeyUsagePurpose],
}

/// kubeadm's (and client-go's) key usages for every CA, whatever the key type.
const CA_KEY_USAGES: &[KeyUsagePurpose] = &[
    KeyUsagePurpose::DigitalSignature,
    KeyUsagePurpose::KeyEncipherment,
    KeyUsagePurpose::KeyCertSign,
];
/// kubeadm's key usages for every leaf, whatever the key type.
const LEAF_KEY_USAGES: &[KeyUsagePurpose] = &[
    KeyUsagePurpose::DigitalSignature,
    KeyUsagePurpose::KeyEncipherment,
];

impl<'a> Leaf<'a> {
    fn client(cn: &'a str, org: Option<&'a str>) -> Leaf<'a> {
        Leaf {
            cn,
            org,
            dns: Vec::new(),
            ips: Vec::new(),
            usages: &[ExtendedKeyUsagePurpose::ClientAuth],
            key_usages: LEAF_KEY_USAGES,
        }
    }
}

/// A kubeconfig user, per kubeadm's `getKubeConfigSpecsBase`.
struct KubeconfigSpec<'a> {
    file: &'a str,
    cn: &'a str,
    org: Option<&'a str>,
}

/// One node being written: where, what kind, and when.
struct Node<'a> {
    w: Writer,
    opts: &'a SandboxOptions,
    times: Times,
}

impl Node<'_> {
    fn write_all(&mut self) -> Result<(), SandboxError> {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let node = self.opts.node_name.clone();
        let adv = self.opts.advertise_address;

        let ca = self.ca("/etc/kubernetes/pki/ca", "kubernetes")?;
        self.leaf(
            &ca,
            "/etc/kubernetes/pki/apiserver",
            &Leaf {
                cn: "kube-apiserver",
                org: None,
                dns: vec![
                    node.clone(),
                    "kubernetes".to_owned(),
                    "kubernetes.default".to_owned(),
                    "kubernetes.default.svc".to_owned(),
                    "kubernetes.default.svc.cluster.local".to_owned(),
                ],
                ips: vec![SERVICE_IP, adv],
                usages: &[ServerAuth],
                key_usages: LEAF_KEY_USAGES,
            },
        )?;
        self.leaf(
            &ca,
            "/etc/kubernetes/pki/apiserver-kubelet-client",
            &Leaf::client(
                "kube-apiserver-kubelet-client",
                Some("kubeadm:cluster-admins"),
            ),
        )?;

        let front_proxy_ca = self.ca("/etc/kubernetes/pki/front-proxy-ca", "front-proxy-ca")?;
        self.leaf(
            &front_proxy_ca,
            "/etc/kubernetes/pki/front-proxy-client",
            &Leaf::client("front-proxy-client", None),
        )?;

        let etcd_ca = self.ca("/etc/kubernetes/pki/etcd/ca", "etcd-ca")?;
        for name in ["server", "peer"] {
            self.leaf(
                &etcd_ca,
                &format!("/etc/kubernetes/pki/etcd/{name}"),
                &Leaf {
                    cn: &node,
                    org: None,
                    dns: vec![node.clone(), "localhost".to_owned()],
                    ips: vec![
                        adv,
                        IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(Ipv6Addr::LOCALHOST),
                    ],
                    usages: &[ServerAuth, ClientAuth],
                    key_usages: LEAF_KEY_USAGES,
                },
            )?;
        }
        self.leaf(
            &etcd_ca,
            "/etc/kubernetes/pki/etcd/healthcheck-client",
            &Leaf::client("kube-etcd-healthcheck-client", None),
        )?;
        self.leaf(
            &etcd_ca,
            "/etc/kubernetes/pki/apiserver-etcd-client",
            &Leaf::client("kube-apiserver-etcd-client", None),
        )?;

        self.service_account_keys()?;
        self.kubeconfigs(&ca)?;
        self.manifests()?;
        self.kubelet(&ca)?;
        Ok(())
    }

    /// Makes a self-signed CA and writes `<base>.key` and `<base>.crt`.
    fn ca(&mut self, base: &str, cn: &str) -> Result<Ca, SandboxError> {
        let key_path = self.w.path(&format!("{base}.key"));
        let crt_path = self.w.path(&format!("{base}.crt"));
        let key = self.new_key(self.opts.key, &key_path)?;

        let mut params = base_params(self.times.not_before, self.times.ca_not_after, &crt_path)?;
        params.distinguished_name = dn(cn, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = CA_KEY_USAGES.to_vec();
        params.subject_alt_names = vec![dns_san(cn, &crt_path)?];
        let cert = params
            .self_signed(&key)
            .map_err(|source| SandboxError::Sign {
                path: crt_path.clone(),
                source,
            })?;
        let pem = encode::cert_pem(cert.der());

        self.write_key(&key_path, &key, self.opts.key.native_format())?;
        self.w.file_at(&crt_path, pem.as_bytes(), 0o644)?;
        Ok(Ca { params, key, pem })
    }

    /// Makes a leaf signed by `ca` and writes `<base>.key` and `<base>.crt`.
    fn leaf(&mut self, ca: &Ca, base: &str, leaf: &Leaf<'_>) -> Result<(), SandboxError> {
        let key_path = self.w.path(&format!("{base}.key"));
        let crt_path = self.w.path(&format!("{base}.crt"));
        let (cert, key) = self.issue(ca, leaf, self.opts.key, &crt_path)?;
        self.write_key(&key_path, &key, self.opts.key.native_format())?;
        self.w.file_at(&crt_path, cert.as_bytes(), 0o644)
    }

    /// Makes a key of `spec` and a leaf certificate for it signed by `ca`; returns the PEM
    /// certificate and the key.
    fn issue(
        &self,
        ca: &Ca,
        leaf: &Leaf<'_>,
        spec: KeySpec,
        for_path: &Path,
    ) -> Result<(String, SecretKeyPair), SandboxError> {
        let key = self.new_key(spec, for_path)?;
        let mut params = base_params(self.times.not_before, self.times.leaf_not_after, for_path)?;
        params.distinguished_name = dn(leaf.cn, leaf.org);
        set_leaf_constraints(&mut params);
        params.key_usages = leaf.key_usages.to_vec();
        params.extended_key_usages = leaf.usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = sans(&leaf.dns, &leaf.ips, for_path)?;

        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| SandboxError::Sign {
                path: for_path.to_owned(),
                source,
            })?;
        Ok((encode::cert_pem(cert.der()), key))
    }

    fn new_key(&self, spec: KeySpec, for_path: &Path) -> Result<SecretKeyPair, SandboxError> {
        encode::generate(spec).map_err(|source| SandboxError::Key {
            path: for_path.to_owned(),
            source,
        })
    }

    fn write_key(
        &mut self,
        path: &Path,
        key: &KeyPair,
        format: KeyFormat,
    ) -> Result<(), SandboxError> {
        let pem = key_pem(key, format, path)?;
        self.w.file_at(path, pem.as_bytes(), 0o600)
    }

    /// sa.key and sa.pub: a bare key pair that signs service-account tokens.
    fn service_account_keys(&mut self) -> Result<(), SandboxError> {
        let key_path = self.w.path("/etc/kubernetes/pki/sa.key");
        let key = self.new_key(self.opts.key, &key_path)?;
        self.write_key(&key_path, &key, self.opts.key.native_format())?;
        // client-go writes the public key with keyutil.WriteKey, hence 0600 like a private key.
        let pub_path = self.w.path("/etc/kubernetes/pki/sa.pub");
        self.w
            .file_at(&pub_path, encode::public_key_pem(&key).as_bytes(), 0o600)
    }

    fn kubeconfigs(&mut self, ca: &Ca) -> Result<(), SandboxError> {
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

    fn yaml(
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
    fn manifests(&mut self) -> Result<(), SandboxError> {
        let adv = self.opts.advertise_address;
        let node = &self.opts.node_name;
        let client_url = |ip: IpAddr| format!("https://{}", SocketAddr::new(ip, 2379));
        let peer_url = format!("https://{}", SocketAddr::new(adv, 2380));
        let mut listen_client = vec![client_url(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        if adv != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            listen_client.push(client_url(adv));
        }
        let image = |name: &str| format!("registry.k8s.io/{name}:{KUBERNETES_VERSION}");
        let certs = ("k8s-certs", "/etc/kubernetes/pki", "DirectoryOrCreate");
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

    /// The kubelet's own files: its rotated client certificate (cert and key in one file, behind
    /// the `kubelet-client-current.pem` symlink), its self-signed serving certificate and a
    /// KubeletConfiguration.
    fn kubelet(&mut self, ca: &Ca) -> Result<(), SandboxError> {
        let node = self.opts.node_name.clone();
        let node_user = format!("system:node:{node}");

        // Named by the kubelet after the moment it wrote the file.
        let t = self.times.now;
        let client_node_path = format!(
            "{KUBELET_PKI}/kubelet-client-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}.pem",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        let client_path = self.w.path(&client_node_path);
        // Signed by the controller manager through the CSR API: an ECDSA P-256 key whatever
        // kubeadm's algorithm, and only DigitalSignature since an EC key enciphers nothing.
        let leaf = Leaf {
            key_usages: &[KeyUsagePurpose::DigitalSignature],
            ..Leaf::client(&node_user, Some("system:nodes"))
        };
        let (cert, key) = self.issue(ca, &leaf, KeySpec::EcdsaP256, &client_path)?;
        let mut bundle = cert;
        bundle.push_str(&key_pem(&key, KeyFormat::Sec1, &client_path)?);
        self.w.file_at(&client_path, bundle.as_bytes(), 0o600)?;
        // Absolute, exactly as on a real node: readers must resolve it under the root.
        let current = self.w.path(KUBELET_CLIENT_CURRENT);
        self.w.symlink_at(&current, Path::new(&client_node_path))?;

        self.kubelet_serving(&node)?;

        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "cacheTTL": "0s", "enabled": true },
                "x509": { "clientCAFile": "/etc/kubernetes/pki/ca.crt" },
            },
            "authorization": { "mode": "Webhook" },
            "cgroupDriver": "systemd",
            "clusterDNS": ["10.96.0.10"],
            "clusterDomain": "cluster.local",
            "kind": "KubeletConfiguration",
            "rotateCertificates": true,
            "staticPodPath": "/etc/kubernetes/manifests",
        });
        let path = self.w.path("/var/lib/kubelet/config.yaml");
        self.yaml(&path, &config, 0o644)
    }

    /// kubelet.crt/.key as client-go's `GenerateSelfSignedCertKey` makes them: a throwaway CA
    /// `<node>-ca@<ts>` signs `<node>@<ts>`, both certificates go into kubelet.crt (leaf first)
    /// and the CA key is discarded, so this pair can only be regenerated, never renewed.
    fn kubelet_serving(&mut self, node: &str) -> Result<(), SandboxError> {
        let crt_path = self.w.path(&format!("{KUBELET_PKI}/kubelet.crt"));
        let key_path = self.w.path(&format!("{KUBELET_PKI}/kubelet.key"));
        let ts = self.times.now.unix_timestamp();
        let not_before = self.times.now - KUBELET_SERVING_BACKDATE;
        let not_after = self.times.leaf_not_after;
        // client-go uses one random serial for both certificates.
        let serial = random_serial(&crt_path)?;

        let ca_key = self.new_key(KeySpec::Rsa(2048), &crt_path)?;
        let mut ca_params = base_params(not_before, not_after, &crt_path)?;
        ca_params.serial_number = Some(serial.clone());
        ca_params.distinguished_name = dn(&format!("{node}-ca@{ts}"), None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = CA_KEY_USAGES.to_vec();
        let sign_err = |source| SandboxError::Sign {
            path: crt_path.clone(),
            source,
        };
        let ca_cert = ca_params.self_signed(&ca_key).map_err(sign_err)?;

        let key = self.new_key(KeySpec::Rsa(2048), &key_path)?;
        let mut params = base_params(not_before, not_after, &crt_path)?;
        params.serial_number = Some(serial);
        params.distinguished_name = dn(&format!("{node}@{ts}"), None);
        set_leaf_constraints(&mut params);
        params.key_usages = LEAF_KEY_USAGES.to_vec();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = sans(&[node.to_owned()], &[], &crt_path)?;
        let cert = params
            .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
            .map_err(sign_err)?;

        let mut chain = encode::cert_pem(cert.der());
        chain.push_str(&encode::cert_pem(ca_cert.der()));
        self.write_key(&key_path, &key, KeyFormat::Pkcs1)?;
        self.w.file_at(&crt_path, chain.as_bytes(), 0o644)
    }
}

/// Parameters every sandbox certificate shares: validity and a fresh random serial.
fn base_params(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    for_path: &Path,
) -> Result<CertificateParams, SandboxError> {
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial(for_path)?);
    Ok(params)
}

/// A leaf's critical `basicConstraints CA:FALSE`, as Go writes it. rcgen's `IsCa::ExplicitNoCa`
/// would add a Subject Key Identifier too, which Go never puts on a leaf, so the extension is
/// written by hand: OID 2.5.29.19, value an empty SEQUENCE.
fn set_leaf_constraints(params: &mut CertificateParams) {
    params.is_ca = IsCa::NoCa;
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00]);
    ext.set_criticality(true);
    params.custom_extensions.push(ext);
}

/// A serial like kubeadm's: uniform in [1, 2^63 - 1].
fn random_serial(for_path: &Path) -> Result<SerialNumber, SandboxError> {
    loop {
        let mut bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SandboxError::Random {
            path: for_path.to_owned(),
        })?;
        let serial = u64::from_be_bytes(bytes) & (u64::MAX >> 1);
        if serial != 0 {
            return Ok(SerialNumber::from(serial));
        }
    }
}

/// A subject with an optional Organization before the CommonName, in Go's attribute order and
/// with Go's string types (PrintableString when the text allows it, else UTF8String), so that
/// issuer and subject names compare byte for byte as Go's verifier requires.
fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let value = |s: &str| match rcgen::string::PrintableString::try_from(s) {
        Ok(p) => DnValue::PrintableString(p),
        Err(_) => DnValue::Utf8String(s.to_owned()),
    };
    let mut dn = DistinguishedName::new();
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, value(org));
    }
    dn.push(DnType::CommonName, value(cn));
    dn
}

fn dns_san(name: &str, for_path: &Path) -> Result<SanType, SandboxError> {
    let name = name.try_into().map_err(|source| SandboxError::Sign {
        path: for_path.to_owned(),
        source,
    })?;
    Ok(SanType::DnsName(name))
}

/// SANs as kubeadm's `RemoveDuplicateAltNames` leaves them: DNS names sorted and unique, IPs
/// unique in their given order, DNS names first.
fn sans(dns: &[String], ips: &[IpAddr], for_path: &Path) -> Result<Vec<SanType>, SandboxError> {
    let mut dns = dns.to_vec();
    dns.sort();
    dns.dedup();
    let mut out = dns
        .iter()
        .map(|d| dns_san(d, for_path))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = Vec::new();
    for ip in ips {
        if !seen.contains(ip) {
            seen.push(*ip);
            out.push(SanType::IpAddress(*ip));
        }
    }
    Ok(out)
}

fn key_pem(
    key: &KeyPair,
    format: KeyFormat,
    for_path: &Path,
) -> Result<SecretString, SandboxError> {
    encode::private_key_pem(key, format).map_err(|source| SandboxError::Key {
        path: for_path.to_owned(),
        source,
    })
}

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

/// The `[policy]` windows for a leaf lifetime: the defaults, shrunk to 60 %, 30 % and 10 % of
/// the lifetime when they would not fit, so a sandbox with short-lived leaves renews on its own.
struct Windows {
    notify: Duration,
    renew: Duration,
    emergency: Duration,
    jitter: Duration,
}

impl Windows {
    fn for_ttl(ttl: Duration) -> Windows {
        let secs = ttl.as_secs();
        let part = |percent: u64| Duration::from_secs((secs * percent / 100).max(1));
        Windows {
            notify: NOTIFY_BEFORE.min(part(60)),
            renew: RENEW_BEFORE.min(part(30)),
            emergency: EMERGENCY_BEFORE.min(part(10)),
            // One hour by default; a few percent of a short lifetime (jitter must stay inside
            // the renewal window).
            jitter: Duration::from_secs(3600).min(part(3)),
        }
    }
}

/// A duration in humantime syntax using the largest unit that divides it exactly ("60d", "90s").
fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs > 0 && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// The certrotd.toml for this sandbox, with the config schema's keys.
fn certrotd_config(root: &Path, opts: &SandboxOptions) -> String {
    // toml's Display of a string value quotes and escapes it.
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let w = Windows::for_ttl(opts.leaf_ttl);
    let mut out =
        String::from("# certrotd configuration for a sandbox node written by certrotd::sandbox.\n");
    // Writing to a String cannot fail.
    let _ = writeln!(out, "root = {}", quote(&root.to_string_lossy()));
    let _ = writeln!(out, "node_name = {}", quote(&opts.node_name));
    let _ = writeln!(out, "layout = \"kubeadm\"");
    let _ = writeln!(out, "state_dir = \"/var/lib/certrotd\"");
    let _ = writeln!(out, "\n[policy]");
    let _ = writeln!(out, "notify_before = \"{}\"", humantime(w.notify));
    let _ = writeln!(out, "renew_before = \"{}\"", humantime(w.renew));
    let _ = writeln!(out, "emergency_before = \"{}\"", humantime(w.emergency));
    let _ = writeln!(out, "jitter = \"{}\"", humantime(w.jitter));
    let _ = writeln!(out, "\n[renew]");
    let _ = writeln!(out, "validity = \"{}\"", humantime(opts.leaf_ttl));
    let _ = writeln!(out, "key_policy = \"new\"");
    let _ = writeln!(out, "backups_keep = 5");
    // A sandbox has no kubelet, static pods or systemd units to restart: renewed files are
    // installed and reported, and nothing running is touched (or probed).
    let _ = writeln!(out, "\n[restart]");
    let _ = writeln!(out, "static_pods = \"none\"");
    let _ = writeln!(out, "units = false");
    out
}

fn under_root(root: &Path, node_path: &Path) -> PathBuf {
    match node_path.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => root.join(node_path),
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SandboxError {
    let path = path.to_owned();
    move |source| SandboxError::Io { op, path, source }
}

/// Creates files and directories under the root, never replacing anything.
struct Writer {
    root: PathBuf,
    files: Vec<PathBuf>,
}

impl Writer {
    fn path(&self, node_path: &str) -> PathBuf {
        under_root(&self.root, Path::new(node_path))
    }

    /// Creates the missing directories between the root and `path`'s parent, each 0755
    /// whatever the umask.
    fn parents(&self, path: &Path) -> Result<(), SandboxError> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        let mut missing: Vec<&Path> = parent
            .ancestors()
            .take_while(|p| *p != self.root && p.symlink_metadata().is_err())
            .collect();
        missing.reverse();
        for dir in missing {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(dir)
                .map_err(io_err("creating directory", dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .map_err(io_err("setting the mode of", dir))?;
        }
        Ok(())
    }

    fn file_at(&mut self, path: &Path, contents: &[u8], mode: u32) -> Result<(), SandboxError> {
        self.parents(path)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io_err("creating", path))?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("setting the mode of", path))?;
        file.write_all(contents).map_err(io_err("writing", path))?;
        self.files.push(path.to_owned());
        Ok(())
    }

    fn symlink_at(&mut self, path: &Path, target: &Path) -> Result<(), SandboxError> {
        self.parents(path)?;
        std::os::unix::fs::symlink(target, path).map_err(io_err("creating symlink", path))?;
        self.files.push(path.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_largest_exact_unit() {
        assert_eq!(humantime(Duration::from_secs(60 * 86_400)), "60d");
        assert_eq!(humantime(Duration::from_secs(7_200)), "2h");
        assert_eq!(humantime(Duration::from_secs(360)), "6m");
        assert_eq!(humantime(Duration::from_secs(90)), "90s");
        assert_eq!(humantime(Duration::from_secs(86_401)), "86401s");
    }

    #[test]
    fn policy_windows_fit_the_leaf_lifetime() {
        let w = Windows::for_ttl(DEFAULT_LEAF_TTL);
        assert_eq!(
            (w.notify, w.renew, w.emergency),
            (NOTIFY_BEFORE, RENEW_BEFORE, EMERGENCY_BEFORE)
        );
        let w = Windows::for_ttl(Duration::from_secs(600));
        assert_eq!(
            (w.notify, w.renew, w.emergency),
            (
                Duration::from_secs(360),
                Duration::from_secs(180),
                Duration::from_secs(60)
            )
        );
        // In between, each window is the smaller of its default and its share, so the order
        // notify >= renew >= emergency always holds.
        let w = Windows::for_ttl(Duration::from_secs(90 * 86_400));
        assert_eq!(w.notify, Duration::from_secs(54 * 86_400));
        assert_eq!(w.renew, Duration::from_secs(27 * 86_400));
        assert_eq!(w.emergency, EMERGENCY_BEFORE);
    }

    #[test]
    fn options_are_validated() {
        let ok = SandboxOptions::default();
        assert!(validate(&ok).is_ok());
        for name in ["", "UPPER", "a_b", "-a", "a-", "a..b", &"x".repeat(64)] {
            let opts = SandboxOptions {
                node_name: name.to_owned(),
                ..SandboxOptions::default()
            };
            assert!(validate(&opts).is_err(), "{name:?}");
        }
        let opts = SandboxOptions {
            leaf_ttl: Duration::from_millis(10),
            ..SandboxOptions::default()
        };
        assert!(validate(&opts).is_err());
    }

    #[test]
    fn serials_are_positive_and_below_2_pow_63() {
        for _ in 0..100 {
            let bytes = random_serial(Path::new("test")).expect("random").to_bytes();
            let value = u64::from_be_bytes(bytes.try_into().expect("eight bytes"));
            assert!(value > 0 && value < 1 << 63);
        }
    }
}
