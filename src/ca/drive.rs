//! A node's part in a CA rotation, driven from the cluster record: take the lease when it is
//! this node's turn (the members in order, the etcd leader last) or when the phase may move on;
//! under the lease, take and prove the node's step, restart the track's consumers, record the
//! step with compare-and-swap, and advance the phase when every member has proved its level and
//! the dwell has passed. Any node holding the lease advances, so a coordinator that dies is
//! replaced by whichever node takes the lease next; a node that dies inside its step finds its
//! backup and finishes the step when it comes back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::coordinate::{self, Decision};
use super::material::{self, Material};
use super::node::{self, StepInput};
use super::phase::{Level, Phase};
use super::record::{CaRecord, RecordError, RecordStore, Version};
use super::settings::CaSettings;
use super::track::Track;
use super::wrap;
use crate::events::ca as ev;
use crate::lease::{BoxFuture, Held, Lease, Role, Want};
use crate::pki::cert::Cert;
use crate::pki::layout::Component;
use crate::pki::pem;

/// How long the lease must have left before a disruptive step.
const MIN_TTL: Duration = Duration::from_secs(1);

/// What a CA turn needs from the node: restarts, the order of the members, the quorum guard.
pub trait Hooks: Send + Sync {
    /// Restarts `component` and waits until it serves again.
    fn restart(&self, component: Component) -> BoxFuture<'_, Result<(), String>>;
    /// The members in the order they take their steps (the etcd leader last).
    fn order<'a>(&'a self, members: &'a [String]) -> BoxFuture<'a, Vec<String>>;
    /// Whether this node may disrupt its components now (etcd: every other member healthy, so
    /// the cluster keeps quorum while this one restarts).
    fn may_disrupt(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// A fresh lease and record store, with credentials read again from the disk (they change
/// with the node's own step).
pub trait Connect: Send + Sync {
    /// Connects.
    fn connect(&self) -> BoxFuture<'_, Result<Conn, String>>;
}

/// An open connection.
#[derive(Clone)]
pub struct Conn {
    /// The lease.
    pub lease: Arc<dyn Lease>,
    /// The records.
    pub store: Arc<dyn RecordStore>,
}

/// Why a turn failed.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The record could not be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The lease could not be taken or confirmed.
    #[error("{0}")]
    Lease(#[from] crate::lease::LeaseError),
    /// The node's step failed.
    #[error(transparent)]
    Node(#[from] node::NodeError),
    /// The new CA could not be made or read.
    #[error(transparent)]
    Material(#[from] material::MaterialError),
    /// The new key could not be unwrapped.
    #[error(transparent)]
    Wrap(#[from] wrap::WrapError),
    /// A restart or a guard failed.
    #[error("{0}")]
    Hook(String),
    /// The request does not fit the record.
    #[error("{0}")]
    Refused(String),
}

/// What one turn did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// No rotation of this track is open.
    Idle,
    /// The rotation is over in this phase.
    Final(Phase),
    /// Nothing for this node to do yet; what blocks the next phase.
    Waiting(Vec<String>),
    /// This node took its step to this level (and maybe advanced the phase).
    Stepped(Level, Option<Phase>),
    /// This node moved the phase on.
    Advanced(Phase),
}

/// One node's driver of one track.
pub struct Driver {
    /// This node's name (its etcd member's name).
    pub node: String,
    /// The cluster (record key, wrap context).
    pub cluster: String,
    /// The track.
    pub track: Track,
    /// The node's real PKI directory.
    pub pki: PathBuf,
    /// Where backups go.
    pub backups: PathBuf,
    /// `[ca]`.
    pub settings: CaSettings,
    /// Restarts and guards.
    pub hooks: Arc<dyn Hooks>,
}

/// The first certificate of a track's CA file: the CA the node's key belongs to.
pub fn disk_ca(track: Track, pki: &Path) -> Result<Cert, DriveError> {
    let path = pki.join(track.ca_cert());
    let refuse = |e: String| DriveError::Refused(format!("{}: {e}", path.display()));
    let data = pem::read_capped(&path).map_err(|e| refuse(e.to_string()))?;
    let blocks = pem::blocks(&path, &data).map_err(|e| refuse(e.to_string()))?;
    let first = blocks
        .iter()
        .find(|b| b.label == "CERTIFICATE")
        .ok_or_else(|| refuse("no certificate".into()))?;
    Cert::from_der(&first.der).map_err(|e| refuse(e.to_string()))
}

fn read_key(path: &Path) -> Result<crate::pki::key::PrivateKey, DriveError> {
    let refuse = |e: String| DriveError::Refused(format!("{}: {e}", path.display()));
    let data = pem::read_capped(path).map_err(|e| refuse(e.to_string()))?;
    let blocks = pem::blocks(path, &data).map_err(|e| refuse(e.to_string()))?;
    crate::pki::key::PrivateKey::from_blocks(&blocks).map_err(|e| refuse(e.to_string()))
}

impl Driver {
    /// Starts a rotation: makes the new CA (or reads it from `from`), writes the `Planned`
    /// record if no rotation of the track is open. `members`: every control-plane node.
    pub async fn start(
        &self,
        conn: &Conn,
        from: Option<&Path>,
        members: &[String],
        now: OffsetDateTime,
    ) -> Result<CaRecord, DriveError> {
        let existing = conn.store.load(self.track).await?;
        if let Some((r, _)) = &existing
            && !r.phase.is_final()
        {
            return Err(DriveError::Refused(format!(
                "{} is already being rotated ({}, phase {})",
                self.track, r.rotation_id, r.phase
            )));
        }
        let old = disk_ca(self.track, &self.pki)?;
        let old_key = read_key(&self.pki.join(self.track.ca_key()))?;
        if !old_key.matches(&old) {
            return Err(DriveError::Refused(format!(
                "{}: the key does not match the first certificate of {}",
                self.track.ca_key(),
                self.track.ca_cert()
            )));
        }
        let new = match from {
            Some(dir) => material::from_dir(dir, self.track, &old)?,
            None => material::generate(&old, &old_key, self.settings.validity, now)?,
        };
        let record = coordinate::plan(
            self.track,
            &self.cluster,
            members,
            &old,
            &old_key,
            &new,
            now,
            &self.node,
            0,
        )?;
        conn.store.swap(existing.map(|(_, v)| v), &record).await?;
        Ok(record)
    }

    /// `certrotd ca abort`: rolls the open rotation back from its phase.
    pub async fn abort(&self, conn: &Conn, now: OffsetDateTime) -> Result<Phase, DriveError> {
        let (mut r, v) =
            conn.store.load(self.track).await?.ok_or_else(|| {
                DriveError::Refused(format!("no {} rotation to abort", self.track))
            })?;
        let to = coordinate::abort(&mut r, now, &self.node, 0)
            .map_err(|e| DriveError::Refused(e.to_string()))?;
        conn.store.swap(Some(v), &r).await?;
        ev::ca_rollback(
            &self.node,
            self.track.as_str(),
            &r.rotation_id,
            &to.to_string(),
            "aborted (certrotd ca abort)",
        );
        Ok(to)
    }

    /// One turn: decide from the record, take the lease if there is work, do it.
    pub async fn tick(
        &self,
        conn: &Conn,
        clock: &(dyn Fn() -> OffsetDateTime + Send + Sync),
    ) -> Result<Tick, DriveError> {
        self.tick_unless(conn, clock, std::future::pending()).await
    }

    /// [`Driver::tick`], given up if `stop` resolves while waiting for the lease (nothing has
    /// been disrupted then); once the lease is held the turn is carried to its end.
    pub async fn tick_unless(
        &self,
        conn: &Conn,
        clock: &(dyn Fn() -> OffsetDateTime + Send + Sync),
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Tick, DriveError> {
        let Some((r, _)) = conn.store.load(self.track).await? else {
            return Ok(Tick::Idle);
        };
        if r.phase.is_final() {
            return Ok(Tick::Final(r.phase));
        }
        let order = self.hooks.order(&r.members).await;
        let mine = r.phase != Phase::Planned
            && coordinate::next_member(&r, &order) == Some(self.node.as_str());
        let decision = coordinate::decide(&r, &self.settings, clock());
        if !mine && !matches!(decision, Decision::Advance(_)) {
            return Ok(Tick::Waiting(match decision {
                Decision::Wait(b) => b,
                _ => Vec::new(),
            }));
        }
        let want = Want {
            node: self.node.clone(),
            rotation_id: r.rotation_id.clone(),
            role: Role::EtcdMember,
            earliest_expiry: clock(),
            now: clock(),
        };
        let held = tokio::select! {
            held = conn.lease.acquire(&want) => held?,
            () = stop => return Ok(Tick::Waiting(vec!["stopping before this node's turn".into()])),
        };
        let result = self.under_lease(conn, &held, &order, clock).await;
        let _ = conn.lease.release(held).await;
        result
    }

    async fn under_lease(
        &self,
        conn: &Conn,
        held: &Held,
        order: &[String],
        clock: &(dyn Fn() -> OffsetDateTime + Send + Sync),
    ) -> Result<Tick, DriveError> {
        let Some((mut r, mut v)) = conn.store.load(self.track).await? else {
            return Ok(Tick::Idle);
        };
        let mut stepped = None;
        if !r.phase.is_final()
            && r.phase != Phase::Planned
            && coordinate::next_member(&r, order) == Some(self.node.as_str())
        {
            let level = self.step(conn, held, &r, clock).await?;
            stepped = Some(level);
            (r, v) = self.record_step(conn, level, held, clock).await?;
        }
        let advanced = match coordinate::decide(&r, &self.settings, clock()) {
            Decision::Advance(to) => {
                coordinate::advance(&mut r, to, clock(), &self.node, held.fencing_token)
                    .map_err(|e| DriveError::Refused(e.to_string()))?;
                conn.store.swap(Some(v), &r).await?;
                ev::ca_phase_started(
                    &self.node,
                    self.track.as_str(),
                    &r.rotation_id,
                    &to.to_string(),
                );
                Some(to)
            }
            _ => None,
        };
        Ok(match (stepped, advanced) {
            (Some(l), a) => Tick::Stepped(l, a),
            (None, Some(p)) => Tick::Advanced(p),
            (None, None) => Tick::Waiting(coordinate::blockers(&r, &self.settings, clock())),
        })
    }

    /// The new CA with its key: unwrapped with the old CA key while the node still holds it,
    /// read from the disk once the node's key is the new one (a step re-run after a crash).
    fn new_ca(&self, r: &CaRecord) -> Result<Option<Material>, DriveError> {
        if r.phase.target() != Level::IssueNew || matches!(r.phase, Phase::RollingBack(_)) {
            return Ok(None);
        }
        let old_pem = pem::blocks(Path::new("record old CA"), r.old_ca_pem.as_bytes())
            .map_err(|e| DriveError::Refused(e.to_string()))?;
        let old =
            Cert::from_der(&old_pem[0].der).map_err(|e| DriveError::Refused(e.to_string()))?;
        let key_path = self.pki.join(self.track.ca_key());
        let key = read_key(&key_path)?;
        let key_pem = if key.matches(&old) {
            let ctx = coordinate::wrap_context(&self.cluster, r);
            wrap::unwrap(&r.wrapped_key, &key, &ctx)?
        } else {
            crate::pki::secret::SecretString::new(
                String::from_utf8(
                    pem::read_capped(&key_path)
                        .map_err(|e| DriveError::Refused(e.to_string()))?
                        .to_vec(),
                )
                .map_err(|_| DriveError::Refused(format!("{}: not text", key_path.display())))?,
            )
        };
        Ok(Some(material::from_pem(
            &old,
            &r.new_ca_pem,
            &key_pem,
            &key_path,
        )?))
    }

    async fn step(
        &self,
        conn: &Conn,
        held: &Held,
        r: &CaRecord,
        clock: &(dyn Fn() -> OffsetDateTime + Send + Sync),
    ) -> Result<Level, DriveError> {
        self.hooks.may_disrupt().await.map_err(DriveError::Hook)?;
        conn.lease
            .confirm(
                held,
                &format!("{} step to {}", self.track, r.phase.target()),
                MIN_TTL,
            )
            .await?;
        let new_ca = self.new_ca(r)?;
        let out = node::step(
            &StepInput {
                track: self.track,
                pki: &self.pki,
                backups: &self.backups,
                record: r,
                new_ca: new_ca.as_ref(),
                now: clock(),
            },
            r.phase,
        )?;
        ev::ca_step(
            &self.node,
            self.track.as_str(),
            &r.rotation_id,
            out.proof.level.as_str(),
            out.changed,
            &out.proof.detail,
        );
        // The record does not show this node at the level yet, so its consumers may not have
        // been restarted on these files (a crash after the write): restart them either way.
        for component in self.track.consumers() {
            conn.lease
                .confirm(held, &format!("restart {component}"), MIN_TTL)
                .await?;
            self.hooks
                .restart(*component)
                .await
                .map_err(DriveError::Hook)?;
        }
        Ok(out.proof.level)
    }

    /// Writes this node's proved step into the record, reading it again on a conflict (another
    /// node's earlier write); the proof is from the disk, so it is simply applied again.
    async fn record_step(
        &self,
        conn: &Conn,
        level: Level,
        held: &Held,
        clock: &(dyn Fn() -> OffsetDateTime + Send + Sync),
    ) -> Result<(CaRecord, Version), DriveError> {
        for _ in 0..20 {
            // The member this node just restarted may still refuse connections; the client
            // reaches another on the next try. Failing the turn here instead would run the
            // step again and restart the member once more.
            let loaded = match conn.store.load(self.track).await {
                Err(RecordError::Etcd { .. }) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                other => other?,
            };
            let (mut r, v) =
                loaded.ok_or_else(|| DriveError::Refused("the record vanished".into()))?;
            let proof = node::prove(self.track, &self.pki, &r.old_fp, &r.new_fp)?;
            if proof.level != level {
                return Err(DriveError::Refused(format!(
                    "the files moved from {level} to {} after the step",
                    proof.level
                )));
            }
            coordinate::record_step(&mut r, &self.node, &proof, held.fencing_token, clock());
            match conn.store.swap(Some(v), &r).await {
                Ok(v) => {
                    ev::ca_phase_completed(
                        &self.node,
                        self.track.as_str(),
                        &r.rotation_id,
                        level.as_str(),
                        &proof.detail,
                    );
                    return Ok((r, v));
                }
                Err(RecordError::Conflict { .. }) => continue,
                Err(RecordError::Etcd { .. }) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(DriveError::Refused(
            "the record kept changing while this node wrote its step".into(),
        ))
    }

    /// Runs turns every `poll` until the rotation is over or `shutdown` resolves; connects again
    /// after each of its own steps (its credentials changed) and after any error.
    pub async fn run(
        &self,
        connect: &dyn Connect,
        clock: &(dyn Fn() -> OffsetDateTime + Send + Sync),
        poll: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Option<Phase> {
        tokio::pin!(shutdown);
        let mut conn: Option<Conn> = None;
        loop {
            if conn.is_none() {
                match connect.connect().await {
                    Ok(c) => conn = Some(c),
                    Err(e) => tracing::warn!("{}: CA turn: connecting: {e}", self.node),
                }
            }
            if let Some(c) = &conn {
                let turn = tokio::select! {
                    t = self.tick(c, clock) => t,
                    () = &mut shutdown => return None,
                };
                match turn {
                    Ok(Tick::Final(p)) => return Some(p),
                    Ok(Tick::Stepped(..)) => conn = None,
                    Ok(Tick::Idle | Tick::Waiting(_) | Tick::Advanced(_)) => {}
                    Err(e) => {
                        tracing::warn!("{}: CA turn: {e}", self.node);
                        conn = None;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = &mut shutdown => return None,
            }
        }
    }
}
