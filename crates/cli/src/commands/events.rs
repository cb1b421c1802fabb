//! `opsbro events watch`: follow the agent's websocket event stream.

use futures_util::{SinkExt, StreamExt};
use opsbro_api::AgentInfo;
use opsbro_api::routes::AGENT_INFO;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::client::Client;
use crate::commands::gossip::format_time;
use crate::error::CliError;

/// One line for a person.
fn describe(frame: &Value) -> String {
    let p = &frame["payload"];
    let s = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
    let what = match frame["channel"].as_str().unwrap_or_default() {
        "node" => format!(
            "{} {} → {} ({})",
            s("name"),
            s("old_state"),
            s("state"),
            s("addr")
        ),
        "group" => format!(
            "group {} {}",
            s("group"),
            if s("action") == "add" {
                "added"
            } else {
                "removed"
            }
        ),
        "check" => format!(
            "{} {} → {}: {}",
            s("name"),
            s("old_state"),
            s("state"),
            s("output")
        ),
        "kv" => format!(
            "{} {} (modify_index {})",
            s("key"),
            s("action"),
            p["modify_index"]
        ),
        "event" => format!("{} from {}: {}", s("type"), s("origin"), s("payload")),
        other => format!("{other}: {p}"),
    };
    format!(
        "{} [{}] {what}",
        format_time(frame["time_ms"].as_u64().unwrap_or(0)),
        frame["channel"].as_str().unwrap_or("?")
    )
}

/// `events watch`.
pub async fn watch(
    client: &Client,
    url: Option<String>,
    channels: Vec<String>,
    json: bool,
    count: Option<u64>,
) -> Result<(), CliError> {
    let base = match url {
        Some(u) => u,
        None => {
            let info: AgentInfo = client.get(AGENT_INFO).await?;
            let addr = info.websocket.addr.ok_or_else(|| {
                CliError::Usage(
                    "the agent does not serve the event stream: set `websocket: {enabled: true}` \
                     in its configuration"
                        .into(),
                )
            })?;
            format!("ws://{addr}/")
        }
    };
    let url = if channels.is_empty() {
        base
    } else {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}channels={}", channels.join(","))
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| CliError::Usage(format!("{url}: {e}")))?;
    // Anonymous local readers get every channel but `kv`: send the token when we may read it.
    client.find_token().await;
    if let Some(t) = client.token() {
        let value = format!("Bearer {t}")
            .parse()
            .map_err(|_| CliError::Usage("the token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => CliError::Api {
                addr: url.clone(),
                status: r.status().as_u16(),
                message: r
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            },
            other => CliError::Other(anyhow::anyhow!("cannot open {url}: {other}")),
        })?;
    let mut seen = 0u64;
    while let Some(message) = ws.next().await {
        match message.map_err(|e| CliError::Other(anyhow::anyhow!("event stream: {e}")))? {
            Message::Text(text) => {
                if json {
                    println!("{text}");
                } else {
                    let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    println!("{}", describe(&frame));
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    let _ = ws.send(Message::Close(None)).await;
                    return Ok(());
                }
            }
            Message::Close(_) => break,
            // Pings are answered by tungstenite itself.
            _ => {}
        }
    }
    Err(CliError::Negative(
        "the agent closed the event stream".into(),
    ))
}
