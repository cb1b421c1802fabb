//! The local HTTP API (axum): routes, bearer-token check, body limit and JSON errors.
//!
//! Every answer, errors included, is JSON (`opsbro_api::ErrorBody` for errors). When a token is
//! configured every request must carry it, whatever the route.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use opsbro_api::gossip as g;
use opsbro_api::{AgentInfo, GossipInfo, MAX_BODY_BYTES, StopAnswer, routes};
use opsbro_types::AgentState;

use crate::gossip::{GossipStopped, count_by_state, find_member};
use crate::host;

pub mod context;
pub mod docker;
pub mod executors;
pub mod kv_store;
pub mod log;
pub mod packs;
pub mod prometheus;
pub mod raft;
pub mod services;
pub mod snapshot;
pub mod timeseries;
pub mod ui;
pub mod zones;

pub use context::{ApiContext, ApiError};

/// Every route of the API with its handlers. [`opsbro_api::ROUTES`] documents the same paths and
/// methods for `GET /api` (a unit test compares the paths; the whole-agent tests call each
/// documented method).
fn routes() -> Vec<(&'static str, MethodRouter<Arc<ApiContext>>)> {
    use opsbro_api::{collectors, detectors, evaluator, generators, kv, metrics, monitoring};
    vec![
        (routes::INDEX, get(api_index)),
        (routes::API, get(api_index)),
        (opsbro_api::ui::ROOT, get(ui::redirect)),
        (opsbro_api::ui::INDEX, get(ui::index)),
        (opsbro_api::ui::ASSET, get(ui::asset)),
        (opsbro_api::ui::EVENTS, get(ui::events)),
        (routes::AGENT_STATE, get(agent_state)),
        (
            routes::AGENT_AUTH,
            get(|State(ctx): State<Arc<ApiContext>>| async move {
                Json(opsbro_api::AuthInfo {
                    token_file: ctx.access.token_file.clone(),
                    anonymous_reads: ctx.access.anonymous_reads,
                })
            }),
        ),
        (routes::AGENT_INFO, get(agent_info)),
        (routes::AGENT_LOG_FOLLOW, get(log::follow)),
        (routes::AGENT_STOP, post(agent_stop)),
        (
            routes::AGENT_RELOAD,
            post(
                |State(ctx): State<Arc<ApiContext>>| async move { Json(ctx.reloader.reload().await) },
            ),
        ),
        (
            routes::AGENT_GROUP,
            axum::routing::put(group_add).delete(group_remove),
        ),
        (g::MEMBERS, get(members)),
        (g::HISTORY, get(history)),
        (g::JOIN, post(join)),
        (g::LEAVE, post(leave)),
        (g::LEAVE_NODE, post(leave_node)),
        (g::PING, get(ping)),
        (g::EVENTS, get(events).post(add_event)),
        (g::KEYRING, get(keyring).post(change_keyring)),
        (g::DETECT, post(detect)),
        (g::ZONES, get(zones::list)),
        (g::ZONE, axum::routing::put(zones::change)),
        (g::ZONE_KEY, post(zones::key)),
        (opsbro_api::raft::STATE, get(raft::state)),
        (opsbro_api::raft::LOCKS, get(raft::locks)),
        (
            opsbro_api::raft::LOCK,
            get(raft::lock).put(raft::take).delete(raft::release),
        ),
        (opsbro_api::raft::HOLD, post(raft::hold)),
        (
            opsbro_api::raft::ELECTIONS,
            get(|State(ctx): State<Arc<ApiContext>>| async move { Json(ctx.elections.list()) }),
        ),
        (evaluator::EVAL, post(evaluate)),
        (evaluator::LIST, get(functions)),
        (detectors::STATE, get(detectors_state)),
        (detectors::RUN, post(detectors_run)),
        (
            detectors::HISTORY,
            get(|State(ctx): State<Arc<ApiContext>>| async move { Json(ctx.group_history.list()) }),
        ),
        (detectors::PACKS, get(crate::api::packs::packs)),
        (
            opsbro_api::dashboards::ALL,
            get(crate::api::packs::dashboards),
        ),
        (
            opsbro_api::dashboards::ONE,
            get(crate::api::packs::dashboard),
        ),
        (
            opsbro_api::dashboards::TUTORIALS,
            get(crate::api::packs::tutorials),
        ),
        (collectors::ALL, get(collectors_all)),
        (collectors::ONE, get(collectors_one)),
        (collectors::RUN, post(collectors_run)),
        (
            collectors::HISTORY,
            get(|State(ctx): State<Arc<ApiContext>>| async move { Json(ctx.collected.history()) }),
        ),
        (monitoring::STATE, get(monitoring_self)),
        (monitoring::STATE_NODE, get(monitoring_node)),
        (monitoring::HISTORY, get(monitoring_history)),
        (monitoring::HANDLERS, get(monitoring_handlers)),
        (monitoring::TTL, axum::routing::put(services::ttl)),
        (
            opsbro_api::compliance::STATE,
            get(|State(ctx): State<Arc<ApiContext>>| async move { Json(ctx.compliance.views()) }),
        ),
        (
            opsbro_api::compliance::HISTORY,
            get(
                |State(ctx): State<Arc<ApiContext>>,
                 axum::extract::Query(q): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| async move {
                    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
                    Json(ctx.compliance.history(limit))
                },
            ),
        ),
        (opsbro_api::compliance::LAUNCH, post(compliance_launch)),
        (opsbro_api::executors::EXEC, post(executors::exec)),
        (opsbro_api::executors::STATE, get(executors::state)),
        (opsbro_api::executors::HISTORY, get(executors::history)),
        (opsbro_api::catalog::SERVICES, get(services::services)),
        (opsbro_api::catalog::SERVICE, get(services::service)),
        (opsbro_api::catalog::LOCAL, get(services::local)),
        (opsbro_api::catalog::REGISTER, post(services::register)),
        (
            opsbro_api::catalog::ONE,
            axum::routing::delete(services::deregister),
        ),
        (
            opsbro_api::catalog::MAINTENANCE,
            axum::routing::put(services::set_service_maintenance),
        ),
        (
            opsbro_api::catalog::AGENT_MAINTENANCE,
            get(services::node_maintenance).put(services::set_node_maintenance),
        ),
        (kv::ROOT, get(crate::api::kv_store::list)),
        (
            kv::KEY,
            get(crate::api::kv_store::get)
                .put(crate::api::kv_store::put)
                .delete(crate::api::kv_store::delete),
        ),
        (kv::EXPORT, get(crate::api::kv_store::export)),
        (kv::IMPORT, post(crate::api::kv_store::import)),
        (routes::AGENT_SNAPSHOT, get(snapshot::serve)),
        (
            metrics::RENDER,
            get(crate::api::timeseries::render_get).post(crate::api::timeseries::render_post),
        ),
        (
            metrics::FIND,
            get(crate::api::timeseries::find_get).post(crate::api::timeseries::find_post),
        ),
        (metrics::INDEX, get(crate::api::timeseries::index)),
        (metrics::FUNCTIONS, get(crate::api::timeseries::functions)),
        (metrics::TAGS, get(crate::api::timeseries::tag_list)),
        (
            metrics::TAGS_COMPLETE_TAGS,
            get(crate::api::timeseries::complete_tags_get)
                .post(crate::api::timeseries::complete_tags_post),
        ),
        (
            metrics::TAGS_COMPLETE_VALUES,
            get(crate::api::timeseries::complete_values_get)
                .post(crate::api::timeseries::complete_values_post),
        ),
        (metrics::VERSION, get(crate::api::timeseries::version)),
        (routes::METRICS, get(prometheus)),
        (
            generators::STATE,
            get(|State(ctx): State<Arc<ApiContext>>| async move { Json(ctx.generators.views()) }),
        ),
        (
            generators::HISTORY,
            get(|State(ctx): State<Arc<ApiContext>>| async move { Json(ctx.generators.history()) }),
        ),
        (opsbro_api::docker::SUMMARY, get(docker::summary)),
        (opsbro_api::docker::CONTAINERS, get(docker::containers)),
        (opsbro_api::docker::CONTAINER, get(docker::container)),
        (opsbro_api::docker::IMAGES, get(docker::images)),
        (opsbro_api::docker::IMAGE, get(docker::image)),
        (opsbro_api::docker::STATS, get(docker::stats)),
    ]
}

