//! `opsbro agent start|stop|info|print|state|wait-initialized|keygen|groups`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use indicatif::{ProgressBar, ProgressStyle};
use opsbro_api::{AgentInfo, StopAnswer, routes};
use opsbro_config::{Config, HostFacts, Overrides, Seed};
use opsbro_types::AgentState;
use rand::TryRngCore as _;
use tokio_util::sync::CancellationToken;

use crate::args::{PrintWhat, StartArgs};
use crate::client::Client;
use crate::commands::{secs, to_json};
use crate::error::CliError;
use crate::render;

/// How often waits poll the agent.
const POLL: Duration = Duration::from_millis(100);

/// Load the configuration for `agent start`: file, then `OPSBRO_*`/flags, then defaults.
pub fn load_config(
    args: &StartArgs,
    token: Option<String>,
) -> Result<opsbro_config::AgentConfig, CliError> {
    let config_path: Option<std::path::PathBuf> = match &args.config {
        Some(path) => Some(path.clone()),
        None if Path::new(opsbro_config::DEFAULT_CONFIG_PATH).exists() => {
            Some(opsbro_config::DEFAULT_CONFIG_PATH.into())
        }
        None => None,
    };
    let file = match &config_path {
        Some(path) => Config::from_file(path),
        None => Ok(Config::default()),
    };
    let mut errors = Vec::new();
    let file = file.unwrap_or_else(|e| {
        errors.extend(e.0);
        Config::default()
    });
    let mut flag_error = |key: &str, flag: &str, message: String| {
        errors.push(opsbro_config::ConfigError {
            source: format!("{flag} (or its OPSBRO_ variable)"),
            line: None,
            key: key.to_owned(),
            message,
        });
    };
    let mut seeds = Vec::new();
    for s in &args.seeds {
        match Seed::parse(s) {
            Ok(seed) => seeds.push(seed),
            Err(e) => flag_error("seeds", "--seed", e),
        }
    }
    let node_name = args.node_name.clone().and_then(|n| {
        opsbro_config::check_node_name(n)
            .map_err(|e| flag_error("node_name", "--node-name", e))
            .ok()
    });
    let log_level = args.log_level.clone().and_then(|l| {
        opsbro_config::check_log_level(l)
            .map_err(|e| flag_error("log_level", "--log-level", e))
            .ok()
    });
    let api_token = token.and_then(|t| {
        opsbro_config::check_token(t)
            .map_err(|e| flag_error("api.token", "--token", e))
            .ok()
    });
    let data_dir = args.data_dir.clone().map(|d| {
        if d.is_absolute() {
            d
        } else {
            std::env::current_dir().map(|c| c.join(&d)).unwrap_or(d)
        }
    });
    let overrides = Overrides {
        data_dir,
        bind_addr: args.bind,
        port: args.port,
        api_bind: args.api_bind,
        api_port: args.api_port,
        api_token,
        node_name,
        seeds,
        log_level,
        auto_detect: args.auto_detect,
        insecure_plaintext_gossip: args.insecure_plaintext_gossip,
        dns_port: args.dns_port,
    };
    let resolved = file.resolve(overrides, &host_facts());
    match resolved {
        Ok(mut config) if errors.is_empty() => {
            // The local configuration's objects: `objects_dirs`, else every `*.d/` folder next
            // to agent.yml (`/etc/opsbro/handlers.d/mail.yml`) and `zones/`, as the original
            // read every YAML file under /etc/opsbro.
            if config.objects_dirs.is_none() {
                config.objects_dirs = Some(
                    config_path
                        .as_deref()
                        .and_then(Path::parent)
                        .map(local_object_dirs)
                        .unwrap_or_default(),
                );
            }
            Ok(config)
        }
        Ok(_) => Err(CliError::Usage(
            opsbro_config::ConfigErrors(errors).to_string(),
        )),
        Err(e) => {
            errors.extend(e.0);
            Err(CliError::Usage(
                opsbro_config::ConfigErrors(errors).to_string(),
            ))
        }
    }
}

/// The `*.d/` directories of `dir` and its `zones/` (the original's folder of zone objects),
/// sorted.
fn local_object_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<std::path::PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && (p.extension().is_some_and(|e| e == "d")
                    || p.file_name().is_some_and(|n| n == "zones"))
        })
        .collect();
    dirs.sort();
    dirs
}

