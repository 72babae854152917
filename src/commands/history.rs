//! `certrotd history`: the running daemon's activity records, as a table or JSON.

use std::process::ExitCode;

use super::Outcome;
use super::status::{ask, list, show, unexpected};
use crate::cli::{ClientArgs, Output};
use crate::control::proto::{HistoryRecord, Request, Response};
use crate::report::table;

/// Runs `certrotd history`.
pub fn run(client: &ClientArgs, output: Output, limit: Option<usize>) -> Outcome {
    let records = match ask(client, Request::History { limit }, "certrotd history")? {
        Response::History(records) => records,
        other => return Err(unexpected("certrotd history", &other)),
    };
    show(output, &records, |r| to_table(r))?;
    Ok(ExitCode::SUCCESS)
}

/// The records as a kubeadm-style table, in the order given (newest first).
pub fn to_table(records: &[HistoryRecord]) -> String {
    if records.is_empty() {
        return "no rotations recorded\n".to_owned();
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.state.to_string(),
                r.started_at.clone(),
                r.finished_at.clone().unwrap_or_else(|| "-".to_owned()),
                r.node.clone(),
                list(&r.certificates),
                components(r),
                r.reason.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    let mut out = String::new();
    table(
        &mut out,
        &[
            "ID",
            "STATE",
            "STARTED",
            "FINISHED",
            "NODE",
            "CERTIFICATES",
            "COMPONENTS",
            "REASON",
        ],
        &rows,
    );
    out
}

/// What happened to each consumer: "etcd reloaded, kubelet restarted", or "-".
fn components(r: &HistoryRecord) -> String {
    let words: Vec<String> = r
        .reloaded
        .iter()
        .map(|c| format!("{c} reloaded"))
        .chain(r.restarted.iter().map(|c| format!("{c} restarted")))
        .collect();
    if words.is_empty() {
        "-".to_owned()
    } else {
        words.join(", ")
    }
}
