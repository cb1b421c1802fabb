//! Agent configuration: `agent.yml` loading, validation and the typed result.
//!
//! Configuration is read in two phases (HOUSE-STYLE): [`raw`] serde structs mirror the YAML and
//! never fail on a wrongly typed value, then [`Config::from_yaml`] validates every key, collecting
//! every problem as a [`ConfigError`] with file, line and key, so a user fixes a file in one pass.
//! Command-line flags and `OPSBRO_*` environment variables arrive as [`Overrides`] and win over the
//! file. [`Config::resolve`] fills context-dependent defaults (hostname, data dir by user) and runs the
//! cross-key checks, such as refusing a non-loopback API bind without a token.
//!
//! This crate does no IO besides what the caller hands it: the file text, the hostname, the uid and
//! the environment are inputs, which keeps every rule unit-testable.

#![forbid(unsafe_code)]

pub mod edit;
mod lines;
pub mod raw;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine as _;

pub use lines::LineIndex;
use raw::{Field, RawApi, RawConfig, RawEncryption, RawGossip, Unknown};

/// Default gossip (UDP) and cluster (TCP) port.
pub const DEFAULT_GOSSIP_PORT: u16 = 6768;
/// Default port of the local HTTP API.
pub const DEFAULT_API_PORT: u16 = 6770;
/// Default port of the DNS server (UDP and TCP).
pub const DEFAULT_DNS_PORT: u16 = 6766;
/// Default zone of a node, as in the original opsbro.
pub const DEFAULT_ZONE: &str = "internet";
/// Where Debian's `monitoring-plugins` install the nagios plugins.
pub const DEFAULT_NAGIOS_PLUGINS_DIR: &str = "/usr/lib/nagios/plugins";
/// Rotated log files kept by default (`log_keep_days`).
pub const DEFAULT_LOG_KEEP_DAYS: u32 = 7;
/// The configuration file read when none is named and it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/opsbro/agent.yml";
/// The log levels `log_level` accepts.
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// One problem in the configuration: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the value came from: a file path, `--flag`, or an environment variable.
    pub source: String,
    /// 1-based line in the file, when the value came from a file.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `api.port`.
    pub key: String,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.source, line)?,
            None => write!(f, "{}: ", self.source)?,
        }
        write!(f, "key `{}`: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration; the agent does not start while there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid configuration ({n} error{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// A `host[:port]` to join at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// Host name or IP address.
    pub host: String,
    /// Gossip port of the seed.
    pub port: u16,
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Seed {
    /// Whether the seed is on this host (`localhost` or a loopback address).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Parse `host`, `host:port`, `ip`, `[ipv6]:port`; the port defaults to 6768.
    pub fn parse(text: &str) -> Result<Seed, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty seed: expected host[:port]".into());
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Seed {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Seed {
                host: ip.to_string(),
                port: DEFAULT_GOSSIP_PORT,
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{text}`: port `{p}` is not a number in 1-65535"))?;
                (h, port)
            }
            None => (text, DEFAULT_GOSSIP_PORT),
        };
        if host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || c == '/' || c == '[')
        {
            return Err(format!("`{text}` is not host[:port]"));
        }
        if port == 0 {
            return Err(format!("`{text}`: port 0 cannot be joined"));
        }
        Ok(Seed {
            host: host.to_owned(),
            port,
        })
    }
}

/// A 32-byte AES-256-GCM cluster key (from `encryption_key`, base64).
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey(pub [u8; 32]);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material, not even in debug logs.
        f.write_str("EncryptionKey(..)")
    }
}

impl EncryptionKey {
    /// Decode a base64 key; it must be exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| {
                "not valid base64: generate a key with `opsbro agent keygen`".to_owned()
            })?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "the key is {} bytes, expected 32: generate one with `opsbro agent keygen`",
                b.len()
            )
        })?;
        Ok(Self(key))
    }
}

/// The validated contents of one `agent.yml` (every field optional: absent means default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// `node_name`.
    pub node_name: Option<String>,
    /// `display_name`.
    pub display_name: Option<String>,
    /// `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `bind_addr`: the address gossip listens on.
    pub bind_addr: Option<IpAddr>,
    /// `advertise_addr`: the address other nodes reach us at.
    pub advertise_addr: Option<IpAddr>,
    /// `port`: gossip UDP and cluster TCP port.
    pub port: Option<u16>,
    /// `api.bind`.
    pub api_bind: Option<IpAddr>,
    /// `api.port`.
    pub api_port: Option<u16>,
    /// `api.token`.
    pub api_token: Option<String>,
    /// `api.anonymous_reads`.
    pub api_anonymous_reads: Option<bool>,
    /// `api.allowed_hosts`.
    pub api_allowed_hosts: Vec<String>,
    /// `seeds`.
    pub seeds: Vec<Seed>,
    /// `bootstrap`.
    pub bootstrap: Option<bool>,
    /// `groups` (static groups).
    pub groups: Vec<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `proxy_node`.
    pub proxy_node: Option<bool>,
    /// `encryption_key`.
    pub encryption_key: Option<EncryptionKey>,
    /// `encryption.keyring_file`.
    pub keyring_file: Option<PathBuf>,
    /// `packs_dirs`.
    pub packs_dirs: Vec<PathBuf>,
    /// `disabled_packs`.
    pub disabled_packs: Vec<String>,
    /// `objects_dirs`.
    pub objects_dirs: Option<Vec<PathBuf>>,
    /// `templates_dir`.
    pub templates_dir: Option<PathBuf>,
    /// `log_level`.
    pub log_level: Option<String>,
    /// `log_file`.
    pub log_file: Option<PathBuf>,
    /// `log_keep_days`.
    pub log_keep_days: Option<u32>,
    /// `gossip:` tuning.
    pub gossip: GossipTuning,
    /// `auto_detect`.
    pub auto_detect: Option<bool>,
    /// `insecure_plaintext_gossip`.
    pub insecure_plaintext_gossip: Option<bool>,
    /// `nagios_plugins_dir`.
    pub nagios_plugins_dir: Option<PathBuf>,
    /// `kv:`.
    pub kv: KvSettings,
    /// `dns:`.
    pub dns: DnsSettings,
    /// `statsd:`.
    pub statsd: StatsdSettings,
    /// `graphite:`.
    pub graphite: GraphiteSettings,
    /// `websocket:`.
    pub websocket: WebsocketSettings,
    /// `executor:`.
    pub executor: ExecutorSettings,
    /// `hosting:`.
    pub hosting: HostingSettings,
}

/// The hosting driver names `hosting.driver` accepts besides `auto` and `none`.
pub const HOSTING_DRIVERS: &[&str] = &[
    "ec2",
    "google-cloud",
    "azure",
    "digitalocean",
    "scaleway",
    "alibaba",
    "openstack",
];

/// Where the host runs (`hosting:`), defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct HostingSettings {
    /// `auto` (default: the local files, then every cloud's metadata service at start), `none`
    /// (never ask a metadata service), or a cloud's driver name (that cloud is the driver).
    pub driver: String,
    /// In `auto`, ask the metadata services even when the DMI data names a physical machine.
    pub always_probe: bool,
    /// The limit of one request to a metadata service (default 1 s, at most 2 s).
    pub metadata_timeout: std::time::Duration,
    /// Announce the cloud's public address to the cluster when `advertise_addr` is not set.
    pub advertise_public_address: bool,
}

impl Default for HostingSettings {
    fn default() -> Self {
        HostingSettings {
            driver: "auto".into(),
            always_probe: false,
            metadata_timeout: std::time::Duration::from_secs(1),
            advertise_public_address: false,
        }
    }
}

/// Signed remote execution (`executor:`), defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorSettings {
    /// The operator keys that may run commands here (`ed25519 <base64> comment` lines from
    /// `opsbro executors keygen`). With none here nor in `authorized_keys_file`, the executor
    /// is disabled.
    pub authorized_keys: Vec<AuthorizedKey>,
    /// A file of more such lines (`#` comments allowed), read at start and on reload.
    pub authorized_keys_file: Option<PathBuf>,
    /// The private key this node signs with when `opsbro executors exec` is given no `--key`.
    pub private_key_file: Option<PathBuf>,
    /// Requests a minute each key may send to this node (default 60).
    pub max_per_minute: u32,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        ExecutorSettings {
            authorized_keys: Vec::new(),
            authorized_keys_file: None,
            private_key_file: None,
            max_per_minute: 60,
        }
    }
}

