//! statsd: the line parser and the aggregation of one flush interval.
//!
//! A datagram holds lines separated by `\n`; a line is `name:value|type[|@rate][|#tags]` with
//! type `c` (counter), `ms` or `h` (timer), `g` (gauge; a leading `+`/`-` makes it a delta) or
//! `s` (set). Like the reference (etsy) statsd, `name:1|c:5|ms` carries several values for one
//! name, names are sanitized (spaces → `_`, `/` → `-`, other odd bytes dropped) and DogStatsD
//! tags are ignored. A bad line is counted and skipped; the lines around it are kept.
//!
//! [`Aggregator`] is the hot path: it keys its maps by the raw name bytes, so a known name costs
//! one hash lookup and no allocation. [`Aggregator::take_interval`] swaps the interval out in
//! O(1) (gauges excepted: they keep their value), and [`Interval::points`] computes the
//! aggregates outside any lock.

use std::collections::HashMap;
use std::collections::HashSet;

use crate::{Point, name, parse_number};

/// What a statsd line measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `c`
    Counter,
    /// `ms` or `h`
    Timer,
    /// `g`
    Gauge,
    /// `s`
    Set,
}

/// Why a line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// No `:` between name and value.
    #[error("no `:` between name and value")]
    NoValue,
    /// No `|type`.
    #[error("no `|type` after the value")]
    NoType,
    /// Type other than c, ms, h, g, s.
    #[error("unknown metric type (use c, ms, h, g or s)")]
    BadType,
    /// Value not a finite number.
    #[error("value is not a number")]
    BadValue,
    /// Sample rate not in (0, 1].
    #[error("sample rate must be @ followed by a number in (0, 1]")]
    BadRate,
    /// Name empty or nothing valid left after sanitizing.
    #[error("metric name is empty or invalid")]
    BadName,
    /// Too many distinct names in one interval.
    #[error("too many distinct metric names in this interval")]
    TooManyNames,
}

/// One parsed value of a line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// Raw (unsanitized) name.
    pub name: &'a [u8],
    /// Kind.
    pub kind: Kind,
    /// The value text (sets keep it as text; the others parse it).
    pub raw_value: &'a [u8],
    /// Parsed value (0 for sets).
    pub value: f64,
    /// Whether a gauge value is a delta (`+N`/`-N`).
    pub delta: bool,
    /// Sample rate (1 when absent).
    pub rate: f64,
}

/// Parse one value `value|type[|@rate][|#tags]`.
fn parse_bit<'a>(name: &'a [u8], bit: &'a [u8]) -> Result<Sample<'a>, LineError> {
    let mut fields = bit.split(|&b| b == b'|');
    let raw_value = fields.next().unwrap_or_default();
    let kind = match fields.next() {
        None => return Err(LineError::NoType),
        Some(b"c") => Kind::Counter,
        Some(b"ms" | b"h") => Kind::Timer,
        Some(b"g") => Kind::Gauge,
        Some(b"s") => Kind::Set,
        Some(_) => return Err(LineError::BadType),
    };
    let mut rate = 1.0;
    for f in fields {
        match f.first() {
            Some(b'@') => {
                rate = parse_number(&f[1..])
                    .filter(|r| *r > 0.0 && *r <= 1.0)
                    .ok_or(LineError::BadRate)?;
            }
            // DogStatsD tags (and an empty trailing field) carry nothing we store.
            Some(b'#') | None => {}
            Some(_) => return Err(LineError::BadRate),
        }
    }
    if raw_value.is_empty() {
        return Err(LineError::BadValue);
    }
    let (value, delta) = match kind {
        Kind::Set => (0.0, false),
        _ => (
            parse_number(raw_value).ok_or(LineError::BadValue)?,
            kind == Kind::Gauge && matches!(raw_value[0], b'+' | b'-'),
        ),
    };
    Ok(Sample {
        name,
        kind,
        raw_value,
        value,
        delta,
        rate,
    })
}

