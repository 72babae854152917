//! The etcd side of a CA turn on a node whose etcd member runs as a systemd unit (or a static
//! pod's unit): connecting with the credentials on the disk now (they change with the node's
//! own step), the member order with the leader last, the quorum guard, and restarting the
//! track's consumers through systemd, waiting for the member to answer again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::drive::{Conn, Connect, Hooks};
use super::record::EtcdStore;
use crate::config::LeaseSettings;
use crate::lease::BoxFuture;
use crate::lease::credentials::Credentials;
use crate::lease::etcd::EtcdLease;
use crate::pki::layout::Component;

/// How long one member may take to answer a status request.
const ANSWER: Duration = Duration::from_secs(2);

/// The lease's credentials as the node's disk holds them now: the etcd CA file (a bundle during
/// the rotation, so both CAs' servers are trusted) and the API server's etcd client certificate.
pub fn disk_credentials(pki: &Path) -> Result<Credentials, String> {
    let read = |rel: &str| {
        let p = pki.join(rel);
        super::read_text(&p)
    };
    Ok(Credentials::from_pem(
        &read("etcd/ca.crt")?,
        &read("apiserver-etcd-client.crt")?,
        &read("apiserver-etcd-client.key")?,
        &pki.join("apiserver-etcd-client.crt").display().to_string(),
    ))
}

async fn client(endpoints: &[String], creds: &Credentials) -> Result<Client, String> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut options = ConnectOptions::new()
        .with_connect_timeout(ANSWER)
        .with_timeout(ANSWER);
    if let Some(ca) = &creds.ca_pem {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = creds.identity() {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|e| format!("connecting to {}: {e}", endpoints.join(",")))
}

/// Connects the lease and the record store with the disk's credentials.
pub struct EtcdConnect {
    /// The node's real PKI directory.
    pub pki: PathBuf,
    /// `[lease]` (endpoints, cluster, TTL).
    pub lease: LeaseSettings,
    /// This node's name.
    pub node: String,
}

impl Connect for EtcdConnect {
    fn connect(&self) -> BoxFuture<'_, Result<Conn, String>> {
        Box::pin(async move {
            let creds = disk_credentials(&self.pki)?;
            let lease = EtcdLease::connect(&self.lease, &self.node, creds.clone())
                .await
                .map_err(|e| e.to_string())?;
            let store = EtcdStore::connect(&self.lease.endpoints, &creds, &self.lease.cluster)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Conn {
                lease: Arc::new(lease),
                store: Arc::new(store),
            })
        })
    }
}

/// The members as etcd lists them: (name, client URLs).
async fn members(
    endpoints: &[String],
    creds: &Credentials,
) -> Result<Vec<(String, u64, Vec<String>)>, String> {
    let mut c = client(endpoints, creds).await?;
    let list = c
        .member_list()
        .await
        .map_err(|e| format!("member list: {e}"))?;
    Ok(list
        .members()
        .iter()
        .map(|m| (m.name().to_owned(), m.id(), m.client_urls().to_vec()))
        .collect())
}

/// The leader's member id, asked of the member at `url`.
async fn status(url: &str, creds: &Credentials) -> Result<u64, String> {
    let mut c = client(&[url.to_owned()], creds).await?;
    let s = tokio::time::timeout(ANSWER, c.status())
        .await
        .map_err(|_| format!("{url}: no answer within {ANSWER:?}"))?
        .map_err(|e| format!("{url}: status: {e}"))?;
    Ok(s.leader())
}

/// etcd judged by its own answers: whether this node's member answers with a leader, the member
/// order with the leader last, and the quorum guard. Credentials are read from the disk at each
/// call: they change with the node's own step.
#[derive(Debug, Clone)]
pub struct EtcdJudge {
    /// The node's real PKI directory.
    pub pki: PathBuf,
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// This node's member name.
    pub node: String,
}

impl EtcdJudge {
    /// Waits until this node's member answers with a leader, at most `timeout`.
    pub async fn wait_member(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            let creds = disk_credentials(&self.pki)?;
            match members(&self.endpoints, &creds).await {
                Ok(ms) => {
                    if let Some((_, _, urls)) = ms.iter().find(|(n, _, _)| *n == self.node) {
                        match status(&urls[0], &creds).await {
                            Ok(leader) if leader != 0 => return Ok(()),
                            Ok(_) => last = "no leader".into(),
                            Err(e) => last = e,
                        }
                    } else {
                        last = format!("no member named {}", self.node);
                    }
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "etcd member {} did not answer within {timeout:?} after its restart: {last}",
            self.node
        ))
    }

