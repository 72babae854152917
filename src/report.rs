//! `certrotd check` output: kubeadm-style tables for people and one JSON object for programs.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use time::OffsetDateTime;

use crate::inventory::{Entry, Inventory, KeyPairEntry, KubeletInfo, Origin};
use crate::pki::cert::{KeyAlgorithm, San};
use crate::pki::layout::{Component, Layout};
use crate::policy::{self, Status, Thresholds};
use crate::timefmt::{kubeadm_time, rfc3339};

/// One certificate as `check -o json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct CertReport {
    /// kubeadm-style name or file name.
    pub name: String,
    /// Real path of the file holding it.
    pub path: PathBuf,
    /// "ca" or "leaf".
    pub kind: &'static str,
    /// How it is held (file, combined, bundled, kubeconfig-embedded, …).
    pub origin: Origin,
    /// Subject CN.
    pub subject_cn: Option<String>,
    /// Subject O values, in order.
    pub organizations: Vec<String>,
    /// Issuer DN.
    pub issuer: Option<String>,
    /// Serial in hex.
    pub serial: Option<String>,
    /// SANs as `DNS:x` / `IP:x` / `URI:x`.
    pub sans: Vec<San>,
    /// Key usages.
    pub key_usages: Vec<String>,
    /// Extended key usages.
    pub ext_key_usages: Vec<String>,
    /// NotBefore, RFC 3339.
    pub not_before: Option<String>,
    /// NotAfter, RFC 3339.
    pub not_after: Option<String>,
    /// Seconds until NotAfter.
    pub residual_seconds: Option<i64>,
    /// Algorithm and size of the public key.
    pub key_algorithm: Option<KeyAlgorithm>,
    /// Where the private key is.
    pub key_path: Option<PathBuf>,
    /// true, false, or null when there is no key.
    pub key_match: Option<bool>,
    /// Name of the CA that signed it, found by signature.
    pub signer: Option<String>,
    /// Whether the signing CA's key is absent from the node.
    pub externally_managed: bool,
    /// Components that read it.
    pub consumers: Vec<Component>,
    /// ok, notify, renew, expired or invalid.
    pub status: Status,
    /// What is wrong.
    pub problems: Vec<String>,
}

/// The whole `check -o json` document.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The node root scanned.
    pub root: PathBuf,
    /// When the check ran.
    pub checked_at: String,
    /// Layouts found.
    pub layouts: Vec<Layout>,
    /// Every certificate, leaves and CAs.
    pub certificates: Vec<CertReport>,
    /// Key pairs without certificates (sa.key/sa.pub).
    pub key_pairs: Vec<KeyPairEntry>,
    /// The kubelet's own rotation setting.
    pub kubelet: KubeletInfo,
    /// Problems not tied to one certificate.
    pub warnings: Vec<String>,
}

impl CheckReport {
    /// Builds the report from an inventory at `now`.
    pub fn new(root: PathBuf, inv: &Inventory, windows: &Thresholds, now: OffsetDateTime) -> Self {
        CheckReport {
            root,
            checked_at: rfc3339(now),
            layouts: inv.layouts.clone(),
            certificates: inv
                .entries
                .iter()
                .map(|e| cert_report(e, windows, now))
                .collect(),
            key_pairs: inv.key_pairs.clone(),
            kubelet: inv.kubelet.clone(),
            warnings: inv.warnings.clone(),
        }
    }

