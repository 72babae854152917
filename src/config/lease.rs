//! `[lease]`: how this node takes turns with its peers.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::layer::{ConfigError, DurationText, Origin, Sources, Val, over};
use super::validate::check_node_path;
use crate::duration;

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
pub(super) struct LeaseLayer {
    pub(super) backend: Option<Val<LeaseBackend>>,
    pub(super) endpoints: Option<Val<Vec<Spanned<String>>>>,
    pub(super) cluster: Option<Val<String>>,
    pub(super) slots: Option<Val<i64>>,
    pub(super) ttl: Option<Val<DurationText>>,
    pub(super) ca_file: Option<Val<PathBuf>>,
    pub(super) cert_file: Option<Val<PathBuf>>,
    pub(super) key_file: Option<Val<PathBuf>>,
}

impl LeaseLayer {
    pub(super) fn merge(&mut self, later: LeaseLayer, file: usize) {
        over(&mut self.backend, later.backend, file);
        over(&mut self.endpoints, later.endpoints, file);
        over(&mut self.cluster, later.cluster, file);
        over(&mut self.slots, later.slots, file);
        over(&mut self.ttl, later.ttl, file);
        over(&mut self.ca_file, later.ca_file, file);
        over(&mut self.cert_file, later.cert_file, file);
        over(&mut self.key_file, later.key_file, file);
    }

    pub(super) fn resolve(&self, sources: &Sources) -> Result<LeaseSettings, ConfigError> {
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
pub(super) fn check_lease_endpoint(url: &str) -> Result<(), String> {
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
pub(super) fn check_cluster_name(name: &str) -> Result<(), String> {
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
