//! A complete kubeadm-shaped control-plane node (v1.29+) written under a directory, for tests and
//! demos: the PKI, kubeconfigs, static pod manifests, the kubelet's own certificates and a
//! certrotd configuration, following `kubeadm-spec.md`.
//!
//! Time is a parameter so that tests can make already-expired or nearly-expired sets.
//!
//! By concern: `pki` issues the certificates and keys, `manifests` writes kubeconfigs and static
//! pod manifests; this file holds the options, the errors, the certrotd.toml and the writer.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use crate::duration;
use crate::pki::encode::{EncodeError, KeySpec};
use crate::pki::layout::KUBEADM_PKI;

mod manifests;
mod pki;
#[cfg(test)]
mod tests;

use pki::Node;

/// kubeadm backdates every certificate by this much to tolerate small clock jumps.
const BACKDATE: time::Duration = time::Duration::minutes(5);
/// client-go backdates the kubelet's self-signed serving certificate by an hour.
const KUBELET_SERVING_BACKDATE: time::Duration = time::Duration::hours(1);
/// kubeadm's default leaf lifetime (`CertificateValidityPeriod`).
const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(365 * 86_400);
/// kubeadm's default CA lifetime (`CACertificateValidityPeriod`).
const DEFAULT_CA_TTL: Duration = Duration::from_secs(3650 * 86_400);
/// Policy windows written into the sandbox's certrotd.toml for a full-length lifetime; shorter
/// lifetimes get proportionally smaller windows (see `LeafTiming::for_ttl`).
const NOTIFY_BEFORE: Duration = Duration::from_secs(60 * 86_400);
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
const EMERGENCY_BEFORE: Duration = Duration::from_secs(7 * 86_400);
/// The first address of kubeadm's default service subnet 10.96.0.0/12.
const SERVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1));
const API_PORT: u16 = 6443;
const KUBERNETES_VERSION: &str = "v1.30.14";
const ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.5.15-0";
const KUBELET_CLIENT_CURRENT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";

/// What kind of node to write.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The node's name (kubeadm's `nodeRegistration.name`); must be a DNS-1123 subdomain.
    pub node_name: String,
    /// The API server's advertise address; loopback by default so tests can run etcd on it.
    pub advertise_address: IpAddr,
    /// Lifetime of every leaf certificate, counted from `now`.
    pub leaf_ttl: Duration,
    /// Lifetime of the three CAs, counted from `now`.
    pub ca_ttl: Duration,
    /// Key algorithm of everything kubeadm generates (kubeadm's `encryptionAlgorithm`).
    pub key: KeySpec,
    /// Embed the kubelet's client certificate in kubelet.conf (kubeadm < 1.22) instead of
    /// pointing at kubelet-client-current.pem.
    pub kubelet_conf_embedded: bool,
    /// Write super-admin.conf, as kubeadm ≥ 1.29 does on the first control-plane node.
    pub super_admin: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            node_name: "sandbox-cp1".to_owned(),
            advertise_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            leaf_ttl: DEFAULT_LEAF_TTL,
            ca_ttl: DEFAULT_CA_TTL,
            key: KeySpec::Rsa(2048),
            kubelet_conf_embedded: false,
            super_admin: true,
        }
    }
}

/// A written sandbox node.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The node root (absolute, canonical): `dir/etc/kubernetes/...` is the node's `/etc/kubernetes/...`.
    pub dir: PathBuf,
    /// The certrotd configuration written for this node (`dir/certrotd.toml`).
    pub config_path: PathBuf,
    /// Every file written, symlink included, in the order written.
    pub files: Vec<PathBuf>,
}

impl Sandbox {
    /// Where a node path such as `/etc/kubernetes/pki/ca.crt` lives in this sandbox.
    pub fn path(&self, node_path: impl AsRef<Path>) -> PathBuf {
        under_root(&self.dir, node_path.as_ref())
    }
}

