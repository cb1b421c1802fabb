//! graphite-web routes of the local API: `/render`, `/metrics/find` and `/metrics/index.json`,
//! enough for Grafana's Graphite data source (which sends GET query strings or POST forms with
//! repeated `target` fields).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use opsbro_api::metrics::{FindNode, RenderSeries};
use opsbro_metrics::render::{Range, RenderError, parse_time};

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

async fn render(
    ctx: Arc<ApiContext>,
    fields: Vec<(String, String)>,
) -> Result<Json<Vec<RenderSeries>>, ApiError> {
    let targets: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "target" || k == "target[]")
        .map(|(_, v)| v.clone())
        .filter(|t| !t.trim().is_empty())
        .collect();
    if targets.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "give at least one target, e.g. /render?target=stats.counters.*.count&from=-1h",
        ));
    }
    if let Some(format) = field(&fields, "format")
        && format != "json"
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("format `{format}` is not supported: use format=json"),
        ));
    }
    let now = crate::host::unix_ms() / 1000;
    let from = parse_time(field(&fields, "from").unwrap_or("-24h"), now)?;
    let until = parse_time(field(&fields, "until").unwrap_or("now"), now)?;
    if from > until {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "from is later than until",
        ));
    }
    let max_points = match field(&fields, "maxDataPoints") {
        None => None,
        Some(m) => Some(m.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("maxDataPoints `{m}` is not a number"),
            )
        })?),
    };
    let metrics = ctx.metrics.clone();
    let series =
        tokio::task::spawn_blocking(move || metrics.render(&targets, Range { from, until, now }))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(
        series
            .into_iter()
            .map(|mut s| {
                if let Some(max) = max_points {
                    s.consolidate(max);
                }
                RenderSeries {
                    tags: BTreeMap::from([("name".to_owned(), s.name.clone())]),
                    datapoints: s.datapoints().collect(),
                    target: s.name,
                }
            })
            .collect(),
    ))
}

/// `GET /render`.
pub async fn render_get(
    State(ctx): State<Arc<ApiContext>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<RenderSeries>>, ApiError> {
    render(ctx, fields(query.as_deref(), b"")).await
}

/// `POST /render` (form body).
pub async fn render_post(
    State(ctx): State<Arc<ApiContext>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Vec<RenderSeries>>, ApiError> {
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
