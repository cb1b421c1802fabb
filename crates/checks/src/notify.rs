//! What handlers are told, and how their text is rendered.
//!
//! A [`Notification`] (a check changed state, a group was added or removed, a member changed
//! state) becomes a template context ([`Notification::context`]) with the same variables for
//! every handler: `event`, `node` (this agent), `time`, `state`, `old_state`, `output`, and
//! `check` / `group` + `modification` / `member` by kind. [`Renderer`] renders mail and slack
//! text as written, and shell commands with every interpolated value passed as a positional
//! argument (never spliced into the text), so a check output or member name such as
//! `$(rm -rf /)` stays text.

use minijinja::{Environment, UndefinedBehavior};

use crate::shell::ShellCommand;
use serde_json::{Value, json};

use crate::CheckState;

/// What a handler can subscribe to (`events:` in a handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A check changed state.
    Check,
    /// A group was added to or removed from this node.
    Group,
    /// A cluster member joined, died, left or came back.
    Node,
    /// A compliance object changed state in a way worth telling (the original's transitions).
    Compliance,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 4] = [
        EventKind::Check,
        EventKind::Group,
        EventKind::Node,
        EventKind::Compliance,
    ];

    /// The name used in `events:` and templates.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Check => "check",
            EventKind::Group => "group",
            EventKind::Node => "node",
            EventKind::Compliance => "compliance",
        }
    }

    /// Parse a kind name.
    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == text.trim().to_ascii_lowercase())
    }
}

/// This agent, as templates see it (`node`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// Uuid.
    pub uuid: String,
    /// Gossip address.
    pub addr: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// Something handlers may be told about.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// A check's confirmed state changed.
    Check {
        /// Check name (`<pack>/<file>`).
        name: String,
        /// Display name.
        display_name: String,
        /// Pack.
        pack: String,
        /// New state.
        state: CheckState,
        /// Previous state.
        old_state: CheckState,
        /// Output of the run that changed it.
        output: String,
        /// Long output.
        long_output: String,
    },
    /// A group was added to (`added = true`) or removed from this node.
    Group {
        /// The group.
        group: String,
        /// Added or removed.
        added: bool,
    },
    /// A member changed state (`alive`, `dead`, `left`).
    Node {
        /// Its name.
        name: String,
        /// Its uuid.
        uuid: String,
        /// Its address.
        addr: String,
        /// New state.
        state: String,
        /// Previous state (`new` for a member never seen before).
        old_state: String,
    },
    /// A compliance object of this node changed state.
    Compliance {
        /// Object name (`<pack>/<file>`).
        name: String,
        /// Its `name` key.
        display_name: String,
        /// `audit` or `enforcing`.
        mode: String,
        /// New state (`COMPLIANT`, `FIXED`, `ERROR`...).
        state: String,
        /// Previous state.
        old_state: String,
        /// What its rules reported, one line each.
        output: String,
    },
}

impl Notification {
    /// The event itself as JSON: the websocket payload, and `check` / `member` in templates.
    pub fn payload(&self) -> Value {
        match self {
            Notification::Check {
                name,
                display_name,
                pack,
                state,
                old_state,
                output,
                long_output,
            } => json!({
                "name": name,
                "display_name": display_name,
                "pack": pack,
                "state": state.as_str(),
                "old_state": old_state.as_str(),
                "state_id": state.state_id(),
                "output": output,
                "long_output": long_output,
            }),
            Notification::Group { group, added } => json!({
                "group": group,
                "action": if *added { "add" } else { "remove" },
            }),
            Notification::Node {
                name,
                uuid,
                addr,
                state,
                old_state,
            } => json!({
                "name": name,
                "uuid": uuid,
                "addr": addr,
                "state": state,
                "old_state": old_state,
            }),
            Notification::Compliance {
                name,
                display_name,
                mode,
                state,
                old_state,
                output,
            } => json!({
                "name": name,
                "display_name": display_name,
                "mode": mode,
                "state": state,
                "old_state": old_state,
                "output": output,
            }),
        }
    }

    /// Which subscription it belongs to.
    pub fn kind(&self) -> EventKind {
        match self {
            Notification::Check { .. } => EventKind::Check,
            Notification::Group { .. } => EventKind::Group,
            Notification::Node { .. } => EventKind::Node,
            Notification::Compliance { .. } => EventKind::Compliance,
        }
    }

    /// The new check state, for `severities` (None for other kinds).
    pub fn check_state(&self) -> Option<CheckState> {
        match self {
            Notification::Check { state, .. } => Some(*state),
            _ => None,
        }
    }