/// Parse one line into its samples, calling `each` for every value; stops at the first bad one.
pub fn parse_line<'a>(
    line: &'a [u8],
    mut each: impl FnMut(Sample<'a>),
) -> Result<usize, LineError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(LineError::NoValue);
    };
    let (name, mut rest) = (&line[..colon], &line[colon + 1..]);
    // DogStatsD tags (`|#k:v,...`) are ignored, and their `:` must not split values.
    if let Some(tags) = rest.windows(2).position(|w| w == b"|#") {
        rest = &rest[..tags];
    }
    if name.is_empty() {
        return Err(LineError::BadName);
    }
    let mut n = 0;
    if !rest.contains(&b':') {
        each(parse_bit(name, rest)?);
        return Ok(1);
    }
    // Validate every value before handing any out: a line is kept or refused whole.
    for bit in rest.split(|&b| b == b':') {
        parse_bit(name, bit)?;
    }
    for bit in rest.split(|&b| b == b':') {
        each(parse_bit(name, bit)?);
        n += 1;
    }
    Ok(n)
}

/// Split a datagram into its non-empty lines.
pub fn lines(packet: &[u8]) -> impl Iterator<Item = &[u8]> {
    packet
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && *l != b"\r")
}

type FastMap<V> = HashMap<Box<[u8]>, V, foldhash::fast::RandomState>;

/// Samples kept per timer and interval for percentiles; beyond it a uniform reservoir sample is
/// kept (count, sum, mean, min, max and std stay exact).
pub const TIMER_SAMPLES: usize = 50_000;

struct CounterAcc {
    name: String,
    value: f64,
}

struct TimerAcc {
    name: String,
    /// Count weighted by the sample rates.
    count: f64,
    seen: u64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
    samples: Vec<f64>,
}

struct GaugeAcc {
    name: String,
    value: f64,
    /// Intervals since the last update.
    idle: u32,
}

struct SetAcc {
    name: String,
    values: HashSet<Box<[u8]>, foldhash::fast::RandomState>,
}

/// Counts since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handled.
    pub packets: u64,
    /// Good lines.
    pub lines: u64,
    /// Refused lines.
    pub bad_lines: u64,
}

/// Limits that keep a flood of names from eating the memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Distinct names per kind and interval.
    pub max_names: usize,
    /// Intervals a gauge is repeated without an update before it is forgotten.
    pub gauge_idle_intervals: u32,
    /// Samples per timer per interval kept for percentiles.
    pub timer_samples: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_names: 100_000,
            gauge_idle_intervals: 360,
            timer_samples: TIMER_SAMPLES,
        }
    }
}

/// Aggregates statsd samples over one flush interval.
pub struct Aggregator {
    counters: FastMap<CounterAcc>,
    timers: FastMap<TimerAcc>,
    gauges: FastMap<GaugeAcc>,
    sets: FastMap<SetAcc>,
    stats: Stats,
    interval_stats: Stats,
    limits: Limits,
    rng: rand::rngs::SmallRng,
    /// The last refused line and why (for `agent info`).
    pub last_error: Option<(String, LineError)>,
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator::new(Limits::default(), 0x5eed)
    }
}

fn entry<'m, V>(
    map: &'m mut FastMap<V>,
    raw: &[u8],
    max: usize,
    make: impl FnOnce(String) -> V,
) -> Result<&'m mut V, LineError> {
    // Keyed by the sanitized name, so `a/b` and `a-b` aggregate together like the reference.
    // A clean name is its own key: the hit path (nearly every line) allocates nothing.
    if map.contains_key(raw) {
        return map.get_mut(raw).ok_or(LineError::BadName);
    }
    let name = name::sanitize(raw).ok_or(LineError::BadName)?;
    if name.as_bytes() != raw && map.contains_key(name.as_bytes()) {
        return map.get_mut(name.as_bytes()).ok_or(LineError::BadName);
    }
    if map.len() >= max {
        return Err(LineError::TooManyNames);
    }
    Ok(map
        .entry(name.as_bytes().into())
        .or_insert_with(|| make(name)))
}

