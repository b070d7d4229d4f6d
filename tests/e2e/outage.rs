//! A lost connection is an outage, not a broken read: `CLIENT KILL` of the readers' connections
//! keeps the read size, is logged once per server (with the streams counted) rather than per
//! stream, and health's `last_error` says when it happened and is cleared once reading resumes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use millrace::{
    Batch, ConsumerId, ConsumerSpec, HandlerResult, MultiStreamSpec, RawEntry, StartId, Supervisor,
};
use millrace_testkit::{eventually, RedisServer};
use millrace_tests::{assert_one_outage, tenant_streams, Logs};
use redis::aio::MultiplexedConnection;

use crate::common::*;

/// Kills every client connection but the test's own.
async fn kill_clients(con: &mut MultiplexedConnection) -> u64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(con)
        .await
        .unwrap()
}

/// Waits until a client is blocked in `XREADGROUP` and kills it by id (`CLIENT KILL ID`).
async fn kill_blocked_reader(con: &mut MultiplexedConnection) {
    let blocked = Arc::new(Mutex::new(None));
    eventually(WAIT, "a read blocked in XREADGROUP", || {
        let con = con.clone();
        let found = blocked.clone();
        async move {
            let list = client_list(&con).await;
            let mut found = found.lock().unwrap();
            *found = list
                .lines()
                .find(|l| l.contains("cmd=xreadgroup") && l.contains("flags=b "))
                .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
                .map(str::to_owned);
            found.is_some()
        }
    })
    .await;
    let id = blocked.lock().unwrap().clone().unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(con)
        .await
        .unwrap();
    assert_eq!(killed, 1);
}

/// Adds `n` entries to `stream` in one `MULTI`, so a blocked read sees them all at once.
async fn xadd_at_once(con: &mut MultiplexedConnection, stream: &str, n: usize) {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for i in 0..n {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("n")
            .arg(i)
            .ignore();
    }
    let () = pipe.query_async(con).await.unwrap();
}

#[tokio::test]
async fn a_killed_read_connection_keeps_the_read_size() {
    let (_server, mut con) = server().await;
    let sizes = Arc::new(Mutex::new(Vec::<usize>::new()));
    let handler = {
        let sizes = sizes.clone();
        move |batch: Batch<RawEntry>| {
            sizes.lock().unwrap().push(batch.len());
            futures::future::ready(HandlerResult::Ok)
        }
    };
    let id = ConsumerId::new("s", "g", "c");
    let app = Supervisor::builder()
        .redis(_server.url())
        .consumer(
            ConsumerSpec::new("s", "g", "c")
                .start_id(StartId::Beginning)
                .count(10)
                .block(Duration::from_secs(5))
                .reconnect_backoff_max(Duration::from_millis(100))
                .handler(handler),
        )
        .start()
        .await
        .unwrap();
    wait_running(&app).await;
    // The reader's connection is killed while its read is blocked.
    kill_blocked_reader(&mut con).await;
    eventually(WAIT, "the consumer noticed the lost connection", || {
        let reconnects = app.consumer_health(&id).unwrap().counters.reconnects;
        async move { reconnects >= 1 }
    })
    .await;
    xadd_at_once(&mut con, "s", 30).await;
    eventually(WAIT, "30 entries handled", || {
        let n: usize = sizes.lock().unwrap().iter().sum();
        async move { n >= 30 }
    })
    .await;
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(
        sizes,
        vec![10, 10, 10],
        "a lost connection is no cut-off reply: the read size stays 10"
    );
    app.shutdown().await.unwrap();
}

// The default test runtime runs every task on this thread, so the logs captured here are the
// consumers'.
#[tokio::test]
async fn a_killed_connection_of_twenty_streams_is_logged_once_per_server() {
    let server = RedisServer::start();
    let mut con = connect(&server).await;
    let logs = Logs::capture("info");
    let streams = tenant_streams(20);
    let handled = Handled::default();
    let app = Supervisor::builder()
        .redis(server.url())
        .multi_stream(
            MultiStreamSpec::new(streams.iter().map(String::as_str), "g", "c")
                .start_id(StartId::Beginning)
                .block(Duration::from_secs(5))
                .reconnect_backoff_max(Duration::from_millis(100))
                .handler(handled.handler()),
        )
        .start()
        .await
        .unwrap();
    wait_running(&app).await;
    let before = logs.mark();
    assert!(kill_clients(&mut con).await >= 1);
    let mut last = Vec::new();
    for s in &streams {
        last.push((s.clone(), xadd(&mut con, s, &[("n", "1")]).await));
    }
    for (s, id) in &last {
        handled.wait_for(s, *id).await;
    }
    logs.wait_for("reading from the server resumed", WAIT).await;
    assert_one_outage(
        &logs.since(before),
        "reading from the server stopped",
        streams.len(),
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn last_error_says_when_and_is_cleared_once_reading_resumes() {
    let mut server = RedisServer::builder().appendonly(true).start();
    let con = connect(&server).await;
    let seen = Seen::default();
    let id = ConsumerId::new("s", "g", "c");
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            ConsumerSpec::new("s", "g", "c")
                .start_id(StartId::Beginning)
                .block(Duration::from_millis(300))
                .reconnect_backoff_max(Duration::from_millis(100))
                .handler(recording(&seen)),
        )
        .start()
        .await
        .unwrap();
    wait_running(&app).await;
    let before = SystemTime::now();
    server.kill();
    eventually(WAIT, "the outage in health", || {
        let h = app.consumer_health(&id).unwrap();
        async move { h.last_error.is_some() && h.last_error_at.is_some() }
    })
    .await;
    let h = app.consumer_health(&id).unwrap();
    assert!(h.last_error_at.unwrap() >= before, "{h:?}");
    server.restart();
    let mut con2 = connect(&server).await;
    xadd_n(&mut con2, "s", 3).await;
    eventually(WAIT, "3 entries handled", || {
        let n = seen.len();
        async move { n >= 3 }
    })
    .await;
    let h = app.consumer_health(&id).unwrap();
    assert_eq!(h.last_error, None, "{h:?}");
    assert_eq!(h.last_error_at, None, "{h:?}");
    drop(con);
    app.shutdown().await.unwrap();
}
