//! What `certrotd status` and the STATUS line say: built from the inventory, the decision and the
//! rotation in progress. Pure: the daemon passes `now` in.

use time::OffsetDateTime;

use crate::control::proto::{CertStatus, DaemonInfo, LeaseStatus, RotationProgress, StatusReport};
use crate::decide::{Decision, NextAction};
use crate::inventory::Inventory;
use crate::timefmt::rfc3339;

/// Everything status is made from.
pub struct Inputs<'a> {
    /// This node.
    pub node: &'a str,
    /// The daemon itself.
    pub daemon: &'a DaemonInfo,
    /// The node's certificates.
    pub inventory: &'a Inventory,
    /// What happens next.
    pub decision: &'a Decision,
    /// The rotation under way.
    pub rotation: Option<&'a RotationProgress>,
    /// The lease.
    pub lease: &'a LeaseStatus,
    /// Notices made so far (newest last), already bounded by the caller.
    pub notices: &'a [String],
}

/// The status report at `now`.
pub fn report(i: &Inputs<'_>, now: OffsetDateTime) -> StatusReport {
    let certificates: Vec<CertStatus> = i
        .inventory
        .entries
        .iter()
        .zip(&i.decision.certs)
        .map(|(e, d)| CertStatus {
            name: e.name.clone(),
            path: e.path.display().to_string(),
            kind: if e.is_ca() { "ca" } else { "leaf" }.to_owned(),
            status: d.status.to_string(),
            not_after: e.cert.as_ref().map(|c| rfc3339(c.not_after)),
            residual_seconds: e.cert.as_ref().map(|c| c.residual_seconds(now)),
            next_action: d.next.to_string(),
            next_action_at: d.at.map(rfc3339),
            consumers: e.consumers.iter().map(|c| c.to_string()).collect(),
            problems: e.problems.clone(),
        })
        .collect();
    StatusReport {
        node: i.node.to_owned(),
        generated_at: rfc3339(now),
        daemon: i.daemon.clone(),
        summary: summary(i, now),
        certificates,
        rotation: i.rotation.cloned(),
        lease: i.lease.clone(),
        notices: i.notices.to_vec(),
        // The daemon adds its retry state (daemon/backoff.rs).
        retry: None,
    }
}

/// The one line for `systemctl status`: "17 certificates ok; next renewal apiserver in 29d".
pub fn summary(i: &Inputs<'_>, now: OffsetDateTime) -> String {
    let total = i.decision.certs.len();
    let bad: Vec<&str> = i
        .decision
        .certs
        .iter()
        .filter(|c| c.status.needs_attention())
        .map(|c| c.name.as_str())
        .collect();
    let mut line = if bad.is_empty() {
        format!("{total} certificates ok")
    } else {
        format!(
            "{} of {total} certificates need attention ({})",
            bad.len(),
            bad.iter().take(3).copied().collect::<Vec<_>>().join(", ")
                + if bad.len() > 3 { ", …" } else { "" }
        )
    };
    if let Some(r) = i.rotation {
        line.push_str(&format!("; rotating {} ({})", r.id, r.step));
    } else if let Some(next) = i
        .decision
        .certs
        .iter()
        .filter(|c| matches!(c.next, NextAction::Renew | NextAction::RenewNow))
        .filter_map(|c| c.at.map(|at| (at, c.name.as_str())))
        .min()
    {
        let left = (next.0 - now).whole_seconds().max(0);
        line.push_str(&format!(
            "; next renewal {} in {}",
            next.1,
            crate::duration::format_residual(left)
        ));
    }
    line
}
