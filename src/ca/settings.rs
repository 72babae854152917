//! The `[ca]` table: how long each phase dwells at least, when a CA is rotated on its own, and
//! how long a new CA lives.
//!
//! ```toml
//! [ca]
//! dwell_trust_both = "10m"     # every node trusts both CAs for at least this long
//! dwell_issue_new = "24h"      # external clients get this long to pick up the new CA
//! dwell_distrust_old = "0s"
//! rotate_before = "395d"       # default: min(13 months before expiry, half the lifetime)
//! validity = "3650d"           # a new CA's lifetime (kubeadm's 10 years)
//! lost_etcd_rollback = "10m"   # a node cut off from etcd after its step puts the step back
//! ```

use std::time::Duration;

use time::OffsetDateTime;

use super::phase::Phase;

/// Thirteen months, as OpenShift's service CA keeps trust at least (ca-rotation.md C.7).
pub const THIRTEEN_MONTHS: Duration = Duration::from_secs(395 * 86_400);
/// kubeadm's CA lifetime.
pub const TEN_YEARS: Duration = Duration::from_secs(3650 * 86_400);

/// The sandbox's `lost_etcd_rollback`: short, so a demo shows a node putting its step back.
pub const SANDBOX_LOST_ETCD: Duration = Duration::from_secs(30);

/// The `[ca]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSettings {
    /// The least time `TrustBoth` lasts once started.
    pub dwell_trust_both: Duration,
    /// The least time `IssueNew` lasts.
    pub dwell_issue_new: Duration,
    /// The least time `DistrustOld` lasts before `Completed`.
    pub dwell_distrust_old: Duration,
    /// Start a rotation when the CA expires within this; `None`: the earlier of 13 months
    /// before expiry and half its lifetime.
    pub rotate_before: Option<Duration>,
    /// The new CA's lifetime.
    pub validity: Duration,
    /// How long a node that took its step may be cut off from etcd before it puts the step back
    /// ([`super::lost`]).
    pub lost_etcd_rollback: Duration,
}

impl Default for CaSettings {
    fn default() -> Self {
        CaSettings {
            dwell_trust_both: Duration::from_secs(600),
            dwell_issue_new: Duration::from_secs(86_400),
            dwell_distrust_old: Duration::ZERO,
            rotate_before: None,
            validity: TEN_YEARS,
            lost_etcd_rollback: Duration::from_secs(600),
        }
    }
}

impl CaSettings {
    /// No dwell at all: the sandbox's configuration, so `make run` shows a whole rotation.
    pub fn sandbox() -> CaSettings {
        CaSettings {
            dwell_trust_both: Duration::ZERO,
            dwell_issue_new: Duration::ZERO,
            dwell_distrust_old: Duration::ZERO,
            lost_etcd_rollback: SANDBOX_LOST_ETCD,
            ..CaSettings::default()
        }
    }

    /// The settings the loaded configuration's `[ca]` table gives (the configuration depends on
    /// no subsystem, so the table is plain values and this is where they become CA settings).
    pub fn from_config(table: &crate::config::CaTable) -> CaSettings {
        CaSettings {
            dwell_trust_both: table.dwell_trust_both,
            dwell_issue_new: table.dwell_issue_new,
            dwell_distrust_old: table.dwell_distrust_old,
            rotate_before: table.rotate_before,
            validity: table.validity,
            lost_etcd_rollback: table.lost_etcd_rollback,
        }
    }

    /// The least time `phase` lasts before the next one may start (rolling back never waits).
    pub fn dwell(&self, phase: Phase) -> Duration {
        match phase {
            Phase::TrustBoth => self.dwell_trust_both,
            Phase::IssueNew => self.dwell_issue_new,
            Phase::DistrustOld => self.dwell_distrust_old,
            _ => Duration::ZERO,
        }
    }

    /// From when on a CA valid `not_before .. not_after` is due for rotation.
    pub fn due_from(
        &self,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> OffsetDateTime {
        let before = match self.rotate_before {
            Some(d) => time::Duration::try_from(d).unwrap_or(time::Duration::MAX),
            None => {
                let half = (not_after - not_before) / 2_i32;
                let months = time::Duration::try_from(THIRTEEN_MONTHS).unwrap_or(half);
                half.max(months)
            }
        };
        not_after.checked_sub(before).unwrap_or(not_before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_default_rotation_point_is_the_earlier_of_half_life_and_thirteen_months() {
        let s = CaSettings::default();
        let from = datetime!(2016-01-01 0:00 UTC);
        // 10 years: half life (5 y before expiry) comes before 13 months before.
        let ten = datetime!(2026-01-01 0:00 UTC);
        assert_eq!(s.due_from(from, ten), from + (ten - from) / 2_i32);
        // 2 years: 13 months before expiry comes first.
        let two = datetime!(2018-01-01 0:00 UTC);
        assert_eq!(s.due_from(from, two), two - time::Duration::days(395));
        let fixed = CaSettings {
            rotate_before: Some(Duration::from_secs(86_400)),
            ..s
        };
        assert_eq!(fixed.due_from(from, two), two - time::Duration::days(1));
    }

    #[test]
    fn the_configuration_gives_the_defaults_and_the_sandbox_dwells_not_at_all() {
        use crate::config::{self, CaTable, LoadOptions};
        assert_eq!(
            CaSettings::from_config(&CaTable::default()),
            CaSettings::default()
        );
        let tmp = tempfile::tempdir().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let sb = crate::sandbox::write(&tmp.path().join("node"), &Default::default(), now).unwrap();
        let settings = config::load(&LoadOptions {
            config: Some(&sb.config_path),
            root: None,
        })
        .unwrap();
        assert_eq!(CaSettings::from_config(&settings.ca), CaSettings::sandbox());

        let main = tmp.path().join("ca.toml");
        std::fs::write(
            &main,
            "[ca]\ndwell_issue_new = \"2h\"\nrotate_before = \"400d\"\nvalidity = \"5y\"\n",
        )
        .unwrap();
        let settings = config::load(&LoadOptions {
            config: Some(&main),
            root: Some(tmp.path()),
        })
        .unwrap();
        let s = CaSettings::from_config(&settings.ca);
        assert_eq!(s.dwell(Phase::IssueNew), Duration::from_secs(7200));
        assert_eq!(s.dwell(Phase::TrustBoth), Duration::from_secs(600));
        assert_eq!(s.rotate_before, Some(Duration::from_secs(400 * 86_400)));
        std::fs::write(&main, "[ca]\ndwell_isue_new = \"2h\"\n").unwrap();
        let err = config::load(&LoadOptions {
            config: Some(&main),
            root: Some(tmp.path()),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("dwell_isue_new"), "{err}");
    }
}
