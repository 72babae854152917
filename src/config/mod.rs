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
//! The stages are in `layer.rs`; each table is a file of its own that owns its settings type, its
//! layer and its rules (`policy.rs` for `[policy]`, …), as `issuer.rs` does for `[issuer]`. This
//! module depends on no subsystem: the subsystems read their table from here.
//!
//! Adding a table `[x]` takes a file `x.rs` with an `XSettings` and its `Default`, an `XLayer`
//! with one `Option<Val<_>>` per key plus `merge` and `resolve`, and one line each in
//! [`Settings`], `FileLayer`, `FileLayer::merge` and `Sources::resolve` here.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

// One file per table (`[x]` in `x.rs`: its settings type, its layer, its checks), and the
// machinery they share. A new table is a new file here plus one line each in `Settings`,
// `FileLayer`, `FileLayer::merge` and `Sources::resolve` below.
mod ca;
mod control;
mod inventory;
mod issuer;
mod layer;
mod lease;
mod metrics;
mod policy;
mod probe;
mod renew;
mod restart;
mod validate;

pub use ca::CaTable;
use control::ControlLayer;
pub use control::ControlSettings;
use inventory::InventoryLayer;
pub use inventory::InventorySettings;
pub use issuer::{CaChoice, CaOverride, IssuerMode, IssuerSettings, RemoteCa};
pub use layer::{ConfigError, Location};
use layer::{Side, Sources, Val, absolute, drop_ins, over};
use lease::LeaseLayer;
pub use lease::{
    DEFAULT_LEASE_CA, DEFAULT_LEASE_CERT, DEFAULT_LEASE_KEY, LeaseBackend, LeaseSettings,
    MIN_LEASE_TTL,
};
pub use metrics::MetricsSettings;
use policy::PolicyLayer;
pub use policy::PolicySettings;
use probe::ProbeLayer;
pub use probe::{EndpointSpec, KUBELET_HEALTHZ_PORT, ProbeSettings};
use renew::RenewLayer;
pub use renew::{KeyPolicy, RenewSettings};
use restart::RestartLayer;
pub use restart::{DEFAULT_JOB_TIMEOUT, DEFAULT_RELOAD_PERIOD, RestartSettings, StaticPodRestart};
use validate::{check_node_name, check_node_path, machine_node_name, real_dir};

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
    /// `[ca]`: how a cluster CA is rotated (read by the `ca` subsystem).
    pub ca: CaTable,
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
            ca: CaTable::default(),
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

/// What [`load`] reads: the command line's `--config` and `--root`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    /// `--config`: the main file, which must then exist. Without it the main file is
    /// [`DEFAULT_CONFIG_PATH`] inside the root, and may be absent.
    pub config: Option<&'a Path>,
    /// `--root`: overrides the files' `root`, and is where the default main file is looked for.
    pub root: Option<&'a Path>,
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
    #[serde(default)]
    ca: ca::CaLayer,
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
        self.ca.merge(later.ca, file);
    }
}

impl Sources {
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
        let ca = layer.ca.resolve(self)?;
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
            ca,
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

#[cfg(test)]
mod tests;
