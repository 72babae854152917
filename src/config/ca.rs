//! `[ca]`: how a cluster CA is rotated (issue 13). Plain values only: the `ca` subsystem builds
//! its own settings from this table, since the configuration depends on no subsystem.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::layer::{ConfigError, DurationText, Sources, Val, over};
use super::renew::days;
use crate::duration;

/// `[ca]`: the least time each phase of a CA rotation lasts, when a CA is due, a new CA's
/// lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaTable {
    /// The least time every node trusts both CAs before new certificates are issued.
    #[serde(with = "duration::human")]
    pub dwell_trust_both: Duration,
    /// The least time external clients get to pick up the new CA before the old one is dropped.
    #[serde(with = "duration::human")]
    pub dwell_issue_new: Duration,
    /// The least time `DistrustOld` lasts before the rotation completes.
    #[serde(with = "duration::human")]
    pub dwell_distrust_old: Duration,
    /// A CA is due when it expires within this; `None` (the default): the earlier of 13 months
    /// before expiry and half its lifetime.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_duration"
    )]
    pub rotate_before: Option<Duration>,
    /// A new CA's lifetime (kubeadm's 10 years).
    #[serde(with = "duration::human")]
    pub validity: Duration,
    /// A node that took its step of an open rotation and then could not reach etcd for this
    /// long puts that step back (its own files, from the step's backup).
    #[serde(with = "duration::human")]
    pub lost_etcd_rollback: Duration,
}

impl Default for CaTable {
    fn default() -> Self {
        CaTable {
            dwell_trust_both: Duration::from_secs(600),
            dwell_issue_new: days(1),
            dwell_distrust_old: Duration::ZERO,
            rotate_before: None,
            validity: days(3650),
            lost_etcd_rollback: Duration::from_secs(600),
        }
    }
}

fn optional_duration<S: serde::Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => duration::human::serialize(d, s),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [ca] table")]
pub(super) struct CaLayer {
    dwell_trust_both: Option<Val<DurationText>>,
    dwell_issue_new: Option<Val<DurationText>>,
    dwell_distrust_old: Option<Val<DurationText>>,
    rotate_before: Option<Val<DurationText>>,
    validity: Option<Val<DurationText>>,
    lost_etcd_rollback: Option<Val<DurationText>>,
}

impl CaLayer {
    pub(super) fn merge(&mut self, later: CaLayer, file: usize) {
        over(&mut self.dwell_trust_both, later.dwell_trust_both, file);
        over(&mut self.dwell_issue_new, later.dwell_issue_new, file);
        over(&mut self.dwell_distrust_old, later.dwell_distrust_old, file);
        over(&mut self.rotate_before, later.rotate_before, file);
        over(&mut self.validity, later.validity, file);
        over(&mut self.lost_etcd_rollback, later.lost_etcd_rollback, file);
    }

    pub(super) fn resolve(&self, sources: &Sources) -> Result<CaTable, ConfigError> {
        let d = CaTable::default();
        let rotate_before = match &self.rotate_before {
            None => None,
            Some(_) => {
                Some(sources.duration("ca.rotate_before", &self.rotate_before, Duration::ZERO)?)
            }
        };
        Ok(CaTable {
            dwell_trust_both: sources.duration(
                "ca.dwell_trust_both",
                &self.dwell_trust_both,
                d.dwell_trust_both,
            )?,
            dwell_issue_new: sources.duration(
                "ca.dwell_issue_new",
                &self.dwell_issue_new,
                d.dwell_issue_new,
            )?,
            dwell_distrust_old: sources.duration(
                "ca.dwell_distrust_old",
                &self.dwell_distrust_old,
                d.dwell_distrust_old,
            )?,
            rotate_before,
            validity: sources.duration("ca.validity", &self.validity, d.validity)?,
            lost_etcd_rollback: sources.duration(
                "ca.lost_etcd_rollback",
                &self.lost_etcd_rollback,
                d.lost_etcd_rollback,
            )?,
        })
    }
}
