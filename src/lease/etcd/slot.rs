//! Taking and holding a slot: wait in the queue (watching the queue and slots range), take a free
//! slot in one transaction when this node's turn has come, keep its etcd lease alive, move the
//! holder record's step, and give it back. Everything here runs for one [`Held`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, WatchOptions, WatchStream};
use futures_util::FutureExt as _;
use tokio::time::{Instant, timeout, timeout_at};

use super::{AbortOnDrop, EtcdLease, MAX_RETRY_PAUSE, chain, json};
use crate::lease::record::{HolderRecord, QueueEntry, rfc3339};
use crate::lease::{Held, LeaseError, Want};

/// What an etcd holder needs to update and give back its slot; lives inside [`Held`].
#[derive(Debug)]
pub struct Holding {
    pub(super) lease_id: i64,
    pub(super) key: String,
    pub(super) record: std::sync::Mutex<HolderRecord>,
    pub(super) keepalive: AbortOnDrop,
}

/// Revokes a waiter's etcd lease when `acquire` is dropped before it returned (the daemon
/// stopping), so its queue entry goes at once rather than after the TTL.
struct RevokeOnDrop {
    client: Option<Client>,
    lease_id: i64,
}

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        let (Some(client), Ok(runtime)) =
            (self.client.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let id = self.lease_id;
        runtime.spawn(async move {
            let _ = timeout(Duration::from_secs(2), client.lease_client().revoke(id)).await;
        });
    }
}

impl EtcdLease {
    /// A watch on the queue and the slots from `revision` on.
    async fn watch_from(&self, revision: i64) -> Result<WatchStream, LeaseError> {
        let from = self.key("queue", "");
        let to = format!("{}slots0", self.prefix);
        self.call(&format!("watching {from}"), |c| {
            let (from, to) = (from.clone(), to.clone());
            async move {
                let options = WatchOptions::new()
                    .with_range(to)
                    .with_start_revision(revision);
                c.watch_client().watch(from, Some(options)).await
            }
        })
        .await
    }

    /// Waits until the queue or the slots change (or a safety interval passes: a watch can miss
    /// nothing, but a broken one is only noticed by reading again).
    async fn wait_change(&self, watch: &mut Option<WatchStream>, revision: i64) {
        let Some(stream) = watch.as_mut() else {
            tokio::time::sleep(self.op_timeout() / 2).await;
            *watch = self.watch_from(revision + 1).await.ok();
            return;
        };
        let deadline = Instant::now() + self.ttl;
        loop {
            match timeout_at(deadline, stream.message()).await {
                Err(_) => return,
                Ok(Ok(Some(resp))) if resp.canceled() || resp.compact_revision() > 0 => {
                    *watch = None;
                    return;
                }
                Ok(Ok(Some(resp))) if resp.events().is_empty() => continue,
                Ok(Ok(Some(_))) => break,
                Ok(Ok(None) | Err(_)) => {
                    *watch = None;
                    return;
                }
            }
        }
        // Several changes often come together (a release deletes a slot and a queue entry):
        // one read covers them all.
        while let Some(Ok(Some(_))) = stream.message().now_or_never() {}
    }

    pub(super) async fn acquire_inner(&self, want: &Want) -> Result<Held, LeaseError> {
        let started = Instant::now();
        let lease_id = self.grant(self.ttl).await?;
        let mut revoke = RevokeOnDrop {
            client: Some(self.client.clone()),
            lease_id,
        };
        let held = Held::new(&want.node, 0);
        let keepalive = AbortOnDrop(tokio::spawn(keep_alive(
            self.client.clone(),
            lease_id,
            self.ttl,
            held.clone(),
            self.requests.clone(),
        )));
        let queue_key = self.key("queue", &want.node);
        let entry = QueueEntry {
            node: want.node.clone(),
            role: want.role,
            earliest_expiry: rfc3339(want.earliest_expiry),
            since: rfc3339(want.now),
        };
        // A failure here is retried by the loop, which puts the entry back whenever it is missing.
        if let Err(e) = self.put(&queue_key, json(&entry), lease_id).await {
            tracing::debug!("lease: {e}; retrying");
        }
        let mut watch = None;
        loop {
            if !held.is_held() {
                return Err(LeaseError::Lost(format!(
                    "while waiting in the queue: {}",
                    held.why_lost()
                )));
            }
            let snap = match self.snapshot().await {
                Ok(snap) => snap,
                // Transient (a member restarting): the keep-alive decides when to give up.
                Err(e) => {
                    tracing::debug!("lease: {e}; retrying");
                    tokio::time::sleep(self.op_timeout() / 2).await;
                    continue;
                }
            };
            if watch.is_none() {
                watch = self.watch_from(snap.revision + 1).await.ok();
            }
            // A take whose answer was lost on the way back is found here, by its lease.
            let mine = snap.holders.iter().find(|(id, _)| *id == lease_id);
            if let Some((_, record)) = mine {
                revoke.client = None;
                return Ok(self.holding(held, record.clone(), lease_id, keepalive));
            }
            if !snap.queue.iter().any(|e| e.node == want.node) {
                if let Err(e) = self.put(&queue_key, json(&entry), lease_id).await {
                    tracing::debug!("lease: {e}; retrying");
                    tokio::time::sleep(self.op_timeout() / 2).await;
                }
                continue;
            }
            if let Some(slot) = snap.slot_for(&want.node, self.slots) {
                let record = HolderRecord {
                    slot,
                    node: want.node.clone(),
                    rotation_id: want.rotation_id.clone(),
                    since: rfc3339(want.now + started.elapsed()),
                    step: "acquired".to_owned(),
                    fencing_token: 0,
                };
                match self.take_slot(&record, &queue_key, lease_id).await {
                    Ok(Some(token)) => {
                        revoke.client = None;
                        let record = HolderRecord {
                            fencing_token: token,
                            ..record
                        };
                        return Ok(self.holding(held, record, lease_id, keepalive));
                    }
                    // Someone was faster: the next read shows who.
                    Ok(None) => {}
                    // The answer may have been lost after the take: the next read tells.
                    Err(e) => tracing::debug!("lease: {e}; retrying"),
                }
                continue;
            }
            self.wait_change(&mut watch, snap.revision).await;
        }
    }

