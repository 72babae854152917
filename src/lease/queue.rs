//! The fair order of waiting nodes: soonest expiry first, then etcd members, control planes and
//! workers, then who waited longest, then the node name so that every node computes the same order.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::record::QueueEntry;

/// Sorts the queue into the order nodes will go. An entry whose times do not parse sorts last
/// (a record some other version wrote should not jump the queue).
pub fn sort(queue: &mut [QueueEntry]) {
    queue.sort_by_cached_key(|e| {
        (
            parse(&e.earliest_expiry),
            e.role,
            parse(&e.since),
            e.node.clone(),
        )
    });
}

/// Whether `node` may take a free slot now: it must be among the first `free` entries of the
/// sorted queue, so that a node later in the order never overtakes one before it.
pub fn may_take(sorted: &[QueueEntry], node: &str, free: usize) -> Option<usize> {
    sorted.iter().take(free).position(|e| e.node == node)
}

/// A time as the records write it; unparsable times sort after every real one.
fn parse(text: &str) -> (bool, i128) {
    match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) => (false, t.unix_timestamp_nanos()),
        Err(_) => (true, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Role;

    fn entry(node: &str, role: Role, expiry: &str, since: &str) -> QueueEntry {
        QueueEntry {
            node: node.to_owned(),
            role,
            earliest_expiry: expiry.to_owned(),
            since: since.to_owned(),
        }
    }

    #[test]
    fn expiry_then_role_then_since_then_name() {
        let mut q = vec![
            entry(
                "w1",
                Role::Worker,
                "2026-03-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
            ),
            entry(
                "cp2",
                Role::ControlPlane,
                "2026-03-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
            ),
            entry(
                "e2",
                Role::EtcdMember,
                "2026-03-01T00:00:00Z",
                "2026-01-01T00:00:05Z",
            ),
            entry(
                "e1",
                Role::EtcdMember,
                "2026-03-01T00:00:00Z",
                "2026-01-01T00:00:05Z",
            ),
            entry(
                "e0",
                Role::EtcdMember,
                "2026-03-01T00:00:00Z",
                "2026-01-01T00:00:01Z",
            ),
            entry(
                "w0",
                Role::Worker,
                "2026-02-01T00:00:00+01:00",
                "2026-01-02T00:00:00Z",
            ),
            entry("bad", Role::EtcdMember, "garbage", "2026-01-01T00:00:00Z"),
        ];
        sort(&mut q);
        let names: Vec<&str> = q.iter().map(|e| e.node.as_str()).collect();
        assert_eq!(names, ["w0", "e0", "e1", "e2", "cp2", "w1", "bad"]);
        assert_eq!(may_take(&q, "e0", 2), Some(1));
        assert_eq!(may_take(&q, "e1", 2), None);
        assert_eq!(may_take(&q, "w0", 0), None);
    }
}
