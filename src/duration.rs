//! Durations as operators write them ("60d", "1d 12h") and as kubeadm prints them ("364d", "9y").
//!
//! Parsing is humantime's syntax with one change: a year is 365 days, not humantime's 365.25, so
//! that "1y" means what kubeadm, openssl `-days 365` and [`format_residual`] mean by a year and a
//! certificate issued for "1y" does not end six hours after its anniversary.

use std::time::Duration;

const DAY: u64 = 24 * 60 * 60;

/// Units humantime reads as 365.25 days; we read them as 365 days.
const YEAR_UNITS: [&str; 5] = ["y", "yr", "yrs", "year", "years"];

/// The longest duration [`parse`] accepts: 100 years of 365 days. Every configured duration ends
/// up added to or taken from a certificate's dates, and `time` only reaches the year 9999: a
/// bound here keeps that arithmetic far from overflowing (a "8000y" validity would), and no
/// certificate lifetime or timeout is meant to be longer.
pub const MAX: Duration = Duration::from_secs(100 * 365 * DAY);

/// Parses a duration such as "60d", "12h", "1d 12h", "90s", "10m" or "1y" (365 days).
///
/// Units are humantime's (`s`, `m`, `h`, `d`, `w`, `M` = 30.44 days, ...). Empty and negative
/// durations are refused, and so is anything longer than [`MAX`].
pub fn parse(s: &str) -> Result<Duration, String> {
    parse_at_most(s, MAX)
}

/// [`parse`], refusing durations longer than `max` (itself capped at [`MAX`]) with a message
/// that names the limit.
pub fn parse_at_most(s: &str, max: Duration) -> Result<Duration, String> {
    let max = max.min(MAX);
    let total = parse_unbounded(s)?;
    if total > max {
        return Err(format!("longer than the limit of {}", format(max)));
    }
    Ok(total)
}

fn parse_unbounded(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if text.starts_with('-') {
        return Err("negative durations are not allowed".to_owned());
    }
    // humantime's own special case: a bare zero needs no unit.
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() {
            return Err(format!("expected a number at {rest:?}"));
        }
        rest = rest[number_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        if unit.is_empty() {
            return Err(format!(
                "{number} needs a unit, for example {number}d, {number}h or {number}m"
            ));
        }
        rest = rest[unit_len..].trim_start();
        let part = if YEAR_UNITS.contains(&unit) {
            humantime::parse_duration(&format!("{number}d"))
                .map_err(|e| e.to_string())?
                .checked_mul(365)
                .ok_or_else(|| format!("{number}{unit} is too large"))?
        } else {
            humantime::parse_duration(&format!("{number}{unit}")).map_err(|e| e.to_string())?
        };
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("{text:?} is too large"))?;
    }
    Ok(total)
}

