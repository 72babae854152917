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
//! - [`coordinate`]: what the lease holder decides (advance, wait, roll back);
//! - [`notice`]: the `ca-rotation-due` notices, once per CA and stage;
//! - [`settings`]: the `[ca]` table;
//! - [`view`]: what the daemon knows of each track, for `ca status`.

pub mod coordinate;
pub mod drive;
pub mod etcd;
pub mod material;
pub mod node;
pub mod notice;
pub mod phase;
pub mod record;
pub mod settings;
pub mod track;
pub mod units;
pub mod view;
pub mod wrap;

pub use phase::{Level, Phase};
pub use track::Track;

/// SHA-256 of a certificate's DER, lower-case hex: how the record and the proofs name a CA.
pub fn fingerprint(der: &[u8]) -> String {
    crate::store::sha256_hex(der)
}
