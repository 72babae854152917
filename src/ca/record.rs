//! The cluster record of one track's rotation, and where it is kept: in etcd under
//! `/certrotd/<cluster>/ca/<track>`, or with `[lease] backend = "local"` in the state directory
//! (`<state_dir>/ca/<track>.json`). Every write is a compare-and-swap on the version read, so two
//! nodes that both think they coordinate cannot both advance the phase.
//!
//! The record holds the new CA certificate and the new key only wrapped ([`super::wrap`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::phase::{Level, Phase};
use super::track::Track;
use crate::lease::BoxFuture;

/// One node's step, as it recorded it after proving it from its disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStep {
    /// The level the node's files were proved to hold.
    pub level: Level,
    /// The fencing token of the lease the node held when it took the step.
    pub fencing_token: u64,
    /// When it was proved.
    #[serde(with = "time::serde::rfc3339")]
    pub proved_at: OffsetDateTime,
    /// What the proof saw (fingerprints, issuers), for `ca status`.
    #[serde(default)]
    pub detail: String,
}

/// When a phase started, and who started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseMark {
    /// The phase.
    pub phase: Phase,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// The node that moved the record into it.
    pub by: String,
    /// That node's fencing token.
    pub fencing_token: u64,
}

/// The cluster record of one track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    /// Which CA.
    pub track: Track,
    /// This rotation's id (backups on every node are named after it).
    pub rotation_id: String,
    /// Where the rotation stands.
    pub phase: Phase,
    /// SHA-256 of the old CA certificate.
    pub old_fp: String,
    /// SHA-256 of the new CA certificate.
    pub new_fp: String,
    /// The old CA certificate (PEM): public, kept so a node can put it back in a bundle.
    pub old_ca_pem: String,
    /// The new CA certificate (PEM).
    pub new_ca_pem: String,
    /// The new CA key, wrapped for the holders of the old CA key.
    pub wrapped_key: String,
    /// The control-plane nodes taking part, every one of which must take each step.
    pub members: Vec<String>,
    /// Each node's last proved step.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeStep>,
    /// When each phase started, oldest first.
    #[serde(default)]
    pub phases: Vec<PhaseMark>,
}

impl CaRecord {
    /// When the current phase started.
    pub fn phase_started(&self) -> Option<OffsetDateTime> {
        self.phases
            .iter()
            .rev()
            .find(|m| m.phase == self.phase)
            .map(|m| m.started_at)
    }
}

/// The version a record was read at; a write succeeds only if it is still current.
pub type Version = i64;

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// etcd failed or could not be reached.
    #[error("CA record in etcd: {op}: {error}")]
    Etcd {
        /// What was being done.
        op: String,
        /// Why.
        error: String,
    },
    /// The state-directory file could not be read or written.
    #[error("CA record {}: {error}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// The stored record does not parse.
    #[error("CA record {key}: {error}")]
    Parse {
        /// Its key or path.
        key: String,
        /// Why.
        error: String,
    },
    /// Someone else wrote the record since it was read.
    #[error("CA record {key} changed since it was read (another coordinator); read it again")]
    Conflict {
        /// Its key or path.
        key: String,
    },
}

/// Where the records are kept.
pub trait RecordStore: Send + Sync {
    /// Reads the record of `track`, with its version; `None` if there is none.
    fn load(&self, track: Track)
    -> BoxFuture<'_, Result<Option<(CaRecord, Version)>, RecordError>>;
    /// Writes `record` if the stored one is still at `expected` (`None`: there must be none);
    /// returns the new version, or [`RecordError::Conflict`].
    fn swap<'a>(
        &'a self,
        expected: Option<Version>,
        record: &'a CaRecord,
    ) -> BoxFuture<'a, Result<Version, RecordError>>;
}

/// The key of a track's record under the cluster prefix.
pub fn etcd_key(cluster: &str, track: Track) -> String {
    format!("/certrotd/{cluster}/ca/{}", track.as_str())
}

/// Records in etcd.
pub struct EtcdStore {
    client: etcd_client::Client,
    cluster: String,
}

impl EtcdStore {
    /// A store on an open client, for the cluster `cluster`.
    pub fn new(client: etcd_client::Client, cluster: &str) -> EtcdStore {
        EtcdStore {
            client,
            cluster: cluster.to_owned(),
        }
    }

    /// Connects to `endpoints` with the lease's credentials.
    pub async fn connect(
        endpoints: &[String],
        credentials: &crate::lease::credentials::Credentials,
        cluster: &str,
    ) -> Result<EtcdStore, RecordError> {
        use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut options =
            ConnectOptions::new().with_connect_timeout(std::time::Duration::from_secs(5));
        if let Some(ca) = &credentials.ca_pem {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = credentials.identity() {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        let client = etcd_client::Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| RecordError::Etcd {
                op: format!("connecting to {}", endpoints.join(",")),
                error: e.to_string(),
            })?;
        Ok(EtcdStore::new(client, cluster))
    }
}

impl RecordStore for EtcdStore {
    fn load(
        &self,
        track: Track,
    ) -> BoxFuture<'_, Result<Option<(CaRecord, Version)>, RecordError>> {
        Box::pin(async move {
            let key = etcd_key(&self.cluster, track);
            let resp = self
                .client
                .kv_client()
                .get(key.as_str(), None)
                .await
                .map_err(|e| RecordError::Etcd {
                    op: format!("reading {key}"),
                    error: e.to_string(),
                })?;
            let Some(kv) = resp.kvs().first() else {
                return Ok(None);
            };
            let record = serde_json::from_slice(kv.value()).map_err(|e| RecordError::Parse {
                key: key.clone(),
                error: e.to_string(),
            })?;
            Ok(Some((record, kv.mod_revision())))
        })
    }

