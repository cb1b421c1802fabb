//! graphite-web's time language (`attime.py`), in UTC: `from`/`until` as `now`, `-1d`,
//! `now-6h`, `-1h30min`, unix seconds, `HH:MM_YYYYMMDD`, `YYYYMMDD`, `MM/DD/YY`, `noon`,
//! `midnight`, `teatime`, `yesterday`, `today`, `tomorrow`, month and week day names, each with an
//! optional `+`/`-` offset; and intervals (`5min`, `1h`, `-7d`) for `summarize`, `timeShift`…

/// Seconds of a time offset such as `-1h30min` or `5min` (`parseTimeOffset`): units `s`, `min`,
/// `h`, `d`, `w`, `mon` (30 days) and `y` (365 days), any word starting like them.
pub fn parse_offset(text: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("invalid offset `{text}`: {why}");
    let s = text.trim();
    if s.is_empty() {
        return Ok(0);
    }
    let (sign, mut rest) = match s.as_bytes()[0] {
        b'+' => (1i64, &s[1..]),
        b'-' => (-1, &s[1..]),
        b if b.is_ascii_digit() => (1, s),
        _ => return Err(bad("it starts with neither a sign nor a digit")),
    };
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let num: i64 = rest[..digits]
            .parse()
            .map_err(|_| bad("expected a number before the unit"))?;
        rest = &rest[digits..];
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..letters];
        rest = &rest[letters..];
        let secs = unit_seconds(unit).ok_or_else(|| bad(&format!("unknown unit `{unit}`")))?;
        total = num
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .filter(|t| t.abs() < 1_000_000 * 365 * 86_400)
            .ok_or_else(|| bad("too large"))?;
    }
    Ok(sign * total)
}

