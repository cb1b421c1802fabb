//! `opsbro`: parse the command line, set up logging and the runtime, dispatch, map errors to exit
//! codes (0 ok, 1 unreachable/runtime error, 2 usage error or negative answer).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use opsbro_api::gossip::KeyringOp;
use opsbro_cli::args::{
    AgentCommand, Cli, CollectorsCommand, Command, ComplianceCommand, DashboardsCommand,
    DetectorsCommand, DockerCommand, ElectionCommand, EvaluatorCommand, EventsCommand,
    ExecutorsCommand, GeneratorsCommand, GossipCommand, GroupsCommand, KeyringCommand, KvCommand,
    LiveEventsCommand, MetricsCommand, MonitoringCommand, PacksCommand, RaftCommand,
    ServicesCommand, TutorialsCommand, ZoneCommand, ZoneKeyCommand,
};
use opsbro_cli::client::Client;
use opsbro_cli::commands::detectors::View;
use opsbro_cli::commands::{
    agent, collectors, compliance, detectors, docker, evaluator, events, executors, generators,
    gossip, kv, metrics, monitoring, packs, raft, services,
};
use opsbro_cli::error::CliError;

fn main() -> ExitCode {
    quiet_broken_pipe();
    opsbro_agent::install_tls_provider();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = e.to_string();
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            e.exit_code()
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Agent(AgentCommand::Start(args)) => {
            let config = agent::load_config(&args, cli.token.clone())?;
            // One pass prints its report: only problems are logged, unless asked otherwise.
            let quiet = args.one_shot && args.log_level.is_none();
            // A one-shot pass reports on stdout; it does not write the agent's log file.
            let log_file = match &config.log_file {
                Some(path) if !args.one_shot => Some(open_log_file(path, config.log_keep_days)?),
                _ => None,
            };
            init_tracing(
                args.log_level.is_some() || quiet,
                if quiet { "warn" } else { &config.log_level },
                log_file,
            );
            // Before any thread starts: two malloc arenas serve the agent's few busy threads;
            // glibc's default (8 per core) lets each thread keep freed memory of its own.
            // OPSBRO_RELEASE_MEMORY=0 keeps glibc's defaults (and, in the agent, every page).
            if opsbro_memory::enabled() {
                opsbro_memory::limit_malloc_arenas(2);
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("opsbro")
                .build()
                .map_err(|e| CliError::Other(e.into()))?;
            if args.one_shot {
                runtime.block_on(agent::start_once(config, args.json))
            } else {
                // A reload reads the same file with the same flags again.
                let token = cli.token.clone();
                let loader: opsbro_agent::reload::ConfigLoader = std::sync::Arc::new(move || {
                    agent::load_config(&args, token.clone()).map_err(|e| e.to_string())
                });
                runtime.block_on(agent::start(config, loader))
            }
        }
        Command::Agent(AgentCommand::Keygen) => agent::keygen(),
        // Offline: the agent is stopped, no API to talk to.
        Command::Agent(AgentCommand::Snapshot(opsbro_cli::args::SnapshotCommand::Restore {
            file,
            data_dir,
            config,
            new_uuid,
            force,
        })) => opsbro_cli::commands::snapshot::restore(
            &file,
            data_dir,
            config,
            opsbro_agent::snapshot::RestoreOptions { new_uuid, force },
        ),
        Command::Completions { shell } => {
            // clap_complete panics on a failed write: write the script ourselves so a reader
            // that stops early (`| head`) ends it quietly.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "opsbro", &mut script);
            write_stdout(&script)
        }
        Command::Version => write_stdout(Cli::command().render_version().as_bytes()),
        Command::Manpages { dir } => opsbro_cli::commands::manpages::write_all(&dir),
        Command::Gossip(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    GossipCommand::Members {
                        detail,
                        json,
                        format,
                    } => gossip::members(&client, detail, json, format).await,
                    GossipCommand::Join { addr } => gossip::join(&client, addr).await,
                    GossipCommand::Detect {
                        timeout,
                        auto_join,
                        json,
                    } => gossip::detect(&client, timeout, auto_join, json).await,
                    GossipCommand::Leave { node } => gossip::leave(&client, node).await,
                    GossipCommand::History { json } => gossip::history(&client, json).await,
                    GossipCommand::Ping { node, json } => gossip::ping(&client, node, json).await,
                    GossipCommand::Events(EventsCommand::Add { kind, payload }) => {
                        gossip::add_event(&client, kind, payload).await
                    }
                    GossipCommand::Events(EventsCommand::List { json }) => {
                        gossip::list_events(&client, json).await
                    }
                    GossipCommand::Events(EventsCommand::Wait { kind, timeout }) => {
                        gossip::wait_event(&client, kind, timeout).await
                    }
                    GossipCommand::Keyring(k) => {
                        let (change, json) = match k {
                            KeyringCommand::List { json } => (None, json),
                            KeyringCommand::Install { key } => {
                                (Some((KeyringOp::Install, key)), false)
                            }
                            KeyringCommand::Use { key } => (Some((KeyringOp::Use, key)), false),
                            KeyringCommand::Remove { key } => {
                                (Some((KeyringOp::Remove, key)), false)
                            }
                        };
                        gossip::keyring(&client, change, json).await
                    }
                    GossipCommand::Zone(ZoneCommand::List { json }) => {
                        gossip::zones(&client, json).await
                    }
                    GossipCommand::Zone(ZoneCommand::Change { name }) => {
                        gossip::zone_change(&client, name).await
                    }
                    GossipCommand::Zone(ZoneCommand::Key(k)) => {
                        let (op, zone, key, erase) = match k {
                            ZoneKeyCommand::Generate { zone, erase } => {
                                ("import", zone, None, erase)
                            }
                            ZoneKeyCommand::Import { zone, key, erase } => {
                                ("import", zone, Some(key), erase)
                            }
                            ZoneKeyCommand::Install { zone, key } => {
                                ("install", zone, Some(key), false)
                            }
                            ZoneKeyCommand::Use { zone, key } => ("use", zone, Some(key), false),
                            ZoneKeyCommand::Remove { zone, key } => {
                                ("remove", zone, Some(key), false)
                            }
                        };
                        gossip::zone_key(&client, op, zone, key, erase).await
                    }
                    GossipCommand::WaitMembers {
                        count,
                        name,
                        display_name,
                        group,
                        timeout,
                    } => {
                        let wanted = gossip::Wanted {
                            count: count.unwrap_or(1),
                            name,
                            display_name,
                            group,
                        };
                        gossip::wait_members(&client, &wanted, timeout).await
                    }
                }
            })
        }
        Command::Collectors(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    CollectorsCommand::List { json } => collectors::list(&client, json).await,
                    CollectorsCommand::Show { name, json } => {
                        collectors::show(&client, name, json).await
                    }
                    CollectorsCommand::History { json } => collectors::history(&client, json).await,
                    CollectorsCommand::WaitOk { name, timeout } => {
                        collectors::wait_ok(&client, &name, timeout).await
                    }
                    CollectorsCommand::Run { name, json } => {
                        collectors::run(&client, &name, json).await
                    }
                }
            })
        }
        Command::Kv(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    KvCommand::Get { key, raw, json } => kv::get(&client, &key, raw, json).await,
                    KvCommand::Put {
                        key,
                        value,
                        cas,
                        ttl,
                    } => kv::put(&client, &key, &value, cas, ttl).await,
                    KvCommand::Delete { key, cas } => kv::delete(&client, &key, cas).await,
                    KvCommand::List { prefix, json } => kv::list(&client, prefix, json).await,
                    KvCommand::WaitExists { key, timeout } => {
                        kv::wait_exists(&client, &key, timeout).await
                    }
                    KvCommand::Locate { key, json } => kv::locate(&client, &key, json).await,
                    KvCommand::Export { prefix, output } => {
                        kv::export(&client, prefix, output).await
                    }
                    KvCommand::Import { file } => kv::import(&client, file).await,
                }
            })
        }
        Command::Events(LiveEventsCommand::Watch {
            channels,
            json,
            count,
            url,
        }) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(events::watch(&client, url, channels, json, count))
        }
        Command::Generators(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    GeneratorsCommand::State { show_diff, json } => {
                        generators::state(&client, show_diff, json).await
                    }
                    GeneratorsCommand::History { json } => generators::history(&client, json).await,
                    GeneratorsCommand::WaitCompliant { name, timeout } => {
                        generators::wait_compliant(&client, &name, timeout).await
                    }
                }
            })
        }
        Command::Metrics(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    MetricsCommand::Find {
                        pattern,
                        recursive,
                        json,
                    } => metrics::find(&client, &pattern, recursive, json).await,
                    MetricsCommand::Show {
                        target,
                        from,
                        until,
                        all,
                        json,
                    } => metrics::show(&client, &target, &from, &until, all, json).await,
                }
            })
        }
        Command::Monitoring(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    MonitoringCommand::State { node, json } => {
                        monitoring::state(&client, node, json).await
                    }
                    MonitoringCommand::History { limit, json } => {
                        monitoring::history(&client, limit, json).await
                    }
                    MonitoringCommand::Handlers { json } => {
                        monitoring::handlers(&client, json).await
                    }
                    MonitoringCommand::WaitOk { name, timeout } => {
                        monitoring::wait_ok(&client, &name, timeout).await
                    }
                    MonitoringCommand::Ttl { status, name, note } => {
                        services::ttl(&client, status, &name, note).await
                    }
                }
            })
        }
        Command::Lock {
            name,
            command,
            ttl,
            wait,
        } => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(raft::lock(
                &client,
                raft::LockArgs {
                    name,
                    command,
                    ttl,
                    wait,
                },
            ))
        }
        Command::Raft(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    RaftCommand::State { json } => raft::state(&client, json).await,
                    RaftCommand::Locks { json } => raft::locks(&client, json).await,
                    RaftCommand::WaitLeader { timeout } => {
                        raft::wait_leader(&client, timeout).await
                    }
                }
            })
        }
        Command::Election(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    ElectionCommand::State { name, json } => {
                        raft::elections(&client, name.as_deref(), json).await
                    }
                    ElectionCommand::WaitLeader { name, timeout } => {
                        raft::wait_election(&client, &name, timeout).await
                    }
                }
            })
        }
        Command::Executors(ExecutorsCommand::Keygen { out, comment }) => {
            executors::keygen(out.as_deref(), comment.as_deref())
        }
        Command::Executors(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    ExecutorsCommand::Exec {
                        group,
                        command,
                        node,
                        key,
                        timeout,
                        json,
                    } => {
                        executors::exec(
                            &client,
                            executors::ExecArgs {
                                group,
                                command: command.join(" "),
                                node,
                                key,
                                timeout,
                            },
                            json,
                        )
                        .await
                    }
                    ExecutorsCommand::History { limit, json } => {
                        executors::history(&client, limit, json).await
                    }
                    ExecutorsCommand::State { json } => executors::state(&client, json).await,
                    ExecutorsCommand::Keygen { .. } => unreachable!("handled above"),
                }
            })
        }
        Command::Compliance(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    ComplianceCommand::State { name, json } => {
                        compliance::state(&client, name.as_deref(), json).await
                    }
                    ComplianceCommand::History { limit, json } => {
                        compliance::history(&client, limit, json).await
                    }
                    ComplianceCommand::Launch { name, json } => {
                        compliance::launch(&client, &name, json).await
                    }
                    ComplianceCommand::WaitCompliant { name, timeout } => {
                        compliance::wait_compliant(&client, &name, timeout).await
                    }
                }
            })
        }
        Command::Services(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    ServicesCommand::List { local, json } => {
                        services::list(&client, local, json).await
                    }
                    ServicesCommand::Show {
                        name,
                        passing,
                        tag,
                        json,
                    } => services::show(&client, &name, passing, tag.as_deref(), json).await,
                    ServicesCommand::Register { file, json } => {
                        services::register(&client, &file, json).await
                    }
                    ServicesCommand::Deregister { name } => {
                        services::deregister(&client, &name).await
                    }
                    ServicesCommand::Maintenance {
                        name,
                        state,
                        reason,
                    } => services::service_maintenance(&client, &name, state, reason).await,
                }
            })
        }
        Command::Detectors(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            let (view, only, json) = match command {
                DetectorsCommand::List { json } => (View::List, None, json),
                DetectorsCommand::State { json } => (View::State, None, json),
                DetectorsCommand::Run { name, json } => (View::Run, name, json),
                DetectorsCommand::History { json } => {
                    return client_runtime()?.block_on(detectors::history(&client, json));
                }
                DetectorsCommand::WaitGroup { group, timeout } => {
                    return client_runtime()?
                        .block_on(detectors::wait_group(&client, &group, timeout));
                }
            };
            client_runtime()?.block_on(detectors::detectors(&client, view, only, json))
        }
        Command::Packs(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    PacksCommand::List { json } => packs::list(&client, json).await,
                    PacksCommand::Show { name, json } => packs::show(&client, &name, json).await,
                }
            })
        }
        Command::Dashboards(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    DashboardsCommand::List { json } => packs::dashboards(&client, json).await,
                    DashboardsCommand::Show { name, json } => {
                        packs::dashboard(&client, &name, json).await
                    }
                }
            })
        }
        Command::Docker(DockerCommand::Show { json }) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(docker::show(&client, json))
        }
        Command::Tutorials(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    TutorialsCommand::List { json } => packs::tutorials(&client, json).await,
                    TutorialsCommand::Show { name, json } => {
                        packs::tutorial(&client, &name, json).await
                    }
                }
            })
        }
        Command::Evaluator(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    EvaluatorCommand::List { json } => evaluator::list(&client, json).await,
                    EvaluatorCommand::Eval { expr, json } => {
                        evaluator::eval(&client, expr, json).await
                    }
                    EvaluatorCommand::WaitEvalTrue { expr, timeout } => {
                        evaluator::wait_eval_true(&client, expr, timeout).await
                    }
                }
            })
        }
        Command::Agent(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    AgentCommand::Stop { timeout } => agent::stop(&client, timeout).await,
                    AgentCommand::Info { json } => agent::info(&client, json).await,
                    AgentCommand::State { json } => agent::state(&client, json).await,
                    AgentCommand::WaitInitialized { timeout } => {
                        agent::wait_initialized(&client, timeout).await
                    }
                    AgentCommand::Groups(GroupsCommand::Add { group }) => {
                        agent::groups(&client, &group, true).await
                    }
                    AgentCommand::Groups(GroupsCommand::Remove { group }) => {
                        agent::groups(&client, &group, false).await
                    }
                    AgentCommand::Log(opsbro_cli::args::LogCommand::Follow { level, json }) => {
                        opsbro_cli::commands::log::follow(&client, level, json).await
                    }
                    AgentCommand::Print { what } => agent::print(&client, what).await,
                    AgentCommand::Maintenance {
                        state,
                        reason,
                        json,
                    } => services::node_maintenance(&client, state, reason, json).await,
                    AgentCommand::Reload { json } => {
                        opsbro_cli::commands::parameters::reload(&client, json).await
                    }
                    AgentCommand::Parameters(command) => {
                        opsbro_cli::commands::parameters::parameters(&client, command).await
                    }
                    AgentCommand::Snapshot(opsbro_cli::args::SnapshotCommand::Save { file }) => {
                        opsbro_cli::commands::snapshot::save(&client, &file).await
                    }
                    AgentCommand::Start(_)
                    | AgentCommand::Keygen
                    | AgentCommand::Snapshot(opsbro_cli::args::SnapshotCommand::Restore {
                        ..
                    }) => unreachable!("handled above"),
                }
            })
        }
    }
}

