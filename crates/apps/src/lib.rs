//! Collectors of what runs on the host and where it runs: application servers spoken to in their
//! own protocol (redis INFO, ...), later Docker and cloud metadata services. Each is an
//! [`AppCollector`]: async (it talks to a server), with a state of its own between runs (the
//! previous counters, for rates), reading its connection settings from its pack's parameters
//! (`packs/<pack>/parameters/*.yml`, overridable by a pack of the same name at a higher level).
//!
//! The agent's collector loop runs them after the Linux collectors, each under a timeout, on hosts
//! in the collector's group only ([`AppCollector::group`]): a host without redis has
//! `collector.redis` `not-eligible`, a redis host whose server is down has it `error` with the
//! reason, and the agent runs on.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

pub mod apache;
pub mod clouds;
pub mod docker;
pub mod haproxy;
mod http_get;
pub mod memcached;
pub mod mongodb;
pub mod mysql;
pub mod nginx;
pub mod postgresql;
pub mod rabbitmq;
pub mod redis;

/// A pack's parameters (`{{parameters.x}}` in its checks): a JSON object, possibly empty.
pub type Params = Map<String, Value>;

/// The future of one run: the collected values (a JSON object; empty = nothing to report) or why
/// it failed.
pub type CollectFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>>;

/// One collector of an application (or of the host's surroundings).
pub trait AppCollector: Send {
    /// Its name: values are `collector.<name>.<path>`.
    fn name(&self) -> &'static str;

    /// The group whose hosts run it (`redis`), detected by its pack; `None`: every host (the
    /// collector finds out itself whether it applies and reports nothing when it does not).
    fn group(&self) -> Option<&'static str> {
        Some(self.name())
    }

    /// The pack whose parameters it reads.
    fn pack(&self) -> &'static str {
        self.name()
    }

    /// Talk to the server once.
    fn collect<'a>(&'a mut self, params: &'a Params) -> CollectFuture<'a>;
}

/// Every application collector, in run order.
pub fn all() -> Vec<Box<dyn AppCollector>> {
    vec![
        Box::new(redis::Redis::default()),
        Box::new(memcached::Memcached::default()),
        Box::new(nginx::Nginx::default()),
        Box::new(apache::Apache::default()),
        Box::new(haproxy::Haproxy::default()),
        Box::new(rabbitmq::Rabbitmq::default()),
        Box::new(docker::Docker::default()),
        Box::new(mysql::Mysql::default()),
        Box::new(postgresql::Postgresql::default()),
        Box::new(mongodb::Mongodb::default()),
    ]
}

/// Names of [`all`], in run order, then the cloud collectors' ([`clouds::collectors`]).
pub fn names() -> Vec<&'static str> {
    all()
        .iter()
        .map(|c| c.name())
        .chain(clouds::COLLECTOR_NAMES)
        .collect()
}

/// Make sure reqwest has its TLS provider (rustls with ring, as the agent installs at start):
/// the collectors build their HTTP clients after it, and a test or a tool that did not install
/// it would panic instead.
pub fn ensure_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The longest a collector may take when its parameters set no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// Parameter `key` as text, `default` when missing; numbers are written out (`port: 6379`).
pub fn param_str(params: &Params, key: &str, default: &str) -> String {
    match params.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => default.to_owned(),
    }
}

/// Parameter `key` as an unsigned number (`"6379"` too), `default` when missing or not one.
pub fn param_u64(params: &Params, key: &str, default: u64) -> u64 {
    match params.get(key) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(default),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(default),
        _ => default,
    }
}

/// Parameter `key` as a TCP port.
pub fn param_port(params: &Params, key: &str, default: u16) -> Result<u16, String> {
    let v = param_u64(params, key, u64::from(default));
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("parameter `{key}` is not a TCP port: {v}"))
}

