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

use crate::api::context::{ApiContext, ApiError};
use crate::kv::KvError;

/// Longest blocking read (KV and catalog).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(600);

/// The HTTP status of a KV failure: the one place where KV errors meet HTTP.
fn status(e: &KvError) -> StatusCode {
    match e {
        KvError::InvalidKey(_) | KvError::TtlTooLong => StatusCode::BAD_REQUEST,
        KvError::CasFailed { .. } | KvError::NotApplied { .. } | KvError::Overtaken => {
            StatusCode::CONFLICT
        }
        KvError::ListTooBig { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        KvError::Storage(_) | KvError::Misaddressed => StatusCode::INTERNAL_SERVER_ERROR,
        KvError::NotEnoughReplicas { .. }
        | KvError::NoOwner
        | KvError::Unavailable(_)
        | KvError::CasPaused { .. }
        | KvError::LateWrite
        | KvError::TooLate
        | KvError::IncompleteList { .. } => StatusCode::SERVICE_UNAVAILABLE,
        // Another node's refusal this one does not know: its code, when it is an error code.
        KvError::Refused { code, .. } => StatusCode::from_u16(*code)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        ApiError::new(status(&e), e.to_string())
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

/// A duration query parameter (`wait=30s`), or a 400 naming it.
pub(crate) fn duration(name: &str, text: &str) -> Result<Duration, ApiError> {
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

/// Largest export page answered (keys and values before base64): well under the CLI's
/// patience and memory, several pages of the nodes' 1 MiB listings.
const EXPORT_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Query parameters of `GET /kv-backup/export`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ExportQuery {
    prefix: Option<String>,
    after: Option<String>,
}

/// Query parameters of `POST /kv-backup/import`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ImportQuery {
    line: Option<u64>,
}

/// An entry as an export line.
pub fn export_entry(key: String, e: &opsbro_kv::Entry) -> api::ExportEntry {
    api::ExportEntry {
        key,
        value: base64::engine::general_purpose::STANDARD.encode(&e.value),
        modify_index: e.index,
        create_index: e.create_index,
        deleted: e.deleted,
        expires_ms: (e.expires_ms > 0).then_some(e.expires_ms),
    }
}

/// One line of an export body (no newline) as an entry to import, checked as a replica checks
/// what it is sent (key rules, value size, versions not ahead of this node's clock at
/// `now_ms`); the error says what is wrong with the line.
pub fn import_line(raw: &[u8], now_ms: u64) -> Result<(String, opsbro_kv::Entry), String> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8 text".to_owned())?;
    let e = match api::ExportLine::parse(text.trim())? {
        api::ExportLine::Entry(e) => e,
        api::ExportLine::Header(_) => {
            return Err(
                "a header line in the middle of the file (two exports one after the other? import them one at a time)"
                    .into(),
            );
        }
        api::ExportLine::Footer(_) => {
            return Err("an end line in the middle of the file".into());
        }
    };
    opsbro_kv::validate_key(&e.key)
        .map_err(|why| format!("bad key `{}`: {why}", e.key.escape_debug()))?;
    let value = base64::engine::general_purpose::STANDARD
        .decode(&e.value)
        .map_err(|why| format!("value is not base64: {why}"))?;
    if value.len() > opsbro_kv::MAX_VALUE_BYTES {
        return Err(format!(
            "the value is {} bytes; the limit is {} KiB",
            value.len(),
            opsbro_kv::MAX_VALUE_BYTES / 1024
        ));
    }
    if e.deleted && !value.is_empty() {
        return Err("a deleted entry (tombstone) with a value".into());
    }
    if e.modify_index == 0 {
        return Err("modify_index is 0".into());
    }
    let entry = opsbro_kv::Entry {
        value,
        index: e.modify_index,
        create_index: e.create_index,
        deleted: e.deleted,
        expires_ms: e.expires_ms.unwrap_or(0),
    };
    if entry.create_index > entry.index {
        return Err("create_index is after modify_index".into());
    }
    if entry.index > opsbro_kv::Hlc::latest_acceptable(now_ms) {
        return Err(format!(
            "modify_index is a stamp more than {} s ahead of this node's clock",
            opsbro_kv::MAX_CLOCK_AHEAD_MS / 1000
        ));
    }
    if !entry.is_plausible(now_ms) {
        return Err("expires_ms is more than a year ahead".into());
    }
    Ok((e.key, entry))
}

/// `GET /kv-backup/export`: one page of the cluster's entries with their versions.
pub async fn export(
    State(ctx): State<Arc<ApiContext>>,
    Query(q): Query<ExportQuery>,
) -> Result<Json<api::ExportPage>, ApiError> {
    let prefix = q.prefix.unwrap_or_default();
    let after = q.after.unwrap_or_default();
    let (entries, next) = ctx
        .kv
        .export_page(&prefix, &after, EXPORT_PAGE_BYTES)
        .await
        .map_err(|e| match e {
            // Said as a backup: the CLI adds that no file was written.
            KvError::IncompleteList {
                silent,
                nodes,
                reasons,
            } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "incomplete export: {silent} of {nodes} nodes did not answer and some keys have no other copy ({reasons}); try again when they are back"
                ),
            ),
            other => other.into(),
        })?;
    Ok(Json(api::ExportPage {
        entries: entries
            .into_iter()
            .map(|(k, e)| export_entry(k, &e))
            .collect(),
        next,
    }))
}

