//! What each subcommand asks of the daemon.

use lb_control::{api::Request, manager::config_file::NewService};

use crate::cli::{CertsCommand, Command, ServerCommand, ServiceCommand};

/// What a command line asks for: a request to the daemon, or something
/// done here without one (certificate files, completions, man pages).
pub enum Action {
    Daemon(Request),
    Certs(CertsCommand),
    Completions(clap_complete::Shell),
    Man(std::path::PathBuf),
    /// `lbctl top`: many requests, a live view.
    Top {
        service: Option<String>,
        interval: std::time::Duration,
    },
}

impl From<Command> for Action {
    fn from(command: Command) -> Self {
        Self::Daemon(match command {
            Command::Status => Request::Status,
            Command::Service { command } => command.into(),
            Command::Server { command } => command.into(),
            Command::Pool => Request::Pool,
            Command::Events { follow, after } => Request::Events { after, follow },
            Command::Stats => Request::Stats,
            Command::Config { .. } => Request::Reload,
            // Certificates are files: no daemon, no socket.
            Command::Certs { command } => return Self::Certs(command),
            Command::Completions { shell } => return Self::Completions(shell),
            Command::Man { dir } => return Self::Man(dir),
            Command::Top {
                service,
                interval_ms,
            } => {
                return Self::Top {
                    service,
                    interval: std::time::Duration::from_millis(interval_ms),
                };
            }
        })
    }
}

impl From<ServiceCommand> for Request {
    fn from(command: ServiceCommand) -> Self {
        match command {
            ServiceCommand::List => Request::ServiceList,
            ServiceCommand::Add(add) => Request::ServiceAdd(NewService {
                name: add.name,
                vip: add.vip,
                port: add.port,
                protocol: add.protocol.into(),
                table_size: add.table_size,
                application: add.application,
            }),
            ServiceCommand::Remove { name } => Request::ServiceRemove { name },
        }
    }
}

impl From<ServerCommand> for Request {
    fn from(command: ServerCommand) -> Self {
        match command {
            ServerCommand::List => Request::ServerList,
            ServerCommand::Allocate { name, service } => Request::ServerAllocate {
                server: name,
                service,
            },
            ServerCommand::Drain { name } => Request::ServerDrain { server: name },
            ServerCommand::Deallocate { name } => Request::ServerDeallocate { server: name },
            ServerCommand::Repin { name } => Request::ServerRepin { server: name },
        }
    }
}
