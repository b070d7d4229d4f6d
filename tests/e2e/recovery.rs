//! Self-healing in one process: lost connections, a Redis restart, a vanished group or key, poison
//! entries, a dead-letter write refused for lack of memory, trimmed entries, a reply cut halfway,
//! missing ACL permissions, and credentials kept out of logs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millrace::{
    Batch, ConsumerId, ConsumerSpec, EntryId, HandlerResult, RawEntry, RestartPolicy, StartId,
    Supervisor,
};
use millrace_testkit::{eventually, FaultProxy, RedisServer};
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

async fn wait_no_pending(con: &redis::aio::MultiplexedConnection, stream: &str, group: &str) {
    eventually(WAIT, "everything delivered and nothing pending", || {
        let mut con = con.clone();
        let (stream, group) = (stream.to_owned(), group.to_owned());
        async move { drained(&mut con, &stream, &group).await }
    })
    .await;
}

async fn dlq_entries(
    con: &mut redis::aio::MultiplexedConnection,
    dlq: &str,
) -> Vec<millrace::dead_letter::DeadLetter> {
    let rows: Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)> = redis::cmd("XRANGE")
        .arg(dlq)
        .arg("-")
        .arg("+")
        .query_async(con)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(id, fields)| {
            millrace::dead_letter::DeadLetter::parse(&RawEntry::new(id.parse().unwrap(), fields))
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_killed_connection_is_reconnected_and_nothing_is_lost() {
    let (server, mut con) = server().await;
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c").handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    let id = ConsumerId::new("s", "g", "c");
    wait_running(&app).await;
    for round in 0..3 {
        let _: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut con)
            .await
            .unwrap();
        xadd_n(&mut con, "s", 10).await;
        wait_handled(&seen, 10 * (round + 1)).await;
    }
    wait_no_pending(&con, "s", "g").await;
    assert!(app.consumer_health(&id).unwrap().counters.reconnects >= 1);
    assert_eq!(seen.count_by_id().len(), 30);
    app.shutdown().await.unwrap();
}

/// Runs a consumer across a Redis restart with persistence: `stop` takes the server down (crash
/// or graceful), then it comes back with the same data and everything is handled.
async fn survives_a_restart(stop: fn(&mut RedisServer)) {
    init_tracing();
    let mut server = RedisServer::builder().appendonly(true).start();
    let mut con = connect(&server).await;
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c").handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    xadd_n(&mut con, "s", 20).await;
    wait_handled(&seen, 20).await;
    stop(&mut server);
    server.restart();
    let mut con = connect(&server).await;
    xadd_n(&mut con, "s", 20).await;
    wait_handled(&seen, 40).await;
    wait_no_pending(&con, "s", "g").await;
    assert_eq!(seen.count_by_id().len(), 40);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_redis_crash_and_restart_with_persistence_is_survived() {
    survives_a_restart(RedisServer::kill).await;
}

#[tokio::test]
async fn a_graceful_redis_restart_is_survived() {
    survives_a_restart(RedisServer::stop).await;
}

#[tokio::test]
async fn a_vanished_key_or_group_is_recreated_and_consumption_goes_on() {
    let (server, mut con) = server().await;
    let seen = Seen::default();
    let id = ConsumerId::new("s", "g", "c");
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c").handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    xadd_n(&mut con, "s", 5).await;
    wait_handled(&seen, 5).await;
    // DEL while the consumer is blocked: UNBLOCKED the stream key no longer exists.
    let _: u64 = redis::cmd("DEL")
        .arg("s")
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(WAIT, "group recreated after DEL", || {
        let n = app.consumer_health(&id).unwrap().counters.group_recreated;
        async move { n >= 1 }
    })
    .await;
    xadd_n(&mut con, "s", 5).await;
    wait_handled(&seen, 10).await;
    // XGROUP DESTROY while blocked: NOGROUP.
    let _: u64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg("s")
        .arg("g")
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(WAIT, "group recreated after DESTROY", || {
        let n = app.consumer_health(&id).unwrap().counters.group_recreated;
        async move { n >= 2 }
    })
    .await;
    xadd_n(&mut con, "s", 5).await;
    eventually(
        WAIT,
        "new entries handled after the group came back",
        || {
            let n = seen.count_by_id().len();
            async move { n >= 15 }
        },
    )
    .await;
    wait_no_pending(&con, "s", "g").await;
    app.shutdown().await.unwrap();
}

/// A handler that fails every entry whose `n` field is `poison`.
fn poison_aware(
    seen: &Seen,
) -> impl Fn(Batch<RawEntry>) -> futures::future::Ready<HandlerResult> + Send + Sync + 'static {
    let seen = seen.clone();
    move |batch: Batch<RawEntry>| {
        seen.record(&batch);
        let good: Vec<EntryId> = batch
            .iter()
            .filter(|e| e.message.get_str("n") != Some("poison"))
            .map(|e| e.id)
            .collect();
        futures::future::ready(if good.len() == batch.len() {
            HandlerResult::Ok
        } else {
            HandlerResult::Partial(good)
        })
    }
}

