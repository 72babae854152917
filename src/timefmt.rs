//! How certrotd writes a point in time: RFC 3339 for programs, kubeadm's style for people.
//!
//! A bottom layer with no crate imports, so every module that prints a time can use it without
//! depending on the `check` report (which it once lived in, making `policy` and `report` import
//! each other).

use time::{OffsetDateTime, UtcOffset};

/// RFC 3339 in UTC, seconds precision (what `not_before`/`not_after` carry).
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&fmt).unwrap_or_else(|_| t.to_string())
}

/// kubeadm's EXPIRES column: `Nov 23, 2027 18:30 UTC`.
pub fn kubeadm_time(t: OffsetDateTime) -> String {
    let fmt =
        time::macros::format_description!("[month repr:short] [day], [year] [hour]:[minute] UTC");
    t.to_offset(UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn rfc3339_is_utc_with_whole_seconds() {
        let t = datetime!(2027-11-23 20:30:05.75 +02:00);
        assert_eq!(rfc3339(t), "2027-11-23T18:30:05Z");
    }

    #[test]
    fn kubeadm_time_is_kubeadms_expires_column() {
        let t = datetime!(2027-11-03 20:30:59 +02:00);
        assert_eq!(kubeadm_time(t), "Nov 03, 2027 18:30 UTC");
    }
}
