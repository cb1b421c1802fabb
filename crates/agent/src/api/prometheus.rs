//! `GET /metrics`: the agent in Prometheus text format (prometheus-client). Counters the
//! subsystems already keep are read at scrape time; the distributions are those of
//! [`crate::telemetry::Telemetry`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::api::context::ApiContext;

type Labels = Vec<(&'static str, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter_family(registry: &mut Registry, name: &str, help: &str, values: &[(Labels, u64)]) {
    let f = Family::<Labels, Counter>::default();
    for (labels, v) in values {
        f.get_or_create(labels).inc_by(*v);
    }
    registry.register(name, help, f);
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str, values: &[(Labels, i64)]) {
    let f = Family::<Labels, Gauge>::default();
    for (labels, v) in values {
        f.get_or_create(labels).set(*v);
    }
    registry.register(name, help, f);
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The whole exposition.
pub async fn render(ctx: &ApiContext) -> Result<String, std::fmt::Error> {
    let mut root = Registry::default();
    // Standard process metrics, without the prefix.
    let p = crate::host::process_stats(ctx.started.elapsed());
    gauge(
        &mut root,
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        i64::try_from(p.rss_bytes).unwrap_or(i64::MAX),
    );
    let cpu: Counter<f64, AtomicU64> = Counter::default();
    cpu.inc_by(p.cpu_seconds);
    root.register(
        "process_cpu_seconds",
        "User and system CPU time spent, in seconds",
        cpu,
    );
    gauge(
        &mut root,
        "process_threads",
        "OS threads",
        i64::try_from(p.threads).unwrap_or(0),
    );
    let r = root.sub_registry_with_prefix("opsbro");
    let members = ctx.gossip.members().await.unwrap_or_default();
    let by_state = crate::gossip::count_by_state(&members);
    let states: Vec<(Labels, i64)> = ["alive", "suspect", "dead", "left"]
        .iter()
        .map(|s| {
            (
                vec![("state", (*s).to_owned())],
                as_i64(by_state.get(*s).copied().unwrap_or(0)),
            )
        })
        .collect();
    gauge_family(
        r,
        "members",
        "Cluster members known to this node, by state",
        &states,
    );
    let logs = crate::logcount::LOG_COUNTS.snapshot();
    counter_family(
        r,
        "log_events",
        "Warnings and errors the agent logged",
        &[
            (vec![("level", "error".to_owned())], logs.errors),
            (vec![("level", "warn".to_owned())], logs.warnings),
        ],
    );

    let g = ctx.gossip.counters.snapshot();
    counter(
        r,
        "gossip_packets_received",
        "Gossip datagrams received",
        g.udp_in,
    );
    counter(r, "gossip_packets_sent", "Gossip datagrams sent", g.udp_out);
    counter(
        r,
        "gossip_received_bytes",
        "Gossip bytes received over UDP",
        g.bytes_in,
    );
    counter(
        r,
        "gossip_sent_bytes",
        "Gossip bytes sent over UDP",
        g.bytes_out,
    );
    counter_family(
        r,
        "gossip_rejected_packets",
        "Gossip packets refused, by reason",
        &[
            (vec![("reason", "plaintext".into())], g.rejected_plaintext),
            (vec![("reason", "no_key".into())], g.rejected_no_key),
            (
                vec![("reason", "unknown_key".into())],
                g.rejected_unknown_key,
            ),
            (vec![("reason", "tampered".into())], g.rejected_tampered),
            (vec![("reason", "replayed".into())], g.rejected_replayed),
            (vec![("reason", "stale".into())], g.rejected_stale),
            (
                vec![("reason", "incarnation_too_far".into())],
                g.incarnations_refused,
            ),
            (vec![("reason", "member_limit".into())], g.members_refused),
            (vec![("reason", "malformed".into())], g.malformed),
            (vec![("reason", "oversize".into())], g.oversize),
            (vec![("reason", "overloaded".into())], g.overloaded),
        ],
    );
    counter(r, "gossip_push_pulls", "Full-state exchanges", g.push_pulls);
    counter(
        r,
        "gossip_push_pull_errors",
        "Full-state exchanges that failed",
        g.push_pull_errors,
    );
    counter(
        r,
        "gossip_suspicions",
        "Members this node started to suspect",
        ctx.telemetry.suspicions.load(Relaxed),
    );
    r.register_with_unit(
        "gossip_probe_rtt",
        "Round-trip time of direct probe acks",
        Unit::Seconds,
        ctx.telemetry.probe_rtt.clone(),
    );

    let checks = ctx.monitoring.checks();
    let mut check_states: std::collections::BTreeMap<String, i64> =
        ["ok", "warning", "critical", "unknown", "pending"]
            .iter()
            .map(|s| ((*s).to_owned(), 0))
            .collect();
    for c in &checks {
        *check_states.entry(c.state.clone()).or_insert(0) += 1;
    }
    let check_states: Vec<(Labels, i64)> = check_states
        .into_iter()
        .map(|(s, n)| (vec![("state", s)], n))
        .collect();
    gauge_family(r, "checks", "This node's checks, by state", &check_states);
    let mut compliance: std::collections::BTreeMap<String, i64> = [
        "PENDING",
        "RUNNING",
        "COMPLIANT",
        "FIXED",
        "ERROR",
        "UNKNOWN",
        "NOT-ELIGIBLE",
    ]
    .iter()
    .map(|s| ((*s).to_owned(), 0))
    .collect();
    for (state, n) in ctx.compliance.counts() {
        *compliance.entry(state).or_insert(0) += i64::try_from(n).unwrap_or(i64::MAX);
    }
    let compliance: Vec<(Labels, i64)> = compliance
        .into_iter()
        .map(|(s, n)| (vec![("state", s)], n))
        .collect();
    gauge_family(
        r,
        "compliance_objects",
        "This node's compliance objects, by state",
        &compliance,
    );
    let exec = ctx.executor.info();
    gauge(
        r,
        "executor_enabled",
        "1 when signed commands may run on this node (some key is authorized)",
        i64::from(exec.enabled),
    );
    gauge(
        r,
        "executor_running",
        "Signed commands running on this node now",
        i64::try_from(exec.running).unwrap_or(i64::MAX),
    );
    counter(
        r,
        "executor_requests_received",
        "Signed command requests received (whatever came of them)",
        exec.received,
    );
    counter(
        r,
        "executor_commands_run",
        "Signed commands run on this node",
        exec.ran,
    );
    counter(
        r,
        "executor_commands_timed_out",
        "Signed commands killed at their timeout",
        exec.timed_out,
    );
    let refused: Vec<(Labels, u64)> = exec
        .refused
        .into_iter()
        .map(|(reason, n)| (vec![("reason", reason)], n))
        .collect();
    counter_family(
        r,
        "executor_requests_refused",
        "Signed command requests refused, by reason",
        &refused,
    );
    counter(
        r,
        "executor_requests_sent",
        "Signed command requests sent from this node",
        exec.requests_sent,
    );
    counter(
        r,
        "executor_targets_unreachable",
        "Targets that did not answer requests sent from this node",
        exec.unreachable,
    );
    counter(
        r,
        "check_runs",
        "Check runs since start",
        checks.iter().map(|c| c.runs).sum(),
    );

    let handlers = ctx.handlers.views();
    let per = |f: fn(&opsbro_api::monitoring::HandlerView) -> u64| -> Vec<(Labels, u64)> {
        handlers
            .iter()
            .map(|h| (vec![("handler", h.name.clone())], f(h)))
            .collect()
    };
    counter_family(
        r,
        "handler_sent",
        "Notifications delivered",
        &per(|h| h.sent),
    );
    counter_family(
        r,
        "handler_failures",
        "Notifications given up after every retry",
        &per(|h| h.failed),
    );
    counter_family(
        r,
        "handler_dropped",
        "Notifications dropped (queue full) or merged",
        &per(|h| h.dropped),
    );

    let kv = ctx.kv.info();
    counter(r, "kv_reads", "KV reads answered", kv.reads);
    counter(r, "kv_writes", "KV writes acknowledged", kv.writes);
    counter(r, "kv_write_errors", "KV writes refused", kv.write_errors);
    counter(
        r,
        "kv_rejected",
        "KV frames or entries refused",
        kv.rejected,
    );
    gauge(
        r,
        "kv_local_entries",
        "KV entries held here",
        as_i64(kv.local_entries),
    );
    gauge(
        r,
        "kv_ring_nodes",
        "Nodes on the KV ring",
        as_i64(kv.ring_nodes),
    );
    r.register_with_unit(
        "kv_request_duration",
        "Local API KV requests (blocking reads excluded), by operation",
        Unit::Seconds,
        ctx.telemetry.kv_duration.clone(),
    );

    let dns = super::dns_info(ctx);
    counter(r, "dns_queries", "DNS queries", dns.queries);
    counter_family(
        r,
        "dns_responses",
        "DNS answers by response code",
        &[
            (vec![("rcode", "noerror".into())], dns.noerror),
            (vec![("rcode", "nxdomain".into())], dns.nxdomain),
            (vec![("rcode", "refused".into())], dns.refused),
            (vec![("rcode", "servfail".into())], dns.servfail),
            (vec![("rcode", "formerr".into())], dns.formerr),
        ],
    );
    counter(
        r,
        "dns_forwarded",
        "DNS queries forwarded to a recursor",
        dns.forwarded,
    );
    counter(
        r,
        "dns_malformed",
        "DNS datagrams that were not queries, dropped without an answer",
        dns.malformed,
    );
    counter(
        r,
        "dns_tcp_refused",
        "DNS TCP connections refused because too many were open",
        dns.tcp_refused,
    );

    let m = ctx.metrics.info();
    counter(
        r,
        "statsd_packets",
        "statsd datagrams received",
        m.statsd_packets,
    );
    counter(r, "statsd_lines", "statsd lines aggregated", m.statsd_lines);
    counter(
        r,
        "statsd_bad_lines",
        "statsd lines refused",
        m.statsd_bad_lines,
    );
    counter(
        r,
        "graphite_lines",
        "graphite lines stored",
        m.graphite_lines,
    );
    counter(
        r,
        "graphite_bad_lines",
        "graphite lines refused",
        m.graphite_bad_lines,
    );
    counter(
        r,
        "metrics_points_rejected",
        "Points refused by the time-series store",
        m.points_rejected,
    );
    gauge(
        r,
        "metrics_series",
        "Series in the time-series store",
        as_i64(m.series),
    );
    if let Some(f) = &m.forward {
        counter(
            r,
            "carbon_forward_sent",
            "Lines forwarded to carbon",
            f.sent,
        );
        counter(
            r,
            "carbon_forward_dropped",
            "Lines dropped because the forward buffer was full",
            f.dropped,
        );
    }

    let bus = ctx.bus.counters();
    counter(
        r,
        "events_published",
        "Events published on the bus",
        bus.published.load(Relaxed),
    );
    counter(
        r,
        "events_dropped",
        "Events subscribers missed because they were behind",
        bus.dropped.load(Relaxed),
    );
    gauge(
        r,
        "event_subscribers",
        "Event bus subscribers",
        as_i64(ctx.bus.subscribers()),
    );
    let ws = super::websocket_info(ctx);
    gauge(
        r,
        "websocket_clients",
        "Websocket clients connected",
        as_i64(ws.clients),
    );
    counter(
        r,
        "websocket_slow_clients_dropped",
        "Websocket clients disconnected because they did not keep up",
        ws.slow_dropped,
    );
    counter(
        r,
        "websocket_messages_sent",
        "Websocket messages sent",
        ws.sent,
    );
    counter_family(
        r,
        "http_connections_refused",
        "Connections closed at once because their listener was full",
        &[
            (
                vec![("listener", "api".into())],
                ctx.api_connections.refused.load(Relaxed),
            ),
            (
                vec![("listener", "websocket".into())],
                ctx.websocket.connections.refused.load(Relaxed),
            ),
        ],
    );

    let mut out = String::new();
    encode(&mut out, &root)?;
    Ok(out)
}

/// OpenMetrics text → the classic Prometheus text format (0.0.4), for scrapers and tools that
/// do not ask for OpenMetrics (`promtool check metrics`, older Prometheus): counter families
/// are named with their `_total` suffix, `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                let tail = if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                out.push_str(&format!("{prefix}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_prometheus_text;

    #[test]
    fn openmetrics_to_classic_text() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 3\n# HELP c Size.\n# TYPE c gauge\n# UNIT c bytes\nc 4\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total 3\n# HELP c Size.\n# TYPE c gauge\nc 4\n"
        );
    }
}
