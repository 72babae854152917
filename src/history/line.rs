//! A record as one line of `history.jsonl`: the file's own format, kept apart from the domain
//! [`Record`] and from the control protocol so neither can change what older files hold. The
//! field names, their order and the time format (RFC 3339, seconds, UTC) are those every
//! version has written; fields added later default when an older line lacks them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::record::{Record, State};
use crate::timefmt::rfc3339;

/// One line of the history file.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Line {
    id: String,
    node: String,
    #[serde(default)]
    certificates: Vec<String>,
    state: String,
    started_at: String,
    #[serde(default)]
    finished_at: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    disruptive_from: Option<String>,
    #[serde(default)]
    disruptive_to: Option<String>,
    #[serde(default)]
    fencing_token: Option<u64>,
    #[serde(default)]
    recovery: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reloaded: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    restarted: Vec<String>,
}

impl From<&Record> for Line {
    fn from(r: &Record) -> Self {
        Line {
            id: r.id.clone(),
            node: r.node.clone(),
            certificates: r.certificates.clone(),
            state: r.state.as_str().to_owned(),
            started_at: rfc3339(r.started_at),
            finished_at: r.finished_at.map(rfc3339),
            reason: r.reason.clone(),
            disruptive_from: r.disruptive_from.map(rfc3339),
            disruptive_to: r.disruptive_to.map(rfc3339),
            fencing_token: r.fencing_token,
            recovery: r.recovery,
            reloaded: r.reloaded.clone(),
            restarted: r.restarted.clone(),
        }
    }
}

impl Line {
    /// The record a line holds, or `None` for anything that is not one (a torn line, garbage,
    /// a state or time no version writes): the caller skips and counts it.
    pub(super) fn parse(bytes: &[u8]) -> Option<Record> {
        let l: Line = serde_json::from_slice(bytes).ok()?;
        let time = |s: &str| OffsetDateTime::parse(s, &Rfc3339).ok();
        let opt_time = |s: Option<String>| match s {
            None => Some(None),
            Some(s) => time(&s).map(Some),
        };
        Some(Record {
            state: State::from_word(&l.state)?,
            started_at: time(&l.started_at)?,
            finished_at: opt_time(l.finished_at)?,
            disruptive_from: opt_time(l.disruptive_from)?,
            disruptive_to: opt_time(l.disruptive_to)?,
            id: l.id,
            node: l.node,
            certificates: l.certificates,
            reason: l.reason,
            fencing_token: l.fencing_token,
            recovery: l.recovery,
            reloaded: l.reloaded,
            restarted: l.restarted,
        })
    }
}
