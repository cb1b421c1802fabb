//! `generator:` objects: a file rendered from cluster state by a template of the pack.
//!
//! ```yaml
//! generator:
//!   generate_if: "is_in_group('haproxy')"   # default: always
//!   path: /etc/haproxy/haproxy.cfg
//!   template: haproxy.cfg                   # in the pack's templates/
//!   validate_command: "haproxy -c -f {{path}}"
//!   command: "systemctl reload haproxy"
//!   partial_start: "# BEGIN opsbro"         # optional, with partial_end
//!   partial_end: "# END opsbro"
//!   mode: "0644"                            # for a new file; an existing file keeps its own
//!   interval: 10s                           # re-render at least this often
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde_yaml::Value as Yaml;

use crate::ExprCheck;
use crate::monitoring::{Problem, positive, text};

/// A generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorSpec {
    /// `<pack>/<file stem>`.
    pub name: String,
    /// Pack.
    pub pack: String,
    /// Expression: render only while true.
    pub generate_if: String,
    /// Target file (absolute).
    pub path: PathBuf,
    /// Template name in the pack's `templates/`.
    pub template: String,
    /// Run after the file changed (reload).
    pub command: Option<String>,
    /// Run on the candidate file first (`{{path}}` is the candidate); non-zero refuses it.
    pub validate_command: Option<String>,
    /// Markers of the managed block (partial mode), both or neither.
    pub partial: Option<(String, String)>,
    /// Permissions of a new file.
    pub mode: u32,
    /// Longest time between two renders.
    pub interval: Duration,
}

const KEYS: &[&str] = &[
    "generate_if",
    "path",
    "template",
    "command",
    "validate_command",
    "partial_start",
    "partial_end",
    "if_partial_missing",
    "mode",
    "interval",
];

/// Parse the body of a `generator:` object.
pub(crate) fn parse_generator(
    body: &Yaml,
    pack: &str,
    stem: &str,
    check: ExprCheck<'_>,
) -> Result<GeneratorSpec, Problem> {
    let map = body.as_mapping().ok_or_else(|| {
        (
            "generator".to_owned(),
            "`generator` must be a mapping".to_owned(),
        )
    })?;
    for (k, _) in map {
        let key = k.as_str().unwrap_or_default();
        if !KEYS.contains(&key) {
            let hint = match opsbro_config::closest(key, KEYS) {
                Some(k) => format!("unknown key `{key}` (did you mean `{k}`?)"),
                None => format!("unknown key `{key}`"),
            };
            return Err((format!("generator.{key}"), hint));
        }
    }
    let get = |key: &str| map.get(Yaml::String(key.to_owned()));
    let opt = |key: &str| -> Result<Option<String>, Problem> {
        get(key)
            .map(|v| text(v, &format!("generator.{key}")))
            .transpose()
    };
    let generate_if = opt("generate_if")?.unwrap_or_else(|| "True".into());
    check(&generate_if).map_err(|e| ("generator.generate_if".to_owned(), e))?;
    let path = opt("path")?
        .map(PathBuf::from)
        .ok_or_else(|| ("generator".to_owned(), "generator needs `path`".to_owned()))?;
    if !path.is_absolute() {
        return Err((
            "generator.path".into(),
            format!("`{}` must be an absolute path", path.display()),
        ));
    }
    let template = opt("template")?.ok_or_else(|| {
        (
            "generator".to_owned(),
            "generator needs `template` (a file of the pack's templates/)".to_owned(),
        )
    })?;
    let partial = match (opt("partial_start")?, opt("partial_end")?) {
        (Some(s), Some(e)) if !s.trim().is_empty() && !e.trim().is_empty() && s != e => {
            Some((s, e))
        }
        (None, None) => None,
        _ => {
            return Err((
                "generator.partial_start".into(),
                "partial_start and partial_end go together, are different and not empty".into(),
            ));
        }
    };
    if let Some(m) = opt("if_partial_missing")?
        && m != "append"
    {
        return Err((
            "generator.if_partial_missing".into(),
            format!("`{m}`: the only choice is `append`"),
        ));
    }
    let mode = match opt("mode")? {
        None => 0o644,
        Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                (
                    "generator.mode".to_owned(),
                    format!("`{m}` is not an octal mode such as 0644"),
                )
            })?,
    };
    let interval = match get("interval") {
        None => Duration::from_secs(10),
        Some(v) => positive(v, "generator.interval")?,
    };
    Ok(GeneratorSpec {
        name: format!("{pack}/{stem}"),
        pack: pack.to_owned(),
        generate_if,
        path,
        template,
        command: opt("command")?,
        validate_command: opt("validate_command")?,
        partial,
        mode,
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GeneratorSpec, Problem> {
        let v: Yaml = serde_yaml::from_str(text).expect("yaml");
        parse_generator(&v["generator"], "web", "haproxy", &|e: &str| {
            if e.contains("((") {
                Err("syntax error".into())
            } else {
                Ok(())
            }
        })
    }

    #[test]
    fn generators_parse_and_refuse_mistakes() {
        let g = parse(
            "generator:\n  path: /etc/x.cfg\n  template: x.cfg\n  command: reload\n  \
             partial_start: '# B'\n  partial_end: '# E'\n  mode: '0600'\n",
        )
        .expect("valid");
        assert_eq!(g.name, "web/haproxy");
        assert_eq!(g.generate_if, "True");
        assert_eq!(g.partial, Some(("# B".into(), "# E".into())));
        assert_eq!(g.mode, 0o600);
        assert_eq!(g.interval, Duration::from_secs(10));
        for (bad, key) in [
            ("generator:\n  template: x\n", "generator"),
            (
                "generator:\n  path: rel/x\n  template: x\n",
                "generator.path",
            ),
            ("generator:\n  path: /x\n", "generator"),
            (
                "generator:\n  path: /x\n  template: x\n  partial_start: a\n",
                "generator.partial_start",
            ),
            (
                "generator:\n  path: /x\n  template: x\n  mode: rw\n",
                "generator.mode",
            ),
            (
                "generator:\n  path: /x\n  template: x\n  comand: y\n",
                "generator.comand",
            ),
            (
                "generator:\n  path: /x\n  template: x\n  generate_if: '(('\n",
                "generator.generate_if",
            ),
        ] {
            assert_eq!(parse(bad).expect_err(bad).0, key, "{bad}");
        }
        assert!(
            parse("generator:\n  path: /x\n  template: x\n  comand: y\n")
                .expect_err("typo")
                .1
                .contains("did you mean `command`")
        );
    }
}