/// The API router with its middleware.
pub fn router(ctx: Arc<ApiContext>) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(limit_body))
        .layer(middleware::from_fn_with_state(ctx.clone(), time_kv))
        .layer(middleware::from_fn_with_state(ctx.clone(), require_token))
        .with_state(ctx)
}

/// `GET /metrics`: OpenMetrics text when the scraper asks for it (Prometheus does), the classic
/// Prometheus text format otherwise.
async fn prometheus(
    State(ctx): State<Arc<ApiContext>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    match crate::api::prometheus::render(&ctx).await {
        Ok(text) if openmetrics => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::api::prometheus::to_prometheus_text(&text),
        )
            .into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Time local KV requests for `/metrics` (blocking reads wait on purpose: not timed).
async fn time_kv(State(ctx): State<Arc<ApiContext>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let blocking = request.uri().query().is_some_and(|q| q.contains("wait="));
    if !path.starts_with("/kv/") || blocking {
        return next.run(request).await;
    }
    let op = match *request.method() {
        Method::GET if path == "/kv/" => "list",
        Method::GET => "get",
        Method::PUT => "put",
        Method::DELETE => "delete",
        _ => return next.run(request).await,
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    ctx.telemetry
        .kv_duration
        .get_or_create(&vec![("op", op.to_owned())])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `POST /compliance/launch/{name}`: run an object now, answer its view after the run.
async fn compliance_launch(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
) -> Result<Json<opsbro_api::compliance::ComplianceView>, ApiError> {
    if ctx.compliance.find(&name).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no compliance object named `{name}` on this node"),
        ));
    }
    ctx.compliance.launch(&name).await.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the compliance loop is not running (the agent is starting or stopping)",
        )
    })
}

