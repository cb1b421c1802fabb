//! `opsbro gossip members|join|leave|history|ping|events|wait-members`.

use std::time::{Duration, Instant};

use opsbro_api::StopAnswer;
use opsbro_api::gossip::{
    self as g, Event, HistoryItem, JoinAnswer, JoinRequest, Member, NewEvent, PingAnswer,
};

use crate::args::MembersFormat;
use crate::client::Client;
use crate::commands::{secs, to_json};
use crate::error::CliError;
use crate::render;

pub(crate) const POLL: Duration = Duration::from_millis(200);

/// `gossip members`.
pub async fn members(
    client: &Client,
    detail: bool,
    json: bool,
    format: MembersFormat,
) -> Result<(), CliError> {
    let members: Vec<Member> = client.get(g::MEMBERS).await?;
    if json {
        println!("{}", to_json(&members)?);
        return Ok(());
    }
    if format == MembersFormat::Dot {
        print!("{}", dot(&members));
        return Ok(());
    }
    let colour = render::use_colour();
    let mut headers = vec!["NAME", "ADDRESS", "STATE", "ZONE", "GROUPS"];
    if detail {
        headers.extend(["UUID", "INCARNATION", "VERSION", "PROXY"]);
    }
    // Grouped by zone (the original's `<zone> > <name>` lines), proxies marked.
    let mut members = members;
    members.sort_by(|a, b| (&a.zone, &a.name).cmp(&(&b.zone, &b.name)));
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let name = if m.is_proxy {
                format!("{} [proxy]", m.name)
            } else {
                m.name.clone()
            };
            let name = if m.display_name != m.name {
                format!("{name} [{}]", m.display_name)
            } else {
                name
            };
            let name = if m.is_self {
                format!("{name} (self)")
            } else {
                name
            };
            let groups = if m.groups.is_empty() {
                "-".to_owned()
            } else {
                m.groups.join(",")
            };
            let state = match &m.maintenance {
                Some(reason) => format!(
                    "{} (maintenance: {reason})",
                    render::member_state(&m.state, colour)
                ),
                None => render::member_state(&m.state, colour),
            };
            let mut row = vec![name, m.addr.to_string(), state, m.zone.clone(), groups];
            if detail {
                row.extend([
                    m.uuid.to_string(),
                    m.incarnation.to_string(),
                    m.version.clone(),
                    if m.is_proxy { "yes" } else { "no" }.to_owned(),
                ]);
            }
            row
        })
        .collect();
    print!("{}", render::table(&headers, &rows));
    Ok(())
}

/// Graphviz picture: one box per zone holding its nodes (coloured by state), group nodes
/// linked to their members.
pub fn dot(members: &[Member]) -> String {
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let quote = |s: &str| format!("\"{}\"", escape(s));
    let mut zones: Vec<&str> = members.iter().map(|m| m.zone.as_str()).collect();
    zones.sort();
    zones.dedup();
    let mut out =
        String::from("digraph opsbro {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for (i, zone) in zones.iter().enumerate() {
        out += &format!(
            "  subgraph cluster_{i} {{\n    label={};\n",
            quote(&format!("zone {zone}"))
        );
        for m in members.iter().filter(|m| m.zone == *zone) {
            let colour = match m.state.as_str() {
                "alive" => "darkgreen",
                "suspect" => "orange",
                "dead" => "red",
                _ => "gray",
            };
            // Each part escaped on its own, then joined with DOT's line break `\n` (written as
            // backslash + n): escaping the joined label turned the breaks into a literal `\n`.
            let label = [m.name.clone(), m.addr.to_string(), m.state.clone()]
                .iter()
                .map(|part| escape(part))
                .collect::<Vec<_>>()
                .join("\\n");
            out += &format!(
                "    {} [label=\"{label}\", color={colour}{}];\n",
                quote(&m.uuid.to_string()),
                if m.is_proxy { ", peripheries=2" } else { "" }
            );
        }
        out += "  }\n";
    }
    let mut groups: Vec<&str> = members
        .iter()
        .flat_map(|m| m.groups.iter().map(String::as_str))
        .collect();
    groups.sort();
    groups.dedup();
    for group in groups {
        out += &format!(
            "  {} [label={}, shape=ellipse];\n",
            quote(&format!("group:{group}")),
            quote(group)
        );
        for m in members
            .iter()
            .filter(|m| m.groups.iter().any(|x| x == group))
        {
            out += &format!(
                "  {} -> {};\n",
                quote(&m.uuid.to_string()),
                quote(&format!("group:{group}"))
            );
        }
    }
    out += "}\n";
    out
}

