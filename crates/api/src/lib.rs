//! The local HTTP API's contract: route paths and the JSON shapes of requests, answers and errors.
//!
//! Serialization is a boundary (HOUSE-STYLE): the agent's server and the CLI's client both use
//! these types, so the two cannot drift apart. Nothing here does IO or knows about axum/reqwest.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use opsbro_types::{AgentState, NodeUuid, SubsystemState};
use serde::{Deserialize, Serialize};

/// Route paths of the local API.
pub mod routes {
    /// `GET`: the agent state as a JSON string (`"initializing"`, `"ok"`, `"stopping"`).
    pub const AGENT_STATE: &str = "/agent/state";
    /// `GET`: [`super::AgentInfo`].
    pub const AGENT_INFO: &str = "/agent/info";
    /// `POST`: ask the agent to shut down gracefully; answers [`super::StopAnswer`].
    pub const AGENT_STOP: &str = "/agent/stop";
    /// `PUT` adds, `DELETE` removes a static group (live, persisted); answers the static groups.
    pub const AGENT_GROUP: &str = "/agent/groups/{group}";
    /// `POST`: re-read `agent.yml`, the local objects and the packs; answers
    /// [`super::ReloadReport`] (also what SIGHUP does).
    pub const AGENT_RELOAD: &str = "/agent/reload";
    /// `GET`: the agent's metrics in Prometheus (OpenMetrics) text format.
    pub const METRICS: &str = "/metrics";
    /// `GET` (`?level=info`): the agent's log lines as they are logged, one
    /// [`super::LogLine`] JSON per line (NDJSON), until the client goes away.
    pub const AGENT_LOG_FOLLOW: &str = "/agent/log/follow";
    /// `GET` (never needs the token): [`super::AuthInfo`], where the token file is.
    pub const AGENT_AUTH: &str = "/agent/auth";
    /// `GET`: this list of routes ([`super::RouteInfo`] list), same as [`API`].
    pub const INDEX: &str = "/";
    /// `GET`: every route of this API ([`super::RouteInfo`] list, from [`super::ROUTES`]).
    pub const API: &str = "/api";
    /// `GET`: a snapshot of this node's data (every store tree and the small data-dir files),
    /// streamed in the `opsbro agent snapshot` format (`application/octet-stream`).
    pub const AGENT_SNAPSHOT: &str = "/agent/snapshot";
}

/// The web UI, served by every agent on its API listener.
pub mod ui {
    /// `GET`: redirects to [`INDEX`].
    pub const ROOT: &str = "/ui";
    /// `GET`: the page (HTML; its files are compiled into the agent).
    pub const INDEX: &str = "/ui/";
    /// `GET /ui/v/<version>/<file>`: the page's scripts, styles and vendored libraries
    /// (immutable: a new agent binary has a new version).
    pub const ASSET: &str = "/ui/{*path}";
    /// `GET`: the event bus as Server-Sent Events (`event: <channel>`, `data:` the websocket
    /// stream's frame; `?channels=node,check`); `kv` and `exec` only with the token.
    pub const EVENTS: &str = "/ui/events";
}

/// One route of the API as documented in [`ROUTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDoc {
    /// HTTP method (`GET`, `POST`, `PUT`, `DELETE`).
    pub method: &'static str,
    /// Path, with `{name}` for a segment and `{*name}` for the rest of the path.
    pub path: &'static str,
    /// What it does, in one line.
    pub description: &'static str,
}

/// Every route the agent serves, one entry per method and path: the source of `GET /api` (the
/// agent's router is checked against it, so the two cannot drift apart).
pub const ROUTES: &[RouteDoc] = {
    use self::{
        catalog as cat, compliance as comp, kv, metrics as m, monitoring as mon, routes as r, ui,
    };
    use self::{collectors as c, detectors as d, evaluator as e, generators as gen_, gossip as g};
    const fn doc(method: &'static str, path: &'static str, description: &'static str) -> RouteDoc {
        RouteDoc {
            method,
            path,
            description,
        }
    }
    &[
        doc("GET", r::INDEX, "this list of routes"),
        doc("GET", ui::ROOT, "the web UI (redirects to /ui/)"),
        doc(
            "GET",
            ui::INDEX,
            "the web UI: cluster, nodes, checks, KV, metrics, events",
        ),
        doc(
            "GET",
            ui::ASSET,
            "the web UI's files (scripts, styles), compiled into the agent",
        ),
        doc(
            "GET",
            ui::EVENTS,
            "the event stream as Server-Sent Events (?channels=; kv and exec need the token)",
        ),
        doc("GET", r::API, "this list of routes"),
        doc(
            "GET",
            r::AGENT_STATE,
            "the agent state: initializing, ok or stopping",
        ),
        doc(
            "GET",
            r::AGENT_AUTH,
            "where the API token file is (never needs the token)",
        ),
        doc(
            "GET",
            r::AGENT_INFO,
            "identity, addresses, groups, resource use, log counts, subsystems",
        ),
        doc("POST", r::AGENT_STOP, "stop the agent gracefully"),
        doc(
            "POST",
            r::AGENT_RELOAD,
            "re-read agent.yml, local objects and packs without a restart (as SIGHUP)",
        ),
        doc(
            "PUT",
            r::AGENT_GROUP,
            "add a static group (live, kept across restarts)",
        ),
        doc("DELETE", r::AGENT_GROUP, "remove a static group"),
        doc(
            "GET",
            r::METRICS,
            "the agent's metrics in Prometheus text format",
        ),
        doc(
            "GET",
            r::AGENT_LOG_FOLLOW,
            "the agent's log lines as they come (NDJSON, ?level=), until the client goes away",
        ),
        doc("GET", g::MEMBERS, "every known cluster member"),
        doc("GET", g::HISTORY, "membership changes, oldest first"),
        doc("POST", g::JOIN, "join a cluster through one of its members"),
        doc("POST", g::LEAVE, "this agent leaves the cluster and stops"),
        doc("POST", g::LEAVE_NODE, "mark another (gone) node as left"),
        doc("GET", g::PING, "probe a node now and show its state"),
        doc("GET", g::EVENTS, "user events of the last minutes"),
        doc(
            "POST",
            g::EVENTS,
            "send a user event to every node (types starting with `_` are reserved)",
        ),
        doc("GET", g::KEYRING, "this agent's cluster keys, by id"),
        doc(
            "GET",
            g::ZONES,
            "the zone tree from this node: relation, sub-zones, keys held, members known",
        ),
        doc(
            "PUT",
            g::ZONE,
            "move this node to another zone of the tree (persisted): {zone}",
        ),
        doc(
            "POST",
            g::ZONE_KEY,
            "a zone's gossip key on this node: {op: import|install|use|remove, key?, erase}",
        ),
        doc(
            "POST",
            g::KEYRING,
            "install, use or remove a cluster key on every node",
        ),
        doc(
            "POST",
            g::DETECT,
            "find agents on the LAN by UDP broadcast (and join one)",
        ),
        doc("POST", e::EVAL, "evaluate an expression on this agent"),
        doc("GET", e::LIST, "the functions expressions can call"),
        doc("GET", d::STATE, "every detector and its last result"),
        doc("POST", d::RUN, "run every detector now"),
        doc("GET", d::HISTORY, "this node's group changes, oldest first"),
        doc(
            "GET",
            d::PACKS,
            "loaded packs, their objects and where each comes from, load problems",
        ),
        doc("GET", dashboards::ALL, "the packs' dashboards"),
        doc(
            "GET",
            dashboards::ONE,
            "one dashboard with its values computed now",
        ),
        doc("GET", dashboards::TUTORIALS, "the packs' tutorials"),
        doc("GET", c::ALL, "every collector's latest result"),
        doc("GET", c::ONE, "one collector's latest result"),
        doc(
            "POST",
            c::RUN,
            "run one collector now and answer its result",
        ),
        doc("GET", c::HISTORY, "collector state changes, oldest first"),
        doc("GET", mon::STATE, "this node's checks"),
        doc("GET", mon::STATE_NODE, "any node's checks, by name or uuid"),
        doc("GET", mon::HISTORY, "this node's check state changes"),
        doc("GET", mon::HANDLERS, "handlers and their counters"),
        doc(
            "PUT",
            mon::TTL,
            "set a TTL check's status: {status: pass|warn|fail, note}",
        ),
        doc(
            "GET",
            comp::STATE,
            "this node's compliance objects and their rules",
        ),
        doc(
            "GET",
            comp::HISTORY,
            "compliance state changes, oldest first",
        ),
        doc(
            "POST",
            comp::LAUNCH,
            "run a compliance object now; answers its state after the run",
        ),
        doc(
            "POST",
            executors::EXEC,
            "run a signed command on the alive members of a group; NDJSON lines as results arrive",
        ),
        doc(
            "GET",
            executors::STATE,
            "the executor: authorized keys, signing key, counters",
        ),
        doc(
            "GET",
            executors::HISTORY,
            "recent executions on this node, as requester and as target",
        ),
        doc(
            "GET",
            raft::STATE,
            "this node's view of the Raft group: role, leader, voters, locks",
        ),
        doc(
            "GET",
            raft::LOCKS,
            "every held lock with its holder and fencing token",
        ),
        doc("GET", raft::LOCK, "a held lock (404 when free)"),
        doc(
            "PUT",
            raft::LOCK,
            "take or renew a lock (?ttl=, ?session=); 409 when held by another",
        ),
        doc("DELETE", raft::LOCK, "release a lock (?token=)"),
        doc(
            "POST",
            raft::HOLD,
            "take a lock and hold it while the connection is open; NDJSON acquired/lost lines",
        ),
        doc(
            "GET",
            raft::ELECTIONS,
            "the elections of this node and their leaders",
        ),
        doc(
            "GET",
            cat::SERVICES,
            "every service of the cluster (blocking with ?index=&wait=)",
        ),
        doc(
            "GET",
            cat::SERVICE,
            "a service's instances: ?passing, ?tag=, ?zone=, blocking with ?index=&wait=",
        ),
        doc("GET", cat::LOCAL, "this node's services and their checks"),
        doc(
            "POST",
            cat::REGISTER,
            "register a service (body: a service file, YAML or JSON)",
        ),
        doc(
            "DELETE",
            cat::ONE,
            "deregister a service registered through the API",
        ),
        doc(
            "PUT",
            cat::MAINTENANCE,
            "a service's maintenance mode: {enable, reason}",
        ),
        doc(
            "GET",
            cat::AGENT_MAINTENANCE,
            "this node's maintenance mode",
        ),
        doc(
            "PUT",
            cat::AGENT_MAINTENANCE,
            "this node's maintenance mode: {enable, reason}",
        ),
        doc("GET", kv::ROOT, "live keys under ?prefix="),
        doc(
            "GET",
            kv::KEY,
            "a key's value (?raw, ?index=N&wait=30s, ?locate)",
        ),
        doc("PUT", kv::KEY, "write a key (?cas=, ?ttl=)"),
        doc("DELETE", kv::KEY, "delete a key (?cas=)"),
        doc(
            "GET",
            kv::EXPORT,
            "one page of every key with its versions, tombstones included (?prefix=, ?after=)",
        ),
        doc(
            "POST",
            kv::IMPORT,
            "merge exported entries (NDJSON body, ?line=) by version: newer copies stay",
        ),
        doc(
            "GET",
            r::AGENT_SNAPSHOT,
            "a snapshot of this node's stores and data-dir files (a stream)",
        ),
        doc("GET", m::RENDER, "graphite-web render: values of targets"),
        doc("POST", m::RENDER, "graphite-web render (form)"),
        doc("GET", m::FIND, "graphite-web find: series and branches"),
        doc("POST", m::FIND, "graphite-web find (form)"),
        doc("GET", m::INDEX, "every series name"),
        doc(
            "GET",
            m::FUNCTIONS,
            "graphite-web functions: what /render knows",
        ),
        doc("GET", m::TAGS, "graphite-web tags of tagged series"),
        doc(
            "GET",
            m::TAGS_COMPLETE_TAGS,
            "graphite-web tag name completion",
        ),
        doc(
            "POST",
            m::TAGS_COMPLETE_TAGS,
            "graphite-web tag name completion (form)",
        ),
        doc(
            "GET",
            m::TAGS_COMPLETE_VALUES,
            "graphite-web tag value completion",
        ),
        doc(
            "POST",
            m::TAGS_COMPLETE_VALUES,
            "graphite-web tag value completion (form)",
        ),
        doc("GET", m::VERSION, "the graphite-web API version followed"),
        doc("GET", gen_::STATE, "every generator's state"),
        doc(
            "GET",
            docker::SUMMARY,
            "the host's Docker daemon: version, container and image counts, event follower",
        ),
        doc(
            "GET",
            docker::CONTAINERS,
            "every Docker container: image, state, health, restarts",
        ),
        doc(
            "GET",
            docker::CONTAINER,
            "one Docker container as the daemon describes it (inspect)",
        ),
        doc("GET", docker::IMAGES, "every Docker image"),
        doc(
            "GET",
            docker::IMAGE,
            "one Docker image as the daemon describes it (inspect)",
        ),
        doc(
            "GET",
            docker::STATS,
            "running containers' CPU, memory, network and block IO at the last collection",
        ),
        doc("GET", gen_::HISTORY, "generator state changes and writes"),
    ]
};

