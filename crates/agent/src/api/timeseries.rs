//! graphite-web routes of the local API, what Grafana's Graphite data source calls: `/render`
//! (GET query strings or POST forms with repeated `target` fields; `format=json|csv|raw`,
//! `maxDataPoints`, `noNullPoints`, `xFilesFactor`), `/metrics/find`, `/metrics/index.json`,
//! `/functions` (the query editor's list), `/tags` and `/tags/autoComplete/{tags,values}` (the
//! tag editor), and `/version`. Errors are graphite-web's: 400 with a plain-text message.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use opsbro_api::metrics::{FindNode, RenderSeries};
use opsbro_metrics::render::spec::{FUNCTIONS, FunctionSpec, Lit};
use opsbro_metrics::render::{self, Range, RenderError, parse_time};
use opsbro_metrics::tags;
use serde_json::{Value, json};

use crate::api::context::{ApiContext, ApiError};

impl From<RenderError> for ApiError {
    fn from(e: RenderError) -> Self {
        let status = match e {
            RenderError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A graphite-web error: the status and a plain-text message.
pub struct GraphiteError(StatusCode, String);

impl IntoResponse for GraphiteError {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1,
        )
            .into_response()
    }
}

impl From<RenderError> for GraphiteError {
    fn from(e: RenderError) -> Self {
        let status = match e {
            RenderError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        GraphiteError(status, e.to_string())
    }
}

fn bad_request(message: impl Into<String>) -> GraphiteError {
    GraphiteError(StatusCode::BAD_REQUEST, message.into())
}

/// The form fields of a request (query string, or form body for POST; both when present).
fn fields(query: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    out.extend(form_urlencoded::parse(body).into_owned());
    out
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn all<'a>(fields: &'a [(String, String)], names: &[&str]) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(k, _)| names.contains(&k.as_str()))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Raw,
}

async fn render(
    ctx: Arc<ApiContext>,
    fields: Vec<(String, String)>,
) -> Result<Response, GraphiteError> {
    // graphite-web reads `target`, or `target[]` when there is no `target`.
    let mut targets: Vec<String> = all(&fields, &["target"])
        .into_iter()
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        targets = all(&fields, &["target[]"])
            .into_iter()
            .map(str::to_owned)
            .collect();
    }
    targets.retain(|t| !t.trim().is_empty());
    if targets.is_empty() {
        return Err(bad_request(
            "give at least one target, e.g. /render?target=stats.counters.*.count&from=-1h",
        ));
    }
    let format = match field(&fields, "format") {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some("raw") => Format::Raw,
        Some(other) => {
            return Err(bad_request(format!(
                "format `{other}` is not supported: use format=json, csv or raw (no images)"
            )));
        }
    };
    let clock = crate::host::unix_ms() / 1000;
    let now = match field(&fields, "now") {
        Some(n) => parse_time(n, clock)?,
        None => clock,
    };
    let from = parse_time(field(&fields, "from").unwrap_or("-1d"), now)?;
    let until = parse_time(field(&fields, "until").unwrap_or("now"), now)?;
    // graphite-web ignores a maxDataPoints that is not a whole number.
    let max_points = field(&fields, "maxDataPoints")
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|m| m.parse::<usize>().ok())
        .filter(|m| *m > 0);
    let xff = match field(&fields, "xFilesFactor") {
        None => 0.0,
        Some(x) => x
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| {
                bad_request(format!(
                    "Invalid parameters (xFilesFactor `{x}` is not a number)"
                ))
            })?,
    };
    let no_nulls = field(&fields, "noNullPoints").is_some();
    let metrics = ctx.metrics.clone();
    let mut series = tokio::task::spawn_blocking(move || {
        metrics.render(&targets, Range { from, until, now }, xff)
    })
    .await
    .map_err(|e| GraphiteError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let text =
        |body: String, kind: &'static str| ([(header::CONTENT_TYPE, kind)], body).into_response();
    match format {
        Format::Csv => return Ok(text(render::to_csv(&series), "text/csv")),
        Format::Raw => return Ok(text(render::to_raw(&series), "text/plain")),
        Format::Json => {}
    }
    if let Some(max) = max_points {
        render::fit_to_max_points(&mut series, max);
    }
    let out: Vec<RenderSeries> = series
        .into_iter()
        .filter_map(|s| {
            let mut datapoints: Vec<(Option<f64>, u64)> = s
                .datapoints()
                .into_iter()
                // graphite-web writes NaN as null (and there is no infinity in JSON).
                .map(|(v, t)| (v.filter(|v| v.is_finite()), u64::try_from(t).unwrap_or(0)))
                .collect();
            if no_nulls {
                datapoints.retain(|(v, _)| v.is_some());
                if datapoints.is_empty() {
                    return None;
                }
            }
            Some(RenderSeries {
                tags: s.tags(),
                datapoints,
                target: s.name,
            })
        })
        .collect();
    Ok(Json(out).into_response())
}

