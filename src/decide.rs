//! Decide: a pure function of the inventory, the policy and `now` that says, for every certificate,
//! what happens next and when, which notices are due, which certificates to renew now, and when
//! the daemon must wake up again. Nothing here reads the clock, the disk or the network: the daemon
//! passes everything in, and the tests move time by hand.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::inventory::{Entry, Inventory};
use crate::pki::cert::Cert;
use crate::policy::{self, Status, Thresholds};
use crate::rotation::journal::OpenRotation;
use crate::window::Windows;

/// The policy as the decision needs it.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Start telling operators this long before expiry.
    pub notify_before: Duration,
    /// Renew this long before expiry.
    pub renew_before: Duration,
    /// Past this, renewal no longer waits for a window or a healthy cluster.
    pub emergency_before: Duration,
    /// Largest per-certificate delay added to `renew_before`'s moment.
    pub jitter: Duration,
    /// When disruptive work may start.
    pub windows: Windows,
    /// This node's name (the jitter is derived from it).
    pub node: String,
    /// `[issuer]`: which CAs whose key is not on the node a remote CA renews for.
    pub issuer: crate::config::IssuerSettings,
}

impl Policy {
    /// The policy of a configuration.
    pub fn from_settings(s: &crate::config::Settings) -> Policy {
        Policy {
            notify_before: s.policy.notify_before,
            renew_before: s.policy.renew_before,
            emergency_before: s.policy.emergency_before,
            jitter: s.policy.jitter,
            windows: s.policy.windows(),
            node: s.node_name.clone(),
            issuer: s.issuer.clone(),
        }
    }
}

/// A threshold a certificate crosses on its way to expiry; each is announced once per certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Threshold {
    /// Inside `notify_before`.
    Notify,
    /// Inside `emergency_before`.
    Emergency,
    /// Past NotAfter.
    Expired,
}

/// A notice to put in the journal and in status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The certificate.
    pub name: String,
    /// Its serial (a renewed certificate is announced afresh).
    pub serial: String,
    /// Which threshold it crossed.
    pub threshold: Threshold,
    /// Its NotAfter.
    pub not_after: OffsetDateTime,
    /// The sentence for operators.
    pub message: String,
}

/// What happens next to one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextAction {
    /// Nothing is planned (well inside its lifetime, or a CA).
    None,
    /// A notice will be due at `at`.
    Notify,
    /// Renewal is planned at `at`.
    Renew,
    /// Renewal is due now.
    RenewNow,
    /// It needs renewal but certrotd cannot do it (why).
    Blocked(String),
}

impl std::fmt::Display for NextAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextAction::None => f.write_str("none"),
            NextAction::Notify => f.write_str("notify"),
            NextAction::Renew => f.write_str("renew"),
            NextAction::RenewNow => f.write_str("renew-now"),
            NextAction::Blocked(why) => write!(f, "blocked: {why}"),
        }
    }
}

/// The decision for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDecision {
    /// The certificate.
    pub name: String,
    /// Its status now.
    pub status: Status,
    /// What happens next.
    pub next: NextAction,
    /// When.
    pub at: Option<OffsetDateTime>,
}

/// The whole decision at `now`.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// Per certificate, in inventory order.
    pub certs: Vec<CertDecision>,
    /// Notices not announced before.
    pub notices: Vec<Notice>,
    /// Certificates to renew now.
    pub due: Vec<String>,
    /// Whether any of `due` is inside `emergency_before` or expired (no window, no health gate).
    pub emergency: bool,
    /// Whether any of `due` is already expired (the health gate is skipped: rotating is the cure).
    pub expired: bool,
    /// Certificates due but held back by the maintenance windows.
    pub deferred: Vec<String>,
    /// Certificates due because a rotation of theirs is unfinished (also in `due`): whatever the
    /// inventory says of them (a certificate installed without its key is a "key mismatch"), the
    /// rotation must be finished or rolled back, and its consumers restarted and proved.
    pub unfinished: Vec<Unfinished>,
    /// When the daemon must look again (`None`: only an event can change anything).
    pub next_wake: Option<OffsetDateTime>,
}

