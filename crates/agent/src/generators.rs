//! Generators: configuration files rendered from cluster state (butler's fetch → render →
//! validate → write → reload).
//!
//! Every generator renders its pack template with `node`, `nodes`, `ok_nodes(group=…,
//! if_none='empty'|'raise')` (alive nodes not in maintenance), `services(name, passing=True,
//! tag=…, zone=…, warning=False)` (instances of a service: `node`, `address`, `port`, `tags`,
//! `meta`, `state`), `group(name)` and `kv(key)`. It renders again when the membership
//! (members, their groups, their check states) changes, when a KV key it read changes, and at
//! least every `interval`; changes are debounced. A file is written only when its content
//! differs: the candidate goes through `validate_command` first, then replaces the file
//! atomically (temp file + rename, keeping the old file's mode and owner), then `command` runs
//! once. If validation fails the file is left alone; if the command fails the previous file is
//! put back. Either way the generator is in `error` with the output.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use opsbro_api::generators::{GeneratorView, HistoryEntry};
use opsbro_gossip::MemberState;
use opsbro_packs::GeneratorSpec;
use opsbro_types::NodeUuid;
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::collect::CollectedData;
use crate::events::{Event, EventBus};
use crate::kv::KvHandle;
use crate::membership::Peer;

/// Changes closer together than this make one render.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest a `command` or `validate_command` may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a template waits for one KV read.
const KV_TIMEOUT: Duration = Duration::from_secs(5);
/// History entries kept.
const HISTORY: usize = 500;

#[derive(Default)]
struct Shared {
    views: BTreeMap<String, GeneratorView>,
    history: VecDeque<HistoryEntry>,
    /// Callers of [`GeneratorsHandle::render_all`] waiting for the next full pass.
    waiting: Vec<oneshot::Sender<()>>,
}

/// Generator states and history, for the API.
#[derive(Clone, Default)]
pub struct GeneratorsHandle(Arc<Mutex<Shared>>, Arc<Notify>);

impl GeneratorsHandle {
    /// Every generator.
    pub fn views(&self) -> Vec<GeneratorView> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .views
            .values()
            .cloned()
            .collect()
    }

    /// Render every generator now and return once a pass that started after this call is done
    /// (at once when there is no generator or the loop has stopped).
    pub async fn render_all(&self) {
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if s.views.is_empty() {
                return;
            }
            s.waiting.push(tx);
        }
        self.1.notify_one();
        let _ = rx.await;
    }

    /// Changes, oldest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .history
            .iter()
            .cloned()
            .collect()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut GeneratorView)) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(v) = s.views.get_mut(name) else {
            return;
        };
        let old = v.state.clone();
        f(v);
        let entry = (old != v.state).then(|| HistoryEntry {
            name: name.to_owned(),
            time_ms: crate::host::unix_ms(),
            old_state: old,
            state: v.state.clone(),
            message: v.message.clone().unwrap_or_default(),
        });
        if let Some(e) = entry {
            s.history.push_back(e);
            while s.history.len() > HISTORY {
                s.history.pop_front();
            }
        }
    }
}

/// What the generator loop needs.
pub struct GeneratorsSetup {
    /// The objects of every pack: generators and their templates (replaced by a reload).
    pub objects: watch::Receiver<Arc<opsbro_packs::PackSet>>,
    /// Evaluates `generate_if`.
    pub evaluator: Arc<opsbro_eval::Evaluator>,
    /// Collector values for expressions.
    pub collected: CollectedData,
    /// The cluster membership (this node included).
    pub membership: watch::Receiver<Arc<Vec<Peer>>>,
    /// This node.
    pub me: NodeUuid,
    /// `kv(key)`.
    pub kv: KvHandle,
    /// `leader(election)`.
    pub leaders: LeaderReader,
    /// KV change events.
    pub bus: EventBus,
    /// States for the API.
    pub handle: GeneratorsHandle,
}

/// `kv(key)` for templates: the value, or None for a missing or deleted key.
type KvReader = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A member as templates see it.
fn node_value(p: &Peer) -> serde_json::Value {
    serde_json::json!({
        "name": p.name,
        "uuid": p.uuid.to_string(),
        "addr": p.addr.ip().to_string(),
        "port": p.addr.port(),
        "groups": p.groups,
        "state": p.state.as_str(),
        "zone": p.zone,
        "critical": p.critical,
    })
}

