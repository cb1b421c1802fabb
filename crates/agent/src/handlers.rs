//! Handlers: tell people when something changes. Each handler has its own worker task and a
//! bounded queue, fed by the dispatcher that listens on the event bus; sending (SMTP, slack, a
//! shell command) happens there, with retries and exponential backoff, so a slow SMTP server
//! delays nothing but its own mails. Every delivery, retry, failure and drop is counted and
//! visible in `GET /monitoring/handlers`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use opsbro_api::monitoring::HandlerView;
use opsbro_checks::notify::{NodeInfo, Notification, Renderer};
use opsbro_packs::{HandlerKind, HandlerSpec, MailSpec, SlackSpec};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::eval::SharedView;
use crate::events::EventBus;

/// Notifications waiting per handler; more are dropped (and counted).
const QUEUE: usize = 256;
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Counters of every handler, shared with the API.
#[derive(Clone, Default)]
pub struct HandlersHandle {
    views: Arc<RwLock<BTreeMap<String, HandlerView>>>,
}

impl HandlersHandle {
    /// Every handler with its counters.
    pub fn views(&self) -> Vec<HandlerView> {
        self.views
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut HandlerView)) {
        if let Some(v) = self
            .views
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(name)
        {
            f(v);
        }
    }
}

/// Where templates come from: `templates_dir`, then the handler's pack `templates/`, then the
/// embedded defaults.
#[derive(Clone, Default, PartialEq)]
pub struct Templates {
    /// `templates_dir` from agent.yml.
    pub dir: Option<PathBuf>,
    /// Pack name → its templates.
    pub packs: HashMap<String, BTreeMap<String, String>>,
}

impl Templates {
    /// The text of template `name` for a handler of `pack`.
    pub fn get(&self, pack: &str, name: &str) -> Result<String, String> {
        if name.contains("..") || name.starts_with('/') {
            return Err(format!("template name `{name}` must be a plain file name"));
        }
        if let Some(dir) = &self.dir
            && let Ok(text) = std::fs::read_to_string(dir.join(name))
        {
            return Ok(text);
        }
        if let Some(text) = self.packs.get(pack).and_then(|t| t.get(name)) {
            return Ok(text.clone());
        }
        opsbro_packs::EMBEDDED_TEMPLATES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| (*t).to_owned())
            .ok_or_else(|| {
                format!(
                    "template `{name}` not found (looked in templates_dir, the pack's templates/ and the built-in templates)"
                )
            })
    }
}

/// What the handlers need.
pub struct HandlersSetup {
    /// The objects of every pack: handlers, the checks that name them, templates (replaced by
    /// a reload).
    pub objects: watch::Receiver<Arc<opsbro_packs::PackSet>>,
    /// `templates_dir` from agent.yml.
    pub templates_dir: Option<PathBuf>,
    /// This node (groups are read live from `view`).
    pub node: NodeInfo,
    /// This node's groups.
    pub view: SharedView,
    /// Events to listen to.
    pub bus: EventBus,
    /// Counters for the API.
    pub handle: HandlersHandle,
}

/// A running handler: its spec, the templates it was checked with, and its worker's queue.
struct Running {
    spec: HandlerSpec,
    templates: Templates,
    queue: Option<mpsc::Sender<Value>>,
}

/// What the dispatcher needs to (re)start workers.
struct Starter<'a> {
    templates_dir: &'a Option<PathBuf>,
    renderer: &'a Arc<Renderer>,
    handle: &'a HandlersHandle,
    tracker: &'a tokio_util::task::TaskTracker,
    shutdown: &'a CancellationToken,
}

