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
use lb_agent::{agent, config::AgentConfig};
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour for a person at a terminal, none in a log file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::Check { config }), _) => check(&config),
        (None, Some(config)) => run(&config),
        (None, None) => Err("--config FILE is required".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> Result<(), String> {
    let config = AgentConfig::load(path).map_err(|e| e.to_string())?;
    config
        .check_host(std::path::Path::new(lb_agent::sources::HOST_ROOT))
        .map_err(|e| format!("{}: {e}", path.display()))?;
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

fn run(path: &std::path::Path) -> Result<(), String> {
    let config = AgentConfig::load(path).map_err(|e| e.to_string())?;
    // The agent is light: two workers are plenty, and a blocking operator
    // command runs on tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    runtime.block_on(async {
        let (stop, shutdown) = watch::channel(false);
        let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())
            .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
        let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())
            .map_err(|e| format!("cannot install the SIGINT handler: {e}"))?;
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
        agent::run(config, shutdown)
            .await
            .map_err(|e| e.to_string())
    })
}
