//! `lbctl`: operator CLI for a running `lb-control`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_control::api::{Request, Response, call};

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
        Response::Servers { servers } => {
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
