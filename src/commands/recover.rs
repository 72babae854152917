//! `certrotd recover` (the command keeps its name): finish or roll back interrupted rotations
//! ([`crate::rotation::finish_interrupted`]). `renew` and `restore` do the same first, through
//! [`lock_and_finish_interrupted`]. Not the all-expired etcd case (`daemon::cluster_recovery`).

use std::process::ExitCode;

use super::{Failure, Outcome, load_settings};
use crate::cli::NodeArgs;
use crate::config::Settings;
use crate::root::Root;
use crate::rotation::finish_interrupted::{Interrupted, Resolution};
use crate::rotation::session::Session;
use crate::rotation::{StateDirs, Unguarded};

/// The node root and state directories the settings describe.
pub fn dirs(settings: &Settings) -> Result<(Root, StateDirs), Failure> {
    let root = Root::new(&settings.root);
    let state = StateDirs::new(&root, &settings.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "resolving the state directory {} under {}: {e}",
            settings.state_dir.display(),
            settings.root.display()
        )
    })?;
    Ok((root, state))
}

/// Opens a rotation session (the lock), recovers every unfinished rotation, prints what was
/// done, and returns the session (the lock held until it is dropped).
pub fn lock_and_finish_interrupted(
    root: &Root,
    state: &StateDirs,
    settings: &Settings,
    now: time::OffsetDateTime,
) -> Result<Session, Failure> {
    let session = Session::open(root, state, settings.renew.backups_keep)?;
    let recovered = session.finish_interrupted(&Unguarded, now)?;
    print_finished(&recovered);
    if let Some(r) = recovered
        .iter()
        .find(|r| matches!(r.action, Resolution::Failed { .. }))
    {
        return Err(anyhow::anyhow!(
            "rotation {} is still unfinished (see above); nothing else is done until it is",
            r.id
        )
        .into());
    }
    Ok(session)
}

/// Tells the operator what recovery did (what went wrong on stderr).
pub fn print_finished(recovered: &[Interrupted]) {
    for r in recovered {
        let what = match &r.action {
            Resolution::Abandoned => {
                "was interrupted before installing anything; abandoned (nothing changed)".into()
            }
            Resolution::RolledForward => {
                "was interrupted while installing; finished from its staged files".into()
            }
            Resolution::RolledBack => "was interrupted; rolled back from its backup".into(),
            Resolution::CleanedUp => "had finished; removed what it left behind".to_owned(),
            Resolution::Quarantined { reason, moved_to } => {
                eprintln!(
                    "rotation {} quarantined: {reason}; moved to {}, none of its files touched \
                     (see `certrotd check`; its backup, if any, is kept)",
                    r.id,
                    moved_to.display()
                );
                continue;
            }
            Resolution::Failed { error } => {
                eprintln!(
                    "rotation {}: recovery failed: {error}; it stays open and the next run retries",
                    r.id
                );
                continue;
            }
        };
        println!("recovered rotation {}: {what}", r.id);
        for w in &r.warnings {
            println!("  warning: {w}");
        }
        if !r.consumers.is_empty() {
            println!("  restart to use its certificates: {}", join(&r.consumers));
        }
    }
}

/// Whether recovery left something for a person: a quarantined rotation, or one still open.
fn needs_attention(recovered: &[Interrupted]) -> bool {
    recovered.iter().any(|r| {
        matches!(
            r.action,
            Resolution::Quarantined { .. } | Resolution::Failed { .. }
        )
    })
}

/// Comma-separated display values.
pub fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `certrotd recover`.
pub fn run(node: &NodeArgs) -> Outcome {
    let settings = load_settings(node)?;
    let (root, state) = dirs(&settings)?;
    let session = Session::open(&root, &state, settings.renew.backups_keep)?;
    let recovered = session.finish_interrupted(&Unguarded, time::OffsetDateTime::now_utc())?;
    drop(session);
    if recovered.is_empty() {
        println!("no interrupted rotation: nothing to recover");
    }
    print_finished(&recovered);
    if needs_attention(&recovered) {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
