//! `lb-control`: the balancer node daemon.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use clap::{Parser, Subcommand};
use lb_control::{
    api::{self, Daemon, NodeRole},
    config::{Config, ConfigError},
    manager::{
        ManagerError,
        controller::{Controller, ControllerError, persisted_weights},
    },
    node::{
        ApplyError, Node,
        dataplane::{self, DataPlaneError},
        desired::Desired,
        listener::{self, ListenError},
        reconfigure::{NodeState, NodeStateError, Reconfigurer, state_path},
    },
};
use tokio::{signal::unix::SignalKind, sync::Mutex};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "lb-control", version, about = "XDP load balancer node")]
struct Cli {
    /// How the log on stderr is written.
    #[arg(long, value_enum, global = true, default_value_t = lb_proto::logging::Format::Text)]
    log_format: lb_proto::logging::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load (or adopt) the XDP program, program the config, serve lbctl.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file and exit (0 = valid).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Detach the program from every interface and remove all pins.
    Detach {
        #[arg(long)]
        config: PathBuf,
    },
    /// Write man pages for lb-control and each of its subcommands into DIR
    /// (`cargo xtask man` runs it).
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The weights in force a manager last published (hundredths, by service
/// and server) over the file's: members without one get their file weight
/// in hundredths, the same table as the file weight.
fn apply_persisted_weights(
    desired: &mut Desired,
    weights: &lb_control::manager::controller::ServiceWeightMap,
) {
    let scale = lb_control::manager::weights::WEIGHT_SCALE;
    for svc in &mut desired.model.services {
        let Some(published) = weights.get(&svc.name) else {
            continue;
        };
        svc.weight_scale = scale;
        for server in &mut svc.servers {
            server.weight = published
                .get(&server.name)
                .copied()
                .unwrap_or_else(|| server.weight.saturating_mul(scale));
        }
    }
}

/// Why `lb-control` stopped, or a command failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Detaching, or taking the pin directory.
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error("{0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error("cannot create node.state_dir {}: {source}", dir.display())]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// `node-state.json` does not load (the message says what to do).
    #[error(transparent)]
    NodeState(#[from] NodeStateError),
    #[error(transparent)]
    Node(#[from] ApplyError),
    #[error(transparent)]
    Listener(#[from] ListenError),
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    Socket(#[from] lb_control::api::access::AccessError),
    #[error(transparent)]
    Metrics(#[from] lb_control::metrics::MetricsError),
    #[error("cannot write man pages into {}: {source}", dir.display())]
    Man {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Signal(#[source] std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lb_proto::logging::init(cli.log_format);
    // `run` is the daemon: its stderr is its log, so its last error is a log
    // line. `check` and `detach` are commands: one plain `error:` line.
    let daemon = matches!(cli.command, Command::Run { .. });
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Detach { config } => Config::load(&config)
            .map_err(RunError::from)
            .and_then(|c| Ok(dataplane::detach(&c)?)),
        Command::Run { config } => run(config),
        Command::Man { dir } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir))
            .map_err(|source| RunError::Man { dir, source }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if daemon {
                error!("{e}");
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `lb-control check`: the file's warnings, then `ok`.
fn check(path: &Path) -> Result<(), RunError> {
    let c = Config::load(path)?;
    for w in c.warnings() {
        println!("warning: {w}");
    }
    println!("{}: ok", path.display());
    Ok(())
}

fn run(config_path: PathBuf) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(async move {
        let config = Config::load(&config_path)?;
        // Before anything binds or touches a map: one process per pins.
        let _instance = dataplane::lock_instance(&config.node.pin_dir)?;
        let socket = config.node.socket.clone();
        let limits = api::Limits {
            access: api::access::Access::of(&config.node)?,
            idle: Duration::from_secs(config.node.control_idle_timeout.into()),
        };
        // Bound before anything starts: a taken port stops nothing half-done.
        let metrics = match &config.metrics {
            Some(m) => Some(lb_control::metrics::bind(m).await?),
            None => None,
        };
        let daemon = Arc::new(start(config, config_path).await?);
        if let Some(listener) = metrics {
            lb_control::metrics::serve(daemon.clone(), listener);
        }
        let listener = limits.access.bind(&socket)?;
        tokio::spawn(api::serve(daemon.clone(), listener, limits));
        serve_signals(&daemon, &socket).await?;
        // The program, its maps and links stay pinned: traffic keeps flowing
        // and the next start adopts them. `lb-control detach` removes them.
        let _ = std::fs::remove_file(&socket);
        info!("stopped; XDP program left attached");
        Ok(())
    })
}

/// Starts the roles `config` asks for: always the node (with its listener
/// for remote managers under `[node.control]`), and the manager with its
/// control loop under `[manager]`.
async fn start(config: Config, config_path: PathBuf) -> Result<Daemon, RunError> {
    let manager = config
        .manager
        .clone()
        .map(lb_control::manager::Manager::new);
    if let Some(m) = &manager {
        // Before the first agent connects: every hello must match its pin.
        m.set_pins(lb_control::manager::controller::pins(&config));
        m.set_denied(&m.config.denied_fingerprints).await;
        m.set_tunnel_sources(config.tunnel_sources()).await;
        m.clone().start().await?;
    }
    let node = open_node(&config, config_path).await?;
    if let Some(control) = &config.node.control {
        listener::serve(node.agent.clone(), control).await?;
    }
    let manager = match manager {
        Some(m) => {
            let c = Controller::new(m, node.config_path.clone(), node.agent.clone())?;
            let runner = c.clone();
            tokio::spawn(async move {
                if let Err(e) = runner.sync_all("manager started").await {
                    warn!(error = %e, "not every node took the configuration at start; the next change retries");
                }
                runner.run().await;
            });
            Some(c)
        }
        None => None,
    };
    Ok(Daemon { node, manager })
}

/// Opens the node and applies the file to it: over what a remote manager
/// last sent (a node it drives comes back as that manager left it), with
/// this process's manager's published weights (so a restart changes no
/// table).
async fn open_node(config: &Config, config_path: PathBuf) -> Result<NodeRole, RunError> {
    let (node_state, persist) = match &config.node.control {
        Some(_) => {
            let dir = &config.node.state_dir;
            std::fs::create_dir_all(dir).map_err(|source| RunError::StateDir {
                dir: dir.clone(),
                source,
            })?;
            let path = state_path(dir);
            let state = NodeState::load(&path)?;
            (state, Some(path))
        }
        None => (NodeState::default(), None),
    };
    let mut desired = node_state.overlay(Desired::from_config(config).map_err(ApplyError::from)?);
    if let Some(m) = &config.manager {
        apply_persisted_weights(&mut desired, &persisted_weights(&m.state_dir));
    }
    let mut node = Node::open(config.clone(), desired.clone()).await?;
    node.apply(desired).await?;
    let node = Arc::new(Mutex::new(node));
    let node_name = config
        .node
        .control
        .as_ref()
        .map_or_else(|| "local".to_owned(), |c| c.name.clone());
    let agent = Arc::new(Reconfigurer::new(
        node_name,
        node.clone(),
        node_state,
        persist,
    ));
    Ok(NodeRole {
        node,
        agent,
        config_path,
    })
}

/// Says `ready`, then serves SIGHUP (reload) and the neighbour refresh
/// until SIGTERM or Ctrl-C.
async fn serve_signals(daemon: &Daemon, socket: &Path) -> Result<(), RunError> {
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    let mut term =
        tokio::signal::unix::signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut neighbours = tokio::time::interval(Duration::from_secs(1));
    info!(socket = %socket.display(), "ready");
    println!("ready");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match daemon.reload().await {
                    Ok(r) => info!(
                        table_generation = r.generation,
                        manager_generation = r.manager_generation,
                        "reloaded on SIGHUP"
                    ),
                    Err(e) => warn!(error = %e, "reload refused; the running config stays"),
                }
            }
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = neighbours.tick() => {
                if let Err(e) = daemon.node.node.lock().await.refresh_neighbours() {
                    warn!(error = %e, "neighbour refresh failed");
                }
            }
        }
    }
}
