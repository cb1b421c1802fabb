//! The raw configuration: serde structs that mirror the YAML file. Every field is a [`Field`], which
//! never fails to deserialize: a wrongly typed value is kept as an error so that validation can
//! report every problem in the file at once instead of stopping at the first.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// One configuration value as found in the file.
#[derive(Debug, Default)]
pub enum Field<T> {
    /// The key is not in the file (or is `null`/empty): the default applies.
    #[default]
    Absent,
    /// The key holds a value of the right type.
    Set(T),
    /// The key holds a value of the wrong type; the message says what was expected.
    Invalid(String),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_yaml::Value::deserialize(deserializer)?;
        if value.is_null() {
            return Ok(Field::Absent);
        }
        Ok(match serde_yaml::from_value::<T>(value) {
            Ok(v) => Field::Set(v),
            Err(e) => Field::Invalid(describe_type_error(&e.to_string())),
        })
    }
}

/// serde's messages name Rust types (`u16`, `a sequence`); say it in the config's terms.
fn describe_type_error(message: &str) -> String {
    message
        .replace("expected u16", "expected a port number (0-65535)")
        .replace("expected u32", "expected a non-negative integer")
        .replace("expected u64", "expected a non-negative integer")
        .replace("invalid type: ", "wrong type: found ")
}

/// Keys the file has that we do not know, with their values (kept for the error message).
pub type Unknown = BTreeMap<String, serde_yaml::Value>;