/// One authorized operator key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// The key.
    pub key: opsbro_exec::PublicKey,
    /// What follows it on its line.
    pub comment: String,
}

impl AuthorizedKey {
    /// Parse `ed25519 <base64> [comment]`.
    pub fn parse(line: &str) -> Result<AuthorizedKey, String> {
        let key = opsbro_exec::PublicKey::parse(line)?;
        let mut words = line.split_whitespace();
        if words.next() == Some(opsbro_exec::PUBLIC_PREFIX) {
            words.next();
        }
        Ok(AuthorizedKey {
            key,
            comment: words.collect::<Vec<_>>().join(" "),
        })
    }

    /// The keys of an `authorized_keys_file`'s text: one per line, blank lines and `#`
    /// comments skipped; an error names the line.
    pub fn parse_file(text: &str) -> Result<Vec<AuthorizedKey>, String> {
        text.lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .map(|(n, l)| AuthorizedKey::parse(l).map_err(|e| format!("line {n}: {e}")))
            .collect()
    }
}

/// The websocket event stream's settings (`websocket:`), defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct WebsocketSettings {
    /// Serve it at all (default false).
    pub enabled: bool,
    /// Bind address (default 127.0.0.1; elsewhere needs `api.token`).
    pub bind: IpAddr,
    /// TCP port (default 6769; 0 = any free port, see the runtime file).
    pub port: u16,
}

impl Default for WebsocketSettings {
    fn default() -> Self {
        WebsocketSettings {
            enabled: false,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 6769,
        }
    }
}

/// The statsd listener's settings (`statsd:`), defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsdSettings {
    /// Listen at all (default false).
    pub enabled: bool,
    /// Bind address (default 127.0.0.1).
    pub bind: IpAddr,
    /// UDP port (default 8125; 0 = any free port, see the runtime file).
    pub port: u16,
    /// Flush interval (default 10 s).
    pub interval: std::time::Duration,
}

impl Default for StatsdSettings {
    fn default() -> Self {
        StatsdSettings {
            enabled: false,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8125,
            interval: std::time::Duration::from_secs(10),
        }
    }
}

/// The graphite listener's settings (`graphite:`), defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphiteSettings {
    /// Listen at all (default false).
    pub enabled: bool,
    /// Bind address (default 127.0.0.1).
    pub bind: IpAddr,
    /// TCP and UDP port (default 2003; 0 = any free port, see the runtime file).
    pub port: u16,
    /// Listen on UDP (default true).
    pub udp: bool,
    /// Listen on TCP (default true).
    pub tcp: bool,
    /// `host:port` of a carbon to forward every stored point to.
    pub forward: Option<String>,
    /// Lines kept while the carbon is unreachable (default 100000); older ones are dropped.
    pub forward_buffer: usize,
}

impl Default for GraphiteSettings {
    fn default() -> Self {
        GraphiteSettings {
            enabled: false,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 2003,
            udp: true,
            tcp: true,
            forward: None,
            forward_buffer: 100_000,
        }
    }
}

/// The DNS server's settings (`dns:`), defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// Serve DNS at all (default true, on loopback).
    pub enabled: bool,
    /// Bind address (default 127.0.0.1).
    pub bind: IpAddr,
    /// Port, UDP and TCP (default 6766; 0 = any free port, see the runtime file).
    pub port: u16,
    /// Domain (default `opsbro`).
    pub domain: String,
    /// TTL of answers (default 30 s).
    pub ttl: u32,
    /// TTL of negative answers (default 30 s).
    pub negative_ttl: u32,
    /// Hide nodes with a critical check (group and node names).
    pub only_passing: bool,
    /// A service instance whose checks are in WARNING is still answered (service names and
    /// the catalog's `?passing`); default false: only passing instances.
    pub warning_passes: bool,
    /// Where names outside the domain are forwarded (none: REFUSED).
    pub recursors: Vec<std::net::SocketAddr>,
    /// Threads taking UDP queries (default 2): one receives, the others join it only while a
    /// backlog lasts.
    pub udp_threads: usize,
    /// Above 10,000 queries/s, after a batch of answers less than half full, wait so that the
    /// next receive takes several queries: as long as 8 queries take to arrive at the current
    /// rate, at most this long (default 200µs; 0 = never). No wait for 10–20 ms after a full
    /// batch (a backlog). Adds up to that much (plus the kernel's 50 µs timer slack) to
    /// answers' latency under load.
    pub coalesce: std::time::Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            enabled: true,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_DNS_PORT,
            domain: "opsbro".into(),
            ttl: 30,
            negative_ttl: 30,
            only_passing: false,
            warning_passes: false,
            recursors: Vec::new(),
            udp_threads: 2,
            coalesce: std::time::Duration::from_micros(200),
        }
    }
}

