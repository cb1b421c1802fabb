//! nginx: its `stub_status` page (four lines of text, parsed here) over HTTP: active
//! connections, the accepted/handled/requests counters with their rates, the connections
//! reading/writing/waiting, and `dropped` (accepted but not handled: a worker_connections or
//! resource limit was hit).
//!
//! Parameters (`packs/nginx/parameters/parameters.yml`): `url` (of a location with
//! `stub_status;`), `timeout`.

use std::time::Instant;

use serde_json::{Map, Value};

use crate::http_get::{StatusClient, excerpt};
use crate::{AppCollector, CollectFuture, Params, Rates, param_str};

/// Where `stub_status` answers when the parameters do not say.
pub const DEFAULT_URL: &str = "http://127.0.0.1/nginx_status";

/// Counters that get a `<name>/s` rate.
const COUNTERS: &[&str] = &["accepts", "handled", "requests", "dropped"];

/// The largest page read (a stub_status page is ~100 bytes).
const MAX_PAGE: usize = 64 * 1024;

/// The nginx collector.
#[derive(Debug, Default)]
pub struct Nginx {
    http: StatusClient,
    rates: Rates,
}

impl AppCollector for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }

    fn collect<'a>(&'a mut self, params: &'a Params) -> CollectFuture<'a> {
        Box::pin(async move {
            let url = param_str(params, "url", DEFAULT_URL);
            let page = self
                .http
                .get("nginx", &url, None, crate::timeout_of(params), MAX_PAGE)
                .await?;
            let mut out = parse_stub_status(&page.body).map_err(|e| format!("{url}: {e}"))?;
            if let Some(version) = page
                .server
                .as_deref()
                .and_then(|s| s.strip_prefix("nginx/"))
            {
                out.insert("version".into(), Value::from(version));
            }
            self.rates.apply(Instant::now(), &mut out, COUNTERS);
            Ok(Value::Object(out))
        })
    }
}

/// A `stub_status` page → `available`, `active_connections`, `accepts`, `handled`, `requests`,
/// `reading`, `writing`, `waiting`, `dropped`.
///
/// ```text
/// Active connections: 291
/// server accepts handled requests
///  16630948 16630948 31070465
/// Reading: 6 Writing: 179 Waiting: 106
/// ```
pub fn parse_stub_status(text: &str) -> Result<Map<String, Value>, String> {
    let not_it = || {
        format!(
            "not an nginx stub_status page (is `stub_status;` set in this location?){}",
            excerpt(text)
                .map(|e| format!(": `{e}`"))
                .unwrap_or_default()
        )
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    // The number after the word `label`.
    let after = |label: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == label)?;
        words.get(i + 1)?.parse().ok()
    };
    let active = after("connections:").ok_or_else(not_it)?;
    // `server accepts handled requests` then the three counters.
    let i = words
        .windows(4)
        .position(|w| w == ["server", "accepts", "handled", "requests"])
        .ok_or_else(not_it)?;
    let counter = |k: usize| -> Result<u64, String> {
        words
            .get(i + 4 + k)
            .and_then(|w| w.parse().ok())
            .ok_or_else(not_it)
    };
    let (accepts, handled, requests) = (counter(0)?, counter(1)?, counter(2)?);
    let mut out = Map::new();
    out.insert("available".into(), Value::Bool(true));
    out.insert("active_connections".into(), Value::from(active));
    out.insert("accepts".into(), Value::from(accepts));
    out.insert("handled".into(), Value::from(handled));
    out.insert("requests".into(), Value::from(requests));
    for (label, key) in [
        ("Reading:", "reading"),
        ("Writing:", "writing"),
        ("Waiting:", "waiting"),
    ] {
        out.insert(key.into(), Value::from(after(label).ok_or_else(not_it)?));
    }
    out.insert(
        "dropped".into(),
        Value::from(accepts.saturating_sub(handled)),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_get::fake;
    use serde_json::json;

    /// nginx 1.22.1 (Debian 12), after three requests.
    const PAGE: &str = include_str!("testdata/nginx-1.22-stub_status.txt");

    #[test]
    fn a_real_page_is_parsed() {
        let out = parse_stub_status(PAGE).map(Value::Object);
        assert_eq!(
            out,
            Ok(json!({
                "available": true, "active_connections": 1, "accepts": 4, "handled": 4,
                "requests": 4, "reading": 0, "writing": 1, "waiting": 0, "dropped": 0
            }))
        );
        let busy = "Active connections: 291 \nserver accepts handled requests\n 16630948 16630940 31070465 \nReading: 6 Writing: 179 Waiting: 106 \n";
        let out = parse_stub_status(busy).unwrap_or_default();
        assert_eq!(out["dropped"], json!(8));
        assert_eq!(out["waiting"], json!(106));
    }

    #[test]
    fn other_pages_are_refused_with_what_they_start_with() {
        for page in [
            "",
            "<html><body>Welcome to nginx!</body></html>",
            "Active connections: 1\nserver accepts handled requests\n 4 4\n",
            "Active connections: x\n",
        ] {
            let e = parse_stub_status(page).err().unwrap_or_default();
            assert!(e.contains("not an nginx stub_status page"), "{page}: {e}");
        }
        let e = parse_stub_status("<html>Welcome</html>")
            .err()
            .unwrap_or_default();
        assert!(e.contains("`<html>Welcome</html>`"), "{e}");
    }

    #[tokio::test]
    async fn collects_over_http_with_rates_and_reports_failures() {
        let server = fake::serve(vec![
            ("/nginx_status", 200, PAGE.to_owned()),
            ("/html", 200, "<html>hi</html>".to_owned()),
        ])
        .await;
        let mut nginx = Nginx::default();
        let params = |url: String| {
            json!({"url": url, "timeout": 2})
                .as_object()
                .cloned()
                .unwrap_or_default()
        };
        let ok = nginx
            .collect(&params(format!("{}/nginx_status", server.base)))
            .await;
        let ok = ok.unwrap_or_default();
        assert_eq!(ok["requests"], json!(4), "{ok}");
        assert_eq!(ok["requests/s"], json!(0.0), "{ok}");
        let missing = nginx
            .collect(&params(format!("{}/nope", server.base)))
            .await;
        assert!(
            missing.as_ref().is_err_and(|e| e.contains("HTTP 404")),
            "{missing:?}"
        );
        let html = nginx
            .collect(&params(format!("{}/html", server.base)))
            .await;
        assert!(
            html.as_ref()
                .is_err_and(|e| e.contains("not an nginx stub_status page")),
            "{html:?}"
        );
        // Nothing listens on port 1.
        let down = nginx
            .collect(&params("http://127.0.0.1:1/nginx_status".into()))
            .await;
        assert!(
            down.as_ref()
                .is_err_and(|e| e.starts_with("cannot reach nginx at http://127.0.0.1:1/")),
            "{down:?}"
        );
    }

    proptest::proptest! {
        /// Any text, well-formed or not, gives values or an error: never a panic.
        #[test]
        fn never_panics(text in "(Active connections: [0-9]{1,3} \\nserver accepts handled requests\\n [0-9 ]{0,30}\\nReading: [0-9a-z]{0,3} Writing: [0-9]{0,3} Waiting: .{0,5}\\n)|.{0,200}") {
            let _ = parse_stub_status(&text);
        }
    }
}
