//! Issue 30: the web UI, driven in a real headless Chromium through chromedriver (WebDriver).
//! The agents are real processes; the page is the one the agent serves at `/ui/`, with its live
//! updates from `/ui/events`.
//!
//! `OPSBRO_UPDATE_SCREENSHOTS=1` writes the screenshots taken here to `docs/screenshots/` (the
//! README shows them).

use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use opsbro_tests::browser::{CHROMIUM, CHROMIUM_ARGS, ChromeDriver};
use opsbro_tests::{Agent, AgentOptions, DEADLINE, http, repo_path, stderr, stdout, wait_for};
use serde_json::{Value, json};

/// A browser session on a fresh chromedriver.
async fn browser() -> (ChromeDriver, Client) {
    let driver = ChromeDriver::start().expect("chromedriver");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": CHROMIUM, "args": CHROMIUM_ARGS }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .expect("a WebDriver session");
    (driver, client)
}

/// Run `script` (which `return`s a value) in the page.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("script")
}

/// Wait until `script` returns something other than null or false; answers it.
async fn wait_js(c: &Client, what: &str, deadline: Duration, script: &str) -> Value {
    let end = Instant::now() + deadline;
    loop {
        let v = js(c, script).await;
        if !v.is_null() && v != Value::Bool(false) {
            return v;
        }
        if Instant::now() > end {
            let page = js(c, "return document.body.innerText").await;
            panic!("timed out waiting for {what}; the page shows:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the error banner.
async fn banner(c: &Client) -> String {
    js(c, "return document.getElementById('banner').innerText")
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Take a screenshot (a PNG); keep it under docs/screenshots/ when asked to.
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if std::env::var_os("OPSBRO_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        let dir = repo_path("docs/screenshots");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let el = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    el.clear().await.expect("clear");
    el.send_keys(text).await.expect("type");
}

fn join(agents: &[&Agent]) {
    for joiner in &agents[1..] {
        let out = joiner.cli(["gossip", "join", &agents[0].gossip.to_string()]);
        assert!(out.status.success(), "join: {}", stderr(&out));
    }
    let n = agents.len().to_string();
    for a in agents {
        let out = a.cli(["gossip", "wait-members", "--count", &n, "--timeout", "60"]);
        assert!(out.status.success(), "wait-members: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_follows_the_cluster_live_deaths_and_critical_checks_without_reload() {
    let dir = tempfile::tempdir().expect("tmp");
    let flag = dir.path().join("flag");
    let pack = dir.path().join("site/monitoring");
    std::fs::create_dir_all(&pack).expect("mkdir");
    std::fs::write(
        pack.join("disk-flag.yml"),
        format!(
            "check:\n  interval: 500ms\n  critical_if: \"file_exists('{}')\"\n  \
             critical_output: \"'the flag file is there'\"\n  ok_output: \"'no flag file'\"\n",
            flag.display()
        ),
    )
    .expect("pack");
    let alpha = Agent::start_with(AgentOptions::default().name("alpha").config(&format!(
        "groups: [web, front]\npacks_dirs: [{}]\n",
        dir.path().display()
    )))
    .expect("alpha");
    let bravo = Agent::start_with(
        AgentOptions::default()
            .name("bravo")
            .config("groups: [db]\n"),
    )
    .expect("bravo");
    let mut charlie = Agent::start_with(
        AgentOptions::default()
            .name("charlie")
            .config("groups: [cache]\n"),
    )
    .expect("charlie");
    join(&[&alpha, &bravo, &charlie]);

    let (_driver, c) = browser().await;
    c.goto(&format!("http://{}/ui/", alpha.api))
        .await
        .expect("open the UI");
    wait_js(
        &c,
        "3 alive members in the overview",
        DEADLINE,
        "return document.querySelectorAll('tr.member[data-state=alive]').length === 3",
    )
    .await;
    let names = js(
        &c,
        "return [...document.querySelectorAll('tr.member')].map(r => r.dataset.name).sort()",
    )
    .await;
    assert_eq!(names, json!(["alpha", "bravo", "charlie"]));
    let counts = js(&c, "return document.querySelector('.counts').innerText").await;
    assert!(
        counts.as_str().unwrap_or("").contains("alive 3"),
        "{counts}"
    );
    wait_js(
        &c,
        "the live stream",
        DEADLINE,
        "return document.getElementById('live').dataset.state === 'on'",
    )
    .await;
    screenshot(&c, "overview").await;
    // Search narrows the list.
    type_into(&c, "#member-search", "cache").await;
    wait_js(
        &c,
        "only charlie (group cache)",
        DEADLINE,
        "const r = document.querySelectorAll('tr.member'); return r.length === 1 && r[0].dataset.name === 'charlie'",
    )
    .await;
    type_into(&c, "#member-search", "").await;
    // Marks this page load: a reload would lose it.
    js(&c, "window.sameLoad = 'yes'; return null").await;

    // kill -9 charlie: alpha's gossip finds it dead, the page hears it from the event stream.
    charlie.signal("KILL").expect("kill charlie");
    charlie.wait_exit(DEADLINE).expect("charlie gone");
    wait_js(
        &c,
        "charlie shown dead",
        Duration::from_secs(60),
        "const r = document.querySelector('tr.member[data-name=charlie]'); return r && r.dataset.state === 'dead'",
    )
    .await;
    assert_eq!(js(&c, "return window.sameLoad").await, json!("yes"));
    let body = js(
        &c,
        "return document.querySelector('tr.member[data-name=charlie]').innerText",
    )
    .await;
    assert!(
        body.as_str().unwrap_or("").to_lowercase().contains("dead"),
        "{body}"
    );

    // A check turning critical, on the checks page, still without a reload.
    click(&c, "nav a[data-page=checks]").await;
    wait_js(
        &c,
        "the checks page with alpha's check",
        DEADLINE,
        "return document.querySelector('tr.check[data-name$=\"disk-flag\"]')",
    )
    .await;
    std::fs::write(&flag, "").expect("raise the flag");
    let row = wait_js(
        &c,
        "the check shown critical",
        DEADLINE,
        "const r = document.querySelector('tr.check[data-name$=\"disk-flag\"]'); return r && r.dataset.state === 'critical' && r.innerText",
    )
    .await;
    assert!(row.as_str().unwrap_or("").contains("alpha"), "{row}");
    // Problems come first.
    let first = js(
        &c,
        "return document.querySelector('tr.check').dataset.state",
    )
    .await;
    assert_eq!(first, json!("critical"));
    assert_eq!(js(&c, "return window.sameLoad").await, json!("yes"));
    screenshot(&c, "checks").await;

    // The node page: its checks with outputs, collectors.
    c.goto(&format!("http://{}/ui/#/node/alpha", alpha.api))
        .await
        .expect("node page");
    let output = wait_js(
        &c,
        "alpha's checks with outputs",
        DEADLINE,
        "const r = document.querySelector('tr.check[data-state=critical] pre.output'); return r && r.innerText",
    )
    .await;
    assert!(
        output
            .as_str()
            .unwrap_or("")
            .contains("the flag file is there"),
        "{output}"
    );
    wait_js(
        &c,
        "alpha's collectors",
        DEADLINE,
        "return document.querySelectorAll('details.collector').length > 0",
    )
    .await;
    screenshot(&c, "node").await;

    // The event feed shows what happened since the page opened (the check going critical).
    click(&c, "nav a[data-page=events]").await;
    std::fs::remove_file(&flag).expect("lower the flag");
    wait_js(
        &c,
        "the check event in the feed",
        DEADLINE,
        "return [...document.querySelectorAll('li.event[data-channel=check]')].some(e => e.innerText.includes('critical → ok'))",
    )
    .await;
    screenshot(&c, "events").await;

    // Dark theme, by the toggle.
    click(&c, "nav a[data-page=overview]").await;
    click(&c, "#theme").await;
    assert_eq!(
        js(&c, "return document.documentElement.dataset.theme").await,
        json!("dark")
    );
    wait_js(
        &c,
        "the overview again",
        DEADLINE,
        "return document.querySelectorAll('tr.member').length === 3",
    )
    .await;
    screenshot(&c, "overview-dark").await;
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_the_page_says_401_and_with_it_kv_writes_reach_the_cli() {
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("kv-ui")
            .config("api:\n  anonymous_reads: false\n"),
    )
    .expect("agent");
    // The page itself loads without the token, with its security headers.
    let page = http(agent.api, "GET", "/ui/", &[], b"").expect("GET /ui/");
    assert_eq!(page.status, 200);
    let csp = page
        .headers
        .iter()
        .find(|(k, _)| k == "content-security-policy")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    for data in ["/agent/members", "/ui/events"] {
        assert_eq!(
            http(agent.api, "GET", data, &[], b"").expect(data).status,
            401,
            "{data}"
        );
    }

    let (_driver, c) = browser().await;
    c.goto(&format!("http://{}/ui/", agent.api))
        .await
        .expect("open the UI");
    let why = wait_js(
        &c,
        "the token prompt",
        DEADLINE,
        "const d = document.getElementById('token-dialog'); return d.open && document.getElementById('token-why').innerText",
    )
    .await;
    let why = why.as_str().unwrap_or_default().to_owned();
    assert!(why.contains("401"), "{why}");
    assert!(why.contains("api.token"), "says where the token is: {why}");
    assert!(banner(&c).await.contains("Not authorized (401)"));
    screenshot(&c, "token").await;

    type_into(&c, "#token-input", &agent.token()).await;
    click(&c, "#token-save").await;
    wait_js(
        &c,
        "the overview with the token",
        DEADLINE,
        "return document.querySelectorAll('tr.member[data-state=alive]').length === 1",
    )
    .await;
    // Kept for the tab, never in the URL.
    assert_eq!(
        js(&c, "return sessionStorage.getItem('opsbro.token')").await,
        json!(agent.token())
    );
    assert!(
        !js(&c, "return location.href")
            .await
            .as_str()
            .unwrap_or_default()
            .contains(&agent.token())
    );

    // A key written in the page is the store's.
    click(&c, "nav a[data-page=kv]").await;
    type_into(&c, "#kv-new-key", "ui/greeting").await;
    type_into(&c, "#kv-new-value", "{\"hello\": \"from the browser\"}").await;
    click(&c, "#kv-create").await;
    wait_js(
        &c,
        "the new key shown",
        DEADLINE,
        "const p = document.querySelector('pre.value'); return p && p.innerText.includes('from the browser')",
    )
    .await;
    let out = agent.cli(["kv", "get", "ui/greeting"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("{\"hello\": \"from the browser\"}"),
        "{}",
        stdout(&out)
    );
    screenshot(&c, "kv").await;

    // Someone else writes it: saving the page's stale copy is refused, and said so.
    let out = agent.cli(["kv", "put", "ui/greeting", "changed elsewhere"]);
    assert!(out.status.success(), "{}", stderr(&out));
    type_into(&c, "#kv-value", "the page's edit").await;
    click(&c, "#kv-save").await;
    let message = wait_js(
        &c,
        "the CAS refusal",
        DEADLINE,
        "const t = document.getElementById('banner').innerText; return t.includes('CAS mismatch') && t",
    )
    .await;
    assert!(
        message
            .as_str()
            .unwrap_or("")
            .contains("changed by someone else"),
        "{message}"
    );
    assert!(stdout(&agent.cli(["kv", "get", "ui/greeting"])).contains("changed elsewhere"));

    // Delete, after a confirmation: through the `ui/` folder.
    click(&c, "a.folder").await;
    wait_js(
        &c,
        "the ui/ folder",
        DEADLINE,
        "return document.querySelector(\"button.key[data-key='ui/greeting']\")",
    )
    .await;
    click(&c, "button.key[data-key='ui/greeting']").await;
    wait_js(
        &c,
        "the fresh value",
        DEADLINE,
        "const p = document.querySelector('pre.value'); return p && p.innerText.includes('changed elsewhere')",
    )
    .await;
    click(&c, "#kv-delete").await;
    click(&c, "#kv-delete-confirm").await;
    wait_js(
        &c,
        "the delete done",
        DEADLINE,
        "return document.querySelector('.kv-viewer').innerText.includes('Deleted ui/greeting')",
    )
    .await;
    assert!(!agent.cli(["kv", "get", "ui/greeting"]).status.success());
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statsd_counter_is_charted_and_a_stopped_agent_is_said_unreachable() {
    let mut agent = Agent::start_with(
        AgentOptions::default()
            .name("charts")
            .config("statsd:\n  enabled: true\n  port: 0\n  interval: 1s\n"),
    )
    .expect("agent");
    let statsd = agent.statsd.expect("statsd address");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let target = "stats.counters.ui.hits.count";
    // The store keeps minute records: one point is there after the first flush.
    let mut seen = 0;
    wait_for("counter points in the store", DEADLINE, || {
        socket.send_to(b"ui.hits:5|c", statsd).expect("send");
        let answer = http(
            agent.api,
            "GET",
            &format!("/render?format=json&from=-10min&target={target}"),
            &[],
            b"",
        )
        .ok()?;
        let series: Value = serde_json::from_str(&answer.body).ok()?;
        let points = series[0]["datapoints"].as_array()?;
        seen = points.iter().filter(|p| !p[0].is_null()).count();
        (seen >= 1).then_some(())
    })
    .expect("statsd points");
    assert!(seen >= 1);

    let (_driver, c) = browser().await;
    c.goto(&format!("http://{}/ui/#/metrics/{target}", agent.api))
        .await
        .expect("open the metrics page");
    let drawn = wait_js(
        &c,
        "the chart",
        DEADLINE,
        "const f = document.querySelector('figure.chart[data-points]'); return f && Number(f.dataset.points) > 0 && window.opsbroCharts && window.opsbroCharts.length && window.opsbroCharts[0].data[1].filter(v => v !== null).length",
    )
    .await;
    assert!(drawn.as_u64().unwrap_or(0) >= 1, "{drawn}");
    // The series is on the canvas: pixels of its colour (#2563eb), its line or its points.
    let pixels = js(
        &c,
        "const cv = document.querySelector('figure.chart canvas'); const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) { if (Math.abs(d[i] - 37) < 30 && Math.abs(d[i+1] - 99) < 30 && Math.abs(d[i+2] - 235) < 30 && d[i+3] > 128) n++; } return n",
    )
    .await;
    assert!(pixels.as_u64().unwrap_or(0) > 10, "series pixels: {pixels}");
    // The series tree lists the counter's branch.
    wait_js(
        &c,
        "the series tree",
        DEADLINE,
        "return [...document.querySelectorAll('ul.tree button')].some(b => b.innerText.includes('stats'))",
    )
    .await;
    screenshot(&c, "metrics").await;

    // Compliance states need the token even with anonymous reads: the page asks for it.
    click(&c, "nav a[data-page=generators]").await;
    let why = wait_js(
        &c,
        "the token prompt for compliance",
        DEADLINE,
        "const d = document.getElementById('token-dialog'); return d.open && document.getElementById('token-why').innerText",
    )
    .await;
    assert!(why.as_str().unwrap_or("").contains("401"), "{why}");
    type_into(&c, "#token-input", &agent.token()).await;
    click(&c, "#token-save").await;
    wait_js(
        &c,
        "the generators page",
        DEADLINE,
        "const v = document.getElementById('view').innerText; return !v.includes('Loading') && !v.includes('Could not load')",
    )
    .await;
    screenshot(&c, "generators").await;

    // The agent stops: the page says so instead of showing stale data silently.
    click(&c, "nav a[data-page=metrics]").await;
    agent.signal("KILL").expect("kill");
    agent.wait_exit(DEADLINE).expect("stopped");
    wait_js(
        &c,
        "the live indicator off",
        DEADLINE,
        "return document.getElementById('live').dataset.state === 'off'",
    )
    .await;
    type_into(&c, "#target", target).await;
    click(&c, "#draw").await;
    let message = wait_js(
        &c,
        "the unreachable message",
        DEADLINE,
        "const t = document.getElementById('banner').innerText; return t.includes('Agent unreachable') && t",
    )
    .await;
    assert!(
        message.as_str().unwrap_or("").contains("Agent unreachable"),
        "{message}"
    );
    c.close().await.expect("close");
}
