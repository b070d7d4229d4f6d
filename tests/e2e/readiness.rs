//! Ready means working: `redis_cluster` at a server without cluster support fails `start()`;
//! `is_ready()` is false while a pattern consumer reads no stream, while its sweeps fail, and
//! while a consumer that was running reconnects for longer than the ready grace.

use std::time::Duration;

use millrace::{
    Batch, ConsumerSpec, HandlerResult, MultiStreamSpec, RawEntry, StartId, Supervisor,
};
use millrace_testkit::eventually;

use crate::common::*;

fn ok(_batch: Batch<RawEntry>) -> futures::future::Ready<HandlerResult> {
    futures::future::ready(HandlerResult::Ok)
}

#[tokio::test]
async fn redis_cluster_at_a_server_without_cluster_support_fails_start() {
    let (server, _con) = server().await;
    let err = Supervisor::builder()
        .redis_cluster([server.url()])
        .multi_stream(MultiStreamSpec::pattern("t:*:events", "g", "c").handler(ok))
        .start()
        .await
        .expect_err("a plain server is not a cluster");
    let message = err.to_string();
    assert!(message.contains("is not a Redis Cluster"), "{message}");
    assert!(message.contains("redis(url)"), "{message}");
    assert!(err.is_fatal(), "{err:?}");
}

/// A pattern consumer is ready once a sweep found a stream and the stream reads; it is not while
/// nothing matches, nor once its sweeps fail (here its ACL user loses `+scan`) past the grace.
#[tokio::test]
async fn a_pattern_consumer_is_ready_only_while_its_sweeps_work_and_it_reads_a_stream() {
    let (server, mut con) = server().await;
    let spec = MultiStreamSpec::pattern("t:*:events", "g", "c")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(200))
        .discovery_interval(Duration::from_millis(100));
    let mut acl = redis::cmd("ACL");
    acl.arg("SETUSER")
        .arg("worker")
        .arg("reset")
        .arg("on")
        .arg(">pw");
    for rule in spec.acl_rules().split_whitespace() {
        acl.arg(rule);
    }
    let _: () = acl.query_async(&mut con).await.unwrap();
    let app = Supervisor::builder()
        .redis(format!("redis://worker:pw@127.0.0.1:{}", server.port()))
        .ready_grace(Duration::ZERO)
        .multi_stream(spec.handler(ok))
        .start()
        .await
        .unwrap();
    let reasons_mention = |app: &Supervisor, what: &'static str| {
        let reasons = app.unready_reasons();
        let found = reasons.iter().any(|r| r.contains(what));
        async move { found }
    };
    eventually(WAIT, "unready: nothing matches", || {
        reasons_mention(&app, "no stream matches `t:*:events`")
    })
    .await;
    assert!(!app.is_ready());

    xadd(&mut con, "t:1:events", &[("n", "1")]).await;
    eventually(WAIT, "ready: a stream found and read", || {
        let ready = app.is_ready();
        async move { ready }
    })
    .await;

    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("worker")
        .arg("-scan")
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(WAIT, "unready: the sweeps fail", || {
        reasons_mention(&app, "the sweeps for `t:*:events` fail")
    })
    .await;
    assert!(!app.is_ready());

    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("worker")
        .arg("+scan")
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(WAIT, "ready again: the sweeps work", || {
        let ready = app.is_ready();
        async move { ready }
    })
    .await;
    app.shutdown().await.unwrap();
}

/// One outage seen by two supervisors: with a grace of an hour the reconnecting consumer keeps
/// the service ready, with no grace it is unready at once, naming the consumer and its state; both
/// are ready again once the consumers read again.
#[tokio::test]
async fn a_consumer_reconnecting_past_the_grace_is_not_ready() {
    let (mut server, _con) = server().await;
    let start = |grace: Duration, consumer: &'static str| {
        let url = server.url();
        async move {
            Supervisor::builder()
                .redis(url)
                .ready_grace(grace)
                .consumer(
                    ConsumerSpec::new("s", "g", consumer)
                        .block(Duration::from_millis(200))
                        .reconnect_backoff_max(Duration::from_millis(200))
                        .handler(ok),
                )
                .start()
                .await
                .unwrap()
        }
    };
    let patient = start(Duration::from_secs(3_600), "patient").await;
    let strict = start(Duration::ZERO, "strict").await;
    wait_running(&patient).await;
    wait_running(&strict).await;

    server.stop();
    let reconnecting = |app: &Supervisor| {
        let h = app.health();
        let r = h
            .iter()
            .all(|h| h.state != millrace::ConsumerState::Running && h.counters.reconnects > 0);
        async move { r }
    };
    eventually(WAIT, "both consumers reconnecting", || {
        let both = (
            patient.health().iter().all(|h| h.counters.reconnects > 0),
            strict.health().iter().all(|h| h.counters.reconnects > 0),
        );
        async move { both == (true, true) }
    })
    .await;
    eventually(WAIT, "the strict one reconnecting", || {
        reconnecting(&strict)
    })
    .await;
    let reasons = strict.unready_reasons();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("s/g/strict") || r.contains("strict")),
        "{reasons:?}"
    );
    assert!(!strict.is_ready());
    assert!(patient.is_ready(), "{:?}", patient.unready_reasons());

    server.restart();
    wait_running(&strict).await;
    eventually(WAIT, "every consumer reading again", || {
        let running = patient.health().iter().all(|h| h.is_running());
        async move { running }
    })
    .await;
    patient.shutdown().await.unwrap();
    strict.shutdown().await.unwrap();
}
