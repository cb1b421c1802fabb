//! A small client for the agent's local HTTP API, speaking the shapes of `opsbro-api`.
//!
//! **The token.** Routes that change something (and the KV store, and the evaluator) need the
//! agent's API token. The client sends `--token` / `OPSBRO_API_TOKEN` when given, else the
//! contents of `--token-file` / `OPSBRO_API_TOKEN_FILE`. Without either, when the agent answers
//! 401 the client asks it where its token file is (`GET /agent/auth`) and reads it — as root,
//! or as the user the agent runs as, nobody else can — then retries once. It sends a token read
//! that way only to an agent on this host whose listening socket belongs to the owner of the
//! token file (checked in /proc/net/tcp): a process of another user that took the API port while
//! the agent was down never gets it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opsbro_api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::CliError;

/// Talks to one agent.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    addr: String,
    /// The token to send (given, or found in the agent's token file).
    token: Arc<Mutex<Option<String>>>,
    /// Whether the user gave the token (then it is never looked up).
    explicit: bool,
    http: reqwest::Client,
}

impl Client {
    /// A client for `api` (`host:port`, `host`, or `http://host:port`).
    pub fn new(api: &str, token: Option<String>) -> Result<Client, CliError> {
        // reqwest is built with rustls and no default provider (ring, never aws-lc).
        opsbro_agent::install_tls_provider();
        let trimmed = api.trim().trim_end_matches('/');
        let without_scheme = trimmed.strip_prefix("http://").unwrap_or(trimmed);
        if without_scheme.starts_with("https://") || without_scheme.is_empty() {
            return Err(CliError::Usage(format!(
                "--api `{api}`: expected host:port or http://host:port"
            )));
        }
        let addr = if has_port(without_scheme) {
            without_scheme.to_owned()
        } else {
            format!("{without_scheme}:{}", opsbro_config::DEFAULT_API_PORT)
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| CliError::Other(e.into()))?;
        Ok(Client {
            base: format!("http://{addr}"),
            addr,
            explicit: token.is_some(),
            token: Arc::new(Mutex::new(token)),
            http,
        })
    }

    /// A client that reads its token from `file` (`--token-file`) unless one is given.
    pub fn with_token_file(
        api: &str,
        token: Option<String>,
        file: Option<&std::path::Path>,
    ) -> Result<Client, CliError> {
        let token = match (token, file) {
            (Some(t), _) => Some(t),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| {
                        CliError::Usage(format!("cannot read the token file {}: {e}", f.display()))
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        Client::new(api, token)
    }

    /// The token the client sends, if it has one (given or found).
    pub fn token(&self) -> Option<String> {
        self.token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Look the token up now when none was given (as a 401 would), for a caller that is served
    /// less without it rather than refused (the event stream's `kv` channel). Without access to
    /// the token file the client stays anonymous.
    pub async fn find_token(&self) {
        if !self.explicit && self.token().is_none() {
            let _ = self.discover_token().await;
        }
    }

    /// The host:port this client talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET path` decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::GET, path).await
    }

    /// `POST path` (no body) decoded as `T`.
    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::POST, path).await
    }