fn unit_seconds(unit: &str) -> Option<i64> {
    // The order matters, as in graphite-web: "s…", "min…", "h…", "d…", "w…", "mon…", "y…".
    Some(if unit.starts_with('s') {
        1
    } else if unit.starts_with("min") {
        60
    } else if unit.starts_with('h') {
        3600
    } else if unit.starts_with('d') {
        86_400
    } else if unit.starts_with('w') {
        7 * 86_400
    } else if unit.starts_with("mon") {
        30 * 86_400
    } else if unit.starts_with('y') {
        365 * 86_400
    } else {
        return None;
    })
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a day number.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn date(y: i64, m: u32, d: u32, hour: u32, minute: u32) -> Result<i64, String> {
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || hour > 23 || minute > 59 {
        return Err(format!(
            "no such date or time: {y:04}-{m:02}-{d:02} {hour:02}:{minute:02}"
        ));
    }
    Ok(days_from_civil(y, m, d) * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60)
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn small_number(s: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not an hour or a minute"))
}

/// A time reference without offset (`parseTimeReference`), in unix seconds.
fn parse_reference(reference: &str, now: i64) -> Result<i64, String> {
    if reference.is_empty() || reference == "now" {
        return Ok(now);
    }
    let raw = reference;
    let mut r = reference;
    let (mut hour, mut minute) = (0u32, 0u32);
    if let Some(i) = r.find(':').filter(|i| (1..3).contains(i)) {
        hour = small_number(&r[..i])?;
        let end = (i + 3).min(r.len());
        minute = small_number(r.get(i + 1..end).unwrap_or(""))?;
        r = &r[end..];
        if let Some(rest) = r.strip_prefix("am") {
            r = rest;
        } else if let Some(rest) = r.strip_prefix("pm") {
            hour = (hour + 12) % 24;
            r = rest;
        }
    }
    if let Some(i) = r.find("am").filter(|i| (1..3).contains(i)) {
        hour = small_number(&r[..i])?;
        r = &r[i + 2..];
    }
    if let Some(i) = r.find("pm").filter(|i| (1..3).contains(i)) {
        hour = (small_number(&r[..i])? + 12) % 24;
        r = &r[i + 2..];
    }
    if let Some(rest) = r.strip_prefix("noon") {
        (hour, minute, r) = (12, 0, rest);
    } else if let Some(rest) = r.strip_prefix("midnight") {
        (hour, minute, r) = (0, 0, rest);
    } else if let Some(rest) = r.strip_prefix("teatime") {
        (hour, minute, r) = (16, 0, rest);
    }
    let today = now.div_euclid(86_400);
    let (y, m, d) = civil_from_days(today);
    let mut day = date(y, m, d, hour, minute)?;
    match r {
        "yesterday" => day -= 86_400,
        "today" => {}
        "tomorrow" => day += 86_400,
        _ if r.matches('/').count() == 2 => {
            let mut parts = r.split('/').map(|p| {
                p.parse::<i64>()
                    .map_err(|_| format!("unknown day reference: {raw}"))
            });
            let (Some(m), Some(d), Some(y)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("unknown day reference: {raw}"));
            };
            let (m, d, mut y) = (m?, d?, y?);
            if y < 1900 {
                y += 1900;
            }
            if y < 1970 {
                y += 100;
            }
            let m = u32::try_from(m).map_err(|_| format!("bad month in {raw}"))?;
            let d = u32::try_from(d).map_err(|_| format!("bad day in {raw}"))?;
            day = date(y, m, d, hour, minute)?;
        }
        _ if r.len() == 8 && r.bytes().all(|b| b.is_ascii_digit()) => {
            let y: i64 = r[..4].parse().map_err(|_| format!("bad year in {raw}"))?;
            let m: u32 = r[4..6].parse().map_err(|_| format!("bad month in {raw}"))?;
            let d: u32 = r[6..].parse().map_err(|_| format!("bad day in {raw}"))?;
            day = date(y, m, d, hour, minute)?;
        }
        _ if r.len() >= 3 && MONTHS.contains(&&r[..3]) => {
            let digits: String = r
                .chars()
                .rev()
                .take(2)
                .take_while(char::is_ascii_digit)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if digits.is_empty() {
                return Err("day of month required after month name".into());
            }
            let d: u32 = digits.parse().map_err(|_| "bad day of month".to_owned())?;
            let m = MONTHS.iter().position(|x| *x == &r[..3]).unwrap_or(0);
            day = date(y, u32::try_from(m + 1).unwrap_or(1), d, hour, minute)?;
        }
        _ if r.len() >= 3 && WEEKDAYS.contains(&&r[..3]) => {
            let today_index = (today + 4).rem_euclid(7);
            let wanted = WEEKDAYS.iter().position(|x| *x == &r[..3]).unwrap_or(0);
            let mut offset = today_index - i64::try_from(wanted).unwrap_or(0);
            if offset < 0 {
                offset += 7;
            }
            day -= offset * 86_400;
        }
        "" => {}
        _ => return Err(format!("unknown day reference: {raw}")),
    }
    Ok(day)
}

/// Parse a graphite-web time (`parseATTime`) relative to `now` (unix seconds, UTC).
pub fn parse_at(spec: &str, now: u64) -> Result<u64, String> {
    let s: String = spec
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| !matches!(c, '_' | ',' | ' '))
        .collect();
    if !s.is_ascii() {
        return Err(format!("cannot read time `{spec}`"));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let yyyymmdd = s.len() == 8
            && s[..4].parse::<u32>().is_ok_and(|y| y > 1900)
            && s[4..6].parse::<u32>().is_ok_and(|m| m < 13)
            && s[6..].parse::<u32>().is_ok_and(|d| d < 32);
        if !yyyymmdd {
            return s
                .parse::<u64>()
                .map_err(|_| format!("cannot read time `{spec}`"));
        }
    }
    let (reference, offset) = if let Some(i) = s.find('+') {
        s.split_at(i)
    } else if let Some(i) = s.find('-') {
        s.split_at(i)
    } else {
        (s.as_str(), "")
    };
    let now_i = i64::try_from(now).map_err(|_| "now is out of range".to_owned())?;
    let base =
        parse_reference(reference, now_i).map_err(|e| format!("cannot read time `{spec}`: {e}"))?;
    let off = parse_offset(offset).map_err(|e| format!("cannot read time `{spec}`: {e}"))?;
    u64::try_from(base.saturating_add(off).max(0)).map_err(|_| format!("cannot read time `{spec}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2023-11-14 22:13:20 UTC, a Tuesday.
    const NOW: u64 = 1_700_000_000;

    #[test]
    fn offsets() {
        assert_eq!(parse_offset("5min"), Ok(300));
        assert_eq!(parse_offset("-1h30min"), Ok(-5400));
        assert_eq!(parse_offset("+2d"), Ok(172_800));
        assert_eq!(parse_offset("1mon"), Ok(30 * 86_400));
        assert_eq!(parse_offset("1y"), Ok(365 * 86_400));
        assert_eq!(parse_offset("3seconds"), Ok(3));
        assert!(parse_offset("1fortnight").is_err());
        assert!(parse_offset("h").is_err());
        assert!(parse_offset("99999999999999999999y").is_err());
    }

    #[test]
    fn every_form_graphite_web_reads() {
        let t = |s: &str| parse_at(s, NOW);
        assert_eq!(t("now"), Ok(NOW));
        assert_eq!(t("-1d"), Ok(NOW - 86_400));
        assert_eq!(t("now-6h"), Ok(NOW - 6 * 3600));
        assert_eq!(t("-15min"), Ok(NOW - 900));
        assert_eq!(t("1600000000"), Ok(1_600_000_000));
        assert_eq!(t("20231114"), Ok(1_699_920_000));
        assert_eq!(t("12:30_20231114"), Ok(1_699_920_000 + 45_000));
        assert_eq!(t("11/14/2023"), Ok(1_699_920_000));
        assert_eq!(t("11/14/23"), Ok(1_699_920_000));
        assert_eq!(t("midnight"), Ok(1_699_920_000));
        assert_eq!(t("noon+1d"), Ok(1_699_920_000 + 12 * 3600 + 86_400));
        assert_eq!(t("yesterday"), Ok(1_699_920_000 - 86_400));
        assert_eq!(t("6pm today"), Ok(1_699_920_000 + 18 * 3600));
        assert_eq!(t("nov14"), Ok(1_699_920_000));
        assert_eq!(t("monday"), Ok(1_699_920_000 - 86_400));
        assert_eq!(t("tue"), Ok(1_699_920_000));
        assert!(t("yesterweek").is_err());
        assert!(t("-1fortnight").is_err());
        assert!(
            t("20231332").is_ok(),
            "not a date, so unix seconds as graphite-web reads it"
        );
        assert!(t("02/30/2023").is_err());
        assert!(t("é").is_err());
    }

    #[test]
    fn civil_round_trip() {
        for z in [-800_000i64, -1, 0, 1, 19_675, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(civil_from_days(19_675), (2023, 11, 14));
    }
}
