//! `opsbro agent parameters`: read and edit `agent.yml` as text, so its comments and layout stay
//! as the operator wrote them. Each edit appends a comment saying what changed and when, as the
//! original did (`# CHANGE: (2026-12-03 07:40) SET zone -> eu-west`). Keys are dotted paths of at
//! most two levels (`zone`, `dns.port`). The caller validates the new text with
//! [`crate::Config::from_yaml`] before it writes it.

use serde_yaml::Value;

/// Keys whose value is a list: `set` refuses them, `add`/`remove` take only them.
pub const LIST_KEYS: &[&str] = &[
    "groups",
    "seeds",
    "packs_dirs",
    "disabled_packs",
    "objects_dirs",
    "api.allowed_hosts",
];

/// One change to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Replace a scalar value.
    Set(String),
    /// Append to a list.
    Add(String),
    /// Remove from a list.
    Remove(String),
}

/// Why an edit cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EditError(pub String);

fn err(message: impl Into<String>) -> EditError {
    EditError(message.into())
}

/// Every key the file sets, flattened (`dns.port`), with its value as one line of YAML.
pub fn flatten(text: &str) -> Result<Vec<(String, String)>, EditError> {
    let doc = parse(text)?;
    let mut out = Vec::new();
    if let Value::Mapping(m) = doc {
        for (k, v) in m {
            let k = key_text(&k);
            match v {
                Value::Mapping(inner) => {
                    for (k2, v2) in inner {
                        out.push((format!("{k}.{}", key_text(&k2)), one_line(&v2)));
                    }
                }
                v => out.push((k, one_line(&v))),
            }
        }
    }
    Ok(out)
}

/// The value of `name` in the file, as one line of YAML; None when the file does not set it.
pub fn get(text: &str, name: &str) -> Result<Option<String>, EditError> {
    Ok(flatten(text)?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v))
}

fn parse(text: &str) -> Result<Value, EditError> {
    if text.trim().is_empty() {
        return Ok(Value::Mapping(serde_yaml::Mapping::new()));
    }
    serde_yaml::from_str(text).map_err(|e| err(format!("the file is not valid YAML: {e}")))
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => one_line(other),
    }
}

fn one_line(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar(s),
        Value::Sequence(items) => format!(
            "[{}]",
            items.iter().map(one_line).collect::<Vec<_>>().join(", ")
        ),
        Value::Mapping(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", key_text(k), one_line(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Tagged(t) => one_line(&t.value),
    }
}

/// `s` as a YAML scalar: plain when that reads back as the same string, else double-quoted.
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./@:".contains(c))
        && serde_yaml::from_str::<Value>(s).ok() == Some(Value::String(s.to_owned()));
    if plain {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// The indentation of a line (spaces).
fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// A line that holds YAML (not blank, not only a comment).
fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// The key a content line defines at its indentation (`port: 1` → `port`).
fn line_key(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('-') || t.starts_with('#') {
        return None;
    }
    let (k, _) = t.split_once(':')?;
    Some(k.trim().trim_matches(['"', '\'']))
}

/// Where a key is: its line, and the lines of its block (children), end exclusive.
struct Found {
    line: usize,
    block_end: usize,
}

/// Find `key` among the lines `from..to` at indentation `at`.
fn find_key(lines: &[String], from: usize, to: usize, at: usize, key: &str) -> Option<Found> {
    let mut i = from;
    while i < to {
        let l = &lines[i];
        if is_content(l) && indent(l) == at && line_key(l) == Some(key) {
            let mut end = i + 1;
            while end < to && (!is_content(&lines[end]) || indent(&lines[end]) > at) {
                end += 1;
            }
            // Trailing comments and blanks belong to what follows.
            while end > i + 1 && !is_content(&lines[end - 1]) {
                end -= 1;
            }
            return Some(Found {
                line: i,
                block_end: end,
            });
        }
        i += 1;
    }
    None
}

/// The value text after `key:` on a line, without its comment.
fn inline_value(line: &str) -> &str {
    let after = line.split_once(':').map_or("", |(_, v)| v);
    strip_comment(after).trim()
}

/// `text` without a trailing ` # comment` (outside quotes).
fn strip_comment(text: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || bytes[i - 1] == b' ') => return &text[..i],
            _ => {}
        }
    }
    text
}

