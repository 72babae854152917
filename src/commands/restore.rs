//! `certrotd restore <rotation-id>`: put back the files a rotation changed, from its backup.

use std::process::ExitCode;

use super::recover::{dirs, join, lock_and_finish_interrupted};
use super::{EXIT_CONFIG, Failure, Outcome, load_settings};
use crate::cli::NodeArgs;
use crate::rotation::Unguarded;
use crate::rotation::restore;
use crate::store;

/// Runs `certrotd restore`.
pub fn run(node: &NodeArgs, id: &str) -> Outcome {
    store::validate_rotation_id(id).map_err(|e| Failure {
        code: EXIT_CONFIG,
        error: e.into(),
    })?;
    let settings = load_settings(node)?;
    let (root, state) = dirs(&settings)?;
    let session =
        lock_and_finish_interrupted(&root, &state, &settings, time::OffsetDateTime::now_utc())?;
    let restored = restore::restore(&session.context(&Unguarded), id)?;
    let show = |p: &std::path::Path| {
        root.node_path(p)
            .unwrap_or_else(|| p.to_owned())
            .display()
            .to_string()
    };
    println!("restored the backup of rotation {id}");
    for p in &restored.report.restored {
        println!("  put back  {}", show(p));
    }
    for p in &restored.report.removed {
        println!("  removed   {}", show(p));
    }
    for p in &restored.report.unchanged {
        println!("  unchanged {}", show(p));
    }
    if !restored.consumers.is_empty() {
        println!(
            "restart to use the restored certificates: {}",
            join(&restored.consumers)
        );
    }
    Ok(ExitCode::SUCCESS)
}
