//! Configuration: TOML files → validated [`Settings`].
//!
//! Loading goes in stages, as in zincati:
//! 1. each file (the main file, then `conf.d/*.toml` in lexical order) is deserialized on its own
//!    into a layer of optional values, so a syntax error, a wrong type or an unknown key is
//!    reported against the file that has it, even if a later file would override the key;
//! 2. the layers are merged in order, key by key (tables merge, arrays replace), each value
//!    remembering the file and the bytes it was written at;
//! 3. the merged layer is resolved against the defaults and validated, and a value that breaks a
//!    rule is reported at the file, line and column where it was written.
//!
//! Adding a table `[x]` takes an `XSettings` with its `Default`, an `XLayer` with one
//! `Option<Val<_>>` per key plus `merge` and `resolve`, and one line each in [`Settings`],
//! `FileLayer`, `FileLayer::merge` and `Sources::resolve`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use crate::duration;
use crate::pki::layout::Component as PkiComponent;

mod issuer;
mod metrics;
pub use issuer::{CaChoice, CaOverride, IssuerMode, IssuerSettings, RemoteCa};
pub use metrics::MetricsSettings;

/// The main configuration file's node path; `--root` moves it inside the root.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/certrotd/certrotd.toml";

/// Where certrotd keeps its state unless `state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/certrotd";

/// The control socket's node path unless `[control] socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/certrotd/certrotd.sock";

/// The directory, next to the main file, whose `*.toml` drop-ins override it.
pub const DROP_IN_DIR: &str = "conf.d";

/// The validated configuration certrotd runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// The directory the node's files are under: absolute, symlinks resolved.
    pub root: PathBuf,
    /// This node's Kubernetes name: `node_name` as written, or the lowercased hostname.
    pub node_name: String,
    /// Which distribution's file layout to expect.
    pub layout: LayoutChoice,
    /// Where certrotd keeps its own state, as a node path (see [`Settings::in_root`]).
    pub state_dir: PathBuf,
    /// `[inventory]`: what to watch beyond the layout's own files.
    pub inventory: InventorySettings,
    /// `[policy]`: when to warn and when to renew.
    pub policy: PolicySettings,
    /// `[renew]`: what renewed certificates look like.
    pub renew: RenewSettings,
    /// `[restart]`: how the components that read a renewed certificate are restarted.
    pub restart: RestartSettings,
    /// `[control]`: the socket `certrotd status`, `rotate` and `history` talk to.
    pub control: ControlSettings,
    /// `[probe]`: how a restarted component is proved to serve its new certificate.
    pub probe: ProbeSettings,
    /// `[issuer]`: who signs renewed certificates (local CA key or a cfssl server), per CA.
    pub issuer: IssuerSettings,
    /// `[lease]`: how this node takes turns with its peers.
    pub lease: LeaseSettings,
    /// `[metrics]`: Prometheus exposition (off unless configured).
    pub metrics: MetricsSettings,
    /// The configuration files read, in the order they were applied.
    #[serde(skip)]
    pub sources: Vec<PathBuf>,
}

impl Default for Settings {
    /// The documented defaults, with `node_name` resolved as `load` resolves it.
    fn default() -> Self {
        Settings {
            root: PathBuf::from("/"),
            // An unusable hostname is reported by `load`; a default has nowhere to report it.
            node_name: machine_node_name().unwrap_or_default(),
            layout: LayoutChoice::default(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            inventory: InventorySettings::default(),
            policy: PolicySettings::default(),
            renew: RenewSettings::default(),
            restart: RestartSettings::default(),
            control: ControlSettings::default(),
            probe: ProbeSettings::default(),
            issuer: IssuerSettings::default(),
            lease: LeaseSettings::default(),
            metrics: MetricsSettings::default(),
            sources: Vec::new(),
        }
    }
}

impl Settings {
    /// Maps a node path (e.g. `/etc/kubernetes/pki`) to where it is under `root`.
    ///
    /// Purely lexical: it neither resolves symlinks nor refuses `..`, so it is for paths this
    /// crate built or validated; following untrusted paths safely is the sandbox's job.
    pub fn in_root(&self, node_path: impl AsRef<Path>) -> PathBuf {
        let relative: PathBuf = node_path
            .as_ref()
            .components()
            .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
            .collect();
        if relative.as_os_str().is_empty() {
            // `join("")` would append a trailing slash.
            self.root.clone()
        } else {
            self.root.join(relative)
        }
    }
}

/// Which distribution's file layout the node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutChoice {
    /// Detect it from the files present.
    #[default]
    Auto,
    /// kubeadm: `/etc/kubernetes/pki` and friends.
    Kubeadm,
    /// RKE2: `/var/lib/rancher/rke2`.
    Rke2,
    /// k3s: `/var/lib/rancher/k3s`.
    K3s,
}

impl LayoutChoice {
    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutChoice::Auto => "auto",
            LayoutChoice::Kubeadm => "kubeadm",
            LayoutChoice::Rke2 => "rke2",
            LayoutChoice::K3s => "k3s",
        }
    }

    /// The layouts to scan: `None` means detect them.
    pub fn layouts(self) -> Option<Vec<crate::pki::layout::Layout>> {
        use crate::pki::layout::Layout;
        match self {
            LayoutChoice::Auto => None,
            LayoutChoice::Kubeadm => Some(vec![Layout::Kubeadm]),
            LayoutChoice::Rke2 => Some(vec![Layout::Rke2]),
            LayoutChoice::K3s => Some(vec![Layout::K3s]),
        }
    }
}

impl fmt::Display for LayoutChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a renewed certificate gets a new private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPolicy {
    /// Generate a new key with each renewal.
    #[default]
    New,
    /// Keep the existing key, as `kubeadm certs renew` does.
    Reuse,
}

impl KeyPolicy {
    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPolicy::New => "new",
            KeyPolicy::Reuse => "reuse",
        }
    }
}

