//! What the HTTP handlers share: [`ApiContext`], built once by the agent, and [`ApiError`], the
//! JSON error answer. Its own module so the handler modules (`http_*`) and the router (`http`)
//! both use it without importing each other.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use opsbro_api::{Addresses, ErrorBody, Ports};
use opsbro_types::NodeUuid;
use tokio_util::sync::CancellationToken;

use crate::gossip::GossipHandle;
use crate::status::Status;

/// What the HTTP handlers read; built once by the agent.
pub struct ApiContext {
    /// Node name.
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// Node uuid.
    pub uuid: NodeUuid,
    /// Zone at start (see `current_zone`).
    pub zone: String,
    /// Proxy flag.
    pub is_proxy: bool,
    /// Static groups (detected ones join them in a later subsystem).
    pub groups: Vec<String>,
    /// Addresses.
    pub addresses: Addresses,
    /// Ports.
    pub ports: Ports,
    /// Data dir, for display.
    pub data_dir: String,
    /// Start instant, for uptime and CPU.
    pub started: Instant,
    /// Subsystem registry.
    pub status: Status,
    /// Cancelled to stop the agent.
    pub shutdown: CancellationToken,
    /// Grace period announced by `/agent/stop`.
    pub grace_period_secs: u64,
    /// Who may use which route (token, anonymous reads, Host and Origin rules).
    pub access: crate::access::Access,
    /// The API listener's connection counters.
    pub api_connections: Arc<crate::serve::ServeCounters>,
    /// The gossip subsystem.
    pub gossip: GossipHandle,
    /// The expression evaluator.
    pub evaluator: Arc<opsbro_eval::Evaluator>,
    /// Detector states.
    pub detectors: crate::detectors::DetectorsHandle,
    /// Loaded packs.
    pub objects: tokio::sync::watch::Receiver<Arc<opsbro_packs::PackSet>>,
    /// Live reload (`POST /agent/reload`, SIGHUP).
    pub reloader: Arc<crate::reload::Reloader>,
    /// Latest collector results.
    pub collected: crate::collect::CollectedData,
    /// Check states and history.
    pub monitoring: crate::monitoring::MonitoringHandle,
    /// Handler counters.
    pub handlers: crate::handlers::HandlersHandle,
    /// The KV store.
    pub kv: crate::kv::KvHandle,
    /// The DNS server's address and counters.
    pub dns: (
        Option<std::net::SocketAddr>,
        Arc<opsbro_dns::server::Counters>,
    ),
    /// The time-series store and the statsd/graphite listeners.
    pub metrics: crate::metrics::MetricsHandle,
    /// The event bus (for its counters).
    pub bus: crate::events::EventBus,
    /// Histograms and counts for `/metrics`.
    pub telemetry: crate::telemetry::SharedTelemetry,
    /// Compliance states.
    pub compliance: crate::compliance::ComplianceHandle,
    /// Signed remote execution.
    pub executor: crate::executor::ExecutorHandle,
    /// Locks and elections on Raft.
    pub raft: crate::raft::RaftHandle,
    /// Leader elections of this node.
    pub elections: crate::elections::ElectionsHandle,
    /// The zone tree (from the objects at start).
    pub zones: Arc<opsbro_gossip::ZoneTree>,
    /// This node's zone now (collectors and detectors follow it).
    pub current_zone: tokio::sync::watch::Sender<String>,
    /// This node's services and maintenance switches.
    pub services: crate::services::ServicesHandle,
    /// The cluster's service catalog.
    pub catalog: crate::catalog::CatalogWatch,
    /// The websocket stream: its address (when it runs) and counters.
    pub websocket: Arc<crate::websocket::WsCounters>,
    /// Where the websocket stream listens, when it runs.
    pub websocket_addr: Option<std::net::SocketAddr>,
    /// Generator states and history.
    pub generators: crate::generators::GeneratorsHandle,
    /// This node's group changes.
    pub group_history: crate::group_history::GroupHistory,
    /// The store and data dir, for `GET /agent/snapshot`.
    pub snapshot: crate::snapshot::SnapshotSource,
    /// The hosting driver found at start.
    pub hosting: opsbro_apps::clouds::Hosting,
    /// The Docker event follower's counters.
    pub docker_events: crate::docker::DockerEventsHandle,
}

impl ApiContext {
    /// The packs in use now (a reload replaces them).
    pub fn packs(&self) -> Arc<opsbro_packs::PackSet> {
        self.objects.borrow().clone()
    }
}

/// An error answer: status + message, rendered as `ErrorBody` JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            status: self.status.as_u16(),
        };
        (self.status, Json(body)).into_response()
    }
}

/// An answer streamed as NDJSON: one JSON line per item received, until the sender is dropped.
/// Dropping the answer (the client went away) drops the receiver, which its sender sees.
pub fn ndjson<T: serde::Serialize + Send + 'static>(
    lines: tokio::sync::mpsc::Receiver<T>,
) -> Result<axum::response::Response, ApiError> {
    let stream = futures_util::stream::unfold(lines, |mut lines| async move {
        let line = lines.recv().await?;
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(bytes), lines))
    });
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .header(axum::http::header::CACHE_CONTROL, "no-cache")
        .body(axum::body::Body::from_stream(stream))
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
