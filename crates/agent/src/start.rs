//! The named steps of [`crate::run`]: each opens, binds or starts one thing and reports it in
//! the subsystem status, so `run` reads as the order in which an agent comes up and goes down.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use opsbro_api::{RUNTIME_FILE_NAME, RuntimeFile};
use opsbro_config::AgentConfig;
use opsbro_types::SubsystemState;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{AgentError, DataDir, GRACE_PERIOD, Status, datadir, host, kv, metrics, serve};

/// Bind the local API first: a second agent on the same port stops here, before touching
/// anything else.
pub async fn bind_api(config: &AgentConfig) -> Result<(TcpListener, SocketAddr), AgentError> {
    let addr = SocketAddr::new(config.api_bind, config.api_port);
    let bind_error = |source| AgentError::Bind {
        what: "the local API",
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, addr))
}

/// This node's first gossip record. Its incarnation continues above the last one (kept in
/// `incarnation_file`) so a restarted node overrides news of its old self.
pub fn node_record(
    config: &AgentConfig,
    data_dir: &DataDir,
    addr: SocketAddr,
    incarnation_file: &Path,
) -> opsbro_gossip::NodeRecord {
    let incarnation = std::fs::read_to_string(incarnation_file)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0)
        // A damaged file must not start us at a number peers refuse.
        .min(opsbro_gossip::member::MAX_INCARNATION / 2)
        + 1;
    if let Err(e) = datadir::write_atomic(incarnation_file, format!("{incarnation}\n").as_bytes()) {
        tracing::warn!(error = %e, "cannot persist the incarnation");
    }
    let mut groups = config.groups.clone();
    groups.sort();
    groups.dedup();
    opsbro_gossip::NodeRecord {
        uuid: data_dir.uuid(),
        name: config.node_name.clone(),
        display_name: config.display_name.clone(),
        addr,
        zone: config.zone.clone(),
        groups,
        is_proxy: config.proxy_node,
        incarnation,
        state: opsbro_gossip::MemberState::Alive,
        version: opsbro_types::VERSION.to_owned(),
        checks: Vec::new(),
        services: Vec::new(),
        maintenance: None,
    }
}

/// The sled database of the data dir, its page cache bounded to `cache_bytes`
/// (`kv.cache_size`): the KV store, and its `ts` tree for the metrics.
pub fn open_stores(
    data_dir: &DataDir,
    cache_bytes: u64,
) -> Result<(PathBuf, opsbro_store::SledStore, opsbro_store::SledStore), AgentError> {
    let kv_dir = data_dir.path().join("kv");
    let cannot = |what: &str, e: &dyn std::fmt::Display| {
        AgentError::Kv(format!(
            "cannot open the {what} in {}: {e}",
            kv_dir.display()
        ))
    };
    let store = opsbro_store::SledStore::open_with_cache(&kv_dir, cache_bytes)
        .map_err(|e| cannot("KV store", &e))?;
    let ts = store
        .open_tree("ts")
        .map_err(|e| cannot("metrics store", &e))?;
    Ok((kv_dir, store, ts))
}

/// The KV settings of `config`, defaults filled.
pub fn kv_config(config: &AgentConfig) -> kv::KvConfig {
    let defaults = kv::KvConfig::default();
    kv::KvConfig {
        replication_factor: config
            .kv
            .replication_factor
            .unwrap_or(defaults.replication_factor),
        write_acks: config
            .kv
            .write_acks
            .as_deref()
            .and_then(opsbro_kv::WriteAcks::parse)
            .unwrap_or(defaults.write_acks),
        tombstone_ttl: config.kv.tombstone_ttl.unwrap_or(defaults.tombstone_ttl),
        anti_entropy_interval: config
            .kv
            .anti_entropy_interval
            .unwrap_or(defaults.anti_entropy_interval),
        cache_size: config.kv.cache_size.unwrap_or(defaults.cache_size),
    }
}

/// Say how the metrics subsystem started. Its listeners are a convenience: the agent runs on
/// without them, loudly.
pub fn report_metrics(status: &Status, metrics: &metrics::MetricsHandle, problems: &[String]) {
    if problems.is_empty() {
        let mut parts = vec!["store".to_owned()];
        if let Some(a) = metrics.statsd_addr() {
            parts.push(format!("statsd udp {a}"));
        }
        if let Some(a) = metrics.graphite_addr() {
            parts.push(format!("graphite {a}"));
        }
        status.set("metrics", SubsystemState::Ok, Some(parts.join(", ")));
    } else {
        for p in problems {
            tracing::error!("{p}");
        }
        status.set("metrics", SubsystemState::Error, Some(problems.join("; ")));
    }
}

