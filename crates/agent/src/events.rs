//! The agent's event bus: member changes (gossip), group changes (detectors) and check state
//! changes (monitoring) go to every subscriber (the handlers today; the websocket stream later).
//! Publishing never waits: a subscriber that falls behind loses the oldest events and counts
//! them.

use opsbro_checks::notify::Notification;
use tokio::sync::broadcast;

/// Events kept for a subscriber that is behind.
const CAPACITY: usize = 1024;

/// Cheap to clone; every clone publishes to the same subscribers.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Notification>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl EventBus {
    /// Publish (nobody listening is fine).
    pub fn publish(&self, event: Notification) {
        let _ = self.tx.send(event);
    }

    /// Receive every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.tx.subscribe()
    }
}
