//! `compliance:` objects, in the original's format:
//!
//! ```yaml
//! compliance:
//!    name: passwd is root/644
//!    verify_if: "is_in_group('linux')"     # default False, as the original: nothing runs
//!    mode: audit                           # or enforcing (default audit)
//!    interval: 60s
//!    rule:                                 # or `rules: [...]`
//!       type: file-rights
//!       variables: {is_debian: "{{collector.system.os.linux.distribution}} == 'debian'"}
//!       environments:                      # the first whose `if` is true wins
//!         - name: linux
//!           if: "{{variables.is_debian}}"  # default True
//!           parameters: {file: /etc/passwd, owner: root, group: root, permissions: 644}
//!           post_commands: ["echo done"]
//!       # or plain `parameters:` and `post_commands:`
//! ```

use std::time::Duration;

use serde_yaml::Value as Yaml;

use crate::ExprCheck;
use crate::monitoring::{Problem, positive, text, yaml_to_json};

/// Rule types the agent has a backend for.
pub const RULE_TYPES: &[&str] = &[
    "file-rights",
    "package-install",
    "repository",
    "system-user",
    "get-url",
];

/// `audit` or `enforcing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComplianceMode {
    /// Report only.
    #[default]
    Audit,
    /// Fix what differs.
    Enforcing,
}

/// One environment of a rule: the first whose `if` is true gives the parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentSpec {
    /// For display.
    pub name: String,
    /// Expression (default `True`).
    pub if_expr: String,
    /// The backend's parameters (a JSON object).
    pub parameters: serde_json::Value,
    /// Shell lines run after a fix (a failure makes the rule ERROR).
    pub post_commands: Vec<String>,
}

/// One rule of a compliance object.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    /// Name (default `<type>` and its position).
    pub name: String,
    /// One of [`RULE_TYPES`].
    pub kind: String,
    /// `variables`: name → expression, evaluated before the environments' `if`s, read as
    /// `{{variables.name}}`.
    pub variables: Vec<(String, String)>,
    /// Environments, in order.
    pub environments: Vec<EnvironmentSpec>,
}

/// A `compliance:` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ComplianceSpec {
    /// `<pack>/<file stem>`.
    pub name: String,
    /// Its `name` key (default the file stem).
    pub display_name: String,
    /// Pack name.
    pub pack: String,
    /// File it was read from.
    pub file: String,
    /// Audit or enforce.
    pub mode: ComplianceMode,
    /// Expression: false → every rule NOT-ELIGIBLE. Default `False`, as the original.
    pub verify_if: String,
    /// Time between runs (default 60 s).
    pub interval: Duration,
    /// Rules, in order.
    pub rules: Vec<RuleSpec>,
}

fn names(v: &Yaml, path: &str) -> Result<Vec<String>, Problem> {
    match v {
        Yaml::Null => Ok(Vec::new()),
        Yaml::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| text(item, &format!("{path}[{i}]")))
            .collect(),
        other => Ok(vec![text(other, path)?]),
    }
}

fn expression(expr: String, path: &str, check: ExprCheck<'_>) -> Result<String, Problem> {
    check(&expr).map_err(|e| (path.to_owned(), format!("{path}: {e}")))?;
    Ok(expr)
}

fn parameters(v: Option<&Yaml>, path: &str) -> Result<serde_json::Value, Problem> {
    match v {
        None | Some(Yaml::Null) => Ok(serde_json::json!({})),
        Some(m @ Yaml::Mapping(_)) => yaml_to_json(m).map_err(|e| (path.to_owned(), e)),
        Some(_) => Err((path.to_owned(), format!("{path} must be a mapping"))),
    }
}