/// A certificate that belongs to a rotation not yet finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    /// The certificate.
    pub name: String,
    /// The open rotation's id.
    pub rotation: String,
}

impl Unfinished {
    /// Why it is due, for operators.
    pub fn reason(&self) -> String {
        format!("unfinished rotation {}", self.rotation)
    }
}

/// Decides at `now` for a node with no open rotation (see [`decide_with_open`]).
pub fn decide(
    inv: &Inventory,
    policy: &Policy,
    announced: &BTreeSet<(String, String, Threshold)>,
    kubelet_rotates: bool,
    now: OffsetDateTime,
) -> Decision {
    decide_with_open(inv, policy, announced, kubelet_rotates, &[], now)
}

/// Decides at `now`. `announced` holds the notices already made, as (name, serial, threshold);
/// `open` the rotations not finished ([`crate::rotation::journal::open`]): every leaf they touch
/// is due now, windows or not and problems or not, since they started in a window already and
/// only finishing them clears the problems they cause.
pub fn decide_with_open(
    inv: &Inventory,
    policy: &Policy,
    announced: &BTreeSet<(String, String, Threshold)>,
    kubelet_rotates: bool,
    open: &[OpenRotation],
    now: OffsetDateTime,
) -> Decision {
    let mut d = Decision::default();
    let windows_open = policy.windows.is_open(now);
    let mut wake: Vec<OffsetDateTime> = Vec::new();
    // Inside renew_before but still waiting for their jitter: they join any rotation that starts
    // anyway, so one restart of the components covers them (index into d.certs).
    let mut waiting: Vec<usize> = Vec::new();
    let status_windows = Thresholds {
        notify_before: policy.notify_before,
        renew_before: policy.renew_before,
    };
    for e in &inv.entries {
        let status = policy::assess(e, &status_windows, now).status;
        let unfinished = open.iter().find(|o| touches(o, e)).filter(|_| !e.is_ca());
        if let Some(o) = unfinished {
            d.unfinished.push(Unfinished {
                name: e.name.clone(),
                rotation: o.id.clone(),
            });
        }
        let Some(cert) = &e.cert else {
            let next = if unfinished.is_some() {
                d.due.push(e.name.clone());
                NextAction::RenewNow
            } else {
                NextAction::Blocked(first_problem(e))
            };
            d.certs.push(CertDecision {
                name: e.name.clone(),
                status,
                at: (next == NextAction::RenewNow).then_some(now),
                next,
            });
            continue;
        };
        let t = Times::of(e, cert, policy, kubelet_rotates);
        // Notices, once per certificate, serial and threshold.
        for (threshold, from) in [
            (Threshold::Notify, t.notify),
            (Threshold::Emergency, t.emergency),
            (Threshold::Expired, cert.not_after),
        ] {
            if now >= from {
                let key = (e.name.clone(), cert.serial.clone(), threshold);
                if !announced.contains(&key) {
                    d.notices.push(notice(e, cert, threshold, &t, now));
                }
            } else {
                wake.push(from);
            }
        }
        let (next, at) = if e.is_ca() {
            // CA rotation is a deliberate, cluster-wide act; certrotd announces, never starts it.
            (NextAction::None, None)
        } else if unfinished.is_some() {
            d.due.push(e.name.clone());
            d.emergency |= now >= t.emergency;
            d.expired |= now >= cert.not_after;
            (NextAction::RenewNow, Some(now))
        } else if let Some(why) = blocked(e, &policy.issuer) {
            if now >= t.notify {
                (NextAction::Blocked(why), None)
            } else {
                (NextAction::Notify, Some(t.notify))
            }
        } else if now >= t.renew {
            let urgent = now >= t.emergency;
            if urgent || windows_open {
                d.due.push(e.name.clone());
                d.emergency |= urgent;
                d.expired |= now >= cert.not_after;
                (NextAction::RenewNow, Some(now))
            } else {
                let open = policy.windows.next_open(now);
                d.deferred.push(e.name.clone());
                // Whichever comes first: the window opens, or the emergency overrides it.
                let at = open.map_or(t.emergency, |o| o.min(t.emergency));
                wake.push(at);
                (NextAction::Renew, Some(at))
            }
        } else {
            if now >= t.renew_base {
                waiting.push(d.certs.len());
            }
            wake.push(t.renew);
            (NextAction::Renew, Some(t.renew))
        };
        d.certs.push(CertDecision {
            name: e.name.clone(),
            status,
            next,
            at,
        });
    }
    if !d.due.is_empty() {
        for i in waiting {
            let c = &mut d.certs[i];
            c.next = NextAction::RenewNow;
            c.at = Some(now);
            d.due.push(c.name.clone());
        }
    }
    d.next_wake = wake.into_iter().filter(|w| *w > now).min();
    d
}

