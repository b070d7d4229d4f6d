//! TLS (`rediss://`, the `tls` feature) against Debian's redis-server with a certificate made in the
//! test: it works with the right CA and fails closed with a wrong one.

use std::time::Duration;

use millrace::{ConsumerId, ConsumerSpec, StartId, Supervisor};
use millrace_testkit::{eventually, RedisServer};
use redis::TlsCertificates;

use crate::common::*;

fn tls_client(server: &RedisServer, ca_of: &RedisServer) -> redis::Client {
    let root_cert = std::fs::read(ca_of.ca_cert_path().expect("a TLS server")).unwrap();
    redis::Client::build_with_tls(
        server.url(),
        TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        },
    )
    .unwrap()
}

fn spec() -> ConsumerSpec {
    ConsumerSpec::new("s", "g", "c")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(300))
}

#[tokio::test]
async fn consumes_over_tls_with_the_right_ca() {
    init_tracing();
    let server = RedisServer::builder().tls().start();
    assert!(server.url().starts_with("rediss://"));
    let client = tls_client(&server, &server);
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    xadd_n(&mut con, "s", 20).await;
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis_client(client)
        .consumer(spec().handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "20 handled over TLS", || {
        let n = seen.len();
        async move { n >= 20 }
    })
    .await;
    eventually(WAIT, "nothing pending", || {
        let mut con = con.clone();
        async move { pending(&mut con, "s", "g").await == 0 }
    })
    .await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wrong_ca_fails_closed() {
    init_tracing();
    let server = RedisServer::builder().tls().start();
    let other = RedisServer::builder().tls().start();
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis_client(tls_client(&server, &other))
        .wait_for_redis(true) // past start(), into the consumer's own error path
        .consumer(spec().handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    let id = ConsumerId::new("s", "g", "c");
    eventually(WAIT, "the certificate is refused", || {
        let err = app
            .consumer_health(&id)
            .and_then(|h| h.last_error)
            .unwrap_or_default()
            .to_lowercase();
        async move { err.contains("certificate") || err.contains("unknownissuer") }
    })
    .await;
    let h = app.consumer_health(&id).unwrap();
    assert!(!h.is_running() && h.last_read.is_none(), "{h:?}");
    assert_eq!(seen.len(), 0);
    app.shutdown().await.unwrap();
}

/// The TLS reader is a thread that cannot be aborted: after a handler panic, its blocked read is
/// woken with CLIENT UNBLOCK so the next entry reaches the restarted consumer's new reader.
#[tokio::test]
async fn after_a_restart_over_tls_new_entries_reach_the_new_reader() {
    init_tracing();
    let server = RedisServer::builder().tls().start();
    let client = tls_client(&server, &server);
    let con = client.get_multiplexed_async_connection().await.unwrap();
    new_entries_reach_the_restarted_consumer(Supervisor::builder().redis_client(client), con).await;
}
