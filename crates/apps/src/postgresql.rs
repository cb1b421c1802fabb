//! PostgreSQL: `pg_stat_database` (per database and in total: backends, commits, rollbacks,
//! blocks read and hit, tuples; rates of the counters; the cache hit ratio), `max_connections`
//! and the connections against it, the server version and uptime, `pg_is_in_recovery()` and on a
//! standby the replay lag and the WAL receiver's status; on a primary its streaming replicas. The
//! protocol is the `tokio-postgres` crate's (md5 and SCRAM passwords, no TLS: the collector talks
//! to the local server); every query is a simple query and every value is read as text and typed,
//! so that the collector does not depend on the column types of one server version.
//!
//! Parameters (`packs/postgresql/parameters/parameters.yml`): `host`, `port`, `socket` (the
//! directory of the server's unix socket, used instead of host when it exists), `user`,
//! `password`, `database`, `timeout`.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{Map, Value};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::{AppCollector, CollectFuture, Params, Rates, param_port, param_str, typed};

/// `pg_stat_database` columns read (all but the name), summed over the databases into the totals.
const STAT_COLUMNS: &[&str] = &[
    "numbackends",
    "xact_commit",
    "xact_rollback",
    "blks_read",
    "blks_hit",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "conflicts",
    "temp_files",
    "temp_bytes",
    "deadlocks",
];

/// Counters that get a `<name>/s` rate, per database and in total.
const COUNTERS: &[&str] = &[
    "xact_commit",
    "xact_rollback",
    "blks_read",
    "blks_hit",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "conflicts",
    "temp_files",
    "temp_bytes",
    "deadlocks",
];

/// The most databases reported (each is a handful of time series).
const MAX_DATABASES: usize = 500;

/// The PostgreSQL collector.
#[derive(Debug, Default)]
pub struct Postgresql {
    rates: Rates,
    per_database: HashMap<String, Rates>,
}

/// What the queries answered, as text.
#[derive(Debug, Default, Clone)]
pub struct Answers {
    /// `server_version`, `server_version_num`, `max_connections`, `in_recovery` (`t`/`f`),
    /// `uptime_seconds`, `replicas` (primary), `replay_age`, `caught_up`, `receiver` (standby).
    pub server: HashMap<String, Option<String>>,
    /// One row of `pg_stat_database` per database: column → value.
    pub databases: Vec<HashMap<String, Option<String>>>,
}

impl AppCollector for Postgresql {
    fn name(&self) -> &'static str {
        "postgresql"
    }

    fn collect<'a>(&'a mut self, params: &'a Params) -> CollectFuture<'a> {
        Box::pin(async move {
            let (config, where_) = connect_config(params)?;
            let timeout = crate::timeout_of(params);
            let run =
                async {
                    let (client, connection) = config.connect(NoTls).await.map_err(|e| match e
                        .as_db_error()
                    {
                        // The server answered: the login was refused, not the way to it.
                        Some(db) => format!("postgresql at {where_} refused the login: {db}"),
                        None => format!("cannot reach postgresql at {where_}: {}", chain(&e)),
                    })?;
                    // The connection is driven here, beside the queries, not in a task of its own.
                    let mut connection = std::pin::pin!(connection);
                    let answers = tokio::select! {
                        a = query_all(&client) => a,
                        end = &mut connection => Err(match end {
                            Ok(()) => "the server closed the connection".to_owned(),
                            Err(e) => chain(&e),
                        }),
                    };
                    // Dropping the client sends Terminate: the server logs no lost connection.
                    drop(client);
                    let _ = connection.await;
                    answers.map_err(|e| format!("postgresql at {where_}: {e}"))
                };
            let answers = tokio::time::timeout(timeout, run).await.map_err(|_| {
                format!(
                    "postgresql at {where_} did not answer within {} s",
                    timeout.as_secs_f64()
                )
            })??;
            let now = Instant::now();
            let mut out = build(&answers);
            self.rates.apply(now, &mut out, COUNTERS);
            if let Some(Value::Object(dbs)) = out.get_mut("databases") {
                self.per_database.retain(|name, _| dbs.contains_key(name));
                for (name, db) in dbs.iter_mut() {
                    if let Value::Object(db) = db {
                        self.per_database
                            .entry(name.clone())
                            .or_default()
                            .apply(now, db, COUNTERS);
                    }
                }
            }
            Ok(Value::Object(out))
        })
    }
}