impl fmt::Display for KeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[inventory]`: what to watch beyond the layout's own files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InventorySettings {
    /// Further certificate files: absolute node paths or glob patterns.
    pub extra_paths: Vec<String>,
}

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

/// `[renew]`: what renewed certificates look like and what is kept of the old ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenewSettings {
    /// Lifetime of a renewed leaf (the issuer clamps it to the CA's NotAfter).
    #[serde(with = "duration::human")]
    pub validity: Duration,
    /// Whether renewal generates a new key.
    pub key_policy: KeyPolicy,
    /// How many rotation backups to keep under `state_dir/backups`.
    pub backups_keep: usize,
}

/// `[restart]`: how the components that read a renewed certificate are restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartSettings {
    /// How kubeadm's static pods are restarted (`None`: they are not).
    pub static_pods: Option<StaticPodRestart>,
    /// Whether systemd units (kubelet, an external etcd, rke2, k3s) are restarted.
    pub units: bool,
    /// The D-Bus address of systemd's bus; empty is the system bus.
    pub dbus_address: String,
    /// How long a restart job may take.
    #[serde(with = "duration::human")]
    pub job_timeout: Duration,
    /// Whether a component that re-reads its certificates by itself is given the chance (proved,
    /// never assumed) before it is restarted; `false` restarts always (see `restart::reload`).
    pub prefer_reload: bool,
    /// How long such a component has to serve its new certificates before it is restarted.
    #[serde(with = "duration::human")]
    pub reload_period: Duration,
}

/// How long a restart job may take unless `[restart] job_timeout` says otherwise.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a component that re-reads its files is given by default to serve the new
/// certificate before it is restarted: the slowest self-reloading entry of `restart::reload`
/// re-reads within a minute (the Kubernetes dynamic-certificate controllers' resync), plus a
/// margin. etcd serves the new file on the very next handshake, so the happy path never waits
/// this long.
pub const DEFAULT_RELOAD_PERIOD: Duration = Duration::from_secs(75);

/// How kubeadm's static pods are restarted: the two of `restart::Strategy`'s ways that apply to
/// a static pod, named as the configuration writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StaticPodRestart {
    /// Stop the pod's container through its systemd scope; the kubelet starts it again.
    KillScope,
    /// Annotate the static pod's manifest; the kubelet recreates the pod.
    Manifest,
}

impl Default for RestartSettings {
    fn default() -> Self {
        RestartSettings {
            static_pods: Some(StaticPodRestart::KillScope),
            units: true,
            dbus_address: String::new(),
            job_timeout: DEFAULT_JOB_TIMEOUT,
            prefer_reload: true,
            reload_period: DEFAULT_RELOAD_PERIOD,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [restart] table")]
struct RestartLayer {
    static_pods: Option<Val<String>>,
    units: Option<Val<bool>>,
    dbus_address: Option<Val<String>>,
    job_timeout: Option<Val<DurationText>>,
    prefer_reload: Option<Val<bool>>,
    reload_period: Option<Val<DurationText>>,
}

impl RestartLayer {
    fn merge(&mut self, later: RestartLayer, file: usize) {
        over(&mut self.static_pods, later.static_pods, file);
        over(&mut self.units, later.units, file);
        over(&mut self.dbus_address, later.dbus_address, file);
        over(&mut self.job_timeout, later.job_timeout, file);
        over(&mut self.prefer_reload, later.prefer_reload, file);
        over(&mut self.reload_period, later.reload_period, file);
    }

    fn resolve(&self, sources: &Sources) -> Result<RestartSettings, ConfigError> {
        let mut settings = RestartSettings::default();
        if let Some(w) = &self.static_pods {
            settings.static_pods = match w.value.as_str() {
                "kill-scope" => Some(StaticPodRestart::KillScope),
                "manifest" => Some(StaticPodRestart::Manifest),
                "none" => None,
                other => {
                    return Err(sources.invalid(
                        &w.at,
                        format!(
                            "restart.static_pods = {other:?}: expected \"kill-scope\", \"manifest\" or \"none\""
                        ),
                    ));
                }
            };
        }
        if let Some(w) = &self.units {
            settings.units = w.value;
        }
        if let Some(w) = &self.dbus_address {
            settings.dbus_address = w.value.clone();
        }
        settings.job_timeout = sources.duration(
            "restart.job_timeout",
            &self.job_timeout,
            settings.job_timeout,
        )?;
        if let Some(w) = &self.prefer_reload {
            settings.prefer_reload = w.value;
        }
        settings.reload_period = sources.duration(
            "restart.reload_period",
            &self.reload_period,
            settings.reload_period,
        )?;
        Ok(settings)
    }
}

impl Default for RenewSettings {
    fn default() -> Self {
        RenewSettings {
            validity: days(365),
            key_policy: KeyPolicy::default(),
            backups_keep: 10,
        }
    }
}

/// `[control]`: the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlSettings {
    /// The socket's node path (see [`Settings::in_root`]).
    pub socket: PathBuf,
    /// Its permission bits, set before it accepts connections; written as octal text ("0660").
    #[serde(serialize_with = "octal_mode")]
    pub socket_mode: u32,
    /// The group it is given; empty keeps the daemon's own group (root's).
    pub socket_group: String,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_mode: 0o660,
            socket_group: String::new(),
        }
    }
}

/// `[probe]`: how a restarted component is proved to serve its new certificate and to be healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeSettings {
    /// How long a restarted component has to serve its new certificate and answer its health
    /// check before the rotation is rolled back.
    #[serde(with = "duration::human")]
    pub timeout: Duration,
    /// Where each component serves TLS, and which certificate it serves there.
    pub endpoints: BTreeMap<PkiComponent, Vec<EndpointSpec>>,
    /// Where each component's health check is asked; the kind of check follows the component.
    pub health: BTreeMap<PkiComponent, SocketAddr>,
}

/// The kubelet's read-only health port (`healthzPort`).
pub const KUBELET_HEALTHZ_PORT: u16 = 10248;

impl Default for ProbeSettings {
    fn default() -> Self {
        use PkiComponent::*;
        let local = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let at = |port, serves: &str| EndpointSpec {
            host: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port,
            serves: serves.to_owned(),
            server_name: None,
        };
        ProbeSettings {
            timeout: Duration::from_secs(120),
            endpoints: BTreeMap::from([
                (KubeApiserver, vec![at(6443, "apiserver")]),
                (
                    Etcd,
                    vec![
                        at(2379, "etcd-server"),
                        // kubeadm's etcd listens for peers on the node's address only, which the
                        // peer certificate names; loopback would be refused.
                        EndpointSpec {
                            host: None,
                            ..at(2380, "etcd-peer")
                        },
                    ],
                ),
                (Kubelet, vec![at(10250, "kubelet-serving")]),
            ]),
            health: BTreeMap::from([
                (KubeApiserver, local(6443)),
                (KubeControllerManager, local(10257)),
                (KubeScheduler, local(10259)),
                (Etcd, local(2379)),
                (Kubelet, local(KUBELET_HEALTHZ_PORT)),
                (Rke2, local(6443)),
                (K3s, local(6443)),
            ]),
        }
    }
}

impl ControlSettings {
    /// The group to give the socket, if any.
    pub fn group(&self) -> Option<&str> {
        Some(self.socket_group.as_str()).filter(|g| !g.is_empty())
    }
}

/// Writes a mode as the configuration spells it: "0660".
fn octal_mode<S: serde::Serializer>(mode: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{mode:04o}"))
}

/// One TLS endpoint of a component and the certificate it serves there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// The address to connect to; absent: the first IP address the served certificate names,
    /// preferring one that is not loopback (where a component listens on the node's address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
    /// The TCP port.
    pub port: u16,
    /// The certificate served there, as `certrotd check` names it (`etcd-server`, `apiserver`).
    pub serves: String,
    /// A name the served certificate must be valid for; absent: only its chain is checked, since
    /// the serial already shows it is the certificate certrotd installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 60 * 60)
}

/// What [`load`] reads: the command line's `--config` and `--root`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    /// `--config`: the main file, which must then exist. Without it the main file is
    /// [`DEFAULT_CONFIG_PATH`] inside the root, and may be absent.
    pub config: Option<&'a Path>,
    /// `--root`: overrides the files' `root`, and is where the default main file is looked for.
    pub root: Option<&'a Path>,
}

/// A place in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column (counted in characters), when the error has a place in the file.
    pub line_column: Option<(usize, usize)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.line_column {
            write!(f, ":{line}:{column}")?;
        }
        Ok(())
    }
}

/// Why the configuration could not be loaded.
///
/// The underlying error is part of the message rather than a `source()`, so that printing the
/// chain does not say it twice.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file or the drop-in directory could not be read.
    #[error("reading {what} {}: {error}", path.display())]
    Read {
        /// What was being read: "config file", "drop-in directory", ...
        what: &'static str,
        /// The path that could not be read.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A file's syntax, a value's type, an unknown key, or a value that breaks a rule.
    #[error("{}{message}", at.as_ref().map(|at| format!("{at}: ")).unwrap_or_default())]
    Invalid {
        /// Where the offending value was written; `None` when it came from the command line,
        /// the machine or the defaults.
        at: Option<Location>,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// Where the offending value was written, if it was written in a file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { at, .. } => at.as_ref(),
        }
    }
}

/// Reads the main file and its drop-ins and validates the result.
///
/// No main file (unless `--config` named it) and no drop-ins give the defaults.
pub fn load(opts: &LoadOptions) -> Result<Settings, ConfigError> {
    let main = match opts.config {
        Some(path) => absolute(path, "config file")?,
        None => absolute(opts.root.unwrap_or(Path::new("/")), "root directory")?
            .join(DEFAULT_CONFIG_PATH.trim_start_matches('/')),
    };
    let mut sources = Sources::default();
    match fs::read(&main) {
        Ok(bytes) => sources.add(main.clone(), bytes)?,
        Err(error) if error.kind() == io::ErrorKind::NotFound && opts.config.is_none() => {}
        Err(error) => {
            return Err(ConfigError::Read {
                what: "config file",
                path: main,
                error,
            });
        }
    }
    let drop_in_dir = main.parent().unwrap_or(Path::new("/")).join(DROP_IN_DIR);
    for path in drop_ins(&drop_in_dir)? {
        let bytes = fs::read(&path).map_err(|error| ConfigError::Read {
            what: "drop-in",
            path: path.clone(),
            error,
        })?;
        sources.add(path, bytes)?;
    }
    sources.settle(opts)
}

/// Validates `bytes` as the only configuration file, written at `path` (which places a relative
/// `root` and names the file in errors; it is not read), with no drop-ins: what [`load`] does
/// with each file, for callers (the fuzz targets, [`crate::fuzzing`]) that hold the text.
pub fn from_bytes(path: &Path, bytes: &[u8], opts: &LoadOptions) -> Result<Settings, ConfigError> {
    let mut sources = Sources::default();
    sources.add(path.to_path_buf(), bytes.to_vec())?;
    sources.settle(opts)
}

/// Makes a path absolute without resolving symlinks, so that `sources` and a relative `root`
/// follow the path the operator gave.
fn absolute(path: &Path, what: &'static str) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|error| ConfigError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

/// The drop-ins in `dir`, in lexical order of their names; none if `dir` does not exist.
fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_error = |error| ConfigError::Read {
        what: "drop-in directory",
        path: dir.to_path_buf(),
        error,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(read_error(error)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry.map_err(read_error)?.file_name();
        let bytes = name.as_encoded_bytes();
        // Hidden names are editors' leftovers, e.g. emacs's `.#10-x.toml` lock links.
        if bytes.starts_with(b".") || !bytes.ends_with(b".toml") {
            continue;
        }
        let path = dir.join(&name);
        // Follows symlinks: drop-ins are often links into a config-management tree, and a
        // dangling one is an error worth seeing rather than a drop-in silently missing.
        let metadata = fs::metadata(&path).map_err(|error| ConfigError::Read {
            what: "drop-in",
            path: path.clone(),
            error,
        })?;
        if metadata.is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.into_iter().map(|name| dir.join(name)).collect())
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// This machine's hostname as kubelet turns it into a node name: trimmed and lowercased.
fn machine_node_name() -> Result<String, String> {
    let hostname = nix::unistd::gethostname().map_err(|e| format!("reading the hostname: {e}"))?;
    let hostname = hostname
        .into_string()
        .map_err(|raw| format!("the hostname {raw:?} is not UTF-8"))?;
    Ok(hostname.trim().to_lowercase())
}

