//! `check:` and `handler:` objects, in the opsbro README's format.

use std::collections::BTreeMap;
use std::time::Duration;

use opsbro_checks::notify::EventKind;
use opsbro_checks::{CheckState, Damping};
use serde_yaml::Value as Yaml;

use crate::ExprCheck;

/// What a check runs.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// opsbro expressions: critical_if → CRITICAL, else warning_if → WARNING, else OK.
    Expression {
        /// Text shown when OK (an expression).
        ok_output: Option<String>,
        /// Condition for CRITICAL.
        critical_if: Option<String>,
        /// Text shown when CRITICAL (an expression).
        critical_output: Option<String>,
        /// Condition for WARNING.
        warning_if: Option<String>,
        /// Text shown when WARNING (an expression).
        warning_output: Option<String>,
    },
    /// A nagios plugin command line, with `$macro$`s.
    Script {
        /// The command line (run with `sh -c`).
        script: String,
    },
    /// A native TCP check (`tcp: host:port`, as Consul's): OK when a connection opens within
    /// the timeout, CRITICAL with the reason otherwise.
    Tcp {
        /// `host:port`.
        address: String,
    },
    /// A native HTTP check (`http: URL`, with Consul's `method`, `header`, `body`,
    /// `tls_skip_verify`, and `expect_status`, `expect_body`).
    Http(HttpProbe),
    /// A TTL check (`ttl: 30s`, as Consul's): nothing runs; something outside calls
    /// `opsbro monitoring ttl pass|warn|fail NAME` at least once per TTL, and the check is
    /// CRITICAL when the TTL passes without news.
    Ttl {
        /// How long a status holds.
        ttl: Duration,
    },
}

/// What an HTTP check asks and expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Method (default `GET`).
    pub method: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Option<String>,
    /// Statuses that are OK, inclusive (default 200–299). As Consul: 429 is WARNING, any
    /// other status CRITICAL.
    pub expect_status: (u16, u16),
    /// Text the answer's body must contain (else CRITICAL).
    pub expect_body: Option<String>,
    /// Accept any TLS certificate.
    pub tls_skip_verify: bool,
}

/// A `check:` object.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    /// `<pack>/<file stem>`.
    pub name: String,
    /// `display_name`, default the file stem.
    pub display_name: String,
    /// Pack name.
    pub pack: String,
    /// File it was read from.
    pub file: String,
    /// Time between runs (each run is jittered by ±10%).
    pub interval: Duration,
    /// Group a node must have for the check to run there (`*` = every node).
    pub if_group: String,
    /// Expressions or script.
    pub kind: CheckKind,
    /// `variables`: name → expression, evaluated before each run, read as `{{variables.name}}`.
    pub variables: Vec<(String, String)>,
    /// Handler names to notify.
    pub handlers: Vec<String>,
    /// Longest a run may take (scripts are killed with their process group).
    pub timeout: Duration,
    /// Flap damping.
    pub damping: Damping,
    /// Every key of the object as JSON: `{{configuration.thresholds.x}}` and `$macro$`s read it.
    pub keys: serde_json::Value,
    /// Why the check cannot run (an expression that does not compile): it reports UNKNOWN
    /// with this message.
    pub error: Option<String>,
}

/// SMTP settings of a mail handler.
#[derive(Debug, Clone, PartialEq)]
pub struct MailSpec {
    /// Recipients.
    pub contacts: Vec<String>,
    /// Sender.
    pub addr_from: String,
    /// SMTP host.
    pub smtp_server: String,
    /// SMTP port (from `smtp_server: host:port` or `smtp_port`; default 25, 465 with smtps).
    pub smtp_port: u16,
    /// Upgrade with STARTTLS (required when set).
    pub starttls: bool,
    /// Implicit TLS (SMTPS).
    pub smtps: bool,
    /// PEM file of a CA to trust besides the public roots (a private relay's certificate).
    pub ca_file: Option<std::path::PathBuf>,
    /// Login.
    pub smtp_user: Option<String>,
    /// Password.
    pub smtp_password: Option<String>,
    /// Template name for the subject.
    pub subject_template: String,
    /// Template name for the body.
    pub text_template: String,
}

