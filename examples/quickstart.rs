//! Quickstart: add five user events to a stream and consume them with a typed handler.
//!
//! Run it:
//!     cargo run -p millrace-examples --example quickstart
//! It uses `REDIS_URL` when set (there it deletes and refills the key `user_events`, so each run
//! starts fresh); otherwise it starts a throwaway redis-server through the testkit.
//! It stops by itself once every event is handled (or on Ctrl-C).
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millrace::{Batch, ConsumerSpec, Handler, HandlerResult, StartId, Supervisor};
use tokio::sync::Notify;

/// One user event, as a producer adds them: `XADD user_events * user_id 1 action login ...`.
#[derive(Debug, serde::Deserialize)]
struct UserEvent {
    user_id: u64,
    action: String,
    page: Option<String>,
}

struct PrintEvents {
    handled: AtomicUsize,
    expected: usize,
    done: Notify,
}

impl Handler<UserEvent> for Arc<PrintEvents> {
    async fn handle(&self, batch: Batch<UserEvent>) -> HandlerResult {
        for entry in &batch {
            let e = &entry.message;
            println!(
                "{} [{}] user {} {}{}",
                entry.id,
                batch.meta.consumer,
                e.user_id,
                e.action,
                e.page
                    .as_deref()
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default()
            );
        }
        if self.handled.fetch_add(batch.len(), Ordering::SeqCst) + batch.len() >= self.expected {
            self.done.notify_one();
        }
        HandlerResult::Ok
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();

    // A throwaway server unless REDIS_URL points at one.
    let (_server, url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = millrace_testkit::RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    };

    let stream = "user_events";
    let client = redis::Client::open(url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("DEL").arg(stream).query_async(&mut con).await?;
    let events = [
        ("1", "login", None),
        ("1", "view", Some("/products")),
        ("2", "login", None),
        ("1", "purchase", Some("/checkout")),
        ("2", "logout", None),
    ];
    for (user, action, page) in events {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream)
            .arg("*")
            .arg("user_id")
            .arg(user)
            .arg("action")
            .arg(action);
        if let Some(page) = page {
            cmd.arg("page").arg(page);
        }
        let id: String = cmd.query_async(&mut con).await?;
        println!("added {id}: user {user} {action}");
    }

    let handler = Arc::new(PrintEvents {
        handled: AtomicUsize::new(0),
        expected: events.len(),
        done: Notify::new(),
    });
    let app = Supervisor::builder()
        .redis(url)
        .consumer(
            ConsumerSpec::new(stream, "analytics", "worker-1")
                .start_id(StartId::Beginning)
                .block(Duration::from_secs(1))
                .handler(handler.clone()),
        )
        .start()
        .await?;

    tokio::select! {
        _ = handler.done.notified() => println!("all {} events handled", events.len()),
        _ = tokio::signal::ctrl_c() => println!("interrupted"),
        r = app.wait() => r?,
    }
    app.shutdown().await?;
    let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(stream)
        .arg("analytics")
        .query_async(&mut con)
        .await?;
    println!("pending after shutdown: {}", pending.0);
    Ok(())
}
