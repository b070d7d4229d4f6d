//! What each handler result does in Redis: Ok, Partial, Err, foreign ids, undecodable entries,
//! deleted entries, and that the loop does not spin on its own unacked entries.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millrace::{
    Batch, ConsumerId, ConsumerSpec, EntryId, HandlerResult, RawEntry, Source, StartId, Supervisor,
};
use millrace_testkit::eventually;

use crate::common::*;

fn spec(stream: &str, group: &str, consumer: &str) -> ConsumerSpec {
    ConsumerSpec::new(stream, group, consumer)
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(200))
}

#[tokio::test]
async fn ok_acks_every_entry_of_the_batch() {
    let (server, mut con) = server().await;
    let ids = xadd_n(&mut con, "s", 25).await;
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c1").count(10).handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "25 entries handled", || {
        let seen = seen.clone();
        async move { seen.len() >= 25 }
    })
    .await;
    eventually(WAIT, "nothing pending", || {
        let mut con = con.clone();
        async move { pending(&mut con, "s", "g").await == 0 }
    })
    .await;
    assert_eq!(seen.ids(), ids, "each entry once, in stream order");
    assert!(seen
        .all()
        .iter()
        .all(|s| s.1 == Some(1) && s.2 == Source::New));
    let id = ConsumerId::new("s", "g", "c1");
    eventually(WAIT, "25 counted as acked", || {
        let acked = app.consumer_health(&id).unwrap().counters.acked;
        async move { acked == 25 }
    })
    .await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn partial_leaves_exactly_the_others_pending() {
    let (server, mut con) = server().await;
    let ids = xadd_n(&mut con, "s", 10).await;
    let seen = Seen::default();
    let seen2 = seen.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("s", "g", "c1")
                .count(10)
                .gauge_interval(Duration::from_millis(50))
                .handler(move |batch: Batch<RawEntry>| {
                    seen2.record(&batch);
                    let even: Vec<EntryId> = batch
                        .iter()
                        .filter(|e| {
                            e.message.get_str("n").unwrap().parse::<u32>().unwrap() % 2 == 0
                        })
                        .map(|e| e.id)
                        .collect();
                    async move { HandlerResult::Partial(even) }
                }),
        )
        .start()
        .await
        .unwrap();
    eventually(WAIT, "5 left pending", || {
        let mut con = con.clone();
        async move { pending(&mut con, "s", "g").await == 5 }
    })
    .await;
    let left: Vec<EntryId> = pending_rows(&mut con, "s", "g")
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    let odd: Vec<EntryId> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(left, odd);
    assert_eq!(seen.len(), 10);
    let id = ConsumerId::new("s", "g", "c1");
    eventually(WAIT, "gauges show the 5 pending", || {
        let g = app.consumer_health(&id).and_then(|h| h.group);
        async move {
            g.is_some_and(|g| g.group_pending == 5 && g.consumer_pending == 5 && g.lag == Some(0))
        }
    })
    .await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn partial_with_a_foreign_id_acks_nothing() {
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 4).await;
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c1").handler(move |batch: Batch<RawEntry>| {
            let mut ids = batch.ids();
            ids.truncate(2);
            ids.push(EntryId::new(1, 1)); // not in the batch
            async move { HandlerResult::Partial(ids) }
        }))
        .start()
        .await
        .unwrap();
    let id = ConsumerId::new("s", "g", "c1");
    eventually(WAIT, "batch counted as failed", || {
        let failed = app.consumer_health(&id).map(|h| h.counters.failed);
        async move { failed == Some(4) }
    })
    .await;
    assert_eq!(pending(&mut con, "s", "g").await, 4);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn err_leaves_all_pending_and_another_consumer_claims_them_after_min_idle() {
    let (server, mut con) = server().await;
    let ids = xadd_n(&mut con, "s", 6).await;
    let failing = Seen::default();
    let failing2 = failing.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "a").handler(move |batch: Batch<RawEntry>| {
            failing2.record(&batch);
            async { HandlerResult::err("downstream unavailable") }
        }))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "a saw all 6", || {
        let f = failing.clone();
        async move { f.len() >= 6 }
    })
    .await;
    let rows = pending_rows(&mut con, "s", "g").await;
    assert_eq!(rows.len(), 6, "Err acks nothing");
    assert!(rows.iter().all(|r| r.consumer == b"a"));

    let rescuer = Seen::default();
    app.add_consumer(
        spec("s", "g", "b")
            .claim_interval(Duration::from_millis(100))
            .claim_min_idle(Duration::from_millis(500))
            .handler(recording(&rescuer)),
    )
    .await
    .unwrap();
    eventually(WAIT, "b handled the claimed entries", || {
        let mut con = con.clone();
        async move { pending(&mut con, "s", "g").await == 0 }
    })
    .await;
    let got = rescuer.all();
    assert_eq!(got.iter().map(|s| s.0).collect::<Vec<_>>(), ids);
    assert!(
        got.iter().all(|s| s.2 == Source::Claimed && s.1 == Some(2)),
        "{got:?}"
    );
    app.shutdown().await.unwrap();
}