/// Settings of a slack handler.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackSpec {
    /// Web API token (`chat.postMessage`).
    pub token: Option<String>,
    /// Channel.
    pub channel: String,
    /// Web API base URL (tests point it at a local server).
    pub api_url: String,
    /// Incoming-webhook URL (instead of token + channel).
    pub webhook_url: Option<String>,
    /// Template name for the text.
    pub text_template: String,
}

/// What a handler does.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerKind {
    /// Send a mail.
    Mail(MailSpec),
    /// Post to slack.
    Slack(SlackSpec),
    /// Run a shell command (values shell-quoted), at most once per `min_interval`.
    Command {
        /// The command template.
        command: String,
        /// Least time between two runs; notifications in between are merged into the next.
        min_interval: Duration,
    },
}

impl HandlerKind {
    /// `mail`, `slack` or `command`.
    pub fn type_name(&self) -> &'static str {
        match self {
            HandlerKind::Mail(_) => "mail",
            HandlerKind::Slack(_) => "slack",
            HandlerKind::Command { .. } => "command",
        }
    }
}

/// A `handler:` object.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerSpec {
    /// `id`, or the file stem. Checks name it in `handlers`.
    pub name: String,
    /// Pack.
    pub pack: String,
    /// File.
    pub file: String,
    /// What it does.
    pub kind: HandlerKind,
    /// New check states it fires for (default all but pending).
    pub severities: Vec<CheckState>,
    /// What it listens to (default checks only).
    pub events: Vec<EventKind>,
    /// Attempts after the first failure.
    pub retries: u32,
    /// Longest one attempt may take.
    pub timeout: Duration,
    /// `enabled: false` keeps it loaded but silent.
    pub enabled: bool,
}

/// serde_yaml → serde_json (keys must be strings or numbers).
pub(crate) fn yaml_to_json(v: &Yaml) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| format!("cannot use this value: {e}"))
}

pub(crate) type Problem = (String, String);

/// Longest check name (`<pack>/<file>`): names travel in the gossip record.
pub const MAX_CHECK_NAME: usize = 128;

const CHECK_KEYS: &[&str] = &[
    "interval",
    "if_group",
    "display_name",
    "ok_output",
    "critical_if",
    "critical_output",
    "warning_if",
    "warning_output",
    "thresholds",
    "variables",
    "handlers",
    "script",
    "timeout",
    "failures_before_critical",
    "successes_before_ok",
    "notes",
    "description",
];

/// Options of an HTTP check. Kept out of [`CHECK_KEYS`]' typo hints: a script check's own
/// keys (read by `$macro$`s, e.g. `exit_status`) must not be taken for near misses of them.
const HTTP_KEYS: &[&str] = &[
    "method",
    "header",
    "body",
    "tls_skip_verify",
    "expect_status",
    "expect_body",
];

pub(crate) fn text(v: &Yaml, path: &str) -> Result<String, Problem> {
    match v {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Number(n) => Ok(n.to_string()),
        Yaml::Bool(b) => Ok(if *b { "True".into() } else { "False".into() }),
        _ => Err((path.to_owned(), format!("`{path}` must be text"))),
    }
}

pub(crate) fn positive(v: &Yaml, path: &str) -> Result<Duration, Problem> {
    let d = opsbro_config::parse_duration(v).map_err(|e| (path.to_owned(), e))?;
    if d.is_zero() {
        return Err((path.to_owned(), format!("{path} must be more than 0")));
    }
    Ok(d)
}

fn count(v: &Yaml, path: &str) -> Result<u32, Problem> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| {
            (
                path.to_owned(),
                format!("{path} must be a number from 1 to 1000"),
            )
        })
}

fn names(v: &Yaml, path: &str) -> Result<Vec<String>, Problem> {
    match v {
        Yaml::String(s) => Ok(vec![s.clone()]),
        _ => serde_yaml::from_value::<Vec<String>>(v.clone())
            .map_err(|_| (path.to_owned(), format!("{path} must be a list of names"))),
    }
}

