//! One node's step of a CA rotation: bring its files to the level the phase asks for, back them
//! up first, and prove the result from the disk.
//!
//! The step is idempotent: it computes every file's target content from the record (old and new
//! CA certificates), the new key (unwrapped) and the leaves on disk, and writes only what
//! differs, so a crash anywhere is repaired by running it again. The proof reads everything back:
//! the CA file's certificates by fingerprint, its first certificate against the key, and each
//! leaf's signature against the CA it must come from.
//!
//! Backups: one per node per level reached, named `<rotation id>-<level>`; it holds the files as
//! they were one level below. Rolling a level back restores that backup, so a leaf returns to the
//! very certificate it was (still valid, still trusted while both CAs are).

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::fingerprint;
use super::material::Material;
use super::phase::{Level, Phase};
use super::record::CaRecord;
use super::track::Track;
use crate::issuer::local::LocalCa;
use crate::issuer::{IssueRequest, Issuer as _};
use crate::pki::cert::Cert;
use crate::pki::encode;
use crate::pki::key::PrivateKey;
use crate::pki::pem;
use crate::store::{self, Backup, Expect, FileMode};

/// Why a step could not be taken or proved. Names the file; never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file could not be read or parsed.
    #[error("{}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// The files hold no level of this rotation (a crash mid-step, or someone else's change).
    #[error("{track} files hold no level of rotation {rotation}: {why}")]
    Mixed {
        /// The track.
        track: Track,
        /// The rotation id.
        rotation: String,
        /// What was found.
        why: String,
    },
    /// The level asked for is not next to the one on disk.
    #[error("{track}: cannot go from {from} to {to} in one step")]
    Jump {
        /// The track.
        track: Track,
        /// On disk.
        from: Level,
        /// Asked for.
        to: Level,
    },
    /// Issuing IssueNew's leaves needs the new key, and the caller had none.
    #[error("{0}: the new CA key is needed for issue-new and was not given")]
    NoKey(Track),
    /// A leaf could not be re-issued.
    #[error("re-issuing {}: {error}", path.display())]
    Issue {
        /// The leaf.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// A backup or write failed.
    #[error("{op}: {error}")]
    Store {
        /// What was being done.
        op: String,
        /// Why.
        error: String,
    },
}

/// What a node's files were proved to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The level.
    pub level: Level,
    /// What was seen, one line, for the record and `ca status`.
    pub detail: String,
}

/// What [`step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The proof after the step.
    pub proof: Proof,
    /// Whether any file changed (the track's consumers must then be restarted).
    pub changed: bool,
}

fn read_err(path: &Path) -> impl Fn(String) -> NodeError + '_ {
    move |error| NodeError::Read {
        path: path.to_path_buf(),
        error,
    }
}

fn read_certs(path: &Path) -> Result<Vec<Cert>, NodeError> {
    let data = pem::read_capped(path).map_err(|e| read_err(path)(e.to_string()))?;
    let blocks = pem::blocks(path, &data).map_err(|e| read_err(path)(e.to_string()))?;
    blocks
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| Cert::from_der(&b.der).map_err(|e| read_err(path)(e.to_string())))
        .collect()
}

fn read_key(path: &Path) -> Result<PrivateKey, NodeError> {
    let data = pem::read_capped(path).map_err(|e| read_err(path)(e.to_string()))?;
    let blocks = pem::blocks(path, &data).map_err(|e| read_err(path)(e.to_string()))?;
    PrivateKey::from_blocks(&blocks).map_err(|e| read_err(path)(e.to_string()))
}

/// The old CA's key, read from this node's disk (to unwrap the new key; only the holders of the
/// old key can). At `IssueNew` and above the key file holds the new key: then `None`.
pub fn old_key(track: Track, pki: &Path, old: &Cert) -> Result<Option<PrivateKey>, NodeError> {
    let key = read_key(&pki.join(track.ca_key()))?;
    Ok(key.matches(old).then_some(key))
}

