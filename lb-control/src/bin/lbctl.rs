//! `lbctl`: operator CLI for a running `lb-control`, and for the project's
//! TLS certificates (which need no daemon).

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use lb_control::{
    api::{Request, Response, call},
    config::Protocol,
    manager::{
        controller::PoolMember,
        events::Event,
        weights::{WEIGHT_SCALE, display_weight},
    },
};
use lb_proto::tls::{Pki, Role, SanEntry, Validity};

/// Exit status when standard output's reader went away: what a shell
/// reports for a tool SIGPIPE ended (128 + 13).
const EXIT_BROKEN_PIPE: i32 = 128 + libc::SIGPIPE;

/// `println!` that never panics: a reader that went away (`lbctl server
/// list | head -5`) ends lbctl quietly, as SIGPIPE ends other Unix tools;
/// another write error says what failed.
macro_rules! out {
    () => {
        write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        write_line(format_args!($($arg)*))
    };
}

fn write_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let result = {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_fmt(line)
            .and_then(|()| stdout.write_all(b"\n"))
    };
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(EXIT_BROKEN_PIPE)
        }
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1)
        }
    }
}

#[derive(Parser)]
#[command(name = "lbctl", version, about = "Operate an XDP load balancer node")]
struct Cli {
    /// Control socket of lb-control.
    #[arg(long, global = true, default_value = "/run/xdplb/control.sock")]
    socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
}

#[derive(Subcommand)]
enum CertsCommand {
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
        /// Which side of a connection the host may act as.
        #[arg(long, value_enum, default_value_t = RoleArg::Both)]
        role: RoleArg,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
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
enum ServiceCommand {
    /// Services on this node.
    List,
    /// Add a service on every node (recorded in the config file).
    Add {
        name: String,
        #[arg(long)]
        vip: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum, default_value_t = ProtocolArg::Tcp)]
        protocol: ProtocolArg,
        /// Maglev table size (a prime); default 65537.
        #[arg(long)]
        table_size: Option<u32>,
        /// The application agents host it under; default: the name.
        #[arg(long)]
        application: Option<String>,
    },
    /// Remove a service from every node (and from the config file).
    Remove { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Tcp,
    Udp,
}