/// Where and how to log in: the socket directory when it is set and exists, else host and port.
fn connect_config(params: &Params) -> Result<(tokio_postgres::Config, String), String> {
    let mut config = tokio_postgres::Config::new();
    let port = param_port(params, "port", 5432)?;
    let socket = param_str(params, "socket", "");
    let where_ = if !socket.is_empty() && std::path::Path::new(&socket).is_dir() {
        config.host_path(&socket);
        format!("{socket}/.s.PGSQL.{port}")
    } else {
        let host = param_str(params, "host", "127.0.0.1");
        config.host(&host);
        format!("{host}:{port}")
    };
    config
        .port(port)
        .user(param_str(params, "user", "postgres"))
        .dbname(param_str(params, "database", "postgres"))
        .application_name("opsbro")
        .ssl_mode(SslMode::Disable)
        .connect_timeout(crate::timeout_of(params));
    let password = param_str(params, "password", "");
    if !password.is_empty() {
        config.password(password);
    }
    Ok((config, where_))
}

/// An error with its causes (`db error: FATAL: password authentication failed for user "x"`).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The rows of a simple query as column → text maps.
async fn rows(client: &Client, sql: &str) -> Result<Vec<HashMap<String, Option<String>>>, String> {
    let messages = client.simple_query(sql).await.map_err(|e| chain(&e))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

async fn query_all(client: &Client) -> Result<Answers, String> {
    let mut server = rows(
        client,
        "SELECT current_setting('server_version') AS server_version, \
                current_setting('server_version_num') AS server_version_num, \
                current_setting('max_connections') AS max_connections, \
                pg_is_in_recovery() AS in_recovery, \
                floor(extract(epoch FROM now() - pg_postmaster_start_time()))::bigint \
                    AS uptime_seconds",
    )
    .await?
    .into_iter()
    .next()
    .ok_or("the server answered no row")?;
    let databases = rows(
        client,
        &format!(
            "SELECT datname, {} FROM pg_stat_database WHERE datname IS NOT NULL \
             ORDER BY datname LIMIT {MAX_DATABASES}",
            STAT_COLUMNS.join(", ")
        ),
    )
    .await?;
    let standby = server.get("in_recovery").cloned().flatten().as_deref() == Some("t");
    let more = if standby {
        // The age of the last replayed transaction grows while the primary is idle: a standby
        // that replayed all it received is caught up (lag 0) whatever that age.
        rows(
            client,
            "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp()) AS replay_age, \
                    pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() AS caught_up, \
                    (SELECT status FROM pg_stat_wal_receiver LIMIT 1) AS receiver",
        )
        .await?
    } else {
        rows(
            client,
            "SELECT count(*) AS replicas FROM pg_stat_replication",
        )
        .await?
    };
    server.extend(more.into_iter().flatten());
    Ok(Answers { server, databases })
}

/// The answers as one object: `available`, `version`, `version_num`, `max_connections`,
/// `connections` (backends of every database), `connections_used_pct`, `uptime_seconds`,
/// `in_recovery`, `role`, `database_count`, the totals of `pg_stat_database` with `cache_hit_ratio`, `databases`
/// (per database, the same), and `replicas` (primary) or `replication_lag_seconds`,
/// `replay_timestamp_age_seconds`, `wal_receiver_status`, `replication_streaming` (standby).
pub fn build(answers: &Answers) -> Map<String, Value> {
    let server = |k: &str| answers.server.get(k).cloned().flatten();
    let mut out = Map::new();
    out.insert("available".into(), Value::Bool(true));
    if let Some(v) = server("server_version") {
        out.insert("version".into(), Value::from(v));
    }
    for (key, from) in [
        ("version_num", "server_version_num"),
        ("max_connections", "max_connections"),
        ("uptime_seconds", "uptime_seconds"),
        ("replicas", "replicas"),
    ] {
        if let Some(v) = server(from) {
            out.insert(key.into(), typed(&v));
        }
    }
    let standby = server("in_recovery").as_deref() == Some("t");
    out.insert("in_recovery".into(), Value::Bool(standby));
    out.insert(
        "role".into(),
        Value::from(if standby { "standby" } else { "primary" }),
    );
    let mut totals: HashMap<&str, f64> = HashMap::new();
    let mut databases = Map::new();
    for row in &answers.databases {
        let Some(Some(name)) = row.get("datname") else {
            continue;
        };
        let mut db = Map::new();
        for col in STAT_COLUMNS {
            if let Some(Some(v)) = row.get(*col) {
                let value = typed(v);
                if let Some(n) = value.as_f64() {
                    *totals.entry(col).or_default() += n;
                }
                db.insert((*col).to_owned(), value);
            }
        }
        add_hit_ratio(&mut db);
        // A dot would split the name in the series path (collector.postgresql.databases.x.y).
        databases.insert(name.replace('.', "_"), Value::Object(db));
    }
    for col in STAT_COLUMNS {
        if let Some(sum) = totals.get(col) {
            // Sums of integers stay integers (as the per-database values).
            out.insert((*col).to_owned(), Value::from(*sum as u64));
        }
    }
    add_hit_ratio(&mut out);
    let connections = totals.get("numbackends").copied().unwrap_or(0.0);
    out.insert("connections".into(), Value::from(connections as u64));
    if let Some(max) = out.get("max_connections").and_then(Value::as_f64)
        && max > 0.0
    {
        out.insert(
            "connections_used_pct".into(),
            Value::from((connections * 10000.0 / max).round() / 100.0),
        );
    }
    out.insert("database_count".into(), Value::from(databases.len()));
    out.insert("databases".into(), Value::Object(databases));
    if standby {
        let receiver = server("receiver").unwrap_or_default();
        out.insert(
            "replication_streaming".into(),
            Value::Bool(receiver == "streaming"),
        );
        out.insert("wal_receiver_status".into(), Value::from(receiver));
        let age = server("replay_age").and_then(|v| v.trim().parse::<f64>().ok());
        if let Some(age) = age {
            out.insert(
                "replay_timestamp_age_seconds".into(),
                Value::from((age.max(0.0) * 1000.0).round() / 1000.0),
            );
        }
        let caught_up = server("caught_up").as_deref() == Some("t");
        // Nothing replayed yet and not caught up: no figure (the check then reads the streaming).
        let lag = if caught_up { Some(0.0) } else { age };
        if let Some(lag) = lag {
            out.insert(
                "replication_lag_seconds".into(),
                Value::from((lag.max(0.0) * 1000.0).round() / 1000.0),
            );
        }
    }
    out
}

/// `cache_hit_ratio`: % of block reads found in shared buffers (100 before any read).
fn add_hit_ratio(m: &mut Map<String, Value>) {
    let num = |k: &str| m.get(k).and_then(Value::as_f64);
    if let (Some(hit), Some(read)) = (num("blks_hit"), num("blks_read")) {
        let ratio = if hit + read > 0.0 {
            hit * 100.0 / (hit + read)
        } else {
            100.0
        };
        m.insert(
            "cache_hit_ratio".into(),
            Value::from((ratio * 100.0).round() / 100.0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(pairs: &[(&str, Option<&str>)]) -> HashMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect()
    }

    fn db(
        name: &str,
        backends: &str,
        commits: &str,
        read: &str,
        hit: &str,
    ) -> HashMap<String, Option<String>> {
        map(&[
            ("datname", Some(name)),
            ("numbackends", Some(backends)),
            ("xact_commit", Some(commits)),
            ("blks_read", Some(read)),
            ("blks_hit", Some(hit)),
            ("temp_bytes", Some("0")),
        ])
    }

    #[test]
    fn databases_are_summed_with_ratios_and_connections() {
        let answers = Answers {
            server: map(&[
                ("server_version", Some("15.14 (Debian 15.14-0+deb12u1)")),
                ("server_version_num", Some("150014")),
                ("max_connections", Some("40")),
                ("in_recovery", Some("f")),
                ("uptime_seconds", Some("120")),
                ("replicas", Some("1")),
            ]),
            databases: vec![
                db("postgres", "1", "100", "10", "90"),
                db("app.prod", "3", "50", "0", "0"),
                map(&[("datname", None), ("numbackends", Some("9"))]),
            ],
        };
        let out = build(&answers);
        assert_eq!(out["available"], json!(true));
        assert_eq!(out["version"], json!("15.14 (Debian 15.14-0+deb12u1)"));
        assert_eq!(out["version_num"], json!(150014));
        assert_eq!(out["max_connections"], json!(40));
        assert_eq!(out["connections"], json!(4));
        assert_eq!(out["database_count"], json!(2));
        assert_eq!(out["connections_used_pct"], json!(10.0));
        assert_eq!(out["xact_commit"], json!(150));
        assert_eq!(out["cache_hit_ratio"], json!(90.0));
        assert_eq!(out["role"], json!("primary"));
        assert_eq!(out["replicas"], json!(1));
        assert_eq!(out["databases"]["postgres"]["numbackends"], json!(1));
        assert_eq!(
            out["databases"]["app_prod"]["cache_hit_ratio"],
            json!(100.0)
        );
        assert!(!out.contains_key("replication_lag_seconds"));
    }

    #[test]
    fn a_standby_reports_its_lag() {
        let standby = |age: Option<&str>, caught_up: &str, receiver: Option<&str>| Answers {
            server: map(&[
                ("in_recovery", Some("t")),
                ("replay_age", age),
                ("caught_up", Some(caught_up)),
                ("receiver", receiver),
            ]),
            databases: Vec::new(),
        };
        let out = build(&standby(Some("42.5"), "f", Some("streaming")));
        assert_eq!(out["role"], json!("standby"));
        assert_eq!(out["replication_lag_seconds"], json!(42.5));
        assert_eq!(out["replication_streaming"], json!(true));
        // Idle primary: everything received is replayed, whatever the last transaction's age.
        let out = build(&standby(Some("900"), "t", Some("streaming")));
        assert_eq!(out["replication_lag_seconds"], json!(0.0));
        assert_eq!(out["replay_timestamp_age_seconds"], json!(900.0));
        let out = build(&standby(None, "f", None));
        assert_eq!(out["replication_streaming"], json!(false));
        assert_eq!(out["wal_receiver_status"], json!(""));
        assert!(!out.contains_key("replication_lag_seconds"));
    }

    #[test]
    fn the_socket_directory_is_used_only_when_it_exists() {
        let dir = std::env::temp_dir();
        let p = json!({"socket": dir.display().to_string(), "port": 5433})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let (_, where_) = connect_config(&p).expect("config");
        assert_eq!(where_, format!("{}/.s.PGSQL.5433", dir.display()));
        let p = json!({"socket": "/nonexistent", "host": "localhost"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let (_, where_) = connect_config(&p).expect("config");
        assert_eq!(where_, "localhost:5432");
        let p = json!({"port": 99999})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(connect_config(&p).is_err());
    }

    #[tokio::test]
    async fn an_unreachable_server_gives_the_reason() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let p = json!({"port": port, "timeout": 2})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let err = Postgresql::default()
            .collect(&p)
            .await
            .expect_err("no server");
        assert!(
            err.contains(&format!("cannot reach postgresql at 127.0.0.1:{port}")),
            "{err}"
        );
    }
}