fn parse_rule(
    v: &Yaml,
    index: usize,
    path: &str,
    check: ExprCheck<'_>,
) -> Result<RuleSpec, Problem> {
    if !v.is_mapping() {
        return Err((path.to_owned(), format!("{path} must be a mapping")));
    }
    let kind = match v.get("type") {
        Some(t) => text(t, &format!("{path}.type"))?,
        None => return Err((path.to_owned(), format!("{path} needs a `type`"))),
    };
    if !RULE_TYPES.contains(&kind.as_str()) {
        return Err((
            format!("{path}.type"),
            format!(
                "unknown rule type `{kind}` (known: {})",
                RULE_TYPES.join(", ")
            ),
        ));
    }
    let name = match v.get("name") {
        Some(n) => text(n, &format!("{path}.name"))?,
        None => format!("{kind}-{}", index + 1),
    };
    let mut variables = Vec::new();
    if let Some(vars) = v.get("variables") {
        let map = vars.as_mapping().ok_or_else(|| {
            (
                format!("{path}.variables"),
                "variables must map names to expressions".to_owned(),
            )
        })?;
        for (k, e) in map {
            let k = text(k, &format!("{path}.variables"))?;
            let p = format!("{path}.variables.{k}");
            variables.push((k, expression(text(e, &p)?, &p, check)?));
        }
    }
    let mut environments = Vec::new();
    match v.get("environments") {
        Some(Yaml::Sequence(envs)) => {
            for (i, env) in envs.iter().enumerate() {
                let p = format!("{path}.environments[{i}]");
                if !env.is_mapping() {
                    return Err((p.clone(), format!("{p} must be a mapping")));
                }
                let if_expr = match env.get("if") {
                    Some(e) => expression(text(e, &format!("{p}.if"))?, &format!("{p}.if"), check)?,
                    None => "True".to_owned(),
                };
                environments.push(EnvironmentSpec {
                    name: match env.get("name") {
                        Some(n) => text(n, &format!("{p}.name"))?,
                        None => format!("environment-{}", i + 1),
                    },
                    if_expr,
                    parameters: parameters(env.get("parameters"), &format!("{p}.parameters"))?,
                    post_commands: names(
                        env.get("post_commands").unwrap_or(&Yaml::Null),
                        &format!("{p}.post_commands"),
                    )?,
                });
            }
        }
        Some(_) => {
            return Err((
                format!("{path}.environments"),
                "environments must be a list of {name, if, parameters, post_commands}".into(),
            ));
        }
        None => environments.push(EnvironmentSpec {
            name: "default".into(),
            if_expr: "True".into(),
            parameters: parameters(v.get("parameters"), &format!("{path}.parameters"))?,
            post_commands: names(
                v.get("post_commands").unwrap_or(&Yaml::Null),
                &format!("{path}.post_commands"),
            )?,
        }),
    }
    if environments.is_empty() {
        return Err((
            format!("{path}.environments"),
            "a rule needs at least one environment".into(),
        ));
    }
    Ok(RuleSpec {
        name,
        kind,
        variables,
        environments,
    })
}