/// `kv:` section (absent = default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KvSettings {
    /// `one`, `quorum` or `all` (default quorum: the coordinator and one replica).
    pub write_acks: Option<String>,
    /// Copies of each key (default 3).
    pub replication_factor: Option<usize>,
    /// How long deletes are remembered (default 24h).
    pub tombstone_ttl: Option<std::time::Duration>,
    /// Time between anti-entropy rounds (default 30s).
    pub anti_entropy_interval: Option<std::time::Duration>,
    /// Bytes of the store's page cache (sled; shared with the metrics and Raft trees), default
    /// 8 MiB.
    pub cache_size: Option<u64>,
}

/// Smallest `kv.cache_size`: below this sled thrashes on every read.
pub const MIN_CACHE_BYTES: u64 = 1024 * 1024;
/// Largest `kv.cache_size` (a typo such as `8TB` is refused rather than believed).
pub const MAX_CACHE_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// Parse a size in bytes: a number of bytes, or a number with a unit: `kB`, `MB`, `GB`
/// (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024), case-insensitive (`8MiB`, `64MB`,
/// `1.5GiB`).
pub fn parse_size(value: &serde_yaml::Value) -> Result<u64, String> {
    let text = match value {
        serde_yaml::Value::Number(n) => match n.as_u64() {
            Some(b) => return Ok(b),
            None => return Err(format!("`{n}` is not a number of bytes")),
        },
        serde_yaml::Value::String(s) => s.trim().to_owned(),
        other => {
            return Err(format!(
                "expected a size such as 8MiB or 64MB, found {other:?}"
            ));
        }
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (use e.g. 8MiB, 64MB, 1GiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "unknown unit `{u}` in `{text}` (use B, kB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    let bytes = n * scale;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes as u64)
}

/// `gossip:` section: protocol timings that override the LAN defaults (absent = default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GossipTuning {
    /// Time between probes.
    pub probe_interval: Option<std::time::Duration>,
    /// Time to wait for a direct ack.
    pub probe_timeout: Option<std::time::Duration>,
    /// Time between gossip rounds when idle.
    pub gossip_interval: Option<std::time::Duration>,
    /// Time between full-state exchanges (scaled up above 32 nodes).
    pub push_pull_interval: Option<std::time::Duration>,
    /// Suspicion timeout multiplier.
    pub suspicion_mult: Option<f64>,
    /// How long dead and left members are remembered.
    pub tombstone_ttl: Option<std::time::Duration>,
    /// Most members known at once (tombstones included).
    pub max_members: Option<usize>,
    /// Most new members one peer may introduce per 10 s.
    pub max_new_members_per_peer: Option<usize>,
}

/// Parse a duration: a number of seconds, or a number with a unit (`100us`, `500ms`, `10s`,
/// `5m`, `24h`, `7d`).
pub fn parse_duration(value: &serde_yaml::Value) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let text = match value {
        serde_yaml::Value::Number(n) => {
            return n
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| format!("`{n}` is not a duration"));
        }
        serde_yaml::Value::String(s) => s.trim().to_owned(),
        other => {
            return Err(format!(
                "expected a duration such as 10s or 500ms, found {other:?}"
            ));
        }
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (use e.g. 10s, 500ms, 5m, 24h)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "us" | "µs" => n / 1_000_000.0,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        u => {
            return Err(format!(
                "unknown unit `{u}` in `{text}` (use us, ms, s, m, h or d)"
            ));
        }
    };
    // Negative, not finite, or beyond what a duration holds (`213503982334d`): an error, never
    // a panic or a wrapped number.
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{text}` is out of range"))
}

/// Values from flags and `OPSBRO_*` variables; each set one wins over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir` / `OPSBRO_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--bind` / `OPSBRO_BIND`.
    pub bind_addr: Option<IpAddr>,
    /// `--port` / `OPSBRO_PORT`.
    pub port: Option<u16>,
    /// `--api-bind` / `OPSBRO_API_BIND`.
    pub api_bind: Option<IpAddr>,
    /// `--api-port` / `OPSBRO_API_PORT`.
    pub api_port: Option<u16>,
    /// `--api-token` / `OPSBRO_API_TOKEN`.
    pub api_token: Option<String>,
    /// `--node-name` / `OPSBRO_NODE_NAME`.
    pub node_name: Option<String>,
    /// `--seed` (repeatable) / `OPSBRO_SEEDS` (comma-separated); added to the file's seeds.
    pub seeds: Vec<Seed>,
    /// `--log-level` / `OPSBRO_LOG_LEVEL`.
    pub log_level: Option<String>,
    /// `--auto-detect`.
    pub auto_detect: bool,
    /// `--insecure-plaintext-gossip`.
    pub insecure_plaintext_gossip: bool,
    /// `--dns-port` / `OPSBRO_DNS_PORT`.
    pub dns_port: Option<u16>,
}

/// Facts about the host that defaults depend on; the binary reads them, tests make them up.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// The kernel host name.
    pub hostname: String,
    /// Effective uid (0 = root).
    pub euid: u32,
    /// `$XDG_DATA_HOME`, if set.
    pub xdg_data_home: Option<PathBuf>,
    /// `$HOME`, if set.
    pub home: Option<PathBuf>,
}

