//! The opsbro-compatible front: rewrites an opsbro (Python-flavoured) expression into rhai.
//!
//! * `{{collector.cpustats.cpu_all.%idle}}` and `{collector.x.y}` placeholders (also
//!   `parameters.`, `variables.`, `configuration.`) are replaced by the literal value the caller's
//!   resolver gives (a missing value becomes `''`, as in opsbro);
//! * `and`/`or`/`not` → `&&`/`||`/`!`, `True`/`False`/`None` → `true`/`false`/`()`;
//! * `'single quoted'` strings → `"double quoted"` (rhai's single quotes are characters);
//! * `{"k": v}` dict literals → `#{"k": v}` (where a value is expected; `{` after `)`, a word or a
//!   number opens a rhai block); `(a, b)` tuples → `[a, b]`.
//!
//! Plain rhai (statements, `let`, loops) passes through, so a rhai script works too.
//!
//! The rewrite keeps a map from output offsets to source offsets so that errors point at the
//! user's own text.

/// Where a placeholder value comes from: `collector.cpustats.cpu_all.%idle` → a JSON value.
pub trait Resolver {
    /// The value at `path`, or None when it does not exist.
    fn resolve(&self, path: &str) -> Option<serde_json::Value>;
}

impl<F: Fn(&str) -> Option<serde_json::Value>> Resolver for F {
    fn resolve(&self, path: &str) -> Option<serde_json::Value> {
        self(path)
    }
}

/// Placeholder namespaces recognised inside single braces.
const SINGLE_BRACE_ROOTS: &[&str] = &["collector.", "configuration.", "parameters.", "variables."];

/// The rewritten source and how to map its offsets back.
#[derive(Debug, Clone)]
pub struct Translated {
    /// rhai source.
    pub source: String,
    /// (output byte offset, source byte offset) at the start of each emitted piece.
    map: Vec<(usize, usize)>,
}

impl Translated {
    /// Byte offset in the original expression for a byte offset in the rhai source.
    pub fn source_offset(&self, out: usize) -> usize {
        match self.map.binary_search_by_key(&out, |(o, _)| *o) {
            Ok(i) => self.map[i].1,
            Err(0) => 0,
            Err(i) => {
                let (o, s) = self.map[i - 1];
                s + (out - o)
            }
        }
    }
}

struct Out {
    text: String,
    map: Vec<(usize, usize)>,
}

impl Out {
    fn emit(&mut self, src_at: usize, piece: &str) {
        self.map.push((self.text.len(), src_at));
        self.text.push_str(piece);
    }
}