/// One route in the answer of `GET /api`: [`RouteDoc`] and whether this agent wants the token
/// for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// HTTP method.
    pub method: String,
    /// Path (`{name}`: a segment, `{*name}`: the rest of the path).
    pub path: String,
    /// Whether a caller without the API token is refused.
    pub needs_token: bool,
    /// What it does.
    pub description: String,
}

/// Warnings and errors the agent logged since it started (`agent info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCounts {
    /// `ERROR` events.
    pub errors: u64,
    /// `WARN` events.
    pub warnings: u64,
}

/// One line of `GET /agent/log/follow` (NDJSON: one JSON object per line; a blank line is sent
/// every 15 s while nothing is logged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When it was logged (Unix milliseconds).
    pub time_ms: u64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// Where it comes from (the Rust module path, e.g. `opsbro_agent::gossip`).
    pub target: String,
    /// The message followed by its fields (`member discovered node=web-1 ...`).
    pub message: String,
    /// Lines this reader missed because it fell behind (only on the line saying so).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Answer of `GET /agent/auth`: how to get the API token of this agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthInfo {
    /// The file holding the token (readable by the agent's own user only).
    pub token_file: String,
    /// Whether the read-only routes answer without the token.
    pub anonymous_reads: bool,
}

/// Largest request body the API accepts (bigger bodies get 413).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The header that carries the API token (`Authorization: Bearer <token>`).
pub const AUTH_HEADER: &str = "authorization";

/// Every error answer: `{"error": "...", "status": 404}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in words meant for a person.
    pub error: String,
    /// The HTTP status code, repeated for clients that only see the body.
    pub status: u16,
}

/// Answer of `POST /agent/reload`: what a reload applied, what it could not, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// True when the new configuration and objects are in use (nothing was refused).
    pub applied: bool,
    /// What changed, one line per kind (`checks: +1 added, 1 changed, 1 removed`).
    pub changes: Vec<String>,
    /// Settings that changed in the file but only take effect at the next start
    /// (`port: 6768 -> 6769`).
    pub restart_needed: Vec<String>,
    /// Why the reload was refused (configuration or object errors, with file and line); the
    /// previous good version keeps running.
    pub errors: Vec<String>,
    /// Problems that did not stop the reload (pack warnings).
    pub warnings: Vec<String>,
}

/// Answer of `POST /agent/stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopAnswer {
    /// Always true: the shutdown has started.
    pub stopping: bool,
    /// How long the agent gives its subsystems to finish, in seconds.
    pub grace_period_secs: u64,
}

/// Answer of `GET /agent/info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Unique node name.
    pub name: String,
    /// Human-friendly name.
    pub display_name: String,
    /// Node identity, persisted in the data dir.
    pub uuid: NodeUuid,
    /// opsbro version.
    pub version: String,
    /// Overall state.
    pub state: AgentState,
    /// Zone of this node.
    pub zone: String,
    /// Whether this node is a proxy node.
    pub is_proxy: bool,
    /// Groups of this node (static and detected).
    pub groups: Vec<String>,
    /// Addresses the agent uses and announces.
    pub addresses: Addresses,
    /// Ports the agent listens on.
    pub ports: Ports,
    /// The data directory.
    pub data_dir: String,
    /// Operating-system process id.
    pub pid: u32,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Resource use of the agent process.
    pub process: ProcessStats,
    /// State of every subsystem, by name.
    pub subsystems: BTreeMap<String, SubsystemStatus>,
    /// Gossip: members by state, encryption, packet counters.
    pub gossip: GossipInfo,
    /// This node's active checks by state (`ok`, `critical`, ...).
    #[serde(default)]
    pub checks: BTreeMap<String, usize>,
    /// This node's compliance objects by state (`COMPLIANT`, `ERROR`, ...).
    #[serde(default)]
    pub compliance: BTreeMap<String, usize>,
    /// Signed remote execution on this node.
    #[serde(default)]
    pub executor: executors::ExecutorInfo,
    /// The KV store on this node.
    #[serde(default)]
    pub kv: KvInfo,
    /// The DNS server.
    #[serde(default)]
    pub dns: DnsInfo,
    /// statsd, graphite and the time-series store.
    #[serde(default)]
    pub metrics: metrics::MetricsInfo,
    /// The websocket event stream.
    #[serde(default)]
    pub websocket: WebsocketInfo,
    /// Warnings and errors logged since start.
    #[serde(default)]
    pub logs: LogCounts,
    /// Where the host runs: the hosting driver and what its cloud said.
    #[serde(default)]
    pub hosting: HostingInfo,
}

/// The hosting driver in `agent info` (found once at start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostingInfo {
    /// The active driver: `ec2`, `google-cloud`, `azure`, `digitalocean`, `scaleway`,
    /// `alibaba`, `openstack`, else `docker-container`, `synology` or `on-premise`.
    pub driver: String,
    /// The cloud driver, when one is active.
    pub cloud: Option<String>,
    /// How the driver was chosen.
    pub detail: String,
    /// How long the detection took at start, in milliseconds.
    pub probe_ms: u64,
    /// The metadata services asked.
    pub probed: Vec<String>,
    /// The instance's id in its cloud.
    pub instance_id: Option<String>,
    /// Its region.
    pub region: Option<String>,
    /// Its availability zone.
    pub zone: Option<String>,
    /// Its machine type.
    pub instance_type: Option<String>,
    /// Its private address, as the cloud says.
    pub local_addr: Option<IpAddr>,
    /// Its public address, as the cloud says.
    pub public_addr: Option<IpAddr>,
}

/// The websocket event stream in `agent info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebsocketInfo {
    /// Where it listens, when it runs.
    pub addr: Option<SocketAddr>,
    /// Clients connected now.
    pub clients: usize,
    /// Clients accepted since start.
    pub accepted: u64,
    /// Messages sent.
    pub sent: u64,
    /// Clients disconnected because they did not keep up.
    pub slow_dropped: u64,
}

/// The KV store in `agent info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvInfo {
    /// Nodes on the ring.
    pub ring_nodes: usize,
    /// Entries held here (tombstones included).
    pub local_entries: usize,
    /// Bytes on disk.
    pub size_on_disk: u64,
    /// Reads answered.
    pub reads: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// Writes refused.
    pub write_errors: u64,
    /// Entries taken from other nodes because they were newer (replication, handoff, repair).
    pub received: u64,
    /// KV frames or entries refused.
    pub rejected: u64,
    /// Flushes to disk (each makes every write waiting durable).
    pub flushes: u64,
}

/// The DNS server in `agent info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsInfo {
    /// Where it listens (UDP and TCP), when it runs.
    pub addr: Option<SocketAddr>,
    /// Queries.
    pub queries: u64,
    /// Answers by response code.
    pub noerror: u64,
    /// NXDOMAIN answers.
    pub nxdomain: u64,
    /// REFUSED answers (outside the domain, no recursor).
    pub refused: u64,
    /// SERVFAIL answers.
    pub servfail: u64,
    /// FORMERR / NOTIMP answers.
    pub formerr: u64,
    /// Queries forwarded to a recursor.
    pub forwarded: u64,
    /// Datagrams that were not DNS queries, dropped without an answer.
    #[serde(default)]
    pub malformed: u64,
    /// TCP connections refused because too many were open.
    #[serde(default)]
    pub tcp_refused: u64,
}

/// The metrics side of the API: graphite-web's `/render` and `/metrics/find` (what Grafana's
/// Graphite data source calls) and the counters shown by `agent info`.
pub mod metrics {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use serde::{Deserialize, Serialize};

    /// `GET` or `POST` (form): `target` (repeatable), `from`, `until`, `now`,
    /// `format=json|csv|raw`, `maxDataPoints`, `noNullPoints`, `xFilesFactor`; answers a
    /// [`RenderSeries`] list (JSON).
    pub const RENDER: &str = "/render";
    /// `GET` or `POST` (form): `query`; answers a [`FindNode`] list.
    pub const FIND: &str = "/metrics/find";
    /// `GET`: every series name, sorted (graphite-web's `/metrics/index.json`).
    pub const INDEX: &str = "/metrics/index.json";
    /// `GET`: every function `/render` knows, in graphite-web's JSON description (`grouped`,
    /// `group`), for Grafana's query editor.
    pub const FUNCTIONS: &str = "/functions";
    /// `GET`: the tags of tagged series, `[{"tag": name}]` (`filter`, `limit`).
    pub const TAGS: &str = "/tags";
    /// `GET` or `POST` (form): tag names for autocompletion (`expr`, `tagPrefix`, `limit`).
    pub const TAGS_COMPLETE_TAGS: &str = "/tags/autoComplete/tags";
    /// `GET` or `POST` (form): values of `tag` for autocompletion (`expr`, `valuePrefix`,
    /// `limit`).
    pub const TAGS_COMPLETE_VALUES: &str = "/tags/autoComplete/values";
    /// `GET`: the graphite-web version whose API `/render` follows (text).
    pub const VERSION: &str = "/version";

