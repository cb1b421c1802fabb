//! The one task that owns the KV core: it feeds the core every input with the time, then
//! performs the effects in order (frames out, answers, flushes on the blocking pool, key-change
//! events, the next wake-up). Inputs that are ready together are taken in one go (up to
//! [`BATCH_INPUTS`]) before the effects are performed, so a burst of writes shares one flush
//! and one socket write per peer.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use opsbro_kv::{ClientAnswer, ClientId, Core, Effect, Inbound, KvError, StorageError};
use opsbro_types::NodeUuid;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::links::{self, NetEvent};
use super::{Ask, Shared, SledStorage};
use crate::cluster::Accepted;
use crate::cluster::SharedKeyring;
use crate::membership::{Membership, Peer};

/// Longest sleep between two looks at the core's deadlines (ms).
const MAX_SLEEP_MS: u64 = 1000;
/// Inputs taken before the effects are performed.
const BATCH_INPUTS: usize = 256;
/// Frames from connections waiting for the driver (then readers wait, and so do peers).
const NET_QUEUE: usize = 4096;
/// Incoming KV connections served at once.
const MAX_CONNECTIONS: usize = 256;

/// What the driver reads from.
pub struct Inputs {
    /// Client requests.
    pub asks: mpsc::Receiver<Ask>,
    /// The live membership.
    pub membership: Membership,
    /// Incoming connections.
    pub connections: mpsc::Receiver<Accepted>,
}

/// An outgoing link to a peer.
struct Link {
    id: u64,
    addr: std::net::SocketAddr,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    /// Request ids written while it connects: unreachable if it never does.
    connecting: Option<Vec<u64>>,
}

/// The driver's state around the core.
pub struct Driver {
    core: Core<SledStorage>,
    shared: Arc<Shared>,
    keyring: SharedKeyring,
    bus: crate::events::EventBus,
    tracker: TaskTracker,
    stop: CancellationToken,
    /// Clients waiting for an answer.
    clients: HashMap<u64, oneshot::Sender<Result<ClientAnswer, KvError>>>,
    next_client: u64,
    /// Addresses of the members.
    peers: Arc<HashMap<NodeUuid, Peer>>,
    /// Outgoing links by node.
    links: HashMap<NodeUuid, Link>,
    next_link: u64,
    /// Incoming connections' answer queues.
    inbound: HashMap<u64, (mpsc::UnboundedSender<Vec<u8>>, OwnedSemaphorePermit)>,
    next_inbound: u64,
    net_tx: mpsc::Sender<NetEvent>,
    net_rx: Option<mpsc::Receiver<NetEvent>>,
    flushed_tx: mpsc::UnboundedSender<(u64, Result<(), StorageError>)>,
    flushed_rx: Option<mpsc::UnboundedReceiver<(u64, Result<(), StorageError>)>>,
    wake: Option<u64>,
    slots: Arc<tokio::sync::Semaphore>,
}

fn now() -> u64 {
    crate::host::unix_ms()
}

