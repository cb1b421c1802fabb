//! `opsbro docker show`: the host's Docker daemon as the agent sees it — a summary line, a table
//! of containers with their resource use (from the `docker` collector's last run) and a table of
//! images.

use opsbro_api::docker::{
    CONTAINERS, ContainerView, DaemonSummary, IMAGES, ImageView, STATS, SUMMARY, StatsAnswer,
};

use crate::client::Client;
use crate::commands::gossip::format_time;
use crate::error::CliError;
use crate::render;

/// The agent answered, but has no daemon to show: exit 1 with its reason (`no Docker daemon on
/// this host: cannot connect to the Docker daemon at /var/run/docker.sock: ...`).
fn no_daemon(e: CliError) -> CliError {
    match e {
        CliError::Api {
            status: 503,
            message,
            ..
        } => CliError::Other(anyhow::anyhow!("{message}")),
        other => other,
    }
}

/// `docker show`.
pub async fn show(client: &Client, json: bool) -> Result<(), CliError> {
    let summary: DaemonSummary = client.get(SUMMARY).await.map_err(no_daemon)?;
    let containers: Vec<ContainerView> = client.get(CONTAINERS).await.map_err(no_daemon)?;
    let images: Vec<ImageView> = client.get(IMAGES).await.map_err(no_daemon)?;
    // Resource use comes from the collector: before its first run (or on a host outside group
    // docker-host) the table shows `-`, and says why below it.
    let (stats, stats_note) = match client.get::<StatsAnswer>(STATS).await {
        Ok(s) => (s, None),
        Err(CliError::Api { message, .. }) => (StatsAnswer::default(), Some(message)),
        Err(e) => return Err(e),
    };
    if json {
        let all = serde_json::json!({
            "daemon": summary,
            "containers": containers,
            "stats": stats,
            "images": images,
        });
        println!("{}", crate::commands::to_json(&all)?);
        return Ok(());
    }
    print!("{}", render_show(&summary, &containers, &stats, &images));
    if let Some(note) = stats_note {
        println!("(no resource use: {note})");
    }
    Ok(())
}

fn plural(n: u64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// The whole text of `docker show`.
pub fn render_show(
    summary: &DaemonSummary,
    containers: &[ContainerView],
    stats: &StatsAnswer,
    images: &[ImageView],
) -> String {
    let colour = render::use_colour();
    let mut out = format!(
        "Docker {} (API {}) at {}: {}, kernel {}, storage {}\n{}: {} running, {} paused, {} \
         stopped; {}\n",
        summary.version,
        summary.api_version,
        summary.socket,
        summary.os,
        summary.kernel_version,
        summary.driver,
        plural(summary.containers, "container"),
        summary.running,
        summary.paused,
        summary.stopped,
        plural(summary.images, "image"),
    );
    out.push_str("\nContainers\n");
    let rows: Vec<Vec<String>> = containers
        .iter()
        .map(|c| {
            let s = stats.containers.get(&c.name);
            let state_word = match c.state.as_str() {
                "running" => "ok",
                "restarting" | "paused" | "created" => "warning",
                _ => "critical",
            };
            // Painted as the check states are: green running, yellow in between, red stopped.
            let mut state = if colour {
                render::state(state_word, true).replace(state_word, &c.state)
            } else {
                c.state.clone()
            };
            if let Some(h) = &c.health {
                state.push_str(&format!(" ({h})"));
            }
            vec![
                c.name.clone(),
                c.image.clone(),
                state,
                s.and_then(|s| s.cpu_pct)
                    .map_or_else(|| "-".into(), |p| format!("{p:.2}%")),
                s.map_or_else(
                    || "-".into(),
                    |s| {
                        format!(
                            "{} / {} ({:.1}%)",
                            render::bytes(s.mem_usage),
                            render::bytes(s.mem_limit),
                            s.mem_pct
                        )
                    },
                ),
                s.map_or_else(
                    || "-".into(),
                    |s| format!("{} / {}", render::bytes(s.net_rx), render::bytes(s.net_tx)),
                ),
                c.restart_count
                    .map_or_else(|| "-".into(), |n| n.to_string()),
                c.status.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&render::table(
            &[
                "NAME",
                "IMAGE",
                "STATE",
                "CPU",
                "MEMORY",
                "NET RX / TX",
                "RESTARTS",
                "STATUS",
            ],
            &rows,
        ));
    }
    out.push_str("\nImages\n");
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let id = i.id.trim_start_matches("sha256:");
            vec![
                id.chars().take(12).collect(),
                if i.tags.is_empty() {
                    "<none>".into()
                } else {
                    i.tags.join(", ")
                },
                render::bytes(i.size),
                format_time(u64::try_from(i.created).unwrap_or(0).saturating_mul(1000)),
                if i.containers < 0 {
                    "-".into()
                } else {
                    i.containers.to_string()
                },
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&render::table(
            &["ID", "TAGS", "SIZE", "CREATED (UTC)", "CONTAINERS"],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsbro_api::docker::ContainerStats;

    #[test]
    fn show_prints_the_daemon_its_containers_and_images() {
        let summary = DaemonSummary {
            socket: "/var/run/docker.sock".into(),
            version: "24.0.7".into(),
            api_version: "1.43".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel_version: "6.1.0".into(),
            name: "host".into(),
            driver: "overlay2".into(),
            containers: 1,
            running: 1,
            paused: 0,
            stopped: 0,
            images: 1,
            events: Default::default(),
        };
        let web = ContainerView {
            id: "abc".into(),
            name: "web".into(),
            image: "nginx:1.25".into(),
            state: "running".into(),
            status: "Up 2 hours (unhealthy)".into(),
            health: Some("unhealthy".into()),
            restart_count: Some(2),
            ..ContainerView::default()
        };
        let mut stats = StatsAnswer::default();
        stats.containers.insert(
            "web".into(),
            ContainerStats {
                name: "web".into(),
                cpu_pct: Some(12.5),
                mem_usage: 50_000_000,
                mem_limit: 1_000_000_000,
                mem_pct: 5.0,
                net_rx: 1500,
                net_tx: 200,
                ..ContainerStats::default()
            },
        );
        let images = vec![ImageView {
            id: "sha256:0123456789abcdef".into(),
            tags: vec!["nginx:1.25".into()],
            size: 187_000_000,
            created: 0,
            containers: 1,
        }];
        let text = render_show(&summary, &[web], &stats, &images);
        assert!(
            text.starts_with("Docker 24.0.7 (API 1.43) at /var/run/docker.sock"),
            "{text}"
        );
        assert!(text.contains("1 container: 1 running"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("web "))
            .unwrap_or_default();
        for part in [
            "nginx:1.25",
            "running (unhealthy)",
            "12.50%",
            "50.0 MB / 1.0 GB (5.0%)",
            "1.5 kB / 200 B",
        ] {
            assert!(row.contains(part), "{part} in {row}");
        }
        assert!(
            text.contains("0123456789ab  nginx:1.25  187.0 MB"),
            "{text}"
        );
    }
}