    /// One series of a `/render` answer, in graphite-web's JSON shape.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct RenderSeries {
        /// Name of the series (or the function call that made it).
        pub target: String,
        /// Graphite 1.1 tags: `name` is the path.
        #[serde(default)]
        pub tags: BTreeMap<String, String>,
        /// `[value or null, unix seconds]`, oldest first.
        pub datapoints: Vec<(Option<f64>, u64)>,
    }

    /// One node of a `/metrics/find` answer (graphite-web's `treejson`).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct FindNode {
        /// Last path component.
        pub text: String,
        /// Full path.
        pub id: String,
        /// 1 for a series.
        pub leaf: u8,
        /// 1 for a branch.
        pub expandable: u8,
        /// 1 for a branch.
        #[serde(rename = "allowChildren")]
        pub allow_children: u8,
        /// Always empty.
        #[serde(default)]
        pub context: BTreeMap<String, String>,
    }

    /// The metrics subsystems in `agent info`.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct MetricsInfo {
        /// statsd listener, when it runs.
        pub statsd_addr: Option<SocketAddr>,
        /// statsd datagrams received.
        pub statsd_packets: u64,
        /// statsd lines aggregated.
        pub statsd_lines: u64,
        /// statsd lines refused.
        pub statsd_bad_lines: u64,
        /// The last refused statsd line and why.
        pub statsd_last_error: Option<String>,
        /// graphite listener, when it runs.
        pub graphite_addr: Option<SocketAddr>,
        /// graphite lines stored.
        pub graphite_lines: u64,
        /// graphite lines refused.
        pub graphite_bad_lines: u64,
        /// Graphite TCP connections closed to make room for new ones (all slots taken).
        #[serde(default)]
        pub graphite_evicted: u64,
        /// The last refused graphite line and why.
        pub graphite_last_error: Option<String>,
        /// Series in the store.
        pub series: usize,
        /// Points stored since start.
        pub points: u64,
        /// Points refused by the store (too old, in the future, too many series).
        pub points_rejected: u64,
        /// Forwarding to an external carbon, when configured.
        pub forward: Option<ForwardInfo>,
    }

    /// Forwarding to carbon in `agent info`.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ForwardInfo {
        /// `host:port` of the carbon.
        pub address: String,
        /// Whether a connection is up.
        pub connected: bool,
        /// Lines written.
        pub sent: u64,
        /// Lines dropped because the buffer was full.
        pub dropped: u64,
        /// Lines waiting.
        pub queued: usize,
        /// The last connection error.
        pub last_error: Option<String>,
    }
}

/// Generators: files rendered from cluster state.
pub mod generators {
    use serde::{Deserialize, Serialize};

    /// `GET`: every generator ([`GeneratorView`] list).
    pub const STATE: &str = "/generators/state";
    /// `GET`: state changes and file changes ([`HistoryEntry`] list, oldest first).
    pub const HISTORY: &str = "/generators/history";

    /// A generator.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct GeneratorView {
        /// `<pack>/<file>`.
        pub name: String,
        /// Pack.
        pub pack: String,
        /// The file it writes.
        pub path: String,
        /// `pending`, `not-eligible` (generate_if is false), `compliant` (the file is as
        /// rendered) or `error`.
        pub state: String,
        /// What went wrong, or what happened last.
        pub message: Option<String>,
        /// Last render, ms since the Unix epoch.
        pub last_run_ms: Option<u64>,
        /// Last time the file was written, ms since the Unix epoch.
        pub last_change_ms: Option<u64>,
        /// Lines removed (`-`) and added (`+`) by the last write.
        pub diff: Option<String>,
        /// Output of the last `command` (or failed `validate_command`).
        pub command_output: Option<String>,
        /// Renders since start.
        pub runs: u64,
        /// Writes since start.
        pub writes: u64,
    }

    /// A state change or a write.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct HistoryEntry {
        /// Generator.
        pub name: String,
        /// ms since the Unix epoch.
        pub time_ms: u64,
        /// Previous state.
        pub old_state: String,
        /// New state.
        pub state: String,
        /// What happened.
        pub message: String,
    }
}

/// Gossip part of [`AgentInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipInfo {
    /// Members (this node included) by state.
    pub members: BTreeMap<String, usize>,
    /// Incarnation of this node.
    pub incarnation: u64,
    /// Whether cluster traffic is encrypted.
    pub encrypted: bool,
    /// How the cluster port is protected.
    #[serde(default)]
    pub security: ClusterSecurity,
    /// Packet counters.
    pub counters: gossip::Counters,
}

/// How the cluster port is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterSecurity {
    /// Every packet sealed and authenticated with the cluster key.
    #[default]
    Encrypted,
    /// No key: gossip listens on loopback only (a single host).
    LoopbackOnly,
    /// No key on a non-loopback address (`insecure_plaintext_gossip`): anyone can join.
    InsecurePlaintext,
}

/// Addresses of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// Gossip bind address.
    pub bind: IpAddr,
    /// Address announced to other nodes.
    pub advertise: IpAddr,
    /// Address the local API listens on.
    pub api: SocketAddr,
    /// Non-loopback addresses of the host's interfaces.
    pub interfaces: Vec<IpAddr>,
}

/// Ports of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    /// Gossip UDP and cluster TCP port.
    pub gossip: u16,
    /// Local HTTP API port.
    pub api: u16,
}

/// Resource use of the agent process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// CPU use since start, in percent of one core.
    pub cpu_percent: f64,
    /// CPU time used since start, in seconds (user + system).
    #[serde(default)]
    pub cpu_seconds: f64,
    /// Number of OS threads.
    pub threads: u64,
}

/// State of one subsystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemStatus {
    /// Current state.
    pub state: SubsystemState,
    /// Detail: the listen address, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Written by a running agent to `<data_dir>/agent.runtime.json` once its listeners are bound, so
/// that scripts and tests using port 0 learn the real addresses. Removed at clean exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeFile {
    /// Process id of the agent.
    pub pid: u32,
    /// Address of the local API.
    pub api_addr: SocketAddr,
    /// Node identity.
    pub uuid: NodeUuid,
    /// Gossip address (UDP and cluster TCP), once bound.
    #[serde(default)]
    pub gossip_addr: Option<SocketAddr>,
    /// DNS server address (UDP and TCP), when it runs.
    #[serde(default)]
    pub dns_addr: Option<SocketAddr>,
    /// statsd listener (UDP), when it runs.
    #[serde(default)]
    pub statsd_addr: Option<SocketAddr>,
    /// graphite listener (TCP and/or UDP on one port), when it runs.
    #[serde(default)]
    pub graphite_addr: Option<SocketAddr>,
    /// websocket event stream, when it runs.
    #[serde(default)]
    pub websocket_addr: Option<SocketAddr>,
}

/// Name of the runtime file inside the data dir.
pub const RUNTIME_FILE_NAME: &str = "agent.runtime.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape() {
        let body = ErrorBody {
            error: "no such route".into(),
            status: 404,
        };
        assert_eq!(
            serde_json::to_string(&body).expect("json"),
            r#"{"error":"no such route","status":404}"#
        );
    }

    #[test]
    fn subsystem_message_is_optional() {
        let s: SubsystemStatus = serde_json::from_str(r#"{"state":"ok"}"#).expect("json");
        assert_eq!(s.message, None);
        assert_eq!(s.state, SubsystemState::Ok);
    }
}

/// Gossip routes and shapes.
pub mod gossip {
    use std::net::SocketAddr;

    use opsbro_types::NodeUuid;
    use serde::{Deserialize, Serialize};

    /// `GET`: every known member ([`Member`] list, sorted by name).
    pub const MEMBERS: &str = "/agent/members";
    /// `GET`: membership history ([`HistoryItem`] list, oldest first).
    pub const HISTORY: &str = "/agent/members/history";
    /// `POST` [`JoinRequest`]: join a cluster through a node; answers [`JoinAnswer`].
    pub const JOIN: &str = "/agent/join";
    /// `POST`: this agent leaves the cluster and stops.
    pub const LEAVE: &str = "/agent/leave";
    /// `POST /agent/leave/{node}`: mark another node as left for good.
    pub const LEAVE_NODE: &str = "/agent/leave/{node}";
    /// `GET /agent/ping/{node}`: a node's state ([`PingAnswer`]).
    pub const PING: &str = "/agent/ping/{node}";
    /// `GET`: recent user events; `POST` [`NewEvent`]: send one.
    pub const EVENTS: &str = "/agent/events";
    /// `GET`: the zone tree as this node sees it ([`ZoneView`] map, by name).
    pub const ZONES: &str = "/agent/zones";
    /// `PUT` [`ZoneChange`]: move this node to another zone (persisted); answers
    /// [`ZoneChangeAnswer`].
    pub const ZONE: &str = "/agent/zone";
    /// `POST /agent/zones/{zone}/key` [`ZoneKeyRequest`]: generate or import the gossip key of
    /// a zone on this node; answers [`ZoneKeyAnswer`].
    pub const ZONE_KEY: &str = "/agent/zones/{zone}/key";

