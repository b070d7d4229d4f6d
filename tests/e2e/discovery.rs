//! Streams found by pattern (`MultiStreamSpec::pattern`): a stream created after start is picked
//! up, a key of another type is skipped and counted, a dead-letter stream matching the pattern is
//! not read, and a deleted stream is dropped without an error loop and comes back when recreated.

use std::time::Duration;

use millrace::{Batch, HandlerResult, MultiStreamSpec, RawEntry, StartId, StreamSet, Supervisor};
use millrace_testkit::eventually;

use crate::common::*;

/// A pattern consumer of group `g`, consumer `c`, sweeping every 100 ms.
fn pattern(p: &str, handled: &Handled) -> MultiStreamSpec {
    MultiStreamSpec::pattern(p, "g", "c")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(200))
        .claim_min_idle(Duration::from_secs(600))
        .discovery_interval(Duration::from_millis(100))
        .handler(handled.handler())
}

/// The stream set of `g`/`c`.
fn set_of(app: &Supervisor) -> StreamSet {
    app.stream_sets()
        .into_iter()
        .find(|s| s.group == "g" && s.consumer == "c")
        .expect("the pattern consumer's stream set")
}

/// Waits for `n` more complete sweeps than `app` has made so far.
async fn sweeps(app: &Supervisor, n: u64) {
    let target = set_of(app).sweeps + n;
    eventually(WAIT, &format!("{n} more sweeps"), || {
        let done = set_of(app).sweeps >= target;
        async move { done }
    })
    .await;
}

#[tokio::test]
async fn a_pattern_consumer_picks_up_a_stream_created_after_start() {
    let (server, mut con) = server().await;
    let first = xadd(&mut con, "t:1:events", &[("n", "1")]).await;
    let handled = Handled::default();
    let app = start_multi(&server, pattern("t:*:events", &handled)).await;
    handled.wait_for("t:1:events", first).await;

    // Created after start: found by a later sweep, its group created at its first entry, so the
    // entry that created it is delivered too.
    let second = xadd(&mut con, "t:2:events", &[("n", "2")]).await;
    handled.wait_for("t:2:events", second).await;
    assert_eq!(app.streams_of("g", "c"), ["t:1:events", "t:2:events"]);
    let set = set_of(&app);
    assert_eq!(set.pattern.as_deref(), Some("t:*:events"));
    assert_eq!(set.streams, ["t:1:events", "t:2:events"]);
    assert!(
        set.last_sweep.is_some() && set.last_error.is_none(),
        "{set:?}"
    );
    app.shutdown().await.unwrap();
}

