//! What each subcommand does. `main` parses and dispatches; these functions take the parsed
//! arguments and `now`, and return the process exit code.

pub mod ca;
pub mod check;
pub mod cluster;
pub mod config;
pub mod generate;
pub mod history;
pub mod recover;
pub mod renew;
pub mod restore;
pub mod rotate;
pub mod run;
pub mod sandbox;
pub mod status;

use std::process::ExitCode;

use crate::cli::NodeArgs;
use crate::config::{LoadOptions, Settings};

/// Exit code for usage and configuration errors (clap uses 2 for usage too).
pub const EXIT_CONFIG: u8 = 2;

/// A failure that carries its exit code, so `main` can map errors without knowing them.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What went wrong, for stderr.
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

/// The result of a command.
pub type Outcome = Result<ExitCode, Failure>;

/// Loads the settings for a command that reads the node; a bad configuration exits 2.
pub fn load_settings(node: &NodeArgs) -> Result<Settings, Failure> {
    crate::config::load(&LoadOptions {
        config: node.config.as_deref(),
        root: node.root.as_deref(),
    })
    .map_err(|e| Failure {
        code: EXIT_CONFIG,
        error: e.into(),
    })
}