/// The share of its lifetime after which the kubelet is late with its own rotation: client-go
/// rotates at a random point between 70% and 90%.
const KUBELET_LATE: f64 = 0.9;

/// The moments that matter for one certificate.
struct Times {
    /// When operators are first told (for a certificate the kubelet rotates: when it is late).
    notify: OffsetDateTime,
    /// Whether the kubelet rotates it itself (certrotd only watches, then takes over).
    kubelet_rotates: bool,
    /// When renewal is planned: `renew_base` plus this node's jitter.
    renew: OffsetDateTime,
    /// `renew_before` before expiry, without jitter.
    renew_base: OffsetDateTime,
    emergency: OffsetDateTime,
}

impl Times {
    fn of(e: &Entry, cert: &Cert, p: &Policy, kubelet_rotates: bool) -> Times {
        let not_after = cert.not_after;
        // Saturating: a time before the first one `time` can hold is "long ago", never a panic.
        let back = |d: Duration| {
            time::Duration::try_from(d)
                .ok()
                .and_then(|d| not_after.checked_sub(d))
                .unwrap_or(time::PrimitiveDateTime::MIN.assume_utc())
        };
        let emergency = back(p.emergency_before);
        if kubelet_rotates && is_kubelet_client(e) {
            // The kubelet renews its own client certificate (at 70–90% of its lifetime): certrotd
            // says so when it is late, and takes over only when the certificate is about to expire
            // — never before the kubelet is late — so the two never fight.
            let late = kubelet_late(cert);
            let takeover = emergency.max(late);
            return Times {
                notify: late,
                kubelet_rotates: true,
                renew: takeover,
                renew_base: takeover,
                emergency,
            };
        }
        let base = back(p.renew_before);
        let renew = base
            .checked_add(jitter(&p.node, e, p.jitter))
            .unwrap_or(base);
        Times {
            notify: back(p.notify_before),
            kubelet_rotates: false,
            renew: renew.min(emergency),
            renew_base: base.min(emergency),
            emergency,
        }
    }
}

/// When the kubelet is late with rotating `cert` (90% of its lifetime).
pub fn kubelet_late(cert: &Cert) -> OffsetDateTime {
    let life = cert.not_after - cert.not_before;
    cert.not_before + life * KUBELET_LATE
}

fn is_kubelet_client(e: &Entry) -> bool {
    e.name == "kubelet-client-current"
        || e.node_path.starts_with(crate::pki::layout::KUBELET_PKI)
            && e.node_path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kubelet-client"))
}

/// A stable share of `max` for this node and certificate: the same across restarts (so a node
/// does not keep postponing), different between nodes (so they do not all renew together).
fn jitter(node: &str, e: &Entry, max: Duration) -> time::Duration {
    if max.is_zero() {
        return time::Duration::ZERO;
    }
    let serial = e.cert.as_ref().map(|c| c.serial.as_str()).unwrap_or("");
    let seed = format!("{node}\0{}\0{serial}", e.name);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, seed.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    let share = u64::from_be_bytes(first) as f64 / u64::MAX as f64;
    time::Duration::seconds_f64(max.as_secs_f64() * share)
}

/// Why certrotd cannot renew this certificate itself, if it cannot.
fn blocked(e: &Entry, issuer: &crate::config::IssuerSettings) -> Option<String> {
    if !e.problems.is_empty() {
        return Some(first_problem(e));
    }
    // A remote CA renews what the node has no CA key for.
    if e.signer.as_deref().is_some_and(|ca| issuer.remote_for(ca)) {
        return None;
    }
    // The kubelet's self-signed serving certificate has no CA key by design; it is regenerated.
    if e.externally_managed && e.name != "kubelet-serving" {
        return Some(match &e.signer {
            Some(ca) => format!("externally managed: the key of CA {ca} is not on this node"),
            None => "externally managed: its CA is not on this node".to_owned(),
        });
    }
    None
}