/// Why a sandbox could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The directory already holds a PKI, which a sandbox must never touch.
    #[error("writing a sandbox: refusing to touch {}, which already exists", path.display())]
    PkiExists {
        /// The existing PKI directory.
        path: PathBuf,
    },
    /// The options cannot describe a node.
    #[error("writing a sandbox: invalid options: {0}")]
    Options(String),
    /// A file system operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A key could not be made or encoded.
    #[error("making the key for {}", path.display())]
    Key {
        /// The file the key was for.
        path: PathBuf,
        /// The error.
        #[source]
        source: EncodeError,
    },
    /// A certificate could not be signed.
    #[error("signing the certificate for {}", path.display())]
    Sign {
        /// The file the certificate was for.
        path: PathBuf,
        /// The error.
        #[source]
        source: rcgen::Error,
    },
    /// The system's random number generator failed.
    #[error("drawing a random serial for {}: the system random number generator failed", path.display())]
    Random {
        /// The file the certificate was for.
        path: PathBuf,
    },
    /// A YAML document could not be serialised.
    #[error("serialising {}", path.display())]
    Yaml {
        /// The file being written.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_yaml_ng::Error,
    },
}

/// Writes a kubeadm v1.29+ control-plane node under `dir` (created if missing), as of `now`.
///
/// Refuses if `dir/etc/kubernetes/pki` exists, and never replaces any existing file (every file
/// is created exclusively). A failure part-way leaves what was already written in place.
pub fn write(
    dir: &Path,
    opts: &SandboxOptions,
    now: OffsetDateTime,
) -> Result<Sandbox, SandboxError> {
    validate(opts)?;
    // Certificates hold UTC; the kubelet file name is derived from the same instant.
    let times = Times::new(opts, now.to_offset(time::UtcOffset::UTC))?;

    fs::create_dir_all(dir).map_err(io_err("creating the sandbox directory", dir))?;
    let root = dir
        .canonicalize()
        .map_err(io_err("resolving the sandbox directory", dir))?;
    let pki = under_root(&root, Path::new(KUBEADM_PKI));
    match pki.symlink_metadata() {
        Ok(_) => return Err(SandboxError::PkiExists { path: pki }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("checking for an existing PKI at", &pki)(e)),
    }

    let mut node = Node {
        w: Writer {
            root,
            files: Vec::new(),
        },
        opts,
        times,
    };
    node.write_all()?;

    let config_path = node.w.root.join("certrotd.toml");
    let config = certrotd_config(&node.w.root, opts);
    node.w.file_at(&config_path, config.as_bytes(), 0o644)?;

    Ok(Sandbox {
        dir: node.w.root,
        config_path,
        files: node.w.files,
    })
}

fn validate(opts: &SandboxOptions) -> Result<(), SandboxError> {
    // kubeadm insists on a DNS-1123 subdomain; it also keeps the name safe in SANs, YAML and paths.
    let name = &opts.node_name;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(SandboxError::Options(format!(
            "node_name {name:?} is not a DNS-1123 subdomain"
        )));
    }
    if opts.leaf_ttl < Duration::from_secs(1) || opts.ca_ttl < Duration::from_secs(1) {
        return Err(SandboxError::Options(
            "leaf_ttl and ca_ttl must be at least one second".to_owned(),
        ));
    }
    Ok(())
}

/// The validity periods of everything in one sandbox.
struct Times {
    now: OffsetDateTime,
    not_before: OffsetDateTime,
    leaf_not_after: OffsetDateTime,
    ca_not_after: OffsetDateTime,
}

impl Times {
    fn new(opts: &SandboxOptions, now: OffsetDateTime) -> Result<Times, SandboxError> {
        let after = |ttl: Duration, what: &str| {
            time::Duration::try_from(ttl)
                .ok()
                .and_then(|ttl| now.checked_add(ttl))
                .ok_or_else(|| SandboxError::Options(format!("{what} is too long")))
        };
        Ok(Times {
            now,
            not_before: now - BACKDATE,
            leaf_not_after: after(opts.leaf_ttl, "leaf_ttl")?,
            ca_not_after: after(opts.ca_ttl, "ca_ttl")?,
        })
    }
}

/// The `[policy]` windows for a leaf lifetime: the defaults, shrunk to 60 %, 30 % and 10 % of
/// the lifetime when they would not fit, so a sandbox with short-lived leaves renews on its own.
struct LeafTiming {
    notify: Duration,
    renew: Duration,
    emergency: Duration,
    jitter: Duration,
}