/// Write `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Other(e.into())),
        _ => Ok(()),
    }
}

/// `opsbro ... | head` closes stdout early: `println!` then panics with "Broken pipe". That is
/// not an error of ours; leave quietly like any Unix tool instead of printing a panic.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.contains("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// The CLI's commands are a few HTTP calls: one thread is plenty.
fn client_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(e.into()))
}

/// `log_file`, rotated daily and kept `keep` days; `FORCE_LOG_ROTATION_PERIOD` (seconds, as the
/// original opsbro) rotates it that often instead, for tests.
fn open_log_file(
    path: &std::path::Path,
    keep: u32,
) -> Result<opsbro_agent::logfile::RotatingFile, CliError> {
    let period = std::env::var("FORCE_LOG_ROTATION_PERIOD")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(std::time::Duration::from_secs);
    opsbro_agent::logfile::RotatingFile::open(path, keep, period).map_err(|e| {
        CliError::Usage(format!(
            "cannot open the log file {} ({e}): fix `log_file` or the directory's permissions",
            path.display()
        ))
    })
}

/// Logs go to stderr, to `log_file` when set, and to `agent log follow` readers. Level:
/// `--log-level`/`OPSBRO_LOG_LEVEL` first, then `RUST_LOG` (full filter syntax), then `log_level`
/// from the file, then info.
fn init_tracing(
    level_from_flag: bool,
    level: &str,
    log_file: Option<opsbro_agent::logfile::RotatingFile>,
) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !level_from_flag && !spec.trim().is_empty() => EnvFilter::try_new(spec)
            .unwrap_or_else(|e| {
                eprintln!("warning: ignoring RUST_LOG ({e}); using level {level}");
                EnvFilter::new(level)
            }),
        _ => EnvFilter::new(level),
    };
    // The filter applies to every layer: the counts (`agent info`) are of what is logged.
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(log_file.map(|file| {
            tracing_subscriber::fmt::layer()
                .with_writer(file)
                .with_ansi(false)
        }))
        .with(opsbro_agent::logcount::CountingLayer)
        .with(opsbro_agent::logstream::StreamLayer)
        .init();
}