impl Driver {
    /// A driver for `core`.
    pub fn new(
        core: Core<SledStorage>,
        shared: Arc<Shared>,
        keyring: SharedKeyring,
        bus: crate::events::EventBus,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Driver {
        let (net_tx, net_rx) = mpsc::channel(NET_QUEUE);
        let (flushed_tx, flushed_rx) = mpsc::unbounded_channel();
        Driver {
            core,
            shared,
            keyring,
            bus,
            tracker: tracker.clone(),
            stop,
            clients: HashMap::new(),
            next_client: 1,
            peers: Arc::new(HashMap::new()),
            links: HashMap::new(),
            next_link: 1,
            inbound: HashMap::new(),
            next_inbound: 1,
            net_tx,
            net_rx: Some(net_rx),
            flushed_tx,
            flushed_rx: Some(flushed_rx),
            wake: None,
            slots: Arc::new(tokio::sync::Semaphore::new(crate::host::connection_cap(
                MAX_CONNECTIONS,
            ))),
        }
    }

    fn members(&mut self, members: &[Peer]) {
        let eligible = super::eligible(self.core.me(), members);
        self.peers = Arc::new(members.iter().map(|p| (p.uuid, p.clone())).collect());
        let ring_changed = self.core.handle_members(now(), &eligible);
        if ring_changed {
            tracing::info!(nodes = self.core.ring().nodes().len(), "KV ring changed");
        }
        // A link to a node whose address changed (or that left) is not reused.
        let peers = self.peers.clone();
        self.links
            .retain(|uuid, l| peers.get(uuid).is_some_and(|p| p.addr == l.addr));
        let mut published = self
            .shared
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Membership changes often (check states, groups); the ring (up to 262,144 points) is
        // copied only when it changed.
        if ring_changed {
            published.ring = Arc::new(self.core.ring().clone());
        }
        published.peers = self.peers.clone();
    }

    fn client(&mut self, (request, answer): Ask) {
        let id = self.next_client;
        self.next_client += 1;
        self.clients.insert(id, answer);
        self.core.handle_client(now(), ClientId(id), request);
    }

    fn accept(&mut self, incoming: Accepted) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::debug!(peer = %incoming.peer, "too many KV connections; refused");
            return;
        };
        let conn = self.next_inbound;
        self.next_inbound += 1;
        let tx = links::serve_inbound(
            conn,
            incoming,
            self.keyring.clone(),
            self.net_tx.clone(),
            &self.tracker,
            self.stop.clone(),
        );
        // The slot is held until the connection closes.
        self.inbound.insert(conn, (tx, slot));
    }

    fn net(&mut self, event: NetEvent) {
        let now = now();
        match event {
            NetEvent::Request { conn, id, request } => {
                self.core.handle_request(now, Inbound { conn, id }, request);
            }
            NetEvent::InboundClosed(conn) => {
                self.inbound.remove(&conn);
            }
            NetEvent::Response {
                link,
                from,
                id,
                response,
            } => {
                if self.links.get(&from).is_some_and(|l| l.id == link) {
                    self.core.handle_response(now, from, id, response);
                }
            }
            NetEvent::Connected(link) => {
                if let Some(l) = self.links.values_mut().find(|l| l.id == link) {
                    l.connecting = None;
                }
            }
            NetEvent::LinkDown { link, connected } => {
                let node = self
                    .links
                    .iter()
                    .find(|(_, l)| l.id == link)
                    .map(|(n, _)| *n);
                if let Some(node) = node
                    && let Some(l) = self.links.remove(&node)
                    && !connected
                {
                    // Nothing was delivered: the core stops waiting at once.
                    for id in l.connecting.unwrap_or_default() {
                        self.core.handle_unreachable(now, id);
                    }
                }
            }
            NetEvent::Rejected => self.core.record_rejected_frame(),
        }
    }

    fn send(&mut self, to: NodeUuid, id: u64, request: &opsbro_kv::wire::Request) {
        let frame = links::request_frame(id, request);
        if !self.links.contains_key(&to) {
            let Some(addr) = self.peers.get(&to).map(|p| p.addr) else {
                return self.core.handle_unreachable(now(), id);
            };
            let link = self.next_link;
            self.next_link += 1;
            let frames = links::open_link(
                link,
                to,
                addr,
                self.keyring.clone(),
                self.net_tx.clone(),
                &self.tracker,
                self.stop.clone(),
            );
            self.links.insert(
                to,
                Link {
                    id: link,
                    addr,
                    frames,
                    connecting: Some(Vec::new()),
                },
            );
        }
        let Some(l) = self.links.get_mut(&to) else {
            return;
        };
        if let Some(ids) = l.connecting.as_mut() {
            ids.push(id);
        }
        if l.frames.send(frame).is_err() {
            // The writer is gone (the link broke): the next request opens a new one; this one
            // times out in the core.
            self.links.remove(&to);
        }
    }

    /// Perform the core's effects, in order; the core may produce more while they are
    /// performed (an unreachable peer), so loop until none is left.
    fn perform(&mut self) {
        loop {
            let effects = self.core.take_effects();
            if effects.is_empty() {
                break;
            }
            for effect in effects {
                match effect {
                    Effect::Send { to, id, request } => self.send(to, id, &request),
                    Effect::Reply { to, response } => {
                        if let Some((tx, _)) = self.inbound.get(&to.conn) {
                            let _ = tx.send(links::response_frame(to.id, &response));
                        }
                    }
                    Effect::Answer { id, result } => {
                        if let Some(tx) = self.clients.remove(&id.0) {
                            let _ = tx.send(result);
                        }
                    }
                    Effect::Flush { token } => {
                        let store = self.core.store().store().clone();
                        let done = self.flushed_tx.clone();
                        self.tracker.spawn(async move {
                            let result = tokio::task::spawn_blocking(move || store.flush())
                                .await
                                .unwrap_or_else(|e| {
                                    Err(opsbro_store::StoreError(format!("flush task failed: {e}")))
                                })
                                .map_err(|e| StorageError(e.to_string()));
                            let _ = done.send((token, result));
                        });
                    }
                    // The next wake-up is read below, whatever the effects said.
                    Effect::Wake { .. } => {}
                    Effect::Changed {
                        key,
                        index,
                        deleted,
                    } => self.bus.publish(
                        opsbro_api::events::Payload::Kv(opsbro_api::events::KeyChanged {
                            key,
                            action: if deleted {
                                opsbro_api::events::KeyAction::Delete
                            } else {
                                opsbro_api::events::KeyAction::Put
                            },
                            modify_index: index,
                        }),
                        None,
                    ),
                }
            }
        }
        self.wake = self.core.next_deadline();
        self.shared
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .stats = self.core.stats().clone();
    }
}

