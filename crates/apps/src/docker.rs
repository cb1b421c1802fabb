//! Docker: the daemon on this host (or podman's Docker-compatible service) through the Engine
//! API on its unix socket ([`engine`]). The `docker` collector (group `docker-host`, pack
//! `docker-host`) reports the daemon's version and counts, every container (name, image, state,
//! status, health, restart count, exit code, created/started) and, for the running ones, what
//! `docker stats` shows (CPU %, memory usage/limit/%, network bytes and rates, block IO), under
//! `collector.docker.containers.<name>.*`; the lists `unhealthy`, `restarting`,
//! `exited_with_error`, `restarted_often`, `oom_killed` and the sentences `criticals` and
//! `warnings` feed the pack's `docker-containers` check.
//!
//! The same functions answer the agent's `/docker/...` routes ([`summary`], [`containers`],
//! [`images`], [`inspect`]), and [`event_of`] turns a line of the daemon's event stream into the
//! event bus's `docker` event.
//!
//! Work per run is bounded: at most `max_containers` containers are inspected and measured,
//! `concurrency` at a time, all within the run's `timeout` (what is late is left out and
//! counted in `containers_late`, the rest is reported).
//!
//! Parameters (`packs/docker-host/parameters/parameters.yml`): `socket` (empty: `DOCKER_HOST`
//! when it is `unix://...`, else `/var/run/docker.sock`), `timeout`, `max_containers`,
//! `concurrency`, `ignore`, `restarts_warning`, `events`, `events_per_second`.

pub mod engine;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use futures_util::StreamExt;
use opsbro_api::docker::{ContainerStats, ContainerView, DaemonSummary, ImageView};
use opsbro_api::events::DockerEvent;
use serde_json::{Map, Value};
use tokio::time::Instant as Deadline;

pub use engine::{DEFAULT_SOCKET, Engine, EngineError};

use crate::{AppCollector, CollectFuture, Params, param_str, param_u64};

/// The pack (and group) of Docker hosts.
pub const PACK: &str = "docker-host";

/// Most containers inspected and measured per run, unless `max_containers` says otherwise.
pub const DEFAULT_MAX_CONTAINERS: u64 = 100;

/// Requests to the daemon at once, unless `concurrency` says otherwise.
pub const DEFAULT_CONCURRENCY: u64 = 4;

/// The daemon's socket: parameter `socket`, else `DOCKER_HOST` (`unix://` only), else
/// [`DEFAULT_SOCKET`].
pub fn socket_path(params: &Params) -> Result<String, String> {
    socket_from(
        &param_str(params, "socket", ""),
        std::env::var("DOCKER_HOST").ok().as_deref(),
    )
}

fn socket_from(param: &str, docker_host: Option<&str>) -> Result<String, String> {
    let param = param.trim();
    if !param.is_empty() {
        return Ok(param.strip_prefix("unix://").unwrap_or(param).to_owned());
    }
    match docker_host.map(str::trim).filter(|h| !h.is_empty()) {
        Some(h) => h.strip_prefix("unix://").map(str::to_owned).ok_or_else(|| {
            format!(
                "DOCKER_HOST={h} is not a unix socket (unix:///path): the agent only talks to a \
                 local daemon; set the docker-host pack's `socket` parameter"
            )
        }),
        None => Ok(DEFAULT_SOCKET.to_owned()),
    }
}

/// How many containers to inspect per run and how many requests at once.
pub fn bounds(params: &Params) -> (usize, usize) {
    let max = param_u64(params, "max_containers", DEFAULT_MAX_CONTAINERS).clamp(1, 10_000);
    let concurrency = param_u64(params, "concurrency", DEFAULT_CONCURRENCY).clamp(1, 32);
    (max as usize, concurrency as usize)
}

/// The `docker` collector.
#[derive(Debug, Default)]
pub struct Docker {
    /// Each running container's last CPU sample (by id), for CPU % when the daemon sends no
    /// `precpu_stats` (one-shot stats).
    cpu: HashMap<String, CpuSample>,
    /// Each running container's last network counters (by id), for rates.
    net: HashMap<String, (Instant, u64, u64)>,
}

/// Container CPU time and host CPU time, nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    /// `cpu_stats.cpu_usage.total_usage`.
    pub total: u64,
    /// `cpu_stats.system_cpu_usage`.
    pub system: u64,
}