/// Alive (or suspect) and not in maintenance.
fn is_up(p: &Peer) -> bool {
    matches!(p.state, MemberState::Alive | MemberState::Suspect) && p.maintenance.is_none()
}

/// `leader(name)` for templates: the node leading an election, None when none does.
pub type LeaderReader = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// [`render_with`] without elections.
#[cfg(test)]
fn render(
    source: &str,
    name: &str,
    peers: &[Peer],
    me: NodeUuid,
    kv: KvReader,
) -> Result<String, String> {
    render_with(source, name, peers, me, kv, Arc::new(|_: &str| None))
}

/// Render a template against the membership; `kv` reads keys (and records them), `leader`
/// names the leader of an election.
fn render_with(
    source: &str,
    name: &str,
    peers: &[Peer],
    me: NodeUuid,
    kv: KvReader,
    leader: LeaderReader,
) -> Result<String, String> {
    let mut env = Environment::new();
    env.add_function("leader", move |election: String| -> Value {
        match leader(&election) {
            Some(node) => Value::from(node),
            None => Value::UNDEFINED,
        }
    });
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.add_template(name, source)
        .map_err(|e| format!("template: {e:#}"))?;
    let self_peer = peers.iter().find(|p| p.uuid == me);
    let my_groups: Vec<String> = self_peer.map(|p| p.groups.clone()).unwrap_or_default();
    let up: Vec<Peer> = {
        let mut v: Vec<Peer> = peers.iter().filter(|p| is_up(p)).cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    env.add_function("ok_nodes", move |kwargs: Kwargs| -> Result<Value, Error> {
        let group: Option<String> = kwargs.get("group")?;
        let zone: Option<String> = kwargs.get("zone")?;
        let if_none: Option<String> = kwargs.get("if_none")?;
        kwargs.assert_all_used()?;
        let picked: Vec<serde_json::Value> = up
            .iter()
            .filter(|p| {
                group
                    .as_deref()
                    .is_none_or(|g| g.is_empty() || p.groups.iter().any(|x| x == g))
            })
            .filter(|p| zone.as_deref().is_none_or(|z| z.is_empty() || p.zone == z))
            .map(node_value)
            .collect();
        if picked.is_empty() && if_none.as_deref() == Some("raise") {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "no alive node in group `{}` (if_none='raise')",
                    group.unwrap_or_default()
                ),
            ));
        }
        Ok(Value::from_serialize(&picked))
    });
    let all_instances = crate::catalog::instances(peers, false);
    let warn_instances = crate::catalog::instances(peers, true);
    env.add_function(
        "services",
        move |name: String, kwargs: Kwargs| -> Result<Value, Error> {
            let passing: Option<bool> = kwargs.get("passing")?;
            let warning: Option<bool> = kwargs.get("warning")?;
            let tag: Option<String> = kwargs.get("tag")?;
            let zone: Option<String> = kwargs.get("zone")?;
            kwargs.assert_all_used()?;
            let from = if warning.unwrap_or(false) {
                &warn_instances
            } else {
                &all_instances
            };
            let picked: Vec<serde_json::Value> = from
                .get(&name)
                .into_iter()
                .flatten()
                .filter(|i| !passing.unwrap_or(true) || i.passing)
                .filter(|i| tag.as_deref().is_none_or(|t| i.tags.iter().any(|x| x == t)))
                .filter(|i| zone.as_deref().is_none_or(|z| i.zone == z))
                .map(|i| {
                    serde_json::json!({
                        "name": i.service,
                        "node": i.node,
                        "uuid": i.uuid.to_string(),
                        "zone": i.zone,
                        "address": i.address.to_string(),
                        "addr": i.address.to_string(),
                        "port": i.port,
                        "tags": i.tags,
                        "meta": i.meta,
                        "state": i.state,
                        "passing": i.passing,
                        "maintenance": i.maintenance.is_some() || i.node_maintenance.is_some(),
                    })
                })
                .collect();
            Ok(Value::from_serialize(&picked))
        },
    );
    env.add_function("group", move |g: String| my_groups.contains(&g));
    env.add_function("kv", move |key: String| -> Value {
        match kv(&key) {
            Some(v) => Value::from(v),
            None => Value::UNDEFINED,
        }
    });
    let nodes: Vec<serde_json::Value> = peers.iter().map(node_value).collect();
    let node = self_peer.map(node_value).unwrap_or(serde_json::Value::Null);
    let tmpl = env
        .get_template(name)
        .map_err(|e| format!("template: {e:#}"))?;
    tmpl.render(minijinja::context! { node => node, nodes => nodes })
        .map_err(|e| format!("render: {e:#}"))
}

