//! Unit tests for configuration loading and validation.

use super::*;

fn host(euid: u32) -> HostFacts {
    HostFacts {
        hostname: "web-1".into(),
        euid,
        xdg_data_home: None,
        home: Some(PathBuf::from("/home/alice")),
    }
}

#[test]
fn empty_and_comment_only_files_are_valid() {
    assert_eq!(
        Config::from_yaml("", "a.yml").expect("empty"),
        Config::default()
    );
    assert_eq!(
        Config::from_yaml("# nothing\n\n# here\n", "a.yml").expect("comments"),
        Config::default()
    );
}

#[test]
fn a_full_file_is_read() {
    let text = "node_name: web-1\ndisplay_name: Web One\nport: 7000\napi:\n  bind: 127.0.0.2\n  port: 7001\n  token: s3cret\nseeds: [10.0.0.1, 'db:7000', '[::1]:6000']\ngroups: [web, linux]\nzone: dc1\nlog_level: DEBUG\nencryption_key: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
    let c = Config::from_yaml(text, "agent.yml").expect("valid");
    assert_eq!(c.node_name.as_deref(), Some("web-1"));
    assert_eq!(c.port, Some(7000));
    assert_eq!(c.api_port, Some(7001));
    assert_eq!(c.api_token.as_deref(), Some("s3cret"));
    assert_eq!(c.seeds.len(), 3);
    assert_eq!(
        c.seeds[1],
        Seed {
            host: "db".into(),
            port: 7000
        }
    );
    assert_eq!(
        c.seeds[2],
        Seed {
            host: "::1".into(),
            port: 6000
        }
    );
    assert_eq!(c.seeds[0].port, DEFAULT_GOSSIP_PORT);
    assert_eq!(c.groups, vec!["web", "linux"]);
    assert_eq!(c.log_level.as_deref(), Some("debug"));
    assert!(c.encryption_key.is_some());
}

#[test]
fn unknown_key_and_wrong_type_are_reported_together_with_lines() {
    let text = "node_name: a\ncolour: blue\napi:\n  port: not-a-port\n  bnd: 127.0.0.1\n";
    let errs = Config::from_yaml(text, "/etc/opsbro/agent.yml").expect_err("invalid");
    let rendered = errs.to_string();
    assert_eq!(errs.0.len(), 3, "{rendered}");
    assert!(rendered.contains("invalid configuration (3 errors)"));
    let colour = &errs.0[0];
    assert_eq!((colour.key.as_str(), colour.line), ("colour", Some(2)));
    assert!(colour.message.contains("unknown key"));
    let port = &errs.0[1];
    assert_eq!((port.key.as_str(), port.line), ("api.port", Some(4)));
    assert!(
        port.message.contains("expected a port number"),
        "{}",
        port.message
    );
    let bnd = &errs.0[2];
    assert_eq!((bnd.key.as_str(), bnd.line), ("api.bnd", Some(5)));
    assert!(
        bnd.message.contains("did you mean `bind`"),
        "{}",
        bnd.message
    );
    assert!(
        rendered.contains("/etc/opsbro/agent.yml:4: key `api.port`"),
        "{rendered}"
    );
}

#[test]
fn semantic_errors_name_the_key() {
    let text = "bind_addr: nowhere\nseeds:\n  - ok-host\n  - 'bad host:1'\n  - 'h:99999'\nlog_level: loud\nencryption_key: abc\ndata_dir: relative/dir\ngroups: ['has space']\n";
    let errs = Config::from_yaml(text, "f.yml").expect_err("invalid");
    let keys: Vec<_> = errs.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        keys,
        vec![
            ("bind_addr", Some(1)),
            ("seeds[1]", Some(4)),
            ("seeds[2]", Some(5)),
            ("log_level", Some(6)),
            ("encryption_key", Some(7)),
            ("data_dir", Some(8)),
            ("groups[0]", Some(9)),
        ]
    );
}

#[test]
fn syntax_errors_carry_a_line() {
    let errs = Config::from_yaml("a: 1\nb: [1, 2\nc: 3\n", "f.yml").expect_err("bad yaml");
    assert_eq!(errs.0.len(), 1);
    assert!(errs.0[0].line.is_some());
    assert!(
        errs.0[0].message.starts_with("not valid YAML"),
        "{}",
        errs.0[0].message
    );
}

#[test]
fn a_file_that_is_not_a_mapping_is_refused() {
    let errs = Config::from_yaml("- a\n- b\n", "f.yml").expect_err("a list");
    assert!(
        errs.0[0].message.contains("mapping"),
        "{}",
        errs.0[0].message
    );
}

