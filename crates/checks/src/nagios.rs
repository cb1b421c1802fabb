//! Nagios plugins: `$macro$` substitution in the command line, and the plugin output format.
//!
//! Output format (Nagios plugin API): the first line is the status text, optionally followed by
//! `| perfdata`; further lines are long output, and a `|` on one of them starts more perfdata.
//! Perfdata items are `'label'=value[UOM];[warn];[crit];[min];[max]` separated by spaces.

use serde_json::Value;

use crate::shell::ShellCommand;

/// Most bytes of plugin output kept (the rest is dropped, and the output says so).
pub const MAX_OUTPUT: usize = 4096;

/// Why a command line cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroError(pub String);

impl std::fmt::Display for MacroError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Build the command line of a plugin from `script`: `$nagiosplugins$` becomes `plugins_dir`,
/// `$a.b$` the value at that path in the check's own keys, `$a.b | default$` the default when
/// the path is missing; `$$` is a literal `$`. A macro's value is never pasted into the shell
/// text: it travels as a positional argument (see [`crate::shell`]) and expands as a pasted
/// value would — split into words outside quotes (`$args$` = `-w 80 -c 90` is four arguments),
/// one word inside quotes — but its own quotes, `$(...)` or `;` are never read as shell code.
/// A macro with no value and no default is an error (the check goes UNKNOWN with this message
/// rather than running a wrong command).
pub fn substitute(
    script: &str,
    keys: &Value,
    plugins_dir: &str,
) -> Result<ShellCommand, MacroError> {
    if script.contains([crate::shell::MARK_START, crate::shell::MARK_END]) {
        return Err(MacroError("the script contains control characters".into()));
    }
    let mut out = String::with_capacity(script.len());
    let mut values = Vec::new();
    let mut rest = script;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('$') else {
            return Err(MacroError(format!(
                "unclosed macro `${after}` in the script (write $$ for a literal $)"
            )));
        };
        let inner = &after[..end];
        rest = &after[end + 1..];
        if inner.is_empty() {
            out.push('$');
            continue;
        }
        let (path, default) = match inner.split_once('|') {
            Some((p, d)) => (p.trim(), Some(d.trim())),
            None => (inner.trim(), None),
        };
        if path.chars().any(char::is_whitespace) || path.is_empty() {
            return Err(MacroError(format!("`${inner}$` is not a macro name")));
        }
        if path == "nagiosplugins" {
            // The agent's own configuration, not a pack value.
            out.push_str(plugins_dir);
            continue;
        }
        match lookup(keys, path) {
            Some(v) => {
                let text = scalar(v).ok_or_else(|| {
                    MacroError(format!(
                        "macro `${path}$` is a list or a mapping, not a value"
                    ))
                })?;
                out.push_str(&crate::shell::marker(values.len()));
                values.push(text);
            }
            // The default is written in the script itself: it is script text.
            None => match default {
                Some(d) => out.push_str(d),
                None => {
                    return Err(MacroError(format!(
                        "macro `${path}$` has no value: add `{path}` to the check or write `${path} | default$`"
                    )));
                }
            },
        }
    }
    out.push_str(rest);
    crate::shell::place_arguments(&out, values, crate::shell::Unquoted::Split)
        .map_err(|e| MacroError(e.to_string()))
}

fn lookup<'a>(keys: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(keys, |v, part| v.get(part))
        .filter(|v| !v.is_null())
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One performance data item.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfData {
    /// Label (quotes removed).
    pub label: String,
    /// Value.
    pub value: f64,
    /// Unit of measure (`s`, `%`, `B`, `KB`, `c`, ...), empty when none.
    pub unit: String,
    /// Warning threshold (as written; ranges are kept as text).
    pub warning: Option<String>,
    /// Critical threshold.
    pub critical: Option<String>,
    /// Minimum.
    pub min: Option<f64>,
    /// Maximum.
    pub max: Option<f64>,
}

/// What a plugin printed, split as Nagios does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PluginOutput {
    /// First line (before `|`), trimmed.
    pub output: String,
    /// The following lines (without their perfdata).
    pub long_output: String,
    /// Every parsed perfdata item.
    pub perfdata: Vec<PerfData>,
    /// Perfdata items that could not be parsed.
    pub bad_perfdata: usize,
}

