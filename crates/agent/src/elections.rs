//! Leader elections (`election:` objects): the nodes of an election's `if_group` each try to
//! hold the lock `election/<name>` on the Raft group ([`crate::raft::RaftHandle::hold`]); the
//! holder is the leader. On a change this node runs `command_on_leader` or
//! `command_on_follower`, publishes `elected`/`demoted` on the `raft` channel and updates
//! `is_leader('name')` for expressions (detectors can add a `leader` group with it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use opsbro_api::raft::{ElectionState, HoldLine, RaftEvent};
use opsbro_eval::EvalContext;
use opsbro_packs::ElectionSpec;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::raft::RaftHandle;

/// How often elections are looked at (membership, the leader's name).
const EVERY: Duration = Duration::from_millis(500);
/// How long a command run on a change may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The lock behind election `name`.
pub fn lock_of(name: &str) -> String {
    format!("election/{name}")
}

/// Election states, for the API.
#[derive(Clone, Default)]
pub struct ElectionsHandle(Arc<RwLock<BTreeMap<String, ElectionState>>>);

impl ElectionsHandle {
    /// Every election of this node.
    pub fn list(&self) -> Vec<ElectionState> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// One election followed by this node.
struct Running {
    spec: ElectionSpec,
    /// The hold while this node is a member.
    hold: Option<mpsc::Receiver<HoldLine>>,
    /// This node holds the lock (token).
    leading: Option<u64>,
    /// What this node last acted on: Some(true) leader, Some(false) follower.
    acted: Option<bool>,
    last_command: Option<String>,
    last_rc: Option<i32>,
}

/// Follow the elections of the packs until `shutdown`.
pub async fn run(
    raft: RaftHandle,
    handle: ElectionsHandle,
    mut objects: watch::Receiver<Arc<opsbro_packs::PackSet>>,
    view: crate::eval::SharedView,
    bus: crate::events::EventBus,
    shutdown: CancellationToken,
) {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = objects.changed() => {}
        }
        let specs: Vec<ElectionSpec> = objects.borrow().elections().cloned().collect();
        running.retain(|name, _| specs.iter().any(|s| s.name == *name));
        let groups = view.groups();
        for spec in specs {
            let r = running.entry(spec.name.clone()).or_insert_with(|| Running {
                spec: spec.clone(),
                hold: None,
                leading: None,
                acted: None,
                last_command: None,
                last_rc: None,
            });
            if r.spec != spec {
                // Changed by a reload: start over (the hold is released when dropped).
                r.spec = spec.clone();
                r.hold = None;
                r.leading = None;
            }
            let member = spec.if_group == "*" || groups.contains(&spec.if_group);
            if !member {
                r.hold = None;
                r.leading = None;
            } else if r.hold.is_none() {
                r.hold = Some(raft.hold(
                    lock_of(&spec.name),
                    spec.ttl,
                    Duration::from_secs(365 * 24 * 3600),
                ));
            }
            // What the hold says.
            if let Some(rx) = r.hold.as_mut() {
                loop {
                    match rx.try_recv() {
                        Ok(HoldLine::Acquired(g)) => r.leading = Some(g.token),
                        Ok(HoldLine::Waiting { .. }) => {}
                        Ok(HoldLine::Lost { reason } | HoldLine::Failed { reason }) => {
                            tracing::info!(election = %spec.name, "leadership lost: {reason}");
                            r.leading = None;
                            r.hold = None;
                            break;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            r.leading = None;
                            r.hold = None;
                            break;
                        }
                    }
                }
            }
            let lock = raft.lock(&lock_of(&spec.name));
            let leader = lock.as_ref().map(|l| l.node.clone());
            let is_leader = r.leading.is_some();
            // Act on a change of role (a follower only once a leader exists).
            let role = if is_leader {
                Some(true)
            } else if member && leader.is_some() {
                Some(false)
            } else {
                None
            };
            if let Some(now_leader) = role
                && r.acted != Some(now_leader)
            {
                r.acted = Some(now_leader);
                bus.publish(
                    opsbro_api::events::Payload::Raft(RaftEvent {
                        kind: if now_leader { "elected" } else { "demoted" }.into(),
                        name: spec.name.clone(),
                        node: leader.clone().unwrap_or_default(),
                        token: lock.as_ref().map_or(0, |l| l.token),
                    }),
                    None,
                );
                let command = if now_leader {
                    spec.command_on_leader.clone()
                } else {
                    spec.command_on_follower.clone()
                };
                if let Some(command) = command {
                    let token = lock.as_ref().map_or(0, |l| l.token).to_string();
                    let leader_name = leader.clone().unwrap_or_default();
                    let env = [
                        ("OPSBRO_ELECTION", spec.name.as_str()),
                        ("OPSBRO_LEADER", leader_name.as_str()),
                        ("OPSBRO_LOCK_TOKEN", token.as_str()),
                        (
                            "OPSBRO_ROLE",
                            if now_leader { "leader" } else { "follower" },
                        ),
                    ];
                    let ran =
                        crate::command::run(&["/bin/sh", "-c", &command], &env, COMMAND_TIMEOUT)
                            .await;
                    r.last_command = Some(command.clone());
                    r.last_rc = match ran {
                        Ok(ran) => {
                            if ran.code != Some(0) {
                                tracing::warn!(election = %spec.name, rc = ?ran.code, stderr = %ran.stderr.trim(), "election command failed: {command}");
                            }
                            ran.code
                        }
                        Err(e) => {
                            tracing::warn!(election = %spec.name, "election command could not run: {e}");
                            None
                        }
                    };
                }
            } else if role.is_none() {
                r.acted = None;
            }
        }
        // Publish the states.
        let states: BTreeMap<String, ElectionState> = running
            .iter()
            .map(|(name, r)| {
                let member = r.hold.is_some() || r.leading.is_some();
                let lock = raft.lock(&lock_of(name));
                (
                    name.clone(),
                    ElectionState {
                        name: name.clone(),
                        member,
                        leader: lock.as_ref().map(|l| l.node.clone()),
                        is_leader: r.leading.is_some(),
                        token: lock.map_or(0, |l| l.token),
                        last_command: r.last_command.clone(),
                        last_rc: r.last_rc,
                    },
                )
            })
            .collect();
        let leading: BTreeSet<String> = states
            .values()
            .filter(|s| s.is_leader)
            .map(|s| s.name.clone())
            .collect();
        view.set_leading(leading);
        *handle.0.write().unwrap_or_else(PoisonError::into_inner) = states;
    }
}
