//! Packs: the YAML objects that tell an agent what to detect, check and notify (and, later,
//! generate), grouped by pack: `packs/<pack>/package.yml` plus `detectors/*.yml`,
//! `monitoring/*.yml` (checks), handler files, `parameters/*.yml` (values checks read as
//! `{{parameters.x}}`) and `templates/` (notification templates).
//!
//! The repository's `packs/` folder is embedded in the binary ([`EMBEDDED`]); directories named
//! in `packs_dirs` add packs or replace an embedded pack of the same name. Loading never stops at
//! the first problem: every broken file becomes a [`Diagnostic`] with its file and line, and the
//! other objects still load. Expressions are checked by a callback (the evaluator) so that a
//! syntax error is reported at load time, not at the first run.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opsbro_config::LineIndex;

mod generators;
mod monitoring;

pub use generators::GeneratorSpec;
pub use monitoring::{CheckKind, CheckSpec, HandlerKind, HandlerSpec, MailSpec, SlackSpec};

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// Where a pack comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built into the binary.
    Embedded,
    /// A pack directory on disk.
    Dir(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Embedded => f.write_str("embedded"),
            Source::Dir(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A `detector:` object.
#[derive(Debug, Clone, PartialEq)]
pub struct Detector {
    /// `<pack>/<file stem>`.
    pub name: String,
    /// Pack name.
    pub pack: String,
    /// File it was read from (for messages).
    pub file: String,
    /// How often it runs.
    pub interval: Duration,
    /// Expression: true adds the groups.
    pub apply_if: String,
    /// Groups added while the expression is true.
    pub add_groups: Vec<String>,
}

/// A pack.
#[derive(Debug, Clone, PartialEq)]
pub struct Pack {
    /// Name (folder name).
    pub name: String,
    /// `description` from package.yml.
    pub description: String,
    /// Where it comes from.
    pub source: Source,
    /// Its detectors.
    pub detectors: Vec<Detector>,
    /// Its checks.
    pub checks: Vec<CheckSpec>,
    /// Its handlers.
    pub handlers: Vec<HandlerSpec>,
    /// Its generators.
    pub generators: Vec<GeneratorSpec>,
    /// `parameters/*.yml`, merged (a JSON object).
    pub parameters: serde_json::Value,
    /// `templates/<name>` → contents.
    pub templates: BTreeMap<String, String>,
}

/// A problem in a pack file; the object is skipped, the rest loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// File (path or `embedded:<pack>/<file>`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every pack, and every problem met while loading them.
#[derive(Debug, Clone, Default)]
pub struct PackSet {
    /// Packs by name.
    pub packs: BTreeMap<String, Pack>,
    /// Problems.
    pub diagnostics: Vec<Diagnostic>,
}

impl PackSet {
    /// Every detector of every pack.
    pub fn detectors(&self) -> impl Iterator<Item = &Detector> {
        self.packs.values().flat_map(|p| p.detectors.iter())
    }

    /// Every check of every pack.
    pub fn checks(&self) -> impl Iterator<Item = &CheckSpec> {
        self.packs.values().flat_map(|p| p.checks.iter())
    }

    /// Every handler of every pack.
    pub fn handlers(&self) -> impl Iterator<Item = &HandlerSpec> {
        self.packs.values().flat_map(|p| p.handlers.iter())
    }

    /// Every generator of every pack.
    pub fn generators(&self) -> impl Iterator<Item = &GeneratorSpec> {
        self.packs.values().flat_map(|p| p.generators.iter())
    }
}

/// Checks an expression (syntax), returning a message on error.
pub type ExprCheck<'a> = &'a dyn Fn(&str) -> Result<(), String>;

/// Load the embedded packs, then the packs in `dirs` (later ones override earlier ones by name).
pub fn load(dirs: &[PathBuf], check: ExprCheck<'_>) -> PackSet {
    let mut set = PackSet::default();
    let mut embedded: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (rel, text) in EMBEDDED {
        let pack = rel.split('/').next().unwrap_or_default().to_owned();
        embedded
            .entry(pack)
            .or_default()
            .push(((*rel).to_owned(), (*text).to_owned()));
    }
    for (name, files) in embedded {
        let files = files
            .into_iter()
            .map(|(rel, text)| (format!("embedded:{rel}"), rel, text))
            .collect();
        load_pack(&mut set, &name, Source::Embedded, files, check);
    }
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                set.diagnostics.push(Diagnostic {
                    file: dir.display().to_string(),
                    line: None,
                    message: format!("cannot read pack directory: {e}"),
                });
                continue;
            }
        };
        let mut packs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        packs.sort();
        for pack_dir in packs {
            let name = pack_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut files = Vec::new();
            collect_files(
                &pack_dir,
                &pack_dir,
                &name,
                &mut files,
                &mut set.diagnostics,
            );
            load_pack(&mut set, &name, Source::Dir(pack_dir.clone()), files, check);
        }
    }
    set
}

