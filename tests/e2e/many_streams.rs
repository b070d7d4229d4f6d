//! One consumer over many streams (`MultiStreamSpec`): what stays per stream (`Partial` ids,
//! dead letters, restarts, a deleted key), streams added and removed while running, bad specs
//! refused at start, and a worker process killed with SIGKILL mid-load over two streams.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millrace::dead_letter::DeadLetterStream;
use millrace::{
    Batch, ConsumerId, ConsumerSpec, EntryId, Error, HandlerResult, MultiStreamSpec, RawEntry,
    StartId, Supervisor,
};
use millrace_testkit::eventually;
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::*;

fn multi(streams: &[&str]) -> MultiStreamSpec {
    MultiStreamSpec::new(streams.iter().copied(), "g", "c")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(200))
        .claim_min_idle(Duration::from_secs(600))
}

/// Adds entries with the ids `1-0` … `n-0` to `stream`: the same ids in every stream, so an id
/// acknowledged in the wrong stream would show.
async fn xadd_same_ids(con: &mut MultiplexedConnection, stream: &str, n: u64) -> Vec<EntryId> {
    let mut pipe = redis::pipe();
    for i in 1..=n {
        pipe.cmd("XADD")
            .arg(stream)
            .arg(format!("{i}-0"))
            .arg("n")
            .arg(i)
            .ignore();
    }
    let () = pipe.query_async(con).await.unwrap();
    (1..=n).map(|i| EntryId::new(i, 0)).collect()
}

/// The ids pending in group `g` on `stream` for `consumer`; empty while the group does not exist.
async fn pending_of(
    con: &mut MultiplexedConnection,
    stream: &str,
    consumer: &str,
) -> BTreeSet<EntryId> {
    let last = EntryId::new(u64::MAX, u64::MAX);
    millrace::streams::xpending_range(con, stream, "g", None, EntryId::MIN, last, 10_000, None)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.consumer == consumer.as_bytes())
        .map(|r| r.id)
        .collect()
}

fn restarts(app: &Supervisor, stream: &str) -> u64 {
    app.consumer_health(&ConsumerId::new(stream, "g", "c"))
        .map(|h| h.restarts_total)
        .unwrap_or(u64::MAX)
}

/// A server and a running supervisor of `multi(streams)` whose handler records and acks all.
async fn running(
    streams: &[&str],
) -> (
    millrace_testkit::RedisServer,
    MultiplexedConnection,
    Handled,
    Supervisor,
) {
    let (server, con) = server().await;
    let seen = Handled::default();
    let app = start_multi(&server, multi(streams).handler(seen.handler())).await;
    wait_running(&app).await;
    (server, con, seen, app)
}

#[tokio::test]
async fn partial_in_each_stream_leaves_exactly_its_own_ids_pending() {
    let (server, mut con) = server().await;
    // Stream a acknowledges its even entries, b its odd ones; ids are the same in both.
    let ids = xadd_same_ids(&mut con, "a", 6).await;
    xadd_same_ids(&mut con, "b", 6).await;
    let seen = Handled::default();
    let seen2 = seen.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .multi_stream(
            multi(&["a", "b"])
                .count(6)
                .handler(move |batch: Batch<RawEntry>| {
                    seen2.record(&batch);
                    let keep = if &*batch.meta.stream == "a" { 0 } else { 1 };
                    let acked: Vec<EntryId> = batch
                        .iter()
                        .filter(|e| e.id.ms % 2 == keep)
                        .map(|e| e.id)
                        .collect();
                    async move { HandlerResult::Partial(acked) }
                }),
        )
        .start()
        .await
        .unwrap();
    let odd: BTreeSet<EntryId> = ids.iter().copied().filter(|id| id.ms % 2 == 1).collect();
    let even: BTreeSet<EntryId> = ids.iter().copied().filter(|id| id.ms % 2 == 0).collect();
    eventually(WAIT, "a keeps its odd ids pending, b its even ones", || {
        let (mut con, odd, even) = (con.clone(), odd.clone(), even.clone());
        async move {
            pending_of(&mut con, "a", "c").await == odd
                && pending_of(&mut con, "b", "c").await == even
        }
    })
    .await;
    assert_eq!(seen.len(), 12, "each entry of each stream handled once");
    app.shutdown().await.unwrap();
    // Nothing else was acknowledged meanwhile.
    assert_eq!(pending_of(&mut con, "a", "c").await, odd);
    assert_eq!(pending_of(&mut con, "b", "c").await, even);
}

