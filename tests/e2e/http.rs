//! The built-in HTTP endpoint (feature `http`) and the `Clone` handle: `/health`, `/ready` and
//! `/metrics` over real HTTP, the supervisor driven through a clone, the endpoint gone with the
//! supervisor; and the size of `/metrics` at 1,000 streams for each labelling.

use std::net::SocketAddr;
use std::time::Duration;

use millrace::{
    Batch, ConsumerSpec, HandlerResult, MetricsLabels, MultiStreamSpec, RawEntry, StartId,
    Supervisor,
};
use millrace_testkit::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

fn ok(_batch: Batch<RawEntry>) -> futures::future::Ready<HandlerResult> {
    futures::future::ready(HandlerResult::Ok)
}

/// `GET path` over a fresh connection: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await?;
    let mut reply = String::new();
    socket.read_to_string(&mut reply).await?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test]
async fn the_endpoint_serves_health_ready_and_metrics_and_a_clone_drives_the_supervisor() {
    let (server, mut con) = server().await;
    let app = Supervisor::builder()
        .redis(server.url())
        .http(([127, 0, 0, 1], 0))
        .consumer(
            ConsumerSpec::new("s", "g", "c")
                .start_id(StartId::Beginning)
                .block(Duration::from_millis(200))
                .handler(ok),
        )
        .start()
        .await
        .unwrap();
    let addr = app.http_addr().expect("the endpoint's address");
    assert_eq!(get(addr, "/health").await.unwrap().0, 200);
    eventually(WAIT, "/ready answers 200", || async move {
        matches!(get(addr, "/ready").await, Ok((200, _)))
    })
    .await;
    xadd_n(&mut con, "s", 3).await;
    eventually(WAIT, "/metrics counts the acked entries", || async move {
        let (status, body) = get(addr, "/metrics").await.unwrap();
        status == 200
            && body.contains("# TYPE millrace_entries_acked_total counter")
            && body
                .contains("millrace_entries_acked_total{stream=\"s\",group=\"g\",consumer=\"c\"} 3")
    })
    .await;
    assert_eq!(get(addr, "/nope").await.unwrap().0, 404);

    // A clone adds a consumer; /ready says 503 and why until it reads.
    let handle = app.clone();
    let (status, _) = get(addr, "/ready").await.unwrap();
    assert_eq!(status, 200);
    handle
        .add_consumer(
            ConsumerSpec::new("t", "g", "c")
                .block(Duration::from_millis(200))
                .handler(ok),
        )
        .await
        .unwrap();
    assert_eq!(
        app.health().len(),
        2,
        "the original sees what the clone added"
    );
    eventually(WAIT, "/ready again with both consumers", || async move {
        matches!(get(addr, "/ready").await, Ok((200, _)))
    })
    .await;

    // Shut down through a clone: the endpoint goes with the supervisor, and the other handles'
    // calls fail clearly.
    handle.clone().shutdown().await.unwrap();
    assert!(get(addr, "/health").await.is_err(), "the endpoint stopped");
    let err = app
        .add_consumer(ConsumerSpec::new("u", "g", "c").handler(ok))
        .await
        .expect_err("the supervisor was shut down");
    assert!(err.to_string().contains("shut down"), "{err}");
    assert!(!handle.is_ready());
    assert_eq!(app.liveness().unwrap_err(), "the supervisor was shut down");
    app.shutdown().await.unwrap();
}

/// A service with one multi-stream consumer over 1,000 streams: the lines of `/metrics` under each
/// labelling (printed), the default well under 5,000.
#[tokio::test]
#[allow(clippy::print_stderr)]
async fn metrics_at_a_thousand_streams_stay_small_by_default() {
    let (server, _con) = server().await;
    let streams: Vec<String> = (0..1_000)
        .map(|i| format!("tenant:{{{i}}}:events"))
        .collect();
    let mut lines = Vec::new();
    for labels in [
        None,
        Some(MetricsLabels::Streams),
        Some(MetricsLabels::TopStreams(20)),
    ] {
        let mut builder = Supervisor::builder()
            .redis(server.url())
            .http(([127, 0, 0, 1], 0));
        if let Some(labels) = labels {
            builder = builder.metrics_labels(labels);
        }
        let app = builder
            .multi_stream(
                MultiStreamSpec::new(streams.clone(), "g", "c")
                    .block(Duration::from_secs(1))
                    .handler(ok),
            )
            .start()
            .await
            .unwrap();
        let addr = app.http_addr().unwrap();
        eventually(
            Duration::from_secs(120),
            "all 1,000 streams reading",
            || {
                let ready = app.is_ready();
                async move { ready }
            },
        )
        .await;
        let (status, body) = get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        let n = body.lines().count();
        eprintln!("/metrics at 1,000 streams, {labels:?}: {n} lines");
        lines.push(n);
        app.shutdown().await.unwrap();
    }
    assert!(lines[0] < 5_000, "the default: {} lines", lines[0]);
    assert!(lines[1] > 10_000, "per stream: {} lines", lines[1]);
    assert!(lines[0] < lines[2] && lines[2] < lines[1], "{lines:?}");
}
