//! Plan: for each selected certificate, decide how it is renewed (which CA, which key, which files)
//! or why it is not. Reads the node; writes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use super::select::{Selected, Target};
use crate::config::{CaChoice, IssuerSettings, KeyPolicy, RemoteCa};
use crate::inventory::{Entry, Inventory, KeyState, Origin};
use crate::pki::cert::{Cert, KeyAlgorithm};
use crate::pki::encode::{KeyFormat, KeySpec};
use crate::pki::key::PrivateKey;
use crate::pki::kubeconfig::{self, Source};
use crate::pki::layout::{self, Component};
use crate::pki::pem;
use crate::root::Root;

/// How renewed certificates are made.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// New key or the existing one.
    pub key_policy: KeyPolicy,
    /// Lifetime of renewed certificates.
    pub validity: Duration,
    /// Re-issue certificates whose chain does not verify from the CA whose name matches.
    pub force: bool,
    /// `[issuer]`: which CA signs through the local key and which through a remote CA.
    pub issuer: IssuerSettings,
}

/// Everything a rotation will do, decided before it does any of it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The rotation id (also the backup's name).
    pub id: String,
    /// The time of issue.
    pub now: OffsetDateTime,
    /// New keys or the existing ones.
    pub key_policy: KeyPolicy,
    /// Requested lifetime of renewed certificates.
    pub validity: Duration,
    /// What will be renewed.
    pub items: Vec<Item>,
    /// Selected but left alone, as kubeadm leaves them (externally managed).
    pub skipped: Vec<Verdict>,
    /// Selected by type but impossible to renew (a corrupt kubeconfig, a key that does not
    /// match): left out so the rest is renewed, and named; `certrotd renew` exits 1.
    pub unrenewable: Vec<Verdict>,
    /// Named with `--cert` but impossible: the operator asked for exactly this, so a rotation
    /// with refusals does not start.
    pub refused: Vec<Verdict>,
    /// Things worth saying about the selection.
    pub notes: Vec<String>,
    /// The remote CA's certificates, when they were obtained before the rotation (the daemon
    /// does so before taking the lease); otherwise the build asks the CA itself.
    pub obtained: Option<std::sync::Arc<super::obtain::Obtained>>,
}

impl Plan {
    /// Every component that reads a certificate of the plan, each once, in order: what is
    /// restarted after it is installed.
    pub fn consumers(&self) -> Vec<crate::pki::layout::Component> {
        let mut c: Vec<_> = self
            .items
            .iter()
            .flat_map(|i| i.consumers.iter().copied())
            .collect();
        c.sort();
        c.dedup();
        c
    }
}

/// Why a certificate is not renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The certificate.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// One certificate to renew.
#[derive(Debug, Clone)]
pub struct Item {
    /// Every inventory name of it, the main one first.
    pub names: Vec<String>,
    /// The certificate being replaced: the template for every attribute.
    pub old: Cert,
    /// Certificates after the leaf in the same file or field (kept after the new leaf).
    pub chain: Vec<Cert>,
    /// The real path of the file that holds the old certificate.
    pub cert_path: PathBuf,
    /// Who signs the new certificate.
    pub issuer: IssuerPlan,
    /// Which key it certifies.
    pub key: KeyPlan,
    /// Where the old key is.
    pub key_source: KeySource,
    /// How the new certificate (and key) land on disk.
    pub install: Install,
    /// Components to restart afterwards.
    pub consumers: Vec<Component>,
    /// Things the operator should know about this one.
    pub notes: Vec<String>,
}

impl Item {
    /// The name operators know it by.
    pub fn name(&self) -> &str {
        &self.names[0]
    }

