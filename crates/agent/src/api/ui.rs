//! The web UI (`/ui/`): a handful of static files compiled into the binary, and the event
//! stream the page follows (`/ui/events`, Server-Sent Events).
//!
//! * **Assets** live in `crates/agent/ui/` (plain ES modules and CSS, uPlot vendored with its
//!   licence) and are embedded with `include_bytes!`: nothing to install, nothing fetched from
//!   elsewhere. `index.html` is served with `no-cache` and names the other files under
//!   `/ui/v/<hash>/`, where `<hash>` is a digest of every asset: those answers are `immutable`
//!   (a new binary has a new hash, so a browser never mixes versions). Every answer carries a
//!   strict Content-Security-Policy (no inline script or style, no other origin).
//! * **The event stream** is served here on the API listener rather than through the websocket
//!   port: a page can send `Authorization: Bearer` with `fetch()`, which it cannot do when
//!   opening a websocket (the token would have to go in the URL, and end up in logs), and the
//!   page's origin is the API's own, so the Host/Origin rules of [`crate::access`] apply as they
//!   do to every other route. Without the token (anonymous reads) the private channels (`kv`,
//!   `exec`) are left out, as on the websocket stream.
//!
//! Assets are readable without the token (they are the same for everyone); the data routes the
//! page calls keep their own rules.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;

use super::{ApiContext, ApiError};
use crate::events::CHANNELS;

/// The page's policy: its own scripts, styles, images and API only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!("../../ui/", $name)),
        }
    };
}

/// Every file under `/ui/v/<hash>/`.
const ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("pages.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    asset!("uPlot.min.css", "text/css; charset=utf-8"),
    asset!("uPlot.LICENSE", "text/plain; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The page, with `{{V}}` where the asset folder goes.
const INDEX: &str = include_str!("../../ui/index.html");

/// Digest of every asset (FNV-1a, 64 bits): enough to tell versions apart, not a security
/// measure.
fn version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for a in ASSETS {
            for b in a.name.bytes().chain(a.bytes.iter().copied()) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    })
}

fn index_html() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| INDEX.replace("{{V}}", version()))
}

