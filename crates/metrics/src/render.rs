//! graphite-web's query side: time specs, targets (paths with wildcards and a few functions),
//! consolidation to `maxDataPoints`, and `/metrics/find` nodes.
//!
//! Functions: `sumSeries`/`sum`, `averageSeries`/`avg`, `minSeries`, `maxSeries`, `alias`,
//! `aliasByNode`, `scale`, `offset`, `perSecond`, `nonNegativeDerivative`, `keepLastValue` —
//! what Grafana's Graphite editor builds most often.

use std::collections::BTreeMap;

use crate::glob::Pattern;
use crate::tsdb::{TsDb, aggregation_for};

/// Why a query cannot be answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// `from`/`until` not understood.
    #[error(
        "cannot read time `{0}` (use now, -30s, -15min, -1h, -2d, -1w, -1mon, -1y or unix seconds)"
    )]
    Time(String),
    /// Target not understood.
    #[error("cannot read target `{target}`: {message}")]
    Target {
        /// The target text.
        target: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

/// Parse a graphite time: `now`, `-<n><unit>` / `now-<n><unit>`, or unix seconds.
pub fn parse_time(spec: &str, now: u64) -> Result<u64, RenderError> {
    let bad = || RenderError::Time(spec.to_owned());
    let s = spec.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(t) = s.parse::<u64>() {
        return Ok(t);
    }
    let rel = s
        .strip_prefix("now")
        .unwrap_or(s)
        .strip_prefix('-')
        .ok_or_else(bad)?;
    let split = rel.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = rel.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        "mon" | "month" | "months" => 30 * 86_400,
        "y" | "year" | "years" => 365 * 86_400,
        _ => return Err(bad()),
    };
    Ok(now.saturating_sub(n.saturating_mul(secs)))
}

/// One answer series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Display name (`target` in the JSON).
    pub name: String,
    /// Time of the first value.
    pub start: u64,
    /// Seconds between values.
    pub step: u64,
    /// The values (`None` = no data).
    pub values: Vec<Option<f64>>,
}

impl Series {
    /// `(value, timestamp)` pairs, graphite-web's `datapoints`.
    pub fn datapoints(&self) -> impl Iterator<Item = (Option<f64>, u64)> + '_ {
        (0u64..)
            .zip(&self.values)
            .map(|(i, v)| (*v, self.start + i * self.step))
    }

    /// Average consecutive values so that at most `max` remain (graphite's consolidateBy average).
    pub fn consolidate(&mut self, max: usize) {
        if max == 0 || self.values.len() <= max {
            return;
        }
        let k = self.values.len().div_ceil(max);
        self.values = self
            .values
            .chunks(k)
            .map(|c| {
                let known: Vec<f64> = c.iter().flatten().copied().collect();
                #[allow(clippy::cast_precision_loss)]
                (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
            })
            .collect();
        self.step *= k as u64;
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Expr(Expr),
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Path(String),
    Call(String, Vec<Arg>),
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, message: impl Into<String>) -> RenderError {
        RenderError::Target {
            target: self.text.to_owned(),
            message: message.into(),
        }
    }

    fn skip_ws(&mut self) {
        while self.text[self.pos..].starts_with(' ') {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, RenderError> {
        if depth > 20 {
            return Err(self.err("functions nested too deep"));
        }
        self.skip_ws();
        let rest = &self.text[self.pos..];
        let len = rest
            .find(['(', ')', ',', ' ', '"', '\''])
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(self.err(format!("expected a path or a function at {}", self.pos)));
        }
        let word = rest[..len].to_owned();
        self.pos += len;
        self.skip_ws();
        if self.peek() != Some('(') {
            return Ok(Expr::Path(word));
        }
        self.pos += 1;
        let mut args = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(')') && args.is_empty() {
                self.pos += 1;
                break;
            }
            args.push(self.arg(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.err(format!("expected `,` or `)` at {}", self.pos))),
            }
        }
        Ok(Expr::Call(word, args))
    }

    fn arg(&mut self, depth: usize) -> Result<Arg, RenderError> {
        self.skip_ws();
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                let rest = &self.text[self.pos + 1..];
                let end = rest
                    .find(q)
                    .ok_or_else(|| self.err("unterminated string"))?;
                let s = rest[..end].to_owned();
                self.pos += end + 2;
                Ok(Arg::Text(s))
            }
            _ => {
                let e = self.expr(depth + 1)?;
                if let Expr::Path(p) = &e
                    && let Ok(n) = p.parse::<f64>()
                {
                    return Ok(Arg::Number(n));
                }
                Ok(Arg::Expr(e))
            }
        }
    }
}