#[derive(Debug, serde::Deserialize)]
struct Order {
    order_id: u64,
    quantity: u32,
}

#[tokio::test]
async fn an_undecodable_entry_does_not_hold_back_its_batch() {
    let (server, mut con) = server().await;
    xadd(&mut con, "orders", &[("order_id", "1"), ("quantity", "2")]).await;
    let bad = xadd(
        &mut con,
        "orders",
        &[("order_id", "2"), ("quantity", "lots")],
    )
    .await;
    xadd(&mut con, "orders", &[("order_id", "3"), ("quantity", "5")]).await;
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let got2 = got.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("orders", "g", "c")
                .count(10)
                .handler(move |batch: Batch<Order>| {
                    got2.lock().unwrap().extend(
                        batch
                            .iter()
                            .map(|e| (e.message.order_id, e.message.quantity)),
                    );
                    async { HandlerResult::Ok }
                }),
        )
        .start()
        .await
        .unwrap();
    eventually(
        WAIT,
        "good entries handled, bad one dead-lettered, nothing pending",
        || {
            let mut con = con.clone();
            let handled = got.lock().unwrap().len();
            async move {
                let dlq_len: u64 = redis::cmd("XLEN")
                    .arg("orders:dlq")
                    .query_async(&mut con)
                    .await
                    .unwrap();
                handled == 2 && dlq_len == 1 && pending(&mut con, "orders", "g").await == 0
            }
        },
    )
    .await;
    assert_eq!(*got.lock().unwrap(), vec![(1, 2), (3, 5)]);
    let dlq: Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)> = redis::cmd("XRANGE")
        .arg("orders:dlq")
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(dlq.len(), 1);
    let entry = millrace::RawEntry::new(dlq[0].0.parse().unwrap(), dlq[0].1.clone());
    let dead = millrace::dead_letter::DeadLetter::parse(&entry).unwrap();
    assert_eq!(dead.source_id, Some(bad));
    assert!(dead.reason.contains("quantity"), "{}", dead.reason);
    assert_eq!(dead.fields[1], (b"quantity".to_vec(), b"lots".to_vec()));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn deleted_or_trimmed_pending_entries_are_cleaned_up_and_never_handed_over() {
    let (server, mut con) = server().await;
    let ids = xadd_n(&mut con, "s", 6).await;
    let fail = Arc::new(AtomicBool::new(true));
    let seen = Seen::default();
    let (fail2, seen2) = (fail.clone(), seen.clone());
    let handler = move |batch: Batch<RawEntry>| {
        seen2.record(&batch);
        assert!(
            batch.iter().all(|e| !e.message.fields.is_empty()),
            "handler got an empty entry"
        );
        let r = if fail2.load(Ordering::SeqCst) {
            HandlerResult::err("not yet")
        } else {
            HandlerResult::Ok
        };
        async move { r }
    };
    let id = ConsumerId::new("s", "g", "c");
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c").handler(handler.clone()))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "all seen once", || {
        let s = seen.clone();
        async move { s.len() >= 6 }
    })
    .await;
    // Delete two pending entries and trim another: they become tombstones in the pending list.
    let _: u64 = redis::cmd("XDEL")
        .arg("s")
        .arg(ids[1])
        .arg(ids[4])
        .query_async(&mut con)
        .await
        .unwrap();
    let _: u64 = redis::cmd("XTRIM")
        .arg("s")
        .arg("MINID")
        .arg(ids[1])
        .query_async(&mut con)
        .await
        .unwrap();
    fail.store(false, Ordering::SeqCst);
    // A restart replays the own pending list: the 3 tombstones are acked, the 3 live ones handled.
    app.remove_consumer(&id).await.unwrap();
    app.add_consumer(spec("s", "g", "c").handler(handler))
        .await
        .unwrap();
    eventually(WAIT, "nothing pending", || {
        let mut con = con.clone();
        async move { pending(&mut con, "s", "g").await == 0 }
    })
    .await;
    let h = app.consumer_health(&id).unwrap();
    assert_eq!(h.counters.deleted_while_pending, 3);
    let replayed: HashSet<EntryId> = seen
        .all()
        .into_iter()
        .filter(|s| s.2 == Source::Replay)
        .map(|s| s.0)
        .collect();
    assert_eq!(replayed, HashSet::from([ids[2], ids[3], ids[5]]));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_poll_loop_does_not_spin_on_its_own_unacked_entries() {
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 5).await;
    let seen = Seen::default();
    let seen2 = seen.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c").handler(move |batch: Batch<RawEntry>| {
            seen2.record(&batch);
            async { HandlerResult::err("always failing") }
        }))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "seen once", || {
        let s = seen.clone();
        async move { s.len() >= 5 }
    })
    .await;
    let before = command_calls(&mut con, "xreadgroup").await;
    // Measuring a rate needs a stretch of wall time: 1 s is 5 BLOCK periods of 200 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reads = command_calls(&mut con, "xreadgroup").await - before;
    assert!(
        reads <= 8,
        "{reads} XREADGROUP calls in 1 s with BLOCK 200ms: the loop spins"
    );
    assert_eq!(
        seen.len(),
        5,
        "unacked entries are left for recovery, not re-read in a loop"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_handler_past_its_timeout_fails_the_batch() {
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 3).await;
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("s", "g", "c")
                .handler_timeout(Duration::from_millis(100))
                .handler(|_b: Batch<RawEntry>| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    HandlerResult::Ok
                }),
        )
        .start()
        .await
        .unwrap();
    let id = ConsumerId::new("s", "g", "c");
    eventually(WAIT, "the batch failed by timeout", || {
        let h = app.consumer_health(&id).unwrap();
        async move {
            h.counters.failed == 3 && h.last_error.unwrap_or_default().contains("handler_timeout")
        }
    })
    .await;
    assert_eq!(pending(&mut con, "s", "g").await, 3);
    app.shutdown().await.unwrap();
}