/// Checks a Kubernetes node name: an RFC 1123 subdomain, as the API server requires.
fn check_node_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (a leading, trailing or doubled '.')".to_owned());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("only lowercase letters, digits, '-' and '.' are allowed".to_owned());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "label {label:?} must start and end with a letter or digit"
            ));
        }
    }
    Ok(())
}

/// Checks a node path: absolute, and unable to climb out of the root.
fn check_node_path(path: &Path) -> Result<(), String> {
    if !path.has_root() {
        return Err("must be an absolute node path, such as /var/lib/certrotd".to_owned());
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("must not contain '..': node paths stay inside root".to_owned());
    }
    Ok(())
}

/// Where a value was written: which file (an index into the files read) and which bytes.
#[derive(Debug, Clone)]
struct Origin {
    file: usize,
    span: Range<usize>,
}

/// A value as a file wrote it, and where.
#[derive(Debug, Clone)]
struct Val<T> {
    value: T,
    at: Origin,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Val<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<T>::deserialize(deserializer)?;
        Ok(Val {
            // Deserialization cannot know the file; `over` sets it when the layer is merged.
            at: Origin {
                file: usize::MAX,
                span: spanned.span(),
            },
            value: spanned.into_inner(),
        })
    }
}

/// Merges one key: a value the later file wrote replaces the earlier one.
fn over<T>(slot: &mut Option<Val<T>>, later: Option<Val<T>>, file: usize) {
    if let Some(mut value) = later {
        value.at.file = file;
        *slot = Some(value);
    }
}

/// A duration as written; parsed during resolution, where the error can name the key.
#[derive(Debug, Clone)]
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a duration such as "30d" or "1d 12h""#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DurationText, E> {
                Ok(DurationText(s.to_owned()))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// One file's worth of settings, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a certrotd configuration table")]
struct FileLayer {
    root: Option<Val<PathBuf>>,
    node_name: Option<Val<String>>,
    layout: Option<Val<LayoutChoice>>,
    state_dir: Option<Val<PathBuf>>,
    #[serde(default)]
    inventory: InventoryLayer,
    #[serde(default)]
    policy: PolicyLayer,
    #[serde(default)]
    renew: RenewLayer,
    #[serde(default)]
    restart: RestartLayer,
    #[serde(default)]
    control: ControlLayer,
    #[serde(default)]
    probe: ProbeLayer,
    #[serde(default)]
    issuer: issuer::IssuerLayer,
    #[serde(default)]
    lease: LeaseLayer,
    #[serde(default)]
    metrics: metrics::MetricsLayer,
}

