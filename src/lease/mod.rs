//! Taking turns: a node holds a lease across every disruptive step of a rotation, so that only one
//! node (or `slots` nodes) disrupts its components at a time. `local` is the single-node lease;
//! the etcd-backed one shares a cluster's slots between its nodes.

pub mod local;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::rotation::{Guard, GuardLost};

/// A lease held by this node.
#[derive(Debug, Clone)]
pub struct Held {
    /// Increases with every acquisition, so records and writes can be ordered across holders.
    pub fencing_token: u64,
    /// Who holds it (this node).
    pub holder: String,
    lost: Arc<AtomicBool>,
    why_lost: Arc<std::sync::Mutex<String>>,
}

impl Held {
    /// A held lease with a fencing token.
    pub fn new(holder: &str, fencing_token: u64) -> Held {
        Held {
            fencing_token,
            holder: holder.to_owned(),
            lost: Arc::new(AtomicBool::new(false)),
            why_lost: Arc::new(std::sync::Mutex::new(String::new())),
        }
    }

    /// Marks the lease lost (its keep-alive failed, its TTL ran out): every later guard check fails.
    pub fn mark_lost(&self, why: &str) {
        *self.why_lost.lock().unwrap_or_else(|p| p.into_inner()) = why.to_owned();
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Whether it is still held.
    pub fn is_held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }
}

impl Guard for Held {
    fn check(&self, step: &str) -> Result<(), GuardLost> {
        if self.is_held() {
            return Ok(());
        }
        let why = self
            .why_lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Err(GuardLost(format!(
            "lease lost before {step}: {why}; stopping without further changes"
        )))
    }
}
