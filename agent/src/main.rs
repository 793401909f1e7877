//! `lb-agent`: the per-host agent. It reports this real server's load and
//! health to the manager and answers its settings requests.
//!
//! ```text
//! lb-agent --config /etc/xdplb/agent.toml          run
//! lb-agent check --config /etc/xdplb/agent.toml    validate the file (and
//!                                                  that its cgroup exists)
//! ```

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_agent::{
    agent::{self, AgentError},
    config::{AgentConfig, ConfigError, HostCheckError},
};
use tokio::{signal::unix::SignalKind, sync::watch};

#[derive(Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "Load balancer agent: reports this server to the manager",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// The configuration file to run with.
    #[arg(long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,
    /// How the log on stderr is written.
    #[arg(long, value_enum, global = true, default_value_t = lb_proto::logging::Format::Text)]
    log_format: lb_proto::logging::Format,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file, and that the cgroup it names exists
    /// on this host, and exit (0 = valid).
    Check {
        /// The file to check.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// The decapsulation of tunnelled packets (IPIP, GUE) from the
    /// balancer's nodes to this server's VIPs.
    #[command(subcommand)]
    Decap(DecapCommand),
}

#[derive(Subcommand)]
enum DecapCommand {
    /// Installs (or replaces in place) the program on an interface and
    /// returns once it is attached and pinned; nothing keeps running.
    Attach {
        /// The interface tunnelled packets arrive on.
        #[arg(long)]
        interface: String,
        /// An outer source allowed to tunnel to this server (a node's
        /// `tunnel_source`); repeatable, at least one.
        #[arg(long = "source", value_name = "ADDR", required = true)]
        sources: Vec<std::net::IpAddr>,
        /// A VIP this server serves (on its loopback); repeatable, at least
        /// one. A tunnelled packet for any other address is dropped.
        #[arg(long = "vip", value_name = "ADDR", required = true)]
        vips: Vec<std::net::IpAddr>,
        /// The outer UDP destination port of GUE (the nodes' `gue_port`).
        #[arg(long, default_value_t = lb_common::decap::DEFAULT_GUE_PORT)]
        gue_port: u16,
        /// The bpffs directory the pins go under.
        #[arg(long, default_value = lb_agent::decap::PIN_ROOT)]
        pin_root: PathBuf,
    },
    /// Detaches the program from an interface and removes every pin made
    /// for it.
    Detach {
        /// The interface.
        #[arg(long)]
        interface: String,
        /// The bpffs directory the pins are under.
        #[arg(long, default_value = lb_agent::decap::PIN_ROOT)]
        pin_root: PathBuf,
    },
    /// The program's counters on an interface: packets decapsulated (IPIP,
    /// GUE), refused (a source not allowed), malformed, passed.
    Status {
        /// The interface.
        #[arg(long)]
        interface: String,
        /// The bpffs directory the pins are under.
        #[arg(long, default_value = lb_agent::decap::PIN_ROOT)]
        pin_root: PathBuf,
    },
}

/// Why the agent stopped or `check` failed; printed as `error: ...`.
#[derive(Debug, thiserror::Error)]
enum MainError {
    /// Neither `--config` nor `check` was given.
    #[error("--config FILE is required")]
    NoConfig,
    /// The file cannot be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The file is valid but does not fit this host.
    #[error("{path}: {source}")]
    Host {
        path: PathBuf,
        #[source]
        source: HostCheckError,
    },
    /// The async runtime could not start (threads, epoll).
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A stop signal could not be handled.
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The agent stopped on an error.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// `decap attach|detach|status` failed.
    #[error(transparent)]
    Decap(#[from] lb_agent::decap::DecapError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    lb_proto::logging::init(format);
    let result = match (cli.command, cli.config) {
        (Some(Command::Check { config }), _) => check(&config),
        (Some(Command::Decap(command)), _) => decap(command),
        (None, Some(config)) => run(&config),
        (None, None) => Err(MainError::NoConfig),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A log collector reads JSON lines only.
            if format == lb_proto::logging::Format::Json {
                tracing::error!("{e}");
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> Result<(), MainError> {
    let config = AgentConfig::load(path)?;
    config
        .check_host(std::path::Path::new(lb_agent::sources::HOST_ROOT))
        .map_err(|source| MainError::Host {
            path: path.to_owned(),
            source,
        })?;
    if config.insecure_plaintext {
        println!("warning: insecure_plaintext = true: the manager connection is not encrypted");
    }
    println!(
        "{}: ok (host {}, manager {} as {}, {} application(s))",
        path.display(),
        config.host,
        config.manager,
        config.manager_name,
        config.applications.len()
    );
    Ok(())
}

fn decap(command: DecapCommand) -> Result<(), MainError> {
    use lb_agent::decap;
    match command {
        DecapCommand::Attach {
            interface,
            sources,
            vips,
            gue_port,
            pin_root,
        } => {
            let spec = decap::DecapSpec {
                interface,
                sources,
                vips,
                gue_port,
            };
            let id = decap::attach(&spec, &pin_root)?;
            println!(
                "decapsulation on {}: program {id}, sources {}, VIPs {}, GUE port {}; pinned in {}",
                spec.interface,
                joined(&spec.sources),
                joined(&spec.vips),
                spec.gue_port,
                decap::pin_dir(&pin_root, &spec.interface)?.display()
            );
        }
        DecapCommand::Detach {
            interface,
            pin_root,
        } => {
            if decap::detach(&pin_root, &interface)? {
                println!("decapsulation removed from {interface}");
            } else {
                println!("no decapsulation on {interface}: nothing to remove");
            }
        }
        DecapCommand::Status {
            interface,
            pin_root,
        } => {
            for (name, n) in decap::counters(&pin_root, &interface)? {
                println!("{name:<10} {n}");
            }
        }
    }
    Ok(())
}

fn joined(addrs: &[std::net::IpAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn run(path: &std::path::Path) -> Result<(), MainError> {
    let config = AgentConfig::load(path)?;
    // The agent is light: two workers are plenty, and a blocking operator
    // command runs on tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(MainError::Runtime)?;
    runtime.block_on(async {
        let (stop, shutdown) = watch::channel(false);
        let mut terminate =
            tokio::signal::unix::signal(SignalKind::terminate()).map_err(|source| {
                MainError::Signal {
                    signal: "SIGTERM",
                    source,
                }
            })?;
        let mut interrupt =
            tokio::signal::unix::signal(SignalKind::interrupt()).map_err(|source| {
                MainError::Signal {
                    signal: "SIGINT",
                    source,
                }
            })?;
        tokio::spawn(async move {
            let signal = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!(signal, "stopping");
            stop.send_replace(true);
            // Keep the sender alive so the agent sees `true`, not a hang-up.
            std::future::pending::<()>().await;
        });
        Ok(agent::run(config, shutdown).await?)
    })
}
