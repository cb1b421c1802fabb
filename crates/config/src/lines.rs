//! Where each key of a YAML document is: a map from a dotted key path (`api.port`, `seeds[1]`) to
//! its 1-based line, built from the marked event stream of `yaml-rust2`.
//!
//! serde_yaml reports the location of the first error only; to report every configuration error
//! with its line we look the line up here once validation has found all of them.

use std::collections::HashMap;

use yaml_rust2::Event;
use yaml_rust2::parser::{MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key path → line number (1-based) of the key (for mapping entries) or the item (for sequences).
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Index `text`. A document that does not parse yields an empty index: the syntax error is
    /// reported by the deserializer, with its own location.
    pub fn build(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        Self {
            lines: builder.lines,
        }
    }

    /// The line of `path`, or of its closest indexed parent (`api.port` falls back to `api`).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut candidate = path;
        loop {
            if let Some(line) = self.lines.get(candidate) {
                return Some(*line);
            }
            let cut = candidate.rfind(['.', '['])?;
            candidate = &candidate[..cut];
        }
    }
}

/// One open container while walking the event stream.
#[derive(Debug)]
enum Frame {
    /// A mapping; `pending_key` is the key whose value comes next (None: the next scalar is a key).
    Map {
        path: String,
        pending_key: Option<String>,
    },
    /// A sequence and the index of its next item.
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// The path of the value that starts now, advancing the parent's position. `None` when the
    /// event is a mapping key (recorded here) rather than a value.
    fn value_path(&mut self, event_is_scalar: Option<&str>, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                self.lines.insert(item.clone(), line);
                Some(item)
            }
            Some(Frame::Map { path, pending_key }) => match pending_key.take() {
                Some(key) => Some(join(path, &key)),
                None => {
                    // This is a key. Complex (non-scalar) keys are not used by opsbro configs;
                    // they get a placeholder name so the walk stays balanced.
                    let key = event_is_scalar.unwrap_or("?").to_owned();
                    self.lines.insert(join(path, &key), line);
                    *pending_key = Some(key);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::Scalar(text, ..) => {
                self.value_path(Some(&text), line);
            }
            Event::Alias(_) => {
                self.value_path(None, line);
            }
            Event::MappingStart(..) => {
                let path = self.value_path(None, line).unwrap_or_default();
                self.stack.push(Frame::Map {
                    path,
                    pending_key: None,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(None, line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let text =
            "node_name: a\napi:\n  bind: 127.0.0.1\n  port: 6770\nseeds:\n  - h1\n  - h2:1\n";
        let index = LineIndex::build(text);
        assert_eq!(index.line_of("node_name"), Some(1));
        assert_eq!(index.line_of("api"), Some(2));
        assert_eq!(index.line_of("api.port"), Some(4));
        assert_eq!(index.line_of("seeds[1]"), Some(7));
        assert_eq!(index.line_of("api.missing"), Some(2));
        assert_eq!(index.line_of("nothing"), None);
    }

    #[test]
    fn flow_style_keys_are_indexed_too() {
        let index = LineIndex::build("a: 1\napi: {bind: x,\n  port: 2}\n");
        assert_eq!(index.line_of("api.bind"), Some(2));
        assert_eq!(index.line_of("api.port"), Some(3));
    }

    #[test]
    fn broken_yaml_gives_an_empty_index() {
        let index = LineIndex::build("a: [1, 2\n");
        assert_eq!(index.line_of("a"), None);
    }
}