    /// Whether anything is expired, invalid or due for renewal (exit code 1).
    pub fn needs_attention(&self) -> bool {
        self.certificates.iter().any(|c| c.status.needs_attention())
            || self.key_pairs.iter().any(|k| !k.problems.is_empty())
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as kubeadm-style tables.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
        // Leaves and CAs share their columns but the signer, which only a leaf shows.
        let rows = |kind: &str, signer: bool| -> Vec<Vec<String>> {
            self.certificates
                .iter()
                .filter(|c| c.kind == kind)
                .map(|c| {
                    let residual = c.residual_seconds.map(crate::duration::format_residual);
                    let mut row = vec![
                        c.name.clone(),
                        c.not_after_kubeadm(),
                        residual.unwrap_or_else(|| "-".into()),
                    ];
                    if signer {
                        row.push(c.signer.clone().unwrap_or_else(|| "-".into()));
                    }
                    row.extend([yes_no(c.externally_managed), c.status.to_string()]);
                    row
                })
                .collect()
        };
        let (expires, residual, external, status) =
            ("EXPIRES", "RESIDUAL TIME", "EXTERNALLY MANAGED", "STATUS");
        let ca = "CERTIFICATE AUTHORITY";
        let leaf_header = ["CERTIFICATE", expires, residual, ca, external, status];
        table(&mut out, &leaf_header, &rows("leaf", true));
        out.push('\n');
        let ca_header = [ca, expires, residual, external, status];
        table(&mut out, &ca_header, &rows("ca", false));
        for k in &self.key_pairs {
            let state = match k.key_match {
                Some(true) => "public and private key match",
                Some(false) => "public and private key DO NOT match",
                None => "unreadable",
            };
            let _ = writeln!(
                out,
                "\nKEY PAIR {} ({}): {state}; no expiry",
                k.name,
                k.key_algorithm.as_deref().unwrap_or("unknown")
            );
        }
        if let Some(rotates) = self.kubelet.rotate_certificates {
            let _ = writeln!(
                out,
                "\nkubelet rotates its own client certificate: {}",
                yes_no(rotates)
            );
        }
        let problems: Vec<String> = self
            .certificates
            .iter()
            .flat_map(|c| c.problems.iter().map(move |p| format!("{}: {p}", c.name)))
            .chain(
                self.key_pairs
                    .iter()
                    .flat_map(|k| k.problems.iter().map(move |p| format!("{}: {p}", k.name))),
            )
            .chain(self.warnings.iter().map(|w| format!("warning: {w}")))
            .collect();
        section(&mut out, "PROBLEMS", &problems);
        out
    }
}

impl CertReport {
    fn not_after_kubeadm(&self) -> String {
        self.not_after
            .as_deref()
            .and_then(|s| {
                OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(kubeadm_time)
            .unwrap_or_else(|| "-".into())
    }
}

fn cert_report(e: &Entry, windows: &Thresholds, now: OffsetDateTime) -> CertReport {
    let a = policy::assess(e, windows, now);
    let c = e.cert.as_ref();
    let mut problems = e.problems.clone();
    problems.extend(a.problems);
    CertReport {
        name: e.name.clone(),
        path: e.path.clone(),
        kind: if e.is_ca() { "ca" } else { "leaf" },
        origin: e.origin.clone(),
        subject_cn: c.and_then(|c| c.subject_cn.clone()),
        organizations: c.map(|c| c.organizations.clone()).unwrap_or_default(),
        issuer: c.map(|c| c.issuer.clone()),
        serial: c.map(|c| c.serial.clone()),
        sans: c.map(|c| c.sans.clone()).unwrap_or_default(),
        key_usages: c.map(|c| c.key_usages.clone()).unwrap_or_default(),
        ext_key_usages: c.map(|c| c.ext_key_usages.clone()).unwrap_or_default(),
        not_before: c.map(|c| rfc3339(c.not_before)),
        not_after: c.map(|c| rfc3339(c.not_after)),
        residual_seconds: a.residual_seconds,
        key_algorithm: c.map(|c| c.key_algorithm),
        key_path: e.key_path.clone(),
        key_match: e.key.as_match(),
        signer: e.signer.clone(),
        externally_managed: e.externally_managed,
        consumers: e.consumers.clone(),
        status: a.status,
        problems,
    }
}

/// A titled list after a blank line, one indented item a line; nothing at all when it is empty.
pub fn section(out: &mut String, title: &str, items: &[impl std::fmt::Display]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{title}");
    for item in items {
        let _ = writeln!(out, "  {item}");
    }
}

/// Left-aligned columns separated by three spaces, as kubeadm prints them.
pub fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}   ");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(out, header.to_vec());
    for r in rows {
        line(out, r.iter().map(String::as_str).collect());
    }
}
