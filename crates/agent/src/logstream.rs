//! `opsbro agent log follow`: the process's log lines as they are logged, served by
//! `GET /agent/log/follow` (NDJSON, one [`opsbro_api::LogLine`] per line).
//!
//! Like the counts of [`crate::logcount`], this is process-wide: the binary adds [`StreamLayer`]
//! to its tracing subscriber, and the layer sends every event to one bounded broadcast channel
//! ([`subscribe`]). An event is formatted only while someone follows, so the layer costs nothing
//! otherwise; a follower that falls behind loses the oldest lines and is told how many. Only what
//! the subscriber's filter lets through (the agent's `log_level`) reaches the layer: `?level=`
//! can narrow it, not widen it.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use opsbro_api::LogLine;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Lines kept for a follower that is behind.
const CAPACITY: usize = 1024;

/// A formatted event and its level (for `?level=`).
#[derive(Debug)]
pub struct Logged {
    /// Its level.
    pub level: Level,
    /// What followers get.
    pub line: LogLine,
}

/// Every log line of this process (see the module docs for why it is a static).
static LINES: LazyLock<broadcast::Sender<Arc<Logged>>> =
    LazyLock::new(|| broadcast::channel(CAPACITY).0);

/// Follow the log from now on.
pub fn subscribe() -> broadcast::Receiver<Arc<Logged>> {
    LINES.subscribe()
}

/// A tracing layer that sends each event to the followers, if there are any.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamLayer;

impl<S: Subscriber> Layer<S> for StreamLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if LINES.receiver_count() == 0 {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let meta = event.metadata();
        let line = LogLine {
            time_ms: crate::host::unix_ms(),
            level: meta.level().as_str().to_owned(),
            target: meta.target().to_owned(),
            message: text.finish(),
            skipped: 0,
        };
        let _ = LINES.send(Arc::new(Logged {
            level: *meta.level(),
            line,
        }));
    }
}

/// The message, then ` name=value` for each field (as the stderr format writes them).
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn finish(self) -> String {
        let mut out = self.message;
        if out.is_empty() {
            return self.fields.trim_start().to_owned();
        }
        out.push_str(&self.fields);
        out
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

/// One line as NDJSON (followers read one object per line).
pub fn ndjson(line: &LogLine) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The line telling a follower that fell behind what it missed.
pub fn skipped(n: u64) -> LogLine {
    LogLine {
        time_ms: crate::host::unix_ms(),
        level: Level::WARN.as_str().to_owned(),
        target: module_path!().to_owned(),
        message: format!("{n} log lines skipped: this reader fell behind"),
        skipped: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn events_are_formatted_with_their_fields_for_followers() {
        let mut rx = subscribe();
        let subscriber = tracing_subscriber::registry().with(StreamLayer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(node = "web-1", count = 3, "member discovered");
            tracing::warn!(error = %"boom", "push-pull failed");
        });
        let mut got = Vec::new();
        while let Ok(l) = rx.try_recv() {
            got.push(l);
        }
        // Other tests of this process may log too: look for ours.
        let ours: Vec<&Logged> = got
            .iter()
            .map(Arc::as_ref)
            .filter(|l| l.line.target == module_path!())
            .collect();
        assert_eq!(ours.len(), 2, "{got:?}");
        assert_eq!(ours[0].level, Level::INFO);
        assert_eq!(ours[0].line.level, "INFO");
        assert_eq!(
            ours[0].line.message,
            "member discovered node=\"web-1\" count=3"
        );
        assert_eq!(ours[1].line.message, "push-pull failed error=boom");
    }

    #[test]
    fn a_follower_behind_is_told_how_many_lines_it_missed() {
        let line = skipped(7);
        assert_eq!(line.skipped, 7);
        let text = String::from_utf8(ndjson(&line)).expect("utf-8");
        assert!(text.ends_with('\n'));
        assert!(text.contains("\"skipped\":7"), "{text}");
        let plain = String::from_utf8(ndjson(&LogLine { skipped: 0, ..line })).expect("utf-8");
        assert!(!plain.contains("skipped\":"), "{plain}");
    }
}