/// The new file in partial mode: `block` between the markers, the rest of `existing` kept; the
/// markers and block are appended when the file has none. A start marker without its end is
/// refused: guessing where the block ends could delete the user's lines.
pub fn apply_partial(
    existing: &str,
    start: &str,
    end: &str,
    block: &str,
) -> Result<String, String> {
    let mut block = block.to_owned();
    if !block.is_empty() && !block.ends_with('\n') {
        block.push('\n');
    }
    let wrapped = format!("{start}\n{block}{end}\n");
    let lines: Vec<&str> = existing.split_inclusive('\n').collect();
    let s = lines.iter().position(|l| l.trim_end() == start);
    let e = s.and_then(|s| {
        lines[s + 1..]
            .iter()
            .position(|l| l.trim_end() == end)
            .map(|i| i + s + 1)
    });
    match (s, e) {
        (Some(s), Some(e)) => {
            let mut out: String = lines[..s].concat();
            out.push_str(&wrapped);
            out.push_str(&lines[e + 1..].concat());
            Ok(out)
        }
        (Some(_), None) => Err(format!(
            "the file has the start marker `{start}` but not the end marker `{end}` after it: \
             fix the file by hand (nothing was changed)"
        )),
        _ => {
            let mut out = existing.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&wrapped);
            Ok(out)
        }
    }
}

/// Lines removed (`-`) and added (`+`), in order (longest common subsequence; very large files
/// are summarised).
pub fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len() * b.len() > 4_000_000 {
        return format!("{} lines replaced by {} lines\n", a.len(), b.len());
    }
    // lcs[i][j] = LCS length of a[i..] and b[j..]
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+{}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("-{}\n", a[i]));
            i += 1;
        }
    }
    out
}

/// A generator's `command` / `validate_command` for the file at `path`: `{{path}}` (or
/// `{{ path }}`) reaches the shell as a positional argument, never as text; everything else is
/// the operator's shell text as written (a `docker ... --format '{{.Names}}'` stays as it is).
fn command_for(template: &str, path: &Path) -> Result<opsbro_checks::ShellCommand, String> {
    use opsbro_checks::shell::{MARK_END, MARK_START, Unquoted, marker, place_arguments};
    if template.contains([MARK_START, MARK_END]) {
        return Err("the command contains control characters".into());
    }
    let text = template
        .replace("{{path}}", &marker(0))
        .replace("{{ path }}", &marker(0));
    place_arguments(
        &text,
        vec![path.to_string_lossy().into_owned()],
        Unquoted::Word,
    )
    .map_err(|e| e.to_string())
}

/// Run `sh -c command` in its own process group, killed at the timeout; exit code and output
/// (stdout then stderr, capped).
async fn run_shell(command: &opsbro_checks::ShellCommand) -> (Option<i32>, String) {
    let mut child = match crate::host::shell(command).spawn() {
        Ok(c) => c,
        Err(e) => return (None, format!("cannot run /bin/sh: {e}")),
    };
    let mut guard = crate::host::ProcessGroupGuard::new(child.id());
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return (None, "no pipes to the command".into());
    };
    let finished = tokio::time::timeout(COMMAND_TIMEOUT, async {
        tokio::join!(
            crate::monitoring::read_capped(stdout),
            crate::monitoring::read_capped(stderr),
            child.wait()
        )
    })
    .await;
    let Ok(((out, _), (err, _), status)) = finished else {
        guard.kill();
        let _ = child.wait().await;
        return (
            None,
            format!("killed: still running after {COMMAND_TIMEOUT:?}"),
        );
    };
    guard.disarm();
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push_str(&String::from_utf8_lossy(&err));
    (status.ok().and_then(|s| s.code()), text.trim().to_owned())
}

