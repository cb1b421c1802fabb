//! RabbitMQ: its management HTTP API (the `rabbitmq_management` plugin), JSON read with
//! serde_json: `/api/overview` (versions, message totals and rates, object counts),
//! `/api/nodes` (the node we talk to: file descriptors, sockets, memory, Erlang processes, disk,
//! against their limits; every node: running, alarms) and `/api/queues` (the largest queues).
//!
//! Values: `messages`, `messages_ready`, `messages_unacknowledged`; `publish`, `deliver_get`,
//! `ack`, `redeliver` and their rates as RabbitMQ measures them (`publish_rate`, ...);
//! `connections`, `channels`, `consumers`, `exchanges`, `queues`; `fd_used`/`fd_total`/
//! `fd_used_pct`, the same for `sockets`, `mem` and `proc`; `disk_free`, `disk_free_limit`;
//! `mem_alarm`, `disk_free_alarm`, `alarms` (names of the alarms raised anywhere in the cluster,
//! `node: memory`), `alarms_count`; `nodes_total`, `nodes_running`; `queue.<name>` for the
//! [`TOP_QUEUES`] largest queues (`<vhost>/<name>` outside the default vhost).
//!
//! Parameters (`packs/rabbitmq/parameters/parameters.yml`): `url` (the management listener),
//! `user`, `password` (a user with the `monitoring` tag sees every node and queue), `timeout`.

use serde_json::{Map, Value};

use crate::http_get::{StatusClient, fetch};
use crate::{AppCollector, CollectFuture, Params, param_str};

/// The management listener when the parameters do not say.
pub const DEFAULT_URL: &str = "http://127.0.0.1:15672";

/// How many queues are reported one by one (the largest by messages).
pub const TOP_QUEUES: usize = 20;

/// The largest answer read (the queue list of a busy broker is the big one).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The queue columns asked for (the full queue objects are ~2 kB each).
const QUEUE_COLUMNS: &str =
    "name,vhost,state,messages,messages_ready,messages_unacknowledged,consumers";

/// The rabbitmq collector.
#[derive(Debug, Default)]
pub struct Rabbitmq {
    http: StatusClient,
}

impl AppCollector for Rabbitmq {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn collect<'a>(&'a mut self, params: &'a Params) -> CollectFuture<'a> {
        Box::pin(async move {
            let base = param_str(params, "url", DEFAULT_URL);
            let base = base.trim_end_matches('/');
            let (user, password) = (
                param_str(params, "user", "guest"),
                param_str(params, "password", "guest"),
            );
            let auth = Some((user.as_str(), password.as_str()));
            let timeout = crate::timeout_of(params);
            let client = self.http.client()?;
            let get = |path: String| {
                let client = client.clone();
                async move {
                    let url = format!("{base}{path}");
                    let page = fetch(&client, "rabbitmq", &url, auth, timeout, MAX_ANSWER).await?;
                    serde_json::from_str::<Value>(&page.body)
                        .map_err(|e| format!("rabbitmq at {url} did not answer JSON: {e}"))
                }
            };
            let (overview, nodes, queues) = tokio::join!(
                get("/api/overview".into()),
                get("/api/nodes".into()),
                get(format!("/api/queues?columns={QUEUE_COLUMNS}")),
            );
            let overview = overview?;
            let mut out = from_overview(&overview)?;
            // A user without the `monitoring` tag may not list nodes: say so, report the rest.
            match nodes {
                Ok(nodes) => add_nodes(&mut out, &nodes),
                Err(e) => {
                    out.insert("nodes_error".into(), Value::from(e));
                }
            }
            match queues {
                Ok(queues) => add_queues(&mut out, &queues),
                Err(e) => {
                    out.insert("queues_error".into(), Value::from(e));
                }
            }
            Ok(Value::Object(out))
        })
    }
}