/// Parse a check. Expressions that do not compile do not drop the check: they are returned as
/// problems and recorded in `error`.
pub(crate) fn parse_check(
    body: &Yaml,
    pack: &str,
    stem: &str,
    file: &str,
    check: ExprCheck<'_>,
) -> Result<(CheckSpec, Vec<Problem>), Problem> {
    let map = body
        .as_mapping()
        .ok_or_else(|| ("check".to_owned(), "`check` must be a mapping".to_owned()))?;
    let keys = yaml_to_json(body).map_err(|e| ("check".to_owned(), e))?;
    let name = format!("{pack}/{stem}");
    if name.len() > MAX_CHECK_NAME {
        return Err((
            "check".to_owned(),
            format!(
                "the check name `{name}` is over {MAX_CHECK_NAME} bytes (pack/file name): use a shorter file name"
            ),
        ));
    }
    // Check names travel in the gossip record, where peers hold them to the same rules.
    opsbro_types::names::check_name(&name).map_err(|e| ("check".to_owned(), e.0))?;
    let mut spec = CheckSpec {
        name,
        display_name: stem.to_owned(),
        pack: pack.to_owned(),
        file: file.to_owned(),
        interval: Duration::from_secs(10),
        if_group: "*".into(),
        kind: CheckKind::Script {
            script: String::new(),
        },
        variables: Vec::new(),
        handlers: Vec::new(),
        timeout: Duration::from_secs(30),
        damping: Damping::default(),
        keys,
        error: None,
    };
    let mut exprs: BTreeMap<&str, String> = BTreeMap::new();
    let mut script = None;
    let mut tcp = None;
    let mut ttl = None;
    let mut http: Option<HttpProbe> = None;
    let mut http_options: Vec<(&str, &Yaml)> = Vec::new();
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default();
        let path = format!("check.{key}");
        match key {
            "interval" => spec.interval = positive(v, &path)?,
            "timeout" => spec.timeout = positive(v, &path)?,
            "if_group" => {
                let g = text(v, &path)?;
                if g != "*" {
                    opsbro_config::check_group(&g).map_err(|e| (path.clone(), e))?;
                }
                spec.if_group = g;
            }
            "display_name" => spec.display_name = text(v, &path)?,
            "ok_output" | "critical_if" | "critical_output" | "warning_if" | "warning_output" => {
                exprs.insert(
                    CHECK_KEYS
                        .iter()
                        .find(|k| **k == key)
                        .copied()
                        .unwrap_or(""),
                    text(v, &path)?,
                );
            }
            "script" => script = Some(text(v, &path)?),
            "tcp" => tcp = Some(tcp_address(&text(v, &path)?, &path)?),
            "http" => {
                http = Some(HttpProbe {
                    url: http_url(&text(v, &path)?, &path)?,
                    method: "GET".into(),
                    headers: Vec::new(),
                    body: None,
                    expect_status: (200, 299),
                    expect_body: None,
                    tls_skip_verify: false,
                });
            }
            k if HTTP_KEYS.contains(&k) => http_options.push((
                HTTP_KEYS.iter().find(|h| **h == k).copied().unwrap_or(""),
                v,
            )),
            "ttl" => ttl = Some(positive(v, &path)?),
            "handlers" => spec.handlers = names(v, &path)?,
            "failures_before_critical" => {
                spec.damping.failures_before_critical = count(v, &path)?;
            }
            "successes_before_ok" => spec.damping.successes_before_ok = count(v, &path)?,
            "variables" => {
                let vars = v.as_mapping().ok_or_else(|| {
                    (
                        path.clone(),
                        "variables must map names to expressions".to_owned(),
                    )
                })?;
                for (name, expr) in vars {
                    let name = name.as_str().unwrap_or_default().to_owned();
                    let expr = text(expr, &format!("{path}.{name}"))?;
                    spec.variables.push((name, expr));
                }
            }
            // Free-form: read by expressions and macros.
            "thresholds" | "notes" | "description" => {}
            other => {
                // Other keys serve `$macro$`s and `{{configuration.x}}`; a near miss of a known
                // key is almost certainly a typo that would silently disable a condition.
                if let Some(k) = opsbro_config::closest(other, CHECK_KEYS)
                    && !CHECK_KEYS.contains(&other)
                {
                    return Err((path, format!("unknown key `{other}` (did you mean `{k}`?)")));
                }
            }
        }
    }
    let mut problems = Vec::new();
    if let Some(probe) = http.as_mut() {
        for (key, v) in &http_options {
            http_option(probe, key, v)?;
        }
    } else if (tcp.is_some() || ttl.is_some())
        && let Some((key, _)) = http_options.first()
    {
        // (On script and expression checks they are free-form keys, read by `$macro$`s.)
        return Err((
            format!("check.{key}"),
            format!("`{key}` belongs to an HTTP check: give the URL with `http`"),
        ));
    }
    let natives =
        usize::from(tcp.is_some()) + usize::from(http.is_some()) + usize::from(ttl.is_some());
    if natives > 0 {
        if natives > 1 || script.is_some() || !exprs.is_empty() {
            return Err((
                "check".into(),
                "a check is one of: expressions (critical_if, warning_if, ok_output), `script`, `tcp`, `http` or `ttl`".into(),
            ));
        }
        spec.kind = match (tcp, http, ttl) {
            (Some(address), _, _) => CheckKind::Tcp { address },
            (None, Some(probe), _) => CheckKind::Http(probe),
            (None, None, Some(ttl)) => CheckKind::Ttl { ttl },
            (None, None, None) => unreachable!("one native kind was counted"),
        };
        return Ok((spec, problems));
    }
    spec.kind = match (script, exprs.is_empty()) {
        (Some(_), false) => {
            return Err((
                "check.script".into(),
                "a check has either `script` or expressions (critical_if, warning_if, ok_output), not both".into(),
            ));
        }
        (Some(script), true) => {
            if script.trim().is_empty() {
                return Err(("check.script".into(), "script must not be empty".into()));
            }
            CheckKind::Script { script }
        }
        (None, true) => {
            return Err((
                "check".into(),
                "a check needs `script` (a nagios plugin) or expressions (critical_if, warning_if, ok_output)".into(),
            ));
        }
        (None, false) => {
            let all = exprs
                .iter()
                .map(|(k, e)| (format!("check.{k}"), e.clone()))
                .chain(
                    spec.variables
                        .iter()
                        .map(|(n, e)| (format!("check.variables.{n}"), e.clone())),
                );
            for (path, expr) in all {
                if let Err(e) = check(&expr) {
                    let short = path.trim_start_matches("check.").to_owned();
                    let message = format!("{short}: {e}");
                    if spec.error.is_none() {
                        spec.error = Some(message.clone());
                    }
                    problems.push((path, message));
                }
            }
            CheckKind::Expression {
                ok_output: exprs.remove("ok_output"),
                critical_if: exprs.remove("critical_if"),
                critical_output: exprs.remove("critical_output"),
                warning_if: exprs.remove("warning_if"),
                warning_output: exprs.remove("warning_output"),
            }
        }
    };
    Ok((spec, problems))
}