/// `GET /` and `GET /api`: every route, and whether this agent wants the token for it.
async fn api_index(State(ctx): State<Arc<ApiContext>>) -> Json<Vec<opsbro_api::RouteInfo>> {
    Json(
        opsbro_api::ROUTES
            .iter()
            .map(|r| opsbro_api::RouteInfo {
                method: r.method.to_owned(),
                path: r.path.to_owned(),
                needs_token: ctx.access.needs_token(r.method, r.path),
                description: r.description.to_owned(),
            })
            .collect(),
    )
}

async fn agent_state(State(ctx): State<Arc<ApiContext>>) -> Json<AgentState> {
    Json(ctx.status.agent_state())
}

impl From<GossipStopped> for ApiError {
    fn from(e: GossipStopped) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

async fn agent_info(State(ctx): State<Arc<ApiContext>>) -> Json<AgentInfo> {
    let uptime = ctx.started.elapsed();
    let members = ctx.gossip.members().await.unwrap_or_default();
    let groups = members
        .iter()
        .find(|m| m.is_self)
        .map(|m| m.groups.clone())
        .unwrap_or_else(|| ctx.groups.clone());
    let gossip = GossipInfo {
        members: count_by_state(&members),
        incarnation: members
            .iter()
            .find(|m| m.is_self)
            .map(|m| m.incarnation)
            .unwrap_or(0),
        encrypted: ctx.gossip.encrypted,
        security: if ctx.gossip.encrypted {
            opsbro_api::ClusterSecurity::Encrypted
        } else if ctx.addresses.bind.is_loopback() {
            opsbro_api::ClusterSecurity::LoopbackOnly
        } else {
            opsbro_api::ClusterSecurity::InsecurePlaintext
        },
        counters: ctx.gossip.counters.snapshot(),
    };
    Json(AgentInfo {
        name: ctx.name.clone(),
        display_name: ctx.display_name.clone(),
        uuid: ctx.uuid,
        version: opsbro_types::VERSION.to_owned(),
        state: ctx.status.agent_state(),
        zone: ctx.current_zone.borrow().clone(),
        is_proxy: ctx.is_proxy,
        groups,
        addresses: ctx.addresses.clone(),
        ports: ctx.ports,
        data_dir: ctx.data_dir.clone(),
        pid: std::process::id(),
        uptime_secs: uptime.as_secs(),
        process: host::process_stats(uptime),
        subsystems: ctx.status.subsystems(),
        gossip,
        checks: ctx.monitoring.checks().into_iter().fold(
            std::collections::BTreeMap::new(),
            |mut m, c| {
                *m.entry(c.state).or_insert(0) += 1;
                m
            },
        ),
        compliance: ctx.compliance.counts(),
        executor: ctx.executor.info(),
        kv: ctx.kv.info(),
        dns: dns_info(&ctx),
        metrics: ctx.metrics.info(),
        websocket: websocket_info(&ctx),
        logs: crate::logcount::LOG_COUNTS.snapshot(),
        hosting: crate::hosting::info(&ctx.hosting),
    })
}

/// The DNS server's counters now: `agent info` and `/metrics` read the same snapshot.
pub fn dns_info(ctx: &ApiContext) -> opsbro_api::DnsInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &ctx.dns.1;
    opsbro_api::DnsInfo {
        addr: ctx.dns.0,
        queries: c.queries.load(Relaxed),
        noerror: c.noerror.load(Relaxed),
        nxdomain: c.nxdomain.load(Relaxed),
        refused: c.refused.load(Relaxed),
        servfail: c.servfail.load(Relaxed),
        formerr: c.formerr.load(Relaxed),
        forwarded: c.forwarded.load(Relaxed),
        malformed: c.malformed.load(Relaxed),
        tcp_refused: c.tcp_refused.load(Relaxed),
    }
}

