//! The sandbox's PKI: kubeadm's CAs and leaves, the service-account key pair and the kubelet's
//! own certificates, issued with kubeadm's subjects, SANs, usages and backdating.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::pki::encode::{self, KeyFormat, KeySpec};
use crate::pki::secret::{SecretKeyPair, SecretString};

use super::*;
use crate::pki::layout::{KUBELET_CONFIG, KUBELET_PKI};

/// A CA: its parameters (rcgen signs with them), key and certificate.
pub(super) struct Ca {
    pub(super) params: CertificateParams,
    pub(super) key: SecretKeyPair,
    pub(super) pem: String,
}

/// Who a leaf certificate is for.
pub(super) struct Leaf<'a> {
    pub(super) cn: &'a str,
    pub(super) org: Option<&'a str>,
    pub(super) dns: Vec<String>,
    pub(super) ips: Vec<IpAddr>,
    pub(super) usages: &'a [ExtendedKeyUsagePurpose],
    pub(super) key_usages: &'a [KeyUsagePurpose],
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
    pub(super) fn client(cn: &'a str, org: Option<&'a str>) -> Leaf<'a> {
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

/// One node being written: where, what kind, and when.
pub(super) struct Node<'a> {
    pub(super) w: Writer,
    pub(super) opts: &'a SandboxOptions,
    pub(super) times: Times,
}

impl Node<'_> {
    pub(super) fn write_all(&mut self) -> Result<(), SandboxError> {
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
    pub(super) fn issue(
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
}

impl Node<'_> {
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
        let path = self.w.path(KUBELET_CONFIG);
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
pub(super) fn random_serial(for_path: &Path) -> Result<SerialNumber, SandboxError> {
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

pub(super) fn key_pem(
    key: &KeyPair,
    format: KeyFormat,
    for_path: &Path,
) -> Result<SecretString, SandboxError> {
    encode::private_key_pem(key, format).map_err(|source| SandboxError::Key {
        path: for_path.to_owned(),
        source,
    })
}
