//! Finishing what was left open: rotations a crash, SIGKILL or a lost lease interrupted (history
//! still says Initiated), and the journal recovery that comes first — unguarded at start, under the
//! lease before a resumption. A journal recovery cannot trust is quarantined and recorded Failed.

use time::OffsetDateTime;
use tokio::task::spawn_blocking;

use super::consumers::{Installed, inventory};
use super::failure::RotationFailure;
use super::rotate::{Env, Finished, finish, leave_open, restart_and_prove, restart_onto_disk};
use crate::events;
use crate::history::History;
use crate::history::{Record, State};
use crate::lease::Held;
use crate::rotation::journal::{Journal, Phase};
use crate::rotation::session::Session;
use crate::rotation::{Guard, finish_interrupted};

/// Finishes the rotations a crash, SIGKILL or a lost lease left open: those history still shows
/// as Initiated. First their files are made all-old or all-new (recovery, now with the lease as
/// its guard); then a committed rotation is restarted and proved (and rolled back if that fails),
/// as it would have been; one rolled back after installing has its components restarted onto
/// the old certificates; one that installed nothing is only recorded.
pub async fn resume(env: &Env<'_>, lease: &Held) -> Vec<Finished> {
    let mut finished = Vec::new();
    let open = interrupted(env.history);
    if open.is_empty() {
        return finished;
    }
    if let Err(e) = finish_interrupted_guarded(env, lease).await {
        tracing::error!("finishing interrupted rotations: {e}");
    }
    let inv = match inventory(env).await {
        Ok(inv) => inv,
        Err(e) => {
            tracing::error!("finishing interrupted rotations: {e}");
            return finished;
        }
    };
    for mut record in open {
        let id = record.id.clone();
        let names = record.certificates.clone();
        if !record.recovery {
            record.fencing_token = Some(lease.fencing_token);
        }
        tracing::warn!(rotation_id = %id, "finishing rotation {id}, which was interrupted");
        let journal = Journal::load(&env.state.rotation(&id));
        let done = match journal {
            Ok(Some(j)) if j.phase == Phase::Committed => {
                record.reason = Some(format!(
                    "{}; interrupted after installing, finished by the next start",
                    record.reason.as_deref().unwrap_or("rotation")
                ));
                // The disruption this start causes: the restarts and proof, under its own lease.
                record.disruptive_from = Some(env.clock.now());
                record.disruptive_to = None;
                let installed = Installed::from_journal(&j, &inv);
                restart_and_prove(env, &id, &installed, lease, record).await
            }
            Ok(Some(j)) if j.phase == Phase::RolledBack && j.installed_anything() => {
                record.disruptive_from = Some(env.clock.now());
                let installed = Installed::from_journal(&j, &inv);
                let after = restart_onto_disk(env, &id, &names, &installed, lease).await;
                record.disruptive_to = Some(env.clock.now());
                match after {
                    Ok(()) => finish(env, record, Some(RotationFailure::InterruptedRolledBack)),
                    Err(f) if f.leaves_open() => leave_open(env, record, f),
                    Err(f) => finish(
                        env,
                        record,
                        Some(RotationFailure::InterruptedUnproved(Box::new(f))),
                    ),
                }
            }
            // Still unfinished after recovery: recovery could not run (the lease was lost
            // again, or it failed); the next turn tries again.
            Ok(Some(j)) if !j.phase.is_final() => leave_open(
                env,
                record,
                RotationFailure::NotStarted(format!(
                    "its journal still says {} after recovery",
                    j.phase.as_str()
                )),
            ),
            Ok(_) => finish(env, record, Some(RotationFailure::InterruptedBeforeInstall)),
            Err(e) => finish(
                env,
                record,
                Some(RotationFailure::JournalUnreadable(e.to_string())),
            ),
        };
        let left_open = matches!(done, Finished::LeftOpen { .. });
        finished.push(done);
        if left_open {
            // The lease is gone: the rest waits for the next turn too.
            break;
        }
    }
    finished
}

