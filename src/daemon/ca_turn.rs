//! The daemon's part in CA rotation: at each CA poll the loop reads every track's cluster record
//! and takes this node's turn ([`crate::ca::drive::Driver::tick`]: its step when the member
//! order says so, or moving the phase on when it may), starts a rotation of a CA that is inside
//! `[ca] rotate_before`, and answers `certrotd ca rotate|abort`. The engine takes the same lease
//! leaf rotations take, so a CA step and a leaf rotation never disrupt two nodes at once.
//!
//! Polls come every [`POLL_OPEN`] while a rotation is open (so zero dwell means no waiting). With
//! the records in etcd they come every [`POLL_IDLE`] otherwise (two small reads, bounded; a
//! rotation another node started is noticed within that); with the local lease only this
//! daemon writes them, so it wakes only when a CA's notice or rotation falls due. After each of its own steps the node's credentials changed (a CA bundle, a new
//! client certificate), so the CA connection and the leaf lease are opened again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use super::ca_hooks::NodeHooks;
use super::handler::Shared;
use super::mode::Mode;
use super::node::Daemon;
use super::shutdown::Shutdown;
use crate::ca::drive::{self, Conn, Driver, Tick};
use crate::ca::etcd::EtcdJudge;
use crate::ca::phase::Phase;
use crate::ca::record::{CaRecord, EtcdStore, LocalStore, RecordStore};
use crate::ca::settings::CaSettings;
use crate::ca::view::{CaView, DiskCa, TrackView};
use crate::ca::{Track, fingerprint, lost, notice};
use crate::config::LeaseBackend;
use crate::events::ca::Due;
use crate::history::{Record, State};
use crate::pki::layout::KUBEADM_PKI;

/// How often the records are read while a rotation is open.
pub const POLL_OPEN: Duration = Duration::from_secs(1);
/// How often they are read otherwise.
pub const POLL_IDLE: Duration = Duration::from_secs(10);
/// How often they are read after a read failed with no rotation known open (etcd away).
pub const POLL_FAILED: Duration = Duration::from_secs(15);
/// How long one read of the records may take.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one CA turn may take before the watchdog is starved: waiting for the lease, the
/// step, each consumer restarted and answering again.
const TURN_BOUND: Duration = Duration::from_secs(900);

/// The loop's CA state between polls.
#[derive(Default)]
pub struct CaTurns {
    /// When the next poll is due (`None`: now).
    next_poll: Option<Instant>,
    /// The open connection, dropped after an error or this node's own step.
    conn: Option<Conn>,
    /// The due notices given.
    notices: notice::Notices,
    /// Whether the last poll that read every record found a rotation open.
    was_open: bool,
    /// Per track, since when etcd has been out of reach and the record last seen.
    watches: std::collections::HashMap<Track, lost::Watch>,
    /// The last failed turn recorded in history, so a failure repeated at every poll (a quorum
    /// guard that holds, an unreachable member) is recorded once.
    last_failure: Option<String>,
}

impl CaTurns {
    /// Whether a poll is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next_poll.is_none_or(|t| now >= t)
    }

    /// When the loop must wake for the next poll.
    pub fn wake(&self) -> Instant {
        self.next_poll.unwrap_or_else(Instant::now)
    }

    /// Polls at the next pass of the loop (a request changed a record).
    pub fn poll_now(&mut self) {
        self.next_poll = None;
    }

    /// Forgets the connection (a reload may name another cluster) and polls at once.
    pub fn reset(&mut self) {
        self.conn = None;
        self.next_poll = None;
    }
}

/// What one track's turn did, for the loop.
enum Turn {
    /// Read, nothing for this node to do.
    Quiet(Option<CaRecord>),
    /// Read and this node acted; the record as it is now.
    Acted(Option<CaRecord>, Tick),
}

impl Daemon {
    /// The node's kubeadm PKI directory (the only layout whose CAs certrotd rotates).
    pub(super) fn ca_pki(&self) -> PathBuf {
        self.settings.in_root(KUBEADM_PKI)
    }