#[test]
fn null_values_mean_default() {
    let c = Config::from_yaml("seeds:\nport:\n", "f.yml").expect("nulls");
    assert_eq!(c, Config::default());
}

#[test]
fn every_documented_key_is_known() {
    for key in raw::TOP_KEYS {
        let text = format!("{key}: null\n");
        Config::from_yaml(&text, "f.yml").unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    for key in raw::API_KEYS {
        Config::from_yaml(&format!("api:\n  {key}: null\n"), "f.yml").expect("api key");
    }
    for key in raw::GOSSIP_KEYS {
        Config::from_yaml(&format!("gossip:\n  {key}: null\n"), "f.yml").expect("gossip key");
    }
    for key in raw::ENCRYPTION_KEYS {
        Config::from_yaml(&format!("encryption:\n  {key}: null\n"), "f.yml").expect("enc key");
    }
    for key in raw::STATSD_KEYS {
        Config::from_yaml(&format!("statsd:\n  {key}: null\n"), "f.yml").expect("statsd key");
    }
    for key in raw::WEBSOCKET_KEYS {
        Config::from_yaml(&format!("websocket:\n  {key}: null\n"), "f.yml").expect("ws key");
    }
    for key in raw::GRAPHITE_KEYS {
        Config::from_yaml(&format!("graphite:\n  {key}: null\n"), "f.yml").expect("graphite key");
    }
    for key in raw::EXECUTOR_KEYS {
        Config::from_yaml(&format!("executor:\n  {key}: null\n"), "f.yml").expect("exec key");
    }
}

#[test]
fn executor_keys_are_checked_where_they_are_written() {
    let key = "ed25519 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= ops@laptop";
    let c = Config::from_yaml(
        &format!(
            "executor:\n  authorized_keys:\n    - {key}\n  private_key_file: /etc/opsbro/exec.key\n  max_per_minute: 10\n"
        ),
        "f.yml",
    )
    .expect("valid");
    assert_eq!(c.executor.authorized_keys.len(), 1);
    assert_eq!(c.executor.authorized_keys[0].comment, "ops@laptop");
    assert_eq!(
        c.executor.authorized_keys[0].key.id_hex(),
        "0001020304050607"
    );
    assert_eq!(c.executor.max_per_minute, 10);
    assert_eq!(Config::default().executor.max_per_minute, 60);
    assert!(Config::default().executor.authorized_keys.is_empty());
    let errs = Config::from_yaml(
        "executor:\n  authorized_keys:\n    - ed25519 AAAA\n  private_key_file: exec.key\n  max_per_minute: 0\n  authorised_keys: []\n",
        "f.yml",
    )
    .expect_err("bad");
    let text = errs.to_string();
    for k in [
        "executor.authorized_keys[0]",
        "executor.private_key_file",
        "executor.max_per_minute",
        "did you mean",
    ] {
        assert!(text.contains(k), "{k} in {text}");
    }
    let file = AuthorizedKey::parse_file(&format!("# operators\n\n{key}\nnot a key\n"))
        .expect_err("line 4");
    assert!(file.starts_with("line 4:"), "{file}");
}

#[test]
fn the_shipped_sample_config_is_valid() {
    let text = include_str!("../../../etc/opsbro/agent.yml");
    Config::from_yaml(text, "etc/opsbro/agent.yml").expect("sample config must load");
}

#[test]
fn defaults_depend_on_the_user() {
    let root = Config::default()
        .resolve(Overrides::default(), &host(0))
        .expect("root");
    assert_eq!(root.data_dir, PathBuf::from("/var/lib/opsbro"));
    assert_eq!(root.node_name, "web-1");
    assert_eq!(root.display_name, "web-1");
    assert_eq!(root.port, 6768);
    assert_eq!(root.api_port, 6770);
    assert_eq!(root.api_bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
    let user = Config::default()
        .resolve(Overrides::default(), &host(1000))
        .expect("user");
    assert_eq!(
        user.data_dir,
        PathBuf::from("/home/alice/.local/share/opsbro")
    );
    let mut xdg = host(1000);
    xdg.xdg_data_home = Some(PathBuf::from("/xdg"));
    let user = Config::default()
        .resolve(Overrides::default(), &xdg)
        .expect("xdg");
    assert_eq!(user.data_dir, PathBuf::from("/xdg/opsbro"));
}

#[test]
fn overrides_win_over_the_file() {
    let file =
        Config::from_yaml("port: 7000\nnode_name: from-file\nseeds: [a]\n", "f.yml").expect("ok");
    let over = Overrides {
        port: Some(7100),
        node_name: Some("from-flag".into()),
        seeds: vec![Seed::parse("b:1").expect("seed")],
        ..Overrides::default()
    };
    let c = file.resolve(over, &host(0)).expect("resolve");
    assert_eq!(c.port, 7100);
    assert_eq!(c.node_name, "from-flag");
    assert_eq!(
        c.seeds.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec!["a:6768", "b:1"]
    );
}

#[test]
fn non_loopback_api_without_token_is_refused() {
    let file = Config::from_yaml("api:\n  bind: 0.0.0.0\n", "f.yml").expect("ok");
    let err = file
        .clone()
        .resolve(Overrides::default(), &host(0))
        .expect_err("refused");
    assert_eq!(err.0[0].key, "api.bind");
    assert!(
        err.0[0].message.contains("without a token"),
        "{}",
        err.0[0].message
    );
    let with_token = Overrides {
        api_token: Some("t0ken".into()),
        ..Overrides::default()
    };
    file.resolve(with_token, &host(0))
        .expect("token makes it acceptable");
}

#[test]
fn seed_parsing() {
    assert_eq!(
        Seed::parse("10.0.0.1").expect("ip").to_string(),
        "10.0.0.1:6768"
    );
    assert_eq!(Seed::parse("[::1]:7").expect("v6").to_string(), "[::1]:7");
    assert_eq!(
        Seed::parse("::1").expect("bare v6").to_string(),
        "[::1]:6768"
    );
    assert_eq!(
        Seed::parse("node-2:99").expect("host").to_string(),
        "node-2:99"
    );
    assert!(Seed::parse("").is_err());
    assert!(Seed::parse("a:b").is_err());
    assert!(Seed::parse("a:0").is_err());
}

#[test]
fn keys_are_never_printed() {
    let key = EncryptionKey([7; 32]);
    assert_eq!(format!("{key:?}"), "EncryptionKey(..)");
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = Config::from_yaml(&text, "fuzz.yml");
    }

    #[test]
    fn arbitrary_yaml_lines_never_panic(lines in proptest::collection::vec("[a-z_]{1,12}: ?[-\\[\\]{}a-z0-9 .:,']{0,20}", 0..10)) {
        let text = lines.join("\n");
        let _ = Config::from_yaml(&text, "fuzz.yml");
    }
}

#[test]
fn gossip_tuning_accepts_durations_and_rejects_nonsense() {
    let c = Config::from_yaml(
        "gossip:\n  probe_interval: 2s\n  probe_timeout: 500ms\n  push_pull_interval: 1m\n  tombstone_ttl: 7d\n  suspicion_mult: 3\n  gossip_interval: 0.1\n",
        "f.yml",
    )
    .expect("valid");
    assert_eq!(
        c.gossip.probe_interval,
        Some(std::time::Duration::from_secs(2))
    );
    assert_eq!(
        c.gossip.probe_timeout,
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(
        c.gossip.push_pull_interval,
        Some(std::time::Duration::from_secs(60))
    );
    assert_eq!(
        c.gossip.tombstone_ttl,
        Some(std::time::Duration::from_secs(7 * 86400))
    );
    assert_eq!(
        c.gossip.gossip_interval,
        Some(std::time::Duration::from_millis(100))
    );
    assert_eq!(c.gossip.suspicion_mult, Some(3.0));
    let errs = Config::from_yaml(
        "gossip:\n  probe_interval: soon\n  probe_timeout: 5s\n  suspicion_mult: 50\n  tombstone_ttl: 3w\n  probes: 1\n",
        "f.yml",
    )
    .expect_err("invalid");
    let keys: Vec<_> = errs.0.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"gossip.probe_interval"), "{errs}");
    assert!(keys.contains(&"gossip.suspicion_mult"), "{errs}");
    assert!(keys.contains(&"gossip.tombstone_ttl"), "{errs}");
    assert!(keys.contains(&"gossip.probes"), "{errs}");
    assert!(keys.contains(&"gossip.probe_timeout"), "{errs}");
}