/// The run's timeout: parameter `timeout` (seconds, may be fractional), else [`DEFAULT_TIMEOUT`];
/// at most 30 s.
pub fn timeout_of(params: &Params) -> Duration {
    let secs = match params.get("timeout") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().trim_end_matches('s').parse().ok(),
        _ => None,
    };
    secs.filter(|s| s.is_finite() && *s > 0.0)
        .map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs_f64(s.min(30.0)))
}

/// Per-second rates of counters between two runs: `<key>/s` next to each counter `<key>` of a
/// run's object. The first run, and a counter that went down (a server restart), give 0.
#[derive(Debug, Default)]
pub struct Rates {
    prev: Option<(Instant, HashMap<String, f64>)>,
}

impl Rates {
    /// Add `<key>/s` for every `key` of `counters` that `out` holds as a number.
    pub fn apply(&mut self, now: Instant, out: &mut Map<String, Value>, counters: &[&str]) {
        let mut seen = HashMap::new();
        for key in counters {
            let Some(v) = out.get(*key).and_then(Value::as_f64) else {
                continue;
            };
            let rate = self
                .prev
                .as_ref()
                .and_then(|(t, m)| {
                    let secs = now.duration_since(*t).as_secs_f64();
                    let before = m.get(*key)?;
                    (secs > 0.0 && v >= *before).then(|| (v - before) / secs)
                })
                .unwrap_or(0.0);
            out.insert(
                format!("{key}/s"),
                Value::from((rate * 100.0).round() / 100.0),
            );
            seen.insert((*key).to_owned(), v);
        }
        self.prev = Some((now, seen));
    }
}

/// A `key:value` text (redis INFO, memcached `STAT key value` after the prefix is cut) as a JSON
/// object: integers and decimals become numbers, the rest stays text.
pub fn typed(value: &str) -> Value {
    let v = value.trim();
    if let Ok(i) = v.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(u) = v.parse::<u64>() {
        return Value::from(u);
    }
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() && !v.eq_ignore_ascii_case("nan") && !v.contains("inf") => {
            Value::from(f)
        }
        _ => Value::from(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rates_come_from_deltas_and_restarts_give_zero() {
        let mut rates = Rates::default();
        let t0 = Instant::now();
        let mut first = json!({"cmds": 100, "name": "x"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        rates.apply(t0, &mut first, &["cmds", "missing"]);
        assert_eq!(first["cmds/s"], json!(0.0));
        assert!(!first.contains_key("missing/s"));
        let mut second = json!({"cmds": 150})
            .as_object()
            .cloned()
            .unwrap_or_default();
        rates.apply(t0 + Duration::from_secs(10), &mut second, &["cmds"]);
        assert_eq!(second["cmds/s"], json!(5.0));
        let mut restarted = json!({"cmds": 3}).as_object().cloned().unwrap_or_default();
        rates.apply(t0 + Duration::from_secs(20), &mut restarted, &["cmds"]);
        assert_eq!(restarted["cmds/s"], json!(0.0));
    }

    #[test]
    fn parameters_read_numbers_and_text() {
        let p = json!({"port": "6380", "host": "db", "timeout": 0.5, "bad": 70000})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(param_port(&p, "port", 6379), Ok(6380));
        assert_eq!(param_port(&p, "other", 6379), Ok(6379));
        assert!(param_port(&p, "bad", 1).is_err());
        assert_eq!(param_str(&p, "host", "127.0.0.1"), "db");
        assert_eq!(timeout_of(&p), Duration::from_millis(500));
        assert_eq!(timeout_of(&Params::new()), DEFAULT_TIMEOUT);
    }

    #[test]
    fn typed_values() {
        assert_eq!(typed("12"), json!(12));
        assert_eq!(typed("1.5"), json!(1.5));
        assert_eq!(typed("yes"), json!("yes"));
        assert_eq!(typed("nan"), json!("nan"));
        assert_eq!(typed("18446744073709551615"), json!(u64::MAX));
    }
}