/// Headers every UI answer carries.
fn secured(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /ui`: to `/ui/` (relative URLs in the page need the slash).
pub async fn redirect() -> Response {
    secured((StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/ui/")]).into_response())
}

/// `GET /ui/`: the page.
pub async fn index() -> Response {
    secured(
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            index_html(),
        )
            .into_response(),
    )
}

/// `GET /ui/{*path}`: `v/<hash>/<file>` (immutable), anything else is 404.
pub async fn asset(Path(path): Path<String>) -> Response {
    let found = path
        .strip_prefix("v/")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(v, _)| *v == version())
        .and_then(|(_, name)| ASSETS.iter().find(|a| a.name == name));
    let response = match found {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.bytes,
        )
            .into_response(),
        // An old page asking for the assets of a previous binary: reloading gets the new one.
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no UI file `/ui/{path}` in this agent (version {}): reload /ui/",
                version()
            ),
        )
        .into_response(),
    };
    secured(response)
}

/// While nothing happens, a comment line this often: a reader that went away is noticed when
/// the write fails, and proxies do not close an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Most event streams at once (each holds an API connection).
const MAX_STREAMS: usize = 64;

static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Counts one open stream; dropped with the stream.
struct StreamSlot;

impl StreamSlot {
    fn take() -> Option<StreamSlot> {
        STREAMS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `?channels=node,check`.
#[derive(Debug, serde::Deserialize)]
pub struct EventsQuery {
    /// Comma-separated channel names (default: every channel the caller may see).
    pub channels: Option<String>,
}

/// Which channels a caller gets: the ones asked for (all by default), less the private ones
/// without the token.
fn wanted_channels(asked: Option<&str>, with_token: bool) -> Result<Vec<&'static str>, String> {
    let mut wanted = match asked {
        None => CHANNELS.to_vec(),
        Some(list) => {
            let mut wanted = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match CHANNELS.iter().find(|c| **c == name) {
                    Some(c) => wanted.push(*c),
                    None => {
                        return Err(format!(
                            "unknown channel `{name}` (channels: {})",
                            CHANNELS.join(", ")
                        ));
                    }
                }
            }
            wanted
        }
    };
    if !with_token {
        wanted.retain(|c| !crate::websocket::PRIVATE.contains(c));
    }
    Ok(wanted)
}

/// One SSE message: `event: <channel>` and the websocket stream's JSON frame as data.
fn sse_message(channel: &str, json: &str) -> Vec<u8> {
    // serde_json never writes a raw newline inside a JSON text: one `data:` line is enough.
    format!("event: {channel}\ndata: {json}\n\n").into_bytes()
}

/// `GET /ui/events`: the event bus as Server-Sent Events until the client goes away or the
/// agent stops. The first message (`event: hello`) tells the channels sent.
pub async fn events(
    State(ctx): State<Arc<ApiContext>>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let with_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| ctx.access.token_matches(t.trim()));
    let wanted = wanted_channels(query.channels.as_deref(), with_token)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let slot = StreamSlot::take().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many event streams open (at most {MAX_STREAMS}): close a UI tab"),
        )
    })?;
    let events = ctx.bus.subscribe();
    let stop = ctx.shutdown.clone();
    let bus = ctx.bus.clone();
    let hello = serde_json::json!({ "channels": wanted, "with_token": with_token }).to_string();
    let first = sse_message("hello", &hello);
    let state = (events, stop, wanted, slot, Some(first));
    let stream = futures_util::stream::unfold(state, move |mut state| {
        let bus = bus.clone();
        async move {
            let (events, stop, wanted, _slot, first) = &mut state;
            if let Some(first) = first.take() {
                return Some((Ok::<_, Infallible>(first), state));
            }
            let chunk = loop {
                let received = tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(KEEPALIVE) => break b": keepalive\n\n".to_vec(),
                    r = events.recv() => r,
                };
                match received {
                    Ok(event) if wanted.contains(&event.channel()) => {
                        let json = serde_json::to_string(&event.frame()).unwrap_or_default();
                        break sse_message(event.channel(), &json);
                    }
                    Ok(_) => {}
                    // The page reloads what it shows when told it missed events.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        bus.record_dropped(n);
                        break sse_message("lagged", &format!("{{\"missed\":{n}}}"));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            };
            Some((Ok(chunk), state))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_existing_assets_under_the_version() {
        let page = index_html();
        assert!(!page.contains("{{V}}"));
        let prefix = format!("v/{}/", version());
        let mut named = 0;
        for part in page.split(&prefix).skip(1) {
            let name = part.split('"').next().unwrap_or("");
            assert!(ASSETS.iter().any(|a| a.name == name), "{name}");
            named += 1;
        }
        assert!(named >= 3, "{page}");
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let page = index_html();
        assert!(!page.contains("<script>"), "inline script");
        assert!(!page.contains("<style"), "inline style");
        assert!(!page.contains(" style="), "style attribute");
        for handler in [
            "onclick=",
            "onload=",
            "onerror=",
            "onsubmit=",
            "javascript:",
        ] {
            assert!(!page.contains(handler), "inline handler {handler}");
        }
    }

    #[test]
    fn the_page_weighs_under_250_kb() {
        let total: usize = index_html().len() + ASSETS.iter().map(|a| a.bytes.len()).sum::<usize>();
        assert!(total <= 250 * 1024, "{total} bytes");
    }

    #[test]
    fn private_channels_need_the_token() {
        let anonymous = wanted_channels(None, false).expect("all");
        assert!(!anonymous.contains(&"kv") && anonymous.contains(&"node"));
        assert!(wanted_channels(None, true).expect("all").contains(&"kv"));
        assert_eq!(
            wanted_channels(Some("kv,check"), false).expect("some"),
            vec!["check"]
        );
        assert!(
            wanted_channels(Some("nope"), true)
                .expect_err("unknown")
                .contains("unknown channel `nope`")
        );
    }

    #[test]
    fn sse_messages_are_one_event_each() {
        assert_eq!(
            sse_message("node", "{\"a\":1}"),
            b"event: node\ndata: {\"a\":1}\n\n".to_vec()
        );
    }
}