/// `POST /kv-backup/import`: merge the body's entry lines by version; every bad line is
/// reported with its number (`?line=` is the number of the first) and the others imported.
pub async fn import(
    State(ctx): State<Arc<ApiContext>>,
    Query(q): Query<ImportQuery>,
    body: Bytes,
) -> Result<Json<api::ImportAnswer>, ApiError> {
    let first = q.line.unwrap_or(1).max(1);
    let now = crate::host::unix_ms();
    let mut answer = api::ImportAnswer::default();
    let mut lines = Vec::new();
    let mut entries = Vec::new();
    for (n, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line = first.saturating_add(n as u64);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match import_line(raw, now) {
            Ok(entry) => {
                lines.push(line);
                entries.push(entry);
            }
            Err(error) => answer.errors.push(api::LineError { line, error }),
        }
    }
    for (line, outcome) in lines.into_iter().zip(ctx.kv.import(entries).await) {
        match outcome {
            crate::kv::Imported::Stored => answer.imported += 1,
            crate::kv::Imported::Older => answer.skipped_older += 1,
            crate::kv::Imported::Failed(error) => {
                answer.errors.push(api::LineError { line, error })
            }
        }
    }
    answer.errors.sort_by_key(|e| e.line);
    Ok(Json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn line(e: &opsbro_kv::Entry, key: &str) -> String {
        api::ExportLine::Entry(export_entry(key.to_owned(), e)).to_line()
    }

    #[test]
    fn entries_round_trip_through_an_export_line() {
        let stamp = opsbro_kv::Hlc::default().stamp(NOW);
        let entries = [
            opsbro_kv::Entry {
                value: (0..=255).collect(),
                index: stamp,
                create_index: stamp - 5,
                deleted: false,
                expires_ms: 0,
            },
            opsbro_kv::Entry {
                value: Vec::new(),
                index: stamp + 1,
                create_index: stamp,
                deleted: true,
                expires_ms: 0,
            },
            opsbro_kv::Entry {
                value: "ttl ✓".as_bytes().to_vec(),
                index: stamp + 2,
                create_index: stamp + 2,
                deleted: false,
                expires_ms: NOW + 60_000,
            },
        ];
        for (i, e) in entries.iter().enumerate() {
            let key = format!("dir/ключ-{i}");
            let text = line(e, &key);
            assert_eq!(import_line(text.as_bytes(), NOW), Ok((key, e.clone())));
        }
    }

    #[test]
    fn bad_lines_are_refused_with_the_reason() {
        let stamp = NOW << 16;
        let ok = opsbro_kv::Entry {
            value: b"v".to_vec(),
            index: stamp,
            create_index: stamp,
            deleted: false,
            expires_ms: 0,
        };
        let err = |text: &str| import_line(text.as_bytes(), NOW).expect_err(text);
        assert!(err(&line(&ok, "a//b")).contains("bad key"));
        assert!(err(&line(&ok, "k").replace("\"dg==\"", "\"!!\"")).contains("base64"));
        let ahead = opsbro_kv::Entry {
            index: (NOW + 120_000) << 16,
            ..ok.clone()
        };
        assert!(err(&line(&ahead, "k")).contains("ahead of this node's clock"));
        let backwards = opsbro_kv::Entry {
            create_index: stamp + 1,
            ..ok.clone()
        };
        assert!(err(&line(&backwards, "k")).contains("create_index"));
        let forever = opsbro_kv::Entry {
            expires_ms: NOW + opsbro_kv::MAX_TTL_MS * 2,
            ..ok.clone()
        };
        assert!(err(&line(&forever, "k")).contains("year"));
        let ghost = opsbro_kv::Entry {
            deleted: true,
            ..ok.clone()
        };
        assert!(err(&line(&ghost, "k")).contains("tombstone"));
        assert!(
            err(r#"{"format":"opsbro-kv-export","version":1,"created_ms":0}"#).contains("header")
        );
        assert!(err(r#"{"end":"opsbro-kv-export","entries":3}"#).contains("end line"));
        assert_eq!(
            import_line(&[b'{', 0xff, b'}'], NOW),
            Err("not UTF-8 text".to_owned())
        );
        assert!(err("{\"key\":").contains("not JSON"));
    }
}
