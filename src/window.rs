//! Maintenance windows: the weekdays and hours, in UTC or a named time zone, inside which a
//! disruptive rotation may start. Written as `"Mon-Fri 02:00-05:00"`, `"Sat,Sun 00:00-24:00"`,
//! `"daily 22:00-02:00"` (a window may cross midnight; it belongs to the day it starts on).

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
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

    /// `now` when a window is open, else the start of the next one (within the coming 8 days).
    pub fn next_open(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        if self.is_open(now) {
            return Some(now);
        }
        let today = self.local(now).date();
        let mut best: Option<OffsetDateTime> = None;
        for offset in 0..8 {
            let Ok(date) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            for w in &self.windows {
                if !w.days[weekday_index(date.weekday())] {
                    continue;
                }
                let Some(start) = self.at(date, w.start) else {
                    continue;
                };
                if start > now && best.is_none_or(|b| start < b) {
                    best = Some(start);
                }
            }
        }
        best
    }

    fn local(&self, now: OffsetDateTime) -> Zoned {
        let ts = Timestamp::from_second(now.unix_timestamp()).unwrap_or(Timestamp::UNIX_EPOCH);
        ts.to_zoned_datetime(self.tz.clone())
    }

    /// The instant a local date and minute-of-day stands for (a time skipped by a DST change
    /// resolves to the instant after the gap).
    fn at(&self, date: Date, minute: u16) -> Option<OffsetDateTime> {
        let time = Time::new((minute / 60) as i8, (minute % 60) as i8, 0, 0).ok()?;
        let zoned = date
            .to_datetime(time)
            .to_zoned_datetime(self.tz.clone())
            .ok()?;
        OffsetDateTime::from_unix_timestamp(zoned.timestamp().as_second()).ok()
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
    fn bad_specs_are_named() {
        let e = Windows::parse(&["Funday 01:00-02:00".into()], "UTC").unwrap_err();
        assert!(e.contains("Funday"), "{e}");
        assert!(Windows::parse(&["Mon 25:00-02:00".into()], "UTC").is_err());
        assert!(Windows::parse(&["Mon 01:00-01:00".into()], "UTC").is_err());
        assert!(Windows::parse(&[], "Mars/Olympus").is_err());
        assert!(Windows::always().is_open(datetime!(2026-11-23 12:00 UTC)));
    }
}