/// `gossip join`.
pub async fn join(client: &Client, addr: String) -> Result<(), CliError> {
    let answer: JoinAnswer = client
        .post_json(g::JOIN, &JoinRequest { addr: addr.clone() })
        .await?;
    println!(
        "joined {addr} ({}): {} alive members known",
        answer.joined, answer.members
    );
    Ok(())
}

/// `gossip leave [NODE]`.
pub async fn leave(client: &Client, node: Option<String>) -> Result<(), CliError> {
    match node {
        None => {
            let _: StopAnswer = client.post(g::LEAVE).await?;
            println!("this agent is leaving the cluster and stopping");
        }
        Some(node) => {
            let m: Member = client
                .post(&g::LEAVE_NODE.replace("{node}", &encode(&node)))
                .await?;
            println!("{} ({}) is now {}", m.name, m.uuid, m.state);
        }
    }
    Ok(())
}

/// `gossip detect [--auto-join]`: exit 1 when nobody answered.
pub async fn detect(
    client: &Client,
    timeout: f64,
    auto_join: bool,
    json: bool,
) -> Result<(), CliError> {
    let bar = crate::commands::agent::spinner("listening for agents on the LAN");
    let answer: Result<g::DetectAnswer, CliError> = client
        .post_json(
            g::DETECT,
            &g::DetectRequest {
                timeout_secs: timeout,
                auto_join,
            },
        )
        .await;
    bar.finish_and_clear();
    let answer = answer?;
    if json {
        println!("{}", to_json(&answer)?);
    } else if !answer.nodes.is_empty() {
        let rows: Vec<Vec<String>> = answer
            .nodes
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.addr.to_string(),
                    m.zone.clone(),
                    if m.is_proxy { "yes" } else { "no" }.to_owned(),
                    if m.groups.is_empty() {
                        "-".to_owned()
                    } else {
                        m.groups.join(",")
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            render::table(&["NAME", "ADDRESS", "ZONE", "PROXY", "GROUPS"], &rows)
        );
        if let Some(j) = &answer.joined {
            println!("joined {} ({})", j.name, j.addr);
        }
    }
    if answer.nodes.is_empty() {
        return Err(CliError::Other(anyhow::anyhow!(
            "no agent answered within {timeout}s (same LAN, same gossip port, same encryption key?)"
        )));
    }
    Ok(())
}

/// `gossip keyring list|install|use|remove`.
pub async fn keyring(
    client: &Client,
    change: Option<(g::KeyringOp, String)>,
    json: bool,
) -> Result<(), CliError> {
    let ring: g::Keyring = match &change {
        None => client.get(g::KEYRING).await?,
        Some((op, key)) => {
            client
                .post_json(
                    g::KEYRING,
                    &g::KeyringRequest {
                        op: *op,
                        key: key.clone(),
                    },
                )
                .await?
        }
    };
    if json {
        println!("{}", to_json(&ring)?);
        return Ok(());
    }
    if let Some((op, _)) = change {
        println!("{op:?} applied here and sent to every node");
    }
    if !ring.encrypted {
        println!("cluster traffic is not encrypted (no keys)");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = ring
        .keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                if k.primary { "primary" } else { "" }.to_owned(),
            ]
        })
        .collect();
    print!("{}", render::table(&["KEY ID", "ROLE"], &rows));
    Ok(())
}