/// The configuration the agent runs with: every default filled, every rule checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Unique node name (default: host name).
    pub node_name: String,
    /// Human-friendly name (default: the node name).
    pub display_name: String,
    /// Where the uuid, lock, keyring and stores live.
    pub data_dir: PathBuf,
    /// Gossip bind address, when set (the default depends on the key: 0.0.0.0 with one,
    /// 127.0.0.1 without; see [`AgentConfig::gossip_bind`]).
    pub bind_addr: Option<IpAddr>,
    /// Allow cluster traffic in plaintext on a non-loopback address (anyone who reaches the
    /// port can join the cluster and write to it).
    pub insecure_plaintext_gossip: bool,
    /// Address announced to other nodes (default: chosen at start from the interfaces).
    pub advertise_addr: Option<IpAddr>,
    /// Gossip UDP / cluster TCP port.
    pub port: u16,
    /// Local API bind address (default 127.0.0.1).
    pub api_bind: IpAddr,
    /// Local API port (0 = any free port, written to the runtime file).
    pub api_port: u16,
    /// The API token set by the operator (else the agent makes one at start and writes it to
    /// `<data_dir>/api.token`, mode 0600).
    pub api_token: Option<String>,
    /// Whether callers without the token may use the read-only routes (members, checks,
    /// collectors, metrics...): by default yes on a loopback API without an `api.token` set by
    /// the operator; never on another address.
    pub api_anonymous_reads: bool,
    /// Host names (besides IP addresses, `localhost` and this host's names) that requests may
    /// name in their `Host` header (DNS rebinding protection).
    pub api_allowed_hosts: Vec<String>,
    /// Nodes to join at start.
    pub seeds: Vec<Seed>,
    /// Start a new cluster without waiting for seeds.
    pub bootstrap: bool,
    /// Static groups.
    pub groups: Vec<String>,
    /// Zone of this node.
    pub zone: String,
    /// Whether this node is a proxy node.
    pub proxy_node: bool,
    /// Cluster encryption key.
    pub encryption_key: Option<EncryptionKey>,
    /// Keyring file (default `<data_dir>/keyring.json` when used).
    pub keyring_file: Option<PathBuf>,
    /// Extra pack directories.
    pub packs_dirs: Vec<PathBuf>,
    /// Packs not loaded (shipped or not): `disabled_packs`, plus `$OPSBRO_DISABLED_PACKS`
    /// (comma-separated) when the agent loads them.
    pub disabled_packs: Vec<String>,
    /// Directories of YAML objects of the local configuration (any kind: handlers, checks...),
    /// loaded as the pack `local`. None: every `<config dir>/*.d/` directory.
    pub objects_dirs: Option<Vec<PathBuf>>,
    /// Template directory overriding the embedded templates.
    pub templates_dir: Option<PathBuf>,
    /// Log level (trace|debug|info|warn|error).
    pub log_level: String,
    /// A file the log lines also go to, rotated daily (`<file>.YYYY-MM-DD`).
    pub log_file: Option<PathBuf>,
    /// How many rotated log files (days) are kept.
    pub log_keep_days: u32,
    /// Gossip protocol tuning.
    pub gossip: GossipTuning,
    /// Find a cluster on the LAN by broadcast at start.
    pub auto_detect: bool,
    /// Where nagios plugins live (`$nagiosplugins$` in check scripts).
    pub nagios_plugins_dir: PathBuf,
    /// KV store settings.
    pub kv: KvSettings,
    /// DNS server settings.
    pub dns: DnsSettings,
    /// statsd listener settings.
    pub statsd: StatsdSettings,
    /// graphite listener and forwarding settings.
    pub graphite: GraphiteSettings,
    /// websocket event stream settings.
    pub websocket: WebsocketSettings,
    /// Signed remote execution settings.
    pub executor: ExecutorSettings,
    /// Where the host runs: hosting driver detection and its cloud.
    pub hosting: HostingSettings,
}

/// Collects errors while validating one source.
struct Validator<'a> {
    source: String,
    lines: &'a LineIndex,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            source: self.source.clone(),
            line: self.lines.line_of(key),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// The value of a field, recording a type error.
    fn take<T>(&mut self, key: &str, field: Field<T>) -> Option<T> {
        match field {
            Field::Absent => None,
            Field::Set(v) => Some(v),
            Field::Invalid(message) => {
                self.error(key, message);
                None
            }
        }
    }

    /// Take a field and check/convert it with `check`.
    fn take_with<T, U>(
        &mut self,
        key: &str,
        field: Field<T>,
        check: impl FnOnce(T) -> Result<U, String>,
    ) -> Option<U> {
        let value = self.take(key, field)?;
        match check(value) {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(key, message);
                None
            }
        }
    }

    fn unknown(&mut self, section: &str, unknown: Unknown, known: &[&str]) {
        for key in unknown.keys() {
            let path = if section.is_empty() {
                key.clone()
            } else {
                format!("{section}.{key}")
            };
            let hint = match closest(key, known) {
                Some(k) => format!("unknown key (did you mean `{k}`?)"),
                None => format!("unknown key (known keys: {})", known.join(", ")),
            };
            self.error(&path, hint);
        }
    }
}

/// The known key most like `key`, if one is close enough to be a likely typo (also used for pack
/// objects).
pub fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// Whether the indentation of `line` holds a tab.
fn indented_with_tab(line: &str) -> bool {
    line.chars()
        .take_while(|c| c.is_whitespace())
        .any(|c| c == '\t')
}

/// Levenshtein distance; keys are short so the quadratic table is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn parse_ip(text: String) -> Result<IpAddr, String> {
    text.trim()
        .parse::<IpAddr>()
        .map_err(|_| format!("`{text}` is not an IP address (e.g. 0.0.0.0, 127.0.0.1 or ::1)"))
}

/// Node names end up in DNS names (`<node>.name.<domain>`) and CLI tables
/// (rules: [`opsbro_types::names::node_name`]).
pub fn check_node_name(name: String) -> Result<String, String> {
    opsbro_types::names::node_name(&name)
        .map(|()| name)
        .map_err(|e| e.0)
}

/// Group names are matched exactly and appear in DNS labels
/// (rules: [`opsbro_types::names::group`]).
pub fn check_group(name: &str) -> Result<(), String> {
    opsbro_types::names::group(name).map_err(|e| e.0)
}

/// Normalise a log level (`INFO` → `info`, `warning` → `warn`).
pub fn check_log_level(level: String) -> Result<String, String> {
    let lower = level.trim().to_ascii_lowercase();
    let lower = if lower == "warning" {
        "warn".to_owned()
    } else {
        lower
    };
    if LOG_LEVELS.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(format!(
            "`{level}` is not a log level: use one of {}",
            LOG_LEVELS.join(", ")
        ))
    }
}