impl AppCollector for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn group(&self) -> Option<&'static str> {
        Some(PACK)
    }

    fn pack(&self) -> &'static str {
        PACK
    }

    fn collect<'a>(&'a mut self, params: &'a Params) -> CollectFuture<'a> {
        Box::pin(async move {
            let engine = Engine::new(socket_path(params)?);
            let timeout = crate::timeout_of(params);
            let deadline = Deadline::now() + timeout;
            let (daemon, list) = tokio::time::timeout_at(deadline, async {
                tokio::try_join!(summary(&engine), list_containers(&engine))
            })
            .await
            .map_err(|_| {
                format!(
                    "the Docker daemon at {} did not answer within {:.1} s",
                    engine.socket().display(),
                    timeout.as_secs_f64()
                )
            })?
            .map_err(|e| e.to_string())?;
            let (max, concurrency) = bounds(params);
            let total = list.len();
            let measured: Vec<Measured> = futures_util::stream::iter(list.into_iter().take(max))
                .map(|item| measure(&engine, item, deadline))
                .buffer_unordered(concurrency)
                .collect()
                .await;
            Ok(Value::Object(self.report(
                params,
                &daemon,
                measured,
                total.saturating_sub(max),
            )))
        })
    }
}

/// What one container gave in one run.
struct Measured {
    view: ContainerView,
    /// The raw stats of a running container, when they came in time.
    stats: Option<Value>,
    /// Inspect or stats missed the deadline.
    late: bool,
}

/// Inspect one container (and, running, read its stats), within `deadline`.
async fn measure(engine: &Engine, item: Value, deadline: Deadline) -> Measured {
    let id = text(&item, "Id");
    let mut late = false;
    let inspected = if engine::valid_reference(&id) {
        match tokio::time::timeout_at(deadline, engine.get_json(&format!("/containers/{id}/json")))
            .await
        {
            Ok(Ok(v)) => Some(v),
            // Gone between the listing and now, or refused: the listing says enough.
            Ok(Err(_)) => None,
            Err(_) => {
                late = true;
                None
            }
        }
    } else {
        None
    };
    let view = container_view(&item, inspected.as_ref());
    let stats = if view.state == "running" && !late && engine::valid_reference(&id) {
        let path = format!("/containers/{id}/stats?stream=false&one-shot=true");
        match tokio::time::timeout_at(deadline, engine.get_json(&path)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(_)) => None,
            Err(_) => {
                late = true;
                None
            }
        }
    } else {
        None
    };
    Measured { view, stats, late }
}