impl Aggregator {
    /// An empty aggregator; `seed` drives the timer reservoir sampling.
    pub fn new(limits: Limits, seed: u64) -> Aggregator {
        use rand::SeedableRng;
        Aggregator {
            counters: FastMap::default(),
            timers: FastMap::default(),
            gauges: FastMap::default(),
            sets: FastMap::default(),
            stats: Stats::default(),
            interval_stats: Stats::default(),
            limits,
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
            last_error: None,
        }
    }

    /// Counts since start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Handle one datagram: every good line is aggregated, every bad one counted.
    pub fn handle_packet(&mut self, packet: &[u8]) {
        self.stats.packets += 1;
        self.interval_stats.packets += 1;
        for line in lines(packet) {
            match self.handle_line(line) {
                Ok(()) => {
                    self.stats.lines += 1;
                    self.interval_stats.lines += 1;
                }
                Err(e) => {
                    self.stats.bad_lines += 1;
                    self.interval_stats.bad_lines += 1;
                    if self.last_error.is_none() || self.stats.bad_lines % 1024 == 1 {
                        let shown = String::from_utf8_lossy(&line[..line.len().min(200)]);
                        self.last_error = Some((shown.into_owned(), e));
                    }
                }
            }
        }
    }

    fn handle_line(&mut self, line: &[u8]) -> Result<(), LineError> {
        let mut result = Ok(());
        parse_line(line, |s| {
            if result.is_ok() {
                result = self.add(&s);
            }
        })?;
        result
    }

    /// Add one sample.
    pub fn add(&mut self, s: &Sample<'_>) -> Result<(), LineError> {
        let max = self.limits.max_names;
        match s.kind {
            Kind::Counter => {
                let c = entry(&mut self.counters, s.name, max, |name| CounterAcc {
                    name,
                    value: 0.0,
                })?;
                c.value += s.value / s.rate;
            }
            Kind::Timer => {
                let t = entry(&mut self.timers, s.name, max, |name| TimerAcc {
                    name,
                    count: 0.0,
                    seen: 0,
                    sum: 0.0,
                    sum_sq: 0.0,
                    min: f64::INFINITY,
                    max: f64::NEG_INFINITY,
                    samples: Vec::new(),
                })?;
                let v = s.value;
                t.count += 1.0 / s.rate;
                t.seen += 1;
                t.sum += v;
                t.sum_sq += v * v;
                t.min = t.min.min(v);
                t.max = t.max.max(v);
                if t.samples.len() < self.limits.timer_samples {
                    t.samples.push(v);
                } else {
                    // Reservoir sampling (algorithm R): every value so far is kept with the
                    // same probability.
                    use rand::Rng;
                    let j = self.rng.random_range(0..t.seen);
                    if let Some(slot) = usize::try_from(j).ok().and_then(|j| t.samples.get_mut(j)) {
                        *slot = v;
                    }
                }
            }
            Kind::Gauge => {
                let g = entry(&mut self.gauges, s.name, max, |name| GaugeAcc {
                    name,
                    value: 0.0,
                    idle: 0,
                })?;
                if s.delta {
                    g.value += s.value;
                } else {
                    g.value = s.value;
                }
                g.idle = 0;
            }
            Kind::Set => {
                let set = entry(&mut self.sets, s.name, max, |name| SetAcc {
                    name,
                    values: HashSet::default(),
                })?;
                if !set.values.contains(s.raw_value) {
                    if set.values.len() >= max {
                        return Err(LineError::TooManyNames);
                    }
                    set.values.insert(s.raw_value.into());
                }
            }
        }
        Ok(())
    }