impl Starter<'_> {
    /// The handlers of `objects`. One whose spec and templates are unchanged keeps its worker;
    /// others get a new one (the old one ends once its queue is sent: dropping its sender).
    /// Counters of a handler still there are kept.
    fn build(&self, objects: &opsbro_packs::PackSet, mut old: Vec<Running>) -> Vec<Running> {
        let templates = Templates {
            dir: self.templates_dir.clone(),
            packs: objects
                .packs
                .values()
                .map(|p| (p.name.clone(), p.templates.clone()))
                .collect(),
        };
        let mut running = Vec::new();
        for spec in objects.handlers() {
            if let Some(i) = old
                .iter()
                .position(|r| r.spec == *spec && r.templates == templates)
            {
                running.push(old.swap_remove(i));
                continue;
            }
            let problem = validate(spec, &templates, self.renderer).err();
            if let Some(p) = &problem {
                tracing::error!(handler = %spec.name, "handler cannot send: {p}");
            }
            {
                let mut views = self
                    .handle
                    .views
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                let view = views
                    .entry(spec.name.clone())
                    .or_insert_with(|| HandlerView {
                        name: spec.name.clone(),
                        pack: spec.pack.clone(),
                        kind: String::new(),
                        enabled: false,
                        severities: Vec::new(),
                        events: Vec::new(),
                        sent: 0,
                        failed: 0,
                        retried: 0,
                        dropped: 0,
                        last_error: None,
                        last_sent_ms: None,
                    });
                view.kind = spec.kind.type_name().into();
                view.enabled = spec.enabled;
                view.severities = spec.severities.iter().map(|s| s.as_str().into()).collect();
                view.events = spec.events.iter().map(|e| e.as_str().into()).collect();
                view.last_error = problem.clone();
            }
            let queue = (spec.enabled && problem.is_none()).then(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let worker = Worker {
                    spec: spec.clone(),
                    templates: templates.clone(),
                    renderer: self.renderer.clone(),
                    handle: self.handle.clone(),
                    http: None,
                    mailer: None,
                };
                self.tracker
                    .spawn(worker.run(rx, self.shutdown.child_token()));
                tx
            });
            running.push(Running {
                spec: spec.clone(),
                templates: templates.clone(),
                queue,
            });
        }
        self.handle
            .views
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| running.iter().any(|r| &r.spec.name == name));
        running
    }
}

/// Check name → the handlers it names.
fn check_handlers(objects: &opsbro_packs::PackSet) -> HashMap<String, Vec<String>> {
    objects
        .checks()
        .map(|c| (c.name.clone(), c.handlers.clone()))
        .collect()
}

/// Start one worker per handler and the dispatcher; all stop with `shutdown`. A reload
/// (new `objects`) starts, keeps or ends workers to match.
pub fn start(
    setup: HandlersSetup,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) {
    let HandlersSetup {
        mut objects,
        templates_dir,
        node,
        view,
        bus,
        handle,
    } = setup;
    let renderer = Arc::new(Renderer::new());
    let tracker = tracker.clone();
    let mut queues = Starter {
        templates_dir: &templates_dir,
        renderer: &renderer,
        handle: &handle,
        tracker: &tracker,
        shutdown: &shutdown,
    }
    .build(&objects.borrow_and_update(), Vec::new());
    let mut check_handlers = check_handlers(&objects.borrow());
    let mut events = bus.subscribe_notifications();
    tracker.clone().spawn(async move {
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                Ok(()) = objects.changed() => {
                    let set = objects.borrow_and_update().clone();
                    queues = Starter {
                        templates_dir: &templates_dir,
                        renderer: &renderer,
                        handle: &handle,
                        tracker: &tracker,
                        shutdown: &shutdown,
                    }
                    .build(&set, std::mem::take(&mut queues));
                    check_handlers = self::check_handlers(&set);
                    continue;
                }
                e = events.recv() => e,
            };
            let event = match event {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "handlers fell behind the event bus");
                    bus.record_dropped(n);
                    for r in &queues {
                        handle.update(&r.spec.name, |v| v.dropped += n);
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let Some(event) = &event.notification else {
                continue;
            };
            let mut me = node.clone();
            me.groups = opsbro_eval::EvalContext::groups(&view);
            let ctx = event.context(&me, crate::host::unix_ms() / 1000);
            for Running { spec, queue, .. } in &queues {
                let Some(tx) = queue else {
                    continue;
                };
                if !wants(spec, &check_handlers, event) {
                    continue;
                }
                if tx.try_send(ctx.clone()).is_err() {
                    tracing::warn!(handler = %spec.name, "handler queue full: notification dropped");
                    handle.update(&spec.name, |v| v.dropped += 1);
                }
            }
        }
    });
}

/// Whether `spec` is told about `event`: it listens to that kind, and for checks the check
/// names it and the new state is one of its severities.
fn wants(
    spec: &HandlerSpec,
    check_handlers: &HashMap<String, Vec<String>>,
    event: &Notification,
) -> bool {
    if !spec.events.contains(&event.kind()) {
        return false;
    }
    match event {
        Notification::Check { name, state, .. } => {
            spec.severities.contains(state)
                && check_handlers
                    .get(name)
                    .is_some_and(|hs| hs.contains(&spec.name))
        }
        _ => true,
    }
}

