//! graphite-web's query side, without IO: targets (path expressions and the functions of
//! graphite-web 1.1 that dashboards use, [`spec::FUNCTIONS`]), time specs ([`time`]), the
//! consolidation of `maxDataPoints`, the `json`/`csv`/`raw` shapes of an answer and
//! `/metrics/find` nodes.
//!
//! Evaluation follows graphite-web's `functions.py` closely — series names (`sumSeries(a.*)`),
//! defaults, `summarize` alignment, which points a whisper fetch answers — so that a dashboard
//! built on graphite-web draws the same lines here. Time is UTC.

use std::collections::BTreeMap;

use crate::glob::Pattern;
use crate::tsdb::TsDb;

mod eval;
mod parse;
pub mod pyfmt;
pub mod spec;
pub mod time;

/// Why a query cannot be answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// `from`/`until` not understood, or an empty range.
    #[error("Invalid parameters ({0})")]
    Time(String),
    /// The target does not parse.
    #[error("Invalid parameters (cannot parse target: {message}); targets: \"{target}\"")]
    Syntax {
        /// The target text.
        target: String,
        /// What is wrong.
        message: String,
    },
    /// A function or one of its arguments is wrong (graphite-web's `InputParameterError`).
    #[error("Invalid parameters ({message}); targets: \"{target}\"")]
    Target {
        /// The target text.
        target: String,
        /// What is wrong.
        message: String,
    },
    /// The answer would be larger than [`MAX_POINTS`].
    #[error("target `{target}`: {message}")]
    TooLarge {
        /// The target text.
        target: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

/// Parse a graphite time (`now`, `-1d`, `now-6h`, `HH:MM_YYYYMMDD`, `YYYYMMDD`, unix seconds…)
/// relative to `now`; see [`time::parse_at`].
pub fn parse_time(spec: &str, now: u64) -> Result<u64, RenderError> {
    time::parse_at(spec, now).map_err(RenderError::Time)
}

/// How the values that fall in one point are combined when a series is consolidated
/// (`consolidateBy`, `maxDataPoints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consolidation {
    /// Mean of the known values (the default).
    Average,
    /// Mean counting unknown values as 0.
    AvgZero,
    /// Total.
    Sum,
    /// Smallest.
    Min,
    /// Largest.
    Max,
    /// First known value.
    First,
    /// Last known value.
    Last,
}

impl Consolidation {
    /// graphite-web's names: `sum`, `average`/`avg`, `avg_zero`, `min`, `max`, `first`, `last`.
    pub fn parse(name: &str) -> Option<Consolidation> {
        Some(match name {
            "average" | "avg" => Consolidation::Average,
            "avg_zero" => Consolidation::AvgZero,
            "sum" => Consolidation::Sum,
            "min" => Consolidation::Min,
            "max" => Consolidation::Max,
            "first" => Consolidation::First,
            "last" => Consolidation::Last,
            _ => return None,
        })
    }

    fn apply(self, known: &[f64], len: usize) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        match self {
            Consolidation::Average => known.iter().fold(0.0, |a, b| a + b) / known.len() as f64,
            Consolidation::AvgZero => known.iter().fold(0.0, |a, b| a + b) / len as f64,
            Consolidation::Sum => known.iter().fold(0.0, |a, b| a + b),
            Consolidation::Min => known.iter().copied().fold(f64::INFINITY, f64::min),
            Consolidation::Max => known.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Consolidation::First => known[0],
            Consolidation::Last => known[known.len() - 1],
        }
    }
}

/// One answer series (graphite-web's `TimeSeries`).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Display name (`target` in the JSON).
    pub name: String,
    /// The expression that made it (`a.*` for a fetched series; the name once a function has
    /// transformed it): what aggregations are named after.
    pub path_expr: String,
    /// Time of the first value (unix seconds).
    pub start: i64,
    /// End of the series (exclusive, as in graphite-web).
    pub end: i64,
    /// Seconds between values.
    pub step: i64,
    /// The values (`None` = no data).
    pub values: Vec<Option<f64>>,
    /// How values are combined when consolidated.
    pub consolidation: Consolidation,
    /// Values combined into one point when read (set by `maxDataPoints`).
    pub values_per_point: usize,
    /// Fraction of known values a consolidated point needs.
    pub xff: f64,
}