/// The websocket stream's counters now (shared by `agent info` and `/metrics`).
pub fn websocket_info(ctx: &ApiContext) -> opsbro_api::WebsocketInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let ws = &ctx.websocket;
    opsbro_api::WebsocketInfo {
        addr: ctx.websocket_addr,
        clients: ws.clients(),
        accepted: ws.accepted.load(Relaxed),
        sent: ws.sent.load(Relaxed),
        slow_dropped: ws.slow_dropped.load(Relaxed),
    }
}

async fn members(State(ctx): State<Arc<ApiContext>>) -> Result<Json<Vec<g::Member>>, ApiError> {
    Ok(Json(ctx.gossip.members().await?))
}

async fn history(
    State(ctx): State<Arc<ApiContext>>,
) -> Result<Json<Vec<g::HistoryItem>>, ApiError> {
    Ok(Json(ctx.gossip.history().await?))
}

async fn join(
    State(ctx): State<Arc<ApiContext>>,
    body: Result<Json<g::JoinRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<g::JoinAnswer>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let seed = opsbro_config::Seed::parse(&request.addr)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((seed.host.as_str(), seed.port))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot resolve {seed}: {e}"),
            )
        })?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, format!("{seed} has no address")))?;
    match ctx.gossip.join(addr).await? {
        Ok(members) => Ok(Json(g::JoinAnswer {
            joined: addr,
            members,
        })),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("joining {seed} failed: {e}"),
        )),
    }
}

