//! Memcached: the `stats` command of its text protocol (a line out, `STAT name value` lines back
//! until `END`), written here: the protocol is three lines and the crates for it are clients for
//! get/set that would bring more than they give. Every stat typed, rates of its counters, the
//! hit ratio, and the connection use against `max_connections`.
//!
//! Parameters (`packs/memcached/parameters/parameters.yml`): `host`, `port`, `timeout`.

use std::time::Instant;

use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{AppCollector, CollectFuture, Params, Rates, param_port, param_str, typed};

/// Counters that get a `<name>/s` rate.
const COUNTERS: &[&str] = &[
    "cmd_get",
    "cmd_set",
    "get_hits",
    "get_misses",
    "evictions",
    "bytes_read",
    "bytes_written",
    "total_connections",
    "rejected_connections",
];

/// The most `stats` lines read (a server answers ~90).
const MAX_LINES: usize = 1000;

/// The memcached collector.
#[derive(Debug, Default)]
pub struct Memcached {
    rates: Rates,
}

impl AppCollector for Memcached {
    fn name(&self) -> &'static str {
        "memcached"
    }

    fn collect<'a>(&'a mut self, params: &'a Params) -> CollectFuture<'a> {
        Box::pin(async move {
            let host = param_str(params, "host", "127.0.0.1");
            let port = param_port(params, "port", 11211)?;
            let run = async {
                let mut stream = TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|e| format!("cannot reach memcached at {host}:{port}: {e}"))?;
                stream
                    .write_all(b"stats\r\n")
                    .await
                    .map_err(|e| format!("cannot send to memcached at {host}:{port}: {e}"))?;
                let mut reader = BufReader::new(stream);
                let mut lines = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    let n = reader
                        .read_line(&mut line)
                        .await
                        .map_err(|e| format!("cannot read from memcached: {e}"))?;
                    if n == 0 {
                        return Err("memcached closed the connection before END".to_owned());
                    }
                    let l = line.trim_end();
                    if l == "END" {
                        break;
                    }
                    if l.starts_with("ERROR")
                        || l.starts_with("SERVER_ERROR")
                        || l.starts_with("CLIENT_ERROR")
                    {
                        return Err(format!("memcached refused `stats`: {l}"));
                    }
                    lines.push(l.to_owned());
                    if lines.len() > MAX_LINES {
                        return Err("memcached sent too many stats lines".to_owned());
                    }
                }
                Ok(lines)
            };
            let lines = tokio::time::timeout(crate::timeout_of(params), run)
                .await
                .map_err(|_| format!("memcached at {host}:{port} did not answer in time"))??;
            let mut out = parse_stats(&lines);
            self.rates.apply(Instant::now(), &mut out, COUNTERS);
            Ok(Value::Object(out))
        })
    }
}

/// `STAT name value` lines → object, with `available`, `hit_ratio` (% of gets that hit) and
/// `connections_used_pct` (current connections of `max_connections`).
pub fn parse_stats(lines: &[String]) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("available".into(), Value::Bool(true));
    for l in lines {
        let mut parts = l.splitn(3, ' ');
        if let (Some("STAT"), Some(k), Some(v)) = (parts.next(), parts.next(), parts.next()) {
            out.insert(k.to_owned(), typed(v));
        }
    }
    let num = |out: &Map<String, Value>, k: &str| out.get(k).and_then(Value::as_f64);
    if let (Some(h), Some(m)) = (num(&out, "get_hits"), num(&out, "get_misses")) {
        let ratio = if h + m > 0.0 {
            h * 100.0 / (h + m)
        } else {
            100.0
        };
        out.insert(
            "hit_ratio".into(),
            Value::from((ratio * 100.0).round() / 100.0),
        );
    }
    if let (Some(c), Some(max)) = (num(&out, "curr_connections"), num(&out, "max_connections"))
        && max > 0.0
    {
        out.insert(
            "connections_used_pct".into(),
            Value::from((c * 10000.0 / max).round() / 100.0),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stats_are_typed_with_ratios() {
        let lines: Vec<String> = [
            "STAT pid 42",
            "STAT version 1.6.18",
            "STAT get_hits 3",
            "STAT get_misses 1",
            "STAT curr_connections 10",
            "STAT max_connections 1024",
            "STAT rusage_user 0.123",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let out = parse_stats(&lines);
        assert_eq!(out["version"], json!("1.6.18"));
        assert_eq!(out["hit_ratio"], json!(75.0));
        assert_eq!(out["connections_used_pct"], json!(0.98));
        assert_eq!(out["rusage_user"], json!(0.123));
    }
}