/// A new file in `dir` that nobody else prepared: exclusive creation (an existing name, even a
/// symlink planted by another user of a shared directory, is never opened), random name.
fn create_private(dir: &Path, stem: &str) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut last = None;
    for _ in 0..8 {
        let tmp = dir.join(format!(".{stem}.opsbro-{:016x}", rand::random::<u64>()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Write `content` to a new private file in `dir` with `like`'s mode and owner when given, else
/// `mode`; returns its path. Owner and permissions are set on the open file, never by name.
fn write_private(
    dir: &Path,
    stem: &str,
    content: &str,
    like: Option<&std::fs::Metadata>,
    mode: u32,
) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (tmp, mut file) = create_private(dir, stem)?;
    let result = (|| {
        file.write_all(content.as_bytes())?;
        if let Some(m) = like {
            // Only root can give a file away; otherwise it stays ours.
            let _ = std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()));
        }
        let perms = match like {
            Some(m) => m.permissions(),
            None => std::fs::Permissions::from_mode(mode),
        };
        file.set_permissions(perms)?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Write `content` to `path` atomically (a private temporary file renamed over it), with
/// `like`'s mode and owner when it exists, else `mode`.
fn write_atomic(
    path: &Path,
    content: &str,
    like: Option<&std::fs::Metadata>,
    mode: u32,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = write_private(dir, &stem, content, like, mode)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// What one pass of one generator did.
enum Outcome {
    NotEligible,
    Unchanged,
    Written {
        diff: String,
        output: String,
    },
    Failed {
        message: String,
        output: Option<String>,
    },
}

struct Generator {
    spec: GeneratorSpec,
    template: String,
    /// KV keys the last render read.
    keys: HashSet<String>,
    next_run: tokio::time::Instant,
}

/// Render and apply one generator.
async fn apply(g: &mut Generator, setup: &GeneratorsSetup, peers: Arc<Vec<Peer>>) -> Outcome {
    let spec = &g.spec;
    let collected = setup.collected.clone();
    let evaluator = setup.evaluator.clone();
    let expr = spec.generate_if.clone();
    let eligible = tokio::task::spawn_blocking(move || {
        evaluator.eval_bool(&expr, &crate::collect::resolver(&collected))
    })
    .await;
    match eligible {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Outcome::NotEligible,
        Ok(Err(e)) => {
            return Outcome::Failed {
                message: format!("generate_if: {e}"),
                output: None,
            };
        }
        Err(e) => {
            return Outcome::Failed {
                message: format!("generate_if: {e}"),
                output: None,
            };
        }
    }
    // The template runs on a blocking thread; `kv(key)` waits there for the store.
    let used = Arc::new(Mutex::new(BTreeSet::new()));
    let kv_used = used.clone();
    let kv = setup.kv.clone();
    let runtime = tokio::runtime::Handle::current();
    let reader: KvReader = Arc::new(move |key: &str| {
        kv_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned());
        kv.get_text_blocking(&runtime, key, KV_TIMEOUT)
    });
    let (source, name, me) = (g.template.clone(), spec.name.clone(), setup.me);
    let leaders = setup.leaders.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        render_with(&source, &name, &peers, me, reader, leaders)
    })
    .await;
    g.keys = used
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    let rendered = match rendered {
        Ok(Ok(r)) => r,
        Ok(Err(message)) => {
            return Outcome::Failed {
                message,
                output: None,
            };
        }
        Err(e) => {
            return Outcome::Failed {
                message: format!("render: {e}"),
                output: None,
            };
        }
    };
    let old = std::fs::read_to_string(&spec.path).ok();
    let meta = std::fs::metadata(&spec.path).ok();
    let new = match &spec.partial {
        Some((start, end)) => {
            match apply_partial(old.as_deref().unwrap_or(""), start, end, &rendered) {
                Ok(n) => n,
                Err(message) => {
                    return Outcome::Failed {
                        message,
                        output: None,
                    };
                }
            }
        }
        None => rendered,
    };
    if old.as_deref() == Some(new.as_str()) {
        return Outcome::Unchanged;
    }
    if let Some(validate) = &spec.validate_command {
        let dir = spec.path.parent().unwrap_or(Path::new("/"));
        let stem = spec
            .path
            .file_name()
            .map(|n| format!("{}.candidate", n.to_string_lossy()))
            .unwrap_or_default();
        let candidate = match std::fs::create_dir_all(dir)
            .and_then(|()| write_private(dir, &stem, &new, meta.as_ref(), spec.mode))
        {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Failed {
                    message: format!("cannot write the candidate in {}: {e}", dir.display()),
                    output: None,
                };
            }
        };
        let line = match command_for(validate, &candidate) {
            Ok(line) => line,
            Err(message) => {
                let _ = std::fs::remove_file(&candidate);
                return Outcome::Failed {
                    message: format!("validate_command: {message}"),
                    output: None,
                };
            }
        };
        let (code, output) = run_shell(&line).await;
        let _ = std::fs::remove_file(&candidate);
        if code != Some(0) {
            return Outcome::Failed {
                message: format!(
                    "validate_command refused the new file ({}); {} left as it was",
                    code.map_or("killed".into(), |c| format!("exit {c}")),
                    spec.path.display()
                ),
                output: Some(output),
            };
        }
    }
    if let Err(e) = write_atomic(&spec.path, &new, meta.as_ref(), spec.mode) {
        return Outcome::Failed {
            message: format!("cannot write {}: {e}", spec.path.display()),
            output: None,
        };
    }
    let diff = line_diff(old.as_deref().unwrap_or(""), &new);
    let Some(command) = &spec.command else {
        return Outcome::Written {
            diff,
            output: String::new(),
        };
    };
    let (code, output) = match command_for(command, &spec.path) {
        Ok(line) => run_shell(&line).await,
        Err(message) => (None, format!("command: {message}")),
    };
    if code == Some(0) {
        return Outcome::Written { diff, output };
    }
    // The reload failed: put the previous file back.
    let restored = match &old {
        Some(text) => write_atomic(&spec.path, text, meta.as_ref(), spec.mode),
        None => std::fs::remove_file(&spec.path),
    };
    Outcome::Failed {
        message: format!(
            "command failed ({}); {}",
            code.map_or("killed".into(), |c| format!("exit {c}")),
            match restored {
                Ok(()) => "the previous file is restored".to_owned(),
                Err(e) => format!("and the previous file could not be restored: {e}"),
            }
        ),
        output: Some(output),
    }
}

