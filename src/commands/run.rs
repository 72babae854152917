//! `certrotd run`: the daemon, on a tokio runtime, logging to journald under systemd. This is
//! where its edges are made: the configuration loaded, the control socket bound, SIGTERM and
//! SIGINT turned into the request to stop, SIGHUP into reloads, the wall clock.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use anyhow::Context as _;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

use super::{EXIT_CONFIG, Failure, Outcome};
use crate::cli::NodeArgs;
use crate::daemon::{self, Edges, Options, Shutdown, SystemClock};

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
    runtime.block_on(serve(opts)).map_err(|e| {
        let code = if e.downcast_ref::<crate::config::ConfigError>().is_some() {
            EXIT_CONFIG
        } else {
            1
        };
        Failure { code, error: e }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(opts: Options) -> anyhow::Result<()> {
    let settings = daemon::load(&opts)?;
    let (listener, socket_path) = daemon::bind_control(&settings)?;
    let (trigger, shutdown) = Shutdown::new();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // SIGTERM and SIGINT are one request to stop, so the daemon behaves the same in tests as
    // under systemd, also in the middle of a rotation.
    tokio::spawn(async move {
        let why = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        trigger.stop(why);
    });
    let (hup_tx, hangups) = mpsc::channel(1);
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            // A reload already queued covers this one too.
            let _ = hup_tx.try_send(());
        }
    });
    daemon::serve(
        settings,
        Edges {
            listener,
            socket_path,
            shutdown,
            clock: Arc::new(SystemClock),
            reload: Box::new(move || daemon::load(&opts)),
            hangups: Some(hangups),
            components: None,
            lease: None,
        },
    )
    .await
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
