//! `millrace`: inspect and repair Redis Streams consumer groups run by millrace (or anything else
//! that uses consumer groups).
//!
//! ```text
//! millrace streams 'orders*'
//! millrace groups orders
//! millrace pending orders processors --idle 5m
//! millrace dlq list orders
//! millrace dlq replay orders --filter-reason timeout --dry-run
//! millrace trim orders --maxlen 100000
//! millrace reap orders processors --idle 1h
//! millrace tail orders
//! millrace top --sort pending
//! millrace completions bash
//! ```
//!
//! Exit codes: 0 ok, 1 runtime or Redis error, 2 usage error, 3 refused for safety, 130 interrupted
//! (Ctrl-C). See the crate's README for more.

mod cli;
mod commands;
mod connect;
mod error;
mod info;
mod key;
mod render;
mod server;
mod value;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let matches = cli::Cli::command().get_matches();
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let cli::Command::Completions { shell } = cli.command {
        let mut command = cli::Cli::command();
        clap_complete::generate(shell, &mut command, "millrace", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            render::note(&format!("error: cannot start the async runtime: {e}"));
            return error::Exit::Runtime.code();
        }
    };
    let endpoint = cli.endpoint(&matches);
    match runtime.block_on(async { commands::run(cli, endpoint?).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) if e.exit == error::Exit::Interrupted => e.exit.code(),
        Err(e) => {
            let label = match e.exit {
                error::Exit::Refused => "refused",
                error::Exit::Runtime | error::Exit::Usage | error::Exit::Interrupted => "error",
            };
            render::note(&format!("{label}: {e}"));
            e.exit.code()
        }
    }
}
