//! A client of the Docker Engine API on its unix socket: HTTP/1.1 GETs whose answers are read as
//! `serde_json` values, and the `/events` stream read line by line. Podman's Docker-compatible
//! service (`podman system service`) speaks the same API.
//!
//! Why not `bollard` (the usual Rust client): with its default features off and `pipe` on, it
//! adds four crates (bollard, bollard-stubs — 386 KB of generated models —, hyperlocal,
//! serde_repr) and 21 s of debug build here, and its typed models reject any enum value they do
//! not know: podman's event stream carries `"Type":"pod"` events, which end bollard's event
//! stream with a decode error, and a daemon newer than the models (a new container state, a new
//! event type) would fail a whole listing. A monitoring agent must read what it understands and
//! let the rest through. The API used here is a handful of GETs of JSON; hyper's client (hyper is
//! already in the tree through axum and reqwest) does the HTTP/1.1, chunked bodies included, and
//! no crate is added.
//!
//! Paths are sent without an API version prefix: the daemon then answers in its own current
//! version, which every Docker since 1.x and podman accept (a client pinned to a version newer
//! than the daemon's is refused with 400).

use std::future::Future;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

/// Where the daemon listens when neither the `socket` parameter nor `DOCKER_HOST` say.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The largest answer read (a listing of thousands of containers is a few MB).
const MAX_BODY: usize = 32 << 20;

/// The longest line of the event stream (an event with many labels is a few KB).
const MAX_EVENT_LINE: usize = 256 << 10;

/// Why a request to the daemon failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// Nothing answers on the socket (no such file, connection refused, closed).
    Unreachable(String),
    /// The daemon has no such object (404).
    NotFound(String),
    /// The daemon refused the request.
    Daemon {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The answer is not what the API promises (not JSON, too large).
    Protocol(String),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Unreachable(m) | EngineError::NotFound(m) | EngineError::Protocol(m) => {
                f.write_str(m)
            }
            EngineError::Daemon { status, message } => {
                write!(f, "the Docker daemon answered {status}: {message}")
            }
        }
    }
}

impl std::error::Error for EngineError {}

/// The daemon behind one unix socket. Each request opens its own connection (the daemon is
/// local; a pool would keep sockets open in an agent that asks every 10 s).
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
}

type Connection = hyper::client::conn::http1::Connection<TokioIo<UnixStream>, Empty<Bytes>>;
type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

