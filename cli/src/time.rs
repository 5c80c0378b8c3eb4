//! Times and durations on the command line: unix seconds, UTC dates, ages and spans.

use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `90`, `90s`, `15m`, `2h`, `7d`, `2w` as seconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 90, 15m, 2h, 7d)"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h, d or w")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Days since 1970-01-01 of a Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-21`, `2026-11-21T10:00`, `2026-11-21 10:00:05Z`: UTC.
fn parse_date(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut d = date.split('-');
    let (y, m, day) = (
        d.next()?.parse::<i64>().ok()?,
        d.next()?.parse::<i64>().ok()?,
        d.next()?.parse::<i64>().ok()?,
    );
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) || y < 1970 {
        return None;
    }
    let mut secs = days_from_civil(y, m, day) * 86_400;
    if let Some(t) = time {
        let parts: Vec<i64> = t
            .split(':')
            .map(|p| p.parse::<i64>().ok())
            .collect::<Option<_>>()?;
        let (h, min, sec) = match parts.as_slice() {
            [h, m] => (*h, *m, 0),
            [h, m, s] => (*h, *m, *s),
            _ => return None,
        };
        if !(0..24).contains(&h) || !(0..60).contains(&min) || !(0..61).contains(&sec) {
            return None;
        }
        secs += h * 3600 + min * 60 + sec;
    }
    Some(secs)
}

fn parse_time(s: &str, sign: i64) -> Result<i64, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return t.parse().map_err(|_| format!("{t:?} is too large"));
    }
    if let Some(secs) = parse_date(t) {
        return Ok(secs);
    }
    let span = parse_duration(t.trim_start_matches(['+', '-'])).map_err(|_| {
        format!("{t:?} is not a time: give unix seconds, a UTC date (2026-11-21, 2026-11-21T10:00:00Z) or an age (90m, 2h, 7d)")
    })?;
    Ok(now() + sign * span)
}

/// A time in the past: unix seconds, a UTC date, or an age (`2h` is two hours ago).
pub fn parse_past(s: &str) -> Result<i64, String> {
    parse_time(s, -1)
}

/// A time in the future: unix seconds, a UTC date, or a span from now (`30d`).
pub fn parse_future(s: &str) -> Result<i64, String> {
    parse_time(s, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert!(parse_duration("2y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(parse_past("1795219200"), Ok(1_795_219_200));
        assert_eq!(parse_past("2026-11-21"), Ok(1_795_219_200));
        assert_eq!(parse_past("2026-11-21T01:01:01Z"), Ok(1_795_219_200 + 3661));
        assert_eq!(parse_past("2026-11-21 01:01"), Ok(1_795_219_200 + 3660));
        assert_eq!(parse_past("1970-01-01"), Ok(0));
        assert_eq!(parse_past("2000-03-01"), Ok(951_868_800));
        let ago = parse_past("2h").unwrap();
        assert!((now() - 7200 - ago).abs() <= 1);
        let ahead = parse_future("30d").unwrap();
        assert!((now() + 30 * 86_400 - ahead).abs() <= 1);
        assert!(parse_past("yesterday").is_err());
        assert!(parse_past("2026-13-01").is_err());
    }
}
