//! `/kv/...` routes of the local API: the replicated KV store over HTTP.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use opsbro_api::kv as api;
use opsbro_kv::wire::WriteOp;

use crate::context::{ApiContext, ApiError};
use crate::kv::KvError;

/// Longest blocking read.
const MAX_WAIT: Duration = Duration::from_secs(600);

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        ApiError::new(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.message,
        )
    }
}

/// Query parameters of the KV routes.
#[derive(Debug, Default, serde::Deserialize)]
pub struct KvQuery {
    raw: Option<String>,
    index: Option<u64>,
    wait: Option<String>,
    cas: Option<u64>,
    ttl: Option<String>,
    prefix: Option<String>,
    locate: Option<String>,
}

fn duration(name: &str, text: &str) -> Result<Duration, ApiError> {
    opsbro_config::parse_duration(&serde_yaml::Value::String(text.to_owned()))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{name}: {e}")))
}

fn check_key(key: &str) -> Result<(), ApiError> {
    opsbro_kv::validate_key(key).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad key `{}`: {e}", key.escape_debug()),
        )
    })
}

fn entry_view(key: String, e: &opsbro_kv::Entry) -> api::Entry {
    api::Entry {
        key,
        value: base64::engine::general_purpose::STANDARD.encode(&e.value),
        modify_index: e.index,
        create_index: e.create_index,
        expires_ms: (e.expires_ms > 0).then_some(e.expires_ms),
    }
}

/// `GET /kv/?prefix=`.
pub async fn list(
    State(ctx): State<Arc<ApiContext>>,
    Query(q): Query<KvQuery>,
) -> Result<Json<Vec<api::Entry>>, ApiError> {
    let prefix = q.prefix.unwrap_or_default();
    let entries = ctx.kv.list(&prefix).await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|(k, e)| entry_view(k, &e))
            .collect(),
    ))
}

/// `GET /kv/{key}`.
pub async fn get(
    State(ctx): State<Arc<ApiContext>>,
    Path(key): Path<String>,
    Query(q): Query<KvQuery>,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    if q.locate.is_some() {
        let owners = ctx
            .kv
            .locate(&key)
            .into_iter()
            .map(|o| api::Owner {
                uuid: o.uuid,
                name: o.name,
                addr: o.addr,
            })
            .collect();
        return Ok(Json(api::Location { key, owners }).into_response());
    }
    let entry = match (q.index, q.wait.as_deref()) {
        (Some(index), wait) => {
            let wait = match wait {
                Some(w) => duration("wait", w)?.min(MAX_WAIT),
                None => Duration::from_secs(300),
            };
            ctx.kv.wait(&key, index, wait).await?
        }
        (None, Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "wait needs index (the modify_index to wait past)",
            ));
        }
        (None, None) => ctx.kv.get(&key).await?,
    };
    let Some(entry) = entry else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no key `{}`", key.escape_debug()),
        ));
    };
    if q.raw.is_some() {
        return Ok((
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (
                    header::HeaderName::from_static("x-opsbro-index"),
                    entry.index.to_string(),
                ),
            ],
            entry.value,
        )
            .into_response());
    }
    Ok(Json(entry_view(key, &entry)).into_response())
}

/// `PUT /kv/{key}`.
pub async fn put(
    State(ctx): State<Arc<ApiContext>>,
    Path(key): Path<String>,
    Query(q): Query<KvQuery>,
    body: Bytes,
) -> Result<Json<api::Written>, ApiError> {
    check_key(&key)?;
    if body.len() > opsbro_kv::MAX_VALUE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the value is {} bytes; the limit is {} KiB",
                body.len(),
                opsbro_kv::MAX_VALUE_BYTES / 1024
            ),
        ));
    }
    let ttl_ms = match q.ttl.as_deref() {
        Some(t) => {
            let d = duration("ttl", t)?;
            if d.is_zero() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "ttl must be more than 0",
                ));
            }
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            if ms > opsbro_kv::MAX_TTL_MS {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("ttl `{t}` is over the longest allowed, 365d"),
                ));
            }
            ms
        }
        None => 0,
    };
    let modify_index = ctx
        .kv
        .write(
            &key,
            WriteOp::Put {
                value: body.to_vec(),
                cas: q.cas,
                ttl_ms,
            },
        )
        .await?;
    Ok(Json(api::Written {
        key,
        modify_index,
        deleted: false,
    }))
}

/// `DELETE /kv/{key}`.
pub async fn delete(
    State(ctx): State<Arc<ApiContext>>,
    Path(key): Path<String>,
    Query(q): Query<KvQuery>,
) -> Result<Json<api::Written>, ApiError> {
    check_key(&key)?;
    let modify_index = ctx.kv.write(&key, WriteOp::Delete { cas: q.cas }).await?;
    Ok(Json(api::Written {
        key,
        modify_index,
        deleted: true,
    }))
}
