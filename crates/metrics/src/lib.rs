//! Metrics: everything between a statsd or graphite datagram and a graphite-web JSON answer,
//! without sockets or clocks (the agent owns those and passes `now` in).
//!
//! - [`statsd`]: the statsd line parser and the [`statsd::Aggregator`] that turns a flush
//!   interval of samples into points (`stats.counters.<name>.count`, `stats.timers.<name>.upper_90`…).
//! - [`graphite`]: the carbon plaintext line parser (`path value timestamp`).
//! - [`name`]: what a metric path may contain.
//! - [`glob`]: graphite wildcards (`*`, `?`, `[a-z]`, `{a,b}`) over dotted paths.
//! - [`tsdb`]: the time-series store over an `opsbro_store::Store` — minute records kept a day,
//!   hour records 31 days, day records a year, rolled up as points arrive.
//! - [`render`]: `/render` and `/metrics/find`: graphite-web's time specs, targets with the
//!   graphite-web functions dashboards use ([`render::spec::FUNCTIONS`], also served as
//!   `/functions`), consolidation to `maxDataPoints`, the `json`/`csv`/`raw` shapes.
//! - [`tags`]: tagged series (`name;tag=value`, carbon 1.1's form) and `seriesByTag`.
//!
//! Parsers never panic on any input and report why a line was refused; nothing here blocks
//! except the store calls in [`tsdb`].

#![forbid(unsafe_code)]

pub mod glob;
pub mod graphite;
pub mod name;
pub mod render;
pub mod statsd;
pub mod tags;
pub mod tsdb;

/// One value of one series at one time (unix seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Dotted metric path (valid per [`name::is_valid`]).
    pub name: String,
    /// The value (finite).
    pub value: f64,
    /// Unix seconds.
    pub ts: u64,
}

/// Parse a decimal number: fast path for plain integers (the common statsd case), the standard
/// parser otherwise. Infinite and NaN values are refused.
pub(crate) fn parse_number(text: &[u8]) -> Option<f64> {
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    let (neg, digits) = match text[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if !digits.is_empty() && digits.len() <= 15 && digits.iter().all(u8::is_ascii_digit) {
        let mut n: u64 = 0;
        for d in digits {
            n = n * 10 + u64::from(d - b'0');
        }
        // Exact: below 2^53.
        #[allow(clippy::cast_precision_loss)]
        let v = n as f64;
        return Some(if neg { -v } else { v });
    }
    // Only what a number can contain: keeps "inf", "NaN" and "1e5 " out before the std parser.
    if !text
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return None;
    }
    let s = std::str::from_utf8(text).ok()?;
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::parse_number;

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"42"), Some(42.0));
        assert_eq!(parse_number(b"-7"), Some(-7.0));
        assert_eq!(parse_number(b"+3"), Some(3.0));
        assert_eq!(parse_number(b"0.25"), Some(0.25));
        assert_eq!(parse_number(b"1e3"), Some(1000.0));
        assert_eq!(
            parse_number(b"12345678901234567890"),
            Some(1.2345678901234567e19)
        );
        for bad in [
            &b""[..],
            b"-",
            b"inf",
            b"NaN",
            b"1,5",
            b"1 ",
            b"0x10",
            b"1e999",
        ] {
            assert_eq!(
                parse_number(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
