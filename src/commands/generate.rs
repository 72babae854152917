//! `certrotd generate`: the man pages and shell completions, generated from the command line's own
//! definition (`Cli::command()`) so that what the packages ship never drifts from the binary.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Outcome;
use crate::cli::Cli;

/// The program name the pages and completions are written for.
const BIN: &str = "certrotd";

/// Writes `certrotd.1` and one page per visible subcommand (`certrotd-check.1`, …) into `out`.
pub fn man(out: &Path) -> Outcome {
    create(out)?;
    clap_mangen::generate_to(Cli::command(), out)
        .with_context(|| format!("write the man pages into {}", out.display()))?;
    println!("wrote the man pages into {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes `shell`'s completion script into `out` and prints its path.
pub fn completions(shell: Shell, out: &Path) -> Outcome {
    create(out)?;
    let path = clap_complete::generate_to(shell, &mut Cli::command(), BIN, out)
        .with_context(|| format!("write the {shell} completions into {}", out.display()))?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

fn create(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))
}
