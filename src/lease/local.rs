//! The lease of a single node: nobody else competes, so it is granted at once. Its fencing token is
//! kept in the state directory so that tokens keep increasing across restarts.

use std::path::{Path, PathBuf};

use super::Held;

/// A single node's lease.
#[derive(Debug, Clone)]
pub struct LocalLease {
    token_file: PathBuf,
    node: String,
}

impl LocalLease {
    /// A lease for `node` whose token lives in `state_dir` (a real path).
    pub fn new(state_dir: &Path, node: &str) -> LocalLease {
        LocalLease {
            token_file: state_dir.join("lease-token"),
            node: node.to_owned(),
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
}