fn parse_target(text: &str) -> Result<Expr, RenderError> {
    let mut p = Parser { text, pos: 0 };
    let e = p.expr(0)?;
    p.skip_ws();
    if p.pos != text.len() {
        return Err(p.err(format!("unexpected text at {}", p.pos)));
    }
    Ok(e)
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

/// Most values one query may build (series × slots), so that a wide pattern over a long range
/// cannot exhaust memory.
pub const MAX_POINTS: u64 = 5_000_000;

/// Evaluate every target.
pub fn render(db: &TsDb, targets: &[String], range: Range) -> Result<Vec<Series>, RenderError> {
    // Nothing is stored more than a day ahead.
    let until = range.until.min(range.now.saturating_add(86_400));
    let range = Range {
        from: range.from.min(until),
        until,
        now: range.now,
    };
    let mut out = Vec::new();
    for t in targets {
        let expr = parse_target(t)?;
        out.extend(eval(db, t, &expr, range)?);
    }
    Ok(out)
}

fn fetch_path(
    db: &TsDb,
    target: &str,
    path: &str,
    range: Range,
) -> Result<Vec<Series>, RenderError> {
    let pattern = Pattern::parse(path).map_err(|e| RenderError::Target {
        target: target.to_owned(),
        message: e.to_string(),
    })?;
    let names: Vec<&str> = if pattern.is_literal() {
        db.contains(path).then_some(path).into_iter().collect()
    } else {
        db.names().filter(|n| pattern.matches(n)).collect()
    };
    let res = crate::tsdb::Resolution::for_range(range.from, range.now);
    let slots = ((range.until - range.from) / res.step() + 1).min(crate::tsdb::MAX_SLOTS);
    if names.len() as u64 * slots > MAX_POINTS {
        return Err(RenderError::Target {
            target: target.to_owned(),
            message: format!(
                "{} series × {slots} points is more than {MAX_POINTS}: narrow the pattern or the time range",
                names.len()
            ),
        });
    }
    names
        .into_iter()
        .map(|name| {
            let f = db
                .fetch(name, range.from, range.until, range.now)
                .map_err(|e| RenderError::Store(e.to_string()))?;
            let how = aggregation_for(name);
            Ok(Series {
                name: name.to_owned(),
                start: f.start,
                step: f.step,
                values: f.recs.iter().map(|r| r.map(|r| r.value(how))).collect(),
            })
        })
        .collect()
}

fn combine(name: String, series: &[Series], f: impl Fn(&[f64]) -> f64) -> Vec<Series> {
    let Some(first) = series.first() else {
        return Vec::new();
    };
    let len = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let values = (0..len)
        .map(|i| {
            let known: Vec<f64> = series
                .iter()
                .filter_map(|s| s.values.get(i).copied().flatten())
                .collect();
            (!known.is_empty()).then(|| f(&known))
        })
        .collect();
    vec![Series {
        name,
        start: first.start,
        step: first.step,
        values,
    }]
}

fn eval(db: &TsDb, target: &str, expr: &Expr, range: Range) -> Result<Vec<Series>, RenderError> {
    let bad = |message: String| RenderError::Target {
        target: target.to_owned(),
        message,
    };
    let (func, args) = match expr {
        Expr::Path(p) => return fetch_path(db, target, p, range),
        Expr::Call(f, a) => (f.as_str(), a),
    };
    let mut inputs = Vec::new();
    let mut numbers = Vec::new();
    let mut texts = Vec::new();
    for a in args {
        match a {
            Arg::Expr(e) => inputs.extend(eval(db, target, e, range)?),
            Arg::Number(n) => numbers.push(*n),
            Arg::Text(t) => texts.push(t.clone()),
        }
    }
    let inner = || {
        args.iter()
            .filter_map(|a| match a {
                Arg::Expr(e) => Some(display(e)),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let number = |what: &str| {
        numbers
            .first()
            .copied()
            .ok_or_else(|| bad(format!("{func} needs {what}")))
    };
    #[allow(clippy::cast_precision_loss)]
    let out = match func {
        "sumSeries" | "sum" => combine(format!("sumSeries({})", inner()), &inputs, |v| {
            v.iter().sum()
        }),
        "averageSeries" | "avg" => combine(format!("averageSeries({})", inner()), &inputs, |v| {
            v.iter().sum::<f64>() / v.len() as f64
        }),
        "minSeries" => combine(format!("minSeries({})", inner()), &inputs, |v| {
            v.iter().copied().fold(f64::INFINITY, f64::min)
        }),
        "maxSeries" => combine(format!("maxSeries({})", inner()), &inputs, |v| {
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        }),
        "alias" => {
            let name = texts
                .first()
                .ok_or_else(|| bad("alias needs a name: alias(path, \"name\")".into()))?;
            inputs
                .into_iter()
                .map(|s| Series {
                    name: name.clone(),
                    ..s
                })
                .collect()
        }
        "aliasByNode" => {
            if numbers.is_empty() {
                return Err(bad("aliasByNode needs node numbers".into()));
            }
            inputs
                .into_iter()
                .map(|s| {
                    let base = s
                        .name
                        .rsplit('(')
                        .next()
                        .unwrap_or(&s.name)
                        .split([',', ')'])
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let parts: Vec<&str> = base.split('.').collect();
                    let picked: Vec<&str> = numbers
                        .iter()
                        .filter_map(|n| {
                            #[allow(clippy::cast_possible_truncation)]
                            let n = *n as i64;
                            let i = if n < 0 {
                                i64::try_from(parts.len()).ok()? + n
                            } else {
                                n
                            };
                            parts.get(usize::try_from(i).ok()?).copied()
                        })
                        .collect();
                    Series {
                        name: picked.join("."),
                        ..s
                    }
                })
                .collect()
        }
        "scale" | "offset" => {
            let k = number("a number")?;
            inputs
                .into_iter()
                .map(|s| Series {
                    name: format!("{func}({},{k})", s.name),
                    values: s
                        .values
                        .iter()
                        .map(|v| v.map(|v| if func == "scale" { v * k } else { v + k }))
                        .collect(),
                    ..s
                })
                .collect()
        }
        "perSecond" | "nonNegativeDerivative" | "derivative" => inputs
            .into_iter()
            .map(|s| {
                let mut prev: Option<f64> = None;
                let values = s
                    .values
                    .iter()
                    .map(|v| {
                        let out = match (prev, v) {
                            (Some(p), Some(v)) => {
                                let d = v - p;
                                let d = if func == "perSecond" {
                                    d / s.step as f64
                                } else {
                                    d
                                };
                                (func == "derivative" || d >= 0.0).then_some(d)
                            }
                            _ => None,
                        };
                        if v.is_some() {
                            prev = *v;
                        }
                        out
                    })
                    .collect();
                Series {
                    name: format!("{func}({})", s.name),
                    values,
                    ..s
                }
            })
            .collect(),
        "keepLastValue" => inputs
            .into_iter()
            .map(|s| {
                let mut last = None;
                let values = s
                    .values
                    .iter()
                    .map(|v| {
                        if v.is_some() {
                            last = *v;
                        }
                        last
                    })
                    .collect();
                Series {
                    name: format!("keepLastValue({})", s.name),
                    values,
                    ..s
                }
            })
            .collect(),
        other => {
            return Err(bad(format!(
                "unknown function `{other}` (supported: sumSeries, averageSeries, minSeries, \
                 maxSeries, alias, aliasByNode, scale, offset, perSecond, derivative, \
                 nonNegativeDerivative, keepLastValue)"
            )));
        }
    };
    Ok(out)
}

fn display(e: &Expr) -> String {
    match e {
        Expr::Path(p) => p.clone(),
        Expr::Call(f, args) => format!(
            "{f}({})",
            args.iter()
                .map(|a| match a {
                    Arg::Expr(e) => display(e),
                    Arg::Number(n) => n.to_string(),
                    Arg::Text(t) => format!("'{t}'"),
                })
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
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
    let pattern = Pattern::parse(query).map_err(|e| RenderError::Target {
        target: query.to_owned(),
        message: e.to_string(),
    })?;
    let depth = pattern.depth();
    let mut out = BTreeMap::new();
    for name in names.filter(|n| pattern.matches_prefix(n)) {
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

    const NOW: u64 = 1_700_000_040;

    fn db() -> TsDb {
        let mut db = TsDb::open(Arc::new(MemStore::default()), 100).expect("open");
        for (name, v) in [
            ("servers.web1.load", 1.0),
            ("servers.web2.load", 3.0),
            ("servers.db1.load", 10.0),
            ("servers.web1.cpu.user", 5.0),
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

    fn last(s: &Series) -> Option<f64> {
        s.values.last().copied().flatten()
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("now", NOW), Ok(NOW));
        assert_eq!(parse_time("-1h", NOW), Ok(NOW - 3600));
        assert_eq!(parse_time("now-15min", NOW), Ok(NOW - 900));
        assert_eq!(parse_time("-24hours", NOW), Ok(NOW - 86_400));
        assert_eq!(parse_time("-2d", NOW), Ok(NOW - 2 * 86_400));
        assert_eq!(parse_time("1600000000", NOW), Ok(1_600_000_000));
        assert!(parse_time("-1fortnight", NOW).is_err());
        assert!(parse_time("yesterday", NOW).is_err());
    }

    #[test]
    fn wildcards_and_functions() {
        let db = db();
        let r = render(&db, &["servers.web*.load".into()], range()).expect("render");
        assert_eq!(
            r.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["servers.web1.load", "servers.web2.load"]
        );
        assert_eq!(r[0].step, 60);
        assert_eq!(r[0].values.len(), 6);
        assert_eq!(last(&r[1]), Some(3.0));
        assert_eq!(r[0].values[0], None);
        let sum = render(&db, &["sumSeries(servers.*.load)".into()], range()).expect("sum");
        assert_eq!((sum.len(), last(&sum[0])), (1, Some(14.0)));
        assert_eq!(sum[0].name, "sumSeries(servers.*.load)");
        let alias = render(
            &db,
            &["alias(averageSeries(servers.web*.load), 'web')".into()],
            range(),
        )
        .expect("alias");
        assert_eq!(
            (alias[0].name.as_str(), last(&alias[0])),
            ("web", Some(2.0))
        );
        let by_node = render(&db, &["aliasByNode(servers.*.load, 1)".into()], range()).expect("n");
        assert_eq!(by_node[0].name, "db1");
        let scaled = render(&db, &["scale(servers.db1.load, 0.5)".into()], range()).expect("s");
        assert_eq!(last(&scaled[0]), Some(5.0));
        assert!(
            render(&db, &["nosuch.thing".into()], range())
                .expect("empty")
                .is_empty()
        );
        assert!(matches!(
            render(&db, &["frobnicate(servers.*.load)".into()], range()),
            Err(RenderError::Target { .. })
        ));
        assert!(render(&db, &["sumSeries(servers.*.load".into()], range()).is_err());
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
        let inverted = Range {
            from: u64::MAX,
            until: u64::MAX,
            now: NOW,
        };
        assert!(render(&db, &["servers.*.load".into()], inverted).is_ok());
    }

    #[test]
    fn consolidation() {
        let mut s = Series {
            name: "x".into(),
            start: 0,
            step: 60,
            values: vec![Some(1.0), Some(3.0), None, None, Some(5.0)],
        };
        s.consolidate(3);
        assert_eq!(s.values, vec![Some(2.0), None, Some(5.0)]);
        assert_eq!(s.step, 120);
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
        assert!(find(db.names(), "a..b").is_err());
    }
}
