//! The opsbro agent: the composition root. It owns the tokio tasks, the sockets and the axum
//! server, and wires the IO-free cores of the other crates to them.
//!
//! Main entry: [`run`], which opens and locks the data dir, binds the listeners, serves the local
//! HTTP API ([`api`]) and runs until SIGTERM/SIGINT or `POST /agent/stop`, then shuts every task
//! down within [`GRACE_PERIOD`]. Invariant: only this crate spawns tasks; every task is tracked by
//! one `TaskTracker` and watches one root `CancellationToken`.

#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod catalog;
pub mod cluster;
pub mod collect;
pub mod command;
pub mod compliance;
pub mod datadir;
pub mod detectors;
pub mod dns;
pub mod docker;
pub mod elections;
pub mod eval;
pub mod events;
pub mod executor;
pub mod generators;
pub mod gossip;
pub mod group_history;
pub mod handlers;
pub mod host;
pub mod hosting;
pub mod kv;
pub mod logcount;
pub mod logfile;
pub mod logstream;
pub mod members_file;
pub mod membership;
mod memory;
pub mod metrics;
pub mod monitoring;
pub mod one_shot;
pub mod raft;
pub mod reload;
pub mod serve;
pub mod services;
pub mod snapshot;
mod start;
pub mod status;
pub mod telemetry;
pub mod websocket;
pub mod zones;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opsbro_api::{Addresses, Ports, RuntimeFile};
use opsbro_config::AgentConfig;
use opsbro_types::{AgentState, SubsystemState};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use datadir::{DataDir, DataDirError};
pub use status::Status;

/// How long subsystems get to finish after a stop is requested.
pub const GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Why the agent could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory is unusable or locked by another agent.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}{}", bind_hint(source))]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Some task did not finish within the grace period.
    #[error("some tasks did not stop within {0:?}; exiting anyway")]
    GraceExceeded(Duration),
    /// The keyring file or key could not be used.
    #[error("encryption: {0}")]
    Keyring(#[from] opsbro_transport::KeyringError),
    /// A second signal asked for an immediate exit.
    #[error("stopped at once by a second signal")]
    Forced,
    /// The KV store could not start.
    #[error("kv: {0}")]
    Kv(String),
    /// The executor's keys could not be read.
    #[error("{0}")]
    Executor(String),
    /// The zone tree, this node's zone or a zone key is wrong.
    #[error("{0}")]
    Zones(String),
    /// A setting would open the cluster to anyone (see `AgentConfig::gossip_bind`).
    #[error("{0}")]
    Insecure(String),
    /// A one-shot run was stopped (signal) before its pass was done.
    #[error("stopped before the one-shot pass was done")]
    Interrupted,
}

fn bind_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            " (is another agent running? choose another port with --api-port / --port)"
        }
        io::ErrorKind::PermissionDenied => " (ports below 1024 need root)",
        io::ErrorKind::AddrNotAvailable => " (that address is not on this host)",
        _ => "",
    }
}

/// Run the agent until it is asked to stop (signal, API, or `shutdown` cancelled by the caller).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    run_agent(config, None, shutdown, None).await
}

/// [`run`], with a way to read the configuration again for a live reload (`opsbro agent
/// reload`, SIGHUP): the binary passes one that reads the same file and flags.
pub async fn run_with_reload(
    config: AgentConfig,
    loader: reload::ConfigLoader,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    run_agent(config, Some(loader), shutdown, None).await
}

/// `agent start --one-shot`: run the collectors, the detectors and the generators once, then
/// stop and return what they did. Nothing listens beyond loopback: DNS, statsd, graphite and the
/// websocket are off, the API and gossip take ephemeral loopback ports, no cluster is joined.
pub async fn run_once(mut config: AgentConfig) -> Result<one_shot::Report, AgentError> {
    let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    config.api_bind = loopback;
    config.api_port = 0;
    config.bind_addr = Some(loopback);
    config.port = 0;
    config.seeds.clear();
    config.auto_detect = false;
    config.dns.enabled = false;
    config.statsd.enabled = false;
    config.graphite.enabled = false;
    config.graphite.forward = None;
    config.websocket.enabled = false;
    let (tx, rx) = tokio::sync::oneshot::channel();
    run_agent(config, None, CancellationToken::new(), Some(tx)).await?;
    rx.await.map_err(|_| AgentError::Interrupted)
}

