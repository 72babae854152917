//! `certrotd status`: the running daemon's view of the node, as a table or JSON.
//!
//! Also what the three client commands (`status`, `rotate`, `history`) share: finding the socket,
//! asking the daemon and turning its answers into exit codes.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Failure, Outcome, load_settings};
use crate::cli::{ClientArgs, Output};
use crate::control::client::{self, ClientError};
use crate::control::proto::{CertStatus, ErrorKind, Request, Response, StatusReport};
use crate::duration::format_residual;
use crate::policy::Status;
use crate::report::{section, table};

/// Exit code when the daemon cannot be reached (not running, no permission, no answer).
pub const EXIT_UNREACHABLE: u8 = 3;

/// The socket to talk to: `--socket` as given, else the configuration's `[control] socket`
/// inside its root. A configuration that does not load exits 2.
pub fn socket_path(client: &ClientArgs) -> Result<PathBuf, Failure> {
    if let Some(socket) = &client.socket {
        // Read no configuration: a broken one must not keep an operator from asking the daemon.
        return Ok(socket.clone());
    }
    let settings = load_settings(&client.node)?;
    Ok(settings.in_root(&settings.control.socket))
}

/// Sends `request` to the daemon and returns its answer. An error answer becomes a failure with
/// exit code 1 (`command` names what was refused, e.g. "certrotd rotate"); a daemon that cannot
/// be reached, exit code 3.
pub fn ask(client: &ClientArgs, request: Request, command: &str) -> Result<Response, Failure> {
    let socket = socket_path(client)?;
    let response =
        client::request_blocking(&socket, request, client::DEFAULT_TIMEOUT).map_err(unreachable)?;
    match response {
        Response::Error {
            kind: ErrorKind::Forbidden,
            message,
        } => Err(Failure::from(anyhow::anyhow!(
            "{command} needs root: run it as root (e.g. with sudo); the daemon refused uid {}: {message}",
            nix::unistd::getuid()
        ))),
        Response::Error { kind, message } => Err(Failure::from(anyhow::anyhow!(
            "the daemon refused {command} ({kind}): {message}"
        ))),
        other => Ok(other),
    }
}

fn unreachable(e: ClientError) -> Failure {
    Failure {
        code: EXIT_UNREACHABLE,
        error: e.into(),
    }
}

