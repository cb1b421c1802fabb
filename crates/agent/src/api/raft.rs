//! `GET /raft/state`, `/locks[/{name}]` (`GET`, `PUT` take or renew, `DELETE` release),
//! `POST /locks-hold/{name}` (hold while the connection is open) and `GET /elections`: see
//! [`crate::raft`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use opsbro_api::raft::{Granted, LockInfo, RaftState};
use opsbro_raft::Outcome;

use super::{ApiContext, ApiError};
use crate::raft::{DEFAULT_TTL, SubmitError};

/// Longest TTL a lock may ask for.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest TTL (renewals every third of it must reach a majority).
const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest wait of a hold.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn unavailable(e: SubmitError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// A duration parameter (`15s`, `2m`, `500ms`, `30`), `default` when absent.
fn duration(
    q: &HashMap<String, String>,
    key: &str,
    default: Duration,
) -> Result<Duration, ApiError> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => opsbro_config::parse_duration(&serde_yaml::Value::String(v.clone()))
            .map_err(|e| bad(format!("`{key}={v}`: {e}"))),
    }
}

fn lock_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim_matches('/');
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(bad(format!(
            "`{name}` is not a lock name (1 to 256 characters, no control characters)"
        )));
    }
    Ok(name.to_owned())
}

fn ttl_of(q: &HashMap<String, String>) -> Result<Duration, ApiError> {
    let ttl = duration(q, "ttl", DEFAULT_TTL)?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(bad(format!(
            "ttl {ttl:?} is outside {MIN_TTL:?}..{}h",
            MAX_TTL.as_secs() / 3600
        )));
    }
    Ok(ttl)
}

/// `GET /raft/state`.
pub async fn state(State(ctx): State<Arc<ApiContext>>) -> Json<RaftState> {
    Json(ctx.raft.state())
}

/// `GET /locks`.
pub async fn locks(State(ctx): State<Arc<ApiContext>>) -> Json<Vec<LockInfo>> {
    Json(ctx.raft.state().locks)
}

/// `GET /locks/{name}`.
pub async fn lock(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
) -> Result<Json<LockInfo>, ApiError> {
    let name = lock_name(&name)?;
    ctx.raft
        .lock(&name)
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("`{name}` is not held")))
}

/// `PUT /locks/{name}?ttl=15s&session=S`: take it (a new session when none is given) or renew
/// it (the session that holds it asks again).
pub async fn take(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let name = lock_name(&name)?;
    let ttl = ttl_of(&q)?;
    let session = match q.get("session") {
        Some(s) if !s.is_empty() && s.len() <= 128 => s.clone(),
        Some(s) => return Err(bad(format!("`session={s}` must be 1 to 128 characters"))),
        None => format!("{:016x}", crate::raft::request_id()),
    };
    match ctx
        .raft
        .acquire(&name, &session, ttl)
        .await
        .map_err(unavailable)?
    {
        Outcome::Granted { token } => Ok(Json(Granted {
            name,
            token,
            session,
            ttl_ms: ttl.as_millis() as u64,
        })
        .into_response()),
        Outcome::Held { holder, token } => {
            let info = ctx.raft.lock(&name).unwrap_or(LockInfo {
                name: name.clone(),
                node: holder.node.clone(),
                node_uuid: holder.node,
                session: holder.session,
                token,
                ttl_ms: 0,
            });
            Ok((StatusCode::CONFLICT, Json(info)).into_response())
        }
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        )),
    }
}

/// `DELETE /locks/{name}?token=N`.
pub async fn release(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = lock_name(&name)?;
    let token: u64 = q
        .get("token")
        .ok_or_else(|| bad("`token` is required (the fencing token of the holder)"))?
        .parse()
        .map_err(|_| bad("`token` must be a number"))?;
    match ctx.raft.release(&name, token).await.map_err(unavailable)? {
        Outcome::Released(_) => Ok(Json(serde_json::json!({"released": name, "token": token}))),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("token {token} does not hold `{name}`"),
        )),
    }
}

/// `POST /locks-hold/{name}?ttl=15s&wait=30s`: NDJSON lines (waiting, acquired, lost or
/// failed); the lock is held until the connection closes.
pub async fn hold(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let name = lock_name(&name)?;
    let ttl = ttl_of(&q)?;
    let wait = duration(&q, "wait", Duration::ZERO)?;
    if wait > MAX_WAIT {
        return Err(bad(format!("wait {wait:?} is longer than a day")));
    }
    let lines = ctx.raft.hold(name, ttl, wait);
    super::context::ndjson(lines)
}