/// The default start position (`StartId::New`) applies to the streams of the first sweep only: a
/// stream found by a later sweep is read from its first entry, so the entries written to a new
/// tenant's stream before a sweep found it are all handled, not skipped.
#[tokio::test]
async fn entries_written_before_a_sweep_finds_a_new_stream_are_all_handled() {
    let (server, mut con) = server().await;
    let before_start = xadd(&mut con, "t:1:events", &[("n", "0")]).await;
    let handled = Handled::default();
    let spec = MultiStreamSpec::pattern("t:*:events", "g", "c")
        .block(Duration::from_millis(200))
        .claim_min_idle(Duration::from_secs(600))
        .discovery_interval(Duration::from_millis(100))
        .handler(handled.handler());
    let app = start_multi(&server, spec).await;
    sweeps(&app, 1).await;
    assert_eq!(app.streams_of("g", "c"), ["t:1:events"]);

    // A new tenant: ten entries, the first of them creating its stream, all written before any
    // sweep can have found it.
    let written = xadd_n(&mut con, "t:2:events", 10).await;
    let last = *written.last().unwrap();
    handled.wait_for("t:2:events", last).await;
    let missed: Vec<_> = written
        .iter()
        .filter(|id| !handled.has("t:2:events", **id))
        .collect();
    assert!(
        missed.is_empty(),
        "entries of the new stream skipped: {missed:?}"
    );

    // A stream of the first sweep keeps `start_id`'s meaning: its entry from before the start is
    // not read, the entries after it are (in order, so the old one would have come first).
    let after_start = xadd(&mut con, "t:1:events", &[("n", "1")]).await;
    handled.wait_for("t:1:events", after_start).await;
    assert!(!handled.has("t:1:events", before_start));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_key_of_another_type_matching_the_pattern_is_skipped_and_counted() {
    let (server, mut con) = server().await;
    let _: () = redis::cmd("HSET")
        .arg("t:h:events")
        .arg("f")
        .arg("v")
        .query_async(&mut con)
        .await
        .unwrap();
    let first = xadd(&mut con, "t:1:events", &[("n", "1")]).await;
    let handled = Handled::default();
    let app = start_multi(&server, pattern("t:*:events", &handled)).await;
    handled.wait_for("t:1:events", first).await;
    sweeps(&app, 2).await;

    let set = set_of(&app);
    assert_eq!(set.other_type_keys, 1, "{set:?}");
    assert_eq!(set.other_type_examples, ["t:h:events"]);
    assert_eq!(set.streams, ["t:1:events"]);
    assert!(app.failure().is_none());
    assert!(app.health().iter().all(|h| &*h.id.stream != "t:h:events"));
    let kind: String = redis::cmd("TYPE")
        .arg("t:h:events")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(kind, "hash", "the key is left as it was");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn dead_letter_streams_matching_the_pattern_are_not_read() {
    let (server, mut con) = server().await;
    let first = xadd(&mut con, "t:1", &[("n", "1")]).await;
    xadd(&mut con, "t:1:dlq", &[("n", "dead")]).await;
    let handled = Handled::default();
    let app = start_multi(&server, pattern("t:*", &handled)).await;
    handled.wait_for("t:1", first).await;
    sweeps(&app, 2).await;

    assert_eq!(app.streams_of("g", "c"), ["t:1"]);
    assert_eq!(set_of(&app).dead_letter_streams, 1);
    assert!(!handled
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|(s, _)| s == "t:1:dlq"));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_deleted_stream_is_dropped_without_an_error_loop_and_comes_back_when_recreated() {
    let (server, mut con) = server().await;
    let one = xadd(&mut con, "t:1:events", &[("n", "1")]).await;
    let two = xadd(&mut con, "t:2:events", &[("n", "2")]).await;
    let handled = Handled::default();
    let app = start_multi(&server, pattern("t:*:events", &handled)).await;
    handled.wait_for("t:1:events", one).await;
    handled.wait_for("t:2:events", two).await;

    let _: () = redis::cmd("DEL")
        .arg("t:2:events")
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(WAIT, "the deleted stream dropped", || {
        let streams = app.streams_of("g", "c");
        async move { streams == ["t:1:events"] }
    })
    .await;

    // Three more sweeps without it: nothing is created, added or retried meanwhile.
    let creates = command_calls(&mut con, "xgroup|create").await;
    sweeps(&app, 3).await;
    assert_eq!(command_calls(&mut con, "xgroup|create").await, creates);
    assert!(
        !exists(&mut con, "t:2:events").await,
        "the key is not created again"
    );
    assert_eq!(app.streams_of("g", "c"), ["t:1:events"]);
    assert!(app.health().iter().all(|h| &*h.id.stream == "t:1:events"));
    assert!(app.health().iter().all(|h| h.restarts_total == 0));
    assert!(app.failure().is_none());

    // The other stream kept flowing, and the deleted one comes back when it is recreated.
    let more = xadd(&mut con, "t:1:events", &[("n", "3")]).await;
    handled.wait_for("t:1:events", more).await;
    let again = xadd(&mut con, "t:2:events", &[("n", "4")]).await;
    handled.wait_for("t:2:events", again).await;
    assert_eq!(app.streams_of("g", "c"), ["t:1:events", "t:2:events"]);
    app.shutdown().await.unwrap();
}

/// `MultiStreamSpec::acl_rules()` is enough for a pattern consumer: discovery, group creation,
/// reads, acks and a dead letter run under it, and Redis denies nothing.
#[tokio::test]
async fn a_pattern_consumer_runs_under_its_own_least_privilege_acl() {
    let (server, mut con) = server().await;
    let first = xadd(&mut con, "t:1:events", &[("n", "1")]).await;
    let poison = xadd(&mut con, "t:2:events", &[("n", "poison")]).await;
    let spec = MultiStreamSpec::pattern("t:*:events", "g", "c")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(200))
        .max_deliveries(1)
        .claim_interval(Duration::from_millis(100))
        .claim_min_idle(Duration::from_millis(200))
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
    acl.arg(crate::common::client_setinfo_rule(&mut con).await);
    let _: () = acl.query_async(&mut con).await.unwrap();
    let handled = Handled::default();
    let recorded = handled.clone();
    let app = Supervisor::builder()
        .redis(format!("redis://worker:pw@127.0.0.1:{}", server.port()))
        .multi_stream(spec.handler(move |batch: Batch<RawEntry>| {
            recorded.record(&batch);
            let done = batch
                .iter()
                .filter(|e| {
                    e.message
                        .fields
                        .iter()
                        .all(|(_, v)| v.as_slice() != b"poison")
                })
                .map(|e| e.id)
                .collect();
            futures::future::ready(HandlerResult::Partial(done))
        }))
        .start()
        .await
        .unwrap();
    handled.wait_for("t:1:events", first).await;
    eventually(WAIT, "the poison entry dead-lettered", || {
        let mut con = con.clone();
        async move {
            redis::cmd("XLEN")
                .arg("t:2:events:dlq")
                .query_async::<u64>(&mut con)
                .await
                .unwrap()
                == 1
        }
    })
    .await;
    assert!(handled.has("t:2:events", poison));
    app.shutdown().await.unwrap();
    let denied: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(denied.is_empty(), "no command was denied: {denied:?}");
}
