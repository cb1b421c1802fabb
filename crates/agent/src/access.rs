//! Who may use the local API, and for what.
//!
//! * **The token** grants everything. The operator sets it (`api.token`), or the agent makes a
//!   random one at each start; either way it is written to `<data_dir>/api.token` with mode 0600,
//!   so exactly the users who can read the agent's data (root, for a system agent) can use it.
//!   The CLI finds it there (see `opsbro_cli::client`).
//! * **Without the token**, a caller gets the read-only routes listed in [`is_public_read`]
//!   (cluster state, checks, collectors, metrics: what `ps`, `dig` or Grafana show anyway) when
//!   the API listens on loopback and `api.anonymous_reads` is not turned off. Everything that
//!   changes something, the KV store (its values may be secrets) and the evaluator (it can read
//!   files) need the token.
//! * **Browsers**: a request whose `Host` is a name other than `localhost`, this host's names or
//!   `api.allowed_hosts` is refused (DNS rebinding: a page on any site resolving its own name to
//!   127.0.0.1), and so is a request with an `Origin` other than the agent's own (a page posting
//!   `text/plain` to `/agent/stop` without a preflight).

use std::net::IpAddr;

use axum::http::{HeaderMap, Method, header};

/// The access rules of one agent.
#[derive(Debug, Clone)]
pub struct Access {
    /// The token that grants everything.
    pub token: String,
    /// Where the token is written (shown to clients so the CLI can find it).
    pub token_file: String,
    /// Whether callers without the token may use the read-only routes.
    pub anonymous_reads: bool,
    /// Names (lowercase) accepted in `Host` besides IP addresses and `localhost`.
    pub host_names: Vec<String>,
}

/// Why a request is refused before routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: a `Host` or `Origin` that is not this agent.
    Forbidden(String),
    /// 401: the route needs the token.
    Unauthorized(String),
}

impl Access {
    /// Check a request: its `Host` and `Origin`, then its token against the route.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        if let Some(host) = &host
            && !self.host_allowed(host)
        {
            return Err(Refusal::Forbidden(format!(
                "Host `{host}` is not this agent's name (DNS rebinding?): use an IP address or \
                 localhost, or add the name to api.allowed_hosts"
            )));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            if authority.is_none() || authority != host.as_deref() {
                return Err(Refusal::Forbidden(format!(
                    "cross-origin request from `{origin}` refused: the API serves its own pages only"
                )));
            }
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(t) if self.token_matches(t) => Ok(()),
            Some(_) => Err(Refusal::Unauthorized("invalid API token".into())),
            None if !self.route_needs_token(method, path) => Ok(()),
            None => Err(Refusal::Unauthorized(format!(
                "this route needs the API token: run the CLI as a user who can read {} (root \
                 for a system agent), or pass --token / OPSBRO_API_TOKEN (HTTP: `Authorization: \
                 Bearer <token>`)",
                self.token_file
            ))),
        }
    }

    /// Whether a caller without the token is refused `method path` (`GET /api` shows it).
    pub fn needs_token(&self, method: &str, path: &str) -> bool {
        Method::from_bytes(method.as_bytes()).map_or(true, |m| self.route_needs_token(&m, path))
    }

    fn route_needs_token(&self, method: &Method, path: &str) -> bool {
        let get = method == Method::GET || method == Method::HEAD;
        !(path == opsbro_api::routes::AGENT_AUTH
            || (get && is_ui_asset(path))
            || (self.anonymous_reads && is_public_read(method, path)))
    }

    /// Whether `given` is the token (compared in constant time).
    pub fn token_matches(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.token.as_bytes())
    }

    /// IP literals, `localhost` and the configured names (port and trailing dot ignored).
    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => match host.rsplit_once(':') {
                Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
                _ => host,
            },
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.host_names.iter().any(|h| h == name)
    }
}

/// Routes a caller without the token may use (read-only; no KV, no evaluator, no change).
pub fn is_public_read(method: &Method, path: &str) -> bool {
    use opsbro_api::{collectors, detectors, evaluator, gossip as g, metrics, monitoring, routes};
    let get = method == Method::GET || method == Method::HEAD;
    let exact = [
        routes::INDEX,
        routes::API,
        // The web UI's event stream leaves the private channels out for a caller without the
        // token (its page and files are open to all: see `is_ui_asset`).
        opsbro_api::ui::EVENTS,
        routes::AGENT_STATE,
        routes::AGENT_INFO,
        routes::METRICS,
        g::MEMBERS,
        g::HISTORY,
        g::EVENTS,
        g::KEYRING,
        evaluator::LIST,
        detectors::STATE,
        detectors::HISTORY,
        detectors::PACKS,
        opsbro_api::dashboards::ALL,
        opsbro_api::dashboards::TUTORIALS,
        collectors::ALL,
        collectors::HISTORY,
        monitoring::STATE,
        monitoring::HISTORY,
        monitoring::HANDLERS,
        metrics::INDEX,
        metrics::FUNCTIONS,
        metrics::TAGS,
        metrics::VERSION,
        opsbro_api::generators::STATE,
        opsbro_api::generators::HISTORY,
        // What `docker ps` and `docker stats` show (collector.docker is public too); one
        // container's inspect is not: its environment may hold secrets.
        opsbro_api::docker::SUMMARY,
        opsbro_api::docker::CONTAINERS,
        opsbro_api::docker::IMAGES,
        opsbro_api::docker::STATS,
        // Who leads and who holds which lock (as `consul members`/`operator raft` show).
        opsbro_api::raft::STATE,
        opsbro_api::raft::LOCKS,
        opsbro_api::raft::ELECTIONS,
    ];
    let prefixes = [
        "/agent/ping/",
        "/collectors/",
        "/monitoring/state/",
        "/dashboards/",
        "/locks/",
    ];
    // Grafana sends its queries as POST forms: still reads.
    let query = [
        metrics::RENDER,
        metrics::FIND,
        metrics::TAGS_COMPLETE_TAGS,
        metrics::TAGS_COMPLETE_VALUES,
    ];
    (get && (exact.contains(&path) || prefixes.iter().any(|p| path.starts_with(p))))
        || ((get || method == Method::POST) && query.contains(&path))
}

