//! A small five-field cron matcher (minute hour day-of-month month day-of-week, UTC).
//!
//! Syntax is what [`wharf_config::validate::check_cron`] accepts: numbers, ranges, lists, steps
//! and `*`. As in classic cron, when both day fields are restricted a day matches if either does.

use std::fmt;

/// A parsed cron expression.
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    dom_any: bool,
    dow_any: bool,
    text: String,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.text)
    }
}

fn field(text: &str, lo: u32, hi: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut any = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("bad step {s:?}"))?,
            ),
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            if step == 1 {
                any = true;
            }
            (lo, hi)
        } else {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let parse = |v: &str| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .ok_or_else(|| format!("{v:?} is outside {lo}-{hi}"))
            };
            let (a, b) = (parse(a)?, parse(b)?);
            // `5/15` means 5 to the end, every 15.
            let b = if part.contains('/') && !range.contains('-') {
                hi
            } else {
                b
            };
            if a > b {
                return Err(format!("range {range:?} is backwards"));
            }
            (a, b)
        };
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, any))
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        wharf_config::validate::check_cron(expr)?;
        let f: Vec<&str> = expr.split_whitespace().collect();
        let (minute, _) = field(f[0], 0, 59)?;
        let (hour, _) = field(f[1], 0, 23)?;
        let (dom, dom_any) = field(f[2], 1, 31)?;
        let (month, _) = field(f[3], 1, 12)?;
        let (mut dow, dow_any) = field(f[4], 0, 7)?;
        if dow & (1 << 7) != 0 {
            dow |= 1;
        }
        Ok(Cron {
            minute,
            hour,
            dom,
            month,
            dow,
            dom_any,
            dow_any,
            text: expr.to_owned(),
        })
    }

    /// Does the minute starting at `unix_secs` (UTC) match?
    pub fn matches_unix(&self, unix_secs: i64) -> bool {
        match time::OffsetDateTime::from_unix_timestamp(unix_secs) {
            Ok(t) => self.matches(
                t.minute().into(),
                t.hour().into(),
                t.day().into(),
                u8::from(t.month()).into(),
                t.weekday().number_days_from_sunday().into(),
            ),
            Err(_) => false,
        }
    }

    /// Field by field: minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-6 (Sunday 0).
    pub fn matches(&self, minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> bool {
        let has = |bits: u64, v: u32| v < 64 && bits & (1 << v) != 0;
        let dom = has(self.dom, day);
        let dow = has(self.dow, weekday);
        let day_ok = match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        };
        has(self.minute, minute) && has(self.hour, hour) && has(self.month, month) && day_ok
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_minute_and_steps() {
        let c = Cron::parse("* * * * *").unwrap();
        assert!(c.matches(0, 0, 1, 1, 0));
        let c = Cron::parse("*/15 9-17 * * 1-5").unwrap();
        assert!(c.matches(30, 9, 3, 6, 1));
        assert!(!c.matches(31, 9, 3, 6, 1));
        assert!(!c.matches(30, 18, 3, 6, 1));
        assert!(!c.matches(30, 9, 3, 6, 0));
        let c = Cron::parse("5/20 * * * *").unwrap();
        assert!(c.matches(5, 1, 1, 1, 1) && c.matches(25, 1, 1, 1, 1) && c.matches(45, 1, 1, 1, 1));
        assert!(!c.matches(6, 1, 1, 1, 1));
    }

    #[test]
    fn sunday_is_0_and_7_and_days_or() {
        let c = Cron::parse("0 0 * * 7").unwrap();
        assert!(c.matches(0, 0, 10, 1, 0));
        // both day fields restricted: either matches
        let c = Cron::parse("0 0 1 * 1").unwrap();
        assert!(c.matches(0, 0, 1, 5, 3));
        assert!(c.matches(0, 0, 9, 5, 1));
        assert!(!c.matches(0, 0, 9, 5, 2));
    }

    #[test]
    fn unix_time_and_errors() {
        // 2024-01-01T00:00:00Z was a Monday.
        let c = Cron::parse("0 0 1 1 1").unwrap();
        assert!(c.matches_unix(1_704_067_200));
        assert!(!c.matches_unix(1_704_067_260));
        assert!(Cron::parse("60 * * * *").is_err());
        assert!(Cron::parse("* * *").is_err());
    }
}
