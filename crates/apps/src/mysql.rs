//! MySQL and MariaDB: `SHOW GLOBAL STATUS` (every status, lowercased and typed, rates of its
//! counters), a few `SHOW GLOBAL VARIABLES` (`max_connections`, `version`, ...), and on a replica
//! `SHOW REPLICA STATUS` (or `SHOW SLAVE STATUS` on servers that do not know the new name): the
//! replication threads and `replication_lag_seconds`. The protocol is the `mysql_async` crate's
//! (its password plugins, no TLS: the collector talks to the local server).
//!
//! Parameters (`packs/mysql/parameters/parameters.yml`): `host`, `port`, `socket` (a unix socket
//! path, used instead of host/port when it exists: Debian's root logs in through it without a
//! password), `user`, `password`, `timeout`.

use std::time::Instant;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value as MyValue};
use serde_json::{Map, Value};

use crate::{AppCollector, CollectFuture, Params, Rates, param_port, param_str, typed};

/// Status counters that get a `<name>/s` rate.
const COUNTERS: &[&str] = &[
    "questions",
    "queries",
    "com_select",
    "com_insert",
    "com_update",
    "com_delete",
    "com_replace",
    "com_commit",
    "com_rollback",
    "bytes_received",
    "bytes_sent",
    "connections",
    "aborted_clients",
    "aborted_connects",
    "slow_queries",
    "threads_created",
    "created_tmp_tables",
    "created_tmp_disk_tables",
    "select_full_join",
    "select_scan",
    "sort_merge_passes",
    "table_locks_waited",
    "innodb_rows_read",
    "innodb_rows_inserted",
    "innodb_rows_updated",
    "innodb_rows_deleted",
    "innodb_buffer_pool_reads",
    "innodb_buffer_pool_read_requests",
    "innodb_data_read",
    "innodb_data_written",
];

/// The server variables collected (next to the status values, same names lowercased).
const VARIABLES: &[&str] = &[
    "max_connections",
    "max_user_connections",
    "version",
    "version_comment",
    "read_only",
    "server_id",
    "log_bin",
    "innodb_buffer_pool_size",
    "max_allowed_packet",
    "table_open_cache",
    "thread_cache_size",
    "open_files_limit",
    "long_query_time",
];

/// The most rows read from one `SHOW` (a server has ~500 status values).
const MAX_ROWS: usize = 5000;

/// The MySQL/MariaDB collector.
#[derive(Debug, Default)]
pub struct Mysql {
    rates: Rates,
}

/// One `SHOW` answer: (column, value) pairs of each row, NULL as `None`.
type Rows = Vec<Vec<(String, Option<String>)>>;

impl AppCollector for Mysql {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn collect<'a>(&'a mut self, params: &'a Params) -> CollectFuture<'a> {
        Box::pin(async move {
            let (opts, where_) = connect_options(params)?;
            let timeout = crate::timeout_of(params);
            let run = async {
                let mut conn = Conn::new(opts).await.map_err(|e| match e {
                    // The server answered: the login was refused, not the way to it.
                    mysql_async::Error::Server(e) => {
                        format!("mysql at {where_} refused the login: {e}")
                    }
                    e => format!("cannot reach mysql at {where_}: {}", error_text(&e)),
                })?;
                let answers = query_all(&mut conn).await;
                // A clean goodbye, so that the server does not count an aborted client.
                let _ = conn.disconnect().await;
                answers.map_err(|e| format!("mysql at {where_}: {e}"))
            };
            let (status, variables, replica) =
                tokio::time::timeout(timeout, run).await.map_err(|_| {
                    format!(
                        "mysql at {where_} did not answer within {} s",
                        timeout.as_secs_f64()
                    )
                })??;
            let mut out = build(&status, &variables, replica);
            self.rates.apply(Instant::now(), &mut out, COUNTERS);
            Ok(Value::Object(out))
        })
    }
}

/// Where and how to log in: the socket when it is set and exists, else host and port.
fn connect_options(params: &Params) -> Result<(OptsBuilder, String), String> {
    let socket = param_str(params, "socket", "");
    let user = param_str(params, "user", "root");
    let password = param_str(params, "password", "");
    let base = OptsBuilder::default()
        .user(Some(user).filter(|u| !u.is_empty()))
        .pass(Some(password).filter(|p| !p.is_empty()))
        // Stay on the transport we were given (the default switches TCP to the server's socket).
        .prefer_socket(false)
        .stmt_cache_size(0);
    if !socket.is_empty() && std::path::Path::new(&socket).exists() {
        return Ok((base.socket(Some(socket.clone())), socket));
    }
    let host = param_str(params, "host", "127.0.0.1");
    let port = param_port(params, "port", 3306)?;
    let where_ = format!("{host}:{port}");
    Ok((base.ip_or_hostname(host).tcp_port(port), where_))
}

