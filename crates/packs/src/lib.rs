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

mod compliance;
mod generators;
mod monitoring;
mod services;
pub mod yaml;

pub use compliance::{ComplianceMode, ComplianceSpec, EnvironmentSpec, RULE_TYPES, RuleSpec};
pub use generators::GeneratorSpec;
pub use monitoring::{
    CheckKind, CheckSpec, HandlerKind, HandlerSpec, HttpProbe, MailSpec, SlackSpec,
};
pub use services::{MAX_SERVICES, ServiceSpec, inline_check_name};

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
    /// Its dashboards (shown by `opsbro dashboards`).
    pub dashboards: Vec<Dashboard>,
    /// Its tutorials (shown by `opsbro tutorials`).
    pub tutorials: Vec<Tutorial>,
    /// Its compliance objects.
    pub compliance: Vec<ComplianceSpec>,
    /// Its services.
    pub services: Vec<ServiceSpec>,
    /// Its zones (the zone tree is every pack's zones together).
    pub zones: Vec<ZoneSpec>,
    /// Its leader elections.
    pub elections: Vec<ElectionSpec>,
    /// Every object with the file it comes from, after the levels merged.
    pub objects: Vec<ObjectInfo>,
    /// Every directory that gave this pack objects, lowest level first (an embedded pack then
    /// the `packs_dirs` that hold a pack of the same name).
    pub levels: Vec<Source>,
}

/// A `zone:` object: a zone and its direct sub-zones (the original's
/// `zone: {name, sub-zones: [...]}`; `sub_zones` is accepted too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSpec {
    /// Zone name.
    pub name: String,
    /// Its direct sub-zones.
    pub sub_zones: Vec<String>,
    /// The file it comes from.
    pub file: String,
}

/// An `election:` object: the nodes of `if_group` elect one leader among them (a lock on the
/// cluster's Raft group); commands run on each node when it becomes leader or follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionSpec {
    /// Election name (`name:`, default the file stem).
    pub name: String,
    /// The nodes that take part (`*`: every node; default `*`).
    pub if_group: String,
    /// Run (`/bin/sh -c`) when this node becomes the leader.
    pub command_on_leader: Option<String>,
    /// Run when this node becomes a follower (another node leads).
    pub command_on_follower: Option<String>,
    /// The leader loses its place when not renewed for this long.
    pub ttl: Duration,
    /// The file it comes from.
    pub file: String,
}

/// One object of a pack and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// `detector`, `check`, `handler`, `generator`, `compliance`, `dashboard`, `tutorial` or
    /// `service`.
    pub kind: &'static str,
    /// Its name (`<pack>/<file stem>`, or a handler's `id`).
    pub name: String,
    /// The file it was read from.
    pub file: String,
}

/// A `dashboard:` object: a title and a tree of widgets (`vertical_split`, `horizontal_split`,
/// `text`, `horizontal_gauge`, `horizontal_chart`, `donut`) whose `value`s are expressions.
#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    /// `<pack>/<file stem>`.
    pub name: String,
    /// `title`.
    pub title: String,
    /// `content`, as written.
    pub content: serde_json::Value,
    /// The file it was read from.
    pub file: String,
}

/// A `tutorial:` object: a title and the files next to it (`tutorial-data.json`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Tutorial {
    /// `<pack>/<folder or file stem>`.
    pub name: String,
    /// `title`.
    pub title: String,
    /// The file it was read from.
    pub file: String,
}