/// Reads the node's files and says which level of the rotation (`old_fp` → `new_fp`) they hold.
pub fn prove(track: Track, pki: &Path, old_fp: &str, new_fp: &str) -> Result<Proof, NodeError> {
    let mixed = |why: String| NodeError::Mixed {
        track,
        rotation: format!(
            "{}…→{}…",
            &old_fp[..old_fp.len().min(12)],
            &new_fp[..new_fp.len().min(12)]
        ),
        why,
    };
    let ca_path = pki.join(track.ca_cert());
    let bundle = read_certs(&ca_path)?;
    let fps: Vec<String> = bundle.iter().map(|c| fingerprint(&c.der)).collect();
    let name = |fp: &String| {
        if fp == old_fp {
            "old"
        } else if fp == new_fp {
            "new"
        } else {
            "foreign"
        }
    };
    let names: Vec<&str> = fps.iter().map(name).collect();
    let level = match names.as_slice() {
        ["old"] => Level::Original,
        ["old", "new"] => Level::TrustBoth,
        ["new", "old"] => Level::IssueNew,
        ["new"] => Level::DistrustOld,
        other => {
            return Err(mixed(format!(
                "{} holds [{}]",
                ca_path.display(),
                other.join(", ")
            )));
        }
    };
    let key = read_key(&pki.join(track.ca_key()))?;
    if !key.matches(&bundle[0]) {
        return Err(mixed(format!(
            "the first certificate of {} does not match {}",
            ca_path.display(),
            track.ca_key()
        )));
    }
    let signer = &bundle[0];
    let mut leaves = Vec::new();
    for leaf in track.leaves() {
        let path = pki.join(leaf.cert);
        let Some(cert) = read_certs(&path)?.into_iter().next() else {
            return Err(read_err(&path)("no certificate".to_owned()));
        };
        if !cert.is_signed_by(signer) {
            return Err(mixed(format!(
                "{} is not signed by the {} CA, which {level} expects",
                path.display(),
                name(&fps[0])
            )));
        }
        leaves.push(leaf.name);
    }
    Ok(Proof {
        level,
        detail: format!(
            "{}: [{}], key matches the first; {} issued by the {} CA",
            track.ca_cert(),
            names.join(", "),
            leaves.join(", "),
            name(&fps[0])
        ),
    })
}

/// The backup id of the step that reaches `level`.
pub fn backup_id(rotation_id: &str, level: Level) -> String {
    format!("{rotation_id}-{level}")
}

/// Everything a step needs.
pub struct StepInput<'a> {
    /// The track.
    pub track: Track,
    /// The node's real PKI directory (`/etc/kubernetes/pki` under its root).
    pub pki: &'a Path,
    /// Where backups go (`<state_dir>/backups`).
    pub backups: &'a Path,
    /// The cluster record.
    pub record: &'a CaRecord,
    /// The new CA with its key (needed to go up to `IssueNew`).
    pub new_ca: Option<&'a Material>,
    /// Now.
    pub now: OffsetDateTime,
}

/// Brings the node's files to `phase`'s level (one level up, or down when rolling back), and
/// proves them. Already there: nothing is written.
pub fn step(input: &StepInput<'_>, phase: Phase) -> Result<Outcome, NodeError> {
    let r = input.record;
    let target = phase.target();
    let before = prove(input.track, input.pki, &r.old_fp, &r.new_fp);
    if let Ok(p) = &before
        && p.level == target
    {
        return Ok(Outcome {
            proof: p.clone(),
            changed: false,
        });
    }
    let down = matches!(phase, Phase::RollingBack(_) | Phase::RolledBack);
    if let Ok(p) = &before {
        let adjacent = if down {
            p.level.down() == Some(target)
        } else {
            p.level.up() == Some(target)
        };
        if !adjacent {
            return Err(NodeError::Jump {
                track: input.track,
                from: p.level,
                to: target,
            });
        }
    }
    // A mixed state is a step interrupted, to be run again in the phase's direction — but only
    // if this step had begun (its backup exists); anything else is not certrotd's to repair.
    if let Err(e) = before {
        let began = if down { target.up() } else { Some(target) };
        let id = began.map(|l| backup_id(&r.rotation_id, l));
        if id.is_none_or(|id| Backup::open(input.backups, &id).is_err()) {
            return Err(e);
        }
    }
    if down {
        let above = target.up().unwrap_or(Level::TrustBoth);
        restore(input, above)?;
    } else {
        forward(input, target)?;
    }
    crate::failpoint::hit(crate::failpoint::Failpoint::CaStepInstalled).map_err(|e| {
        NodeError::Store {
            op: format!("{} step to {target}", input.track),
            error: e.to_string(),
        }
    })?;
    let proof = prove(input.track, input.pki, &r.old_fp, &r.new_fp)?;
    if proof.level != target {
        return Err(NodeError::Mixed {
            track: input.track,
            rotation: r.rotation_id.clone(),
            why: format!(
                "after the step the files hold {}, not {target}",
                proof.level
            ),
        });
    }
    Ok(Outcome {
        proof,
        changed: true,
    })
}

/// Puts this node's step to `level` back on its own (cut off from the cluster, see
/// [`super::lost`]): restores the step's backup and proves the files one level down.
pub fn put_back(
    track: Track,
    pki: &Path,
    backups: &Path,
    record: &CaRecord,
    level: Level,
) -> Result<Level, NodeError> {
    let below = level.down().ok_or(NodeError::Jump {
        track,
        from: level,
        to: level,
    })?;
    let id = backup_id(&record.rotation_id, level);
    Backup::open(backups, &id)
        .map_err(store_err(format!("opening backup {id}")))?
        .restore()
        .map_err(store_err(format!("restoring backup {id}")))?;
    let proof = prove(track, pki, &record.old_fp, &record.new_fp)?;
    if proof.level != below {
        return Err(NodeError::Mixed {
            track,
            rotation: record.rotation_id.clone(),
            why: format!("backup {id} put the files at {}, not {below}", proof.level),
        });
    }
    Ok(below)
}

