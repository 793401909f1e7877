//! `lbctl`: operator CLI for a running `lb-control`, and for the project's
//! TLS certificates (which need no daemon).

mod certs;
mod cli;
mod error;
mod events;
mod output;
mod request;
mod table;

use std::{path::Path, process::ExitCode};

use clap::Parser as _;
use lb_control::api::{Request, Response, call};

use crate::{cli::Cli, error::Error, output::out, request::Action};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Does what the command line says.
fn run(cli: Cli) -> Result<(), Error> {
    match Action::from(cli.command) {
        Action::Daemon(request) => ask(&cli.socket, &request, cli.json),
        Action::Certs(command) => certs::run(command, cli.json),
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
        .map_err(Error::call)?;
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
