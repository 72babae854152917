//! The series of enix's x509-certificate-exporter, filled the way the exporter fills them, so
//! its dashboards and alerts work on certrotd unchanged: one series per certificate (every
//! certificate of a bundle; a kubeconfig's cluster CA and user certificate each), the host path,
//! `embedded_kind`/`embedded_key` for kubeconfigs, the serial in decimal, and the first value of
//! each issuer and subject DN field, `""` where a label does not apply. The exporter's secret,
//! configmap and CA-bundle labels are left out: they are always empty for files, and Prometheus
//! treats an empty label as an absent one.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::X509Name;

use super::encode::{self, Kind, Labels};
use crate::inventory::{Entry, Inventory, Origin};
use crate::pki::cert::Cert;

/// One certificate's series: its label set (encoded) and validity.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// `{filename="…",…}`.
    pub labels: String,
    /// NotBefore, Unix seconds.
    pub not_before: i64,
    /// NotAfter, Unix seconds.
    pub not_after: i64,
}

/// What the exporter's series show of one inventory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// One per certificate, in inventory order.
    pub series: Vec<Series>,
    /// Files that held no readable certificate, by the exporter's `source_kind`.
    pub errors: Vec<&'static str>,
}

/// The exporter's view of `inv`; `root` is the node root, so kubeconfig paths show as the host
/// sees them (the exporter's `trimPathComponents`).
pub fn snapshot(inv: &Inventory, root: &Path) -> Snapshot {
    snapshot_cached(inv, root, &mut Cache::default())
}

/// The labels each certificate gives of itself (serial and DN fields), by its DER: a change to one
/// file of 10,000 then reads one certificate again, not all of them.
#[derive(Debug, Default)]
pub struct Cache(HashMap<Vec<u8>, String>);

/// [`snapshot`], reading only certificates `cache` has not seen; keeps in `cache` only the
/// certificates of `inv`.
pub fn snapshot_cached(inv: &Inventory, root: &Path, cache: &mut Cache) -> Snapshot {
    let mut fresh = HashMap::with_capacity(cache.0.len());
    let mut out = Snapshot::default();
    let mut seen = BTreeSet::new();
    for entry in inv.as_read() {
        // A bundle's further CAs are listed again as entries of their own; their series come
        // with the holder's `chain`, once.
        if matches!(entry.origin, Origin::Bundled { .. }) {
            continue;
        }
        let Some(cert) = &entry.cert else {
            out.errors.push(source_kind(entry));
            continue;
        };
        let place = Place::of(entry, root);
        for c in std::iter::once(cert).chain(&entry.chain) {
            let own = match cache.0.remove(&c.der).or_else(|| fresh.remove(&c.der)) {
                Some(labels) => labels,
                None => cert_labels(c),
            };
            let s = series(&place, c, &own);
            fresh.insert(c.der.clone(), own);
            // Two entries reading the same certificate through the same file would be one
            // series twice, which a scrape rejects; the exporter keeps one too.
            if seen.insert(s.labels.clone()) {
                out.series.push(s);
            }
        }
    }
    cache.0 = fresh;
    out
}

/// The exporter's `source_kind` for an entry's file.
fn source_kind(entry: &Entry) -> &'static str {
    match entry.origin {
        Origin::KubeconfigEmbedded { .. }
        | Origin::KubeconfigReference { .. }
        | Origin::KubeconfigCa { .. } => "kubeconfig",
        _ => "file",
    }
}

/// Where a certificate was read, as the exporter labels it.
struct Place {
    filepath: String,
    filename: String,
    embedded_kind: &'static str,
    embedded_key: String,
}

impl Place {
    fn of(entry: &Entry, root: &Path) -> Place {
        let (path, kind, key) = match &entry.origin {
            Origin::KubeconfigEmbedded { user, .. } => {
                (entry.node_path.clone(), "user", user.clone())
            }
            Origin::KubeconfigCa { cluster, .. } => {
                (entry.node_path.clone(), "cluster", cluster.clone())
            }
            // The exporter reads a referenced client certificate while reading the kubeconfig,
            // and labels it with the kubeconfig's path.
            Origin::KubeconfigReference { kubeconfig, user } => {
                (host_path(kubeconfig, root), "user", user.clone())
            }
            Origin::File | Origin::Combined | Origin::Bundled { .. } => {
                (entry.node_path.clone(), "", String::new())
            }
        };
        Place {
            filename: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            filepath: path.to_string_lossy().into_owned(),
            embedded_kind: kind,
            embedded_key: key,
        }
    }
}

