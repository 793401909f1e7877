//! `lbctl`: operator CLI for a running `lb-control`, and for the project's
//! TLS certificates (which need no daemon).

mod certs;
mod cli;
mod error;
mod events;
mod output;
mod request;
mod table;
mod top;

use std::{path::Path, process::ExitCode};

use clap::{CommandFactory as _, Parser as _};
use lb_control::api::{Request, Response, call};

use crate::{cli::Cli, error::Error, output::out, request::Action};

/// Exit codes: 0 done, 1 the daemon (or the command) said no, 2 a usage
/// error (clap's), 3 no daemon answered at the socket.
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Does what the command line says.
fn run(cli: Cli) -> Result<(), Error> {
    match Action::from(cli.command) {
        Action::Daemon(request) => ask(&cli.socket, &request, cli.json),
        Action::Certs(command) => certs::run(command, cli.json),
        Action::Completions(shell) => {
            clap_complete::generate(shell, &mut Cli::command(), "lbctl", &mut std::io::stdout());
            Ok(())
        }
        Action::Top { service, interval } => top::run(&cli.socket, service.as_deref(), interval),
        Action::Man(dir) => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            .map_err(|source| Error::Man { dir, source }),
    }
}

/// Sends `request` to the daemon at `socket` and prints the answer; for
/// `events --follow`, each event as it comes.
fn ask(socket: &Path, request: &Request, json: bool) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    if let Request::Events {
        after,
        follow: true,
    } = *request
    {
        return runtime.block_on(events::follow(socket, after, json));
    }
    let response = runtime
        .block_on(call(socket, request))
        .map_err(Error::Call)?;
    print(&response, json)
}

/// The daemon's answer as JSON or a table; its error as the command's.
fn print(response: &Response, json: bool) -> Result<(), Error> {
    if let Response::Error { message, .. } = response {
        return Err(Error::Daemon(message.clone()));
    }
    if json {
        let text = serde_json::to_string_pretty(response)?;
        out!("{text}");
    } else {
        table::print_table(response);
    }
    Ok(())
}
