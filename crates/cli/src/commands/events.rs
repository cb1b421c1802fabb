//! `opsbro events watch`: follow the agent's websocket event stream.

use futures_util::{SinkExt, StreamExt};
use opsbro_api::AgentInfo;
use opsbro_api::routes::AGENT_INFO;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::client::Client;
use crate::commands::gossip::format_time;
use crate::error::CliError;

/// One line for a person (a frame this CLI does not know, from a newer agent, as it came).
fn describe(text: &str) -> String {
    use opsbro_api::events::{Frame, GroupAction, Payload};
    let Ok(frame) = serde_json::from_str::<Frame>(text) else {
        return text.to_owned();
    };
    let what = match &frame.event {
        Payload::Node(n) => format!("{} {} → {} ({})", n.name, n.old_state, n.state, n.addr),
        Payload::Group(g) => format!(
            "group {} {}",
            g.group,
            match g.action {
                GroupAction::Add => "added",
                GroupAction::Remove => "removed",
            }
        ),
        Payload::Check(c) => format!("{} {} → {}: {}", c.name, c.old_state, c.state, c.output),
        Payload::Kv(k) => format!(
            "{} {} (modify_index {})",
            k.key,
            serde_json::to_value(k.action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            k.modify_index
        ),
        Payload::Event(e) => format!("{} from {}: {}", e.kind, e.origin, e.payload),
        Payload::Compliance(c) => format!(
            "{} ({}) {} → {}",
            c.display_name, c.name, c.old_state, c.state
        ),
        Payload::Service(s) => format!("{} on {} {} → {}", s.service, s.node, s.old_state, s.state),
        Payload::Exec(x) => format!(
            "{} {} {} by {}: {}{}",
            x.role,
            x.id,
            x.state,
            x.requester,
            x.command,
            x.rc.map(|rc| format!(" (rc={rc})")).unwrap_or_default()
        ),
        Payload::Raft(r) if r.token > 0 => {
            format!("{} {} by {} (token {})", r.kind, r.name, r.node, r.token)
        }
        Payload::Raft(r) => format!("{} {} {}", r.kind, r.name, r.node),
        Payload::Docker(d) => {
            let exit = d
                .attributes
                .get("exitCode")
                .map(|c| format!(" (exit code {c})"))
                .unwrap_or_default();
            let short: String = d.id.chars().take(12).collect();
            let what = if d.name.is_empty() {
                short
            } else {
                d.name.clone()
            };
            let image = if d.image.is_empty() || d.kind != "container" {
                String::new()
            } else {
                format!(" [{}]", d.image)
            };
            format!("{} {what}{image} {}{exit}", d.kind, d.action)
        }
    };
    format!(
        "{} [{}] {what}",
        format_time(frame.time_ms),
        frame.event.channel()
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
                    println!("{}", describe(&text));
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

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn frames_read_as_one_line_and_unknown_ones_stay_as_they_came() {
        let line =
            describe(r#"{"channel":"group","time_ms":0,"payload":{"group":"web","action":"add"}}"#);
        assert_eq!(line, "1970-01-01 00:00:00 [group] group web added");
        let newer = r#"{"channel":"service","time_ms":0,"payload":{}}"#;
        assert_eq!(describe(newer), newer);
        let docker = describe(
            r#"{"channel":"docker","time_ms":0,"payload":{"kind":"container","action":"die","id":"03ab402dda05","name":"web","image":"bb","attributes":{"exitCode":"137"},"daemon_time_ms":0}}"#,
        );
        assert_eq!(
            docker,
            "1970-01-01 00:00:00 [docker] container web [bb] die (exit code 137)"
        );
    }
}
