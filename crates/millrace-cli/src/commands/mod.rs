//! One module per subcommand; [`run`] connects and dispatches.

mod consumers;
mod dlq;
mod groups;
mod pending;
mod reap;
mod streams;
mod tail;
mod top;
mod trim;
mod trim_acked;

use crate::cli::{Cli, Command};
use crate::connect::{Endpoint, Redis};
use crate::error::Result;

/// Connects to Redis and runs the chosen subcommand.
pub(crate) async fn run(cli: Cli, endpoint: Endpoint) -> Result<()> {
    let mut redis = Redis::open(&endpoint, cli.tls_ca_cert.as_deref()).await?;
    let json = cli.json;
    match cli.command {
        Command::Streams { pattern } => streams::run(&mut redis, json, pattern.as_deref()).await,
        Command::Groups { stream } => groups::run(&mut redis, json, &stream).await,
        Command::Consumers { stream, group } => {
            consumers::run(&mut redis, json, &stream, &group).await
        }
        Command::Pending(args) => pending::run(&mut redis, json, &args).await,
        Command::Dlq { command } => dlq::run(&mut redis, json, command).await,
        Command::Trim(args) if args.acked => trim_acked::run(&mut redis, json, &args).await,
        Command::Trim(args) => trim::run(&mut redis, json, &args).await,
        Command::Reap(args) => reap::run(&mut redis, json, &args).await,
        Command::Tail(args) => tail::run(&mut redis, json, &args).await,
        Command::Top(args) => top::run(&mut redis, json, &args).await,
        // Handled before connecting.
        Command::Completions { .. } => Ok(()),
    }
}
