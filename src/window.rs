//! Maintenance windows: the weekdays and hours, in UTC or a named time zone, inside which a
//! disruptive rotation may start. Written as `"Mon-Fri 02:00-05:00"`, `"Sat,Sun 00:00-24:00"`,
//! `"daily 22:00-02:00"` (a window may cross midnight; it belongs to the day it starts on).

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ZonedDateTime as Zoned};
use time::OffsetDateTime;

/// One recurring window.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    /// Monday = 0 … Sunday = 6.
    days: [bool; 7],
    /// Minutes after midnight.
    start: u16,
    /// Minutes after midnight (1440 = midnight at the end of the day); ≤ start crosses midnight.
    end: u16,
}

/// The configured windows. No windows means always open.
#[derive(Debug, Clone)]
pub struct Windows {
    windows: Vec<Window>,
    tz: TimeZone,
    tz_name: String,
}

impl PartialEq for Windows {
    fn eq(&self, other: &Self) -> bool {
        self.windows == other.windows && self.tz_name == other.tz_name
    }
}

impl Windows {
    /// Always open.
    pub fn always() -> Self {
        Windows {
            windows: Vec::new(),
            tz: TimeZone::UTC,
            tz_name: "UTC".into(),
        }
    }

    /// Parses window specs in a time zone (`UTC` or an IANA name such as `Europe/Berlin`).
    pub fn parse(specs: &[String], tz_name: &str) -> Result<Self, String> {
        let tz = if tz_name.eq_ignore_ascii_case("utc") {
            TimeZone::UTC
        } else {
            TimeZone::get(tz_name).map_err(|e| format!("unknown time zone {tz_name:?}: {e}"))?
        };
        let windows = specs
            .iter()
            .map(|s| parse_window(s).map_err(|e| format!("maintenance window {s:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Windows {
            windows,
            tz,
            tz_name: tz_name.to_owned(),
        })
    }

    /// Whether no window is configured (so nothing is ever deferred).
    pub fn is_always(&self) -> bool {
        self.windows.is_empty()
    }

    /// Whether `now` lies inside a window.
    pub fn is_open(&self, now: OffsetDateTime) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let local = self.local(now);
        let day = weekday_index(local.weekday());
        let prev = (day + 6) % 7;
        let m = (local.hour() as u16) * 60 + local.minute() as u16;
        self.windows.iter().any(|w| {
            if w.end > w.start {
                w.days[day] && m >= w.start && m < w.end
            } else {
                (w.days[day] && m >= w.start) || (w.days[prev] && m < w.end)
            }
        })
    }

    /// `now` when a window is open, else the first instant one opens (within the coming two
    /// weeks: a weekly window whose hours a clock change skips opens a week later).
    pub fn next_open(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        if self.is_open(now) {
            return Some(now);
        }
        self.openings(now)
            .into_iter()
            .filter(|t| *t > now && self.is_open(*t))
            .min()
    }

    /// Every instant of the coming two weeks at which a window may open: each start of a
    /// window on its days, and each clock change. A change opens one without a start when the
    /// clocks fall back into the end of an occurrence that had closed (a window until 01:45
    /// opens again at 01:00 when 02:00 becomes 01:00), or spring forward into the middle of one.
    fn openings(&self, now: OffsetDateTime) -> Vec<OffsetDateTime> {
        const DAYS: i64 = 15;
        let today = self.local(now).date();
        let mut instants = Vec::new();
        for offset in 0..DAYS {
            let Ok(date) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            for w in &self.windows {
                if w.days[weekday_index(date.weekday())] {
                    instants.extend(self.starts(date, w.start));
                }
            }
        }
        let horizon = now + time::Duration::days(DAYS);
        let from = Timestamp::from_second(now.unix_timestamp()).unwrap_or(Timestamp::UNIX_EPOCH);
        instants.extend(
            self.tz
                .following(from)
                .filter_map(|change| {
                    OffsetDateTime::from_unix_timestamp(change.timestamp().as_second()).ok()
                })
                .take_while(|t| *t <= horizon),
        );
        instants
    }

    fn local(&self, now: OffsetDateTime) -> Zoned {
        let ts = Timestamp::from_second(now.unix_timestamp()).unwrap_or(Timestamp::UNIX_EPOCH);
        ts.to_zoned_datetime(self.tz.clone())
    }