#[test]
fn kv_cache_size_takes_bytes_or_human_sizes_and_refuses_nonsense() {
    for (text, bytes) in [
        ("8MiB", 8 << 20),
        ("64MB", 64_000_000),
        ("1.5 GiB", 3 << 29),
        ("2097152", 2 << 20),
        ("2048kib", 2 << 20),
    ] {
        let c = Config::from_yaml(&format!("kv:\n  cache_size: {text}\n"), "f.yml")
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(c.kv.cache_size, Some(bytes), "{text}");
    }
    assert_eq!(
        Config::from_yaml("kv:\n  write_acks: one\n", "f.yml")
            .expect("valid")
            .kv
            .cache_size,
        None
    );
    for bad in ["lots", "8TB", "100", "0", "-5MiB", "8 parsecs", "[1]"] {
        let errs =
            Config::from_yaml(&format!("kv:\n  cache_size: {bad}\n"), "f.yml").expect_err(bad);
        assert!(
            errs.0.iter().any(|e| e.key == "kv.cache_size"),
            "{bad}: {errs}"
        );
    }
}

#[test]
fn statsd_and_graphite_sections() {
    let c = Config::from_yaml(
        "statsd:\n  enabled: true\n  port: 0\n  interval: 2s\ngraphite:\n  enabled: true\n  udp: false\n  forward: carbon.example.com:2003\n  forward_buffer: 10\n",
        "f.yml",
    )
    .expect("valid");
    assert!(c.statsd.enabled);
    assert_eq!(c.statsd.port, 0);
    assert_eq!(c.statsd.interval, std::time::Duration::from_secs(2));
    assert!(c.graphite.enabled && !c.graphite.udp && c.graphite.tcp);
    assert_eq!(c.graphite.port, 2003);
    assert_eq!(
        c.graphite.forward.as_deref(),
        Some("carbon.example.com:2003")
    );
    assert_eq!(c.graphite.forward_buffer, 10);
    let d = Config::default();
    assert!(!d.statsd.enabled && !d.graphite.enabled);
    assert_eq!((d.statsd.port, d.graphite.port), (8125, 2003));
    let errs = Config::from_yaml(
        "statsd:\n  interval: 0s\n  flush: 1\ngraphite:\n  forward: nowhere\n  forward_buffer: 0\n  bind: everywhere\n",
        "f.yml",
    )
    .expect_err("invalid");
    let keys: Vec<_> = errs.0.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "statsd.interval",
        "statsd.flush",
        "graphite.forward",
        "graphite.forward_buffer",
        "graphite.bind",
    ] {
        assert!(keys.contains(&k), "{k} in {errs}");
    }
}

