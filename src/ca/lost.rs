//! A node cut off from etcd after its own step puts that step back.
//!
//! A step can break the node's own way to etcd (its member refuses the others' certificates, or
//! its client certificate is refused), and then the node cannot even record the step or hear
//! an abort. So the node keeps the last record it read in its state directory
//! (`<state_dir>/ca/<track>.seen.json`, works with etcd gone) and, once it has failed to reach
//! etcd for longer than `[ca] lost_etcd_rollback` while its files hold the level the seen
//! record's phase asked for, restores that step's backup (its files one level down), restarts
//! the track's consumers and says so (`ca-rollback`). When etcd answers again,
//! [`super::drive::Driver::tick`] writes the node's true level into the record, so the phase
//! waits for the node to take the step again.
//!
//! The daemon keeps one [`Watch`] per track and feeds it: [`Watch::reached`] after each read of
//! the record, [`Watch::lost`] after each failure to connect or read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use super::drive::{DriveError, Driver};
use super::node;
use super::phase::{Level, Phase};
use super::record::CaRecord;
use super::track::Track;
use crate::events::ca as ev;

/// Where the last record this node read is kept.
pub fn seen_path(state_dir: &Path, track: Track) -> PathBuf {
    state_dir
        .join("ca")
        .join(format!("{}.seen.json", track.as_str()))
}

/// Watches one track's connection to etcd.
#[derive(Debug)]
pub struct Watch {
    path: PathBuf,
    limit: Duration,
    seen: Option<CaRecord>,
    failing_since: Option<OffsetDateTime>,
}

/// What [`Watch::lost`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// Nothing to put back (no open rotation seen, or this node's files are not at the seen
    /// phase's level, or no step of it was taken here).
    Nothing,
    /// Cut off, not yet for long enough: the time left.
    Waiting(Duration),
    /// The step was put back: the files now hold this level; the restarts that failed, if any.
    RolledBack(Level, Vec<String>),
}

impl Watch {
    /// A watch of `track` keeping its record under `state_dir`, reading the one kept before a
    /// restart (a record that does not read is ignored: the next read of etcd replaces it).
    pub fn open(state_dir: &Path, track: Track, limit: Duration) -> Watch {
        let path = seen_path(state_dir, track);
        let seen = super::read_file(&path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok());
        Watch {
            path,
            limit,
            seen,
            failing_since: None,
        }
    }

    /// The record last seen.
    pub fn seen(&self) -> Option<&CaRecord> {
        self.seen.as_ref()
    }

    /// etcd answered and the track's record is `record` (`None`: there is none). Keeps it on
    /// disk when it changed.
    pub fn reached(&mut self, record: Option<&CaRecord>) -> Result<(), DriveError> {
        self.failing_since = None;
        if self.seen.as_ref() == record {
            return Ok(());
        }
        let refuse = |e: String| DriveError::Refused(format!("{}: {e}", self.path.display()));
        match record {
            Some(r) => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| refuse(e.to_string()))?;
                }
                // The record holds the new key only wrapped; the file is root's alone anyway.
                let data = serde_json::to_vec(r).map_err(|e| refuse(e.to_string()))?;
                crate::store::write_atomic(&self.path, &data, 0o600)
                    .map_err(|e| refuse(e.to_string()))?;
            }
            None => match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(refuse(e.to_string())),
            },
        }
        self.seen = record.cloned();
        Ok(())
    }

    /// etcd could not be reached at `now`. Once it has not been for longer than the limit and
    /// this node's files hold the level of the seen record's (forward) phase, puts that step
    /// back through `driver` (its PKI, backups and restart hooks).
    pub async fn lost(&mut self, driver: &Driver, now: OffsetDateTime) -> Result<Lost, DriveError> {
        let since = *self.failing_since.get_or_insert(now);
        let Some(r) = &self.seen else {
            return Ok(Lost::Nothing);
        };
        let Some(level) = taken_step(driver, r) else {
            return Ok(Lost::Nothing);
        };
        let cut_off = (now - since).unsigned_abs();
        if now < since || cut_off <= self.limit {
            return Ok(Lost::Waiting(self.limit.saturating_sub(cut_off)));
        }
        let restored = node::put_back(driver.track, &driver.pki, &driver.backups, r, level)?;
        let mut failed = Vec::new();
        for component in driver.track.consumers() {
            if let Err(e) = driver.hooks.restart(*component).await {
                failed.push(format!("{component}: {e}"));
            }
        }
        let mut why = format!(
            "{} could not reach etcd for {} (more than lost_etcd_rollback {}) after its {level} \
             step; its files are back at {}",
            driver.node,
            crate::duration::format(Duration::from_secs(cut_off.as_secs())),
            crate::duration::format(self.limit),
            restored
        );
        if !failed.is_empty() {
            why.push_str(&format!("; restarts failed: {}", failed.join("; ")));
        }
        ev::ca_rollback(
            &driver.node,
            driver.track.as_str(),
            &r.rotation_id,
            restored.as_str(),
            &why,
        );
        // Counted again from here: the step is not put back twice.
        self.failing_since = Some(now);
        Ok(Lost::RolledBack(restored, failed))
    }
}

/// The level of the step this node took in the seen record's phase, if its files hold it: a
/// forward phase above `Planned`, the files proved at that phase's level.
fn taken_step(driver: &Driver, r: &CaRecord) -> Option<Level> {
    if !matches!(
        r.phase,
        Phase::TrustBoth | Phase::IssueNew | Phase::DistrustOld
    ) {
        return None;
    }
    let proof = node::prove(driver.track, &driver.pki, &r.old_fp, &r.new_fp).ok()?;
    (proof.level == r.phase.target() && proof.level != Level::Original).then_some(proof.level)
}