    /// The instants at which the local clock reaches a date and minute-of-day: one; two when
    /// the clocks fall back over it; or, when they spring forward over it, the instant of the
    /// jump, the first one past it.
    fn starts(&self, date: Date, minute: u16) -> Vec<OffsetDateTime> {
        let Ok(time) = Time::new((minute / 60) as i8, (minute % 60) as i8, 0, 0) else {
            return Vec::new();
        };
        let local = self.tz.to_ambiguous_zoned_datetime(date.to_datetime(time));
        let instants = match local.offset() {
            AmbiguousOffset::Unambiguous { .. } => vec![local.compatible()],
            AmbiguousOffset::Fold { .. } => vec![local.clone().earlier(), local.later()],
            // `earlier` reads the skipped time with the offset after the jump: an instant just
            // before it, so the next transition is the jump itself.
            AmbiguousOffset::Gap { .. } => vec![
                local
                    .earlier()
                    .map(|before| {
                        self.tz
                            .following(before.timestamp())
                            .next()
                            .map_or(before.timestamp(), |jump| jump.timestamp())
                    })
                    .map(|t| t.to_zoned_datetime(self.tz.clone())),
            ],
        };
        instants
            .into_iter()
            .filter_map(|z| {
                OffsetDateTime::from_unix_timestamp(z.ok()?.timestamp().as_second()).ok()
            })
            .collect()
    }
}

fn weekday_index(w: Weekday) -> usize {
    w.to_monday_zero_offset() as usize
}

fn parse_window(s: &str) -> Result<Window, String> {
    let (days, hours) = s
        .trim()
        .split_once(char::is_whitespace)
        .ok_or("expected \"<days> <HH:MM>-<HH:MM>\", e.g. \"Mon-Fri 02:00-05:00\"")?;
    let (start, end) = hours
        .trim()
        .split_once('-')
        .ok_or("expected hours as HH:MM-HH:MM")?;
    let start = parse_minute(start)?;
    let end = parse_minute(end)?;
    if start == 1440 {
        return Err("a window cannot start at 24:00".into());
    }
    if start == end {
        return Err("a window must not be empty (start equals end)".into());
    }
    Ok(Window {
        days: parse_days(days)?,
        start,
        end: if end == 0 { 1440 } else { end },
    })
}