/// An object kept as written (a kind another subsystem interprets).
#[derive(Debug, Clone, PartialEq)]
pub struct RawObject {
    /// `<pack>/<file stem>`.
    pub name: String,
    /// The body, as JSON.
    pub body: serde_json::Value,
    /// The file it was read from.
    pub file: String,
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
    /// A warning: the object still loaded (e.g. a key given twice, last one wins).
    pub warning: bool,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.warning { "warning: " } else { "" };
        match self.line {
            Some(l) => write!(f, "{}:{l}: {level}{}", self.file, self.message),
            None => write!(f, "{}: {level}{}", self.file, self.message),
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

    /// Every service of every pack.
    pub fn services(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.packs.values().flat_map(|p| p.services.iter())
    }

    /// Every compliance object of every pack.
    pub fn compliance(&self) -> impl Iterator<Item = &ComplianceSpec> {
        self.packs.values().flat_map(|p| p.compliance.iter())
    }

    /// Every generator of every pack.
    pub fn generators(&self) -> impl Iterator<Item = &GeneratorSpec> {
        self.packs.values().flat_map(|p| p.generators.iter())
    }

    /// Every leader election of every pack.
    pub fn elections(&self) -> impl Iterator<Item = &ElectionSpec> {
        self.packs.values().flat_map(|p| p.elections.iter())
    }

    /// Every zone of every pack.
    pub fn zones(&self) -> impl Iterator<Item = &ZoneSpec> {
        self.packs.values().flat_map(|p| p.zones.iter())
    }
}

/// Checks an expression (syntax), returning a message on error.
pub type ExprCheck<'a> = &'a dyn Fn(&str) -> Result<(), String>;

/// Load the embedded packs, then the packs in `dirs` (see [`load_all`]).
pub fn load(dirs: &[PathBuf], check: ExprCheck<'_>) -> PackSet {
    load_all(dirs, &[], check)
}

/// Name of the pack that holds the objects of the local configuration (`objects_dirs`).
pub const LOCAL_PACK: &str = "local";

/// Load every pack, lowest level first, and merge them as the original's levels did (core <
/// global < zone < local):
///
/// 1. the packs built into the binary;
/// 2. each directory of `dirs` in order (a directory holding a `packs/` folder, like the
///    original's `/var/lib/opsbro/global-configuration`, is read through it);
/// 3. the objects of `objects`: YAML files of any object kind (a handler in
///    `/etc/opsbro/handlers.d/mail.yml`), gathered in the pack [`LOCAL_PACK`].
///
/// A pack met again at a higher level is merged into the lower one object by object: an
/// object (same kind, same name: `<pack>/<file stem>`, or a handler's `id`) replaces the
/// lower one, the others stay; parameters merge key by key, the higher level winning. So a
/// `linux` pack on disk with one detector adds it to the built-in `linux` pack instead of
/// dropping the built-in detectors. The pack's name is its `package.yml` `name` when given,
/// else its folder's name.
pub fn load_all(dirs: &[PathBuf], objects: &[PathBuf], check: ExprCheck<'_>) -> PackSet {
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
        let pack = load_pack(&mut set.diagnostics, &name, Source::Embedded, files, check);
        merge(&mut set, pack);
    }
    for dir in dirs {
        // The original's level directories hold their packs in `packs/`.
        let dir = if dir.join("packs").is_dir() && !dir.join("package.yml").exists() {
            dir.join("packs")
        } else {
            dir.clone()
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                set.diagnostics.push(Diagnostic {
                    file: dir.display().to_string(),
                    line: None,
                    message: format!("cannot read pack directory: {e}"),
                    warning: false,
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
            let folder = pack_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = package_name(&pack_dir).unwrap_or(folder);
            let mut files = Vec::new();
            let mut skipped = BTreeMap::new();
            collect_files(
                &pack_dir,
                &pack_dir,
                &name,
                &mut files,
                &mut skipped,
                &mut set.diagnostics,
            );
            for (sub, count) in skipped {
                set.diagnostics.push(Diagnostic {
                    file: pack_dir.join(&sub).display().to_string(),
                    line: None,
                    message: unsupported_code(&sub, count),
                    warning: true,
                });
            }
            let pack = load_pack(
                &mut set.diagnostics,
                &name,
                Source::Dir(pack_dir.clone()),
                files,
                check,
            );
            merge(&mut set, pack);
        }
    }
    for dir in objects {
        let mut files = Vec::new();
        let mut skipped = BTreeMap::new();
        if !dir.is_dir() {
            set.diagnostics.push(Diagnostic {
                file: dir.display().to_string(),
                line: None,
                message: "cannot read the objects directory: not a directory".into(),
                warning: false,
            });
            continue;
        }
        collect_files(
            dir,
            dir,
            LOCAL_PACK,
            &mut files,
            &mut skipped,
            &mut set.diagnostics,
        );
        let pack = load_pack(
            &mut set.diagnostics,
            LOCAL_PACK,
            Source::Dir(dir.clone()),
            files,
            check,
        );
        merge(&mut set, pack);
    }
    // A generator's template must be in its pack (at any level).
    for pack in set.packs.values_mut() {
        let templates = &pack.templates;
        let (ok, missing): (Vec<GeneratorSpec>, Vec<GeneratorSpec>) =
            std::mem::take(&mut pack.generators)
                .into_iter()
                .partition(|g| templates.contains_key(&g.template));
        for g in missing {
            set.diagnostics.push(Diagnostic {
                file: format!("{}/generators", pack.name),
                line: None,
                message: format!(
                    "generator {}: template `{}` is not in the pack's templates/ (have: {})",
                    g.name,
                    g.template,
                    templates.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                warning: false,
            });
            pack.objects
                .retain(|o| !(o.kind == "generator" && o.name == g.name));
        }
        pack.generators = ok;
    }
    check_services(&mut set);
    set
}

/// After every level merged: a service's checks must exist, and a service name is declared
/// once per `if_group` (the nginx and apache packs may both declare `web` for their groups).
fn check_services(set: &mut PackSet) {
    let checks: std::collections::HashSet<String> = set.checks().map(|c| c.name.clone()).collect();
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for pack in set.packs.values_mut() {
        let mut kept = Vec::new();
        for s in std::mem::take(&mut pack.services) {
            let key = (s.name.clone(), s.if_group.clone());
            let problem = if let Some(missing) = s.checks.iter().find(|c| !checks.contains(*c)) {
                Some(format!(
                    "service {}: check `{missing}` does not exist (name a check as `<pack>/<file>`, or a file of this pack)",
                    s.name
                ))
            } else {
                seen.get(&key).map(|first| {
                    format!(
                        "service {} (if_group {}): already declared by {first}",
                        s.name, s.if_group
                    )
                })
            };
            match problem {
                Some(message) => {
                    set.diagnostics.push(Diagnostic {
                        file: s.file.clone(),
                        line: None,
                        message,
                        warning: false,
                    });
                    pack.objects
                        .retain(|o| !(o.kind == "service" && o.name == s.object));
                }
                None => {
                    seen.insert(key, s.file.clone());
                    kept.push(s);
                }
            }
        }
        pack.services = kept;
    }
}

/// Load one objects file as the local configuration would (`<objects dir>/<stem>.yml`): the
/// objects of [`LOCAL_PACK`] it declares, and its problems. `opsbro services register` checks
/// a file with it before keeping it.
pub fn load_local_file(
    display: &str,
    stem: &str,
    text: &str,
    check: ExprCheck<'_>,
) -> (Pack, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let pack = load_pack(
        &mut diagnostics,
        LOCAL_PACK,
        Source::Dir(PathBuf::from(display)),
        vec![(
            display.to_owned(),
            format!("{LOCAL_PACK}/{stem}.yml"),
            text.to_owned(),
        )],
        check,
    );
    (pack, diagnostics)
}

/// `name` from a pack folder's `package.yml`.
fn package_name(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("package.yml")).ok()?;
    let doc = yaml::parse(&text).ok()?;
    let name = doc.value.get("name")?.as_str()?.trim().to_owned();
    (!name.is_empty() && !name.contains(['/', '\\'])).then_some(name)
}

/// The warning for code of the original (Python collectors, modules...) found in a pack.
fn unsupported_code(sub: &str, count: usize) -> String {
    let what = match sub {
        "collectors" => {
            "Python collectors are not loaded: the agent's collectors are built in (`opsbro collectors show`)"
        }
        "hostingdrivers" | "hostingcontexts" => {
            "Python hosting drivers are not loaded: hosting_driver_is_active() uses the built-in ones"
        }
        "module" => "Python modules are not loaded: their features are built in (see agent.yml)",
        "cli" => "Python CLI extensions are not loaded",
        "compliancebackends" => "Python compliance backends are not loaded",
        _ => "Python files are not loaded",
    };
    format!("{count} file(s) ignored: {what}")
}

/// Folders of a pack whose Python files are the original's code, reported once per folder.
fn code_folder(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    Some(first.into_owned())
}

fn collect_files(
    root: &Path,
    dir: &Path,
    pack: &str,
    out: &mut Vec<(String, String, String)>,
    skipped: &mut BTreeMap<String, usize>,
    diags: &mut Vec<Diagnostic>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        let rel_path = p.strip_prefix(root).unwrap_or(&p).to_owned();
        if p.is_dir() {
            collect_files(root, &p, pack, out, skipped, diags);
        } else if p.extension().is_some_and(|e| e == "yml" || e == "yaml")
            || rel_path.starts_with("templates")
            || rel_path.components().any(|c| c.as_os_str() == "templates")
        {
            let rel = format!("{pack}/{}", rel_path.to_string_lossy());
            match std::fs::read_to_string(&p) {
                Ok(text) => out.push((p.display().to_string(), rel, text)),
                Err(e) => diags.push(Diagnostic {
                    file: p.display().to_string(),
                    line: None,
                    message: format!("cannot read: {e}"),
                    warning: false,
                }),
            }
        } else if p.extension().is_some_and(|e| e == "py")
            && let Some(folder) = code_folder(&rel_path)
        {
            *skipped.entry(folder).or_default() += 1;
        }
    }
}

/// Merge `pack` into the set: a new pack is added; a pack already there (a lower level) takes
/// the objects of this one, replacing those of the same kind and name.
fn merge(set: &mut PackSet, mut pack: Pack) {
    let Some(low) = set.packs.get_mut(&pack.name) else {
        set.packs.insert(pack.name.clone(), pack);
        return;
    };
    fn replace<T>(low: &mut Vec<T>, high: Vec<T>, name: impl Fn(&T) -> &str) {
        for item in high {
            low.retain(|l| name(l) != name(&item));
            low.push(item);
        }
    }
    replace(
        &mut low.detectors,
        std::mem::take(&mut pack.detectors),
        |d| &d.name,
    );
    replace(&mut low.checks, std::mem::take(&mut pack.checks), |c| {
        &c.name
    });
    replace(&mut low.handlers, std::mem::take(&mut pack.handlers), |h| {
        &h.name
    });
    replace(
        &mut low.generators,
        std::mem::take(&mut pack.generators),
        |g| &g.name,
    );
    replace(
        &mut low.dashboards,
        std::mem::take(&mut pack.dashboards),
        |d| &d.name,
    );
    replace(
        &mut low.tutorials,
        std::mem::take(&mut pack.tutorials),
        |t| &t.name,
    );
    replace(
        &mut low.compliance,
        std::mem::take(&mut pack.compliance),
        |c| &c.name,
    );
    replace(&mut low.services, std::mem::take(&mut pack.services), |s| {
        &s.object
    });
    replace(&mut low.zones, std::mem::take(&mut pack.zones), |z| &z.name);
    replace(
        &mut low.elections,
        std::mem::take(&mut pack.elections),
        |e| &e.name,
    );
    for o in pack.objects {
        low.objects
            .retain(|l| !(l.kind == o.kind && l.name == o.name));
        low.objects.push(o);
    }
    merge_json(&mut low.parameters, pack.parameters);
    low.templates.extend(pack.templates);
    if !pack.description.is_empty() {
        low.description = pack.description;
    }
    low.source = pack.source;
    low.levels.extend(pack.levels);
}

/// Deep merge: `high`'s keys win, mappings merge key by key.
fn merge_json(low: &mut serde_json::Value, high: serde_json::Value) {
    match (low, high) {
        (serde_json::Value::Object(l), serde_json::Value::Object(h)) => {
            for (k, v) in h {
                match l.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_json(existing, v);
                    }
                    _ => {
                        l.insert(k, v);
                    }
                }
            }
        }
        (low, high) => *low = high,
    }
}