impl Series {
    /// The values as read: consolidated by `values_per_point` (graphite-web's `__iter__`).
    pub fn consolidated(&self) -> Vec<Option<f64>> {
        let k = self.values_per_point.max(1);
        if k == 1 {
            return self.values.clone();
        }
        self.values
            .chunks(k)
            .map(|c| {
                let known: Vec<f64> = c.iter().flatten().copied().collect();
                #[allow(clippy::cast_precision_loss)]
                let enough = !known.is_empty() && known.len() as f64 / k as f64 >= self.xff;
                enough.then(|| self.consolidation.apply(&known, c.len()))
            })
            .collect()
    }

    /// `(value, timestamp)` pairs, graphite-web's `datapoints`.
    pub fn datapoints(&self) -> Vec<(Option<f64>, i64)> {
        let step = self.step.max(1) * i64::try_from(self.values_per_point.max(1)).unwrap_or(1);
        self.consolidated()
            .into_iter()
            .zip((self.start..=self.end).step_by(usize::try_from(step).unwrap_or(1)))
            .collect()
    }

    /// graphite-web's tags of the series: `name` and the tags of a tagged name.
    pub fn tags(&self) -> BTreeMap<String, String> {
        crate::tags::parse(&self.name)
    }
}

/// Consolidate every series so that at most `max` points remain, exactly as graphite-web's JSON
/// renderer does for `maxDataPoints` (the start nudged so that points line up from one refresh
/// to the next, with the series' `consolidateBy` function).
pub fn fit_to_max_points(series: &mut [Series], max: usize) {
    let Some(start) = series.iter().map(|s| s.start).min() else {
        return;
    };
    let end = series.iter().map(|s| s.end).max().unwrap_or(start);
    let range = end - start;
    for s in series.iter_mut() {
        if max == 1 {
            s.values_per_point = s.values.len().max(1);
            continue;
        }
        #[allow(clippy::cast_precision_loss)]
        let points = range as f64 / s.step.max(1) as f64;
        #[allow(clippy::cast_precision_loss)]
        if (max as f64) < points {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let per_point = (points / max as f64).ceil() as usize;
            let seconds_per_point = i64::try_from(per_point).unwrap_or(1) * s.step;
            let nudge = seconds_per_point + s.start.rem_euclid(s.step)
                - s.start.rem_euclid(seconds_per_point);
            s.start += nudge;
            let lose = usize::try_from(nudge / s.step.max(1)).unwrap_or(0);
            // graphite-web deletes one value fewer than it moves the start by.
            let drop = lose.saturating_sub(1).min(s.values.len());
            s.values.drain(..drop);
            s.values_per_point = per_point;
        }
    }
}

/// What a query needs besides the targets.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    /// Start (unix seconds).
    pub from: u64,
    /// End (unix seconds).
    pub until: u64,
    /// Current time.
    pub now: u64,
}

/// Most values one fetch may build (series × slots), so that a wide pattern over a long range
/// cannot exhaust memory.
pub const MAX_POINTS: u64 = 5_000_000;

/// Evaluate every target (graphite-web's `evaluateTarget`), with the request's
/// `xFilesFactor` (0 in graphite-web's default settings).
pub fn render_with(
    db: &TsDb,
    targets: &[String],
    range: Range,
    x_files_factor: f64,
) -> Result<Vec<Series>, RenderError> {
    let (from, until) = (range.from.min(range.until), range.from.max(range.until));
    if from == until {
        return Err(RenderError::Time("Invalid empty time range".into()));
    }
    let as_i64 = |t: u64| i64::try_from(t).unwrap_or(i64::MAX / 4);
    let ctx = eval::Ctx {
        db,
        from: as_i64(from),
        until: as_i64(until),
        now: as_i64(range.now),
        xff: x_files_factor,
    };
    let mut out = Vec::new();
    for t in targets.iter().filter(|t| !t.trim().is_empty()) {
        let wrap = |message: String| (t.clone(), message);
        let series = eval::target(&ctx, t).map_err(|f| match f {
            eval::Fail::Syntax(m) => {
                let (target, message) = wrap(m);
                RenderError::Syntax { target, message }
            }
            eval::Fail::Params(m) => {
                let (target, message) = wrap(m);
                RenderError::Target { target, message }
            }
            eval::Fail::TooLarge(m) => {
                let (target, message) = wrap(m);
                RenderError::TooLarge { target, message }
            }
            eval::Fail::Store(m) => RenderError::Store(m),
        })?;
        out.extend(series);
    }
    Ok(out)
}