async fn leave(State(ctx): State<Arc<ApiContext>>) -> Json<StopAnswer> {
    tracing::info!("leave requested through the API");
    ctx.shutdown.cancel();
    Json(StopAnswer {
        stopping: true,
        grace_period_secs: ctx.grace_period_secs,
    })
}

async fn resolve_node(ctx: &ApiContext, node: &str) -> Result<g::Member, ApiError> {
    let members = ctx.gossip.members().await?;
    find_member(&members, node).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no member named or with uuid `{node}`"),
        )
    })
}

async fn leave_node(
    State(ctx): State<Arc<ApiContext>>,
    Path(node): Path<String>,
) -> Result<Json<g::Member>, ApiError> {
    let member = resolve_node(&ctx, &node).await?;
    if member.is_self {
        ctx.shutdown.cancel();
        return Ok(Json(member));
    }
    ctx.gossip.force_leave(member.uuid).await?;
    let member = resolve_node(&ctx, &node).await?;
    Ok(Json(member))
}

async fn ping(
    State(ctx): State<Arc<ApiContext>>,
    Path(node): Path<String>,
) -> Result<Json<g::PingAnswer>, ApiError> {
    let member = resolve_node(&ctx, &node).await?;
    let rtt_ms = if member.is_self {
        Some(0)
    } else {
        ctx.gossip.ping(member.uuid).await?
    };
    Ok(Json(g::PingAnswer {
        member,
        reachable: rtt_ms.is_some(),
        rtt_ms,
    }))
}

async fn events(State(ctx): State<Arc<ApiContext>>) -> Result<Json<Vec<g::Event>>, ApiError> {
    let mut events = ctx.gossip.events().await?;
    // Internal events (keyring changes) are not user events and carry key material.
    events.retain(|e| !e.kind.starts_with('_'));
    Ok(Json(events))
}

async fn evaluate(
    State(ctx): State<Arc<ApiContext>>,
    body: Result<Json<opsbro_api::evaluator::EvalRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<opsbro_api::evaluator::EvalAnswer>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let evaluator = ctx.evaluator.clone();
    let data = ctx.collected.clone();
    // Library functions may read files or open a TCP connection (bounded): not on the runtime.
    let result = tokio::task::spawn_blocking(move || {
        evaluator.eval(&request.expr, &crate::collect::resolver(&data))
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("evaluation task failed: {e}"),
        )
    })?;
    match result {
        Ok(value) => Ok(Json(opsbro_api::evaluator::EvalAnswer { value })),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

async fn functions(
    State(ctx): State<Arc<ApiContext>>,
) -> Json<Vec<opsbro_api::evaluator::FunctionInfo>> {
    Json(
        ctx.evaluator
            .functions()
            .into_iter()
            .map(|d| opsbro_api::evaluator::FunctionInfo {
                name: d.name.to_owned(),
                prototype: d.prototype.to_owned(),
                doc: d.doc.to_owned(),
                group: d.group.to_owned(),
            })
            .collect(),
    )
}

async fn group_change(
    ctx: &ApiContext,
    group: &str,
    add: bool,
) -> Result<Json<Vec<String>>, ApiError> {
    opsbro_config::check_group(group).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let statics = ctx.detectors.change_static(group, add).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot save the groups: {e}"),
        )
    })?;
    Ok(Json(statics.into_iter().collect()))
}

async fn group_add(
    State(ctx): State<Arc<ApiContext>>,
    Path(group): Path<String>,
) -> Result<Json<Vec<String>>, ApiError> {
    group_change(&ctx, &group, true).await
}

async fn group_remove(
    State(ctx): State<Arc<ApiContext>>,
    Path(group): Path<String>,
) -> Result<Json<Vec<String>>, ApiError> {
    group_change(&ctx, &group, false).await
}