async fn run_agent(
    config: AgentConfig,
    loader: Option<reload::ConfigLoader>,
    shutdown: CancellationToken,
    once: Option<tokio::sync::oneshot::Sender<one_shot::Report>>,
) -> Result<(), AgentError> {
    install_tls_provider();
    let started = Instant::now();
    let data_dir = DataDir::open(&config.data_dir)?;
    // `opsbro gossip zone change` saved the zone this node moved to.
    let mut config = config;
    config.zone = zones::current_zone(&config.zone, data_dir.path());
    host::raise_fd_limit();
    let status = Status::new();
    let tracker = TaskTracker::new();

    status.set("api", SubsystemState::Starting, None);
    let (listener, api_addr) = start::bind_api(&config).await?;

    let keyring_file = config
        .keyring_file
        .clone()
        .unwrap_or_else(|| data_dir.path().join("keyring.json"));
    let mut keyring = load_keyring(&config, &keyring_file)?;
    zones::load_keys(data_dir.path(), &config.zone, &mut keyring).map_err(AgentError::Zones)?;
    let bind_addr = config
        .gossip_bind(keyring.is_enabled())
        .map_err(AgentError::Insecure)?;
    let access = api_access(&config, &data_dir)?;
    announce_cluster_security(&config, keyring.is_enabled(), bind_addr);

    // Where the host runs (one round of metadata requests, bounded): before the address peers
    // are told, which may be the cloud's public one.
    let hosting = hosting::detect(&config.hosting).await;
    let interfaces = host::interface_addrs();
    let advertise = hosting::advertise(&config, bind_addr, &interfaces, &hosting);

    status.set("gossip", SubsystemState::Starting, None);
    let gossip_bind = SocketAddr::new(bind_addr, config.port);
    let (sockets, cluster_listener) =
        gossip::bind(bind_addr, config.port)
            .await
            .map_err(|source| AgentError::Bind {
                what: "gossip (UDP and TCP)",
                addr: gossip_bind,
                source,
            })?;
    let gossip_port = sockets.local.port();
    let gossip_addr = SocketAddr::new(advertise, gossip_port);
    let incarnation_file = data_dir.path().join("incarnation");
    let services = services::ServicesHandle::load(data_dir.path());
    let mut me = start::node_record(&config, &data_dir, gossip_addr, &incarnation_file);
    // A node in maintenance stays out of answers from its first record on.
    me.maintenance = services.node_maintenance();
    let bus = events::EventBus::default();
    let telemetry = Arc::new(telemetry::Telemetry::default());
    // The cluster port's TCP listener hands each connection to gossip or the KV store by the
    // kind of its first frame; both seal with the same keyring.
    let encrypted = keyring.is_enabled();
    let keyring: cluster::SharedKeyring = Arc::new(std::sync::RwLock::new(keyring));
    let listener_counters = Arc::new(cluster::ListenerCounters::default());
    let (push_pull_tx, push_pulls) = tokio::sync::mpsc::channel(64);
    let (kv_connections, kv_incoming) = tokio::sync::mpsc::channel(64);
    let (exec_connections, exec_incoming) = tokio::sync::mpsc::channel(64);
    let (raft_connections, raft_incoming) = tokio::sync::mpsc::channel(64);
    tracker.spawn(cluster::serve(
        cluster_listener,
        keyring.clone(),
        cluster::Routes {
            push_pull: push_pull_tx,
            kv: kv_connections,
            exec: exec_connections,
            raft: raft_connections,
        },
        listener_counters.clone(),
        tracker.clone(),
        shutdown.child_token(),
    ));
    let (membership, membership_rx) = tokio::sync::watch::channel(Arc::new(Vec::new()));
    let kv_membership = membership_rx.clone();
    let view = eval::SharedView::with_hosting(hosting.clone());
    let evaluator = Arc::new(opsbro_eval::Evaluator::new(Arc::new(view.clone())));
    let packs = reload::load_packs(&config, &evaluator);
    for d in &packs.diagnostics {
        tracing::warn!("pack problem: {d}");
    }
    let (zone_tx, zone_rx) = tokio::sync::watch::channel(config.zone.clone());
    let zone_tree = zones::tree(&packs)
        .and_then(|tree| zones::check(&tree, &config.zone).map(|()| tree))
        .map_err(AgentError::Zones)?;
    // Every subsystem takes its objects from here; a reload sends new ones.
    let (objects_tx, objects) = tokio::sync::watch::channel(Arc::new(packs));
    // A one-shot run neither uses nor updates the remembered members (it joins no cluster).
    let members_path = data_dir.path().join(members_file::FILE_NAME);
    let remembered = if once.is_none() {
        members_file::load_or_warn(&members_path)
    } else {
        Vec::new()
    };
    if once.is_none() {
        tracker.spawn(members_file::keep(
            members_path,
            data_dir.uuid(),
            membership.subscribe(),
            remembered.clone(),
            shutdown.child_token(),
        ));
    }
    let gossip = gossip::start(
        gossip::GossipSetup {
            me,
            config: opsbro_gossip::GossipConfig {
                // Without a key nobody is authenticated: beyond loopback, never answer with more
                // than was asked (a forged source must not make this agent an amplifier).
                cap_replies: !encrypted && !bind_addr.is_loopback(),
                zones: zone_tree.clone(),
                ..gossip_config(&config.gossip)
            },
            keyring: keyring.clone(),
            seeds: members_file::seeds_at_start(
                &config.seeds,
                &remembered,
                data_dir.uuid(),
                gossip_addr,
            ),
            incarnation_file,
            keyring_file,
            auto_detect: config.auto_detect,
            view: view.clone(),
            bus: bus.clone(),
            push_pulls,
            listener: listener_counters,
            membership,
            telemetry: telemetry.clone(),
        },
        sockets,
        status.clone(),
        &tracker,
        shutdown.child_token(),
    );
    status.set("kv", SubsystemState::Starting, None);
    let kv_config = start::kv_config(&config);
    let (kv_dir, store, ts_store) = start::open_stores(&data_dir, kv_config.cache_size)?;
    let raft_store = store
        .open_tree("raft")
        .map_err(|e| AgentError::Kv(format!("cannot open the raft tree: {e}")))?;
    // Snapshots read every tree of the same sled database (`GET /agent/snapshot`).
    let snapshot = snapshot::SnapshotSource {
        store: store.clone(),
        data_dir: data_dir.path().to_owned(),
        uuid: data_dir.uuid(),
        node: config.node_name.clone(),
    };
    let kv = kv::KvHandle::start(
        kv::KvSetup {
            me: data_dir.uuid(),
            store: Arc::new(store),
            config: kv_config,
            keyring: keyring.clone(),
            membership: membership_rx.clone(),
            connections: kv_incoming,
            bus: bus.clone(),
        },
        &tracker,
        shutdown.child_token(),
    )
    .map_err(|e| AgentError::Kv(e.to_string()))?;
    // `kv_get()` in expressions reads the store.
    let (reader, runtime) = (kv.clone(), tokio::runtime::Handle::current());
    view.set_kv(Arc::new(move |key: &str| {
        reader.get_text_blocking(&runtime, key, eval::KV_GET_TIMEOUT)
    }));
    status.set(
        "kv",
        SubsystemState::Ok,
        Some(format!("sled in {}", kv_dir.display())),
    );
    let executor = executor::ExecutorHandle::start(
        executor::ExecutorSetup {
            name: config.node_name.clone(),
            uuid: data_dir.uuid(),
            settings: config.executor.clone(),
            keyring: keyring.clone(),
            membership: membership_rx.clone(),
            bus: bus.clone(),
            connections: exec_incoming,
        },
        &tracker,
        shutdown.child_token(),
    )
    .map_err(AgentError::Executor)?;
    let raft = raft::RaftHandle::start(
        raft::RaftSetup {
            me: data_dir.uuid(),
            store: raft_store,
            keyring: keyring.clone(),
            membership: membership_rx.clone(),
            connections: raft_incoming,
            bus: bus.clone(),
            zone: zone_rx.clone(),
        },
        &tracker,
        shutdown.child_token(),
    );
    let elections = elections::ElectionsHandle::default();
    tracker.spawn(elections::run(
        raft.clone(),
        elections.clone(),
        objects.clone(),
        view.clone(),
        bus.clone(),
        shutdown.child_token(),
    ));
    let dns_counters = Arc::new(opsbro_dns::server::Counters::default());
    let dns_addr = if config.dns.enabled {
        status.set("dns", SubsystemState::Starting, None);
        let started = dns::start(
            &config.dns,
            kv_membership.clone(),
            dns_counters.clone(),
            &tracker,
            shutdown.child_token(),
        )
        .await;
        optional_listener(&status, "dns", started, |addr| {
            format!("udp+tcp {addr}, domain {}", config.dns.domain)
        })
    } else {
        None
    };
    status.set("metrics", SubsystemState::Starting, None);
    let (metrics, metric_problems) = metrics::start(
        metrics::MetricsSetup {
            store: Arc::new(ts_store),
            statsd: config.statsd.clone(),
            graphite: config.graphite.clone(),
        },
        &tracker,
        shutdown.child_token(),
    )
    .await
    .map_err(|e| AgentError::Kv(format!("cannot open the metrics store: {e}")))?;
    start::report_metrics(&status, &metrics, &metric_problems);
    let ws_counters = Arc::new(websocket::WsCounters::default());
    let api_connections = Arc::new(serve::ServeCounters::default());
    let websocket_addr = if config.websocket.enabled {
        status.set("websocket", SubsystemState::Starting, None);
        let started = websocket::start(
            &config.websocket,
            access.clone(),
            bus.clone(),
            ws_counters.clone(),
            &tracker,
            shutdown.child_token(),
        )
        .await;
        optional_listener(&status, "websocket", started, |addr| {
            format!("ws://{addr}/")
        })
    } else {
        None
    };
    let work = start::host_work(start::HostWorkSetup {
        config: &config,
        data_dir: &data_dir,
        status: &status,
        tracker: &tracker,
        shutdown: &shutdown,
        objects: &objects,
        evaluator: &evaluator,
        view,
        gossip: &gossip,
        bus: &bus,
        metrics: &metrics,
        membership: &kv_membership,
        kv: &kv,
        gossip_addr,
        zone: &zone_rx,
        raft: &raft,
    });
    tracker.spawn(services::run(
        services::ServicesSetup {
            objects: objects.clone(),
            view: work.view.clone(),
            monitoring: work.monitoring.clone(),
            gossip: gossip.clone(),
            handle: services.clone(),
            registered_dir: data_dir.path().join(services::REGISTERED_DIR),
        },
        shutdown.child_token(),
    ));
    let catalog = catalog::start(
        kv_membership.clone(),
        config.dns.warning_passes,
        bus.clone(),
        &tracker,
        shutdown.child_token(),
    );
    let start::HostWork {
        view: host_view,
        collected,
        detectors: detectors_handle,
        group_history,
        monitoring: monitoring_handle,
        generators: generators_handle,
        handlers: handlers_handle,
        compliance: compliance_handle,
    } = work;
    if let Some(report) = once {
        tracker.spawn(one_shot::drive(
            one_shot::Parts {
                status: status.clone(),
                collected: collected.clone(),
                detectors: detectors_handle.clone(),
                generators: generators_handle.clone(),
                gossip: gossip.clone(),
            },
            report,
            shutdown.clone(),
        ));
    }
    let docker_events = docker::start(
        docker::EventsSetup {
            objects: objects.clone(),
            view: host_view,
            bus: bus.clone(),
            collected: collected.clone(),
        },
        &tracker,
        shutdown.child_token(),
    );
    let reloader = Arc::new(reload::Reloader::new(
        loader,
        config.clone(),
        objects_tx,
        evaluator.clone(),
        detectors_handle.clone(),
        executor.clone(),
    ));
    tracker.spawn(reload_on_sighup(reloader.clone(), shutdown.child_token()));
    if opsbro_memory::enabled() {
        tracker.spawn(memory::keep_lean(shutdown.child_token()));
    }
    let ctx = Arc::new(api::ApiContext {
        name: config.node_name.clone(),
        display_name: config.display_name.clone(),
        uuid: data_dir.uuid(),
        zone: config.zone.clone(),
        is_proxy: config.proxy_node,
        groups: config.groups.clone(),
        addresses: Addresses {
            bind: bind_addr,
            advertise,
            api: api_addr,
            interfaces,
        },
        ports: Ports {
            gossip: gossip_port,
            api: api_addr.port(),
        },
        data_dir: data_dir.path().display().to_string(),
        started,
        status: status.clone(),
        shutdown: shutdown.clone(),
        grace_period_secs: GRACE_PERIOD.as_secs(),
        access,
        api_connections: api_connections.clone(),
        gossip,
        evaluator,
        detectors: detectors_handle,
        objects,
        reloader,
        collected,
        monitoring: monitoring_handle,
        handlers: handlers_handle,
        kv,
        dns: (dns_addr, dns_counters),
        metrics: metrics.clone(),
        bus,
        telemetry,
        websocket: ws_counters,
        websocket_addr,
        generators: generators_handle,
        group_history,
        snapshot,
        docker_events,
        services,
        catalog,
        compliance: compliance_handle,
        executor,
        raft,
        elections,
        zones: Arc::new(zone_tree),
        current_zone: zone_tx,
        hosting,
    });

    start::serve_api(
        listener,
        api::router(ctx),
        api_connections,
        &status,
        &tracker,
        shutdown.child_token(),
    );
    start::write_runtime_file(
        &data_dir,
        &RuntimeFile {
            pid: std::process::id(),
            api_addr,
            uuid: data_dir.uuid(),
            gossip_addr: Some(gossip_addr),
            dns_addr,
            statsd_addr: metrics.statsd_addr(),
            graphite_addr: metrics.graphite_addr(),
            websocket_addr,
        },
    );

    tracing::info!(
        node = %config.node_name,
        uuid = %data_dir.uuid(),
        api = %api_addr,
        gossip = %gossip_addr,
        data_dir = %data_dir.path().display(),
        version = opsbro_types::VERSION,
        "agent started"
    );
    if status.agent_state() == AgentState::Ok {
        tracing::info!("agent initialized");
    }

    start::wait_and_stop(&shutdown, &status, &tracker, &data_dir).await
}