    /// A zone of the tree, seen from this node.
    #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct ZoneView {
        /// Name.
        pub name: String,
        /// The zone above it.
        pub parent: Option<String>,
        /// Its direct sub-zones.
        #[serde(rename = "sub-zones")]
        pub sub_zones: Vec<String>,
        /// `our`, `upper`, `lower` or `other`, from this node's zone.
        pub relation: String,
        /// This node's zone.
        pub is_our_zone: bool,
        /// This node holds the zone's gossip key.
        pub have_gossip_key: bool,
        /// Members of this zone this node knows (alive or not).
        pub members: usize,
    }

    /// `PUT /agent/zone`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ZoneChange {
        /// The new zone.
        pub zone: String,
    }

    /// The answer to a zone change (the original's `{success, text}`).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ZoneChangeAnswer {
        /// It changed (or already was).
        pub success: bool,
        /// What happened.
        pub text: String,
    }

    /// `POST /agent/zones/{zone}/key`. `op` `import` (the default): keep `key` (base64 of 32
    /// bytes, `opsbro agent keygen`), or a generated one when absent, as the zone's key (an
    /// existing key is replaced only with `erase`). A rotation without a gap, on every node
    /// holding the zone's key: `install` (opens, does not seal), then `use` (seals), then
    /// `remove` (the old one).
    #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct ZoneKeyRequest {
        /// `import` (default), `install`, `use` or `remove`.
        pub op: Option<String>,
        /// The key.
        pub key: Option<String>,
        /// With `import`: replace the zone's key if it has one.
        pub erase: bool,
    }

    /// The zone's key after the change.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ZoneKeyAnswer {
        /// Zone.
        pub zone: String,
        /// The key's id (never the key).
        pub key_id: String,
        /// Where it is kept.
        pub file: String,
        /// The key itself, when it was generated here (to import on the zone's other nodes).
        pub generated: Option<String>,
        /// The ids of every key this node holds for the zone, the sealing one first.
        #[serde(default)]
        pub key_ids: Vec<String>,
    }

    /// A cluster member.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Member {
        /// Identity.
        pub uuid: NodeUuid,
        /// Unique name.
        pub name: String,
        /// Human-friendly name.
        pub display_name: String,
        /// Gossip address.
        pub addr: SocketAddr,
        /// Zone.
        pub zone: String,
        /// Groups.
        pub groups: Vec<String>,
        /// Proxy node flag.
        pub is_proxy: bool,
        /// Incarnation.
        pub incarnation: u64,
        /// `alive`, `suspect`, `dead` or `left`.
        pub state: String,
        /// Agent version.
        pub version: String,
        /// True for the agent answering.
        pub is_self: bool,
        /// Its active checks and their states, as gossiped.
        #[serde(default)]
        pub checks: Vec<MemberCheck>,
        /// Why it is in maintenance (`opsbro agent maintenance on`); absent when it is not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub maintenance: Option<String>,
        /// Its services, as gossiped.
        #[serde(default)]
        pub services: Vec<MemberService>,
    }

    /// A service of a member, as gossiped.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MemberService {
        /// Service name.
        pub name: String,
        /// Port (0: none).
        pub port: u16,
        /// `passing`, `warning`, `critical` or `pending`.
        pub state: String,
        /// Why it is in maintenance; absent when it is not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub maintenance: Option<String>,
    }

    /// A check of a member, as gossiped.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MemberCheck {
        /// Check name.
        pub name: String,
        /// `ok`, `warning`, `critical`, `unknown` or `pending`.
        pub state: String,
    }

    /// One membership change.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct HistoryItem {
        /// When, in milliseconds since the Unix epoch.
        pub time_ms: u64,
        /// Node.
        pub uuid: NodeUuid,
        /// Its name.
        pub name: String,
        /// Previous state (absent: newly known).
        pub old: Option<String>,
        /// New state.
        pub new: String,
    }

    /// Body of `POST /agent/join`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct JoinRequest {
        /// `host[:port]` of any cluster member.
        pub addr: String,
    }

    /// Answer of `POST /agent/join`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct JoinAnswer {
        /// The address joined.
        pub joined: SocketAddr,
        /// Members known after the exchange (this node included).
        pub members: usize,
    }

    /// Answer of `GET /agent/ping/{node}`: the node as this agent sees it, and the outcome of a
    /// probe sent now.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct PingAnswer {
        /// The node.
        pub member: Member,
        /// Whether it acked the probe in time.
        pub reachable: bool,
        /// Round-trip time in milliseconds, when it answered.
        pub rtt_ms: Option<u64>,
    }

    /// Body of `POST /agent/events`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct NewEvent {
        /// Event type.
        #[serde(rename = "type")]
        pub kind: String,
        /// Optional text payload (≤ 512 bytes).
        #[serde(default)]
        pub payload: String,
    }

    /// A user event.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Event {
        /// Id (hex).
        pub id: String,
        /// Type.
        #[serde(rename = "type")]
        pub kind: String,
        /// Payload as text (lossy UTF-8).
        pub payload: String,
        /// Origin node uuid.
        pub origin: NodeUuid,
        /// Creation time at the origin (ms since the Unix epoch).
        pub created_ms: u64,
    }

    /// `POST` [`DetectRequest`]: broadcast a detect-ping on the LAN; answers [`DetectAnswer`].
    pub const DETECT: &str = "/agent/detect";

    /// Body of `POST /agent/detect`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct DetectRequest {
        /// Seconds to collect answers (0.1 to 60).
        pub timeout_secs: f64,
        /// Join the node opsbro's rule picks (a proxy node, else the first other node).
        #[serde(default)]
        pub auto_join: bool,
    }

    /// Answer of `POST /agent/detect`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct DetectAnswer {
        /// Nodes that answered (never this agent), sorted by name.
        pub nodes: Vec<Member>,
        /// The node joined, with `auto_join`.
        pub joined: Option<Member>,
    }

    /// `GET`: this agent's keys ([`Keyring`]); `POST` [`KeyringRequest`]: change the keyring of
    /// every node (applied here, then spread through the encrypted gossip).
    pub const KEYRING: &str = "/agent/keyring";

    /// A keyring change.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum KeyringOp {
        /// Add a key: it opens packets at once.
        Install,
        /// Make an installed key the one that seals.
        Use,
        /// Remove a key that is not the primary.
        Remove,
    }

    /// Body of `POST /agent/keyring`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyringRequest {
        /// What to do.
        pub op: KeyringOp,
        /// The key, base64 of 32 bytes (as printed by `opsbro agent keygen`).
        pub key: String,
    }

    /// One key, by its public id.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyInfo {
        /// Hex id (first 4 bytes of SHA-256 of the key): safe to show.
        pub id: String,
        /// Whether this key seals outgoing packets.
        pub primary: bool,
    }

    /// Answer of the keyring routes.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Keyring {
        /// Whether cluster traffic is encrypted.
        pub encrypted: bool,
        /// Installed keys, primary first.
        pub keys: Vec<KeyInfo>,
    }

    /// Gossip counters shown by `agent info`.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Counters {
        /// Datagrams received.
        pub udp_in: u64,
        /// Datagrams sent.
        pub udp_out: u64,
        /// Bytes received over UDP.
        pub bytes_in: u64,
        /// Bytes sent over UDP.
        pub bytes_out: u64,
        /// Plaintext packets refused because the cluster is encrypted.
        pub rejected_plaintext: u64,
        /// Encrypted packets refused because this agent has no key.
        pub rejected_no_key: u64,
        /// Packets sealed with a key this agent does not have.
        pub rejected_unknown_key: u64,
        /// Packets that failed authentication.
        pub rejected_tampered: u64,
        /// Packets that decrypted (or were plaintext) but did not decode.
        pub malformed: u64,
        /// Datagrams over the size limit.
        pub oversize: u64,
        /// Push-pull exchanges served or started.
        pub push_pulls: u64,
        /// Push-pull exchanges that failed (connect, timeout, refused frame).
        pub push_pull_errors: u64,
        /// Datagrams dropped because the gossip task was overloaded.
        pub overloaded: u64,
        /// Cluster TCP connections refused because too many were open.
        pub connections_refused: u64,
        /// Authentic packets refused as replays of packets already received.
        #[serde(default)]
        pub rejected_replayed: u64,
        /// Authentic packets refused as sent outside the replay window (clocks apart?).
        #[serde(default)]
        pub rejected_stale: u64,
        /// News refused because its incarnation was too far ahead of the known one.
        #[serde(default)]
        pub incarnations_refused: u64,
        /// New members refused: the member table was full, or one peer introduced too many.
        #[serde(default)]
        pub members_refused: u64,
        /// Answers to unauthenticated datagrams not sent (or sent smaller) because they would
        /// have been larger than the question.
        #[serde(default)]
        pub replies_capped: u64,
    }
}

/// Evaluator routes and shapes.
pub mod evaluator {
    use serde::{Deserialize, Serialize};

    /// `POST` [`EvalRequest`]: evaluate an expression on this agent; answers [`EvalAnswer`].
    pub const EVAL: &str = "/agent/evaluator/eval";
    /// `GET`: the function library ([`FunctionInfo`] list).
    pub const LIST: &str = "/agent/evaluator/list";

    /// Body of `POST /agent/evaluator/eval`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct EvalRequest {
        /// The expression (opsbro syntax or rhai).
        pub expr: String,
    }

    /// Answer of `POST /agent/evaluator/eval`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct EvalAnswer {
        /// The value.
        pub value: serde_json::Value,
    }

    /// One library function.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct FunctionInfo {
        /// Name.
        pub name: String,
        /// Call shape.
        pub prototype: String,
        /// What it does.
        pub doc: String,
        /// Family.
        pub group: String,
    }
}

/// Detector and pack routes and shapes.
pub mod detectors {
    use serde::{Deserialize, Serialize};

    /// `GET`: every detector's state ([`DetectorState`] list).
    pub const STATE: &str = "/agent/detectors";
    /// `POST`: run every detector now; answers the state after the run.
    pub const RUN: &str = "/agent/detectors/run";
    /// `GET`: loaded packs and load diagnostics ([`Packs`]).
    pub const PACKS: &str = "/packs";
    /// `GET`: this node's group changes, oldest first ([`GroupChange`] list).
    pub const HISTORY: &str = "/agent/detectors/history";

    /// A change of this node's groups (static ones and detected ones).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct GroupChange {
        /// When, ms since the Unix epoch.
        pub time_ms: u64,
        /// Groups the node gained.
        pub added: Vec<String>,
        /// Groups the node lost.
        pub removed: Vec<String>,
        /// The node's groups after the change.
        pub groups: Vec<String>,
    }

    /// One detector.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct DetectorState {
        /// `<pack>/<name>`.
        pub name: String,
        /// Pack.
        pub pack: String,
        /// Interval in seconds.
        pub interval_secs: f64,
        /// The expression.
        pub apply_if: String,
        /// Groups it adds, as written (a group may be a template:
        /// `ec2-region::{{collector.ec2.region}}`).
        pub groups: Vec<String>,
        /// The groups its last run gave, templates rendered.
        #[serde(default)]
        pub rendered_groups: Vec<String>,
        /// Groups of the last run left out, and why (a placeholder without a value, a value
        /// that is not a group name).
        #[serde(default)]
        pub skipped_groups: Vec<String>,
        /// Result of the last run (None: not run yet).
        pub matched: Option<bool>,
        /// Error of the last run.
        pub error: Option<String>,
        /// When it last ran (ms since the Unix epoch).
        pub last_run_ms: Option<u64>,
    }

    /// One pack.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct PackInfo {
        /// Name.
        pub name: String,
        /// Description.
        pub description: String,
        /// `embedded` or the directory (the highest level that gave it objects).
        pub source: String,
        /// Number of detectors.
        pub detectors: usize,
        /// Number of checks.
        #[serde(default)]
        pub checks: usize,
        /// Number of handlers.
        #[serde(default)]
        pub handlers: usize,
        /// Number of generators.
        #[serde(default)]
        pub generators: usize,
        /// Number of compliance rules.
        #[serde(default)]
        pub compliance: usize,
        /// Number of dashboards.
        #[serde(default)]
        pub dashboards: usize,
        /// Number of tutorials.
        #[serde(default)]
        pub tutorials: usize,
        /// Every level that gave it objects, lowest first (`embedded`, then directories).
        #[serde(default)]
        pub levels: Vec<String>,
        /// Every object and the file it comes from.
        #[serde(default)]
        pub objects: Vec<PackObject>,
        /// Its parameters (`parameters/*.yml`, merged over the levels).
        #[serde(default)]
        pub parameters: serde_json::Value,
    }

    /// One object of a pack.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PackObject {
        /// `detector`, `check`, `handler`, `generator`, `compliance`, `dashboard`, `tutorial`.
        pub kind: String,
        /// Name.
        pub name: String,
        /// The file it was read from.
        pub file: String,
    }

    /// Answer of `GET /packs`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Packs {
        /// Loaded packs.
        pub packs: Vec<PackInfo>,
        /// Problems met while loading (`file:line: message`).
        pub diagnostics: Vec<String>,
    }
}

/// Dashboards and tutorials of the packs (`opsbro dashboards`, `opsbro tutorials`).
pub mod dashboards {
    use serde::{Deserialize, Serialize};

    /// `GET`: every dashboard ([`DashboardInfo`] list).
    pub const ALL: &str = "/dashboards";
    /// `GET /dashboards/{name}`: one dashboard with its values computed now ([`Dashboard`]);
    /// `name` is `<pack>/<file>` or just `<file>` when no other pack has one of that name.
    pub const ONE: &str = "/dashboards/{*name}";
    /// `GET`: every tutorial ([`Tutorial`] list).
    pub const TUTORIALS: &str = "/tutorials";

