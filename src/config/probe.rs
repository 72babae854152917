//! `[probe]`: how a restarted component is proved to serve its new certificate and be healthy.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::layer::{ConfigError, DurationText, Origin, Sources, Val, over};
use crate::duration;
use crate::pki::layout::Component as PkiComponent;

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [probe] table")]
pub(super) struct ProbeLayer {
    pub(super) timeout: Option<Val<DurationText>>,
    /// Per component, so a drop-in that sets etcd's endpoints leaves the others' defaults.
    #[serde(default)]
    pub(super) endpoints: BTreeMap<PkiComponent, Val<Vec<Spanned<EndpointSpec>>>>,
    #[serde(default)]
    pub(super) health: BTreeMap<PkiComponent, Val<SocketAddr>>,
}

impl ProbeLayer {
    pub(super) fn merge(&mut self, later: ProbeLayer, file: usize) {
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

    pub(super) fn resolve(&self, sources: &Sources) -> Result<ProbeSettings, ConfigError> {
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
pub(super) fn check_endpoint(spec: &EndpointSpec) -> Result<(), String> {
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