/// `GET /render`.
pub async fn render_get(
    State(ctx): State<Arc<ApiContext>>,
    RawQuery(query): RawQuery,
) -> Result<Response, GraphiteError> {
    render(ctx, fields(query.as_deref(), b"")).await
}

/// `POST /render` (form body).
pub async fn render_post(
    State(ctx): State<Arc<ApiContext>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, GraphiteError> {
    render(ctx, fields(query.as_deref(), &body)).await
}

fn find(ctx: &ApiContext, fields: &[(String, String)]) -> Result<Json<Vec<FindNode>>, ApiError> {
    let query = field(fields, "query").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "give a query, e.g. /metrics/find?query=stats.*",
        )
    })?;
    let nodes = ctx.metrics.find(query)?;
    Ok(Json(
        nodes
            .into_iter()
            .map(|n| FindNode {
                text: n.text,
                id: n.id,
                leaf: u8::from(n.leaf),
                expandable: u8::from(!n.leaf),
                allow_children: u8::from(!n.leaf),
                context: BTreeMap::new(),
            })
            .collect(),
    ))
}

/// `GET /metrics/find`.
pub async fn find_get(
    State(ctx): State<Arc<ApiContext>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<FindNode>>, ApiError> {
    find(&ctx, &fields(query.as_deref(), b""))
}

/// `POST /metrics/find` (form body).
pub async fn find_post(
    State(ctx): State<Arc<ApiContext>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Vec<FindNode>>, ApiError> {
    find(&ctx, &fields(query.as_deref(), &body))
}

/// `GET /metrics/index.json`.
pub async fn index(State(ctx): State<Arc<ApiContext>>) -> Json<Vec<String>> {
    Json(ctx.metrics.names())
}

fn lit(l: Lit) -> Value {
    match l {
        Lit::Int(i) => json!(i),
        Lit::Float(f) => json!(f),
        Lit::Bool(b) => json!(b),
        Lit::Str(s) => json!(s),
        // JSON has no infinity; graphite-web writes 1e9999, which most parsers refuse.
        Lit::Inf => json!("inf"),
    }
}

/// graphite-web's `functionInfo`.
fn function_info(f: &FunctionSpec) -> Value {
    let params: Vec<Value> = f
        .params
        .iter()
        .map(|p| {
            let mut o = serde_json::Map::new();
            o.insert("name".into(), json!(p.name));
            o.insert("type".into(), json!(p.ty.name()));
            if p.required {
                o.insert("required".into(), json!(true));
            }
            if let Some(d) = p.default {
                o.insert("default".into(), lit(d));
            }
            if p.multiple {
                o.insert("multiple".into(), json!(true));
            }
            if !p.options.is_empty() {
                o.insert("options".into(), json!(p.options));
            }
            if !p.suggestions.is_empty() {
                o.insert(
                    "suggestions".into(),
                    Value::Array(p.suggestions.iter().map(|s| lit(*s)).collect()),
                );
            }
            Value::Object(o)
        })
        .collect();
    json!({
        "name": f.name,
        "function": f.signature(),
        "description": f.description,
        "module": "graphite.render.functions",
        "group": f.group,
        "params": params,
    })
}

/// `GET /functions[?grouped=1][&group=Combine]`: every function `/render` knows, in
/// graphite-web's shape (Grafana's query editor reads it).
pub async fn functions(RawQuery(query): RawQuery) -> Json<Value> {
    let fields = fields(query.as_deref(), b"");
    let grouped = field(&fields, "grouped")
        .is_some_and(|g| matches!(g.to_ascii_lowercase().as_str(), "1" | "true"));
    let group = field(&fields, "group");
    let mut out = serde_json::Map::new();
    for f in FUNCTIONS
        .iter()
        .filter(|f| group.is_none_or(|g| g == f.group))
    {
        if grouped {
            let entry = out
                .entry(f.group.to_owned())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Value::Object(m) = entry {
                m.insert(f.name.to_owned(), function_info(f));
            }
        } else {
            out.insert(f.name.to_owned(), function_info(f));
        }
    }
    Json(Value::Object(out))
}

/// graphite-web's `TAGDB_AUTOCOMPLETE_LIMIT`.
const DEFAULT_LIMIT: usize = 100;

fn limit(fields: &[(String, String)]) -> Result<usize, GraphiteError> {
    match field(fields, "limit") {
        None | Some("") => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse()
            .map_err(|_| bad_request(format!("limit `{l}` is not a number"))),
    }
}

/// `GET /tags[?filter=regex][&limit=N]`: every tag of the tagged series, `[{"tag": …}]`.
pub async fn tag_list(
    State(ctx): State<Arc<ApiContext>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<Value>>, GraphiteError> {
    let fields = fields(query.as_deref(), b"");
    let limit = limit(&fields)?;
    let filter = field(&fields, "filter");
    let found = ctx
        .metrics
        .with_names(|names| tags::list_tags(names, filter, limit))
        .map_err(bad_request)?;
    Ok(Json(
        found.into_iter().map(|t| json!({ "tag": t })).collect(),
    ))
}

fn exprs(fields: &[(String, String)]) -> Result<Vec<tags::TagExpr>, GraphiteError> {
    all(fields, &["expr", "expr[]"])
        .into_iter()
        .map(|e| tags::TagExpr::parse(e).map_err(bad_request))
        .collect()
}

async fn complete_tags(
    ctx: Arc<ApiContext>,
    fields: Vec<(String, String)>,
) -> Result<Json<Vec<String>>, GraphiteError> {
    let exprs = exprs(&fields)?;
    let limit = limit(&fields)?;
    let prefix = field(&fields, "tagPrefix").unwrap_or("").to_owned();
    Ok(Json(ctx.metrics.with_names(|names| {
        tags::complete_tags(names, &exprs, &prefix, limit)
    })))
}

async fn complete_values(
    ctx: Arc<ApiContext>,
    fields: Vec<(String, String)>,
) -> Result<Json<Vec<String>>, GraphiteError> {
    let exprs = exprs(&fields)?;
    let limit = limit(&fields)?;
    let tag = field(&fields, "tag")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad_request("no tag specified: give tag=<name>"))?
        .to_owned();
    let prefix = field(&fields, "valuePrefix").unwrap_or("").to_owned();
    Ok(Json(ctx.metrics.with_names(|names| {
        tags::complete_values(names, &exprs, &tag, &prefix, limit)
    })))
}

/// `GET /tags/autoComplete/tags?expr=…&tagPrefix=…&limit=…`.
pub async fn complete_tags_get(
    State(ctx): State<Arc<ApiContext>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<String>>, GraphiteError> {
    complete_tags(ctx, fields(query.as_deref(), b"")).await
}

/// `POST /tags/autoComplete/tags` (form body).
pub async fn complete_tags_post(
    State(ctx): State<Arc<ApiContext>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Vec<String>>, GraphiteError> {
    complete_tags(ctx, fields(query.as_deref(), &body)).await
}

/// `GET /tags/autoComplete/values?tag=…&expr=…&valuePrefix=…&limit=…`.
pub async fn complete_values_get(
    State(ctx): State<Arc<ApiContext>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<String>>, GraphiteError> {
    complete_values(ctx, fields(query.as_deref(), b"")).await
}

/// `POST /tags/autoComplete/values` (form body).
pub async fn complete_values_post(
    State(ctx): State<Arc<ApiContext>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Vec<String>>, GraphiteError> {
    complete_values(ctx, fields(query.as_deref(), &body)).await
}

/// `GET /version`: the graphite-web version whose API this follows (Grafana picks its
/// feature set from it).
pub async fn version() -> &'static str {
    "1.1.8"
}
