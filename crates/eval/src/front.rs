//! The opsbro-compatible front: rewrites an opsbro (Python-flavoured) expression into rhai.
//!
//! * `{{collector.cpustats.cpu_all.%idle}}` and `{collector.x.y}` placeholders (also
//!   `parameters.`, `variables.`, `configuration.`) are replaced by the literal value the caller's
//!   resolver gives (a missing value becomes `''`, as in opsbro); `{{collector.x||default}}` uses
//!   the default, rewritten as an expression in parentheses, when the path does not resolve;
//! * keyword arguments, which rhai lacks: `gossip_count_nodes(state='alive')` becomes
//!   `gossip_count_nodes("", "alive")` from the library's parameter table (names and defaults of
//!   the original, given by the engine); only `name=` at the top level of a call's
//!   argument list counts, so `==` and rhai assignments are untouched;
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

use crate::signature::FunctionDoc;

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

/// Deepest nesting of keyword calls and placeholder defaults the front rewrites (each one
/// recurses); rhai's own expression depth limit is the same.
const MAX_NESTING: usize = 64;

/// [`translate`] with the function signatures given: `f(a, name=v)` becomes a positional call
/// of `f` from its parameters in `signatures`, parameters left out before the last one given
/// taking their defaults.
pub fn translate_with(
    src: &str,
    resolver: &dyn Resolver,
    signatures: &[FunctionDoc],
) -> Result<Translated, FrontError> {
    let parens = scan(src)?;
    let mut t = Translator {
        src,
        parens,
        resolver,
        signatures,
        out: Out {
            text: String::with_capacity(src.len() + 16),
            map: Vec::new(),
        },
        depth: 0,
    };
    t.run(0, src.len())?;
    Ok(Translated {
        source: t.out.text,
        map: t.out.map,
    })
}

/// One rewrite: the whole expression, with sub-ranges (keyword call arguments, placeholder
/// defaults) rewritten recursively into the same output.
struct Translator<'a> {
    src: &'a str,
    parens: Vec<Option<(usize, bool)>>,
    resolver: &'a dyn Resolver,
    signatures: &'a [FunctionDoc],
    out: Out,
    depth: usize,
}

/// A placeholder that resolves to nothing and has no default: `''`, as in opsbro.
const MISSING: &str = "\"\"";

