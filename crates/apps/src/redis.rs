//! Redis: `INFO` over the redis protocol (the `redis` crate), every field typed, with rates of its
//! counters, the key count of each database (`db0.keys`) and in total (`keys`), `maxclients` from
//! `CONFIG GET` (when the server allows it) and, on a replica, the replication lag.
//!
//! Parameters (`packs/redis/parameters/parameters.yml`): `host`, `port`, `socket` (a unix socket
//! path, used instead of host/port when set), `username`, `password`, `db`, `timeout`.

use std::time::Instant;

use redis::{ConnectionAddr, ConnectionInfo, RedisConnectionInfo};
use serde_json::{Map, Value};

use crate::{AppCollector, CollectFuture, Params, Rates, param_port, param_str, param_u64, typed};

/// Counters that get a `<name>/s` rate.
const COUNTERS: &[&str] = &[
    "total_commands_processed",
    "total_connections_received",
    "keyspace_hits",
    "keyspace_misses",
    "expired_keys",
    "evicted_keys",
    "rejected_connections",
    "total_net_input_bytes",
    "total_net_output_bytes",
];

/// The redis collector.
#[derive(Debug, Default)]
pub struct Redis {
    rates: Rates,
}

impl AppCollector for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn collect<'a>(&'a mut self, params: &'a Params) -> CollectFuture<'a> {
        Box::pin(async move {
            let info = connection_info(params)?;
            let timeout = crate::timeout_of(params);
            let where_ = match &info.addr {
                ConnectionAddr::Unix(p) => p.display().to_string(),
                other => other.to_string(),
            };
            let client = redis::Client::open(info).map_err(|e| e.to_string())?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| format!("cannot reach redis at {where_}: {e}"))?;
            let text: String = redis::cmd("INFO")
                .arg("all")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("INFO failed at {where_}: {e}"))?;
            // CONFIG may be renamed or refused (ACLs): maxclients is then left out.
            let maxclients: Option<Vec<String>> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxclients")
                .query_async(&mut conn)
                .await
                .ok();
            let mut out = parse_info(&text);
            if let Some(n) = maxclients
                .as_deref()
                .and_then(|v| v.get(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                out.insert("maxclients".into(), Value::from(n));
            }
            self.rates.apply(Instant::now(), &mut out, COUNTERS);
            Ok(Value::Object(out))
        })
    }
}

fn connection_info(params: &Params) -> Result<ConnectionInfo, String> {
    let socket = param_str(params, "socket", "");
    let addr = if socket.is_empty() {
        ConnectionAddr::Tcp(
            param_str(params, "host", "127.0.0.1"),
            param_port(params, "port", 6379)?,
        )
    } else {
        ConnectionAddr::Unix(socket.into())
    };
    let non_empty = |k: &str| Some(param_str(params, k, "")).filter(|s| !s.is_empty());
    Ok(ConnectionInfo {
        addr,
        redis: RedisConnectionInfo {
            db: i64::try_from(param_u64(params, "db", 0)).unwrap_or(0),
            username: non_empty("username"),
            password: non_empty("password"),
            ..RedisConnectionInfo::default()
        },
    })
}

/// `INFO` text → object: `available`, every `key:value` typed, `dbN: {keys, expires, avg_ttl}`,
/// `keys` (all databases), and on a replica `replication_lag_bytes`.
pub fn parse_info(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("available".into(), Value::Bool(true));
    let mut keys = 0u64;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.starts_with("db") && k[2..].chars().all(|c| c.is_ascii_digit()) && v.contains('=') {
            // db0:keys=3,expires=0,avg_ttl=0
            let mut db = Map::new();
            for part in v.split(',') {
                if let Some((a, b)) = part.split_once('=') {
                    db.insert(a.to_owned(), typed(b));
                }
            }
            keys += db.get("keys").and_then(Value::as_u64).unwrap_or(0);
            out.insert(k.to_owned(), Value::Object(db));
        } else if k.starts_with("slave") && k[5..].chars().all(|c| c.is_ascii_digit()) {
            // slave0:ip=...,port=...,state=online,offset=...,lag=0 (on a master): kept as text.
            out.insert(k.to_owned(), Value::from(v));
        } else {
            out.insert(k.to_owned(), typed(v));
        }
    }
    out.insert("keys".into(), Value::from(keys));
    if out.get("role").and_then(Value::as_str) == Some("slave") {
        let offset = |k: &str| out.get(k).and_then(Value::as_i64);
        if let (Some(master), Some(mine)) =
            (offset("master_repl_offset"), offset("slave_repl_offset"))
        {
            out.insert(
                "replication_lag_bytes".into(),
                Value::from((master - mine).max(0)),
            );
        }
        let up = out.get("master_link_status").and_then(Value::as_str) == Some("up");
        out.insert("master_link_up".into(), Value::Bool(up));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn info_is_typed_with_keyspace_and_replication() {
        let text = "# Server\r\nredis_version:7.0.15\r\nuptime_in_seconds:12\r\n\r\n# Clients\r\nconnected_clients:3\r\nmem_fragmentation_ratio:1.25\r\n# Replication\r\nrole:slave\r\nmaster_link_status:up\r\nmaster_repl_offset:1500\r\nslave_repl_offset:1200\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=0\r\ndb2:keys=4,expires=0,avg_ttl=0\r\n";
        let out = parse_info(text);
        assert_eq!(out["redis_version"], json!("7.0.15"));
        assert_eq!(out["connected_clients"], json!(3));
        assert_eq!(out["mem_fragmentation_ratio"], json!(1.25));
        assert_eq!(out["db0"], json!({"keys": 3, "expires": 1, "avg_ttl": 0}));
        assert_eq!(out["keys"], json!(7));
        assert_eq!(out["replication_lag_bytes"], json!(300));
        assert_eq!(out["master_link_up"], json!(true));
        assert_eq!(out["available"], json!(true));
    }

    #[test]
    fn bad_parameters_are_reported() {
        let p = json!({"port": "x6379"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        // A non-number falls back to the default port; a number out of range is an error.
        assert!(connection_info(&p).is_ok());
        let p = json!({"port": 0}).as_object().cloned().unwrap_or_default();
        assert!(connection_info(&p).is_err());
    }
}