    /// Every path the rotation writes, creates or swaps for this certificate (real paths).
    pub fn files(&self) -> Vec<PathBuf> {
        let new_key = matches!(self.key, KeyPlan::New { .. });
        match &self.install {
            Install::Pair { cert, key } => {
                let mut v = vec![cert.clone()];
                if new_key {
                    v.push(key.clone());
                }
                v
            }
            Install::Combined { path } => vec![path.clone()],
            Install::KubeletClient { link, new_file, .. } => vec![new_file.clone(), link.clone()],
            Install::Kubeconfig { path, key_file, .. } => {
                let mut v = vec![path.clone()];
                if let (true, Some(k)) = (new_key, key_file) {
                    v.push(k.clone());
                }
                v
            }
        }
    }
}

/// Who signs a renewed certificate.
#[derive(Debug, Clone)]
pub enum IssuerPlan {
    /// A CA on this node, by inventory name, with its certificate and key file.
    Local {
        /// The CA's inventory name.
        ca: String,
        /// The CA certificate.
        cert: Box<Cert>,
        /// Its key file (real path).
        key_path: PathBuf,
    },
    /// A remote CA (cfssl), for a CA whose key is not on this node (or configured so).
    Remote {
        /// The CA's inventory name.
        ca: String,
        /// The CA certificate the old certificate chained to: the new one must chain to it too.
        cert: Box<Cert>,
        /// The server and credentials (real paths).
        remote: RemoteCa,
        /// The cfssl profile for this certificate.
        profile: String,
    },
    /// A fresh self-signed CA made for it alone, as client-go does for the kubelet's serving
    /// certificate.
    SelfSigned {
        /// The throwaway CA that signed the old certificate (the template for the new one).
        ca: Box<Cert>,
        /// The new CA key's algorithm.
        ca_spec: KeySpec,
    },
}

impl IssuerPlan {
    /// How the plan names it.
    pub fn describe(&self) -> String {
        match self {
            IssuerPlan::Local { ca, .. } => ca.clone(),
            IssuerPlan::Remote {
                ca,
                remote,
                profile,
                ..
            } => format!("{ca} via cfssl {} (profile {profile:?})", remote.url),
            IssuerPlan::SelfSigned { .. } => "self-signed (regenerated)".to_owned(),
        }
    }
}

/// The key a renewed certificate certifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPlan {
    /// A new key like the old one, written in the old key's format.
    New {
        /// Algorithm and size.
        spec: KeySpec,
        /// On-disk format.
        format: KeyFormat,
    },
    /// The existing key; its file is not rewritten.
    Reuse,
}

impl KeyPlan {
    /// How the plan shows it.
    pub fn describe(&self) -> String {
        match self {
            KeyPlan::New { spec, format } => format!("new {spec} ({format})"),
            KeyPlan::Reuse => "reused".to_owned(),
        }
    }
}

/// Where an existing private key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PEM file (alone, or together with the certificate).
    File(PathBuf),
    /// A kubeconfig user's `client-key-data`.
    Kubeconfig {
        /// The kubeconfig.
        path: PathBuf,
        /// The user.
        user: String,
    },
}

/// How a renewed certificate lands on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    /// A certificate file (the new leaf, then the rest of the old file's chain) and a key file.
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Certificate and key in one file, rewritten in place.
    Combined {
        /// The file.
        path: PathBuf,
    },
    /// The kubelet's client certificate: a new `kubelet-client-<time>.pem`, then the
    /// `kubelet-client-current.pem` symlink swapped to it, as the kubelet itself rotates it.
    KubeletClient {
        /// The symlink (real path of the link itself).
        link: PathBuf,
        /// The new file (real path).
        new_file: PathBuf,
        /// What the link will say: the new file's absolute node path, as on real nodes.
        link_target: PathBuf,
    },
    /// A kubeconfig user's embedded client certificate (and key).
    Kubeconfig {
        /// The kubeconfig.
        path: PathBuf,
        /// The user.
        user: String,
        /// The key file, when the user's `client-key` is a path rather than embedded data.
        key_file: Option<PathBuf>,
    },
}

