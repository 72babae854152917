//! The lease of a single node: nobody else competes, so it is granted at once. Its fencing token is
//! kept in the state directory so that tokens keep increasing across restarts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{BoxFuture, ClusterView, Held, Lease, LeaseError, NodeSummary, Want};

/// A single node's lease.
#[derive(Debug, Clone)]
pub struct LocalLease {
    token_file: PathBuf,
    node: String,
    /// What `set_step` and `publish` were told, for `view`.
    state: Arc<Mutex<LocalState>>,
}

/// The local lease's memory.
#[derive(Debug, Clone, Default)]
struct LocalState {
    holder: Option<super::HolderRecord>,
    summary: Option<NodeSummary>,
}

impl LocalLease {
    /// A lease for `node` whose token lives in `state_dir` (a real path).
    pub fn new(state_dir: &Path, node: &str) -> LocalLease {
        LocalLease {
            token_file: state_dir.join("lease-token"),
            node: node.to_owned(),
            state: Arc::default(),
        }
    }

    /// Takes the lease (always granted) with the next fencing token.
    pub fn acquire(&self) -> std::io::Result<Held> {
        let last: u64 = std::fs::read_to_string(&self.token_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let next = last + 1;
        if let Some(dir) = self.token_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::store::write_atomic(&self.token_file, format!("{next}\n").as_bytes(), 0o600)
            .map_err(std::io::Error::other)?;
        Ok(Held::new(&self.node, next))
    }
}

impl LocalLease {
    fn take(&self) -> Result<Held, LeaseError> {
        self.acquire().map_err(|e| LeaseError::Local {
            op: "writing the fencing token",
            path: self.token_file.clone(),
            error: e.to_string(),
        })
    }
}

impl LocalLease {
    /// Still held: not lost, and no later acquisition on this node took a newer token (two
    /// daemons sharing a state directory would otherwise both go ahead).
    fn confirm_inner(&self, held: &Held, step: &str) -> Result<(), LeaseError> {
        held.confirm_held(step)?;
        let fenced = |why: String| held.fence(step, why);
        let text = std::fs::read_to_string(&self.token_file).map_err(|e| {
            fenced(format!(
                "reading the fencing token {}: {e}",
                self.token_file.display()
            ))
        })?;
        match text.trim().parse::<u64>() {
            Ok(latest) if latest == held.fencing_token => Ok(()),
            Ok(latest) => Err(fenced(format!(
                "{} now holds token {latest}, ours was {}",
                self.token_file.display(),
                held.fencing_token
            ))),
            Err(e) => Err(fenced(format!(
                "reading the fencing token {}: {e}",
                self.token_file.display()
            ))),
        }
    }
}

impl Lease for LocalLease {
    fn describe(&self) -> String {
        "local lease".to_owned()
    }

    fn acquire<'a>(&'a self, want: &'a Want) -> BoxFuture<'a, Result<Held, LeaseError>> {
        Box::pin(async move {
            let held = self.take()?;
            self.state.lock().unwrap_or_else(|p| p.into_inner()).holder =
                Some(super::HolderRecord {
                    slot: 0,
                    node: self.node.clone(),
                    rotation_id: want.rotation_id.clone(),
                    since: super::record::rfc3339(want.now),
                    step: "acquired".to_owned(),
                    fencing_token: held.fencing_token,
                });
            Ok(held)
        })
    }

    fn set_step<'a>(
        &'a self,
        held: &'a Held,
        step: &'a str,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            if !held.is_held() {
                return Err(LeaseError::Lost(held.why_lost()));
            }
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(holder) = state.holder.as_mut() {
                holder.step = step.to_owned();
            }
            Ok(())
        })
    }

    fn confirm<'a>(
        &'a self,
        held: &'a Held,
        step: &'a str,
        _min_ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        // A local lease has no TTL: nobody else can take it while it is held.
        Box::pin(async move { self.confirm_inner(held, step) })
    }

    fn release<'a>(&'a self, held: Held) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            held.mark_lost("released");
            self.state.lock().unwrap_or_else(|p| p.into_inner()).holder = None;
            Ok(())
        })
    }

    fn publish<'a>(&'a self, summary: &'a NodeSummary) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).summary = Some(summary.clone());
            Ok(())
        })
    }

    fn view<'a>(&'a self) -> BoxFuture<'a, Result<ClusterView, LeaseError>> {
        Box::pin(async move {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Ok(ClusterView {
                cluster: "local".to_owned(),
                slots: 1,
                holders: state.holder.into_iter().collect(),
                queue: Vec::new(),
                nodes: state.summary.into_iter().collect(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::Guard as _;

    #[test]
    fn tokens_increase_and_a_lost_lease_fails_its_guard() {
        let tmp = tempfile::tempdir().unwrap();
        let lease = LocalLease::new(tmp.path(), "cp1");
        let a = lease.acquire().unwrap();
        let b = LocalLease::new(tmp.path(), "cp1").acquire().unwrap();
        assert!(b.fencing_token > a.fencing_token);
        assert!(b.check("install").is_ok());
        b.mark_lost("ttl expired");
        let e = b.check("install apiserver.crt").unwrap_err();
        assert!(e.to_string().contains("ttl expired"), "{e}");
    }

    #[tokio::test]
    async fn confirm_passes_while_held_and_fails_after_a_newer_token_or_a_loss() {
        use crate::lease::Lease as _;
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        let lease = LocalLease::new(tmp.path(), "cp1");
        let a = lease.take().unwrap();
        lease
            .confirm(&a, "install", Duration::from_secs(3600))
            .await
            .unwrap();
        assert!(a.is_held());
        // A second daemon on the same state directory took the lease after us.
        let b = LocalLease::new(tmp.path(), "cp1").take().unwrap();
        let e = lease
            .confirm(&a, "restart kubelet", Duration::ZERO)
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, LeaseError::Fenced { .. }), "{e}");
        assert!(
            text.contains("restart kubelet")
                && text.contains(&format!("token {}", b.fencing_token)),
            "{text}"
        );
        assert!(!a.is_held());
        lease.confirm(&b, "install", Duration::ZERO).await.unwrap();
        b.mark_lost("released");
        let e = lease
            .confirm(&b, "install", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("released"), "{e}");
    }
}
