//! Assess: a pure function of a certificate, the configured windows and `now` that says how urgent
//! it is. Nothing here reads the clock or the disk.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::inventory::Entry;

/// How a certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Valid and outside every window.
    Ok,
    /// Inside `notify_before`: operators should know.
    Notify,
    /// Inside `renew_before`: due for renewal.
    Renew,
    /// Past NotAfter.
    Expired,
    /// Unreadable, mismatched, not yet valid, or otherwise unusable.
    Invalid,
}

impl Status {
    /// Whether `certrotd check` should fail (exit 1) because of this status.
    pub fn needs_attention(self) -> bool {
        matches!(self, Status::Renew | Status::Expired | Status::Invalid)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Notify => "notify",
            Status::Renew => "renew",
            Status::Expired => "expired",
            Status::Invalid => "invalid",
        })
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    /// The status a word (as [`Status`]'s `Display` writes it) names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Status::Ok,
            Status::Notify,
            Status::Renew,
            Status::Expired,
            Status::Invalid,
        ]
        .into_iter()
        .find(|st| st.to_string() == s)
        .ok_or_else(|| format!("unknown certificate status {s:?}"))
    }
}

/// The windows before NotAfter that change a certificate's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Start telling operators this long before expiry.
    pub notify_before: Duration,
    /// Renew this long before expiry.
    pub renew_before: Duration,
}

/// The verdict on one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// Its status.
    pub status: Status,
    /// Problems that depend on time (not yet valid), added to the entry's own.
    pub problems: Vec<String>,
    /// Seconds until NotAfter (negative when expired), when the certificate could be read.
    pub residual_seconds: Option<i64>,
}

/// Assesses one entry at `now`.
pub fn assess(entry: &Entry, windows: &Thresholds, now: OffsetDateTime) -> Assessment {
    let Some(cert) = &entry.cert else {
        return Assessment {
            status: Status::Invalid,
            problems: Vec::new(),
            residual_seconds: None,
        };
    };
    let residual = cert.residual_seconds(now);
    let mut problems = Vec::new();
    if cert.not_before > now {
        problems.push(format!(
            "not valid before {} (clock skew, or issued in the future)",
            crate::timefmt::rfc3339(cert.not_before)
        ));
    }
    let status = if residual <= 0 {
        Status::Expired
    } else if !entry.problems.is_empty() || !problems.is_empty() {
        Status::Invalid
    } else if within(residual, windows.renew_before) {
        Status::Renew
    } else if within(residual, windows.notify_before) {
        Status::Notify
    } else {
        Status::Ok
    };
    Assessment {
        status,
        problems,
        residual_seconds: Some(residual),
    }
}

fn within(residual_seconds: i64, window: Duration) -> bool {
    u64::try_from(residual_seconds).is_ok_and(|r| r <= window.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{KeyState, Origin};

    fn entry_expiring_in(secs: i64, now: OffsetDateTime) -> Entry {
        let mut params = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::seconds(secs);
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Entry {
            name: "x".into(),
            path: "/x".into(),
            node_path: "/x".into(),
            origin: Origin::File,
            key_path: None,
            cert: Some(crate::pki::cert::Cert::from_der(&der).unwrap()),
            chain: vec![],
            key: KeyState::Absent,
            consumers: vec![],
            signer: None,
            externally_managed: false,
            problems: vec![],
        }
    }

    #[test]
    fn windows_order_the_statuses() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let w = Thresholds {
            notify_before: Duration::from_secs(60 * 86400),
            renew_before: Duration::from_secs(30 * 86400),
        };
        let day = 86400;
        let at = |s| assess(&entry_expiring_in(s, now), &w, now).status;
        assert_eq!(at(90 * day), Status::Ok);
        assert_eq!(at(45 * day), Status::Notify);
        assert_eq!(at(10 * day), Status::Renew);
        assert_eq!(at(-10), Status::Expired);
        let mut broken = entry_expiring_in(90 * day, now);
        broken.problems.push("key mismatch".into());
        assert_eq!(assess(&broken, &w, now).status, Status::Invalid);
        let future = assess(
            &entry_expiring_in(90 * day, now),
            &w,
            now - time::Duration::days(2),
        );
        assert_eq!(future.status, Status::Invalid);
        assert!(future.problems[0].contains("not valid before"));
    }
}