/// `real` (under `root`) as the host sees it.
fn host_path(real: &Path, root: &Path) -> std::path::PathBuf {
    match real.strip_prefix(root) {
        Ok(rest) if root != Path::new("/") => Path::new("/").join(rest),
        _ => real.to_owned(),
    }
}

fn series(place: &Place, cert: &Cert, own: &str) -> Series {
    let labels = Labels::new()
        .with("filename", &place.filename)
        .with("filepath", &place.filepath)
        .with("embedded_kind", place.embedded_kind)
        .with("embedded_key", &place.embedded_key)
        .raw(own);
    Series {
        labels: labels.finish(),
        not_before: cert.not_before.unix_timestamp(),
        not_after: cert.not_after.unix_timestamp(),
    }
}

/// The labels a certificate gives of itself, encoded: `serial_number` and the DN fields.
fn cert_labels(cert: &Cert) -> String {
    let mut labels = Labels::new();
    // The inventory parsed this DER already; reading it again here keeps the exporter's
    // conventions (decimal serial, DN fields one by one) out of the PKI layer.
    match X509Certificate::from_der(&cert.der) {
        Ok((_, x)) => {
            labels = labels.with("serial_number", &x.tbs_certificate.serial.to_string());
            labels = dn(labels, "issuer", x.issuer());
            labels = dn(labels, "subject", x.subject());
        }
        Err(_) => {
            labels = labels.with("serial_number", "");
        }
    }
    labels.inner()
}

/// `{prefix}_C`, `_ST`, `_L`, `_O`, `_OU`, `_CN`: the first value of each, `""` when absent.
fn dn(mut labels: Labels, prefix: &str, name: &X509Name<'_>) -> Labels {
    fn first<'a>(
        mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    ) -> String {
        it.next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
    let fields = [
        ("C", first(name.iter_country())),
        ("ST", first(name.iter_state_or_province())),
        ("L", first(name.iter_locality())),
        ("O", first(name.iter_organization())),
        ("OU", first(name.iter_organizational_unit())),
        ("CN", first(name.iter_common_name())),
    ];
    for (field, value) in fields {
        labels = labels.with(&format!("{prefix}_{field}"), &value);
    }
    labels
}

/// Writes the exporter's families for `snap` at `now`; `source_errors` is the running count of
/// failed reads per `source_kind` (the exporter counts one per unreadable file per scrape, so
/// `increase(x509_source_errors_total[15m]) > 0` keeps firing while a file stays unreadable).
pub fn render(out: &mut String, snap: &Snapshot, source_errors: &[(&str, u64)], now: i64) {
    // One sample a certificate in each of these families.
    type Value = fn(&Series, i64) -> f64;
    let per_cert: [(&str, &str, Value); 3] = [
        (
            "x509_cert_not_after",
            "Certificate NotAfter, Unix seconds (x509-certificate-exporter compatible)",
            |s, _| s.not_after as f64,
        ),
        (
            "x509_cert_not_before",
            "Certificate NotBefore, Unix seconds (x509-certificate-exporter compatible)",
            |s, _| s.not_before as f64,
        ),
        (
            "x509_cert_expired",
            "1 once the certificate's NotAfter has passed (x509-certificate-exporter compatible)",
            |s, now| if now > s.not_after { 1.0 } else { 0.0 },
        ),
    ];
    for (name, help, value) in per_cert {
        encode::family(out, name, Kind::Gauge, help);
        for s in &snap.series {
            encode::sample(out, name, &s.labels, value(s, now));
        }
    }
    encode::family(
        out,
        "x509_read_errors",
        Kind::Gauge,
        "Files that held no readable certificate at the last inventory (exporter v3 compatible)",
    );
    encode::sample(out, "x509_read_errors", "", snap.errors.len() as f64);
    encode::family(
        out,
        "x509_source_errors_total",
        Kind::Counter,
        "Unreadable certificate files, counted once per file per scrape (exporter v4 compatible)",
    );
    for (kind, n) in source_errors {
        let labels = Labels::new()
            .with("source_kind", kind)
            .with("source_name", "certrotd")
            .with("reason", "unreadable")
            .finish();
        encode::sample(out, "x509_source_errors_total", &labels, *n as f64);
    }
}