/// Apply `edit` to key `name` in `text`; `when` goes in the change comment.
pub fn edit(text: &str, name: &str, edit: &Edit, when: &str) -> Result<String, EditError> {
    let path: Vec<&str> = name.split('.').collect();
    if path.len() > 2 || path.iter().any(|p| p.is_empty()) {
        return Err(err(format!(
            "`{name}`: a key is a name or section.name (`zone`, `dns.port`)"
        )));
    }
    let is_list = LIST_KEYS.contains(&name);
    match (edit, is_list) {
        (Edit::Set(_), true) => {
            return Err(err(format!(
                "`{name}` is a list: use `opsbro agent parameters add|remove {name} VALUE`"
            )));
        }
        (Edit::Add(_) | Edit::Remove(_), false) => {
            return Err(err(format!(
                "`{name}` is not a list: use `opsbro agent parameters set {name} VALUE`"
            )));
        }
        _ => {}
    }
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let note = |what: &str, value: &str| format!("# CHANGE: ({when}) {what} {name} -> {value}");
    // The section (for `a.b`), then the key inside it.
    let (from, to, at) = if path.len() == 2 {
        match find_key(&lines, 0, lines.len(), 0, path[0]) {
            Some(section) => {
                if !inline_value(&lines[section.line]).is_empty() {
                    return Err(err(format!("`{}` is not a section", path[0])));
                }
                let child_indent = lines[section.line + 1..section.block_end]
                    .iter()
                    .find(|l| is_content(l))
                    .map_or(2, |l| indent(l));
                (section.line + 1, section.block_end, child_indent)
            }
            None => {
                // No section yet: add it at the end.
                let value = match edit {
                    Edit::Set(v) => yaml_value(v)?,
                    Edit::Add(v) => format!("[{}]", scalar(v)),
                    Edit::Remove(v) => return Err(err(format!("`{v}` is not in {name}"))),
                };
                let what = edit_word(edit);
                lines.push(format!("{}:", path[0]));
                lines.push(format!("  {}: {value}  {}", path[1], note(what, &value)));
                return Ok(join(lines));
            }
        }
    } else {
        (0, lines.len(), 0)
    };
    let key = path[path.len() - 1];
    let found = find_key(&lines, from, to, at, key);
    let pad = " ".repeat(at);
    match (edit, found) {
        (Edit::Set(v), Some(f)) => {
            if f.block_end > f.line + 1 {
                return Err(err(format!(
                    "`{name}` is a section: set its keys (`{name}.KEY`)"
                )));
            }
            let value = yaml_value(v)?;
            lines[f.line] = format!("{pad}{key}: {value}  {}", note("SET", &value));
        }
        (Edit::Set(v), None) => {
            let value = yaml_value(v)?;
            lines.insert(to, format!("{pad}{key}: {value}  {}", note("SET", &value)));
        }
        (Edit::Add(v), None) => {
            let value = format!("[{}]", scalar(v));
            lines.insert(to, format!("{pad}{key}: {value}  {}", note("ADD", v)));
        }
        (Edit::Remove(v), None) => return Err(err(format!("`{v}` is not in {name}"))),
        (Edit::Add(v) | Edit::Remove(v), Some(f)) => {
            let adding = matches!(edit, Edit::Add(_));
            let inline = inline_value(&lines[f.line]).to_owned();
            if f.block_end > f.line + 1 {
                // A block list: one `- item` line per value.
                let items: Vec<usize> = (f.line + 1..f.block_end)
                    .filter(|i| lines[*i].trim_start().starts_with("- "))
                    .collect();
                let value_of = |l: &str| {
                    let item = strip_comment(l.trim_start().trim_start_matches("- ")).trim();
                    serde_yaml::from_str::<Value>(item)
                        .map(|v| match v {
                            Value::String(s) => s,
                            other => one_line(&other),
                        })
                        .unwrap_or_else(|_| item.to_owned())
                };
                let existing = items.iter().find(|i| value_of(&lines[**i]) == *v).copied();
                match (adding, existing) {
                    (true, Some(_)) => return Err(err(format!("`{v}` is already in {name}"))),
                    (false, None) => return Err(err(format!("`{v}` is not in {name}"))),
                    (true, None) => {
                        let item_pad = items.first().map_or(at + 2, |i| indent(&lines[*i]));
                        let at_line = items.last().map_or(f.line + 1, |i| i + 1);
                        lines.insert(
                            at_line,
                            format!(
                                "{}- {}  {}",
                                " ".repeat(item_pad),
                                scalar(v),
                                note("ADD", v)
                            ),
                        );
                    }
                    (false, Some(i)) => {
                        let item_pad = indent(&lines[i]);
                        lines[i] = format!("{}{}", " ".repeat(item_pad), note("REMOVE", v));
                    }
                }
            } else {
                // A flow list (`[a, b]`), or nothing yet.
                let mut items: Vec<String> = if inline.is_empty() {
                    Vec::new()
                } else {
                    match serde_yaml::from_str::<Value>(&inline) {
                        Ok(Value::Sequence(s)) => s
                            .iter()
                            .map(|v| match v {
                                Value::String(s) => s.clone(),
                                other => one_line(other),
                            })
                            .collect(),
                        Ok(Value::Null) => Vec::new(),
                        _ => return Err(err(format!("`{name}` is not a list in the file"))),
                    }
                };
                let there = items.iter().position(|i| i == v);
                match (adding, there) {
                    (true, Some(_)) => return Err(err(format!("`{v}` is already in {name}"))),
                    (false, None) => return Err(err(format!("`{v}` is not in {name}"))),
                    (true, None) => items.push(v.clone()),
                    (false, Some(i)) => {
                        items.remove(i);
                    }
                }
                let list = items
                    .iter()
                    .map(|i| scalar(i))
                    .collect::<Vec<_>>()
                    .join(", ");
                lines[f.line] = format!(
                    "{pad}{key}: [{list}]  {}",
                    note(if adding { "ADD" } else { "REMOVE" }, v)
                );
            }
        }
    }
    Ok(join(lines))
}

