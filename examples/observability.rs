//! Observability: a service's `/health` (liveness), `/ready` (readiness) and Prometheus `/metrics`
//! from millrace's built-in endpoint (feature `http`), started with one builder call and stopped
//! with the supervisor; the supervisor shared with a control task through a clone.
//!
//! Run it:
//!     cargo run -p millrace-examples --example observability
//!     cargo run -p millrace-examples --example observability -- --serve [--addr 127.0.0.1:9100]
//! It uses `REDIS_URL` when set (there it deletes and refills its own key,
//! `millrace-example:page_views`, and touches nothing else); otherwise it starts a throwaway
//! redis-server through the testkit. Without `--serve` it handles a few events, fetches its own
//! `/health`, `/ready` and `/metrics` once, prints excerpts, shuts down through a clone and exits.
//! With `--serve` it keeps serving, and adds an event every second, until Ctrl-C; try
//! `curl -i http://ADDR/ready`.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use millrace::{Batch, ConsumerSpec, HandlerResult, MetricsLabels, RawEntry, Supervisor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The example's own key: with `REDIS_URL` set, this key (and only this one) is deleted and
/// refilled on that server.
const STREAM: &str = "millrace-example:page_views";
const EVENTS: u64 = 25;

#[derive(Parser)]
#[command(about = "millrace health, readiness and metrics over HTTP")]
struct Cli {
    /// Keep serving (and producing an event every second) until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Address to listen on; the default picks a free port on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
}

type AnyResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> AnyResult {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();

    // A throwaway server unless REDIS_URL points at one.
    let (_server, url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = millrace_testkit::RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    };
    let client = redis::Client::open(url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("DEL").arg(STREAM).query_async(&mut con).await?;

    // The whole service: one consumer, and the endpoint on `cli.addr`.
    let app = Supervisor::builder()
        .redis(url)
        .http(cli.addr)
        .metrics_labels(MetricsLabels::StreamSets) // the default: one label set per stream set
        .consumer(
            ConsumerSpec::new(STREAM, "reporting", "reporter-1")
                .block(Duration::from_millis(500))
                .handler(|batch: Batch<RawEntry>| async move {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    let _ = batch.len();
                    HandlerResult::Ok
                }),
        )
        .start()
        .await?;
    let addr = app.http_addr().ok_or("the endpoint has an address")?;
    println!("serving http://{addr}/health, /ready and /metrics");

    // The group is created at `$`: wait until the consumer reads before adding events.
    wait_until("the service is ready", || app.is_ready()).await?;

    // A clone for a control task: here it shuts the supervisor down on Ctrl-C.
    let control = app.clone();
    if cli.serve {
        println!("adding an event every second; Ctrl-C to stop");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {
                    n += 1;
                    add(&mut con, n).await?;
                }
            }
        }
    } else {
        for n in 1..=EVENTS {
            add(&mut con, n).await?;
        }
        wait_until("every event is handled and acknowledged", || {
            app.health().iter().map(|h| h.counters.acked).sum::<u64>() >= EVENTS
        })
        .await?;
        for path in ["/health", "/ready"] {
            let (status, body) = get(addr, path).await?;
            println!("GET {path} -> {status} {}", body.trim());
            if status != 200 {
                return Err(format!("{path} answered {status} while running").into());
            }
        }
        let (status, body) = get(addr, "/metrics").await?;
        println!(
            "GET /metrics -> {status}, {} lines; excerpt:",
            body.lines().count()
        );
        for line in body.lines().filter(|l| {
            l.starts_with("millrace_entries_acked_total")
                || l.starts_with("millrace_group_lag_entries")
                || l.starts_with("millrace_oldest_undelivered_age_seconds")
                || l.starts_with("millrace_ready")
        }) {
            println!("  {line}");
        }
    }

    // Shut down through the clone: the endpoint stops with the supervisor, and the original
    // handle sees it (`is_ready()` false, later calls fail with "it was shut down").
    control.shutdown().await?;
    println!(
        "\nafter shutdown: ready = {}, endpoint answers: {}",
        app.is_ready(),
        get(addr, "/health").await.is_ok()
    );
    Ok(())
}

/// A minimal HTTP GET over a plain TCP connection: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> AnyResult<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await??;
    let response = String::from_utf8(response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("no end of headers in the response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status code in the response")?;
    Ok((status, body.to_owned()))
}

async fn add(con: &mut redis::aio::MultiplexedConnection, n: u64) -> AnyResult {
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("page")
        .arg(format!("/products/{}", n % 7))
        .arg("visitor")
        .arg(n % 5)
        .query_async(con)
        .await?;
    Ok(())
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> AnyResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