/// The rotations history shows as Initiated: started, never finished.
pub fn interrupted(history: &History) -> Vec<Record> {
    match history.read(None) {
        Ok(h) => h
            .records
            .into_iter()
            .filter(|r| r.state == State::Initiated)
            .collect(),
        Err(e) => {
            tracing::warn!("reading history for interrupted rotations: {e:#}");
            Vec::new()
        }
    }
}

/// Finishes or rolls back rotations a crash interrupted (the caller holds the lock), asking
/// `guard` before every install of a roll-forward. Returns what it did to each; a rotation it
/// could not recover stays open (`Resolution::Failed`), one whose journal cannot be trusted is
/// quarantined (`Resolution::Quarantined`), and the others go on either way.
pub fn finish_interrupted_locked(
    session: &Session,
    guard: &dyn Guard,
    now: OffsetDateTime,
) -> Result<Vec<finish_interrupted::Interrupted>, String> {
    let recovered = session
        .finish_interrupted(guard, now)
        .map_err(|e| format!("{e:#}"))?;
    for r in &recovered {
        tracing::warn!(rotation_id = %r.id, "recovered interrupted rotation {}: {:?}", r.id, r.action);
    }
    Ok(recovered)
}

/// Closes in history what recovery quarantined: a Failed record (started if history had none)
/// naming the journal and where it went, and an error event. The daemon goes on with the rest.
pub fn record_quarantined(
    history: &History,
    node: &str,
    recovered: &[finish_interrupted::Interrupted],
    now: OffsetDateTime,
) {
    for r in recovered {
        let finish_interrupted::Resolution::Quarantined { reason, moved_to } = &r.action else {
            continue;
        };
        let why = format!(
            "{}; it was moved to {} and none of its files was touched",
            RotationFailure::JournalUnreadable(reason.clone()),
            moved_to.display()
        );
        events::rotation_failed(node, &r.id, &[], &why);
        let known = history
            .read(None)
            .map(|h| h.records.iter().any(|x| x.id == r.id))
            .unwrap_or(false);
        let recorded = if known {
            history.update(&r.id, State::Failed, Some(why), now)
        } else {
            history
                .start(
                    &r.id,
                    node,
                    Vec::new(),
                    Some("quarantined by recovery".into()),
                    now,
                )
                .and_then(|_| history.update(&r.id, State::Failed, Some(why), now))
        };
        if let Err(e) = recorded {
            tracing::error!("recording quarantined rotation {} in history: {e:#}", r.id);
        }
    }
}

/// Refuses to plan while recovery left a rotation open: it is finished first, under the lease.
pub(super) fn still_open(recovered: &[finish_interrupted::Interrupted]) -> Result<(), String> {
    match recovered.iter().find_map(|r| match &r.action {
        finish_interrupted::Resolution::Failed { error } => Some((r.id.as_str(), error.as_str())),
        _ => None,
    }) {
        Some((id, error)) => Err(format!(
            "rotation {id} is still open (recovering it failed: {error}); it is finished first"
        )),
        None => Ok(()),
    }
}

/// Recovery under the lock with the lease as its guard (a roll-forward installs files).
pub(super) async fn finish_interrupted_guarded(env: &Env<'_>, lease: &Held) -> Result<(), String> {
    let (settings, root, state, lease) = (
        env.settings.clone(),
        env.root.clone(),
        env.state.clone(),
        lease.clone(),
    );
    let now = env.clock.now();
    let history = History::for_settings(&settings);
    spawn_blocking(move || {
        let session = Session::open(&root, &state, settings.renew.backups_keep)
            .map_err(|e| format!("{e:#}"))?;
        let recovered = finish_interrupted_locked(&session, &lease, now)?;
        record_quarantined(&history, &settings.node_name, &recovered, now);
        still_open(&recovered)
    })
    .await
    .map_err(|e| format!("recovery task failed: {e}"))?
}