/// Split plugin output. Never fails: unparsable perfdata items are counted in `bad_perfdata`.
pub fn parse_output(text: &str) -> PluginOutput {
    let mut out = PluginOutput::default();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let (status, perf) = match first.split_once('|') {
        Some((s, p)) => (s, Some(p)),
        None => (first, None),
    };
    out.output = status.trim().to_owned();
    let mut perf_text = perf.map(str::to_owned).unwrap_or_default();
    let mut long = Vec::new();
    let mut in_perf = false;
    for line in lines {
        if in_perf {
            perf_text.push(' ');
            perf_text.push_str(line);
        } else if let Some((text, p)) = line.split_once('|') {
            long.push(text.trim_end());
            perf_text.push(' ');
            perf_text.push_str(p);
            in_perf = true;
        } else {
            long.push(line.trim_end());
        }
    }
    out.long_output = long.join("\n").trim_end().to_owned();
    let (items, bad) = parse_perfdata(&perf_text);
    out.perfdata = items;
    out.bad_perfdata = bad;
    out
}

/// Parse perfdata items; returns them and the number of items that were not valid.
pub fn parse_perfdata(text: &str) -> (Vec<PerfData>, usize) {
    let mut items = Vec::new();
    let mut bad = 0;
    for token in tokens(text) {
        match parse_item(&token) {
            Some(p) => items.push(p),
            None => bad += 1,
        }
    }
    (items, bad)
}

/// Split on spaces, keeping quoted labels (`'a b'=1`) whole; `''` inside quotes is a quote.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if quoted && chars.peek() == Some(&'\'') => {
                chars.next();
                cur.push_str("''");
            }
            '\'' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse_item(token: &str) -> Option<PerfData> {
    let eq = token.rfind('=')?;
    let (label, rest) = (&token[..eq], &token[eq + 1..]);
    let label = if label.len() >= 2 && label.starts_with('\'') && label.ends_with('\'') {
        label[1..label.len() - 1].replace("''", "'")
    } else {
        label.to_owned()
    };
    if label.is_empty() {
        return None;
    }
    let mut fields = rest.split(';');
    let value_uom = fields.next()?;
    let split = value_uom
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(value_uom.len());
    // `e` may start a unit only when it is not part of a number: `5e` is rare enough that a
    // failed parse is the right answer.
    let value: f64 = value_uom[..split]
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())?;
    let unit = value_uom[split..].to_owned();
    if unit.len() > 8 || unit.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let text = |s: Option<&str>| {
        s.map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let num = |s: Option<&str>| {
        s.map(str::trim)
            .filter(|s| !s.is_empty())
            .and_then(|s| s.parse::<f64>().ok())
    };
    Some(PerfData {
        label,
        value,
        unit,
        warning: text(fields.next()),
        critical: text(fields.next()),
        min: num(fields.next()),
        max: num(fields.next()),
    })
}

