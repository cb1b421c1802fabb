//! HAProxy: its statistics as CSV, from the stats page (`<url>;csv`, over HTTP) or from the
//! stats socket (`show stat`); the CSV (a header line naming the columns, one line per frontend,
//! backend and server, fields quoted when they hold a comma) is parsed here: a CSV crate would
//! bring more than these twenty lines.
//!
//! Values: `frontends.<name>` (status, sessions `scur` against the limit `slim` as
//! `sessions_used_pct`, `stot` with its rate, bytes in/out, request errors, 4xx/5xx answers),
//! `backends.<name>` (the same plus connection/response errors and
//! `servers.<name>.{status, check_status, last_chk, ...}`), and totals: servers up/down/in
//! maintenance, the backends with no server left (`backends_down`, `backends_down_names`), the
//! servers down with their check result (`servers_down_names`) and the frontend nearest its
//! session limit (`sessions_max_pct`, `sessions_max_frontend`). Names with dots get `_`
//! (a dot separates the levels of `collector.haproxy.<path>`).
//!
//! Parameters (`packs/haproxy/parameters/parameters.yml`): `url` (the stats page; when set it is
//! used instead of the socket), `socket`, `user`, `password` (`stats auth` of the page),
//! `timeout`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http_get::{StatusClient, excerpt};
use crate::{AppCollector, CollectFuture, Params, Rates, param_str, typed};

/// The stats socket of Debian's haproxy.cfg.
pub const DEFAULT_SOCKET: &str = "/run/haproxy/admin.sock";

/// The largest CSV read (~1 kB a line: 32 MB is tens of thousands of servers).
const MAX_CSV: usize = 32 * 1024 * 1024;

/// Columns kept for a frontend.
const FRONTEND_FIELDS: &[&str] = &[
    "status",
    "scur",
    "smax",
    "slim",
    "stot",
    "bin",
    "bout",
    "dreq",
    "dresp",
    "ereq",
    "rate",
    "req_rate",
    "req_tot",
    "conn_rate",
    "hrsp_4xx",
    "hrsp_5xx",
    "mode",
];

/// Columns kept for a backend.
const BACKEND_FIELDS: &[&str] = &[
    "status", "qcur", "scur", "smax", "slim", "stot", "bin", "bout", "econ", "eresp", "wretr",
    "wredis", "act", "bck", "chkdown", "lastchg", "downtime", "rate", "req_tot", "hrsp_4xx",
    "hrsp_5xx", "qtime", "ctime", "rtime", "ttime", "mode", "algo",
];

/// Columns kept for a server.
const SERVER_FIELDS: &[&str] = &[
    "status",
    "qcur",
    "scur",
    "smax",
    "slim",
    "stot",
    "bin",
    "bout",
    "econ",
    "eresp",
    "weight",
    "chkfail",
    "chkdown",
    "lastchg",
    "downtime",
    "rate",
    "hrsp_5xx",
    "check_status",
    "check_code",
    "check_duration",
    "check_desc",
    "last_chk",
    "addr",
];

/// Counters that get a `<name>/s` rate, per frontend, backend and server.
const COUNTERS: &[&str] = &["stot", "bin", "bout", "req_tot"];

/// The haproxy collector.
#[derive(Debug, Default)]
pub struct Haproxy {
    http: StatusClient,
    /// Rates per frontend/backend/server, by `fe/<name>`, `be/<name>`, `srv/<be>/<name>`.
    rates: HashMap<String, Rates>,
}

impl AppCollector for Haproxy {
    fn name(&self) -> &'static str {
        "haproxy"
    }

    fn collect<'a>(&'a mut self, params: &'a Params) -> CollectFuture<'a> {
        Box::pin(async move {
            let timeout = crate::timeout_of(params);
            let url = param_str(params, "url", "");
            let (text, from) = if url.is_empty() {
                let socket = param_str(params, "socket", DEFAULT_SOCKET);
                (show_stat(&socket, timeout).await?, socket)
            } else {
                let url = csv_url(&url);
                let (user, password) = (
                    param_str(params, "user", ""),
                    param_str(params, "password", ""),
                );
                let auth = (!user.is_empty()).then_some((user.as_str(), password.as_str()));
                let page = self
                    .http
                    .get("haproxy", &url, auth, timeout, MAX_CSV)
                    .await?;
                (page.body, url)
            };
            let mut out = parse_stats(&text).map_err(|e| format!("{from}: {e}"))?;
            self.apply_rates(Instant::now(), &mut out);
            Ok(Value::Object(out))
        })
    }
}

