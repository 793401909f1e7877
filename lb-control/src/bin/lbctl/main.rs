//! `lbctl`: operator CLI for a running `lb-control`, and for the project's
//! TLS certificates (which need no daemon).

mod certs;
mod cli;
mod events;
mod output;
mod request;
mod table;

use std::process::ExitCode;

use clap::Parser as _;
use lb_control::api::{Request, Response, call};

use crate::{cli::Cli, output::out, request::Action};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match Action::from(cli.command) {
        Action::Daemon(request) => request,
        Action::Certs(command) => return certs::certs(command, cli.json),
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
        return match runtime.block_on(events::follow_events(&cli.socket, after, cli.json)) {
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
    table::print_table(&response);
    ExitCode::SUCCESS
}