/// SIGHUP reloads, as for most daemons.
async fn reload_on_sighup(reloader: Arc<reload::Reloader>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with `opsbro agent reload`");
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading");
                let report = reloader.reload().await;
                for e in &report.errors {
                    tracing::error!("reload: {e}");
                }
            }
        }
    }
}

/// Record how an optional listener (DNS, websocket) started: its address, or the error — the
/// agent runs on without it, loudly.
fn optional_listener(
    status: &Status,
    name: &str,
    started: Result<SocketAddr, String>,
    describe: impl FnOnce(SocketAddr) -> String,
) -> Option<SocketAddr> {
    match started {
        Ok(addr) => {
            status.set(name, SubsystemState::Ok, Some(describe(addr)));
            Some(addr)
        }
        Err(e) => {
            tracing::error!("{e}");
            status.set(name, SubsystemState::Error, Some(e));
            None
        }
    }
}

/// TLS (slack over HTTPS, SMTP with STARTTLS/SMTPS) uses rustls with ring, never OpenSSL or
/// aws-lc: make ring the process's provider. Idempotent; the binary calls it first thing.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The LAN defaults with the `gossip:` section's overrides.
fn gossip_config(tuning: &opsbro_config::GossipTuning) -> opsbro_gossip::GossipConfig {
    let mut c = opsbro_gossip::GossipConfig::default();
    if let Some(d) = tuning.probe_interval {
        c.probe_interval = d;
    }
    if let Some(d) = tuning.probe_timeout {
        c.probe_timeout = d;
    }
    if let Some(d) = tuning.gossip_interval {
        c.gossip_interval = d;
    }
    if let Some(d) = tuning.push_pull_interval {
        c.push_pull_interval = d;
    }
    if let Some(m) = tuning.suspicion_mult {
        c.suspicion_mult = m;
    }
    if let Some(d) = tuning.tombstone_ttl {
        c.tombstone_ttl = d;
    }
    if let Some(n) = tuning.max_members {
        c.max_members = n;
    }
    if let Some(n) = tuning.max_new_members_per_peer {
        c.max_new_members_per_peer = n;
    }
    c
}