    /// The tracks this node takes part in: those whose CA file it holds.
    pub(super) fn ca_tracks(&self) -> Vec<Track> {
        let pki = self.ca_pki();
        Track::ALL
            .into_iter()
            .filter(|t| pki.join(t.ca_cert()).exists())
            .collect()
    }

    fn ca_settings(&self) -> CaSettings {
        CaSettings::from_config(&self.settings.ca)
    }

    pub(super) fn etcd_judge(&self) -> Option<EtcdJudge> {
        (self.settings.lease.backend == LeaseBackend::Etcd && self.fixed_lease.is_none()).then(
            || EtcdJudge {
                pki: self.ca_pki(),
                endpoints: self.settings.lease.endpoints.clone(),
                node: self.settings.node_name.clone(),
            },
        )
    }

    pub(super) fn ca_driver(&self, track: Track) -> Driver {
        let state = self.settings.in_root(&self.settings.state_dir);
        Driver {
            node: self.settings.node_name.clone(),
            cluster: self.settings.lease.cluster.clone(),
            track,
            pki: self.ca_pki(),
            backups: state.join("ca-backups"),
            settings: self.ca_settings(),
            hooks: Arc::new(NodeHooks {
                components: Arc::clone(&self.components),
                // Only etcd-ca restarts etcd members: only it needs the quorum guard.
                etcd: (track == Track::EtcdCa)
                    .then(|| self.etcd_judge())
                    .flatten(),
                clock: Arc::clone(&self.clock),
            }),
        }
    }

    /// The lease and the record store, with the credentials on disk now.
    pub(super) async fn ca_connect(&mut self) -> Result<Conn, String> {
        if let Some(c) = &self.ca.conn {
            return Ok(c.clone());
        }
        let state = self.settings.in_root(&self.settings.state_dir);
        let conn = match (&self.fixed_lease, self.settings.lease.backend) {
            // A lease given at start (tests): the records beside it, in the state directory.
            (Some(lease), _) => Conn {
                lease: Arc::clone(lease),
                store: Arc::new(LocalStore::new(&state)),
            },
            (None, LeaseBackend::Local) => Conn {
                lease: crate::lease::open_with(&self.settings, &state, None)
                    .await
                    .map_err(|e| format!("opening the lease: {e}"))?,
                store: Arc::new(LocalStore::new(&state)),
            },
            (None, LeaseBackend::Etcd) => {
                let now = self.clock.now();
                let creds = crate::lease::load_credentials(&self.settings, &self.root, now)
                    .map_err(|e| format!("reading the lease's credentials: {e}"))?
                    .unwrap_or_else(crate::lease::credentials::Credentials::plain);
                let lease = crate::lease::open_with(&self.settings, &state, Some(creds.clone()))
                    .await
                    .map_err(|e| format!("opening the lease: {e}"))?;
                let store: Arc<dyn RecordStore> = Arc::new(
                    EtcdStore::connect(
                        &self.settings.lease.endpoints,
                        &creds,
                        &self.settings.lease.cluster,
                    )
                    .await
                    .map_err(|e| e.to_string())?,
                );
                Conn { lease, store }
            }
        };
        self.ca.conn = Some(conn.clone());
        Ok(conn)
    }