/// Warnings for the keys given twice in a file (the last one wins, as in the original).
fn repeated_keys(display: &str, text: &str, doc: &yaml::Lenient, diags: &mut Vec<Diagnostic>) {
    for key in &doc.repeated {
        diags.push(Diagnostic {
            file: display.to_owned(),
            line: yaml::last_line_of_key(text, key),
            message: format!("the key `{key}` is given more than once: the last one is used"),
            warning: true,
        });
    }
}

/// (display name, path relative to packs/, text) of each file of one pack.
fn load_pack(
    diagnostics: &mut Vec<Diagnostic>,
    name: &str,
    source: Source,
    files: Vec<(String, String, String)>,
    check: ExprCheck<'_>,
) -> Pack {
    let mut pack = Pack {
        name: name.to_owned(),
        description: String::new(),
        source: source.clone(),
        detectors: Vec::new(),
        checks: Vec::new(),
        handlers: Vec::new(),
        generators: Vec::new(),
        parameters: serde_json::Value::Object(serde_json::Map::new()),
        templates: BTreeMap::new(),
        dashboards: Vec::new(),
        tutorials: Vec::new(),
        compliance: Vec::new(),
        services: Vec::new(),
        zones: Vec::new(),
        elections: Vec::new(),
        objects: Vec::new(),
        levels: vec![source],
    };
    for (display, rel, text) in files {
        if let Some(template) = rel.split_once("/templates/").map(|(_, t)| t) {
            pack.templates.insert(template.to_owned(), text);
            continue;
        }
        let file_name = rel.rsplit('/').next().unwrap_or_default();
        if file_name == "package.yml" {
            match yaml::parse(&text) {
                Ok(doc) => {
                    repeated_keys(&display, &text, &doc, diagnostics);
                    pack.description = doc
                        .value
                        .get("description")
                        .and_then(|d| d.as_str())
                        .unwrap_or_default()
                        .to_owned();
                }
                Err(e) => diagnostics.push(yaml_error(&display, &e)),
            }
            continue;
        }
        // `parameters/*.yml` hold the pack's parameters (read by checks), not objects.
        if rel.contains("/parameters/") {
            match yaml::parse(&text) {
                Ok(doc) => {
                    repeated_keys(&display, &text, &doc, diagnostics);
                    match monitoring::yaml_to_json(&doc.value) {
                        Ok(serde_json::Value::Object(map)) => {
                            merge_json(&mut pack.parameters, serde_json::Value::Object(map));
                        }
                        Ok(serde_json::Value::Null) => {}
                        Ok(_) => diagnostics.push(Diagnostic {
                            file: display.clone(),
                            line: Some(1),
                            message: "parameters must be a mapping of names to values".into(),
                            warning: false,
                        }),
                        Err(message) => diagnostics.push(Diagnostic {
                            file: display.clone(),
                            line: None,
                            message,
                            warning: false,
                        }),
                    }
                }
                Err(e) => diagnostics.push(yaml_error(&display, &e)),
            }
            continue;
        }
        parse_object(&mut pack, &display, &rel, &text, check, diagnostics);
    }
    pack
}

