//! Putting a restarted component's probes together from the node: its endpoints, the client
//! identity etcd requires, the CA bundle, and the proof that every endpoint serves the new leaf.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::config::{EndpointSpec, ProbeSettings};
use crate::pki::cert::{Cert, San};
use crate::pki::layout::{Component, KUBEADM_PKI};
use crate::root::Root;

use super::{
    ClientIdentity, Health, HealthCheck, Retry, TlsEndpoint, normalize_serial, verify_chain,
    wait_for_serial, wait_healthy,
};
use super::{ProbeError, seconds};

/// A certificate a restarted component must now serve.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The certificate's name (`etcd-server`), matched against the endpoints' `serves`.
    pub name: &'a str,
    /// The new certificate.
    pub cert: &'a Cert,
    /// The CA bundle it must chain to (the CA that signed it).
    pub ca_bundle: &'a [Cert],
}

/// What a component is probed with after a restart.
#[derive(Debug, Clone)]
pub struct ComponentProbe {
    /// The component.
    pub component: Component,
    /// Its TLS endpoints and what each serves.
    pub endpoints: Vec<EndpointSpec>,
    /// The client certificate presented on its TLS endpoints, if it requires one.
    pub client: Option<ClientIdentity>,
    /// Its health check.
    pub health: Option<HealthCheck>,
    /// How attempts are retried.
    pub retry: Retry,
}

/// The client certificates etcd probes present, first found first: kubeadm's etcd health client
/// (what kubeadm's own etcd liveness probe uses), then the API server's etcd client, which a
/// control-plane node with external etcd has without the former. Relative to kubeadm's PKI.
pub const ETCD_PROBE_CLIENTS: [&str; 2] = ["etcd/healthcheck-client", "apiserver-etcd-client"];

impl ComponentProbe {
    /// The probe for `component` on the node at `root`, from the `[probe]` settings; reads the
    /// client certificate etcd requires (see [`ETCD_PROBE_CLIENTS`]). Build it after the new
    /// certificates are installed: a renewed health client is then the one presented.
    pub fn new(
        component: Component,
        settings: &ProbeSettings,
        root: &Root,
    ) -> Result<ComponentProbe, ProbeError> {
        let client = match component {
            Component::Etcd => Some(etcd_client(root)?),
            _ => None,
        };
        let health = settings
            .health
            .get(&component)
            .map(|&addr| match component {
                Component::Etcd => HealthCheck::Etcd {
                    addr,
                    client: client.clone(),
                },
                Component::KubeApiserver => HealthCheck::KubeApiserver { addr, client: None },
                Component::Kubelet => HealthCheck::Kubelet { addr },
                Component::KubeControllerManager
                | Component::KubeScheduler
                | Component::Rke2
                | Component::K3s => HealthCheck::TlsHandshake { addr, client: None },
            });
        Ok(ComponentProbe {
            component,
            endpoints: settings
                .endpoints
                .get(&component)
                .cloned()
                .unwrap_or_default(),
            client,
            health,
            retry: Retry::default(),
        })
    }

    /// Proves the component is back on its new certificates: every endpoint serving one of
    /// `expected` serves it (by serial) with a chain that verifies at `now`, and the health
    /// check passes; all before `deadline`. Endpoints serving a certificate not in `expected`
    /// are not asked about it.
    pub async fn prove(
        &self,
        expected: &[Expected<'_>],
        now: OffsetDateTime,
        deadline: Instant,
    ) -> Result<Proof, ProbeError> {
        let started = Instant::now();
        let mut served = Vec::new();
        for spec in &self.endpoints {
            let Some(want) = expected.iter().find(|e| e.name == spec.serves) else {
                continue;
            };
            let endpoint = TlsEndpoint {
                addr: SocketAddr::new(endpoint_host(spec, want.cert), spec.port),
                server_name: spec
                    .server_name
                    .clone()
                    .unwrap_or_else(|| endpoint_host(spec, want.cert).to_string()),
                client: self.client.clone(),
            };
            let got = wait_for_serial(&endpoint, &want.cert.serial, deadline, &self.retry).await?;
            let serial = normalize_serial(&want.cert.serial);
            let ca_bundle: Vec<CertificateDer<'_>> = want
                .ca_bundle
                .iter()
                .map(|c| CertificateDer::from(c.der.as_slice()))
                .collect();
            verify_chain(&got.chain, &ca_bundle, spec.server_name.as_deref(), now).map_err(
                |reason| ProbeError::Chain {
                    endpoint: endpoint.to_string(),
                    serial: serial.clone(),
                    ca: ca_names(want.ca_bundle),
                    reason,
                },
            )?;
            served.push(ServedProof {
                name: spec.serves.clone(),
                endpoint: endpoint.to_string(),
                serial,
            });
        }
        let health = match &self.health {
            Some(check) => Some(wait_healthy(check, deadline, &self.retry).await?),
            None => None,
        };
        Ok(Proof {
            component: self.component,
            served,
            health,
            elapsed: Instant::now() - started,
        })
    }
}

/// The first of [`ETCD_PROBE_CLIENTS`] whose certificate exists on the node.
fn etcd_client(root: &Root) -> Result<ClientIdentity, ProbeError> {
    let file = |name: &str, ext: &str| root.join(format!("{KUBEADM_PKI}/{name}.{ext}"));
    for name in ETCD_PROBE_CLIENTS {
        let cert = file(name, "crt");
        if cert.exists() {
            return ClientIdentity::from_files(&cert, &file(name, "key"));
        }
    }
    Err(ProbeError::Plan {
        component: Component::Etcd,
        reason: format!(
            "etcd requires a client certificate and none of {} exists",
            ETCD_PROBE_CLIENTS
                .iter()
                .map(|name| file(name, "crt").display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// The host an endpoint is reached at: as configured, else the first IP address the certificate
/// names, preferring one that is not loopback, else loopback.
fn endpoint_host(spec: &EndpointSpec, cert: &Cert) -> IpAddr {
    if let Some(host) = spec.host {
        return host;
    }
    let ips: Vec<IpAddr> = cert
        .sans
        .iter()
        .filter_map(|san| match san {
            San::Ip(ip) => Some(*ip),
            _ => None,
        })
        .collect();
    ips.iter()
        .find(|ip| !ip.is_loopback())
        .or_else(|| ips.first())
        .copied()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn ca_names(bundle: &[Cert]) -> String {
    if bundle.is_empty() {
        return "an empty CA bundle".to_owned();
    }
    bundle
        .iter()
        .map(|c| format!("CA {:?}", c.subject))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One endpoint shown to serve its new certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedProof {
    /// The certificate's name.
    pub name: String,
    /// The endpoint.
    pub endpoint: String,
    /// The serial it serves.
    pub serial: String,
}

/// What proved a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The component.
    pub component: Component,
    /// The endpoints that serve their new certificates.
    pub served: Vec<ServedProof>,
    /// The health check's result, when the component has one.
    pub health: Option<Health>,
    /// How long proving took.
    pub elapsed: Duration,
}

impl fmt::Display for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.component)?;
        for (i, s) in self.served.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{} serves {} serial {}", s.endpoint, s.name, s.serial)?;
        }
        if let Some(health) = &self.health {
            write!(f, "; {health}")?;
        }
        write!(f, " (after {})", seconds(self.elapsed))
    }
}