impl Engine {
    /// The daemon at `socket` (a path; a `unix://` prefix is accepted).
    pub fn new(socket: impl AsRef<str>) -> Engine {
        let s = socket.as_ref();
        Engine {
            socket: PathBuf::from(s.strip_prefix("unix://").unwrap_or(s)),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connect(&self) -> Result<(Sender, Connection), EngineError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            EngineError::Unreachable(format!(
                "cannot connect to the Docker daemon at {}: {e}",
                self.socket.display()
            ))
        })?;
        hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                EngineError::Unreachable(format!(
                    "cannot speak HTTP to the Docker daemon at {}: {e}",
                    self.socket.display()
                ))
            })
    }

    /// Send `GET path` and run `read` on a successful answer, driving the connection meanwhile.
    async fn get<T, F, Fut>(&self, path: &str, read: F) -> Result<T, EngineError>
    where
        F: FnOnce(Incoming) -> Fut,
        Fut: Future<Output = Result<T, EngineError>>,
    {
        let (mut sender, conn) = self.connect().await?;
        let request = Request::get(path)
            // Go's HTTP server refuses HTTP/1.1 without a Host.
            .header(hyper::header::HOST, "docker")
            .header(hyper::header::USER_AGENT, "opsbro")
            .body(Empty::<Bytes>::new())
            .map_err(|e| EngineError::Protocol(format!("bad request path `{path}`: {e}")))?;
        let socket = self.socket.display().to_string();
        let work = async move {
            let answer = sender.send_request(request).await.map_err(|e| {
                EngineError::Unreachable(format!(
                    "the Docker daemon at {socket} did not answer GET {path}: {e}"
                ))
            })?;
            let status = answer.status();
            let body = answer.into_body();
            if !status.is_success() {
                let text = collect(body, 64 << 10).await.unwrap_or_default();
                let message = daemon_message(&text);
                return Err(if status == StatusCode::NOT_FOUND {
                    EngineError::NotFound(message)
                } else {
                    EngineError::Daemon {
                        status: status.as_u16(),
                        message,
                    }
                });
            }
            read(body).await
        };
        let mut work = std::pin::pin!(work);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            biased;
            result = &mut work => result,
            // The connection ended (the daemon closed it after answering, or broke): what was
            // received is still read, a broken answer fails in `work`.
            _ = &mut conn => work.await,
        }
    }

    /// `GET path` → its JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, EngineError> {
        self.get(path, |body| async move {
            let bytes = collect(body, MAX_BODY).await?;
            serde_json::from_slice(&bytes).map_err(|e| {
                EngineError::Protocol(format!(
                    "the Docker daemon sent something that is not JSON for {path}: {e}"
                ))
            })
        })
        .await
    }

    /// Follow `GET /events` (every event from now on): `on_open` once the daemon accepted,
    /// then `on_event` with each JSON line (a line that is not JSON comes as `Value::Null`, for
    /// the caller to count). Returns when the daemon ends the stream (it is stopping); an error
    /// when it cannot be reached or the stream breaks. The caller stops following by dropping
    /// the future.
    pub async fn follow_events(
        &self,
        on_open: impl FnOnce(),
        mut on_event: impl FnMut(Value),
    ) -> Result<(), EngineError> {
        self.get("/events", |mut body| async move {
            on_open();
            let mut pending: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    EngineError::Unreachable(format!("the Docker event stream broke: {e}"))
                })?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = line.trim_ascii();
                    if !line.is_empty() {
                        on_event(serde_json::from_slice(line).unwrap_or(Value::Null));
                    }
                }
                if pending.len() > MAX_EVENT_LINE {
                    return Err(EngineError::Protocol(format!(
                        "the Docker event stream sent a line longer than {MAX_EVENT_LINE} bytes"
                    )));
                }
            }
            Ok(())
        })
        .await
    }
}

/// A body, at most `limit` bytes.
async fn collect(mut body: Incoming, limit: usize) -> Result<Vec<u8>, EngineError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            EngineError::Unreachable(format!("the Docker daemon's answer broke off: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(EngineError::Protocol(format!(
                    "the Docker daemon's answer is larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The daemon's error text: `{"message": "..."}`, else the body as text.
fn daemon_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

/// Whether `id` may go into a request path as a container or image reference: ids, names and
/// `repo:tag@sha256:...` references, nothing that could change the path (`/`, `?`, `%`, `..`).
pub fn valid_reference(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_cannot_change_the_path() {
        assert!(valid_reference("web"));
        assert!(valid_reference(
            "03ab402dda0504606b17ce4c8abbdc76c4612373b82753716034b9d0387e68de"
        ));
        assert!(valid_reference("redis:7.2@sha256:abc"));
        for bad in ["", "../x", "a/b", "x?all=1", "a%2fb", "a b", ".."] {
            assert!(!valid_reference(bad), "{bad}");
        }
    }

    #[test]
    fn daemon_messages_are_read_from_json_or_text() {
        assert_eq!(
            daemon_message(br#"{"message":"No such container: x"}"#),
            "No such container: x"
        );
        assert_eq!(daemon_message(b"page not found\n"), "page not found");
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_with_its_path() {
        let dir = std::env::temp_dir().join(format!("opsbro-no-docker-{}", std::process::id()));
        let engine = Engine::new(format!("unix://{}/docker.sock", dir.display()));
        let e = engine.get_json("/version").await.expect_err("no daemon");
        assert!(matches!(e, EngineError::Unreachable(_)), "{e:?}");
        assert!(e.to_string().contains("docker.sock"), "{e}");
    }
}