/// This host as the configuration defaults see it (hostname, euid, XDG dirs).
pub(crate) fn host_facts() -> HostFacts {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    // The owner of /proc/self is this process's effective uid.
    let euid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX);
    HostFacts {
        hostname,
        euid,
        xdg_data_home: std::env::var_os("XDG_DATA_HOME").map(Into::into),
        home: std::env::var_os("HOME").map(Into::into),
    }
}

/// `opsbro agent start`: run the agent in the foreground until it is stopped.
pub async fn start(
    config: opsbro_config::AgentConfig,
    loader: opsbro_agent::reload::ConfigLoader,
) -> Result<(), CliError> {
    opsbro_agent::run_with_reload(config, loader, CancellationToken::new())
        .await
        .map_err(|e| match e {
            // A configuration that would open the cluster: a configuration error (exit 2).
            opsbro_agent::AgentError::Insecure(message) => CliError::Usage(message),
            e => CliError::Other(e.into()),
        })
}

/// `opsbro agent start --one-shot`: one pass of collectors, detectors and generators, printed.
pub async fn start_once(config: opsbro_config::AgentConfig, json: bool) -> Result<(), CliError> {
    let report = opsbro_agent::run_once(config).await.map_err(|e| match e {
        opsbro_agent::AgentError::Insecure(message) => CliError::Usage(message),
        e => CliError::Other(e.into()),
    })?;
    if json {
        println!("{}", to_json(&report)?);
    } else {
        print!("{}", one_shot_text(&report));
    }
    if report.failed() {
        return Err(CliError::Other(anyhow::anyhow!(
            "{}",
            report
                .timed_out
                .clone()
                .unwrap_or_else(|| "a detector or a generator failed".into())
        )));
    }
    Ok(())
}

