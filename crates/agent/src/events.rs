//! The agent's event bus: one stream of everything that happens, on named channels — `node`
//! (a member joined, became suspect, died, left, came back), `group` (detectors added or removed a
//! group), `check` (a check changed state), `kv` (a key changed in this node's copy of the
//! store) and `event` (user events). Subscribers are the handlers (which only look at events that
//! carry a [`Notification`]) and the websocket clients (which get every channel they asked for).
//! Publishing never waits: a subscriber that falls behind loses the oldest events, and the loss
//! is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opsbro_api::events::{
    CheckChanged, ComplianceChanged, GroupAction, GroupChanged, NodeChanged, Payload,
};
use opsbro_checks::notify::Notification;
use tokio::sync::broadcast;

pub use opsbro_api::events::CHANNELS;

/// Events kept for a subscriber that is behind.
const CAPACITY: usize = 4096;

/// One event.
#[derive(Debug)]
pub struct Event {
    /// What happened (its channel is its kind), as sent to websocket clients.
    pub payload: Payload,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// What handlers are told, for the events they may act on (a member becoming suspect, or a
    /// check's first OK after start, is not news for a mail).
    pub notification: Option<Notification>,
}

impl Event {
    /// One of [`CHANNELS`].
    pub fn channel(&self) -> &'static str {
        self.payload.channel()
    }

    /// The stream's frame for this event.
    pub fn frame(&self) -> opsbro_api::events::Frame {
        opsbro_api::events::Frame {
            time_ms: self.time_ms,
            event: self.payload.clone(),
        }
    }
}

/// A notification as the stream shows it.
fn payload_of(n: &Notification) -> Payload {
    match n {
        Notification::Check {
            name,
            display_name,
            pack,
            state,
            old_state,
            output,
            long_output,
        } => Payload::Check(CheckChanged {
            name: name.clone(),
            display_name: display_name.clone(),
            pack: pack.clone(),
            state: state.as_str().into(),
            old_state: old_state.as_str().into(),
            state_id: state.state_id(),
            output: output.clone(),
            long_output: long_output.clone(),
        }),
        Notification::Group { group, added } => Payload::Group(GroupChanged {
            group: group.clone(),
            action: if *added {
                GroupAction::Add
            } else {
                GroupAction::Remove
            },
        }),
        Notification::Node {
            name,
            uuid,
            addr,
            state,
            old_state,
        } => Payload::Node(NodeChanged {
            name: name.clone(),
            uuid: uuid.clone(),
            addr: addr.clone(),
            state: state.clone(),
            old_state: old_state.clone(),
        }),
        Notification::Compliance {
            name,
            display_name,
            mode,
            state,
            old_state,
            output,
        } => Payload::Compliance(ComplianceChanged {
            name: name.clone(),
            display_name: display_name.clone(),
            mode: mode.clone(),
            state: state.clone(),
            old_state: old_state.clone(),
            output: output.clone(),
        }),
    }
}

/// Bus counters.
#[derive(Debug, Default)]
pub struct BusCounters {
    /// Events published.
    pub published: AtomicU64,
    /// Events a subscriber missed because it was behind.
    pub dropped: AtomicU64,
}

/// Cheap to clone; every clone publishes to the same subscribers.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    /// Only the events handlers act on: a burst of KV changes cannot push an alert out.
    notify_tx: broadcast::Sender<Arc<Event>>,
    counters: Arc<BusCounters>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(CAPACITY).0,
            notify_tx: broadcast::channel(CAPACITY).0,
            counters: Arc::default(),
        }
    }
}

impl EventBus {
    /// Publish an event (nobody listening is fine).
    pub fn publish(&self, payload: Payload, notification: Option<Notification>) {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let event = Arc::new(Event {
            payload,
            time_ms: crate::host::unix_ms(),
            notification,
        });
        if event.notification.is_some() {
            let _ = self.notify_tx.send(event.clone());
        }
        let _ = self.tx.send(event);
    }

    /// Publish a notification on its channel (`check`, `group`, `node`); handlers see it when
    /// `for_handlers`, websocket clients always.
    pub fn notify(&self, n: Notification, for_handlers: bool) {
        self.publish(payload_of(&n), for_handlers.then_some(n));
    }

    /// Receive the events that carry a notification (handlers), on their own channel.
    pub fn subscribe_notifications(&self) -> broadcast::Receiver<Arc<Event>> {
        self.notify_tx.subscribe()
    }

    /// Receive every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// A subscriber missed `n` events.
    pub fn record_dropped(&self, n: u64) {
        self.counters.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Current subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count() + self.notify_tx.receiver_count()
    }

    /// Counters.
    pub fn counters(&self) -> &BusCounters {
        &self.counters
    }
}
