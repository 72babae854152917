//! Fencing enforced: before a disruptive step, etcd itself is asked whether this node still holds
//! its slot with its fencing token and whether its etcd lease lives long enough for the step.
//! The keep-alive's local flag only says that renewals were answered lately; it cannot see a slot
//! taken over (deleted by an operator, or freed by a TTL that ran out while this process was
//! stopped) nor a lease about to run out.
//!
//! The whole confirmation shares one deadline (the op timeout): an etcd that cannot be reached in
//! time, or a member cut off from its quorum, fails it, since nothing can be proved then.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse};
use tokio::time::Instant;

use super::{EtcdLease, Holding, holding};
use crate::lease::record::HolderRecord;
use crate::lease::{Held, LeaseError};

impl EtcdLease {
    /// See [`crate::lease::Lease::confirm`].
    pub(super) async fn confirm_inner(
        &self,
        held: &Held,
        step: &str,
        min_ttl: Duration,
    ) -> Result<(), LeaseError> {
        held.confirm_held(step)?;
        let fenced = |why: String| held.fence(step, why);
        let holding = holding(held).map_err(|e| fenced(e.to_string()))?;
        let deadline = Instant::now() + self.op_timeout();
        self.confirm_slot(holding, held.fencing_token, deadline)
            .await
            .map_err(fenced)?;
        let left = self.ttl_left(holding, deadline).await.map_err(fenced)?;
        if left >= min_ttl {
            return Ok(());
        }
        // A healthy holder renews every third of the TTL, so it may be just before a renewal:
        // renew now rather than refuse.
        self.renew_once(holding, deadline).await.map_err(fenced)?;
        let left = self.ttl_left(holding, deadline).await.map_err(fenced)?;
        if left >= min_ttl {
            return Ok(());
        }
        Err(fenced(format!(
            "only {}s of TTL left on etcd lease {:x} (renewed, configured ttl {}s), the step needs {}s",
            left.as_secs(),
            holding.lease_id,
            self.ttl.as_secs(),
            min_ttl.as_secs_f64().ceil()
        )))
    }

    /// One transaction: the slot key was created by our fencing token and is attached to our
    /// etcd lease; when not, the same transaction reads who holds it now. A read-only
    /// transaction is linearizable in etcd, so a member cut off from its quorum cannot answer it.
    async fn confirm_slot(
        &self,
        holding: &Holding,
        token: u64,
        deadline: Instant,
    ) -> Result<(), String> {
        let key = holding.key.clone();
        let txn = Txn::new()
            .when([
                Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    i64::try_from(token).unwrap_or(i64::MAX),
                ),
                Compare::lease(key.clone(), CompareOp::Equal, holding.lease_id),
            ])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self
            .call_until(deadline, &format!("confirming {key}"), |c| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })
            .await
            .map_err(|e| format!("etcd did not confirm the slot: {e}"))?;
        if resp.succeeded() {
            return Ok(());
        }
        let now_there = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        Err(taken_over(
            &key,
            token,
            holding.lease_id,
            now_there.as_ref(),
        ))
    }

    /// What etcd says is left of the holder's lease.
    async fn ttl_left(&self, holding: &Holding, deadline: Instant) -> Result<Duration, String> {
        let id = holding.lease_id;
        let resp = self
            .call_until(
                deadline,
                &format!("reading the TTL of etcd lease {id:x}"),
                |c| async move { c.lease_client().time_to_live(id, None).await },
            )
            .await
            .map_err(|e| format!("etcd did not confirm the TTL: {e}"))?;
        // etcd says -1 for a lease it no longer has.
        if resp.ttl() <= 0 {
            return Err(format!(
                "etcd lease {id:x} behind {} has run out",
                holding.key
            ));
        }
        Ok(Duration::from_secs(resp.ttl().unsigned_abs()))
    }

    /// One keep-alive, answered.
    async fn renew_once(&self, holding: &Holding, deadline: Instant) -> Result<(), String> {
        let id = holding.lease_id;
        self.call_until(
            deadline,
            &format!("renewing etcd lease {id:x}"),
            |c| async move { c.lease_client().keep_alive(id).await.map(drop) },
        )
        .await
        .map_err(|e| match e {
            LeaseError::Etcd { error, .. } if error.contains("lease not found") => {
                format!("etcd lease {id:x} behind {} has run out", holding.key)
            }
            e => format!("etcd did not renew the lease: {e}"),
        })
    }
}

/// Why the slot is not ours any more, from what the failed transaction read there.
fn taken_over(key: &str, token: u64, lease_id: i64, now_there: Option<&KeyValue>) -> String {
    let Some(kv) = now_there else {
        return format!(
            "slot {key} is free now (deleted, or its etcd lease ran out), ours had token {token}"
        );
    };
    let theirs = kv.create_revision();
    if u64::try_from(theirs).ok() != Some(token) {
        let by = serde_json::from_slice::<HolderRecord>(kv.value())
            .map(|r| format!(" by {}", r.node))
            .unwrap_or_default();
        return format!("slot {key} now held{by} with token {theirs}, ours was {token}");
    }
    format!(
        "slot {key} (token {token}) is attached to etcd lease {:x}, ours is {lease_id:x}",
        kv.lease()
    )
}