    /// A dashboard in a list.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct DashboardInfo {
        /// `<pack>/<file>`.
        pub name: String,
        /// Title.
        pub title: String,
        /// The file it was read from.
        pub file: String,
    }

    /// A dashboard with its values.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Dashboard {
        /// `<pack>/<file>`.
        pub name: String,
        /// Title.
        pub title: String,
        /// The widget tree.
        pub content: Widget,
    }

    /// One widget: a split holds widgets, the others a value.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Widget {
        /// `vertical_split`, `horizontal_split`, `text`, `horizontal_gauge`,
        /// `horizontal_chart` or `donut`.
        pub kind: String,
        /// Title.
        #[serde(default)]
        pub title: String,
        /// Unit shown after the value.
        #[serde(default)]
        pub unit: String,
        /// The value of its expression.
        #[serde(default)]
        pub value: Option<serde_json::Value>,
        /// Why the expression has no value.
        #[serde(default)]
        pub error: Option<String>,
        /// Widgets of a split.
        #[serde(default)]
        pub children: Vec<Widget>,
    }

    /// A tutorial.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Tutorial {
        /// `<pack>/<name>`.
        pub name: String,
        /// Title.
        pub title: String,
        /// The file it was read from.
        pub file: String,
        /// The other files of its folder (data the original's web UI played).
        #[serde(default)]
        pub files: Vec<String>,
    }
}

/// Collector routes and shapes.
pub mod collectors {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    /// `GET`: every collector ([`Collectors`]); `GET /collectors/{name}`: one ([`Collector`]).
    pub const ALL: &str = "/collectors";
    /// `GET /collectors/{name}`.
    pub const ONE: &str = "/collectors/{name}";
    /// `POST /collectors/{name}/run`: run that collector now; answers its [`Collector`].
    pub const RUN: &str = "/collectors/{name}/run";
    /// `GET`: collector state changes, oldest first ([`CollectorChange`] list).
    pub const HISTORY: &str = "/agent/collectors/history";

    /// A collector changed state (`pending` → `ok`, `ok` → `error`, ...).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CollectorChange {
        /// When, ms since the Unix epoch.
        pub time_ms: u64,
        /// Collector.
        pub name: String,
        /// Previous state.
        pub old_state: String,
        /// New state.
        pub state: String,
        /// Why it failed or does not apply, for those states.
        pub message: Option<String>,
    }

    /// One collector's latest run.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Collector {
        /// `ok`, `error`, `not-eligible` or `pending`.
        pub state: String,
        /// When it last ran (ms since the Unix epoch).
        pub last_run_ms: Option<u64>,
        /// What it collected (nested; numbers are metrics).
        pub data: serde_json::Value,
        /// Why it failed or does not apply.
        pub message: Option<String>,
    }

    /// Every collector by name.
    pub type Collectors = BTreeMap<String, Collector>;
}

/// Checks and handlers (`/monitoring/...`).
pub mod monitoring {
    use opsbro_types::NodeUuid;
    use serde::{Deserialize, Serialize};

    /// `GET`: this node's checks ([`NodeChecks`]).
    pub const STATE: &str = "/monitoring/state";
    /// `GET /monitoring/state/{node}`: any node's checks by name or uuid ([`NodeChecks`]; for
    /// other nodes, the states they gossip).
    pub const STATE_NODE: &str = "/monitoring/state/{node}";
    /// `GET`: this node's check state changes, oldest first ([`HistoryEntry`] list;
    /// `?limit=N`, default 100).
    pub const HISTORY: &str = "/monitoring/history";
    /// `GET`: handlers and their counters ([`HandlerView`] list).
    pub const HANDLERS: &str = "/monitoring/handlers";
    /// `PUT`: the status of a TTL check of this node ([`TtlUpdate`] body), as Consul's
    /// `/v1/agent/check/pass|warn|fail/<id>`; 404 for an unknown or inactive check, 409 for a
    /// check that is not a TTL check.
    pub const TTL: &str = "/monitoring/ttl/{*name}";

    /// The status a TTL check holds until its TTL passes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum TtlStatus {
        /// OK.
        Pass,
        /// WARNING.
        Warn,
        /// CRITICAL.
        Fail,
    }

    /// Body of `PUT /monitoring/ttl/{name}`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TtlUpdate {
        /// The new status.
        pub status: TtlStatus,
        /// Output to show with it (default: a sentence naming the status).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub note: Option<String>,
    }

    /// One performance data item of a plugin run.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct PerfData {
        /// Label.
        pub label: String,
        /// Value.
        pub value: f64,
        /// Unit (may be empty).
        pub unit: String,
        /// Warning threshold as written.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub warning: Option<String>,
        /// Critical threshold as written.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub critical: Option<String>,
        /// Minimum.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub min: Option<f64>,
        /// Maximum.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max: Option<f64>,
    }

    /// A check. For another node only `name`, `state` and `state_id` are known (from gossip).
    #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct CheckView {
        /// `<pack>/<file>`.
        pub name: String,
        /// Display name.
        pub display_name: String,
        /// Pack.
        pub pack: String,
        /// `expression` or `script`.
        pub kind: String,
        /// `ok`, `warning`, `critical`, `unknown` or `pending` (confirmed, after flap damping).
        pub state: String,
        /// 0 ok, 1 warning, 2 critical, 3 unknown/pending.
        pub state_id: u8,
        /// State of the latest run (may differ from `state` while damping).
        pub last_result: String,
        /// Output of the latest run.
        pub output: String,
        /// Long output (plugin lines after the first).
        pub long_output: String,
        /// Plugin performance data of the latest run.
        pub perfdata: Vec<PerfData>,
        /// Runs so far.
        pub runs: u64,
        /// Results in a row pointing to another state, and how many confirm it.
        pub attempts: u32,
        /// See `attempts`.
        pub attempts_needed: u32,
        /// Last run, ms since the Unix epoch.
        pub last_run_ms: Option<u64>,
        /// Last confirmed change, ms since the Unix epoch.
        pub last_change_ms: Option<u64>,
        /// Seconds between runs.
        pub interval_secs: f64,
        /// Group it runs for (`*`: every node).
        pub if_group: String,
        /// Handlers it notifies.
        pub handlers: Vec<String>,
        /// Why it cannot run (an expression that does not compile).
        pub error: Option<String>,
    }

    /// The checks of one node.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct NodeChecks {
        /// Node name.
        pub node: String,
        /// Node uuid.
        pub uuid: NodeUuid,
        /// True when the answering agent is that node (full details).
        pub is_self: bool,
        /// Its active checks, sorted by name.
        pub checks: Vec<CheckView>,
    }

    /// One confirmed change of a check's state.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct HistoryEntry {
        /// When, ms since the Unix epoch.
        pub time_ms: u64,
        /// Check name.
        pub check: String,
        /// Display name.
        pub display_name: String,
        /// Previous state.
        pub old_state: String,
        /// New state.
        pub state: String,
        /// Output of the run that changed it.
        pub output: String,
    }

    /// A handler and what it did.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct HandlerView {
        /// Name (`id` or file stem).
        pub name: String,
        /// Pack.
        pub pack: String,
        /// `mail`, `slack` or `command`.
        pub kind: String,
        /// Enabled.
        pub enabled: bool,
        /// Check states it fires for.
        pub severities: Vec<String>,
        /// What it listens to (`check`, `group`, `node`).
        pub events: Vec<String>,
        /// Notifications delivered.
        pub sent: u64,
        /// Notifications given up after every retry.
        pub failed: u64,
        /// Failed attempts that were retried.
        pub retried: u64,
        /// Notifications dropped (queue full) or merged (command `min_interval`).
        pub dropped: u64,
        /// Last error.
        pub last_error: Option<String>,
        /// Last delivery, ms since the Unix epoch.
        pub last_sent_ms: Option<u64>,
    }
}

/// The replicated KV store (`/kv/...`).
pub mod kv {
    use std::net::SocketAddr;

    use opsbro_types::NodeUuid;
    use serde::{Deserialize, Serialize};

    /// `GET /kv/?prefix=P`: live keys under a prefix ([`Entry`] list).
    pub const ROOT: &str = "/kv/";
    /// `GET` ([`Entry`]; `?raw` for the bytes; `?index=N&wait=30s` blocks until the key's
    /// `modify_index` passes N; `?locate` answers [`Location`]), `PUT` (body = value;
    /// `?cas=INDEX`, `?ttl=30s`; answers [`Written`]), `DELETE` ([`Written`]).
    pub const KEY: &str = "/kv/{*key}";
    /// `GET`: one page of a whole-cluster export ([`ExportPage`]): every entry with its
    /// versions, tombstones included, newest copy of each key, in key order; `?prefix=P`,
    /// `?after=KEY` (the previous page's `next`). A page some keys could be missing from (too
    /// many nodes silent) is refused with 503, never answered short.
    pub const EXPORT: &str = "/kv-backup/export";
    /// `POST`: merge exported entries by version (body: [`ExportEntry`] lines, NDJSON, at most
    /// [`crate::MAX_BODY_BYTES`]; `?line=N`: the file line number of the first body line, for
    /// the error messages); answers [`ImportAnswer`].
    pub const IMPORT: &str = "/kv-backup/import";