/// Prints what the daemon answered, as `output` asks: a table made by `table`, or the JSON.
pub fn show<T: serde::Serialize>(
    output: Output,
    answer: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<(), Failure> {
    match output {
        Output::Table => print!("{}", table(answer)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(answer).map_err(anyhow::Error::from)?
        ),
    }
    Ok(())
}

/// The failure for an answer of the wrong kind: a daemon of another version, most likely.
pub fn unexpected(command: &str, response: &Response) -> Failure {
    let kind = match response {
        Response::Status(_) => "status",
        Response::Rotate { .. } => "rotate",
        Response::History(_) => "history",
        Response::Reloaded => "reloaded",
        Response::Cluster(_) => "cluster",
        Response::CaRotate { .. } => "ca rotate",
        Response::CaStatus(_) => "ca status",
        Response::CaAborted { .. } => "ca abort",
        Response::Error { .. } => "error",
    };
    Failure {
        code: EXIT_UNREACHABLE,
        error: anyhow::anyhow!(
            "the daemon answered {command} with a {kind} answer: is it another version of certrotd?"
        ),
    }
}

/// Runs `certrotd status`.
pub fn run(client: &ClientArgs, output: Output) -> Outcome {
    let report = match ask(client, Request::Status, "certrotd status")? {
        Response::Status(report) => report,
        other => return Err(unexpected("certrotd status", &other)),
    };
    show(output, &report, to_table)?;
    Ok(if report.certificates.iter().any(needs_attention) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Whether `certrotd status` exits 1 for this certificate: the domain's rule
/// ([`Status::needs_attention`], as `certrotd check` applies it) on the word the daemon sent. A
/// word this client does not know (a newer daemon's) counts: better a false alarm than silence.
fn needs_attention(c: &CertStatus) -> bool {
    c.status
        .parse::<Status>()
        .map_or(true, Status::needs_attention)
}

/// The status as people read it: a header, one row per certificate, then the rotation, the
/// lease, notices and problems.
pub fn to_table(report: &StatusReport) -> String {
    let mut out = String::new();
    let daemon = &report.daemon;
    let _ = writeln!(
        out,
        "certrotd {} on node {} (pid {}, started {})",
        daemon.version,
        report.node,
        daemon.pid,
        or_dash(&daemon.started_at)
    );
    if !report.summary.is_empty() {
        let _ = writeln!(out, "{}", report.summary);
    }
    out.push('\n');
    let generated = parse_time(&report.generated_at);
    let rows: Vec<Vec<String>> = report
        .certificates
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.status.clone(),
                c.not_after
                    .as_deref()
                    .and_then(parse_time)
                    .map(crate::timefmt::kubeadm_time)
                    .unwrap_or_else(|| "-".to_owned()),
                c.residual_seconds
                    .map(format_residual)
                    .unwrap_or_else(|| "-".to_owned()),
                c.next_action.clone(),
                if c.next_action == "none" {
                    "-".to_owned()
                } else {
                    when(c.next_action_at.as_deref(), generated)
                },
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "NAME",
            "STATUS",
            "EXPIRES",
            "RESIDUAL",
            "NEXT ACTION",
            "WHEN",
        ],
        &rows,
    );
    out.push('\n');
    match &report.rotation {
        Some(r) => {
            let _ = writeln!(
                out,
                "ROTATION {}: step {} (started {}; certificates: {})",
                r.id,
                r.step,
                or_dash(&r.started_at),
                list(&r.certificates)
            );
        }
        None => out.push_str("ROTATION none in progress\n"),
    }
    let lease = &report.lease;
    let mut line = format!("LEASE {}: ", or_dash(&lease.backend));
    line.push_str(if lease.held {
        "held by this node"
    } else {
        "not held"
    });
    if let Some(holder) = lease.holder.as_deref().filter(|_| !lease.held) {
        let _ = write!(line, "; holder {holder}");
    }
    if let Some(since) = &lease.since {
        let _ = write!(line, " since {since}");
    }
    if let Some(detail) = &lease.detail {
        let _ = write!(line, " ({detail})");
    }
    let _ = writeln!(out, "{line}");
    if let Some(r) = &report.retry {
        let _ = writeln!(
            out,
            "RETRY renewal failed {} time(s) in a row since {}; next attempt {}: {}",
            r.attempts,
            r.failing_since.as_deref().unwrap_or("-"),
            r.next_retry.as_deref().unwrap_or("-"),
            r.last_error
        );
    }
    section(&mut out, "NOTICES", &report.notices);
    let problems: Vec<String> = report
        .certificates
        .iter()
        .flat_map(|c| c.problems.iter().map(move |p| format!("{}: {p}", c.name)))
        .collect();
    section(&mut out, "PROBLEMS", &problems);
    out
}

/// "in 29d" counted from when the daemon made the report (not this machine's clock, which the
/// client need not read), "now" once due, "-" without a time.
fn when(at: Option<&str>, generated: Option<OffsetDateTime>) -> String {
    let Some(text) = at else {
        return "-".to_owned();
    };
    match (parse_time(text), generated) {
        (Some(at), Some(generated)) => {
            let seconds = (at - generated).whole_seconds();
            if seconds <= 0 {
                "now".to_owned()
            } else {
                format!("in {}", format_residual(seconds))
            }
        }
        _ => text.to_owned(),
    }
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

/// Names joined by ", ", or "-" for none.
pub fn list(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(", ")
    }
}