/// The API's access rules; the token (the operator's, or a new random one) is written to
/// `<data_dir>/api.token`, mode 0600, for the CLI.
fn api_access(config: &AgentConfig, data_dir: &DataDir) -> Result<access::Access, AgentError> {
    let token = config.api_token.clone().unwrap_or_else(access::new_token);
    let token_file = data_dir.path().join(API_TOKEN_FILE);
    datadir::write_atomic(&token_file, format!("{token}\n").as_bytes()).map_err(|e| {
        AgentError::DataDir(DataDirError::Io {
            path: token_file.clone(),
            source: e,
        })
    })?;
    let mut host_names: Vec<String> = config
        .api_allowed_hosts
        .iter()
        .cloned()
        .chain([config.node_name.to_ascii_lowercase()])
        .collect();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        host_names.push(h.trim().to_ascii_lowercase());
    }
    Ok(access::Access {
        token,
        token_file: token_file.display().to_string(),
        anonymous_reads: config.api_anonymous_reads,
        host_names,
    })
}

/// Most local API connections at once (before authentication).
pub const API_MAX_CONNECTIONS: usize = 512;
/// A request's headers must arrive within this (and idle keep-alive connections close).
pub const API_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Name of the API token file in the data dir.
pub const API_TOKEN_FILE: &str = "api.token";

