//! Command-line grammar (clap derive): `opsbro <group> <verb> [options]`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

/// opsbro: gossip-clustered monitoring and service discovery.
///
/// Run `opsbro agent start` on every host; the other commands talk to the local agent through its
/// HTTP API (127.0.0.1:6770 unless --api says otherwise).
#[derive(Debug, Parser)]
#[command(
    name = "opsbro",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Address of the agent's local API (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        env = "OPSBRO_API",
        value_name = "ADDR",
        default_value = "127.0.0.1:6770"
    )]
    pub api: String,

    /// API token: sent by the CLI with every request, and required by `agent start` when set.
    #[arg(
        long,
        global = true,
        env = "OPSBRO_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// File holding the API token (the agent writes its own to <data-dir>/api.token; without
    /// --token or this, the CLI finds that file itself for an agent on this host).
    #[arg(
        long,
        global = true,
        env = "OPSBRO_API_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run, stop and inspect the local agent.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Cluster membership: join, leave, members, history, user events.
    #[command(subcommand)]
    Gossip(GossipCommand),
    /// Evaluate expressions as checks and detectors do; list the function library.
    #[command(subcommand)]
    Evaluator(EvaluatorCommand),
    /// Collectors: what the agent measures on this host (cpu, memory, disks, network, ...).
    #[command(subcommand)]
    Collectors(CollectorsCommand),
    /// Detectors: rules that add groups to this node (`linux`, `debian`, `redis`, ...).
    #[command(subcommand)]
    Detectors(DetectorsCommand),
    /// The replicated key/value store: get, put, delete, list, wait, locate.
    #[command(subcommand, alias = "kv-store")]
    Kv(KvCommand),
    /// Checks and handlers: the state of this node's checks (or any node's), history, waits.
    #[command(subcommand)]
    Monitoring(MonitoringCommand),
    /// Time series (statsd, graphite, collectors, check perfdata): find series, show values.
    #[command(subcommand)]
    Metrics(MetricsCommand),
    /// Generators: configuration files rendered from cluster state.
    #[command(subcommand)]
    Generators(GeneratorsCommand),
    /// The live event stream (websocket): members, groups, checks, KV keys, user events.
    #[command(subcommand)]
    Events(LiveEventsCommand),
    /// Packs: the detectors, checks, handlers, generators, compliance rules and dashboards the
    /// agent loaded, and where each comes from.
    #[command(subcommand)]
    Packs(PacksCommand),
    /// Services: the cluster's catalog (healthy instances, as DNS answers them), this node's
    /// services, registration and maintenance.
    #[command(subcommand)]
    Services(ServicesCommand),
    /// Signed remote execution (operator keys).
    #[command(subcommand)]
    Executors(ExecutorsCommand),
    /// Compliance: the `compliance:` objects that keep this host as the packs say (files,
    /// packages, users, repositories, downloads), their states and history.
    #[command(subcommand)]
    Compliance(ComplianceCommand),
    /// Hold a cluster-wide lock while a command runs (Raft: granted by a majority of the
    /// voters, never to two sessions at once). Waits `--wait` for it, runs the command with
    /// `OPSBRO_LOCK_NAME`, `OPSBRO_LOCK_TOKEN` (the fencing token: it grows with each holder)
    /// and `OPSBRO_LOCK_SESSION` in its environment, stops it (SIGTERM, then SIGKILL after
    /// 5 s) if the lock is lost, releases it when the command ends and exits with its code.
    ///
    /// Example: `opsbro lock --wait 60s backup -- /usr/local/bin/nightly-backup`
    Lock {
        /// Lock name.
        name: String,
        /// The command (one argument: run by `/bin/sh -c`; more: run as they are).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        /// Released by the cluster when not renewed for this long (the agent renews it every
        /// third of it while the command runs).
        #[arg(long, default_value = "15s")]
        ttl: String,
        /// How long to wait for the lock (0: fail at once when it is held).
        #[arg(long, default_value = "0s")]
        wait: String,
    },
    /// The cluster's Raft group: its leader, voters and locks (as the original's `raft state`).
    #[command(subcommand)]
    Raft(RaftCommand),
    /// Leader elections (`election:` objects): who leads each, wait for a leader.
    #[command(subcommand)]
    Election(ElectionCommand),
    /// Dashboards of the packs, drawn in the terminal with their values now.
    #[command(subcommand)]
    Dashboards(DashboardsCommand),
    /// Docker on this host: the daemon, its containers (state, health, CPU, memory, network)
    /// and images.
    #[command(subcommand)]
    Docker(DockerCommand),
    /// Tutorials of the packs.
    #[command(subcommand)]
    Tutorials(TutorialsCommand),
    /// Print a shell completion script (e.g. `opsbro completions bash > /etc/bash_completion.d/opsbro`).
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print the version of this opsbro (as `--version` does).
    Version,
    /// Write the manual pages (roff: opsbro.1, opsbro-agent.1, opsbro-agent-start.1, ... one per
    /// command) into DIR. The packages run this at build time; hidden from the help.
    #[command(hide = true)]
    Manpages {
        /// Directory to write them into (created if missing).
        dir: PathBuf,
    },
}