/// The number at `path` (`["queue_totals", "messages"]`) of `v`, 0 when missing.
fn num(v: &Value, path: &[&str]) -> Value {
    let mut at = v;
    for p in path {
        match at.get(p) {
            Some(next) => at = next,
            None => return Value::from(0),
        }
    }
    if at.is_number() {
        at.clone()
    } else {
        Value::from(0)
    }
}

/// The text at `key` of `v`, `""` when missing.
fn text(v: &Value, key: &str) -> Value {
    Value::from(v.get(key).and_then(Value::as_str).unwrap_or_default())
}

/// `used` as a % of `limit` (two decimals), 0 without a limit.
fn pct(used: &Value, limit: &Value) -> Value {
    match (used.as_f64(), limit.as_f64()) {
        (Some(u), Some(l)) if l > 0.0 => Value::from((u * 10000.0 / l).round() / 100.0),
        _ => Value::from(0.0),
    }
}

/// `/api/overview` → the first values (see the module doc).
pub fn from_overview(overview: &Value) -> Result<Map<String, Value>, String> {
    if !overview.is_object() || overview.get("rabbitmq_version").is_none() {
        return Err(
            "the rabbitmq /api/overview answer has no rabbitmq_version: not the management API?"
                .into(),
        );
    }
    let mut out = Map::new();
    out.insert("available".into(), Value::Bool(true));
    out.insert("version".into(), text(overview, "rabbitmq_version"));
    out.insert("erlang_version".into(), text(overview, "erlang_version"));
    out.insert("cluster_name".into(), text(overview, "cluster_name"));
    out.insert("node".into(), text(overview, "node"));
    for k in ["messages", "messages_ready", "messages_unacknowledged"] {
        out.insert(k.into(), num(overview, &["queue_totals", k]));
    }
    for k in ["publish", "deliver_get", "ack", "redeliver", "confirm"] {
        out.insert(k.into(), num(overview, &["message_stats", k]));
        let details = format!("{k}_details");
        let rate = match k {
            "deliver_get" => "deliver_rate".to_owned(),
            _ => format!("{k}_rate"),
        };
        out.insert(
            rate,
            num(overview, &["message_stats", details.as_str(), "rate"]),
        );
    }
    for k in [
        "connections",
        "channels",
        "consumers",
        "exchanges",
        "queues",
    ] {
        out.insert(k.into(), num(overview, &["object_totals", k]));
    }
    Ok(out)
}

/// `/api/nodes` → the resources of our node (`out.node`, else the first) and the cluster's
/// alarms and running nodes.
pub fn add_nodes(out: &mut Map<String, Value>, nodes: &Value) {
    let Some(list) = nodes.as_array() else {
        out.insert(
            "nodes_error".into(),
            Value::from("the rabbitmq /api/nodes answer is not a list"),
        );
        return;
    };
    let me = out.get("node").and_then(Value::as_str).unwrap_or_default();
    let mine = list
        .iter()
        .find(|n| n.get("name").and_then(Value::as_str) == Some(me))
        .or_else(|| list.first());
    if let Some(n) = mine {
        for (used, total) in [
            ("fd_used", "fd_total"),
            ("sockets_used", "sockets_total"),
            ("mem_used", "mem_limit"),
            ("proc_used", "proc_total"),
        ] {
            let (u, t) = (num(n, &[used]), num(n, &[total]));
            out.insert(format!("{used}_pct"), pct(&u, &t));
            out.insert(used.into(), u);
            out.insert(total.into(), t);
        }
        out.insert("disk_free".into(), num(n, &["disk_free"]));
        out.insert("disk_free_limit".into(), num(n, &["disk_free_limit"]));
        let uptime_ms = n.get("uptime").and_then(Value::as_u64).unwrap_or(0);
        out.insert("uptime".into(), Value::from(uptime_ms / 1000));
        for k in ["mem_alarm", "disk_free_alarm"] {
            let on = n.get(k).and_then(Value::as_bool).unwrap_or(false);
            out.insert(k.into(), Value::Bool(on));
        }
    }
    let mut alarms = Vec::new();
    let mut running = 0;
    let mut down = Vec::new();
    for n in list {
        let name = n.get("name").and_then(Value::as_str).unwrap_or("?");
        if n.get("running").and_then(Value::as_bool) == Some(true) {
            running += 1;
        } else {
            down.push(name.to_owned());
        }
        for (k, what) in [("mem_alarm", "memory"), ("disk_free_alarm", "disk")] {
            if n.get(k).and_then(Value::as_bool) == Some(true) {
                alarms.push(format!("{name}: {what}"));
            }
        }
        if let Some(p) = n.get("partitions").and_then(Value::as_array)
            && !p.is_empty()
        {
            alarms.push(format!("{name}: network partition"));
        }
    }
    out.insert("nodes_total".into(), Value::from(list.len()));
    out.insert("nodes_running".into(), Value::from(running));
    out.insert("nodes_down_names".into(), Value::from(down.join(", ")));
    out.insert("alarms_count".into(), Value::from(alarms.len()));
    out.insert("alarms".into(), Value::from(alarms.join(", ")));
}