#[test]
fn websocket_section_and_its_bind_rule() {
    let c = Config::from_yaml("websocket:\n  enabled: true\n  port: 0\n", "f.yml").expect("ok");
    assert!(c.websocket.enabled);
    assert_eq!(c.websocket.port, 0);
    assert_eq!(Config::default().websocket.port, 6769);
    let open = Config::from_yaml("websocket:\n  enabled: true\n  bind: 0.0.0.0\n", "f.yml")
        .expect("parses")
        .resolve(Overrides::default(), &host(0))
        .expect_err("non-loopback without token");
    assert!(open.to_string().contains("websocket.bind"), "{open}");
    Config::from_yaml(
        "websocket:\n  enabled: true\n  bind: 0.0.0.0\napi:\n  token: s3cret\n",
        "f.yml",
    )
    .expect("parses")
    .resolve(Overrides::default(), &host(0))
    .expect("allowed with a token");
}

#[test]
fn dns_threads_and_coalescing() {
    let c =
        Config::from_yaml("dns:\n  udp_threads: 1\n  coalesce: 250us\n", "f.yml").expect("valid");
    assert_eq!(c.dns.udp_threads, 1);
    assert_eq!(c.dns.coalesce, std::time::Duration::from_micros(250));
    let off = Config::from_yaml("dns:\n  coalesce: 0\n", "f.yml").expect("valid");
    assert!(off.dns.coalesce.is_zero());
    let d = Config::default();
    assert_eq!(
        (d.dns.udp_threads, d.dns.coalesce),
        (2, std::time::Duration::from_micros(200))
    );
    let errs = Config::from_yaml("dns:\n  udp_threads: 0\n  coalesce: 5ms\n", "f.yml")
        .expect_err("invalid");
    let keys: Vec<_> = errs.0.iter().map(|e| e.key.as_str()).collect();
    assert!(
        keys.contains(&"dns.udp_threads") && keys.contains(&"dns.coalesce"),
        "{errs}"
    );
    assert!(errs.to_string().contains("at most 1ms"), "{errs}");
}

#[test]
fn durations_out_of_range_are_errors_not_panics() {
    let v = |t: &str| parse_duration(&serde_yaml::Value::String(t.into()));
    assert!(
        v("99999999999999999999d")
            .expect_err("too big")
            .contains("out of range")
    );
    assert!(v("1e400s").is_err());
    assert_eq!(v("7d"), Ok(std::time::Duration::from_secs(7 * 86400)));
    let n = |x: f64| parse_duration(&serde_yaml::Value::Number(x.into()));
    assert!(n(1e30).is_err());
    assert!(n(-1.0).is_err());
}

