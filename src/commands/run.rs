//! `certrotd run`: the daemon, on a tokio runtime, logging to journald under systemd.

use std::process::ExitCode;

use anyhow::Context as _;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

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

/// Keeps private keys in this process's memory out of core dumps and out of other processes'
/// reach. Not dumpable, the kernel writes no core file, and hands /proc/PID/mem, environ, maps
/// and fd to root only (they are owned by root; ptrace needs CAP_SYS_PTRACE), even when certrotd
/// runs as another user. The core size limit goes to zero too, for a kernel configured to dump
/// non-dumpable processes anyway (`fs.suid_dumpable=2`). `main` calls this before anything else,
/// for every command: any of them may read or make a key. The unit sets `LimitCORE=0` already;
/// the limit is only lowered here when it is not zero, which is always allowed.
pub fn protect_memory() -> anyhow::Result<()> {
    nix::sys::prctl::set_dumpable(false).context("prctl(PR_SET_DUMPABLE, 0)")?;
    let limits = getrlimit(Resource::RLIMIT_CORE).context("getrlimit(RLIMIT_CORE)")?;
    if limits != (0, 0) {
        setrlimit(Resource::RLIMIT_CORE, 0, 0).context("setrlimit(RLIMIT_CORE, 0)")?;
    }
    Ok(())
}
