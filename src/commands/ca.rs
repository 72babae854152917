//! `certrotd ca rotate|status|abort`: CA rotation asked of the running daemon, which carries it
//! out with the other control-plane nodes' daemons. `status` prints every track as a table or
//! `--output json` (the protocol's `CaStatusView` as it travels).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use time::OffsetDateTime;

use super::cluster::{age, relative};
use super::status::{ask, unexpected};
use super::{EXIT_CONFIG, Failure, Outcome};
use crate::ca::Track;
use crate::cli::{ClientArgs, Output};
use crate::control::proto::{Request, Response};
use crate::control::proto_ca::{CaRotationStatus, CaStatusView, CaTrackStatus};
use crate::report::table;

/// How many hex digits of a fingerprint the table shows (the JSON has them all).
const SHORT_FP: usize = 16;

/// Runs `certrotd ca rotate TRACK [--from DIR]`: prints the rotation id the daemon gives.
pub fn rotate(client: &ClientArgs, track: Track, from: Option<&Path>) -> Outcome {
    let from = from.map(absolute_dir).transpose()?;
    let request = Request::CaRotate {
        track: track.as_str().to_owned(),
        from,
    };
    match ask(client, request, "certrotd ca rotate")? {
        Response::CaRotate { rotation_id } => {
            println!("{rotation_id}");
            eprintln!(
                "{track} rotation {rotation_id} started; follow it with `certrotd ca status`"
            );
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected("certrotd ca rotate", &other)),
    }
}

/// `--from DIR` as the daemon must read it: absolute (the daemon's working directory is not
/// the operator's), and a directory that exists, checked here so the mistake is named at once.
/// The key in it is read by the daemon only, never by this client.
fn absolute_dir(dir: &Path) -> Result<String, Failure> {
    let usage = |why: String| Failure {
        code: EXIT_CONFIG,
        error: anyhow::anyhow!("--from {}: {why}", dir.display()),
    };
    let abs = std::fs::canonicalize(dir).map_err(|e| usage(e.to_string()))?;
    if !abs.is_dir() {
        return Err(usage("not a directory".to_owned()));
    }
    abs.into_os_string()
        .into_string()
        .map_err(|_| usage("the path is not UTF-8".to_owned()))
}

/// Runs `certrotd ca status`.
pub fn status(client: &ClientArgs, output: Output) -> Outcome {
    let view = match ask(client, Request::CaStatus, "certrotd ca status")? {
        Response::CaStatus(view) => view,
        other => return Err(unexpected("certrotd ca status", &other)),
    };
    match output {
        Output::Table => print!("{}", to_table(&view, OffsetDateTime::now_utc())),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&view).map_err(anyhow::Error::from)?
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `certrotd ca abort [TRACK]`: prints what the daemon did.
pub fn abort(client: &ClientArgs, track: Option<Track>) -> Outcome {
    let request = Request::CaAbort {
        track: track.map(|t| t.as_str().to_owned()),
    };
    match ask(client, request, "certrotd ca abort")? {
        Response::CaAborted { message } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected("certrotd ca abort", &other)),
    }
}

/// The view as people read it at `now`: one line per track, then each rotation's nodes.
pub fn to_table(view: &CaStatusView, now: OffsetDateTime) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {}, cluster records read {}\n",
        or_dash(&view.node),
        view.as_of
            .as_deref()
            .map(|t| format!("{t} ({} ago)", age(t, now)))
            .unwrap_or_else(|| "not yet".to_owned())
    );
    let rows: Vec<Vec<String>> = view.tracks.iter().map(|t| track_row(t, now)).collect();
    table(
        &mut out,
        &[
            "TRACK",
            "SUBJECT",
            "EXPIRES",
            "FINGERPRINT",
            "ROTATES BY ITSELF FROM",
            "PHASE",
            "PHASE SINCE",
        ],
        &rows,
    );
    for t in &view.tracks {
        track_detail(&mut out, t, now);
    }
    out
}

