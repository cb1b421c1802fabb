//! Evaluation of parsed targets: fetching path expressions from the [`TsDb`] the way whisper
//! answers graphite-web, binding arguments with the [`super::spec`] table, and the functions,
//! each a port of graphite-web 1.1.8's `functions.py` (names, defaults, quirks included; the
//! few places that differ on purpose say so).

use std::collections::BTreeMap;

use super::parse::{self, Arg, Call, Expr};
use super::pyfmt;
use super::spec::{self, FunctionSpec, Lit, ParamType};
use super::time::parse_offset;
use super::{Consolidation, MAX_POINTS, Series};
use crate::glob::Pattern;
use crate::tags;
use crate::tsdb::{MAX_SLOTS, Resolution, TsDb, aggregation_for};

/// Why one target failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fail {
    /// The text does not parse.
    Syntax(String),
    /// A function or an argument is wrong (graphite-web's `InputParameterError`).
    Params(String),
    /// The answer would be too large.
    TooLarge(String),
    /// The store failed.
    Store(String),
}

fn params(msg: impl Into<String>) -> Fail {
    Fail::Params(msg.into())
}

/// What evaluation needs: the store and the time range (graphite-web's `requestContext`).
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub db: &'a TsDb,
    /// `startTime`, unix seconds.
    pub from: i64,
    /// `endTime`, unix seconds.
    pub until: i64,
    /// The current time.
    pub now: i64,
    /// The request's `xFilesFactor`.
    pub xff: f64,
}

/// Longest retention of the store: whisper's `maxRetention`.
const MAX_RETENTION: i64 = 365 * 86_400;

/// Evaluate one target's text.
pub(crate) fn target(ctx: &Ctx, text: &str) -> Result<Vec<Series>, Fail> {
    let expr = parse::parse(text).map_err(Fail::Syntax)?;
    eval(ctx, &expr)
}

fn eval(ctx: &Ctx, e: &Expr) -> Result<Vec<Series>, Fail> {
    match e {
        Expr::Path(p) => fetch(ctx, p),
        Expr::Call(c) => call(ctx, c),
    }
}

/// The window whisper answers for `[from, until]` at `now`: `(resolution, first slot, end)`,
/// or nothing when the range is in the future or past the retention.
fn window(ctx: &Ctx) -> Option<(Resolution, i64, i64)> {
    let now = ctx.now;
    let oldest = now - MAX_RETENTION;
    if ctx.from > now || ctx.until < oldest {
        return None;
    }
    let from = ctx.from.max(oldest).max(0);
    let until = ctx.until.min(now);
    let res = Resolution::for_range(u64::try_from(from).ok()?, u64::try_from(now).ok()?);
    let step = i64::try_from(res.step()).ok()?;
    let first = from - from.rem_euclid(step) + step;
    let mut end = until - until.rem_euclid(step) + step;
    if first == end {
        end += step;
    }
    Some((res, first, end))
}

fn fetch_names(ctx: &Ctx, names: Vec<String>, path_expr: &str) -> Result<Vec<Series>, Fail> {
    let Some((res, first, end)) = window(ctx) else {
        return Ok(Vec::new());
    };
    let step = i64::try_from(res.step()).unwrap_or(60);
    let slots = u64::try_from((end - first) / step).unwrap_or(0);
    if slots > MAX_SLOTS || names.len() as u64 * slots > MAX_POINTS {
        return Err(Fail::TooLarge(format!(
            "{} series × {slots} points is more than {MAX_POINTS}: narrow the pattern or the time range",
            names.len()
        )));
    }
    let (first_u, last_u) = (
        u64::try_from(first).unwrap_or(0),
        u64::try_from(end - step).unwrap_or(0),
    );
    names
        .into_iter()
        .map(|name| {
            let f = ctx
                .db
                .fetch_res(&name, res, first_u, last_u)
                .map_err(|e| Fail::Store(e.to_string()))?;
            let how = aggregation_for(&name);
            Ok(Series {
                path_expr: path_expr.to_owned(),
                start: first,
                end,
                step,
                values: f.recs.iter().map(|r| r.map(|r| r.value(how))).collect(),
                consolidation: Consolidation::Average,
                values_per_point: 1,
                xff: ctx.xff,
                name,
            })
        })
        .collect()
}

/// A path expression: the series it matches, sorted by name, each with the expression as its
/// `pathExpression` (what `sumSeries(a.*)` is named after).
fn fetch(ctx: &Ctx, path: &str) -> Result<Vec<Series>, Fail> {
    let names: Vec<String> = if tags::is_tagged(path) {
        // A tagged series by its full name.
        let name = tags::normalize(path).map_err(|e| Fail::Syntax(format!("{e}: {path}")))?;
        ctx.db.contains(&name).then_some(name).into_iter().collect()
    } else {
        let pattern = Pattern::parse(path).map_err(|e| Fail::Syntax(e.to_string()))?;
        if pattern.is_literal() {
            ctx.db
                .contains(path)
                .then(|| path.to_owned())
                .into_iter()
                .collect()
        } else {
            ctx.db
                .names()
                .filter(|n| !tags::is_tagged(n) && pattern.matches(n))
                .map(str::to_owned)
                .collect()
        }
    };
    fetch_names(ctx, names, path)
}

// ---------------------------------------------------------------------------------------------
// Argument binding (graphite-web's validateParams)

struct Bound<'c> {
    spec: &'static FunctionSpec,
    call: &'c Call,
    /// Per parameter, the arguments given (several for a `multiple` one).
    values: Vec<Vec<&'c Arg>>,
}

fn arg_repr(a: &Arg) -> String {
    match a {
        Arg::Int(i) => i.to_string(),
        Arg::Float(f) => pyfmt::repr(*f),
        Arg::Str(s) => format!("'{s}'"),
        Arg::Bool(b) => if *b { "True" } else { "False" }.into(),
        Arg::None => "None".into(),
        Arg::Inf => "inf".into(),
        Arg::Expr(Expr::Path(p)) => p.clone(),
        Arg::Expr(Expr::Call(c)) => c.raw.clone(),
    }
}