#[tokio::test]
async fn a_poison_entry_moves_to_dead_letters_after_exactly_max_deliveries() {
    let (server, mut con) = server().await;
    let seen = Seen::default();
    xadd_n(&mut con, "s", 3).await;
    let poison = xadd(&mut con, "s", &[("n", "poison")]).await;
    xadd_n(&mut con, "s", 3).await;
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("s", "g", "c")
                .max_deliveries(3)
                .claim_interval(Duration::from_millis(100))
                .claim_min_idle(Duration::from_millis(200))
                .handler(poison_aware(&seen)),
        )
        .start()
        .await
        .unwrap();
    wait_no_pending(&con, "s", "g").await;
    let dead = dlq_entries(&mut con, "s:dlq").await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.source_id, Some(poison));
    assert_eq!(
        (
            d.group.as_str(),
            d.consumer.as_str(),
            d.source_stream.as_str()
        ),
        ("g", "c", "s")
    );
    assert_eq!(d.deliveries, Some(4));
    assert!(
        d.reason.contains("max_deliveries = 3") && d.reason.contains("Partial"),
        "{}",
        d.reason
    );
    assert_eq!(d.fields, vec![(b"n".to_vec(), b"poison".to_vec())]);
    assert_eq!(
        seen.count_by_id()[&poison],
        3,
        "handled exactly max_deliveries times"
    );
    assert!(
        seen.count_by_id().values().filter(|c| **c == 1).count() == 6,
        "the others once each"
    );
    app.shutdown().await.unwrap();
}