#[derive(Subcommand)]
enum ServerCommand {
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
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Re-read the config file and apply the difference.
    Reload,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match cli.command {
        Command::Status => Request::Status,
        Command::Service { command } => match command {
            ServiceCommand::List => Request::ServiceList,
            ServiceCommand::Add {
                name,
                vip,
                port,
                protocol,
                table_size,
                application,
            } => Request::ServiceAdd {
                name,
                vip,
                port,
                protocol: match protocol {
                    ProtocolArg::Tcp => Protocol::Tcp,
                    ProtocolArg::Udp => Protocol::Udp,
                },
                table_size,
                application,
            },
            ServiceCommand::Remove { name } => Request::ServiceRemove { name },
        },
        Command::Server { command } => match command {
            ServerCommand::List => Request::ServerList,
            ServerCommand::Allocate { name, service } => Request::ServerAllocate {
                server: name,
                service,
            },
            ServerCommand::Drain { name } => Request::ServerDrain { server: name },
            ServerCommand::Deallocate { name } => Request::ServerDeallocate { server: name },
        },
        Command::Pool => Request::Pool,
        Command::Events { follow, after } => Request::Events { after, follow },
        Command::Stats => Request::Stats,
        Command::Config { .. } => Request::Reload,
        // Certificates are files: no daemon, no socket.
        Command::Certs { command } => return certs(command, cli.json),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Request::Events {
        after,
        follow: true,
    } = request
    {
        return match runtime.block_on(follow_events(&cli.socket, after, cli.json)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let response = match runtime.block_on(call(&cli.socket, &request)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Response::Error { message } = &response {
        eprintln!("error: {message}");
        return ExitCode::FAILURE;
    }
    if cli.json {
        match serde_json::to_string_pretty(&response) {
            Ok(t) => out!("{t}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    print_table(&response);
    ExitCode::SUCCESS
}

/// `lbctl events --follow`: prints each event line as the daemon sends it.
async fn follow_events(socket: &std::path::Path, after: u64, json: bool) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(&Request::Events {
        after,
        follow: true,
    })
    .map_err(|e| e.to_string())?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        if json {
            out!("{line}");
            continue;
        }
        match serde_json::from_str::<Event>(&line) {
            Ok(e) => print_event(&e),
            Err(_) => match serde_json::from_str::<Response>(&line) {
                Ok(Response::Error { message }) => return Err(message),
                _ => out!("{line}"),
            },
        }
    }
    Ok(())
}

fn print_event(e: &Event) {
    let secs = e.time_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let took = e
        .duration_ms
        .map_or(String::new(), |d| format!(" ({d} ms)"));
    let generation = e
        .generation
        .map_or(String::new(), |g| format!(" [manager generation {g}]"));
    out!(
        "#{:<5} {h:02}:{m:02}:{s:02}.{:03} {:<18} {:<10} {:<12} {}{took}{generation}",
        e.id,
        e.time_ms % 1000,
        e.kind,
        e.service.as_deref().unwrap_or("-"),
        e.server.as_deref().unwrap_or("-"),
        e.reason
    );
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 24 * 3600)
}

fn certs(command: CertsCommand, json: bool) -> ExitCode {
    let (pki, host, result) = match command {
        CertsCommand::Init {
            dir,
            name,
            days: n,
            force,
        } => {
            let pki = Pki::new(dir);
            let result = pki
                .init_ca(&name, days(n), force)
                .and_then(|ca| lb_proto::tls::fingerprint(ca.cert_pem.as_bytes()));
            (pki, None, result)
        }
        CertsCommand::Issue {
            dir,
            host,
            ip,
            dns,
            role,
            days: n,
        } => {
            let pki = Pki::new(dir);
            let sans: Vec<SanEntry> = ip
                .into_iter()
                .map(SanEntry::Ip)
                .chain(dns.into_iter().map(SanEntry::Dns))
                .collect();
            let result = pki
                .issue(&host, role.into(), &sans, Validity::from_now(days(n)))
                .and_then(|identity| identity.fingerprint());
            (pki, Some(host), result)
        }
    };
    let fingerprint = match result {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (cert, key) = match &host {
        Some(h) => (pki.cert_path(h), pki.key_path(h)),
        None => (pki.ca_cert_path(), pki.ca_key_path()),
    };
    if json {
        let out = serde_json::json!({
            "certificate": cert,
            "key": key,
            "fingerprint_sha256": fingerprint,
        });
        out!("{out:#}");
    } else {
        out!("certificate  {}", cert.display());
        out!("key          {}", key.display());
        out!("sha256       {fingerprint}");
    }
    ExitCode::SUCCESS
}

/// The weight in force in file units, and the file's when they differ.
fn weight_column(m: &PoolMember) -> String {
    let shown = |w: f64| display_weight((w * f64::from(WEIGHT_SCALE)).round() as u32, WEIGHT_SCALE);
    match (m.weight, m.file_weight) {
        (Some(w), Some(f)) if (w - f64::from(f)).abs() > 1e-9 => format!("{} (file {f})", shown(w)),
        (Some(w), _) => shown(w),
        (None, _) => "-".into(),
    }
}

fn print_pool_members<'a>(members: impl Iterator<Item = &'a PoolMember>) {
    out!(
        "  {:<16} {:<22} {:<15} {:<8} {:>11} {:>6} {:>6} {:>8}",
        "SERVER",
        "STATE",
        "MONITOR",
        "HEALTH",
        "UTILIZATION",
        "CORES",
        "WEIGHT",
        "VIP CONN"
    );
    for m in members {
        out!(
            "  {:<16} {:<22} {:<15} {:<8} {:>11} {:>6.2} {:>6} {:>8}",
            m.server,
            m.state,
            m.monitor,
            m.health,
            m.utilization.map_or("-".into(), |u| format!("{u:.3}")),
            m.capacity,
            weight_column(m),
            m.vip_established.map_or("-".into(), |n| n.to_string()),
        );
    }
}

fn print_table(response: &Response) {
    match response {
        Response::Status(s) => {
            out!("program id          {}", s.program_id);
            out!("adoption            {}", s.adoption);
            out!(
                "table generation    {} (this node's tables: one more at each table flip)",
                s.generation
            );
            match s.manager_generation {
                Some(g) => out!(
                    "manager generation  {g} (the manager's last change this node applied; events and config reload name it)"
                ),
                None => out!("manager generation  none (no manager change applied on this node)"),
            }
            out!("pin dir             {}", s.pin_dir);
            out!("interfaces          {}", s.interfaces.join(", "));
        }
        Response::Services { services } => {
            out!(
                "{:<16} {:<40} {:>5} {:<4} {:>7} {:>8} {:>12} {:>10}",
                "NAME",
                "VIP",
                "PORT",
                "PROTO",
                "SERVERS",
                "TABLE",
                "PACKETS",
                "NEW FLOWS"
            );
            for s in services {
                out!(
                    "{:<16} {:<40} {:>5} {:<4} {:>7} {:>8} {:>12} {:>10}",
                    s.name,
                    s.vip,
                    s.port,
                    s.protocol,
                    s.servers,
                    s.table_size,
                    s.packets,
                    s.new_flows
                );
            }
        }
        Response::Servers { servers, monitors } => {
            out!(
                "{:<16} {:<40} {:<10} {:>6} {:<12} {:<9} {:>12} {:>8}",
                "NAME",
                "ADDRESS",
                "STATE",
                "WEIGHT",
                "SERVICE",
                "BACKEND",
                "PACKETS",
                "IDLE"
            );
            for s in servers {
                if s.services.is_empty() {
                    out!(
                        "{:<16} {:<40} {:<10} {:>6} {:<12} {:<9} {:>12} {:>8}",
                        s.name,
                        s.address,
                        s.state,
                        s.weight,
                        "-",
                        "-",
                        "-",
                        "-"
                    );
                }
                for b in &s.services {
                    let idle = b.idle_secs.map_or("never".to_string(), |i| format!("{i}s"));
                    // The weight in force; the file's beside it when they
                    // differ.
                    let weight = if b.weight.is_empty() || b.weight == s.weight.to_string() {
                        s.weight.to_string()
                    } else {
                        format!("{} (file {})", b.weight, s.weight)
                    };
                    out!(
                        "{:<16} {:<40} {:<10} {:>6} {:<12} {:<9} {:>12} {:>8}",
                        s.name,
                        s.address,
                        b.state,
                        weight,
                        b.service,
                        b.backend,
                        b.packets,
                        idle
                    );
                }
            }
            if !monitors.is_empty() {
                out!();
                out!(
                    "{:<16} {:<12} {:>6} {:>11} {:<12} {:<8} {:<6} {:>9}",
                    "AGENT",
                    "MONITOR",
                    "CORES",
                    "UTILIZATION",
                    "SOURCE",
                    "HEALTH",
                    "READY",
                    "REPORT"
                );
                for m in monitors {
                    // Filled in by the daemon; from an older one, the
                    // node's view.
                    let pool = m.pool.as_deref().unwrap_or_else(|| {
                        servers
                            .iter()
                            .find(|s| s.name == m.host)
                            .map_or(if m.spare { "spare" } else { "unknown" }, |s| {
                                s.state.as_str()
                            })
                    });
                    out!(
                        "{:<16} {:<12} {:>6.2} {:>11} {:<12} {:<8} {:<6} {:>9}  pool: {pool}",
                        m.host,
                        format!("{:?}", m.monitor).to_lowercase(),
                        m.cores,
                        m.utilization.map_or("-".into(), |u| format!("{u:.3}")),
                        m.source.as_deref().unwrap_or("-"),
                        m.health.as_deref().unwrap_or("-"),
                        m.ready.map_or("-", |r| if r { "yes" } else { "no" }),
                        m.report_age_ms.map_or("never".into(), |a| format!("{a}ms")),
                    );
                }
            }
        }
        Response::Stats(s) => {
            for (k, v) in &s.global {
                out!("{k:<16} {v}");
            }
            out!("{:<16} {}", "flows", s.flows);
            for (kind, n) in &s.decisions {
                out!("{:<16} {n}", format!("events.{kind}"));
            }
        }
        Response::Reloaded(r) => {
            let table = r.table_generation;
            let r = &r.report;
            match r.manager_generation {
                // The manager sent the file to every node, this one too.
                Some(g) => out!(
                    "the manager sent the configuration to every node as manager generation {g}, all acked; this node is at table generation {table}"
                ),
                None => out!(
                    "applied in {} µs, table generation {table}: services +{:?} -{:?}, tables flipped {:?}, backends +{} -{}",
                    r.micros,
                    r.services_added,
                    r.services_removed,
                    r.tables_flipped,
                    r.backends_added,
                    r.backends_removed
                ),
            }
            if !r.unresolved.is_empty() {
                out!("unresolved servers (left out): {:?}", r.unresolved);
            }
        }
        Response::Done {
            generation,
            message,
        } => {
            if *generation > 0 {
                out!("{message} (manager generation {generation})");
            } else {
                out!("{message}");
            }
        }
        Response::Pool { pools, unassigned } => {
            for p in pools {
                out!(
                    "service {} (application {}), manager generation {}",
                    p.service,
                    p.application,
                    p.generation
                );
                print_pool_members(p.members.iter().chain(&p.free));
            }
            if !unassigned.is_empty() {
                out!("in no pool (no service listed, no agent hosting a configured application)");
                print_pool_members(unassigned.iter());
            }
        }
        Response::Events { events } => {
            for e in events {
                print_event(e);
            }
        }
        Response::Error { message } => eprintln!("error: {message}"),
    }
}