    /// End the interval: counters, timers and sets start empty again; gauges keep their value
    /// (and are forgotten after [`Limits::gauge_idle_intervals`] without an update).
    pub fn take_interval(&mut self) -> Interval {
        let idle_max = self.limits.gauge_idle_intervals;
        self.gauges.retain(|_, g| g.idle < idle_max);
        let gauges = self
            .gauges
            .values_mut()
            .map(|g| {
                g.idle += 1;
                (g.name.clone(), g.value)
            })
            .collect();
        Interval {
            counters: std::mem::take(&mut self.counters)
                .into_values()
                .map(|c| (c.name, c.value))
                .collect(),
            timers: std::mem::take(&mut self.timers).into_values().collect(),
            gauges,
            sets: std::mem::take(&mut self.sets)
                .into_values()
                .map(|s| (s.name, s.values.len()))
                .collect(),
            stats: std::mem::take(&mut self.interval_stats),
        }
    }
}

/// One interval's data, taken out of the [`Aggregator`].
pub struct Interval {
    counters: Vec<(String, f64)>,
    timers: Vec<TimerAcc>,
    gauges: Vec<(String, f64)>,
    sets: Vec<(String, usize)>,
    stats: Stats,
}

/// The aggregates of one timer (the reference statsd's definitions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimerSummary {
    /// Values received, weighted by sample rate.
    pub count: f64,
    /// Smallest value.
    pub lower: f64,
    /// Largest value.
    pub upper: f64,
    /// Mean of the values.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// Largest value of the lowest 90%.
    pub upper_90: f64,
    /// Largest value of the lowest 99%.
    pub upper_99: f64,
    /// Sum of the values.
    pub sum: f64,
    /// Population standard deviation.
    pub std: f64,
}

/// The value at `pct`% like the reference statsd: the `round(pct/100 × n)`-th smallest.
fn upper_pct(sorted: &[f64], pct: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let k = ((pct / 100.0) * sorted.len() as f64).round() as usize;
    sorted[k.clamp(1, sorted.len()) - 1]
}

/// Summarize a timer's values (`count` is the rate-weighted count); `None` when empty.
pub fn summarize(values: &mut [f64], count: f64) -> Option<TimerSummary> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    #[allow(clippy::cast_precision_loss)]
    let n = values.len() as f64;
    let sum: f64 = values.iter().sum();
    let mean = sum / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let mid = values.len() / 2;
    let median = if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    };
    Some(TimerSummary {
        count,
        lower: values[0],
        upper: values[values.len() - 1],
        mean,
        median,
        upper_90: upper_pct(values, 90.0),
        upper_99: upper_pct(values, 99.0),
        sum,
        std: var.sqrt(),
    })
}