    /// The first client URL of this node's own member, as etcd lists it.
    pub async fn member_url(&self) -> Result<String, String> {
        let creds = disk_credentials(&self.pki)?;
        members(&self.endpoints, &creds)
            .await?
            .into_iter()
            .find(|(n, _, _)| *n == self.node)
            .and_then(|(_, _, urls)| urls.into_iter().next())
            .ok_or_else(|| format!("no member named {} with a client URL", self.node))
    }

    /// The member names, as etcd lists them: every control-plane node of a stacked cluster.
    pub async fn member_names(&self) -> Result<Vec<String>, String> {
        let creds = disk_credentials(&self.pki)?;
        let mut names: Vec<String> = members(&self.endpoints, &creds)
            .await?
            .into_iter()
            .map(|(n, _, _)| n)
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        Ok(names)
    }

    /// `names` in the order their steps are taken: the leader last, the others as given.
    pub async fn order(&self, names: &[String]) -> Vec<String> {
        let mut out = names.to_vec();
        let Ok(creds) = disk_credentials(&self.pki) else {
            return out;
        };
        let Ok(ms) = members(&self.endpoints, &creds).await else {
            return out;
        };
        let mut leader = None;
        for (_, _, urls) in &ms {
            if let Ok(id) = status(&urls[0], &creds).await {
                leader = ms
                    .iter()
                    .find(|(_, mid, _)| *mid == id)
                    .map(|(n, _, _)| n.clone());
                break;
            }
        }
        if let Some(l) = leader {
            // Stable: everyone else keeps its order, the leader goes last.
            out.sort_by_key(|n| *n == l);
        }
        out
    }

    /// Whether one member may be restarted now: every other member healthy, so the cluster
    /// keeps quorum while this one restarts.
    pub async fn may_disrupt(&self) -> Result<(), String> {
        let creds = disk_credentials(&self.pki)?;
        let ms = members(&self.endpoints, &creds).await?;
        let mut healthy = 0;
        let mut down = Vec::new();
        for (name, _, urls) in &ms {
            match status(&urls[0], &creds).await {
                Ok(l) if l != 0 => healthy += 1,
                Ok(_) => down.push(format!("{name}: no leader")),
                Err(e) => down.push(e),
            }
        }
        let quorum = ms.len() / 2 + 1;
        // A single member has no quorum to keep: its restart is the outage the operator chose.
        if healthy > quorum || (ms.len() == 1 && healthy == 1) {
            Ok(())
        } else {
            Err(format!(
                "quorum guard: {healthy} of {} members healthy, restarting one would leave \
                 fewer than {quorum}: {}",
                ms.len(),
                down.join("; ")
            ))
        }
    }
}

/// Restarts through systemd and judges etcd by its own answers.
pub struct EtcdHooks {
    /// The node's real PKI directory.
    pub pki: PathBuf,
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// This node's member name.
    pub node: String,
    /// The D-Bus address of the systemd manager (`None`: the system bus).
    pub bus: Option<String>,
    /// The unit of each consumer this node runs; a consumer without one is not restarted.
    pub units: Vec<(Component, String)>,
    /// How long a restart may take until the component answers again.
    pub timeout: Duration,
}

impl EtcdHooks {
    fn judge(&self) -> EtcdJudge {
        EtcdJudge {
            pki: self.pki.clone(),
            endpoints: self.endpoints.clone(),
            node: self.node.clone(),
        }
    }
}

impl Hooks for EtcdHooks {
    fn restart(&self, component: Component) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let Some((_, unit)) = self.units.iter().find(|(c, _)| *c == component) else {
                return Ok(());
            };
            let systemd = crate::restart::systemd::Systemd::connect(self.bus.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            systemd
                .restart_unit(unit, self.timeout)
                .await
                .map_err(|e| e.to_string())?;
            if component == Component::Etcd {
                self.judge().wait_member(self.timeout).await?;
            }
            Ok(())
        })
    }

    fn order<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move { self.judge().order(names).await })
    }

    fn may_disrupt(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.judge().may_disrupt().await })
    }

    fn member_url(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move { self.judge().member_url().await.ok() })
    }
}