fn yaml_error(file: &str, e: &serde_yaml::Error) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        line: e.location().map(|l| l.line()),
        message: format!(
            "not valid YAML: {}",
            e.to_string().split(" at line ").next().unwrap_or_default()
        ),
        warning: false,
    }
}

/// Object kinds of opsbro packs.
const KINDS: &[&str] = &[
    "detector",
    "check",
    "handler",
    "generator",
    "compliance",
    "dashboard",
    "tutorial",
    "service",
    "zone",
    "election",
];

/// Kinds of the original that this agent does not take from packs (with the reason).
fn unsupported_kind(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "installor" => "`installor` objects of the original are not supported (use compliance)",
        "dns" | "statsd" | "graphite" | "websocket" | "api" | "gossip" | "kv" | "shinken"
        | "grafana" => "this is agent configuration: put it in agent.yml",
        _ => return None,
    })
}

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
        warning: false,
    };
    let doc = match yaml::parse(text) {
        Ok(v) => v,
        Err(e) => {
            diags.push(yaml_error(display, &e));
            return;
        }
    };
    repeated_keys(display, text, &doc, diags);
    let value = doc.value;
    if value.is_null() {
        // An empty file (or only comments), as the original: nothing to load.
        return;
    }
    let Some(map) = value.as_mapping() else {
        diags.push(diag(
            "",
            "expected one object such as `detector: {...}`".into(),
        ));
        return;
    };
    let stem = rel
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".yml")
        .trim_end_matches(".yaml");
    for (k, body) in map {
        let kind = k.as_str().unwrap_or_default();
        if !KINDS.contains(&kind) {
            match unsupported_kind(kind) {
                Some(why) => diags.push(Diagnostic {
                    warning: true,
                    ..diag(kind, format!("`{kind}`: {why}; skipped"))
                }),
                None => diags.push(diag(
                    kind,
                    format!("unknown object kind `{kind}` (known: {})", KINDS.join(", ")),
                )),
            }
            continue;
        }
        let mut record = |kind: &'static str, name: &str| {
            pack.objects.retain(|o| !(o.kind == kind && o.name == name));
            pack.objects.push(ObjectInfo {
                kind,
                name: name.to_owned(),
                file: display.to_owned(),
            });
        };
        match kind {
            "detector" => match parse_detector(body, &pack.name, stem, display, check) {
                Ok(d) => {
                    record("detector", &d.name);
                    pack.detectors.push(d);
                }
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
                        record("check", &c.name);
                        pack.checks.push(c);
                    }
                }
                Err((key, message)) => diags.push(diag(&key, message)),
            },
            "handler" => match monitoring::parse_handler(body, &pack.name, stem, display) {
                Ok(h) => {
                    record("handler", &h.name);
                    pack.handlers.push(h);
                }
                Err((key, message)) => diags.push(diag(&key, message)),
            },
            "generator" => match generators::parse_generator(body, &pack.name, stem, check) {
                Ok(g) => {
                    record("generator", &g.name);
                    pack.generators.push(g);
                }
                Err((key, message)) => diags.push(diag(&key, message)),
            },
            "dashboard" => match parse_dashboard(body, &pack.name, stem, display) {
                Ok(d) => {
                    record("dashboard", &d.name);
                    pack.dashboards.push(d);
                }
                Err((key, message)) => diags.push(diag(&key, message)),
            },
            "tutorial" => {
                // The original names a tutorial by its folder (tutorials/<name>/tutorial.yml).
                let name = match rel.rsplit('/').nth(1) {
                    Some(folder) if stem == "tutorial" && folder != "tutorials" => folder,
                    _ => stem,
                };
                let title = body
                    .get("title")
                    .and_then(|t| t.as_str())
                    .unwrap_or(name)
                    .to_owned();
                let t = Tutorial {
                    name: format!("{}/{name}", pack.name),
                    title,
                    file: display.to_owned(),
                };
                record("tutorial", &t.name);
                pack.tutorials.push(t);
            }
            "service" => match services::parse_service(body, &pack.name, stem, display, check) {
                Ok((service, inline, warnings)) => {
                    for (key, message) in warnings {
                        diags.push(Diagnostic {
                            warning: true,
                            ..diag(&key, message)
                        });
                    }
                    if let Some((c, problems)) = inline {
                        for (key, message) in problems {
                            diags.push(diag(&key, message));
                        }
                        pack.checks.retain(|o| o.name != c.name);
                        record("check", &c.name);
                        pack.checks.push(c);
                    }
                    record("service", &service.object);
                    pack.services.push(service);
                }
                Err((key, message)) => diags.push(diag(&key, message)),
            },
            "election" => match parse_election(body, stem, display) {
                Ok(e) => {
                    record("election", &e.name);
                    pack.elections.retain(|o| o.name != e.name);
                    pack.elections.push(e);
                }
                Err((key, message)) => diags.push(diag(&key, message)),
            },
            "zone" => match parse_zone(body, display) {
                Ok(z) => {
                    record("zone", &z.name);
                    pack.zones.retain(|o| o.name != z.name);
                    pack.zones.push(z);
                }
                Err((key, message)) => diags.push(diag(&key, message)),
            },
            "compliance" => {
                match compliance::parse_compliance(body, &pack.name, stem, display, check) {
                    Ok(c) => {
                        record("compliance", &c.name);
                        pack.compliance.retain(|o| o.name != c.name);
                        pack.compliance.push(c);
                    }
                    Err((key, message)) => diags.push(diag(&key, message)),
                }
            }
            _ => {}
        }
    }
}

