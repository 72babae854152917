//! `[renew]`: what renewed certificates look like and what is kept of the old ones.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::layer::{ConfigError, DurationText, Sources, Val, over};
use crate::duration;

/// Whether a renewed certificate gets a new private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPolicy {
    /// Generate a new key with each renewal.
    #[default]
    New,
    /// Keep the existing key, as `kubeadm certs renew` does.
    Reuse,
}

impl KeyPolicy {
    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPolicy::New => "new",
            KeyPolicy::Reuse => "reuse",
        }
    }
}

impl fmt::Display for KeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[renew]`: what renewed certificates look like and what is kept of the old ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenewSettings {
    /// Lifetime of a renewed leaf (the issuer clamps it to the CA's NotAfter).
    #[serde(with = "duration::human")]
    pub validity: Duration,
    /// Whether renewal generates a new key.
    pub key_policy: KeyPolicy,
    /// How many rotation backups to keep under `state_dir/backups`.
    pub backups_keep: usize,
}

impl Default for RenewSettings {
    fn default() -> Self {
        RenewSettings {
            validity: days(365),
            key_policy: KeyPolicy::default(),
            backups_keep: 10,
        }
    }
}

pub(super) const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 60 * 60)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [renew] table")]
pub(super) struct RenewLayer {
    pub(super) validity: Option<Val<DurationText>>,
    pub(super) key_policy: Option<Val<KeyPolicy>>,
    pub(super) backups_keep: Option<Val<usize>>,
}

impl RenewLayer {
    pub(super) fn merge(&mut self, later: RenewLayer, file: usize) {
        over(&mut self.validity, later.validity, file);
        over(&mut self.key_policy, later.key_policy, file);
        over(&mut self.backups_keep, later.backups_keep, file);
    }

    pub(super) fn resolve(&self, sources: &Sources) -> Result<RenewSettings, ConfigError> {
        let defaults = RenewSettings::default();
        let settings = RenewSettings {
            validity: sources.duration("renew.validity", &self.validity, defaults.validity)?,
            key_policy: self
                .key_policy
                .as_ref()
                .map_or(defaults.key_policy, |v| v.value),
            backups_keep: self
                .backups_keep
                .as_ref()
                .map_or(defaults.backups_keep, |v| v.value),
        };
        if let Some(keep) = self.backups_keep.as_ref().filter(|v| v.value == 0) {
            return Err(sources.invalid(
                &keep.at,
                "renew.backups_keep = 0: at least 1 backup must be kept, or a failed rotation \
                 could not be rolled back",
            ));
        }
        Ok(settings)
    }
}