impl FileLayer {
    fn merge(&mut self, later: FileLayer, file: usize) {
        over(&mut self.root, later.root, file);
        over(&mut self.node_name, later.node_name, file);
        over(&mut self.layout, later.layout, file);
        over(&mut self.state_dir, later.state_dir, file);
        self.inventory.merge(later.inventory, file);
        self.policy.merge(later.policy, file);
        self.renew.merge(later.renew, file);
        self.restart.merge(later.restart, file);
        self.control.merge(later.control, file);
        self.probe.merge(later.probe, file);
        self.issuer.merge(later.issuer, file);
        self.lease.merge(later.lease, file);
        self.metrics.merge(later.metrics, file);
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [inventory] table")]
struct InventoryLayer {
    extra_paths: Option<Val<Vec<Spanned<String>>>>,
}

impl InventoryLayer {
    fn merge(&mut self, later: InventoryLayer, file: usize) {
        over(&mut self.extra_paths, later.extra_paths, file);
    }

    fn resolve(&self, sources: &Sources) -> Result<InventorySettings, ConfigError> {
        let mut settings = InventorySettings::default();
        if let Some(paths) = &self.extra_paths {
            for path in &paths.value {
                let at = Origin {
                    file: paths.at.file,
                    span: path.span(),
                };
                let text = path.get_ref();
                check_node_path(Path::new(text))
                    .and_then(|()| glob::Pattern::new(text).map_err(|e| e.to_string()))
                    .map_err(|e| {
                        sources.invalid(&at, format!("inventory.extra_paths: {text:?}: {e}"))
                    })?;
                settings.extra_paths.push(text.clone());
            }
        }
        Ok(settings)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [policy] table")]
struct PolicyLayer {
    notify_before: Option<Val<DurationText>>,
    renew_before: Option<Val<DurationText>>,
    emergency_before: Option<Val<DurationText>>,
    jitter: Option<Val<DurationText>>,
    maintenance_windows: Option<Val<Vec<String>>>,
    timezone: Option<Val<String>>,
}

impl PolicyLayer {
    fn merge(&mut self, later: PolicyLayer, file: usize) {
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

    fn resolve(&self, sources: &Sources) -> Result<PolicySettings, ConfigError> {
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [renew] table")]
struct RenewLayer {
    validity: Option<Val<DurationText>>,
    key_policy: Option<Val<KeyPolicy>>,
    backups_keep: Option<Val<usize>>,
}

impl RenewLayer {
    fn merge(&mut self, later: RenewLayer, file: usize) {
        over(&mut self.validity, later.validity, file);
        over(&mut self.key_policy, later.key_policy, file);
        over(&mut self.backups_keep, later.backups_keep, file);
    }

    fn resolve(&self, sources: &Sources) -> Result<RenewSettings, ConfigError> {
        let defaults = RenewSettings::default();
        let settings = RenewSettings {
            validity: sources.duration("renew.validity", &self.validity, defaults.validity)?,
            key_policy: self
                .key_policy
                .as_ref()
                .map_or(defaults.key_policy, |v| v.value),
            backups_keep: self
                .backups_keep
                .as_ref()
                .map_or(defaults.backups_keep, |v| v.value),
        };
        if let Some(keep) = self.backups_keep.as_ref().filter(|v| v.value == 0) {
            return Err(sources.invalid(
                &keep.at,
                "renew.backups_keep = 0: at least 1 backup must be kept, or a failed rotation \
                 could not be rolled back",
            ));
        }
        Ok(settings)
    }
}

/// A file mode as written: octal text ("0660"); a TOML integer is taken only to be refused during
/// resolution, where the error can name the key and say how to write it.
#[derive(Debug, Clone)]
enum ModeText {
    Text(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for ModeText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        impl Visitor<'_> for ModeVisitor {
            type Value = ModeText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"an octal file mode such as "0660""#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ModeText, E> {
                Ok(ModeText::Text(s.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ModeText, E> {
                Ok(ModeText::Number(n))
            }
        }
        deserializer.deserialize_any(ModeVisitor)
    }
}

/// Parses and checks a socket's mode.
fn socket_mode(written: &ModeText) -> Result<u32, String> {
    let mode = match written {
        ModeText::Text(text) => {
            let digits = text.strip_prefix("0o").unwrap_or(text);
            if !(3..=4).contains(&digits.len())
                || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
            {
                return Err(format!(
                    "{text:?} is not an octal file mode such as \"0660\""
                ));
            }
            u32::from_str_radix(digits, 8).map_err(|e| format!("{text:?}: {e}"))?
        }
        // `660` is decimal to TOML and `0o660` is indistinguishable from decimal 432 by the
        // time it gets here: rather than guess, ask for the unambiguous form.
        ModeText::Number(n) => {
            return Err(format!(
                "{n}: write the mode as octal text, such as \"0660\" (TOML reads a bare number as \
                 decimal)"
            ));
        }
    };
    if mode > 0o777 {
        return Err(format!(
            "{mode:o}: only the permission bits (at most \"0777\") apply to a socket"
        ));
    }
    if mode & 0o200 == 0 {
        return Err(format!(
            "\"{mode:04o}\": the owner needs write permission, which connecting to a socket takes"
        ));
    }
    Ok(mode)
}

/// Checks a group name as `groupadd` would take it; whether the group exists is for the machine
/// the daemon runs on to say, when it binds the socket.
fn check_group_name(name: &str) -> Result<(), String> {
    if name.len() > 32 {
        return Err("longer than 32 characters".to_owned());
    }
    if name.starts_with('-') {
        return Err("must not start with '-'".to_owned());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("only letters, digits, '_', '-' and '.' are allowed".to_owned());
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [control] table")]
struct ControlLayer {
    socket: Option<Val<PathBuf>>,
    socket_mode: Option<Val<ModeText>>,
    socket_group: Option<Val<String>>,
}

impl ControlLayer {
    fn merge(&mut self, later: ControlLayer, file: usize) {
        over(&mut self.socket, later.socket, file);
        over(&mut self.socket_mode, later.socket_mode, file);
        over(&mut self.socket_group, later.socket_group, file);
    }

    fn resolve(&self, sources: &Sources) -> Result<ControlSettings, ConfigError> {
        let mut settings = ControlSettings::default();
        if let Some(written) = &self.socket {
            check_node_path(&written.value)
                .and_then(|()| match written.value.file_name() {
                    Some(_) => Ok(()),
                    None => Err("must name the socket file, not only a directory".to_owned()),
                })
                .map_err(|e| {
                    sources.invalid(
                        &written.at,
                        format!("control.socket = {:?}: {e}", written.value.display()),
                    )
                })?;
            settings.socket = written.value.clone();
        }
        if let Some(written) = &self.socket_mode {
            settings.socket_mode = socket_mode(&written.value)
                .map_err(|e| sources.invalid(&written.at, format!("control.socket_mode = {e}")))?;
        }
        if let Some(written) = &self.socket_group {
            check_group_name(&written.value).map_err(|e| {
                sources.invalid(
                    &written.at,
                    format!("control.socket_group = {:?}: {e}", written.value),
                )
            })?;
            settings.socket_group = written.value.clone();
        }
        Ok(settings)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [probe] table")]
struct ProbeLayer {
    timeout: Option<Val<DurationText>>,
    /// Per component, so a drop-in that sets etcd's endpoints leaves the others' defaults.
    #[serde(default)]
    endpoints: BTreeMap<PkiComponent, Val<Vec<Spanned<EndpointSpec>>>>,
    #[serde(default)]
    health: BTreeMap<PkiComponent, Val<SocketAddr>>,
}

impl ProbeLayer {
    fn merge(&mut self, later: ProbeLayer, file: usize) {
        over(&mut self.timeout, later.timeout, file);
        // Key by key, as tables merge: a later file's entry for a component replaces the
        // earlier one for that component only.
        for (component, mut value) in later.endpoints {
            value.at.file = file;
            self.endpoints.insert(component, value);
        }
        for (component, mut value) in later.health {
            value.at.file = file;
            self.health.insert(component, value);
        }
    }

    fn resolve(&self, sources: &Sources) -> Result<ProbeSettings, ConfigError> {
        let mut settings = ProbeSettings::default();
        settings.timeout = sources.duration("probe.timeout", &self.timeout, settings.timeout)?;
        if let Some(zero) = self.timeout.as_ref().filter(|_| settings.timeout.is_zero()) {
            return Err(sources.invalid(
                &zero.at,
                "probe.timeout = \"0\": a restarted component needs some time to come back",
            ));
        }
        for (component, written) in &self.endpoints {
            let mut specs = Vec::new();
            for spec in &written.value {
                let at = Origin {
                    file: written.at.file,
                    span: spec.span(),
                };
                check_endpoint(spec.get_ref()).map_err(|e| {
                    sources.invalid(&at, format!("probe.endpoints.{component}: {e}"))
                })?;
                specs.push(spec.get_ref().clone());
            }
            settings.endpoints.insert(*component, specs);
        }
        for (component, written) in &self.health {
            if written.value.port() == 0 {
                return Err(sources.invalid(
                    &written.at,
                    format!("probe.health.{component} = \"{}\": port 0", written.value),
                ));
            }
            settings.health.insert(*component, written.value);
        }
        Ok(settings)
    }
}

/// Checks one `[probe.endpoints]` entry.
fn check_endpoint(spec: &EndpointSpec) -> Result<(), String> {
    if spec.port == 0 {
        return Err("port 0 cannot be connected to".to_owned());
    }
    if spec.serves.trim().is_empty() {
        return Err(
            "serves is empty: name the certificate served there, e.g. \"etcd-server\"".to_owned(),
        );
    }
    if let Some(name) = &spec.server_name {
        rustls_pki_types::ServerName::try_from(name.as_str())
            .map_err(|_| format!("server_name {name:?} is neither a DNS name nor an IP address"))?;
    }
    Ok(())
}

// ---- [lease] ---------------------------------------------------------------------------------

/// The etcd CA kubeadm writes, which the lease trusts by default.
pub const DEFAULT_LEASE_CA: &str = "/etc/kubernetes/pki/etcd/ca.crt";
/// kubeadm's etcd client certificate for the API server, the lease's default identity.
pub const DEFAULT_LEASE_CERT: &str = "/etc/kubernetes/pki/apiserver-etcd-client.crt";
/// Its key.
pub const DEFAULT_LEASE_KEY: &str = "/etc/kubernetes/pki/apiserver-etcd-client.key";

/// Which lease the node takes turns through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseBackend {
    /// A single node: nobody to take turns with.
    #[default]
    Local,
    /// Slots in etcd shared by every node of the cluster.
    Etcd,
}

/// `[lease]`: how this node takes turns with its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseSettings {
    /// `local` or `etcd`.
    pub backend: LeaseBackend,
    /// etcd's client URLs (`https://10.0.0.1:2379`; `http://` for a lab).
    pub endpoints: Vec<String>,
    /// The cluster's name: keys live under `/certrotd/<cluster>/`.
    pub cluster: String,
    /// How many nodes may be in a disruptive step at once.
    pub slots: u32,
    /// How long a slot outlives its holder's last keep-alive.
    #[serde(with = "duration::human")]
    pub ttl: Duration,
    /// The CA that signed etcd's serving certificate (node path).
    pub ca_file: PathBuf,
    /// The client certificate (node path); the default falls back to kubeadm's
    /// `etcd/healthcheck-client.crt` when absent.
    pub cert_file: PathBuf,
    /// Its key (node path).
    pub key_file: PathBuf,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            backend: LeaseBackend::default(),
            endpoints: Vec::new(),
            cluster: "default".to_owned(),
            slots: 1,
            ttl: Duration::from_secs(60),
            ca_file: PathBuf::from(DEFAULT_LEASE_CA),
            cert_file: PathBuf::from(DEFAULT_LEASE_CERT),
            key_file: PathBuf::from(DEFAULT_LEASE_KEY),
        }
    }
}

/// The shortest TTL accepted: a keep-alive every third of it must survive a busy etcd.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [lease] table")]
struct LeaseLayer {
    backend: Option<Val<LeaseBackend>>,
    endpoints: Option<Val<Vec<Spanned<String>>>>,
    cluster: Option<Val<String>>,
    slots: Option<Val<i64>>,
    ttl: Option<Val<DurationText>>,
    ca_file: Option<Val<PathBuf>>,
    cert_file: Option<Val<PathBuf>>,
    key_file: Option<Val<PathBuf>>,
}

impl LeaseLayer {
    fn merge(&mut self, later: LeaseLayer, file: usize) {
        over(&mut self.backend, later.backend, file);
        over(&mut self.endpoints, later.endpoints, file);
        over(&mut self.cluster, later.cluster, file);
        over(&mut self.slots, later.slots, file);
        over(&mut self.ttl, later.ttl, file);
        over(&mut self.ca_file, later.ca_file, file);
        over(&mut self.cert_file, later.cert_file, file);
        over(&mut self.key_file, later.key_file, file);
    }

    fn resolve(&self, sources: &Sources) -> Result<LeaseSettings, ConfigError> {
        let mut settings = LeaseSettings::default();
        if let Some(w) = &self.backend {
            settings.backend = w.value;
        }
        if let Some(list) = &self.endpoints {
            for url in &list.value {
                let at = Origin {
                    file: list.at.file,
                    span: url.span(),
                };
                check_lease_endpoint(url.get_ref()).map_err(|e| {
                    sources.invalid(&at, format!("lease.endpoints: {:?}: {e}", url.get_ref()))
                })?;
                settings.endpoints.push(url.get_ref().clone());
            }
        }
        if let Some(w) = &self.cluster {
            check_cluster_name(&w.value).map_err(|e| {
                sources.invalid(&w.at, format!("lease.cluster = {:?}: {e}", w.value))
            })?;
            settings.cluster = w.value.clone();
        }
        if let Some(w) = &self.slots {
            settings.slots = u32::try_from(w.value)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    sources.invalid(
                        &w.at,
                        format!("lease.slots = {}: at least 1 slot is needed", w.value),
                    )
                })?;
        }
        settings.ttl = sources.duration("lease.ttl", &self.ttl, settings.ttl)?;
        if let Some(w) = self.ttl.as_ref().filter(|_| settings.ttl < MIN_LEASE_TTL) {
            return Err(sources.invalid(
                &w.at,
                format!(
                    "lease.ttl = {:?}: at least {:?}, or a keep-alive every third of it cannot \
                     keep up",
                    w.value.0,
                    duration::format(MIN_LEASE_TTL)
                ),
            ));
        }
        for (key, written, slot) in [
            ("lease.ca_file", &self.ca_file, &mut settings.ca_file),
            ("lease.cert_file", &self.cert_file, &mut settings.cert_file),
            ("lease.key_file", &self.key_file, &mut settings.key_file),
        ] {
            if let Some(w) = written {
                check_node_path(&w.value).map_err(|e| {
                    sources.invalid(&w.at, format!("{key} = {:?}: {e}", w.value.display()))
                })?;
                *slot = w.value.clone();
            }
        }
        if settings.backend == LeaseBackend::Etcd && settings.endpoints.is_empty() {
            let message = "lease.endpoints: backend \"etcd\" needs at least one endpoint, such \
                           as \"https://10.0.0.1:2379\"";
            let at = self
                .endpoints
                .as_ref()
                .map(|v| &v.at)
                .or(self.backend.as_ref().map(|v| &v.at));
            return Err(match at {
                Some(at) => sources.invalid(at, message),
                None => ConfigError::Invalid {
                    at: None,
                    message: message.to_owned(),
                },
            });
        }
        Ok(settings)
    }
}

/// Checks an etcd client URL: `https://host:port` (or `http://` for a lab).
fn check_lease_endpoint(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with https:// (or http:// for a lab)")?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err("must be scheme://host:port, without a path".to_owned());
    }
    let port = authority
        .rsplit_once(':')
        .map(|(_, p)| p)
        .ok_or("needs a port, such as :2379")?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("port {port:?} is not a port number")),
    }
}

/// Checks a cluster name: one etcd key segment.
fn check_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".to_owned());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("only letters, digits, '-', '_' and '.' are allowed".to_owned());
    }
    Ok(())
}

// ---- end of [lease] --------------------------------------------------------------------------

/// One side of a rule between two durations: key, value, and where it was set (`None`: default).
struct Side<'a> {
    key: &'static str,
    value: Duration,
    at: Option<&'a Origin>,
}

