//! The Docker daemon's event stream on the event bus: while this host is in group
//! `docker-host` (and the pack's `events` parameter is not false), one task follows the daemon's
//! `/events` and publishes each event on channel `docker` (a container started, died, became
//! unhealthy, was OOM-killed...). A container event also asks the `docker` collector for a new
//! run, so states and checks follow within a second instead of at the next 10 s pass.
//!
//! The daemon restarting is expected: the task reconnects with a backoff (1 s doubling to 10 s,
//! back to 1 s after a connection that lasted). The bus is protected from a burst: at most
//! `events_per_second` events are published per second, the rest dropped and counted
//! (`GET /docker`, `events.dropped`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opsbro_api::docker::EventsInfo;
use opsbro_api::events::Payload;
use opsbro_apps::Params;
use opsbro_apps::docker::{Engine, PACK};
use opsbro_eval::EvalContext;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::collect::CollectedData;
use crate::eval::SharedView;
use crate::events::EventBus;

/// How often the task looks at the host's groups and the pack's parameters.
const WATCH: Duration = Duration::from_secs(1);
/// First and longest wait before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the backoff.
const LASTED: Duration = Duration::from_secs(30);
/// Events per second when the pack does not say.
const DEFAULT_PER_SECOND: u64 = 50;

/// The follower's counters, shared with the API.
#[derive(Debug, Default)]
struct Counters {
    connected: AtomicBool,
    received: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What the API reads of the follower.
#[derive(Debug, Clone, Default)]
pub struct DockerEventsHandle {
    counters: Arc<Counters>,
}

impl DockerEventsHandle {
    /// Its counters now.
    pub fn info(&self) -> EventsInfo {
        let c = &self.counters;
        EventsInfo {
            connected: c.connected.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            last_error: c
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    fn set_error(&self, e: Option<String>) {
        *self
            .counters
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = e;
    }
}

/// The `docker-host` pack's parameters now.
pub fn parameters(objects: &watch::Receiver<Arc<opsbro_packs::PackSet>>) -> Params {
    objects
        .borrow()
        .packs
        .get(PACK)
        .and_then(|p| p.parameters.as_object().cloned())
        .unwrap_or_default()
}

/// What the follower needs.
pub struct EventsSetup {
    /// Packs (the `docker-host` parameters).
    pub objects: watch::Receiver<Arc<opsbro_packs::PackSet>>,
    /// This host's groups.
    pub view: SharedView,
    /// Where events go.
    pub bus: EventBus,
    /// To ask the `docker` collector for a run after a container event.
    pub collected: CollectedData,
}

/// Start the follower.
pub fn start(
    setup: EventsSetup,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> DockerEventsHandle {
    let handle = DockerEventsHandle::default();
    tracker.spawn(run(setup, handle.clone(), tracker.clone(), shutdown));
    handle
}

/// Where to follow, when this host should: the socket path.
fn wanted(setup: &EventsSetup) -> Option<Result<String, String>> {
    if !setup.view.groups().iter().any(|g| g == PACK) {
        return None;
    }
    let params = parameters(&setup.objects);
    if matches!(params.get("events"), Some(serde_json::Value::Bool(false)))
        || params.get("events").and_then(|v| v.as_str()) == Some("false")
    {
        return None;
    }
    Some(opsbro_apps::docker::socket_path(&params))
}

async fn run(
    setup: EventsSetup,
    handle: DockerEventsHandle,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let refreshing = Arc::new(AtomicBool::new(false));
    loop {
        let socket = match wanted(&setup) {
            None => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(WATCH) => continue,
                }
            }
            Some(Err(e)) => {
                handle.set_error(Some(e));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(BACKOFF_MAX) => continue,
                }
            }
            Some(Ok(s)) => s,
        };
        let engine = Engine::new(&socket);
        let per_second = opsbro_apps::param_u64(
            &parameters(&setup.objects),
            "events_per_second",
            DEFAULT_PER_SECOND,
        )
        .max(1);
        let mut limiter = Limiter::new(per_second);
        let counters = handle.counters.clone();
        let (bus, collected, refreshing, tracker) = (
            setup.bus.clone(),
            setup.collected.clone(),
            refreshing.clone(),
            tracker.clone(),
        );
        let started = tokio::time::Instant::now();
        let opened = handle.clone();
        let on_open = move || {
            opened.counters.connected.store(true, Ordering::Relaxed);
            opened.set_error(None);
            tracing::info!("following the Docker daemon's events");
        };
        let follow = engine.follow_events(on_open, move |line| {
            counters.received.fetch_add(1, Ordering::Relaxed);
            let Some(event) = opsbro_apps::docker::event_of(&line) else {
                return;
            };
            if !limiter.allow(tokio::time::Instant::now()) {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let refresh = event.kind == "container";
            bus.publish(Payload::Docker(event), None);
            counters.published.fetch_add(1, Ordering::Relaxed);
            if refresh && !refreshing.swap(true, Ordering::AcqRel) {
                // One refresh at a time: a burst of events gives one run, not one per event.
                let (collected, refreshing) = (collected.clone(), refreshing.clone());
                tracker.spawn(async move {
                    let _ = collected.run_now("docker").await;
                    tokio::time::sleep(WATCH).await;
                    refreshing.store(false, Ordering::Release);
                });
            }
        });
        handle.counters.connected.store(false, Ordering::Relaxed);
        let mut follow = std::pin::pin!(follow);
        let mut watch = tokio::time::interval(WATCH);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                result = &mut follow => break Some(result),
                _ = watch.tick() => {
                    // The host left the group, the events were turned off or the socket moved:
                    // stop following this one.
                    if !matches!(wanted(&setup), Some(Ok(ref s)) if *s == socket) {
                        break None;
                    }
                }
            }
        };
        handle.counters.connected.store(false, Ordering::Relaxed);
        match ended {
            None => {
                handle.set_error(None);
                backoff = BACKOFF_MIN;
                continue;
            }
            Some(Ok(())) => handle.set_error(Some(format!(
                "the Docker daemon at {socket} ended its event stream (stopping?)"
            ))),
            Some(Err(e)) => handle.set_error(Some(e.to_string())),
        }
        if started.elapsed() >= LASTED {
            backoff = BACKOFF_MIN;
        }
        tracing::debug!(%socket, wait = ?backoff, "docker event stream ended; reconnecting");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// At most `per_second` events in any one-second window (a fixed window: simple, and a burst
/// can never exceed twice the rate across a boundary).
struct Limiter {
    per_second: u64,
    window: Option<tokio::time::Instant>,
    used: u64,
}

impl Limiter {
    fn new(per_second: u64) -> Limiter {
        Limiter {
            per_second,
            window: None,
            used: 0,
        }
    }

    fn allow(&mut self, now: tokio::time::Instant) -> bool {
        match self.window {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.used = 0;
            }
        }
        self.used += 1;
        self.used <= self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_lets_the_rate_through_and_drops_the_rest() {
        let mut l = Limiter::new(3);
        let t0 = tokio::time::Instant::now();
        let first: Vec<bool> = (0..5).map(|_| l.allow(t0)).collect();
        assert_eq!(first, vec![true, true, true, false, false]);
        assert!(l.allow(t0 + Duration::from_millis(1001)));
    }
}