/// Say at start how the cluster port is protected (and what to do when it is not).
fn announce_cluster_security(config: &AgentConfig, encrypted: bool, bind: std::net::IpAddr) {
    if encrypted {
        tracing::info!(%bind, "cluster traffic is encrypted and authenticated (AES-256-GCM, replay window {} s)", opsbro_transport::REPLAY_WINDOW_MS / 1000);
    } else if bind.is_loopback() {
        tracing::info!(
            %bind,
            "no encryption key: gossip listens on loopback only (this host). To form a cluster \
             with other hosts, run `opsbro agent keygen` and give every agent that `encryption_key`"
        );
        if config.seeds.iter().any(|s| !s.is_loopback()) || config.auto_detect {
            tracing::warn!(
                "seeds on other hosts and LAN detection cannot work without an encryption key"
            );
        }
    } else {
        tracing::warn!(
            %bind,
            "INSECURE: cluster traffic is in plaintext on a non-loopback address \
             (insecure_plaintext_gossip): anyone who reaches port {} can join the cluster, add \
             members and write to the KV store",
            config.port
        );
    }
}

/// The keyring: the keyring file when it exists (it carries rotations), else `encryption_key`
/// (saved to the keyring file so later rotations persist), else none (plaintext cluster).
fn load_keyring(
    config: &AgentConfig,
    path: &std::path::Path,
) -> Result<opsbro_transport::Keyring, AgentError> {
    use opsbro_transport::{Key, Keyring};
    if path.exists() {
        // The file carries the rotations done since the first start: a key removed from the
        // cluster must not come back because an old `encryption_key` is still in the config.
        let ring = Keyring::load(path)?;
        if let Some(k) = &config.encryption_key
            && !ring
                .keys()
                .iter()
                .any(|have| have.id_hex() == Key::new(k.0).id_hex())
        {
            tracing::info!(
                keyring = %path.display(),
                "encryption_key is not in the keyring file (rotated away?); using the keyring file"
            );
        }
        return Ok(ring);
    }
    match &config.encryption_key {
        Some(k) => {
            let ring = Keyring::with_key(Key::new(k.0));
            ring.save(path)?;
            Ok(ring)
        }
        None => Ok(Keyring::default()),
    }
}

/// Wait until `shutdown` is cancelled or a SIGTERM/SIGINT arrives (which cancels it). Returns a
/// token cancelled by a *second* signal, meaning "stop now, do not wait for the grace period".
async fn wait_for_stop(shutdown: &CancellationToken) -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let forced = CancellationToken::new();
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop the agent with `opsbro agent stop`");
        shutdown.cancelled().await;
        return forced;
    };
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
    let second = forced.clone();
    // A detached watcher: it only outlives `run` when the process is exiting anyway.
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: stopping now");
        second.cancel();
    });
    forced
}