fn parse_minute(s: &str) -> Result<u16, String> {
    let (h, m) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HH:MM"))?;
    let h: u16 = h.parse().map_err(|_| format!("{s:?}: bad hour"))?;
    let m: u16 = m.parse().map_err(|_| format!("{s:?}: bad minute"))?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(format!("{s:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_days(s: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    let lower = s.to_ascii_lowercase();
    if lower == "daily" || lower == "*" {
        return Ok([true; 7]);
    }
    let index = |d: &str| {
        DAY_NAMES
            .iter()
            .position(|n| d.trim().starts_with(n) && d.trim().len() >= 3)
            .ok_or_else(|| format!("{d:?} is not a weekday (Mon … Sun)"))
    };
    for part in lower.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (index(a)?, index(b)?);
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[index(part)?] = true,
        }
    }
    Ok(days)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn w(specs: &[&str], tz: &str) -> Windows {
        Windows::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(), tz).unwrap()
    }

    #[test]
    fn weekday_hours_in_utc() {
        let win = w(&["Mon-Fri 02:00-05:00"], "UTC");
        // 2026-11-23 is a Monday.
        assert!(win.is_open(datetime!(2026-11-23 03:00 UTC)));
        assert!(!win.is_open(datetime!(2026-11-23 05:00 UTC)));
        assert!(!win.is_open(datetime!(2026-11-28 03:00 UTC)), "Saturday");
        assert_eq!(
            win.next_open(datetime!(2026-11-23 06:00 UTC)),
            Some(datetime!(2026-11-24 02:00 UTC))
        );
        assert_eq!(
            win.next_open(datetime!(2026-11-27 06:00 UTC)),
            Some(datetime!(2026-11-30 02:00 UTC)),
            "Friday after the window: next Monday"
        );
    }

    #[test]
    fn across_midnight_belongs_to_the_start_day() {
        let win = w(&["Fri 22:00-02:00"], "UTC");
        assert!(win.is_open(datetime!(2026-11-27 23:00 UTC)));
        assert!(
            win.is_open(datetime!(2026-11-28 01:59 UTC)),
            "Saturday early"
        );
        assert!(!win.is_open(datetime!(2026-11-28 23:00 UTC)));
    }

    #[test]
    fn named_zone_and_dst() {
        let win = w(&["daily 02:30-03:00"], "Europe/Berlin");
        // 2026-03-29 02:30 does not exist in Berlin (clocks jump 02:00 → 03:00).
        let next = win.next_open(datetime!(2026-03-29 00:10 UTC)).unwrap();
        assert!(next >= datetime!(2026-03-29 00:10 UTC));
        // Winter: Berlin is UTC+1, so 02:30 local is 01:30 UTC.
        assert!(win.is_open(datetime!(2026-11-23 01:45 UTC)));
    }

    #[test]
    fn clock_changes_open_windows_when_the_clock_shows_them() {
        // 2026-03-08: New York's clocks jump from 02:00 EST (07:00 UTC) to 03:00 EDT.
        let w = w(&["Sun 02:15-24:00"], "America/New_York");
        let before = datetime!(2026-03-08 06:59:59 UTC);
        assert_eq!(w.next_open(before), Some(datetime!(2026-03-08 07:00 UTC)));
        // 2026-03-29: Berlin's 02:30-03:00 does not exist; the window opens the next Sunday.
        let w = super::Windows::parse(&["Sun 02:30-03:00".into()], "Europe/Berlin").unwrap();
        let next = w.next_open(datetime!(2026-03-29 00:10 UTC)).unwrap();
        assert_eq!(next, datetime!(2026-04-05 00:30 UTC));
        // 2026-11-01: New York's 01:30 comes twice; between the two, the second one is next.
        let w = super::Windows::parse(&["Sun 01:30-01:45".into()], "America/New_York").unwrap();
        let between = datetime!(2026-11-01 05:50 UTC);
        assert!(!w.is_open(between));
        assert_eq!(w.next_open(between), Some(datetime!(2026-11-01 06:30 UTC)));
        // The same night, a window that ended at 01:45 EDT opens again when 02:00 EDT becomes
        // 01:00 EST (06:00 UTC): the clock change itself is the opening, no window starts there.
        let w = super::Windows::parse(&["Sat 01:46-01:45".into()], "America/New_York").unwrap();
        let closed = datetime!(2026-11-01 05:59:59 UTC);
        assert!(!w.is_open(closed));
        assert_eq!(w.next_open(closed), Some(datetime!(2026-11-01 06:00 UTC)));
    }

    #[test]
    fn bad_specs_are_named() {
        let e = Windows::parse(&["Funday 01:00-02:00".into()], "UTC").unwrap_err();
        assert!(e.contains("Funday"), "{e}");
        assert!(Windows::parse(&["Mon 25:00-02:00".into()], "UTC").is_err());
        assert!(Windows::parse(&["Mon 01:00-01:00".into()], "UTC").is_err());
        assert!(Windows::parse(&[], "Mars/Olympus").is_err());
        assert!(Windows::always().is_open(datetime!(2026-11-23 12:00 UTC)));
    }
}

#[cfg(test)]
mod properties {
    use jiff::civil::DateTime;
    use proptest::prelude::*;
    use time::OffsetDateTime;

    use super::*;

    /// Zones with DST gaps and folds (Berlin, New York, Santiago, Lord Howe's half hour), a
    /// fixed half-hour offset (Kolkata) and UTC.
    const ZONES: [&str; 6] = [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "America/Santiago",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
    ];

    /// One window as the test writes it: weekdays, start and end minute (end 1440 is 24:00).
    #[derive(Debug, Clone)]
    struct Spec {
        days: [bool; 7],
        start: u16,
        end: u16,
    }

    impl Spec {
        fn text(&self) -> String {
            let days: Vec<&str> = (0..7)
                .filter(|d| self.days[*d])
                .map(|d| ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][d])
                .collect();
            let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
            format!("{} {}-{}", days.join(","), hm(self.start), hm(self.end))
        }