/// Keep at most [`MAX_OUTPUT`] bytes of `bytes` as text (lossy UTF-8, cut on a character
/// boundary); returns the text and whether something was cut.
pub fn cap_output(bytes: &[u8]) -> (String, bool) {
    let cut = bytes.len() > MAX_OUTPUT;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OUTPUT)]);
    let mut text = text.into_owned();
    // A multi-byte character cut in half becomes U+FFFD at the end: drop it.
    if cut && text.ends_with('\u{FFFD}') {
        text.pop();
    }
    (text, cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn macros_come_from_the_check_and_the_plugins_dir() {
        let keys = json!({"mailq": {"warning": 1, "critical": 2}, "exit_text": "hi there"});
        let got = substitute(
            "$nagiosplugins$/check_mailq -w $mailq.warning$ -c $mailq.critical$ '$exit_text$'",
            &keys,
            "/usr/lib/nagios/plugins",
        )
        .expect("ok");
        assert_eq!(
            got.script,
            "/usr/lib/nagios/plugins/check_mailq -w ${1} -c ${2} ''\"${3}\"''"
        );
        assert_eq!(got.args, ["1", "2", "hi there"]);
    }

    #[test]
    fn macro_values_split_like_pasted_text_but_never_run() {
        let keys = json!({"args": "-w 80 -c 90", "evil": "x; touch PWNED $(touch PWNED2)"});
        let dir = tempfile::tempdir().expect("tmp");
        let cmd = substitute(
            &format!("cd {} && printf '%s|' $args$ $evil$", dir.path().display()),
            &keys,
            "/p",
        )
        .expect("ok");
        let out = std::process::Command::new("/bin/sh")
            .args(cmd.argv())
            .output()
            .expect("sh");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "-w|80|-c|90|x;|touch|PWNED|$(touch|PWNED2)|"
        );
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn macro_defaults_dollars_and_errors() {
        let keys = json!({"a": {"b": 3}});
        let got = substitute("x $missing | 7$ $$HOME $a.b$", &keys, "/p").expect("ok");
        assert_eq!(got.script, "x 7 $HOME ${1}");
        assert_eq!(got.args, ["3"]);
        let e = substitute("check $nope$", &keys, "/p").expect_err("missing");
        assert!(e.0.contains("`$nope$` has no value"), "{e}");
        let e = substitute("echo $oops", &keys, "/p").expect_err("unclosed");
        assert!(e.0.contains("unclosed macro"), "{e}");
        let e = substitute("echo $a$", &keys, "/p").expect_err("mapping");
        assert!(e.0.contains("not a value"), "{e}");
    }

    #[test]
    fn output_first_line_long_output_and_perfdata() {
        let text = "DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968\n\
                    / 15272 MB (77%);\n/boot 68 MB (69%);\n\
                    /home 69357 MB (27%);| /boot=68MB;88;93;0;98\n\
                    /home=69357MB;253404;253409;0;253414 'in use'=27%;;;0;100";
        let p = parse_output(text);
        assert_eq!(p.output, "DISK OK - free space: / 3326 MB (56%);");
        assert_eq!(
            p.long_output,
            "/ 15272 MB (77%);\n/boot 68 MB (69%);\n/home 69357 MB (27%);"
        );
        let labels: Vec<&str> = p.perfdata.iter().map(|d| d.label.as_str()).collect();
        assert_eq!(labels, ["/", "/boot", "/home", "in use"]);
        assert_eq!(p.perfdata[0].value, 2643.0);
        assert_eq!(p.perfdata[0].unit, "MB");
        assert_eq!(p.perfdata[0].warning.as_deref(), Some("5948"));
        assert_eq!(p.perfdata[0].max, Some(5968.0));
        assert_eq!(p.perfdata[3].unit, "%");
        assert_eq!(p.bad_perfdata, 0);
    }

    #[test]
    fn bad_perfdata_is_counted_not_fatal() {
        let p = parse_output("OK | time=0.5s size=abc =3 load1=0.25;1;2");
        assert_eq!(p.output, "OK");
        assert_eq!(p.perfdata.len(), 2);
        assert_eq!(p.perfdata[0].unit, "s");
        assert_eq!(p.bad_perfdata, 2);
    }

    #[test]
    fn output_is_capped_on_a_character_boundary() {
        let long = "é".repeat(MAX_OUTPUT);
        let (text, cut) = cap_output(long.as_bytes());
        assert!(cut);
        assert!(text.len() <= MAX_OUTPUT);
        assert!(text.chars().all(|c| c == 'é'));
        assert_eq!(cap_output(b"short"), ("short".to_owned(), false));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in ".{0,300}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_output(&text);
            let _ = parse_output(&String::from_utf8_lossy(&bytes));
            let _ = substitute(&text, &json!({"a": 1}), "/p");
            let _ = cap_output(&bytes);
        }

        #[test]
        fn valid_perfdata_round_trips(label in "[a-z_/][a-z0-9_/ ]{0,12}", value in -1.0e6f64..1.0e6, unit in "(|s|ms|%|B|KB|c)") {
            let item = format!("'{label}'={value}{unit};1;2;0;100");
            let (items, bad) = parse_perfdata(&item);
            prop_assert_eq!(bad, 0);
            prop_assert_eq!(items.len(), 1);
            prop_assert_eq!(&items[0].label, &label);
            prop_assert_eq!(items[0].value, value);
            prop_assert_eq!(&items[0].unit, &unit);
            prop_assert_eq!(items[0].max, Some(100.0));
        }
    }
}