/// `/api/queues` → `queue.<name>` for the [`TOP_QUEUES`] largest.
pub fn add_queues(out: &mut Map<String, Value>, queues: &Value) {
    let Some(list) = queues.as_array() else {
        out.insert(
            "queues_error".into(),
            Value::from("the rabbitmq /api/queues answer is not a list"),
        );
        return;
    };
    let mut sorted: Vec<&Value> = list.iter().collect();
    let messages = |q: &Value| q.get("messages").and_then(Value::as_u64).unwrap_or(0);
    sorted.sort_by_key(|q| std::cmp::Reverse(messages(q)));
    let mut top = Map::new();
    for q in sorted.into_iter().take(TOP_QUEUES) {
        let name = q.get("name").and_then(Value::as_str).unwrap_or("?");
        let vhost = q.get("vhost").and_then(Value::as_str).unwrap_or("/");
        let key = if vhost == "/" {
            name.to_owned()
        } else {
            format!("{vhost}/{name}")
        };
        // A dot or a space would split or break the path `collector.rabbitmq.queue.<key>`.
        let key: String = key
            .chars()
            .map(|c| {
                if c == '.' || c.is_whitespace() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let mut entry = Map::new();
        for k in [
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ] {
            entry.insert(k.into(), num(q, &[k]));
        }
        entry.insert("state".into(), text(q, "state"));
        top.insert(key, Value::Object(entry));
    }
    out.insert("queue".into(), Value::Object(top));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_get::fake;
    use serde_json::json;

    /// RabbitMQ 3.10.8 on Erlang 25 (Debian 12), one queue `orders` holding 2 of 3 published
    /// messages (one fetched with basic.get).
    const OVERVIEW: &str = include_str!("testdata/rabbitmq-3.10-overview.json");
    const NODES: &str = include_str!("testdata/rabbitmq-3.10-nodes.json");
    const QUEUES: &str = include_str!("testdata/rabbitmq-3.10-queues.json");

    fn json_of(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_default()
    }

    #[test]
    fn real_answers_are_read() {
        let mut out = from_overview(&json_of(OVERVIEW)).unwrap_or_default();
        add_nodes(&mut out, &json_of(NODES));
        add_queues(&mut out, &json_of(QUEUES));
        let out = Value::Object(out);
        assert_eq!(out["version"], json!("3.10.8"));
        assert_eq!(out["erlang_version"], json!("25.2.3"));
        assert_eq!(out["node"], json!("rmqtest@localhost"));
        assert_eq!(out["messages"], json!(2));
        assert_eq!(out["messages_ready"], json!(2));
        assert_eq!(out["messages_unacknowledged"], json!(0));
        assert_eq!(out["publish"], json!(3));
        assert_eq!(out["deliver_get"], json!(1));
        assert_eq!(out["deliver_rate"], json!(0.2));
        assert_eq!(out["queues"], json!(1));
        assert_eq!(out["exchanges"], json!(7));
        assert_eq!(out["fd_used"], json!(38));
        assert_eq!(out["fd_total"], json!(20000));
        assert_eq!(out["fd_used_pct"], json!(0.19));
        assert_eq!(out["mem_used_pct"], json!(1.37));
        assert_eq!(out["uptime"], json!(21));
        assert_eq!(out["mem_alarm"], json!(false));
        assert_eq!(out["alarms_count"], json!(0));
        assert_eq!(out["alarms"], json!(""));
        assert_eq!(out["nodes_running"], json!(1));
        assert_eq!(
            out["queue"]["orders"],
            json!({"messages": 2, "messages_ready": 2, "messages_unacknowledged": 0, "consumers": 0, "state": "running"})
        );
    }

    #[test]
    fn alarms_down_nodes_and_odd_answers() {
        let mut out = Map::new();
        out.insert("node".into(), json!("b@h2"));
        let nodes = json!([
            {"name": "a@h1", "running": true, "mem_alarm": true, "disk_free_alarm": false, "partitions": []},
            {"name": "b@h2", "running": true, "mem_alarm": false, "disk_free_alarm": true,
             "fd_used": 950, "fd_total": 1000, "partitions": ["a@h1"]},
            {"name": "c@h3", "running": false},
        ]);
        add_nodes(&mut out, &nodes);
        assert_eq!(out["fd_used_pct"], json!(95.0));
        assert_eq!(out["disk_free_alarm"], json!(true));
        assert_eq!(
            out["alarms"],
            json!("a@h1: memory, b@h2: disk, b@h2: network partition")
        );
        assert_eq!(out["alarms_count"], json!(3));
        assert_eq!(out["nodes_running"], json!(2));
        assert_eq!(out["nodes_down_names"], json!("c@h3"));
        add_queues(&mut out, &json!({"error": "x"}));
        assert!(out.contains_key("queues_error"));
        let many: Vec<Value> = (0..30)
            .map(|i| json!({"name": format!("q.{i}"), "vhost": "prod", "messages": i}))
            .collect();
        add_queues(&mut out, &Value::Array(many));
        let top = out["queue"].as_object().cloned().unwrap_or_default();
        assert_eq!(top.len(), TOP_QUEUES);
        assert_eq!(top["prod/q_29"]["messages"], json!(29));
        assert!(!top.contains_key("prod/q_0"));
        assert!(from_overview(&json!({"error": "not_authorized"})).is_err());
    }

    #[tokio::test]
    async fn collects_from_a_fake_api_with_credentials() {
        let server = fake::serve(vec![
            ("/api/overview", 200, OVERVIEW.to_owned()),
            ("/api/nodes", 200, NODES.to_owned()),
            ("/api/queues?columns=", 200, QUEUES.to_owned()),
        ])
        .await;
        let mut rabbit = Rabbitmq::default();
        let p = json!({"url": format!("{}/", server.base), "user": "mon", "password": "s3cret"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let out = rabbit.collect(&p).await.unwrap_or_default();
        assert_eq!(out["messages_ready"], json!(2), "{out}");
        assert_eq!(out["fd_total"], json!(20000), "{out}");
        assert_eq!(out["queue"]["orders"]["messages"], json!(2), "{out}");
        let seen = server.auth.lock().map(|a| a.clone()).unwrap_or_default();
        // mon:s3cret, on each of the three requests.
        assert_eq!(seen, vec!["Basic bW9uOnMzY3JldA=="; 3]);

        // Refused credentials: the API's 401 and its reason.
        let refusing = fake::serve(vec![(
            "/api/",
            401,
            r#"{"error":"not_authorized","reason":"Login failed"}"#.to_owned(),
        )])
        .await;
        let p = json!({"url": refusing.base})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let e = rabbit.collect(&p).await.err().unwrap_or_default();
        assert!(e.contains("HTTP 401") && e.contains("Login failed"), "{e}");
    }
}