    /// `PUT path` (no body) decoded as `T`.
    pub async fn put<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::PUT, path).await
    }

    /// `DELETE path` decoded as `T`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::DELETE, path).await
    }

    /// `POST path` with a JSON body, decoded as `T`.
    pub async fn post_json<T: DeserializeOwned, B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        let body = serde_json::to_vec(body).map_err(|e| CliError::Other(e.into()))?;
        self.send(Method::POST, path, Some(body)).await
    }

    /// `PUT path` with a JSON body, decoded as `T`.
    pub async fn put_json<T: DeserializeOwned, B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        let body = serde_json::to_vec(body).map_err(|e| CliError::Other(e.into()))?;
        self.send(Method::PUT, path, Some(body)).await
    }

    /// `PUT path` with raw bytes as the body, decoded as `T`.
    pub async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, CliError> {
        let bytes = self
            .send_raw(Method::PUT, path, Some(("application/octet-stream", body)))
            .await?;
        self.decode(&bytes)
    }

    /// `POST path` with a body of `content_type`, decoded as `T`.
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<T, CliError> {
        let bytes = self
            .send_raw(Method::POST, path, Some((content_type, body)))
            .await?;
        self.decode(&bytes)
    }

    /// `GET path`, the answer's bytes as they are.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, CliError> {
        self.send_raw(Method::GET, path, None).await
    }

    /// `GET path` for an answer that does not end (`agent log follow`): the response once its
    /// status is a success, for the caller to read chunk by chunk, with no overall time limit.
    pub async fn get_stream(&self, path: &str) -> Result<reqwest::Response, CliError> {
        self.stream(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, for an answer read as it comes (`executors exec`).
    pub async fn post_stream<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<reqwest::Response, CliError> {
        let body = serde_json::to_vec(body).map_err(|e| CliError::Other(e.into()))?;
        self.stream(Method::POST, path, Some(body)).await
    }

    async fn stream(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| CliError::Other(e.into()))?;
        let url = format!("{}{path}", self.base);
        let send = || async {
            let mut request = http.request(method.clone(), &url);
            if let Some(body) = &body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            if let Some(token) = self.token() {
                request = request.bearer_auth(token);
            }
            request.send().await.map_err(|e| self.transport_error(e))
        };
        let mut response = send().await?;
        // As in `send_raw`: a 401 means look the token up and try once more.
        let mut why = None;
        if response.status() == StatusCode::UNAUTHORIZED && !self.explicit && self.token().is_none()
        {
            match self.discover_token().await {
                Ok(()) => response = send().await?,
                Err(w) => why = Some(w),
            }
        }
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        let message = error_message(&bytes);
        Err(CliError::Api {
            addr: self.addr.clone(),
            status: status.as_u16(),
            message: match why {
                Some(w) => format!("{message} ({w})"),
                None => message,
            },
        })
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str) -> Result<T, CliError> {
        self.send(method, path, None).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, CliError> {
        let bytes = self
            .send_raw(method, path, body.map(|b| ("application/json", b)))
            .await?;
        self.decode(&bytes)
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CliError> {
        serde_json::from_slice(bytes).map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "the agent at {} sent an answer this CLI does not understand ({e}); are the CLI and agent the same version?",
                self.addr
            ))
        })
    }

    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Vec<u8>, CliError> {
        let (status, bytes) = self.attempt(method.clone(), path, body.clone()).await?;
        // A 401 is refused before anything happened: look the token up, then try again once.
        let (status, bytes) =
            if status == StatusCode::UNAUTHORIZED && !self.explicit && self.token().is_none() {
                match self.discover_token().await {
                    Ok(()) => self.attempt(method, path, body).await?,
                    Err(why) => {
                        let message = error_message(&bytes);
                        return Err(CliError::Api {
                            addr: self.addr.clone(),
                            status: status.as_u16(),
                            message: format!("{message} ({why})"),
                        });
                    }
                }
            } else {
                (status, bytes)
            };
        if status.is_success() {
            return Ok(bytes);
        }
        Err(CliError::Api {
            addr: self.addr.clone(),
            status: status.as_u16(),
            message: error_message(&bytes),
        })
    }

    async fn attempt(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, Vec<u8>), CliError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(body);
        }
        if let Some(token) = self.token() {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        Ok((status, bytes.to_vec()))
    }

    /// Find the agent's token file and read it, if this user may and the agent is who it
    /// says (see the module docs). The error says what to do instead.
    async fn discover_token(&self) -> Result<(), String> {
        const HOW: &str = "pass --token or OPSBRO_API_TOKEN";
        let (status, bytes) = self
            .attempt(Method::GET, opsbro_api::routes::AGENT_AUTH, None)
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(HOW.into());
        }
        let info: opsbro_api::AuthInfo =
            serde_json::from_slice(&bytes).map_err(|_| HOW.to_owned())?;
        // Only for an agent on this host (`localhost:6770` too): the address the name gives here.
        let addr: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&self.addr)
            .ok()
            .and_then(|mut addrs| addrs.find(|a| a.ip().is_loopback()))
            .or_else(|| self.addr.parse().ok())
            .filter(|a: &std::net::SocketAddr| {
                a.ip().is_loopback() || opsbro_agent::host::interface_addrs().contains(&a.ip())
            })
            .ok_or_else(|| format!("the agent at {} is not on this host: {HOW}", self.addr))?;
        let Some(listener) = listener_uid(addr) else {
            return Err(format!(
                "no listening socket for {addr} on this host: {HOW}"
            ));
        };
        let path = std::path::Path::new(&info.token_file);
        let token = read_token_owned_by(path, listener).map_err(|e| format!("{e}: {HOW}"))?;
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) = Some(token);
        Ok(())
    }

    fn transport_error(&self, e: reqwest::Error) -> CliError {
        if e.is_timeout() && !e.is_connect() {
            return CliError::Other(anyhow::anyhow!(
                "the agent at {} accepted the request but did not answer in time",
                self.addr
            ));
        }
        if e.is_connect() || e.is_timeout() || e.is_request() {
            CliError::Unreachable {
                addr: self.addr.clone(),
            }
        } else {
            CliError::Other(anyhow::anyhow!(
                "talking to the agent at {}: {e}",
                self.addr
            ))
        }
    }
}