impl Haproxy {
    /// Add the rates of each frontend, backend and server; forget those gone.
    fn apply_rates(&mut self, now: Instant, out: &mut Map<String, Value>) {
        let mut seen = Vec::new();
        let mut apply = |key: String, obj: &mut Value| {
            if let Value::Object(m) = obj {
                self.rates
                    .entry(key.clone())
                    .or_default()
                    .apply(now, m, COUNTERS);
                seen.push(key);
            }
        };
        if let Some(Value::Object(fes)) = out.get_mut("frontends") {
            for (name, fe) in fes.iter_mut() {
                apply(format!("fe/{name}"), fe);
            }
        }
        if let Some(Value::Object(bes)) = out.get_mut("backends") {
            for (name, be) in bes.iter_mut() {
                apply(format!("be/{name}"), be);
                if let Some(Value::Object(servers)) = be.get_mut("servers") {
                    for (srv, s) in servers.iter_mut() {
                        apply(format!("srv/{name}/{srv}"), s);
                    }
                }
            }
        }
        self.rates.retain(|k, _| seen.contains(k));
    }
}

/// The stats page URL with `;csv` at its end (`/stats;csv`, `/haproxy?stats;csv`).
fn csv_url(url: &str) -> String {
    if url.contains(";csv") {
        url.to_owned()
    } else {
        format!("{url};csv")
    }
}

/// `show stat` on the stats socket at `path`: haproxy answers and closes.
async fn show_stat(path: &str, timeout: Duration) -> Result<String, String> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
            format!(
                "cannot reach haproxy at {path}: {e} (set the parameter `socket` to haproxy's `stats socket`, or `url` to its stats page)"
            )
        })?;
        stream
            .write_all(b"show stat\n")
            .await
            .map_err(|e| format!("cannot send to haproxy at {path}: {e}"))?;
        let mut body = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("cannot read from haproxy at {path}: {e}"))?;
            if n == 0 {
                break;
            }
            if body.len() + n > MAX_CSV {
                return Err(format!(
                    "haproxy at {path} sent more than {} MB",
                    MAX_CSV >> 20
                ));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        format!(
            "haproxy at {path} did not answer within {} s",
            timeout.as_secs_f64()
        )
    })?
}

/// One CSV line → its fields; a field in double quotes may hold commas and `""` (a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// Where a status puts a server in the totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Up,
    Down,
    Maint,
    Other,
}

/// `UP`, `UP 1/3` (going down), `no check`, `NOLB`, `DRAIN` serve; `DOWN`, `DOWN 1/2` (going up)
/// do not; `MAINT`, `MAINT(via)`, `MAINT (resolution)` are stopped on purpose.
fn health(status: &str) -> Health {
    if status.starts_with("UP")
        || status == "no check"
        || status.starts_with("NOLB")
        || status.starts_with("DRAIN")
        || status == "OPEN"
    {
        Health::Up
    } else if status.starts_with("DOWN") {
        Health::Down
    } else if status.starts_with("MAINT") {
        Health::Maint
    } else {
        Health::Other
    }
}

/// A name as a key of `collector.haproxy.<path>`: dots become `_`.
fn key_of(name: &str) -> String {
    name.replace('.', "_")
}

