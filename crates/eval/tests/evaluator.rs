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
            ("", "alive") => 4,
            _ => 0,
        }
    }
    fn has_event_type(&self, kind: &str) -> bool {
        kind == "deploy"
    }
    fn zone(&self, node_uuid: &str) -> String {
        match node_uuid {
            "" => "lan".into(),
            "peer-1" => "dmz".into(),
            _ => String::new(),
        }
    }
    fn hosting_driver_active(&self, name: &str) -> bool {
        name == "ec2"
    }
    fn compliance_rule_state(&self, name: &str) -> String {
        if name == "Install mongodb" {
            "COMPLIANT".into()
        } else {
            "UNKNOWN".into()
        }
    }
    fn kv_get(&self, key: &str) -> Option<String> {
        (key == "app/version").then(|| "1.2.3".into())
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
        // The prototype shown by `opsbro evaluator list` is the parameter table.
        let names: Vec<&str> = d.params.iter().map(|p| p.name).collect();
        for n in &names {
            assert!(d.prototype.contains(n), "{d:?}");
        }
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

#[test]
fn keyword_arguments_fill_defaults_and_reorder() {
    let e = Evaluator::new(Arc::new(Cluster));
    let b = |x: &str| e.eval(x, &none).unwrap_or_else(|err| panic!("{x}: {err}"));
    assert_eq!(b("gossip_count_nodes(group='web')"), json!(2));
    assert_eq!(b("gossip_count_nodes(state='alive')"), json!(4));
    assert_eq!(
        b("gossip_count_nodes(state='alive', group='web')"),
        json!(1)
    );
    assert_eq!(b("gossip_count_nodes('web', state='alive')"), json!(1));
    assert_eq!(b("gossip_count_nodes(group='web') == 2"), json!(true));
    assert_eq!(b("gossip_get_zone(node_uuid='')"), json!("lan"));
    assert_eq!(b("gossip_get_zone(node_uuid='peer-1')"), json!("dmz"));
    assert_eq!(b("is_in_group(group='web')"), json!(true));
    assert_eq!(
        b("string_join(ch='-', list=string_split(s='a,b', ch=','))"),
        json!("a-b")
    );
    assert_eq!(b("kv_get('nope', default=7)"), json!(7));
    // `==` inside the arguments and assignments around the call are not keywords.
    assert_eq!(
        b("let x = 1; x = 2; gossip_count_nodes(if x == 2 { 'web' } else { '' })"),
        json!(2)
    );
    let p = |x: &str| {
        ev().eval(x, &none)
            .unwrap_or_else(|err| panic!("{x}: {err}"))
    };
    assert_eq!(
        p("get_horizontal_bar(0.5, width=4)"),
        json!("\u{1b}[38;5;128m█\u{1b}[0m\u{1b}[38;5;199m█\u{1b}[0m▒▒")
    );
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("os-release");
    std::fs::write(&f, "NAME=Debian\n").expect("write");
    let f = f.display();
    assert_eq!(
        p(&format!("grep_file('^name=deb', '{f}', regexp=True)")),
        json!(true)
    );
    assert_eq!(
        p(&format!("grep_file(path='{f}', string='debian')")),
        json!(true)
    );
    assert_eq!(
        p(&format!("grep_file('^name=deb', '{f}', regexp=False)")),
        json!(false)
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    assert_eq!(
        p(&format!("check_tcp('127.0.0.1', {port}, timeout=2)")),
        json!(true)
    );
    assert_eq!(
        p(&format!("check_tcp(port={port}, host='127.0.0.1')")),
        json!(true)
    );
}

#[test]
fn unknown_keyword_is_a_clear_error() {
    let e = ev();
    let err = e
        .eval("True and gossip_count_nodes(grup='web') > 0", &none)
        .expect_err("unknown keyword");
    assert_eq!(err.kind, opsbro_eval::ErrorKind::Syntax);
    assert!(
        err.message.contains("gossip_count_nodes")
            && err.message.contains("`grup`")
            && err.message.contains("group, state"),
        "{err}"
    );
    assert_eq!(err.position, Some(29), "{err}");
    assert!(err.near.starts_with("grup="), "{err}");
    let err = e
        .eval("my_function(a=1)", &none)
        .expect_err("unknown function");
    assert!(
        err.message
            .contains("`my_function` is not a library function"),
        "{err}"
    );
    let err = e
        .eval("grep_file(regexp=True)", &none)
        .expect_err("missing argument");
    assert!(err.message.contains("`string`"), "{err}");
    // check_syntax reports it as well, before anything runs.
    assert!(e.check_syntax("check_tcp('h', 1, timeot=2)").is_err());
    assert!(e.check_syntax("check_tcp('h', 1, timeout=2)").is_ok());
}

#[test]
fn grep_matches_case_insensitively_like_the_original() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("redhat-release");
    std::fs::write(&f, "CentOS Linux release 7.9.2009 (Core)\n").expect("write");
    let f = f.display();
    let e = ev();
    let yes = |x: String| assert!(e.eval_bool(&x, &none).expect(&x), "{x}");
    let no = |x: String| assert!(!e.eval_bool(&x, &none).expect(&x), "{x}");
    // The README's detector.
    yes(format!("grep('centos', '{f}')"));
    yes(format!("grep_file('CENTOS LINUX', '{f}')"));
    yes(format!(
        "grep_file('centos linux release 7\\\\.9', '{f}', True)"
    ));
    yes(format!("grep_file('^CeNtOs', '{f}', regexp=True)"));
    no(format!("grep_file('^linux', '{f}', regexp=True)"));
    no(format!("grep('debian', '{f}')"));
    // A plain search is not a regular expression: the dot is a dot.
    no(format!("grep_file('release 7x9', '{f}')"));
    yes(format!("grep_file('release 7x9', '{f}', True) or True"));
}

#[test]
fn placeholder_default_is_used_when_the_path_is_missing() {
    let r = |p: &str| match p {
        "collector.system.os" => Some(json!("debian")),
        _ => None,
    };
    let e = ev();
    let v = |x: &str| e.eval(x, &r).unwrap_or_else(|err| panic!("{x}: {err}"));
    assert_eq!(v("{{collector.nope||0}} + 1"), json!(1));
    assert_eq!(v("{{collector.nope||'linux'}}"), json!("linux"));
    assert_eq!(v("{{collector.nope||False}}"), json!(false));
    assert_eq!(v("{{collector.nope||2 * 3}} * 2"), json!(12));
    assert_eq!(v("{{collector.system.os||'linux'}}"), json!("debian"));
    assert_eq!(v("{collector.nope||'single'}"), json!("single"));
    // Without a default a missing value is still ''.
    assert_eq!(v("{{collector.nope}}"), json!(""));
}

#[test]
fn reverse_dns_function_answers_a_name_or_nothing() {
    // /etc/hosts names 127.0.0.1 on every Linux we run on ("localhost" first, sometimes with a
    // domain); not an address → ''.
    let name = eval("ip_to_host('127.0.0.1')");
    assert!(
        name.as_str().is_some_and(|n| n.starts_with("localhost")),
        "{name}"
    );
    assert_eq!(eval("ip_to_host('not an address')"), json!(""));
}

#[test]
fn shuffle_returns_the_same_items_in_some_order() {
    assert_eq!(
        eval("sorted(shuffle([3, 1, 2, 5, 4]))"),
        json!([1, 2, 3, 4, 5])
    );
    assert_eq!(eval("shuffle([])"), json!([]));
    // Over 50 shuffles of 6 items, at least one differs from the input (1 - (1/720)^50).
    assert_eq!(
        eval(
            "let moved = false; for i in 0..50 { if shuffle([1,2,3,4,5,6]) != [1,2,3,4,5,6] { moved = true } } moved"
        ),
        json!(true)
    );
}

#[test]
fn hash_and_file_hash_match_support_every_algorithm() {
    let expected = [
        ("md5", "900150983cd24fb0d6963f7d28e17f72"),
        ("sha1", "a9993e364706816aba3e25717850c26c9cd0d89d"),
        (
            "sha224",
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7",
        ),
        (
            "sha256",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            "sha384",
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7",
        ),
        (
            "sha512",
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        ),
    ];
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("abc.txt");
    std::fs::write(&f, "abc").expect("write");
    let f = f.display();
    for (algo, hex) in expected {
        assert_eq!(eval(&format!("hash('abc', '{algo}')")), json!(hex));
        assert_eq!(
            eval(&format!("file_hash_match('{f}', '{algo}', '{hex}')")),
            json!(true)
        );
        assert_eq!(
            eval(&format!(
                "file_hash_match('{f}', hash_match='{}', algorithm='{algo}')",
                "0".repeat(hex.len())
            )),
            json!(false)
        );
    }
    let err = ev()
        .eval("hash('abc', 'crc32')", &none)
        .expect_err("unknown");
    assert!(err.message.contains("crc32"), "{err}");
    assert!(
        ev().eval("file_hash_match('/no/such/file', 'md5', '')", &none)
            .is_err()
    );
}

#[test]
fn context_functions_use_the_agent_or_the_defaults() {
    let e = Evaluator::new(Arc::new(Cluster));
    let b = |x: &str| e.eval(x, &none).unwrap_or_else(|err| panic!("{x}: {err}"));
    assert_eq!(b("gossip_get_zone()"), json!("lan"));
    assert_eq!(b("gossip_get_zone('nobody')"), json!(""));
    assert_eq!(b("hosting_driver_is_active('ec2')"), json!(true));
    assert_eq!(b("hosting_driver_is_active('on-premise')"), json!(false));
    assert_eq!(
        b("compliance_get_state_of_rule('Install mongodb')"),
        json!("COMPLIANT")
    );
    assert_eq!(b("kv_get('app/version')"), json!("1.2.3"));
    assert_eq!(b("kv_get('app/nope')"), json!(""));
    assert_eq!(b("kv_get('app/nope', 'none')"), json!("none"));
    assert_eq!(b("is_in_defined_group('linux')"), json!(true));
    // Without an agent (NoContext): the trait's defaults.
    assert_eq!(eval("gossip_get_zone()"), json!(""));
    assert_eq!(eval("hosting_driver_is_active('on-premise')"), json!(true));
    assert_eq!(eval("hosting_driver_is_active('ec2')"), json!(false));
    assert_eq!(eval("compliance_get_state_of_rule('x')"), json!("UNKNOWN"));
    assert_eq!(eval("kv_get('x', default=False)"), json!(false));
}

#[test]
fn user_and_group_ids_from_the_system_files() {
    assert_eq!(eval("system_userid_from_username('root')"), json!(0));
    assert_eq!(eval("system_username_from_userid(0)"), json!("root"));
    assert_eq!(eval("system_username_from_userid('0')"), json!("root"));
    assert_eq!(eval("system_groupid_from_groupname('root')"), json!(0));
    assert_eq!(eval("system_groupname_from_groupid(0)"), json!("root"));
    assert_eq!(
        eval("system_userid_from_username('no-such-user-x')"),
        Value::Null
    );
    assert_eq!(eval("system_username_from_userid(987654)"), Value::Null);
    assert_eq!(
        eval("system_groupid_from_groupname('no-such-group-x')"),
        Value::Null
    );
    assert_eq!(eval("system_groupname_from_groupid(987654)"), Value::Null);
    assert_eq!(
        eval("[system_is_python_2(), system_is_python_3()]"),
        json!([false, true])
    );
}

#[test]
fn display_functions_render_like_the_original() {
    // colorize: lolcat's rainbow colour 55 is 256-colour code 48.
    assert_eq!(
        eval("colorize('ab', 55)"),
        json!("\u{1b}[38;5;48ma\u{1b}[38;5;48mb\u{1b}[0m")
    );
    assert_eq!(
        eval("colorize(7, color=55)"),
        json!("\u{1b}[38;5;48m7\u{1b}[0m")
    );
    let donut = eval("get_donut(14)");
    let donut = donut.as_str().expect("a string");
    assert_eq!(donut.lines().count(), 6);
    assert!(
        donut.lines().nth(2).is_some_and(|l| l.contains(" 14 ")),
        "{donut}"
    );
    assert_eq!(eval("get_donut(101)"), Value::Null);
    let bar = eval("get_horizontal_bar(0.53)");
    let bar = bar.as_str().expect("a string");
    assert_eq!(bar.matches('█').count(), 42);
    assert_eq!(bar.matches('▒').count(), 38);
    let bar = eval("get_horizontal_bar(50, width=10)");
    let bar = bar.as_str().expect("a string");
    assert_eq!((bar.matches('█').count(), bar.matches('▒').count()), (5, 5));
}

#[test]
fn basic_string_and_random_functions_with_keywords() {
    assert_eq!(eval("abs(x=-3)"), json!(3));
    assert_eq!(eval("string_split(s='a b', ch=' ')"), json!(["a", "b"]));
    assert_eq!(
        eval("string_upper(s='x') + string_lower(s='Y')"),
        json!("Xy")
    );
    let i = eval("randomint_between(int_end=9, int_start=9)");
    assert_eq!(i, json!(9));
    let r = eval("random()").as_f64().expect("float");
    assert!((0.0..1.0).contains(&r));
}
