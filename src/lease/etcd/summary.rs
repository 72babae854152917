//! This node's summary under `nodes/<node>`: written only when it says something new, attached
//! to a long-lived etcd lease of its own that a background task keeps alive (and re-creates,
//! writing the last summary again, after etcd was away longer than its TTL).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::time::timeout;

use super::{AbortOnDrop, CONNECT_TIMEOUT, EtcdLease, chain, json};
use crate::lease::LeaseError;
use crate::lease::record::NodeSummary;

/// The node's published summary and the lease that keeps it.
#[derive(Default)]
pub(super) struct Published {
    lease_id: Option<i64>,
    last: Option<NodeSummary>,
}

impl EtcdLease {
    pub(super) async fn publish_inner(&self, summary: &NodeSummary) -> Result<(), LeaseError> {
        let mut published = self.published.lock().await;
        if published.lease_id.is_some()
            && published
                .last
                .as_ref()
                .is_some_and(|l| l.same_news(summary))
        {
            // Nothing new: the refresher keeps the published one alive, at no cost here.
            return Ok(());
        }
        let lease_id = match published.lease_id {
            Some(id) => id,
            None => self.grant(self.summary_ttl).await?,
        };
        let lease_id = match self.put_summary(summary, lease_id).await {
            Ok(()) => lease_id,
            // The summary's lease ran out while etcd was away: take a new one.
            Err(_) if published.lease_id.is_some() => {
                let id = self.grant(self.summary_ttl).await?;
                self.put_summary(summary, id).await?;
                id
            }
            Err(e) => return Err(e),
        };
        published.lease_id = Some(lease_id);
        published.last = Some(summary.clone());
        let mut refresher = self.refresher.lock().unwrap_or_else(|e| e.into_inner());
        if refresher.is_none() {
            *refresher = Some(AbortOnDrop(tokio::spawn(refresh_summary(
                self.client.clone(),
                self.published.clone(),
                self.key("nodes", &self.node),
                self.summary_ttl,
                self.requests.clone(),
            ))));
        }
        Ok(())
    }

    async fn put_summary(&self, summary: &NodeSummary, lease_id: i64) -> Result<(), LeaseError> {
        self.put(&self.key("nodes", &self.node), json(summary), lease_id)
            .await
    }
}

/// Keeps the node's summary alive every third of its TTL (the only request an idle node makes);
/// when its lease is gone (etcd was away longer than the TTL), takes a new one and writes the
/// last summary again, so the node reappears in the cluster view without waiting for news.
async fn refresh_summary(
    client: Client,
    published: Arc<tokio::sync::Mutex<Published>>,
    key: String,
    summary_ttl: Duration,
    requests: Arc<AtomicU64>,
) {
    loop {
        tokio::time::sleep(summary_ttl / 3).await;
        let mut state = published.lock().await;
        if let Some(id) = state.lease_id {
            requests.fetch_add(1, Ordering::Relaxed);
            match timeout(CONNECT_TIMEOUT, client.lease_client().keep_alive(id)).await {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) if chain(&e).contains("lease not found") => state.lease_id = None,
                _ => {
                    tracing::debug!("lease: refreshing the node summary failed; retrying later");
                    continue;
                }
            }
        }
        let Some(last) = state.last.clone() else {
            continue;
        };
        requests.fetch_add(2, Ordering::Relaxed);
        let secs = i64::try_from(summary_ttl.as_secs()).unwrap_or(i64::MAX);
        let again = async {
            let id = client.lease_client().grant(secs, None).await?.id();
            let options = PutOptions::new().with_lease(id);
            client
                .kv_client()
                .put(key.clone(), json(&last), Some(options))
                .await?;
            Ok::<i64, etcd_client::Error>(id)
        };
        match timeout(CONNECT_TIMEOUT, again).await {
            Ok(Ok(id)) => state.lease_id = Some(id),
            _ => tracing::debug!("lease: republishing the node summary failed; retrying later"),
        }
    }
}