/// The one-shot report for a terminal.
fn one_shot_text(r: &opsbro_agent::one_shot::Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut by_state: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in r.collectors.values() {
        *by_state.entry(c.state.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let _ = writeln!(out, "collectors: {}", counts.join(", "));
    for (name, c) in r.collectors.iter().filter(|(_, c)| c.state == "error") {
        let _ = writeln!(
            out,
            "  {name}: error: {}",
            c.message.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(out, "groups: {}", r.groups.join(", "));
    let _ = writeln!(out, "detectors:");
    for d in &r.detectors {
        let verdict = match (&d.error, d.matched) {
            (Some(e), _) => format!("error: {e}"),
            (None, Some(true)) => format!("matched -> {}", d.rendered_groups.join(", ")),
            (None, _) => "no match".into(),
        };
        let _ = writeln!(out, "  {:<36} {verdict}", d.name);
        for why in &d.skipped_groups {
            let _ = writeln!(out, "  {:<36}   skipped: {why}", "");
        }
    }
    let _ = writeln!(out, "generators:");
    if r.generators.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for g in &r.generators {
        // Several passes may have run (groups changing at start): say if this run wrote it.
        let message = match g.message.as_deref() {
            _ if g.state != "error" && g.writes > 0 => format!("{} written", g.path),
            m => m.unwrap_or_default().to_owned(),
        };
        let _ = writeln!(out, "  {:<36} {:<12} {message}", g.name, g.state);
    }
    if let Some(t) = &r.timed_out {
        let _ = writeln!(out, "incomplete: {t}");
    }
    out
}

/// `opsbro agent stop`.
pub async fn stop(client: &Client, timeout: f64) -> Result<(), CliError> {
    let answer: StopAnswer = client.post(routes::AGENT_STOP).await?;
    let deadline = Instant::now() + secs(timeout);
    let bar = spinner("waiting for the agent to stop");
    loop {
        match client.get::<AgentState>(routes::AGENT_STATE).await {
            Err(CliError::Unreachable { .. }) => break,
            _ if Instant::now() >= deadline => {
                bar.finish_and_clear();
                return Err(CliError::Other(anyhow::anyhow!(
                    "the agent at {} was asked to stop but still answers after {timeout}s (its grace period is {}s)",
                    client.addr(),
                    answer.grace_period_secs
                )));
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
    bar.finish_and_clear();
    println!("agent stopped");
    Ok(())
}

/// The cluster packets and news this agent refused, by reason ("none" when all is quiet).
fn refused(c: &opsbro_api::gossip::Counters) -> String {
    let parts: Vec<String> = [
        (c.rejected_plaintext, "plaintext"),
        (c.rejected_no_key, "encrypted without a key here"),
        (c.rejected_unknown_key, "unknown key"),
        (c.rejected_tampered, "tampered"),
        (c.rejected_replayed, "replayed"),
        (c.rejected_stale, "outside the replay window"),
        (c.malformed, "malformed"),
        (c.oversize, "oversize"),
        (c.incarnations_refused, "incarnation too far ahead"),
        (c.members_refused, "members over the limits"),
        (c.replies_capped, "answers bigger than the question"),
        (c.connections_refused, "connections over the limit"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The `Hosting` line: the driver, the instance its cloud described and how it was found.
fn hosting(h: &opsbro_api::HostingInfo) -> String {
    if h.driver.is_empty() {
        return "(unknown)".into();
    }
    let mut out = h.driver.clone();
    let instance: Vec<String> = [&h.instance_id, &h.zone, &h.instance_type]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if !instance.is_empty() {
        out += &format!(" ({})", instance.join(", "));
    }
    if let Some(ip) = h.public_addr {
        out += &format!(", public address {ip}");
    }
    if let Some(ip) = h.local_addr {
        out += &format!(", local address {ip}");
    }
    format!("{out}; {} (found in {} ms)", h.detail, h.probe_ms)
}

/// `opsbro agent info`.
pub async fn info(client: &Client, json: bool) -> Result<(), CliError> {
    let info: AgentInfo = client.get(routes::AGENT_INFO).await?;
    if json {
        println!("{}", to_json(&info)?);
        return Ok(());
    }
    let colour = render::use_colour();
    let name = if info.display_name == info.name {
        info.name.clone()
    } else {
        format!("{} ({})", info.name, info.display_name)
    };
    let groups = if info.groups.is_empty() {
        "(none)".to_owned()
    } else {
        info.groups.join(", ")
    };
    let interfaces = info
        .addresses
        .interfaces
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = format!("opsbro agent {name}\n");
    out += &render::key_values(&[
        ("State", render::state(info.state.as_str(), colour)),
        ("UUID", info.uuid.to_string()),
        ("Version", info.version.clone()),
        ("Zone", info.zone.clone()),
        (
            "Proxy node",
            if info.is_proxy { "yes" } else { "no" }.to_owned(),
        ),
        ("Groups", groups),
        ("Hosting", hosting(&info.hosting)),
        (
            "Advertise",
            format!("{}:{}", info.addresses.advertise, info.ports.gossip),
        ),
        (
            "Gossip bind",
            format!("{}:{}", info.addresses.bind, info.ports.gossip),
        ),
        ("Local API", info.addresses.api.to_string()),
        (
            "Interfaces",
            if interfaces.is_empty() {
                "(none)".into()
            } else {
                interfaces
            },
        ),
        (
            "Members",
            info.gossip
                .members
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(state, n)| format!("{n} {state}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "Checks",
            if info.checks.is_empty() {
                "(none)".to_owned()
            } else {
                info.checks
                    .iter()
                    .map(|(state, n)| format!("{n} {}", render::state(state, colour)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "Compliance",
            if info.compliance.is_empty() {
                "(none)".to_owned()
            } else {
                info.compliance
                    .iter()
                    .map(|(state, n)| format!("{n} {state}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "Executor",
            if info.executor.enabled {
                format!(
                    "enabled: {} authorized key(s) ({}); ran {}, refused {}",
                    info.executor.authorized_keys.len(),
                    info.executor
                        .authorized_keys
                        .iter()
                        .map(|k| format!("{} {}", k.id, k.comment).trim().to_owned())
                        .collect::<Vec<_>>()
                        .join(", "),
                    info.executor.ran,
                    info.executor.refused.values().sum::<u64>()
                )
            } else {
                "disabled (no executor.authorized_keys)".to_owned()
            },
        ),
        (
            "KV store",
            format!(
                "ring of {} nodes, {} entries here, {:.1} MB on disk",
                info.kv.ring_nodes,
                info.kv.local_entries,
                info.kv.size_on_disk as f64 / 1e6
            ),
        ),
        (
            "DNS",
            match info.dns.addr {
                None => "off".to_owned(),
                Some(addr) => {
                    let d = &info.dns;
                    format!(
                        "{addr}, {} queries ({} noerror, {} nxdomain, {} refused, {} servfail, {} formerr; {} forwarded), {} malformed datagrams dropped",
                        d.queries,
                        d.noerror,
                        d.nxdomain,
                        d.refused,
                        d.servfail,
                        d.formerr,
                        d.forwarded,
                        d.malformed
                    )
                }
            },
        ),
        (
            "Encryption",
            match info.gossip.security {
                opsbro_api::ClusterSecurity::Encrypted => "on (AES-256-GCM, replay window 60 s)".to_owned(),
                opsbro_api::ClusterSecurity::LoopbackOnly => {
                    "off: gossip on loopback only (run `opsbro agent keygen` to cluster with other hosts)".to_owned()
                }
                opsbro_api::ClusterSecurity::InsecurePlaintext => {
                    "OFF and open (insecure_plaintext_gossip): anyone who reaches the cluster port can join".to_owned()
                }
            },
        ),
        ("Refused", refused(&info.gossip.counters)),
        (
            "Logs",
            format!(
                "{} errors {} warnings",
                info.logs.errors, info.logs.warnings
            ),
        ),
        ("Data dir", info.data_dir.clone()),
        ("Uptime", render::duration(info.uptime_secs)),
        (
            "Process",
            format!(
                "pid {}, RSS {}, CPU {:.2}%, {} threads",
                info.pid,
                render::bytes(info.process.rss_bytes),
                info.process.cpu_percent,
                info.process.threads
            ),
        ),
    ]);
    out += "Subsystems\n";
    let rows: Vec<(&str, String)> = info
        .subsystems
        .iter()
        .map(|(name, s)| {
            let detail = s
                .message
                .as_deref()
                .map(|m| format!("  {m}"))
                .unwrap_or_default();
            (
                name.as_str(),
                format!("{}{detail}", render::state(s.state.as_str(), colour)),
            )
        })
        .collect();
    out += &render::key_values(&rows);
    print!("{out}");
    Ok(())
}

/// `opsbro agent print uuid|local-addr|public-addr`: the raw value on one line.
pub async fn print(client: &Client, what: PrintWhat) -> Result<(), CliError> {
    let info: AgentInfo = client.get(routes::AGENT_INFO).await?;
    let value = match what {
        PrintWhat::Uuid => info.uuid.to_string(),
        PrintWhat::LocalAddr if !info.addresses.bind.is_unspecified() => {
            info.addresses.bind.to_string()
        }
        PrintWhat::PublicAddr => info
            .hosting
            .public_addr
            .unwrap_or(info.addresses.advertise)
            .to_string(),
        PrintWhat::LocalAddr => info.addresses.advertise.to_string(),
    };
    println!("{value}");
    Ok(())
}

/// `opsbro agent state`.
pub async fn state(client: &Client, json: bool) -> Result<(), CliError> {
    let state: AgentState = client.get(routes::AGENT_STATE).await?;
    if json {
        println!("{}", to_json(&state)?);
    } else {
        println!("{state}");
    }
    if state == AgentState::Ok {
        Ok(())
    } else {
        Err(CliError::Negative(format!("the agent is {state}")))
    }
}

/// `opsbro agent wait-initialized`: poll until `ok`. An agent that does not answer yet is waited
/// for too (the init script calls this right after starting it).
pub async fn wait_initialized(client: &Client, timeout: f64) -> Result<(), CliError> {
    let deadline = Instant::now() + secs(timeout);
    let bar = spinner("waiting for the agent to initialize");
    loop {
        let last = match client.get::<AgentState>(routes::AGENT_STATE).await {
            Ok(AgentState::Ok) => {
                bar.finish_and_clear();
                println!("agent initialized");
                return Ok(());
            }
            Ok(state) => CliError::Negative(format!("the agent is still {state} after {timeout}s")),
            Err(e @ (CliError::Unreachable { .. } | CliError::Api { .. })) => e,
            Err(e) => return Err(e),
        };
        if Instant::now() >= deadline {
            bar.finish_and_clear();
            return Err(last);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `opsbro agent keygen`.
pub fn keygen() -> Result<(), CliError> {
    let mut key = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .map_err(|e| CliError::Other(anyhow::anyhow!("cannot read the OS random source: {e}")))?;
    println!("{}", base64::engine::general_purpose::STANDARD.encode(key));
    Ok(())
}

/// A spinner on stderr when it is a terminal; hidden otherwise (scripts, tests, CI logs).
pub fn spinner(message: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(message);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// `opsbro agent groups add|remove GROUP`.
pub async fn groups(client: &Client, group: &str, add: bool) -> Result<(), CliError> {
    let path = routes::AGENT_GROUP.replace("{group}", group);
    let statics: Vec<String> = if add {
        client.put(&path).await?
    } else {
        client.delete(&path).await?
    };
    println!(
        "{} {group}; static groups now: {}",
        if add { "added" } else { "removed" },
        if statics.is_empty() {
            "(none)".to_owned()
        } else {
            statics.join(", ")
        }
    );
    Ok(())
}