/// Mirror of `agent.yml`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawConfig {
    pub node_name: Field<String>,
    pub display_name: Field<String>,
    pub data_dir: Field<PathBuf>,
    pub bind_addr: Field<String>,
    pub advertise_addr: Field<String>,
    pub port: Field<u16>,
    pub api: Field<RawApi>,
    pub seeds: Field<Vec<String>>,
    pub bootstrap: Field<bool>,
    pub groups: Field<Vec<String>>,
    pub zone: Field<String>,
    pub proxy_node: Field<bool>,
    pub encryption_key: Field<String>,
    pub encryption: Field<RawEncryption>,
    pub packs_dirs: Field<Vec<PathBuf>>,
    pub disabled_packs: Field<Vec<String>>,
    pub objects_dirs: Field<Vec<PathBuf>>,
    pub templates_dir: Field<PathBuf>,
    pub log_level: Field<String>,
    pub log_file: Field<PathBuf>,
    pub log_keep_days: Field<u32>,
    pub gossip: Field<RawGossip>,
    pub auto_detect: Field<bool>,
    pub insecure_plaintext_gossip: Field<bool>,
    pub nagios_plugins_dir: Field<PathBuf>,
    pub kv: Field<RawKv>,
    pub dns: Field<RawDns>,
    pub statsd: Field<RawStatsd>,
    pub graphite: Field<RawGraphite>,
    pub websocket: Field<RawWebsocket>,
    pub executor: Field<RawExecutor>,
    pub hosting: Field<RawHosting>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Mirror of the `gossip:` section (protocol tuning; the defaults suit a LAN).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawGossip {
    pub probe_interval: Field<serde_yaml::Value>,
    pub probe_timeout: Field<serde_yaml::Value>,
    pub gossip_interval: Field<serde_yaml::Value>,
    pub push_pull_interval: Field<serde_yaml::Value>,
    pub suspicion_mult: Field<f64>,
    pub tombstone_ttl: Field<serde_yaml::Value>,
    pub max_members: Field<u64>,
    pub max_new_members_per_peer: Field<u64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Keys of `gossip:`.
pub const GOSSIP_KEYS: &[&str] = &[
    "probe_interval",
    "probe_timeout",
    "gossip_interval",
    "push_pull_interval",
    "suspicion_mult",
    "tombstone_ttl",
    "max_members",
    "max_new_members_per_peer",
];

/// Mirror of the `api:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawApi {
    pub bind: Field<String>,
    pub port: Field<u16>,
    pub token: Field<String>,
    pub anonymous_reads: Field<bool>,
    pub allowed_hosts: Field<Vec<String>>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Mirror of the `encryption:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawEncryption {
    pub keyring_file: Field<PathBuf>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// The keys a section knows, for "did you mean" style messages.
pub const TOP_KEYS: &[&str] = &[
    "node_name",
    "display_name",
    "data_dir",
    "bind_addr",
    "advertise_addr",
    "port",
    "api",
    "seeds",
    "bootstrap",
    "groups",
    "zone",
    "proxy_node",
    "encryption_key",
    "encryption",
    "packs_dirs",
    "disabled_packs",
    "objects_dirs",
    "templates_dir",
    "log_level",
    "log_file",
    "log_keep_days",
    "gossip",
    "auto_detect",
    "insecure_plaintext_gossip",
    "nagios_plugins_dir",
    "kv",
    "dns",
    "statsd",
    "graphite",
    "websocket",
    "executor",
    "hosting",
];

/// Mirror of the `hosting:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawHosting {
    pub driver: Field<String>,
    pub always_probe: Field<bool>,
    pub metadata_timeout: Field<serde_yaml::Value>,
    pub advertise_public_address: Field<bool>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Keys of `hosting:`.
pub const HOSTING_KEYS: &[&str] = &[
    "driver",
    "always_probe",
    "metadata_timeout",
    "advertise_public_address",
];

/// Mirror of the `executor:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawExecutor {
    pub authorized_keys: Field<Vec<String>>,
    pub authorized_keys_file: Field<PathBuf>,
    pub private_key_file: Field<PathBuf>,
    pub max_per_minute: Field<u32>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Keys of `executor:`.
pub const EXECUTOR_KEYS: &[&str] = &[
    "authorized_keys",
    "authorized_keys_file",
    "private_key_file",
    "max_per_minute",
];

/// Mirror of the `websocket:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawWebsocket {
    pub enabled: Field<bool>,
    pub bind: Field<String>,
    pub port: Field<u16>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Keys of `websocket:`.
pub const WEBSOCKET_KEYS: &[&str] = &["enabled", "bind", "port"];

/// Mirror of the `statsd:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawStatsd {
    pub enabled: Field<bool>,
    pub bind: Field<String>,
    pub port: Field<u16>,
    pub interval: Field<serde_yaml::Value>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Keys of `statsd:`.
pub const STATSD_KEYS: &[&str] = &["enabled", "bind", "port", "interval"];

/// Mirror of the `graphite:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawGraphite {
    pub enabled: Field<bool>,
    pub bind: Field<String>,
    pub port: Field<u16>,
    pub udp: Field<bool>,
    pub tcp: Field<bool>,
    pub forward: Field<String>,
    pub forward_buffer: Field<u64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Keys of `graphite:`.
pub const GRAPHITE_KEYS: &[&str] = &[
    "enabled",
    "bind",
    "port",
    "udp",
    "tcp",
    "forward",
    "forward_buffer",
];

/// Mirror of the `dns:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawDns {
    pub enabled: Field<bool>,
    pub bind: Field<String>,
    pub port: Field<u16>,
    pub domain: Field<String>,
    pub ttl: Field<u32>,
    pub negative_ttl: Field<u32>,
    pub only_passing: Field<bool>,
    pub warning_passes: Field<bool>,
    pub recursors: Field<Vec<String>>,
    pub udp_threads: Field<usize>,
    pub coalesce: Field<serde_yaml::Value>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Keys of `dns:`.
pub const DNS_KEYS: &[&str] = &[
    "enabled",
    "bind",
    "port",
    "domain",
    "ttl",
    "negative_ttl",
    "only_passing",
    "warning_passes",
    "recursors",
    "udp_threads",
    "coalesce",
];

/// Mirror of the `kv:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawKv {
    pub write_acks: Field<String>,
    pub replication_factor: Field<u64>,
    pub tombstone_ttl: Field<serde_yaml::Value>,
    pub anti_entropy_interval: Field<serde_yaml::Value>,
    pub cache_size: Field<serde_yaml::Value>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Keys of `kv:`.
pub const KV_KEYS: &[&str] = &[
    "write_acks",
    "replication_factor",
    "tombstone_ttl",
    "anti_entropy_interval",
    "cache_size",
];

/// Keys of `api:`.
pub const API_KEYS: &[&str] = &["bind", "port", "token", "anonymous_reads", "allowed_hosts"];

/// Keys of `encryption:`.
pub const ENCRYPTION_KEYS: &[&str] = &["keyring_file"];