#[tokio::test]
async fn each_streams_poison_goes_to_its_own_dead_letter_stream_with_the_reason() {
    let (server, mut con) = server().await;
    // Entry 2-0 of every stream is poison; the handler names the stream in the reason.
    for stream in ["a", "b", "c"] {
        xadd_same_ids(&mut con, stream, 3).await;
    }
    let app = Supervisor::builder()
        .redis(server.url())
        .multi_stream(
            multi(&["a", "b", "c"]).handler(move |batch: Batch<RawEntry>| {
                for e in batch.iter().filter(|e| e.id == EntryId::new(2, 0)) {
                    batch.dead_letter(e.id, format!("poison found in {}", batch.meta.stream));
                }
                async { HandlerResult::Ok }
            }),
        )
        .start()
        .await
        .unwrap();
    for stream in ["a", "b", "c"] {
        eventually(WAIT, "the stream drained", || {
            let mut con = con.clone();
            async move { drained(&mut con, stream, "g").await }
        })
        .await;
        let letters = DeadLetterStream::of(stream)
            .list(&mut con, 10)
            .await
            .unwrap()
            .letters;
        assert_eq!(letters.len(), 1, "{stream}: exactly its own poison");
        let letter = letters[0].dead_letter.as_ref().unwrap();
        assert_eq!(letter.source_stream, stream);
        assert_eq!(letter.source_id, Some(EntryId::new(2, 0)));
        assert!(
            letter
                .reason
                .ends_with(&format!(": poison found in {stream}")),
            "{}",
            letter.reason
        );
    }
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dead_letter_stream_template_names_each_streams_own() {
    let (server, mut con) = server().await;
    xadd_same_ids(&mut con, "a", 1).await;
    xadd_same_ids(&mut con, "b", 1).await;
    let app = Supervisor::builder()
        .redis(server.url())
        .multi_stream(
            multi(&["a", "b"])
                .dead_letter_stream("dead:{stream}".to_owned())
                .handler(|batch: Batch<RawEntry>| {
                    for e in &batch {
                        batch.dead_letter(e.id, "refused");
                    }
                    async { HandlerResult::Ok }
                }),
        )
        .start()
        .await
        .unwrap();
    eventually(WAIT, "one dead letter in dead:a and one in dead:b", || {
        let mut con = con.clone();
        async move {
            let a: u64 = redis::cmd("XLEN")
                .arg("dead:a")
                .query_async(&mut con)
                .await
                .unwrap();
            let b: u64 = redis::cmd("XLEN")
                .arg("dead:b")
                .query_async(&mut con)
                .await
                .unwrap();
            a == 1 && b == 1
        }
    })
    .await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_deleted_stream_is_dropped_while_the_others_keep_flowing() {
    let (_server, mut con, seen, app) = running(&["a", "b", "c"]).await;
    let before = xadd(&mut con, "b", &[("n", "1")]).await;
    seen.wait_for("b", before).await;
    let _: () = redis::cmd("DEL")
        .arg("b")
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(
        WAIT,
        "b dropped from the set in use and from health",
        || {
            let streams = app.streams_of("g", "c");
            let health = app.consumer_health(&ConsumerId::new("b", "g", "c"));
            async move { streams == ["a", "c"] && health.is_none() }
        },
    )
    .await;
    let a = xadd(&mut con, "a", &[("n", "2")]).await;
    let c = xadd(&mut con, "c", &[("n", "3")]).await;
    seen.wait_for("a", a).await;
    seen.wait_for("c", c).await;
    assert!(
        !exists(&mut con, "b").await,
        "the deleted key was not created again"
    );
    assert_eq!((restarts(&app, "a"), restarts(&app, "c")), (0, 0));
    assert!(app.is_ready(), "the streams left are all running");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stream_replaced_by_a_key_of_another_type_is_dropped_without_failing_the_others() {
    let (_server, mut con, seen, app) = running(&["a", "b"]).await;
    // One atomic step: the stream key becomes a string.
    let _: () = redis::cmd("SET")
        .arg("tmp")
        .arg("x")
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("RENAME")
        .arg("tmp")
        .arg("b")
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(WAIT, "b dropped", || {
        let streams = app.streams_of("g", "c");
        async move { streams == ["a"] }
    })
    .await;
    let a = xadd(&mut con, "a", &[("n", "1")]).await;
    seen.wait_for("a", a).await;
    let kind: String = redis::cmd("TYPE")
        .arg("b")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(kind, "string", "the other key is left alone");
    assert!(app.failure().is_none() && app.is_ready());
    assert_eq!(restarts(&app, "a"), 0);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn twenty_streams_are_read_on_one_connection() {
    let names: Vec<String> = (0..20).map(|i| format!("tenant:{i}:events")).collect();
    let streams: Vec<&str> = names.iter().map(String::as_str).collect();
    let (_server, mut con, seen, app) = running(&streams).await;
    let mut added = Vec::new();
    for stream in &streams {
        added.push((*stream, xadd(&mut con, stream, &[("n", "1")]).await));
    }
    eventually(WAIT, "an entry of every stream handled", || {
        let done = added.iter().all(|(s, id)| seen.has(s, *id));
        async move { done }
    })
    .await;
    // This test's connection, the supervisor's control connection and the one shared read
    // (the streams' replays have closed their connections).
    eventually(WAIT, "three connections", || async {
        client_list(&con).await.lines().count() == 3
    })
    .await;
    let list = client_list(&con).await;
    assert_eq!(list.matches("cmd=xreadgroup").count(), 1, "{list}");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_destroyed_group_heals_its_stream_alone() {
    let (_server, mut con, seen, app) = running(&["a", "b"]).await;
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg("b")
        .arg("g")
        .query_async(&mut con)
        .await
        .unwrap();
    let health = |stream: &str| {
        app.consumer_health(&ConsumerId::new(stream, "g", "c"))
            .unwrap()
    };
    eventually(WAIT, "b's group recreated", || {
        let recreated = health("b").counters.group_recreated;
        async move { recreated >= 1 }
    })
    .await;
    let b = xadd(&mut con, "b", &[("n", "1")]).await;
    let a = xadd(&mut con, "a", &[("n", "2")]).await;
    seen.wait_for("a", a).await;
    seen.wait_for("b", b).await;
    assert_eq!(app.streams_of("g", "c"), ["a", "b"]);
    assert_eq!(
        health("a").counters.group_recreated,
        0,
        "a was not disturbed"
    );
    assert_eq!((restarts(&app, "a"), restarts(&app, "b")), (0, 0));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn streams_are_added_and_removed_while_running() {
    let (_server, mut con, seen, app) = running(&["a"]).await;
    app.add_stream("g", "c", "b").await.unwrap();
    assert_eq!(app.streams_of("g", "c"), ["a", "b"]);
    let b = xadd(&mut con, "b", &[("n", "1")]).await;
    seen.wait_for("b", b).await;

    let again = app.add_stream("g", "c", "b").await.unwrap_err();
    assert!(matches!(again, Error::DuplicateConsumer { .. }), "{again}");
    let unknown = app.add_stream("g", "other", "x").await.unwrap_err();
    assert!(
        matches!(unknown, Error::UnknownConsumer { .. }),
        "{unknown}"
    );
    let control = app.add_stream("g", "c", "b\nc").await.unwrap_err();
    assert!(
        control
            .to_string()
            .contains("holds the control character `\\n`"),
        "{control}"
    );
    let its_dlq = app.add_stream("g", "c", "b:dlq").await.unwrap_err();
    assert!(
        its_dlq.to_string().contains("dead-letter stream of `b`"),
        "{its_dlq}"
    );

    app.remove_stream("g", "c", "a").await.unwrap();
    assert_eq!(app.streams_of("g", "c"), ["b"]);
    assert!(app
        .consumer_health(&ConsumerId::new("a", "g", "c"))
        .is_none());
    let a = xadd(&mut con, "a", &[("n", "2")]).await;
    let b2 = xadd(&mut con, "b", &[("n", "3")]).await;
    seen.wait_for("b", b2).await;
    let gone = app.remove_stream("g", "c", "a").await.unwrap_err();
    assert!(matches!(gone, Error::UnknownConsumer { .. }), "{gone}");
    assert_eq!(restarts(&app, "b"), 0);
    app.shutdown().await.unwrap();
    assert!(!seen.has("a", a), "a removed stream is not handled");
    // Once `remove_stream` returned no read named `a` any more: the entry added after it was
    // delivered to no one (not parked in the removed consumer's pending list, idle for a day),
    // and waits for the group's other consumers.
    let rows = pending_rows(&mut con, "a", "g").await;
    assert!(rows.is_empty(), "delivered after the removal: {rows:?}");
    assert!(!drained(&mut con, "a", "g").await, "not delivered");
}

#[tokio::test]
async fn bad_multi_stream_specs_are_refused_at_start_with_what_to_do() {
    let (server, _con) = server().await;
    let handler = |_b: Batch<RawEntry>| async { HandlerResult::Ok };
    let start = |spec: MultiStreamSpec| {
        Supervisor::builder()
            .redis(server.url())
            .multi_stream(spec)
            .start()
    };
    let none = start(MultiStreamSpec::new(Vec::<String>::new(), "g", "c").handler(handler))
        .await
        .unwrap_err();
    assert!(none.is_fatal());
    assert!(
        none.to_string()
            .contains("`streams` names no stream: name at least one"),
        "{none}"
    );
    assert!(
        none.to_string().contains("group `g`, consumer `c`"),
        "{none}"
    );

    let twice = start(MultiStreamSpec::new(["a", "b", "a"], "g", "c").handler(handler))
        .await
        .unwrap_err();
    assert!(
        twice
            .to_string()
            .contains("stream `a`, group `g`, consumer `c`")
            && twice.to_string().contains("names this stream twice"),
        "{twice}"
    );

    let shared_dlq = start(
        MultiStreamSpec::new(["a", "b"], "g", "c")
            .dead_letter_stream("dlq".to_owned())
            .handler(handler),
    )
    .await
    .unwrap_err();
    assert!(shared_dlq.to_string().contains("{stream}"), "{shared_dlq}");

    // Control characters in a name: Redis would print them mangled in a NOGROUP, which then
    // matches no stream of the shared read.
    let control = start(MultiStreamSpec::new(["a", "b\r\n"], "g", "c").handler(handler))
        .await
        .unwrap_err();
    assert!(control.is_fatal());
    assert!(
        control
            .to_string()
            .contains("stream `b\\r\\n`, group `g`, consumer `c`")
            && control.to_string().contains("holds the control character"),
        "{control}"
    );
    let control = Supervisor::builder()
        .redis(server.url())
        .consumer(ConsumerSpec::new("orders\0", "g", "c").handler(handler))
        .start()
        .await
        .unwrap_err();
    assert!(
        control.to_string().contains("stream `orders\\u{0}`")
            && control
                .to_string()
                .contains("use a name without control characters"),
        "{control}"
    );

    // A stream also run by a consumer of its own with the same names.
    let clash = Supervisor::builder()
        .redis(server.url())
        .consumer(ConsumerSpec::new("a", "g", "c").handler(handler))
        .multi_stream(MultiStreamSpec::new(["a", "b"], "g", "c").handler(handler))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(clash, Error::DuplicateConsumer { .. }), "{clash}");

    let two = Supervisor::builder()
        .redis(server.url())
        .multi_stream(MultiStreamSpec::new(["a"], "g", "c").handler(handler))
        .multi_stream(MultiStreamSpec::new(["b"], "g", "c").handler(handler))
        .start()
        .await
        .unwrap_err();
    assert!(
        two.to_string().contains("is already supervised here"),
        "{two}"
    );
}

#[tokio::test]
async fn a_handler_panic_restarts_only_its_streams_consumer() {
    let (server, mut con) = server().await;
    let seen = Handled::default();
    let panicked = Arc::new(AtomicBool::new(false));
    let (seen2, panicked2) = (seen.clone(), panicked.clone());
    let mut policy = millrace::RestartPolicy::default();
    policy.backoff_initial = Duration::from_millis(10);
    let app = Supervisor::builder()
        .redis(server.url())
        .restart_policy(policy)
        .multi_stream(
            multi(&["a", "b", "c"]).handler(move |batch: Batch<RawEntry>| {
                if &*batch.meta.stream == "b" && !panicked2.swap(true, Ordering::SeqCst) {
                    panic!("b's first batch fails");
                }
                seen2.record(&batch);
                futures::future::ready(HandlerResult::Ok)
            }),
        )
        .start()
        .await
        .unwrap();
    wait_running(&app).await;
    let b = xadd(&mut con, "b", &[("n", "1")]).await;
    seen.wait_for("b", b).await;
    let a = xadd(&mut con, "a", &[("n", "2")]).await;
    let c = xadd(&mut con, "c", &[("n", "3")]).await;
    seen.wait_for("a", a).await;
    seen.wait_for("c", c).await;
    assert_eq!(restarts(&app, "b"), 1);
    assert_eq!((restarts(&app, "a"), restarts(&app, "c")), (0, 0));
    app.shutdown().await.unwrap();
}

/// `orders work --streams 2` (one multi-stream consumer over `orders:new:0` and `orders:new:1`),
/// started and announced ready.
async fn orders_worker(server: &millrace_testkit::RedisServer, consumer: &str) -> Child {
    let url = server.url();
    let log = server.dir().join(format!("{consumer}.log"));
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("opening the worker's log");
    let mut child = Command::new(crate::faults::orders_bin())
        .args([
            "--redis",
            &url,
            "--streams",
            "2",
            "work",
            "--consumer",
            consumer,
        ])
        // Slow batches keep entries pending at a kill; claims only after 10 minutes, so only the
        // restarted worker's own replay can bring them back.
        .args([
            "--count",
            "5",
            "--work-ms",
            "100",
            "--claim-min-idle",
            "10m",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("spawning orders work");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "ready" {
                return true;
            }
        }
        false
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        ready,
        Ok(true),
        "the worker did not announce ready:\n{text}"
    );
    // Keep reading, so a later line never meets a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn orders(url: &str, args: &[&str]) -> String {
    let out = Command::new(crate::faults::orders_bin())
        .args(["--redis", url, "--streams", "2"])
        .args(args)
        .output()
        .await
        .expect("running orders");
    assert!(out.status.success(), "orders {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_killed_multi_stream_worker_gets_its_entries_in_both_streams_back_under_its_name() {
    let (server, mut con) = server().await;
    let url = server.url();
    let bin = tokio::task::spawn_blocking(crate::faults::orders_bin)
        .await
        .unwrap();
    assert!(bin.exists());
    orders(&url, &["produce", "--count", "400"]).await;
    let mut worker = orders_worker(&server, "w1").await;
    let groups = "order_processors";
    let held = |stream: &'static str| {
        let mut con = con.clone();
        async move {
            pending_rows(&mut con, stream, groups)
                .await
                .into_iter()
                .filter(|r| r.consumer == b"w1")
                .map(|r| r.id)
                .collect::<BTreeSet<_>>()
        }
    };
    eventually(WAIT, "w1 holds entries in both streams", || {
        let (a, b) = (held("orders:new:0"), held("orders:new:1"));
        async move { !a.await.is_empty() && !b.await.is_empty() }
    })
    .await;
    worker.start_kill().expect("SIGKILL");
    worker.wait().await.expect("reaping the killed worker");
    let (held0, held1) = (held("orders:new:0").await, held("orders:new:1").await);
    assert!(
        !held0.is_empty() && !held1.is_empty(),
        "killed mid-load in both streams"
    );

    let mut again = orders_worker(&server, "w1").await;
    eventually(
        Duration::from_secs(60),
        "every order processed, nothing pending",
        || {
            let url = url.clone();
            async move {
                let report = orders(&url, &["report"]).await;
                report.contains("\"lost\":0")
                    && report.contains("\"pending\":0")
                    && report.contains("\"processed\":400")
            }
        },
    )
    .await;
    // The entries held at the kill came back under w1's name: nobody else could claim them.
    for stream in ["orders:new:0", "orders:new:1"] {
        assert!(drained(&mut con, stream, groups).await, "{stream} drained");
    }
    again.start_kill().expect("SIGKILL");
    again.wait().await.expect("reaping the worker");
}

#[tokio::test]
async fn multi_stream_consumers_declared_in_millrace_toml_and_the_environment_run() {
    let (server, mut con) = server().await;
    let text = format!(
        r#"
        redis = "{}"
        [defaults]
        start_id = "0"
        block = "200ms"
        [[multi_streams]]
        streams = ["toml:a", "toml:b"]
        group = "g"
        consumer = "named"
        "#,
        server.url()
    );
    // The pattern consumer comes from the environment alone.
    let vars = [
        ("MILLRACE_MULTI_STREAMS__1__PATTERN", "found:*"),
        ("MILLRACE_MULTI_STREAMS__1__GROUP", "g"),
        ("MILLRACE_MULTI_STREAMS__1__CONSUMER", "by-pattern"),
        ("MILLRACE_MULTI_STREAMS__1__DISCOVERY_INTERVAL", "50ms"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let settings = millrace::Settings::parse(&text, vars).unwrap();
    let seen = Handled::default();
    let specs = settings.multi_streams("g", seen.handler());
    assert_eq!(specs.len(), 2);
    let mut builder = settings.supervisor().unwrap();
    for spec in specs {
        builder = builder.multi_stream(spec);
    }
    // A pattern consumer is ready once it reads a stream: give it one to find.
    let found = xadd(&mut con, "found:1", &[("n", "3")]).await;
    let app = builder.start().await.unwrap();
    wait_running(&app).await;
    assert_eq!(app.streams_of("g", "named"), ["toml:a", "toml:b"]);

    let a = xadd(&mut con, "toml:a", &[("n", "1")]).await;
    let b = xadd(&mut con, "toml:b", &[("n", "2")]).await;
    seen.wait_for("toml:a", a).await;
    seen.wait_for("toml:b", b).await;
    seen.wait_for("found:1", found).await;
    assert_eq!(app.streams_of("g", "by-pattern"), ["found:1"]);
    app.shutdown().await.unwrap();
}
