//! certrotd's binary: parse the command line, set up logging, dispatch, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use time::OffsetDateTime;

use certrotd::cli::{CaAction, Cli, Command, ConfigAction, GenerateWhat};
use certrotd::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any command reads or makes a private key.
    if let Err(e) = commands::run::protect_memory() {
        eprintln!("certrotd: {e:#}");
        return ExitCode::FAILURE;
    }
    // The daemon logs to journald under systemd; every other command talks to a terminal.
    let daemon = matches!(cli.command, Command::Run { .. });
    certrotd::logging::init(daemon && certrotd::logging::under_systemd());
    let now = OffsetDateTime::now_utc();
    let outcome = match &cli.command {
        Command::Check { node, output } => commands::check::run(node, *output, now),
        Command::Config {
            action: ConfigAction::Check { node },
        } => commands::config::check(node),
        Command::Renew(args) => commands::renew::run(args, now),
        Command::Run { node } => commands::run::run(node),
        Command::Restore { node, id } => commands::restore::run(node, id),
        Command::Recover { node } => commands::recover::run(node),
        Command::Status {
            client,
            output,
            cluster: false,
        } => commands::status::run(client, *output),
        Command::Status {
            client,
            output,
            cluster: true,
        } => commands::cluster::run(client, *output),
        Command::Rotate {
            client,
            types,
            certs,
        } => commands::rotate::run(client, types, certs),
        Command::History {
            client,
            output,
            limit,
        } => commands::history::run(client, *output, *limit),
        Command::Ca {
            action:
                CaAction::Rotate {
                    client,
                    track,
                    from,
                },
        } => commands::ca::rotate(client, (*track).into(), from.as_deref()),
        Command::Ca {
            action: CaAction::Status { client, output },
        } => commands::ca::status(client, *output),
        Command::Ca {
            action: CaAction::Abort { client, track },
        } => commands::ca::abort(client, track.map(Into::into)),
        Command::Sandbox {
            dir,
            leaf_ttl,
            node_name,
        } => commands::sandbox::run(dir, leaf_ttl, node_name, now),
        Command::Generate {
            what: GenerateWhat::Man { out },
        } => commands::generate::man(out),
        Command::Generate {
            what: GenerateWhat::Completions { shell, out },
        } => commands::generate::completions(*shell, out),
    };
    match outcome {
        Ok(code) => code,
        Err(f) => {
            eprintln!("certrotd: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