/// Whether the open rotation renews this certificate or touches one of its files.
fn touches(o: &OpenRotation, e: &Entry) -> bool {
    o.certificates.contains(&e.name)
        || o.paths.contains(&e.path)
        || e.key_path.as_ref().is_some_and(|k| o.paths.contains(k))
}

fn first_problem(e: &Entry) -> String {
    e.problems
        .first()
        .cloned()
        .unwrap_or_else(|| "unreadable".to_owned())
}

fn notice(e: &Entry, cert: &Cert, threshold: Threshold, t: &Times, now: OffsetDateTime) -> Notice {
    let (serial, not_after) = (&cert.serial, cert.not_after);
    let when = crate::timefmt::rfc3339(not_after);
    let left = crate::duration::format_residual((not_after - now).whole_seconds());
    let message = match threshold {
        Threshold::Notify if t.kubelet_rotates => format!(
            "the kubelet is late rotating its client certificate {} (rotateCertificates: true): \
             90% of its lifetime has passed, it expires in {left} ({when}); certrotd takes over at {}",
            e.name,
            crate::timefmt::rfc3339(t.renew)
        ),
        Threshold::Notify => format!("certificate {} expires in {left} ({when})", e.name),
        Threshold::Emergency => format!(
            "certificate {} expires in {left} ({when}): renewal is urgent",
            e.name
        ),
        Threshold::Expired => format!("certificate {} EXPIRED at {when}", e.name),
    };
    Notice {
        name: e.name.clone(),
        serial: serial.to_owned(),
        threshold,
        not_after,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{self, SandboxOptions};

    const DAY: i64 = 86400;

    fn node() -> (tempfile::TempDir, Inventory, OffsetDateTime) {
        let tmp = tempfile::tempdir().unwrap();
        let issued = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let opts = SandboxOptions {
            key: crate::pki::encode::KeySpec::EcdsaP256,
            ..SandboxOptions::default()
        };
        sandbox::write(tmp.path(), &opts, issued).unwrap();
        let root = crate::root::Root::new(tmp.path());
        let inv = crate::inventory::scan(&crate::inventory::ScanRequest {
            root: &root,
            layouts: None,
            extra_paths: &[],
        });
        (tmp, inv, issued)
    }

    fn policy(windows: &[&str]) -> Policy {
        Policy {
            notify_before: Duration::from_secs(60 * DAY as u64),
            renew_before: Duration::from_secs(30 * DAY as u64),
            emergency_before: Duration::from_secs(7 * DAY as u64),
            jitter: Duration::from_secs(3600),
            windows: Windows::parse(
                &windows.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "UTC",
            )
            .unwrap(),
            node: "cp1".into(),
            issuer: Default::default(),
        }
    }

    fn leaf_expiry(inv: &Inventory) -> OffsetDateTime {
        inv.get("apiserver")
            .unwrap()
            .cert
            .as_ref()
            .unwrap()
            .not_after
    }

    #[test]
    fn a_fresh_node_sleeps_until_the_first_notice() {
        let (_t, inv, issued) = node();
        let d = decide(&inv, &policy(&[]), &BTreeSet::new(), true, issued);
        assert!(d.due.is_empty() && d.notices.is_empty());
        let expiry = leaf_expiry(&inv);
        assert_eq!(d.next_wake, Some(expiry - time::Duration::days(60)));
        let api = d.certs.iter().find(|c| c.name == "apiserver").unwrap();
        assert_eq!(api.next, NextAction::Renew);
        let at = api.at.unwrap();
        let earliest = expiry - time::Duration::days(30);
        assert!(
            at >= earliest && at < earliest + time::Duration::hours(1),
            "{at}"
        );
    }

    #[test]
    fn notices_are_made_once_per_certificate_and_threshold() {
        let (_t, inv, _) = node();
        let now = leaf_expiry(&inv) - time::Duration::days(45);
        let d = decide(&inv, &policy(&[]), &BTreeSet::new(), true, now);
        assert!(d.due.is_empty());
        assert!(d.notices.iter().all(|n| n.threshold == Threshold::Notify));
        assert!(d.notices.iter().any(|n| n.name == "apiserver"));
        let announced: BTreeSet<_> = d
            .notices
            .iter()
            .map(|n| (n.name.clone(), n.serial.clone(), n.threshold))
            .collect();
        let again = decide(
            &inv,
            &policy(&[]),
            &announced,
            true,
            now + time::Duration::hours(1),
        );
        assert!(again.notices.is_empty());
    }

    #[test]
    fn due_inside_renew_before_but_the_kubelet_renews_its_own() {
        let (_t, inv, _) = node();
        let now = leaf_expiry(&inv) - time::Duration::days(20);
        let d = decide(&inv, &policy(&[]), &BTreeSet::new(), true, now);
        assert!(d.due.contains(&"apiserver".to_string()));
        assert!(d.due.contains(&"admin.conf".to_string()));
        assert!(d.due.contains(&"kubelet-serving".to_string()));
        assert!(!d.due.contains(&"kubelet-client-current".to_string()));
        assert!(!d.emergency && !d.expired);
        // Without the kubelet's own rotation certrotd renews it like the rest.
        let d = decide(&inv, &policy(&[]), &BTreeSet::new(), false, now);
        assert!(d.due.contains(&"kubelet-client-current".to_string()));
        // CAs are never due.
        assert!(!d.due.contains(&"ca".to_string()));
    }

    #[test]
    fn certificates_waiting_for_their_jitter_join_a_rotation_that_starts() {
        let (_t, inv, _) = node();
        let base = leaf_expiry(&inv) - time::Duration::days(30);
        // At the earliest jittered moment exactly one certificate is due by itself; every other
        // one inside renew_before joins it.
        let p = policy(&[]);
        let first = decide(
            &inv,
            &p,
            &BTreeSet::new(),
            true,
            base + time::Duration::hours(2),
        );
        let mut earliest = first
            .certs
            .iter()
            .filter(|c| c.next == NextAction::RenewNow)
            .count();
        assert!(earliest > 10, "{earliest}");
        let before_any = decide(
            &inv,
            &p,
            &BTreeSet::new(),
            true,
            base - time::Duration::seconds(1),
        );
        assert!(before_any.due.is_empty());
        earliest = 0;
        for minute in 0..60 {
            let d = decide(
                &inv,
                &p,
                &BTreeSet::new(),
                true,
                base + time::Duration::minutes(minute),
            );
            if !d.due.is_empty() {
                earliest = d.due.len();
                break;
            }
        }
        assert!(
            earliest > 10,
            "all renewable leaves go together: {earliest}"
        );
    }

    #[test]
    fn windows_defer_until_the_emergency() {
        let (_t, inv, _) = node();
        let expiry = leaf_expiry(&inv);
        // A window that is closed now: the hour after `now`'s hour on its weekday.
        let now = expiry - time::Duration::days(20);
        let next_hour = (now + time::Duration::hours(2)).replace_minute(0).unwrap();
        let day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
            [next_hour.weekday().number_days_from_monday() as usize];
        let spec = format!(
            "{day} {:02}:00-{:02}:30",
            next_hour.hour(),
            next_hour.hour()
        );
        let p = policy(&[&spec]);
        let d = decide(&inv, &p, &BTreeSet::new(), true, now);
        assert!(d.due.is_empty(), "{:?}", d.due);
        assert!(d.deferred.contains(&"apiserver".to_string()));
        assert_eq!(d.next_wake, Some(next_hour));
        // In the window it is due.
        let d = decide(&inv, &p, &BTreeSet::new(), true, next_hour);
        assert!(d.due.contains(&"apiserver".to_string()));
        // Inside emergency_before the window no longer matters.
        let late = expiry - time::Duration::days(3);
        let d = decide(&inv, &p, &BTreeSet::new(), true, late);
        assert!(d.due.contains(&"apiserver".to_string()) && d.emergency);
        assert!(
            d.notices
                .iter()
                .any(|n| n.threshold == Threshold::Emergency)
        );
        let d = decide(
            &inv,
            &p,
            &BTreeSet::new(),
            true,
            expiry + time::Duration::days(1),
        );
        assert!(d.expired && d.due.contains(&"kubelet-client-current".to_string()));
    }

    fn kubelet_client(inv: &Inventory) -> (OffsetDateTime, OffsetDateTime) {
        let c = inv
            .get("kubelet-client-current")
            .unwrap()
            .cert
            .as_ref()
            .unwrap();
        (c.not_after, kubelet_late(c))
    }

    fn state_of(d: &Decision, name: &str) -> NextAction {
        d.certs
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .next
            .clone()
    }

    #[test]
    fn the_kubelets_own_rotation_is_watched_warned_about_when_late_then_taken_over() {
        let (_t, inv, _) = node();
        let p = policy(&[]);
        let (expiry, late) = kubelet_client(&inv);
        let name = "kubelet-client-current";
        // A year-long certificate: late at 90% (36.5 days before expiry), taken over at
        // emergency_before (7 days before).
        assert_eq!((expiry - late).whole_days(), 36);
        // Healthy: inside notify_before and renew_before, but the kubelet's to rotate: no notice,
        // nothing due.
        let d = decide(
            &inv,
            &p,
            &BTreeSet::new(),
            true,
            late - time::Duration::days(5),
        );
        assert!(!d.due.contains(&name.to_string()));
        assert!(!d.notices.iter().any(|n| n.name == name), "{:?}", d.notices);
        assert_eq!(state_of(&d, name), NextAction::Renew);
        // Late: warned once, still not touched.
        let d = decide(
            &inv,
            &p,
            &BTreeSet::new(),
            true,
            late + time::Duration::hours(1),
        );
        let n = d.notices.iter().find(|n| n.name == name).unwrap();
        assert_eq!(n.threshold, Threshold::Notify);
        assert!(n.message.contains("the kubelet is late"), "{}", n.message);
        assert!(!d.due.contains(&name.to_string()));
        let at = d.certs.iter().find(|c| c.name == name).unwrap().at.unwrap();
        assert_eq!(at, expiry - time::Duration::days(7));
        // About to expire: taken over, as an emergency (no window, no waiting).
        let d = decide(
            &inv,
            &p,
            &BTreeSet::new(),
            true,
            expiry - time::Duration::days(6),
        );
        assert!(d.due.contains(&name.to_string()) && d.emergency);
        // Expired: taken over too.
        let d = decide(
            &inv,
            &p,
            &BTreeSet::new(),
            true,
            expiry + time::Duration::hours(1),
        );
        assert!(d.due.contains(&name.to_string()) && d.expired);
    }

    #[test]
    fn short_lived_kubelet_certificates_are_never_taken_before_the_kubelet_is_late() {
        let (_t, inv, issued) = node();
        // emergency_before longer than 10% of the lifetime: the take-over waits for 90%.
        let mut p = policy(&[]);
        p.emergency_before = Duration::from_secs(300 * DAY as u64);
        p.renew_before = Duration::from_secs(310 * DAY as u64);
        p.notify_before = Duration::from_secs(320 * DAY as u64);
        let (_, late) = kubelet_client(&inv);
        let name = "kubelet-client-current".to_string();
        let d = decide(
            &inv,
            &p,
            &BTreeSet::new(),
            true,
            issued + time::Duration::days(100),
        );
        assert!(!d.due.contains(&name) && d.due.contains(&"apiserver".to_string()));
        let d = decide(
            &inv,
            &p,
            &BTreeSet::new(),
            true,
            late + time::Duration::minutes(1),
        );
        assert!(d.due.contains(&name));
    }

    #[test]
    fn externally_managed_certificates_are_due_when_a_remote_ca_is_configured() {
        let (t, _, _) = node();
        std::fs::remove_file(t.path().join("etc/kubernetes/pki/ca.key")).unwrap();
        let root = crate::root::Root::new(t.path());
        let inv = crate::inventory::scan(&crate::inventory::ScanRequest {
            root: &root,
            layouts: None,
            extra_paths: &[],
        });
        let now = leaf_expiry(&inv) - time::Duration::days(20);
        let mut p = policy(&[]);
        let d = decide(&inv, &p, &BTreeSet::new(), true, now);
        assert!(
            matches!(state_of(&d, "apiserver"), NextAction::Blocked(w) if w.contains("externally managed"))
        );
        assert!(d.due.contains(&"etcd-server".to_string()));
        p.issuer.mode = crate::config::IssuerMode::Cfssl;
        let d = decide(&inv, &p, &BTreeSet::new(), true, now);
        assert!(d.due.contains(&"apiserver".to_string()));
        assert!(d.due.contains(&"admin.conf".to_string()));
        // A per-CA override that keeps the CA local leaves it blocked.
        p.issuer.ca.insert(
            "ca".into(),
            crate::config::CaOverride {
                mode: crate::config::IssuerMode::Local,
                url: None,
                auth_key_file: None,
                profile: None,
                ca_bundle: None,
            },
        );
        let d = decide(&inv, &p, &BTreeSet::new(), true, now);
        assert!(!d.due.contains(&"apiserver".to_string()));
    }

    #[test]
    fn jitter_is_stable_per_node_and_bounded() {
        let (_t, inv, _) = node();
        let e = inv.get("apiserver").unwrap();
        let max = Duration::from_secs(3600);
        let a = jitter("cp1", e, max);
        assert_eq!(a, jitter("cp1", e, max));
        assert_ne!(a, jitter("cp2", e, max));
        assert!(a >= time::Duration::ZERO && a < time::Duration::hours(1));
        assert_eq!(jitter("cp1", e, Duration::ZERO), time::Duration::ZERO);
    }

    #[test]
    fn a_key_mismatch_left_by_an_unfinished_rotation_is_due_not_blocked() {
        let (t, _, _) = node();
        // A lost lease between installing apiserver's certificate and its key.
        let other = crate::pki::encode::generate(crate::pki::encode::KeySpec::EcdsaP256).unwrap();
        let pem = crate::pki::encode::private_key_pem(&other, crate::pki::encode::KeyFormat::Pkcs8)
            .unwrap();
        std::fs::write(t.path().join("etc/kubernetes/pki/apiserver.key"), pem).unwrap();
        let root = crate::root::Root::new(t.path());
        let inv = crate::inventory::scan(&crate::inventory::ScanRequest {
            root: &root,
            layouts: None,
            extra_paths: &[],
        });
        let api = inv.get("apiserver").unwrap();
        assert!(!api.problems.is_empty());
        // Inside notify_before, outside renew_before, and outside every window.
        let now = leaf_expiry(&inv) - time::Duration::days(45);
        let later = (now + time::Duration::hours(3)).replace_minute(0).unwrap();
        let day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
            [later.weekday().number_days_from_monday() as usize];
        let p = policy(&[&format!(
            "{day} {:02}:00-{:02}:30",
            later.hour(),
            later.hour()
        )]);
        assert!(!p.windows.is_open(now));

        let d = decide(&inv, &p, &BTreeSet::new(), true, now);
        assert!(matches!(state_of(&d, "apiserver"), NextAction::Blocked(w) if w.contains("match")));
        assert!(d.due.is_empty() && d.unfinished.is_empty());

        let by_name = OpenRotation {
            id: "20260101T000000Z-abcdef".into(),
            phase: crate::rotation::journal::Phase::Installing,
            certificates: vec!["apiserver".into()],
            paths: Vec::new(),
            consumers: Vec::new(),
        };
        let by_path = OpenRotation {
            certificates: Vec::new(),
            paths: vec![api.key_path.clone().unwrap()],
            ..by_name.clone()
        };
        for open in [by_name, by_path] {
            let d = decide_with_open(&inv, &p, &BTreeSet::new(), true, &[open], now);
            assert_eq!(state_of(&d, "apiserver"), NextAction::RenewNow);
            assert_eq!(d.due, ["apiserver"]);
            assert_eq!(d.unfinished.len(), 1);
            assert_eq!(
                d.unfinished[0].reason(),
                "unfinished rotation 20260101T000000Z-abcdef"
            );
            assert!(!d.emergency && !d.expired);
            // Nothing else joins: no other certificate is inside renew_before.
            assert!(d.deferred.is_empty());
        }
    }
}
