//! The command line: every subcommand and option, as clap parses them.

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use lb_control::config::Protocol;
use lb_proto::tls::Role;

#[derive(Parser)]
#[command(name = "lbctl", version, about = "Operate an XDP load balancer node")]
pub struct Cli {
    /// Control socket of lb-control.
    #[arg(long, global = true, default_value = "/run/xdplb/control.sock")]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Program id, adoption, table and manager generations.
    Status,
    /// Services: list, add or remove at run time.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Real servers: list, allocate, drain, deallocate.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// Each service's allocated and free servers (manager).
    Pool,
    /// The manager's decisions with their reasons and durations.
    Events {
        /// Keep printing events as they happen.
        #[arg(long)]
        follow: bool,
        /// Only events with an id above this.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Counters.
    Stats,
    /// A live view of each service: members, utilization, weights, new
    /// flows/s and packets/s, the free pool, the latest events (q quits).
    Top {
        /// The service shown first.
        #[arg(long)]
        service: Option<String>,
        /// Milliseconds between two polls of the daemon.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
        interval_ms: u64,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// TLS certificates for agents, the manager and nodes (no daemon needed).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Print a shell completion script: `lbctl completions bash >
    /// /etc/bash_completion.d/lbctl` (zsh: into a directory of `$fpath` as
    /// `_lbctl`; fish: `~/.config/fish/completions/lbctl.fish`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for lbctl and each of its subcommands into DIR
    /// (`cargo xtask man` runs it).
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create the project CA: DIR/ca.pem and DIR/ca.key.
    Init {
        /// Directory of the CA and host certificates.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name (its CN).
        #[arg(long, default_value = "xdplb project CA")]
        name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Replace an existing CA (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue DIR/<host>.pem and DIR/<host>.key from the CA in DIR.
    Issue {
        /// Directory of the CA and host certificates.
        #[arg(long)]
        dir: PathBuf,
        /// Host name: the certificate's name, and what peers dial.
        #[arg(long)]
        host: String,
        /// An address the host is also dialled by (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Another DNS name the host is also dialled by (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// Which side of a connection the host may act as. The default,
        /// `client`, is an agent's; a manager needs `both` (it accepts
        /// agents and dials nodes), a node `server`.
        #[arg(long, value_enum, default_value_t = RoleArg::Client)]
        role: RoleArg,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Accepts connections.
    Server,
    /// Dials connections.
    Client,
    /// Both (a manager accepts agents and dials nodes).
    Both,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Server => Role::Server,
            RoleArg::Client => Role::Client,
            RoleArg::Both => Role::Both,
        }
    }
}

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Services on this node.
    List,
    /// Add a service on every node (recorded in the config file).
    Add(ServiceAdd),
    /// Remove a service from every node (and from the config file).
    Remove { name: String },
}

/// `lbctl service add`'s arguments.
#[derive(Args)]
pub struct ServiceAdd {
    pub name: String,
    #[arg(long)]
    pub vip: IpAddr,
    #[arg(long)]
    pub port: u16,
    #[arg(long, value_enum, default_value_t = ProtocolArg::Tcp)]
    pub protocol: ProtocolArg,
    /// Maglev table size (a prime); default 65537.
    #[arg(long)]
    pub table_size: Option<u32>,
    /// The application agents host it under; default: the name.
    #[arg(long)]
    pub application: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

impl From<ProtocolArg> for Protocol {
    fn from(protocol: ProtocolArg) -> Self {
        match protocol {
            ProtocolArg::Tcp => Protocol::Tcp,
            ProtocolArg::Udp => Protocol::Udp,
        }
    }
}

#[derive(Subcommand)]
pub enum ServerCommand {
    /// Servers on this node, and every agent the manager hears.
    List,
    /// Move a free server into a service's pool.
    Allocate {
        name: String,
        /// The service; needed when the server could serve several.
        #[arg(long)]
        service: Option<String>,
    },
    /// No new flows; back to the free pool once idle (or at the drain
    /// timeout).
    Drain { name: String },
    /// Back to the free pool now, without waiting for its connections.
    Deallocate { name: String },
    /// Pin the certificate the server presented last, after its hellos were
    /// refused as not the pinned one (a reissued certificate); recorded in
    /// the file.
    Repin { name: String },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Re-read the config file and apply the difference.
    Reload,
}