        /// Whether the local wall-clock time `t` lies in an occurrence of this window: one
        /// that starts on `t`'s day or, crossing midnight, on the day before.
        fn contains(&self, t: DateTime) -> bool {
            let minutes = |m: u16| jiff::Span::new().minutes(i64::from(m));
            [t.date(), t.date().yesterday().unwrap_or(t.date())]
                .iter()
                .filter(|d| self.days[d.weekday().to_monday_zero_offset() as usize])
                .any(|d| {
                    let midnight = d.to_datetime(Time::midnight());
                    let (Ok(from), Ok(mut to)) = (
                        midnight.checked_add(minutes(self.start)),
                        midnight.checked_add(minutes(self.end)),
                    ) else {
                        return false;
                    };
                    if self.end <= self.start {
                        to = to.checked_add(jiff::Span::new().days(1)).unwrap_or(to);
                    }
                    from <= t && t < to
                })
        }
    }

    /// Windows anywhere in the day, or (half of them) starting and ending on a quarter hour
    /// from 01:30 to 03:15, where clocks change.
    fn any_spec() -> impl Strategy<Value = Spec> {
        let minute = || prop_oneof![0..1440u16, (6..14u16).prop_map(|q| q * 15)];
        (
            prop::array::uniform7(any::<bool>()),
            0..7usize,
            minute(),
            minute().prop_map(|m| if m == 0 { 1440 } else { m }),
        )
            .prop_filter("start equals end", |(_, _, s, e)| s != e)
            .prop_map(|(mut days, one, start, end)| {
                days[one] = true;
                Spec { days, start, end }
            })
    }

    /// A zone and an instant: any of the zones above at any second from 2020 to 2035, or (half
    /// of them) a zone in the eight days before one of its 2026 clock changes, where a window
    /// can fall into a gap or a fold.
    fn any_zone_and_instant() -> impl Strategy<Value = (&'static str, OffsetDateTime)> {
        const CHANGES: [(&str, i64); 8] = [
            ("Europe/Berlin", 1_774_746_000), // 2026-03-29 01:00 UTC, springs forward
            ("Europe/Berlin", 1_792_890_000), // 2026-10-25 01:00 UTC, falls back
            ("America/New_York", 1_772_953_200), // 2026-03-08 07:00 UTC, springs forward
            ("America/New_York", 1_793_512_800), // 2026-11-01 06:00 UTC, falls back
            ("America/Santiago", 1_775_358_000), // 2026-04-05 03:00 UTC, falls back
            ("America/Santiago", 1_788_667_200), // 2026-09-06 04:00 UTC, springs forward
            ("Australia/Lord_Howe", 1_775_314_800), // 2026-04-04 15:00 UTC, back half an hour
            ("Australia/Lord_Howe", 1_791_462_600), // 2026-10-03 15:30 UTC, on half an hour
        ];
        let at =
            |s: i64| OffsetDateTime::from_unix_timestamp(s).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        prop_oneof![
            (
                prop::sample::select(ZONES.to_vec()),
                1_577_836_800i64..2_082_758_400
            )
                .prop_map(move |(zone, s)| (zone, at(s))),
            (prop::sample::select(CHANGES.to_vec()), 0..8 * 86_400i64)
                .prop_map(move |((zone, change), before)| (zone, at(change - before))),
        ]
    }

    fn parsed(specs: &[Spec], zone: &str) -> Windows {
        let texts: Vec<String> = specs.iter().map(Spec::text).collect();
        Windows::parse(&texts, zone).unwrap_or_else(|e| panic!("{texts:?} in {zone}: {e}"))
    }

    fn wall_clock(t: OffsetDateTime, zone: &str) -> DateTime {
        let tz = TimeZone::get(zone).unwrap_or(TimeZone::UTC);
        Timestamp::from_second(t.unix_timestamp())
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .to_zoned_datetime(tz)
            .datetime()
    }

    proptest! {
        // Clock changes are rare instants: enough cases that windows meet them.
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn open_iff_inside_an_occurrence(
            specs in prop::collection::vec(any_spec(), 1..3),
            (zone, now) in any_zone_and_instant(),
        ) {
            let w = parsed(&specs, zone);
            let local = wall_clock(now, zone);
            let inside = specs.iter().any(|s| s.contains(local));
            prop_assert_eq!(w.is_open(now), inside, "{:?} in {} at {} ({})", specs, zone, now, local);
        }

        #[test]
        fn next_open_is_the_first_open_instant_from_now(
            specs in prop::collection::vec(any_spec(), 1..3),
            (zone, now) in any_zone_and_instant(),
        ) {
            let w = parsed(&specs, zone);
            let next = w.next_open(now);
            prop_assert!(next.is_some(), "{:?} in {} never opens after {}", specs, zone, now);
            let next = next.unwrap_or(now);
            prop_assert!(next >= now, "{} before now {}", next, now);
            prop_assert!(w.is_open(next), "{:?} in {}: next_open({}) = {} is closed", specs, zone, now, next);
            // Windows begin and end on whole minutes of every zone here, so checking each
            // whole minute between now and the answer finds any earlier opening.
            let mut t = now + time::Duration::seconds(60 - now.unix_timestamp().rem_euclid(60));
            while t < next {
                prop_assert!(!w.is_open(t), "{:?} in {}: open at {} before next_open({}) = {}", specs, zone, t, now, next);
                t += time::Duration::minutes(1);
            }
        }

        #[test]
        fn no_window_is_always_open((_, now) in any_zone_and_instant()) {
            prop_assert!(Windows::always().is_open(now));
            prop_assert_eq!(Windows::always().next_open(now), Some(now));
        }
    }
}