/// A dead-letter move that cannot land yet (its dead-letter stream is a key of another type) waits
/// with its entry pending; across a reconnect the own-PEL replay reads that entry again, and it is
/// not handed to the handler a second time. Once the key is fixed the move lands.
#[tokio::test]
async fn a_waiting_dead_letter_move_keeps_its_entry_from_the_handler_across_a_reconnect() {
    let (server, mut con) = server().await;
    let _: () = redis::cmd("SET")
        .arg("s:dlq")
        .arg("not a stream")
        .query_async(&mut con)
        .await
        .unwrap();
    let bad = xadd(&mut con, "s", &[("n", "bad")]).await;
    xadd_n(&mut con, "s", 4).await;
    let seen = Seen::default();
    let handler = {
        let seen = seen.clone();
        move |batch: Batch<RawEntry>| {
            seen.record(&batch);
            for e in &batch {
                if e.message.get_str("n") == Some("bad") {
                    batch.dead_letter(e.id, "bad on purpose");
                }
            }
            futures::future::ready(HandlerResult::Ok)
        }
    };
    let id = ConsumerId::new("s", "g", "c");
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("s", "g", "c")
                .reconnect_backoff_max(Duration::from_millis(50))
                .handler(handler),
        )
        .start()
        .await
        .unwrap();
    eventually(
        WAIT,
        "the good entries acknowledged, the move waiting",
        || {
            let (mut con, handled) = (con.clone(), seen.len());
            let waiting = app.consumer_health(&id).unwrap().dead_letters_waiting;
            async move { handled == 5 && waiting == 1 && pending(&mut con, "s", "g").await == 1 }
        },
    )
    .await;
    let _: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut con)
        .await
        .unwrap();
    // An entry added after the reconnect is handled by the live loop, which starts only after the
    // replay has read the waiting move's entry again.
    eventually(WAIT, "the consumer reconnected", || {
        let reconnects = app.consumer_health(&id).unwrap().counters.reconnects;
        async move { reconnects >= 1 }
    })
    .await;
    let after = xadd(&mut con, "s", &[("n", "after")]).await;
    eventually(WAIT, "the entry added after the reconnect handled", || {
        let handled = seen.count_by_id().contains_key(&after);
        async move { handled }
    })
    .await;
    assert_eq!(
        seen.count_by_id()[&bad],
        1,
        "the waiting move's entry handed to the handler again: {:?}",
        seen.all()
    );
    let _: () = redis::cmd("DEL")
        .arg("s:dlq")
        .query_async(&mut con)
        .await
        .unwrap();
    wait_no_pending(&con, "s", "g").await;
    let dead = dlq_entries(&mut con, "s:dlq").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].source_id, Some(bad));
    assert!(
        seen.count_by_id().values().all(|n| *n == 1),
        "{:?}",
        seen.all()
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refused_dead_letter_write_leaves_the_entry_pending_until_memory_returns() {
    let (server, mut con) = server().await;
    let seen = Seen::default();
    let id = ConsumerId::new("s", "g", "c");
    let poison = xadd(&mut con, "s", &[("n", "poison")]).await;
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("s", "g", "c")
                .max_deliveries(1)
                .claim_interval(Duration::from_millis(100))
                .claim_min_idle(Duration::from_millis(300))
                .handler(poison_aware(&seen)),
        )
        .start()
        .await
        .unwrap();
    wait_handled(&seen, 1).await;
    // XADD is refused (OOM) while XACK still works: the move must not ack.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(WAIT, "the dead-letter move failed with OOM", || {
        let err = app
            .consumer_health(&id)
            .unwrap()
            .last_error
            .unwrap_or_default();
        async move { err.contains("OOM") }
    })
    .await;
    assert_eq!(
        pending(&mut con, "s", "g").await,
        1,
        "not acked while the dead-letter write fails"
    );
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut con)
        .await
        .unwrap();
    wait_no_pending(&con, "s", "g").await;
    let dead = dlq_entries(&mut con, "s:dlq").await;
    assert_eq!(
        dead.iter().map(|d| d.source_id).collect::<Vec<_>>(),
        vec![Some(poison)]
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn entries_trimmed_while_pending_are_dropped_by_claims_and_counted() {
    let (server, mut con) = server().await;
    let ids = xadd_n(&mut con, "s", 4).await;
    let fail = Arc::new(AtomicBool::new(true));
    let fail2 = fail.clone();
    let a_seen = Seen::default();
    let a_seen2 = a_seen.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "a").handler(move |batch: Batch<RawEntry>| {
            a_seen2.record(&batch);
            let r = if fail2.load(Ordering::SeqCst) {
                HandlerResult::err("no")
            } else {
                HandlerResult::Ok
            };
            async move { r }
        }))
        .start()
        .await
        .unwrap();
    wait_handled(&a_seen, 4).await;
    let _: u64 = redis::cmd("XTRIM")
        .arg("s")
        .arg("MAXLEN")
        .arg(1)
        .query_async(&mut con)
        .await
        .unwrap();
    let b_seen = Seen::default();
    app.add_consumer(
        spec("s", "g", "b")
            .claim_interval(Duration::from_millis(100))
            .claim_min_idle(Duration::from_millis(200))
            .handler(recording(&b_seen)),
    )
    .await
    .unwrap();
    wait_no_pending(&con, "s", "g").await;
    let b = app
        .consumer_health(&ConsumerId::new("s", "g", "b"))
        .unwrap();
    assert_eq!(b.counters.deleted_while_pending, 3);
    assert_eq!(
        b_seen.ids(),
        vec![ids[3]],
        "only the live entry reaches a handler"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reply_cut_off_halfway_strands_nothing() {
    let (server, mut con) = server().await;
    let proxy = FaultProxy::start(server.port()).await;
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis(proxy.url())
        .consumer(spec("s", "g", "c").count(100).handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    wait_running(&app).await;
    // The next reply on every open connection is cut after 300 bytes: the blocked read's entries go
    // into the PEL, but the client never sees them.
    proxy.cut_downstream_after(300);
    let ids = xadd_n(&mut con, "s", 50).await;
    wait_handled(&seen, 50).await;
    wait_no_pending(&con, "s", "g").await;
    let counts = seen.count_by_id();
    assert!(ids.iter().all(|id| counts.contains_key(id)));
    app.shutdown().await.unwrap();
}

async fn acl_user(
    con: &mut redis::aio::MultiplexedConnection,
    user: &str,
    password: &str,
    rules: &str,
) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"));
    for rule in rules.split_whitespace() {
        cmd.arg(rule);
    }
    cmd.arg(crate::common::client_setinfo_rule(con).await);
    let _: () = cmd.query_async(con).await.unwrap();
}

fn least_privilege() -> String {
    ConsumerSpec::new("s", "g", "c").acl_rules()
}

fn url_for(server: &RedisServer, user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@127.0.0.1:{}", server.port())
}

#[tokio::test]
async fn the_documented_least_privilege_acl_is_enough() {
    let (server, mut con) = server().await;
    acl_user(&mut con, "worker", "pw-1", &least_privilege()).await;
    let seen = Seen::default();
    xadd_n(&mut con, "s", 3).await;
    let poison = xadd(&mut con, "s", &[("n", "poison")]).await;
    let app = Supervisor::builder()
        .redis(url_for(&server, "worker", "pw-1"))
        .consumer(
            spec("s", "g", "c")
                .max_deliveries(1)
                .claim_interval(Duration::from_millis(100))
                .claim_min_idle(Duration::from_millis(200))
                .handler(poison_aware(&seen)),
        )
        .start()
        .await
        .unwrap();
    wait_no_pending(&con, "s", "g").await;
    assert_eq!(
        dlq_entries(&mut con, "s:dlq").await[0].source_id,
        Some(poison)
    );
    app.shutdown().await.unwrap();
    let denied: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        denied.is_empty(),
        "no command was denied on the happy path: {denied:?}"
    );
}