impl<'a> Side<'a> {
    fn new<T>(key: &'static str, value: Duration, written: &'a Option<Val<T>>) -> Self {
        Side {
            key,
            value,
            at: written.as_ref().map(|v| &v.at),
        }
    }
}

/// The files read, with their text, to turn spans into lines and columns.
#[derive(Default)]
struct Sources {
    files: Vec<(PathBuf, String)>,
}

/// The longest value each duration key accepts. Certificate times get the global bound (100
/// years, see [`duration::MAX`]); waits and timeouts a day at most, since a restart or a lease
/// that takes longer is a fault, not a setting; the jitter a month, as it only spreads a fleet's
/// renewals out.
fn duration_limit(key: &str) -> Duration {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    match key {
        "restart.job_timeout" | "restart.reload_period" | "probe.timeout" | "lease.ttl" => DAY,
        "policy.jitter" => DAY * 30,
        _ => duration::MAX,
    }
}

impl Sources {
    fn add(&mut self, path: PathBuf, bytes: Vec<u8>) -> Result<(), ConfigError> {
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]);
            ConfigError::Invalid {
                at: Some(Location {
                    file: path.clone(),
                    line_column: Some(line_column(&prefix, valid)),
                }),
                message: "not UTF-8, which TOML requires".to_owned(),
            }
        })?;
        self.files.push((path, text));
        Ok(())
    }

    /// Parses every file, merges them in order (later files win) and validates the result.
    fn settle(&self, opts: &LoadOptions) -> Result<Settings, ConfigError> {
        let mut merged = FileLayer::default();
        for (index, (path, text)) in self.files.iter().enumerate() {
            let layer: FileLayer = toml::from_str(text).map_err(|e| ConfigError::Invalid {
                at: Some(Location {
                    file: path.clone(),
                    line_column: e.span().map(|span| line_column(text, span.start)),
                }),
                message: e.message().trim_end().to_owned(),
            })?;
            merged.merge(layer, index);
        }
        self.resolve(&merged, opts)
    }

    fn location(&self, at: &Origin) -> Location {
        let (file, text) = &self.files[at.file];
        Location {
            file: file.clone(),
            line_column: Some(line_column(text, at.span.start)),
        }
    }

    fn invalid(&self, at: &Origin, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            at: Some(self.location(at)),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        key: &str,
        written: &Option<Val<DurationText>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(written) = written else {
            return Ok(default);
        };
        let text = &written.value.0;
        duration::parse_at_most(text, duration_limit(key)).map_err(|e| {
            self.invalid(
                &written.at,
                format!("{key}: invalid duration {text:?}: {e}"),
            )
        })
    }

    /// Requires `shorter` to be strictly shorter than `longer`.
    ///
    /// The error points at whichever of the two was written last, since that is the edit that
    /// broke the rule (e.g. a drop-in raising `renew_before` past the main file's
    /// `notify_before`), and names where the other one came from.
    fn ensure_shorter(&self, shorter: Side, longer: Side, why: &str) -> Result<(), ConfigError> {
        if shorter.value < longer.value {
            return Ok(());
        }
        let last_written = |side: &Side| side.at.map(|at| (at.file, at.span.start));
        let blame_longer = last_written(&longer) > last_written(&shorter);
        let describe = |side: &Side, blamed: bool| {
            let written = format!("{} = {:?}", side.key, duration::format(side.value));
            match side.at {
                _ if blamed => written,
                Some(at) => format!("{written} (set at {})", self.location(at)),
                None => format!("{written} (the default)"),
            }
        };
        let blamed = if blame_longer { &longer } else { &shorter };
        Err(ConfigError::Invalid {
            at: blamed.at.map(|at| self.location(at)),
            message: format!(
                "{} must be shorter than {}: {why}",
                describe(&shorter, !blame_longer),
                describe(&longer, blame_longer)
            ),
        })
    }

    fn resolve(&self, layer: &FileLayer, opts: &LoadOptions) -> Result<Settings, ConfigError> {
        let root = self.root(opts.root, &layer.root)?;
        let node_name = self.node_name(&layer.node_name)?;
        let layout = layer
            .layout
            .as_ref()
            .map_or(LayoutChoice::default(), |v| v.value);
        let state_dir = match &layer.state_dir {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some(written) => {
                check_node_path(&written.value).map_err(|e| {
                    self.invalid(
                        &written.at,
                        format!("state_dir = {:?}: {e}", written.value.display()),
                    )
                })?;
                written.value.clone()
            }
        };
        let inventory = layer.inventory.resolve(self)?;
        let policy = layer.policy.resolve(self)?;
        let renew = layer.renew.resolve(self)?;
        let restart = layer.restart.resolve(self)?;
        let control = layer.control.resolve(self)?;
        let probe = layer.probe.resolve(self)?;
        let issuer = layer.issuer.resolve(self)?;
        let lease = layer.lease.resolve(self)?;
        let metrics = layer.metrics.resolve(self)?;
        self.ensure_shorter(
            Side::new(
                "policy.renew_before",
                policy.renew_before,
                &layer.policy.renew_before,
            ),
            Side::new("renew.validity", renew.validity, &layer.renew.validity),
            "otherwise a renewed certificate would be due for renewal again at once",
        )?;
        Ok(Settings {
            root,
            node_name,
            layout,
            state_dir,
            inventory,
            policy,
            renew,
            restart,
            control,
            probe,
            issuer,
            lease,
            metrics,
            sources: self.files.iter().map(|(path, _)| path.clone()).collect(),
        })
    }

    fn root(
        &self,
        command_line: Option<&Path>,
        written: &Option<Val<PathBuf>>,
    ) -> Result<PathBuf, ConfigError> {
        if let Some(root) = command_line {
            return real_dir(root).map_err(|e| ConfigError::Invalid {
                at: None,
                message: format!("--root {}: {e}", root.display()),
            });
        }
        let Some(written) = written else {
            return Ok(PathBuf::from("/"));
        };
        if written.value.as_os_str().is_empty() {
            return Err(self.invalid(&written.at, r#"root = "": write "/" for the whole machine"#));
        }
        // Relative to the file that says it, so a tree unpacked anywhere (a test fixture, an
        // image being prepared) can carry a config that finds it.
        let base = self.files[written.at.file]
            .0
            .parent()
            .unwrap_or(Path::new("/"));
        let root = base.join(&written.value);
        real_dir(&root).map_err(|e| {
            self.invalid(
                &written.at,
                format!("root = {:?} ({}): {e}", written.value, root.display()),
            )
        })
    }

    fn node_name(&self, written: &Option<Val<String>>) -> Result<String, ConfigError> {
        if let Some(name) = written.as_ref().filter(|v| !v.value.is_empty()) {
            check_node_name(&name.value).map_err(|e| {
                self.invalid(
                    &name.at,
                    format!(
                        "node_name = {:?} is not a valid Kubernetes node name: {e}",
                        name.value
                    ),
                )
            })?;
            return Ok(name.value.clone());
        }
        let at = written.as_ref().map(|v| self.location(&v.at));
        let invalid = |message| ConfigError::Invalid {
            at: at.clone(),
            message,
        };
        let hostname = machine_node_name()
            .map_err(|e| invalid(format!("node_name is empty and {e}; set node_name")))?;
        check_node_name(&hostname).map_err(|e| {
            invalid(format!(
                "node_name is empty and the hostname {hostname:?} is not a valid Kubernetes \
                 node name ({e}); set node_name"
            ))
        })?;
        Ok(hostname)
    }
}

/// Resolves a path to an existing directory, symlinks and all.
fn real_dir(path: &Path) -> Result<PathBuf, String> {
    let real = fs::canonicalize(path).map_err(|e| e.to_string())?;
    if real.is_dir() {
        Ok(real)
    } else {
        Err("not a directory".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    /// A scratch root holding `etc/certrotd/certrotd.toml` and `etc/certrotd/conf.d/`.
    struct Tree {
        dir: TempDir,
    }

    impl Tree {
        fn new() -> Self {
            Tree {
                dir: TempDir::new().unwrap(),
            }
        }

        fn root(&self) -> PathBuf {
            fs::canonicalize(self.dir.path()).unwrap()
        }

        /// Writes `text` at `relative` (under `etc/certrotd/`) and returns the path.
        fn write(&self, relative: &str, text: impl AsRef<[u8]>) -> PathBuf {
            let path = self.dir.path().join("etc/certrotd").join(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            path
        }

        /// Loads as `certrotd --root <tree>` would.
        fn load(&self) -> Result<Settings, ConfigError> {
            load(&LoadOptions {
                config: None,
                root: Some(self.dir.path()),
            })
        }

        fn defaults(&self, sources: Vec<PathBuf>) -> Settings {
            Settings {
                root: self.root(),
                sources,
                ..Settings::default()
            }
        }
    }

    fn at(error: &ConfigError) -> (PathBuf, (usize, usize)) {
        let location = error
            .location()
            .unwrap_or_else(|| panic!("no location: {error}"));
        (location.file.clone(), location.line_column.unwrap())
    }

    #[test]
    fn no_files_give_the_defaults() {
        let tree = Tree::new();
        assert_eq!(tree.load().unwrap(), tree.defaults(vec![]));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let d = Settings::default();
        assert_eq!(d.root, Path::new("/"));
        assert_eq!(d.layout, LayoutChoice::Auto);
        assert_eq!(d.state_dir, Path::new("/var/lib/certrotd"));
        assert!(d.inventory.extra_paths.is_empty());
        assert_eq!(d.policy.notify_before, days(60));
        assert_eq!(d.policy.renew_before, days(30));
        assert_eq!(d.policy.emergency_before, days(7));
        assert_eq!(d.renew.validity, days(365));
        assert_eq!(d.renew.key_policy, KeyPolicy::New);
        assert_eq!(d.renew.backups_keep, 10);
        assert_eq!(d.node_name, machine_node_name().unwrap());
    }

    #[test]
    fn drop_in_overrides_the_main_file_key_by_key() {
        let tree = Tree::new();
        let main = tree.write(
            "certrotd.toml",
            "layout = \"kubeadm\"\n[policy]\nnotify_before = \"90d\"\nrenew_before = \"40d\"\n\
             [renew]\nvalidity = \"400d\"\n",
        );
        let drop_in = tree.write("conf.d/10-site.toml", "[policy]\nrenew_before = \"45d\"\n");
        let settings = tree.load().unwrap();
        assert_eq!(settings.sources, vec![main, drop_in]);
        assert_eq!(settings.layout, LayoutChoice::Kubeadm);
        assert_eq!(settings.policy.notify_before, days(90));
        assert_eq!(settings.policy.renew_before, days(45));
        assert_eq!(settings.policy.emergency_before, days(7));
        assert_eq!(settings.renew.validity, days(400));
    }

    #[test]
    fn later_drop_in_wins_and_only_toml_files_count() {
        let tree = Tree::new();
        let second = tree.write("conf.d/20-b.toml", "[renew]\nkey_policy = \"new\"\n");
        let first = tree.write(
            "conf.d/10-a.toml",
            "[renew]\nkey_policy = \"reuse\"\nbackups_keep = 3\n",
        );
        tree.write("conf.d/.#30-c.toml", "garbage =");
        tree.write("conf.d/30-c.toml.dpkg-old", "garbage =");
        tree.write("conf.d/README", "garbage =");
        fs::create_dir(tree.dir.path().join("etc/certrotd/conf.d/40-dir.toml")).unwrap();
        let settings = tree.load().unwrap();
        // No main file: the drop-ins still apply.
        assert_eq!(settings.sources, vec![first, second]);
        assert_eq!(settings.renew.key_policy, KeyPolicy::New);
        assert_eq!(settings.renew.backups_keep, 3);
    }

    #[test]
    fn arrays_replace_rather_than_append() {
        let tree = Tree::new();
        tree.write(
            "certrotd.toml",
            "[inventory]\nextra_paths = [\"/etc/ssl/a.crt\", \"/etc/ssl/b.crt\"]\n",
        );
        tree.write(
            "conf.d/10.toml",
            "[inventory]\nextra_paths = [\"/etc/ssl/private/*.crt\"]\n",
        );
        let settings = tree.load().unwrap();
        assert_eq!(settings.inventory.extra_paths, ["/etc/ssl/private/*.crt"]);
    }

    #[test]
    fn unknown_keys_name_file_line_and_column() {
        let tree = Tree::new();
        tree.write("certrotd.toml", "[policy]\nrenew_before = \"20d\"\n");
        let drop_in = tree.write("conf.d/10-x.toml", "\n[policy]\n  renew_befor = \"3d\"\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (drop_in.clone(), (3, 3)));
        let text = error.to_string();
        assert!(
            text.starts_with(&format!(
                "{}:3:3: unknown field `renew_befor`, expected one of",
                drop_in.display()
            )),
            "{text}"
        );

        tree.write("conf.d/10-x.toml", "[polcy]\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (drop_in.clone(), (1, 2)));
        assert!(
            error.to_string().contains("unknown field `polcy`"),
            "{error}"
        );

        tree.write("conf.d/10-x.toml", "state-dir = \"/x\"\n");
        assert_eq!(at(&tree.load().unwrap_err()), (drop_in, (1, 1)));
    }

    #[test]
    fn unknown_key_is_an_error_even_if_a_later_file_sets_the_right_one() {
        let tree = Tree::new();
        let main = tree.write("certrotd.toml", "[renew]\nbackups_kept = 3\n");
        tree.write("conf.d/10.toml", "[renew]\nbackups_keep = 3\n");
        assert_eq!(at(&tree.load().unwrap_err()), (main, (2, 1)));
    }

    #[test]
    fn bad_duration_names_field_text_and_place() {
        let tree = Tree::new();
        let main = tree.write("certrotd.toml", "[policy]\nrenew_before = \"30x\"\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main.clone(), (2, 16)));
        let text = error.to_string();
        assert!(text.contains("policy.renew_before"), "{text}");
        assert!(text.contains("\"30x\""), "{text}");

        tree.write("certrotd.toml", "[renew]\nvalidity = 365\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main, (2, 12)));
        assert!(error.to_string().contains("a duration such as"), "{error}");
    }

    #[test]
    fn wrong_types_and_enum_values_name_the_place() {
        let tree = Tree::new();
        let main = tree.write("certrotd.toml", "[renew]\nbackups_keep = \"ten\"\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main.clone(), (2, 16)));
        assert!(error.to_string().contains("invalid type"), "{error}");

        tree.write("certrotd.toml", "[renew]\nbackups_keep = -1\n");
        assert_eq!(at(&tree.load().unwrap_err()), (main.clone(), (2, 16)));

        tree.write("certrotd.toml", "layout = \"openshift\"\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main.clone(), (1, 10)));
        assert!(error.to_string().contains("`kubeadm`"), "{error}");

        tree.write("certrotd.toml", "policy = 3\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main, (1, 10)));
        assert!(
            error.to_string().ends_with("expected the [policy] table"),
            "{error}"
        );
    }

    #[test]
    fn renew_before_not_shorter_than_notify_before_blames_the_file_that_set_it() {
        let tree = Tree::new();
        tree.write("certrotd.toml", "[renew]\nvalidity = \"400d\"\n");
        let drop_in = tree.write("conf.d/50.toml", "[policy]\nrenew_before = \"60d\"\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (drop_in, (2, 16)));
        let text = error.to_string();
        assert!(
            text.contains(
                "policy.renew_before = \"60d\" must be shorter than \
                 policy.notify_before = \"60d\" (the default)"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_ordering_rule_blames_the_value_written_last() {
        let tree = Tree::new();
        let main = tree.write("certrotd.toml", "[policy]\nrenew_before = \"40d\"\n");
        let drop_in = tree.write("conf.d/50.toml", "[policy]\nnotify_before = \"35d\"\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (drop_in, (2, 17)));
        assert!(
            error
                .to_string()
                .contains(&format!("(set at {}:2:16)", main.display())),
            "{error}"
        );
    }

    #[test]
    fn durations_are_bounded_per_key() {
        let tree = Tree::new();
        let main = tree.write("certrotd.toml", "[renew]\nvalidity = \"8000y\"\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main.clone(), (2, 12)));
        assert!(
            error.to_string().contains(
                "renew.validity: invalid duration \"8000y\": longer than the limit of 36500d"
            ),
            "{error}"
        );
        tree.write("certrotd.toml", "[restart]\njob_timeout = \"2d\"\n");
        let error = tree.load().unwrap_err();
        assert!(error.to_string().contains("restart.job_timeout"), "{error}");
        tree.write("certrotd.toml", "[lease]\nttl = \"1d 1s\"\n");
        assert!(tree.load().unwrap_err().to_string().contains("lease.ttl"));
        tree.write("certrotd.toml", "[policy]\njitter = \"31d\"\n");
        assert!(
            tree.load()
                .unwrap_err()
                .to_string()
                .contains("policy.jitter")
        );
        tree.write("certrotd.toml", "[renew]\nvalidity = \"100y\"\n");
        assert_eq!(
            tree.load().expect("100y is allowed").renew.validity,
            duration::MAX
        );
    }

    #[test]
    fn the_other_rules_hold() {
        let tree = Tree::new();
        let main = tree.write("certrotd.toml", "[policy]\nemergency_before = \"30d\"\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main.clone(), (2, 20)));
        assert!(
            error.to_string().contains("policy.emergency_before"),
            "{error}"
        );

        tree.write("certrotd.toml", "[renew]\nvalidity = \"30d\"\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main.clone(), (2, 12)));
        assert!(error.to_string().contains("renew.validity"), "{error}");

        tree.write("certrotd.toml", "[renew]\nbackups_keep = 0\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main.clone(), (2, 16)));

        tree.write("certrotd.toml", "state_dir = \"var/lib/certrotd\"\n");
        assert_eq!(at(&tree.load().unwrap_err()), (main.clone(), (1, 13)));
        tree.write("certrotd.toml", "state_dir = \"/var/../etc\"\n");
        assert_eq!(at(&tree.load().unwrap_err()), (main.clone(), (1, 13)));

        tree.write(
            "certrotd.toml",
            "[inventory]\nextra_paths = [\"/ok/*.crt\",\n  \"/bad/[.crt\"]\n",
        );
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main.clone(), (3, 3)));
        assert!(error.to_string().contains("\"/bad/[.crt\""), "{error}");
        tree.write(
            "certrotd.toml",
            "[inventory]\nextra_paths = [\"etc/ssl/*.crt\"]\n",
        );
        assert_eq!(at(&tree.load().unwrap_err()), (main, (2, 16)));
    }

    #[test]
    fn node_name_is_checked_and_defaults_to_the_hostname() {
        let tree = Tree::new();
        let main = tree.write("certrotd.toml", "node_name = \"worker-1.example\"\n");
        assert_eq!(tree.load().unwrap().node_name, "worker-1.example");
        for bad in ["Worker-1", "worker_1", "-worker", "worker..1", "worker."] {
            tree.write("certrotd.toml", format!("node_name = \"{bad}\"\n"));
            let error = tree.load().unwrap_err();
            assert_eq!(at(&error), (main.clone(), (1, 13)), "{bad}");
        }
        tree.write("certrotd.toml", "node_name = \"\"\n");
        assert_eq!(tree.load().unwrap().node_name, machine_node_name().unwrap());
    }

    #[test]
    fn syntax_error_in_a_drop_in_names_that_drop_in() {
        let tree = Tree::new();
        tree.write("certrotd.toml", "layout = \"k3s\"\n");
        tree.write("conf.d/10-ok.toml", "layout = \"rke2\"\n");
        let broken = tree.write("conf.d/20-broken.toml", "# note\nlayout = rke2\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error).0, broken);
        assert_eq!(at(&error).1.0, 2);
    }

    #[test]
    fn non_utf8_file_is_an_error_at_the_bad_byte() {
        let tree = Tree::new();
        let main = tree.write("certrotd.toml", b"# caf\xe9\n");
        assert_eq!(at(&tree.load().unwrap_err()), (main, (1, 6)));
    }

    #[test]
    fn relative_root_is_relative_to_the_file_that_sets_it() {
        let tree = Tree::new();
        fs::create_dir(tree.dir.path().join("node")).unwrap();
        // Set in a drop-in, so the base is conf.d, not the main file's directory.
        tree.write("certrotd.toml", "");
        tree.write("conf.d/10.toml", "root = \"../../../node\"\n");
        let config = tree.dir.path().join("etc/certrotd/certrotd.toml");
        let opts = LoadOptions {
            config: Some(&config),
            root: None,
        };
        assert_eq!(load(&opts).unwrap().root, tree.root().join("node"));

        let drop_in = tree.write("conf.d/10.toml", "root = \"../missing\"\n");
        let error = load(&opts).unwrap_err();
        assert_eq!(at(&error), (drop_in.clone(), (1, 8)));
        tree.write(
            "conf.d/10.toml",
            "root = \"../../certrotd/certrotd.toml\"\n",
        );
        let error = load(&opts).unwrap_err();
        assert!(error.to_string().contains("not a directory"), "{error}");
    }

    #[test]
    fn command_line_root_wins_over_the_files() {
        let tree = Tree::new();
        tree.write("certrotd.toml", "root = \"/nonexistent/certrotd-test\"\n");
        assert_eq!(tree.load().unwrap().root, tree.root());

        let missing = tree.dir.path().join("missing");
        let error = load(&LoadOptions {
            config: None,
            root: Some(&missing),
        })
        .unwrap_err();
        assert!(error.location().is_none());
        assert!(
            error
                .to_string()
                .starts_with(&format!("--root {}:", missing.display())),
            "{error}"
        );
    }

    #[test]
    fn explicit_config_that_does_not_exist_is_an_error_naming_it() {
        let tree = Tree::new();
        let missing = tree.dir.path().join("nope.toml");
        let error = load(&LoadOptions {
            config: Some(&missing),
            root: None,
        })
        .unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(
            error
                .to_string()
                .starts_with(&format!("reading config file {}: ", missing.display())),
            "{error}"
        );
    }

    #[test]
    fn in_root_joins_node_paths() {
        let mut settings = Settings::default();
        assert_eq!(
            settings.in_root("/var/lib/certrotd"),
            Path::new("/var/lib/certrotd")
        );
        assert_eq!(settings.in_root("/"), Path::new("/"));
        settings.root = PathBuf::from("/srv/node");
        assert_eq!(
            settings.in_root("/etc/kubernetes/pki/ca.crt"),
            Path::new("/srv/node/etc/kubernetes/pki/ca.crt")
        );
        assert_eq!(
            settings.in_root("//etc/kubernetes"),
            Path::new("/srv/node/etc/kubernetes")
        );
        assert_eq!(settings.in_root("etc"), Path::new("/srv/node/etc"));
        assert_eq!(settings.in_root("/"), Path::new("/srv/node"));
        assert_eq!(settings.in_root(""), Path::new("/srv/node"));
    }

    fn shipped_config() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/certrotd.toml")
    }

    #[test]
    fn shipped_config_loads_to_the_defaults() {
        let path = shipped_config();
        let settings = load(&LoadOptions {
            config: Some(&path),
            root: None,
        })
        .unwrap();
        assert_eq!(
            settings,
            Settings {
                sources: vec![path],
                ..Settings::default()
            }
        );
    }

    #[test]
    fn shipped_config_documents_every_key_with_its_default() {
        // Uncommenting every `#key = value` line must change nothing and cover every key.
        let text = fs::read_to_string(shipped_config()).unwrap();
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let tree = Tree::new();
        let main = tree.write("certrotd.toml", &uncommented);
        let mut expected = Settings {
            sources: vec![main],
            ..Settings::default()
        };
        let mut settings = tree.load().unwrap();
        // `root = "/"` is in the file but `--root` (the scratch tree) wins.
        settings.root = PathBuf::from("/");
        expected.root = PathBuf::from("/");
        assert_eq!(settings, expected);

        let keys = |table: &toml::Table| -> Vec<String> {
            let mut keys = Vec::new();
            for (key, value) in table {
                match value.as_table() {
                    Some(sub) => keys.extend(sub.keys().map(|k| format!("{key}.{k}"))),
                    None => keys.push(key.clone()),
                }
            }
            keys.sort();
            keys
        };
        let documented: toml::Table = toml::from_str(&uncommented).unwrap();
        let all: toml::Table =
            toml::from_str(&toml::to_string(&Settings::default()).unwrap()).unwrap();
        assert_eq!(keys(&documented), keys(&all));
    }

    #[test]
    fn serialized_settings_load_back() {
        let tree = Tree::new();
        let defaults = Settings::default();
        let written = Settings {
            node_name: "node-a".to_owned(),
            inventory: InventorySettings {
                extra_paths: vec!["/etc/ssl/*.pem".to_owned()],
            },
            policy: PolicySettings {
                emergency_before: Duration::from_secs(36 * 3600),
                ..defaults.policy
            },
            renew: RenewSettings {
                key_policy: KeyPolicy::Reuse,
                ..defaults.renew
            },
            ..defaults
        };
        let main = tree.write("certrotd.toml", toml::to_string(&written).unwrap());
        let read = tree.load().unwrap();
        assert_eq!(
            read,
            Settings {
                root: tree.root(),
                sources: vec![main],
                ..written
            }
        );
    }

    #[test]
    fn probe_defaults_and_per_component_overrides() {
        use PkiComponent::*;
        let d = ProbeSettings::default();
        assert_eq!(d.timeout, Duration::from_secs(120));
        let ports = |c| -> Vec<u16> { d.endpoints[&c].iter().map(|e| e.port).collect() };
        assert_eq!(ports(KubeApiserver), [6443]);
        assert_eq!(ports(Etcd), [2379, 2380]);
        assert_eq!(ports(Kubelet), [10250]);
        assert_eq!(d.health[&Kubelet].port(), 10248);

        let tree = Tree::new();
        tree.write(
            "certrotd.toml",
            "[probe]\ntimeout = \"90s\"\n[probe.endpoints]\n\
             etcd = [{ host = \"10.0.0.5\", port = 2379, serves = \"etcd-server\", \
             server_name = \"etcd.example\" }]\nkubelet = []\n",
        );
        tree.write(
            "conf.d/10.toml",
            "[probe.health]\netcd = \"10.0.0.5:2379\"\n[probe.endpoints]\nkubelet = \
             [{ port = 10250, serves = \"kubelet-serving\" }]\n",
        );
        let probe = tree.load().unwrap().probe;
        assert_eq!(probe.timeout, Duration::from_secs(90));
        assert_eq!(
            probe.endpoints[&Etcd],
            [EndpointSpec {
                host: Some("10.0.0.5".parse().unwrap()),
                port: 2379,
                serves: "etcd-server".to_owned(),
                server_name: Some("etcd.example".to_owned()),
            }]
        );
        // The drop-in's kubelet list replaces the main file's, and untouched components keep
        // their defaults.
        assert_eq!(probe.endpoints[&Kubelet][0].host, None);
        assert_eq!(probe.endpoints[&KubeApiserver], d.endpoints[&KubeApiserver]);
        assert_eq!(probe.health[&Etcd], "10.0.0.5:2379".parse().unwrap());
        assert_eq!(probe.health[&KubeApiserver], d.health[&KubeApiserver]);
    }

    #[test]
    fn bad_probe_entries_name_file_line_and_column() {
        let tree = Tree::new();
        let main = tree.write("certrotd.toml", "[probe]\ntimeout = \"0s\"\n");
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main.clone(), (2, 11)));
        assert!(error.to_string().contains("probe.timeout"), "{error}");

        tree.write(
            "certrotd.toml",
            "[probe.endpoints]\netcd = [{ port = 2379, serves = \"etcd-server\" },\n  \
             { port = 0, serves = \"etcd-peer\" }]\n",
        );
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main.clone(), (3, 3)));
        assert!(
            error.to_string().contains("probe.endpoints.etcd: port 0"),
            "{error}"
        );

        tree.write(
            "certrotd.toml",
            "[probe.endpoints]\netcd = [{ port = 2379, serves = \"\" }]\n",
        );
        assert_eq!(at(&tree.load().unwrap_err()), (main.clone(), (2, 9)));

        tree.write(
            "certrotd.toml",
            "[probe.endpoints]\netcd = [{ port = 2379, serves = \"x\", server_name = \"a b\" }]\n",
        );
        let error = tree.load().unwrap_err();
        assert!(error.to_string().contains("\"a b\""), "{error}");

        tree.write(
            "certrotd.toml",
            "[probe.endpoints]\netcd = [{ prot = 2379 }]\n",
        );
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error).0, main.clone());
        assert!(
            error.to_string().contains("unknown field `prot`"),
            "{error}"
        );

        tree.write(
            "certrotd.toml",
            "[probe.health]\netcdd = \"127.0.0.1:2379\"\n",
        );
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error).0, main.clone());
        assert!(
            error.to_string().contains("unknown variant `etcdd`"),
            "{error}"
        );

        tree.write(
            "certrotd.toml",
            "[probe.health]\netcd = \"localhost:2379\"\n",
        );
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main, (2, 8)));
    }

    #[test]
    fn lease_table_loads_and_bad_values_name_file_line_and_column() {
        let tree = Tree::new();
        tree.write(
            "certrotd.toml",
            "[lease]\nbackend = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\", \"http://lab:2379\"]\n\
             cluster = \"prod-1\"\nslots = 2\nttl = \"30s\"\ncert_file = \"/etc/etcd/client.crt\"\n",
        );
        let lease = tree.load().unwrap().lease;
        assert_eq!(lease.backend, LeaseBackend::Etcd);
        assert_eq!(lease.endpoints.len(), 2);
        assert_eq!(lease.cluster, "prod-1");
        assert_eq!(lease.slots, 2);
        assert_eq!(lease.ttl, Duration::from_secs(30));
        assert_eq!(lease.cert_file, Path::new("/etc/etcd/client.crt"));
        assert_eq!(lease.key_file, Path::new(DEFAULT_LEASE_KEY));

        let bad = |text: &str, line_col: (usize, usize), says: &str| {
            let main = tree.write("certrotd.toml", text);
            let error = tree.load().unwrap_err();
            assert_eq!(at(&error), (main, line_col), "{error}");
            assert!(error.to_string().contains(says), "{error}");
        };
        bad("[lease]\nbackend = \"etcd\"\n", (2, 11), "lease.endpoints");
        bad(
            "[lease]\nbackend = \"etcd\"\nendpoints = []\n",
            (3, 13),
            "lease.endpoints",
        );
        bad(
            "[lease]\nendpoints = [\"https://a:2379\",\n  \"10.0.0.1:2379\"]\n",
            (3, 3),
            "https://",
        );
        bad("[lease]\nendpoints = [\"https://a\"]\n", (2, 14), "port");
        bad("[lease]\nslots = 0\n", (2, 9), "lease.slots = 0");
        bad("[lease]\nttl = \"1s\"\n", (2, 7), "lease.ttl");
        bad("[lease]\ncluster = \"a/b\"\n", (2, 11), "lease.cluster");
        bad(
            "[lease]\nca_file = \"pki/ca.crt\"\n",
            (2, 11),
            "lease.ca_file",
        );
        bad(
            "[lease]\nbackend = \"zookeeper\"\n",
            (2, 11),
            "unknown variant",
        );
        // Endpoints set in a drop-in satisfy a backend set in the main file.
        tree.write("certrotd.toml", "[lease]\nbackend = \"etcd\"\n");
        tree.write(
            "conf.d/10.toml",
            "[lease]\nendpoints = [\"https://10.0.0.1:2379\"]\n",
        );
        assert_eq!(tree.load().unwrap().lease.endpoints.len(), 1);
    }

    #[test]
    fn line_column_counts_characters() {
        let text = "a = 1\nété = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        let value = text.find('"').unwrap();
        assert_eq!(line_column(text, value), (2, 7));
        assert_eq!(line_column(text, text.len()), (3, 1));
        assert_eq!(line_column(text, 7), (2, 1));
    }
}