impl Translator<'_> {
    /// Rewrite `src[start..end]` (a balanced piece: the whole source or one argument).
    fn run(&mut self, start: usize, end: usize) -> Result<(), FrontError> {
        if self.depth >= MAX_NESTING {
            return Err(FrontError {
                offset: start,
                message: "the expression is nested too deeply".into(),
            });
        }
        self.depth += 1;
        let result = self.run_piece(start, end);
        self.depth -= 1;
        result
    }

    fn run_piece(&mut self, start: usize, end: usize) -> Result<(), FrontError> {
        let src = self.src;
        let b = src.as_bytes();
        let mut closers: Vec<usize> = Vec::new(); // positions of `)` to emit as `]`
        let mut prev_significant: Option<u8> = None;
        // The last plain word: (start, end, preceded by a `.`).
        let mut last_word: Option<(usize, usize, bool)> = None;
        let mut i = start;
        while i < end {
            let c = b[i];
            // Placeholders.
            if c == b'{' {
                let double = src[i..end].starts_with("{{");
                let inner_start = if double { i + 2 } else { i + 1 };
                let rest = &src[inner_start..end];
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
                    self.placeholder(i, inner_start, inner_start + len)?;
                    i = inner_start + len + close.len();
                    prev_significant = Some(b'0');
                    continue;
                }
                // A Python dict literal where a value is expected; after `)`, a word or a
                // number it opens a rhai block (`while x {`, `if a > 1 {`, `else {`).
                let value_expected = match prev_significant {
                    None => true,
                    Some(p) => b"([,:=+-*/%<>!&|^?{".contains(&p),
                };
                self.out.emit(i, if value_expected { "#{" } else { "{" });
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
                    while i < end && b[i] != q {
                        if b[i] == b'\\' && i + 1 < end {
                            let next = src[i + 1..end].chars().next().unwrap_or('\\');
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
                        let ch = src[i..end].chars().next().unwrap_or('\u{fffd}');
                        text.push(ch);
                        i += ch.len_utf8();
                    }
                    if i >= end {
                        // Only a piece cut inside a string (a placeholder default holding
                        // `}}`) gets here: scan() checked the whole source.
                        return Err(FrontError {
                            offset: start,
                            message: "unterminated string".into(),
                        });
                    }
                    i += 1; // closing quote
                    self.out.emit(start, &quote(&text));
                    prev_significant = Some(b'"');
                }
                b'(' => {
                    let is_call = matches!(prev_significant, Some(p) if p.is_ascii_alphanumeric() || p == b'_' || p == b')' || p == b']');
                    if let (Some(b'a'), Some((ws, we, after_dot)), Some((close, _))) =
                        (prev_significant, last_word, self.parens[i])
                        && close < end
                    {
                        let args = split_args(src, i + 1, close);
                        if args.iter().any(|a| keyword_of(src, *a).is_some()) {
                            self.keyword_call(&src[ws..we], after_dot, i, close, &args)?;
                            i = close + 1;
                            prev_significant = Some(b')');
                            continue;
                        }
                    }
                    match self.parens[i] {
                        Some((close, true)) if !is_call => {
                            closers.push(close);
                            self.out.emit(i, "[");
                        }
                        _ => self.out.emit(i, "("),
                    }
                    prev_significant = Some(b'(');
                    i += 1;
                }
                b')' => {
                    if closers.last() == Some(&i) {
                        closers.pop();
                        self.out.emit(i, "]");
                    } else {
                        self.out.emit(i, ")");
                    }
                    prev_significant = Some(b')');
                    i += 1;
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    let word_start = i;
                    while i < end && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                    let word = &src[word_start..i];
                    let piece = match word {
                        "and" => "&&",
                        "or" => "||",
                        "not" => "!",
                        "True" => "true",
                        "False" => "false",
                        "None" => "()",
                        w => w,
                    };
                    self.out.emit(word_start, piece);
                    last_word = Some((word_start, i, prev_significant == Some(b'.')));
                    prev_significant = Some(if piece == word { b'a' } else { b'&' });
                }
                _ => {
                    let ch = src[i..end].chars().next().unwrap_or(' ');
                    let len = ch.len_utf8();
                    self.out.emit(i, &src[i..i + len]);
                    if !ch.is_whitespace() {
                        prev_significant = Some(if ch.is_ascii() { ch as u8 } else { b'x' });
                    }
                    i += len;
                }
            }
        }
        Ok(())
    }

    /// `{{path}}` or `{{path||default}}` (`inner` = `src[from..to]`): the resolved value as a
    /// literal; else the default, rewritten as an expression; else `''`.
    fn placeholder(&mut self, at: usize, from: usize, to: usize) -> Result<(), FrontError> {
        let inner = &self.src[from..to];
        let (path, default) = match inner.find("||") {
            Some(k) => (&inner[..k], Some((from + k + 2, to))),
            None => (inner, None),
        };
        if let Some(value) = self.resolver.resolve(path.trim()) {
            self.out.emit(at, &literal(&value));
            return Ok(());
        }
        match default {
            Some((ds, de)) if !self.src[ds..de].trim().is_empty() => {
                self.out.emit(at, "(");
                self.run(ds, de)?;
                self.out.emit(de, ")");
            }
            _ => self.out.emit(at, MISSING),
        }
        Ok(())
    }

    /// `name(args)` whose `args` hold a `keyword=value`: the positional call.
    fn keyword_call(
        &mut self,
        name: &str,
        after_dot: bool,
        open: usize,
        close: usize,
        args: &[(usize, usize)],
    ) -> Result<(), FrontError> {
        let src = self.src;
        let first_keyword = args
            .iter()
            .position(|a| keyword_of(src, *a).is_some())
            .unwrap_or(0);
        let keyword_at = args.get(first_keyword).map_or(open, |a| a.0);
        if after_dot {
            return Err(FrontError {
                offset: keyword_at,
                message: format!(
                    "keyword arguments work only in calls of library functions, not in the method call `.{name}(...)`"
                ),
            });
        }
        let Some(sig) = self.signatures.iter().find(|d| d.name == name) else {
            return Err(FrontError {
                offset: keyword_at,
                message: format!(
                    "`{name}` is not a library function, so it takes no keyword arguments (see `opsbro evaluator list`)"
                ),
            });
        };
        let params = sig.params;
        let mut slots: Vec<Option<(usize, usize)>> = vec![None; params.len()];
        for (idx, &(s, e)) in args.iter().enumerate() {
            match keyword_of(src, (s, e)) {
                None if idx > first_keyword => {
                    return Err(FrontError {
                        offset: s,
                        message: format!(
                            "positional argument after a keyword argument in the call of `{}`",
                            sig.prototype
                        ),
                    });
                }
                None => match slots.get_mut(idx) {
                    Some(slot) => *slot = Some((s, e)),
                    None => {
                        return Err(FrontError {
                            offset: s,
                            message: format!(
                                "`{}` takes at most {} argument(s)",
                                sig.prototype,
                                params.len()
                            ),
                        });
                    }
                },
                Some((ns, ne, value)) => {
                    let keyword = &src[ns..ne];
                    let Some(p) = params.iter().position(|p| p.name == keyword) else {
                        return Err(FrontError {
                            offset: ns,
                            message: format!(
                                "`{name}` has no parameter `{keyword}`; {}",
                                parameter_list(sig)
                            ),
                        });
                    };
                    if slots[p].is_some() {
                        return Err(FrontError {
                            offset: ns,
                            message: format!(
                                "`{name}` got two values for its parameter `{keyword}`"
                            ),
                        });
                    }
                    if src[value..e].trim().is_empty() {
                        return Err(FrontError {
                            offset: ns,
                            message: format!("keyword argument `{keyword}=` has no value"),
                        });
                    }
                    slots[p] = Some(trim_range(src, (value, e)));
                }
            }
        }
        let given = slots.iter().rposition(Option::is_some).map_or(0, |l| l + 1);
        self.out.emit(open, "(");
        for (j, slot) in slots.iter().take(given).enumerate() {
            if j > 0 {
                self.out.emit(slot.map_or(open, |s| s.0), ", ");
            }
            match (slot, params[j].default) {
                (Some((s, e)), _) => self.run(*s, *e)?,
                (None, Some(default)) => {
                    // The table's defaults are opsbro literals (`''`, `False`, `10`).
                    let literal =
                        translate_with(default, &no_placeholders, &[]).map_err(|e| FrontError {
                            offset: open,
                            message: format!(
                                "bad default `{default}` for `{}`: {}",
                                params[j].name, e.message
                            ),
                        })?;
                    self.out.emit(open, &literal.source);
                }
                (None, None) => {
                    return Err(FrontError {
                        offset: open,
                        message: format!(
                            "`{name}` needs its argument `{}` when a later one is given (`{}`)",
                            params[j].name, sig.prototype
                        ),
                    });
                }
            }
        }
        self.out.emit(close, ")");
        Ok(())
    }
}

