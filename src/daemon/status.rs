//! What `certrotd status` and the STATUS line say: built from the inventory, the decision and the
//! rotation in progress. Pure: the daemon passes `now` in.

use time::OffsetDateTime;

use super::mode::Step;
use crate::control::proto::{self, DaemonInfo, LeaseStatus, RetryStatus};
use crate::decide::{Decision, NextAction};
use crate::inventory::Inventory;
use crate::pki::layout::Component;
use crate::policy::Status;
use crate::timefmt::rfc3339;

/// The daemon's view of the node in domain types; [`Report::to_wire`] makes the protocol's
/// [`proto::StatusReport`] of it when a client asks.
#[derive(Debug, Clone)]
pub struct Report {
    /// This node's Kubernetes name.
    pub node: String,
    /// When the report was made.
    pub generated_at: OffsetDateTime,
    /// The daemon answering.
    pub daemon: DaemonInfo,
    /// Every certificate the daemon knows, CAs and leaves.
    pub certificates: Vec<CertState>,
    /// The rotation in progress, if any.
    pub rotation: Option<Underway>,
    /// Who may disrupt the cluster now.
    pub lease: LeaseStatus,
    /// Notices the daemon has given.
    pub notices: Vec<String>,
    /// The one-line summary sd_notify's STATUS carries.
    pub summary: String,
    /// Renewals failing and being retried with backoff.
    pub retry: Option<RetryStatus>,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            node: String::new(),
            generated_at: OffsetDateTime::UNIX_EPOCH,
            daemon: DaemonInfo::default(),
            certificates: Vec::new(),
            rotation: None,
            lease: LeaseStatus::default(),
            notices: Vec::new(),
            summary: String::new(),
            retry: None,
        }
    }
}

/// Whether a certificate is a CA or a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A certificate authority.
    Ca,
    /// Anything else.
    Leaf,
}

impl Kind {
    /// The word the protocol carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ca => "ca",
            Kind::Leaf => "leaf",
        }
    }
}

/// One certificate and what the daemon will do about it.
#[derive(Debug, Clone)]
pub struct CertState {
    /// kubeadm-style name or file name.
    pub name: String,
    /// Node path of the file holding it.
    pub path: String,
    /// CA or leaf.
    pub kind: Kind,
    /// Its status now.
    pub status: Status,
    /// NotAfter; `None` when the certificate could not be read.
    pub not_after: Option<OffsetDateTime>,
    /// Seconds until NotAfter (negative once expired).
    pub residual_seconds: Option<i64>,
    /// What happens next.
    pub next: NextAction,
    /// When; `None` for nothing and while blocked.
    pub next_at: Option<OffsetDateTime>,
    /// Components that read it and are restarted when it changes.
    pub consumers: Vec<Component>,
    /// What is wrong with it.
    pub problems: Vec<String>,
}

/// The rotation the daemon is carrying out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underway {
    /// Its id.
    pub id: String,
    /// The step it is at.
    pub step: Step,
    /// When it started.
    pub started_at: OffsetDateTime,
    /// The certificates it renews.
    pub certificates: Vec<String>,
}

impl Underway {
    /// As the protocol carries it.
    pub fn to_wire(&self) -> proto::RotationProgress {
        proto::RotationProgress {
            id: self.id.clone(),
            step: self.step.name().to_owned(),
            started_at: rfc3339(self.started_at),
            certificates: self.certificates.clone(),
        }
    }
}

impl CertState {
    /// As the protocol carries it.
    pub fn to_wire(&self) -> proto::CertStatus {
        proto::CertStatus {
            name: self.name.clone(),
            path: self.path.clone(),
            kind: self.kind.as_str().to_owned(),
            status: self.status.to_string(),
            not_after: self.not_after.map(rfc3339),
            residual_seconds: self.residual_seconds,
            next_action: self.next.to_string(),
            next_action_at: self.next_at.map(rfc3339),
            consumers: self.consumers.iter().map(|c| c.to_string()).collect(),
            problems: self.problems.clone(),
        }
    }
}

impl Report {
    /// As the protocol carries it: what `certrotd status` receives.
    pub fn to_wire(&self) -> proto::StatusReport {
        proto::StatusReport {
            node: self.node.clone(),
            generated_at: rfc3339(self.generated_at),
            daemon: self.daemon.clone(),
            certificates: self.certificates.iter().map(CertState::to_wire).collect(),
            rotation: self.rotation.as_ref().map(Underway::to_wire),
            lease: self.lease.clone(),
            notices: self.notices.clone(),
            summary: self.summary.clone(),
            retry: self.retry.clone(),
        }
    }
}

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
    pub rotation: Option<&'a Underway>,
    /// The lease.
    pub lease: &'a LeaseStatus,
    /// Notices made so far (newest last), already bounded by the caller.
    pub notices: &'a [String],
}

/// The status report at `now`.
pub fn report(i: &Inputs<'_>, now: OffsetDateTime) -> Report {
    let certificates: Vec<CertState> = i
        .inventory
        .entries
        .iter()
        .zip(&i.decision.certs)
        .map(|(e, d)| CertState {
            name: e.name.clone(),
            path: e.path.display().to_string(),
            kind: if e.is_ca() { Kind::Ca } else { Kind::Leaf },
            status: d.status,
            not_after: e.cert.as_ref().map(|c| c.not_after),
            residual_seconds: e.cert.as_ref().map(|c| c.residual_seconds(now)),
            next: d.next.clone(),
            next_at: d.at,
            consumers: e.consumers.clone(),
            problems: e.problems.clone(),
        })
        .collect();
    Report {
        node: i.node.to_owned(),
        generated_at: now,
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
        line.push_str(&format!("; rotating {} ({})", r.id, r.step.name()));
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
