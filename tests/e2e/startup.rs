//! What `start()` does when Redis is not there or refuses the credentials: fail at once with an
//! error that names the server, or, with `wait_for_redis`, start and retry until Redis is back.

use std::time::{Duration, Instant};

use millrace::{ConsumerId, ConsumerSpec, ConsumerState, StartId, Supervisor};
use millrace_testkit::{eventually, RedisServer};
use millrace_tests::Logs;

use crate::common::*;

fn spec(stream: &str, group: &str, consumer: &str) -> ConsumerSpec {
    ConsumerSpec::new(stream, group, consumer)
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(300))
}

async fn wait_handled(seen: &Seen, n: usize) {
    let seen = seen.clone();
    eventually(WAIT, &format!("{n} entries handled"), move || {
        let len = seen.len();
        async move { len >= n }
    })
    .await;
}

/// A port nothing listens on: a server's, after it is stopped.
fn dead_port() -> u16 {
    let mut server = RedisServer::start();
    let port = server.port();
    server.stop();
    port
}

#[tokio::test]
async fn start_fails_at_once_when_redis_cannot_be_reached_and_names_the_server() {
    init_tracing();
    let port = dead_port();
    let started = Instant::now();
    let err = Supervisor::builder()
        .redis(format!("redis://127.0.0.1:{port}"))
        .consumer(spec("s", "g", "c").handler(recording(&Seen::default())))
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(started.elapsed() < Duration::from_secs(2), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("could not reach"), "{text}");
    assert!(text.contains("wait_for_redis"), "{text}");
    assert!(err.is_fatal(), "{err:?}");
    assert!(!err.is_authentication_failure(), "{err:?}");
}

#[tokio::test]
async fn start_fails_at_once_on_a_wrong_password_saying_authentication_failed() {
    init_tracing();
    let server = RedisServer::builder().password("right").start();
    let err = Supervisor::builder()
        .redis(format!("redis://:wrong@127.0.0.1:{}", server.port()))
        .consumer(spec("s", "g", "c").handler(recording(&Seen::default())))
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("authentication failed"), "{text}");
    assert!(text.contains("username and password"), "{text}");
    assert!(!text.contains("wrong"), "the password is not shown: {text}");
    assert!(err.is_fatal(), "{err:?}");
    assert!(err.is_authentication_failure(), "{err:?}");
}

#[tokio::test]
async fn with_wait_for_redis_start_returns_and_the_consumer_reads_once_redis_is_up() {
    init_tracing();
    let mut server = RedisServer::start();
    server.stop();
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis(server.url())
        .wait_for_redis(true)
        .consumer(
            spec("s", "g", "c")
                .reconnect_backoff_max(Duration::from_millis(200))
                .handler(recording(&seen)),
        )
        .start()
        .await
        .unwrap();
    let id = ConsumerId::new("s", "g", "c");
    eventually(WAIT, "the consumer retries while Redis is down", || {
        let h = app.consumer_health(&id).unwrap();
        async move { h.state != ConsumerState::Running && h.last_error.is_some() }
    })
    .await;
    server.restart();
    let mut con = connect(&server).await;
    wait_running(&app).await;
    xadd_n(&mut con, "s", 3).await;
    wait_handled(&seen, 3).await;
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn an_outage_warns_once_when_it_begins_and_once_when_it_ends() {
    let logs = Logs::capture("millrace=info");
    let mut server = RedisServer::start();
    let seen = Seen::default();
    let id = ConsumerId::new("s", "g", "c");
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("s", "g", "c")
                .reconnect_backoff_max(Duration::from_millis(100))
                .handler(recording(&seen)),
        )
        .start()
        .await
        .unwrap();
    wait_running(&app).await;
    server.stop();
    eventually(WAIT, "several reconnect attempts", || {
        let reconnects = app.consumer_health(&id).unwrap().counters.reconnects;
        async move { reconnects >= 4 }
    })
    .await;
    server.restart();
    let mut con = connect(&server).await;
    xadd_n(&mut con, "s", 3).await;
    wait_handled(&seen, 3).await;
    app.shutdown().await.unwrap();

    let lines = logs.lines();
    let count = |level: &str, text: &str| {
        lines
            .iter()
            .filter(|l| l.contains(level) && l.contains(text))
            .count()
    };
    assert_eq!(
        count("WARN", "reading from the server stopped"),
        1,
        "one warning when the outage begins:\n{lines:#?}"
    );
    assert_eq!(
        count("INFO", "reading from the server resumed"),
        1,
        "one line when it ends:\n{lines:#?}"
    );
}

#[tokio::test]
async fn start_fails_at_once_when_the_server_wants_a_password_and_the_url_has_none() {
    init_tracing();
    let server = RedisServer::builder().password("right").start();
    let err = Supervisor::builder()
        .redis(format!("redis://127.0.0.1:{}", server.port()))
        .consumer(spec("s", "g", "c").handler(recording(&Seen::default())))
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("authentication failed"), "{text}");
    assert!(text.contains("the URL has none"), "{text}");
    assert!(err.is_authentication_failure(), "{err:?}");
}