/// Templates exist and compile, addresses parse: found at start, not at the first alert.
fn validate(spec: &HandlerSpec, templates: &Templates, renderer: &Renderer) -> Result<(), String> {
    let names: Vec<&str> = match &spec.kind {
        HandlerKind::Mail(m) => {
            m.addr_from
                .parse::<lettre::message::Mailbox>()
                .map_err(|e| format!("addr_from `{}`: {e}", m.addr_from))?;
            for c in &m.contacts {
                c.parse::<lettre::message::Mailbox>()
                    .map_err(|e| format!("contact `{c}`: {e}"))?;
            }
            vec![&m.subject_template, &m.text_template]
        }
        HandlerKind::Slack(s) => vec![&s.text_template],
        HandlerKind::Command { command, .. } => {
            return renderer.check(command).map_err(|e| format!("command: {e}"));
        }
    };
    for n in names {
        let text = templates.get(&spec.pack, n)?;
        renderer.check(&text).map_err(|e| format!("{n}: {e}"))?;
    }
    Ok(())
}

type Mailer = lettre::AsyncSmtpTransport<lettre::Tokio1Executor>;

struct Worker {
    spec: HandlerSpec,
    templates: Templates,
    renderer: Arc<Renderer>,
    handle: HandlersHandle,
    http: Option<reqwest::Client>,
    mailer: Option<Mailer>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Value>, shutdown: CancellationToken) {
        let min_interval = match &self.spec.kind {
            HandlerKind::Command { min_interval, .. } => *min_interval,
            _ => Duration::ZERO,
        };
        let mut last_run: Option<tokio::time::Instant> = None;
        loop {
            let mut ctx = tokio::select! {
                () = shutdown.cancelled() => return,
                c = rx.recv() => match c { Some(c) => c, None => return },
            };
            if let Some(last) = last_run
                && !min_interval.is_zero()
            {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(last + min_interval) => {}
                }
                // Debounce: what arrived meanwhile is merged into the newest notification.
                while let Ok(newer) = rx.try_recv() {
                    self.handle.update(&self.spec.name, |v| v.dropped += 1);
                    ctx = newer;
                }
            }
            last_run = Some(tokio::time::Instant::now());
            self.deliver(&ctx, &shutdown).await;
        }
    }

    /// One notification, with retries and exponential backoff (1 s, 2 s, 4 s, ... ≤ 60 s).
    async fn deliver(&mut self, ctx: &Value, shutdown: &CancellationToken) {
        let name = self.spec.name.clone();
        let mut backoff = Duration::from_secs(1);
        for attempt in 0..=self.spec.retries {
            let result = tokio::time::timeout(self.spec.timeout, self.send(ctx))
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.spec.timeout)));
            match result {
                Ok(()) => {
                    tracing::info!(handler = %name, summary = %ctx["summary"].as_str().unwrap_or_default(), "notification sent");
                    self.handle.update(&name, |v| {
                        v.sent += 1;
                        v.last_sent_ms = Some(crate::host::unix_ms());
                    });
                    return;
                }
                Err(e) if attempt < self.spec.retries => {
                    tracing::warn!(handler = %name, error = %e, retry_in = ?backoff, "notification failed; will retry");
                    self.handle.update(&name, |v| {
                        v.retried += 1;
                        v.last_error = Some(e);
                    });
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tracing::error!(handler = %name, error = %e, "notification failed; giving up");
                    self.handle.update(&name, |v| {
                        v.failed += 1;
                        v.last_error = Some(e);
                    });
                }
            }
        }
    }

    async fn send(&mut self, ctx: &Value) -> Result<(), String> {
        match self.spec.kind.clone() {
            HandlerKind::Mail(m) => self.send_mail(&m, ctx).await,
            HandlerKind::Slack(s) => self.send_slack(&s, ctx).await,
            HandlerKind::Command { command, .. } => self.run_command(&command, ctx).await,
        }
    }

    fn render(&self, template: &str, ctx: &Value) -> Result<String, String> {
        let text = self.templates.get(&self.spec.pack, template)?;
        self.renderer.render_text(&text, ctx)
    }

    async fn send_mail(&mut self, m: &MailSpec, ctx: &Value) -> Result<(), String> {
        use lettre::AsyncTransport;
        let subject = self.render(&m.subject_template, ctx)?;
        let body = self.render(&m.text_template, ctx)?;
        let mut builder = lettre::Message::builder()
            .from(m.addr_from.parse().map_err(|e| format!("addr_from: {e}"))?)
            .subject(subject.lines().next().unwrap_or_default().trim())
            .header(lettre::message::header::ContentType::TEXT_PLAIN);
        for c in &m.contacts {
            builder = builder.to(c.parse().map_err(|e| format!("contact {c}: {e}"))?);
        }
        let message = builder.body(body).map_err(|e| e.to_string())?;
        if self.mailer.is_none() {
            self.mailer = Some(mailer(m, self.spec.timeout)?);
        }
        let Some(mailer) = &self.mailer else {
            return Err("no SMTP transport".into());
        };
        match mailer.send(message).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // A broken pooled connection must not poison the next attempt.
                self.mailer = None;
                Err(format!("SMTP {}:{}: {e}", m.smtp_server, m.smtp_port))
            }
        }
    }

    async fn send_slack(&mut self, s: &SlackSpec, ctx: &Value) -> Result<(), String> {
        let text = self.render(&s.text_template, ctx)?;
        let node = &ctx["node"];
        let mut fields = vec![json!({
            "title": "Node",
            "value": format!("{} ({})", node["name"].as_str().unwrap_or_default(), node["addr"].as_str().unwrap_or_default()),
            "short": true,
        })];
        let subject = match ctx["event"].as_str() {
            Some("check") => Some(("Check", ctx["check"]["display_name"].clone())),
            Some("group") => Some(("Group", ctx["group"].clone())),
            Some("node") => Some(("Member", ctx["member"]["name"].clone())),
            _ => None,
        };
        if let Some((title, value)) = subject {
            fields.push(json!({"title": title, "value": value, "short": true}));
        }
        let attachment = json!({
            "fallback": ctx["summary"],
            "color": ctx["colour"],
            "text": text,
            "fields": fields,
        });
        if self.http.is_none() {
            self.http = Some(
                reqwest::Client::builder()
                    .timeout(self.spec.timeout)
                    .build()
                    .map_err(|e| format!("http client: {e}"))?,
            );
        }
        let Some(http) = &self.http else {
            return Err("no http client".into());
        };
        let request = match (&s.webhook_url, &s.token) {
            (Some(url), _) => http.post(url).json(&json!({ "attachments": [attachment] })),
            (None, Some(token)) => http
                .post(format!("{}/chat.postMessage", s.api_url))
                .bearer_auth(token)
                .json(&json!({
                    "channel": s.channel,
                    "text": "",
                    "attachments": [attachment],
                })),
            (None, None) => return Err("no token and no webhook url".into()),
        };
        let response = request.send().await.map_err(|e| format!("slack: {e}"))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "slack answered {status}: {}",
                body.chars().take(200).collect::<String>()
            ));
        }
        // The Web API answers 200 with `{"ok": false, "error": "..."}` on errors.
        if s.webhook_url.is_none() {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if v["ok"] != Value::Bool(true) {
                return Err(format!(
                    "slack refused the message: {}",
                    v["error"].as_str().unwrap_or("unexpected answer")
                ));
            }
        }
        Ok(())
    }

    async fn run_command(&self, command: &str, ctx: &Value) -> Result<(), String> {
        let line = self.renderer.render_command(command, ctx)?;
        let text = |v: &Value| {
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        };
        let child = tokio::process::Command::new("/bin/sh")
            .args(line.argv())
            .env("OPSBRO_EVENT", text(&ctx["event"]))
            .env("OPSBRO_STATE", text(&ctx["state"]))
            .env("OPSBRO_OLD_STATE", text(&ctx["old_state"]))
            .env("OPSBRO_OUTPUT", text(&ctx["output"]))
            .env("OPSBRO_NODE", text(&ctx["node"]["name"]))
            .env("OPSBRO_CHECK", text(&ctx["check"]["name"]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
        let pid = child.id();
        // The caller's timeout drops this future; kill the group then too.
        let mut guard = crate::host::ProcessGroupGuard::new(pid);
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("command: {e}"))?;
        guard.disarm();
        if out.status.success() {
            Ok(())
        } else {
            let (err, _) = opsbro_checks::nagios::cap_output(&out.stderr);
            Err(format!(
                "command exited with {}: {}",
                out.status,
                err.trim()
            ))
        }
    }
}

/// An SMTP transport: plain, STARTTLS (required, not opportunistic) or implicit TLS, verifying
/// the server against the public roots plus `ca_file`.
fn mailer(m: &MailSpec, timeout: Duration) -> Result<Mailer, String> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    let mut builder = Mailer::builder_dangerous(&m.smtp_server)
        .port(m.smtp_port)
        .timeout(Some(timeout));
    if m.smtps || m.starttls {
        let mut tls = TlsParameters::builder(m.smtp_server.clone());
        if let Some(ca) = &m.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            tls = tls.add_root_certificate(cert);
        }
        let params = tls.build().map_err(|e| format!("TLS: {e}"))?;
        builder = builder.tls(if m.smtps {
            Tls::Wrapper(params)
        } else {
            Tls::Required(params)
        });
    }
    if let (Some(user), Some(pass)) = (&m.smtp_user, &m.smtp_password) {
        builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
    }
    Ok(builder.build())
}
