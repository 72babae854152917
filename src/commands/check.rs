//! `certrotd check`: the inventory as tables or JSON.

use std::io::Write as _;
use std::process::ExitCode;

use time::OffsetDateTime;

use super::{Outcome, load_settings};
use crate::cli::{NodeArgs, Output};
use crate::config::Settings;
use crate::inventory::Inventory;
use crate::policy::Thresholds;
use crate::report::CheckReport;

/// The status windows of the settings.
pub fn windows(settings: &Settings) -> Thresholds {
    Thresholds {
        notify_before: settings.policy.notify_before,
        renew_before: settings.policy.renew_before,
    }
}

/// Runs `certrotd check`.
pub fn run(node: &NodeArgs, output: Output, now: OffsetDateTime) -> Outcome {
    let settings = load_settings(node)?;
    let inv = Inventory::for_settings(&settings);
    let report = CheckReport::new(settings.root.clone(), &inv, &windows(&settings), now);
    // The inventory is not needed past this point, and freeing ten thousand certificates one by
    // one costs more than the process's exit does.
    std::mem::forget(inv);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match output {
        Output::Table => out.write_all(report.to_table().as_bytes())?,
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &report)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(if report.needs_attention() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