    fn swap<'a>(
        &'a self,
        expected: Option<Version>,
        record: &'a CaRecord,
    ) -> BoxFuture<'a, Result<Version, RecordError>> {
        Box::pin(async move {
            use etcd_client::{Compare, CompareOp, Txn, TxnOp};
            let key = etcd_key(&self.cluster, record.track);
            let value = serde_json::to_vec(record).map_err(|e| RecordError::Parse {
                key: key.clone(),
                error: e.to_string(),
            })?;
            let guard = match expected {
                Some(rev) => Compare::mod_revision(key.as_str(), CompareOp::Equal, rev),
                None => Compare::version(key.as_str(), CompareOp::Equal, 0),
            };
            let txn = Txn::new()
                .when([guard])
                .and_then([TxnOp::put(key.as_str(), value, None)]);
            let resp = self
                .client
                .kv_client()
                .txn(txn)
                .await
                .map_err(|e| RecordError::Etcd {
                    op: format!("writing {key}"),
                    error: e.to_string(),
                })?;
            if !resp.succeeded() {
                return Err(RecordError::Conflict { key });
            }
            Ok(resp.header().map_or(0, |h| h.revision()))
        })
    }
}

/// Records in the state directory, for a single node with the local lease.
pub struct LocalStore {
    dir: PathBuf,
    lock: Arc<std::sync::Mutex<()>>,
}

/// The file form: the record and a counter standing in for etcd's revision.
#[derive(Serialize, Deserialize)]
struct LocalFile {
    version: Version,
    record: CaRecord,
}

impl LocalStore {
    /// A store in `<state_dir>/ca`.
    pub fn new(state_dir: &std::path::Path) -> LocalStore {
        LocalStore {
            dir: state_dir.join("ca"),
            lock: Arc::default(),
        }
    }

    fn path(&self, track: Track) -> PathBuf {
        self.dir.join(format!("{}.json", track.as_str()))
    }

    fn read(&self, track: Track) -> Result<Option<LocalFile>, RecordError> {
        let path = self.path(track);
        match super::read_file(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| RecordError::Parse {
                    key: path.display().to_string(),
                    error: e.to_string(),
                }),
            Err(crate::pki::pem::ReadError::Missing { .. }) => Ok(None),
            Err(e) => Err(RecordError::File {
                path,
                error: e.to_string(),
            }),
        }
    }
}

impl RecordStore for LocalStore {
    fn load(
        &self,
        track: Track,
    ) -> BoxFuture<'_, Result<Option<(CaRecord, Version)>, RecordError>> {
        Box::pin(async move { Ok(self.read(track)?.map(|f| (f.record, f.version))) })
    }

    fn swap<'a>(
        &'a self,
        expected: Option<Version>,
        record: &'a CaRecord,
    ) -> BoxFuture<'a, Result<Version, RecordError>> {
        Box::pin(async move {
            let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let path = self.path(record.track);
            let current = self.read(record.track)?.map(|f| f.version);
            if current != expected {
                return Err(RecordError::Conflict {
                    key: path.display().to_string(),
                });
            }
            let version = current.unwrap_or(0) + 1;
            let file_err = |error: String| RecordError::File {
                path: path.clone(),
                error,
            };
            std::fs::create_dir_all(&self.dir).map_err(|e| file_err(e.to_string()))?;
            let data = serde_json::to_vec_pretty(&LocalFile {
                version,
                record: record.clone(),
            })
            .map_err(|e| file_err(e.to_string()))?;
            crate::store::write_atomic(&path, &data, 0o600).map_err(|e| file_err(e.to_string()))?;
            Ok(version)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use time::macros::datetime;

    pub(crate) fn record() -> CaRecord {
        CaRecord {
            track: Track::EtcdCa,
            rotation_id: "ca-etcd-ca-20261207T000000Z".to_owned(),
            phase: Phase::Planned,
            old_fp: "aa".to_owned(),
            new_fp: "bb".to_owned(),
            old_ca_pem: String::new(),
            new_ca_pem: String::new(),
            wrapped_key: "v1:xyz".to_owned(),
            members: vec!["cp1".to_owned(), "cp2".to_owned()],
            nodes: BTreeMap::new(),
            phases: vec![PhaseMark {
                phase: Phase::Planned,
                started_at: datetime!(2026-12-07 0:00 UTC),
                by: "cp1".to_owned(),
                fencing_token: 7,
            }],
        }
    }

    #[tokio::test]
    async fn the_local_store_swaps_only_from_the_version_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        assert!(store.load(Track::EtcdCa).await.unwrap().is_none());
        let mut r = record();
        let v1 = store.swap(None, &r).await.unwrap();
        assert!(matches!(
            store.swap(None, &r).await,
            Err(RecordError::Conflict { .. })
        ));
        r.phase = Phase::TrustBoth;
        let v2 = store.swap(Some(v1), &r).await.unwrap();
        assert!(matches!(
            store.swap(Some(v1), &r).await,
            Err(RecordError::Conflict { .. })
        ));
        let (back, v) = store.load(Track::EtcdCa).await.unwrap().unwrap();
        assert_eq!((back, v), (r, v2));
        assert!(store.load(Track::FrontProxyCa).await.unwrap().is_none());
    }
}