/// Reads an existing private key. The error names the file, never the key.
pub fn read_key(src: &KeySource) -> Result<PrivateKey, String> {
    match src {
        KeySource::File(p) => {
            let data = pem::read_capped(p).map_err(|e| e.to_string())?;
            let blocks = pem::blocks(p, &data).map_err(|e| e.to_string())?;
            PrivateKey::from_blocks(&blocks).map_err(|e| format!("{}: {e}", p.display()))
        }
        KeySource::Kubeconfig { path, user } => {
            let data = pem::read_capped(path).map_err(|e| e.to_string())?;
            let kc =
                kubeconfig::parse(path, &data).map_err(|e| format!("{}: {e}", path.display()))?;
            let key = kc
                .users
                .iter()
                .find(|u| u.name == *user)
                .and_then(|u| u.key.as_ref());
            let Some(Source::Embedded(bytes)) = key else {
                return Err(format!(
                    "{}: users[{user}] has no client-key-data",
                    path.display()
                ));
            };
            let blocks = pem::blocks(path, bytes).map_err(|e| e.to_string())?;
            PrivateKey::from_blocks(&blocks)
                .map_err(|e| format!("{}: users[{user}].client-key-data: {e}", path.display()))
        }
    }
}

/// The key spec a certificate's public key calls for (for the throwaway CA, whose key is gone).
pub fn spec_of(alg: KeyAlgorithm) -> Option<KeySpec> {
    match alg {
        KeyAlgorithm::Rsa(bits @ (2048 | 3072 | 4096)) => Some(KeySpec::Rsa(bits)),
        KeyAlgorithm::EcdsaP256 => Some(KeySpec::EcdsaP256),
        KeyAlgorithm::EcdsaP384 => Some(KeySpec::EcdsaP384),
        _ => None,
    }
}

