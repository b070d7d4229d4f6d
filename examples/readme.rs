//! The README's app, kept here so it runs: `tests/e2e/readme.rs` checks that the README shows this
//! file's code (everything below this header) and runs it against a password-protected server.
//!
//! Run it against your own Redis (Ctrl-C stops it):
//!     REDIS_URL=redis://127.0.0.1:6379 cargo run -p millrace-examples --example readme
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use millrace::{Batch, ConsumerSpec, Handler, HandlerResult, Supervisor};

#[derive(serde::Deserialize)]
struct Order {
    order_id: u64,
    quantity: u32,
}

struct Orders;

impl Handler<Order> for Orders {
    async fn handle(&self, batch: Batch<Order>) -> HandlerResult {
        for entry in &batch {
            println!(
                "{}: order {} x{}",
                entry.id, entry.message.order_id, entry.message.quantity
            );
        }
        HandlerResult::Ok // or Partial(ids) to ack some, or HandlerResult::err(reason) to ack none
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Logs at INFO unless RUST_LOG says otherwise: start-up, outages, failures, restarts.
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or("info".into()))
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> millrace::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
    let app = Supervisor::builder()
        .redis(url)
        .consumer(ConsumerSpec::new("orders", "processors", "proc-1").handler(Orders))
        .consumer(ConsumerSpec::new("orders", "processors", "proc-2").handler(Orders))
        .start() // fails at once if Redis cannot be reached or refuses the password
        .await?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => app.shutdown().await, // finishes the in-flight batch, acks it, stops
        result = app.wait() => result, // returns only if the supervisor gives up on a consumer
    }
}
