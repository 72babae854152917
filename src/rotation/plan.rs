//! Plan: for each selected certificate, decide how it is renewed (which CA, which key, which files)
//! or why it is not. Reads the node; writes nothing. Who signs (a CA on the node, a remote CA, a
//! regenerated self-signed one) is decided in `plan/issuer.rs`; the key, the files and the
//! verdicts here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use super::select::{Selected, Target};
use super::signing::{KeyPolicy, Signing};
use crate::inventory::{Entry, Inventory, KeyState, Origin};
use crate::pki::cert::{Cert, KeyAlgorithm};
use crate::pki::encode::{KeyFormat, KeySpec};
use crate::pki::key::PrivateKey;
use crate::pki::kubeconfig::{self, Source};
use crate::pki::layout::Component;
use crate::pki::pem;
use crate::root::Root;

mod issuer;

pub use issuer::IssuerPlan;
use issuer::issuer;

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
    pub issuer: Signing,
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