/// `gossip history`.
pub async fn history(client: &Client, json: bool) -> Result<(), CliError> {
    let items: Vec<HistoryItem> = client.get(g::HISTORY).await?;
    if json {
        println!("{}", to_json(&items)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|h| {
            vec![
                format_time(h.time_ms),
                h.name.clone(),
                format!("{} → {}", h.old.as_deref().unwrap_or("new"), h.new),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(&["TIME (UTC)", "NODE", "CHANGE"], &rows)
    );
    Ok(())
}

/// `gossip ping NODE`: probe the node now; exit 2 unless it is alive and answers.
pub async fn ping(client: &Client, node: String, json: bool) -> Result<(), CliError> {
    let answer: PingAnswer = client
        .get(&g::PING.replace("{node}", &encode(&node)))
        .await?;
    let m = &answer.member;
    if json {
        println!("{}", to_json(&answer)?);
    } else {
        let probe = match answer.rtt_ms {
            Some(rtt) => format!("answered in {rtt} ms"),
            None => "no answer to a probe".to_owned(),
        };
        println!("{} is: {} ({probe})", m.name, m.state);
    }
    if m.state == "alive" && answer.reachable {
        Ok(())
    } else {
        Err(CliError::Negative(format!(
            "{} is {}{}",
            m.name,
            m.state,
            if answer.reachable {
                ""
            } else {
                " and did not answer"
            }
        )))
    }
}

/// `gossip events add`.
pub async fn add_event(client: &Client, kind: String, payload: String) -> Result<(), CliError> {
    let e: Event = client
        .post_json(g::EVENTS, &NewEvent { kind, payload })
        .await?;
    println!("event {} ({}) sent", e.kind, e.id);
    Ok(())
}

/// `gossip events list`.
pub async fn list_events(client: &Client, json: bool) -> Result<(), CliError> {
    let events: Vec<Event> = client.get(g::EVENTS).await?;
    if json {
        println!("{}", to_json(&events)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                format_time(e.created_ms),
                e.kind.clone(),
                e.id.clone(),
                e.payload.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(&["CREATED (UTC)", "TYPE", "ID", "PAYLOAD"], &rows)
    );
    Ok(())
}

/// `gossip events wait TYPE`.
pub async fn wait_event(client: &Client, kind: String, timeout: f64) -> Result<(), CliError> {
    let deadline = Instant::now() + secs(timeout);
    loop {
        let events: Vec<Event> = client.get(g::EVENTS).await?;
        if let Some(e) = events.iter().find(|e| e.kind == kind) {
            println!("event {} received ({})", e.kind, e.id);
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError::Negative(format!(
                "no `{kind}` event within {timeout}s"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What `gossip wait-members` waits for: `count` alive members matching every filter given.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// How many.
    pub count: usize,
    /// Only the member with this name.
    pub name: Option<String>,
    /// Only members with this display name.
    pub display_name: Option<String>,
    /// Only members of this group.
    pub group: Option<String>,
}

impl Wanted {
    /// Whether `m` counts.
    pub fn matches(&self, m: &Member) -> bool {
        m.state == "alive"
            && self.name.as_ref().is_none_or(|n| m.name == *n)
            && self
                .display_name
                .as_ref()
                .is_none_or(|n| m.display_name == *n)
            && self.group.as_ref().is_none_or(|g| m.groups.contains(g))
    }

    /// ` named x in group g` for messages.
    fn describe(&self) -> String {
        let mut out = String::new();
        if let Some(n) = &self.name {
            out += &format!(" named {n}");
        }
        if let Some(n) = &self.display_name {
            out += &format!(" displayed as {n}");
        }
        if let Some(g) = &self.group {
            out += &format!(" in group {g}");
        }
        out
    }
}

/// `gossip wait-members`.
pub async fn wait_members(client: &Client, wanted: &Wanted, timeout: f64) -> Result<(), CliError> {
    let deadline = Instant::now() + secs(timeout);
    loop {
        let members: Vec<Member> = client.get(g::MEMBERS).await?;
        let n = members.iter().filter(|m| wanted.matches(m)).count();
        if n >= wanted.count {
            println!("{n} alive members{}", wanted.describe());
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError::Negative(format!(
                "only {n} alive members{} after {timeout}s (wanted {})",
                wanted.describe(),
                wanted.count
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Percent-encode a path segment (node names are plain, but be safe).
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `2026-11-25 13:04:05` from Unix milliseconds (UTC).
pub fn format_time(ms: u64) -> String {
    opsbro_checks::notify::format_time(ms / 1000)
}

/// `gossip zone list`: the tree from the top zones down, each zone with where it stands from
/// this node, whether this node holds its key, and the members it knows in it.
pub async fn zones(client: &Client, json: bool) -> Result<(), CliError> {
    let zones: std::collections::BTreeMap<String, g::ZoneView> = client.get(g::ZONES).await?;
    if json {
        println!("{}", to_json(&zones)?);
        return Ok(());
    }
    fn line(
        zones: &std::collections::BTreeMap<String, g::ZoneView>,
        name: &str,
        depth: usize,
        out: &mut String,
    ) {
        let Some(z) = zones.get(name) else { return };
        let relation = match z.relation.as_str() {
            "our" => "your zone",
            "upper" => "upper zone",
            "lower" => "lower zone",
            _ => "other zone",
        };
        out.push_str(&format!(
            "{}{}{} ({relation}) {} {} member{}\n",
            "   ".repeat(depth.saturating_sub(1)),
            if depth == 0 { "" } else { "└─ " },
            z.name,
            if z.have_gossip_key {
                "[key]"
            } else {
                "[no key]"
            },
            z.members,
            if z.members == 1 { "" } else { "s" }
        ));
        // Depth is bounded by the tree (no cycles); the guard only protects the output.
        if depth < 32 {
            for sub in &z.sub_zones {
                line(zones, sub, depth + 1, out);
            }
        }
    }
    let mut out = String::new();
    for root in zones.values().filter(|z| z.parent.is_none()) {
        line(&zones, &root.name, 0, &mut out);
    }
    print!("{out}");
    Ok(())
}

/// `gossip zone change NAME`.
pub async fn zone_change(client: &Client, zone: String) -> Result<(), CliError> {
    let answer: g::ZoneChangeAnswer = client.put_json(g::ZONE, &g::ZoneChange { zone }).await?;
    println!("{}", answer.text);
    Ok(())
}

/// `gossip zone key generate|import|install|use|remove`.
pub async fn zone_key(
    client: &Client,
    op: &str,
    zone: String,
    key: Option<String>,
    erase: bool,
) -> Result<(), CliError> {
    let path = g::ZONE_KEY.replace("{zone}", &zone);
    let request = g::ZoneKeyRequest {
        op: Some(op.to_owned()),
        key,
        erase,
    };
    let answer: g::ZoneKeyAnswer = client.post_json(&path, &request).await?;
    if op != "import" {
        println!(
            "zone {}: {op} {} done; keys held (sealing first): {}",
            answer.zone,
            answer.key_id,
            answer.key_ids.join(", ")
        );
        return Ok(());
    }
    match &answer.generated {
        Some(key) => {
            eprintln!(
                "zone {} key {} kept in {}; import it on the zone's other nodes and on the nodes of the zones above with:",
                answer.zone, answer.key_id, answer.file
            );
            eprintln!(
                "  opsbro gossip zone key import --zone {} --key <the key>",
                answer.zone
            );
            println!("{key}");
        }
        None => println!(
            "zone {} key {} kept in {}",
            answer.zone, answer.key_id, answer.file
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_in_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_795_000_000_000), "2026-11-18 11:06:40");
    }

    #[test]
    fn dot_output_groups_by_zone_and_links_groups() {
        let m = Member {
            uuid: "00000000-0000-0000-0000-000000000001"
                .parse()
                .expect("uuid"),
            name: "web-1".into(),
            display_name: "web-1".into(),
            addr: "127.0.0.1:6768".parse().expect("addr"),
            zone: "dc1".into(),
            groups: vec!["web".into()],
            is_proxy: false,
            incarnation: 1,
            state: "alive".into(),
            version: "0.1.0".into(),
            is_self: true,
            checks: vec![],
            maintenance: None,
            services: vec![],
        };
        let out = dot(&[m]);
        assert!(out.starts_with("digraph opsbro {"));
        assert!(out.contains("label=\"zone dc1\""));
        assert!(out.contains("\"00000000-0000-0000-0000-000000000001\" -> \"group:web\""));
    }

    /// Regression: labels showed a literal `\n` (the escape itself was escaped, `\\n`).
    #[test]
    fn dot_labels_break_lines_with_the_dot_escape() {
        let m = Member {
            uuid: "00000000-0000-0000-0000-000000000002"
                .parse()
                .expect("uuid"),
            name: r#"we"b\1"#.into(),
            display_name: "x".into(),
            addr: "127.0.0.1:6768".parse().expect("addr"),
            zone: "dc1".into(),
            groups: vec![],
            is_proxy: false,
            incarnation: 1,
            state: "alive".into(),
            version: "0.1.0".into(),
            is_self: false,
            checks: vec![],
            maintenance: None,
            services: vec![],
        };
        let out = dot(&[m]);
        assert!(
            out.contains(r#"[label="we\"b\\1\n127.0.0.1:6768\nalive", color=darkgreen]"#),
            "{out}"
        );
    }
}