fn as_float(a: &Arg) -> Option<f64> {
    match a {
        Arg::Int(i) => {
            #[allow(clippy::cast_precision_loss)]
            let f = *i as f64;
            Some(f)
        }
        Arg::Float(f) => Some(*f),
        Arg::Inf => Some(f64::INFINITY),
        Arg::Bool(b) => Some(f64::from(u8::from(*b))),
        Arg::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

fn as_int(a: &Arg) -> Option<i64> {
    match a {
        Arg::Int(i) => Some(*i),
        Arg::Bool(b) => Some(i64::from(*b)),
        Arg::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_bool(a: &Arg) -> Option<bool> {
    match a {
        Arg::Bool(b) => Some(*b),
        Arg::Str(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Arg::Str(s) if s.eq_ignore_ascii_case("false") => Some(false),
        Arg::Int(0) => Some(false),
        Arg::Int(1) => Some(true),
        Arg::Float(f) if *f == 0.0 => Some(false),
        Arg::Float(f) if *f == 1.0 => Some(true),
        _ => None,
    }
}

fn type_ok(ty: ParamType, a: &Arg) -> bool {
    match ty {
        ParamType::SeriesList => matches!(a, Arg::Expr(_)),
        ParamType::Float => as_float(a).is_some(),
        ParamType::Integer | ParamType::Node => as_int(a).is_some(),
        ParamType::Boolean => as_bool(a).is_some(),
        ParamType::Interval => matches!(a, Arg::Str(s) if parse_offset(s).is_ok()),
        ParamType::IntOrInterval => match a {
            Arg::Int(_) => true,
            Arg::Str(s) => parse_offset(s).is_ok(),
            _ => false,
        },
        ParamType::IntOrInf => {
            as_int(a).is_some()
                || matches!(a, Arg::Inf)
                || matches!(a, Arg::Float(f) if f.is_infinite())
        }
        ParamType::NodeOrTag => matches!(a, Arg::Int(_) | Arg::Str(_)),
        ParamType::String => matches!(a, Arg::Str(_) | Arg::Int(_) | Arg::Float(_)),
        ParamType::AggFunc | ParamType::AggOrSeriesFunc | ParamType::Any => true,
    }
}

fn bind<'c>(spec: &'static FunctionSpec, call: &'c Call) -> Result<Bound<'c>, Fail> {
    let f = &call.name;
    let ps = spec.params;
    let mut values: Vec<Vec<&Arg>> = vec![Vec::new(); ps.len()];
    let given = call.args.len() + call.kwargs.len();
    let last_multiple = ps.last().is_some_and(|p| p.multiple);
    if given > ps.len() && !last_multiple {
        return Err(params(format!(
            "Too many parameters specified for function \"{f}\""
        )));
    }
    let positional = call.args.len().min(ps.len());
    for (i, a) in call.args.iter().enumerate() {
        values[i.min(ps.len().saturating_sub(1))].push(a);
    }
    if ps.is_empty() && !call.args.is_empty() {
        return Err(params(format!(
            "Too many parameters specified for function \"{f}\""
        )));
    }
    let kw_params = if given > ps.len() {
        &ps[ps.len()..]
    } else {
        &ps[positional..]
    };
    let mut used = 0;
    for p in kw_params {
        let i = ps.iter().position(|q| q.name == p.name).unwrap_or(0);
        match call.kwargs.iter().find(|(k, _)| k == p.name) {
            Some((_, v)) if !matches!(v, Arg::None) => {
                values[i].push(v);
                used += 1;
            }
            _ if p.required => {
                return Err(params(format!(
                    "Missing required parameter \"{}\" for function \"{f}\"",
                    p.name
                )));
            }
            _ => {}
        }
    }
    if call.kwargs.len() > used {
        let unexpected: Vec<&str> = call
            .kwargs
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !kw_params.iter().any(|p| p.name == *k))
            .collect();
        if !unexpected.is_empty() {
            return Err(params(format!(
                "Unexpected key word arguments: {}",
                unexpected.join(", ")
            )));
        }
    }
    for (p, vals) in ps.iter().zip(&values) {
        for a in vals {
            if matches!(a, Arg::None) && !p.required {
                continue;
            }
            if !p.options.is_empty() {
                let ok = matches!(a, Arg::Str(s) if p.options.contains(&s.as_str()));
                if !ok {
                    return Err(params(format!(
                        "Invalid option specified for function \"{f}\" parameter \"{}\": {}",
                        p.name,
                        arg_repr(a)
                    )));
                }
            }
            if !type_ok(p.ty, a) {
                return Err(params(format!(
                    "Invalid \"{}\" value specified for function \"{f}\" parameter \"{}\": {}",
                    p.ty.name(),
                    p.name,
                    arg_repr(a)
                )));
            }
        }
    }
    Ok(Bound { spec, call, values })
}

impl<'c> Bound<'c> {
    fn get(&self, i: usize) -> Option<&'c Arg> {
        self.values
            .get(i)
            .and_then(|v| v.first().copied())
            .filter(|a| !matches!(a, Arg::None))
    }

    fn all(&self, i: usize) -> &[&'c Arg] {
        self.values.get(i).map_or(&[], Vec::as_slice)
    }

    fn expr(&self, i: usize) -> Result<&'c Expr, Fail> {
        match self.get(i) {
            Some(Arg::Expr(e)) => Ok(e),
            _ => Err(params(format!(
                "Missing required parameter \"{}\" for function \"{}\"",
                self.spec.params.get(i).map_or("seriesList", |p| p.name),
                self.call.name
            ))),
        }
    }

    fn series(&self, ctx: &Ctx, i: usize) -> Result<Vec<Series>, Fail> {
        eval(ctx, self.expr(i)?)
    }

    fn float(&self, i: usize) -> Option<f64> {
        self.get(i).and_then(as_float)
    }

    fn float_or(&self, i: usize, default: f64) -> f64 {
        self.float(i).unwrap_or(default)
    }

    fn int(&self, i: usize) -> Option<i64> {
        self.get(i).and_then(as_int)
    }

    fn boolean(&self, i: usize) -> bool {
        match self.get(i).and_then(as_bool) {
            Some(b) => b,
            None => matches!(
                self.spec.params.get(i).and_then(|p| p.default),
                Some(Lit::Bool(true))
            ),
        }
    }

    fn text(&self, i: usize) -> Option<String> {
        self.get(i).map(|a| match a {
            Arg::Str(s) => s.clone(),
            other => arg_repr(other),
        })
    }

    fn text_or_default(&self, i: usize) -> String {
        self.text(i)
            .unwrap_or_else(|| match self.spec.params.get(i).and_then(|p| p.default) {
                Some(Lit::Str(s)) => s.to_owned(),
                _ => String::new(),
            })
    }

    fn required_float(&self, i: usize) -> Result<f64, Fail> {
        self.float(i).ok_or_else(|| self.missing(i))
    }

    fn required_int(&self, i: usize) -> Result<i64, Fail> {
        self.int(i).ok_or_else(|| self.missing(i))
    }

    fn required_text(&self, i: usize) -> Result<String, Fail> {
        self.text(i).ok_or_else(|| self.missing(i))
    }

    fn missing(&self, i: usize) -> Fail {
        params(format!(
            "Missing required parameter \"{}\" for function \"{}\"",
            self.spec.params.get(i).map_or("?", |p| p.name),
            self.call.name
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregation functions (graphite.functions.safe and aggfuncs)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agg {
    Average,
    AvgZero,
    Median,
    Sum,
    Min,
    Max,
    Diff,
    Stddev,
    Count,
    Range,
    Multiply,
    Last,
}

impl Agg {
    fn parse(name: &str) -> Option<Agg> {
        Some(match name {
            "average" | "avg" => Agg::Average,
            "avg_zero" => Agg::AvgZero,
            "median" => Agg::Median,
            "sum" | "total" => Agg::Sum,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "diff" => Agg::Diff,
            "stddev" => Agg::Stddev,
            "count" => Agg::Count,
            "range" | "rangeOf" => Agg::Range,
            "multiply" => Agg::Multiply,
            "last" | "current" => Agg::Last,
            _ => return None,
        })
    }

    fn apply(self, values: &[Option<f64>]) -> Option<f64> {
        let known = || values.iter().flatten().copied();
        let n = known().count();
        #[allow(clippy::cast_precision_loss)]
        let nf = n as f64;
        match self {
            Agg::Sum => (n > 0).then(|| known().fold(0.0, |a, b| a + b)),
            Agg::Average => (n > 0).then(|| known().fold(0.0, |a, b| a + b) / nf),
            Agg::AvgZero => {
                #[allow(clippy::cast_precision_loss)]
                let len = values.len() as f64;
                (!values.is_empty()).then(|| {
                    values
                        .iter()
                        .map(|v| v.unwrap_or(0.0))
                        .fold(0.0, |a, b| a + b)
                        / len
                })
            }
            Agg::Median => {
                let mut v: Vec<f64> = known().collect();
                if v.is_empty() {
                    return None;
                }
                v.sort_by(f64::total_cmp);
                let mid = v.len() / 2;
                Some(if v.len().is_multiple_of(2) {
                    (v[mid - 1] + v[mid]) / 2.0
                } else {
                    v[mid]
                })
            }
            Agg::Min => known().reduce(f64::min),
            Agg::Max => known().reduce(f64::max),
            Agg::Diff => {
                let mut it = known();
                let first = it.next()?;
                Some(it.fold(0.0 + first, |a, b| a + -b))
            }
            Agg::Stddev => {
                if n == 0 {
                    return None;
                }
                let avg = known().fold(0.0, |a, b| a + b) / nf;
                let sq = known().fold(0.0, |a, v| a + (v - avg) * (v - avg));
                Some((sq / nf).sqrt())
            }
            Agg::Count => Some(nf),
            Agg::Range => Some(known().reduce(f64::max)? - known().reduce(f64::min)?),
            Agg::Multiply => {
                if values.iter().any(Option::is_none) || values.is_empty() {
                    return None;
                }
                known().reduce(|a, b| a * b)
            }
            Agg::Last => values.iter().rev().find_map(|v| *v),
        }
    }
}

fn agg_of(name: &str) -> Result<Agg, Fail> {
    let stripped = name.strip_suffix("Series").unwrap_or(name);
    Agg::parse(stripped).ok_or_else(|| params(format!("Unsupported aggregation function: {name}")))
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the functions

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: i64, b: i64) -> i64 {
    if a == b {
        return a;
    }
    let (a, b) = if a < b { (b, a) } else { (a, b) };
    if b == 0 {
        return a;
    }
    a / gcd(a, b) * b
}

/// graphite-web's `normalize`: every series consolidated to the coarsest common step; its rows
/// (`izip_longest`), start, end and step. `None` when there is no series.
/// Rows of values, start, end, step.
type Normalized = (Vec<Vec<Option<f64>>>, i64, i64, i64);

fn normalize(list: &[&Series]) -> Option<Normalized> {
    let first = list.first()?;
    let step = list.iter().map(|s| s.step).fold(first.step, lcm).max(1);
    let columns: Vec<Vec<Option<f64>>> = list
        .iter()
        .map(|s| {
            let mut s2 = (*s).clone();
            s2.values_per_point = usize::try_from(step / s.step.max(1)).unwrap_or(1).max(1);
            s2.consolidated()
        })
        .collect();
    let start = list.iter().map(|s| s.start).min().unwrap_or(0);
    let mut end = list.iter().map(|s| s.end).max().unwrap_or(0);
    end -= (end - start).rem_euclid(step);
    let len = columns.iter().map(Vec::len).max().unwrap_or(0);
    let rows = (0..len)
        .map(|i| {
            columns
                .iter()
                .map(|c| c.get(i).copied().flatten())
                .collect()
        })
        .collect();
    Some((rows, start, end, step))
}

/// `a.*,b.c`: the distinct path expressions, in order.
fn path_exprs(list: &[&Series]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for s in list {
        if !seen.contains(&s.path_expr.as_str()) {
            seen.push(&s.path_expr);
        }
    }
    seen.join(",")
}

fn xff_ok(non_null: usize, total: f64, xff: f64) -> bool {
    #[allow(clippy::cast_precision_loss)]
    let n = non_null as f64;
    non_null > 0 && total > 0.0 && n / total >= xff
}

fn new_series(
    name: String,
    start: i64,
    end: i64,
    step: i64,
    values: Vec<Option<f64>>,
    xff: f64,
) -> Series {
    Series {
        path_expr: name.clone(),
        name,
        start,
        end,
        step,
        values,
        consolidation: Consolidation::Average,
        values_per_point: 1,
        xff,
    }
}

/// graphite-web's `aggregate`: one series `<func>Series(<path expressions>)`.
fn aggregate(
    list: &[&Series],
    func: &str,
    xff: Option<f64>,
    ctx: &Ctx,
) -> Result<Vec<Series>, Fail> {
    let agg = agg_of(func)?;
    let Some((rows, start, end, step)) = normalize(list) else {
        return Ok(Vec::new());
    };
    let xff = xff.unwrap_or(ctx.xff);
    let func = func.strip_suffix("Series").unwrap_or(func);
    let name = format!("{func}Series({})", path_exprs(list));
    let values = rows
        .iter()
        .map(|row| {
            let nn = row.iter().flatten().count();
            #[allow(clippy::cast_precision_loss)]
            let total = row.len() as f64;
            if xff_ok(nn, total, xff) {
                agg.apply(row)
            } else {
                None
            }
        })
        .collect();
    Ok(vec![new_series(name, start, end, step, values, xff)])
}

/// Python's `list[:n]`.
fn py_take<T>(mut v: Vec<T>, n: i64) -> Vec<T> {
    let len = i64::try_from(v.len()).unwrap_or(i64::MAX);
    let keep = if n < 0 { (len + n).max(0) } else { n.min(len) };
    v.truncate(usize::try_from(keep).unwrap_or(0));
    v
}

/// Python's `round(x, 6)` (the text rounding is exact, as Python's is).
fn round6(x: f64) -> f64 {
    format!("{x:.6}").parse().unwrap_or(x)
}

/// A Python `re.sub` replacement (`\1`, `\g<name>`) in `regex` syntax.
fn py_replacement(rep: &str) -> String {
    let mut out = String::new();
    let mut chars = rep.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    let mut n = String::new();
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        n.push(d);
                        chars.next();
                        if n.len() == 2 {
                            break;
                        }
                    }
                    out.push_str(&format!("${{{n}}}"));
                }
                Some('g') => {
                    chars.next();
                    if chars.peek() == Some(&'<') {
                        chars.next();
                        let name: String = chars.by_ref().take_while(|c| *c != '>').collect();
                        out.push_str(&format!("${{{name}}}"));
                    } else {
                        out.push_str("\\g");
                    }
                }
                Some('n') => {
                    chars.next();
                    out.push('\n');
                }
                Some('t') => {
                    chars.next();
                    out.push('\t');
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

fn regex(pattern: &str, func: &str) -> Result<regex_lite::Regex, Fail> {
    regex_lite::Regex::new(pattern)
        .map_err(|e| params(format!("invalid regular expression for {func}: {e}")))
}

/// The tags graphite-web gives a series: parsed from its name, or from the first path in it
/// when the name is a call.
fn series_tags(s: &Series) -> BTreeMap<String, String> {
    if s.name.ends_with(')')
        && let Some(p) = parse::first_path(&s.name)
    {
        return tags::parse(&p);
    }
    tags::parse(&s.name)
}

/// graphite-web's `getNodeOrTag`.
fn node_or_tag(s: &Series, n: &Arg, path: Option<&str>) -> String {
    let index = match n {
        Arg::Int(i) => Some(*i),
        #[allow(clippy::cast_possible_truncation)]
        Arg::Float(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    };
    if let Some(i) = index {
        let base = path.unwrap_or(&s.name);
        let base = base.split(';').next().unwrap_or(base);
        let parts: Vec<&str> = base.split('.').collect();
        let len = i64::try_from(parts.len()).unwrap_or(0);
        let at = if i < 0 { len + i } else { i };
        if let Some(p) = usize::try_from(at).ok().and_then(|at| parts.get(at)) {
            return (*p).to_owned();
        }
    }
    let key = match n {
        Arg::Str(t) => t.clone(),
        other => arg_repr(other),
    };
    series_tags(s).remove(&key).unwrap_or_default()
}

/// graphite-web's `aggKey`.
fn agg_key(s: &Series, nodes: &[&Arg]) -> String {
    let path = if s.name.ends_with(')') {
        parse::first_path(&s.name)
    } else {
        None
    };
    nodes
        .iter()
        .map(|n| node_or_tag(s, n, path.as_deref()))
        .collect::<Vec<_>>()
        .join(".")
}

/// Group series by key, keys in order of first appearance.
fn group_by(list: &[Series], key: impl Fn(&Series) -> String) -> Vec<(String, Vec<&Series>)> {
    let mut groups: Vec<(String, Vec<&Series>)> = Vec::new();
    for s in list {
        let k = key(s);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(s),
            None => groups.push((k, vec![s])),
        }
    }
    groups
}

fn map_each(
    list: Vec<Series>,
    name: impl Fn(&Series) -> String,
    f: impl Fn(Option<f64>) -> Option<f64>,
) -> Vec<Series> {
    list.into_iter()
        .map(|mut s| {
            let n = name(&s);
            s.values = s.values.iter().map(|v| f(*v)).collect();
            s.path_expr = n.clone();
            s.name = n;
            s
        })
        .collect()
}

fn safe_max(s: &Series) -> Option<f64> {
    Agg::Max.apply(&s.consolidated())
}

/// A sort key where "no value" sorts below everything (graphite-web's `keyFunc`).
fn key_of(agg: Agg) -> impl Fn(&Series) -> f64 {
    move |s| agg.apply(&s.consolidated()).unwrap_or(f64::NEG_INFINITY)
}

fn sort_by_key(list: &mut [Series], key: impl Fn(&Series) -> f64, reverse: bool) {
    let mut keyed: Vec<(f64, Series)> = list.iter().map(|s| (key(s), s.clone())).collect();
    if reverse {
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    } else {
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    for (slot, (_, s)) in list.iter_mut().zip(keyed) {
        *slot = s;
    }
}

/// graphite-web's `_getPercentile`.
fn percentile(points: &[Option<f64>], n: f64, interpolate: bool) -> Option<f64> {
    let mut sorted: Vec<f64> = points.iter().flatten().copied().collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    #[allow(clippy::cast_precision_loss)]
    let fractional_rank = (n / 100.0) * (sorted.len() as f64 + 1.0);
    #[allow(clippy::cast_possible_truncation)]
    let mut rank = fractional_rank.trunc() as i64;
    #[allow(clippy::cast_precision_loss)]
    let rank_fraction = fractional_rank - rank as f64;
    if !interpolate {
        #[allow(clippy::cast_possible_truncation)]
        let up = rank_fraction.ceil() as i64;
        rank += up;
    }
    let len = i64::try_from(sorted.len()).unwrap_or(i64::MAX);
    let at = |i: i64| -> f64 {
        // Python indexing: negative counts from the end.
        let i = if i < 0 { len + i } else { i };
        usize::try_from(i)
            .ok()
            .and_then(|i| sorted.get(i))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let mut p = if rank == 0 {
        sorted[0]
    } else if rank - 1 == len {
        sorted[sorted.len() - 1]
    } else {
        at(rank - 1)
    };
    if interpolate && rank != len {
        let next = at(rank);
        p += rank_fraction * (next - p);
    }
    (!p.is_nan()).then_some(p)
}

fn check_buckets(n: i64, func: &str) -> Result<usize, Fail> {
    if n < 0 || u64::try_from(n).unwrap_or(u64::MAX) > MAX_SLOTS {
        return Err(Fail::TooLarge(format!(
            "{func} would make {n} points (at most {MAX_SLOTS}): use a longer interval"
        )));
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

fn interval_seconds(b: &Bound, i: usize, func: &str) -> Result<(String, i64), Fail> {
    let text = b.required_text(i)?;
    let secs = parse_offset(&text).map_err(params)?;
    if secs <= 0 {
        return Err(params(format!(
            "{func}: the interval must be longer than 0 seconds, not `{text}`"
        )));
    }
    Ok((text, secs))
}

fn constant_line(ctx: &Ctx, value: f64, name: String) -> Series {
    let step = ((ctx.until - ctx.from) / 2).max(1);
    Series {
        path_expr: format!("constantLine({name})"),
        name,
        start: ctx.from,
        end: ctx.until,
        step,
        values: vec![Some(value); 3],
        consolidation: Consolidation::Average,
        values_per_point: 1,
        xff: ctx.xff,
    }
}

/// graphite-web's `_nonNegativeDelta`: `(delta, new prev)`.
fn non_negative_delta(
    val: Option<f64>,
    prev: Option<f64>,
    max: Option<f64>,
    min: Option<f64>,
) -> (Option<f64>, Option<f64>) {
    if let (Some(m), Some(v)) = (max, val)
        && v > m
    {
        return (None, None);
    }
    if let (Some(m), Some(v)) = (min, val)
        && v < m
    {
        return (None, None);
    }
    let (Some(p), Some(v)) = (prev, val) else {
        return (None, val);
    };
    if v >= p {
        return (Some(v - p), val);
    }
    if let Some(m) = max {
        return (Some(m + 1.0 + v - p - min.unwrap_or(0.0)), val);
    }
    if let Some(m) = min {
        return (Some(v - m), val);
    }
    (None, val)
}

fn natural_key(name: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if !digits.is_empty() {
            let trimmed = digits.trim_start_matches('0');
            let trimmed = if trimmed.is_empty() { "0" } else { trimmed };
            out.push_str(&format!("{trimmed:0>10}"));
            digits.clear();
        }
    };
    for c in name.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// The functions

#[allow(clippy::too_many_lines)]
fn call(ctx: &Ctx, c: &Call) -> Result<Vec<Series>, Fail> {
    if c.name == "seriesByTag" {
        let mut specs = Vec::new();
        for a in &c.args {
            match a {
                Arg::Str(s) => specs.push(s.clone()),
                other => {
                    return Err(params(format!(
                        "Invalid \"string\" value specified for function \"seriesByTag\" parameter \"tagExpressions\": {}",
                        arg_repr(other)
                    )));
                }
            }
        }
        let exprs = tags::parse_exprs(&specs).map_err(params)?;
        let names = tags::find(ctx.db.names(), &exprs);
        return fetch_names(ctx, names, &c.raw);
    }
    let spec = spec::lookup(&c.name)
        .ok_or_else(|| params(format!("Received request for unknown function: {}", c.name)))?;
    let b = bind(spec, c)?;
    let g = pyfmt::g;
    let out = match spec.name {
        // --- Combine
        "sumSeries" | "averageSeries" | "minSeries" | "maxSeries" | "diffSeries"
        | "stddevSeries" | "rangeOfSeries" | "multiplySeries" => {
            let mut all = Vec::new();
            for a in b.all(0) {
                if let Arg::Expr(e) = a {
                    all.push(eval(ctx, e)?);
                }
            }
            if spec.name == "multiplySeries" && all.len() == 1 && all[0].len() == 1 {
                return Ok(all.remove(0));
            }
            let list: Vec<&Series> = all.iter().flatten().collect();
            let func = spec.name.strip_suffix("Series").unwrap_or(spec.name);
            aggregate(&list, func, None, ctx)?
        }
        "aggregate" => {
            let list = b.series(ctx, 0)?;
            let refs: Vec<&Series> = list.iter().collect();
            aggregate(&refs, &b.required_text(1)?, b.float(2), ctx)?
        }
        "countSeries" => {
            let mut all = Vec::new();
            for a in b.all(0) {
                if let Arg::Expr(e) = a {
                    all.push(eval(ctx, e)?);
                }
            }
            if all.is_empty() {
                let mut s = constant_line(ctx, 0.0, "0".into());
                s.path_expr = "countSeries()".into();
                vec![s]
            } else {
                let list: Vec<&Series> = all.iter().flatten().collect();
                count_series(&list)
            }
        }
        "group" => {
            let mut out = Vec::new();
            for a in b.all(0) {
                if let Arg::Expr(e) = a {
                    out.extend(eval(ctx, e)?);
                }
            }
            out
        }
        "sumSeriesWithWildcards" | "averageSeriesWithWildcards" => {
            let list = b.series(ctx, 0)?;
            let positions: Vec<i64> = b.all(1).iter().filter_map(|a| as_int(a)).collect();
            let func = if spec.name.starts_with("sum") {
                "sum"
            } else {
                "average"
            };
            let groups = group_by(&list, |s| {
                s.name
                    .split('.')
                    .enumerate()
                    .filter(|(i, _)| !positions.contains(&i64::try_from(*i).unwrap_or(-1)))
                    .map(|(_, p)| p)
                    .collect::<Vec<_>>()
                    .join(".")
            });
            let mut out = Vec::new();
            for (key, members) in groups {
                for mut s in aggregate(&members, func, None, ctx)? {
                    s.name = key.clone();
                    out.push(s);
                }
            }
            out
        }
        "groupByNode" | "groupByNodes" => {
            let list = b.series(ctx, 0)?;
            let (callback, nodes): (String, Vec<&Arg>) = if spec.name == "groupByNode" {
                (b.text_or_default(2), b.all(1).to_vec())
            } else {
                (b.required_text(1)?, b.all(2).to_vec())
            };
            let mut out = Vec::new();
            for (key, members) in group_by(&list, |s| agg_key(s, &nodes)) {
                let made = match callback.as_str() {
                    "countSeries" => count_series(&members),
                    "multiplySeries" if members.len() == 1 => vec![members[0].clone()],
                    cb => aggregate(&members, cb, None, ctx)?,
                };
                if let Some(mut s) = made.into_iter().next() {
                    s.name = key;
                    out.push(s);
                }
            }
            out
        }
        "percentileOfSeries" => {
            let n = b.required_float(1)?;
            if n <= 0.0 {
                return Err(params(
                    "The requested percent is required to be greater than 0",
                ));
            }
            let list = b.series(ctx, 0)?;
            let interpolate = b.boolean(2);
            let refs: Vec<&Series> = list.iter().collect();
            match normalize(&refs) {
                None => Vec::new(),
                Some((rows, start, end, step)) => {
                    let name = format!("percentileOfSeries({},{})", list[0].path_expr, g(n));
                    let values = rows.iter().map(|r| percentile(r, n, interpolate)).collect();
                    vec![new_series(name, start, end, step, values, ctx.xff)]
                }
            }
        }
        "asPercent" => as_percent(ctx, &b)?,
        "divideSeries" => {
            let dividends = b.series(ctx, 0)?;
            let divisors = b.series(ctx, 1)?;
            match divisors.len() {
                0 => dividends
                    .into_iter()
                    .map(|mut s| {
                        s.name = format!("divideSeries({},MISSING)", s.name);
                        s.path_expr = s.name.clone();
                        s.values = vec![None; s.values.len()];
                        s
                    })
                    .collect(),
                1 => {
                    let divisor = &divisors[0];
                    let mut out = Vec::new();
                    for d in &dividends {
                        let name = format!("divideSeries({},{})", d.name, divisor.name);
                        let (rows, start, end, step) = normalize(&[d, divisor]).unwrap_or_default();
                        let values = rows
                            .iter()
                            .map(|r| match (r[0], r[1]) {
                                (Some(a), Some(b)) if b != 0.0 => Some(a / b),
                                _ => None,
                            })
                            .collect();
                        out.push(new_series(name, start, end, step, values, ctx.xff));
                    }
                    out
                }
                n => {
                    return Err(params(format!(
                        "divideSeries second argument must reference exactly 1 series (got {n})"
                    )));
                }
            }
        }

        // --- Transform
        "absolute" => map_each(
            b.series(ctx, 0)?,
            |s| format!("absolute({})", s.name),
            |v| v.map(f64::abs),
        ),
        "invert" => map_each(
            b.series(ctx, 0)?,
            |s| format!("invert({})", s.name),
            |v| v.filter(|v| *v != 0.0).map(|v| v.powi(-1)),
        ),
        "scale" => {
            let k = b.required_float(1)?;
            map_each(
                b.series(ctx, 0)?,
                |s| format!("scale({},{})", s.name, g(k)),
                |v| v.map(|v| v * k),
            )
        }
        "offset" => {
            let k = b.required_float(1)?;
            map_each(
                b.series(ctx, 0)?,
                |s| format!("offset({},{})", s.name, g(k)),
                |v| v.map(|v| v + k),
            )
        }
        "scaleToSeconds" => {
            let secs = b.required_float(1)?;
            let mut out = Vec::new();
            for mut s in b.series(ctx, 0)? {
                #[allow(clippy::cast_precision_loss)]
                let factor = secs / s.step as f64;
                s.name = format!("scaleToSeconds({},{})", s.name, pyfmt::d(secs));
                s.path_expr = s.name.clone();
                s.values = s
                    .values
                    .iter()
                    .map(|v| v.map(|v| round6(v * factor)))
                    .collect();
                out.push(s);
            }
            out
        }
        "derivative" | "integral" | "nonNegativeDerivative" | "perSecond" => {
            let (max, min) = (b.float(1), b.float(2));
            let mut out = Vec::new();
            for mut s in b.series(ctx, 0)? {
                let mut prev: Option<f64> = None;
                let mut total = 0.0;
                #[allow(clippy::cast_precision_loss)]
                let step = s.step as f64;
                s.values = s
                    .values
                    .iter()
                    .map(|&v| match spec.name {
                        "derivative" => {
                            let out = match (prev, v) {
                                (Some(p), Some(v)) => Some(v - p),
                                _ => None,
                            };
                            prev = v;
                            out
                        }
                        "integral" => v.map(|v| {
                            total += v;
                            total
                        }),
                        "nonNegativeDerivative" => {
                            let (d, p) = non_negative_delta(v, prev, max, min);
                            prev = p;
                            d
                        }
                        _ => {
                            let (d, p) = non_negative_delta(v, prev, max, min);
                            prev = p;
                            d.map(|d| round6(d / step))
                        }
                    })
                    .collect();
                s.name = format!("{}({})", spec.name, s.name);
                s.path_expr = s.name.clone();
                out.push(s);
            }
            out
        }
        "delay" => {
            let steps = b.required_int(1)?;
            let mut out = Vec::new();
            for mut s in b.series(ctx, 0)? {
                let len = s.values.len();
                let k = usize::try_from(steps.unsigned_abs()).unwrap_or(usize::MAX);
                s.values = if steps < 0 {
                    let mut v: Vec<Option<f64>> = s.values.iter().skip(k).copied().collect();
                    v.extend(std::iter::repeat_n(None, k.min(len)));
                    v
                } else {
                    // `series[:-steps]`: with 0 steps that is nothing, as in graphite-web.
                    let mut v = vec![None; k.min(len)];
                    v.extend(s.values.iter().take(len.saturating_sub(if steps == 0 {
                        len
                    } else {
                        k
                    })));
                    v
                };
                s.name = format!("delay({},{steps})", s.name);
                s.path_expr = s.name.clone();
                out.push(s);
            }
            out
        }
        "keepLastValue" => {
            let limit = match b.get(1) {
                Some(Arg::Inf) | None => usize::MAX,
                Some(Arg::Float(f)) if f.is_infinite() => usize::MAX,
                Some(a) => usize::try_from(as_int(a).unwrap_or(0).max(0)).unwrap_or(usize::MAX),
            };
            let mut out = Vec::new();
            for mut s in b.series(ctx, 0)? {
                s.name = format!("keepLastValue({})", s.name);
                s.path_expr = s.name.clone();
                let mut nones = 0usize;
                let mut last: Option<f64> = None;
                for i in 0..s.values.len() {
                    match s.values[i] {
                        None => nones += 1,
                        Some(v) => {
                            if nones > 0 && nones <= limit && last.is_some() {
                                for j in i - nones..i {
                                    s.values[j] = last;
                                }
                            }
                            nones = 0;
                            last = Some(v);
                        }
                    }
                }
                let len = s.values.len();
                if nones > 0 && nones <= limit && last.is_some() {
                    for j in len - nones..len {
                        s.values[j] = last;
                    }
                }
                out.push(s);
            }
            out
        }
        "transformNull" => {
            let default = b.float_or(1, 0.0);
            let reference = match b.get(2) {
                Some(Arg::Expr(e)) => eval(ctx, e)?,
                _ => Vec::new(),
            };
            let defaults: Vec<Option<f64>> = if reference.is_empty() {
                Vec::new()
            } else {
                let len = reference.iter().map(|s| s.values.len()).max().unwrap_or(0);
                (0..len)
                    .map(|i| {
                        reference
                            .iter()
                            .any(|s| s.values.get(i).copied().flatten().is_some())
                            .then_some(default)
                    })
                    .collect()
            };
            let mut out = Vec::new();
            for mut s in b.series(ctx, 0)? {
                s.name = if reference.is_empty() {
                    format!("transformNull({},{})", s.name, g(default))
                } else {
                    format!("transformNull({},{},referenceSeries)", s.name, g(default))
                };
                s.path_expr = s.name.clone();
                s.values = if defaults.is_empty() {
                    s.values.iter().map(|v| v.or(Some(default))).collect()
                } else {
                    let len = s.values.len().max(defaults.len());
                    (0..len)
                        .map(|i| {
                            s.values
                                .get(i)
                                .copied()
                                .flatten()
                                .or_else(|| defaults.get(i).copied().flatten())
                        })
                        .collect()
                };
                out.push(s);
            }
            out
        }
        "movingAverage" | "movingMedian" | "movingSum" => moving(ctx, &b, spec.name)?,
        "summarize" => {
            let (interval_text, interval) = interval_seconds(&b, 1, "summarize")?;
            let func = b.text_or_default(2);
            let agg = agg_of(&func)?;
            let align_to_from = b.boolean(3);
            let mut out = Vec::new();
            for s in b.series(ctx, 0)? {
                let (new_start, mut new_end) = if align_to_from {
                    (s.start, s.end)
                } else {
                    (
                        s.start - s.start.rem_euclid(interval),
                        s.end - s.end.rem_euclid(interval) + interval,
                    )
                };
                check_buckets((new_end - new_start) / interval, "summarize")?;
                let values = s.consolidated();
                let stamps: Vec<i64> = (0..)
                    .map(|i| s.start + i * s.step)
                    .take_while(|t| *t < s.end)
                    .collect();
                let n = stamps.len().min(values.len());
                #[allow(clippy::cast_precision_loss)]
                let interval_points = interval as f64 / s.step as f64;
                let mut new_values = Vec::new();
                let mut t = new_start;
                let mut i = 0;
                while t < new_end {
                    let mut first = i;
                    let mut non_null = 0;
                    while i < n && stamps[i] < t + interval {
                        if stamps[i] <= t {
                            first = i;
                        }
                        if stamps[i] >= t && values[i].is_some() {
                            non_null += 1;
                        }
                        i += 1;
                    }
                    new_values.push(if xff_ok(non_null, interval_points, s.xff) {
                        agg.apply(&values[first..i])
                    } else {
                        None
                    });
                    t += interval;
                }
                if align_to_from {
                    new_end = t;
                }
                let name = format!(
                    "summarize({}, \"{interval_text}\", \"{func}\"{})",
                    s.name,
                    if align_to_from { ", true" } else { "" }
                );
                out.push(Series {
                    path_expr: name.clone(),
                    name,
                    start: new_start,
                    end: new_end,
                    step: interval,
                    values: new_values,
                    values_per_point: 1,
                    ..s
                });
            }
            out
        }
        "hitcount" => hitcount(ctx, &b)?,
        "timeShift" => {
            let mut shift = b.required_text(1)?;
            if shift.starts_with(|c: char| c.is_ascii_digit()) {
                shift = format!("-{shift}");
            }
            let delta = parse_offset(&shift).map_err(params)?;
            let reset_end = b.boolean(2);
            let original = b.series(ctx, 0)?;
            let Some(first) = original.first() else {
                return Ok(Vec::new());
            };
            let shifted_ctx = Ctx {
                from: ctx.from + delta,
                until: ctx.until + delta,
                ..*ctx
            };
            let mut out = Vec::new();
            for mut s in eval(&shifted_ctx, b.expr(0)?)? {
                s.name = format!("timeShift({}, \"{shift}\")", s.name);
                s.path_expr = s.name.clone();
                s.end = if reset_end {
                    first.end
                } else {
                    s.end - s.start + first.start
                };
                s.start = first.start;
                out.push(s);
            }
            out
        }
        "consolidateBy" => {
            let func = b.required_text(1)?;
            let how = Consolidation::parse(&func)
                .ok_or_else(|| params(format!("Invalid consolidation function: '{func}'")))?;
            let mut out = Vec::new();
            for mut s in b.series(ctx, 0)? {
                s.consolidation = how;
                s.name = format!("consolidateBy({},\"{func}\")", s.name);
                s.path_expr = s.name.clone();
                out.push(s);
            }
            out
        }
        "constantLine" => {
            let v = b.required_float(0)?;
            vec![constant_line(ctx, v, pyfmt::repr(v))]
        }
        "threshold" => {
            let v = b.required_float(0)?;
            let mut s = constant_line(ctx, v, pyfmt::repr(v));
            if let Some(label) = b.text(1).filter(|l| !l.is_empty()) {
                s.name = label;
            }
            vec![s]
        }

        // --- Calculate
        "nPercentile" => {
            let n = b.required_float(1)?;
            if n == 0.0 {
                return Err(params(
                    "The requested percent is required to be greater than 0",
                ));
            }
            let mut out = Vec::new();
            for s in b.series(ctx, 0)? {
                let values = s.consolidated();
                let Some(p) = percentile(&values, n, false) else {
                    continue;
                };
                let count = usize::try_from((s.end - s.start) / s.step.max(1)).unwrap_or(0);
                let name = format!("nPercentile({}, {})", s.name, g(n));
                out.push(Series {
                    path_expr: name.clone(),
                    name,
                    values: vec![Some(p); count],
                    values_per_point: 1,
                    ..s
                });
            }
            out
        }
        "removeAbovePercentile" | "removeAboveValue" | "removeBelowValue" => {
            let n = b.required_float(1)?;
            let mut out = Vec::new();
            for mut s in b.series(ctx, 0)? {
                s.name = format!("{}({}, {})", spec.name, s.name, g(n));
                s.path_expr = s.name.clone();
                match spec.name {
                    "removeAbovePercentile" => {
                        if let Some(p) = percentile(&s.consolidated(), n, false) {
                            for v in &mut s.values {
                                if v.is_some_and(|x| x > p) {
                                    *v = None;
                                }
                            }
                        }
                    }
                    "removeAboveValue" => {
                        for v in &mut s.values {
                            if v.is_some_and(|x| x > n) {
                                *v = None;
                            }
                        }
                    }
                    _ => {
                        for v in &mut s.values {
                            if v.is_none_or(|x| x < n) {
                                *v = None;
                            }
                        }
                    }
                }
                out.push(s);
            }
            out
        }

        // --- Filter series
        "currentAbove" | "currentBelow" | "maximumAbove" | "minimumAbove" => {
            let n = b.required_float(1)?;
            let (agg, above) = match spec.name {
                "currentAbove" => (Agg::Last, true),
                "currentBelow" => (Agg::Last, false),
                "maximumAbove" => (Agg::Max, true),
                _ => (Agg::Min, true),
            };
            // graphite-web fails (a Python TypeError, HTTP 500) on a series with no value at
            // all; such a series is left out here.
            b.series(ctx, 0)?
                .into_iter()
                .filter(|s| {
                    agg.apply(&s.consolidated())
                        .is_some_and(|v| if above { v > n } else { v <= n })
                })
                .collect()
        }
        "highestAverage" | "highestCurrent" | "highestMax" | "lowestAverage" | "lowestCurrent" => {
            let n = b.required_int(1)?;
            let (agg, reverse) = match spec.name {
                "highestAverage" => (Agg::Average, true),
                "highestCurrent" => (Agg::Last, true),
                "highestMax" => (Agg::Max, true),
                "lowestAverage" => (Agg::Average, false),
                _ => (Agg::Last, false),
            };
            let mut list = b.series(ctx, 0)?;
            sort_by_key(&mut list, key_of(agg), reverse);
            py_take(list, n)
        }
        "limit" => py_take(b.series(ctx, 0)?, b.required_int(1)?),
        "exclude" | "grep" => {
            let re = regex(&b.required_text(1)?, spec.name)?;
            let keep = spec.name == "grep";
            b.series(ctx, 0)?
                .into_iter()
                .filter(|s| re.is_match(&s.name) == keep)
                .collect()
        }
        "useSeriesAbove" => {
            let value = b.required_float(1)?;
            let re = regex(&b.required_text(2)?, spec.name)?;
            let replace = py_replacement(&b.required_text(3)?);
            let mut names = Vec::new();
            for s in b.series(ctx, 0)? {
                let new_name = re.replace_all(&s.name, replace.as_str()).into_owned();
                // graphite-web compares `max(series)`, which fails on a series with a gap in
                // Python 3; the largest known value is compared here.
                if safe_max(&s).is_some_and(|m| m > value) {
                    names.push(new_name);
                }
            }
            if names.is_empty() {
                Vec::new()
            } else {
                target(ctx, &format!("group({})", names.join(",")))?
                    .into_iter()
                    .filter(|s| !s.values.is_empty())
                    .collect()
            }
        }

        // --- Sorting
        "sortByMaxima" => {
            let mut list = b.series(ctx, 0)?;
            sort_by_key(&mut list, key_of(Agg::Max), true);
            list
        }
        "sortByTotal" => {
            let mut list = b.series(ctx, 0)?;
            sort_by_key(&mut list, key_of(Agg::Sum), true);
            list
        }
        "sortByName" => {
            let mut list = b.series(ctx, 0)?;
            let (natural, reverse) = (b.boolean(1), b.boolean(2));
            let key = |s: &Series| {
                if natural {
                    natural_key(&s.name)
                } else {
                    s.name.clone()
                }
            };
            if reverse {
                list.sort_by_key(|s| std::cmp::Reverse(key(s)));
            } else {
                list.sort_by_key(key);
            }
            list
        }

        // --- Alias
        "alias" => {
            let name = b.required_text(1)?;
            let mut list = b.series(ctx, 0)?;
            for s in &mut list {
                s.name.clone_from(&name);
            }
            list
        }
        "aliasByNode" => {
            let nodes = b.all(1).to_vec();
            let mut list = b.series(ctx, 0)?;
            for s in &mut list {
                s.name = agg_key(s, &nodes);
            }
            list
        }
        "aliasByMetric" => {
            let mut list = b.series(ctx, 0)?;
            for s in &mut list {
                // graphite-web's substr(-1, 0).
                let left = s.name.rfind('(').map_or(0, |i| i + 1);
                let right = s.name.find(')').unwrap_or(s.name.len());
                let clean = s.name.get(left..right.max(left)).unwrap_or("");
                let last = clean.rsplit('.').next().unwrap_or("");
                s.name = last.split(',').next().unwrap_or("").to_owned();
            }
            list
        }
        "aliasSub" => {
            let re = regex(&b.required_text(1)?, spec.name)?;
            let replace = py_replacement(&b.required_text(2)?);
            let mut list = b.series(ctx, 0)?;
            for s in &mut list {
                s.name = re.replace_all(&s.name, replace.as_str()).into_owned();
            }
            list
        }
        other => {
            return Err(params(format!(
                "Received request for unknown function: {other}"
            )));
        }
    };
    Ok(out)
}

fn count_series(list: &[&Series]) -> Vec<Series> {
    let Some((rows, start, end, step)) = normalize(list) else {
        return Vec::new();
    };
    let name = format!("countSeries({})", path_exprs(list));
    #[allow(clippy::cast_precision_loss)]
    let values = rows.iter().map(|r| Some(r.len() as f64)).collect();
    vec![new_series(name, start, end, step, values, list[0].xff)]
}

/// graphite-web's `asPercent`.
#[allow(clippy::too_many_lines)]
fn as_percent(ctx: &Ctx, b: &Bound) -> Result<Vec<Series>, Fail> {
    let list = b.series(ctx, 0)?;
    let total = b.get(1);
    let nodes = b.all(2).to_vec();
    let pct = |a: Option<f64>, t: Option<f64>| match (a, t) {
        (Some(a), Some(t)) if t != 0.0 => Some(a / t * 100.0),
        _ => None,
    };
    let sum_rows = |members: &[&Series]| -> Option<Series> {
        let (rows, start, end, step) = normalize(members)?;
        let name = format!("sumSeries({})", path_exprs(members));
        let values = rows.iter().map(|r| Agg::Sum.apply(r)).collect();
        Some(new_series(name, start, end, step, values, ctx.xff))
    };
    let pair = |s1: &Series, s2: &Series| -> Series {
        let name = format!("asPercent({},{})", s1.name, s2.name);
        let (rows, start, end, step) = normalize(&[s1, s2]).unwrap_or_default();
        let values = rows.iter().map(|r| pct(r[0], r[1])).collect();
        new_series(name, start, end, step, values, ctx.xff)
    };
    if !nodes.is_empty() {
        let groups = group_by(&list, |s| agg_key(s, &nodes));
        let mut keys: Vec<String> = groups.iter().map(|(k, _)| k.clone()).collect();
        let mut totals: Vec<(String, Series)> = Vec::new();
        match total {
            None => {
                for (k, members) in &groups {
                    let t = if members.len() == 1 {
                        members[0].clone()
                    } else {
                        sum_rows(members).unwrap_or_else(|| members[0].clone())
                    };
                    totals.push((k.clone(), t));
                }
            }
            Some(Arg::Expr(e)) => {
                let total_list = eval(ctx, e)?;
                for (k, members) in group_by(&total_list, |s| agg_key(s, &nodes)) {
                    if !keys.contains(&k) {
                        keys.push(k.clone());
                    }
                    let t = if members.len() == 1 {
                        members[0].clone()
                    } else {
                        sum_rows(&members).unwrap_or_else(|| members[0].clone())
                    };
                    totals.push((k, t));
                }
            }
            Some(_) => return Err(params("total must be None or a seriesList")),
        }
        let mut out = Vec::new();
        for k in keys {
            let total = totals.iter().find(|(t, _)| *t == k).map(|(_, s)| s);
            match groups.iter().find(|(g, _)| *g == k) {
                None => {
                    if let Some(t) = total {
                        let name = format!("asPercent(MISSING,{})", t.name);
                        out.push(Series {
                            values: vec![None; t.values.len()],
                            ..new_series(name, t.start, t.end, t.step, Vec::new(), ctx.xff)
                        });
                    }
                }
                Some((_, members)) => {
                    for s in members {
                        out.push(match total {
                            Some(t) => pair(s, t),
                            None => {
                                let name = format!("asPercent({},MISSING)", s.name);
                                new_series(
                                    name,
                                    s.start,
                                    s.end,
                                    s.step,
                                    vec![None; s.values.len()],
                                    ctx.xff,
                                )
                            }
                        });
                    }
                }
            }
        }
        return Ok(out);
    }
    let refs: Vec<&Series> = list.iter().collect();
    let (total_values, total_text): (Vec<Option<f64>>, String) = match total {
        None => {
            let len = list.iter().map(|s| s.values.len()).max().unwrap_or(0);
            (
                (0..len)
                    .map(|i| {
                        let row: Vec<Option<f64>> = list
                            .iter()
                            .map(|s| s.values.get(i).copied().flatten())
                            .collect();
                        Agg::Sum.apply(&row)
                    })
                    .collect(),
                format!("sumSeries({})", path_exprs(&refs)),
            )
        }
        Some(Arg::Expr(e)) => {
            let totals = eval(ctx, e)?;
            if totals.len() == list.len() {
                let mut a: Vec<&Series> = list.iter().collect();
                let mut t: Vec<&Series> = totals.iter().collect();
                a.sort_by(|x, y| x.name.cmp(&y.name));
                t.sort_by(|x, y| x.name.cmp(&y.name));
                return Ok(a.iter().zip(t).map(|(s1, s2)| pair(s1, s2)).collect());
            }
            if totals.len() != 1 {
                return Err(params(
                    "asPercent second argument must be missing, a single digit, reference exactly 1 series or reference the same number of series as the first argument",
                ));
            }
            (totals[0].values.clone(), totals[0].name.clone())
        }
        Some(a) => {
            let t = as_float(a)
                .ok_or_else(|| params("asPercent total must be a number or a seriesList"))?;
            let len = list.first().map_or(0, |s| s.values.len());
            (vec![Some(t); len], arg_repr(a))
        }
    };
    Ok(list
        .iter()
        .map(|s| {
            let len = s.values.len().max(total_values.len());
            let values = (0..len)
                .map(|i| {
                    pct(
                        s.values.get(i).copied().flatten(),
                        total_values.get(i).copied().flatten(),
                    )
                })
                .collect();
            let label = if total_text.is_empty() {
                &s.path_expr
            } else {
                &total_text
            };
            let name = format!("asPercent({},{label})", s.name);
            new_series(name, s.start, s.end, s.step, values, ctx.xff)
        })
        .collect())
}

/// graphite-web's `movingWindow`: the inner target is fetched again from earlier, so that the
/// first points have a full window.
fn moving(ctx: &Ctx, b: &Bound, func: &str) -> Result<Vec<Series>, Fail> {
    // graphite-web evaluates the inner target over the request's range first, only to return
    // nothing when it is empty and to learn its step. For a path with a time window that answer
    // is the same names as the earlier range gives, so the first fetch is skipped.
    let same_names = matches!(b.expr(0)?, Expr::Path(_)) && window(ctx).is_some();
    let original = match b.get(1) {
        Some(Arg::Str(_)) if same_names => Vec::new(),
        _ => {
            let original = b.series(ctx, 0)?;
            if original.is_empty() {
                return Ok(Vec::new());
            }
            original
        }
    };
    let agg = match func {
        "movingAverage" => Agg::Average,
        "movingMedian" => Agg::Median,
        _ => Agg::Sum,
    };
    let window = b.get(1).ok_or_else(|| b.missing(1))?;
    let (preview, window_text) = match window {
        Arg::Str(s) => (parse_offset(s).map_err(params)?.abs(), format!("\"{s}\"")),
        other => {
            let n = as_int(other).ok_or_else(|| b.missing(1))?;
            if n < 0 {
                return Err(params(format!("{func}: windowSize must not be negative")));
            }
            let step = original.iter().map(|s| s.step).max().unwrap_or(60);
            (step.saturating_mul(n), n.to_string())
        }
    };
    let xff = b.float(2);
    // Nothing is kept longer than a year: a longer window reads the same as a year.
    let preview = preview.min(2 * MAX_RETENTION);
    let preview_ctx = Ctx {
        from: ctx.from - preview,
        ..*ctx
    };
    let mut out = Vec::new();
    for s in eval(&preview_ctx, b.expr(0)?)? {
        let points = match window {
            Arg::Str(_) => usize::try_from(preview / s.step.max(1)).unwrap_or(0),
            other => usize::try_from(as_int(other).unwrap_or(0)).unwrap_or(0),
        };
        let xff = xff.unwrap_or(s.xff);
        let values = s.consolidated();
        let mut new_values = Vec::with_capacity(values.len().saturating_sub(points));
        for i in points..values.len() {
            let w = &values[i - points..i];
            let nn = w.iter().flatten().count();
            #[allow(clippy::cast_precision_loss)]
            let ok = nn > 0 && xff_ok(nn, points as f64, xff);
            new_values.push(if ok { agg.apply(w) } else { None });
        }
        let name = format!("{func}({},{window_text})", s.name);
        out.push(Series {
            path_expr: name.clone(),
            name,
            start: s.start + preview,
            values: new_values,
            values_per_point: 1,
            ..s
        });
    }
    Ok(out)
}

/// graphite-web's `hitcount`.
fn hitcount(ctx: &Ctx, b: &Bound) -> Result<Vec<Series>, Fail> {
    let (interval_text, interval) = interval_seconds(b, 1, "hitcount")?;
    let align = b.boolean(2);
    let mut list = b.series(ctx, 0)?;
    if align {
        let trunc = if interval >= 86_400 {
            86_400
        } else if interval >= 3600 {
            3600
        } else if interval >= 60 {
            60
        } else {
            1
        };
        let aligned = Ctx {
            from: ctx.from - ctx.from.rem_euclid(trunc),
            ..*ctx
        };
        list = eval(&aligned, b.expr(0)?)?;
        for s in &mut list {
            let count = (s.end - s.start) / interval;
            s.end = s.start + count * interval + interval;
        }
    }
    let mut out = Vec::new();
    for s in list {
        let span = s.end - s.start;
        let bucket_count = check_buckets((span + interval - 1).div_euclid(interval), "hitcount")?;
        let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); bucket_count];
        let new_start = s.end - i64::try_from(bucket_count).unwrap_or(0) * interval;
        let last = bucket_count.saturating_sub(1);
        for (i, v) in s.values.iter().enumerate() {
            let Some(v) = *v else { continue };
            let start_time = s.start + i64::try_from(i).unwrap_or(0) * s.step;
            let (start_bucket, start_mod) = (
                (start_time - new_start).div_euclid(interval),
                (start_time - new_start).rem_euclid(interval),
            );
            let end_time = start_time + s.step;
            let (mut end_bucket, mut end_mod) = (
                (end_time - new_start).div_euclid(interval),
                (end_time - new_start).rem_euclid(interval),
            );
            if end_bucket >= i64::try_from(bucket_count).unwrap_or(0) {
                end_bucket = i64::try_from(last).unwrap_or(0);
                end_mod = interval;
            }
            #[allow(clippy::cast_precision_loss)]
            let put = |buckets: &mut Vec<Vec<f64>>, at: i64, x: f64| {
                if let Some(bk) = usize::try_from(at).ok().and_then(|a| buckets.get_mut(a)) {
                    bk.push(x);
                }
            };
            #[allow(clippy::cast_precision_loss)]
            if start_bucket == end_bucket {
                if start_bucket >= 0 {
                    put(&mut buckets, start_bucket, v * (end_mod - start_mod) as f64);
                }
            } else {
                if start_bucket >= 0 {
                    put(
                        &mut buckets,
                        start_bucket,
                        v * (interval - start_mod) as f64,
                    );
                }
                for j in start_bucket + 1..end_bucket {
                    put(&mut buckets, j, v * interval as f64);
                }
                if end_mod > 0 {
                    put(&mut buckets, end_bucket, v * end_mod as f64);
                }
            }
        }
        let values = buckets
            .iter()
            .map(|bk| (!bk.is_empty()).then(|| bk.iter().fold(0.0, |a, b| a + b)))
            .collect();
        let name = format!(
            "hitcount({}, \"{interval_text}\"{})",
            s.name,
            if align { ", true" } else { "" }
        );
        out.push(Series {
            path_expr: name.clone(),
            name,
            start: new_start,
            step: interval,
            values,
            values_per_point: 1,
            ..s
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_replacements() {
        assert_eq!(py_replacement(r"\1-x"), "${1}-x");
        assert_eq!(py_replacement(r"\g<host>$"), "${host}$$");
        assert_eq!(py_replacement("plain"), "plain");
    }

    #[test]
    fn percentiles_like_graphite_web() {
        let v: Vec<Option<f64>> = [1.0, 2.0, 3.0, 4.0, 5.0].map(Some).to_vec();
        assert_eq!(percentile(&v, 50.0, false), Some(3.0));
        assert_eq!(percentile(&v, 90.0, false), Some(5.0));
        assert_eq!(percentile(&v, 10.0, false), Some(1.0));
        assert_eq!(percentile(&v, 25.0, true), Some(1.5));
        assert_eq!(percentile(&[None], 50.0, false), None);
    }

    #[test]
    fn aggregation_functions() {
        let row = [Some(1.0), None, Some(3.0)];
        assert_eq!(Agg::Sum.apply(&row), Some(4.0));
        assert_eq!(Agg::Average.apply(&row), Some(2.0));
        assert_eq!(Agg::AvgZero.apply(&row), Some(4.0 / 3.0));
        assert_eq!(Agg::Diff.apply(&row), Some(-2.0));
        assert_eq!(Agg::Multiply.apply(&row), None);
        assert_eq!(Agg::Count.apply(&row), Some(2.0));
        assert_eq!(Agg::Range.apply(&row), Some(2.0));
        assert_eq!(Agg::Last.apply(&row), Some(3.0));
        assert_eq!(Agg::Median.apply(&[Some(4.0), Some(1.0)]), Some(2.5));
        assert_eq!(Agg::Stddev.apply(&[Some(2.0), Some(4.0)]), Some(1.0));
    }

    #[test]
    fn natural_sort_keys() {
        assert!(natural_key("web2") < natural_key("web10"));
        assert_eq!(natural_key("a007"), "a0000000007");
    }
}