/// Parse a `compliance:` object.
pub(crate) fn parse_compliance(
    body: &Yaml,
    pack: &str,
    stem: &str,
    file: &str,
    check: ExprCheck<'_>,
) -> Result<ComplianceSpec, Problem> {
    let map = body.as_mapping().ok_or_else(|| {
        (
            "compliance".to_owned(),
            "`compliance` must be a mapping (name, mode, verify_if, rule or rules)".to_owned(),
        )
    })?;
    let mut spec = ComplianceSpec {
        name: format!("{pack}/{stem}"),
        display_name: stem.to_owned(),
        pack: pack.to_owned(),
        file: file.to_owned(),
        mode: ComplianceMode::Audit,
        verify_if: "False".into(),
        interval: Duration::from_secs(60),
        rules: Vec::new(),
    };
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default();
        let path = format!("compliance.{key}");
        match key {
            "name" => spec.display_name = text(v, &path)?,
            "mode" => {
                spec.mode = match text(v, &path)?.as_str() {
                    "audit" => ComplianceMode::Audit,
                    "enforcing" => ComplianceMode::Enforcing,
                    other => {
                        return Err((
                            path,
                            format!("mode `{other}` is not `audit` or `enforcing`"),
                        ));
                    }
                }
            }
            "verify_if" => spec.verify_if = expression(text(v, &path)?, &path, check)?,
            "interval" => spec.interval = positive(v, &path)?,
            "rule" => spec.rules.push(parse_rule(v, 0, "compliance.rule", check)?),
            "rules" => {
                let list = v
                    .as_sequence()
                    .ok_or_else(|| (path.clone(), "rules must be a list of rules".to_owned()))?;
                for (i, r) in list.iter().enumerate() {
                    spec.rules
                        .push(parse_rule(r, i, &format!("compliance.rules[{i}]"), check)?);
                }
            }
            "note" | "description" | "display_name" => {}
            other => {
                return Err((
                    path,
                    format!(
                        "unknown key `{other}` (known: name, mode, verify_if, interval, rule, rules, note)"
                    ),
                ));
            }
        }
    }
    if spec.rules.is_empty() {
        return Err((
            "compliance".into(),
            "a compliance object needs `rule` or `rules`".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for r in &spec.rules {
        if !seen.insert(r.name.clone()) {
            return Err((
                "compliance".into(),
                format!("two rules are named `{}`: rule names must differ", r.name),
            ));
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ComplianceSpec, Problem> {
        let body: Yaml = serde_yaml::from_str(yaml).expect("yaml");
        parse_compliance(&body, "linux", "passwd", "passwd.yml", &|_| Ok(()))
    }

    #[test]
    fn the_originals_objects_parse() {
        let c = parse(
            "name: passwd is root/644\nverify_if: \"is_in_group('linux')\"\nmode: audit\ninterval: 60s\nrule:\n  type: file-rights\n  environments:\n    - name: linux\n      parameters:\n        file: /etc/passwd\n        owner: root\n        group: root\n        permissions: 644\n",
        )
        .expect("passwd");
        assert_eq!(c.name, "linux/passwd");
        assert_eq!(c.display_name, "passwd is root/644");
        assert_eq!(c.mode, ComplianceMode::Audit);
        assert_eq!(c.rules[0].kind, "file-rights");
        assert_eq!(c.rules[0].name, "file-rights-1");
        assert_eq!(c.rules[0].environments[0].if_expr, "True");
        assert_eq!(c.rules[0].environments[0].parameters["permissions"], 644);
        let c = parse(
            "name: Install tuning libs\nmode: enforcing\ninterval: 1s\nnote: x\nrule:\n  type: package-install\n  variables:\n    is_debian: \"{{collector.system.os.linux.distribution}} == 'debian'\"\n  environments:\n    - name: debian\n      if: \"{{variables.is_debian}}\"\n      parameters:\n        packages: [python-leveldb]\n      post_commands:\n        - pip install leveldb\n",
        )
        .expect("tuning libs");
        assert_eq!(c.verify_if, "False", "the original's default");
        assert_eq!(c.mode, ComplianceMode::Enforcing);
        assert_eq!(c.rules[0].variables[0].0, "is_debian");
        assert_eq!(
            c.rules[0].environments[0].post_commands,
            ["pip install leveldb"]
        );
        let c = parse(
            "verify_if: 'True'\nrules:\n  - name: one\n    type: get-url\n    parameters: {url: 'http://x/a', dest_directory: /tmp}\n    post_commands: echo hi\n  - {name: two, type: system-user, parameters: {name: bob}}\n",
        )
        .expect("plain parameters");
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[0].environments[0].name, "default");
        assert_eq!(c.rules[0].environments[0].post_commands, ["echo hi"]);
    }

    #[test]
    fn broken_objects_say_why() {
        for (yaml, why) in [
            ("mode: audit\n", "needs `rule` or `rules`"),
            (
                "mode: fix\nrule: {type: file-rights}\n",
                "not `audit` or `enforcing`",
            ),
            ("rule: {type: file-copy}\n", "unknown rule type `file-copy`"),
            ("rule: {name: x}\n", "needs a `type`"),
            (
                "rule: {type: get-url, environments: {a: 1}}\n",
                "must be a list",
            ),
            (
                "rule: {type: get-url, environments: []}\n",
                "at least one environment",
            ),
            (
                "rules: [{name: a, type: get-url}, {name: a, type: get-url}]\n",
                "two rules are named",
            ),
            (
                "rule: {type: get-url}\nmodee: audit\n",
                "unknown key `modee`",
            ),
            (
                "rule: {type: get-url, parameters: [1]}\n",
                "must be a mapping",
            ),
        ] {
            let e = parse(yaml).expect_err(yaml);
            assert!(e.1.contains(why), "{yaml}: {e:?}");
        }
        let body: Yaml = serde_yaml::from_str("verify_if: 'is_in_group('\nrule: {type: get-url}\n")
            .expect("yaml");
        let e = parse_compliance(&body, "p", "c", "c.yml", &|_| Err("syntax error".into()))
            .expect_err("bad expression");
        assert!(e.1.contains("syntax error"), "{e:?}");
    }
}