    /// A key and its value.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Entry {
        /// Key.
        pub key: String,
        /// Value, base64.
        pub value: String,
        /// Version of the last write (pass it as `?cas=`, or `?index=` to wait for the next).
        pub modify_index: u64,
        /// Version of the write that created the key.
        pub create_index: u64,
        /// When it expires (ms since the Unix epoch), for keys written with `?ttl=`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub expires_ms: Option<u64>,
    }

    /// Answer of a write.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Written {
        /// Key.
        pub key: String,
        /// Its new version.
        pub modify_index: u64,
        /// True for a delete.
        #[serde(default)]
        pub deleted: bool,
    }

    /// One owner of a key.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Owner {
        /// Uuid.
        pub uuid: NodeUuid,
        /// Name.
        pub name: String,
        /// Cluster address.
        pub addr: SocketAddr,
    }

    /// Where a key lives: its owners, coordinator first.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Location {
        /// Key.
        pub key: String,
        /// Owners, coordinator first.
        pub owners: Vec<Owner>,
    }

    /// The format name in an export's first line ([`ExportHeader::format`]) and last line
    /// ([`ExportFooter::end`]).
    pub const EXPORT_FORMAT: &str = "opsbro-kv-export";
    /// The export format version this build writes and reads (a future format bumps it, so
    /// an old importer refuses a file it would misread).
    pub const EXPORT_VERSION: u32 = 1;

    /// First line of an export (`opsbro kv export`): one JSON object per line (NDJSON), then
    /// one [`ExportEntry`] per line, then an [`ExportFooter`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ExportHeader {
        /// Always [`EXPORT_FORMAT`].
        pub format: String,
        /// [`EXPORT_VERSION`] when written.
        pub version: u32,
        /// When the export started (ms since the Unix epoch).
        pub created_ms: u64,
        /// Name of the node that gathered it.
        #[serde(default)]
        pub source: String,
        /// The key prefix exported (empty: every key).
        #[serde(default)]
        pub prefix: String,
    }

    /// One entry of an export, with the versions that decide which copy wins on import.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ExportEntry {
        /// Key.
        pub key: String,
        /// Value, standard base64 (any bytes round-trip).
        pub value: String,
        /// Version of the last write (a hybrid-logical-clock stamp).
        pub modify_index: u64,
        /// Version of the write that created the key.
        pub create_index: u64,
        /// A delete (tombstone): importing it deletes an older copy.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub deleted: bool,
        /// Expiry (ms since the Unix epoch) of a key written with a TTL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub expires_ms: Option<u64>,
    }

    /// Last line of an export: a file without it was cut short.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ExportFooter {
        /// Always [`EXPORT_FORMAT`].
        pub end: String,
        /// Entry lines in the file.
        pub entries: u64,
    }

    /// One line of an export file, told apart by its fields (`key`, `end` or `format`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ExportLine {
        /// The first line.
        Header(ExportHeader),
        /// An entry.
        Entry(ExportEntry),
        /// The last line.
        Footer(ExportFooter),
    }

    impl ExportLine {
        /// Parse one line (without its newline); the error says what is wrong with it.
        pub fn parse(line: &str) -> Result<ExportLine, String> {
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
            let Some(object) = value.as_object() else {
                return Err("not a JSON object".to_owned());
            };
            let shape = |e: serde_json::Error| e.to_string();
            if object.contains_key("key") {
                serde_json::from_value(value)
                    .map(ExportLine::Entry)
                    .map_err(shape)
            } else if object.contains_key("end") {
                serde_json::from_value(value)
                    .map(ExportLine::Footer)
                    .map_err(shape)
            } else if object.contains_key("format") {
                serde_json::from_value(value)
                    .map(ExportLine::Header)
                    .map_err(shape)
            } else {
                Err("neither an entry (`key`), a header (`format`) nor an end line (`end`)".into())
            }
        }

        /// The line as JSON text (no newline).
        pub fn to_line(&self) -> String {
            let text = match self {
                ExportLine::Header(h) => serde_json::to_string(h),
                ExportLine::Entry(e) => serde_json::to_string(e),
                ExportLine::Footer(f) => serde_json::to_string(f),
            };
            // Plain structs of strings and numbers always serialize.
            text.unwrap_or_default()
        }
    }

    impl ExportHeader {
        /// Why this build cannot read a file with this header, if it cannot.
        pub fn check(&self) -> Result<(), String> {
            if self.format != EXPORT_FORMAT {
                return Err(format!(
                    "not an opsbro KV export (format `{}`, expected `{EXPORT_FORMAT}`)",
                    self.format
                ));
            }
            if self.version != EXPORT_VERSION {
                return Err(format!(
                    "export format version {} is not supported by this opsbro (it reads version {EXPORT_VERSION})",
                    self.version
                ));
            }
            Ok(())
        }
    }

    /// Answer of `GET /kv-backup/export`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ExportPage {
        /// Entries in key order.
        pub entries: Vec<ExportEntry>,
        /// Ask again with `?after=` this key; none: this was the last page.
        pub next: Option<String>,
    }

    /// A rejected line of an import.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LineError {
        /// Line number in the file (the first line is 1).
        pub line: u64,
        /// What is wrong.
        pub error: String,
    }

    /// Answer of `POST /kv-backup/import`.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ImportAnswer {
        /// Entries the cluster now holds at the version of the file (written, or already
        /// there at that version).
        pub imported: u64,
        /// Entries left alone: the cluster holds a newer version of the key.
        pub skipped_older: u64,
        /// Lines refused (malformed, bad key, implausible version, not enough owners).
        pub errors: Vec<LineError>,
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn export_lines_round_trip_and_are_told_apart() {
            let header = ExportLine::Header(ExportHeader {
                format: EXPORT_FORMAT.into(),
                version: EXPORT_VERSION,
                created_ms: 1_700_000_000_000,
                source: "alpha".into(),
                prefix: String::new(),
            });
            let entry = ExportLine::Entry(ExportEntry {
                key: "app/ключ".into(),
                value: "AP8=".into(),
                modify_index: 111_411_200_000_000_000,
                create_index: 7,
                deleted: false,
                expires_ms: Some(1_700_000_060_000),
            });
            let tombstone = ExportLine::Entry(ExportEntry {
                key: "gone".into(),
                value: String::new(),
                modify_index: 9,
                create_index: 9,
                deleted: true,
                expires_ms: None,
            });
            let footer = ExportLine::Footer(ExportFooter {
                end: EXPORT_FORMAT.into(),
                entries: 2,
            });
            for line in [header, entry, tombstone, footer] {
                let text = line.to_line();
                assert!(!text.contains('\n'), "one line: {text}");
                assert_eq!(ExportLine::parse(&text), Ok(line));
            }
            // Defaults keep entry lines short: no `deleted: false`, no `expires_ms: null`.
            let plain = r#"{"key":"k","value":"","modify_index":2,"create_index":1}"#;
            let ExportLine::Entry(e) = ExportLine::parse(plain).expect("entry") else {
                panic!("not an entry");
            };
            assert_eq!(ExportLine::Entry(e).to_line(), plain);
        }

        #[test]
        fn bad_lines_say_what_is_wrong() {
            let err = |line: &str| ExportLine::parse(line).expect_err(line);
            assert!(err("{\"key\": \"k\"").starts_with("not JSON"));
            assert_eq!(err("[1]"), "not a JSON object");
            assert!(err(r#"{"key":"k","value":"","create_index":1}"#).contains("modify_index"));
            assert!(
                err(r#"{"key":"k","value":"","modify_index":-1,"create_index":1}"#)
                    .contains("invalid value")
            );
            assert!(err(r#"{"hello":1}"#).contains("neither"));
            let ExportLine::Header(future) =
                ExportLine::parse(r#"{"format":"opsbro-kv-export","version":2,"created_ms":0}"#)
                    .expect("header")
            else {
                panic!("not a header");
            };
            assert!(future.check().expect_err("v2").contains("version 2"));
            let ExportLine::Header(other) =
                ExportLine::parse(r#"{"format":"consul","version":1,"created_ms":0}"#)
                    .expect("header")
            else {
                panic!("not a header");
            };
            assert!(
                other
                    .check()
                    .expect_err("consul")
                    .contains("not an opsbro KV export")
            );
        }
    }
}

/// The event stream (websocket `ws://.../`, one text frame per event): what the agent's event bus
/// carries, as typed values. A frame is `{"channel": "...", "time_ms": N, "payload": {...}}`.
pub mod events {
    use serde::{Deserialize, Serialize};

    /// Every channel, in the order `opsbro events watch --help` lists them.
    pub const CHANNELS: [&str; 10] = [
        "node",
        "group",
        "check",
        "kv",
        "event",
        "service",
        "compliance",
        "exec",
        "raft",
        "docker",
    ];

    /// One event: when, and what (its channel is its kind).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Frame {
        /// Unix milliseconds.
        pub time_ms: u64,
        /// What happened, tagged with its channel.
        #[serde(flatten)]
        pub event: Payload,
    }

    /// What happened, by channel.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "channel", content = "payload", rename_all = "lowercase")]
    pub enum Payload {
        /// A member joined, became suspect, died, left or came back.
        Node(NodeChanged),
        /// This node's groups changed (detectors, static groups).
        Group(GroupChanged),
        /// A check of this node changed state.
        Check(CheckChanged),
        /// A key changed in this node's copy of the store.
        Kv(KeyChanged),
        /// A user event arrived.
        Event(super::gossip::Event),
        /// A service instance appeared, changed health or maintenance, or went away (anywhere
        /// in the cluster).
        Service(ServiceChanged),
        /// A compliance object of this node changed state.
        Compliance(ComplianceChanged),
        /// A signed command was requested from this node, or run (or refused) on it.
        Exec(super::executors::HistoryEntry),
        /// The Raft group got a leader, a lock was taken or released, an election changed.
        Raft(super::raft::RaftEvent),
        /// The host's Docker daemon reported something (a container started, died, became
        /// unhealthy, was OOM-killed...).
        Docker(DockerEvent),
    }

    impl Payload {
        /// The channel name (one of [`CHANNELS`]).
        pub fn channel(&self) -> &'static str {
            match self {
                Payload::Node(_) => "node",
                Payload::Group(_) => "group",
                Payload::Check(_) => "check",
                Payload::Kv(_) => "kv",
                Payload::Event(_) => "event",
                Payload::Service(_) => "service",
                Payload::Compliance(_) => "compliance",
                Payload::Exec(_) => "exec",
                Payload::Raft(_) => "raft",
                Payload::Docker(_) => "docker",
            }
        }
    }

    /// `node`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct NodeChanged {
        /// Node name.
        pub name: String,
        /// Node uuid.
        pub uuid: String,
        /// Gossip address.
        pub addr: String,
        /// New state (`alive`, `suspect`, `dead`, `left`).
        pub state: String,
        /// Previous state.
        pub old_state: String,
    }

    /// Whether a group came or went.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum GroupAction {
        /// Added.
        Add,
        /// Removed.
        Remove,
    }

    /// `group`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct GroupChanged {
        /// The group.
        pub group: String,
        /// Added or removed.
        pub action: GroupAction,
    }

    /// `compliance`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ComplianceChanged {
        /// Object name (`<pack>/<file>`).
        pub name: String,
        /// Its `name` key.
        pub display_name: String,
        /// `audit` or `enforcing`.
        pub mode: String,
        /// New state (`COMPLIANT`, `FIXED`, `ERROR`, `UNKNOWN`, `NOT-ELIGIBLE`...).
        pub state: String,
        /// Previous state.
        pub old_state: String,
        /// What its rules reported, one line each.
        pub output: String,
    }

    /// `service`: one instance (a service on one node).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ServiceChanged {
        /// Service name.
        pub service: String,
        /// The node that runs it.
        pub node: String,
        /// That node's uuid.
        pub uuid: String,
        /// `passing`, `warning`, `critical`, `pending`, `maintenance` or `gone`.
        pub state: String,
        /// What it was (`new` for an instance that was not there).
        pub old_state: String,
    }

    /// `check`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CheckChanged {
        /// `<pack>/<name>`.
        pub name: String,
        /// Display name.
        pub display_name: String,
        /// Pack.
        pub pack: String,
        /// New state (`ok`, `warning`, `critical`, `unknown`).
        pub state: String,
        /// Previous state.
        pub old_state: String,
        /// Nagios-style state id of the new state (0 ok .. 3 unknown).
        pub state_id: u8,
        /// First line of output.
        pub output: String,
        /// The rest of the output.
        pub long_output: String,
    }

    /// What happened to a key.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum KeyAction {
        /// Written.
        Put,
        /// Deleted.
        Delete,
    }

    /// `docker`: one event of the daemon's `/events` stream.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct DockerEvent {
        /// What it is about: `container`, `image`, `network`, `volume`, `daemon`, `pod`...
        pub kind: String,
        /// What happened: `start`, `die`, `kill`, `oom`, `health_status: unhealthy`...
        pub action: String,
        /// The object's id.
        pub id: String,
        /// Its name (a container's or image's), when the daemon gave one.
        pub name: String,
        /// A container's image.
        pub image: String,
        /// The daemon's other attributes (`exitCode`, labels...), a bounded few.
        pub attributes: std::collections::BTreeMap<String, String>,
        /// When the daemon says it happened (ms since the Unix epoch).
        pub daemon_time_ms: u64,
    }

    /// `kv`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyChanged {
        /// The key.
        pub key: String,
        /// Written or deleted.
        pub action: KeyAction,
        /// The version now held.
        pub modify_index: u64,
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn frames_keep_the_stream_shape_and_read_back() {
            let f = Frame {
                time_ms: 5,
                event: Payload::Kv(KeyChanged {
                    key: "a/b".into(),
                    action: KeyAction::Delete,
                    modify_index: 9,
                }),
            };
            let text = serde_json::to_string(&f).expect("json");
            assert_eq!(
                text,
                r#"{"time_ms":5,"channel":"kv","payload":{"key":"a/b","action":"delete","modify_index":9}}"#
            );
            assert_eq!(serde_json::from_str::<Frame>(&text).expect("back"), f);
            let g: Frame = serde_json::from_str(
                r#"{"channel":"group","time_ms":1,"payload":{"group":"web","action":"add"}}"#,
            )
            .expect("group");
            assert_eq!(g.event.channel(), "group");
        }
    }
}

