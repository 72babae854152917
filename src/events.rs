//! The daemon's story, as structured journal events. Every event carries `CERTROTD_EVENT` (its
//! kind), a `MESSAGE_ID` per kind (so `journalctl MESSAGE_ID=…` finds them across versions) and the
//! fields that identify what it is about. Certificates are named by name, path and dates; key
//! material never appears here.
//!
//! An event about several certificates carries one `CERT_NAME` value per certificate (journald
//! keeps repeated fields), so `journalctl CERT_NAME=apiserver` finds it; never a joined list.
//! Events that say a certificate expired are journald priority 2 (critical): tracing has no such
//! level, so they are logged at ERROR under [`CRITICAL_TARGET`], which the journald layer maps
//! (see [`crate::logging`]).

use std::path::Path;

use time::OffsetDateTime;

use crate::decide::Threshold;
use crate::timefmt::rfc3339;

pub mod ca;

/// The target of events that are critical (journald priority 2): logged at ERROR, which is
/// tracing's highest level, and mapped to critical by the journald layer.
pub const CRITICAL_TARGET: &str = "certrotd::events::critical";

/// The target of the spans that carry one certificate's name each (see `per_cert`). Under
/// `certrotd::events`, so a filter that lets the events through lets these through too.
pub const CERT_SPAN_TARGET: &str = "certrotd::events::cert";

/// Event kinds and their stable journal MESSAGE_IDs (128-bit, as `journalctl --new-id128` makes).
pub mod ids {
    /// The daemon is up and has inventoried the node.
    pub const STARTED: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a01";
    /// A certificate crossed a notice threshold.
    pub const NOTICE: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a02";
    /// A rotation started.
    pub const ROTATION_STARTED: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a03";
    /// A certificate was rotated and its consumers proved to serve it.
    pub const ROTATED: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a04";
    /// A rotation failed (and was rolled back).
    pub const ROTATION_FAILED: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a05";
    /// A component was restarted.
    pub const RESTARTED: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a06";
    /// A certificate changed on disk by someone else (kubeadm, the kubelet).
    pub const CHANGED: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a07";
    /// The configuration was reloaded (or a reload was refused).
    pub const RELOADED: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a08";
    /// A rotation was deferred (maintenance window, unhealthy components).
    pub const DEFERRED: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a09";
    /// Renewal failed and is retried with backoff (e.g. the remote CA unreachable).
    pub const RETRYING: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a0a";
    /// This node's etcd certificates had all expired: they are renewed without the lease.
    pub const RECOVERY: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a0b";
    /// A component picked up its new certificates by itself and was not restarted.
    pub const COMPONENT_RELOADED: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a0c";
    /// A CA nears or entered `[ca] rotate_before`.
    pub const CA_ROTATION_DUE: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a0d";
    /// A CA rotation's cluster record moved into a phase.
    pub const CA_PHASE_STARTED: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a0e";
    /// A node brought its files of a CA track to a level.
    pub const CA_STEP: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a0f";
    /// A node proved and recorded its step of a CA rotation.
    pub const CA_PHASE_COMPLETED: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a10";
    /// A CA rotation (or one node's step of it) is rolled back.
    pub const CA_ROLLBACK: &str = "6b0e3d4c2a8f4f6c9a1e7d5b3c2f1a11";
}

/// How loud a retried failure is: louder as the certificates near expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Still well before expiry.
    Warning,
    /// Inside `emergency_before`.
    Error,
    /// Already expired.
    Critical,
}

impl Severity {
    /// The `SEVERITY` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

impl From<Threshold> for Severity {
    /// A notice is as loud as the threshold it crossed.
    fn from(t: Threshold) -> Severity {
        match t {
            Threshold::Notify => Severity::Warning,
            Threshold::Emergency => Severity::Error,
            Threshold::Expired => Severity::Critical,
        }
    }
}

/// The `THRESHOLD` field's value.
fn threshold_str(t: Threshold) -> &'static str {
    match t {
        Threshold::Notify => "notify",
        Threshold::Emergency => "emergency",
        Threshold::Expired => "expired",
    }
}

/// Logs an event at the journald priority of `severity`: warning (4), error (3) or critical (2,
/// an ERROR event under [`CRITICAL_TARGET`]).
macro_rules! at_severity {
    ($severity:expr, $($event:tt)+) => {
        match $severity {
            Severity::Warning => tracing::warn!($($event)+),
            Severity::Error => tracing::error!($($event)+),
            Severity::Critical => tracing::error!(target: CRITICAL_TARGET, $($event)+),
        }
    };
}

/// Runs `emit` inside one span per certificate, each with its `cert_name`. The journald layer
/// writes the fields of every span around an event into the event's entry, so the entry holds
/// `CERT_NAME` once per certificate. ERROR level: enabled whenever the event is.
fn per_cert(certs: &[String], emit: impl FnOnce()) {
    let mut entered: Vec<tracing::span::EnteredSpan> = Vec::with_capacity(certs.len());
    for name in certs {
        // Each span is entered inside the one before: together they are the event's scope.
        entered.push(
            tracing::error_span!(target: CERT_SPAN_TARGET, "cert", cert_name = name.as_str())
                .entered(),
        );
    }
    emit();
    // Innermost first, as they were entered.
    while let Some(span) = entered.pop() {
        drop(span);
    }
}

