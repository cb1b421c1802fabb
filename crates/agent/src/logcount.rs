//! Counts of the warnings and errors the process logged, for `agent info` ("N errors, N
//! warnings", as the original showed) and `/metrics`.
//!
//! The tracing subscriber is process-wide (the binary installs it once, before the agent
//! starts), so its counts are too: [`LOG_COUNTS`] is the one static they go to, and
//! [`CountingLayer`] is the layer the binary adds to its subscriber to feed it.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Warning and error counters.
#[derive(Debug, Default)]
pub struct LogCounters {
    /// `ERROR` events.
    pub errors: AtomicU64,
    /// `WARN` events.
    pub warnings: AtomicU64,
}

impl LogCounters {
    /// Count one event of `level` (other levels are not counted).
    pub fn record(&self, level: Level) {
        let counter = match level {
            Level::ERROR => &self.errors,
            Level::WARN => &self.warnings,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> opsbro_api::LogCounts {
        opsbro_api::LogCounts {
            errors: self.errors.load(Ordering::Relaxed),
            warnings: self.warnings.load(Ordering::Relaxed),
        }
    }
}

/// What this process logged (see the module docs for why it is a static).
pub static LOG_COUNTS: LogCounters = LogCounters {
    errors: AtomicU64::new(0),
    warnings: AtomicU64::new(0),
};

/// A tracing layer that counts `WARN` and `ERROR` events into [`LOG_COUNTS`]. Behind the
/// subscriber's level filter it counts what is actually logged.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingLayer;

impl<S: Subscriber> Layer<S> for CountingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        LOG_COUNTS.record(*event.metadata().level());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_warnings_and_errors_are_counted() {
        let c = LogCounters::default();
        for level in [
            Level::ERROR,
            Level::WARN,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
        ] {
            c.record(level);
        }
        assert_eq!(
            c.snapshot(),
            opsbro_api::LogCounts {
                errors: 1,
                warnings: 2
            }
        );
    }
}
