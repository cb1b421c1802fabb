//! `POST /executors/exec`, `GET /executors/state`, `GET /executors/history`: signed remote
//! execution from this node (see [`crate::executor`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use opsbro_api::executors::{ExecRequest, ExecutorInfo, HistoryEntry};

use super::{ApiContext, ApiError};
use crate::executor::ExecError;

/// How long a request the agent signs itself stays valid (the targets must receive it by then;
/// they get it within milliseconds).
pub const LIFETIME_MS: u64 = 60_000;
/// A command's timeout when none is given.
pub const DEFAULT_TIMEOUT_SECS: u32 = 60;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// The signed bytes of an API request: as given, or signed here with the agent's key.
fn signed_request(ctx: &ApiContext, request: ExecRequest) -> Result<Vec<u8>, ApiError> {
    if let Some(signed) = request.signed {
        if request.group.is_some() || request.command.is_some() || request.node.is_some() {
            return Err(bad(
                "give either `signed` (a request the CLI signed) or `group` and `command`, not both",
            ));
        }
        return base64::engine::general_purpose::STANDARD
            .decode(signed.trim())
            .map_err(|e| bad(format!("`signed` is not base64: {e}")));
    }
    let group = request
        .group
        .filter(|g| !g.is_empty())
        .ok_or_else(|| bad("`group` is required (`*` for every node)"))?;
    if group != "*" {
        opsbro_types::names::group(&group).map_err(|e| bad(format!("group `{group}`: {}", e.0)))?;
    }
    let command = request
        .command
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| bad("`command` is required"))?;
    if command.len() > opsbro_exec::MAX_COMMAND {
        return Err(bad(format!(
            "the command is longer than {} bytes",
            opsbro_exec::MAX_COMMAND
        )));
    }
    let timeout_secs = request.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(1..=opsbro_exec::MAX_TIMEOUT_SECS).contains(&timeout_secs) {
        return Err(bad(format!(
            "timeout_secs {timeout_secs} is outside 1..{}",
            opsbro_exec::MAX_TIMEOUT_SECS
        )));
    }
    let requester = request
        .requester
        .filter(|r| !r.is_empty() && r.len() <= 255)
        .unwrap_or_else(|| ctx.executor.name().to_owned());
    let now = crate::host::unix_ms();
    let request = opsbro_exec::Request {
        id: opsbro_exec::new_id()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?,
        group,
        node: request.node.filter(|n| !n.is_empty()),
        command,
        timeout_secs,
        issued_at_ms: now,
        expires_at_ms: now + LIFETIME_MS,
        requester,
    };
    ctx.executor.sign_with_own_key(&request).map_err(bad)
}

/// `POST /executors/exec`: send the request to its targets and stream the answer lines
/// (NDJSON: `request`, then `started`/`result` lines as they come, `done` last).
pub async fn exec(
    State(ctx): State<Arc<ApiContext>>,
    body: Result<Json<ExecRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| bad(e.body_text()))?;
    let signed = signed_request(&ctx, request)?;
    let lines = ctx.executor.exec(signed).map_err(|e| match e {
        ExecError::Invalid(m) => bad(m),
        ExecError::NoTarget(m) => ApiError::new(StatusCode::NOT_FOUND, m),
    })?;
    super::context::ndjson(lines)
}

/// `GET /executors/state`.
pub async fn state(State(ctx): State<Arc<ApiContext>>) -> Json<ExecutorInfo> {
    Json(ctx.executor.info())
}

/// `GET /executors/history?limit=N`.
pub async fn history(
    State(ctx): State<Arc<ApiContext>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let limit = match q.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| bad(format!("limit `{l}` is not a number")))?,
        None => 100,
    };
    Ok(Json(ctx.executor.history(limit)))
}