fn edit_word(edit: &Edit) -> &'static str {
    match edit {
        Edit::Set(_) => "SET",
        Edit::Add(_) => "ADD",
        Edit::Remove(_) => "REMOVE",
    }
}

/// A value given on the command line, as the YAML scalar to write: numbers, booleans and
/// words as they are, anything else quoted. Lists and mappings are refused.
fn yaml_value(v: &str) -> Result<String, EditError> {
    match serde_yaml::from_str::<Value>(v) {
        Ok(Value::Sequence(_)) => Err(err(format!(
            "`{v}`: give one value (lists are edited with add/remove)"
        ))),
        Ok(Value::Number(_) | Value::Bool(_)) => Ok(v.trim().to_owned()),
        _ => Ok(scalar(v)),
    }
}

fn join(lines: Vec<String>) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHEN: &str = "2026-12-03 07:40";
    const FILE: &str = "# my agent\nnode_name: web-1   # the name\ngroups:\n  - web\n  - eu\nseeds: [10.0.0.1, 10.0.0.2]\n\ndns:\n  # DNS on a high port\n  port: 6766\n\nzone: lan\n";

    #[test]
    fn set_replaces_a_value_and_keeps_every_comment() {
        let out = edit(FILE, "zone", &Edit::Set("eu-west".into()), WHEN).expect("edit");
        assert!(out.contains("zone: eu-west  # CHANGE: (2026-12-03 07:40) SET zone -> eu-west"));
        assert!(out.starts_with("# my agent\nnode_name: web-1   # the name\n"));
        let out = edit(FILE, "dns.port", &Edit::Set("8600".into()), WHEN).expect("edit");
        assert!(
            out.contains("  # DNS on a high port\n  port: 8600  # CHANGE"),
            "{out}"
        );
        assert_eq!(get(&out, "dns.port").expect("get").as_deref(), Some("8600"));
        // A key the file does not have yet, in a section it does not have yet.
        let out = edit(FILE, "kv.replication_factor", &Edit::Set("3".into()), WHEN).expect("edit");
        assert!(out.ends_with("kv:\n  replication_factor: 3  # CHANGE: (2026-12-03 07:40) SET kv.replication_factor -> 3\n"), "{out}");
        let out = edit(FILE, "log_level", &Edit::Set("debug".into()), WHEN).expect("edit");
        assert_eq!(
            get(&out, "log_level").expect("get").as_deref(),
            Some("debug")
        );
        // Text that YAML would read as something else is quoted.
        let out = edit(
            FILE,
            "display_name",
            &Edit::Set("web: one # x".into()),
            WHEN,
        )
        .expect("edit");
        assert_eq!(
            get(&out, "display_name").expect("get").as_deref(),
            Some("\"web: one # x\"")
        );
    }

    #[test]
    fn lists_are_added_to_and_removed_from_block_or_flow() {
        let out = edit(FILE, "groups", &Edit::Add("db".into()), WHEN).expect("add");
        assert!(out.contains("  - eu\n  - db  # CHANGE"), "{out}");
        assert_eq!(
            get(&out, "groups").expect("get").as_deref(),
            Some("[web, eu, db]")
        );
        let out = edit(&out, "groups", &Edit::Remove("web".into()), WHEN).expect("remove");
        assert_eq!(
            get(&out, "groups").expect("get").as_deref(),
            Some("[eu, db]")
        );
        let out = edit(FILE, "seeds", &Edit::Add("10.0.0.3:6768".into()), WHEN).expect("add");
        assert_eq!(
            get(&out, "seeds").expect("get").as_deref(),
            Some("[10.0.0.1, 10.0.0.2, 10.0.0.3:6768]")
        );
        let out = edit(FILE, "packs_dirs", &Edit::Add("/srv/packs".into()), WHEN).expect("add");
        assert_eq!(
            get(&out, "packs_dirs").expect("get").as_deref(),
            Some("[/srv/packs]")
        );
    }

    #[test]
    fn wrong_kinds_and_missing_values_are_refused_with_what_to_do() {
        let e = edit(FILE, "groups", &Edit::Set("x".into()), WHEN).expect_err("list");
        assert!(e.0.contains("add|remove"), "{e}");
        let e = edit(FILE, "zone", &Edit::Add("x".into()), WHEN).expect_err("scalar");
        assert!(e.0.contains("set zone"), "{e}");
        let e = edit(FILE, "groups", &Edit::Remove("nope".into()), WHEN).expect_err("absent");
        assert_eq!(e.0, "`nope` is not in groups");
        let e = edit(FILE, "groups", &Edit::Add("web".into()), WHEN).expect_err("twice");
        assert_eq!(e.0, "`web` is already in groups");
        let e = edit(FILE, "dns", &Edit::Set("1".into()), WHEN).expect_err("section");
        assert!(e.0.contains("section"), "{e}");
        assert!(edit(FILE, "a.b.c", &Edit::Set("1".into()), WHEN).is_err());
        assert!(edit(FILE, "zone", &Edit::Set("[a, b]".into()), WHEN).is_err());
        assert!(edit(FILE, "zone", &Edit::Set("- a".into()), WHEN).is_err());
    }

    #[test]
    fn show_flattens_sections() {
        let all = flatten(FILE).expect("flatten");
        assert!(all.contains(&("dns.port".into(), "6766".into())));
        assert!(all.contains(&("groups".into(), "[web, eu]".into())));
        assert_eq!(get(FILE, "nope").expect("get"), None);
    }
}