fn store_err(op: String) -> impl Fn(store::StoreError) -> NodeError {
    move |e| NodeError::Store {
        op: op.clone(),
        error: e.to_string(),
    }
}

/// Opens the backup of the step to `level`, creating it (and saving every file of the track)
/// before any file is written.
fn backup_for(input: &StepInput<'_>, level: Level) -> Result<Backup, NodeError> {
    let id = backup_id(&input.record.rotation_id, level);
    let mut backup = match Backup::open(input.backups, &id) {
        Ok(b) => b,
        Err(store::StoreError::BackupNotFound { .. }) => {
            Backup::create(input.backups, &id, input.now)
                .map_err(store_err(format!("creating backup {id}")))?
        }
        Err(e) => return Err(store_err(format!("opening backup {id}"))(e)),
    };
    let t = input.track;
    let files = [t.ca_cert(), t.ca_key()]
        .into_iter()
        .chain(t.leaves().iter().map(|l| l.cert));
    for rel in files {
        let path = input.pki.join(rel);
        backup
            .save(&path)
            .map_err(store_err(format!("backing up {}", path.display())))?;
    }
    Ok(backup)
}

fn restore(input: &StepInput<'_>, above: Level) -> Result<(), NodeError> {
    let id = backup_id(&input.record.rotation_id, above);
    let backup =
        Backup::open(input.backups, &id).map_err(store_err(format!("opening backup {id}")))?;
    backup
        .restore()
        .map_err(store_err(format!("restoring backup {id}")))?;
    Ok(())
}

/// Writes `data` at `path` unless it already holds exactly that.
fn put(path: &Path, data: &[u8], mode: FileMode) -> Result<(), NodeError> {
    // Bounded and link-free: a link planted here is refused by the write below, never read.
    if crate::pki::pem::read_capped_nofollow(path).is_ok_and(|now| *now == *data) {
        return Ok(());
    }
    store::write_node_file(path, data, mode, Expect::Seen)
        .map_err(store_err(format!("writing {}", path.display())))
}

const CERT_MODE: FileMode = FileMode::Keep { new: 0o644 };
const KEY_MODE: FileMode = FileMode::Secret { new: 0o600 };

fn forward(input: &StepInput<'_>, target: Level) -> Result<(), NodeError> {
    let _backup = backup_for(input, target)?;
    let (t, r) = (input.track, input.record);
    let ca_path = input.pki.join(t.ca_cert());
    let old = r.old_ca_pem.trim_end();
    let new = r.new_ca_pem.trim_end();
    match target {
        Level::Original => {}
        Level::TrustBoth => put(&ca_path, format!("{old}\n{new}\n").as_bytes(), CERT_MODE)?,
        Level::IssueNew => {
            let ca = input.new_ca.ok_or(NodeError::NoKey(t))?;
            reissue_leaves(input, ca)?;
            // The key first: the old key never signs again once the bundle names the new CA first.
            put(&input.pki.join(t.ca_key()), ca.key_pem.as_bytes(), KEY_MODE)?;
            put(&ca_path, format!("{new}\n{old}\n").as_bytes(), CERT_MODE)?;
        }
        Level::DistrustOld => put(&ca_path, format!("{new}\n").as_bytes(), CERT_MODE)?,
    }
    Ok(())
}

/// Re-issues every leaf of the track from the new CA (same key, same attributes, the same
/// lifetime it had), skipping those already issued by it.
fn reissue_leaves(input: &StepInput<'_>, ca: &Material) -> Result<(), NodeError> {
    let key_pem = ca.key_pem.clone();
    let blocks = pem::blocks(Path::new("new CA key"), key_pem.as_bytes())
        .map_err(|e| read_err(Path::new("new CA key"))(e.to_string()))?;
    let key = PrivateKey::from_blocks(&blocks)
        .map_err(|e| read_err(Path::new("new CA key"))(e.to_string()))?;
    let issuer =
        LocalCa::new(input.track.as_str(), ca.cert.clone(), key).map_err(|e| NodeError::Issue {
            path: input.pki.join(input.track.ca_cert()),
            error: e.to_string(),
        })?;
    for leaf in input.track.leaves() {
        let path = input.pki.join(leaf.cert);
        let Some(old) = read_certs(&path)?.into_iter().next() else {
            return Err(read_err(&path)("no certificate".to_owned()));
        };
        if old.is_signed_by(&ca.cert) {
            continue;
        }
        let lifetime = (old.not_after - old.not_before).max(time::Duration::hours(1));
        let issued = issuer
            .issue(&IssueRequest {
                template: &old,
                spki: &old.spki_der,
                validity: lifetime.unsigned_abs(),
                now: input.now,
            })
            .map_err(|e| NodeError::Issue {
                path: path.clone(),
                error: e.to_string(),
            })?;
        put(&path, encode::cert_pem(&issued.der).as_bytes(), CERT_MODE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
