//! `certrotd status --cluster`: the cluster as the lease sees it, asked of the local daemon (which
//! reads it from etcd with a timeout): every node's summary, who holds each slot since when and at
//! which step, and the queue in order. A table, or `--output json`.

use std::fmt::Write as _;
use std::process::ExitCode;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Outcome;
use super::status::{ask, show, unexpected};
use crate::cli::{ClientArgs, Output};
use crate::control::proto::{ClusterView, Request, Response};
use crate::duration::format_residual;
use crate::report::table;

/// Runs `certrotd status --cluster`.
pub fn run(client: &ClientArgs, output: Output) -> Outcome {
    let view = match ask(client, Request::Cluster, "certrotd status --cluster")? {
        Response::Cluster(view) => view,
        other => return Err(unexpected("certrotd status --cluster", &other)),
    };
    show(output, &view, |v| to_table(v, OffsetDateTime::now_utc()))?;
    Ok(ExitCode::SUCCESS)
}

/// The view as people read it at `now`: nodes, holders, queue.
pub fn to_table(view: &ClusterView, now: OffsetDateTime) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {} ({} slot{})\n",
        view.cluster,
        view.slots,
        if view.slots == 1 { "" } else { "s" }
    );
    let rows: Vec<Vec<String>> = view
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.role.clone().unwrap_or_else(|| "-".to_owned()),
                n.earliest_expiry
                    .as_deref()
                    .map(|t| format!("{t} ({})", relative(t, now)))
                    .unwrap_or_else(|| "-".to_owned()),
                n.state.clone(),
                n.last_rotation.clone().unwrap_or_else(|| "-".to_owned()),
                format!("{} ago", age(&n.updated, now)),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "NODE",
            "ROLE",
            "EARLIEST EXPIRY",
            "STATE",
            "LAST ROTATION",
            "SUMMARY AGE",
        ],
        &rows,
    );
    out.push('\n');
    if view.holders.is_empty() {
        let _ = writeln!(out, "lease: free");
    } else {
        let rows: Vec<Vec<String>> = view
            .holders
            .iter()
            .map(|h| {
                vec![
                    h.slot.to_string(),
                    h.node.clone(),
                    h.rotation_id.clone(),
                    h.since.clone(),
                    age(&h.since, now),
                    h.step.clone(),
                    h.fencing_token.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "SLOT", "HOLDER", "ROTATION", "SINCE", "HELD FOR", "STEP", "FENCING",
            ],
            &rows,
        );
    }
    out.push('\n');
    if view.queue.is_empty() {
        let _ = writeln!(out, "queue: empty");
    } else {
        let rows: Vec<Vec<String>> = view
            .queue
            .iter()
            .enumerate()
            .map(|(i, q)| {
                vec![
                    (i + 1).to_string(),
                    q.node.clone(),
                    q.role.clone(),
                    q.earliest_expiry.clone(),
                    format!("{} ago", age(&q.since, now)),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "POSITION",
                "NODE",
                "ROLE",
                "EARLIEST EXPIRY",
                "WAITING SINCE",
            ],
            &rows,
        );
    }
    if !view.ca.is_empty() {
        out.push('\n');
        ca_table(&mut out, view);
    }
    out
}

/// The CA tracks as this node's daemon last read them (`certrotd ca status` has the detail).
fn ca_table(out: &mut String, view: &ClusterView) {
    let rows: Vec<Vec<String>> = view
        .ca
        .iter()
        .map(|t| {
            vec![
                t.track.clone(),
                t.phase.clone(),
                if t.members == 0 {
                    "-".to_owned()
                } else {
                    format!("{}/{}", t.members_done, t.members)
                },
                if t.rotation_id.is_empty() {
                    "-".to_owned()
                } else {
                    t.rotation_id.clone()
                },
                t.blockers
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table(
        out,
        &[
            "CA TRACK",
            "PHASE",
            "MEMBERS DONE",
            "ROTATION",
            "BLOCKED BY",
        ],
        &rows,
    );
}

/// How long ago `text` (RFC 3339) was, "-" when it does not parse.
pub(crate) fn age(text: &str, now: OffsetDateTime) -> String {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| format_residual((now - t).whole_seconds().max(0)))
        .unwrap_or_else(|_| "-".to_owned())
}

/// "in 29d" or "expired 3d ago".
pub(crate) fn relative(text: &str, now: OffsetDateTime) -> String {
    match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) if t > now => format!("in {}", format_residual((t - now).whole_seconds())),
        Ok(t) => format!("expired {} ago", format_residual((now - t).whole_seconds())),
        Err(_) => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::{NodeSummary, QueuedNode, SlotHolder};

    #[test]
    fn the_table_shows_nodes_holders_and_the_queue_in_order() {
        let now = OffsetDateTime::parse("2026-05-01T10:00:00Z", &Rfc3339).unwrap();
        let view = ClusterView {
            cluster: "prod".into(),
            slots: 1,
            holders: vec![SlotHolder {
                slot: 0,
                node: "cp2".into(),
                rotation_id: "20260501T095930Z-abcdef".into(),
                since: "2026-05-01T09:59:30Z".into(),
                step: "restart".into(),
                fencing_token: 42,
            }],
            queue: vec![
                QueuedNode {
                    node: "cp3".into(),
                    role: "etcd-member".into(),
                    earliest_expiry: "2026-05-03T00:00:00Z".into(),
                    since: "2026-05-01T09:59:00Z".into(),
                },
                QueuedNode {
                    node: "w1".into(),
                    role: "worker".into(),
                    earliest_expiry: "2026-05-02T00:00:00Z".into(),
                    since: "2026-05-01T09:58:00Z".into(),
                },
            ],
            nodes: vec![NodeSummary {
                node: "cp1".into(),
                role: Some("etcd-member".into()),
                earliest_expiry: Some("2027-05-01T10:00:00Z".into()),
                state: "idle".into(),
                last_rotation: Some("20260501T090000Z-123456 Success".into()),
                updated: "2026-05-01T09:59:00Z".into(),
            }],
            ca: Vec::new(),
        };
        let t = to_table(&view, now);
        assert!(!t.contains("CA TRACK"), "no CA section without tracks: {t}");
        let view = ClusterView {
            ca: vec![crate::control::proto::CaTrackSummary {
                track: "etcd-ca".into(),
                rotation_id: "ca-1".into(),
                phase: "IssueNew".into(),
                members_done: 2,
                members: 3,
                blockers: vec!["cp3 has not proved issue-new".into()],
            }],
            ..view
        };
        let t = to_table(&view, now);
        let ca = t.lines().find(|l| l.starts_with("etcd-ca")).unwrap();
        assert!(
            ca.contains("IssueNew") && ca.contains("2/3") && ca.contains("cp3 has not"),
            "{t}"
        );
        assert!(t.contains("cluster prod (1 slot)"), "{t}");
        assert!(
            t.contains("cp1") && t.contains("etcd-member") && t.contains("idle"),
            "{t}"
        );
        let holder = t.lines().find(|l| l.contains("cp2")).unwrap();
        assert!(
            holder.contains("restart") && holder.contains("42") && holder.contains("30s"),
            "{t}"
        );
        let cp3 = t.find("cp3").unwrap();
        let w1 = t.find("w1").unwrap();
        assert!(cp3 < w1, "the queue keeps its order: {t}");
    }
}