/// Formats a duration so that [`parse`] reads it back exactly: days, hours, minutes, seconds and
/// sub-second units, largest first ("365d", "1d 12h", "0s").
///
/// Days are the largest unit because certificate lifetimes are conventionally counted in days
/// (kubeadm's 365 and 3650).
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let secs = d.as_secs();
    let nanos = u64::from(d.subsec_nanos());
    let parts = [
        (secs / DAY, "d"),
        (secs % DAY / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
        (nanos / 1_000_000, "ms"),
        (nanos / 1000 % 1000, "us"),
        (nanos % 1000, "ns"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Formats time left before expiry the way `kubeadm certs check-expiration` prints RESIDUAL TIME
/// (apimachinery's `duration.ShortHumanDuration`): "59s", "59m", "23h", "364d", "9y".
///
/// Where kubeadm prints "<invalid>" for a certificate already past its NotAfter we print
/// "expired". Unlike apimachinery we do not show the first second past expiry as "0s": that
/// tolerance is for clock skew between machines, and an expiry date on this node's own disk is
/// compared with this node's own clock.
pub fn format_residual(seconds: i64) -> String {
    const MINUTE: i64 = 60;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;
    const YEAR: i64 = 365 * DAY;
    match seconds {
        s if s < 0 => "expired".to_owned(),
        s if s < MINUTE => format!("{s}s"),
        s if s < HOUR => format!("{}m", s / MINUTE),
        s if s < DAY => format!("{}h", s / HOUR),
        s if s < YEAR => format!("{}d", s / DAY),
        s => format!("{}y", s / YEAR),
    }
}

/// Serde helpers for a plain [`Duration`] field written as text:
/// `#[serde(with = "crate::duration::human")]`.
///
/// Deserializing uses [`parse`], serializing uses [`format`], so a value round-trips exactly.
/// A module rather than a newtype so that settings keep plain `Duration` fields.
pub mod human {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    /// Writes the duration as text such as "30d" or "1d 12h".
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format(*d))
    }

    /// Reads a duration from text such as "30d" or "1d 12h".
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(r#"a duration such as "30d" or "1d 12h""#)
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            super::parse(s).map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn days(n: u64) -> Duration {
        Duration::from_secs(n * DAY)
    }

    #[test]
    fn parses_humantime_syntax() {
        assert_eq!(parse("60d"), Ok(days(60)));
        assert_eq!(parse("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse("1d 12h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse("1d12h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("2w"), Ok(days(14)));
        assert_eq!(parse(" 30 days "), Ok(days(30)));
        assert_eq!(parse("1.5d"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn a_year_is_365_days() {
        for text in ["1y", "1yr", "1year", "1 years"] {
            assert_eq!(parse(text), Ok(days(365)), "{text}");
        }
        assert_eq!(parse("10y"), Ok(days(3650)));
        assert_eq!(parse("1y 30d"), Ok(days(395)));
        assert_eq!(parse("0.5y"), Ok(Duration::from_secs(365 * DAY / 2)));
    }

    #[test]
    fn refuses_empty_negative_and_garbage() {
        assert_eq!(parse(""), Err("empty duration".to_owned()));
        assert_eq!(parse("  "), Err("empty duration".to_owned()));
        assert!(parse("-5d").unwrap_err().contains("negative"));
        assert!(parse("30").unwrap_err().contains("needs a unit"));
        assert!(
            parse("30x")
                .unwrap_err()
                .contains("unknown time unit \"x\"")
        );
        assert!(parse("d").unwrap_err().contains("expected a number"));
        assert!(parse("1d, 2h").unwrap_err().contains("expected a number"));
        assert!(parse("99999999999999999999d").is_err());
        assert!(parse("999999999999y").is_err());
    }

    #[test]
    fn refuses_durations_past_the_limit() {
        assert_eq!(parse("100y"), Ok(MAX));
        assert_eq!(parse("36500d"), Ok(MAX));
        assert_eq!(
            parse("8000y"),
            Err("longer than the limit of 36500d".to_owned())
        );
        assert!(parse("100y 1s").is_err());
        assert_eq!(
            parse_at_most("2d", days(1)),
            Err("longer than the limit of 1d".to_owned())
        );
        assert_eq!(parse_at_most("1d", days(1)), Ok(days(1)));
        // A field's limit never raises the global one.
        assert!(parse_at_most("200y", Duration::MAX).is_err());
        // Whatever parses can be added to any date a certificate can hold without overflow.
        let latest = time::macros::datetime!(9000-01-01 0:00 UTC);
        assert!(
            latest
                .checked_add(time::Duration::try_from(MAX).unwrap())
                .is_some()
        );
    }

    #[test]
    fn format_round_trips() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(days(365)), "365d");
        assert_eq!(format(Duration::from_secs(36 * 3600)), "1d 12h");
        assert_eq!(format(Duration::new(90, 5_000_000)), "1m 30s 5ms");
        for d in [
            days(3650),
            Duration::new(3661, 1),
            Duration::new(0, 123_456_789),
        ] {
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }

    #[test]
    fn residual_matches_kubeadm() {
        assert_eq!(format_residual(-1), "expired");
        assert_eq!(format_residual(-86_400), "expired");
        assert_eq!(format_residual(0), "0s");
        assert_eq!(format_residual(59), "59s");
        assert_eq!(format_residual(60), "1m");
        assert_eq!(format_residual(3599), "59m");
        assert_eq!(format_residual(3600), "1h");
        assert_eq!(format_residual(86_399), "23h");
        assert_eq!(format_residual(86_400), "1d");
        assert_eq!(format_residual(365 * 86_400 - 1), "364d");
        assert_eq!(format_residual(365 * 86_400), "1y");
        assert_eq!(format_residual(10 * 365 * 86_400 - 1), "9y");
        assert_eq!(
            format_residual(i64::MAX),
            format!("{}y", i64::MAX / (365 * 86_400))
        );
    }

    #[test]
    fn serde_helpers_read_and_write_text() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            #[serde(with = "human")]
            d: Duration,
        }
        let t: T = toml::from_str(r#"d = "1d 12h""#).unwrap();
        assert_eq!(t.d, Duration::from_secs(36 * 3600));
        assert_eq!(toml::to_string(&t).unwrap().trim(), r#"d = "1d 12h""#);
        let err = toml::from_str::<T>(r#"d = "3 parsecs""#).unwrap_err();
        assert!(
            err.message().contains(r#"invalid duration "3 parsecs""#),
            "{err}"
        );
        let err = toml::from_str::<T>("d = 30").unwrap_err();
        assert!(
            err.message().contains(r#"a duration such as "30d""#),
            "{err}"
        );
    }
}

#[cfg(test)]
mod properties {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::{DAY, MAX, format, format_residual, parse};

    /// Durations up to the longest a configuration may hold ([`MAX`]), to the nanosecond.
    fn any_duration() -> impl Strategy<Value = Duration> {
        (0..MAX.as_secs(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n))
    }

    const UNITS: [(&str, u64); 6] = [
        ("s", 1),
        ("m", 60),
        ("h", 3600),
        ("d", DAY),
        ("w", 7 * DAY),
        ("y", 365 * DAY),
    ];

    proptest! {
        #[test]
        fn format_then_parse_is_identity(d in any_duration()) {
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn parse_then_format_then_parse_is_stable(
            parts in prop::collection::vec((0..100_000u64, 0..UNITS.len()), 1..5)
                .prop_filter("within the limit", |parts| {
                    parts.iter().map(|(n, u)| n * UNITS[*u].1).sum::<u64>() <= MAX.as_secs()
                }),
            spaced in any::<bool>(),
        ) {
            let text = parts
                .iter()
                .map(|(n, u)| format!("{n}{}", UNITS[*u].0))
                .collect::<Vec<_>>()
                .join(if spaced { " " } else { "" });
            let expected: u64 = parts.iter().map(|(n, u)| n * UNITS[*u].1).sum();
            let d = parse(&text);
            prop_assert_eq!(d.clone(), Ok(Duration::from_secs(expected)), "{}", text);
            let d = d.unwrap_or_default();
            prop_assert_eq!(parse(&format(d)), Ok(d));
            prop_assert_eq!(parse(&format!("  {text}\t")), Ok(d), "surrounding blanks");
        }

        #[test]
        fn parsing_keeps_the_order_of_numbers(
            unit in 0..UNITS.len(),
            a in 0..1_000_000u64,
            b in 0..1_000_000u64,
        ) {
            // Within the limit in that unit.
            let (name, secs) = UNITS[unit];
            let most = MAX.as_secs() / secs;
            let (a, b) = (a % (most + 1), b % (most + 1));
            let (da, db) = (parse(&format!("{a}{name}")), parse(&format!("{b}{name}")));
            prop_assert!(da.is_ok() && db.is_ok());
            prop_assert_eq!(a.cmp(&b), da.cmp(&db));
        }

        #[test]
        fn formatting_keeps_the_order_of_durations(a in any_duration(), b in any_duration()) {
            // What sorts the same after a trip through text: config values are compared
            // (renew_before < validity) after being read back.
            let (pa, pb) = (parse(&format(a)), parse(&format(b)));
            prop_assert_eq!(a.cmp(&b), pa.cmp(&pb));
        }

        #[test]
        fn a_year_is_365_days(n in 0..=100u64) {
            prop_assert_eq!(parse(&format!("{n}y")), parse(&format!("{}d", n * 365)));
        }

        #[test]
        fn residual_text_rounds_down_and_keeps_the_order(
            a in 0..MAX.as_secs() as i64,
            b in 0..MAX.as_secs() as i64,
        ) {
            // kubeadm's RESIDUAL TIME reads back (as our parser reads it) to at most the time left,
            // and a longer time left never shows as less.
            let back = |s: i64| {
                let text = format_residual(s);
                parse(&text).map(|d| d.as_secs()).map_err(|e| format!("{text}: {e}"))
            };
            let (ra, rb) = (back(a), back(b));
            prop_assert!(ra.clone().is_ok_and(|r| r <= a.unsigned_abs()), "{} -> {:?}", a, ra);
            if a <= b {
                prop_assert!(ra <= rb, "{} -> {:?}, {} -> {:?}", a, ra, b, rb);
            }
        }
    }
}