impl Docker {
    /// The collector's object from one run's results; keeps the samples for the next run.
    fn report(
        &mut self,
        params: &Params,
        daemon: &DaemonSummary,
        mut measured: Vec<Measured>,
        not_measured: usize,
    ) -> Map<String, Value> {
        let now = Instant::now();
        let ignore = ignored(params);
        let restarts_warning = param_u64(params, "restarts_warning", 5);
        measured.sort_by(|a, b| a.view.name.cmp(&b.view.name));
        let mut containers = Map::new();
        let mut lists: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        let (mut criticals, mut warnings) = (Vec::new(), Vec::new());
        let mut seen = HashSet::new();
        let mut late = 0u64;
        for m in measured {
            late += u64::from(m.late);
            let view = m.view;
            seen.insert(view.id.clone());
            let mut entry = match serde_json::to_value(&view) {
                Ok(Value::Object(o)) => o,
                _ => Map::new(),
            };
            if let Some(raw) = &m.stats {
                let prev = self.cpu.get(&view.id).copied();
                let (mut stats, sample) = container_stats(raw, prev);
                if let Some(sample) = sample {
                    self.cpu.insert(view.id.clone(), sample);
                }
                if let Some((at, rx, tx)) = self.net.get(&view.id) {
                    let secs = now.duration_since(*at).as_secs_f64();
                    stats.net_rx_rate = rate(*rx, stats.net_rx, secs);
                    stats.net_tx_rate = rate(*tx, stats.net_tx, secs);
                }
                self.net
                    .insert(view.id.clone(), (now, stats.net_rx, stats.net_tx));
                stats.id = view.id.clone();
                stats.name = view.name.clone();
                if let Ok(Value::Object(s)) = serde_json::to_value(&stats) {
                    entry.extend(s);
                }
            }
            if !ignore.contains(&view.name) {
                let name = Value::from(view.name.clone());
                if view.health.as_deref() == Some("unhealthy") {
                    criticals.push(format!("{} is unhealthy", view.name));
                    lists.entry("unhealthy").or_default().push(name.clone());
                }
                if view.state == "restarting" {
                    warnings.push(format!("{} is restarting", view.name));
                    lists.entry("restarting").or_default().push(name.clone());
                }
                let code = view.exit_code.unwrap_or(0);
                if (view.state == "exited" && code != 0) || view.state == "dead" {
                    warnings.push(format!("{} exited with code {code}", view.name));
                    lists
                        .entry("exited_with_error")
                        .or_default()
                        .push(name.clone());
                }
                if view.oom_killed == Some(true) {
                    warnings.push(format!("{} was killed by the OOM killer", view.name));
                    lists.entry("oom_killed").or_default().push(name.clone());
                }
                let restarts = view.restart_count.unwrap_or(0);
                if restarts_warning > 0 && restarts >= restarts_warning {
                    warnings.push(format!("{} restarted {restarts} times", view.name));
                    lists.entry("restarted_often").or_default().push(name);
                }
            }
            containers.insert(container_key(&view.name), Value::Object(entry));
        }
        // Containers gone since the last run leave their samples behind.
        self.cpu.retain(|id, _| seen.contains(id));
        self.net.retain(|id, _| seen.contains(id));

        let mut out = Map::new();
        out.insert("available".into(), Value::Bool(true));
        for (k, v) in [
            ("socket", &daemon.socket),
            ("version", &daemon.version),
            ("api_version", &daemon.api_version),
            ("os", &daemon.os),
            ("kernel_version", &daemon.kernel_version),
            ("name", &daemon.name),
            ("driver", &daemon.driver),
        ] {
            out.insert(k.into(), Value::from(v.clone()));
        }
        for (k, v) in [
            ("containers_total", daemon.containers),
            ("containers_running", daemon.running),
            ("containers_paused", daemon.paused),
            ("containers_stopped", daemon.stopped),
            ("images", daemon.images),
            ("containers_not_measured", not_measured as u64),
            ("containers_late", late),
        ] {
            out.insert(k.into(), Value::from(v));
        }
        out.insert("containers".into(), Value::Object(containers));
        for key in [
            "unhealthy",
            "restarting",
            "exited_with_error",
            "oom_killed",
            "restarted_often",
        ] {
            let list = lists.remove(key).unwrap_or_default();
            out.insert(format!("{key}_count"), Value::from(list.len()));
            out.insert(key.into(), Value::Array(list));
        }
        out.insert("criticals".into(), Value::from(criticals));
        out.insert("warnings".into(), Value::from(warnings));
        out
    }
}

/// Bytes per second between two counter readings (0 for the first run or a reset counter).
fn rate(before: u64, now: u64, secs: f64) -> f64 {
    if secs <= 0.0 || now < before {
        return 0.0;
    }
    ((now - before) as f64 / secs * 100.0).round() / 100.0
}

/// Container names the checks leave alone: parameter `ignore`, a list or a comma-separated text.
fn ignored(params: &Params) -> HashSet<String> {
    match params.get("ignore") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| s.trim().trim_start_matches('/').to_owned())
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|s| s.trim().trim_start_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => HashSet::new(),
    }
}

/// The key of a container under `collector.docker.containers`: its name, dots made `_` (a dot
/// would split the path `collector.docker.containers.<name>.cpu_pct`).
pub fn container_key(name: &str) -> String {
    name.replace('.', "_")
}

/// A JSON field as text ("" when missing or not text).
fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A JSON field as an unsigned number (0 when missing; negative → 0).
fn unsigned(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(|n| n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)))
        .unwrap_or(0)
}

/// `/version` and `/info` → what the daemon is.
pub async fn summary(engine: &Engine) -> Result<DaemonSummary, EngineError> {
    let (version, info) = tokio::try_join!(engine.get_json("/version"), engine.get_json("/info"))?;
    Ok(summary_of(
        &engine.socket().display().to_string(),
        &version,
        &info,
    ))
}

