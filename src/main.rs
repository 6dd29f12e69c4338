//! The `ringlb` binary: CLI, logging, wiring of config to data plane, signals.
//!
//! Protocol logic lives in `proxy-core`; scheduling in `balancers`; parsing in `config`.

mod admin;
mod announce;
mod bench;
mod budget;
mod check;
mod cleanup;
mod cli;
mod decisions;
mod demo;
mod driver_arg;
mod link;
mod master;
mod node_mode;
mod reload;
mod serve;
mod takeover;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    let result = match cli.command {
        Command::Run(args) => return run(args),
        Command::Check {
            config,
            node_addresses,
        } => return check::check(&config, &node_addresses),
        Command::Demo(args) => demo::run(args),
        Command::Upgrade { handover_socket } => master::client::upgrade(handover_socket.as_deref()),
        Command::Reload { handover_socket } => master::client::reload(handover_socket.as_deref()),
        Command::Bench { command } => bench::run(command),
        Command::Cleanup {
            handover_socket,
            client_ip_mark,
        } => cleanup::run(handover_socket.as_deref(), client_ip_mark),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure(&e),
    }
}

/// `ringlb run`: the master, or, started by a master, a worker.
fn run(args: cli::RunArgs) -> ExitCode {
    let link = match link::Link::from_env() {
        Ok(Some(link)) => link,
        Ok(None) => {
            let handover = master::HandoverPath::new(args.handover_socket.as_deref());
            return match master::run(handover) {
                Ok(code) => code,
                Err(e) => failure(&e),
            };
        }
        Err(e) => return failure(&e),
    };
    let report = link.reporter();
    match serve::run(args, Some(link)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report.failed(&one_line(&e));
            failure(&e)
        }
    }
}

fn failure(e: &anyhow::Error) -> ExitCode {
    eprintln!("ringlb: error: {}", one_line(e));
    ExitCode::FAILURE
}

/// `e` and its causes on one line, each cause once: library errors often name their source
/// in their own message as well, and the chain would print it twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn init_logging(filter: Option<&str>) {
    let filter = filter
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_env("RINGLB_LOG").ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