/// Run the driver on the tracker until the agent stops.
pub fn spawn(mut d: Driver, mut inputs: Inputs) {
    let tracker = d.tracker.clone();
    tracker.spawn(async move {
        let mut net_rx = d.net_rx.take().expect("the driver starts once");
        let mut flushed_rx = d.flushed_rx.take().expect("the driver starts once");
        let stop = d.stop.clone();
        let first = inputs.membership.borrow_and_update().clone();
        d.members(&first);
        d.perform();
        let mut membership_open = true;
        loop {
            let sleep = match d.wake {
                Some(at) => {
                    // A millisecond late rather than early: the core's time is in whole ms.
                    // At most a second: the core's time is the wall clock, which can be set
                    // back; the driver looks again every second whatever it said.
                    let wait = at.saturating_sub(now()).saturating_add(1).min(MAX_SLEEP_MS);
                    tokio::time::Instant::now() + std::time::Duration::from_millis(wait)
                }
                None => {
                    tokio::time::Instant::now() + std::time::Duration::from_millis(MAX_SLEEP_MS)
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                Some(event) = net_rx.recv() => d.net(event),
                Some(ask) = inputs.asks.recv() => d.client(ask),
                Some((token, result)) = flushed_rx.recv() => {
                    d.core.handle_flushed(now(), token, result);
                }
                changed = inputs.membership.changed(), if membership_open => {
                    if changed.is_err() {
                        membership_open = false;
                    } else {
                        let members = inputs.membership.borrow_and_update().clone();
                        d.members(&members);
                    }
                }
                Some(incoming) = inputs.connections.recv() => d.accept(incoming),
                () = tokio::time::sleep_until(sleep) => d.core.handle_tick(now()),
            }
            // Take what else is ready now, then perform the effects of all of it.
            for _ in 0..BATCH_INPUTS {
                if let Ok(event) = net_rx.try_recv() {
                    d.net(event);
                } else if let Ok(ask) = inputs.asks.try_recv() {
                    d.client(ask);
                } else if let Ok((token, result)) = flushed_rx.try_recv() {
                    d.core.handle_flushed(now(), token, result);
                } else {
                    break;
                }
            }
            if d.wake.is_some_and(|at| at <= now()) {
                d.core.handle_tick(now());
            }
            d.perform();
        }
        // Clients still waiting learn that the store stopped (their senders are dropped).
        d.clients.clear();
    });
}