/// [`render_with`] and graphite-web's default `xFilesFactor` of 0.
pub fn render(db: &TsDb, targets: &[String], range: Range) -> Result<Vec<Series>, RenderError> {
    render_with(db, targets, range, 0.0)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of unix seconds.
pub fn format_utc(t: i64) -> String {
    let (y, m, d) = time::civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// graphite-web's `format=csv`: `name,YYYY-MM-DD HH:MM:SS,value` per point (UTC; empty value
/// when unknown).
pub fn to_csv(series: &[Series]) -> String {
    let mut out = String::new();
    for s in series {
        for (i, v) in s.values.iter().enumerate() {
            let t = s.start + i64::try_from(i).unwrap_or(0) * s.step;
            let name = if s.name.contains([',', '"', '\n']) {
                format!("\"{}\"", s.name.replace('"', "\"\""))
            } else {
                s.name.clone()
            };
            let value = v.map(pyfmt::repr).unwrap_or_default();
            out.push_str(&format!("{name},{},{value}\r\n", format_utc(t)));
        }
    }
    out
}

/// graphite-web's `format=raw`: `name,start,end,step|v1,v2,None,…` per series.
pub fn to_raw(series: &[Series]) -> String {
    let mut out = String::new();
    for s in series {
        let values: Vec<String> = s
            .consolidated()
            .iter()
            .map(|v| v.map_or_else(|| "None".to_owned(), pyfmt::repr))
            .collect();
        out.push_str(&format!(
            "{},{},{},{}|{}\n",
            s.name,
            s.start,
            s.end,
            s.step,
            values.join(",")
        ));
    }
    out
}

/// One `/metrics/find` node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FindNode {
    /// Full path of the node.
    pub id: String,
    /// Last component.
    pub text: String,
    /// A series (true) or a branch with children (false).
    pub leaf: bool,
}

/// The nodes at the query's depth whose path matches (graphite-web: a path that is both a series
/// and a branch is listed twice).
pub fn find<'a>(
    names: impl Iterator<Item = &'a str>,
    query: &str,
) -> Result<Vec<FindNode>, RenderError> {
    let pattern = Pattern::parse(query).map_err(|e| RenderError::Syntax {
        target: query.to_owned(),
        message: e.to_string(),
    })?;
    let depth = pattern.depth();
    let mut out = BTreeMap::new();
    for name in names.filter(|n| !crate::tags::is_tagged(n) && pattern.matches_prefix(n)) {
        let parts: Vec<&str> = name.split('.').collect();
        let id = parts[..depth].join(".");
        let leaf = parts.len() == depth;
        out.entry((id.clone(), leaf)).or_insert_with(|| FindNode {
            text: parts[depth - 1].to_owned(),
            id,
            leaf,
        });
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Point;
    use opsbro_store::MemStore;
    use std::sync::Arc;

    /// A minute boundary, so that the windows below are easy to count.
    const NOW: u64 = 1_700_000_040;

    fn db() -> TsDb {
        let mut db = TsDb::open(Arc::new(MemStore::default()), 100).expect("open");
        for (name, v) in [
            ("servers.web1.load", 1.0),
            ("servers.web2.load", 3.0),
            ("servers.db1.load", 10.0),
            ("servers.web1.cpu.user", 5.0),
            ("disk.used;dc=eu;host=a", 7.0),
        ] {
            for back in [0u64, 60, 120] {
                db.add(
                    &Point {
                        name: name.into(),
                        value: v,
                        ts: NOW - back,
                    },
                    NOW,
                )
                .expect("add");
            }
        }
        db
    }

    fn range() -> Range {
        Range {
            from: parse_time("-5min", NOW).expect("from"),
            until: NOW,
            now: NOW,
        }
    }

    fn one(db: &TsDb, target: &str) -> Vec<Series> {
        render(db, &[target.to_owned()], range()).unwrap_or_else(|e| panic!("{target}: {e}"))
    }

    fn last(s: &Series) -> Option<f64> {
        s.values.iter().rev().find_map(|v| *v)
    }

    fn names(r: &[Series]) -> Vec<&str> {
        r.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn whisper_windows_and_wildcards() {
        let db = db();
        let r = one(&db, "servers.web*.load");
        assert_eq!(names(&r), ["servers.web1.load", "servers.web2.load"]);
        // whisper: from the step after `from` to the step after `until`, end exclusive.
        assert_eq!(
            (r[0].start, r[0].end, r[0].step),
            (1_699_999_800, 1_700_000_100, 60)
        );
        assert_eq!(r[0].values.len(), 5);
        assert_eq!(r[0].values[1], None);
        assert_eq!(last(&r[1]), Some(3.0));
        assert!(one(&db, "nosuch.thing").is_empty());
        // Tagged series are not matched by globs, only by name or seriesByTag.
        assert!(one(&db, "disk.*").is_empty());
        assert_eq!(one(&db, "disk.used;host=a;dc=eu").len(), 1);
        let tagged = one(&db, "sumSeries(seriesByTag('name=disk.used'))");
        assert_eq!(tagged[0].name, "sumSeries(seriesByTag('name=disk.used'))");
        assert_eq!(last(&tagged[0]), Some(7.0));
    }

    #[test]
    fn names_like_graphite_web() {
        let db = db();
        for (target, want) in [
            ("sumSeries(servers.*.load)", "sumSeries(servers.*.load)"),
            ("sum(servers.*.load)", "sumSeries(servers.*.load)"),
            (
                "averageSeries(scale(servers.web*.load, 2))",
                "averageSeries(scale(servers.web1.load,2),scale(servers.web2.load,2))",
            ),
            ("alias(servers.db1.load, 'db')", "db"),
            ("aliasByNode(servers.db1.load, 1)", "db1"),
            ("aliasByNode(scale(servers.db1.load, 1), 1, -1)", "db1.load"),
            ("aliasByMetric(servers.db1.load)", "load"),
            (
                "aliasSub(servers.db1.load, 'servers\\.(\\w+)\\..*', 'host \\1')",
                "host db1",
            ),
            (
                "movingAverage(servers.db1.load, 2)",
                "movingAverage(servers.db1.load,2)",
            ),
            (
                "movingSum(servers.db1.load, '2min')",
                "movingSum(servers.db1.load,\"2min\")",
            ),
            (
                "summarize(servers.db1.load, '1h')",
                "summarize(servers.db1.load, \"1h\", \"sum\")",
            ),
            (
                "timeShift(servers.db1.load, '1h')",
                "timeShift(servers.db1.load, \"-1h\")",
            ),
            ("constantLine(100)", "100.0"),
            (
                "transformNull(servers.db1.load)",
                "transformNull(servers.db1.load,0)",
            ),
            (
                "removeBelowValue(servers.db1.load, 0.5)",
                "removeBelowValue(servers.db1.load, 0.5)",
            ),
            (
                "nPercentile(servers.db1.load, 95)",
                "nPercentile(servers.db1.load, 95)",
            ),
            (
                "asPercent(servers.db1.load, 20)",
                "asPercent(servers.db1.load,20)",
            ),
            (
                "consolidateBy(servers.db1.load, 'max')",
                "consolidateBy(servers.db1.load,\"max\")",
            ),
            (
                "servers.db1.load | scale(0.5)",
                "scale(servers.db1.load,0.5)",
            ),
        ] {
            let r = one(&db, target);
            assert_eq!(r.first().map(|s| s.name.as_str()), Some(want), "{target}");
        }
    }

    #[test]
    fn values_of_a_few_functions() {
        let db = db();
        let sum = one(&db, "sumSeries(servers.*.load)");
        assert_eq!(last(&sum[0]), Some(14.0));
        assert_eq!(
            last(&one(&db, "scale(servers.db1.load, 0.5)")[0]),
            Some(5.0)
        );
        let groups = one(&db, "groupByNode(servers.*.load, 1, 'sum')");
        assert_eq!(names(&groups), ["db1", "web1", "web2"]);
        let top = one(&db, "highestMax(servers.*.load, 2)");
        assert_eq!(names(&top), ["servers.db1.load", "servers.web2.load"]);
        let pct = one(&db, "asPercent(servers.web*.load)");
        assert_eq!(last(&pct[0]), Some(25.0));
        let count = one(&db, "countSeries(servers.*.load)");
        assert_eq!(last(&count[0]), Some(3.0));
        let shifted = one(&db, "timeShift(servers.db1.load, '2min')");
        assert_eq!(shifted[0].values.iter().flatten().count(), 1);
    }

    #[test]
    fn errors_name_the_function_or_the_argument() {
        let db = db();
        let err = |t: &str| {
            render(&db, &[t.to_owned()], range())
                .expect_err(t)
                .to_string()
        };
        assert!(err("frobnicate(a.b)").contains("unknown function: frobnicate"));
        assert!(
            err("scale(servers.*.load)")
                .contains("Missing required parameter \"factor\" for function \"scale\"")
        );
        assert!(err("highestMax(servers.*.load, 1.5)").contains(
            "Invalid \"integer\" value specified for function \"highestMax\" parameter \"n\": 1.5"
        ));
        assert!(err("summarize(servers.*.load, 'x1h')").contains("summarize"));
        assert!(err("consolidateBy(a.b, 'median')").contains("Invalid option"));
        assert!(err("scale(a.b, 1, 2)").contains("Too many parameters"));
        assert!(err("sumSeries(servers.*.load").contains("cannot parse"));
        assert!(err("divideSeries(servers.*.load, servers.*.load)").contains("exactly 1 series"));
        assert!(
            render(
                &db,
                &["a.b".into()],
                Range {
                    from: NOW,
                    until: NOW,
                    now: NOW
                }
            )
            .is_err()
        );
    }

    #[test]
    fn absurd_ranges_are_bounded_not_fatal() {
        let db = db();
        let far = Range {
            from: NOW - 60,
            until: u64::MAX,
            now: NOW,
        };
        let r = render(&db, &["servers.web1.load".into()], far).expect("clamped");
        assert!(r[0].values.len() <= 1442);
        let future = Range {
            from: u64::MAX - 1,
            until: u64::MAX,
            now: NOW,
        };
        assert!(
            render(&db, &["servers.*.load".into()], future)
                .expect("empty")
                .is_empty()
        );
        assert!(
            render(
                &db,
                &["summarize(servers.*.load, '1s')".into()],
                Range {
                    from: 0,
                    until: NOW,
                    now: NOW
                }
            )
            .is_err()
        );
    }

    #[test]
    fn max_data_points_like_graphite_web() {
        let mut s = vec![Series {
            name: "x".into(),
            path_expr: "x".into(),
            start: 60,
            end: 660,
            step: 60,
            values: (0..10).map(|i| Some(f64::from(i))).collect(),
            consolidation: Consolidation::Average,
            values_per_point: 1,
            xff: 0.0,
        }];
        fit_to_max_points(&mut s, 4);
        // 10 points into 4: 3 per point, start nudged to 180, one value dropped.
        let points = s[0].datapoints();
        assert_eq!(points[0], (Some(2.0), 180));
        assert_eq!(points[1], (Some(5.0), 360));
        s[0].consolidation = Consolidation::Max;
        assert_eq!(s[0].datapoints()[0], (Some(3.0), 180));
    }

    #[test]
    fn csv_and_raw() {
        let s = Series {
            name: "a.b".into(),
            path_expr: "a.b".into(),
            start: 0,
            end: 120,
            step: 60,
            values: vec![Some(1.0), None],
            consolidation: Consolidation::Average,
            values_per_point: 1,
            xff: 0.0,
        };
        assert_eq!(
            to_csv(std::slice::from_ref(&s)),
            "a.b,1970-01-01 00:00:00,1.0\r\na.b,1970-01-01 00:01:00,\r\n"
        );
        assert_eq!(to_raw(&[s]), "a.b,0,120,60|1.0,None\n");
    }

    proptest::proptest! {
        /// Bad input never panics: any text as a target, any time text.
        #[test]
        fn any_target_or_time_text_is_an_answer_or_an_error(
            target in "[a-zA-Z(),.'\"*{}0-9 =;|~\\-]{0,60}",
            func in proptest::sample::select(spec::FUNCTIONS.iter().map(|f| f.name).collect::<Vec<_>>()),
            args in proptest::collection::vec(
                proptest::sample::select(vec!["servers.*.load", "1", "-1", "0", "2.5", "'5min'", "'sum'", "true", "None", "inf", "'x'", "-5", "'1s'"]),
                0..5,
            ),
            time in "[a-z0-9:_/+ -]{0,16}",
        ) {
            let db = db();
            let _ = render(&db, &[target], range());
            let call = format!("{func}({})", args.join(","));
            let _ = render(&db, &[call], range());
            let _ = parse_time(&time, NOW);
        }
    }

    #[test]
    fn find_lists_one_level() {
        let db = db();
        let nodes = find(db.names(), "servers.*").expect("find");
        assert_eq!(
            nodes
                .iter()
                .map(|n| (n.id.as_str(), n.leaf))
                .collect::<Vec<_>>(),
            [
                ("servers.db1", false),
                ("servers.web1", false),
                ("servers.web2", false)
            ]
        );
        let nodes = find(db.names(), "servers.web1.*").expect("find");
        assert_eq!(
            nodes
                .iter()
                .map(|n| (n.text.as_str(), n.leaf))
                .collect::<Vec<_>>(),
            [("cpu", false), ("load", true)]
        );
        assert!(
            find(db.names(), "*")
                .expect("top")
                .iter()
                .all(|n| n.id != "disk")
        );
        assert!(find(db.names(), "a..b").is_err());
    }
}
