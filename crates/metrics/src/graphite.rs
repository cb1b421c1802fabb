//! The carbon plaintext protocol: one `path value timestamp` per line (spaces or tabs between,
//! `\r\n` accepted); a tagged path (`disk.used;dc=eu;host=a`) is stored under its canonical
//! name, tags sorted, as carbon 1.1 does. The timestamp is unix seconds, fractional allowed; `-1` or `N` mean "now".

use crate::{Point, name, parse_number};

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Not three fields.
    #[error("expected `path value timestamp`, found {0} field(s)")]
    Fields(usize),
    /// Bad path.
    #[error("{0}")]
    Name(&'static str),
    /// Value not a finite number.
    #[error("value is not a number")]
    Value,
    /// Timestamp not a number of seconds.
    #[error("timestamp is not unix seconds")]
    Timestamp,
}

/// Parse one line (without its `\n`); `now` replaces `-1`/`N` timestamps.
pub fn parse_line(line: &[u8], now: u64) -> Result<Point, LineError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut fields = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|f| !f.is_empty());
    let (Some(path), Some(value), Some(ts), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        let n = line
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|f| !f.is_empty())
            .count();
        return Err(LineError::Fields(n));
    };
    name::check(path).map_err(LineError::Name)?;
    let value = parse_number(value).ok_or(LineError::Value)?;
    let ts = if ts == b"-1" || ts == b"N" {
        now
    } else {
        let t = parse_number(ts).ok_or(LineError::Timestamp)?;
        if !(0.0..4e9).contains(&t) {
            return Err(LineError::Timestamp);
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let t = t as u64;
        t
    };
    // Checked above: ASCII only.
    let name = String::from_utf8_lossy(path).into_owned();
    // Tagged (`name;tag=value`, carbon 1.1): one canonical name whatever the order of the tags.
    let name = if crate::tags::is_tagged(&name) {
        crate::tags::normalize(&name).map_err(LineError::Name)?
    } else {
        name
    };
    Ok(Point { name, value, ts })
}

/// Format a point as a carbon line (with its `\n`).
pub fn format_line(p: &Point) -> String {
    format!("{} {} {}\n", p.name, p.value, p.ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lines() {
        let p = parse_line(b"servers.web1.load 0.5 1700000000\r", 5).expect("ok");
        assert_eq!(
            (p.name.as_str(), p.value, p.ts),
            ("servers.web1.load", 0.5, 1_700_000_000)
        );
        assert_eq!(parse_line(b"a.b\t3  -1", 77).expect("now").ts, 77);
        assert_eq!(
            parse_line(b"a.b 3 1700000000.75", 0).expect("frac").ts,
            1_700_000_000
        );
        assert_eq!(parse_line(b"a.b 3", 0), Err(LineError::Fields(2)));
        assert_eq!(parse_line(b"a.b 3 4 5", 0), Err(LineError::Fields(4)));
        assert_eq!(parse_line(b"a.b nan 4", 0), Err(LineError::Value));
        assert_eq!(parse_line(b"a.b 1 yesterday", 0), Err(LineError::Timestamp));
        assert!(matches!(
            parse_line(b"a..b 1 1", 0),
            Err(LineError::Name(_))
        ));
        assert!(matches!(parse_line(b"a/* 1 1", 0), Err(LineError::Name(_))));
        let tagged = parse_line(b"disk.used;host=a;dc=eu 1 1", 0).expect("tagged");
        assert_eq!(tagged.name, "disk.used;dc=eu;host=a");
        assert!(matches!(
            parse_line(b"disk;host 1 1", 0),
            Err(LineError::Name(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_line(&bytes, 1);
        }

        #[test]
        fn valid_lines_round_trip(
            name in "[a-zA-Z0-9_-]{1,10}(\\.[a-zA-Z0-9_%-]{1,10}){0,4}",
            value in -1e12f64..1e12,
            ts in 0u64..4_000_000_000,
        ) {
            let p = Point { name, value, ts };
            let line = format_line(&p);
            let back = parse_line(line.trim_end().as_bytes(), 0);
            prop_assert_eq!(back, Ok(p));
        }
    }
}
