//! `certrotd run`: the daemon, on a tokio runtime, logging to journald under systemd.

use std::process::ExitCode;

use super::{EXIT_CONFIG, Failure, Outcome};
use crate::cli::NodeArgs;
use crate::daemon::{self, Options};

/// Runs the daemon until SIGTERM.
pub fn run(node: &NodeArgs) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // A node agent: two workers are plenty, and keep idle memory small.
        .worker_threads(2)
        .enable_all()
        .build()?;
    let opts = Options {
        config: node.config.clone(),
        root: node.root.clone(),
    };
    runtime
        .block_on(daemon::run(opts, std::future::pending()))
        .map_err(|e| {
            let code = if e.downcast_ref::<crate::config::ConfigError>().is_some() {
                EXIT_CONFIG
            } else {
                1
            };
            Failure { code, error: e }
        })?;
    Ok(ExitCode::SUCCESS)
}