#[tokio::test]
async fn a_missing_permission_fails_fast_and_names_the_command() {
    let (server, mut con) = server().await;
    for (missing, command) in [
        ("+xautoclaim", "XAUTOCLAIM"),
        ("+xack", "XACK"),
        ("~s:dlq", "dead-letter"),
    ] {
        let rules = least_privilege().replace(&format!(" {missing}"), "");
        acl_user(&mut con, "worker", "pw-2", &rules).await;
        let app = Supervisor::builder()
            .redis(url_for(&server, "worker", "pw-2"))
            .restart_policy(RestartPolicy::default())
            .consumer(spec("s", "g", "c").handler(recording(&Seen::default())))
            .start()
            .await
            .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), app.wait())
            .await
            .expect("fails fast")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(command) && err.contains("permission") && err.contains("consumer `c`"),
            "{missing}: {err}"
        );
        assert!(!err.contains("pw-2"), "{err}");
        let h = app
            .consumer_health(&ConsumerId::new("s", "g", "c"))
            .unwrap();
        assert_eq!(h.restarts_total, 0, "no restart loop on NOPERM");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_password_never_appears_in_logs_errors_or_debug_output() {
    let server = RedisServer::start();
    let mut con = connect(&server).await;
    let sentinel = format!("S3ntinel-PW-{}", std::process::id());
    acl_user(&mut con, "worker", &sentinel, &least_privilege()).await;
    let captured = Logs::capture("trace");

    let mut texts = Vec::new();
    // Wrong password: the error must not echo it either.
    let wrong = format!("{sentinel}-wrong");
    let app = Supervisor::builder()
        .redis(url_for(&server, "worker", &wrong))
        .wait_for_redis(true) // past start(), into the consumers' own error path
        .consumer(spec("s", "g", "c").handler(recording(&Seen::default())))
        .start()
        .await
        .unwrap();
    let err = tokio::time::timeout(WAIT, app.wait())
        .await
        .unwrap()
        .unwrap_err();
    texts.push(format!("{err} {err:?} {app:?} {:?}", app.health()));
    // Right password: a full run.
    let seen = Seen::default();
    let builder = Supervisor::builder()
        .redis(url_for(&server, "worker", &sentinel))
        .consumer(spec("s", "g", "c").handler(recording(&seen)));
    texts.push(format!("{builder:?}"));
    let app = builder.start().await.unwrap();
    xadd_n(&mut con, "s", 5).await;
    wait_handled(&seen, 5).await;
    texts.push(format!("{app:?} {:?}", app.health()));
    app.shutdown().await.unwrap();

    let logs = captured.text();
    assert!(logs.len() > 1000, "TRACE logging was captured");
    texts.push(logs);
    let encoded = sentinel.replace('-', "%2D");
    for text in texts {
        assert!(
            !text.contains(&sentinel) && !text.contains(&encoded),
            "password leaked: {text}"
        );
    }
}