    /// Slack attachment colour: good (green), warning (yellow), danger (red) or grey.
    pub fn colour(&self) -> &'static str {
        match self {
            Notification::Check { state, .. } => match state {
                CheckState::Ok => "good",
                CheckState::Warning => "warning",
                CheckState::Critical => "danger",
                CheckState::Unknown | CheckState::Pending => "#808080",
            },
            Notification::Group { added, .. } => {
                if *added {
                    "good"
                } else {
                    "danger"
                }
            }
            Notification::Node { state, .. } => {
                if state == "alive" {
                    "good"
                } else {
                    "danger"
                }
            }
            Notification::Compliance { state, .. } => match state.as_str() {
                "COMPLIANT" | "FIXED" => "good",
                "ERROR" => "danger",
                _ => "#808080",
            },
        }
    }

    /// One line for logs and slack fallbacks.
    pub fn summary(&self) -> String {
        match self {
            Notification::Check {
                display_name,
                state,
                old_state,
                ..
            } => format!(
                "check {display_name} switched from {} to {}",
                old_state.as_str().to_uppercase(),
                state.as_str().to_uppercase()
            ),
            Notification::Group { group, added } => format!(
                "group {group} was {}",
                if *added { "added" } else { "removed" }
            ),
            Notification::Node {
                name,
                state,
                old_state,
                ..
            } => format!("node {name} is {state} (was {old_state})"),
            // The original's compliance subject and text.
            Notification::Compliance {
                display_name,
                state,
                old_state,
                ..
            } => format!(
                "The compliance {display_name} did change state from {old_state} to {state}"
            ),
        }
    }

    /// The template context: `event`, `node`, `time` (`YYYY-MM-DD HH:MM:SS`, UTC),
    /// `timestamp`, `state`, `old_state`, `output`, `summary`, `colour`, and by kind `check`
    /// {name, display_name, pack, state, old_state, output, long_output}, `group` +
    /// `modification` (`add`/`remove`), `member` {name, uuid, addr, state, old_state}, or
    /// `compliance` {name, display_name, mode, state, old_state, output}.
    pub fn context(&self, node: &NodeInfo, unix_secs: u64) -> Value {
        let mut ctx = json!({
            "event": self.kind().as_str(),
            "node": {
                "name": node.name,
                "display_name": node.display_name,
                "uuid": node.uuid,
                "addr": node.addr,
                "groups": node.groups,
            },
            "time": format_time(unix_secs),
            "timestamp": unix_secs,
            "summary": self.summary(),
            "colour": self.colour(),
        });
        let extra = match self {
            Notification::Check {
                state,
                old_state,
                output,
                ..
            } => json!({
                "state": state.as_str(),
                "old_state": old_state.as_str(),
                "output": output,
                "check": self.payload(),
            }),
            Notification::Group { group, added } => {
                let modification = if *added { "add" } else { "remove" };
                json!({
                    "state": modification,
                    "old_state": "",
                    "output": self.summary(),
                    "group": group,
                    "modification": modification,
                })
            }
            Notification::Node {
                state, old_state, ..
            } => json!({
                "state": state,
                "old_state": old_state,
                "output": self.summary(),
                "member": self.payload(),
            }),
            Notification::Compliance {
                state,
                old_state,
                output,
                ..
            } => json!({
                "state": state,
                "old_state": old_state,
                "output": output,
                "compliance": self.payload(),
            }),
        };
        if let (Some(c), Value::Object(e)) = (ctx.as_object_mut(), extra) {
            c.extend(e);
        }
        ctx
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for seconds since the Unix epoch.
pub fn format_time(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's days → civil date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

thread_local! {
    /// Values of the command being rendered (see [`Renderer::render_command`]).
    static COMMAND_VALUES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Renders handler templates (minijinja, Jinja2 syntax).
pub struct Renderer {
    text: Environment<'static>,
    command: Environment<'static>,
}

impl Default for Renderer {
    fn default() -> Self {
        Renderer::new()
    }
}

impl Renderer {
    /// Environments with the built-in filters; undefined variables (and their attributes) render
    /// empty, as in opsbro's Jinja2 templates.
    pub fn new() -> Renderer {
        let mut text = Environment::new();
        text.set_undefined_behavior(UndefinedBehavior::Chainable);
        let mut command = Environment::new();
        command.set_undefined_behavior(UndefinedBehavior::Chainable);
        // A value is never written into the command text: it goes to the argument list, and
        // the text gets a marker that `shell::place_arguments` turns into `${N}`.
        command.set_formatter(|out, _state, value| {
            let text = if value.is_undefined() || value.is_none() {
                String::new()
            } else {
                value.to_string()
            };
            let index = COMMAND_VALUES.with(|v| {
                let mut v = v.borrow_mut();
                v.push(text);
                v.len() - 1
            });
            out.write_str(&crate::shell::marker(index))
                .map_err(minijinja::Error::from)
        });
        Renderer { text, command }
    }

    /// Check a template's syntax (at load time).
    pub fn check(&self, source: &str) -> Result<(), String> {
        self.text
            .template_from_str(source)
            .map(|_| ())
            .map_err(|e| describe(&e))
    }

    /// Render mail or slack text.
    pub fn render_text(&self, source: &str, ctx: &Value) -> Result<String, String> {
        self.text.render_str(source, ctx).map_err(|e| describe(&e))
    }

    /// Render a shell command: each `{{ value }}` becomes a reference to a positional
    /// parameter holding the value (see [`crate::shell`]), so no value is ever read as shell
    /// code, whatever quotes the template puts around it.
    pub fn render_command(&self, source: &str, ctx: &Value) -> Result<ShellCommand, String> {
        if source.contains([crate::shell::MARK_START, crate::shell::MARK_END]) {
            return Err("a command template cannot contain control characters".into());
        }
        COMMAND_VALUES.with(|v| v.borrow_mut().clear());
        let rendered = self.command.render_str(source, ctx);
        let values = COMMAND_VALUES.with(|v| std::mem::take(&mut *v.borrow_mut()));
        let text = rendered.map_err(|e| describe(&e))?;
        crate::shell::place_arguments(&text, values, crate::shell::Unquoted::Word)
            .map_err(|e| e.to_string())
    }
}

fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!(
            "template error at line {line}: {}",
            e.detail().unwrap_or(&e.kind().to_string())
        ),
        None => format!("template error: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeInfo {
        NodeInfo {
            name: "web-1".into(),
            display_name: "Web 1".into(),
            uuid: "u".into(),
            addr: "10.0.0.1:6768".into(),
            groups: vec!["linux".into()],
        }
    }

    fn check(state: CheckState, output: &str) -> Notification {
        Notification::Check {
            name: "linux/cpu".into(),
            display_name: "cpu".into(),
            pack: "linux".into(),
            state,
            old_state: CheckState::Ok,
            output: output.into(),
            long_output: String::new(),
        }
    }

    #[test]
    fn the_original_mail_templates_render() {
        let r = Renderer::new();
        let ctx = check(CheckState::Critical, "CPU 99%").context(&node(), 86_400 * 365);
        assert_eq!(
            r.render_text(
                "Check {{check['name']}} switched to {{check['state']}}",
                &ctx
            )
            .expect("render"),
            "Check linux/cpu switched to critical"
        );
        assert_eq!(
            r.render_text(
                "The check switch state at {{time}} with the output:\n{{check.output}} on {{node.name}}",
                &ctx
            )
            .expect("render"),
            "The check switch state at 1971-01-01 00:00:00 with the output:\nCPU 99% on web-1"
        );
    }

    #[test]
    fn commands_pass_every_value_as_an_argument() {
        let r = Renderer::new();
        let ctx = check(CheckState::Warning, "it's $(rm -rf /)").context(&node(), 0);
        let cmd = r
            .render_command(
                "echo {{check.name}} \"{{check.state}}: {{output}}\" >> /tmp/x",
                &ctx,
            )
            .expect("render");
        assert_eq!(cmd.script, r#"echo "${1}" "${2}: ${3}" >> /tmp/x"#);
        assert_eq!(cmd.args, ["linux/cpu", "warning", "it's $(rm -rf /)"]);
        // Loops and filters: one argument per printed value; control flow prints nothing.
        let cmd = r
            .render_command(
                "notify {% for g in node.groups %}{{ g | upper }} {% endfor %}{% if state == 'warning' %}W{% endif %}",
                &ctx,
            )
            .expect("render");
        assert_eq!(cmd.script, r#"notify "${1}" W"#);
        assert_eq!(cmd.args, ["LINUX"]);
        assert!(r.render_command("echo \u{1}0\u{2}", &ctx).is_err());
    }

    #[test]
    fn a_member_named_like_a_command_is_never_run() {
        // Regression (security audit): `echo "member {{member.name}}"` with a node named
        // `$(id>PWNED)` ran `id` as root when values were single-quoted into the text.
        let dir = tempfile::tempdir().expect("tmp");
        let r = Renderer::new();
        let ctx = Notification::Node {
            name: "$(id>PWNED)".into(),
            uuid: "u".into(),
            addr: "10.0.0.9:6768".into(),
            state: "alive".into(),
            old_state: "new".into(),
        }
        .context(&node(), 0);
        let cmd = r
            .render_command("echo \"member {{member.name}}\" >> out", &ctx)
            .expect("render");
        let status = std::process::Command::new("/bin/sh")
            .args(cmd.argv())
            .current_dir(dir.path())
            .status()
            .expect("sh");
        assert!(status.success());
        assert!(
            !dir.path().join("PWNED").exists(),
            "the name ran as a command"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out")).expect("out"),
            "member $(id>PWNED)\n"
        );
    }

    #[test]
    fn template_errors_are_messages() {
        let r = Renderer::new();
        assert!(
            r.check("{% if %}")
                .expect_err("bad")
                .contains("template error")
        );
        assert!(r.check("{{ check.name }}").is_ok());
        assert_eq!(
            r.render_text("[{{ missing.key }}]", &json!({}))
                .expect("lenient"),
            "[]"
        );
    }

    #[test]
    fn group_and_node_contexts() {
        let ctx = Notification::Group {
            group: "redis".into(),
            added: true,
        }
        .context(&node(), 0);
        assert_eq!(ctx["modification"], "add");
        assert_eq!(ctx["output"], "group redis was added");
        let n = Notification::Node {
            name: "db-2".into(),
            uuid: "x".into(),
            addr: "a".into(),
            state: "dead".into(),
            old_state: "alive".into(),
        };
        assert_eq!(n.colour(), "danger");
        assert_eq!(n.context(&node(), 0)["member"]["state"], "dead");
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_795_000_000 + 3_723), "2026-11-18 12:08:43");
    }
}