/// The web UI's files: readable without the token even when anonymous reads are off (the
/// page must load to ask for the token).
fn is_ui_asset(path: &str) -> bool {
    path == opsbro_api::ui::ROOT
        || path == opsbro_api::ui::INDEX
        || path == opsbro_api::ui::ASSET
        || path.starts_with("/ui/v/")
}

/// Compare without an early exit so the time taken does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token (32 bytes, hex).
pub fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    if opsbro_transport::system_random().fill(&mut bytes).is_err() {
        // Without an OS random source nothing secure can run.
        panic!("the OS random number generator failed");
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn access() -> Access {
        Access {
            token: "t0k3n".into(),
            token_file: "/var/lib/opsbro/api.token".into(),
            anonymous_reads: true,
            host_names: vec!["web-1".into()],
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn reads_are_open_and_everything_else_needs_the_token() {
        let a = access();
        let local = headers(&[("host", "127.0.0.1:6770")]);
        assert_eq!(a.check(&Method::GET, "/agent/members", &local), Ok(()));
        assert_eq!(a.check(&Method::POST, "/render", &local), Ok(()));
        for (m, p) in [
            (Method::POST, "/agent/stop"),
            (Method::POST, "/agent/evaluator/eval"),
            (Method::GET, "/kv/secret"),
            (Method::GET, "/kv/"),
            (Method::PUT, "/agent/groups/web"),
            (Method::POST, "/agent/keyring"),
        ] {
            assert!(
                matches!(a.check(&m, p, &local), Err(Refusal::Unauthorized(_))),
                "{m} {p}"
            );
        }
        let with = headers(&[
            ("host", "127.0.0.1:6770"),
            ("authorization", "Bearer t0k3n"),
        ]);
        assert_eq!(a.check(&Method::POST, "/agent/stop", &with), Ok(()));
        let wrong = headers(&[("host", "127.0.0.1:6770"), ("authorization", "Bearer nope")]);
        assert_eq!(
            a.check(&Method::GET, "/agent/members", &wrong),
            Err(Refusal::Unauthorized("invalid API token".into()))
        );
        let closed = Access {
            anonymous_reads: false,
            ..access()
        };
        assert!(
            closed
                .check(&Method::GET, "/agent/members", &local)
                .is_err()
        );
        assert_eq!(closed.check(&Method::GET, "/agent/auth", &local), Ok(()));
    }

    /// `GET /api` tells which routes need the token, with the rule `check` applies.
    #[test]
    fn the_route_list_and_the_check_agree_on_the_token() {
        let a = access();
        let local = headers(&[("host", "127.0.0.1:6770")]);
        for r in opsbro_api::ROUTES {
            let method = Method::from_bytes(r.method.as_bytes()).expect("method");
            let refused = matches!(
                a.check(&method, r.path, &local),
                Err(Refusal::Unauthorized(_))
            );
            assert_eq!(a.needs_token(r.method, r.path), refused, "{r:?}");
        }
        for open in [
            "/",
            "/api",
            "/agent/detectors/history",
            "/agent/collectors/history",
        ] {
            assert!(!a.needs_token("GET", open), "{open}");
        }
        assert!(a.needs_token("POST", "/collectors/{name}/run"));
        let closed = Access {
            anonymous_reads: false,
            ..access()
        };
        assert!(closed.needs_token("GET", "/api"));
        // The page must load to ask for the token; its data and events still need it.
        for open in ["/ui", "/ui/", "/ui/v/0123/app.js"] {
            assert!(!closed.needs_token("GET", open), "{open}");
        }
        assert!(closed.needs_token("GET", "/ui/events"));
        assert!(closed.needs_token("POST", "/ui/"));
        assert!(!closed.needs_token("GET", "/agent/auth"));
    }

    #[test]
    fn foreign_hosts_and_origins_are_refused() {
        let a = access();
        for host in [
            "127.0.0.1:6770",
            "[::1]:6770",
            "localhost:6770",
            "web-1:6770",
            "WEB-1.",
        ] {
            assert_eq!(
                a.check(&Method::GET, "/agent/info", &headers(&[("host", host)])),
                Ok(()),
                "{host}"
            );
        }
        // DNS rebinding: the page's own name, now resolving to 127.0.0.1.
        assert!(matches!(
            a.check(
                &Method::GET,
                "/agent/info",
                &headers(&[("host", "evil.example:6770")])
            ),
            Err(Refusal::Forbidden(_))
        ));
        // A page elsewhere posting to the agent, even with the right Host.
        let csrf = headers(&[
            ("host", "127.0.0.1:6770"),
            ("origin", "http://evil.example"),
            ("authorization", "Bearer t0k3n"),
        ]);
        assert!(matches!(
            a.check(&Method::POST, "/agent/stop", &csrf),
            Err(Refusal::Forbidden(_))
        ));
        let null = headers(&[("host", "127.0.0.1:6770"), ("origin", "null")]);
        assert!(a.check(&Method::GET, "/agent/info", &null).is_err());
        let same = headers(&[
            ("host", "127.0.0.1:6770"),
            ("origin", "http://127.0.0.1:6770"),
        ]);
        assert_eq!(a.check(&Method::GET, "/agent/info", &same), Ok(()));
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }
}