/// Serve the local API on `listener` until `shutdown`.
pub fn serve_api(
    listener: TcpListener,
    app: Router,
    connections: Arc<serve::ServeCounters>,
    status: &Status,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let limits = serve::Limits {
        max_connections: host::connection_cap(crate::API_MAX_CONNECTIONS),
        header_timeout: crate::API_HEADER_TIMEOUT,
        grace: Duration::from_secs(5),
        write_timeout: Duration::from_secs(30),
    };
    let api_status = status.clone();
    let addr = listener.local_addr().ok();
    tracker.spawn(async move {
        serve::serve_http(
            listener,
            app,
            limits,
            connections,
            |tcp| {
                let _ = tcp.set_nodelay(true);
            },
            shutdown,
        )
        .await;
        api_status.set("api", SubsystemState::Stopped, None);
    });
    status.set(
        "api",
        SubsystemState::Ok,
        addr.map(|a| format!("http://{a}")),
    );
}

/// `<data_dir>/agent.runtime.json`: where this agent listens, for the CLI and for tests.
pub fn write_runtime_file(data_dir: &DataDir, runtime: &RuntimeFile) {
    if let Err(e) = serde_json::to_vec_pretty(runtime)
        .map_err(io::Error::other)
        .and_then(|bytes| data_dir.write_atomic(RUNTIME_FILE_NAME, &bytes))
    {
        tracing::warn!(error = %e, "cannot write the runtime file");
    }
}

/// Wait for the stop (signal, API, caller), then give every task [`GRACE_PERIOD`] to finish.
pub async fn wait_and_stop(
    shutdown: &CancellationToken,
    status: &Status,
    tracker: &TaskTracker,
    data_dir: &DataDir,
) -> Result<(), AgentError> {
    let forced = crate::wait_for_stop(shutdown).await;
    status.set_stopping();
    tracing::info!(grace_period = ?GRACE_PERIOD, "stopping");
    tracker.close();
    let result = tokio::select! {
        () = tracker.wait() => Ok(()),
        () = tokio::time::sleep(GRACE_PERIOD) => Err(AgentError::GraceExceeded(GRACE_PERIOD)),
        () = forced.cancelled() => Err(AgentError::Forced),
    };
    let _ = std::fs::remove_file(data_dir.path().join(RUNTIME_FILE_NAME));
    if result.is_ok() {
        tracing::info!("agent stopped");
    }
    result
}

/// What the work on this host needs: collectors, detectors, checks, generators and handlers.
pub struct HostWorkSetup<'a> {
    /// The configuration.
    pub config: &'a AgentConfig,
    /// The data dir (states kept across restarts).
    pub data_dir: &'a DataDir,
    /// Subsystem states.
    pub status: &'a Status,
    /// Every task.
    pub tracker: &'a TaskTracker,
    /// The root token.
    pub shutdown: &'a CancellationToken,
    /// The packs' objects (a reload sends new ones).
    pub objects: &'a tokio::sync::watch::Receiver<Arc<opsbro_packs::PackSet>>,
    /// Expressions.
    pub evaluator: &'a Arc<opsbro_eval::Evaluator>,
    /// The cluster as expressions see it.
    pub view: crate::eval::SharedView,
    /// Groups and check summaries go out through gossip.
    pub gossip: &'a crate::gossip::GossipHandle,
    /// Where changes are published.
    pub bus: &'a crate::events::EventBus,
    /// Collector values and perfdata become series.
    pub metrics: &'a metrics::MetricsHandle,
    /// The live membership (generators, group history).
    pub membership: &'a crate::membership::Membership,
    /// `kv(key)` in templates.
    pub kv: &'a kv::KvHandle,
    /// This node's gossip address (handlers' `node.addr`).
    pub gossip_addr: SocketAddr,
    /// This node's zone (`gossip zone change` moves it).
    pub zone: &'a tokio::sync::watch::Receiver<String>,
    /// Elections' leaders (`leader()` in templates).
    pub raft: &'a crate::raft::RaftHandle,
}

/// The handles of the host's work, for the API.
pub struct HostWork {
    /// The cluster as expressions see it (this node's groups).
    pub view: crate::eval::SharedView,
    /// Latest collector values.
    pub collected: crate::collect::CollectedData,
    /// Detector states.
    pub detectors: crate::detectors::DetectorsHandle,
    /// This node's group changes.
    pub group_history: crate::group_history::GroupHistory,
    /// Check states and history.
    pub monitoring: crate::monitoring::MonitoringHandle,
    /// Generator states.
    pub generators: crate::generators::GeneratorsHandle,
    /// Handler counters.
    pub handlers: crate::handlers::HandlersHandle,
    /// Compliance states.
    pub compliance: crate::compliance::ComplianceHandle,
}