async fn monitoring_self(
    State(ctx): State<Arc<ApiContext>>,
) -> Json<opsbro_api::monitoring::NodeChecks> {
    Json(opsbro_api::monitoring::NodeChecks {
        node: ctx.name.clone(),
        uuid: ctx.uuid,
        is_self: true,
        checks: ctx.monitoring.checks(),
    })
}

/// Another node's checks come from its gossiped record (names and states only).
async fn monitoring_node(
    State(ctx): State<Arc<ApiContext>>,
    Path(node): Path<String>,
) -> Result<Json<opsbro_api::monitoring::NodeChecks>, ApiError> {
    let member = resolve_node(&ctx, &node).await?;
    if member.is_self {
        return Ok(monitoring_self(State(ctx)).await);
    }
    let checks = member
        .checks
        .iter()
        .map(|c| {
            let state = opsbro_checks::CheckState::parse(&c.state)
                .unwrap_or(opsbro_checks::CheckState::Unknown);
            opsbro_api::monitoring::CheckView {
                name: c.name.clone(),
                display_name: c.name.rsplit('/').next().unwrap_or(&c.name).to_owned(),
                state: state.as_str().into(),
                state_id: state.state_id(),
                ..Default::default()
            }
        })
        .collect();
    Ok(Json(opsbro_api::monitoring::NodeChecks {
        node: member.name,
        uuid: member.uuid,
        is_self: false,
        checks,
    }))
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn monitoring_history(
    State(ctx): State<Arc<ApiContext>>,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> Json<Vec<opsbro_api::monitoring::HistoryEntry>> {
    Json(ctx.monitoring.history(q.limit.unwrap_or(100)))
}

async fn monitoring_handlers(
    State(ctx): State<Arc<ApiContext>>,
) -> Json<Vec<opsbro_api::monitoring::HandlerView>> {
    Json(ctx.handlers.views())
}

async fn collectors_all(
    State(ctx): State<Arc<ApiContext>>,
) -> Json<opsbro_api::collectors::Collectors> {
    Json(ctx.collected.all())
}

async fn collectors_one(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
) -> Result<Json<opsbro_api::collectors::Collector>, ApiError> {
    ctx.collected.all().remove(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no collector named `{name}`"),
        )
    })
}

async fn collectors_run(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
) -> Result<Json<opsbro_api::collectors::Collector>, ApiError> {
    match ctx.collected.run_now(&name).await {
        Ok(result) => Ok(Json(result)),
        Err(e @ crate::collect::RunError::Unknown(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ crate::collect::RunError::Stopped) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

async fn detectors_state(
    State(ctx): State<Arc<ApiContext>>,
) -> Json<Vec<opsbro_api::detectors::DetectorState>> {
    Json(ctx.detectors.state())
}

async fn detectors_run(
    State(ctx): State<Arc<ApiContext>>,
) -> Json<Vec<opsbro_api::detectors::DetectorState>> {
    let before = crate::host::unix_ms();
    ctx.detectors.run_now();
    // Wait (bounded) until every detector has run since the request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let state = ctx.detectors.state();
        if state
            .iter()
            .all(|s| s.last_run_ms.is_some_and(|t| t >= before))
            || std::time::Instant::now() > deadline
        {
            return Json(state);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn detect(
    State(ctx): State<Arc<ApiContext>>,
    body: Result<Json<g::DetectRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<g::DetectAnswer>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if !(0.1..=60.0).contains(&request.timeout_secs) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "timeout_secs must be between 0.1 and 60",
        ));
    }
    let found = ctx
        .gossip
        .detect(std::time::Duration::from_secs_f64(request.timeout_secs))
        .await?;
    let mut nodes: Vec<g::Member> = found
        .iter()
        .map(|r| crate::gossip::member_view(r, ctx.uuid))
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let joined = match (request.auto_join, opsbro_gossip::choose_join_target(&found)) {
        (true, Some(target)) => match ctx.gossip.join(target.addr).await? {
            Ok(_) => Some(crate::gossip::member_view(target, ctx.uuid)),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("joining {} ({}) failed: {e}", target.name, target.addr),
                ));
            }
        },
        _ => None,
    };
    Ok(Json(g::DetectAnswer { nodes, joined }))
}