impl Interval {
    /// Lines aggregated in this interval.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The points of this interval, stamped `ts`; `interval_secs` turns counts into rates.
    pub fn points(self, ts: u64, interval_secs: f64) -> Vec<Point> {
        let mut out = Vec::with_capacity(
            self.counters.len() * 2 + self.timers.len() * 9 + self.gauges.len() + self.sets.len(),
        );
        let mut push = |name: String, value: f64| {
            if value.is_finite() {
                out.push(Point { name, value, ts });
            }
        };
        for (name, value) in self.counters {
            push(format!("stats.counters.{name}.count"), value);
            push(format!("stats.counters.{name}.rate"), value / interval_secs);
        }
        for mut t in self.timers {
            let exact = u64::try_from(t.samples.len()).is_ok_and(|n| n == t.seen);
            let Some(mut s) = summarize(&mut t.samples, t.count) else {
                continue;
            };
            if !exact {
                // Sampled: the order statistics come from the reservoir, the rest is exact.
                #[allow(clippy::cast_precision_loss)]
                let n = t.seen as f64;
                s.lower = t.min;
                s.upper = t.max;
                s.sum = t.sum;
                s.mean = t.sum / n;
                s.std = (t.sum_sq / n - s.mean * s.mean).max(0.0).sqrt();
            }
            let base = format!("stats.timers.{}", t.name);
            for (suffix, v) in [
                ("count", s.count),
                ("lower", s.lower),
                ("upper", s.upper),
                ("mean", s.mean),
                ("median", s.median),
                ("upper_90", s.upper_90),
                ("upper_99", s.upper_99),
                ("sum", s.sum),
                ("std", s.std),
            ] {
                push(format!("{base}.{suffix}"), v);
            }
        }
        for (name, value) in self.gauges {
            push(format!("stats.gauges.{name}"), value);
        }
        for (name, n) in self.sets {
            #[allow(clippy::cast_precision_loss)]
            push(format!("stats.sets.{name}.count"), n as f64);
        }
        // The listener's own counts, for intervals that saw traffic.
        #[allow(clippy::cast_precision_loss)]
        if self.stats.packets > 0 {
            push(
                "stats.statsd.packets_received".into(),
                self.stats.packets as f64,
            );
            push(
                "stats.statsd.lines_received".into(),
                self.stats.lines as f64,
            );
            push("stats.statsd.bad_lines".into(), self.stats.bad_lines as f64);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn points(agg: &mut Aggregator) -> std::collections::BTreeMap<String, f64> {
        agg.take_interval()
            .points(1000, 10.0)
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect()
    }

    #[test]
    fn counters_with_sample_rates() {
        let mut a = Aggregator::default();
        a.handle_packet(b"hits:1|c\nhits:2|c|@0.5\nhits:1|c|@0.1|#env:prod");
        let p = points(&mut a);
        assert_eq!(p["stats.counters.hits.count"], 1.0 + 4.0 + 10.0);
        assert_eq!(p["stats.counters.hits.rate"], 1.5);
        assert!(
            !points(&mut a).contains_key("stats.counters.hits.count"),
            "reset"
        );
    }

    #[test]
    fn timers_like_the_reference_statsd() {
        let mut a = Aggregator::default();
        let mut packet = Vec::new();
        for v in 1..=10 {
            packet.extend_from_slice(format!("lat:{v}|ms\n").as_bytes());
        }
        packet.extend_from_slice(b"lat:100|ms|@0.5\n");
        a.handle_packet(&packet);
        let p = points(&mut a);
        assert_eq!(p["stats.timers.lat.count"], 12.0);
        assert_eq!(p["stats.timers.lat.lower"], 1.0);
        assert_eq!(p["stats.timers.lat.upper"], 100.0);
        assert_eq!(p["stats.timers.lat.sum"], 155.0);
        assert!((p["stats.timers.lat.mean"] - 155.0 / 11.0).abs() < 1e-9);
        assert_eq!(p["stats.timers.lat.median"], 6.0);
        // round(0.9 × 11) = 10 → the 10th smallest.
        assert_eq!(p["stats.timers.lat.upper_90"], 10.0);
        assert_eq!(p["stats.timers.lat.upper_99"], 100.0);
        let mean = 155.0 / 11.0;
        let var = ((1..=10).map(|v| (f64::from(v) - mean).powi(2)).sum::<f64>()
            + (100.0 - mean).powi(2))
            / 11.0;
        assert!((p["stats.timers.lat.std"] - var.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn gauges_set_delta_and_persist() {
        let mut a = Aggregator::default();
        a.handle_packet(b"temp:20|g\ntemp:+5|g\ntemp:-2|g");
        assert_eq!(points(&mut a)["stats.gauges.temp"], 23.0);
        assert_eq!(points(&mut a)["stats.gauges.temp"], 23.0, "kept");
        a.handle_packet(b"temp:7|g");
        assert_eq!(points(&mut a)["stats.gauges.temp"], 7.0);
    }

    #[test]
    fn sets_count_unique_values() {
        let mut a = Aggregator::default();
        a.handle_packet(b"users:alice|s\nusers:bob|s\nusers:alice|s");
        assert_eq!(points(&mut a)["stats.sets.users.count"], 2.0);
    }

    #[test]
    fn bad_lines_are_counted_and_good_ones_kept() {
        let mut a = Aggregator::default();
        a.handle_packet(b"ok:1|c\nnocolon\nx:1|zz\ny:abc|c\nz:1|c|@2\n:1|c\n$$:1|c\nok:1|c\n\n");
        let s = a.stats();
        assert_eq!((s.lines, s.bad_lines, s.packets), (2, 6, 1));
        assert_eq!(points(&mut a)["stats.counters.ok.count"], 2.0);
        assert!(a.last_error.is_some());
    }

    #[test]
    fn names_that_sanitize_alike_aggregate_together() {
        let mut a = Aggregator::default();
        a.handle_packet(b"api/login:1|c\napi-login:2|c\napi/login:4|c");
        let p = points(&mut a);
        assert_eq!(p["stats.counters.api-login.count"], 7.0);
    }

    #[test]
    fn several_values_per_line_and_sanitized_names() {
        let mut a = Aggregator::default();
        a.handle_packet(b"api/login time:1|c:5|ms");
        let p = points(&mut a);
        assert_eq!(p["stats.counters.api-login_time.count"], 1.0);
        assert_eq!(p["stats.timers.api-login_time.upper"], 5.0);
    }

    #[test]
    fn reservoir_keeps_exact_moments() {
        let mut a = Aggregator::new(
            Limits {
                timer_samples: 100,
                ..Limits::default()
            },
            1,
        );
        for v in 1..=10_000 {
            a.handle_packet(format!("t:{v}|ms").as_bytes());
        }
        let p = points(&mut a);
        assert_eq!(p["stats.timers.t.count"], 10_000.0);
        assert_eq!(p["stats.timers.t.lower"], 1.0);
        assert_eq!(p["stats.timers.t.upper"], 10_000.0);
        assert_eq!(p["stats.timers.t.sum"], 50_005_000.0);
        let median = p["stats.timers.t.median"];
        assert!((2_500.0..7_500.0).contains(&median), "{median}");
    }

    #[test]
    fn name_limit_is_enforced() {
        let mut a = Aggregator::new(
            Limits {
                max_names: 2,
                ..Limits::default()
            },
            1,
        );
        a.handle_packet(b"a:1|c\nb:1|c\nc:1|c\na:1|c");
        assert_eq!(a.stats().bad_lines, 1);
        assert_eq!(
            a.last_error.as_ref().map(|e| e.1),
            Some(LineError::TooManyNames)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut a = Aggregator::default();
            a.handle_packet(&bytes);
            let s = a.stats();
            prop_assert_eq!(s.packets, 1);
            let _ = a.take_interval().points(1, 10.0);
        }

        #[test]
        fn valid_lines_round_trip(
            name in "[a-z][a-z0-9_]{0,12}(\\.[a-z0-9_]{1,8}){0,3}",
            value in -1_000_000i64..1_000_000,
            kind in prop_oneof![Just("c"), Just("ms"), Just("g"), Just("s")],
            rate in prop_oneof![Just(None), (1u32..=100).prop_map(Some)],
        ) {
            let rate_text = rate.map(|r| format!("|@{}", f64::from(r) / 100.0)).unwrap_or_default();
            let value = if kind == "g" { value.abs() } else { value };
            let line = format!("{name}:{value}|{kind}{rate_text}");
            let mut got = Vec::new();
            let n = parse_line(line.as_bytes(), |s| got.push((s.name.to_vec(), s.kind, s.value, s.rate)));
            prop_assert_eq!(n, Ok(1));
            let (n, k, v, r) = &got[0];
            prop_assert_eq!(n.as_slice(), name.as_bytes());
            #[allow(clippy::cast_precision_loss)]
            let expected = if kind == "s" { 0.0 } else { value as f64 };
            prop_assert_eq!(*v, expected);
            prop_assert_eq!(*k, match kind { "c" => Kind::Counter, "ms" => Kind::Timer, "g" => Kind::Gauge, _ => Kind::Set });
            prop_assert_eq!(*r, rate.map_or(1.0, |r| f64::from(r) / 100.0));
        }
    }
}