#[tokio::test]
async fn a_handler_can_dead_letter_an_entry_explicitly() {
    let (server, mut con) = server().await;
    let ids = xadd_n(&mut con, "s", 3).await;
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c").handler(move |batch: Batch<RawEntry>| {
            for e in &batch {
                if e.message.get_str("n") == Some("1") {
                    batch.dead_letter(e.id, "refused by billing");
                }
            }
            async { HandlerResult::Ok }
        }))
        .start()
        .await
        .unwrap();
    wait_no_pending(&con, "s", "g").await;
    eventually(WAIT, "one dead letter", || {
        let mut con = con.clone();
        async move { dlq_entries(&mut con, "s:dlq").await.len() == 1 }
    })
    .await;
    let dead = dlq_entries(&mut con, "s:dlq").await;
    assert_eq!(dead[0].source_id, Some(ids[1]));
    assert_eq!(
        dead[0].reason,
        "dead-lettered by the handler: refused by billing"
    );
    assert_eq!(
        dead[0].fields,
        vec![(b"n".to_vec(), b"1".to_vec())],
        "original fields copied by the move"
    );
    assert_eq!(dead[0].deliveries, Some(1));
    let id = ConsumerId::new("s", "g", "c");
    eventually(WAIT, "2 acked, 1 dead-lettered, none failed", || {
        let c = app.consumer_health(&id).unwrap().counters;
        async move { (c.acked, c.dead_lettered, c.failed) == (2, 1, 0) }
    })
    .await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_slow_handler_keeps_its_batch_from_being_claimed() {
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 5).await;
    let seen = Seen::default();
    let slow_seen = seen.clone();
    let min_idle = Duration::from_millis(600);
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "slow").claim_min_idle(min_idle).handler(
            move |batch: Batch<RawEntry>| {
                slow_seen.record(&batch);
                async {
                    // Three times claim_min_idle: without the heartbeat the batch would be claimed.
                    tokio::time::sleep(Duration::from_millis(1800)).await;
                    HandlerResult::Ok
                }
            },
        ))
        .start()
        .await
        .unwrap();
    wait_handled(&seen, 5).await;
    app.add_consumer(
        spec("s", "g", "eager")
            .claim_interval(Duration::from_millis(50))
            .claim_min_idle(min_idle)
            .handler(recording(&seen)),
    )
    .await
    .unwrap();
    wait_no_pending(&con, "s", "g").await;
    assert_eq!(
        seen.len(),
        5,
        "no entry was claimed away and handled twice: {:?}",
        seen.all()
    );
    let eager = app
        .consumer_health(&ConsumerId::new("s", "g", "eager"))
        .unwrap();
    assert_eq!(eager.counters.claimed, 0);
    app.shutdown().await.unwrap();
}