/// Keys every handler may have.
const COMMON_HANDLER_KEYS: &[&str] = &[
    "type",
    "id",
    "severities",
    "events",
    "retries",
    "timeout",
    "enabled",
    "notes",
];
const MAIL_KEYS: &[&str] = &[
    "contacts",
    "addr_from",
    "smtp_server",
    "smtp_port",
    "starttls",
    "smtps",
    "smtp_user",
    "smtp_password",
    "ca_file",
    "subject_template",
    "text_template",
];
const SLACK_KEYS: &[&str] = &["token", "channel", "api_url", "url", "text_template"];
const COMMAND_KEYS: &[&str] = &["command", "min_interval"];

/// Keys each type uses besides the common ones.
fn type_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "mail" => MAIL_KEYS,
        "slack" => SLACK_KEYS,
        "command" => COMMAND_KEYS,
        _ => &[],
    }
}

pub(crate) fn parse_handler(
    body: &Yaml,
    pack: &str,
    stem: &str,
    file: &str,
) -> Result<HandlerSpec, Problem> {
    let map = body.as_mapping().ok_or_else(|| {
        (
            "handler".to_owned(),
            "`handler` must be a mapping".to_owned(),
        )
    })?;
    let get = |key: &str| map.get(Yaml::String(key.to_owned()));
    let kind_name = match get("type") {
        Some(v) => text(v, "handler.type")?,
        None => {
            return Err((
                "handler".into(),
                "handler needs `type`: mail, slack or command".into(),
            ));
        }
    };
    let kind_name = if kind_name == "email" {
        "mail".to_owned()
    } else {
        kind_name
    };
    if !["mail", "slack", "command"].contains(&kind_name.as_str()) {
        return Err((
            "handler.type".into(),
            format!("unknown handler type `{kind_name}` (use mail, slack or command)"),
        ));
    }
    let all_keys: Vec<&str> = [COMMON_HANDLER_KEYS, MAIL_KEYS, SLACK_KEYS, COMMAND_KEYS].concat();
    for (k, _) in map {
        let key = k.as_str().unwrap_or_default();
        if COMMON_HANDLER_KEYS.contains(&key) || type_keys(&kind_name).contains(&key) {
            continue;
        }
        let hint = if all_keys.contains(&key) {
            format!("`{key}` does not apply to a {kind_name} handler")
        } else {
            match opsbro_config::closest(key, &all_keys) {
                Some(k) => format!("unknown key `{key}` (did you mean `{k}`?)"),
                None => format!("unknown key `{key}`"),
            }
        };
        return Err((format!("handler.{key}"), hint));
    }
    let opt_text = |key: &str| -> Result<Option<String>, Problem> {
        get(key)
            .map(|v| text(v, &format!("handler.{key}")))
            .transpose()
    };
    let flag = |key: &str| -> Result<bool, Problem> {
        match get(key) {
            None => Ok(false),
            Some(Yaml::Bool(b)) => Ok(*b),
            Some(_) => Err((
                format!("handler.{key}"),
                format!("{key} must be true or false"),
            )),
        }
    };
    let name = opt_text("id")?.unwrap_or_else(|| stem.to_owned());
    let severities = match get("severities") {
        None => vec![
            CheckState::Ok,
            CheckState::Warning,
            CheckState::Critical,
            CheckState::Unknown,
        ],
        Some(v) => names(v, "handler.severities")?
            .iter()
            .map(|s| {
                CheckState::parse(s).ok_or_else(|| {
                    (
                        "handler.severities".to_owned(),
                        format!("`{s}` is not a state (ok, warning, critical, unknown)"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let events = match get("events") {
        None => vec![EventKind::Check],
        Some(v) => names(v, "handler.events")?
            .iter()
            .map(|s| {
                EventKind::parse(s).ok_or_else(|| {
                    (
                        "handler.events".to_owned(),
                        format!("`{s}` is not an event kind (check, group, node)"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let kind = match kind_name.as_str() {
        "mail" => {
            let contacts = match get("contacts") {
                Some(v) => names(v, "handler.contacts")?,
                None => Vec::new(),
            };
            if contacts.is_empty() {
                return Err((
                    "handler.contacts".into(),
                    "a mail handler needs `contacts` (a list of addresses)".into(),
                ));
            }
            let smtps = flag("smtps")?;
            let server = opt_text("smtp_server")?.unwrap_or_else(|| "localhost".into());
            let (host, port_in_server) = match server.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                    let port = p.parse::<u16>().map_err(|_| {
                        (
                            "handler.smtp_server".to_owned(),
                            format!("`{server}`: `{p}` is not a port"),
                        )
                    })?;
                    (h.trim_matches(['[', ']']).to_owned(), Some(port))
                }
                _ => (server.clone(), None),
            };
            let port = match get("smtp_port") {
                Some(v) => Some(v.as_u64().and_then(|p| u16::try_from(p).ok()).ok_or_else(
                    || {
                        (
                            "handler.smtp_port".to_owned(),
                            "smtp_port must be a port number".to_owned(),
                        )
                    },
                )?),
                None => port_in_server,
            };
            HandlerKind::Mail(MailSpec {
                contacts,
                addr_from: opt_text("addr_from")?.unwrap_or_else(|| "opsbro@localhost".into()),
                smtp_server: host,
                smtp_port: port.unwrap_or(if smtps { 465 } else { 25 }),
                starttls: flag("starttls")?,
                smtps,
                ca_file: opt_text("ca_file")?.map(std::path::PathBuf::from),
                smtp_user: opt_text("smtp_user")?,
                smtp_password: opt_text("smtp_password")?,
                subject_template: opt_text("subject_template")?
                    .unwrap_or_else(|| "email.subject.tpl".into()),
                text_template: opt_text("text_template")?
                    .unwrap_or_else(|| "email.text.tpl".into()),
            })
        }
        "slack" => {
            let token = opt_text("token")?.filter(|t| !t.is_empty());
            let webhook_url = opt_text("url")?.filter(|t| !t.is_empty());
            if token.is_none() && webhook_url.is_none() {
                return Err((
                    "handler".into(),
                    "a slack handler needs `token` (Web API) or `url` (incoming webhook)".into(),
                ));
            }
            HandlerKind::Slack(SlackSpec {
                token,
                channel: opt_text("channel")?.unwrap_or_else(|| "#alerts".into()),
                api_url: opt_text("api_url")?
                    .unwrap_or_else(|| "https://slack.com/api".into())
                    .trim_end_matches('/')
                    .to_owned(),
                webhook_url,
                text_template: opt_text("text_template")?
                    .unwrap_or_else(|| "slack.text.tpl".into()),
            })
        }
        _ => HandlerKind::Command {
            command: opt_text("command")?
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| {
                    (
                        "handler".to_owned(),
                        "a command handler needs `command`".to_owned(),
                    )
                })?,
            min_interval: match get("min_interval") {
                Some(v) => opsbro_config::parse_duration(v)
                    .map_err(|e| ("handler.min_interval".to_owned(), e))?,
                None => Duration::ZERO,
            },
        },
    };
    Ok(HandlerSpec {
        name,
        pack: pack.to_owned(),
        file: file.to_owned(),
        kind,
        severities,
        events,
        retries: match get("retries") {
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n <= 20)
                .ok_or_else(|| {
                    (
                        "handler.retries".to_owned(),
                        "retries must be 0 to 20".to_owned(),
                    )
                })?,
            None => 3,
        },
        timeout: match get("timeout") {
            Some(v) => positive(v, "handler.timeout")?,
            None => Duration::from_secs(30),
        },
        enabled: match get("enabled") {
            None => true,
            Some(_) => flag("enabled")?,
        },
    })
}

/// `host:port` of a TCP check (`[v6]:port` too).
fn tcp_address(text: &str, path: &str) -> Result<String, Problem> {
    let bad = || {
        (
            path.to_owned(),
            format!("`{text}` is not host:port (e.g. 127.0.0.1:22, db.local:5432, [::1]:80)"),
        )
    };
    let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok(text.trim().to_owned())
}

/// The URL of an HTTP check: `http://` or `https://` and a host.
fn http_url(text: &str, path: &str) -> Result<String, Problem> {
    let url = text.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !url.contains(char::is_whitespace) => {
            Ok(url.to_owned())
        }
        _ => Err((
            path.to_owned(),
            format!("`{text}` is not an http:// or https:// URL"),
        )),
    }
}

/// One of the HTTP check's options.
fn http_option(probe: &mut HttpProbe, key: &str, v: &Yaml) -> Result<(), Problem> {
    let path = format!("check.{key}");
    match key {
        "method" => {
            let m = text(v, &path)?.trim().to_ascii_uppercase();
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err((path, format!("`{m}` is not an HTTP method")));
            }
            probe.method = m;
        }
        "header" => {
            // Consul's shape: a name → a value or a list of values.
            let map = v.as_mapping().ok_or_else(|| {
                (
                    path.clone(),
                    "header maps names to a value or a list of values".to_owned(),
                )
            })?;
            for (name, values) in map {
                let name = name.as_str().unwrap_or_default().to_owned();
                let ok_name = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                if !ok_name {
                    return Err((path, format!("`{name}` is not a header name")));
                }
                let values = match values {
                    Yaml::Sequence(items) => items
                        .iter()
                        .map(|i| text(i, &format!("{path}.{name}")))
                        .collect::<Result<Vec<_>, _>>()?,
                    other => vec![text(other, &format!("{path}.{name}"))?],
                };
                for value in values {
                    if value.contains(['\r', '\n']) {
                        return Err((path, format!("the value of `{name}` has a line break")));
                    }
                    probe.headers.push((name.clone(), value));
                }
            }
        }
        "body" => probe.body = Some(text(v, &path)?),
        "expect_body" => probe.expect_body = Some(text(v, &path)?),
        "tls_skip_verify" => {
            probe.tls_skip_verify = v
                .as_bool()
                .ok_or_else(|| (path.clone(), "tls_skip_verify is true or false".to_owned()))?;
        }
        "expect_status" => {
            let t = text(v, &path)?;
            let range = match t.split_once('-') {
                Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                None => t.trim().parse().ok().map(|n| (n, n)),
            };
            match range {
                Some((a, b)) if (100..=599).contains(&a) && (a..=599).contains(&b) => {
                    probe.expect_status = (a, b);
                }
                _ => {
                    return Err((
                        path,
                        format!("`{t}` is not a status or a range of statuses (e.g. 200, 200-399)"),
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod native_tests {
    use super::*;

    fn parse(yaml: &str) -> Result<CheckSpec, Problem> {
        let body: Yaml = serde_yaml::from_str(yaml).expect("yaml");
        parse_check(&body, "p", "c", "c.yml", &|_| Ok(())).map(|(spec, _)| spec)
    }

    #[test]
    fn http_checks_take_consul_options_and_tcp_checks_an_address() {
        let spec = parse(
            "http: https://example.test/health\nmethod: post\nheader: {X-A: [one, two], X-B: three}\nbody: ping\nexpect_status: 200-399\nexpect_body: pong\ntls_skip_verify: true\n",
        )
        .expect("http");
        let CheckKind::Http(p) = spec.kind else {
            panic!("{:?}", spec.kind)
        };
        assert_eq!(p.method, "POST");
        assert_eq!(p.expect_status, (200, 399));
        assert_eq!(p.headers.len(), 3);
        assert_eq!(p.body.as_deref(), Some("ping"));
        assert!(p.tls_skip_verify);
        let spec = parse("http: http://127.0.0.1:8080/\nexpect_status: 204\n").expect("204");
        assert!(matches!(
            spec.kind,
            CheckKind::Http(HttpProbe {
                expect_status: (204, 204),
                ..
            })
        ));
        let spec = parse("tcp: '[::1]:5432'\n").expect("tcp");
        assert!(matches!(spec.kind, CheckKind::Tcp { address } if address == "[::1]:5432"));
        let spec = parse("ttl: 90s\n").expect("ttl");
        assert_eq!(
            spec.kind,
            CheckKind::Ttl {
                ttl: Duration::from_secs(90)
            }
        );
        // A script check keeps free-form keys named like HTTP options (its `$macro$`s).
        let spec = parse("script: 'echo $body$'\nbody: text\n").expect("script");
        assert!(matches!(spec.kind, CheckKind::Script { .. }));
    }

    #[test]
    fn bad_native_checks_say_why() {
        for (yaml, why) in [
            ("http: ftp://x\n", "not an http:// or https:// URL"),
            ("http: 'http:///path'\n", "not an http:// or https:// URL"),
            ("tcp: host\n", "not host:port"),
            ("tcp: 'host:0'\n", "not host:port"),
            ("http: http://x/\nexpect_status: 700\n", "not a status"),
            ("http: http://x/\nexpect_status: 300-200\n", "not a status"),
            (
                "http: http://x/\nheader: {'Bad Name': v}\n",
                "not a header name",
            ),
            (
                "http: http://x/\nheader: {X: \"a\\r\\nB: c\"}\n",
                "line break",
            ),
            ("http: http://x/\nmethod: 'GE T'\n", "not an HTTP method"),
            ("http: http://x/\ntcp: 'h:1'\n", "a check is one of"),
            ("tcp: 'h:1'\nexpect_body: x\n", "belongs to an HTTP check"),
            ("ttl: 30s\ntcp: 'h:1'\n", "a check is one of"),
            ("ttl: 30s\ncritical_if: 'True'\n", "a check is one of"),
            ("ttl: 0s\n", "more than 0"),
        ] {
            let e = parse(yaml).expect_err(yaml);
            assert!(e.1.contains(why), "{yaml}: {e:?}");
        }
    }
}