    /// One CA poll: every track read, this node's turn taken where it has one, a due CA's
    /// rotation started; the view published for `ca status`.
    pub async fn ca_poll(&mut self, shared: &Shared, shutdown: &mut Shutdown) {
        let tracks = self.ca_tracks();
        let mut view = CaView {
            as_of: Some(self.clock.now()),
            tracks: Vec::new(),
        };
        let mut open = false;
        let mut failed = false;
        let mut any_open = false;
        for track in tracks {
            let mut tv = self.disk_view(track);
            match self.ca_track_turn(track, &tv, shutdown).await {
                Ok(turn) => {
                    let (record, acted) = match turn {
                        Turn::Quiet(r) => (r, None),
                        Turn::Acted(r, t) => (r, Some(t)),
                    };
                    if let Some(Tick::Waiting(b)) = &acted {
                        tv.blockers = b.clone();
                    }
                    if let Some(r) = &record {
                        open |= !r.phase.is_final();
                        any_open |= !r.phase.is_final();
                        if tv.blockers.is_empty() && !r.phase.is_final() {
                            tv.blockers = crate::ca::coordinate::blockers(
                                r,
                                &self.ca_settings(),
                                self.clock.now(),
                            );
                        }
                        tv.order = r.members.clone();
                    }
                    tv.record = record;
                }
                Err(e) => {
                    tracing::warn!("CA rotation of {track}: {e}");
                    // The connection may be what failed: open it again next time.
                    self.ca.conn = None;
                    tv.error = Some(e);
                    failed = true;
                }
            }
            view.tracks.push(tv);
        }
        // A read that fails in the middle of a rotation is most often a member restarting
        // (this node's or another's step): look again at once, or this node's turn waits.
        if !failed {
            self.ca.was_open = any_open;
        }
        let every = match (open || (failed && self.ca.was_open), failed) {
            (true, _) => POLL_OPEN,
            (false, true) => POLL_FAILED,
            // Only another node can open a rotation in etcd: look again now and then.
            (false, false) if self.ca_shared() => POLL_IDLE,
            // Here only this daemon writes the records: wake when a CA's notice or rotation
            // is due (a day at most, so a clock jump is noticed).
            (false, false) => self.ca_next_due(&view),
        };
        self.ca.next_poll = Some(Instant::now() + every);
        self.metrics.ca(&view, &self.ca_settings());
        *shared.ca.write().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// Whether the records are shared with other nodes (in etcd).
    fn ca_shared(&self) -> bool {
        self.fixed_lease.is_none() && self.settings.lease.backend == LeaseBackend::Etcd
    }

    /// How long until the next CA notice or rotation is due, a day at most.
    fn ca_next_due(&self, view: &CaView) -> Duration {
        let now = self.clock.now();
        let day = time::Duration::days(1);
        let next = view
            .tracks
            .iter()
            .filter_map(|t| t.disk.as_ref())
            .flat_map(|d| {
                let ahead = time::Duration::try_from(notice::NOTICE_AHEAD).unwrap_or_default();
                [d.due_from - ahead, d.due_from]
            })
            .filter(|t| *t > now)
            .map(|t| t - now)
            .min()
            .unwrap_or(day)
            .min(day);
        Duration::try_from(next).unwrap_or(POLL_IDLE)
    }

    /// The CA of `track` on this node's disk.
    fn disk_view(&self, track: Track) -> TrackView {
        let mut tv = TrackView {
            track,
            disk: None,
            disk_error: None,
            record: None,
            order: Vec::new(),
            blockers: Vec::new(),
            error: None,
        };
        match drive::disk_ca(track, &self.ca_pki()) {
            Ok(cert) => {
                tv.disk = Some(DiskCa {
                    fingerprint: fingerprint(&cert.der),
                    subject: cert.subject.clone(),
                    not_after: cert.not_after,
                    due_from: self.ca_settings().due_from(cert.not_before, cert.not_after),
                })
            }
            Err(e) => tv.disk_error = Some(e.to_string()),
        }
        tv
    }

    /// Reads `track`'s record and takes this node's turn on it, or starts a due rotation.
    async fn ca_track_turn(
        &mut self,
        track: Track,
        tv: &TrackView,
        shutdown: &mut Shutdown,
    ) -> Result<Turn, String> {
        // Bounded: with nothing open this read must not hold up the loop when etcd is away.
        let read = async {
            let conn = self.ca_connect().await?;
            let record = conn.store.load(track).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, record.map(|(r, _)| r)))
        };
        let read = tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(|_| format!("reading the CA record: no answer within {READ_TIMEOUT:?}"))
            .and_then(|r| r);
        let (conn, record) = match read {
            Ok(read) => read,
            Err(e) => {
                self.ca_lost(track).await;
                return Err(e);
            }
        };
        if let Some(w) = self.ca_watch(track)
            && let Err(e) = w.reached(record.as_ref())
        {
            tracing::warn!("{track}: keeping the CA record last seen: {e}");
        }
        match &record {
            Some(r) if !r.phase.is_final() => {
                self.ca.was_open = true;
                // A node whose CA is another one altogether (built apart from the others, not
                // joined with their CA) cannot take any step: say so without taking the lease.
                if let Some(disk) = &tv.disk
                    && disk.fingerprint != r.old_fp
                    && disk.fingerprint != r.new_fp
                {
                    return Err(format!(
                        "this node's {track} ({}) is neither the old nor the new CA of rotation \
                         {}: it cannot take part; give it the cluster's CA or run \
                         `certrotd ca abort {track}`",
                        disk.subject, r.rotation_id
                    ));
                }
                self.ca_tick(track, &conn, r, shutdown).await
            }
            _ => {
                if let Some(disk) = &tv.disk
                    && self.ca_due(track, disk, record.as_ref())
                {
                    let started = self
                        .ca_start(track, None, "inside [ca] rotate_before")
                        .await?;
                    return Ok(Turn::Acted(Some(started), Tick::Advanced(Phase::Planned)));
                }
                Ok(Turn::Quiet(record))
            }
        }
    }

    /// The lost-etcd watch of `track` (`None` with the records in the state directory: there
    /// is no etcd to lose).
    fn ca_watch(&mut self, track: Track) -> Option<&mut lost::Watch> {
        if !self.ca_shared() {
            return None;
        }
        let state = self.settings.in_root(&self.settings.state_dir);
        let limit = self.ca_settings().lost_etcd_rollback;
        Some(
            self.ca
                .watches
                .entry(track)
                .or_insert_with(|| lost::Watch::open(&state, track, limit)),
        )
    }

    /// etcd could not be read: once this node has been cut off for longer than
    /// `[ca] lost_etcd_rollback` after its own step, the step is put back.
    async fn ca_lost(&mut self, track: Track) {
        let driver = self.ca_driver(track);
        let now = self.clock.now();
        let Some(watch) = self.ca_watch(track) else {
            return;
        };
        match watch.lost(&driver, now).await {
            Ok(lost::Lost::RolledBack(level, failed)) => {
                self.note(format!(
                    "{track}: cut off from etcd after this node's step: its files are back at \
                     {level}{}",
                    if failed.is_empty() {
                        String::new()
                    } else {
                        format!("; restarts failed: {}", failed.join("; "))
                    }
                ));
                self.refresh();
            }
            Ok(lost::Lost::Nothing | lost::Lost::Waiting(_)) => {}
            Err(e) => tracing::warn!("{track}: putting this node's step back: {e}"),
        }
    }

    /// Whether this node starts a rotation of `track` by itself: its CA is inside
    /// `rotate_before`, it holds the key, and the last rotation of this very CA was not rolled
    /// back (an operator who aborted decides when to try again, with `certrotd ca rotate`).
    fn ca_due(&mut self, track: Track, disk: &DiskCa, last: Option<&CaRecord>) -> bool {
        let now = self.clock.now();
        let Some(stage) = notice::stage(disk, now) else {
            return false;
        };
        let rolled_back =
            last.is_some_and(|r| r.phase == Phase::RolledBack && r.old_fp == disk.fingerprint);
        let has_key = self.ca_pki().join(track.ca_key()).exists();
        let node = self.settings.node_name.clone();
        if self.ca.notices.check(&node, track, disk, now).is_some() {
            let expires = crate::timefmt::rfc3339(disk.not_after);
            let what = match (stage, rolled_back, has_key) {
                (Due::Soon, _, _) => format!(
                    "{track} expires at {expires}; it is rotated from {}",
                    crate::timefmt::rfc3339(disk.due_from)
                ),
                (Due::Now, true, _) => format!(
                    "{track} expires at {expires} and its last rotation was rolled back: \
                     rotate it with `certrotd ca rotate {track}`"
                ),
                (Due::Now, false, false) => format!(
                    "{track} expires at {expires}; this node has no {} to start its rotation, \
                     a control-plane node that has it will",
                    track.ca_key()
                ),
                (Due::Now, false, true) => {
                    format!("{track} expires at {expires}: inside [ca] rotate_before, rotating")
                }
            };
            self.note(what);
        }
        stage == Due::Now && !rolled_back && has_key
    }

    /// This node's turn on an open rotation, the watchdog fed meanwhile.
    async fn ca_tick(
        &mut self,
        track: Track,
        conn: &Conn,
        record: &CaRecord,
        shutdown: &mut Shutdown,
    ) -> Result<Turn, String> {
        let driver = self.ca_driver(track);
        let clock = Arc::clone(&self.clock);
        let now = move || clock.now();
        // A backoff of leaf rotations outlives the CA turn.
        let back_to = match self.mode() {
            m @ Mode::BackingOff { .. } => m.clone(),
            _ => Mode::Idle,
        };
        self.go(Mode::CaTurn {
            track: track.to_string(),
            phase: record.phase.to_string(),
        });
        self.live.pulse.beat(
            format!("CA rotation of {track}: {}", record.phase),
            TURN_BOUND,
        );
        let started = self.clock.now();
        let ticked = self
            .live
            .drive(driver.tick_unless(conn, &now, async {
                shutdown.requested().await;
            }))
            .await;
        let ticked = ticked.map_err(|e| e.to_string());
        self.go(back_to);
        if let Err(e) = &ticked
            && self.ca.last_failure.as_ref() != Some(e)
        {
            self.ca_record_history(track, record, started, Err(e));
            self.ca.last_failure = Some(e.clone());
        }
        let tick = ticked?;
        if let Tick::Stepped(level, _) = &tick {
            self.ca.last_failure = None;
            self.ca_record_history(track, record, started, Ok(level.as_str()));
            // Its trust and its client certificate may have changed: both connections again.
            self.ca.conn = None;
            self.peers.reset();
            self.refresh();
        }
        let now_record = match &self.ca.conn {
            Some(c) => c.store.load(track).await.ok().flatten().map(|(r, _)| r),
            None => None,
        };
        Ok(Turn::Acted(
            now_record.or_else(|| Some(record.clone())),
            tick,
        ))
    }

    /// A history record of this node's step (or its failure), so `certrotd history` shows each
    /// phase per node.
    fn ca_record_history(
        &self,
        track: Track,
        record: &CaRecord,
        started: OffsetDateTime,
        outcome: Result<&str, &String>,
    ) {
        let now = self.clock.now();
        let mut certificates = vec![track.ca_cert().to_owned()];
        certificates.extend(track.leaves().iter().map(|l| l.cert.to_owned()));
        let (state, reason, id) = match outcome {
            Ok(level) => (
                State::Success,
                format!("CA rotation of {track}: this node's {level} step, proved"),
                format!("{}.{}.{level}", record.rotation_id, self.settings.node_name),
            ),
            Err(e) => (
                State::Failed,
                format!("CA rotation of {track} in {}: {e}", record.phase),
                format!(
                    "{}.{}.{}",
                    record.rotation_id,
                    self.settings.node_name,
                    record.phase.target()
                ),
            ),
        };
        let restarted = match state {
            State::Success => track.consumers().iter().map(|c| c.to_string()).collect(),
            _ => Vec::new(),
        };
        let r = Record {
            id,
            node: self.settings.node_name.clone(),
            certificates,
            state,
            started_at: started,
            finished_at: Some(now),
            reason: Some(reason),
            disruptive_from: Some(started),
            disruptive_to: Some(now),
            fencing_token: None,
            recovery: false,
            reloaded: Vec::new(),
            restarted,
        };
        if let Err(e) = self.history.append(&r) {
            tracing::warn!("recording the CA step in history: {e}");
        }
    }
}
