//! Build: make every new key and certificate of a plan and the complete new content of every file
//! it touches, in memory, then check each file as a reader would see it before anything is staged.
//!
//! Key generation (RSA-2048 takes tens of milliseconds, the bulk of a rotation) runs on all cores;
//! signing and composing are cheap and run in plan order.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::PublicKeyData as _;
use time::OffsetDateTime;

use super::RotationError;
use super::obtain;
use super::plan::{Install, IssuerPlan, Item, KeyPlan, KeySource, Plan, read_key};
use crate::inventory::parallel;
use crate::issuer::local::LocalCa;
use crate::issuer::selfsigned::{self, SelfSignedRequest};
use crate::issuer::{IssueRequest, Issuer as _};
use crate::pki::cert::Cert;
use crate::pki::encode::{self, KeySpec};
use crate::pki::key::{PrivateKey, is_key_label};
use crate::pki::kubeconfig::{self, Source};
use crate::pki::pem;
use crate::pki::secret::{SecretBytes, SecretKeyPair, SecretString};

/// Mode of a new certificate file (client-go's `WriteCert`).
const CERT_MODE: u32 = 0o644;
/// Mode of a new file holding a private key (client-go's `WriteKey`), and of kubeconfigs.
const KEY_MODE: u32 = 0o600;

/// The complete new content of one file.
pub struct NewFile {
    /// Real path.
    pub path: PathBuf,
    /// Everything the file will hold (zeroed when dropped: it may hold a private key).
    pub contents: SecretBytes,
    /// Mode if the file does not exist yet.
    pub new_mode: u32,
}

impl fmt::Debug for NewFile {
    // Contents hold private keys: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NewFile({}, {} bytes, {:o})",
            self.path.display(),
            self.contents.len(),
            self.new_mode
        )
    }
}

/// One renewed certificate, for the report.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// Its inventory names.
    pub names: Vec<String>,
    /// The new certificate.
    pub cert: Cert,
}

/// Everything a rotation will install.
#[derive(Debug, Default)]
pub struct Built {
    /// New file contents, in install order.
    pub files: Vec<NewFile>,
    /// Symlinks to swap (link, target), installed after every file.
    pub links: Vec<(PathBuf, PathBuf)>,
    /// The new certificates.
    pub renewed: Vec<Renewed>,
    /// What the issuers had to say (lifetimes clamped to a CA's).
    pub notes: Vec<String>,
}

impl Built {
    fn file_mut(&mut self, path: &Path) -> Option<&mut NewFile> {
        self.files.iter_mut().find(|f| f.path == path)
    }

    fn put(&mut self, path: &Path, contents: impl Into<SecretBytes>, new_mode: u32) {
        let contents = contents.into();
        match self.file_mut(path) {
            Some(f) => f.contents = contents,
            None => self.files.push(NewFile {
                path: path.to_owned(),
                contents,
                new_mode,
            }),
        }
    }

