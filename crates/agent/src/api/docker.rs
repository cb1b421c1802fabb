//! `/docker/...`: the host's Docker daemon (the `docker-host` pack's socket), asked when the
//! route is called, and `/docker/stats` from the `docker` collector's latest run. No daemon is
//! a 503 that says why (no socket, refused, not answering in time), never a hang.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use opsbro_api::docker::{ContainerStats, ContainerView, DaemonSummary, ImageView, StatsAnswer};
use opsbro_apps::docker::{self as d, Engine, EngineError};
use serde_json::Value;

use crate::api::{ApiContext, ApiError};

/// The daemon of the `docker-host` pack's parameters, and the time a route may take.
fn engine(ctx: &ApiContext) -> Result<(Engine, opsbro_apps::Params), ApiError> {
    let params = crate::docker::parameters(&ctx.objects);
    let socket =
        d::socket_path(&params).map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok((Engine::new(socket), params))
}

fn unavailable(engine: &Engine, e: &EngineError) -> ApiError {
    match e {
        EngineError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m.clone()),
        EngineError::Unreachable(m) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no Docker daemon on this host: {m}"),
        ),
        other => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the Docker daemon at {} failed: {other}",
                engine.socket().display()
            ),
        ),
    }
}

/// Run `work` against the daemon within the pack's `timeout`.
async fn ask<T>(
    ctx: &ApiContext,
    work: impl AsyncFnOnce(&Engine, &opsbro_apps::Params) -> Result<T, EngineError>,
) -> Result<T, ApiError> {
    let (engine, params) = engine(ctx)?;
    let timeout = opsbro_apps::timeout_of(&params);
    match tokio::time::timeout(timeout, work(&engine, &params)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(&engine, &e)),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the Docker daemon at {} did not answer within {:.1} s",
                engine.socket().display(),
                timeout.as_secs_f64()
            ),
        )),
    }
}

/// `GET /docker`.
pub async fn summary(State(ctx): State<Arc<ApiContext>>) -> Result<Json<DaemonSummary>, ApiError> {
    let mut summary = ask(&ctx, async |engine, _| d::summary(engine).await).await?;
    summary.events = ctx.docker_events.info();
    Ok(Json(summary))
}

/// `GET /docker/containers`.
pub async fn containers(
    State(ctx): State<Arc<ApiContext>>,
) -> Result<Json<Vec<ContainerView>>, ApiError> {
    ask(&ctx, async |engine, params| {
        let (max, concurrency) = d::bounds(params);
        // Inspects that are late leave their container described by the listing alone.
        let deadline = tokio::time::Instant::now() + opsbro_apps::timeout_of(params).mul_f64(0.8);
        d::containers(engine, max, concurrency, deadline).await
    })
    .await
    .map(Json)
}

/// `GET /docker/containers/{id}`.
pub async fn container(
    State(ctx): State<Arc<ApiContext>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    ask(&ctx, async |engine, _| {
        d::inspect(engine, "containers", &id).await
    })
    .await
    .map(Json)
}

/// `GET /docker/images`.
pub async fn images(State(ctx): State<Arc<ApiContext>>) -> Result<Json<Vec<ImageView>>, ApiError> {
    ask(&ctx, async |engine, _| d::images(engine).await)
        .await
        .map(Json)
}

/// `GET /docker/images/{id}`.
pub async fn image(
    State(ctx): State<Arc<ApiContext>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    ask(&ctx, async |engine, _| {
        d::inspect(engine, "images", &id).await
    })
    .await
    .map(Json)
}

/// `GET /docker/stats`: the `docker` collector's latest measure.
pub async fn stats(State(ctx): State<Arc<ApiContext>>) -> Result<Json<StatsAnswer>, ApiError> {
    let Some(c) = ctx.collected.all().remove("docker") else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the docker collector has not run yet",
        ));
    };
    if c.state != "ok" {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no Docker statistics: the docker collector is {}: {}",
                c.state,
                c.message.unwrap_or_default()
            ),
        ));
    }
    let containers = c
        .data
        .get("containers")
        .and_then(Value::as_object)
        .map(|all| {
            all.values()
                // Running containers are the measured ones.
                .filter(|v| v.get("mem_limit").is_some())
                .filter_map(|v| serde_json::from_value::<ContainerStats>(v.clone()).ok())
                .map(|s| (s.name.clone(), s))
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(StatsAnswer {
        time_ms: c.last_run_ms,
        containers,
    }))
}
