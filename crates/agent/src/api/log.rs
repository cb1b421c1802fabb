//! `GET /agent/log/follow` (`opsbro agent log follow`): the agent's log lines as NDJSON, from
//! the process-wide stream of [`crate::logstream`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use tokio::sync::broadcast;
use tracing::Level;

use super::{ApiContext, ApiError};
use crate::logstream::{ndjson, skipped, subscribe};

/// While nothing is logged, a blank line this often: a follower that went away is noticed when
/// the write fails.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// `?level=`.
#[derive(Debug, serde::Deserialize)]
pub struct FollowQuery {
    /// Least severe level shown (default: everything the agent logs).
    pub level: Option<String>,
}

/// `GET /agent/log/follow`: stream the log lines until the client goes away or the agent stops.
pub async fn follow(
    State(ctx): State<Arc<ApiContext>>,
    Query(query): Query<FollowQuery>,
) -> Result<Response, ApiError> {
    let wanted = match query.level {
        None => Level::TRACE,
        Some(text) => opsbro_config::check_log_level(text)
            .ok()
            .and_then(|l| l.parse::<Level>().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "level must be one of trace, debug, info, warn, error",
                )
            })?,
    };
    let lines = subscribe();
    let stop = ctx.shutdown.clone();
    let stream = futures_util::stream::unfold((lines, stop), move |(mut lines, stop)| async move {
        let chunk = loop {
            let received = tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(KEEPALIVE) => break b"\n".to_vec(),
                r = lines.recv() => r,
            };
            match received {
                // Lower levels are the more severe ones (ERROR < WARN < ... < TRACE).
                Ok(logged) if logged.level <= wanted => break ndjson(&logged.line),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => break ndjson(&skipped(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        };
        Some((Ok::<_, Infallible>(chunk), (lines, stop)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
