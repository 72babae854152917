//! What an operator asks of CA rotation through the socket (`certrotd ca rotate`, `ca abort`,
//! `rotate --type etcd-ca`), and what the loop starts by itself for a due CA: the `Planned`
//! record written, or an open rotation rolled back. The loop answers these between its turns
//! (`ca_turn`), so a request never lands in the middle of this node's step.

use std::path::PathBuf;

use super::node::Daemon;
use crate::ca::Track;
use crate::ca::record::CaRecord;

impl Daemon {
    /// Starts a rotation of `track` (the new CA generated, or read from `from`).
    pub async fn ca_start(
        &mut self,
        track: Track,
        from: Option<PathBuf>,
        why: &str,
    ) -> Result<CaRecord, String> {
        let conn = self.ca_connect().await?;
        let members = match self.etcd_judge() {
            Some(judge) => judge.member_names().await?,
            None => vec![self.settings.node_name.clone()],
        };
        let driver = self.ca_driver(track);
        let record = driver
            .start(&conn, from.as_deref(), &members, self.clock.now())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            "CA rotation {} of {track} planned ({why}); members: {}",
            record.rotation_id,
            members.join(", ")
        );
        crate::events::ca::ca_phase_started(
            &self.settings.node_name,
            track.as_str(),
            &record.rotation_id,
            &record.phase.to_string(),
        );
        self.ca.poll_now();
        Ok(record)
    }

    /// `certrotd ca abort`: rolls back the open rotation of `track` (of every track: `None`).
    pub async fn ca_abort(&mut self, track: Option<Track>) -> Result<String, String> {
        let conn = self.ca_connect().await?;
        let mut done = Vec::new();
        for t in self.ca_tracks() {
            if track.is_some_and(|want| want != t) {
                continue;
            }
            let last = conn.store.load(t).await.map_err(|e| e.to_string())?;
            match (&last, track) {
                (Some((r, _)), _) if !r.phase.is_final() => {}
                (_, None) => continue,
                (Some((r, _)), Some(_)) => {
                    return Err(format!(
                        "no {t} rotation is open: the last one, {}, is {}",
                        r.rotation_id, r.phase
                    ));
                }
                (None, Some(_)) => return Err(format!("no {t} rotation has been started")),
            }
            let to = self
                .ca_driver(t)
                .abort(&conn, self.clock.now())
                .await
                .map_err(|e| e.to_string())?;
            done.push(format!("{t}: rolling back ({to})"));
        }
        self.ca.poll_now();
        if done.is_empty() {
            return Err(match track {
                Some(t) => format!("no {t} rotation is open on this node"),
                None => "no CA rotation is open".into(),
            });
        }
        Ok(done.join("; "))
    }
}
