//! `certrotd config check`: validate the configuration and show what it resolves to.

use std::process::ExitCode;

use super::{Outcome, load_settings};
use crate::cli::NodeArgs;

/// Runs `certrotd config check`.
pub fn check(node: &NodeArgs) -> Outcome {
    let settings = load_settings(node)?;
    if settings.sources.is_empty() {
        println!("no configuration file found: using the documented defaults");
    } else {
        for s in &settings.sources {
            println!("read {}", s.display());
        }
    }
    println!("configuration is valid\n\n{settings:#?}");
    Ok(ExitCode::SUCCESS)
}