/// The stats CSV → object (see the module doc).
pub fn parse_stats(text: &str) -> Result<Map<String, Value>, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .filter(|h| h.trim_start().starts_with("pxname,svname,"))
        .ok_or_else(|| {
            format!(
                "not haproxy stats CSV (no `# pxname,svname,...` header){}",
                excerpt(text)
                    .map(|e| format!(": `{e}`"))
                    .unwrap_or_default()
            )
        })?;
    let columns: Vec<String> = csv_fields(header.trim_start());
    let mut frontends = Map::new();
    let mut backends = Map::new();
    // Servers by backend, attached once every line is read (haproxy lists them before it).
    let mut servers: Vec<(String, String, Map<String, Value>)> = Vec::new();
    for line in lines {
        let fields = csv_fields(line);
        let row: HashMap<&str, &str> = columns
            .iter()
            .map(String::as_str)
            .zip(fields.iter().map(String::as_str))
            .collect();
        let (Some(px), Some(sv)) = (row.get("pxname"), row.get("svname")) else {
            continue;
        };
        let pick = |wanted: &[&str]| -> Map<String, Value> {
            wanted
                .iter()
                .filter_map(|k| {
                    let v = row.get(k).filter(|v| !v.is_empty())?;
                    Some(((*k).to_owned(), typed(v)))
                })
                .collect()
        };
        match *sv {
            "FRONTEND" => {
                let mut fe = pick(FRONTEND_FIELDS);
                let num = |k: &str| fe.get(k).and_then(Value::as_f64);
                if let (Some(cur), Some(lim)) = (num("scur"), num("slim"))
                    && lim > 0.0
                {
                    let pct = (cur * 10000.0 / lim).round() / 100.0;
                    fe.insert("sessions_used_pct".into(), Value::from(pct));
                }
                frontends.insert(key_of(px), Value::Object(fe));
            }
            "BACKEND" => {
                backends.insert(key_of(px), Value::Object(pick(BACKEND_FIELDS)));
            }
            _ => servers.push((key_of(px), key_of(sv), pick(SERVER_FIELDS))),
        }
    }

    let mut totals = [0u64; 4]; // up, down, maint, other
    let mut down_names = Vec::new();
    for (be, sv, server) in servers {
        let status = server.get("status").and_then(Value::as_str).unwrap_or("");
        let h = health(status);
        totals[h as usize] += 1;
        if h == Health::Down {
            let why = ["check_status", "last_chk"]
                .iter()
                .filter_map(|k| server.get(*k))
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(" ");
            down_names.push(if why.is_empty() {
                format!("{be}/{sv}")
            } else {
                format!("{be}/{sv} ({why})")
            });
        }
        let entry = backends
            .entry(be)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(b) = entry {
            let counts = |b: &mut Map<String, Value>, k: &str| {
                let n = b.get(k).and_then(Value::as_u64).unwrap_or(0) + 1;
                b.insert(k.into(), Value::from(n));
            };
            counts(b, "servers_total");
            match h {
                Health::Up => counts(b, "servers_up"),
                Health::Down => counts(b, "servers_down"),
                _ => {}
            }
            if let Value::Object(list) = b
                .entry("servers")
                .or_insert_with(|| Value::Object(Map::new()))
            {
                list.insert(sv, Value::Object(server));
            }
        }
    }
    let mut backends_down = Vec::new();
    for (name, be) in &mut backends {
        if let Value::Object(b) = be {
            for k in ["servers_total", "servers_up", "servers_down"] {
                b.entry(k).or_insert(Value::from(0));
            }
            let status = b.get("status").and_then(Value::as_str).unwrap_or("");
            if health(status) == Health::Down {
                backends_down.push(name.clone());
            }
        }
    }

    let mut out = Map::new();
    out.insert("available".into(), Value::Bool(true));
    out.insert("frontends_count".into(), Value::from(frontends.len()));
    out.insert("backends_count".into(), Value::from(backends.len()));
    let [up, down, maint, other] = totals;
    out.insert(
        "servers_total".into(),
        Value::from(up + down + maint + other),
    );
    out.insert("servers_up".into(), Value::from(up));
    out.insert("servers_down".into(), Value::from(down));
    out.insert("servers_maint".into(), Value::from(maint));
    out.insert(
        "servers_down_names".into(),
        Value::from(down_names.join(", ")),
    );
    out.insert("backends_down".into(), Value::from(backends_down.len()));
    out.insert(
        "backends_down_names".into(),
        Value::from(backends_down.join(", ")),
    );
    let busiest = frontends
        .iter()
        .filter_map(|(n, f)| Some((n, f.get("sessions_used_pct")?.as_f64()?, f)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let (name, pct, scur, slim) = busiest.map_or((String::new(), 0.0, 0, 0), |(n, p, f)| {
        let num = |k: &str| f.get(k).and_then(Value::as_u64).unwrap_or(0);
        (n.clone(), p, num("scur"), num("slim"))
    });
    out.insert("sessions_max_pct".into(), Value::from(pct));
    out.insert("sessions_max_frontend".into(), Value::from(name));
    out.insert("sessions_max_scur".into(), Value::from(scur));
    out.insert("sessions_max_slim".into(), Value::from(slim));
    out.insert("frontends".into(), Value::Object(frontends));
    out.insert("backends".into(), Value::Object(backends));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_get::fake;
    use serde_json::json;

    /// HAProxy 2.6.12 (Debian 12) `/stats;csv`: frontends fe_main (maxconn 50) and fe_other,
    /// backend be_app with a live server and one on a dead port, be_dead with only a dead
    /// server, the `stats` listener.
    const CSV: &str = include_str!("testdata/haproxy-2.6-stats.csv");
    /// The same haproxy's `show stat` on its socket (ends with an empty line).
    const SHOW_STAT: &str = include_str!("testdata/haproxy-2.6-show-stat.csv");

    #[test]
    fn csv_fields_handle_quotes() {
        assert_eq!(csv_fields("a,,b,"), ["a", "", "b", ""]);
        assert_eq!(
            csv_fields(r#"x,"Layer7 wrong status, code 503","say ""hi""",y"#),
            ["x", "Layer7 wrong status, code 503", r#"say "hi""#, "y"]
        );
    }

    #[test]
    fn real_stats_are_parsed() {
        for text in [CSV, SHOW_STAT] {
            let out = parse_stats(text).unwrap_or_default();
            assert_eq!(out["frontends_count"], json!(3), "{out:?}");
            assert_eq!(out["backends_count"], json!(3));
            assert_eq!(out["servers_total"], json!(3));
            assert_eq!(out["servers_up"], json!(1));
            assert_eq!(out["servers_down"], json!(2));
            assert_eq!(out["backends_down"], json!(1));
            assert_eq!(out["backends_down_names"], json!("be_dead"));
            assert_eq!(
                out["servers_down_names"],
                json!(
                    "be_app/gone (L4CON Connection refused), be_dead/dead1 (L4CON Connection refused)"
                )
            );
            let fe = &out["frontends"]["fe_main"];
            assert_eq!(fe["status"], json!("OPEN"));
            assert_eq!(fe["slim"], json!(50));
            assert_eq!(fe["stot"], json!(3));
            assert_eq!(fe["sessions_used_pct"], json!(0.0));
            let be = &out["backends"]["be_app"];
            assert_eq!(be["status"], json!("UP"));
            assert_eq!(be["servers_up"], json!(1));
            assert_eq!(be["servers_down"], json!(1));
            assert_eq!(be["servers"]["live"]["check_status"], json!("L4OK"));
            assert_eq!(be["servers"]["live"]["stot"], json!(3));
            assert_eq!(be["servers"]["gone"]["status"], json!("DOWN"));
            assert_eq!(
                be["servers"]["gone"]["check_desc"],
                json!("Layer4 connection problem")
            );
            assert_eq!(out["backends"]["be_dead"]["status"], json!("DOWN"));
            assert_eq!(out["backends"]["stats"]["servers_total"], json!(0));
        }
        let out = parse_stats(CSV).unwrap_or_default();
        // The stats listener serving this very request holds the busiest frontend's session.
        assert_eq!(out["sessions_max_frontend"], json!("stats"));
        assert_eq!(out["sessions_max_scur"], json!(1));
    }

    #[test]
    fn statuses_and_names() {
        assert_eq!(health("UP 1/3"), Health::Up);
        assert_eq!(health("no check"), Health::Up);
        assert_eq!(health("DOWN 1/2"), Health::Down);
        assert_eq!(health("MAINT (resolution)"), Health::Maint);
        let csv =
            "# pxname,svname,scur,slim,status\nweb.v2,FRONTEND,48,50,OPEN\nweb.v2,BACKEND,0,,UP\n";
        let out = parse_stats(csv).unwrap_or_default();
        assert_eq!(out["frontends"]["web_v2"]["sessions_used_pct"], json!(96.0));
        assert_eq!(out["sessions_max_frontend"], json!("web_v2"));
        assert_eq!(out["sessions_max_slim"], json!(50));
    }

    #[test]
    fn other_text_is_refused() {
        for text in ["", "Unknown command.\n", "<html>stats</html>"] {
            let e = parse_stats(text).err().unwrap_or_default();
            assert!(e.contains("not haproxy stats CSV"), "{e}");
        }
    }

    #[tokio::test]
    async fn collects_over_http_with_auth_and_from_a_socket() {
        let server = fake::serve(vec![("/stats;csv", 200, CSV.to_owned())]).await;
        let mut haproxy = Haproxy::default();
        let p = json!({"url": format!("{}/stats", server.base), "user": "admin", "password": "pw"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let out = haproxy.collect(&p).await.unwrap_or_default();
        assert_eq!(out["servers_down"], json!(2), "{out}");
        assert_eq!(
            out["backends"]["be_app"]["servers"]["live"]["stot/s"],
            json!(0.0)
        );
        let seen = server.auth.lock().map(|a| a.clone()).unwrap_or_default();
        // admin:pw
        assert_eq!(seen, ["Basic YWRtaW46cHc="]);

        // A socket that answers `show stat` like haproxy's.
        let dir = std::env::temp_dir().join(format!("opsbro-haproxy-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("stats.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            if let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 64];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                if &buf[..n] == b"show stat\n" {
                    let _ = conn.write_all(SHOW_STAT.as_bytes()).await;
                }
            }
        });
        let p = json!({"socket": path.display().to_string()})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let out = haproxy.collect(&p).await;
        let _ = std::fs::remove_dir_all(&dir);
        let out = out.unwrap_or_default();
        assert_eq!(out["backends_down_names"], json!("be_dead"), "{out}");
        let p = json!({"socket": "/nonexistent/haproxy.sock"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let e = haproxy.collect(&p).await.err().unwrap_or_default();
        assert!(
            e.starts_with("cannot reach haproxy at /nonexistent/haproxy.sock"),
            "{e}"
        );
    }

    proptest::proptest! {
        /// Any text, well-formed or not, gives values or an error: never a panic.
        #[test]
        fn never_panics(text in "# pxname,svname,status,scur,slim\\n([a-z.\",]{0,6},(FRONTEND|BACKEND|s[0-9]),(UP|DOWN 1/2|MAINT|OPEN|\"a,\"\"b\"),[0-9]{0,3},[0-9]{0,3}\\n){0,6}|.{0,200}") {
            let _ = parse_stats(&text);
        }
    }
}