/// Status, the variables of [`VARIABLES`], and the replica status (`None`: could not be read).
async fn query_all(conn: &mut Conn) -> Result<(Rows, Rows, Option<Rows>), String> {
    let status = show(conn, "SHOW GLOBAL STATUS")
        .await
        .map_err(|e| format!("SHOW GLOBAL STATUS failed: {}", error_text(&e)))?;
    let names: Vec<String> = VARIABLES.iter().map(|v| format!("'{v}'")).collect();
    let variables = show(
        conn,
        &format!(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({})",
            names.join(",")
        ),
    )
    .await
    .map_err(|e| format!("SHOW GLOBAL VARIABLES failed: {}", error_text(&e)))?;
    // MySQL 8.4 knows only the new name, MariaDB before 10.5 and MySQL before 8.0.22 only the
    // old one; a user without the REPLICATION CLIENT (SLAVE MONITOR) privilege gets neither.
    let replica = match show(conn, "SHOW REPLICA STATUS").await {
        Ok(rows) => Some(rows),
        Err(_) => show(conn, "SHOW SLAVE STATUS").await.ok(),
    };
    Ok((status, variables, replica))
}

/// The crate's error text without its repeated `Input/output error: ` prefixes.
fn error_text(e: &mysql_async::Error) -> String {
    let text = e.to_string();
    let mut rest = text.as_str();
    while let Some(r) = rest.strip_prefix("Input/output error: ") {
        rest = r;
    }
    rest.to_owned()
}

async fn show(conn: &mut Conn, sql: &str) -> Result<Rows, mysql_async::Error> {
    let rows: Vec<Row> = conn.query(sql).await?;
    Ok(rows
        .iter()
        .take(MAX_ROWS)
        .map(|row| {
            row.columns_ref()
                .iter()
                .enumerate()
                .map(|(i, col)| (col.name_str().into_owned(), row.as_ref(i).and_then(text)))
                .collect()
        })
        .collect())
}

/// A text-protocol value as text (`None` for NULL).
fn text(v: &MyValue) -> Option<String> {
    match v {
        MyValue::NULL => None,
        MyValue::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        other => Some(other.as_sql(true).trim_matches('\'').to_owned()),
    }
}

/// The name/value pairs of a two-column `SHOW` (`Variable_name`, `Value`).
fn pairs(rows: &Rows) -> impl Iterator<Item = (&str, Option<&str>)> {
    rows.iter().filter_map(|r| match r.as_slice() {
        [(_, Some(name)), (_, value), ..] => Some((name.as_str(), value.as_deref())),
        _ => None,
    })
}

/// The answers as one object: `available`, every status lowercased and typed, the variables,
/// `connections_used_pct`, `flavor` (`mariadb` or `mysql`), `role` (`primary`, `replica`, or
/// `unknown` with `replication_status` saying why), and on a replica
/// `replication_*` and the whole replica status under `replication`.
pub fn build(status: &Rows, variables: &Rows, replica: Option<Rows>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("available".into(), Value::Bool(true));
    for (name, value) in pairs(status).chain(pairs(variables)) {
        out.insert(name.to_ascii_lowercase(), value.map_or(Value::Null, typed));
    }
    let num = |out: &Map<String, Value>, k: &str| out.get(k).and_then(Value::as_f64);
    if let (Some(used), Some(max)) = (num(&out, "threads_connected"), num(&out, "max_connections"))
        && max > 0.0
    {
        out.insert("connections_used_pct".into(), pct(used, max));
        if let Some(peak) = num(&out, "max_used_connections") {
            out.insert("max_used_connections_pct".into(), pct(peak, max));
        }
    }
    if let (Some(reads), Some(requests)) = (
        num(&out, "innodb_buffer_pool_reads"),
        num(&out, "innodb_buffer_pool_read_requests"),
    ) && requests > 0.0
    {
        out.insert(
            "innodb_buffer_pool_hit_ratio".into(),
            pct(requests - reads.min(requests), requests),
        );
    }
    let version = out
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mariadb = version.to_ascii_lowercase().contains("mariadb")
        || out
            .get("version_comment")
            .and_then(Value::as_str)
            .is_some_and(|c| c.to_ascii_lowercase().contains("mariadb"));
    out.insert(
        "flavor".into(),
        Value::from(if mariadb { "mariadb" } else { "mysql" }),
    );
    match replica.as_ref().map(|rows| rows.first()) {
        Some(Some(row)) => {
            out.insert("role".into(), Value::from("replica"));
            replication(row, &mut out);
        }
        Some(None) => {
            out.insert("role".into(), Value::from("primary"));
        }
        None => {
            out.insert("role".into(), Value::from("unknown"));
            out.insert(
                "replication_status".into(),
                Value::from("not readable (the user lacks REPLICATION CLIENT / SLAVE MONITOR)"),
            );
        }
    }
    out
}