impl Config {
    /// Read the file at `path` (see [`Config::from_yaml`]). A missing or unreadable file is one
    /// error naming the path.
    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                source: path.display().to_string(),
                line: None,
                key: "-".into(),
                message: format!("cannot read the configuration file: {e}"),
            }])
        })?;
        Config::from_yaml(&text, &path.display().to_string())
    }

    /// Validate a YAML document; `source` names it in error messages (usually the file path).
    pub fn from_yaml(text: &str, source: &str) -> Result<Config, ConfigErrors> {
        // An empty file (or one with only comments) is a valid, empty configuration.
        let raw: RawConfig = if text.trim().is_empty() || only_comments(text) {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                let (line, message) = match e.location() {
                    Some(loc) => (Some(loc.line()), e.to_string()),
                    None => (None, e.to_string()),
                };
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                // A tab in the indentation (pasted from a Markdown page) is the usual cause of
                // libyaml's "cannot start any token": say so.
                let tab_indent = line
                    .and_then(|l| text.lines().nth(l.saturating_sub(1)))
                    .is_some_and(indented_with_tab);
                let message = if message.contains("invalid type") {
                    format!("the file must be a mapping of keys to values ({message})")
                } else if tab_indent {
                    format!(
                        "not valid YAML: {message} (this line is indented with a tab: YAML \
                         indents with spaces only)"
                    )
                } else {
                    format!("not valid YAML: {message}")
                };
                ConfigErrors(vec![ConfigError {
                    source: source.to_owned(),
                    line,
                    key: "-".into(),
                    message,
                }])
            })?
        };
        let lines = LineIndex::build(text);
        let mut v = Validator {
            source: source.to_owned(),
            lines: &lines,
            errors: Vec::new(),
        };
        let config = Config::validate(&mut v, raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            v.errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            Err(ConfigErrors(v.errors))
        }
    }

    fn validate(v: &mut Validator<'_>, raw: RawConfig) -> Config {
        let RawConfig {
            node_name,
            display_name,
            data_dir,
            bind_addr,
            advertise_addr,
            port,
            api,
            seeds,
            bootstrap,
            groups,
            zone,
            proxy_node,
            encryption_key,
            encryption,
            packs_dirs,
            disabled_packs,
            objects_dirs,
            templates_dir,
            log_level,
            log_file,
            log_keep_days,
            gossip,
            auto_detect,
            insecure_plaintext_gossip,
            nagios_plugins_dir,
            kv,
            dns,
            statsd,
            graphite,
            websocket,
            executor,
            hosting,
            unknown,
        } = raw;
        let hosting = v.take("hosting", hosting).unwrap_or_default();
        let hosting = Config::validate_hosting(v, hosting);
        let executor = v.take("executor", executor).unwrap_or_default();
        let executor = Config::validate_executor(v, executor);
        let websocket = v.take("websocket", websocket).unwrap_or_default();
        let raw::RawWebsocket {
            enabled: ws_enabled,
            bind: ws_bind,
            port: ws_port,
            unknown: ws_unknown,
        } = websocket;
        v.unknown("websocket", ws_unknown, raw::WEBSOCKET_KEYS);
        let ws_default = WebsocketSettings::default();
        let websocket = WebsocketSettings {
            enabled: v
                .take("websocket.enabled", ws_enabled)
                .unwrap_or(ws_default.enabled),
            bind: v
                .take_with("websocket.bind", ws_bind, parse_ip)
                .unwrap_or(ws_default.bind),
            port: v.take("websocket.port", ws_port).unwrap_or(ws_default.port),
        };
        let statsd = v.take("statsd", statsd).unwrap_or_default();
        let statsd = Config::validate_statsd(v, statsd);
        let graphite = v.take("graphite", graphite).unwrap_or_default();
        let graphite = Config::validate_graphite(v, graphite);
        let dns = v.take("dns", dns).unwrap_or_default();
        let dns = Config::validate_dns(v, dns);
        let kv = v.take("kv", kv).unwrap_or_default();
        let kv = Config::validate_kv(v, kv);
        v.unknown("", unknown, raw::TOP_KEYS);
        let gossip = v.take("gossip", gossip).unwrap_or_default();
        let gossip = Config::validate_gossip(v, gossip);
        let api = v.take("api", api).unwrap_or_default();
        let RawApi {
            bind: api_bind,
            port: api_port,
            token: api_token,
            anonymous_reads: api_anonymous_reads,
            allowed_hosts: api_allowed_hosts,
            unknown: api_unknown,
        } = api;
        v.unknown("api", api_unknown, raw::API_KEYS);
        let encryption = v.take("encryption", encryption).unwrap_or_default();
        let RawEncryption {
            keyring_file,
            unknown: enc_unknown,
        } = encryption;
        v.unknown("encryption", enc_unknown, raw::ENCRYPTION_KEYS);

        let seeds = v
            .take("seeds", seeds)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| {
                v.take_with(&format!("seeds[{i}]"), Field::Set(s), |s| Seed::parse(&s))
            })
            .collect();
        let groups = v
            .take("groups", groups)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(i, g)| {
                v.take_with(&format!("groups[{i}]"), Field::Set(g), |g| {
                    check_group(&g).map(|()| g)
                })
            })
            .collect();
        Config {
            node_name: v.take_with("node_name", node_name, check_node_name),
            display_name: v.take_with("display_name", display_name, |d| {
                opsbro_types::names::display_name(&d)
                    .map(|()| d)
                    .map_err(|e| e.0)
            }),
            data_dir: v.take_with("data_dir", data_dir, |p| {
                if p.is_absolute() {
                    Ok(p)
                } else {
                    Err(format!("`{}` must be an absolute path", p.display()))
                }
            }),
            bind_addr: v.take_with("bind_addr", bind_addr, parse_ip),
            advertise_addr: v.take_with("advertise_addr", advertise_addr, |s| {
                let ip = parse_ip(s)?;
                if ip.is_unspecified() {
                    Err(format!(
                        "{ip} cannot be advertised: give an address peers can reach"
                    ))
                } else {
                    Ok(ip)
                }
            }),
            port: v.take("port", port),
            api_bind: v.take_with("api.bind", api_bind, parse_ip),
            api_port: v.take("api.port", api_port),
            api_token: v.take_with("api.token", api_token, check_token),
            api_anonymous_reads: v.take("api.anonymous_reads", api_anonymous_reads),
            api_allowed_hosts: v
                .take_with("api.allowed_hosts", api_allowed_hosts, |hosts| {
                    for h in &hosts {
                        if h.is_empty()
                            || !h
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
                        {
                            return Err(format!("`{h}` is not a host name"));
                        }
                    }
                    Ok(hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect())
                })
                .unwrap_or_default(),
            seeds,
            bootstrap: v.take("bootstrap", bootstrap),
            groups,
            zone: v.take_with("zone", zone, |z| {
                opsbro_types::names::zone(&z).map(|()| z).map_err(|e| e.0)
            }),
            proxy_node: v.take("proxy_node", proxy_node),
            encryption_key: v.take_with("encryption_key", encryption_key, |k| {
                EncryptionKey::from_base64(&k)
            }),
            keyring_file: v.take("encryption.keyring_file", keyring_file),
            packs_dirs: v.take("packs_dirs", packs_dirs).unwrap_or_default(),
            disabled_packs: v.take("disabled_packs", disabled_packs).unwrap_or_default(),
            objects_dirs: v.take("objects_dirs", objects_dirs),
            templates_dir: v.take("templates_dir", templates_dir),
            log_level: v.take_with("log_level", log_level, check_log_level),
            log_file: v.take_with("log_file", log_file, |p| {
                if p.is_absolute() && p.file_name().is_some() {
                    Ok(p)
                } else {
                    Err(format!(
                        "`{}` must be the absolute path of a file",
                        p.display()
                    ))
                }
            }),
            log_keep_days: v.take_with("log_keep_days", log_keep_days, |d| {
                if (1..=3650).contains(&d) {
                    Ok(d)
                } else {
                    Err(format!("{d} is outside 1..3650"))
                }
            }),
            gossip,
            auto_detect: v.take("auto_detect", auto_detect),
            insecure_plaintext_gossip: v
                .take("insecure_plaintext_gossip", insecure_plaintext_gossip),
            nagios_plugins_dir: v.take_with("nagios_plugins_dir", nagios_plugins_dir, |p| {
                if p.is_absolute() {
                    Ok(p)
                } else {
                    Err(format!("`{}` must be an absolute path", p.display()))
                }
            }),
            kv,
            dns,
            statsd,
            graphite,
            websocket,
            executor,
            hosting,
        }
    }

    fn validate_hosting(v: &mut Validator<'_>, raw: raw::RawHosting) -> HostingSettings {
        let raw::RawHosting {
            driver,
            always_probe,
            metadata_timeout,
            advertise_public_address,
            unknown,
        } = raw;
        v.unknown("hosting", unknown, raw::HOSTING_KEYS);
        let d = HostingSettings::default();
        HostingSettings {
            driver: v
                .take_with("hosting.driver", driver, |name| {
                    let name = name.trim().to_ascii_lowercase();
                    if name == "auto" || name == "none" || HOSTING_DRIVERS.contains(&name.as_str())
                    {
                        Ok(name)
                    } else {
                        Err(format!(
                            "`{name}` is not a hosting driver: use auto, none or one of {}",
                            HOSTING_DRIVERS.join(", ")
                        ))
                    }
                })
                .unwrap_or(d.driver),
            always_probe: v
                .take("hosting.always_probe", always_probe)
                .unwrap_or(d.always_probe),
            metadata_timeout: v
                .take_with("hosting.metadata_timeout", metadata_timeout, |t| {
                    let t = parse_duration(&t)?;
                    if t < std::time::Duration::from_millis(50)
                        || t > std::time::Duration::from_secs(2)
                    {
                        Err(format!(
                            "{t:?} is outside 50ms..2s (the services are on the local link, \
                             and the agent waits for them at start)"
                        ))
                    } else {
                        Ok(t)
                    }
                })
                .unwrap_or(d.metadata_timeout),
            advertise_public_address: v
                .take("hosting.advertise_public_address", advertise_public_address)
                .unwrap_or(d.advertise_public_address),
        }
    }

    fn validate_executor(v: &mut Validator<'_>, raw: raw::RawExecutor) -> ExecutorSettings {
        let raw::RawExecutor {
            authorized_keys,
            authorized_keys_file,
            private_key_file,
            max_per_minute,
            unknown,
        } = raw;
        v.unknown("executor", unknown, raw::EXECUTOR_KEYS);
        let d = ExecutorSettings::default();
        let absolute = |p: PathBuf| {
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(format!("`{}` must be an absolute path", p.display()))
            }
        };
        let authorized_keys = v
            .take("executor.authorized_keys", authorized_keys)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(i, line)| {
                v.take_with(
                    &format!("executor.authorized_keys[{i}]"),
                    Field::Set(line),
                    |l| AuthorizedKey::parse(&l),
                )
            })
            .collect();
        ExecutorSettings {
            authorized_keys,
            authorized_keys_file: v.take_with(
                "executor.authorized_keys_file",
                authorized_keys_file,
                absolute,
            ),
            private_key_file: v.take_with("executor.private_key_file", private_key_file, absolute),
            max_per_minute: v
                .take_with("executor.max_per_minute", max_per_minute, |n| {
                    if (1..=6000).contains(&n) {
                        Ok(n)
                    } else {
                        Err(format!("{n} is outside 1..6000"))
                    }
                })
                .unwrap_or(d.max_per_minute),
        }
    }

    fn validate_statsd(v: &mut Validator<'_>, raw: raw::RawStatsd) -> StatsdSettings {
        let raw::RawStatsd {
            enabled,
            bind,
            port,
            interval,
            unknown,
        } = raw;
        v.unknown("statsd", unknown, raw::STATSD_KEYS);
        let d = StatsdSettings::default();
        StatsdSettings {
            enabled: v.take("statsd.enabled", enabled).unwrap_or(d.enabled),
            bind: v.take_with("statsd.bind", bind, parse_ip).unwrap_or(d.bind),
            port: v.take("statsd.port", port).unwrap_or(d.port),
            interval: v
                .take_with("statsd.interval", interval, |i| {
                    let i = parse_duration(&i)?;
                    if i < std::time::Duration::from_secs(1)
                        || i > std::time::Duration::from_secs(3600)
                    {
                        Err(format!("{i:?} is outside 1s..1h"))
                    } else {
                        Ok(i)
                    }
                })
                .unwrap_or(d.interval),
        }
    }

    fn validate_graphite(v: &mut Validator<'_>, raw: raw::RawGraphite) -> GraphiteSettings {
        let raw::RawGraphite {
            enabled,
            bind,
            port,
            udp,
            tcp,
            forward,
            forward_buffer,
            unknown,
        } = raw;
        v.unknown("graphite", unknown, raw::GRAPHITE_KEYS);
        let d = GraphiteSettings::default();
        GraphiteSettings {
            enabled: v.take("graphite.enabled", enabled).unwrap_or(d.enabled),
            bind: v
                .take_with("graphite.bind", bind, parse_ip)
                .unwrap_or(d.bind),
            port: v.take("graphite.port", port).unwrap_or(d.port),
            udp: v.take("graphite.udp", udp).unwrap_or(d.udp),
            tcp: v.take("graphite.tcp", tcp).unwrap_or(d.tcp),
            forward: v.take_with("graphite.forward", forward, |f| {
                let f = f.trim().to_owned();
                match f.rsplit_once(':') {
                    Some((host, port))
                        if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) =>
                    {
                        Ok(f)
                    }
                    _ => Err(format!(
                        "`{f}` is not host:port (e.g. graphite.example.com:2003)"
                    )),
                }
            }),
            forward_buffer: v
                .take_with("graphite.forward_buffer", forward_buffer, |n| {
                    usize::try_from(n)
                        .ok()
                        .filter(|n| (1..=10_000_000).contains(n))
                        .ok_or_else(|| format!("{n} is outside 1..10000000"))
                })
                .unwrap_or(d.forward_buffer),
        }
    }

    fn validate_dns(v: &mut Validator<'_>, raw: raw::RawDns) -> DnsSettings {
        let raw::RawDns {
            enabled,
            bind,
            port,
            domain,
            ttl,
            negative_ttl,
            only_passing,
            warning_passes,
            recursors,
            udp_threads,
            coalesce,
            unknown,
        } = raw;
        v.unknown("dns", unknown, raw::DNS_KEYS);
        let d = DnsSettings::default();
        let recursors = v
            .take("dns.recursors", recursors)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| {
                v.take_with(&format!("dns.recursors[{i}]"), Field::Set(r), |r| {
                    let r = r.trim().to_owned();
                    r.parse::<std::net::SocketAddr>()
                        .or_else(|_| r.parse::<IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)))
                        .map_err(|_| format!("`{r}` is not an IP address with an optional port (e.g. 127.0.0.1:53)"))
                })
            })
            .collect();
        DnsSettings {
            enabled: v.take("dns.enabled", enabled).unwrap_or(d.enabled),
            bind: v.take_with("dns.bind", bind, parse_ip).unwrap_or(d.bind),
            port: v.take("dns.port", port).unwrap_or(d.port),
            domain: v
                .take_with("dns.domain", domain, |dom| {
                    // `.opsbro` (the original's README form), `opsbro.` and `opsbro` are one
                    // domain: one leading and one trailing dot are dropped.
                    let dom = dom.trim();
                    let dom = dom.strip_prefix('.').unwrap_or(dom);
                    let dom = dom.strip_suffix('.').unwrap_or(dom).to_ascii_lowercase();
                    let ok = !dom.is_empty()
                        && dom.len() <= 200
                        && dom.split('.').all(|l| {
                            !l.is_empty()
                                && l.len() <= 63
                                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        });
                    if ok {
                        Ok(dom)
                    } else {
                        Err(format!(
                            "`{dom}` is not a domain name (letters, digits, `-`, dots)"
                        ))
                    }
                })
                .unwrap_or(d.domain),
            ttl: v.take("dns.ttl", ttl).unwrap_or(d.ttl),
            negative_ttl: v
                .take("dns.negative_ttl", negative_ttl)
                .unwrap_or(d.negative_ttl),
            only_passing: v
                .take("dns.only_passing", only_passing)
                .unwrap_or(d.only_passing),
            warning_passes: v
                .take("dns.warning_passes", warning_passes)
                .unwrap_or(d.warning_passes),
            recursors,
            udp_threads: v
                .take_with("dns.udp_threads", udp_threads, |n| {
                    if (1..=64).contains(&n) {
                        Ok(n)
                    } else {
                        Err(format!("{n} is outside 1..64"))
                    }
                })
                .unwrap_or(d.udp_threads),
            coalesce: v
                .take_with("dns.coalesce", coalesce, |c| {
                    let c = parse_duration(&c)?;
                    if c > std::time::Duration::from_millis(1) {
                        Err("at most 1ms (it is added to answers' latency under load)".to_owned())
                    } else {
                        Ok(c)
                    }
                })
                .unwrap_or(d.coalesce),
        }
    }

    fn validate_kv(v: &mut Validator<'_>, raw: raw::RawKv) -> KvSettings {
        let raw::RawKv {
            write_acks,
            replication_factor,
            tombstone_ttl,
            anti_entropy_interval,
            cache_size,
            unknown,
        } = raw;
        v.unknown("kv", unknown, raw::KV_KEYS);
        let positive = |d: serde_yaml::Value| {
            let d = parse_duration(&d)?;
            if d.is_zero() {
                Err("must be more than 0".to_owned())
            } else {
                Ok(d)
            }
        };
        KvSettings {
            write_acks: v.take_with("kv.write_acks", write_acks, |w| {
                let w = w.trim().to_ascii_lowercase();
                if ["one", "quorum", "all"].contains(&w.as_str()) {
                    Ok(w)
                } else {
                    Err(format!("`{w}` is not one of one, quorum, all"))
                }
            }),
            replication_factor: v.take_with("kv.replication_factor", replication_factor, |n| {
                if (1..=7).contains(&n) {
                    Ok(n as usize)
                } else {
                    Err(format!("{n} is outside 1..7"))
                }
            }),
            tombstone_ttl: v.take_with("kv.tombstone_ttl", tombstone_ttl, positive),
            anti_entropy_interval: v.take_with(
                "kv.anti_entropy_interval",
                anti_entropy_interval,
                positive,
            ),
            cache_size: v.take_with("kv.cache_size", cache_size, |s| {
                let bytes = parse_size(&s)?;
                if (MIN_CACHE_BYTES..=MAX_CACHE_BYTES).contains(&bytes) {
                    Ok(bytes)
                } else {
                    Err(format!(
                        "{bytes} bytes is outside 1MiB..64GiB (a size such as 8MiB or 64MB)"
                    ))
                }
            }),
        }
    }

    fn validate_gossip(v: &mut Validator<'_>, raw: RawGossip) -> GossipTuning {
        let RawGossip {
            probe_interval,
            probe_timeout,
            gossip_interval,
            push_pull_interval,
            suspicion_mult,
            tombstone_ttl,
            max_members,
            max_new_members_per_peer,
            unknown,
        } = raw;
        v.unknown("gossip", unknown, raw::GOSSIP_KEYS);
        let count = |min: u64, max: u64| {
            move |n: u64| {
                if (min..=max).contains(&n) {
                    Ok(n as usize)
                } else {
                    Err(format!("{n} is outside {min}..{max}"))
                }
            }
        };
        let positive = |value: serde_yaml::Value| {
            let d = parse_duration(&value)?;
            if d.is_zero() {
                Err("must be more than 0".to_owned())
            } else {
                Ok(d)
            }
        };
        let tuning = GossipTuning {
            probe_interval: v.take_with("gossip.probe_interval", probe_interval, positive),
            probe_timeout: v.take_with("gossip.probe_timeout", probe_timeout, positive),
            gossip_interval: v.take_with("gossip.gossip_interval", gossip_interval, positive),
            push_pull_interval: v.take_with(
                "gossip.push_pull_interval",
                push_pull_interval,
                positive,
            ),
            suspicion_mult: v.take_with("gossip.suspicion_mult", suspicion_mult, |m| {
                if (1.0..=10.0).contains(&m) {
                    Ok(m)
                } else {
                    Err(format!("{m} is outside 1..10"))
                }
            }),
            tombstone_ttl: v.take_with("gossip.tombstone_ttl", tombstone_ttl, positive),
            max_members: v.take_with("gossip.max_members", max_members, count(2, 1_000_000)),
            max_new_members_per_peer: v.take_with(
                "gossip.max_new_members_per_peer",
                max_new_members_per_peer,
                count(1, 1_000_000),
            ),
        };
        let interval = tuning
            .probe_interval
            .unwrap_or(std::time::Duration::from_secs(1));
        if let Some(timeout) = tuning.probe_timeout
            && timeout >= interval
        {
            v.error(
                "gossip.probe_timeout",
                format!("{timeout:?} must be shorter than the probe interval ({interval:?})"),
            );
        }
        tuning
    }

    /// Apply flags/env over the file, fill defaults, and check rules that span several keys.
    pub fn resolve(
        self,
        overrides: Overrides,
        host: &HostFacts,
    ) -> Result<AgentConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let mut cross = |key: &str, message: String| {
            errors.push(ConfigError {
                source: "configuration".into(),
                line: None,
                key: key.into(),
                message,
            })
        };
        let node_name = match overrides.node_name.or(self.node_name) {
            Some(n) => n,
            None => match check_node_name(host.hostname.trim().to_owned()) {
                Ok(n) => n,
                Err(e) => {
                    cross(
                        "node_name",
                        format!("the host name cannot be used as node name ({e}): set node_name"),
                    );
                    String::new()
                }
            },
        };
        let data_dir = overrides
            .data_dir
            .or(self.data_dir)
            .unwrap_or_else(|| default_data_dir(host));
        let api_bind = overrides
            .api_bind
            .or(self.api_bind)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let api_token = overrides.api_token.or(self.api_token);
        let no_operator_token = api_token.is_none();
        if !api_bind.is_loopback() && api_token.is_none() {
            cross(
                "api.bind",
                format!(
                    "refusing to serve the local API on non-loopback address {api_bind} without a token: \
                     set api.token (or OPSBRO_API_TOKEN), or bind it to 127.0.0.1"
                ),
            );
        }
        if self.websocket.enabled && !self.websocket.bind.is_loopback() && api_token.is_none() {
            cross(
                "websocket.bind",
                format!(
                    "refusing to serve the event stream on non-loopback address {} without a token: \
                     set api.token (or OPSBRO_API_TOKEN), or bind it to 127.0.0.1",
                    self.websocket.bind
                ),
            );
        }
        let mut seeds = self.seeds;
        seeds.extend(overrides.seeds);
        let config = AgentConfig {
            display_name: self.display_name.unwrap_or_else(|| node_name.clone()),
            node_name,
            data_dir,
            bind_addr: overrides.bind_addr.or(self.bind_addr),
            insecure_plaintext_gossip: overrides.insecure_plaintext_gossip
                || self.insecure_plaintext_gossip.unwrap_or(false),
            advertise_addr: self.advertise_addr,
            port: overrides.port.or(self.port).unwrap_or(DEFAULT_GOSSIP_PORT),
            api_bind,
            api_port: overrides
                .api_port
                .or(self.api_port)
                .unwrap_or(DEFAULT_API_PORT),
            api_token,
            // A token the operator set locks the whole API unless reads are opened explicitly;
            // off loopback, reads always need the token.
            api_anonymous_reads: self.api_anonymous_reads.unwrap_or(no_operator_token)
                && api_bind.is_loopback(),
            api_allowed_hosts: self.api_allowed_hosts,
            seeds,
            bootstrap: self.bootstrap.unwrap_or(false),
            groups: self.groups,
            zone: self.zone.unwrap_or_else(|| DEFAULT_ZONE.to_owned()),
            proxy_node: self.proxy_node.unwrap_or(false),
            encryption_key: self.encryption_key,
            keyring_file: self.keyring_file,
            packs_dirs: self.packs_dirs,
            disabled_packs: self.disabled_packs,
            objects_dirs: self.objects_dirs,
            templates_dir: self.templates_dir,
            log_level: overrides
                .log_level
                .or(self.log_level)
                .unwrap_or_else(|| "info".to_owned()),
            log_file: self.log_file,
            log_keep_days: self.log_keep_days.unwrap_or(DEFAULT_LOG_KEEP_DAYS),
            gossip: self.gossip,
            auto_detect: overrides.auto_detect || self.auto_detect.unwrap_or(false),
            nagios_plugins_dir: self
                .nagios_plugins_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_NAGIOS_PLUGINS_DIR)),
            kv: self.kv,
            dns: DnsSettings {
                port: overrides.dns_port.unwrap_or(self.dns.port),
                ..self.dns
            },
            statsd: self.statsd,
            graphite: self.graphite,
            websocket: self.websocket,
            executor: self.executor,
            hosting: self.hosting,
        };
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