fn no_placeholders(_: &str) -> Option<serde_json::Value> {
    None
}

/// "its parameters are: group, state" (or that it takes none), for keyword errors.
fn parameter_list(sig: &FunctionDoc) -> String {
    if sig.params.is_empty() {
        return format!("it takes no arguments (`{}`)", sig.prototype);
    }
    let names: Vec<&str> = sig.params.iter().map(|p| p.name).collect();
    format!(
        "its parameters are: {} (`{}`)",
        names.join(", "),
        sig.prototype
    )
}

/// The arguments of a call whose parentheses hold `src[from..to]`: byte ranges split at the
/// top-level commas (not inside strings or brackets); `()` has none, a trailing comma adds
/// none.
fn split_args(src: &str, from: usize, to: usize) -> Vec<(usize, usize)> {
    let b = src.as_bytes();
    let mut args = Vec::new();
    let mut depth = 0usize;
    let mut arg_start = from;
    let mut i = from;
    while i < to {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < to && b[i] != q {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                args.push((arg_start, i));
                arg_start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    // A blank last piece is `()` or the trailing comma of `f(a, )`, which Python allows; a
    // blank piece inside (`f(a, , b)`) stays, for rhai to report.
    if !src[arg_start..to].trim().is_empty() {
        args.push((arg_start, to));
    }
    args.into_iter().map(|a| trim_range(src, a)).collect()
}

/// `src[from..to]` without its ASCII blanks at both ends.
fn trim_range(src: &str, (mut from, mut to): (usize, usize)) -> (usize, usize) {
    let b = src.as_bytes();
    while from < to && b[from].is_ascii_whitespace() {
        from += 1;
    }
    while to > from && b[to - 1].is_ascii_whitespace() {
        to -= 1;
    }
    (from, to)
}

/// `name=` at the start of an argument (`==` is a comparison, not a keyword): the name's range
/// and where the value starts.
fn keyword_of(src: &str, (from, to): (usize, usize)) -> Option<(usize, usize, usize)> {
    let b = src.as_bytes();
    let mut k = from;
    while k < to && b[k].is_ascii_whitespace() {
        k += 1;
    }
    let name_start = k;
    if k >= to || !(b[k].is_ascii_alphabetic() || b[k] == b'_') {
        return None;
    }
    while k < to && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
        k += 1;
    }
    let name_end = k;
    while k < to && b[k].is_ascii_whitespace() {
        k += 1;
    }
    (k < to && b[k] == b'=' && b.get(k + 1) != Some(&b'=')).then_some((name_start, name_end, k + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(src: &str, resolver: &dyn Resolver) -> Result<Translated, FrontError> {
        translate_with(src, resolver, crate::functions::DOCS)
    }

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

    #[test]
    fn keyword_arguments_become_positions() {
        assert_eq!(
            t("gossip_count_nodes(group='kv')"),
            r#"gossip_count_nodes("kv")"#
        );
        assert_eq!(
            t("gossip_count_nodes(state='alive')"),
            r#"gossip_count_nodes("", "alive")"#
        );
        assert_eq!(
            t("gossip_count_nodes(state = 'alive', group='web')"),
            r#"gossip_count_nodes("web", "alive")"#
        );
        assert_eq!(
            t("grep_file('x', p, regexp=True)"),
            r#"grep_file("x", p, true)"#
        );
        assert_eq!(t("check_tcp(h, p, timeout=2)"), "check_tcp(h, p, 2)");
        assert_eq!(
            t("get_horizontal_bar(v, width=40)"),
            "get_horizontal_bar(v, 40)"
        );
        // Nested keyword calls, dicts and tuples inside keyword values.
        assert_eq!(
            t("is_in_group(group=string_lower(s={'a': 'WEB'}['a']))"),
            r#"is_in_group(string_lower(#{"a": "WEB"}["a"]))"#
        );
        assert_eq!(
            t("string_join(ch='-', list=(a, b),)"),
            r#"string_join([a, b], "-")"#
        );
    }

    #[test]
    fn comparisons_and_assignments_are_not_keywords() {
        assert_eq!(t("is_in_group(x == 'a')"), r#"is_in_group(x == "a")"#);
        assert_eq!(t("let x = 1; x = 2; abs(x)"), "let x = 1; x = 2; abs(x)");
        assert_eq!(
            t("abs(if x == 1 { y = 2; y } else { 3 })"),
            "abs(if x == 1 { y = 2; y } else { 3 })"
        );
        assert_eq!(t("len([a == 1, b])"), "len([a == 1, b])");
        // A call without keywords is left exactly as written.
        assert_eq!(t("check_tcp( h ,p )"), "check_tcp( h ,p )");
    }

    #[test]
    fn keyword_errors_name_the_function_and_its_parameters() {
        let err = |src: &str| translate(src, &none).expect_err(src);
        let e = err("gossip_count_nodes(grup='web')");
        assert!(
            e.message
                .contains("`gossip_count_nodes` has no parameter `grup`")
                && e.message.contains("group, state"),
            "{e:?}"
        );
        assert_eq!(e.offset, 19);
        let e = err("no_such_function(a=1)");
        assert!(
            e.message
                .contains("`no_such_function` is not a library function"),
            "{e:?}"
        );
        let e = err("'x'.string_upper(s=1)");
        assert!(e.message.contains("method call"), "{e:?}");
        let e = err("grep_file(path='/etc/os-release')");
        assert!(e.message.contains("needs its argument `string`"), "{e:?}");
        let e = err("gossip_count_nodes('web', group='db')");
        assert!(e.message.contains("two values"), "{e:?}");
        let e = err("gossip_count_nodes(group='web', 'alive')");
        assert!(e.message.contains("positional argument after"), "{e:?}");
        let e = err("now(1, x=2)");
        assert!(e.message.contains("takes at most 0"), "{e:?}");
        let e = err("gossip_count_nodes(group=)");
        assert!(e.message.contains("has no value"), "{e:?}");
    }

    #[test]
    fn keyword_rewrites_follow_the_given_table() {
        const F: &[FunctionDoc] = &[FunctionDoc {
            name: "f",
            prototype: "f(a, b=1, c=None)",
            params: &[
                crate::signature::Param {
                    name: "a",
                    default: None,
                },
                crate::signature::Param {
                    name: "b",
                    default: Some("1"),
                },
                crate::signature::Param {
                    name: "c",
                    default: Some("None"),
                },
            ],
            doc: "test",
            group: "test",
        }];
        let t = |s: &str| translate_with(s, &none, F).expect(s).source;
        assert_eq!(t("f(0, c='x')"), r#"f(0, 1, "x")"#);
        assert_eq!(t("f(c=True, a=2)"), "f(2, 1, true)");
        assert_eq!(t("f(a=2)"), "f(2)");
    }

    #[test]
    fn placeholder_defaults_are_expressions() {
        let r = |p: &str| (p == "collector.there").then(|| serde_json::json!(5));
        let t = |s: &str| translate(s, &r).expect(s).source;
        assert_eq!(t("{{collector.nope||0}}"), "(0)");
        assert_eq!(t("{{collector.nope || 'linux' }}"), r#"( "linux" )"#);
        assert_eq!(t("{{collector.nope||False}}"), "(false)");
        assert_eq!(t("{{collector.there||0}}"), "5");
        assert_eq!(t("{collector.nope||1 + 2}"), "(1 + 2)");
        assert_eq!(t("{{collector.nope||}}"), r#""""#);
        assert!(translate("{{collector.nope||'}}'}}", &r).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}1{}", "abs(x=".repeat(5000), ")".repeat(5000));
        let e = translate(&deep, &none).expect_err("too deep");
        assert!(e.message.contains("nested too deeply"), "{e:?}");
        let deep = format!("{}0{}", "{{collector.a||".repeat(100), "}}".repeat(100));
        assert!(translate(&deep, &none).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = translate(&s, &none);
        }

        #[test]
        fn arbitrary_calls_with_keywords_never_panic(
            s in "(gossip_count_nodes|grep_file|f|abs|\\.x)\\((([a-z_]{1,6} ?= ?)?('[a-z]*'|[0-9]|\\{\\{collector\\.[a-z]\\|\\|[0-9a-z'()]{0,4}\\}\\}|[(\\[{=, ]){0,3}, ?){0,4}\\)"
        ) {
            let _ = translate(&s, &none);
        }
    }
}