async fn consumers_of(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Vec<String> {
    let rows: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(con)
        .await
        .unwrap();
    rows.into_iter()
        .map(|r| match r.get("name") {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn the_opt_in_reaper_deletes_only_idle_consumers_without_pending_entries() {
    let (server, mut con) = server().await;
    create_group(&mut con, "s", "g").await;
    xadd_n(&mut con, "s", 2).await;
    // Two consumers that went away: `empty` acked what it read, `holding` still holds an entry.
    let read = |name: &str| millrace::streams::xreadgroup_cmd("s", "g", name, 1, None, ">");
    let got = millrace::streams::read(&mut con, &read("empty"))
        .await
        .unwrap();
    let _: u64 = redis::cmd("XACK")
        .arg("s")
        .arg("g")
        .arg(got[0].id().unwrap())
        .query_async(&mut con)
        .await
        .unwrap();
    millrace::streams::read(&mut con, &read("holding"))
        .await
        .unwrap();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("s", "g", "live")
                .claim_interval(Duration::from_millis(50))
                .claim_min_idle(Duration::from_secs(60))
                .reap_idle_consumers_after(Duration::from_secs(61))
                .handler(recording(&Seen::default())),
        )
        .start()
        .await
        .unwrap();
    let err = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("s", "g", "x")
                .reap_idle_consumers_after(Duration::from_secs(1))
                .handler(recording(&Seen::default())),
        )
        .start()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("reap_idle_consumers_after"),
        "{err}"
    );
    app.shutdown().await.unwrap();

    // `holding` is reaped only after the normal XAUTOCLAIM took its entry (a consumer that holds
    // entries is never deleted: Redis would drop them silently, and the entry would never be handled).
    let reaper = spec("s", "g", "live")
        .claim_interval(Duration::from_millis(50))
        .claim_min_idle(Duration::from_millis(100))
        .reap_idle_consumers_after(Duration::from_millis(150));
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(reaper.handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    eventually(
        WAIT,
        "both gone, the held entry handled by the live consumer",
        || {
            let mut con = con.clone();
            let handled = seen.len();
            async move {
                handled == 1 && consumers_of(&mut con, "s", "g").await == vec!["live".to_owned()]
            }
        },
    )
    .await;
    assert_eq!(pending(&mut con, "s", "g").await, 0);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_without_persistence_recreates_the_group() {
    init_tracing();
    let mut server = RedisServer::start();
    let mut con = connect(&server).await;
    let seen = Seen::default();
    let id = ConsumerId::new("s", "g", "c");
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c").handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    xadd_n(&mut con, "s", 5).await;
    wait_handled(&seen, 5).await;
    server.kill();
    server.restart();
    eventually(
        WAIT,
        "the group was recreated after the data was lost",
        || {
            let n = app.consumer_health(&id).unwrap().counters.group_recreated;
            async move { n >= 1 }
        },
    )
    .await;
    let mut con = connect(&server).await;
    xadd_n(&mut con, "s", 5).await;
    wait_handled(&seen, 10).await;
    wait_no_pending(&con, "s", "g").await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_black_holed_connection_recovers_after_heal() {
    let (server, mut con) = server().await;
    let proxy = FaultProxy::start(server.port()).await;
    let seen = Seen::default();
    let id = ConsumerId::new("s", "g", "c");
    let mut options = millrace::ConnectionOptions::default();
    options.command_timeout = Duration::from_secs(1);
    options.connect_timeout = Duration::from_millis(500);
    let app = Supervisor::builder()
        .redis(proxy.url())
        .connection_options(options)
        .consumer(
            spec("s", "g", "c")
                .read_timeout(Duration::from_secs(1))
                .reconnect_backoff_max(Duration::from_millis(200))
                .handler(recording(&seen)),
        )
        .start()
        .await
        .unwrap();
    wait_running(&app).await;
    proxy.blackhole();
    let ids = xadd_n(&mut con, "s", 20).await;
    eventually(WAIT, "the consumer noticed the partition", || {
        let reconnects = app.consumer_health(&id).unwrap().counters.reconnects;
        async move { reconnects >= 1 }
    })
    .await;
    proxy.heal();
    wait_handled(&seen, 20).await;
    wait_no_pending(&con, "s", "g").await;
    let counts = seen.count_by_id();
    assert!(ids.iter().all(|i| counts.contains_key(i)));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reply_too_large_for_the_output_buffer_shrinks_the_batch_instead_of_looping() {
    let (server, mut con) = server().await;
    // Replies above 64 KB close the connection, after the server put the entries into the PEL.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg("normal 64kb 64kb 0")
        .query_async(&mut con)
        .await
        .unwrap();
    let big = "x".repeat(10_000);
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(xadd(&mut con, "s", &[("blob", big.as_str())]).await);
    }
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("s", "g", "c")
                .count(40)
                .reconnect_backoff_max(Duration::from_millis(50))
                .handler(recording(&seen)),
        )
        .start()
        .await
        .unwrap();
    wait_handled(&seen, 40).await;
    wait_no_pending(&con, "s", "g").await;
    let counts = seen.count_by_id();
    assert!(ids.iter().all(|i| counts.contains_key(i)));
    let h = app
        .consumer_health(&ConsumerId::new("s", "g", "c"))
        .unwrap();
    assert!(
        h.counters.reconnects >= 1,
        "the oversized reply did close the connection"
    );
    app.shutdown().await.unwrap();
}

/// The live reader opens its own socket: over a Unix socket, as an ACL user with only the consumer's
/// rules, in a database other than 0, entries still flow, and when `shutdown()` returns the server
/// no longer lists any of the consumer's connections.
#[tokio::test]
async fn reads_over_a_unix_socket_as_an_acl_user_in_another_database() {
    init_tracing();
    let socket = std::env::temp_dir().join(format!(
        "millrace-e2e-{}-{}.sock",
        std::process::id(),
        rand_suffix()
    ));
    let server = RedisServer::builder()
        .arg("--unixsocket")
        .arg(socket.to_string_lossy())
        .arg("--unixsocketperm")
        .arg("700")
        .start();
    let mut admin = connect(&server).await;
    let spec = spec("s", "g", "c1").count(7);
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg("worker")
        .arg("on")
        .arg(">s3cret");
    for rule in spec.acl_rules().split_whitespace() {
        setuser.arg(rule);
    }
    setuser.arg("+select").arg("+client|list");
    setuser.arg(crate::common::client_setinfo_rule(&mut admin).await);
    let _: () = setuser.query_async(&mut admin).await.unwrap();
    let _: () = redis::cmd("SELECT")
        .arg(3)
        .query_async(&mut admin)
        .await
        .unwrap();
    let ids = xadd_n(&mut admin, "s", 40).await;

    let url = format!(
        "redis+unix://{}?db=3&user=worker&pass=s3cret",
        socket.display()
    );
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis(url)
        .consumer(spec.handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    wait_handled(&seen, 40).await;
    wait_no_pending(&admin, "s", "g").await;
    assert_eq!(seen.ids(), ids, "each entry once, in stream order");
    let acl_log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(acl_log.is_empty(), "no command refused: {acl_log:?}");

    app.shutdown().await.unwrap();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    let worker_conns: Vec<&str> = clients
        .lines()
        .filter(|l| l.contains("user=worker"))
        .collect();
    assert!(
        worker_conns.is_empty(),
        "connections still open after shutdown: {worker_conns:?}"
    );
    drop(server);
    let _ = std::fs::remove_file(&socket);
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// A server at `maxclients` refuses the reader's connection: the consumer keeps retrying and its
/// health says why in the server's words, and it starts reading once a slot frees up.
#[tokio::test]
async fn a_full_server_is_reported_in_its_own_words_and_retried() {
    init_tracing();
    let server = RedisServer::builder().arg("--maxclients").arg("3").start();
    let mut con = connect(&server).await;
    let blocker = connect(&server).await; // the test's two connections and the control one fill it
    let seen = Seen::default();
    let id = ConsumerId::new("s", "g", "c1");
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c1").handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "the health names the full server", || {
        let err = app
            .consumer_health(&id)
            .unwrap()
            .last_error
            .unwrap_or_default();
        async move { err.contains("max number of clients") }
    })
    .await;
    drop(blocker);
    let ids = xadd_n(&mut con, "s", 5).await;
    wait_handled(&seen, 5).await;
    assert_eq!(seen.ids(), ids);
    app.shutdown().await.unwrap();
}

/// A shutdown while the server does not answer at all returns within the documented deadline
/// (`shutdown_timeout + block + 2 s`), instead of waiting on the dead connections.
#[tokio::test]
async fn a_shutdown_during_a_partition_keeps_its_deadline() {
    let (server, mut con) = server().await;
    let proxy = FaultProxy::start(server.port()).await;
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis(proxy.url())
        .consumer(
            spec("s", "g", "c")
                .shutdown_timeout(Duration::from_secs(1))
                .handler(recording(&seen)),
        )
        .start()
        .await
        .unwrap();
    wait_running(&app).await;
    xadd_n(&mut con, "s", 3).await;
    wait_handled(&seen, 3).await;
    proxy.blackhole();
    let started = std::time::Instant::now();
    let _ = app.shutdown().await;
    let deadline = Duration::from_secs(1) + Duration::from_millis(300) + Duration::from_secs(2);
    assert!(
        started.elapsed() <= deadline,
        "shutdown took {:?}, past its deadline {deadline:?}",
        started.elapsed()
    );
}

/// One entry larger than the server's client output buffer cannot be delivered even alone: each
/// read of it closes the connection. It is dead-lettered by id once it has used up
/// `max_deliveries`, every entry after it is handled, and a second consumer of the same supervisor
/// (which shares the control connection) keeps running without a reconnect.
#[tokio::test]
async fn an_entry_larger_than_the_output_buffer_is_dead_lettered_by_id() {
    let (server, mut con) = server().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg("normal 1mb 1mb 0")
        .query_async(&mut con)
        .await
        .unwrap();
    let mut small = xadd_n(&mut con, "s", 5).await;
    let big = "x".repeat(2 * 1024 * 1024);
    let big_id = xadd(&mut con, "s", &[("blob", big.as_str())]).await;
    small.extend(xadd_n(&mut con, "s", 5).await);
    let (seen, other) = (Seen::default(), Seen::default());
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("s", "g", "c")
                .count(10)
                .max_deliveries(3)
                .reconnect_backoff_max(Duration::from_millis(50))
                .handler(recording(&seen)),
        )
        .consumer(spec("t", "g", "bystander").handler(recording(&other)))
        .start()
        .await
        .unwrap();
    wait_running(&app).await;
    let mut others = Vec::new();
    for _ in 0..20 {
        others.push(xadd(&mut con, "t", &[("n", "1")]).await);
    }
    wait_no_pending(&con, "s", "g").await;
    wait_no_pending(&con, "t", "g").await;
    let handled: std::collections::HashSet<EntryId> = seen.ids().into_iter().collect();
    assert!(
        small.iter().all(|id| handled.contains(id)),
        "every small entry handled: {small:?} (big: {big_id}) {:?}",
        seen.all()
    );
    assert!(!handled.contains(&big_id));
    // Read the dead letter back on a connection the limit does not cut.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg("normal 0 0 0")
        .query_async(&mut con)
        .await
        .unwrap();
    let letters: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("s:dlq")
        .arg("-")
        .arg("+")
        .query_async::<redis::Value>(&mut con)
        .await
        .map(|v| {
            millrace::streams::parse_entries(v)
                .into_iter()
                .filter_map(|i| match i {
                    millrace::streams::ReadItem::Entry(e) => Some((
                        e.id.to_string(),
                        e.fields
                            .iter()
                            .map(|(k, v)| {
                                (
                                    String::from_utf8_lossy(k).into_owned(),
                                    String::from_utf8_lossy(v).into_owned(),
                                )
                            })
                            .collect(),
                    )),
                    _ => None,
                })
                .collect()
        })
        .unwrap();
    assert_eq!(letters.len(), 1, "the big entry, dead-lettered once");
    let fields: std::collections::HashMap<_, _> = letters[0].1.iter().cloned().collect();
    assert_eq!(
        fields.get("millrace.source_id").map(String::as_str),
        Some(big_id.to_string().as_str())
    );
    assert!(
        fields
            .get("millrace.reason")
            .is_some_and(|r| r.contains("client output buffer")),
        "{fields:?}"
    );
    assert_eq!(
        fields.get("blob").map(String::len),
        Some(big.len()),
        "moved whole, inside Redis"
    );
    assert_eq!(other.len(), others.len());
    let bystander = app
        .consumer_health(&ConsumerId::new("t", "g", "bystander"))
        .unwrap();
    assert_eq!(
        bystander.counters.reconnects, 0,
        "the bystander was not disturbed"
    );
    app.shutdown().await.unwrap();
}