fn collect_files(
    root: &Path,
    dir: &Path,
    pack: &str,
    out: &mut Vec<(String, String, String)>,
    diags: &mut Vec<Diagnostic>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            collect_files(root, &p, pack, out, diags);
        } else if p.extension().is_some_and(|e| e == "yml" || e == "yaml")
            || p.strip_prefix(root)
                .is_ok_and(|r| r.starts_with("templates"))
        {
            let rel = format!(
                "{pack}/{}",
                p.strip_prefix(root).unwrap_or(&p).to_string_lossy()
            );
            match std::fs::read_to_string(&p) {
                Ok(text) => out.push((p.display().to_string(), rel, text)),
                Err(e) => diags.push(Diagnostic {
                    file: p.display().to_string(),
                    line: None,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
    }
}

/// (display name, path relative to packs/, text) of each file of one pack.
fn load_pack(
    set: &mut PackSet,
    name: &str,
    source: Source,
    files: Vec<(String, String, String)>,
    check: ExprCheck<'_>,
) {
    let mut pack = Pack {
        name: name.to_owned(),
        description: String::new(),
        source,
        detectors: Vec::new(),
        checks: Vec::new(),
        handlers: Vec::new(),
        generators: Vec::new(),
        parameters: serde_json::Value::Object(serde_json::Map::new()),
        templates: BTreeMap::new(),
    };
    for (display, rel, text) in files {
        if let Some(template) = rel.split_once("/templates/").map(|(_, t)| t) {
            pack.templates.insert(template.to_owned(), text);
            continue;
        }
        let file_name = rel.rsplit('/').next().unwrap_or_default();
        if file_name == "package.yml" {
            match serde_yaml::from_str::<serde_yaml::Value>(&text) {
                Ok(v) => {
                    pack.description = v
                        .get("description")
                        .and_then(|d| d.as_str())
                        .unwrap_or_default()
                        .to_owned();
                }
                Err(e) => set.diagnostics.push(yaml_error(&display, &e)),
            }
            continue;
        }
        // `parameters/*.yml` hold the pack's parameters (read by checks), not objects.
        if rel.contains("/parameters/") {
            match serde_yaml::from_str::<serde_yaml::Value>(&text) {
                Ok(v) => match monitoring::yaml_to_json(&v) {
                    Ok(serde_json::Value::Object(map)) => {
                        if let serde_json::Value::Object(all) = &mut pack.parameters {
                            all.extend(map);
                        }
                    }
                    Ok(serde_json::Value::Null) => {}
                    Ok(_) => set.diagnostics.push(Diagnostic {
                        file: display.clone(),
                        line: Some(1),
                        message: "parameters must be a mapping of names to values".into(),
                    }),
                    Err(message) => set.diagnostics.push(Diagnostic {
                        file: display.clone(),
                        line: None,
                        message,
                    }),
                },
                Err(e) => set.diagnostics.push(yaml_error(&display, &e)),
            }
            continue;
        }
        parse_object(
            &mut pack,
            &display,
            &rel,
            &text,
            check,
            &mut set.diagnostics,
        );
    }
    // A generator's template must be in the pack (templates load with the other files).
    let templates = &pack.templates;
    let (ok, missing): (Vec<GeneratorSpec>, Vec<GeneratorSpec>) =
        std::mem::take(&mut pack.generators)
            .into_iter()
            .partition(|g| templates.contains_key(&g.template));
    for g in missing {
        set.diagnostics.push(Diagnostic {
            file: format!("{name}/generators"),
            line: None,
            message: format!(
                "generator {}: template `{}` is not in the pack's templates/ (have: {})",
                g.name,
                g.template,
                templates.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    pack.generators = ok;
    // A pack from a directory replaces an embedded one of the same name, wholesale.
    set.packs.insert(name.to_owned(), pack);
}

fn yaml_error(file: &str, e: &serde_yaml::Error) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        line: e.location().map(|l| l.line()),
        message: format!(
            "not valid YAML: {}",
            e.to_string().split(" at line ").next().unwrap_or_default()
        ),
    }
}

/// Object kinds of opsbro packs; those not handled yet are accepted and reported once loaded by
/// the subsystems that own them.
const KINDS: &[&str] = &["detector", "check", "handler", "generator", "compliance"];

fn parse_object(
    pack: &mut Pack,
    display: &str,
    rel: &str,
    text: &str,
    check: ExprCheck<'_>,
    diags: &mut Vec<Diagnostic>,
) {
    let lines = LineIndex::build(text);
    let diag = |key: &str, message: String| Diagnostic {
        file: display.to_owned(),
        line: lines.line_of(key),
        message,
    };
    let value: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            diags.push(yaml_error(display, &e));
            return;
        }
    };
    let Some(map) = value.as_mapping() else {
        diags.push(diag(
            "",
            "expected one object such as `detector: {...}`".into(),
        ));
        return;
    };
    for (k, body) in map {
        let kind = k.as_str().unwrap_or_default();
        if !KINDS.contains(&kind) {
            diags.push(diag(
                kind,
                format!("unknown object kind `{kind}` (known: {})", KINDS.join(", ")),
            ));
            continue;
        }
        let stem = rel
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".yml")
            .trim_end_matches(".yaml");
        match kind {
            "detector" => match parse_detector(body, &pack.name, stem, display, check) {
                Ok(d) => pack.detectors.push(d),
                Err((key, message)) => diags.push(diag(&key, message)),
            },
            "check" => match monitoring::parse_check(body, &pack.name, stem, display, check) {
                Ok((c, problems)) => {
                    // A check whose expressions do not compile still exists (it reports
                    // UNKNOWN with the message); the problem is also a load diagnostic.
                    for (key, message) in problems {
                        diags.push(diag(&key, message));
                    }
                    if pack.checks.iter().any(|o| o.name == c.name) {
                        diags.push(diag(
                            "check",
                            format!("a check named {} already exists in this pack", c.name),
                        ));
                    } else {
                        pack.checks.push(c);
                    }
                }
                Err((key, message)) => diags.push(diag(&key, message)),
            },
            "handler" => match monitoring::parse_handler(body, &pack.name, stem, display) {
                Ok(h) => pack.handlers.push(h),
                Err((key, message)) => diags.push(diag(&key, message)),
            },
            "generator" => match generators::parse_generator(body, &pack.name, stem, check) {
                Ok(g) => pack.generators.push(g),
                Err((key, message)) => diags.push(diag(&key, message)),
            },
            // Compliance arrives with its subsystem.
            _ => {}
        }
    }
}

fn parse_detector(
    body: &serde_yaml::Value,
    pack: &str,
    stem: &str,
    file: &str,
    check: ExprCheck<'_>,
) -> Result<Detector, (String, String)> {
    let map = body.as_mapping().ok_or_else(|| {
        (
            "detector".to_owned(),
            "`detector` must be a mapping".to_owned(),
        )
    })?;
    let mut interval = Duration::from_secs(10);
    let mut apply_if = None;
    let mut groups: Option<Vec<String>> = None;
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default();
        let path = format!("detector.{key}");
        match key {
            "interval" => {
                interval = opsbro_config::parse_duration(v).map_err(|e| (path.clone(), e))?;
                if interval.is_zero() {
                    return Err((path, "interval must be more than 0".into()));
                }
            }
            "apply_if" => {
                let expr = match v {
                    serde_yaml::Value::String(s) => s.clone(),
                    serde_yaml::Value::Bool(b) => {
                        if *b {
                            "True".into()
                        } else {
                            "False".into()
                        }
                    }
                    _ => return Err((path, "apply_if must be an expression (a string)".into())),
                };
                check(&expr).map_err(|e| (path.clone(), format!("apply_if: {e}")))?;
                apply_if = Some(expr);
            }
            "add_groups" | "groups" => {
                let list: Vec<String> = serde_yaml::from_value(v.clone())
                    .map_err(|_| (path.clone(), format!("{key} must be a list of group names")))?;
                for g in &list {
                    opsbro_config::check_group(g).map_err(|e| (path.clone(), e))?;
                }
                groups = Some(list);
            }
            "notes" | "note" => {}
            other => {
                return Err((
                    path,
                    format!(
                        "unknown key `{other}` (known: interval, apply_if, add_groups, groups)"
                    ),
                ));
            }
        }
    }
    Ok(Detector {
        name: format!("{pack}/{stem}"),
        pack: pack.to_owned(),
        file: file.to_owned(),
        interval,
        apply_if: apply_if
            .ok_or_else(|| ("detector".to_owned(), "apply_if is required".to_owned()))?,
        add_groups: groups.ok_or_else(|| {
            (
                "detector".to_owned(),
                "add_groups (or groups) is required".to_owned(),
            )
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: &str) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn the_embedded_packs_load_without_diagnostics() {
        let set = load(&[], &ok);
        assert!(set.diagnostics.is_empty(), "{:?}", set.diagnostics);
        assert!(set.packs.contains_key("linux"));
        let linux = set
            .detectors()
            .find(|d| d.name == "linux/linux")
            .expect("linux detector");
        assert_eq!(linux.add_groups, vec!["linux"]);
        let centos = set
            .detectors()
            .find(|d| d.name == "linux/centos")
            .expect("centos");
        assert_eq!(
            centos.add_groups,
            vec!["centos"],
            "`groups:` is an alias of add_groups"
        );
    }

    #[test]
    fn every_file_under_packs_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs");
        let mut files = Vec::new();
        collect_files(&root, &root, "", &mut files, &mut Vec::new());
        assert_eq!(files.len(), EMBEDDED.len());
    }

    #[test]
    fn broken_files_give_diagnostics_with_lines_and_the_rest_loads() {
        let dir = tempfile::tempdir().expect("tmp");
        let pack = dir.path().join("mine/detectors");
        std::fs::create_dir_all(&pack).expect("mkdir");
        std::fs::write(
            pack.join("good.yml"),
            "detector:\n  interval: 5s\n  apply_if: \"True\"\n  add_groups: [mine]\n",
        )
        .expect("w");
        std::fs::write(
            pack.join("bad-expr.yml"),
            "detector:\n  interval: 5s\n  apply_if: \"1 + + \"\n  add_groups: [x]\n",
        )
        .expect("w");
        std::fs::write(
            pack.join("bad-key.yml"),
            "detector:\n  apply_if: \"True\"\n  add_groups: [x]\n  colour: red\n",
        )
        .expect("w");
        std::fs::write(pack.join("bad-yaml.yml"), "detector: [unclosed\n").expect("w");
        std::fs::write(pack.join("kind.yml"), "detecter:\n  apply_if: x\n").expect("w");
        let params = dir.path().join("mine/parameters");
        std::fs::create_dir_all(&params).expect("mkdir");
        std::fs::write(params.join("parameters.yml"), "cpu_critical: 90\n").expect("w");
        let check = |e: &str| {
            if e.contains("+ +") {
                Err("syntax error at column 5".to_owned())
            } else {
                Ok(())
            }
        };
        let set = load(&[dir.path().to_owned()], &check);
        let mine = &set.packs["mine"];
        assert_eq!(mine.detectors.len(), 1);
        assert_eq!(mine.detectors[0].interval, Duration::from_secs(5));
        let msgs: Vec<String> = set.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 4, "{msgs:#?}");
        assert!(
            msgs.iter()
                .any(|m| m.contains("bad-expr.yml:3: apply_if: syntax error")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("bad-key.yml:4: unknown key `colour`")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("bad-yaml.yml:") && m.contains("not valid YAML")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("kind.yml:1: unknown object kind `detecter`")),
            "{msgs:#?}"
        );
        // The embedded packs are still there.
        assert!(set.packs.contains_key("linux"));
    }

    #[test]
    fn a_directory_pack_replaces_the_embedded_one_of_the_same_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let pack = dir.path().join("linux/detectors");
        std::fs::create_dir_all(&pack).expect("mkdir");
        std::fs::write(
            pack.join("only.yml"),
            "detector:\n  apply_if: \"True\"\n  add_groups: [custom]\n",
        )
        .expect("w");
        let set = load(&[dir.path().to_owned()], &ok);
        let linux = &set.packs["linux"];
        assert_eq!(linux.detectors.len(), 1);
        assert_eq!(linux.source, Source::Dir(dir.path().join("linux")));
    }

    #[test]
    fn the_default_checks_and_their_parameters_load() {
        let set = load(&[], &ok);
        let names: Vec<&str> = set.checks().map(|c| c.name.as_str()).collect();
        for n in [
            "linux/cpu",
            "linux/load-average",
            "linux/memory",
            "linux/disks",
        ] {
            assert!(names.contains(&n), "{names:?}");
        }
        assert_eq!(set.packs["linux"].parameters["cpu_critical"], 99);
        let cpu = set.checks().find(|c| c.name == "linux/cpu").expect("cpu");
        assert_eq!(cpu.if_group, "linux");
        assert_eq!(cpu.damping.failures_before_critical, 3);
        assert!(matches!(cpu.kind, CheckKind::Expression { .. }));
    }

    #[test]
    fn checks_and_handlers_parse_with_their_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let write = |rel: &str, text: &str| {
            let p = dir.path().join("site").join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("w");
        };
        // The opsbro README's cpu check, as written.
        write(
            "monitoring/cpu.yml",
            "check:\n    interval:          10s\n    if_group:          linux\n    \
             ok_output:         \"'OK: cpu is great: %s%%' % (100-{collector.cpustats.cpuall.%idle})\"\n    \
             critical_if:       \"{collector.cpustats.cpuall.%idle} < {configuration.thresholds.cpuidle.critical}\"\n    \
             critical_output:   \"'Critical: cpu is too high: %s%%' % (100-{collector.cpustats.cpuall.%idle})\"\n    \
             warning_if:        \"{collector.cpustats.cpuall.%idle} < {configuration.thresholds.cpuidle.warning}\"\n    \
             warning_output:    \"'Warning: cpu is very high: %s%%' % (100-{collector.cpustats.cpuall.%idle})\"\n    \
             thresholds :\n           cpuidle :\n                warning: 5\n                critical: 1\n",
        );
        // The README's nagios check.
        write(
            "monitoring/mailq.yml",
            "check:\n    if_group: linux\n    script:   \"$nagiosplugins$/check_mailq -w $mailq.warning$ -c $mailq.critical$\"\n    \
             interval: 60s\n    mailq:\n       warning: 1\n       critical: 2\n",
        );
        write(
            "monitoring/both.yml",
            "check:\n  script: x\n  critical_if: \"True\"\n",
        );
        write("monitoring/none.yml", "check:\n  interval: 5s\n");
        write(
            "monitoring/typo.yml",
            "check:\n  critcal_if: \"True\"\n  ok_output: \"'x'\"\n",
        );
        write(
            "monitoring/syntax.yml",
            "check:\n  interval: 5s\n  critical_if: \"1 + + \"\n",
        );
        // The README's mail handler, as written.
        write(
            "handlers/mail.yml",
            "handler:\n    type: mail\n    severities:\n        - ok\n        - warning\n        - critical\n        - unknown\n    \
             contacts:\n        - \"admin@mydomain.com\"\n    addr_from: \"opsbro@mydomain.com\"\n    smtp_server: localhost\n    \
             subject_template: \"email.subject.tpl\"\n    text_template: \"email.text.tpl\"\n",
        );
        write(
            "handlers/slack.yml",
            "handler:\n   id: slack\n   type: slack\n   severities:\n      - critical\n   token: 'xoxb-1'\n   channel: '#alerts'\n",
        );
        write(
            "handlers/cmd.yml",
            "handler:\n  type: command\n  command: \"echo hi\"\n  min_interval: 10s\n  events: [check, group, node]\n",
        );
        write(
            "handlers/badsev.yml",
            "handler:\n  type: command\n  command: x\n  severities: [fatal]\n",
        );
        write(
            "handlers/wrongkey.yml",
            "handler:\n  type: command\n  command: x\n  token: y\n",
        );
        let check = |e: &str| {
            if e.contains("+ +") {
                Err("syntax error".to_owned())
            } else {
                Ok(())
            }
        };
        let set = load(&[dir.path().to_owned()], &check);
        let site = &set.packs["site"];
        let msgs: Vec<String> = set.diagnostics.iter().map(ToString::to_string).collect();
        let has = |needle: &str| msgs.iter().any(|m| m.contains(needle));
        assert!(
            has("both.yml:2: a check has either `script` or expressions"),
            "{msgs:#?}"
        );
        assert!(has("none.yml:1: a check needs `script`"), "{msgs:#?}");
        assert!(
            has("typo.yml:2: unknown key `critcal_if` (did you mean `critical_if`?)"),
            "{msgs:#?}"
        );
        assert!(has("syntax.yml:3: critical_if: syntax error"), "{msgs:#?}");
        assert!(has("badsev.yml:4: `fatal` is not a state"), "{msgs:#?}");
        assert!(
            has("wrongkey.yml:4: `token` does not apply to a command handler"),
            "{msgs:#?}"
        );
        assert_eq!(msgs.len(), 6, "{msgs:#?}");

        let cpu = site
            .checks
            .iter()
            .find(|c| c.name == "site/cpu")
            .expect("cpu");
        assert_eq!(cpu.interval, Duration::from_secs(10));
        assert_eq!(cpu.keys["thresholds"]["cpuidle"]["critical"], 1);
        let mailq = site
            .checks
            .iter()
            .find(|c| c.name == "site/mailq")
            .expect("mailq");
        assert!(
            matches!(&mailq.kind, CheckKind::Script { script } if script.contains("$mailq.warning$"))
        );
        assert_eq!(mailq.timeout, Duration::from_secs(30));
        let syntax = site
            .checks
            .iter()
            .find(|c| c.name == "site/syntax")
            .expect("kept");
        assert_eq!(syntax.error.as_deref(), Some("critical_if: syntax error"));

        let mail = site
            .handlers
            .iter()
            .find(|h| h.name == "mail")
            .expect("mail");
        let HandlerKind::Mail(m) = &mail.kind else {
            panic!("mail kind")
        };
        assert_eq!((m.smtp_server.as_str(), m.smtp_port), ("localhost", 25));
        assert_eq!(mail.severities.len(), 4);
        let slack = site
            .handlers
            .iter()
            .find(|h| h.name == "slack")
            .expect("slack");
        let HandlerKind::Slack(s) = &slack.kind else {
            panic!("slack kind")
        };
        assert_eq!(s.api_url, "https://slack.com/api");
        assert_eq!(slack.severities, vec![opsbro_checks::CheckState::Critical]);
        let cmd = site.handlers.iter().find(|h| h.name == "cmd").expect("cmd");
        assert_eq!(cmd.events.len(), 3);
    }
}