/// `opsbro agent ...`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run the agent in the foreground (use the init.d script or systemd unit to run it in the background).
    Start(StartArgs),
    /// Re-read agent.yml, the local objects and the packs without a restart (as SIGHUP): checks,
    /// handlers, detectors and generators are added, changed and removed, check states kept;
    /// settings that need a restart are listed; a broken file keeps the previous version.
    /// Exit 1 when the reload was refused.
    Reload {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show or edit agent.yml (comments kept, each change noted in a comment), then reload.
    #[command(subcommand)]
    Parameters(ParametersCommand),
    /// Ask the running agent to stop gracefully, and wait until it has.
    Stop {
        /// Seconds to wait for the agent to exit.
        #[arg(long, default_value_t = 30.0, value_name = "S")]
        timeout: f64,
    },
    /// Show the agent's identity, addresses, groups, resource use and subsystem states.
    Info {
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Print the agent state (initializing, ok, stopping); exit 2 unless it is ok.
    State {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the agent is initialized (state ok); exit 0 when it is, 2 on timeout.
    WaitInitialized {
        /// Seconds to wait.
        #[arg(long, default_value_t = 30.0, value_name = "S")]
        timeout: f64,
    },
    /// Print a new random cluster encryption key (base64 of 32 bytes) for `encryption_key`.
    Keygen,
    /// Print one value of the agent, raw on one line (for scripts).
    Print {
        /// What to print.
        what: PrintWhat,
    },
    /// Change this node's static groups live (kept in the data dir across restarts).
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Save or restore a snapshot of this node's data (KV entries, time series, check states).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// The agent's log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Maintenance mode: `on` leaves this node out of DNS answers, the service catalog and
    /// `ok_nodes` (it stays in `members`, marked), until `off`; kept across restarts. Without
    /// an argument, print whether it is on.
    Maintenance {
        /// `on` or `off`.
        state: Option<OnOff>,
        /// Why (shown in `members` and the catalog).
        #[arg(long)]
        reason: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `opsbro raft ...`
#[derive(Debug, Subcommand)]
pub enum RaftCommand {
    /// This node's view: role, leader, term, voters, held locks.
    State {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The held locks, with their holder and fencing token.
    Locks {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the group has a leader, and print it (exit 2 after the timeout).
    WaitLeader {
        /// Seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// `opsbro election ...`
#[derive(Debug, Subcommand)]
pub enum ElectionCommand {
    /// Every election of this node (or one), its leader and whether this node leads.
    State {
        /// One election.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the election has a leader, and print it (exit 2 after the timeout).
    WaitLeader {
        /// The election.
        name: String,
        /// Seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// `opsbro executors ...`
#[derive(Debug, Subcommand)]
pub enum ExecutorsCommand {
    /// Make an operator key pair (Ed25519): the private key goes to `--out` (mode 0600) or
    /// stdout; the public line (`ed25519 <base64> <comment>`) is for the agents'
    /// `executor.authorized_keys`. Keys are never gossiped.
    Keygen {
        /// Write the private key to this file (refused if it exists).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Comment of the public line (default: user@host).
        #[arg(long)]
        comment: Option<String>,
    },
    /// Run a shell command on the alive members of GROUP (`*`: every node), signed with an
    /// operator key: `--key FILE`, else the agent's `executor.private_key_file`. Each target
    /// checks the signature against its `executor.authorized_keys`, runs the command with
    /// `/bin/sh -c` and answers; one line per node as results arrive (rc, then its output).
    /// Exits 0 only when every target returned 0.
    ///
    /// Example: `opsbro executors exec web -- systemctl restart nginx`
    Exec {
        /// Target group (`*`: every node).
        group: String,
        /// The command line (words are joined with spaces; put `--` before it when it has
        /// options of its own).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        /// Only this node (of the group).
        #[arg(long)]
        node: Option<String>,
        /// Sign with this private key file (from `opsbro executors keygen`) instead of the
        /// agent's `executor.private_key_file`.
        #[arg(long)]
        key: Option<std::path::PathBuf>,
        /// Seconds each target lets the command run before it kills it (1..3600).
        #[arg(long, default_value_t = 60)]
        timeout: u32,
        /// Print one JSON document with every result at the end.
        #[arg(long)]
        json: bool,
    },
    /// Recent executions on this node, as requester and as target (oldest first).
    History {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Whether this node runs signed commands, with which keys, and its counters.
    State {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `opsbro compliance ...`
#[derive(Debug, Subcommand)]
pub enum ComplianceCommand {
    /// Every compliance object (or one, by name or display name) with its rules and what they
    /// reported.
    State {
        /// Object name (`linux/passwd`) or display name.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compliance state changes, oldest first.
    History {
        /// How many (the newest).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run an object now and print its state after the run (exit 2 unless COMPLIANT or FIXED).
    Launch {
        /// Object name or display name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until an object is COMPLIANT or FIXED (exit 2 when the timeout passes first).
    WaitCompliant {
        /// Object name or display name.
        name: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}

/// `on` / `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enable.
    On,
    /// Disable.
    Off,
}

/// `opsbro services ...`
#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// Every service of the cluster with its instances and how many pass; `--local`: this
    /// node's services with their checks.
    List {
        /// This node's services (declared, active or not) instead of the cluster's.
        #[arg(long)]
        local: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The instances of a service across the cluster (node, address, port, tags, health).
    Show {
        /// Service name.
        name: String,
        /// Only the instances DNS answers with.
        #[arg(long)]
        passing: bool,
        /// Only instances with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register a service on this node from a file (YAML or JSON, `service: {name, port,
    /// tags, check...}`); kept in the data dir, live at once (no restart).
    Register {
        /// The service file (`-` for stdin).
        file: std::path::PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a service registered with `register`.
    Deregister {
        /// Service name.
        name: String,
    },
    /// Maintenance mode of one service of this node: left out of DNS and the catalog's
    /// passing instances until `off`.
    Maintenance {
        /// Service name.
        name: String,
        /// `on` or `off`.
        state: OnOff,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Status of a TTL check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TtlArg {
    /// OK.
    Pass,
    /// WARNING.
    Warn,
    /// CRITICAL.
    Fail,
}

/// Values `opsbro agent print` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrintWhat {
    /// The node's uuid.
    Uuid,
    /// The address gossip listens on (the announced one when it listens on every address).
    LocalAddr,
    /// The public address: the one the cloud gives this instance (hosting driver), else the
    /// one announced to the other nodes.
    PublicAddr,
}

/// `opsbro agent log ...`
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Print the agent's log lines as they are logged, until Ctrl-C.
    Follow {
        /// Least severe level shown: trace, debug, info, warn or error (lines below the
        /// agent's own log_level are never logged).
        #[arg(long, value_name = "L")]
        level: Option<String>,
        /// Print each line as the agent sends it (JSON).
        #[arg(long)]
        json: bool,
    },
}

/// `opsbro agent snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a snapshot of this node's data, taken while the agent runs: every store tree (this
    /// node's KV entries, the time series) and the small data-dir files (check states, static
    /// groups). FILE is written whole or not at all (mode 0600).
    Save {
        /// Where to write it.
        file: PathBuf,
    },
    /// Restore a snapshot into the data dir of a stopped agent (refused while an agent runs on
    /// it), then start the agent. The node keeps the snapshot's uuid unless --new-uuid.
    Restore {
        /// The snapshot.
        file: PathBuf,
        /// Data directory to restore into [default: `data_dir` of the configuration file, else
        /// the agent's default].
        #[arg(long, env = "OPSBRO_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Configuration file to read `data_dir` from [default: /etc/opsbro/agent.yml when it
        /// exists].
        #[arg(long, env = "OPSBRO_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Give the restored node a new uuid (a copy of a node on another host, while the
        /// original may still run).
        #[arg(long)]
        new_uuid: bool,
        /// Replace the store already in the data dir, and take the snapshot's uuid even if the
        /// data dir belongs to another node.
        #[arg(long)]
        force: bool,
    },
}

/// `opsbro agent groups ...`
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Add a static group.
    Add {
        /// The group.
        group: String,
    },
    /// Remove a static group (also one from agent.yml).
    Remove {
        /// The group.
        group: String,
    },
}

/// `opsbro agent parameters ...`: agent.yml keys by their dotted name (`dns.port`).
#[derive(Debug, Subcommand)]
pub enum ParametersCommand {
    /// Print every key set in the file, `name: value` (dotted names for sections).
    Show {
        /// The configuration file.
        #[arg(long, env = "OPSBRO_CONFIG", default_value = opsbro_config::DEFAULT_CONFIG_PATH, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the value of one key (exit 2 when the file does not set it).
    Get {
        /// The key (`zone`, `dns.port`).
        name: String,
        /// The configuration file.
        #[arg(long, env = "OPSBRO_CONFIG", default_value = opsbro_config::DEFAULT_CONFIG_PATH, value_name = "FILE")]
        config: PathBuf,
    },
    /// Set a key that is not a list (use add/remove for lists), check the new file, save it
    /// and reload the agent.
    Set {
        /// The key (`zone`, `dns.port`).
        name: String,
        /// The value, as YAML (`true`, `8600`, `eu-west`).
        value: String,
        /// The configuration file.
        #[arg(long, env = "OPSBRO_CONFIG", default_value = opsbro_config::DEFAULT_CONFIG_PATH, value_name = "FILE")]
        config: PathBuf,
    },
    /// Add a value to a list key (`groups`, `seeds`, `packs_dirs`...), then reload.
    Add {
        /// The list key.
        name: String,
        /// The value to add.
        value: String,
        /// The configuration file.
        #[arg(long, env = "OPSBRO_CONFIG", default_value = opsbro_config::DEFAULT_CONFIG_PATH, value_name = "FILE")]
        config: PathBuf,
    },
    /// Remove a value from a list key, then reload.
    Remove {
        /// The list key.
        name: String,
        /// The value to remove.
        value: String,
        /// The configuration file.
        #[arg(long, env = "OPSBRO_CONFIG", default_value = opsbro_config::DEFAULT_CONFIG_PATH, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Options of `opsbro agent start`; each one overrides the configuration file.
#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// Configuration file [default: /etc/opsbro/agent.yml when it exists].
    #[arg(long, env = "OPSBRO_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (uuid, lock, stores) [default: /var/lib/opsbro as root, else $XDG_DATA_HOME/opsbro].
    #[arg(long, env = "OPSBRO_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the gossip listeners bind [default: 0.0.0.0 with an encryption key, 127.0.0.1 without].
    #[arg(long, env = "OPSBRO_BIND", value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Gossip UDP and cluster TCP port [default: 6768].
    #[arg(long, env = "OPSBRO_PORT", value_name = "PORT")]
    pub port: Option<u16>,
    /// Address the local API binds [default: 127.0.0.1]; a non-loopback one needs a token.
    #[arg(long, env = "OPSBRO_API_BIND", value_name = "IP")]
    pub api_bind: Option<IpAddr>,
    /// Port of the local API [default: 6770]; 0 picks a free port (see <data-dir>/agent.runtime.json).
    #[arg(long, env = "OPSBRO_API_PORT", value_name = "PORT")]
    pub api_port: Option<u16>,
    /// Port of the DNS server, UDP and TCP [default: 6766]; 0 picks a free port.
    #[arg(long, env = "OPSBRO_DNS_PORT", value_name = "PORT")]
    pub dns_port: Option<u16>,
    /// Name of this node [default: the host name].
    #[arg(long, env = "OPSBRO_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Node to join at start, host[:port]; repeat it, or comma-separate in OPSBRO_SEEDS.
    #[arg(
        long = "seed",
        env = "OPSBRO_SEEDS",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    pub seeds: Vec<String>,
    /// Log level: trace, debug, info, warn, error [default: RUST_LOG, then log_level, then info].
    #[arg(long, env = "OPSBRO_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Find a cluster on the LAN by UDP broadcast at start and join it (retried until joined).
    #[arg(long)]
    pub auto_detect: bool,
    /// Let gossip listen beyond loopback without an encryption key: anyone who reaches the
    /// port can then join the cluster and write to it. Prefer `opsbro agent keygen`.
    #[arg(long)]
    pub insecure_plaintext_gossip: bool,
    /// Run the collectors, the detectors and the generators once, print what they did and
    /// exit (1 if a generator or detector failed). Nothing listens beyond loopback and no
    /// cluster is joined: for provisioning scripts and image builds.
    #[arg(long, conflicts_with_all = ["seeds", "auto_detect"])]
    pub one_shot: bool,
    /// With --one-shot: print the report as JSON.
    #[arg(long, requires = "one_shot")]
    pub json: bool,
}

/// `opsbro gossip ...`
#[derive(Debug, Subcommand)]
pub enum GossipCommand {
    /// List the cluster members as this agent sees them.
    Members {
        /// Also show uuid, incarnation, version and proxy flag.
        #[arg(long)]
        detail: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Output format: an aligned table, or a graphviz `dot` picture of nodes by zone and group.
        #[arg(long, value_enum, default_value_t = MembersFormat::Table)]
        format: MembersFormat,
    },
    /// Join a cluster through any of its members.
    Join {
        /// host[:port] of a member (port defaults to 6768).
        addr: String,
    },
    /// Leave the cluster: without NODE this agent leaves and stops; with NODE, mark that
    /// (gone) node as left so it is no longer reported dead.
    Leave {
        /// Name or uuid of another node.
        node: Option<String>,
    },
    /// Find agents on the LAN by UDP broadcast (encrypted when a key is set).
    Detect {
        /// Seconds to wait for answers.
        #[arg(long, default_value_t = 5.0, value_name = "S")]
        timeout: f64,
        /// Join a proxy node if one answered, else the first other node.
        #[arg(long)]
        auto_join: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show membership changes (joins, suspicions, deaths, leaves), oldest first.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a node's state; exit 2 unless it is alive.
    Ping {
        /// Name, display name or uuid.
        node: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// User events, delivered once to every node.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Cluster encryption keys: rotate with `install` (everywhere), then `use`, then `remove` the old one.
    #[command(subcommand)]
    Keyring(KeyringCommand),
    /// Zones: the tree seen from this node, move this node, the zones' gossip keys.
    #[command(subcommand)]
    Zone(ZoneCommand),
    /// Wait until enough alive members match (a name, a display name, a group); exit 2 on
    /// timeout.
    WaitMembers {
        /// How many alive matching members (this node included) [default: 1].
        #[arg(long)]
        count: Option<usize>,
        /// Only count the member with this name.
        #[arg(long)]
        name: Option<String>,
        /// Only count members with this display name.
        #[arg(long)]
        display_name: Option<String>,
        /// Only count members of this group.
        #[arg(long)]
        group: Option<String>,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30.0, value_name = "S")]
        timeout: f64,
    },
}

/// `opsbro gossip events ...`
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Send a user event to every node.
    Add {
        /// Event type.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// Text payload (up to 512 bytes).
        #[arg(long, default_value = "")]
        payload: String,
    },
    /// List the events of the last 5 minutes.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until an event of this type has been received; exit 2 on timeout.
    Wait {
        /// Event type.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30.0, value_name = "S")]
        timeout: f64,
    },
}

/// `opsbro gossip zone ...`
#[derive(Debug, Subcommand)]
pub enum ZoneCommand {
    /// The zone tree from this node: its zone, the zones above and below, the others, and
    /// which of them this node holds the gossip key of.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move this node to another zone of the tree (now, and after restarts).
    Change {
        /// The zone.
        name: String,
    },
    /// A zone's gossip key on this node (a node holds its own zone's key and its sub-zones').
    #[command(subcommand)]
    Key(ZoneKeyCommand),
}

/// `opsbro gossip zone key ...`
#[derive(Debug, Subcommand)]
pub enum ZoneKeyCommand {
    /// Make a new key for a zone, keep it on this node and print it (import it on the zone's
    /// other nodes and on the nodes of the zones above).
    Generate {
        /// The zone.
        #[arg(long)]
        zone: String,
        /// Replace the zone's key if this node has one.
        #[arg(long)]
        erase: bool,
    },
    /// Rotation, step 1 (on every node holding the zone's key): the new key opens packets, the
    /// old one still seals.
    Install {
        /// The zone.
        #[arg(long)]
        zone: String,
        /// The new key.
        #[arg(long)]
        key: String,
    },
    /// Rotation, step 2 (once installed everywhere): the new key seals.
    Use {
        /// The zone.
        #[arg(long)]
        zone: String,
        /// The key to seal with.
        #[arg(long)]
        key: String,
    },
    /// Rotation, step 3 (once used everywhere): forget the old key.
    Remove {
        /// The zone.
        #[arg(long)]
        zone: String,
        /// The old key.
        #[arg(long)]
        key: String,
    },
    /// Keep a zone's key on this node (base64, from `key generate` or `opsbro agent keygen`).
    Import {
        /// The zone.
        #[arg(long)]
        zone: String,
        /// The key.
        #[arg(long)]
        key: String,
        /// Replace the zone's key if this node has one.
        #[arg(long)]
        erase: bool,
    },
}

/// Output formats of `gossip members`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MembersFormat {
    /// Aligned table.
    Table,
    /// Graphviz dot.
    Dot,
}

/// `opsbro gossip keyring ...`: every change is applied by this agent and spread to every node
/// through the encrypted gossip.
#[derive(Debug, Subcommand)]
pub enum KeyringCommand {
    /// List this agent's keys (by id; key material is never shown).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a key on every node: it opens packets at once, seals nothing yet.
    Install {
        /// The key (base64, from `opsbro agent keygen`).
        key: String,
    },
    /// Make an installed key the one every node seals with.
    Use {
        /// The key (base64).
        key: String,
    },
    /// Remove a key (not the primary) from every node.
    Remove {
        /// The key (base64).
        key: String,
    },
}

/// `opsbro evaluator ...`
#[derive(Debug, Subcommand)]
pub enum EvaluatorCommand {
    /// List the functions expressions can call, with their documentation.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate an expression on the agent (opsbro syntax such as
    /// `file_exists('/etc/redis.conf') and is_in_group('linux')`, or rhai); exit 2 on an error.
    Eval {
        /// The expression.
        expr: String,
        /// Print the value as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate an expression on the agent until it is true; exit 2 when the timeout passes
    /// first.
    WaitEvalTrue {
        /// The expression.
        expr: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30.0, value_name = "S")]
        timeout: f64,
    },
}

/// `opsbro detectors ...`
#[derive(Debug, Subcommand)]
pub enum DetectorsCommand {
    /// List the detectors: expression, groups, interval.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show which detectors match now and the groups they give.
    State {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run every detector now and show the result (only NAME's when given).
    Run {
        /// A detector name (`<pack>/<name>`).
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// This node's group changes (static and detected), oldest first.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until this node has a group; exit 2 when the timeout passes first.
    WaitGroup {
        /// The group.
        group: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30.0, value_name = "S")]
        timeout: f64,
    },
}

/// `opsbro packs ...`
#[derive(Debug, Subcommand)]
pub enum PacksCommand {
    /// List the packs and any problem met while loading them.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one pack: its levels, each object with the file it comes from, its parameters.
    Show {
        /// The pack name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `opsbro dashboards ...`
#[derive(Debug, Subcommand)]
pub enum DashboardsCommand {
    /// List the dashboards of the packs.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Draw one dashboard with its values now (`linux/linux`, or `linux` when unique).
    Show {
        /// The dashboard name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `opsbro tutorials ...`
#[derive(Debug, Subcommand)]
pub enum TutorialsCommand {
    /// List the tutorials of the packs.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one tutorial: its title and files.
    Show {
        /// The tutorial name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `opsbro collectors ...`
#[derive(Debug, Subcommand)]
pub enum CollectorsCommand {
    /// List the collectors with their state (ok, error, not-eligible).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show collected values as `collector.<name>.<path> = value` (all collectors, or one).
    Show {
        /// A collector name.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Collector state changes (pending → ok, ok → error, ...), oldest first.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until a collector's state is ok; exit 2 when the timeout passes first.
    WaitOk {
        /// The collector name.
        name: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30.0, value_name = "S")]
        timeout: f64,
    },
    /// Ask the agent to run a collector now and show its result; exit 2 unless it is ok.
    Run {
        /// The collector name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `opsbro monitoring ...`
#[derive(Debug, Subcommand)]
pub enum MonitoringCommand {
    /// The checks of this node, or of another node (name or uuid; states as it gossips them).
    State {
        /// A node name or uuid (default: this node).
        node: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// This node's check state changes, oldest first.
    History {
        /// How many changes (the newest).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The handlers (mail, slack, command) with their sent / failed / dropped counters.
    Handlers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Give a TTL check (`ttl: 30s`) its status; it holds for the check's TTL, after which the
    /// check is CRITICAL unless a new status came.
    Ttl {
        /// `pass`, `warn` or `fail`.
        status: TtlArg,
        /// Check name (`local/service-web`), or the name of a service with one TTL check.
        name: String,
        /// Output to show with the status.
        #[arg(long)]
        note: Option<String>,
    },
    /// Wait until a check of this node is OK (exit 2 when the timeout passes first).
    WaitOk {
        /// Check name (`linux/cpu`) or display name (`CPU`).
        name: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}

/// `opsbro kv ...` (alias `kv-store`).
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value (exit 2 when the key does not exist).
    Get {
        /// The key.
        key: String,
        /// Print the bytes as they are (no newline added).
        #[arg(long)]
        raw: bool,
        /// Print JSON (value in base64, modify_index, ...).
        #[arg(long, conflicts_with = "raw")]
        json: bool,
    },
    /// Set a key (VALUE `-` reads standard input).
    Put {
        /// The key.
        key: String,
        /// The value, or `-` for standard input.
        value: String,
        /// Only if the key's modify_index is this (0: only if the key does not exist).
        #[arg(long)]
        cas: Option<u64>,
        /// Delete the key after this long (e.g. 30s, 10m).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        /// Only if the key's modify_index is this.
        #[arg(long)]
        cas: Option<u64>,
    },
    /// List keys (under PREFIX).
    List {
        /// Key prefix.
        prefix: Option<String>,
        /// Print JSON with the values.
        #[arg(long)]
        json: bool,
    },
    /// Wait until a key exists (exit 2 when the timeout passes first).
    WaitExists {
        /// The key.
        key: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Show the nodes that hold a key (coordinator first).
    Locate {
        /// The key.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write every key of the cluster with its versions (tombstones and TTLs included), one
    /// JSON object per line, for `kv import`. Fails (exit 1) rather than write a partial export.
    Export {
        /// Only keys under this prefix.
        prefix: Option<String>,
        /// Write to FILE, whole or not at all, instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Merge an export into the cluster: a key is replaced only by a newer version, so an old
    /// export never overwrites newer writes. Bad lines are reported with their number (exit 2)
    /// and the others imported.
    Import {
        /// The export file [default: standard input].
        file: Option<PathBuf>,
    },
}

/// `opsbro metrics ...`
#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// List the series and branches one level below PATTERN (graphite wildcards: `*`, `?`,
    /// `[a-z]`, `{a,b}`), e.g. `opsbro metrics find 'stats.timers.*'`.
    Find {
        /// Pattern, one component per level (default `*`: the top level).
        #[arg(default_value = "*")]
        pattern: String,
        /// Every series under PATTERN, at any depth.
        #[arg(long, short)]
        recursive: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the values of a target (a path with wildcards, or a graphite function such as
    /// `sumSeries(stats.counters.*.count)`).
    Show {
        /// The target.
        target: String,
        /// Start: -30s, -15min, -1h, -2d, -1w or unix seconds.
        #[arg(long, default_value = "-1h", allow_hyphen_values = true)]
        from: String,
        /// End (default now).
        #[arg(long, default_value = "now", allow_hyphen_values = true)]
        until: String,
        /// Also print the empty slots.
        #[arg(long)]
        all: bool,
        /// Print graphite-web JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `opsbro docker ...`
#[derive(Debug, Subcommand)]
pub enum DockerCommand {
    /// The daemon, a table of its containers (name, image, state/health, CPU %, memory,
    /// network) and its images; exit 1 when the agent reaches no Docker daemon.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `opsbro events ...`
#[derive(Debug, Subcommand)]
pub enum LiveEventsCommand {
    /// Follow the agent's event stream until interrupted (needs `websocket.enabled: true`).
    Watch {
        /// Only these channels (repeatable): node, group, check, kv, event, service, compliance,
        /// exec, docker.
        #[arg(long = "channel", value_name = "CHANNEL")]
        channels: Vec<String>,
        /// Print each event as its JSON frame.
        #[arg(long)]
        json: bool,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Websocket URL [default: the agent's, from `agent info`].
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

/// `opsbro generators ...`
#[derive(Debug, Subcommand)]
pub enum GeneratorsCommand {
    /// Each generator's state (compliant, not-eligible, error, pending), file and last change.
    State {
        /// Also print what the last write changed.
        #[arg(long)]
        show_diff: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// State changes, oldest first.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until a generator is compliant (exit 2 on timeout).
    WaitCompliant {
        /// Generator name (`<pack>/<file>`, or just `<file>`).
        name: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}
