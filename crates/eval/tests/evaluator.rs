//! The evaluator against the original opsbro's examples, its README expressions, every library
//! function, and hostile expressions.

use std::sync::Arc;

use opsbro_eval::{EvalContext, Evaluator, NoContext};
use serde_json::{Value, json};

fn ev() -> Evaluator {
    Evaluator::new(Arc::new(NoContext))
}

fn none(_: &str) -> Option<Value> {
    None
}

fn eval(e: &str) -> Value {
    ev().eval(e, &none)
        .unwrap_or_else(|err| panic!("{e}: {err}"))
}

#[test]
fn the_original_test_suite_examples() {
    assert_eq!(eval("16^4"), json!(20));
    assert_eq!(eval("10|3"), json!(11));
    assert_eq!(eval("100/10"), json!(10));
    assert_eq!(eval("7/2"), json!(3.5));
    assert_eq!(eval(r#""PI %.2f" % 3.14"#), json!("PI 3.14"));
    assert_eq!(
        eval(r#"sorted({"k":"v","k2":"v2"}.values())"#),
        json!(["v", "v2"])
    );
    assert_eq!(eval("False and missing_function()"), json!(false));
    assert_eq!(eval("True or missing_function()"), json!(true));
}

#[test]
fn python_flavour() {
    assert_eq!(eval("'a' + 'b'"), json!("ab"));
    assert_eq!(eval("not True"), json!(false));
    assert_eq!(eval("None"), Value::Null);
    assert_eq!(eval("'%s is %d%%' % ('cpu', 42)"), json!("cpu is 42%"));
    assert_eq!(eval("'%5.1f|' % 2.25"), json!("  2.2|"));
    assert_eq!(eval("2 in [1, 2, 3]"), json!(true));
    assert_eq!(eval(r#"{"a": 1}['a']"#), json!(1));
    assert_eq!(eval("len('héllo') + len([1,2]) + len({'x': 1})"), json!(8));
    assert_eq!(eval("max([3, 9, 2]) - min([3, 9, 2])"), json!(7));
    assert_eq!(eval("sum([1, 2.5])"), json!(3.5));
    assert_eq!(eval("set([1, 1, 2])"), json!([1, 2]));
    assert_eq!(eval("abs(-4)"), json!(4));
}

#[test]
fn the_readme_cpu_check_works_as_written() {
    let r = |p: &str| match p {
        "collector.cpustats.cpuall.%idle" => Some(json!(0.5)),
        "configuration.thresholds.cpuidle.critical" => Some(json!(1)),
        "configuration.thresholds.cpuidle.warning" => Some(json!(5)),
        _ => None,
    };
    let e = ev();
    assert!(
        e.eval_bool(
            "{collector.cpustats.cpuall.%idle} < {configuration.thresholds.cpuidle.critical}",
            &r
        )
        .expect("critical_if")
    );
    assert_eq!(
        e.eval_string(
            "'Critical: cpu is too high: %s%%' % (100-{collector.cpustats.cpuall.%idle})",
            &r
        )
        .expect("output"),
        "Critical: cpu is too high: 99.5%"
    );
    // A missing collector value is '' as in opsbro, so comparisons fail loudly, not silently.
    assert!(
        e.eval_bool("{{collector.nope.x}} == ''", &r)
            .expect("missing is empty")
    );
}

#[test]
fn the_readme_detector_against_a_fixture() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("redhat-release");
    std::fs::write(&f, "CentOS Linux release 7.9.2009 (Core)\ncentos\n").expect("write");
    let e = ev();
    let expr = format!("grep('centos', '{}')", f.display());
    assert!(e.eval_bool(&expr, &none).expect("match"));
    std::fs::write(&f, "Debian GNU/Linux\n").expect("write");
    assert!(!e.eval_bool(&expr, &none).expect("no match"));
    let missing = format!("grep('centos', '{}')", dir.path().join("nope").display());
    assert!(
        !e.eval_bool(&missing, &none)
            .expect("a missing file does not match")
    );
}

#[test]
fn filesystem_and_system_functions() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("conf.json");
    std::fs::write(&file, r#"{"port": 6379, "tags": ["a"]}"#).expect("write");
    let d = dir.path().display();
    let f = file.display();
    assert_eq!(eval(&format!("file_exists('{f}')")), json!(true));
    assert_eq!(
        eval(&format!("is_dir('{d}') and not is_dir('{f}')")),
        json!(true)
    );
    assert_eq!(eval(&format!("is_plain_file('{f}')")), json!(true));
    assert_eq!(eval(&format!("is_link('{f}')")), json!(false));
    assert_eq!(eval(&format!("path_dirname('{f}')")), json!(d.to_string()));
    assert_eq!(
        eval(&format!("parse_json_file('{f}')['port']")),
        json!(6379)
    );
    assert_eq!(
        eval(&format!("grep_file('^\\\\{{\"port', '{f}', True)")),
        json!(true)
    );
    assert_eq!(eval("system_get_os()"), json!("linux"));
    assert_eq!(
        eval("system_user_exists('root') and system_user_exists(0)"),
        json!(true)
    );
    assert_eq!(eval("system_user_exists('no-such-user-x')"), json!(false));
    assert_eq!(eval("system_group_exists('root')"), json!(true));
    assert_eq!(eval("get_env('OPSBRO_SURELY_UNSET_VAR')"), json!(""));
    assert_eq!(
        eval("has_package('surely-not-a-package-name')"),
        json!(false)
    );
}

#[test]
fn network_time_hash_string_random() {
    assert_eq!(
        eval("ip_is_in_range('10.1.2.3', '10.0.0.0/8')"),
        json!(true)
    );
    assert_eq!(
        eval("ip_is_in_range('11.1.2.3', '10.0.0.0/8')"),
        json!(false)
    );
    assert_eq!(eval("ip_is_in_range('::1', '::1/128')"), json!(true));
    assert_eq!(
        eval("host_to_ip('localhost') in ['127.0.0.1', '::1']"),
        json!(true)
    );
    // check_tcp against a port this test opens, then against a closed one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    assert_eq!(
        eval(&format!("check_tcp('127.0.0.1', {port}, 2)")),
        json!(true)
    );
    drop(listener);
    assert_eq!(
        eval(&format!("check_tcp('127.0.0.1', {port}, 1)")),
        json!(false)
    );
    assert!(eval("now()").as_f64().expect("float") > 1.7e9);
    assert_eq!(
        eval("hash('abc', 'sha1')"),
        json!("a9993e364706816aba3e25717850c26c9cd0d89d")
    );
    assert_eq!(eval("string_upper('a') + string_lower('B')"), json!("Ab"));
    assert_eq!(
        eval("string_join(string_split('a,b,c', ','), '-')"),
        json!("a-b-c")
    );
    let r = eval("random()").as_f64().expect("float");
    assert!((0.0..1.0).contains(&r));
    let i = eval("randomint_between(3, 5)").as_i64().expect("int");
    assert!((3..=5).contains(&i));
}

struct Cluster;

impl EvalContext for Cluster {
    fn groups(&self) -> Vec<String> {
        vec!["linux".into(), "web".into()]
    }
    fn count_nodes(&self, group: &str, state: &str) -> i64 {
        match (group, state) {
            ("", "") => 5,
            ("web", "") => 2,
            ("web", "alive") => 1,
            _ => 0,
        }
    }
    fn has_event_type(&self, kind: &str) -> bool {
        kind == "deploy"
    }
}

#[test]
fn gossip_functions_read_the_context() {
    let e = Evaluator::new(Arc::new(Cluster));
    let b = |x: &str| e.eval(x, &none).expect("eval");
    assert_eq!(
        b("is_in_group('web') and not is_in_group('db')"),
        json!(true)
    );
    assert_eq!(b("is_in_static_group('linux')"), json!(true));
    assert_eq!(
        b("[gossip_count_nodes(), gossip_count_nodes('web'), gossip_count_nodes('web', 'alive')]"),
        json!([5, 2, 1])
    );
    assert_eq!(b("gossip_have_event_type('deploy')"), json!(true));
}

#[test]
fn every_documented_function_exists() {
    let e = ev();
    let docs = e.functions();
    assert!(docs.len() >= 30);
    for d in &docs {
        assert!(
            !d.doc.is_empty() && d.prototype.starts_with(d.name),
            "{d:?}"
        );
        // Calling with no arguments must fail with "not found" only for functions that need
        // arguments, never with a panic; the name itself must be known to the engine.
        let err = e
            .eval(&format!("{}(1, 2, 3, 4, 5, 6)", d.name), &none)
            .expect_err("wrong arity");
        assert!(err.message.contains("not found"), "{}: {err}", d.name);
    }
}

#[test]
fn errors_carry_the_position_and_the_offending_text() {
    let e = ev();
    let err = e.eval("1 + + * 2", &none).expect_err("syntax");
    assert_eq!(err.kind, opsbro_eval::ErrorKind::Syntax);
    assert!(err.position.is_some(), "{err}");
    let err = e
        .eval("True and nosuch_fn(1)", &none)
        .expect_err("unknown fn");
    assert_eq!(err.position, Some(10), "{err}");
    assert!(err.near.starts_with("nosuch_fn"), "{err}");
    assert!(err.to_string().contains("nosuch_fn"), "{err}");
    let err = e.eval("'unterminated", &none).expect_err("front error");
    assert_eq!(err.position, Some(1));
    let err = e
        .eval("undefined_variable + 1", &none)
        .expect_err("strict variables");
    assert!(err.near.starts_with("undefined_variable"), "{err}");
}

#[test]
fn runaway_expressions_are_stopped_by_the_limits() {
    let e = ev();
    let err = e.eval("while true {}", &none).expect_err("loop");
    assert!(err.to_string().contains("stopped"), "{err}");
    let err = e
        .eval("let s = \"x\"; loop { s += s; }", &none)
        .expect_err("growth");
    assert!(
        err.to_string().contains("stopped") || err.to_string().contains("too large"),
        "{err}"
    );
    let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    assert!(e.eval(&deep, &none).is_err(), "too deep");
    // The evaluator is still usable afterwards.
    assert_eq!(e.eval("1 + 1", &none).expect("ok"), json!(2));
}

proptest::proptest! {
    #[test]
    fn arbitrary_expressions_never_panic(s in "\\PC{0,60}") {
        let _ = ev().eval(&s, &none);
    }
}