/// An entry too large for the dead-letter script (Lua's `unpack` stops near 8,000 values) is still
/// dead-lettered whole, instead of failing the move forever and stalling the consumer on it.
#[tokio::test]
async fn an_undecodable_entry_with_thousands_of_fields_is_dead_lettered_whole() {
    let (server, mut con) = server().await;
    xadd(&mut con, "orders", &[("order_id", "1"), ("quantity", "2")]).await;
    let mut big = redis::cmd("XADD");
    big.arg("orders")
        .arg("*")
        .arg("order_id")
        .arg("2")
        .arg("quantity")
        .arg("lots");
    for i in 0..5_000 {
        big.arg(format!("extra_{i}")).arg(i);
    }
    let bad: String = big.query_async(&mut con).await.unwrap();
    let bad: EntryId = bad.parse().unwrap();
    xadd(&mut con, "orders", &[("order_id", "3"), ("quantity", "5")]).await;
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let got2 = got.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("orders", "g", "c")
                .count(10)
                .handler(move |batch: Batch<Order>| {
                    got2.lock()
                        .unwrap()
                        .extend(batch.iter().map(|e| e.message.order_id));
                    async { HandlerResult::Ok }
                }),
        )
        .start()
        .await
        .unwrap();
    eventually(WAIT, "good entries handled, big one dead-lettered", || {
        let mut con = con.clone();
        let handled = got.lock().unwrap().len();
        async move {
            let dlq_len: u64 = redis::cmd("XLEN")
                .arg("orders:dlq")
                .query_async(&mut con)
                .await
                .unwrap();
            handled == 2 && dlq_len == 1 && pending(&mut con, "orders", "g").await == 0
        }
    })
    .await;
    let dlq: redis::Value = redis::cmd("XRANGE")
        .arg("orders:dlq")
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .unwrap();
    let entries: Vec<RawEntry> = millrace::streams::reply::parse_entries(dlq)
        .into_iter()
        .filter_map(|i| match i {
            millrace::streams::ReadItem::Entry(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(entries.len(), 1);
    let dead = millrace::dead_letter::DeadLetter::parse(&entries[0]).unwrap();
    assert_eq!(dead.source_id, Some(bad));
    assert_eq!(dead.fields.len(), 5_002, "every original field kept");
    assert_eq!(
        dead.fields[5_001],
        (b"extra_4999".to_vec(), b"4999".to_vec())
    );
    let h = app
        .consumer_health(&ConsumerId::new("orders", "g", "c"))
        .unwrap();
    assert_eq!(h.counters.dead_lettered, 1);
    app.shutdown().await.unwrap();
}

/// Against a slow handler the reader fetches only one batch ahead, so a consumer does not hoard
/// entries its peers could be handling: at most the batch in the handler, one fetched ahead and
/// (briefly) one being acknowledged are pending per consumer. Without the rule it held up to four.
#[tokio::test]
async fn a_slow_handler_does_not_hoard_entries_ahead() {
    const COUNT: usize = 5;
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 80).await;
    let seen = Seen::default();
    let slow = |seen: &Seen| {
        let seen = seen.clone();
        move |batch: Batch<RawEntry>| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                seen.record(&batch);
                HandlerResult::Ok
            }
        }
    };
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c1").count(COUNT).handler(slow(&seen)))
        .consumer(spec("s", "g", "c2").count(COUNT).handler(slow(&seen)))
        .start()
        .await
        .unwrap();
    // Each consumer has finished a slow batch or two: both readers know the handler is slow, and
    // what they fetched before has drained.
    eventually(WAIT, "six batches handled", || {
        let n = seen.len();
        async move { n >= 6 * COUNT }
    })
    .await;
    let mut most = 0;
    for _ in 0..10 {
        for consumer in ["c1", "c2"] {
            let rows = millrace::streams::xpending_range(
                &mut con,
                "s",
                "g",
                None,
                EntryId::MIN,
                EntryId::new(u64::MAX, u64::MAX),
                1000,
                Some(consumer),
            )
            .await
            .unwrap();
            most = most.max(rows.len());
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(
        most <= 3 * COUNT,
        "a consumer held {most} entries: more than 3 batches of {COUNT}"
    );
    eventually(WAIT, "everything handled", || {
        let mut con = con.clone();
        async move { drained(&mut con, "s", "g").await }
    })
    .await;
    app.shutdown().await.unwrap();
}
