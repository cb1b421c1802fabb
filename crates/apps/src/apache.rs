//! Apache httpd: its `server-status?auto` page (mod_status, `Key: value` lines, parsed here)
//! over HTTP. Every line typed under a snake_case name (`Total Accesses` → `total_accesses`,
//! `BusyWorkers` → `busy_workers`), rates of the access and traffic counters, the scoreboard
//! counted by state (`scoreboard.waiting`, `.reading`, `.sending`, `.keepalive`, ...,
//! `.open_slot`) and the share of worker slots busy (`workers_used_pct`).
//!
//! Parameters (`packs/apache/parameters/parameters.yml`): `url`, `timeout`. The counters of
//! accesses and traffic need `ExtendedStatus On` (the default since 2.4 when mod_status loads).

use std::time::Instant;

use serde_json::{Map, Value};

use crate::http_get::{StatusClient, excerpt};
use crate::{AppCollector, CollectFuture, Params, Rates, param_str, typed};

/// Where `server-status` answers when the parameters do not say.
pub const DEFAULT_URL: &str = "http://127.0.0.1/server-status?auto";

/// Counters that get a `<name>/s` rate.
const COUNTERS: &[&str] = &["total_accesses", "total_kbytes", "total_duration"];

/// The largest page read (a large scoreboard is a few kB).
const MAX_PAGE: usize = 1024 * 1024;

/// Scoreboard characters and their names (mod_status's legend).
const SCOREBOARD: &[(char, &str)] = &[
    ('_', "waiting"),
    ('S', "starting"),
    ('R', "reading"),
    ('W', "sending"),
    ('K', "keepalive"),
    ('D', "dns_lookup"),
    ('C', "closing"),
    ('L', "logging"),
    ('G', "gracefully_finishing"),
    ('I', "idle_cleanup"),
    ('.', "open_slot"),
];

/// The apache collector.
#[derive(Debug, Default)]
pub struct Apache {
    http: StatusClient,
    rates: Rates,
}

impl AppCollector for Apache {
    fn name(&self) -> &'static str {
        "apache"
    }

    fn collect<'a>(&'a mut self, params: &'a Params) -> CollectFuture<'a> {
        Box::pin(async move {
            let url = param_str(params, "url", DEFAULT_URL);
            let page = self
                .http
                .get("apache", &url, None, crate::timeout_of(params), MAX_PAGE)
                .await?;
            let mut out = parse_server_status(&page.body).map_err(|e| format!("{url}: {e}"))?;
            self.rates.apply(Instant::now(), &mut out, COUNTERS);
            Ok(Value::Object(out))
        })
    }
}

