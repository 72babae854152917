//! How renewed certificates are signed and keyed: the planner's own settings, built from the
//! configuration's `[issuer]` and `[renew]` tables at the boundary (in [`super`]'s `mod.rs`), so the
//! planner does not depend on the configuration's shape (issue 12: "lower layers get their own
//! settings type"; `lease::etcd::EtcdOptions` and `issuer::cfssl::Remote` do the same).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::issuer::cfssl;

/// New key or the existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    /// Generate a new key with each renewal.
    New,
    /// Keep the existing key.
    Reuse,
}

impl std::fmt::Display for KeyPolicy {
    /// The name as written in the configuration (`certrotd renew` prints it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyPolicy::New => "new",
            KeyPolicy::Reuse => "reuse",
        })
    }
}

/// A cfssl server, as one CA uses it (paths still node paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCa {
    /// The server's base URL.
    pub url: String,
    /// Node path of the hex auth key.
    pub auth_key_file: PathBuf,
    /// The profile for certificates without one of their own.
    pub profile: String,
    /// Profiles by certificate name.
    pub profiles: BTreeMap<String, String>,
    /// Node path of the server's CA bundle (`None`: plain http).
    pub ca_bundle: Option<PathBuf>,
    /// Connect and answer timeout.
    pub timeout: Duration,
}

impl RemoteCa {
    /// The profile for the certificate `name`.
    pub fn profile_for(&self, name: &str) -> &str {
        self.profiles.get(name).unwrap_or(&self.profile)
    }

    /// What the cfssl client needs to reach the server.
    pub fn server(&self) -> cfssl::Remote {
        cfssl::Remote {
            url: self.url.clone(),
            auth_key_file: self.auth_key_file.clone(),
            ca_bundle: self.ca_bundle.clone(),
            timeout: self.timeout,
        }
    }
}

/// How one CA's certificates are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaChoice {
    /// With the CA key if it is on the node; otherwise through `Some` remote, or not at all.
    LocalElse(Option<RemoteCa>),
    /// Only with the CA key on the node.
    LocalOnly,
    /// Always through the remote CA, even if the CA key is on the node.
    Remote(RemoteCa),
}

/// Who signs the certificates of each CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    /// For CAs named in an override (inventory names).
    pub per_ca: BTreeMap<String, CaChoice>,
    /// For every other CA.
    pub default: CaChoice,
}

impl Signing {
    /// How the certificates of the CA named `ca` (its inventory name) are signed.
    pub fn for_ca(&self, ca: &str) -> CaChoice {
        self.per_ca.get(ca).unwrap_or(&self.default).clone()
    }

    /// Whether a remote CA signs, by default, what no CA on the node can (`mode = "cfssl"`).
    pub fn remote_by_default(&self) -> bool {
        matches!(self.default, CaChoice::LocalElse(Some(_)))
    }
}
