//! The `ca-rotation-due` notices, announced once per CA and stage: a warning [`NOTICE_AHEAD`]
//! before a CA enters `[ca] rotate_before` (as leaves warn inside `notify_before`), and a notice
//! when it does (the daemon then starts the rotation on a node holding the CA key). The daemon
//! keeps one [`Notices`] and feeds it each track's CA at every CA poll.

use std::collections::HashSet;
use std::time::Duration;

use time::OffsetDateTime;

use super::track::Track;
use super::view::DiskCa;
use crate::events::ca::{self as ev, CaDue, Due};

/// How long before a CA is due the warning comes: four weeks to plan the dwells, or to hand in
/// an operator's own CA with `ca rotate --from`.
pub const NOTICE_AHEAD: Duration = Duration::from_secs(28 * 86_400);

/// Which stage a CA is at `now`: `None` while it is not due within [`NOTICE_AHEAD`].
pub fn stage(disk: &DiskCa, now: OffsetDateTime) -> Option<Due> {
    if now >= disk.due_from {
        Some(Due::Now)
    } else if disk.due_from - now <= time::Duration::try_from(NOTICE_AHEAD).unwrap_or_default() {
        Some(Due::Soon)
    } else {
        None
    }
}

/// The notices already given (by CA fingerprint and stage), so each is given once per daemon.
#[derive(Debug, Default)]
pub struct Notices {
    given: HashSet<(Track, String, Due)>,
}

impl Notices {
    /// Announces `track`'s CA if it reached a stage not announced yet; returns the stage
    /// announced.
    pub fn check(
        &mut self,
        node: &str,
        track: Track,
        disk: &DiskCa,
        now: OffsetDateTime,
    ) -> Option<Due> {
        let stage = stage(disk, now)?;
        if !self.given.insert((track, disk.fingerprint.clone(), stage)) {
            return None;
        }
        ev::ca_rotation_due(
            node,
            &CaDue {
                track: track.as_str(),
                subject: &disk.subject,
                fingerprint: &disk.fingerprint,
                not_after: disk.not_after,
                due_from: disk.due_from,
                stage,
            },
        );
        Some(stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn each_stage_is_announced_once_per_ca_and_again_for_a_new_ca() {
        let disk = DiskCa {
            fingerprint: "aa".into(),
            subject: "CN=etcd-ca".into(),
            not_after: datetime!(2036-01-01 0:00 UTC),
            due_from: datetime!(2031-01-01 0:00 UTC),
        };
        let mut n = Notices::default();
        let far = datetime!(2030-11-01 0:00 UTC);
        assert_eq!(n.check("cp1", Track::EtcdCa, &disk, far), None);
        let soon = datetime!(2030-12-10 0:00 UTC);
        assert_eq!(n.check("cp1", Track::EtcdCa, &disk, soon), Some(Due::Soon));
        assert_eq!(n.check("cp1", Track::EtcdCa, &disk, soon), None);
        let due = datetime!(2031-01-01 0:00 UTC);
        assert_eq!(n.check("cp1", Track::EtcdCa, &disk, due), Some(Due::Now));
        assert_eq!(n.check("cp1", Track::EtcdCa, &disk, due), None);
        // The other track's CA, and a new CA (after a rotation), are announced on their own.
        assert_eq!(
            n.check("cp1", Track::FrontProxyCa, &disk, due),
            Some(Due::Now)
        );
        let new = DiskCa {
            fingerprint: "bb".into(),
            ..disk
        };
        assert_eq!(n.check("cp1", Track::EtcdCa, &new, due), Some(Due::Now));
    }
}