    /// Makes `held` the holder of `record`'s slot.
    fn holding(
        &self,
        mut held: Held,
        record: HolderRecord,
        lease_id: i64,
        keepalive: AbortOnDrop,
    ) -> Held {
        tracing::info!(
            "lease: {} took slot {} of cluster {} (fencing token {})",
            record.node,
            record.slot,
            self.cluster,
            record.fencing_token
        );
        held.fencing_token = record.fencing_token;
        held.etcd = Some(Arc::new(Holding {
            lease_id,
            key: self.key("slots", &record.slot.to_string()),
            record: std::sync::Mutex::new(record),
            keepalive,
        }));
        held
    }

    /// Creates the slot key if absent and removes the queue entry, in one transaction; the
    /// fencing token (the transaction's revision, so the key's create revision) when it worked,
    /// `None` when someone was faster.
    async fn take_slot(
        &self,
        record: &HolderRecord,
        queue_key: &str,
        lease_id: i64,
    ) -> Result<Option<u64>, LeaseError> {
        let key = self.key("slots", &record.slot.to_string());
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Compare::version(queue_key, CompareOp::Greater, 0),
            ])
            .and_then([
                TxnOp::put(
                    key.clone(),
                    json(record),
                    Some(PutOptions::new().with_lease(lease_id)),
                ),
                TxnOp::delete(queue_key, None),
            ]);
        let resp = self.txn(&format!("taking {key}"), txn).await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(Some(u64::try_from(revision).unwrap_or(0)))
    }

    pub(super) async fn set_step_inner(&self, held: &Held, step: &str) -> Result<(), LeaseError> {
        let holding = holding(held)?;
        if !held.is_held() {
            return Err(LeaseError::Lost(held.why_lost()));
        }
        let record = {
            let mut record = holding.record.lock().unwrap_or_else(|p| p.into_inner());
            record.step = step.to_owned();
            record.clone()
        };
        let token = i64::try_from(held.fencing_token).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when([Compare::create_revision(
                holding.key.clone(),
                CompareOp::Equal,
                token,
            )])
            .and_then([TxnOp::put(
                holding.key.clone(),
                json(&record),
                Some(PutOptions::new().with_lease(holding.lease_id)),
            )]);
        let resp = self.txn(&format!("writing {}", holding.key), txn).await?;
        if !resp.succeeded() {
            let why = format!(
                "{} is no longer held by fencing token {} (the TTL ran out)",
                holding.key, held.fencing_token
            );
            held.mark_lost(&why);
            return Err(LeaseError::Lost(why));
        }
        Ok(())
    }

    pub(super) async fn release_inner(&self, held: Held) -> Result<(), LeaseError> {
        let holding = holding(&held)?;
        holding.keepalive.0.abort();
        held.mark_lost("released");
        let id = holding.lease_id;
        let revoked = self
            .call(
                &format!("revoking the lease of {}", holding.key),
                |c| async move { c.lease_client().revoke(id).await },
            )
            .await;
        match revoked {
            Ok(_) => Ok(()),
            // Expired already (the keep-alive lost it): the slot is free, as release wants.
            Err(LeaseError::Etcd { error, .. }) if error.contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Renews a holder's (or waiter's) etcd lease every third of its TTL. When no renewal has been
/// answered for a whole TTL, counted from when the last answered one was sent (so earlier than
/// etcd's own expiry), or etcd says the lease is gone, marks `held` lost and ends.
async fn keep_alive(
    client: Client,
    lease_id: i64,
    ttl: Duration,
    held: Held,
    requests: Arc<AtomicU64>,
) {
    let interval = ttl / 3;
    let mut renewed = Instant::now();
    let mut next = renewed + interval;
    loop {
        let deadline = renewed + ttl;
        tokio::time::sleep_until(next.min(deadline)).await;
        if Instant::now() >= deadline {
            held.mark_lost(&format!(
                "no keep-alive of etcd lease {lease_id:x} was answered for {}",
                crate::duration::format(ttl)
            ));
            return;
        }
        let sent = Instant::now();
        requests.fetch_add(1, Ordering::Relaxed);
        match timeout_at(deadline, client.lease_client().keep_alive(lease_id)).await {
            Ok(Ok(_)) => {
                renewed = sent;
                next = sent + interval;
            }
            Ok(Err(e)) if chain(&e).contains("lease not found") => {
                held.mark_lost(&format!("etcd lease {lease_id:x} expired"));
                return;
            }
            // Retry soon: the balancer may have picked a dead member, and another may answer.
            Ok(Err(e)) => {
                tracing::debug!("lease: keep-alive of {lease_id:x} failed: {}", chain(&e));
                next = Instant::now() + (interval / 3).min(MAX_RETRY_PAUSE);
            }
            Err(_) => next = Instant::now(),
        }
    }
}

pub(super) fn holding(held: &Held) -> Result<&Holding, LeaseError> {
    held.etcd.as_deref().ok_or_else(|| {
        LeaseError::Lost("this lease was not taken from etcd (a local lease?)".to_owned())
    })
}