fn track_row(t: &CaTrackStatus, now: OffsetDateTime) -> Vec<String> {
    let (subject, expires, fp, due) = match &t.disk {
        Some(d) => (
            d.subject.clone(),
            format!("{} ({})", d.not_after, relative(&d.not_after, now)),
            short(&d.fingerprint),
            d.rotates_from.clone(),
        ),
        None => (
            "(unreadable)".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
        ),
    };
    let (phase, since) = match &t.rotation {
        Some(r) => (
            r.phase.clone(),
            r.phase_started_at
                .as_deref()
                .map(|s| format!("{s} ({} ago)", age(s, now)))
                .unwrap_or_else(|| "-".to_owned()),
        ),
        None => ("never rotated".to_owned(), "-".to_owned()),
    };
    vec![t.track.clone(), subject, expires, fp, due, phase, since]
}

/// A track's rotation, nodes, blockers and errors, under its own heading; nothing for a track
/// with neither a rotation nor anything wrong.
fn track_detail(out: &mut String, t: &CaTrackStatus, now: OffsetDateTime) {
    let quiet = t.rotation.is_none()
        && t.blockers.is_empty()
        && t.error.is_none()
        && t.disk_error.is_none();
    if quiet {
        return;
    }
    let _ = writeln!(out, "\n{}:", t.track);
    if let Some(r) = &t.rotation {
        rotation_detail(out, r, now);
        if !t.order.is_empty() {
            let _ = writeln!(out, "  step order: {}", t.order.join(", "));
        }
    }
    for b in &t.blockers {
        let _ = writeln!(out, "  blocked: {b}");
    }
    if let Some(e) = &t.disk_error {
        let _ = writeln!(out, "  CA on disk: {e}");
    }
    if let Some(e) = &t.error {
        let _ = writeln!(out, "  last error: {e}");
    }
}