/// Start the collectors, then what reads them: detectors, checks, generators, handlers.
pub fn host_work(s: HostWorkSetup<'_>) -> HostWork {
    use crate::{collect, detectors, generators, group_history, handlers, monitoring};
    let (config, tracker, shutdown) = (s.config, s.tracker, s.shutdown);
    s.status.set("collectors", SubsystemState::Starting, None);
    let collected = collect::CollectedData::default();
    let (first_collection, collected_once) = tokio::sync::watch::channel(false);
    tracker.spawn(collect::run(
        collected.clone(),
        s.view.clone(),
        s.zone.clone(),
        s.objects.clone(),
        s.status.clone(),
        s.metrics.clone(),
        first_collection,
        shutdown.child_token(),
    ));
    s.status.set("detectors", SubsystemState::Starting, None);
    let detectors_handle = detectors::DetectorsHandle::default();
    detectors_handle.set_statics(detectors::StaticGroups::load(
        config.groups.clone(),
        s.data_dir.path().join("static-groups.json"),
    ));
    tracker.spawn(detectors::run(
        detectors::DetectorsSetup {
            objects: s.objects.clone(),
            evaluator: s.evaluator.clone(),
            gossip: s.gossip.clone(),
            handle: detectors_handle.clone(),
            collected: collected.clone(),
            collected_once: collected_once.clone(),
            bus: s.bus.clone(),
            zone: s.zone.clone(),
        },
        s.status.clone(),
        shutdown.child_token(),
    ));
    let group_history = group_history::GroupHistory::default();
    tracker.spawn(group_history::run(
        group_history.clone(),
        s.data_dir.uuid(),
        s.membership.clone(),
        shutdown.child_token(),
    ));
    let monitoring_handle = monitoring::MonitoringHandle::default();
    tracker.spawn(monitoring::run(
        monitoring::MonitoringSetup {
            objects: s.objects.clone(),
            evaluator: s.evaluator.clone(),
            view: s.view.clone(),
            gossip: s.gossip.clone(),
            collected: collected.clone(),
            collected_once: collected_once.clone(),
            plugins_dir: config.nagios_plugins_dir.clone(),
            state_file: s.data_dir.path().join("check-states.json"),
            bus: s.bus.clone(),
            handle: monitoring_handle.clone(),
            metrics: s.metrics.clone(),
        },
        shutdown.child_token(),
    ));
    let (compliance_handle, launches) = crate::compliance::ComplianceHandle::new();
    tracker.spawn(crate::compliance::run(
        crate::compliance::ComplianceSetup {
            objects: s.objects.clone(),
            evaluator: s.evaluator.clone(),
            collected: collected.clone(),
            collected_once: collected_once.clone(),
            view: s.view.clone(),
            bus: s.bus.clone(),
            handle: compliance_handle.clone(),
            launches,
            state_file: s.data_dir.path().join("compliance-states.json"),
            root: std::path::PathBuf::from("/"),
        },
        shutdown.child_token(),
    ));
    let generators_handle = generators::GeneratorsHandle::default();
    tracker.spawn(generators::run(
        generators::GeneratorsSetup {
            objects: s.objects.clone(),
            evaluator: s.evaluator.clone(),
            collected: collected.clone(),
            membership: s.membership.clone(),
            me: s.data_dir.uuid(),
            kv: s.kv.clone(),
            leaders: {
                let raft = s.raft.clone();
                std::sync::Arc::new(move |election: &str| {
                    raft.lock(&crate::elections::lock_of(election))
                        .map(|l| l.node)
                })
            },
            bus: s.bus.clone(),
            handle: generators_handle.clone(),
        },
        shutdown.child_token(),
    ));
    let handlers_handle = handlers::HandlersHandle::default();
    handlers::start(
        handlers::HandlersSetup {
            objects: s.objects.clone(),
            templates_dir: config.templates_dir.clone(),
            node: opsbro_checks::notify::NodeInfo {
                name: config.node_name.clone(),
                display_name: config.display_name.clone(),
                uuid: s.data_dir.uuid().to_string(),
                addr: s.gossip_addr.to_string(),
                groups: Vec::new(),
            },
            view: s.view.clone(),
            bus: s.bus.clone(),
            handle: handlers_handle.clone(),
        },
        tracker,
        shutdown.child_token(),
    );
    HostWork {
        view: s.view,
        collected,
        detectors: detectors_handle,
        group_history,
        monitoring: monitoring_handle,
        generators: generators_handle,
        handlers: handlers_handle,
        compliance: compliance_handle,
    }
}
