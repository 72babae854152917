//! The CAs certrotd rotates, with the files each one touches and the components that read them
//! (kubeadm's layout; paths relative to the PKI directory `/etc/kubernetes/pki`).

use serde::{Deserialize, Serialize};

use crate::pki::layout::Component;

/// One rotatable CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Track {
    /// etcd's CA: trusted by every member for clients and peers, and by the API server's etcd
    /// client. Rotated alone: certrotd's own lease runs over the etcd whose trust it changes.
    EtcdCa,
    /// The front proxy's CA: signs the API server's client certificate towards aggregated API
    /// servers, which verify it against `front-proxy-ca.crt`.
    FrontProxyCa,
}

/// A leaf the track re-issues in `IssueNew`, same key and attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// The inventory's name for it.
    pub name: &'static str,
    /// Its certificate, relative to the PKI directory.
    pub cert: &'static str,
    /// Its key, relative to the PKI directory.
    pub key: &'static str,
}

impl Track {
    /// Every track, in the order `ca status` lists them.
    pub const ALL: [Track; 2] = [Track::EtcdCa, Track::FrontProxyCa];

    /// The name on the command line, in the record key and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Track::EtcdCa => "etcd-ca",
            Track::FrontProxyCa => "front-proxy-ca",
        }
    }

    /// Parses a name as [`Track::as_str`] writes it.
    pub fn parse(name: &str) -> Option<Track> {
        Track::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The CA certificate (a bundle during the rotation), relative to the PKI directory.
    pub fn ca_cert(self) -> &'static str {
        match self {
            Track::EtcdCa => "etcd/ca.crt",
            Track::FrontProxyCa => "front-proxy-ca.crt",
        }
    }

    /// The CA key, relative to the PKI directory.
    pub fn ca_key(self) -> &'static str {
        match self {
            Track::EtcdCa => "etcd/ca.key",
            Track::FrontProxyCa => "front-proxy-ca.key",
        }
    }

    /// The leaves the CA signs, re-issued in `IssueNew`.
    pub fn leaves(self) -> &'static [Leaf] {
        match self {
            Track::EtcdCa => &[
                Leaf {
                    name: "etcd-server",
                    cert: "etcd/server.crt",
                    key: "etcd/server.key",
                },
                Leaf {
                    name: "etcd-peer",
                    cert: "etcd/peer.crt",
                    key: "etcd/peer.key",
                },
                Leaf {
                    name: "etcd-healthcheck-client",
                    cert: "etcd/healthcheck-client.crt",
                    key: "etcd/healthcheck-client.key",
                },
                Leaf {
                    name: "apiserver-etcd-client",
                    cert: "apiserver-etcd-client.crt",
                    key: "apiserver-etcd-client.key",
                },
            ],
            Track::FrontProxyCa => &[Leaf {
                name: "front-proxy-client",
                cert: "front-proxy-client.crt",
                key: "front-proxy-client.key",
            }],
        }
    }

    /// The components restarted after each of the node's steps, in order: etcd keeps its
    /// trusted CA from start to exit, and the API server reads `--etcd-cafile` only at start;
    /// for the front proxy the API server and the controller manager
    /// (`--requestheader-client-ca-file`).
    pub fn consumers(self) -> &'static [Component] {
        match self {
            Track::EtcdCa => &[Component::Etcd, Component::KubeApiserver],
            Track::FrontProxyCa => &[Component::KubeApiserver, Component::KubeControllerManager],
        }
    }
}

impl std::fmt::Display for Track {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_track_names_itself_back_and_keeps_its_files_apart() {
        for t in Track::ALL {
            assert_eq!(Track::parse(t.as_str()), Some(t));
            assert!(t.leaves().iter().all(|l| l.cert != t.ca_cert()));
        }
        assert_eq!(Track::parse("kubernetes-ca"), None);
        assert_eq!(Track::EtcdCa.consumers()[0], Component::Etcd);
    }
}