    /// The content a file will have (or has now, if this rotation does not change it).
    fn current(&self, path: &Path) -> Result<SecretBytes, RotationError> {
        match self.files.iter().find(|f| f.path == path) {
            Some(f) => Ok(f.contents.clone()),
            None => pem::read_capped(path).map_err(|e| RotationError::Renew {
                name: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

/// Builds and checks everything the plan installs. Reads the node (CA keys, old keys, the
/// kubeconfigs it edits); writes nothing.
pub fn build(plan: &Plan) -> Result<Built, RotationError> {
    let cas = load_cas(plan)?;
    let obtained = plan.obtained.as_deref();
    let keys = generate_keys(plan)?;
    let mut built = Built::default();
    for (item, (generated, ca_key)) in plan.items.iter().zip(keys) {
        let renew_err = |reason: String| RotationError::Renew {
            name: item.name().to_owned(),
            reason,
        };
        // A certificate obtained before the rotation comes with the key it certifies.
        let got = obtained.and_then(|o| o.get(item.name()));
        let leaf_key = match got {
            Some(g) => g.key.as_ref(),
            None => generated.as_ref(),
        };
        let spki = match leaf_key {
            Some(k) => k.subject_public_key_info(),
            None => item.old.spki_der.clone(),
        };
        // Every issuer but a regenerated self-signed one keeps the old certificate's chain.
        let old_chain = || item.chain.iter().map(|c| c.der.clone()).collect::<Vec<_>>();
        let (leaf_der, chain, issuer_cert, notes) = match &item.issuer {
            IssuerPlan::Local { ca, .. } => {
                let ca = cas
                    .get(ca)
                    .ok_or_else(|| renew_err(format!("CA {ca} was not loaded")))?;
                let issued = ca
                    .issue(&IssueRequest {
                        template: &item.old,
                        spki: &spki,
                        validity: plan.validity,
                        now: plan.now,
                    })
                    .map_err(|e| renew_err(e.to_string()))?;
                (issued.der, old_chain(), ca.ca().clone(), issued.notes)
            }
            IssuerPlan::Remote { cert, .. } if got.is_some() => {
                let got = got.ok_or_else(|| renew_err("not obtained".into()))?;
                (
                    got.der.clone(),
                    old_chain(),
                    (**cert).clone(),
                    got.notes.clone(),
                )
            }
            IssuerPlan::Remote {
                cert,
                remote,
                profile,
                ..
            } => {
                let issued = obtain::ask_remote(item, cert, remote, profile, leaf_key, plan.now)
                    .map_err(renew_err)?;
                (issued.der, old_chain(), (**cert).clone(), issued.notes)
            }
            IssuerPlan::SelfSigned { ca, .. } => {
                let ca_key = ca_key
                    .as_ref()
                    .ok_or_else(|| renew_err("no key was made for its new CA".into()))?;
                let regen = selfsigned::regenerate(&SelfSignedRequest {
                    leaf: &item.old,
                    ca,
                    leaf_spki: &spki,
                    ca_key,
                    validity: plan.validity,
                    now: plan.now,
                })
                .map_err(|e| renew_err(e.to_string()))?;
                let ca_cert =
                    Cert::from_der(&regen.ca_der).map_err(|e| RotationError::SelfCheck {
                        what: format!("the new CA of {}", item.name()),
                        reason: e.to_string(),
                    })?;
                (regen.leaf_der, vec![regen.ca_der], ca_cert, Vec::new())
            }
        };
        built
            .notes
            .extend(notes.iter().map(|n| format!("{}: {n}", item.name())));
        // Judged against the time it was issued: an obtained certificate may have waited for
        // the lease longer than its issuer backdated it.
        let issued_at = obtained
            .filter(|_| got.is_some())
            .map_or(plan.now, |o| o.issued_at);
        let new = check_cert(item, &leaf_der, &issuer_cert, &spki, issued_at)?;
        let key_pem = match (item.key, leaf_key) {
            (KeyPlan::New { format, .. }, Some(k)) => {
                Some(encode::private_key_pem(k, format).map_err(|e| renew_err(e.to_string()))?)
            }
            _ => None,
        };
        compose(&mut built, item, &leaf_der, &chain, key_pem.as_deref())?;
        check_files(&built, item, &new)?;
        if crate::failpoint::wrong_key(item.name()) {
            sabotage_key(&mut built, item)?;
        }
        built.renewed.push(Renewed {
            names: item.names.clone(),
            cert: new,
        });
    }
    // Symlinks last: a link must never point at a file not yet installed.
    Ok(built)
}

/// Test builds only (`CERTROTD_SABOTAGE=wrong-key:NAME`): replaces the item's new key with
/// another one after every self-check passed, so that its consumer really cannot use the pair.
fn sabotage_key(built: &mut Built, item: &Item) -> Result<(), RotationError> {
    let fail = |reason: String| RotationError::Renew {
        name: item.name().to_owned(),
        reason,
    };
    let (Install::Pair { key, .. }, KeyPlan::New { spec, format }) = (&item.install, &item.key)
    else {
        return Err(fail(
            "sabotage wrong-key needs a certificate with a new key in a file of its own".into(),
        ));
    };
    let other = encode::generate(*spec).map_err(|e| fail(e.to_string()))?;
    let pem = encode::private_key_pem(&other, *format).map_err(|e| fail(e.to_string()))?;
    tracing::warn!(
        "sabotage: installing a key that does not match the new certificate of {}",
        item.name()
    );
    built.put(key, pem, KEY_MODE);
    Ok(())
}

/// Opens every CA the plan signs with, once.
fn load_cas(plan: &Plan) -> Result<BTreeMap<String, LocalCa>, RotationError> {
    let mut cas = BTreeMap::new();
    for item in &plan.items {
        let IssuerPlan::Local { ca, cert, key_path } = &item.issuer else {
            continue;
        };
        if cas.contains_key(ca) {
            continue;
        }
        let err = |reason: String| RotationError::Renew {
            name: item.name().to_owned(),
            reason: format!("CA {ca}: {reason}"),
        };
        let key = read_key(&KeySource::File(key_path.clone())).map_err(err)?;
        let local = LocalCa::new(ca, (**cert).clone(), key).map_err(|e| err(e.to_string()))?;
        cas.insert(ca.clone(), local);
    }
    Ok(cas)
}

/// An item's new keys: its own (if new) and its new self-signed CA's (if any).
type ItemKeys = (Option<SecretKeyPair>, Option<SecretKeyPair>);

/// Generates every new key of the plan on all cores.
fn generate_keys(plan: &Plan) -> Result<Vec<ItemKeys>, RotationError> {
    let mut jobs: Vec<(usize, bool, KeySpec)> = Vec::new();
    let obtained = |name: &str| {
        plan.obtained
            .as_ref()
            .is_some_and(|o| o.get(name).is_some())
    };
    for (i, item) in plan.items.iter().enumerate() {
        // An obtained certificate brought its key along.
        if let KeyPlan::New { spec, .. } = item.key
            && !obtained(item.name())
        {
            jobs.push((i, false, spec));
        }
        if let IssuerPlan::SelfSigned { ca_spec, .. } = &item.issuer {
            jobs.push((i, true, *ca_spec));
        }
    }
    let made = parallel::map_heavy(&jobs, |(_, _, spec)| encode::generate(*spec));
    let mut out: Vec<ItemKeys> = plan.items.iter().map(|_| (None, None)).collect();
    for ((i, is_ca, _), key) in jobs.into_iter().zip(made) {
        let key = key.map_err(|e| RotationError::Renew {
            name: plan.items[i].name().to_owned(),
            reason: e.to_string(),
        })?;
        if is_ca {
            out[i].1 = Some(key);
        } else {
            out[i].0 = Some(key);
        }
    }
    Ok(out)
}

/// The new certificate parses, its issuer's key verifies it, it certifies the intended key and it
/// is valid now.
fn check_cert(
    item: &Item,
    der: &[u8],
    issuer: &Cert,
    spki: &[u8],
    now: OffsetDateTime,
) -> Result<Cert, RotationError> {
    let fail = |reason: String| RotationError::SelfCheck {
        what: format!("the new certificate of {}", item.name()),
        reason,
    };
    let new = Cert::from_der(der).map_err(|e| fail(e.to_string()))?;
    if !new.is_signed_by(issuer) {
        return Err(fail("its signature does not verify with its CA".into()));
    }
    if new.spki_der != spki {
        return Err(fail("it does not certify the intended key".into()));
    }
    if new.subject_der != item.old.subject_der
        && !matches!(item.issuer, IssuerPlan::SelfSigned { .. })
    {
        return Err(fail(
            "its subject differs from the old certificate's".into(),
        ));
    }
    if new.not_before > now + crate::issuer::CLOCK_SKEW || new.not_after <= now {
        return Err(fail(format!(
            "it is not valid at its time of issue {} (valid {} to {})",
            crate::timefmt::rfc3339(now),
            crate::timefmt::rfc3339(new.not_before),
            crate::timefmt::rfc3339(new.not_after)
        )));
    }
    Ok(new)
}

/// The PEM of a certificate followed by the chain kept from the old file or field.
fn certs_pem(leaf: &[u8], chain: &[Vec<u8>]) -> String {
    let mut s = encode::cert_pem(leaf);
    for c in chain {
        s.push_str(&encode::cert_pem(c));
    }
    s
}

/// The old key block of a file holding certificate and key, re-encoded as it was (key reused).
fn old_key_block(path: &Path) -> Result<SecretString, RotationError> {
    let data = pem::read_capped(path).map_err(|e| RotationError::Renew {
        name: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let blocks = pem::blocks(path, &data).map_err(|e| RotationError::Renew {
        name: path.display().to_string(),
        reason: e.to_string(),
    })?;
    blocks
        .iter()
        .find(|b| is_key_label(&b.label))
        .map(|b| SecretString::new(pem::encode(&b.label, &b.der)))
        .ok_or_else(|| RotationError::Renew {
            name: path.display().to_string(),
            reason: "no private key block to keep".into(),
        })
}

/// Writes the new certificate (and key) into the new contents of the files the item touches.
fn compose(
    built: &mut Built,
    item: &Item,
    leaf: &[u8],
    chain: &[Vec<u8>],
    key_pem: Option<&str>,
) -> Result<(), RotationError> {
    let certs = certs_pem(leaf, chain);
    match &item.install {
        Install::Pair { cert, key } => {
            built.put(cert, certs.into_bytes(), CERT_MODE);
            if let Some(k) = key_pem {
                built.put(key, k.as_bytes().to_vec(), KEY_MODE);
            }
        }
        Install::Combined { path } => {
            let old;
            let key = match key_pem {
                Some(k) => k,
                None => {
                    old = old_key_block(path)?;
                    &*old
                }
            };
            built.put(path, joined(&certs, key), KEY_MODE);
        }
        Install::KubeletClient {
            link,
            new_file,
            link_target,
        } => {
            let old;
            let key = match key_pem {
                Some(k) => k,
                None => {
                    old = old_key_block(&item.cert_path)?;
                    &*old
                }
            };
            built.put(new_file, joined(&certs, key), KEY_MODE);
            built.links.push((link.clone(), link_target.clone()));
        }
        Install::Kubeconfig {
            path,
            user,
            key_file,
        } => {
            let current = built.current(path)?;
            let embedded_key = if key_file.is_none() { key_pem } else { None };
            let edited = kubeconfig::replace_embedded_client(&current, user, &certs, embedded_key)
                .map_err(|e| RotationError::Renew {
                    name: item.name().to_owned(),
                    reason: format!("editing {}: {e}", path.display()),
                })?;
            built.put(path, edited, KEY_MODE);
            if let (Some(kf), Some(k)) = (key_file, key_pem) {
                built.put(kf, k.as_bytes().to_vec(), KEY_MODE);
            }
        }
    }
    Ok(())
}

/// Certificates then key in one buffer, allocated once so that no copy of the key is left behind.
fn joined(certs: &str, key: &str) -> SecretBytes {
    let mut out = Vec::with_capacity(certs.len() + key.len());
    out.extend_from_slice(certs.as_bytes());
    out.extend_from_slice(key.as_bytes());
    SecretBytes::new(out)
}

/// Reads the item's certificate and key back out of the composed files, as its consumer would,
/// and checks that they are the new certificate and its key.
fn check_files(built: &Built, item: &Item, new: &Cert) -> Result<(), RotationError> {
    let fail = |reason: String| RotationError::SelfCheck {
        what: format!("the new files of {}", item.name()),
        reason,
    };
    let blocks_of =
        |path: &Path, data: &[u8]| pem::blocks(path, data).map_err(|e| fail(e.to_string()));
    let (cert_blocks, key_blocks) = match &item.install {
        Install::Pair { cert, key } => {
            let c = blocks_of(cert, &built.current(cert)?)?;
            let k = blocks_of(key, &built.current(key)?)?;
            (c, k)
        }
        Install::Combined { path } => {
            let b = blocks_of(path, &built.current(path)?)?;
            (b.clone(), b)
        }
        Install::KubeletClient { new_file, .. } => {
            let b = blocks_of(new_file, &built.current(new_file)?)?;
            (b.clone(), b)
        }
        Install::Kubeconfig {
            path,
            user,
            key_file,
        } => {
            let data = built.current(path)?;
            let kc = kubeconfig::parse(path, &data).map_err(|e| fail(e.to_string()))?;
            let u = kc
                .users
                .iter()
                .find(|u| u.name == *user)
                .ok_or_else(|| fail(format!("users[{user}] is gone")))?;
            let Source::Embedded(cert) = &u.cert else {
                return Err(fail(format!(
                    "users[{user}] no longer embeds its certificate"
                )));
            };
            let c = blocks_of(path, cert)?;
            let k = match (key_file, &u.key) {
                (Some(kf), _) => blocks_of(kf, &built.current(kf)?)?,
                (None, Some(Source::Embedded(k))) => blocks_of(path, k)?,
                _ => return Err(fail(format!("users[{user}] has no key"))),
            };
            (c, k)
        }
    };
    let first = cert_blocks
        .iter()
        .find(|b| b.label == "CERTIFICATE")
        .ok_or_else(|| fail("no certificate".into()))?;
    if first.der != new.der {
        return Err(fail("the first certificate is not the new one".into()));
    }
    let key = PrivateKey::from_blocks(&key_blocks).map_err(|e| fail(e.to_string()))?;
    if !key.matches(new) {
        return Err(fail(
            "the private key does not match the new certificate".into(),
        ));
    }
    Ok(())
}