async fn keyring(State(ctx): State<Arc<ApiContext>>) -> Result<Json<g::Keyring>, ApiError> {
    ctx.gossip
        .keyring(None)
        .await?
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

async fn change_keyring(
    State(ctx): State<Arc<ApiContext>>,
    body: Result<Json<g::KeyringRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<g::Keyring>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let key = opsbro_transport::Key::from_base64(&request.key)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    ctx.gossip
        .keyring(Some((request.op, key)))
        .await?
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))
}

async fn add_event(
    State(ctx): State<Arc<ApiContext>>,
    body: Result<Json<g::NewEvent>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<g::Event>, ApiError> {
    let Json(event) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    opsbro_types::names::event_type(&event.kind)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.0))?;
    if event.kind.starts_with('_') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "event type `{}` is reserved: types starting with `_` are the agent's own (such \
                 as `{}`); choose a name without the leading `_`",
                event.kind,
                crate::gossip::KEYRING_EVENT
            ),
        ));
    }
    if event.payload.len() > opsbro_gossip::codec::MAX_EVENT_PAYLOAD {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "event payload is over {} bytes",
                opsbro_gossip::codec::MAX_EVENT_PAYLOAD
            ),
        ));
    }
    opsbro_types::names::event_payload(event.payload.as_bytes())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.0))?;
    Ok(Json(
        ctx.gossip
            .add_event(event.kind, event.payload.into_bytes())
            .await?,
    ))
}

async fn agent_stop(State(ctx): State<Arc<ApiContext>>) -> Json<StopAnswer> {
    tracing::info!("stop requested through the API");
    ctx.shutdown.cancel();
    Json(StopAnswer {
        stopping: true,
        grace_period_secs: ctx.grace_period_secs,
    })
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such route: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Refuse bodies announced bigger than the limit with a JSON 413 before reading them, and read
/// the others within a deadline.
async fn limit_body(request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = announced
        && len > MAX_BODY_BYTES as u64
    {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {len} bytes is over the {MAX_BODY_BYTES}-byte limit"),
        )
        .into_response();
    }
    // The whole body must arrive within BODY_TIMEOUT (a client that trickles it must not hold a
    // connection slot): read it here, bounded, then hand it on.
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES))
        .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over the {MAX_BODY_BYTES}-byte limit"),
            )
            .into_response();
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
            )
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Longest time a request body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Host, Origin and token rules ([`crate::access`]) before any route runs.
async fn require_token(
    State(ctx): State<Arc<ApiContext>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    match ctx
        .access
        .check(request.method(), request.uri().path(), &headers)
    {
        Ok(()) => next.run(request).await,
        Err(crate::access::Refusal::Forbidden(why)) => {
            ApiError::new(StatusCode::FORBIDDEN, why).into_response()
        }
        Err(crate::access::Refusal::Unauthorized(why)) => {
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// `GET /api` is generated from `opsbro_api::ROUTES`: it must list every path the router
    /// serves, and nothing else.
    #[test]
    fn the_documented_routes_are_the_routed_ones() {
        let routed: BTreeSet<&str> = super::routes().iter().map(|(p, _)| *p).collect();
        let documented: BTreeSet<&str> = opsbro_api::ROUTES.iter().map(|r| r.path).collect();
        assert_eq!(routed, documented);
        let mut seen = BTreeSet::new();
        for r in opsbro_api::ROUTES {
            assert!(
                ["GET", "POST", "PUT", "DELETE"].contains(&r.method),
                "{r:?}"
            );
            assert!(seen.insert((r.method, r.path)), "documented twice: {r:?}");
            assert!(!r.description.is_empty(), "{r:?}");
        }
    }
}