fn rotation_detail(out: &mut String, r: &CaRotationStatus, now: OffsetDateTime) {
    let done = r.nodes.iter().filter(|n| n.done).count();
    let _ = writeln!(
        out,
        "  rotation {}, phase {}{}; {done}/{} members at {}",
        r.rotation_id,
        r.phase,
        if r.finished { " (finished)" } else { "" },
        r.members.len(),
        r.target_level
    );
    let _ = writeln!(
        out,
        "  old CA {}  new CA {}",
        short(&r.old_fingerprint),
        short(&r.new_fingerprint)
    );
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| {
            vec![
                format!("  {}", n.node),
                n.level.clone().unwrap_or_else(|| "-".to_owned()),
                if n.done { "yes" } else { "no" }.to_owned(),
                n.proved_at
                    .as_deref()
                    .map(|p| format!("{p} ({} ago)", age(p, now)))
                    .unwrap_or_else(|| "-".to_owned()),
                n.fencing_token
                    .map(|f| f.to_string())
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table(
        out,
        &["  NODE", "LEVEL", "DONE", "PROVED AT", "FENCING"],
        &rows,
    );
}

fn short(fp: &str) -> String {
    if fp.is_empty() {
        return "-".to_owned();
    }
    fp.chars().take(SHORT_FP).collect()
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

#[cfg(test)]
mod tests {
    use time::format_description::well_known::Rfc3339;

    use super::*;
    use crate::control::proto_ca::{CaNodeStep, CaOnDisk};

    fn view() -> CaStatusView {
        let step = |node: &str, level: Option<&str>, done: bool, token: Option<u64>| CaNodeStep {
            node: node.into(),
            level: level.map(Into::into),
            done,
            proved_at: level.map(|_| "2026-05-01T09:59:00Z".into()),
            fencing_token: token,
            detail: String::new(),
        };
        CaStatusView {
            node: "cp1".into(),
            as_of: Some("2026-05-01T09:59:50Z".into()),
            tracks: vec![
                CaTrackStatus {
                    track: "etcd-ca".into(),
                    disk: Some(CaOnDisk {
                        subject: "CN=etcd-ca".into(),
                        not_after: "2036-05-01T10:00:00Z".into(),
                        fingerprint: "0123456789abcdef0123456789abcdef".into(),
                        rotates_from: "2035-04-01T10:00:00Z".into(),
                    }),
                    rotation: Some(CaRotationStatus {
                        rotation_id: "ca-7".into(),
                        phase: "TrustBoth".into(),
                        target_level: "trust-both".into(),
                        phase_started_at: Some("2026-05-01T09:58:00Z".into()),
                        old_fingerprint: "aa".repeat(32),
                        new_fingerprint: "bb".repeat(32),
                        members: vec!["cp1".into(), "cp2".into()],
                        nodes: vec![
                            step("cp1", Some("trust-both"), true, Some(11)),
                            step("cp2", None, false, None),
                        ],
                        ..CaRotationStatus::default()
                    }),
                    order: vec!["cp1".into(), "cp2".into()],
                    blockers: vec!["cp2 has not proved trust-both".into()],
                    error: Some("etcd: deadline exceeded".into()),
                    ..CaTrackStatus::default()
                },
                CaTrackStatus {
                    track: "front-proxy-ca".into(),
                    disk_error: Some("front-proxy-ca.crt: no such file".into()),
                    ..CaTrackStatus::default()
                },
            ],
        }
    }

    #[test]
    fn the_table_shows_every_track_its_nodes_blockers_and_errors() {
        let now = OffsetDateTime::parse("2026-05-01T10:00:00Z", &Rfc3339).unwrap();
        let t = to_table(&view(), now);
        assert!(
            t.starts_with("node cp1, cluster records read 2026-05-01T09:59:50Z (10s ago)"),
            "{t}"
        );
        let etcd = t.lines().find(|l| l.starts_with("etcd-ca ")).unwrap();
        assert!(
            etcd.contains("CN=etcd-ca") && etcd.contains("in 10y"),
            "{etcd}"
        );
        assert!(
            etcd.contains("0123456789abcdef ") && !etcd.contains("0123456789abcdef0"),
            "{etcd}"
        );
        assert!(
            etcd.contains("2035-04-01T10:00:00Z") && etcd.contains("TrustBoth"),
            "{etcd}"
        );
        assert!(etcd.contains("(2m ago)"), "{etcd}");
        let fp = t
            .lines()
            .find(|l| l.starts_with("front-proxy-ca "))
            .unwrap();
        assert!(
            fp.contains("(unreadable)") && fp.contains("never rotated"),
            "{fp}"
        );
        let cp1 = t
            .lines()
            .find(|l| l.trim_start().starts_with("cp1 "))
            .unwrap();
        assert!(
            cp1.contains("trust-both") && cp1.contains("yes") && cp1.contains("11"),
            "{cp1}"
        );
        let cp2 = t
            .lines()
            .find(|l| l.trim_start().starts_with("cp2 "))
            .unwrap();
        assert!(cp2.contains(" no ") && cp2.contains('-'), "{cp2}");
        assert!(
            t.contains("phase TrustBoth; 1/2 members at trust-both"),
            "{t}"
        );
        assert!(
            t.contains("  blocked: cp2 has not proved trust-both"),
            "{t}"
        );
        assert!(t.contains("  last error: etcd: deadline exceeded"), "{t}");
        assert!(
            t.contains("  CA on disk: front-proxy-ca.crt: no such file"),
            "{t}"
        );
        assert!(t.contains("  step order: cp1, cp2"), "{t}");
    }

    #[test]
    fn from_must_be_an_existing_directory_and_is_sent_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let abs = absolute_dir(dir.path()).unwrap();
        assert!(Path::new(&abs).is_absolute());
        let missing = dir.path().join("nope");
        let e = absolute_dir(&missing).unwrap_err();
        assert_eq!(e.code, EXIT_CONFIG);
        assert!(e.error.to_string().contains("nope"), "{:#}", e.error);
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, "x").unwrap();
        let e = absolute_dir(&file).unwrap_err();
        assert!(
            e.error.to_string().contains("not a directory"),
            "{:#}",
            e.error
        );
    }
}