/// An `election:` object.
fn parse_election(
    body: &serde_yaml::Value,
    stem: &str,
    file: &str,
) -> Result<ElectionSpec, (String, String)> {
    let map = body.as_mapping().ok_or_else(|| {
        (
            "election".to_owned(),
            "`election` must be a mapping (name, if_group, command_on_leader, command_on_follower, ttl)".to_owned(),
        )
    })?;
    const KEYS: &[&str] = &[
        "name",
        "if_group",
        "command_on_leader",
        "command_on_follower",
        "ttl",
    ];
    for k in map.keys() {
        let k = k.as_str().unwrap_or_default();
        if !KEYS.contains(&k) {
            return Err((
                format!("election.{k}"),
                format!("unknown key `{k}` (known: {})", KEYS.join(", ")),
            ));
        }
    }
    let text = |k: &str| -> Result<Option<String>, (String, String)> {
        match map.get(k) {
            None => Ok(None),
            Some(v) if v.is_null() => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| (format!("election.{k}"), format!("`{k}` must be text"))),
        }
    };
    let name = text("name")?.unwrap_or_else(|| stem.to_owned());
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err((
            "election.name".to_owned(),
            format!("`{name}` is not an election name (1 to 128 characters, no `/`)"),
        ));
    }
    let if_group = text("if_group")?.unwrap_or_else(|| "*".to_owned());
    if if_group != "*" {
        opsbro_types::names::group(&if_group).map_err(|e| ("election.if_group".to_owned(), e.0))?;
    }
    let ttl = match map.get("ttl") {
        None => Duration::from_secs(10),
        Some(v) => opsbro_config::parse_duration(v).map_err(|e| ("election.ttl".to_owned(), e))?,
    };
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&ttl) {
        return Err((
            "election.ttl".to_owned(),
            format!("ttl {ttl:?} is outside 1s..1h"),
        ));
    }
    Ok(ElectionSpec {
        name,
        if_group,
        command_on_leader: text("command_on_leader")?.filter(|c| !c.trim().is_empty()),
        command_on_follower: text("command_on_follower")?.filter(|c| !c.trim().is_empty()),
        ttl,
        file: file.to_owned(),
    })
}