/// `a` of `b` in %, two decimals.
fn pct(a: f64, b: f64) -> Value {
    Value::from((a * 10000.0 / b).round() / 100.0)
}

/// The replica's status row (its first replication channel) into `out`.
fn replication(row: &[(String, Option<String>)], out: &mut Map<String, Value>) {
    let get = |names: &[&str]| {
        names.iter().find_map(|n| {
            row.iter()
                .find(|(c, _)| c.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        })
    };
    let io = get(&["Slave_IO_Running", "Replica_IO_Running"]).flatten();
    let sql = get(&["Slave_SQL_Running", "Replica_SQL_Running"]).flatten();
    let yes = |v: &Option<String>| v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    out.insert("replication_io_running".into(), Value::Bool(yes(&io)));
    out.insert("replication_sql_running".into(), Value::Bool(yes(&sql)));
    out.insert(
        "replication_io_state".into(),
        Value::from(io.unwrap_or_default()),
    );
    // NULL while a thread is stopped: no number then, and the checks say the threads are down.
    if let Some(lag) = get(&["Seconds_Behind_Master", "Seconds_Behind_Source"])
        .flatten()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        out.insert("replication_lag_seconds".into(), Value::from(lag));
    }
    let error = ["Last_IO_Error", "Last_SQL_Error", "Last_Error"]
        .iter()
        .filter_map(|n| get(&[n]).flatten())
        .find(|e| !e.is_empty())
        .unwrap_or_default();
    out.insert("replication_last_error".into(), Value::from(error));
    if let Some(host) = get(&["Master_Host", "Source_Host"]).flatten() {
        out.insert("replication_source".into(), Value::from(host));
    }
    let all: Map<String, Value> = row
        .iter()
        .map(|(c, v)| {
            (
                c.to_ascii_lowercase(),
                v.as_deref().map_or(Value::Null, typed),
            )
        })
        .collect();
    out.insert("replication".into(), Value::Object(all));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(pairs: &[(&str, Option<&str>)]) -> Rows {
        pairs
            .iter()
            .map(|(n, v)| {
                vec![
                    ("Variable_name".to_owned(), Some((*n).to_owned())),
                    ("Value".to_owned(), v.map(str::to_owned)),
                ]
            })
            .collect()
    }

    #[test]
    fn status_and_variables_are_typed_with_ratios() {
        let status = rows(&[
            ("Threads_connected", Some("5")),
            ("Max_used_connections", Some("10")),
            ("Com_select", Some("1200")),
            ("Uptime", Some("3600")),
            ("Innodb_buffer_pool_reads", Some("10")),
            ("Innodb_buffer_pool_read_requests", Some("1000")),
            ("Ssl_cipher", Some("")),
            ("Rpl_status", None),
            ("Slave_running", Some("OFF")),
        ]);
        let variables = rows(&[
            ("max_connections", Some("200")),
            ("version", Some("10.11.6-MariaDB-0+deb12u1")),
        ]);
        let out = build(&status, &variables, Some(Vec::new()));
        assert_eq!(out["available"], json!(true));
        assert_eq!(out["threads_connected"], json!(5));
        assert_eq!(out["com_select"], json!(1200));
        assert_eq!(out["ssl_cipher"], json!(""));
        assert_eq!(out["rpl_status"], Value::Null);
        assert_eq!(out["slave_running"], json!("OFF"));
        assert_eq!(out["max_connections"], json!(200));
        assert_eq!(out["connections_used_pct"], json!(2.5));
        assert_eq!(out["max_used_connections_pct"], json!(5.0));
        assert_eq!(out["innodb_buffer_pool_hit_ratio"], json!(99.0));
        assert_eq!(out["flavor"], json!("mariadb"));
        assert_eq!(out["role"], json!("primary"));
        assert!(!out.contains_key("replication_status"));
    }

    fn replica_row(io: &str, lag: Option<&str>, error: &str) -> Rows {
        let col = |n: &str, v: Option<&str>| (n.to_owned(), v.map(str::to_owned));
        vec![vec![
            col("Slave_IO_State", Some("Waiting for master to send event")),
            col("Master_Host", Some("10.0.0.1")),
            col("Master_Port", Some("3306")),
            col("Slave_IO_Running", Some(io)),
            col("Slave_SQL_Running", Some("Yes")),
            col("Last_IO_Error", Some(error)),
            col("Last_SQL_Error", Some("")),
            col("Seconds_Behind_Master", lag),
        ]]
    }

    #[test]
    fn a_replica_reports_its_threads_and_lag() {
        let variables = rows(&[
            ("max_connections", Some("151")),
            ("version", Some("8.0.36")),
        ]);
        let out = build(
            &Rows::new(),
            &variables,
            Some(replica_row("Yes", Some("7"), "")),
        );
        assert_eq!(out["flavor"], json!("mysql"));
        assert_eq!(out["role"], json!("replica"));
        assert_eq!(out["replication_io_running"], json!(true));
        assert_eq!(out["replication_sql_running"], json!(true));
        assert_eq!(out["replication_lag_seconds"], json!(7));
        assert_eq!(out["replication_source"], json!("10.0.0.1"));
        assert_eq!(out["replication"]["master_port"], json!(3306));
        assert_eq!(out["replication_last_error"], json!(""));

        let out = build(
            &Rows::new(),
            &variables,
            Some(replica_row(
                "Connecting",
                None,
                "error reconnecting to master",
            )),
        );
        assert_eq!(out["replication_io_running"], json!(false));
        assert_eq!(out["replication_io_state"], json!("Connecting"));
        assert!(!out.contains_key("replication_lag_seconds"));
        assert_eq!(
            out["replication_last_error"],
            json!("error reconnecting to master")
        );
    }

    #[test]
    fn mysql_8_4_replica_column_names_are_read() {
        let col = |n: &str, v: &str| (n.to_owned(), Some(v.to_owned()));
        let row = vec![vec![
            col("Replica_IO_Running", "Yes"),
            col("Replica_SQL_Running", "No"),
            col("Seconds_Behind_Source", "3"),
            col("Source_Host", "db1"),
        ]];
        let out = build(&Rows::new(), &Rows::new(), Some(row));
        assert_eq!(out["replication_io_running"], json!(true));
        assert_eq!(out["replication_sql_running"], json!(false));
        assert_eq!(out["replication_lag_seconds"], json!(3));
        assert_eq!(out["replication_source"], json!("db1"));
    }

    #[test]
    fn unreadable_replica_status_is_said() {
        let out = build(&Rows::new(), &Rows::new(), None);
        assert_eq!(out["role"], json!("unknown"));
        assert!(out["replication_status"].as_str().is_some());
        assert!(!out.contains_key("connections_used_pct"));
    }

    #[test]
    fn the_socket_is_used_only_when_it_exists() {
        let dir = std::env::temp_dir();
        let p = json!({"socket": dir.display().to_string(), "port": 3307})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let (_, where_) = connect_options(&p).expect("options");
        assert_eq!(where_, dir.display().to_string());
        let p = json!({"socket": "/nonexistent/mysqld.sock", "port": 3307})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let (_, where_) = connect_options(&p).expect("options");
        assert_eq!(where_, "127.0.0.1:3307");
        let p = json!({"port": 0}).as_object().cloned().unwrap_or_default();
        assert!(connect_options(&p).is_err());
    }

    #[tokio::test]
    async fn an_unreachable_server_gives_the_reason() {
        // A port nothing listens on: bind one, learn it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let p = json!({"port": port, "socket": "", "timeout": 2})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let err = Mysql::default().collect(&p).await.expect_err("no server");
        assert!(
            err.contains(&format!("cannot reach mysql at 127.0.0.1:{port}")),
            "{err}"
        );
    }
}