/// Read the token at `path` if it is a small regular file owned by `uid` (the owner of the
/// listening socket). The file is opened once (without blocking: the agent names the path, and a
/// FIFO must not hang us) and everything is checked on that open file, so it cannot be swapped
/// between the check and the read.
fn read_token_owned_by(path: &std::path::Path, uid: u32) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let nonblock = i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nonblock)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                format!("{} is not readable by this user", path.display())
            }
            _ => format!("cannot read {}: {e}", path.display()),
        })?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.len() > 4096 {
        return Err(format!("{} is not a token file", path.display()));
    }
    if meta.uid() != uid {
        return Err(format!(
            "the process listening on the API port runs as uid {uid}, not as the owner of {} \
             (uid {}): not sending it the token",
            path.display(),
            meta.uid()
        ));
    }
    let mut text = String::new();
    file.by_ref()
        .take(4096)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text.trim().to_owned())
}

fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(bytes)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).trim().to_owned())
}

/// The uid owning the TCP socket listening on `addr` on this host (from /proc/net/tcp and
/// tcp6; a wildcard listener on the port counts), if any.
fn listener_uid(addr: std::net::SocketAddr) -> Option<u32> {
    let port = format!("{:04X}", addr.port());
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid ...
            let (Some(local), Some(state), Some(uid)) =
                (fields.get(1), fields.get(3), fields.get(7))
            else {
                continue;
            };
            let Some((ip_hex, port_hex)) = local.split_once(':') else {
                continue;
            };
            if *state != "0A" || port_hex != port {
                continue;
            }
            let matches = match addr.ip() {
                std::net::IpAddr::V4(v4) => {
                    let le = u32::from_le_bytes(v4.octets());
                    ip_hex == format!("{le:08X}") || ip_hex.chars().all(|c| c == '0')
                }
                std::net::IpAddr::V6(v6) => {
                    let words: String = v6
                        .octets()
                        .chunks(4)
                        .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                        .collect();
                    ip_hex == words || ip_hex.chars().all(|c| c == '0')
                }
            };
            if matches {
                return uid.parse().ok();
            }
        }
    }
    None
}

fn has_port(addr: &str) -> bool {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.contains("]:");
    }
    addr.matches(':').count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_listening_socket_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        assert_eq!(
            listener_uid(addr).map(Ok),
            Some(me.map_err(|e| e.to_string()))
        );
        drop(listener);
        assert_eq!(listener_uid(addr), None, "nothing listens there any more");
        let v6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(v6) = v6 {
            assert!(listener_uid(v6.local_addr().expect("addr")).is_some());
        }
    }

    #[test]
    fn api_addresses_are_normalised() {
        let c = |s| Client::new(s, None).expect("valid").addr().to_owned();
        assert_eq!(c("127.0.0.1:7000"), "127.0.0.1:7000");
        assert_eq!(c("http://127.0.0.1:7000/"), "127.0.0.1:7000");
        assert_eq!(c("localhost"), "localhost:6770");
        assert_eq!(c("[::1]:7000"), "[::1]:7000");
        assert!(Client::new("https://x", None).is_err());
    }
}