impl AgentConfig {
    /// Where gossip listens, given whether the cluster has a key. Without a key nobody is
    /// authenticated: the default is loopback only (one host), and a non-loopback address is
    /// refused unless `insecure_plaintext_gossip` says the operator wants an open cluster.
    pub fn gossip_bind(&self, encrypted: bool) -> Result<IpAddr, String> {
        match (self.bind_addr, encrypted) {
            (Some(ip), true) => Ok(ip),
            (None, true) => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            (None, false) if self.insecure_plaintext_gossip => {
                Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            }
            (None, false) => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            (Some(ip), false) if ip.is_loopback() || self.insecure_plaintext_gossip => Ok(ip),
            (Some(ip), false) => Err(format!(
                "refusing to listen for cluster traffic on {ip} without an encryption key: anyone \
                 who reaches port {} could join the cluster, add members and write to the KV store. \
                 Generate a key with `opsbro agent keygen` and give every agent the same \
                 `encryption_key`, or bind 127.0.0.1; to run an open cluster anyway, set \
                 `insecure_plaintext_gossip: true` (or --insecure-plaintext-gossip)",
                self.port
            )),
        }
    }
}

/// Tokens travel in an HTTP header and are compared as bytes.
pub fn check_token(token: String) -> Result<String, String> {
    if token.is_empty() {
        return Err("must not be empty".into());
    }
    if token.chars().any(|c| !c.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".into());
    }
    Ok(token)
}

fn only_comments(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---")
}

/// `/var/lib/opsbro` for root, else `$XDG_DATA_HOME/opsbro` (or `~/.local/share/opsbro`).
pub fn default_data_dir(host: &HostFacts) -> PathBuf {
    if host.euid == 0 {
        return PathBuf::from("/var/lib/opsbro");
    }
    if let Some(xdg) = host.xdg_data_home.as_ref().filter(|p| p.is_absolute()) {
        return xdg.join("opsbro");
    }
    match &host.home {
        Some(home) => home.join(".local/share/opsbro"),
        // No home at all (a bare service account): stay out of shared places.
        None => std::env::temp_dir().join(format!("opsbro-{}", host.euid)),
    }
}

#[cfg(test)]
mod tests;
