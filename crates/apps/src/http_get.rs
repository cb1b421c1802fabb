//! GETs of status pages and APIs (nginx `stub_status`, apache `server-status?auto`, the haproxy
//! stats CSV, the rabbitmq management API) with the agent's HTTP client, reqwest: one client per
//! collector, no connection kept between runs (an idle keep-alive connection of ours would show
//! in the very counts we read), the body read up to a cap, every failure a sentence naming the
//! server and the URL.
//!
//! TLS: this crate asks reqwest for no TLS backend; in the agent binary reqwest comes with rustls
//! (the agent's `rustls-no-provider` feature, ring installed as the provider first thing), so
//! `https://` URLs work there, certificates verified.

use std::time::Duration;

/// What a GET brought back.
#[derive(Debug)]
pub(crate) struct Page {
    /// The body, as text (invalid UTF-8 replaced).
    pub body: String,
    /// The `Server` header, when sent (`nginx/1.22.1`).
    pub server: Option<String>,
}

/// An HTTP client made on first use and kept for the collector's life.
#[derive(Debug, Default)]
pub(crate) struct StatusClient {
    client: Option<reqwest::Client>,
}

impl StatusClient {
    /// The client (made on first use; a clone shares its pool).
    pub(crate) fn client(&mut self) -> Result<reqwest::Client, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        crate::ensure_tls_provider();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("opsbro/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {}", error_chain(&e)))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// [`fetch`] with this client.
    pub(crate) async fn get(
        &mut self,
        what: &str,
        url: &str,
        auth: Option<(&str, &str)>,
        timeout: Duration,
        cap: usize,
    ) -> Result<Page, String> {
        let client = self.client()?;
        fetch(&client, what, url, auth, timeout, cap).await
    }
}

/// GET `url` (`what` names the server in messages: `nginx`), with basic auth when `auth` is
/// given, all within `timeout`, at most `cap` bytes of body; a status other than 2xx is an
/// error.
pub(crate) async fn fetch(
    client: &reqwest::Client,
    what: &str,
    url: &str,
    auth: Option<(&str, &str)>,
    timeout: Duration,
    cap: usize,
) -> Result<Page, String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("the {what} url `{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("the {what} url `{url}` is not http:// or https://"));
    }
    let mut request = client.get(parsed).timeout(timeout);
    if let Some((user, password)) = auth {
        request = request.basic_auth(user, Some(password));
    }
    let exchange = async {
        let mut answer = request
            .send()
            .await
            .map_err(|e| format!("cannot reach {what} at {url}: {}", error_chain(&e)))?;
        let status = answer.status();
        let server = answer
            .headers()
            .get(reqwest::header::SERVER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| format!("cannot read from {what} at {url}: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > cap {
                return Err(format!(
                    "{what} at {url} sent more than {} kB: not a status page?",
                    cap / 1024
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(format!(
                "{what} at {url} answered HTTP {status}{}",
                excerpt(&body).map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
        Ok(Page { body, server })
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        format!(
            "{what} at {url} did not answer within {} s",
            timeout.as_secs_f64()
        )
    })?
}

/// An error and its causes, `a: b: c` (reqwest's own message alone says little: "error sending
/// request").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The start of a body, on one line, for error messages (`None` when empty).
pub(crate) fn excerpt(body: &str) -> Option<String> {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return None;
    }
    let mut cut: String = flat.chars().take(120).collect();
    if cut.len() < flat.len() {
        cut.push('…');
    }
    Some(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_are_reported_without_a_request() {
        let mut c = StatusClient::default();
        let t = Duration::from_secs(1);
        let e = c.get("nginx", "127.0.0.1/x", None, t, 10).await;
        assert!(e.is_err_and(|e| e.contains("is not a URL")));
        let e = c.get("nginx", "ftp://127.0.0.1/x", None, t, 10).await;
        assert!(e.is_err_and(|e| e.contains("not http://")));
    }

    #[test]
    fn excerpts_are_short_and_on_one_line() {
        assert_eq!(excerpt(" \n"), None);
        assert_eq!(
            excerpt("<html>\n <b>x</b>").as_deref(),
            Some("<html> <b>x</b>")
        );
        assert!(excerpt(&"a".repeat(500)).is_some_and(|e| e.chars().count() == 121));
    }
}

/// A fake HTTP server for the collectors' unit tests: it answers each request whose path (with
/// its query) starts with a route's prefix with that route's status and body, 404 otherwise,
/// and remembers the `Authorization` headers it saw.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// One route: path prefix, status line code, body.
    pub(crate) type Route = (&'static str, u16, String);

    /// A running fake server.
    pub(crate) struct Fake {
        /// `http://127.0.0.1:PORT`.
        pub base: String,
        /// The `Authorization` header of each request (empty when none).
        pub auth: Arc<Mutex<Vec<String>>>,
    }

    /// Serve `routes` on a free loopback port until the test's runtime ends.
    pub(crate) async fn serve(routes: Vec<Route>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let auth = Arc::new(Mutex::new(Vec::new()));
        let seen = auth.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let routes = routes.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let authorization = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("authorization")
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    if let Ok(mut a) = seen.lock() {
                        a.push(authorization);
                    }
                    let (status, body) = routes
                        .iter()
                        .find(|(prefix, _, _)| path.starts_with(prefix))
                        .map_or((404, "not found".to_owned()), |(_, s, b)| (*s, b.clone()));
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\nServer: fake/1.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        Fake {
            base: format!("http://127.0.0.1:{port}"),
            auth,
        }
    }
}