/// Services: the cluster's catalog, this node's services and maintenance mode.
pub mod catalog {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use opsbro_types::NodeUuid;
    use serde::{Deserialize, Serialize};

    /// `GET`: every service of the cluster ([`ServiceSummary`] list, by name).
    pub const SERVICES: &str = "/catalog/services";
    /// `GET`: the instances of one service ([`ServiceInstance`] list); `?passing` keeps the
    /// healthy ones, `?tag=T` those with tag T, `?zone=Z` those of zone Z; blocking with
    /// `?index=N&wait=30s` (answers when the service's index passes N, or at the wait);
    /// the index is in the `X-Opsbro-Index` header.
    pub const SERVICE: &str = "/catalog/service/{name}";
    /// `GET`: this node's services ([`LocalService`] list).
    pub const LOCAL: &str = "/services";
    /// `POST`: register a service: the body is a service file (YAML or JSON, `service: {...}`),
    /// kept in the data dir and loaded at once ([`Registered`]).
    pub const REGISTER: &str = "/services/register";
    /// `DELETE`: deregister a service registered through the API.
    pub const ONE: &str = "/services/{name}";
    /// `PUT`: a service's maintenance mode ([`Maintenance`] body).
    pub const MAINTENANCE: &str = "/services/{name}/maintenance";
    /// `GET` / `PUT`: this node's maintenance mode ([`Maintenance`]).
    pub const AGENT_MAINTENANCE: &str = "/agent/maintenance";
    /// The header of blocking reads.
    pub const INDEX_HEADER: &str = "x-opsbro-index";

    /// A service across the cluster.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ServiceSummary {
        /// Name.
        pub name: String,
        /// Every tag some instance has.
        pub tags: Vec<String>,
        /// Instances on alive nodes.
        pub instances: usize,
        /// Of those, the ones DNS answers with (passing, not in maintenance).
        pub passing: usize,
    }

    /// One instance of a service: the service on one node.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ServiceInstance {
        /// Service name.
        pub service: String,
        /// Node name.
        pub node: String,
        /// Node uuid.
        pub uuid: NodeUuid,
        /// Node zone.
        pub zone: String,
        /// The node's state (`alive`, `suspect`).
        pub node_state: String,
        /// The address to connect to (the service's, else the node's).
        pub address: IpAddr,
        /// Port (0: none).
        pub port: u16,
        /// Tags.
        pub tags: Vec<String>,
        /// Metadata.
        pub meta: BTreeMap<String, String>,
        /// `passing`, `warning`, `critical` or `pending` (its checks, as the node gossips).
        pub state: String,
        /// Why the service is in maintenance; absent when it is not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub maintenance: Option<String>,
        /// Why its node is in maintenance; absent when it is not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub node_maintenance: Option<String>,
        /// What DNS does with it: true when it is answered.
        pub passing: bool,
    }

    /// A check of a local service.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ServiceCheck {
        /// Check name.
        pub name: String,
        /// `ok`, `warning`, `critical`, `unknown` or `pending`; `missing` when the check is not
        /// active on this node.
        pub state: String,
        /// Output of its latest run.
        pub output: String,
    }

    /// A service of this node.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LocalService {
        /// Name.
        pub name: String,
        /// The object (`<pack>/<file>`).
        pub object: String,
        /// The file it comes from.
        pub file: String,
        /// Registered with `opsbro services register` (may be deregistered).
        pub registered: bool,
        /// Runs here (`if_group` matches this node).
        pub active: bool,
        /// `if_group`.
        pub if_group: String,
        /// Port (0: none).
        pub port: u16,
        /// Address, when not the node's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub address: Option<IpAddr>,
        /// Tags.
        pub tags: Vec<String>,
        /// Metadata.
        pub meta: BTreeMap<String, String>,
        /// `passing`, `warning`, `critical` or `pending`.
        pub state: String,
        /// Its checks.
        pub checks: Vec<ServiceCheck>,
        /// Why it is in maintenance; absent when it is not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub maintenance: Option<String>,
    }

    /// Maintenance mode of the node or of a service.
    #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
    pub struct Maintenance {
        /// On or off.
        pub enable: bool,
        /// Why (shown in `members` and the catalog).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }

    /// Answer of a registration.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Registered {
        /// Service name.
        pub name: String,
        /// Where it is kept.
        pub file: String,
        /// What the reload changed.
        pub changes: Vec<String>,
        /// Warnings of the reload.
        #[serde(default)]
        pub warnings: Vec<String>,
    }
}

/// Signed remote execution (`opsbro executors ...`).
pub mod executors {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    /// `POST`: run a command on the alive members of a group ([`ExecRequest`]); the answer is
    /// NDJSON, one [`ExecLine`] per line as the results arrive.
    pub const EXEC: &str = "/executors/exec";
    /// `GET`: recent executions on this node ([`HistoryEntry`] list, oldest first; `?limit=N`).
    pub const HISTORY: &str = "/executors/history";
    /// `GET`: the executor of this node ([`ExecutorInfo`]).
    pub const STATE: &str = "/executors/state";

    /// What to run: a request already signed by the CLI (`signed`, base64), or the fields for
    /// the agent to sign with its `executor.private_key_file`.
    #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct ExecRequest {
        /// A signed request (base64 of its wire form).
        pub signed: Option<String>,
        /// Group of the targets (`*`: every node).
        pub group: Option<String>,
        /// Only this node.
        pub node: Option<String>,
        /// The shell command line.
        pub command: Option<String>,
        /// Seconds each target lets it run (default 60).
        pub timeout_secs: Option<u32>,
        /// Who asks (default: this node's name).
        pub requester: Option<String>,
    }

    /// What one target did.
    #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct ExecResult {
        /// Node name.
        pub node: String,
        /// `done` (it exited; see `rc`), `timeout` (killed at the timeout), `failed` (could not
        /// start), `refused` (the target said no; see `error`) or `unreachable`.
        pub state: String,
        /// Exit code, when it exited (none when killed by a signal).
        pub rc: Option<i32>,
        /// Its standard output (the first 64 KiB).
        pub stdout: String,
        /// Its standard error (the first 64 KiB).
        pub stderr: String,
        /// When it started on the target, ms since the Unix epoch.
        pub started_ms: Option<u64>,
        /// How long it ran.
        pub duration_ms: u64,
        /// Why it was refused, failed or is unreachable.
        pub error: Option<String>,
        /// Output was cut at 64 KiB.
        pub truncated: bool,
    }

    impl ExecResult {
        /// It ran and exited with 0.
        pub fn ok(&self) -> bool {
            self.state == "done" && self.rc == Some(0)
        }
    }

    /// How a request went, over all targets.
    #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct ExecSummary {
        /// Targets asked.
        pub targets: usize,
        /// Exited with 0.
        pub ok: usize,
        /// Exited with another code, or could not start.
        pub failed: usize,
        /// Killed at the timeout.
        pub timed_out: usize,
        /// Said no.
        pub refused: usize,
        /// Never answered.
        pub unreachable: usize,
        /// From the first send to the last result.
        pub duration_ms: u64,
    }

    impl ExecSummary {
        /// Count `r` in.
        pub fn add(&mut self, r: &ExecResult) {
            match r.state.as_str() {
                _ if r.ok() => self.ok += 1,
                "timeout" => self.timed_out += 1,
                "refused" => self.refused += 1,
                "unreachable" => self.unreachable += 1,
                _ => self.failed += 1,
            }
        }

        /// Every target returned 0.
        pub fn all_ok(&self) -> bool {
            self.ok == self.targets
        }
    }

    /// One line of `POST /executors/exec`'s answer.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum ExecLine {
        /// First: what was sent, to whom.
        Request {
            /// Request id.
            id: String,
            /// Target group.
            group: String,
            /// Only this node.
            node: Option<String>,
            /// The command.
            command: String,
            /// Who asked.
            requester: String,
            /// Seconds each target lets it run.
            timeout_secs: u32,
            /// The names of the targets.
            targets: Vec<String>,
        },
        /// A target accepted the request and started the command.
        Started {
            /// Node name.
            node: String,
            /// ms since the Unix epoch.
            started_ms: u64,
        },
        /// A target's result (or why there is none).
        Result(ExecResult),
        /// Last: every target answered or was given up on.
        Done(ExecSummary),
    }

    /// One execution seen by this node, as requester or as target (`executors history`, the
    /// `exec` event channel).
    #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct HistoryEntry {
        /// ms since the Unix epoch.
        pub time_ms: u64,
        /// `requester` (sent from here) or `target` (run or refused here).
        pub role: String,
        /// Request id.
        pub id: String,
        /// Who asked.
        pub requester: String,
        /// Id of the key that signed it (when it could be read).
        pub key_id: Option<String>,
        /// Target group.
        pub group: String,
        /// Only this node.
        pub node: Option<String>,
        /// The command.
        pub command: String,
        /// As a target: `running`, `done`, `timeout`, `failed` or `refused`; as requester:
        /// `sent`, then `done` with a summary.
        pub state: String,
        /// As a target: its exit code.
        pub rc: Option<i32>,
        /// As a target: how long it ran.
        pub duration_ms: u64,
        /// Why it was refused or failed.
        pub error: Option<String>,
        /// As requester: how it went.
        pub summary: Option<ExecSummary>,
    }

    /// An authorized key.
    #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct KeyView {
        /// Its id (hex of its first 8 bytes), as refusals name it.
        pub id: String,
        /// Its comment.
        pub comment: String,
    }

    /// The executor of a node.
    #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct ExecutorInfo {
        /// Commands are run here (some key is authorized).
        pub enabled: bool,
        /// The keys that may run commands here.
        pub authorized_keys: Vec<KeyView>,
        /// The key this node signs with for `opsbro executors exec` without `--key`.
        pub private_key_file: Option<String>,
        /// Requests a minute each key may send here.
        pub max_per_minute: u32,
        /// Commands running now.
        pub running: usize,
        /// Requests received (whatever came of them).
        pub received: u64,
        /// Commands run.
        pub ran: u64,
        /// Commands killed at their timeout.
        pub timed_out: u64,
        /// Requests refused, by reason (`unknown_key`, `bad_signature`, `expired`, `replayed`,
        /// `rate_limited`...).
        pub refused: BTreeMap<String, u64>,
        /// Requests sent from here (as requester).
        pub requests_sent: u64,
        /// Targets that did not answer requests sent from here.
        pub unreachable: u64,
    }
}

/// Compliance (`/compliance/...`).
pub mod compliance {
    use serde::{Deserialize, Serialize};

    /// `GET`: every compliance object of this node ([`ComplianceView`] list, by name).
    pub const STATE: &str = "/compliance/state";
    /// `GET`: compliance state changes, oldest first ([`HistoryEntry`] list; `?limit=N`).
    pub const HISTORY: &str = "/compliance/history";
    /// `POST`: run one object now (by name or display name) and answer its view after the run.
    pub const LAUNCH: &str = "/compliance/launch/{*name}";