/// A `server-status?auto` page → object (see the module doc). The first line of 2.4's page is
/// the server's name, without a colon: it becomes `server_name`.
pub fn parse_server_status(text: &str) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    out.insert("available".into(), Value::Bool(true));
    let mut first = true;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(": ").or_else(|| line.split_once(':')) else {
            if first {
                out.insert("server_name".into(), Value::from(line));
            }
            first = false;
            continue;
        };
        first = false;
        let key = snake_case(key);
        if key.is_empty() {
            continue;
        }
        if key == "scoreboard" {
            out.insert(key, Value::Object(scoreboard(value.trim())));
        } else {
            out.insert(key, typed(value));
        }
    }
    if !out.contains_key("busy_workers") {
        return Err(format!(
            "not an apache server-status?auto page (is mod_status on at this location, and the url ending in `?auto`?){}",
            excerpt(text)
                .map(|e| format!(": `{e}`"))
                .unwrap_or_default()
        ));
    }
    if let Some(v) = out
        .get("server_version")
        .and_then(Value::as_str)
        .and_then(|s| s.strip_prefix("Apache/"))
        .and_then(|s| s.split_whitespace().next())
    {
        let v = v.to_owned();
        out.insert("version".into(), Value::from(v));
    }
    let num = |k: &str| out.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let open = out
        .get("scoreboard")
        .and_then(|s| s.get("open_slot"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let (busy, idle) = (num("busy_workers"), num("idle_workers"));
    let slots = busy + idle + open;
    out.insert("workers_total".into(), Value::from(slots));
    let used = if slots > 0.0 {
        busy * 100.0 / slots
    } else {
        0.0
    };
    out.insert(
        "workers_used_pct".into(),
        Value::from((used * 100.0).round() / 100.0),
    );
    Ok(out)
}

/// Count each state of a scoreboard (`__W_K..`); unknown characters go to `other`.
fn scoreboard(board: &str) -> Map<String, Value> {
    let mut counts: Vec<(&str, u64)> = SCOREBOARD.iter().map(|(_, n)| (*n, 0)).collect();
    let mut other = 0u64;
    for c in board.chars() {
        match SCOREBOARD.iter().position(|(s, _)| *s == c) {
            Some(i) => counts[i].1 += 1,
            None => other += 1,
        }
    }
    let mut out: Map<String, Value> = counts
        .into_iter()
        .map(|(n, c)| (n.to_owned(), Value::from(c)))
        .collect();
    out.insert("other".into(), Value::from(other));
    out.insert("total".into(), Value::from(board.chars().count()));
    out
}

/// `Total Accesses` → `total_accesses`, `BusyWorkers` → `busy_workers`, `CPUUser` →
/// `cpu_user`, `ServerMPM` → `server_mpm`, `Load1` → `load1`; a word that starts in lower case
/// stays whole (`kBytes` → `kbytes`, not `k_bytes`).
fn snake_case(key: &str) -> String {
    let mut words = Vec::new();
    for word in key.split_whitespace() {
        let chars: Vec<char> = word.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        if chars.first().is_some_and(char::is_ascii_lowercase) {
            words.push(chars.iter().collect::<String>().to_ascii_lowercase());
            continue;
        }
        let mut part = String::new();
        for (i, c) in chars.iter().enumerate() {
            let prev = i.checked_sub(1).and_then(|p| chars.get(p));
            let next = chars.get(i + 1);
            let boundary = c.is_ascii_uppercase()
                && prev.is_some_and(|p| {
                    p.is_ascii_lowercase()
                        || p.is_ascii_digit()
                        || (p.is_ascii_uppercase() && next.is_some_and(char::is_ascii_lowercase))
                });
            if boundary && !part.is_empty() {
                words.push(std::mem::take(&mut part));
            }
            part.push(c.to_ascii_lowercase());
        }
        if !part.is_empty() {
            words.push(part);
        }
    }
    words.join("_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_get::fake;
    use serde_json::json;

    /// Apache 2.4.71 (Debian 12), mpm_event, ExtendedStatus On, after 12 requests.
    const PAGE: &str = include_str!("testdata/apache-2.4-server-status-auto.txt");

    #[test]
    fn names_become_snake_case() {
        for (k, want) in [
            ("Total Accesses", "total_accesses"),
            ("Total kBytes", "total_kbytes"),
            ("BusyWorkers", "busy_workers"),
            ("CPUUser", "cpu_user"),
            ("CPUChildrenSystem", "cpu_children_system"),
            ("ServerMPM", "server_mpm"),
            ("Load15", "load15"),
            ("ConnsAsyncKeepAlive", "conns_async_keep_alive"),
            ("Server Built", "server_built"),
            ("ReqPerSec", "req_per_sec"),
            ("ServerUptimeSeconds", "server_uptime_seconds"),
        ] {
            assert_eq!(snake_case(k), want, "{k}");
        }
    }

    #[test]
    fn a_real_page_is_parsed() {
        let out = parse_server_status(PAGE).unwrap_or_default();
        assert_eq!(out["server_name"], json!("127.0.0.1"));
        assert_eq!(out["version"], json!("2.4.71"));
        assert_eq!(out["server_mpm"], json!("event"));
        assert_eq!(out["total_accesses"], json!(12));
        assert_eq!(out["total_kbytes"], json!(3));
        assert_eq!(out["busy_workers"], json!(1));
        assert_eq!(out["idle_workers"], json!(9));
        assert_eq!(out["duration_per_req"], json!(0.583333));
        assert_eq!(out["scoreboard"]["waiting"], json!(9));
        assert_eq!(out["scoreboard"]["sending"], json!(1));
        assert_eq!(out["scoreboard"]["open_slot"], json!(30));
        assert_eq!(out["scoreboard"]["total"], json!(40));
        assert_eq!(out["workers_total"], json!(40.0));
        assert_eq!(out["workers_used_pct"], json!(2.5));
    }

    #[test]
    fn other_pages_are_refused() {
        for page in [
            "",
            "<!DOCTYPE HTML>\n<html><head>\n<title>Apache Status</title>",
        ] {
            let e = parse_server_status(page).err().unwrap_or_default();
            assert!(e.contains("not an apache server-status?auto page"), "{e}");
        }
        // Busy everywhere, with keep-alive and closing workers.
        let out = parse_server_status("BusyWorkers: 3\nIdleWorkers: 1\nScoreboard: KCW_\n")
            .unwrap_or_default();
        assert_eq!(out["scoreboard"]["keepalive"], json!(1));
        assert_eq!(out["scoreboard"]["closing"], json!(1));
        assert_eq!(out["workers_used_pct"], json!(75.0));
    }

    #[tokio::test]
    async fn collects_over_http() {
        let server = fake::serve(vec![("/server-status?auto", 200, PAGE.to_owned())]).await;
        let params = json!({"url": format!("{}/server-status?auto", server.base)})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut apache = Apache::default();
        let out = apache.collect(&params).await.unwrap_or_default();
        assert_eq!(out["total_accesses"], json!(12), "{out}");
        assert_eq!(out["total_accesses/s"], json!(0.0), "{out}");
    }

    proptest::proptest! {
        /// Any text, well-formed or not, gives values or an error: never a panic.
        #[test]
        fn never_panics(text in "([A-Za-z ]{0,12}: [0-9a-zA-Z._ ]{0,10}\\n){0,8}(Scoreboard: [_SRWKDCLGI.x]{0,30})?|.{0,200}") {
            let _ = parse_server_status(&text);
        }
    }
}