/// A literal rhai expression for a JSON value.
pub fn literal(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "()".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.is_finite() => {
                let s = format!("{f:?}");
                if s.contains('.') || s.contains('e') {
                    s
                } else {
                    format!("{s}.0")
                }
            }
            _ => "()".into(),
        },
        Value::String(s) => quote(s),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "#{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", quote(k), literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Why an expression cannot even be rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontError {
    /// Byte offset in the expression.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// Byte ranges of string literals and, for each `(`, its matching `)` and whether it holds a
/// top-level comma (a tuple).
fn scan(src: &str) -> Result<Vec<Option<(usize, bool)>>, FrontError> {
    let b = src.as_bytes();
    let mut parens = vec![None; b.len()];
    let mut stack: Vec<(usize, bool, usize)> = Vec::new(); // (open index, has comma, depth of other brackets)
    let mut other = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if i >= b.len() {
                    return Err(FrontError {
                        offset: start,
                        message: "unterminated string".into(),
                    });
                }
            }
            b'(' => stack.push((i, false, other)),
            b')' => {
                let Some((open, comma, _)) = stack.pop() else {
                    return Err(FrontError {
                        offset: i,
                        message: "unbalanced `)`".into(),
                    });
                };
                parens[open] = Some((i, comma));
            }
            b'[' | b'{' => other += 1,
            b']' | b'}' => other = other.saturating_sub(1),
            b',' => {
                if let Some(top) = stack.last_mut()
                    && top.2 == other
                {
                    top.1 = true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if let Some((open, _, _)) = stack.pop() {
        return Err(FrontError {
            offset: open,
            message: "unbalanced `(`".into(),
        });
    }
    Ok(parens)
}

/// Rewrite `src` into rhai, resolving placeholders with `resolver`.
pub fn translate(src: &str, resolver: &dyn Resolver) -> Result<Translated, FrontError> {
    let parens = scan(src)?;
    let b = src.as_bytes();
    let mut out = Out {
        text: String::with_capacity(src.len() + 16),
        map: Vec::new(),
    };
    let mut closers: Vec<usize> = Vec::new(); // positions of `)` to emit as `]`
    let mut prev_significant: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        // Placeholders.
        if c == b'{' {
            let double = src[i..].starts_with("{{");
            let inner_start = if double { i + 2 } else { i + 1 };
            let rest = &src[inner_start..];
            let is_single_placeholder = !double
                && SINGLE_BRACE_ROOTS
                    .iter()
                    .any(|r| rest.trim_start().starts_with(r));
            if double || is_single_placeholder {
                let close = if double { "}}" } else { "}" };
                let Some(len) = rest.find(close) else {
                    return Err(FrontError {
                        offset: i,
                        message: "unterminated placeholder".into(),
                    });
                };
                let path = rest[..len].trim();
                let value = resolver
                    .resolve(path)
                    .unwrap_or_else(|| serde_json::Value::String(String::new()));
                out.emit(i, &literal(&value));
                i = inner_start + len + close.len();
                prev_significant = Some(b'0');
                continue;
            }
            // A Python dict literal where a value is expected; after `)`, a word or a number it
            // opens a rhai block (`while x {`, `if a > 1 {`, `else {`).
            let value_expected = match prev_significant {
                None => true,
                Some(p) => b"([,:=+-*/%<>!&|^?{".contains(&p),
            };
            out.emit(i, if value_expected { "#{" } else { "{" });
            i += 1;
            prev_significant = Some(b'{');
            continue;
        }
        match c {
            b'\'' | b'"' => {
                let start = i;
                let q = c;
                i += 1;
                let mut text = String::new();
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        let next = src[i + 1..].chars().next().unwrap_or('\\');
                        match next {
                            '\'' | '"' | '\\' => text.push(next),
                            'n' => text.push('\n'),
                            't' => text.push('\t'),
                            'r' => text.push('\r'),
                            other => {
                                text.push('\\');
                                text.push(other);
                            }
                        }
                        i += 1 + next.len_utf8();
                        continue;
                    }
                    let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
                    text.push(ch);
                    i += ch.len_utf8();
                }
                i += 1; // closing quote (scan() guaranteed it)
                out.emit(start, &quote(&text));
                prev_significant = Some(b'"');
            }
            b'(' => {
                let is_call = matches!(prev_significant, Some(p) if p.is_ascii_alphanumeric() || p == b'_' || p == b')' || p == b']');
                match parens[i] {
                    Some((close, true)) if !is_call => {
                        closers.push(close);
                        out.emit(i, "[");
                    }
                    _ => out.emit(i, "("),
                }
                prev_significant = Some(b'(');
                i += 1;
            }
            b')' => {
                if closers.last() == Some(&i) {
                    closers.pop();
                    out.emit(i, "]");
                } else {
                    out.emit(i, ")");
                }
                prev_significant = Some(b')');
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &src[start..i];
                let piece = match word {
                    "and" => "&&",
                    "or" => "||",
                    "not" => "!",
                    "True" => "true",
                    "False" => "false",
                    "None" => "()",
                    w => w,
                };
                out.emit(start, piece);
                prev_significant = Some(if piece == word { b'a' } else { b'&' });
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or(' ');
                let len = ch.len_utf8();
                out.emit(i, &src[i..i + len]);
                if !ch.is_whitespace() {
                    prev_significant = Some(if ch.is_ascii() { ch as u8 } else { b'x' });
                }
                i += len;
            }
        }
    }
    Ok(Translated {
        source: out.text,
        map: out.map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<serde_json::Value> {
        None
    }

    fn t(src: &str) -> String {
        translate(src, &none).expect("translate").source
    }

    #[test]
    fn python_words_and_quotes() {
        assert_eq!(t("True and not False or None"), "true && ! false || ()");
        assert_eq!(t("'it''s'"), "\"it\"\"s\"");
        assert_eq!(t(r#"'say "hi"'"#), r#""say \"hi\"""#);
        assert_eq!(t("android or order"), "android || order");
        assert_eq!(t("'and' + \"or\""), "\"and\" + \"or\"");
    }

    #[test]
    fn rhai_blocks_stay_blocks() {
        assert_eq!(t("while true {}"), "while true {}");
        assert_eq!(t("if x > 1 { 2 } else { 3 }"), "if x > 1 { 2 } else { 3 }");
        assert_eq!(t("let m = {'a': 1}; m"), "let m = #{\"a\": 1}; m");
    }

    #[test]
    fn dicts_and_tuples() {
        assert_eq!(
            t(r#"sorted({"k":"v"}.values())"#),
            r#"sorted(#{"k":"v"}.values())"#
        );
        assert_eq!(t("'%s-%s' % (a, b)"), "\"%s-%s\" % [a, b]");
        assert_eq!(t("f(a, b)"), "f(a, b)");
        assert_eq!(t("(1 + 2) * 3"), "(1 + 2) * 3");
        assert_eq!(t("max((1, 2))"), "max([1, 2])");
    }

    #[test]
    fn placeholders_become_literals() {
        let r = |p: &str| match p {
            "collector.cpustats.cpu_all.%idle" => Some(serde_json::json!(97.5)),
            "configuration.thresholds.cpuidle.critical" => Some(serde_json::json!(1)),
            "parameters.name" => Some(serde_json::json!("x\"y")),
            _ => None,
        };
        let out = translate(
            "{collector.cpustats.cpu_all.%idle} < {configuration.thresholds.cpuidle.critical} and {{parameters.name}} != {{collector.nope}}",
            &r,
        )
        .expect("translate");
        assert_eq!(out.source, r#"97.5 < 1 && "x\"y" != """#);
    }

    #[test]
    fn offsets_map_back_to_the_source() {
        let out = translate("True and bogus(", &none);
        assert!(out.is_err(), "unbalanced paren is caught by the front");
        let out = translate("x and yy", &none).expect("ok");
        // "x && yy": `yy` starts at 5 in the output and 6 in the source.
        assert_eq!(out.source_offset(5), 6);
        assert_eq!(out.source_offset(0), 0);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(translate("'open", &none).is_err());
        assert!(translate("{{collector.x", &none).is_err());
        assert!(translate(")", &none).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = translate(&s, &none);
        }
    }
}
