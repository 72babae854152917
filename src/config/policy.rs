//! `[policy]`: when to warn, when to renew, and in which maintenance windows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::layer::{ConfigError, DurationText, Side, Sources, Val, over};
use super::renew::days;
use crate::duration;

/// `[policy]`: when to warn and when to renew, counted back from a certificate's NotAfter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicySettings {
    /// Start warning this long before expiry.
    #[serde(with = "duration::human")]
    pub notify_before: Duration,
    /// Renew this long before expiry, within the usual coordination.
    #[serde(with = "duration::human")]
    pub renew_before: Duration,
    /// Renew at once, whatever else waits, this long before expiry.
    #[serde(with = "duration::human")]
    pub emergency_before: Duration,
    /// Each node delays its renewals by a stable share of this, so that a fleet whose
    /// certificates were all issued together does not renew in the same minute.
    #[serde(with = "duration::human")]
    pub jitter: Duration,
    /// Disruptive rotations start only inside these windows (empty: any time), unless a
    /// certificate is within `emergency_before` or expired.
    pub maintenance_windows: Vec<String>,
    /// The time zone of the windows: "UTC" or an IANA name such as "Europe/Berlin".
    pub timezone: String,
}

impl PolicySettings {
    /// The maintenance windows, parsed (validated when the configuration loads).
    pub fn windows(&self) -> crate::window::Windows {
        crate::window::Windows::parse(&self.maintenance_windows, &self.timezone)
            .unwrap_or_else(|_| crate::window::Windows::always())
    }
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            notify_before: days(60),
            renew_before: days(30),
            emergency_before: days(7),
            jitter: Duration::from_secs(3600),
            maintenance_windows: Vec::new(),
            timezone: "UTC".to_owned(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [policy] table")]
pub(super) struct PolicyLayer {
    pub(super) notify_before: Option<Val<DurationText>>,
    pub(super) renew_before: Option<Val<DurationText>>,
    pub(super) emergency_before: Option<Val<DurationText>>,
    pub(super) jitter: Option<Val<DurationText>>,
    pub(super) maintenance_windows: Option<Val<Vec<String>>>,
    pub(super) timezone: Option<Val<String>>,
}

impl PolicyLayer {
    pub(super) fn merge(&mut self, later: PolicyLayer, file: usize) {
        over(&mut self.notify_before, later.notify_before, file);
        over(&mut self.renew_before, later.renew_before, file);
        over(&mut self.emergency_before, later.emergency_before, file);
        over(&mut self.jitter, later.jitter, file);
        over(
            &mut self.maintenance_windows,
            later.maintenance_windows,
            file,
        );
        over(&mut self.timezone, later.timezone, file);
    }

    pub(super) fn resolve(&self, sources: &Sources) -> Result<PolicySettings, ConfigError> {
        let defaults = PolicySettings::default();
        let settings = PolicySettings {
            notify_before: sources.duration(
                "policy.notify_before",
                &self.notify_before,
                defaults.notify_before,
            )?,
            renew_before: sources.duration(
                "policy.renew_before",
                &self.renew_before,
                defaults.renew_before,
            )?,
            emergency_before: sources.duration(
                "policy.emergency_before",
                &self.emergency_before,
                defaults.emergency_before,
            )?,
            jitter: sources.duration("policy.jitter", &self.jitter, defaults.jitter)?,
            maintenance_windows: self
                .maintenance_windows
                .as_ref()
                .map_or(defaults.maintenance_windows, |v| v.value.clone()),
            timezone: self
                .timezone
                .as_ref()
                .map_or(defaults.timezone, |v| v.value.clone()),
        };
        if let Err(e) =
            crate::window::Windows::parse(&settings.maintenance_windows, &settings.timezone)
        {
            // Point at whichever of the two keys was written (the windows first).
            let at = self
                .maintenance_windows
                .as_ref()
                .map(|v| &v.at)
                .or(self.timezone.as_ref().map(|v| &v.at));
            return Err(match at {
                Some(at) => sources.invalid(at, format!("policy: {e}")),
                None => ConfigError::Invalid {
                    at: None,
                    message: format!("policy: {e}"),
                },
            });
        }
        sources.ensure_shorter(
            Side::new("policy.jitter", settings.jitter, &self.jitter),
            Side::new(
                "policy.renew_before",
                settings.renew_before,
                &self.renew_before,
            ),
            "jitter delays renewal within its window",
        )?;
        sources.ensure_shorter(
            Side::new(
                "policy.renew_before",
                settings.renew_before,
                &self.renew_before,
            ),
            Side::new(
                "policy.notify_before",
                settings.notify_before,
                &self.notify_before,
            ),
            "warnings start before renewal does",
        )?;
        sources.ensure_shorter(
            Side::new(
                "policy.emergency_before",
                settings.emergency_before,
                &self.emergency_before,
            ),
            Side::new(
                "policy.renew_before",
                settings.renew_before,
                &self.renew_before,
            ),
            "emergency renewal is for what ordinary renewal did not reach in time",
        )?;
        Ok(settings)
    }
}
