//! Observability: millrace's metrics on a Prometheus `/metrics` endpoint and its health on `/health`,
//! served over plain HTTP on 127.0.0.1.
//!
//! Run it:
//!     cargo run -p millrace-examples --example observability
//!     cargo run -p millrace-examples --example observability -- --serve [--addr 127.0.0.1:9100]
//! It uses `REDIS_URL` when set (there it deletes and refills its own key,
//! `millrace-example:page_views`, and touches nothing else); otherwise it starts a throwaway
//! redis-server through the testkit. Without `--serve` it handles a few events, fetches its own
//! `/metrics` and `/health` once, prints excerpts, shuts down (showing `/health` turn 503) and exits. With `--serve` it keeps serving, and
//! adds an event every second, until Ctrl-C; try `curl -i http://ADDR/health`.
//!
//! The metrics go through the `metrics` facade: install a recorder before starting millrace (here
//! `metrics-exporter-prometheus`'s `PrometheusBuilder::install_recorder`, without its own HTTP
//! listener) and render it on each scrape. `/health` answers 200 with a JSON body built from
//! `Supervisor::health()` when every consumer is running, and 503 otherwise (starting, reconnecting,
//! backing off, failed, or the supervisor stopped).
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use millrace::{
    Batch, ConsumerHealth, ConsumerId, ConsumerSpec, HandlerResult, RawEntry, Supervisor,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The example's own key: with `REDIS_URL` set, this key (and only this one) is deleted and
/// refilled on that server.
const STREAM: &str = "millrace-example:page_views";
const EVENTS: usize = 25;

#[derive(Parser)]
#[command(about = "millrace metrics and health over HTTP")]
struct Cli {
    /// Keep serving (and producing an event every second) until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Address to listen on; the default picks a free port on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
}

/// The running supervisor, shared with the HTTP server; `None` once it is shut down.
type SharedApp = Arc<RwLock<Option<Supervisor>>>;

type AnyResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> AnyResult {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();

    // The recorder must be installed before millrace registers its metrics. Histograms of
    // durations become Prometheus histograms with these buckets (summaries otherwise).
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
        )?
        .install_recorder()?;
    // Without the exporter's own listener, upkeep (draining histogram samples) is ours to run.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

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

    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let consumer = ConsumerId::new(STREAM, "reporting", "reporter-1");
    let supervisor = Supervisor::builder()
        .redis(url)
        .consumer(
            ConsumerSpec::new(STREAM, "reporting", "reporter-1")
                .block(Duration::from_millis(500))
                .handler(move |batch: Batch<RawEntry>| {
                    let counter = counter.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        counter.fetch_add(batch.len(), Ordering::SeqCst);
                        HandlerResult::Ok
                    }
                }),
        )
        .start()
        .await?;
    let app: SharedApp = Arc::new(RwLock::new(Some(supervisor)));

    let listener = TcpListener::bind(cli.addr).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(serve(listener, app.clone(), prometheus));
    println!("serving http://{addr}/metrics and http://{addr}/health");

    // The group is created at `$`: wait until the consumer reads before adding events.
    wait_until("the consumer runs", || {
        with_app(&app, |a| {
            a.consumer_health(&consumer).is_some_and(|h| h.is_running())
        })
        .unwrap_or(false)
    })
    .await?;

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
        for n in 1..=EVENTS as u64 {
            add(&mut con, n).await?;
        }
        wait_until("every event is handled and acknowledged", || {
            with_app(&app, |a| {
                a.consumer_health(&consumer)
                    .is_some_and(|h| h.counters.acked >= EVENTS as u64)
            })
            .unwrap_or(false)
        })
        .await?;
        println!("handled {} events\n", handled.load(Ordering::SeqCst));

        let (status, body) = get(addr, "/metrics").await?;
        println!(
            "GET /metrics -> {status}, {} lines; excerpt:",
            body.lines().count()
        );
        for line in body.lines().filter(|l| {
            l.contains("millrace_entries_acked_total")
                || l.contains("millrace_entries_received_total")
                || l.starts_with("millrace_handler_duration_seconds_count")
                || l.starts_with("millrace_batch_size_entries_count")
        }) {
            println!("  {line}");
        }

        let (status, body) = get(addr, "/health").await?;
        let pretty = serde_json::from_str::<serde_json::Value>(&body)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or(body);
        println!("\nGET /health -> {status}\n{pretty}");
        if status != 200 {
            return Err(format!("/health answered {status} while running").into());
        }
    }

    // Shut down; meanwhile and afterwards `/health` answers 503.
    let supervisor = app.write().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(supervisor) = supervisor {
        supervisor.shutdown().await?;
    }
    let (status, body) = get(addr, "/health").await?;
    println!("\nafter shutdown: GET /health -> {status}\n  {body}");
    server.abort();
    if status != 503 {
        return Err(format!("/health answered {status} after shutdown").into());
    }
    Ok(())
}

fn with_app<R>(app: &SharedApp, f: impl FnOnce(&Supervisor) -> R) -> Option<R> {
    app.read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(f)
}

/// Accepts connections until aborted; one task per connection.
async fn serve(listener: TcpListener, app: SharedApp, prometheus: PrometheusHandle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (app, prometheus) = (app.clone(), prometheus.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &app, &prometheus).await {
                tracing::debug!(error = %e, "http connection failed");
            }
        });
    }
}

/// Reads one request and writes one response (HTTP/1.1, `Connection: close`).
async fn answer(
    mut stream: TcpStream,
    app: &SharedApp,
    prometheus: &PrometheusHandle,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<(), std::io::Error>(())
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&head);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");

    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            prometheus.render(),
        ),
        ("GET", "/health") => {
            let (ready, json) = health_json(app);
            let status = if ready {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "application/json", json.to_string())
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /health\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Whether every consumer is running, and the health of each as JSON.
fn health_json(app: &SharedApp) -> (bool, serde_json::Value) {
    let snapshot = with_app(app, |a| {
        (a.is_ready(), a.health(), a.failure().map(|e| e.to_string()))
    });
    let Some((ready, consumers, failure)) = snapshot else {
        return (
            false,
            serde_json::json!({ "status": "stopped", "consumers": [] }),
        );
    };
    // Right after `start()` the consumers may not be registered yet: none listed is not ready.
    let ready = ready && !consumers.is_empty();
    let consumers: Vec<serde_json::Value> = consumers.iter().map(consumer_json).collect();
    let json = serde_json::json!({
        "status": if ready { "ok" } else { "unavailable" },
        "failure": failure,
        "consumers": consumers,
    });
    (ready, json)
}

fn consumer_json(h: &ConsumerHealth) -> serde_json::Value {
    let last_read_ms_ago = h
        .last_read
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_millis() as u64);
    let c = &h.counters;
    serde_json::json!({
        "stream": &*h.id.stream,
        "group": &*h.id.group,
        "consumer": &*h.id.consumer,
        "state": h.state.to_string(),
        "last_read_ms_ago": last_read_ms_ago,
        "restarts_in_window": h.restarts_in_window,
        "restarts_total": h.restarts_total,
        "last_error": h.last_error,
        "counters": {
            "received": c.received,
            "acked": c.acked,
            "failed": c.failed,
            "dead_lettered": c.dead_lettered,
            "claimed": c.claimed,
            "redelivered": c.redelivered,
            "reconnects": c.reconnects,
        },
    })
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