/// Renewal of `certs` failed for the `attempts`-th time in a row; the next attempt is at `next`.
/// As loud as `severity`: the nearer the certificates are to expiry, the louder.
pub fn retrying(
    node: &str,
    certs: &[String],
    attempts: u32,
    error: &str,
    next: OffsetDateTime,
    severity: Severity,
) {
    let list = certs.join(", ");
    let next = rfc3339(next);
    let message = match severity {
        Severity::Warning => {
            format!("renewing {list} failed (attempt {attempts}), retrying at {next}: {error}")
        }
        Severity::Error => format!(
            "URGENT: {list} expire within emergency_before and renewing them failed \
             (attempt {attempts}), retrying at {next}: {error}"
        ),
        Severity::Critical => format!(
            "CRITICAL: {list} have EXPIRED and renewing them failed (attempt {attempts}), \
             retrying at {next}: {error}"
        ),
    };
    per_cert(certs, || {
        at_severity!(
            severity,
            message_id = ids::RETRYING,
            certrotd_event = "retrying",
            severity = severity.as_str(),
            node,
            attempts,
            next_retry = %next,
            "{message}"
        );
    });
}

/// The daemon finished its first inventory.
pub fn started(node: &str, certificates: usize, summary: &str) {
    tracing::info!(
        message_id = ids::STARTED,
        certrotd_event = "started",
        node,
        certificates,
        "certrotd started: {summary}"
    );
}

/// A certificate crossed a threshold: a warning inside `notify_before`, an error inside
/// `emergency_before`, critical once expired.
pub fn notice(
    node: &str,
    name: &str,
    path: &Path,
    not_after: OffsetDateTime,
    threshold: Threshold,
    message: &str,
) {
    let severity = Severity::from(threshold);
    at_severity!(
        severity,
        message_id = ids::NOTICE,
        certrotd_event = "notice",
        threshold = threshold_str(threshold),
        severity = severity.as_str(),
        node,
        cert_name = name,
        cert_path = %path.display(),
        not_after = %rfc3339(not_after),
        "{message}"
    );
}

/// A rotation started.
pub fn rotation_started(node: &str, rotation_id: &str, certs: &[String], why: &str) {
    per_cert(certs, || {
        tracing::info!(
            message_id = ids::ROTATION_STARTED,
            certrotd_event = "rotation-started",
            node,
            rotation_id,
            "rotation {rotation_id} started for {}: {why}",
            certs.join(", ")
        );
    });
}

/// One certificate rotated and proven served.
pub fn rotated(node: &str, rotation_id: &str, name: &str, path: &Path, not_after: OffsetDateTime) {
    tracing::info!(
        message_id = ids::ROTATED,
        certrotd_event = "rotated",
        node,
        rotation_id,
        cert_name = name,
        cert_path = %path.display(),
        not_after = %rfc3339(not_after),
        "certificate {name} rotated; new certificate valid until {}",
        rfc3339(not_after)
    );
}

/// A rotation failed.
pub fn rotation_failed(node: &str, rotation_id: &str, certs: &[String], reason: &str) {
    per_cert(certs, || {
        tracing::error!(
            message_id = ids::ROTATION_FAILED,
            certrotd_event = "rotation-failed",
            node,
            rotation_id,
            "rotation {rotation_id} failed: {reason}"
        );
    });
}

/// A component was restarted.
pub fn restarted(node: &str, rotation_id: &str, component: &str, how: &str) {
    tracing::info!(
        message_id = ids::RESTARTED,
        certrotd_event = "restarted",
        node,
        rotation_id,
        component,
        "restarted {component}: {how}"
    );
}

/// A component was proved to serve its new certificates without a restart. (Its own kind:
/// `reloaded` is the daemon's configuration reload.)
pub fn component_reloaded(node: &str, rotation_id: &str, component: &str, proof: &str) {
    tracing::info!(
        message_id = ids::COMPONENT_RELOADED,
        certrotd_event = "component-reloaded",
        node,
        rotation_id,
        component,
        "{component} reloaded its certificates by itself, not restarted: {proof}"
    );
}

/// A certificate was replaced by someone else.
pub fn changed(node: &str, name: &str, path: &Path, not_after: Option<OffsetDateTime>) {
    tracing::info!(
        message_id = ids::CHANGED,
        certrotd_event = "changed",
        node,
        cert_name = name,
        cert_path = %path.display(),
        not_after = %not_after.map(rfc3339).unwrap_or_default(),
        "certificate {name} changed on disk (renewed by someone else?)"
    );
}

/// The configuration was reloaded, or the reload refused.
pub fn reloaded(node: &str, result: Result<(), &str>) {
    match result {
        Ok(()) => tracing::info!(
            message_id = ids::RELOADED,
            certrotd_event = "reloaded",
            node,
            "configuration reloaded"
        ),
        Err(e) => tracing::error!(
            message_id = ids::RELOADED,
            certrotd_event = "reload-refused",
            node,
            "configuration reload refused, keeping the old one: {e}"
        ),
    }
}

/// A rotation was deferred.
pub fn deferred(node: &str, certs: &[String], why: &str) {
    per_cert(certs, || {
        tracing::info!(
            message_id = ids::DEFERRED,
            certrotd_event = "deferred",
            node,
            "renewal of {} deferred: {why}",
            certs.join(", ")
        );
    });
}

/// This node's etcd server and peer certificates expired, so the cluster cannot be up: they are
/// renewed WITHOUT the lease. Error level: an operator must learn that the cluster was down.
pub fn recovery(node: &str, rotation_id: &str, certs: &[String], why: &str) {
    per_cert(certs, || {
        tracing::error!(
            message_id = ids::RECOVERY,
            certrotd_event = "recovery",
            node,
            rotation_id,
            "RECOVERY: rotation {rotation_id} renews {} WITHOUT the lease: {why}",
            certs.join(", ")
        );
    });
}