/// Run every generator until `shutdown`.
/// The generators of `objects`, keeping what the previous ones knew (KV keys read, next run)
/// for those whose name is still there; the API views follow (new ones `pending`, gone ones
/// removed, kept ones as they were).
fn build(
    objects: &opsbro_packs::PackSet,
    mut old: Vec<Generator>,
    handle: &GeneratorsHandle,
) -> Vec<Generator> {
    let mut gens = Vec::new();
    let mut shared = handle.0.lock().unwrap_or_else(PoisonError::into_inner);
    for spec in objects.generators() {
        let Some(template) = objects
            .packs
            .get(&spec.pack)
            .and_then(|p| p.templates.get(&spec.template))
            .cloned()
        else {
            continue;
        };
        let previous = old
            .iter()
            .position(|g| g.spec.name == spec.name)
            .map(|i| old.swap_remove(i));
        shared
            .views
            .entry(spec.name.clone())
            .or_insert_with(|| GeneratorView {
                name: spec.name.clone(),
                pack: spec.pack.clone(),
                path: spec.path.display().to_string(),
                state: "pending".into(),
                message: None,
                last_run_ms: None,
                last_change_ms: None,
                diff: None,
                command_output: None,
                runs: 0,
                writes: 0,
            })
            .path = spec.path.display().to_string();
        gens.push(Generator {
            spec: spec.clone(),
            template,
            keys: previous
                .as_ref()
                .map(|g| g.keys.clone())
                .unwrap_or_default(),
            next_run: tokio::time::Instant::now(),
        });
    }
    shared
        .views
        .retain(|name, _| gens.iter().any(|g| &g.spec.name == name));
    gens
}

