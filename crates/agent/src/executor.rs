//! Signed remote execution (`opsbro executors exec GROUP CMD`).
//!
//! **As a target**, the agent takes the cluster connections whose first frame is a signed
//! request ([`opsbro_exec::KIND_REQUEST`]), checks it ([`opsbro_exec::Verifier`]: an authorized
//! key, a valid signature, not expired, not from too far ahead, never seen; then: this node is
//! a target, the key is within its rate, fewer than [`MAX_RUNNING`] commands run here), runs
//! the command with `/bin/sh -c` in a process group of its own, killed at the request's timeout,
//! and answers on the same connection: a `started` line, then the result (or at once, why it
//! refused). Nothing runs without a signature, whatever the cluster key: the cluster key only
//! lets a frame in.
//!
//! **As requester**, the agent takes a signed request from the local API, chooses the targets
//! (the alive members the request is for, itself included), opens a sealed cluster connection
//! to each (itself: no connection) and streams their answers back. A target that cannot be
//! reached, does not accept within [`ACCEPT_WITHIN`], or sends no result by the request's
//! timeout plus [`GRACE`] is reported `unreachable`.
//!
//! Keys are read from `executor.authorized_keys` and `executor.authorized_keys_file`, at start
//! and on reload; they are never gossiped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opsbro_api::events::Payload;
use opsbro_api::executors::{
    ExecLine, ExecResult, ExecSummary, ExecutorInfo, HistoryEntry, KeyView,
};
use opsbro_config::{AuthorizedKey, ExecutorSettings};
use opsbro_exec::{RateLimiter, Refusal, Request, Verifier};
use opsbro_gossip::MemberState;
use opsbro_types::NodeUuid;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{self, Accepted, SharedKeyring};
use crate::events::EventBus;
use crate::host::unix_ms;
use crate::membership::{Membership, Peer};

/// Commands running at once on a node (more are refused as busy).
pub const MAX_RUNNING: usize = 16;
/// Exec connections served at once (more are closed at once).
const MAX_CONNECTIONS: usize = 64;
/// Executions kept for `executors history`.
const HISTORY: usize = 200;
/// Connecting to a target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A target that has not accepted (or refused) a request this long after it was sent is
/// reported unreachable.
pub const ACCEPT_WITHIN: Duration = Duration::from_secs(10);
/// How long past the command's timeout a requester waits for a target's result.
pub const GRACE: Duration = Duration::from_secs(10);

/// What the executor needs.
pub struct ExecutorSetup {
    /// This node's name.
    pub name: String,
    /// This node's uuid (its own entry in the membership).
    pub uuid: NodeUuid,
    /// `executor:`.
    pub settings: ExecutorSettings,
    /// Seals the connections to targets.
    pub keyring: SharedKeyring,
    /// Who the targets are.
    pub membership: Membership,
    /// Where executions are told (`exec` channel).
    pub bus: EventBus,
    /// The cluster listener's exec connections.
    pub connections: mpsc::Receiver<Accepted>,
}

/// The keys and the limits that come from the configuration (replaced on reload).
struct Keys {
    verifier: Verifier,
    limiter: RateLimiter,
    views: Vec<KeyView>,
    private_key_file: Option<std::path::PathBuf>,
    max_per_minute: u32,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    ran: AtomicU64,
    timed_out: AtomicU64,
    refused: Mutex<std::collections::BTreeMap<String, u64>>,
    requests_sent: AtomicU64,
    unreachable: AtomicU64,
}

struct Inner {
    name: String,
    uuid: NodeUuid,
    keys: Mutex<Keys>,
    running: AtomicUsize,
    counters: Counters,
    history: Mutex<VecDeque<HistoryEntry>>,
    membership: Membership,
    keyring: SharedKeyring,
    bus: EventBus,
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// The executor; cheap to clone.
#[derive(Clone)]
pub struct ExecutorHandle(Arc<Inner>);

/// Why a requested execution was not sent.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request does not parse.
    #[error("{0}")]
    Invalid(String),
    /// No alive member is a target.
    #[error("{0}")]
    NoTarget(String),
}

