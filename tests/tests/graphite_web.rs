//! Issue 27: opsbro's `/render` answers like graphite-web itself. The same points (several
//! series, gaps, counters with a reset, negative values) go to a real carbon-cache read by a real
//! graphite-web (Debian `graphite-carbon` and `graphite-web` 1.1.8, on free ports, temporary
//! storage) and to opsbro's graphite listener; then both are asked `/render` for targets that
//! use every function opsbro implements, and must give the same series names, timestamps and
//! values (within float rounding). The differences that are on purpose are listed in
//! `ON_PURPOSE` with the reason.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{SystemTime, UNIX_EPOCH};

use opsbro_tests::graphite::{Carbon, GraphiteWeb};
use opsbro_tests::services::free_port;
use opsbro_tests::{Agent, AgentOptions, DEADLINE, http, wait_for};
use serde_json::Value;

/// Differences from graphite-web 1.1.8 on purpose (not exercised by the comparison below):
const ON_PURPOSE: &[(&str, &str)] = &[
    (
        "currentAbove/currentBelow/maximumAbove/minimumAbove on a series with no value at all",
        "graphite-web compares None with a number and fails with HTTP 500 on Python 3; opsbro leaves the series out",
    ),
    (
        "useSeriesAbove on a series with a gap",
        "graphite-web calls max() on a list holding None and fails with HTTP 500 on Python 3; opsbro compares the largest known value",
    ),
    (
        "nonNegativeDerivative/perSecond with maxValue or minValue over a gap",
        "graphite-web compares None with the limit and fails with HTTP 500 on Python 3; opsbro reads the gap as a gap",
    ),
    (
        "tags in the JSON",
        "graphite-web adds function tags (aggregatedBy, scale…); opsbro gives the series' own tags (name and those of a tagged name)",
    ),
    (
        "seriesByTag, /tags, /tags/autoComplete",
        "graphite-web needs carbon to post every tagged series to its tag database; opsbro indexes tagged names itself (checked on opsbro alone below)",
    ),
    (
        "/functions",
        "graphite-web 1.1.8 answers 500 on Python 3.11 (inspect.getargspec is gone); opsbro serves graphite-web's description of the functions it implements",
    ),
    (
        "invalid arguments",
        "graphite-web 1.1.8 only logs them by default (ENFORCE_INPUT_VALIDATION = False) and usually fails later with a 500; opsbro always answers 400 — the test runs graphite-web with validation enforced and compares the messages",
    ),
    (
        "time zone",
        "opsbro reads absolute times (HH:MM_YYYYMMDD, midnight…) in UTC; graphite-web uses TIME_ZONE (UTC in this test)",
    ),
];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The value of a series at minute `i`, if any.
type Generator = Box<dyn FnMut(u64) -> Option<f64>>;

/// The points: `(name, [(value, ts)])`. Minute-aligned timestamps, 90 minutes of them.
fn points(first: u64) -> Vec<(&'static str, Vec<(f64, u64)>)> {
    let ts = |i: u64| first + i * 60;
    let mut eth0 = 0.0;
    let mut eth1 = 0.0;
    let series: Vec<(&'static str, Generator)> = vec![
        (
            "srv.web1.load",
            Box::new(|i| Some(1.0 + ((i * 7) % 11) as f64 * 0.5)),
        ),
        (
            "srv.web2.load",
            Box::new(|i| (i % 7 != 3).then_some(2.0 + ((i * 5) % 13) as f64 * 0.25)),
        ),
        (
            "srv.db1.load",
            Box::new(|i| Some(8.0 + ((i * 3) % 5) as f64 * 0.1)),
        ),
        (
            "srv.db2.load",
            Box::new(|i| (!(40..50).contains(&i)).then_some(0.5 + (i % 9) as f64 * 1.5)),
        ),
        ("srv.web1.cpu", Box::new(|i| Some(10.0 + (i % 4) as f64))),
        (
            "srv.db1.cpu",
            Box::new(|i| Some(20.0 + (i % 6) as f64 * 0.3)),
        ),
        (
            "net.eth0.bytes",
            Box::new(move |i| {
                // A counter that resets at minute 50.
                eth0 = if i == 50 {
                    1234.0
                } else {
                    eth0 + 6000.0 + ((i * 13) % 50) as f64 * 60.0
                };
                Some(eth0)
            }),
        ),
        (
            "net.eth1.bytes",
            Box::new(move |i| {
                eth1 += 100.0 + (i % 3) as f64;
                (i % 10 != 5).then_some(eth1)
            }),
        ),
        ("app.requests.count", Box::new(|i| Some((i % 4) as f64))),
        ("temp.delta", Box::new(|i| Some((i % 7) as f64 - 3.0))),
    ];
    series
        .into_iter()
        .map(|(name, mut f)| {
            (
                name,
                (0..90).filter_map(|i| f(i).map(|v| (v, ts(i)))).collect(),
            )
        })
        .collect()
}