/// Render every generator now, then on changes (membership, KV keys read, interval, a reload).
pub async fn run(setup: GeneratorsSetup, shutdown: CancellationToken) {
    let mut objects = setup.objects.clone();
    let mut gens = build(&objects.borrow_and_update(), Vec::new(), &setup.handle);
    let mut events: broadcast::Receiver<Arc<Event>> = setup.bus.subscribe();
    let mut membership = setup.membership.clone();
    // Which generators must render now (all, the first time).
    let mut due: Vec<bool> = vec![true; gens.len()];
    // Callers of `render_all` this pass serves.
    let mut serving: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let peers = membership.borrow_and_update().clone();
        for (i, g) in gens.iter_mut().enumerate() {
            if !due[i] && tokio::time::Instant::now() < g.next_run {
                continue;
            }
            due[i] = false;
            g.next_run = tokio::time::Instant::now() + g.spec.interval;
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                o = apply(g, &setup, peers.clone()) => o,
            };
            let now = crate::host::unix_ms();
            setup.handle.update(&g.spec.name, |v| {
                v.runs += 1;
                v.last_run_ms = Some(now);
                match outcome {
                    Outcome::NotEligible => {
                        v.state = "not-eligible".into();
                        v.message = Some("generate_if is false".into());
                    }
                    Outcome::Unchanged => {
                        v.state = "compliant".into();
                        v.message = Some("the file is up to date".into());
                    }
                    Outcome::Written { diff, output } => {
                        tracing::info!(generator = %g.spec.name, path = %g.spec.path.display(), "file generated");
                        v.state = "compliant".into();
                        v.message = Some(format!("{} written", g.spec.path.display()));
                        v.last_change_ms = Some(now);
                        v.writes += 1;
                        v.diff = Some(diff);
                        v.command_output = Some(output);
                    }
                    Outcome::Failed { message, output } => {
                        tracing::warn!(generator = %g.spec.name, error = %message, "generator failed");
                        v.state = "error".into();
                        v.message = Some(message);
                        if output.is_some() {
                            v.command_output = output;
                        }
                    }
                }
            });
        }
        for tx in serving.drain(..) {
            let _ = tx.send(());
        }
        // Sleep until the next interval or a change that matters, then let changes settle.
        let wake = gens
            .iter()
            .map(|g| g.next_run)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(10));
        let mut changed = false;
        while !changed {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(wake) => break,
                Ok(()) = objects.changed() => {
                    // A reload: every generator renders with its new spec and template.
                    gens = build(&objects.borrow_and_update(), std::mem::take(&mut gens), &setup.handle);
                    due = vec![true; gens.len()];
                    break;
                }
                () = setup.handle.1.notified() => {
                    serving = std::mem::take(
                        &mut setup.handle.0.lock().unwrap_or_else(PoisonError::into_inner).waiting,
                    );
                    due.iter_mut().for_each(|d| *d = true);
                    break;
                }
                r = membership.changed() => {
                    if r.is_err() {
                        return;
                    }
                    due.iter_mut().for_each(|d| *d = true);
                    changed = true;
                }
                e = events.recv() => match e {
                    // A leader changed: templates that call leader() render again.
                    Ok(ev) if ev.channel() == "raft" => {
                        due.iter_mut().for_each(|d| *d = true);
                        changed = true;
                    }
                    Ok(ev) if ev.channel() == "kv" => {
                        let key = match &ev.payload {
                            opsbro_api::events::Payload::Kv(k) => k.key.as_str(),
                            _ => "",
                        };
                        for (i, g) in gens.iter().enumerate() {
                            if g.keys.contains(key) {
                                due[i] = true;
                                changed = true;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        setup.bus.record_dropped(n);
                        due.iter_mut().for_each(|d| *d = true);
                        changed = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
        if changed {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(DEBOUNCE) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_path_reaches_the_commands_as_an_argument_and_the_rest_as_written() {
        let cmd = command_for(
            "haproxy -c -f {{path}} && docker ps --format '{{.Names}}' && echo \"{{ path }}\"",
            Path::new("/etc/x/$(reboot).cfg"),
        )
        .expect("command");
        assert_eq!(
            cmd.script,
            "haproxy -c -f \"${1}\" && docker ps --format '{{.Names}}' && echo \"${1}\""
        );
        assert_eq!(cmd.args, ["/etc/x/$(reboot).cfg"]);
    }

    #[test]
    fn partial_blocks_replace_or_append_and_keep_the_rest() {
        let file = "ssh-rsa AAA admin\n# BEGIN opsbro\nold key\n# END opsbro\nssh-rsa BBB backup\n";
        let p = |f: &str, s: &str, e: &str, b: &str| apply_partial(f, s, e, b).expect("partial");
        assert_eq!(
            p(
                file,
                "# BEGIN opsbro",
                "# END opsbro",
                "new key 1\nnew key 2"
            ),
            "ssh-rsa AAA admin\n# BEGIN opsbro\nnew key 1\nnew key 2\n# END opsbro\nssh-rsa BBB backup\n"
        );
        assert_eq!(
            p("line\nno newline", "#B", "#E", "x\n"),
            "line\nno newline\n#B\nx\n#E\n"
        );
        assert_eq!(p("", "#B", "#E", ""), "#B\n#E\n");
        // Idempotent.
        let once = p(file, "# BEGIN opsbro", "# END opsbro", "k\n");
        assert_eq!(p(&once, "# BEGIN opsbro", "# END opsbro", "k\n"), once);
        // A start marker without its end: refused, the user's lines are safe.
        assert!(apply_partial("a\n#B\nmine\n", "#B", "#E", "x").is_err());
    }

    #[test]
    fn diffs_show_removed_and_added_lines() {
        assert_eq!(line_diff("a\nb\nc\n", "a\nc\nd\n"), "-b\n+d\n");
        assert_eq!(line_diff("", "x\n"), "+x\n");
        assert_eq!(line_diff("same\n", "same\n"), "");
    }

    fn peer(name: &str, groups: &[&str], state: MemberState) -> Peer {
        Peer {
            uuid: NodeUuid::new_random(),
            name: name.into(),
            addr: "10.0.0.1:6768".parse().expect("addr"),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            state,
            zone: "lan".into(),
            critical: false,
            maintenance: None,
            services: Vec::new(),
        }
    }

    #[test]
    fn templates_see_services_and_skip_nodes_in_maintenance() {
        let svc =
            |state: opsbro_checks::CheckState, tag: &str, port: u16| opsbro_gossip::ServiceRecord {
                name: "web".into(),
                port,
                address: None,
                tags: vec![tag.into()],
                meta: vec![],
                state: state.to_wire(),
                maintenance: None,
            };
        let mut peers = vec![
            peer("a", &["web"], MemberState::Alive),
            peer("b", &["web"], MemberState::Alive),
            peer("c", &["web"], MemberState::Alive),
            peer("d", &["web"], MemberState::Alive),
        ];
        peers[0].services = vec![svc(opsbro_checks::CheckState::Ok, "primary", 8080)];
        peers[1].services = vec![svc(opsbro_checks::CheckState::Critical, "primary", 8081)];
        peers[2].services = vec![svc(opsbro_checks::CheckState::Warning, "backup", 8082)];
        peers[3].services = vec![svc(opsbro_checks::CheckState::Ok, "backup", 8083)];
        peers[3].maintenance = Some("reboot".into());
        let me = peers[0].uuid;
        let kv: KvReader = Arc::new(|_: &str| None);
        let out = render(
            "{% for s in services('web') %}{{ s.node }}:{{ s.port }} {% endfor %}|\
             {% for s in services('web', passing=False) %}{{ s.node }} {% endfor %}|\
             {% for s in services('web', warning=True, tag='backup') %}{{ s.node }} {% endfor %}|\
             {{ services('nope')|length }}|{% for n in ok_nodes(group='web') %}{{ n.name }} {% endfor %}",
            "t",
            &peers,
            me,
            kv,
        )
        .expect("render");
        assert_eq!(out, "a:8080 |a b c d |c |0|a b c ");
    }

    #[test]
    fn templates_see_nodes_groups_and_kv() {
        let peers = vec![
            peer("web-2", &["web"], MemberState::Alive),
            peer("web-1", &["web"], MemberState::Alive),
            peer("web-3", &["web"], MemberState::Dead),
            peer("db", &["db"], MemberState::Alive),
        ];
        let me = peers[3].uuid;
        let kv: KvReader = Arc::new(|k: &str| (k == "app/port").then(|| "8080".to_owned()));
        let out = render(
            "{% for n in ok_nodes(group='web') %}server {{ n.name }} {{ n.addr }}:{{ kv('app/port') }}\n{% endfor %}\
             me={{ node.name }} db={{ group('db') }} web={{ group('web') }} all={{ nodes|length }} missing=[{{ kv('nope') }}]\n",
            "t",
            &peers,
            me,
            kv.clone(),
        )
        .expect("render");
        assert_eq!(
            out,
            "server web-1 10.0.0.1:8080\nserver web-2 10.0.0.1:8080\nme=db db=True web=False all=4 missing=[]\n"
        );
        let err = render(
            "{{ ok_nodes(group='cache', if_none='raise') }}",
            "t",
            &peers,
            me,
            kv.clone(),
        )
        .expect_err("raise");
        assert!(err.contains("no alive node in group `cache`"), "{err}");
        assert_eq!(
            render("{{ ok_nodes(group='cache')|length }}", "t", &peers, me, kv).expect("empty"),
            "0"
        );
    }
}