    /// One line of a rule's report.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct InfoView {
        /// `COMPLIANT`, `FIX`, `ERROR` or `SUCCESS`.
        pub state: String,
        /// The text.
        pub text: String,
    }

    /// A rule.
    #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct RuleView {
        /// Name.
        pub name: String,
        /// `file-rights`, `package-install`, `repository`, `system-user` or `get-url`.
        #[serde(rename = "type")]
        pub kind: String,
        /// `PENDING`, `RUNNING`, `COMPLIANT`, `FIXED`, `ERROR`, `UNKNOWN` or `NOT-ELIGIBLE`.
        pub state: String,
        /// The state before the last run.
        pub old_state: String,
        /// The environment that matched in the last run.
        pub environment: Option<String>,
        /// What the last run reported.
        pub infos: Vec<InfoView>,
    }

    /// A compliance object.
    #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct ComplianceView {
        /// `<pack>/<file>`.
        pub name: String,
        /// Its `name` key.
        pub display_name: String,
        /// Pack.
        pub pack: String,
        /// File.
        pub file: String,
        /// `audit` or `enforcing`.
        pub mode: String,
        /// The worst of its rules (NOT-ELIGIBLE < ERROR < FIXED < COMPLIANT < UNKNOWN < PENDING).
        pub state: String,
        /// The state before.
        pub old_state: String,
        /// Running now.
        pub is_running: bool,
        /// Last run, ms since the Unix epoch.
        pub last_run_ms: Option<u64>,
        /// Seconds between runs.
        pub interval_secs: f64,
        /// Its rules.
        pub rules: Vec<RuleView>,
    }

    /// One state change of an object.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct HistoryEntry {
        /// ms since the Unix epoch.
        pub time_ms: u64,
        /// Object name.
        pub name: String,
        /// Display name.
        pub display_name: String,
        /// New state.
        pub state: String,
        /// Previous state.
        pub old_state: String,
        /// What its rules reported.
        pub output: String,
    }
}

/// Locks and leader elections on Raft (`opsbro lock`, `opsbro raft state`, `election:`).
pub mod raft {
    use serde::{Deserialize, Serialize};

    /// `GET`: this node's view of the Raft group ([`RaftState`]).
    pub const STATE: &str = "/raft/state";
    /// `GET`: every held lock ([`LockInfo`] list).
    pub const LOCKS: &str = "/locks";
    /// `GET` the lock ([`LockInfo`], 404 when free); `PUT ?ttl=15s&session=S` take it once or
    /// renew it (200 [`Granted`], 409 [`LockInfo`] of the holder, 503 without a majority);
    /// `DELETE ?token=N` release it.
    pub const LOCK: &str = "/locks/{*name}";
    /// `POST ?ttl=15s&wait=30s`: take the lock and keep it while the connection stays open;
    /// NDJSON [`HoldLine`]s (acquired, then lost when it is lost). Closing releases it.
    pub const HOLD: &str = "/locks-hold/{*name}";
    /// `GET`: the elections of this node ([`ElectionState`] list).
    pub const ELECTIONS: &str = "/elections";

    /// This node's view of the Raft group.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct RaftState {
        /// This node's Raft id.
        pub id: u64,
        /// `leader`, `follower`, `candidate`, `pre-candidate`, or `observer` (not a voter: it
        /// asks the voters).
        pub role: String,
        /// The leader's node name (None: no leader known).
        pub leader: Option<String>,
        /// Current term.
        pub term: u64,
        /// The voters (names).
        pub voters: Vec<String>,
        /// The voters gossip would choose now (group `raft`, or the first 3 or 5 by uuid).
        pub wanted_voters: Vec<String>,
        /// Commit index.
        pub commit: u64,
        /// Applied index.
        pub applied: u64,
        /// Whether this node has joined a group.
        pub initialized: bool,
        /// Held locks, as applied here.
        pub locks: Vec<LockInfo>,
        /// Proposals refused or timed out so far.
        pub failed_proposals: u64,
        /// Raft messages that did not decode or came from outside the group.
        pub bad_messages: u64,
    }

    /// A held lock.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct LockInfo {
        /// Lock name.
        pub name: String,
        /// The holder's node name (its uuid when not known by name).
        pub node: String,
        /// The holder's node uuid.
        pub node_uuid: String,
        /// The holder's session.
        pub session: String,
        /// Fencing token (grows with each holder).
        pub token: u64,
        /// Expires without a renewal for this long.
        pub ttl_ms: u64,
    }

    /// A lock taken.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct Granted {
        /// Lock name.
        pub name: String,
        /// Fencing token.
        pub token: u64,
        /// The session holding it (give it back to renew).
        pub session: String,
        /// Renew within this.
        pub ttl_ms: u64,
    }

    /// One line of a hold (`POST /locks-hold/{name}`).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "event", rename_all = "snake_case")]
    pub enum HoldLine {
        /// Still waiting: someone else holds it.
        Waiting {
            /// The holder.
            holder: LockInfo,
        },
        /// Taken.
        Acquired(Granted),
        /// Not taken within the wait, or refused.
        Failed {
            /// Why.
            reason: String,
        },
        /// Lost (expired, released because the node was declared dead, no majority to renew).
        Lost {
            /// Why.
            reason: String,
        },
    }

    /// An election of this node.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct ElectionState {
        /// Election name.
        pub name: String,
        /// Whether this node takes part (it is in the election's `if_group`).
        pub member: bool,
        /// The leader's node name (None: no leader).
        pub leader: Option<String>,
        /// Whether this node leads.
        pub is_leader: bool,
        /// The leader's fencing token.
        pub token: u64,
        /// Last command run on a change and its exit code.
        pub last_command: Option<String>,
        /// Its exit code.
        pub last_rc: Option<i32>,
    }

    /// A Raft/lock/election event (channel `raft`).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RaftEvent {
        /// `leader` (a new leader of the group), `acquired`, `released`, `elected`,
        /// `demoted`.
        pub kind: String,
        /// The lock or election, or the group's leader name.
        pub name: String,
        /// The node concerned.
        pub node: String,
        /// The token, when a lock.
        pub token: u64,
    }
}

/// Docker on this host (`/docker/...`): the daemon the `docker-host` pack points at (its
/// `socket` parameter, `DOCKER_HOST=unix://...`, or `/var/run/docker.sock`), asked when the
/// route is called; `/docker/stats` is the `docker` collector's latest measure (CPU % needs two
/// samples). Every route answers 503 with the reason when no daemon answers.
pub mod docker {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    /// `GET`: the daemon's version and counts ([`DaemonSummary`]).
    pub const SUMMARY: &str = "/docker";
    /// `GET`: every container, running or not ([`ContainerView`] list).
    pub const CONTAINERS: &str = "/docker/containers";
    /// `GET`: one container as the daemon describes it (its inspect JSON; needs the token: the
    /// environment of a container may hold secrets).
    pub const CONTAINER: &str = "/docker/containers/{id}";
    /// `GET`: every image ([`ImageView`] list).
    pub const IMAGES: &str = "/docker/images";
    /// `GET`: one image as the daemon describes it (its inspect JSON).
    pub const IMAGE: &str = "/docker/images/{id}";
    /// `GET`: the running containers' resource use at the collector's last run
    /// ([`StatsAnswer`]).
    pub const STATS: &str = "/docker/stats";

    /// The daemon: what it is and how many containers and images it has.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct DaemonSummary {
        /// The unix socket it answered on.
        pub socket: String,
        /// Engine version (`24.0.7`; podman's own for podman).
        pub version: String,
        /// Engine API version (`1.43`).
        pub api_version: String,
        /// The daemon host's operating system (`Debian GNU/Linux 12 (bookworm)`).
        pub os: String,
        /// Its kernel.
        pub kernel_version: String,
        /// The daemon host's name.
        pub name: String,
        /// Storage driver (`overlay2`, `vfs`).
        pub driver: String,
        /// Containers, in any state.
        pub containers: u64,
        /// Running.
        pub running: u64,
        /// Paused.
        pub paused: u64,
        /// Stopped (exited, created, dead).
        pub stopped: u64,
        /// Images.
        pub images: u64,
        /// The agent's follower of the daemon's event stream.
        pub events: EventsInfo,
    }

    /// The agent's follower of the daemon's `/events` stream (channel `docker` of the event bus).
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct EventsInfo {
        /// Connected to the stream now.
        pub connected: bool,
        /// Events read from the daemon.
        pub received: u64,
        /// Events put on the bus.
        pub published: u64,
        /// Events dropped because more came in a second than `events_per_second`.
        pub dropped: u64,
        /// Why the last connection ended or failed.
        pub last_error: Option<String>,
    }

    /// One container, as `docker ps -a` and `docker inspect` tell.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct ContainerView {
        /// Full id.
        pub id: String,
        /// Name (without the leading `/`).
        pub name: String,
        /// Image it was created from, as given (`redis:7`).
        pub image: String,
        /// `created`, `running`, `paused`, `restarting`, `removing`, `exited` or `dead`.
        pub state: String,
        /// The daemon's words (`Up 2 hours (healthy)`, `Exited (137) 5 seconds ago`).
        pub status: String,
        /// `starting`, `healthy` or `unhealthy`, for a container with a healthcheck.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub health: Option<String>,
        /// Times the daemon restarted it (restart policy).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub restart_count: Option<u64>,
        /// Exit code of its last run (0 while running).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub exit_code: Option<i64>,
        /// Killed by the kernel's OOM killer on its last run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub oom_killed: Option<bool>,
        /// Created, Unix seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub created: Option<i64>,
        /// Last started (RFC 3339).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub started_at: Option<String>,
        /// Last stopped (RFC 3339), for a container that is not running.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub finished_at: Option<String>,
    }

    /// One running container's resource use, computed as `docker stats` does.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct ContainerStats {
        /// Full id.
        pub id: String,
        /// Name.
        pub name: String,
        /// % of one CPU (200 = two CPUs busy); missing until two samples were taken.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cpu_pct: Option<f64>,
        /// Memory in use, page cache left out (bytes).
        #[serde(default)]
        pub mem_usage: u64,
        /// Memory limit (bytes; the host's memory when unlimited).
        #[serde(default)]
        pub mem_limit: u64,
        /// `mem_usage` of `mem_limit`, %.
        #[serde(default)]
        pub mem_pct: f64,
        /// Bytes received, all networks.
        #[serde(default)]
        pub net_rx: u64,
        /// Bytes sent, all networks.
        #[serde(default)]
        pub net_tx: u64,
        /// Bytes received per second since the previous run.
        #[serde(default, rename = "net_rx/s")]
        pub net_rx_rate: f64,
        /// Bytes sent per second since the previous run.
        #[serde(default, rename = "net_tx/s")]
        pub net_tx_rate: f64,
        /// Bytes read from block devices.
        #[serde(default)]
        pub blk_read: u64,
        /// Bytes written to block devices.
        #[serde(default)]
        pub blk_write: u64,
        /// Processes/threads in the container.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pids: Option<u64>,
    }

    /// `GET /docker/stats`.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct StatsAnswer {
        /// When the collector measured them (ms since the Unix epoch).
        pub time_ms: Option<u64>,
        /// By container name.
        pub containers: BTreeMap<String, ContainerStats>,
    }

    /// One image.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct ImageView {
        /// Id (`sha256:...`).
        pub id: String,
        /// `repo:tag` names (empty for a dangling image).
        pub tags: Vec<String>,
        /// Size, bytes.
        pub size: u64,
        /// Created, Unix seconds.
        pub created: i64,
        /// Containers using it (-1 when the daemon did not count them).
        pub containers: i64,
    }
}