fn send(addr: SocketAddr, text: &str) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(text.as_bytes()).expect("write");
}

fn get(addr: SocketAddr, query: &str) -> (u16, String) {
    let a = http(addr, "GET", &format!("/render?{query}"), &[], b"").expect("render");
    (a.status, a.body)
}

/// Percent-encode a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Known points of each series in a JSON answer.
fn known(body: &str) -> Vec<(String, usize)> {
    serde_json::from_str::<Vec<Value>>(body)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["target"].as_str().unwrap_or("").to_owned(),
                s["datapoints"]
                    .as_array()
                    .map_or(0, |d| d.iter().filter(|p| !p[0].is_null()).count()),
            )
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Compare two JSON answers; with `common_only`, only the timestamps both have (for relative
/// times, where the two requests may straddle a minute).
fn compare(target: &str, ours: &str, theirs: &str, common_only: bool) -> Result<(), String> {
    let parse = |b: &str| serde_json::from_str::<Vec<Value>>(b).map_err(|e| format!("{e}: {b}"));
    let (ours, theirs) = (parse(ours)?, parse(theirs)?);
    let names = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|s| s["target"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    if names(&ours) != names(&theirs) {
        return Err(format!(
            "{target}: series\n  opsbro       {:?}\n  graphite-web {:?}",
            names(&ours),
            names(&theirs)
        ));
    }
    for (o, t) in ours.iter().zip(&theirs) {
        let points = |s: &Value| -> Vec<(Option<f64>, i64)> {
            s["datapoints"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .map(|p| (p[0].as_f64(), p[1].as_i64().unwrap_or(-1)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (po, pt) = (points(o), points(t));
        let name = o["target"].as_str().unwrap_or("");
        if common_only {
            let mut common = 0;
            for (v, ts) in &po {
                if let Some((w, _)) = pt.iter().find(|(_, t2)| t2 == ts) {
                    common += 1;
                    let same = match (v, w) {
                        (None, None) => true,
                        (Some(a), Some(b)) => close(*a, *b),
                        _ => false,
                    };
                    if !same {
                        return Err(format!(
                            "{target}: {name} at {ts}: opsbro {v:?}, graphite-web {w:?}"
                        ));
                    }
                }
            }
            if common + 2 < po.len().max(pt.len()) {
                return Err(format!(
                    "{target}: {name}: only {common} common timestamps of {} and {}",
                    po.len(),
                    pt.len()
                ));
            }
            continue;
        }
        if po.len() != pt.len() {
            return Err(format!(
                "{target}: {name}: {} points from opsbro, {} from graphite-web\n  opsbro       {po:?}\n  graphite-web {pt:?}",
                po.len(),
                pt.len()
            ));
        }
        for ((v, ts), (w, ts2)) in po.iter().zip(&pt) {
            let same = ts == ts2
                && match (v, w) {
                    (None, None) => true,
                    (Some(a), Some(b)) => close(*a, *b),
                    _ => false,
                };
            if !same {
                return Err(format!(
                    "{target}: {name}: opsbro ({v:?}, {ts}), graphite-web ({w:?}, {ts2})\n  opsbro       {po:?}\n  graphite-web {pt:?}"
                ));
            }
        }
    }
    Ok(())
}

fn unescape_html(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// `(YYYYMMDD, HH:MM)` of unix seconds, UTC.
fn utc(t: u64) -> (String, String) {
    // Howard Hinnant's civil_from_days.
    let z = (t / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let s = t % 86_400;
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}:{:02}", s / 3600, s % 3600 / 60),
    )
}

fn hhmm_yyyymmdd(t: u64) -> String {
    let (day, time) = utc(t);
    format!("{time}_{day}")
}

#[test]
fn render_answers_like_graphite_web_for_every_function() {
    assert!(!ON_PURPOSE.is_empty());
    let dir = tempfile::tempdir().expect("tmp");
    let carbon_port = free_port().expect("port");
    let carbon = Carbon::start(&dir.path().join("carbon"), carbon_port);
    let web = GraphiteWeb::start(&dir.path().join("web"), &carbon.whisper)
        .unwrap_or_else(|e| panic!("graphite-web: {e:#}"));
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("graphite-web-diff")
            .config("graphite:\n  enabled: true\n  port: 0\n"),
    )
    .expect("agent");
    let listener = agent.graphite.expect("graphite listener");

    // The last point two minutes ago: whisper never answers past `now`.
    let t = now();
    let last = t - t % 60 - 120;
    let first = last - 89 * 60;
    let data = points(first);
    let mut lines = String::new();
    for (name, pts) in &data {
        for (v, ts) in pts {
            lines.push_str(&format!("{name} {v} {ts}\n"));
        }
    }
    wait_for("carbon listening", DEADLINE, || {
        TcpStream::connect(("127.0.0.1", carbon_port)).ok()
    })
    .expect("carbon up");
    send(SocketAddr::from(([127, 0, 0, 1], carbon_port)), &lines);
    send(listener, &lines);

    // Both have every point.
    let all = data.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(",");
    let window = format!("from={}&until={}", first - 60, last + 1);
    let want: Vec<(String, usize)> = {
        let mut w: Vec<(String, usize)> = data
            .iter()
            .map(|(n, p)| ((*n).to_owned(), p.len()))
            .collect();
        w.sort();
        w
    };
    let everything = format!("target=group({})&{window}&format=json", enc(&all));
    for (who, addr) in [("opsbro", agent.api), ("graphite-web", web.addr)] {
        wait_for(&format!("every point in {who}"), DEADLINE * 2, || {
            let (status, body) = get(addr, &everything);
            let mut k = known(&body);
            k.sort();
            (status == 200 && k == want).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", get(addr, &everything), web.log()));
    }

    let from = first - 600 + 17;
    let until = last + 30;
    let range = format!("from={from}&until={until}");
    // Where every series has a value at every point (for the functions graphite-web cannot
    // run over a gap).
    let dense = format!("from={first}&until={until}");
    let targets: Vec<(&str, &str)> = vec![
        ("absolute(temp.delta)", &range),
        ("alias(srv.web1.load,'front')", &range),
        ("aliasByMetric(srv.*.load)", &range),
        ("aliasByNode(srv.*.load,1)", &range),
        ("aliasByNode(scale(srv.*.load,2),1,-1)", &range),
        (
            "aliasSub(srv.*.load,'srv\\.(\\w+)\\..*','host-\\1')",
            &range,
        ),
        ("asPercent(srv.*.load)", &range),
        ("asPercent(srv.web*.load,srv.db1.load)", &range),
        ("asPercent(srv.*.load,100)", &range),
        ("asPercent(srv.{web1,db1}.load,srv.*.cpu)", &range),
        ("asPercent(srv.*.{load,cpu},None,1)", &range),
        ("averageSeries(srv.*.load)", &range),
        ("avg(srv.web*.load)", &range),
        ("averageSeriesWithWildcards(srv.*.load,1)", &range),
        ("consolidateBy(srv.web1.load,'max')", &range),
        ("constantLine(42)", &range),
        ("countSeries(srv.*.load)", &range),
        ("currentAbove(srv.*.load,5)", &range),
        ("currentBelow(srv.*.load,5)", &range),
        ("delay(srv.web1.load,3)", &range),
        ("delay(srv.web2.load,-2)", &range),
        ("derivative(srv.web2.load)", &range),
        ("diffSeries(srv.db1.load,srv.web1.load)", &range),
        ("divideSeries(srv.*.load,srv.db1.cpu)", &range),
        ("exclude(srv.*.load,'web')", &range),
        ("grep(srv.*.load,'web')", &range),
        ("groupByNode(srv.*.load,1,'sum')", &range),
        ("groupByNode(net.*.bytes,0)", &range),
        ("groupByNode(srv.*.load,0,'sumSeries')", &range),
        ("groupByNodes(srv.*.{load,cpu},'max',0,2)", &range),
        ("highestAverage(srv.*.load,2)", &range),
        ("highestCurrent(srv.*.load,2)", &range),
        ("highestMax(srv.*.load,1)", &range),
        ("hitcount(app.requests.count,'5min')", &range),
        ("hitcount(app.requests.count,'1h',true)", &range),
        ("integral(srv.web2.load)", &range),
        ("invert(temp.delta)", &range),
        ("keepLastValue(srv.web2.load)", &range),
        ("keepLastValue(srv.db2.load,3)", &range),
        ("limit(srv.*.load,2)", &range),
        ("lowestAverage(srv.*.load,2)", &range),
        ("lowestCurrent(srv.*.load,1)", &range),
        ("maxSeries(srv.*.load)", &range),
        ("maximumAbove(srv.*.load,8)", &range),
        ("minSeries(srv.*.load)", &range),
        ("minimumAbove(srv.*.load,0.5)", &range),
        ("movingAverage(srv.web1.load,5)", &range),
        ("movingAverage(srv.web2.load,'10min')", &range),
        ("movingMedian(srv.db2.load,5)", &range),
        ("movingSum(srv.*.load,'5min')", &range),
        ("multiplySeries(srv.web1.load,srv.db1.load)", &range),
        ("nPercentile(srv.*.load,90)", &range),
        ("nonNegativeDerivative(net.*.bytes)", &range),
        ("nonNegativeDerivative(net.eth0.bytes,1000000)", &dense),
        ("perSecond(net.eth0.bytes,1000000,1000)", &dense),
        ("offset(srv.*.load,-1.5)", &range),
        ("perSecond(net.*.bytes)", &range),
        ("percentileOfSeries(srv.*.load,50)", &range),
        ("percentileOfSeries(srv.*.load,75,true)", &range),
        ("rangeOfSeries(srv.*.load)", &range),
        ("removeAbovePercentile(srv.*.load,80)", &range),
        ("removeAboveValue(srv.*.load,5)", &range),
        ("removeBelowValue(srv.*.load,2)", &range),
        ("scale(srv.*.load,0.25)", &range),
        ("scaleToSeconds(net.eth0.bytes,1)", &range),
        ("sortByMaxima(srv.*.load)", &range),
        ("sortByName(srv.*.load)", &range),
        ("sortByName(srv.*.load,true,true)", &range),
        ("sortByTotal(srv.*.load)", &range),
        ("stddevSeries(srv.*.load)", &range),
        ("sumSeries(srv.*.load)", &range),
        ("sum(srv.*.load)", &range),
        ("sumSeries(scale(srv.web*.load,2),srv.db1.load)", &range),
        ("sumSeriesWithWildcards(srv.*.load,1)", &range),
        ("summarize(srv.*.load,'10min')", &range),
        ("summarize(srv.web1.load,'1h','max')", &range),
        ("summarize(srv.web2.load,'7min','avg',true)", &range),
        ("threshold(5,'limit')", &range),
        ("timeShift(srv.web1.load,'10min')", &range),
        ("timeShift(srv.web1.load,'-5min',false)", &range),
        ("transformNull(srv.web2.load,-1)", &range),
        ("transformNull(srv.web2.load,0,srv.web1.load)", &range),
        ("useSeriesAbove(srv.{web1,db1}.load,5,'load','cpu')", &dense),
        ("sumSeries(movingAverage(srv.*.load,'5min'))", &range),
        ("srv.web1.load|scale(3)|alias('piped')", &range),
    ];
    let mut failures = Vec::new();
    for (target, range) in &targets {
        let q = format!("target={}&{range}&format=json", enc(target));
        let (so, bo) = get(agent.api, &q);
        let (st, bt) = get(web.addr, &q);
        if so != 200 || st != 200 {
            failures.push(format!(
                "{target}: opsbro {so} {bo}\n  graphite-web {st} {bt}"
            ));
            continue;
        }
        if bt.trim() == "[]" {
            failures.push(format!(
                "{target}: graphite-web answered no series, nothing compared"
            ));
        } else if let Err(e) = compare(target, &bo, &bt, false) {
            failures.push(e);
        }
    }

    // maxDataPoints (with each consolidation function), noNullPoints, several targets at once.
    for extra in [
        "target=sumSeries(srv.*.load)&maxDataPoints=20",
        "target=consolidateBy(srv.web1.load,'max')&maxDataPoints=7",
        "target=consolidateBy(srv.db2.load,'sum')&maxDataPoints=10",
        "target=consolidateBy(srv.web2.load,'min')&target=srv.db1.load&maxDataPoints=13",
        "target=srv.web2.load&maxDataPoints=1",
        "target=srv.web2.load&target=srv.db2.load&noNullPoints=1",
        "target=srv.*.load&xFilesFactor=0.5&target=summarize(srv.web2.load,'10min','sum')",
    ] {
        let q = format!("{extra}&{range}&format=json").replace('\'', "%27");
        let (so, bo) = get(agent.api, &q);
        let (st, bt) = get(web.addr, &q);
        if so != 200 || st != 200 {
            failures.push(format!(
                "{extra}: opsbro {so} {bo}\n  graphite-web {st} {bt}"
            ));
        } else if let Err(e) = compare(extra, &bo, &bt, false) {
            failures.push(e);
        }
    }

    // format=raw and format=csv, byte for byte.
    for format in ["raw", "csv"] {
        let q =
            format!("target=srv.*.load&target=scale(net.eth1.bytes,0.1)&{range}&format={format}");
        let (so, bo) = get(agent.api, &q);
        let (st, bt) = get(web.addr, &q);
        if (so, &bo) != (st, &bt) {
            failures.push(format!(
                "format={format}:\n  opsbro       {so} {bo:?}\n  graphite-web {st} {bt:?}"
            ));
        }
    }

    // Every form of from/until graphite-web reads.
    let absolute = [
        (hhmm_yyyymmdd(first - 300), hhmm_yyyymmdd(last)),
        ((first - 300).to_string(), (last + 5).to_string()),
    ];
    for (f, u) in &absolute {
        let q = format!("target=srv.web2.load&from={f}&until={u}&format=json");
        let (so, bo) = get(agent.api, &q);
        let (st, bt) = get(web.addr, &q);
        if so != 200 || st != 200 {
            failures.push(format!("{q}: opsbro {so} {bo}\n  graphite-web {st} {bt}"));
        } else if let Err(e) = compare(&q, &bo, &bt, false) {
            failures.push(e);
        }
    }
    let today = utc(now()).0;
    for (f, u) in [
        ("-2h", "now"),
        ("now-2h", "now-1min"),
        (today.as_str(), "now"),
        ("-100min", "-1min"),
    ] {
        let q = format!("target=srv.db2.load&from={f}&until={u}&format=json");
        let (so, bo) = get(agent.api, &q);
        let (st, bt) = get(web.addr, &q);
        if so != 200 || st != 200 {
            failures.push(format!("{q}: opsbro {so} {bo}\n  graphite-web {st} {bt}"));
        } else if let Err(e) = compare(&q, &bo, &bt, true) {
            failures.push(e);
        }
    }

    // Errors: both 400, graphite-web's message begins with opsbro's.
    for bad in [
        "scale(srv.*.load)",
        "highestMax(srv.*.load,1.5)",
        "nosuchfn(srv.*.load)",
        "consolidateBy(srv.web1.load,'median')",
        "scale(srv.*.load,1,2)",
        "divideSeries(srv.*.load,srv.*.cpu)",
        "summarize(srv.web1.load,'1fortnight')",
        "movingAverage(srv.web1.load)",
        "percentileOfSeries(srv.*.load,0)",
    ] {
        let q = format!("target={}&{range}&format=json", enc(bad));
        let (so, bo) = get(agent.api, &q);
        let (st, bt) = get(web.addr, &q);
        let theirs = unescape_html(&bt);
        if so != 400 || st != 400 || !theirs.starts_with(bo.trim()) {
            failures.push(format!(
                "{bad}:\n  opsbro       {so} {bo}\n  graphite-web {st} {theirs}"
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{} differences from graphite-web:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Tagged series on opsbro alone (see `ON_PURPOSE`): carbon 1.1's `name;tag=value` lines,
/// `seriesByTag`, and the tag routes Grafana's editor calls.
#[test]
fn tagged_series_are_found_by_tag_and_listed_for_grafana() {
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("tags")
            .config("graphite:\n  enabled: true\n  port: 0\n"),
    )
    .expect("agent");
    let t = now();
    send(
        agent.graphite.expect("graphite"),
        &format!(
            "disk.used;host=web1;dc=eu 10 {t}\ndisk.used;dc=eu;host=web2 20 {t}\n\
             disk.used;host=db1;dc=us 40 {t}\ncpu.load;host=web1;dc=eu 0.5 {t}\ndisk.used;bad 1 {t}\n"
        ),
    );
    let q = "target=sumSeries(seriesByTag('name=disk.used','dc=eu'))&from=-5min&format=json";
    let answer = wait_for("tagged series", DEADLINE, || {
        let a = http(
            agent.api,
            "GET",
            &format!("/render?{}", q.replace('\'', "%27")),
            &[],
            b"",
        )
        .ok()?;
        let v: Vec<Value> = serde_json::from_str(&a.body).ok()?;
        let last = v.first()?["datapoints"]
            .as_array()?
            .iter()
            .rev()
            .find_map(|p| p[0].as_f64())?;
        (last == 30.0).then_some(v)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(
        answer[0]["target"],
        "sumSeries(seriesByTag('name=disk.used','dc=eu'))"
    );
    // One canonical name whatever order the tags came in.
    let index = http(agent.api, "GET", "/metrics/index.json", &[], b"").expect("index");
    let names: Vec<String> = serde_json::from_str(&index.body).expect("names");
    assert!(
        names.contains(&"disk.used;dc=eu;host=web1".to_owned()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.ends_with(";bad")), "{names:?}");
    // Tags of a tagged series in the JSON, and aliasByTags' cousin aliasByNode with a tag name.
    let by_host = http(
        agent.api,
        "GET",
        "/render?target=aliasByNode(seriesByTag(%27name=disk.used%27),%27host%27)&from=-5min",
        &[],
        b"",
    )
    .expect("alias");
    let v: Vec<Value> = serde_json::from_str(&by_host.body).expect("json");
    let hosts: Vec<&str> = v.iter().filter_map(|s| s["target"].as_str()).collect();
    // Sorted by series name: dc=eu before dc=us.
    assert_eq!(hosts, ["web1", "web2", "db1"]);
    let plain = http(
        agent.api,
        "GET",
        "/render?target=disk.used;host=web1;dc=eu&from=-5min",
        &[],
        b"",
    )
    .expect("by name");
    let v: Vec<Value> = serde_json::from_str(&plain.body).expect("json");
    assert_eq!(v[0]["tags"]["host"], "web1", "{}", plain.body);
    assert_eq!(v[0]["tags"]["name"], "disk.used");

    let json = |path: &str| -> Value {
        let a = http(agent.api, "GET", path, &[], b"").expect(path);
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        serde_json::from_str(&a.body).expect("json")
    };
    assert_eq!(
        json("/tags"),
        serde_json::json!([{"tag": "dc"}, {"tag": "host"}, {"tag": "name"}])
    );
    assert_eq!(
        json("/tags/autoComplete/tags?expr=name%3Ddisk.used&tagPrefix=h"),
        serde_json::json!(["host"])
    );
    assert_eq!(
        json("/tags/autoComplete/values?expr=dc%3Deu&tag=host"),
        serde_json::json!(["web1", "web2"])
    );
    let post = http(
        agent.api,
        "POST",
        "/tags/autoComplete/values",
        &["Content-Type: application/x-www-form-urlencoded"],
        b"tag=dc&valuePrefix=u",
    )
    .expect("post");
    assert_eq!(post.body, "[\"us\"]");
    let bad = http(
        agent.api,
        "GET",
        "/render?target=seriesByTag(%27dc!=eu%27)",
        &[],
        b"",
    )
    .expect("bad");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("tagspec"), "{}", bad.body);

    // /functions: what Grafana's editor lists, in graphite-web's shape.
    let functions = json("/functions");
    let f = &functions["movingAverage"];
    assert_eq!(f["group"], "Calculate");
    assert_eq!(f["params"][1]["name"], "windowSize");
    assert_eq!(f["params"][1]["type"], "intOrInterval");
    assert_eq!(f["params"][1]["required"], true);
    assert_eq!(functions.as_object().map(|o| o.len()), Some(64));
    let grouped = json("/functions?grouped=1");
    assert!(grouped["Combine"]["sumSeries"].is_object());
    let version = http(agent.api, "GET", "/version", &[], b"").expect("version");
    assert_eq!(version.body, "1.1.8");
}
