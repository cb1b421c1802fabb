//! `opsbro`: parse the command line, set up logging and the runtime, dispatch, map errors to exit
//! codes (0 ok, 1 unreachable/runtime error, 2 usage error or negative answer).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use opsbro_api::gossip::KeyringOp;
use opsbro_cli::args::{
    AgentCommand, Cli, CollectorsCommand, Command, DetectorsCommand, EvaluatorCommand,
    EventsCommand, GeneratorsCommand, GossipCommand, GroupsCommand, KeyringCommand, KvCommand,
    LiveEventsCommand, MetricsCommand, MonitoringCommand, PacksCommand,
};
use opsbro_cli::client::Client;
use opsbro_cli::commands::detectors::View;
use opsbro_cli::commands::{
    agent, collectors, detectors, evaluator, events, generators, gossip, kv, metrics, monitoring,
};
use opsbro_cli::error::CliError;

fn main() -> ExitCode {
    quiet_broken_pipe();
    opsbro_agent::install_tls_provider();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Agent(AgentCommand::Start(args)) => {
            let config = agent::load_config(&args, cli.token)?;
            init_tracing(args.log_level.is_some(), &config.log_level);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("opsbro")
                .build()
                .map_err(|e| CliError::Other(e.into()))?
                .block_on(agent::start(config))
        }
        Command::Agent(AgentCommand::Keygen) => agent::keygen(),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "opsbro", &mut std::io::stdout());
            Ok(())
        }
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
                    GossipCommand::WaitMembers {
                        count,
                        group,
                        timeout,
                    } => gossip::wait_members(&client, count, group, timeout).await,
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
                }
            })
        }
        Command::Detectors(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            let (view, only, json) = match command {
                DetectorsCommand::List { json } => (View::List, None, json),
                DetectorsCommand::State { json } => (View::State, None, json),
                DetectorsCommand::Run { name, json } => (View::Run, name, json),
            };
            client_runtime()?.block_on(detectors::detectors(&client, view, only, json))
        }
        Command::Packs(PacksCommand::List { json }) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(detectors::packs(&client, json))
        }
        Command::Packs(PacksCommand::Show { name, json }) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(detectors::show_pack(&client, &name, json))
        }
        Command::Evaluator(command) => {
            let client = Client::with_token_file(&cli.api, cli.token, cli.token_file.as_deref())?;
            client_runtime()?.block_on(async {
                match command {
                    EvaluatorCommand::List { json } => evaluator::list(&client, json).await,
                    EvaluatorCommand::Eval { expr, json } => {
                        evaluator::eval(&client, expr, json).await
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
                    AgentCommand::Start(_) | AgentCommand::Keygen => unreachable!("handled above"),
                }
            })
        }
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

/// Logs go to stderr. Level: `--log-level`/`OPSBRO_LOG_LEVEL` first, then `RUST_LOG` (full
/// filter syntax), then `log_level` from the file, then info.
fn init_tracing(level_from_flag: bool, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !level_from_flag && !spec.trim().is_empty() => EnvFilter::try_new(spec)
            .unwrap_or_else(|e| {
                eprintln!("warning: ignoring RUST_LOG ({e}); using level {level}");
                EnvFilter::new(level)
            }),
        _ => EnvFilter::new(level),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