/// [`summary`] from the two answers.
pub fn summary_of(socket: &str, version: &Value, info: &Value) -> DaemonSummary {
    let or = |a: String, b: String| if a.is_empty() { b } else { a };
    DaemonSummary {
        socket: socket.to_owned(),
        version: or(text(version, "Version"), text(info, "ServerVersion")),
        api_version: text(version, "ApiVersion"),
        os: or(text(info, "OperatingSystem"), text(version, "Os")),
        kernel_version: or(text(info, "KernelVersion"), text(version, "KernelVersion")),
        name: text(info, "Name"),
        driver: text(info, "Driver"),
        containers: unsigned(info, "Containers"),
        running: unsigned(info, "ContainersRunning"),
        paused: unsigned(info, "ContainersPaused"),
        stopped: unsigned(info, "ContainersStopped"),
        images: unsigned(info, "Images"),
        events: Default::default(),
    }
}

/// `/containers/json?all=1`, sorted by name.
async fn list_containers(engine: &Engine) -> Result<Vec<Value>, EngineError> {
    let list = engine.get_json("/containers/json?all=1").await?;
    let Value::Array(mut items) = list else {
        return Err(EngineError::Protocol(
            "the Docker daemon's container list is not a list".into(),
        ));
    };
    items.sort_by_key(|i| name_of(i, None));
    Ok(items)
}