/// A `zone:` object.
fn parse_zone(body: &serde_yaml::Value, file: &str) -> Result<ZoneSpec, (String, String)> {
    let map = body.as_mapping().ok_or_else(|| {
        (
            "zone".to_owned(),
            "`zone` must be a mapping with `name` and `sub-zones`".to_owned(),
        )
    })?;
    let name = map
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| ("zone.name".to_owned(), "a zone needs a `name`".to_owned()))?
        .to_owned();
    opsbro_types::names::zone(&name).map_err(|e| ("zone.name".to_owned(), e.0))?;
    let mut sub_zones = Vec::new();
    for key in ["sub-zones", "sub_zones"] {
        let Some(list) = map.get(key) else { continue };
        if list.is_null() {
            continue;
        }
        let list = list.as_sequence().ok_or_else(|| {
            (
                format!("zone.{key}"),
                "`sub-zones` is a list of zone names".to_owned(),
            )
        })?;
        for (i, z) in list.iter().enumerate() {
            let z = z.as_str().ok_or_else(|| {
                (
                    format!("zone.{key}[{i}]"),
                    "a sub-zone is a zone name".to_owned(),
                )
            })?;
            opsbro_types::names::zone(z).map_err(|e| (format!("zone.{key}[{i}]"), e.0))?;
            if z == name {
                return Err((
                    format!("zone.{key}[{i}]"),
                    format!("zone `{name}` cannot be its own sub-zone"),
                ));
            }
            if !sub_zones.iter().any(|s| s == z) {
                sub_zones.push(z.to_owned());
            }
        }
    }
    Ok(ZoneSpec {
        name,
        sub_zones,
        file: file.to_owned(),
    })
}

/// Widget kinds of a dashboard.
pub const WIDGETS: &[&str] = &[
    "vertical_split",
    "horizontal_split",
    "text",
    "horizontal_gauge",
    "horizontal_chart",
    "donut",
];

fn parse_dashboard(
    body: &serde_yaml::Value,
    pack: &str,
    stem: &str,
    file: &str,
) -> Result<Dashboard, (String, String)> {
    let map = body.as_mapping().ok_or_else(|| {
        (
            "dashboard".to_owned(),
            "`dashboard` must be a mapping with `title` and `content`".to_owned(),
        )
    })?;
    let title = match map.get("title") {
        Some(t) => monitoring::text(t, "dashboard.title")?,
        None => stem.to_owned(),
    };
    let content = match map.get("content") {
        Some(c) => monitoring::yaml_to_json(c).map_err(|e| ("dashboard.content".to_owned(), e))?,
        None => {
            return Err((
                "dashboard".to_owned(),
                "a dashboard needs `content` (a tree of widgets)".to_owned(),
            ));
        }
    };
    check_widgets(&content, "dashboard.content")?;
    Ok(Dashboard {
        name: format!("{pack}/{stem}"),
        title,
        content,
        file: file.to_owned(),
    })
}

/// Every widget of a dashboard tree is a known kind (`path`: where it is, for the line).
fn check_widgets(node: &serde_json::Value, path: &str) -> Result<(), (String, String)> {
    let serde_json::Value::Object(map) = node else {
        return Err((
            path.to_owned(),
            "each widget is a mapping such as `text: {title, value}`".to_owned(),
        ));
    };
    for (kind, inner) in map {
        let here = format!("{path}.{kind}");
        if !WIDGETS.contains(&kind.as_str()) {
            return Err((
                here,
                format!("unknown widget `{kind}` (known: {})", WIDGETS.join(", ")),
            ));
        }
        if kind.ends_with("_split") {
            let items = inner
                .as_array()
                .ok_or_else(|| (here.clone(), format!("`{kind}` is a list of widgets")))?;
            for (i, item) in items.iter().enumerate() {
                check_widgets(item, &format!("{here}[{i}]"))?;
            }
        }
    }
    Ok(())
}

