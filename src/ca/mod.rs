//! CA rotation: replacing a cluster CA (etcd-ca, front-proxy-ca) with no downtime, in the three
//! steps every serious system uses — trust both CAs, issue from the new one, distrust the old —
//! with a cluster-wide barrier between them.
//!
//! - [`track`]: which files and consumers a CA has;
//! - [`phase`]: the cluster phases and the per-node levels they ask for, with guarded transitions;
//! - [`material`]: the new CA (generated like the old one, or taken from the operator's files);
//! - [`wrap`]: the new CA key, encrypted for the other control-plane nodes;
//! - [`record`]: the cluster record (etcd, or the state directory) with compare-and-swap;
//! - [`node`]: one node's idempotent step, its backups and its proof from disk;
//! - [`lost`]: a node cut off from etcd after its own step puts the step back;
//! - [`probe`]: an etcd-ca step proved over TLS with in-memory clients of the new and old CA;
//! - [`coordinate`]: what the lease holder decides (advance, wait, roll back);
//! - [`notice`]: the `ca-rotation-due` notices, once per CA and stage;
//! - [`settings`]: the `[ca]` table;
//! - [`view`]: what the daemon knows of each track, for `ca status`.

pub mod coordinate;
pub mod drive;
pub mod etcd;
pub mod lost;
pub mod material;
pub mod node;
pub mod notice;
pub mod phase;
pub mod probe;
pub mod record;
pub mod settings;
pub mod track;
pub mod units;
pub mod view;
pub mod wrap;

pub use phase::{Level, Phase};
pub use track::Track;

/// A file the CA code reads (a CA bundle, a key, a backup, a record): a regular file only, never a
/// device or FIFO someone planted, and at most [`crate::pki::pem::MAX_FILE_BYTES`].
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, crate::pki::pem::ReadError> {
    crate::pki::pem::read_capped(path).map(|b| b.to_vec())
}

/// [`read_file`] as text; the error names the file.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String, String> {
    let data = read_file(path).map_err(|e| e.to_string())?;
    String::from_utf8(data).map_err(|_| format!("{}: not text", path.display()))
}

/// SHA-256 of a certificate's DER, lower-case hex: how the record and the proofs name a CA.
pub fn fingerprint(der: &[u8]) -> String {
    crate::store::sha256_hex(der)
}
