//! Cluster recovery: a cluster whose certificates all expired (powered off for more than a year).
//! (Not the finishing of interrupted rotations, which is `rotation::finish_interrupted`.)
//!
//! When this node's own etcd server AND peer certificates have expired, its etcd member cannot
//! talk to anyone, so the cluster cannot be up and there is no availability left to protect. The
//! lease lives in that same etcd, so waiting for it would wait forever: the etcd certificates are
//! renewed without it (the record says so, with no fencing token), etcd is restarted, and once
//! it answers the daemon goes on normally, taking the lease for everything else.
//!
//! The decision is a pure function of the inventory and `now`, so it is tested without a cluster.

use time::OffsetDateTime;

use crate::inventory::Inventory;
use crate::rotation::RotationType;

/// What a recovery renews, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The certificates (inventory names): every etcd leaf the node has.
    pub certs: Vec<String>,
    /// Why, for history and the journal.
    pub why: String,
}

/// The certificates whose expiry proves the cluster is down: a member whose server and peer
/// certificates both expired is cut off from its peers and its clients.
const DOWN_WHEN_EXPIRED: [&str; 2] = ["etcd-server", "etcd-peer"];

/// Whether this node must recover its etcd without the lease at `now`, and what to renew. `None`
/// when the node runs no etcd member or either certificate is still valid (then the cluster may
/// be up, and the lease is required).
pub fn needed(inv: &Inventory, now: OffsetDateTime) -> Option<Plan> {
    let mut expired_at = Vec::new();
    for name in DOWN_WHEN_EXPIRED {
        let cert = inv.get(name)?.cert.as_ref()?;
        if cert.not_after > now {
            return None;
        }
        expired_at.push(format!(
            "{name} expired {}",
            crate::timefmt::rfc3339(cert.not_after)
        ));
    }
    // Every etcd leaf: the healthcheck client proves the restarted member, and the API server's
    // etcd client is the lease's default identity afterwards.
    let certs: Vec<String> = RotationType::EtcdLeaf
        .members()
        .iter()
        .filter(|n| inv.get(n).is_some_and(|e| e.cert.is_some()))
        .map(|n| (*n).to_owned())
        .collect();
    Some(Plan {
        certs,
        why: format!(
            "RECOVERY without the lease: {}; this etcd member cannot reach its peers, so the cluster cannot be up",
            expired_at.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::encode::KeySpec;
    use crate::pki::layout::Layout;
    use crate::root::Root;
    use crate::sandbox::{self, SandboxOptions};

    fn node(at: OffsetDateTime) -> (tempfile::TempDir, Inventory) {
        let tmp = tempfile::tempdir().unwrap();
        let sb = sandbox::write(
            &tmp.path().join("node"),
            &SandboxOptions {
                key: KeySpec::EcdsaP256,
                ..SandboxOptions::default()
            },
            at,
        )
        .unwrap();
        let root = Root::new(&sb.dir);
        let inv = crate::inventory::scan(&crate::inventory::ScanRequest {
            root: &root,
            layouts: Some(vec![Layout::Kubeadm]),
            extra_paths: &[],
        });
        (tmp, inv)
    }

    #[test]
    fn a_node_whose_etcd_certificates_expired_recovers_every_etcd_leaf() {
        let now = OffsetDateTime::now_utc();
        let (_tmp, inv) = node(now - time::Duration::days(400));
        let plan = needed(&inv, now).expect("expired etcd needs recovery");
        assert_eq!(
            plan.certs,
            [
                "etcd-server",
                "etcd-peer",
                "etcd-healthcheck-client",
                "apiserver-etcd-client"
            ]
        );
        assert!(plan.why.contains("etcd-server expired"), "{}", plan.why);
        assert!(plan.why.contains("etcd-peer expired"), "{}", plan.why);
    }

    #[test]
    fn valid_etcd_certificates_need_the_lease() {
        let now = OffsetDateTime::now_utc();
        let (_tmp, inv) = node(now);
        assert_eq!(needed(&inv, now), None);
        // The same node a few days before its certificates expire: still up, still the lease.
        assert_eq!(needed(&inv, now + time::Duration::days(360)), None);
        assert!(needed(&inv, now + time::Duration::days(400)).is_some());
    }

    #[test]
    fn a_node_without_etcd_never_recovers_without_the_lease() {
        let now = OffsetDateTime::now_utc();
        let (_tmp, mut inv) = node(now - time::Duration::days(400));
        inv.entries.retain(|e| e.name != "etcd-peer");
        assert_eq!(needed(&inv, now), None);
    }
}