/// A fresh rotation id: the time, then random hex so that two rotations in one second differ.
pub fn new_id(now: OffsetDateTime) -> String {
    let t = now.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{:06x}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Plans the renewal of a selection.
pub fn make(
    inv: &Inventory,
    selected: &Selected<'_>,
    root: &Root,
    opts: &PlanOptions,
    now: OffsetDateTime,
) -> Plan {
    let mut plan = Plan {
        id: new_id(now),
        now,
        key_policy: opts.key_policy,
        validity: opts.validity,
        items: Vec::new(),
        skipped: Vec::new(),
        unrenewable: Vec::new(),
        refused: Vec::new(),
        notes: selected.notes.clone(),
        obtained: None,
    };
    let mut taken_names: Vec<PathBuf> = Vec::new();
    for t in &selected.targets {
        match item(inv, t, root, opts, now, &mut taken_names) {
            Ok(item) => plan.items.push(item),
            Err(Decision::Skip(reason)) => plan.skipped.push(Verdict {
                name: t.names[0].clone(),
                reason,
            }),
            Err(Decision::Refuse(reason)) => {
                let verdict = Verdict {
                    name: t.names[0].clone(),
                    reason,
                };
                if t.explicit {
                    plan.refused.push(verdict);
                } else {
                    plan.unrenewable.push(verdict);
                }
            }
        }
    }
    plan
}

/// Why a target did not become an item.
enum Decision {
    Skip(String),
    Refuse(String),
}

fn item(
    inv: &Inventory,
    t: &Target<'_>,
    root: &Root,
    opts: &PlanOptions,
    now: OffsetDateTime,
    taken: &mut Vec<PathBuf>,
) -> Result<Item, Decision> {
    let e = t.entry;
    let name = &t.names[0];
    let refuse = |r: String| Err(Decision::Refuse(r));
    let Some(old) = &e.cert else {
        return refuse(format!(
            "it cannot be read ({}); a file certrotd cannot read is never rewritten",
            e.problems.join("; ")
        ));
    };
    if e.is_ca() {
        return refuse("it is a CA certificate; renew rotates leaf certificates only".into());
    }
    let mut notes = Vec::new();
    match e.key {
        KeyState::Match => {}
        KeyState::Broken => {
            return refuse(format!(
                "its private key cannot be read ({}); a file certrotd cannot read is never rewritten",
                e.problems.join("; ")
            ));
        }
        KeyState::Absent => return refuse("no private key was found for it".into()),
        KeyState::Mismatch if opts.force && opts.key_policy == KeyPolicy::New => {
            notes.push("forced: its old private key did not match it; both are replaced".into());
        }
        KeyState::Mismatch => {
            return refuse(
                "its private key does not match it (--force with key_policy = \"new\" replaces both)"
                    .into(),
            );
        }
    }
    let issuer = issuer(inv, e, old, name, t.explicit, opts, root, now, &mut notes)?;
    let key_source = key_source(e)?;
    let old_key = read_key(&key_source).map_err(|r| {
        Decision::Refuse(format!(
            "its private key cannot be read ({r}); a file certrotd cannot read is never rewritten"
        ))
    })?;
    let key = match opts.key_policy {
        KeyPolicy::Reuse => KeyPlan::Reuse,
        // Like the certificate's key (the old key file may be a stranger's when forced).
        KeyPolicy::New => match spec_of(old.key_algorithm) {
            Some(spec) => KeyPlan::New {
                spec,
                format: old_key.format,
            },
            None => {
                return refuse(format!(
                    "certrotd cannot generate a new {} key like its old one (use key_policy = \"reuse\")",
                    old.key_algorithm
                ));
            }
        },
    };
    let install = install(e, root, now, taken)?;
    if matches!(install, Install::KubeletClient { .. })
        && inv.kubelet.rotate_certificates == Some(true)
    {
        notes.push(
            "the kubelet rotates this certificate itself (rotateCertificates: true); it will \
             replace this one when it next rotates"
                .into(),
        );
    }
    Ok(Item {
        names: t.names.clone(),
        old: old.clone(),
        chain: e.chain.clone(),
        cert_path: e.path.clone(),
        issuer,
        key,
        key_source,
        install,
        consumers: t.consumers.clone(),
        notes,
    })
}

/// Decides who signs the new certificate, in kubeadm's terms when it cannot be renewed here.
#[allow(clippy::too_many_arguments)]
fn issuer(
    inv: &Inventory,
    e: &Entry,
    old: &Cert,
    name: &str,
    explicit: bool,
    opts: &PlanOptions,
    root: &Root,
    now: OffsetDateTime,
    notes: &mut Vec<String>,
) -> Result<IssuerPlan, Decision> {
    // kubeadm's own words for a certificate whose CA key is not on the node.
    let external = |ca: &str| {
        let reason = format!(
            "Detected external {ca}, {name} can't be renewed (the CA's private key is not on this node)"
        );
        if explicit {
            Decision::Refuse(reason)
        } else {
            Decision::Skip(reason)
        }
    };
    let signer = e.signer.as_deref().and_then(|s| inv.get(s));
    if let Some(ca) = signer {
        if ca.name == e.name {
            return Err(Decision::Refuse(
                "it is self-signed, not issued by a CA on this node".into(),
            ));
        }
        if let Some(plan) = self_signed_serving(e, ca) {
            return Ok(plan);
        }
        let has_key = ca.key == KeyState::Match;
        return match opts.issuer.for_ca(&ca.name) {
            CaChoice::Remote(r) => remote(ca, r, name, root, now),
            CaChoice::LocalElse(Some(r)) if !has_key => remote(ca, r, name, root, now),
            _ if !has_key => Err(external(&ca.name)),
            _ => local(ca, now),
        };
    }
    // No CA on the node verifies it: either none has its issuer's name (external), or one does
    // but the signature says another CA of that name signed it.
    let same_name: Vec<&Entry> = inv
        .entries
        .iter()
        .filter(|c| c.is_ca() && c.cert.as_ref().is_some_and(|c| c.subject == old.issuer))
        .collect();
    let usable = same_name.iter().find(|c| c.key == KeyState::Match);
    match (same_name.is_empty(), usable) {
        (true, _) if opts.issuer.mode == crate::config::IssuerMode::Cfssl => {
            let reason = format!(
                "its CA \"{}\" is not on this node, so a remote CA's answer could not be checked \
                 (put the CA certificate on the node)",
                old.issuer
            );
            Err(if explicit {
                Decision::Refuse(reason)
            } else {
                Decision::Skip(reason)
            })
        }
        (true, _) => Err(external(&format!("CA \"{}\"", old.issuer))),
        (false, Some(ca)) if opts.force => {
            notes.push(format!(
                "forced: its chain does not verify; re-issued from {}, whose name matches its issuer",
                ca.name
            ));
            local(ca, now)
        }
        (false, Some(ca)) => Err(Decision::Refuse(format!(
            "its chain does not verify: {} (--force re-issues it from {}, whose name matches its issuer)",
            e.problems.join("; "),
            ca.name
        ))),
        (false, None) => Err(external(&same_name[0].name)),
    }
}

/// A CA that has expired signs nothing that anyone would accept: it must be rotated first.
fn still_valid(ca: &Entry, cert: &Cert, now: OffsetDateTime) -> Result<(), Decision> {
    if cert.not_after <= now {
        return Err(Decision::Refuse(format!(
            "its CA {} expired at {}; rotate the CA first",
            ca.name,
            crate::timefmt::rfc3339(cert.not_after)
        )));
    }
    Ok(())
}

fn local(ca: &Entry, now: OffsetDateTime) -> Result<IssuerPlan, Decision> {
    let (Some(cert), Some(key_path)) = (&ca.cert, &ca.key_path) else {
        return Err(Decision::Refuse(format!(
            "the CA {} cannot be read",
            ca.name
        )));
    };
    still_valid(ca, cert, now)?;
    Ok(IssuerPlan::Local {
        ca: ca.name.clone(),
        cert: Box::new(cert.clone()),
        key_path: key_path.clone(),
    })
}

/// Signing through a remote CA. Its answer is checked against the CA certificate on the node, so
/// that certificate must be readable and current; the auth key must be readable now, so that a
/// plan does not promise what the build cannot do.
fn remote(
    ca: &Entry,
    mut remote: RemoteCa,
    name: &str,
    root: &Root,
    now: OffsetDateTime,
) -> Result<IssuerPlan, Decision> {
    let Some(cert) = &ca.cert else {
        return Err(Decision::Refuse(format!(
            "the CA {} cannot be read, so a remote CA's answer cannot be checked",
            ca.name
        )));
    };
    still_valid(ca, cert, now)?;
    remote.auth_key_file = root.join(&remote.auth_key_file);
    remote.ca_bundle = remote.ca_bundle.map(|b| root.join(b));
    crate::issuer::cfssl::read_auth_key(&remote.auth_key_file).map_err(|e| {
        Decision::Refuse(format!(
            "issuer for CA {} via cfssl {}: {e}",
            ca.name, remote.url
        ))
    })?;
    Ok(IssuerPlan::Remote {
        ca: ca.name.clone(),
        cert: Box::new(cert.clone()),
        profile: remote.profile_for(name).to_owned(),
        remote,
    })
}

/// The kubelet's serving certificate signed by the throwaway CA bundled after it, whose key
/// client-go discarded: regenerated rather than renewed.
fn self_signed_serving(e: &Entry, ca: &Entry) -> Option<IssuerPlan> {
    let serving = Path::new(layout::KUBELET_PKI).join("kubelet.crt");
    let bundled_here = matches!(&ca.origin, Origin::Bundled { holder } if *holder == e.name);
    if e.node_path != serving || !bundled_here || ca.key == KeyState::Match {
        return None;
    }
    let cert = ca.cert.as_ref()?;
    if !cert.is_self_signed() {
        return None;
    }
    Some(IssuerPlan::SelfSigned {
        ca_spec: spec_of(cert.key_algorithm)?,
        ca: Box::new(cert.clone()),
    })
}

fn key_source(e: &Entry) -> Result<KeySource, Decision> {
    let Some(key_path) = &e.key_path else {
        return Err(Decision::Refuse("no private key was found for it".into()));
    };
    match &e.origin {
        Origin::KubeconfigEmbedded { kubeconfig, user } if key_path == kubeconfig => {
            Ok(KeySource::Kubeconfig {
                path: kubeconfig.clone(),
                user: user.clone(),
            })
        }
        Origin::KubeconfigReference { kubeconfig, .. } if key_path == kubeconfig => {
            Err(Decision::Refuse(
                "its kubeconfig embeds the key but references the certificate by path; \
                 certrotd does not rewrite that mix"
                    .into(),
            ))
        }
        _ => Ok(KeySource::File(key_path.clone())),
    }
}

fn install(
    e: &Entry,
    root: &Root,
    now: OffsetDateTime,
    taken: &mut Vec<PathBuf>,
) -> Result<Install, Decision> {
    let key_path = e.key_path.clone().unwrap_or_default();
    if let Origin::KubeconfigEmbedded { kubeconfig, user } = &e.origin {
        return Ok(Install::Kubeconfig {
            path: kubeconfig.clone(),
            user: user.clone(),
            key_file: (key_path != *kubeconfig).then_some(key_path),
        });
    }
    if e.node_path.file_name() == Some("kubelet-client-current.pem".as_ref())
        && let Some(node_dir) = e.node_path.parent()
        && let Ok(dir) = root.resolve(node_dir)
    {
        let link = dir.join("kubelet-client-current.pem");
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            let name = kubelet_client_name(&dir, now, taken);
            let new_file = dir.join(&name);
            taken.push(new_file.clone());
            return Ok(Install::KubeletClient {
                link,
                new_file,
                link_target: node_dir.join(name),
            });
        }
    }
    if key_path == e.path {
        Ok(Install::Combined {
            path: e.path.clone(),
        })
    } else {
        Ok(Install::Pair {
            cert: e.path.clone(),
            key: key_path,
        })
    }
}