/// `text` with each `{{...}}` replaced by `x` (to check the literal parts of a group template).
pub fn strip_placeholders(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            return Err(format!("`{text}`: a `{{{{` is not closed by `}}}}`"));
        };
        out.push('x');
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
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
                    // A group may be a template (`ec2-region::{{collector.ec2.region}}`),
                    // rendered on each run: its literal parts follow the group rules.
                    let literal = strip_placeholders(g).map_err(|e| (path.clone(), e))?;
                    for part in literal.split(',') {
                        opsbro_config::check_group(part.trim()).map_err(|e| (path.clone(), e))?;
                    }
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
        collect_files(
            &root,
            &root,
            "",
            &mut files,
            &mut BTreeMap::new(),
            &mut Vec::new(),
        );
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
    fn a_disk_pack_named_like_a_built_in_one_merges_object_by_object() {
        let dir = tempfile::tempdir().expect("tmp");
        let pack = dir.path().join("linux/detectors");
        std::fs::create_dir_all(&pack).expect("mkdir");
        std::fs::write(
            pack.join("only.yml"),
            "detector:\n  apply_if: \"True\"\n  add_groups: [custom]\n",
        )
        .expect("w");
        // Same file name as a built-in detector: this one replaces it.
        std::fs::write(
            pack.join("debian.yml"),
            "detector:\n  apply_if: \"False\"\n  add_groups: [debian]\n",
        )
        .expect("w");
        let params = dir.path().join("linux/parameters");
        std::fs::create_dir_all(&params).expect("mkdir");
        std::fs::write(params.join("parameters.yml"), "cpu_critical: 80\n").expect("w");
        let set = load(&[dir.path().to_owned()], &ok);
        assert!(set.diagnostics.is_empty(), "{:?}", set.diagnostics);
        let linux = &set.packs["linux"];
        let names: Vec<&str> = linux.detectors.iter().map(|d| d.name.as_str()).collect();
        assert!(names.contains(&"linux/only"), "{names:?}");
        assert!(
            names.contains(&"linux/linux"),
            "the built-in detector that gives `linux` stays: {names:?}"
        );
        let debian = linux
            .detectors
            .iter()
            .find(|d| d.name == "linux/debian")
            .expect("debian");
        assert_eq!(debian.apply_if, "False", "the higher level wins");
        assert_eq!(
            names.iter().filter(|n| **n == "linux/debian").count(),
            1,
            "{names:?}"
        );
        // Parameters merge key by key.
        assert_eq!(linux.parameters["cpu_critical"], 80);
        assert_eq!(
            linux.parameters["cpu_warning"], 95,
            "the other built-in values stay"
        );
        assert_eq!(linux.source, Source::Dir(dir.path().join("linux")));
        assert_eq!(
            linux.levels,
            vec![Source::Embedded, Source::Dir(dir.path().join("linux"))]
        );
        // Each object says where it comes from.
        let origin = |name: &str| {
            linux
                .objects
                .iter()
                .find(|o| o.name == name)
                .map(|o| o.file.clone())
                .unwrap_or_default()
        };
        assert!(origin("linux/linux").starts_with("embedded:"));
        assert!(origin("linux/debian").ends_with("linux/detectors/debian.yml"));
    }

    /// Packs written as the original's (`/var/lib/opsbro/global-configuration/packs/...`).
    /// Writes `text` at `<base>/<rel>`, making the folders.
    fn writer(base: PathBuf) -> impl Fn(&str, &str) {
        move |rel, text| {
            let p = base.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("w");
        }
    }

    #[test]
    fn packs_in_the_original_format_load() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("global-configuration");
        let write = writer(root.join("packs"));
        write(
            "ec2/package.yml",
            "name: ec2\ntopics:\n    - automatic detection\ndescription: Look if we are running on ec2\n",
        );
        write(
            "ec2/detectors/ec2-region.yml",
            "detector:\n    add_groups:\n        - 'ec2-region::{{collector.ec2.region}}'\n    apply_if: \"hosting_driver_is_active('ec2')\"\n    interval: \"86400s\"\n\n",
        );
        write(
            "ec2/collectors/collector_ec2.py",
            "class Ec2(Collector): pass\n",
        );
        write("mysql/package.yml", "name: mysql\ndescription: mysql\n");
        write(
            "mysql/parameters/parameters.yml",
            "# Which port to connect\nport: 3306\nuser: root\nport: 3307\n",
        );
        write(
            "mysql/monitoring/mysql.yml",
            "check:\n    script: \"check_mysql -P $port$ -u $user$\"\n    interval: \"60s\"\n",
        );
        write("linux/package.yml", "name: linux\n");
        write(
            "linux/dashboards/linux.yml",
            "dashboard:\n    title:  Linux system overall\n    content:\n        vertical_split:\n            - text:\n                 title: General\n                 value: \"'Linux %s' % {{collector.system.os.linux.distribution}}\"\n            - horizontal_split:\n                - donut:\n                     title: Memory\n                     value: \"{{collector.memory.phys_used}}\"\n                     unit: \"%\"\n",
        );
        write(
            "linux/tutorials/linux-dashboard/tutorial.yml",
            "tutorial:\n   title: Example of the standard linux dashboard\n",
        );
        write(
            "linux/compliance/passwd.yml",
            "compliance:\n    mode: audit\n    rules:\n      - type: file-rights\n",
        );
        write("linux/installors/x.yml", "installor:\n   name: x\n");
        let set = load(std::slice::from_ref(&root), &ok);
        let msgs: Vec<String> = set.diagnostics.iter().map(ToString::to_string).collect();
        let errors: Vec<&Diagnostic> = set.diagnostics.iter().filter(|d| !d.warning).collect();
        assert!(errors.is_empty(), "{msgs:#?}");
        assert!(
            msgs.iter().any(|m| m.ends_with("mysql/parameters/parameters.yml:4: warning: the key `port` is given more than once: the last one is used")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("ec2/collectors")
                    && m.contains("Python collectors are not loaded")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("x.yml:1: warning: `installor`")),
            "{msgs:#?}"
        );
        assert_eq!(set.packs["mysql"].parameters["port"], 3307);
        let ec2 = set
            .detectors()
            .find(|d| d.name == "ec2/ec2-region")
            .expect("ec2 detector");
        assert_eq!(ec2.add_groups, vec!["ec2-region::{{collector.ec2.region}}"]);
        let linux = &set.packs["linux"];
        assert_eq!(linux.dashboards.len(), 1);
        assert_eq!(linux.dashboards[0].title, "Linux system overall");
        assert_eq!(linux.tutorials[0].name, "linux/linux-dashboard");
        assert_eq!(linux.compliance[0].name, "linux/passwd");
        assert!(
            linux
                .detectors
                .iter()
                .any(|d| d.add_groups == vec!["linux"]),
            "the built-in linux detector is still there"
        );
    }

    #[test]
    fn a_bad_group_template_and_an_unknown_widget_are_diagnostics() {
        let dir = tempfile::tempdir().expect("tmp");
        let write = writer(dir.path().join("site"));
        write(
            "detectors/open.yml",
            "detector:\n  apply_if: \"True\"\n  add_groups: ['x-{{collector.a']\n",
        );
        write(
            "detectors/space.yml",
            "detector:\n  apply_if: \"True\"\n  add_groups: ['bad group {{collector.a}}']\n",
        );
        write(
            "dashboards/d.yml",
            "dashboard:\n  title: t\n  content:\n    pie_chart:\n      value: 1\n",
        );
        let set = load(&[dir.path().to_owned()], &ok);
        let msgs: Vec<String> = set.diagnostics.iter().map(ToString::to_string).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("open.yml:3:") && m.contains("not closed")),
            "{msgs:#?}"
        );
        assert!(msgs.iter().any(|m| m.contains("space.yml:3:")), "{msgs:#?}");
        assert!(
            msgs.iter()
                .any(|m| m.contains("d.yml:4: unknown widget `pie_chart`")),
            "{msgs:#?}"
        );
        assert!(set.packs["site"].detectors.is_empty());
    }

    #[test]
    fn objects_of_the_local_configuration_load_in_the_local_pack() {
        let dir = tempfile::tempdir().expect("tmp");
        let handlers = dir.path().join("handlers.d");
        std::fs::create_dir_all(&handlers).expect("mkdir");
        std::fs::write(
            handlers.join("mail.yml"),
            "handler:\n    type: mail\n    contacts: [\"admin@mydomain.com\"]\n    addr_from: \"opsbro@mydomain.com\"\n    smtp_server: localhost\n",
        )
        .expect("w");
        std::fs::write(handlers.join("dns.yml"), "dns:\n  enabled: true\n").expect("w");
        let set = load_all(&[], std::slice::from_ref(&handlers), &ok);
        let local = &set.packs[LOCAL_PACK];
        assert_eq!(local.handlers.len(), 1);
        assert_eq!(local.handlers[0].name, "mail");
        let msgs: Vec<String> = set.diagnostics.iter().map(ToString::to_string).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("dns.yml:1: warning: `dns`: this is agent configuration")),
            "{msgs:#?}"
        );
    }

    #[test]
    fn zone_objects_load_in_the_original_form_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let zones = dir.path().join("zones.d");
        std::fs::create_dir_all(&zones).expect("mkdir");
        std::fs::write(
            zones.join("internet.yml"),
            "zone:\n  name: internet\n  sub-zones: [dc1, dc2, dc1]\n",
        )
        .expect("w");
        std::fs::write(
            zones.join("dc1.yml"),
            "zone:\n  name: dc1\n  sub_zones:\n    - rack-a\n",
        )
        .expect("w");
        std::fs::write(zones.join("bad.yml"), "zone:\n  name: \"a b\"\n").expect("w");
        std::fs::write(
            zones.join("loop.yml"),
            "zone:\n  name: x\n  sub-zones: [x]\n",
        )
        .expect("w");
        let set = load_all(&[], std::slice::from_ref(&zones), &ok);
        let mut zones: Vec<(String, Vec<String>)> = set
            .zones()
            .map(|z| (z.name.clone(), z.sub_zones.clone()))
            .collect();
        zones.sort();
        assert_eq!(
            zones,
            [
                ("dc1".to_owned(), vec!["rack-a".to_owned()]),
                (
                    "internet".to_owned(),
                    vec!["dc1".to_owned(), "dc2".to_owned()]
                ),
            ]
        );
        let msgs: Vec<String> = set.diagnostics.iter().map(ToString::to_string).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("bad.yml:2") && m.contains("zone `a b`")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("its own sub-zone")),
            "{msgs:#?}"
        );
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
        let write = writer(dir.path().join("site"));
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
