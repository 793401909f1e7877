//! `lbctl`: operator CLI for a running `lb-control`, and for the project's
//! TLS certificates (which need no daemon).

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use lb_control::api::{Request, Response, call};
use lb_proto::tls::{Pki, Role, SanEntry, Validity};

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
    /// Program id, adoption, generation.
    Status,
    /// Services.
    Service {
        #[command(subcommand)]
        command: ListOnly,
    },
    /// Real servers.
    Server {
        #[command(subcommand)]
        command: ListOnly,
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
enum ListOnly {
    List,
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
        Command::Service { .. } => Request::ServiceList,
        Command::Server { .. } => Request::ServerList,
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
            Ok(t) => println!("{t}"),
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
        println!("{out:#}");
    } else {
        println!("certificate  {}", cert.display());
        println!("key          {}", key.display());
        println!("sha256       {fingerprint}");
    }
    ExitCode::SUCCESS
}

fn print_table(response: &Response) {
    match response {
        Response::Status(s) => {
            println!("program id   {}", s.program_id);
            println!("adoption     {}", s.adoption);
            println!("generation   {}", s.generation);
            println!("pin dir      {}", s.pin_dir);
            println!("interfaces   {}", s.interfaces.join(", "));
        }
        Response::Services { services } => {
            println!(
                "{:<16} {:<40} {:>5} {:<4} {:>7} {:>8} {:>12} {:>10}",
                "NAME", "VIP", "PORT", "PROTO", "SERVERS", "TABLE", "PACKETS", "NEW FLOWS"
            );
            for s in services {
                println!(
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
            println!(
                "{:<16} {:<40} {:<10} {:>6} {:<12} {:<9} {:>12} {:>8}",
                "NAME", "ADDRESS", "STATE", "WEIGHT", "SERVICE", "BACKEND", "PACKETS", "IDLE"
            );
            for s in servers {
                if s.services.is_empty() {
                    println!(
                        "{:<16} {:<40} {:<10} {:>6} {:<12} {:<9} {:>12} {:>8}",
                        s.name, s.address, s.state, s.weight, "-", "-", "-", "-"
                    );
                }
                for b in &s.services {
                    let idle = b.idle_secs.map_or("never".to_string(), |i| format!("{i}s"));
                    println!(
                        "{:<16} {:<40} {:<10} {:>6} {:<12} {:<9} {:>12} {:>8}",
                        s.name, s.address, b.state, s.weight, b.service, b.backend, b.packets, idle
                    );
                }
            }
            if !monitors.is_empty() {
                println!();
                println!(
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
                    let pool = servers
                        .iter()
                        .find(|s| s.name == m.host)
                        .map_or(if m.spare { "spare" } else { "unknown" }, |s| {
                            s.state.as_str()
                        });
                    println!(
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
                println!("{k:<16} {v}");
            }
            println!("{:<16} {}", "flows", s.flows);
        }
        Response::Reloaded(r) => {
            println!(
                "applied generation {} in {} µs: services +{:?} -{:?}, tables flipped {:?}, backends +{} -{}",
                r.generation,
                r.micros,
                r.services_added,
                r.services_removed,
                r.tables_flipped,
                r.backends_added,
                r.backends_removed
            );
            if !r.unresolved.is_empty() {
                println!("unresolved servers (left out): {:?}", r.unresolved);
            }
        }
        Response::Error { message } => eprintln!("error: {message}"),
    }
}