/// `kubelet-client-YYYY-MM-DD-HH-MM-SS.pem` as the kubelet names them, a second later while the
/// name is taken (a node renewed twice within a second, or a sandbox made this very second).
fn kubelet_client_name(dir: &Path, now: OffsetDateTime, taken: &[PathBuf]) -> String {
    let mut t = now.to_offset(time::UtcOffset::UTC);
    loop {
        let name = format!(
            "kubelet-client-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}.pem",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        let path = dir.join(&name);
        if std::fs::symlink_metadata(&path).is_err() && !taken.contains(&path) {
            return name;
        }
        t += time::Duration::seconds(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_rotation_ids() {
        let now = time::macros::datetime!(2026-11-23 18:50:01 UTC);
        let id = new_id(now);
        assert!(id.starts_with("20261123T185001Z-"), "{id}");
        crate::store::validate_rotation_id(&id).unwrap();
        assert_ne!(new_id(now), new_id(now));
    }

    #[test]
    fn kubelet_client_names_skip_taken_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let now = time::macros::datetime!(2026-01-02 03:04:05 UTC);
        let first = kubelet_client_name(tmp.path(), now, &[]);
        assert_eq!(first, "kubelet-client-2026-01-02-03-04-05.pem");
        std::fs::write(tmp.path().join(&first), b"x").unwrap();
        let taken = [tmp.path().join("kubelet-client-2026-01-02-03-04-06.pem")];
        assert_eq!(
            kubelet_client_name(tmp.path(), now, &taken),
            "kubelet-client-2026-01-02-03-04-07.pem"
        );
    }
}