#[test]
fn gossip_flood_limits_are_configurable_and_bounded() {
    let c = Config::from_yaml(
        "gossip:\n  max_members: 5000\n  max_new_members_per_peer: 50\n",
        "f.yml",
    )
    .expect("valid");
    assert_eq!(c.gossip.max_members, Some(5000));
    assert_eq!(c.gossip.max_new_members_per_peer, Some(50));
    let errs = Config::from_yaml("gossip:\n  max_members: 1\n", "f.yml").expect_err("too small");
    assert!(errs.to_string().contains("gossip.max_members"), "{errs}");
}

/// Regression: the original README's `dns:` block (as rendered: spaces, aligned colons and a
/// domain with a leading dot) was refused — `.opsbro` is the domain `opsbro`.
#[test]
fn the_readme_dns_block_with_a_leading_dot_domain_is_accepted() {
    let readme =
        "dns:\n    enabled    : true\n    port       : 6766\n    domain     : \".opsbro\"\n";
    let c = Config::from_yaml(readme, "agent.yml").expect("the README's block is valid");
    assert!(c.dns.enabled);
    assert_eq!(c.dns.port, 6766);
    assert_eq!(c.dns.domain, "opsbro");
    for (written, domain) in [
        ("opsbro.", "opsbro"),
        (".Corp.Example.", "corp.example"),
        ("opsbro", "opsbro"),
    ] {
        let c = Config::from_yaml(&format!("dns:\n  domain: \"{written}\"\n"), "f.yml")
            .expect("valid domain");
        assert_eq!(c.dns.domain, domain, "{written}");
    }
    for bad in ["..opsbro", ".", "a..b"] {
        let errs =
            Config::from_yaml(&format!("dns:\n  domain: \"{bad}\"\n"), "f.yml").expect_err(bad);
        assert_eq!(errs.0[0].key, "dns.domain", "{bad}");
    }
}

/// The same block copied from the Markdown source keeps the tab Markdown allows before a code
/// line: the error says that a tab is the problem.
#[test]
fn a_tab_in_the_indentation_is_named_in_the_error() {
    let pasted = "dns:\n    enabled    : true\n\t    port       : 6766\n";
    let errs = Config::from_yaml(pasted, "agent.yml").expect_err("tabs are not YAML indentation");
    assert_eq!(errs.0[0].line, Some(3), "{errs}");
    assert!(errs.0[0].message.contains("indented with a tab"), "{errs}");
}

#[test]
fn log_file_and_retention_are_read_and_checked_with_lines() {
    let c = Config::from_yaml(
        "log_file: /var/log/opsbro/agent.log\nlog_keep_days: 30\n",
        "agent.yml",
    )
    .expect("valid");
    assert_eq!(
        c.log_file.as_deref(),
        Some(Path::new("/var/log/opsbro/agent.log"))
    );
    assert_eq!(c.log_keep_days, Some(30));
    let resolved = Config::default()
        .resolve(Overrides::default(), &host(0))
        .expect("defaults");
    assert_eq!(resolved.log_file, None);
    assert_eq!(resolved.log_keep_days, DEFAULT_LOG_KEEP_DAYS);
    let errs = Config::from_yaml(
        "node_name: a\nlog_file: agent.log\nlog_keep_days: 0\n",
        "f.yml",
    )
    .expect_err("invalid");
    let keys: Vec<(&str, Option<usize>)> =
        errs.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        keys,
        [("log_file", Some(2)), ("log_keep_days", Some(3))],
        "{errs}"
    );
}

#[test]
fn hosting_settings_are_read_and_checked() {
    let c = Config::from_yaml(
        "hosting:\n  driver: EC2\n  always_probe: true\n  metadata_timeout: 500ms\n  advertise_public_address: true\n",
        "agent.yml",
    )
    .expect("valid");
    assert_eq!(
        c.hosting,
        HostingSettings {
            driver: "ec2".into(),
            always_probe: true,
            metadata_timeout: std::time::Duration::from_millis(500),
            advertise_public_address: true,
        }
    );
    assert_eq!(Config::default().hosting.driver, "auto");
    let errs = Config::from_yaml(
        "hosting:\n  driver: aws\n  metadata_timeout: 10s\n  probe: yes\n",
        "agent.yml",
    )
    .expect_err("invalid");
    let text = errs.to_string();
    assert_eq!(errs.0.len(), 3, "{text}");
    assert!(text.contains("`aws` is not a hosting driver"), "{text}");
    assert!(text.contains("outside 50ms..2s"), "{text}");
    assert!(text.contains("hosting.probe"), "{text}");
}