/// The authorized keys of `settings`: its list, then its file's lines.
pub fn load_keys(settings: &ExecutorSettings) -> Result<Vec<AuthorizedKey>, String> {
    let mut keys = settings.authorized_keys.clone();
    if let Some(path) = &settings.authorized_keys_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read executor.authorized_keys_file {}: {e}",
                path.display()
            )
        })?;
        let more = AuthorizedKey::parse_file(&text)
            .map_err(|e| format!("executor.authorized_keys_file {}: {e}", path.display()))?;
        keys.extend(more);
    }
    Ok(keys)
}

fn keys_of(settings: &ExecutorSettings, authorized: Vec<AuthorizedKey>) -> Keys {
    Keys {
        views: authorized
            .iter()
            .map(|k| KeyView {
                id: k.key.id_hex(),
                comment: k.comment.clone(),
            })
            .collect(),
        verifier: Verifier::new(authorized.into_iter().map(|k| k.key)),
        limiter: RateLimiter::new(settings.max_per_minute),
        private_key_file: settings.private_key_file.clone(),
        max_per_minute: settings.max_per_minute,
    }
}

/// Releases a running slot when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ExecutorHandle {
    /// Read the keys and serve the exec connections until `stop`.
    pub fn start(
        setup: ExecutorSetup,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<ExecutorHandle, String> {
        let authorized = load_keys(&setup.settings)?;
        if authorized.is_empty() {
            tracing::info!(
                "executor disabled: no executor.authorized_keys (remote commands are refused)"
            );
        } else {
            tracing::info!(
                keys = authorized.len(),
                "executor enabled: signed commands from the authorized keys run here"
            );
        }
        let handle = ExecutorHandle(Arc::new(Inner {
            name: setup.name,
            uuid: setup.uuid,
            keys: Mutex::new(keys_of(&setup.settings, authorized)),
            running: AtomicUsize::new(0),
            counters: Counters::default(),
            history: Mutex::new(VecDeque::new()),
            membership: setup.membership,
            keyring: setup.keyring,
            bus: setup.bus,
            tracker: tracker.clone(),
            stop: stop.clone(),
        }));
        tracker.spawn(handle.clone().accept(setup.connections, stop));
        Ok(handle)
    }

    /// Take the keys and limits of a reloaded configuration (the ids already seen stay
    /// remembered); what changed, for the reload report.
    pub fn apply(&self, settings: &ExecutorSettings) -> Result<Vec<String>, String> {
        let authorized = load_keys(settings)?;
        let mut keys = self.keys();
        let before: Vec<String> = keys.views.iter().map(|k| k.id.clone()).collect();
        let after: Vec<String> = authorized.iter().map(|k| k.key.id_hex()).collect();
        let mut changes = Vec::new();
        if before != after {
            changes.push(format!(
                "executor.authorized_keys: {} -> {} keys",
                before.len(),
                after.len()
            ));
        }
        if keys.max_per_minute != settings.max_per_minute {
            changes.push(format!(
                "executor.max_per_minute: {} -> {}",
                keys.max_per_minute, settings.max_per_minute
            ));
            keys.limiter = RateLimiter::new(settings.max_per_minute);
            keys.max_per_minute = settings.max_per_minute;
        }
        if keys.private_key_file != settings.private_key_file {
            changes.push("executor.private_key_file: changed".into());
            keys.private_key_file = settings.private_key_file.clone();
        }
        keys.views = authorized
            .iter()
            .map(|k| KeyView {
                id: k.key.id_hex(),
                comment: k.comment.clone(),
            })
            .collect();
        keys.verifier
            .set_keys(authorized.into_iter().map(|k| k.key));
        Ok(changes)
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.0.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `GET /executors/state` and `agent info`.
    pub fn info(&self) -> ExecutorInfo {
        let keys = self.keys();
        let c = &self.0.counters;
        let mut refused: std::collections::BTreeMap<String, u64> = Refusal::REASONS
            .iter()
            .map(|r| ((*r).to_owned(), 0))
            .collect();
        refused.extend(
            c.refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(k, v)| (k.clone(), *v)),
        );
        ExecutorInfo {
            enabled: keys.verifier.enabled(),
            authorized_keys: keys.views.clone(),
            private_key_file: keys
                .private_key_file
                .as_ref()
                .map(|p| p.display().to_string()),
            max_per_minute: keys.max_per_minute,
            running: self.0.running.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            ran: c.ran.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            refused,
            requests_sent: c.requests_sent.load(Ordering::Relaxed),
            unreachable: c.unreachable.load(Ordering::Relaxed),
        }
    }

    /// The last `limit` executions, oldest first.
    pub fn history(&self, limit: usize) -> Vec<HistoryEntry> {
        let h = self
            .0
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        h.iter()
            .skip(h.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    /// Tell the bus; keep it in the history when it is final (`running` and `sent` are
    /// replaced by the entry of how it ended).
    fn record(&self, entry: HistoryEntry) {
        if matches!(entry.state.as_str(), "running" | "sent") {
            self.0.bus.publish(Payload::Exec(entry), None);
            return;
        }
        {
            let mut h = self
                .0
                .history
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if h.len() >= HISTORY {
                h.pop_front();
            }
            h.push_back(entry.clone());
        }
        self.0.bus.publish(Payload::Exec(entry), None);
    }

    /// Sign a request with `executor.private_key_file` (the API's unsigned form).
    pub fn sign_with_own_key(&self, request: &Request) -> Result<Vec<u8>, String> {
        let path = self.keys().private_key_file.clone().ok_or(
            "no key to sign with: pass --key FILE (from `opsbro executors keygen`) or set executor.private_key_file",
        )?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read executor.private_key_file {}: {e}",
                path.display()
            )
        })?;
        let key = opsbro_exec::SigningKey::from_file(&text)
            .map_err(|e| format!("executor.private_key_file {}: {e}", path.display()))?;
        Ok(key.sign(request))
    }

    /// This node's name (the default requester).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    async fn accept(self, mut connections: mpsc::Receiver<Accepted>, stop: CancellationToken) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = connections.recv() => match a {
                    Some(a) => a,
                    None => return,
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(peer = %accepted.peer, "too many exec connections; closed");
                continue;
            };
            let me = self.clone();
            self.0.tracker.spawn(async move {
                me.serve(accepted).await;
                drop(slot);
            });
        }
    }

    /// One request from another node: verify, run, answer on the connection.
    async fn serve(&self, accepted: Accepted) {
        let Accepted {
            mut stream,
            peer,
            first,
        } = accepted;
        let signed = first.get(1..).unwrap_or_default();
        let (tx, mut rx) = mpsc::channel::<ExecLine>(4);
        let run = self.run_as_target(signed, Some(peer), tx);
        let keyring = self.0.keyring.clone();
        // Answer in the requester's zone (it may not hold this zone's key), found by address.
        let zone: Option<String> = self
            .0
            .membership
            .borrow()
            .iter()
            .find(|p| p.addr.ip() == peer.ip() && p.uuid != self.0.uuid)
            .map(|p| p.zone.clone());
        let write = async move {
            let mut ok = true;
            while let Some(line) = rx.recv().await {
                if !ok {
                    continue;
                }
                let mut plain = vec![opsbro_exec::KIND_REPLY];
                if serde_json::to_writer(&mut plain, &line).is_err() {
                    continue;
                }
                let sealed = match &zone {
                    Some(z) => cluster::seal_for(&keyring, z, &plain),
                    None => cluster::seal(&keyring, &plain),
                };
                // The requester may be gone (it gave up, it was stopped): the command still
                // runs to its end and is in this node's history.
                ok = cluster::write_frame(&mut stream, &sealed).await.is_ok();
            }
        };
        tokio::join!(run, write);
    }

    /// Check `signed` and run it here; the `started` line and the result go to `out`.
    async fn run_as_target(
        &self,
        signed: &[u8],
        from: Option<std::net::SocketAddr>,
        out: mpsc::Sender<ExecLine>,
    ) {
        let inner = &self.0;
        inner.counters.received.fetch_add(1, Ordering::Relaxed);
        let now = unix_ms();
        let key_id = opsbro_exec::key_id(signed);
        let groups = self.own_groups();
        let verdict = {
            let mut keys = self.keys();
            keys.verifier.verify(signed, now).and_then(|request| {
                request.is_for(&inner.name, &groups)?;
                keys.limiter
                    .take(key_id.as_deref().unwrap_or_default(), now)?;
                Ok(request)
            })
        };
        let slot = verdict.and_then(|request| {
            let running = inner.running.fetch_add(1, Ordering::Relaxed);
            let slot = Slot(&inner.running);
            if running >= MAX_RUNNING {
                return Err(Refusal::Busy(running));
            }
            Ok((request, slot))
        });
        let (request, _slot) = match slot {
            Ok(v) => v,
            Err(refusal) => {
                let peeked = opsbro_exec::peek(signed).ok();
                self.refused(&refusal, peeked.as_ref(), key_id, from);
                let _ = out
                    .send(ExecLine::Result(ExecResult {
                        node: inner.name.clone(),
                        state: "refused".into(),
                        error: Some(refusal.to_string()),
                        ..ExecResult::default()
                    }))
                    .await;
                return;
            }
        };
        let started_ms = unix_ms();
        tracing::info!(
            id = %request.id,
            requester = %request.requester,
            key = key_id.as_deref().unwrap_or_default(),
            command = %request.command,
            "running a signed command"
        );
        let mut entry = HistoryEntry {
            time_ms: started_ms,
            role: "target".into(),
            id: request.id.clone(),
            requester: request.requester.clone(),
            key_id: key_id.clone(),
            group: request.group.clone(),
            node: request.node.clone(),
            command: request.command.clone(),
            state: "running".into(),
            ..HistoryEntry::default()
        };
        self.record(entry.clone());
        let _ = out
            .send(ExecLine::Started {
                node: inner.name.clone(),
                started_ms,
            })
            .await;
        let started = Instant::now();
        let argv = ["/bin/sh", "-c", request.command.as_str()];
        let env = [
            ("OPSBRO_NODE_NAME", inner.name.as_str()),
            ("OPSBRO_EXEC_ID", request.id.as_str()),
            ("OPSBRO_EXEC_REQUESTER", request.requester.as_str()),
        ];
        let timeout = Duration::from_secs(u64::from(request.timeout_secs));
        let ran = tokio::select! {
            // Agent shutdown: the command's group is killed with the future.
            () = inner.stop.cancelled() => Err("the agent stopped while the command ran".to_owned()),
            r = crate::command::run(&argv, &env, timeout) => r,
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let result = match ran {
            Ok(ran) => {
                inner.counters.ran.fetch_add(1, Ordering::Relaxed);
                if ran.timed_out {
                    inner.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                ExecResult {
                    node: inner.name.clone(),
                    state: if ran.timed_out { "timeout" } else { "done" }.into(),
                    rc: ran.code,
                    error: ran.timed_out.then(|| {
                        format!(
                            "killed with its process group after the {} s timeout",
                            request.timeout_secs
                        )
                    }),
                    stdout: ran.stdout,
                    stderr: ran.stderr,
                    started_ms: Some(started_ms),
                    duration_ms,
                    truncated: ran.truncated,
                }
            }
            Err(e) => ExecResult {
                node: inner.name.clone(),
                state: "failed".into(),
                error: Some(e),
                started_ms: Some(started_ms),
                duration_ms,
                ..ExecResult::default()
            },
        };
        entry.state = result.state.clone();
        entry.rc = result.rc;
        entry.duration_ms = duration_ms;
        entry.error = result.error.clone();
        self.record(entry);
        let _ = out.send(ExecLine::Result(result)).await;
    }

    fn refused(
        &self,
        refusal: &Refusal,
        request: Option<&Request>,
        key_id: Option<String>,
        from: Option<std::net::SocketAddr>,
    ) {
        *self
            .0
            .counters
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(refusal.reason().to_owned())
            .or_insert(0) += 1;
        let from = from
            .map(|a| a.to_string())
            .unwrap_or_else(|| "this node".into());
        match refusal {
            Refusal::NotATarget(_) | Refusal::Disabled => {
                tracing::info!(%from, "signed command refused: {refusal}");
            }
            _ => {
                tracing::warn!(%from, key = key_id.as_deref().unwrap_or("?"), "signed command refused: {refusal}")
            }
        }
        self.record(HistoryEntry {
            time_ms: unix_ms(),
            role: "target".into(),
            id: request.map(|r| r.id.clone()).unwrap_or_default(),
            requester: request.map(|r| r.requester.clone()).unwrap_or_default(),
            key_id,
            group: request.map(|r| r.group.clone()).unwrap_or_default(),
            node: request.and_then(|r| r.node.clone()),
            command: request.map(|r| r.command.clone()).unwrap_or_default(),
            state: "refused".into(),
            error: Some(refusal.to_string()),
            ..HistoryEntry::default()
        });
    }

    fn own_groups(&self) -> Vec<String> {
        self.0
            .membership
            .borrow()
            .iter()
            .find(|p| p.uuid == self.0.uuid)
            .map(|p| p.groups.clone())
            .unwrap_or_default()
    }

    /// The alive members `request` is for.
    pub fn targets(&self, request: &Request) -> Vec<Peer> {
        let mut targets: Vec<Peer> = self
            .0
            .membership
            .borrow()
            .iter()
            .filter(|p| p.state == MemberState::Alive)
            .filter(|p| request.is_for(&p.name, &p.groups).is_ok())
            .cloned()
            .collect();
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        targets
    }

    /// Send `signed` to its targets: the lines of the answer, the `request` line first, the
    /// `done` line last.
    pub fn exec(&self, signed: Vec<u8>) -> Result<mpsc::Receiver<ExecLine>, ExecError> {
        let request = opsbro_exec::peek(&signed).map_err(|e| ExecError::Invalid(e.to_string()))?;
        let targets = self.targets(&request);
        if targets.is_empty() {
            return Err(ExecError::NoTarget(match &request.node {
                Some(node) if request.group == "*" => format!("no alive member named `{node}`"),
                Some(node) => format!(
                    "no alive member named `{node}` in group `{}`",
                    request.group
                ),
                None => format!("no alive member in group `{}`", request.group),
            }));
        }
        self.0
            .counters
            .requests_sent
            .fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(targets.len() * 2 + 2);
        let me = self.clone();
        let signed: Arc<[u8]> = signed.into();
        self.0.tracker.spawn(async move {
            me.fan_out(request, signed, targets, tx).await;
        });
        Ok(rx)
    }

    async fn fan_out(
        self,
        request: Request,
        signed: Arc<[u8]>,
        targets: Vec<Peer>,
        tx: mpsc::Sender<ExecLine>,
    ) {
        let started = Instant::now();
        let key_id = opsbro_exec::key_id(&signed);
        let mut entry = HistoryEntry {
            time_ms: unix_ms(),
            role: "requester".into(),
            id: request.id.clone(),
            requester: request.requester.clone(),
            key_id,
            group: request.group.clone(),
            node: request.node.clone(),
            command: request.command.clone(),
            state: "sent".into(),
            ..HistoryEntry::default()
        };
        self.record(entry.clone());
        let _ = tx
            .send(ExecLine::Request {
                id: request.id.clone(),
                group: request.group.clone(),
                node: request.node.clone(),
                command: request.command.clone(),
                requester: request.requester.clone(),
                timeout_secs: request.timeout_secs,
                targets: targets.iter().map(|t| t.name.clone()).collect(),
            })
            .await;
        let (lines_tx, mut lines) = mpsc::channel::<ExecLine>(targets.len() * 2 + 2);
        let mut summary = ExecSummary {
            targets: targets.len(),
            ..ExecSummary::default()
        };
        let wait = Duration::from_secs(u64::from(request.timeout_secs)) + GRACE;
        for target in targets {
            let me = self.clone();
            let (signed, lines_tx) = (signed.clone(), lines_tx.clone());
            self.0.tracker.spawn(async move {
                let result = if target.uuid == me.0.uuid {
                    me.ask_myself(&signed, &lines_tx).await
                } else {
                    me.ask(&target, &signed, wait, &lines_tx).await
                };
                let _ = lines_tx.send(ExecLine::Result(result)).await;
            });
        }
        drop(lines_tx);
        while let Some(line) = lines.recv().await {
            if let ExecLine::Result(r) = &line {
                summary.add(r);
                if r.state == "unreachable" {
                    self.0.counters.unreachable.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The client may have gone: the results still land in the history.
            let _ = tx.send(line).await;
        }
        summary.duration_ms = started.elapsed().as_millis() as u64;
        entry.state = "done".into();
        entry.duration_ms = summary.duration_ms;
        entry.summary = Some(summary.clone());
        self.record(entry);
        let _ = tx.send(ExecLine::Done(summary)).await;
    }

    /// This node is a target: the same checks and run as for a remote request.
    async fn ask_myself(&self, signed: &[u8], lines: &mpsc::Sender<ExecLine>) -> ExecResult {
        let (tx, mut rx) = mpsc::channel(4);
        let run = self.run_as_target(signed, None, tx);
        let forward = async {
            let mut result = None;
            while let Some(line) = rx.recv().await {
                match line {
                    ExecLine::Result(r) => result = Some(r),
                    other => {
                        let _ = lines.send(other).await;
                    }
                }
            }
            result
        };
        let ((), result) = tokio::join!(run, forward);
        result.unwrap_or_else(|| ExecResult {
            node: self.0.name.clone(),
            state: "failed".into(),
            error: Some("no result".into()),
            ..ExecResult::default()
        })
    }

    /// Ask one remote target; its `started` line goes to `lines`, its result is returned.
    async fn ask(
        &self,
        target: &Peer,
        signed: &[u8],
        wait: Duration,
        lines: &mpsc::Sender<ExecLine>,
    ) -> ExecResult {
        let unreachable = |why: String| ExecResult {
            node: target.name.clone(),
            state: "unreachable".into(),
            error: Some(why),
            ..ExecResult::default()
        };
        let addr = target.addr;
        let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return unreachable(format!("cannot connect to {addr}: {e}")),
            Err(_) => {
                return unreachable(format!(
                    "cannot connect to {addr}: no answer in {} s",
                    CONNECT_TIMEOUT.as_secs()
                ));
            }
        };
        let _ = stream.set_nodelay(true);
        let mut plain = Vec::with_capacity(1 + signed.len());
        plain.push(opsbro_exec::KIND_REQUEST);
        plain.extend_from_slice(signed);
        // Sealed for the target's zone (an upper-zone requester holds its sub-zones' keys).
        let sealed = cluster::seal_for(&self.0.keyring, &target.zone, &plain);
        if let Err(e) = cluster::write_frame(&mut stream, &sealed).await {
            return unreachable(format!("cannot send the request to {addr}: {e}"));
        }
        let sent = Instant::now();
        let mut accepted = false;
        loop {
            let limit = if accepted { wait } else { ACCEPT_WITHIN };
            let left = limit.saturating_sub(sent.elapsed());
            let frame = match tokio::time::timeout(left, cluster::read_frame(&mut stream)).await {
                Ok(Ok(frame)) => frame,
                Ok(Err(e)) => {
                    return unreachable(format!(
                        "the connection to {addr} closed before a result ({e}): the node stopped or restarted?"
                    ));
                }
                Err(_) if accepted => {
                    return unreachable(format!(
                        "no result within {} s (the timeout plus {} s)",
                        wait.as_secs(),
                        GRACE.as_secs()
                    ));
                }
                Err(_) => {
                    return unreachable(format!(
                        "did not accept the request within {} s",
                        ACCEPT_WITHIN.as_secs()
                    ));
                }
            };
            let line = cluster::open(&self.0.keyring, &frame)
                .map_err(|e| e.to_string())
                .and_then(|plain| match plain.split_first() {
                    Some((&opsbro_exec::KIND_REPLY, json)) => {
                        serde_json::from_slice::<ExecLine>(json).map_err(|e| e.to_string())
                    }
                    _ => Err("not an exec reply".to_owned()),
                });
            match line {
                Ok(ExecLine::Started { started_ms, .. }) => {
                    accepted = true;
                    let _ = lines
                        .send(ExecLine::Started {
                            node: target.name.clone(),
                            started_ms,
                        })
                        .await;
                }
                Ok(ExecLine::Result(mut r)) => {
                    // Named by who we asked, whatever the answer says.
                    r.node.clone_from(&target.name);
                    return r;
                }
                Ok(_) | Err(_) => {
                    return unreachable(format!("{addr} sent an answer that is not an exec reply"));
                }
            }
        }
    }
}