impl LeafTiming {
    fn for_ttl(ttl: Duration) -> LeafTiming {
        let secs = ttl.as_secs();
        let part = |percent: u64| Duration::from_secs((secs * percent / 100).max(1));
        LeafTiming {
            notify: NOTIFY_BEFORE.min(part(60)),
            renew: RENEW_BEFORE.min(part(30)),
            emergency: EMERGENCY_BEFORE.min(part(10)),
            // One hour by default; a few percent of a short lifetime (jitter must stay inside
            // the renewal window).
            jitter: Duration::from_secs(3600).min(part(3)),
        }
    }
}

/// The certrotd.toml for this sandbox, with the config schema's keys.
fn certrotd_config(root: &Path, opts: &SandboxOptions) -> String {
    // toml's Display of a string value quotes and escapes it.
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let w = LeafTiming::for_ttl(opts.leaf_ttl);
    let mut out =
        String::from("# certrotd configuration for a sandbox node written by certrotd::sandbox.\n");
    // Writing to a String cannot fail.
    let _ = writeln!(out, "root = {}", quote(&root.to_string_lossy()));
    let _ = writeln!(out, "node_name = {}", quote(&opts.node_name));
    let _ = writeln!(out, "layout = \"kubeadm\"");
    let _ = writeln!(out, "state_dir = \"/var/lib/certrotd\"");
    let _ = writeln!(out, "\n[policy]");
    let _ = writeln!(out, "notify_before = \"{}\"", duration::format(w.notify));
    let _ = writeln!(out, "renew_before = \"{}\"", duration::format(w.renew));
    let _ = writeln!(
        out,
        "emergency_before = \"{}\"",
        duration::format(w.emergency)
    );
    let _ = writeln!(out, "jitter = \"{}\"", duration::format(w.jitter));
    let _ = writeln!(out, "\n[renew]");
    let _ = writeln!(out, "validity = \"{}\"", duration::format(opts.leaf_ttl));
    let _ = writeln!(out, "key_policy = \"new\"");
    let _ = writeln!(out, "backups_keep = 5");
    // A sandbox has no kubelet, static pods or systemd units to restart: renewed files are
    // installed and reported, and nothing running is touched (or probed).
    let _ = writeln!(out, "\n[restart]");
    let _ = writeln!(out, "static_pods = \"none\"");
    let _ = writeln!(out, "units = false");
    // No dwell between the phases of a CA rotation: a sandbox shows a whole one at once.
    let _ = writeln!(out, "\n[ca]");
    for key in ["dwell_trust_both", "dwell_issue_new", "dwell_distrust_old"] {
        let _ = writeln!(out, "{key} = \"0s\"");
    }
    out
}

fn under_root(root: &Path, node_path: &Path) -> PathBuf {
    match node_path.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => root.join(node_path),
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SandboxError {
    let path = path.to_owned();
    move |source| SandboxError::Io { op, path, source }
}

/// Creates files and directories under the root, never replacing anything.
struct Writer {
    root: PathBuf,
    files: Vec<PathBuf>,
}

impl Writer {
    fn path(&self, node_path: &str) -> PathBuf {
        under_root(&self.root, Path::new(node_path))
    }

    /// Creates the missing directories between the root and `path`'s parent, each 0755
    /// whatever the umask.
    fn parents(&self, path: &Path) -> Result<(), SandboxError> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        let mut missing: Vec<&Path> = parent
            .ancestors()
            .take_while(|p| *p != self.root && p.symlink_metadata().is_err())
            .collect();
        missing.reverse();
        for dir in missing {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(dir)
                .map_err(io_err("creating directory", dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .map_err(io_err("setting the mode of", dir))?;
        }
        Ok(())
    }

    fn file_at(&mut self, path: &Path, contents: &[u8], mode: u32) -> Result<(), SandboxError> {
        self.parents(path)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io_err("creating", path))?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("setting the mode of", path))?;
        file.write_all(contents).map_err(io_err("writing", path))?;
        self.files.push(path.to_owned());
        Ok(())
    }

    fn symlink_at(&mut self, path: &Path, target: &Path) -> Result<(), SandboxError> {
        self.parents(path)?;
        std::os::unix::fs::symlink(target, path).map_err(io_err("creating symlink", path))?;
        self.files.push(path.to_owned());
        Ok(())
    }
}