/// Every container (at most `max`, inspected `concurrency` at a time, within `deadline`; one
/// whose inspect is late or failed is described from the listing alone).
pub async fn containers(
    engine: &Engine,
    max: usize,
    concurrency: usize,
    deadline: Deadline,
) -> Result<Vec<ContainerView>, EngineError> {
    let list = list_containers(engine).await?;
    let mut views: Vec<ContainerView> = futures_util::stream::iter(list.into_iter().take(max))
        .map(|item| async move {
            let id = text(&item, "Id");
            let inspected = if engine::valid_reference(&id) {
                tokio::time::timeout_at(
                    deadline,
                    engine.get_json(&format!("/containers/{id}/json")),
                )
                .await
                .ok()
                .and_then(Result::ok)
            } else {
                None
            };
            container_view(&item, inspected.as_ref())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(views)
}

/// A container's or image's inspect JSON (`what`: `containers` or `images`).
pub async fn inspect(engine: &Engine, what: &str, id: &str) -> Result<Value, EngineError> {
    if !engine::valid_reference(id) {
        return Err(EngineError::NotFound(format!(
            "`{id}` is not a container or image name or id"
        )));
    }
    engine.get_json(&format!("/{what}/{id}/json")).await
}

/// `/images/json`, newest first.
pub async fn images(engine: &Engine) -> Result<Vec<ImageView>, EngineError> {
    let list = engine.get_json("/images/json").await?;
    let Value::Array(items) = list else {
        return Err(EngineError::Protocol(
            "the Docker daemon's image list is not a list".into(),
        ));
    };
    let mut views: Vec<ImageView> = items.iter().map(image_view).collect();
    views.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    Ok(views)
}

/// One item of `/images/json`.
pub fn image_view(item: &Value) -> ImageView {
    ImageView {
        id: text(item, "Id"),
        tags: item
            .get("RepoTags")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(Value::as_str)
                    .filter(|t| *t != "<none>:<none>")
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        size: unsigned(item, "Size"),
        created: item.get("Created").and_then(Value::as_i64).unwrap_or(0),
        containers: item.get("Containers").and_then(Value::as_i64).unwrap_or(-1),
    }
}

/// A container's name: inspect's `Name`, else the listing's first of `Names`, without the `/`.
fn name_of(item: &Value, inspected: Option<&Value>) -> String {
    let from_inspect = inspected.map(|i| text(i, "Name")).unwrap_or_default();
    let name = if from_inspect.is_empty() {
        item.get("Names")
            .and_then(Value::as_array)
            .and_then(|n| n.first())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    } else {
        from_inspect
    };
    name.trim_start_matches('/').to_owned()
}

/// One container from its `/containers/json` item and, when it came, its inspect.
pub fn container_view(item: &Value, inspected: Option<&Value>) -> ContainerView {
    let state = inspected.and_then(|i| i.get("State"));
    let state_word = state
        .map(|s| text(s, "Status"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| text(item, "State"))
        .to_ascii_lowercase();
    let status = text(item, "Status");
    let health = state
        .and_then(|s| s.get("Health"))
        .map(|h| text(h, "Status"))
        .filter(|h| !h.is_empty() && h != "none")
        .or_else(|| health_in_status(&status));
    let exit_code = state
        .and_then(|s| s.get("ExitCode"))
        .and_then(Value::as_i64)
        .or_else(|| exit_code_in_status(&status));
    let time = |key: &str| {
        state
            .map(|s| text(s, key))
            // Docker's "never": the zero time.
            .filter(|t| !t.is_empty() && !t.starts_with("0001-01-01"))
    };
    let running = state_word == "running" || state_word == "paused";
    ContainerView {
        id: {
            let id = text(item, "Id");
            if id.is_empty() {
                inspected.map(|i| text(i, "Id")).unwrap_or_default()
            } else {
                id
            }
        },
        name: name_of(item, inspected),
        image: {
            let image = text(item, "Image");
            if image.is_empty() {
                inspected
                    .and_then(|i| i.get("Config"))
                    .map(|c| text(c, "Image"))
                    .unwrap_or_default()
            } else {
                image
            }
        },
        state: state_word,
        status,
        health,
        restart_count: inspected
            .and_then(|i| i.get("RestartCount"))
            .and_then(Value::as_u64),
        exit_code,
        oom_killed: state
            .and_then(|s| s.get("OOMKilled"))
            .and_then(Value::as_bool),
        created: item.get("Created").and_then(Value::as_i64),
        started_at: time("StartedAt"),
        finished_at: if running { None } else { time("FinishedAt") },
    }
}

/// `Up 2 hours (unhealthy)` → `unhealthy`; `(health: starting)` → `starting`.
fn health_in_status(status: &str) -> Option<String> {
    let inside = status.rsplit_once('(')?.1.strip_suffix(')')?;
    let word = inside.strip_prefix("health: ").unwrap_or(inside);
    matches!(word, "healthy" | "unhealthy" | "starting").then(|| word.to_owned())
}

/// `Exited (137) 5 seconds ago` → 137.
fn exit_code_in_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split_once(')')?.0.trim().parse().ok()
}

/// One `/containers/{id}/stats` answer → what `docker stats` shows, and the CPU sample to keep.
/// CPU % comes from `precpu_stats` when the daemon filled it (streamed or two-sample stats),
/// else from `prev`, this collector's sample of the previous run (one-shot stats).
pub fn container_stats(
    raw: &Value,
    prev: Option<CpuSample>,
) -> (ContainerStats, Option<CpuSample>) {
    let cpu = raw.get("cpu_stats");
    let sample_of = |c: Option<&Value>| -> Option<CpuSample> {
        let c = c?;
        let total = c.get("cpu_usage").map(|u| unsigned(u, "total_usage"))?;
        let system = unsigned(c, "system_cpu_usage");
        (total > 0 && system > 0).then_some(CpuSample { total, system })
    };
    let now = sample_of(cpu);
    let before = sample_of(raw.get("precpu_stats")).or(prev);
    let online = cpu
        .map(|c| unsigned(c, "online_cpus"))
        .filter(|n| *n > 0)
        .or_else(|| {
            cpu.and_then(|c| c.get("cpu_usage"))
                .and_then(|u| u.get("percpu_usage"))
                .and_then(Value::as_array)
                .map(|a| a.len() as u64)
        })
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let cpu_pct = match (now, before) {
        (Some(n), Some(b)) if n.system > b.system && n.total >= b.total => {
            let pct =
                (n.total - b.total) as f64 / (n.system - b.system) as f64 * online as f64 * 100.0;
            Some((pct * 100.0).round() / 100.0)
        }
        _ => None,
    };
    let mem = raw.get("memory_stats");
    let usage = mem.map(|m| unsigned(m, "usage")).unwrap_or(0);
    // As the docker CLI: page cache is not "used" (cgroup v1 total_inactive_file, v2
    // inactive_file).
    let inner = mem.and_then(|m| m.get("stats"));
    let cache = inner
        .and_then(|s| {
            s.get("total_inactive_file")
                .or_else(|| s.get("inactive_file"))
        })
        .and_then(Value::as_u64)
        .filter(|c| *c < usage)
        .unwrap_or(0);
    let mem_usage = usage - cache;
    let mem_limit = mem.map(|m| unsigned(m, "limit")).unwrap_or(0);
    let mem_pct = if mem_limit > 0 {
        (mem_usage as f64 * 10000.0 / mem_limit as f64).round() / 100.0
    } else {
        0.0
    };
    let (mut net_rx, mut net_tx) = (0u64, 0u64);
    if let Some(nets) = raw.get("networks").and_then(Value::as_object) {
        for n in nets.values() {
            net_rx = net_rx.saturating_add(unsigned(n, "rx_bytes"));
            net_tx = net_tx.saturating_add(unsigned(n, "tx_bytes"));
        }
    }
    let (mut blk_read, mut blk_write) = (0u64, 0u64);
    if let Some(entries) = raw
        .get("blkio_stats")
        .and_then(|b| b.get("io_service_bytes_recursive"))
        .and_then(Value::as_array)
    {
        for e in entries {
            let v = unsigned(e, "value");
            match text(e, "op").to_ascii_lowercase().as_str() {
                "read" => blk_read = blk_read.saturating_add(v),
                "write" => blk_write = blk_write.saturating_add(v),
                _ => {}
            }
        }
    }
    let stats = ContainerStats {
        id: text(raw, "id"),
        name: text(raw, "name").trim_start_matches('/').to_owned(),
        cpu_pct,
        mem_usage,
        mem_limit,
        mem_pct,
        net_rx,
        net_tx,
        net_rx_rate: 0.0,
        net_tx_rate: 0.0,
        blk_read,
        blk_write,
        pids: raw
            .get("pids_stats")
            .and_then(|p| p.get("current"))
            .and_then(Value::as_u64),
    };
    (stats, now)
}

/// Most attributes kept on a bus event, and the longest value.
const MAX_ATTRIBUTES: usize = 32;
const MAX_ATTRIBUTE_LEN: usize = 256;

/// A line of the daemon's event stream as the bus's `docker` event; `None` for what is not
/// worth one: not an event, or a container `exec_*` (a healthcheck runs one every interval;
/// its result comes as `health_status`).
pub fn event_of(v: &Value) -> Option<DockerEvent> {
    let kind = {
        let t = text(v, "Type");
        if t.is_empty() { text(v, "type") } else { t }
    };
    let action = {
        let a = text(v, "Action");
        if a.is_empty() { text(v, "status") } else { a }
    };
    if kind.is_empty() && action.is_empty() {
        return None;
    }
    if kind == "container" && action.starts_with("exec_") {
        return None;
    }
    let actor = v.get("Actor");
    let mut attributes = BTreeMap::new();
    if let Some(a) = actor
        .and_then(|a| a.get("Attributes"))
        .and_then(Value::as_object)
    {
        for (k, val) in a.iter().take(MAX_ATTRIBUTES) {
            let mut s = match val {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if s.len() > MAX_ATTRIBUTE_LEN {
                let mut cut = MAX_ATTRIBUTE_LEN;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
            attributes.insert(k.clone(), s);
        }
    }
    let id = actor
        .map(|a| text(a, "ID"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| text(v, "id"));
    let name = attributes.get("name").cloned().unwrap_or_default();
    let image = attributes
        .get("image")
        .cloned()
        .unwrap_or_else(|| text(v, "from"));
    let daemon_time_ms = v
        .get("timeNano")
        .and_then(Value::as_u64)
        .map(|n| n / 1_000_000)
        .or_else(|| {
            v.get("time")
                .and_then(Value::as_u64)
                .map(|s| s.saturating_mul(1000))
        })
        .unwrap_or(0);
    Some(DockerEvent {
        kind,
        action,
        id,
        name,
        image,
        attributes,
        daemon_time_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_socket_comes_from_the_parameter_then_docker_host_then_the_default() {
        assert_eq!(
            socket_from("unix:///run/d.sock", Some("unix:///x")),
            Ok("/run/d.sock".into())
        );
        assert_eq!(
            socket_from("", Some("unix:///run/user/0/podman.sock")),
            Ok("/run/user/0/podman.sock".into())
        );
        assert_eq!(socket_from(" ", None), Ok(DEFAULT_SOCKET.into()));
        let e = socket_from("", Some("tcp://10.0.0.1:2375")).expect_err("tcp");
        assert!(e.contains("not a unix socket"), "{e}");
    }

    /// The listing and inspect shapes of the Engine API documentation.
    fn listed() -> Value {
        json!({
            "Id": "8dfafdbc3a40", "Names": ["/boring_feynman"], "Image": "ubuntu:latest",
            "ImageID": "d74508fb6632", "Command": "echo 1", "Created": 1367854155,
            "State": "running", "Status": "Up 2 hours (unhealthy)", "Ports": [],
            "Labels": {}, "HostConfig": {"NetworkMode": "default"}
        })
    }

    #[test]
    fn containers_read_their_listing_and_inspect() {
        let bare = container_view(&listed(), None);
        assert_eq!(bare.name, "boring_feynman");
        assert_eq!(bare.health.as_deref(), Some("unhealthy"));
        assert_eq!(bare.restart_count, None);
        let inspected = json!({
            "Id": "8dfafdbc3a40", "Name": "/boring_feynman", "RestartCount": 3,
            "Config": {"Image": "ubuntu"},
            "State": {"Status": "running", "Running": true, "OOMKilled": false, "ExitCode": 0,
                      "StartedAt": "2015-01-06T15:47:32.072697474Z",
                      "FinishedAt": "0001-01-01T00:00:00Z",
                      "Health": {"Status": "healthy", "FailingStreak": 0, "Log": []}}
        });
        let v = container_view(&listed(), Some(&inspected));
        assert_eq!(v.image, "ubuntu:latest");
        assert_eq!(v.state, "running");
        assert_eq!(v.health.as_deref(), Some("healthy"));
        assert_eq!(v.restart_count, Some(3));
        assert_eq!(v.exit_code, Some(0));
        assert_eq!(
            v.started_at.as_deref(),
            Some("2015-01-06T15:47:32.072697474Z")
        );
        assert_eq!(v.finished_at, None);
        // podman: an empty health status is no healthcheck.
        let podman = json!({"State": {"Status": "exited", "ExitCode": 137,
                            "FinishedAt": "2026-12-03T19:15:10Z", "Health": {"Status": ""}}});
        let mut item = listed();
        item["Status"] = json!("Exited (137) 2 seconds ago");
        let v = container_view(&item, Some(&podman));
        assert_eq!(
            (v.state.as_str(), v.health, v.exit_code),
            ("exited", None, Some(137))
        );
        assert_eq!(v.finished_at.as_deref(), Some("2026-12-03T19:15:10Z"));
        assert_eq!(exit_code_in_status("Exited (1) 3 days ago"), Some(1));
        assert_eq!(
            health_in_status("Up 1 second (health: starting)").as_deref(),
            Some("starting")
        );
    }

    #[test]
    fn stats_are_computed_as_docker_stats_does() {
        let raw = json!({
            "id": "abc", "name": "/web", "pids_stats": {"current": 3},
            "networks": {"eth0": {"rx_bytes": 5338, "tx_bytes": 648},
                         "eth5": {"rx_bytes": 4641, "tx_bytes": 648}},
            "memory_stats": {"usage": 6537216, "limit": 67108864,
                             "stats": {"total_inactive_file": 537216}},
            "blkio_stats": {"io_service_bytes_recursive": [
                {"major": 8, "minor": 0, "op": "Read", "value": 4096},
                {"major": 8, "minor": 0, "op": "Write", "value": 8192},
                {"major": 8, "minor": 0, "op": "Total", "value": 12288}]},
            "cpu_stats": {"cpu_usage": {"total_usage": 400, "percpu_usage": [200, 200]},
                          "system_cpu_usage": 2000, "online_cpus": 4},
            "precpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 1000}
        });
        let (s, sample) = container_stats(&raw, None);
        // (400-300)/(2000-1000) × 4 CPUs × 100
        assert_eq!(s.cpu_pct, Some(40.0));
        assert_eq!(
            sample,
            Some(CpuSample {
                total: 400,
                system: 2000
            })
        );
        assert_eq!(s.mem_usage, 6_000_000);
        assert_eq!(s.mem_pct, 8.94);
        assert_eq!((s.net_rx, s.net_tx), (9979, 1296));
        assert_eq!((s.blk_read, s.blk_write), (4096, 8192));
        assert_eq!(s.pids, Some(3));
        assert_eq!(s.name, "web");
        // One-shot stats (no precpu): the previous run's sample, else nothing.
        let mut one_shot = raw.clone();
        one_shot["precpu_stats"] = json!({"cpu_usage": {"total_usage": 0}});
        assert_eq!(container_stats(&one_shot, None).0.cpu_pct, None);
        let prev = CpuSample {
            total: 200,
            system: 1000,
        };
        assert_eq!(container_stats(&one_shot, Some(prev)).0.cpu_pct, Some(80.0));
    }

    #[test]
    fn events_keep_what_happened_to_what() {
        let line = json!({
            "status": "die", "id": "03ab", "from": "localhost/bb:latest", "Type": "container",
            "Action": "die",
            "Actor": {"ID": "03ab", "Attributes": {"exitCode": "137", "image": "localhost/bb:latest", "name": "web"}},
            "scope": "local", "time": 1796325310, "timeNano": 1796325310050802842u64
        });
        let e = event_of(&line).expect("event");
        assert_eq!((e.kind.as_str(), e.action.as_str()), ("container", "die"));
        assert_eq!(
            (e.name.as_str(), e.image.as_str()),
            ("web", "localhost/bb:latest")
        );
        assert_eq!(e.attributes["exitCode"], "137");
        assert_eq!(e.daemon_time_ms, 1796325310050);
        let exec =
            json!({"Type": "container", "Action": "exec_start: sh -c true", "Actor": {"ID": "x"}});
        assert_eq!(event_of(&exec), None);
        assert_eq!(event_of(&Value::Null), None);
        let pod = json!({"Type": "pod", "Action": "create", "Actor": {"ID": "fae6"}});
        assert_eq!(event_of(&pod).map(|e| e.kind), Some("pod".to_owned()));
    }

    #[test]
    fn a_run_lists_containers_and_their_problems() {
        let mut d = Docker::default();
        let daemon = summary_of(
            "/run/docker.sock",
            &json!({"Version": "24.0.7", "ApiVersion": "1.43"}),
            &json!({"Containers": 3, "ContainersRunning": 1, "ContainersStopped": 2, "Images": 2,
                    "OperatingSystem": "Debian GNU/Linux 12 (bookworm)"}),
        );
        let view = |name: &str, state: &str, health: Option<&str>, code: i64| ContainerView {
            id: format!("id-{name}"),
            name: name.into(),
            image: "img".into(),
            state: state.into(),
            status: String::new(),
            health: health.map(str::to_owned),
            restart_count: Some(0),
            exit_code: Some(code),
            ..ContainerView::default()
        };
        let runs = vec![
            Measured {
                view: view("web.1", "running", Some("unhealthy"), 0),
                stats: Some(json!({"memory_stats": {"usage": 10, "limit": 100}})),
                late: false,
            },
            Measured {
                view: view("job", "exited", None, 2),
                stats: None,
                late: false,
            },
            Measured {
                view: view("old", "exited", None, 1),
                stats: None,
                late: true,
            },
        ];
        let params = json!({"ignore": ["old"]})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let out = d.report(&params, &daemon, runs, 0);
        assert_eq!(out["version"], "24.0.7");
        assert_eq!(out["containers_running"], 1);
        assert_eq!(out["containers"]["web_1"]["name"], "web.1");
        assert_eq!(out["containers"]["web_1"]["mem_pct"], 10.0);
        assert_eq!(out["unhealthy"], json!(["web.1"]));
        assert_eq!(out["exited_with_error"], json!(["job"]));
        assert_eq!(out["criticals"], json!(["web.1 is unhealthy"]));
        assert_eq!(out["warnings"], json!(["job exited with code 2"]));
        assert_eq!(out["containers_late"], 1);
        assert_eq!(d.net.len(), 1);
    }

    #[test]
    fn images_read_their_listing() {
        let v = image_view(
            &json!({"Id": "sha256:ec3f", "RepoTags": ["ubuntu:12.04", "<none>:<none>"],
                                   "Created": 1365714795, "Size": 131506275, "Containers": 2}),
        );
        assert_eq!(v.tags, vec!["ubuntu:12.04".to_owned()]);
        assert_eq!(
            (v.size, v.created, v.containers),
            (131506275, 1365714795, 2)
        );
    }
}
