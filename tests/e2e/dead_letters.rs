//! The dead-letter domain through the library: what a consumer moved to the dead-letter stream is
//! listed, replayed to the source stream (where the group reads it again) and purged with
//! `millrace::dead_letter`, the same calls `millrace dlq` makes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace::dead_letter::{DeadLetterStream, Replay, Selection, Skip};
use millrace::{Batch, ConsumerSpec, EntryId, HandlerResult, RawEntry, StartId, Supervisor};
use millrace_testkit::eventually;
use redis::aio::MultiplexedConnection;

use crate::common::*;

async fn xlen(con: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query_async(con).await.unwrap()
}

#[tokio::test]
async fn dead_letters_replayed_through_the_library_reach_the_group_again() {
    let (server, mut con) = server().await;
    // One small entry and one with 5,000 fields (too many for a Lua `unpack`), both dead-lettered
    // by the handler (a move by id, with the fields Redis holds) and replayed.
    let small = xadd(&mut con, "orders", &[("order", "1"), ("note", "poison")]).await;
    let names: Vec<String> = (0..5_000).map(|i| format!("f{i}")).collect();
    let big_fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let big = xadd(&mut con, "orders", &big_fields).await;

    let reject = Arc::new(AtomicBool::new(true));
    let handled: Arc<Mutex<Vec<RawEntry>>> = Arc::default();
    let (reject2, handled2) = (reject.clone(), handled.clone());
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            ConsumerSpec::new("orders", "g", "c")
                .start_id(StartId::Beginning)
                .block(Duration::from_millis(200))
                .handler(move |batch: Batch<RawEntry>| {
                    for e in &batch {
                        if reject2.load(Ordering::SeqCst) {
                            batch.dead_letter(e.id, "poison: refused on purpose");
                        } else {
                            handled2.lock().unwrap().push(e.message.clone());
                        }
                    }
                    async { HandlerResult::Ok }
                }),
        )
        .start()
        .await
        .unwrap();
    eventually(WAIT, "both entries dead-lettered, nothing pending", || {
        let mut con = con.clone();
        async move {
            xlen(&mut con, "orders:dlq").await == 2 && pending(&mut con, "orders", "g").await == 0
        }
    })
    .await;

    let dlq = DeadLetterStream::of("orders");
    let listing = dlq.list(&mut con, 10).await.unwrap();
    assert_eq!(listing.letters.len(), 2);
    assert!(!listing.truncated);
    let sources: Vec<Option<EntryId>> = listing
        .letters
        .iter()
        .map(|l| l.dead_letter.as_ref().unwrap().source_id)
        .collect();
    assert_eq!(sources, vec![Some(small), Some(big)]);
    assert_eq!(
        listing.letters[1]
            .dead_letter
            .as_ref()
            .unwrap()
            .fields
            .len(),
        5_000
    );

    reject.store(false, Ordering::SeqCst);
    let selected = dlq
        .select(&mut con, &Selection::all().reason_contains("poison"))
        .await
        .unwrap();
    assert_eq!(selected.letters.len(), 2);
    for letter in &selected.letters {
        let outcome = dlq.replay(&mut con, letter).await.unwrap();
        assert!(matches!(outcome, Replay::Replayed { .. }), "{outcome:?}");
    }
    assert_eq!(xlen(&mut con, "orders:dlq").await, 0);
    // A second replay of the same dead letter changes nothing.
    assert_eq!(
        dlq.replay(&mut con, &selected.letters[0]).await.unwrap(),
        Replay::Skipped(Skip::Gone)
    );

    eventually(WAIT, "the group to handle both replayed entries", || {
        let n = handled.lock().unwrap().len();
        async move { n == 2 }
    })
    .await;
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled[0].get_str("note"), Some("poison"));
    assert_eq!(handled[1].fields.len(), 5_000);
    assert_eq!(handled[1].get_str("f4999"), Some("v"));
    assert_eq!(xlen(&mut con, "orders").await, 4, "replays are new entries");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_shared_dead_letter_stream_keeps_other_sources_apart() {
    let (_server, mut con) = server().await;
    let meta = |source: &str| -> Vec<(String, String)> {
        millrace::dead_letter::META_FIELDS
            .iter()
            .zip([source, "1-1", "g", "c", "1", "bad", "1700000000000"])
            .map(|(k, v)| ((*k).to_owned(), v.to_owned()))
            .chain([("k".to_owned(), "v".to_owned())])
            .collect()
    };
    let add = |fields: Vec<(String, String)>| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg("shared:dlq").arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        cmd
    };
    let mut ids = Vec::new();
    for fields in [
        meta("orders"),
        meta("payments"),
        vec![("x".into(), "y".into())],
    ] {
        let id: String = add(fields).query_async(&mut con).await.unwrap();
        ids.push(id.parse::<EntryId>().unwrap());
    }
    let orders = DeadLetterStream::with_key("orders", "shared:dlq");

    let listing = orders.list(&mut con, 10).await.unwrap();
    let listed: Vec<EntryId> = listing.letters.iter().map(|l| l.id()).collect();
    assert_eq!(
        listed,
        vec![ids[0], ids[2]],
        "its own, and the foreign entry"
    );
    assert_eq!(listing.other_sources, 1);

    let selected = orders.select(&mut con, &Selection::all()).await.unwrap();
    assert_eq!(selected.letters.len(), 1);
    assert_eq!(selected.left_out, 2);
    let named = orders
        .select(&mut con, &Selection::ids([ids[1], EntryId::new(1, 1)]))
        .await
        .unwrap();
    assert_eq!(named.missing, vec![EntryId::new(1, 1)]);
    assert!(matches!(
        orders.replay(&mut con, &named.letters[0]).await.unwrap(),
        Replay::Skipped(Skip::OtherSource(s)) if s == "payments"
    ));

    assert_eq!(orders.purge(&mut con, &[ids[0]]).await.unwrap(), 1);
    assert_eq!(xlen(&mut con, "shared:dlq").await, 2);
}

/// A dead-letter stream that cannot be written (here its key holds a string: every `XADD` to it
/// fails with `WRONGTYPE`) holds up nothing: the good entries of each batch are acknowledged at
/// once, the entries to dead-letter stay pending on their own and are never handed to the handler
/// again while their moves are retried (counted in health), and once the key is fixed every move
/// completes, each entry once in the dead-letter stream.
#[tokio::test]
async fn a_dead_letter_stream_that_fails_then_heals_stalls_nothing_and_re_handles_nothing() {
    let (server, mut con) = server().await;
    let _: () = redis::cmd("SET")
        .arg("s:dlq")
        .arg("not a stream")
        .query_async(&mut con)
        .await
        .unwrap();
    let mut pipe = redis::pipe();
    for i in 0..40 {
        let kind = if i % 5 == 0 { "bad" } else { "good" };
        pipe.cmd("XADD").arg("s").arg("*").arg("kind").arg(kind);
    }
    let ids: Vec<String> = pipe.query_async(&mut con).await.unwrap();
    let ids: Vec<EntryId> = ids.iter().map(|s| s.parse().unwrap()).collect();
    let bad: Vec<EntryId> = ids.iter().copied().step_by(5).collect();

    let seen = Seen::default();
    let seen2 = seen.clone();
    let id = millrace::ConsumerId::new("s", "g", "c");
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            ConsumerSpec::new("s", "g", "c")
                .start_id(StartId::Beginning)
                .count(7)
                .block(Duration::from_millis(200))
                // Claims run often and would take any entry idle for 300 ms: the waiting moves'
                // entries must not come back to the handler through them either.
                .claim_interval(Duration::from_millis(100))
                .claim_min_idle(Duration::from_millis(300))
                .handler(move |batch: Batch<RawEntry>| {
                    seen2.record(&batch);
                    for e in &batch {
                        if e.message.get_str("kind") == Some("bad") {
                            batch.dead_letter(e.id, "bad on purpose");
                        }
                    }
                    async { HandlerResult::Ok }
                }),
        )
        .start()
        .await
        .unwrap();

    // Every good entry acknowledged; only the entries to dead-letter are pending.
    eventually(
        WAIT,
        "the good entries acknowledged, the bad ones waiting",
        || {
            let (mut con, handled) = (con.clone(), seen.len());
            async move { handled >= 40 && pending(&mut con, "s", "g").await == 8 }
        },
    )
    .await;
    let waiting_retried = |app: &Supervisor| {
        let h = app.consumer_health(&id).unwrap();
        (h.dead_letters_waiting, h.counters.dead_letter_retries)
    };
    let (_, retries_then) = waiting_retried(&app);
    // Several retry rounds pass (each failed attempt is counted) ...
    eventually(WAIT, "the waiting moves retried", || {
        let (waiting, retries) = waiting_retried(&app);
        async move { waiting == 8 && retries >= retries_then + 3 }
    })
    .await;
    // ... and claims run meanwhile, yet nothing was handed to the handler twice.
    let h = app.consumer_health(&id).unwrap();
    assert!(
        h.last_error.as_deref().unwrap_or("").contains("WRONGTYPE"),
        "{h:?}"
    );
    assert_eq!(h.state, millrace::ConsumerState::Running, "{h:?}");
    assert_eq!(h.restarts_total, 0, "{h:?}");
    assert!(
        seen.count_by_id().values().all(|n| *n == 1),
        "handled twice: {:?}",
        seen.count_by_id()
    );
    assert_eq!(seen.len(), 40);

    // The key is fixed: every move completes, each entry once.
    let _: () = redis::cmd("DEL")
        .arg("s:dlq")
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(WAIT, "the moves completed", || {
        let mut con = con.clone();
        async move { pending(&mut con, "s", "g").await == 0 && xlen(&mut con, "s:dlq").await == 8 }
    })
    .await;
    let mut moved: Vec<EntryId> = dlq_sources(&mut con, "s:dlq").await;
    moved.sort();
    assert_eq!(moved, bad);
    let h = app.consumer_health(&id).unwrap();
    assert_eq!(
        (h.dead_letters_waiting, h.counters.dead_lettered),
        (0, 8),
        "{h:?}"
    );
    assert!(seen.count_by_id().values().all(|n| *n == 1));
    app.shutdown().await.unwrap();
}

/// The `millrace.source_id` of every entry of dead-letter stream `dlq`.
async fn dlq_sources(con: &mut MultiplexedConnection, dlq: &str) -> Vec<EntryId> {
    let stream = DeadLetterStream::of(dlq.trim_end_matches(":dlq"));
    stream
        .list(con, 1_000)
        .await
        .unwrap()
        .letters
        .into_iter()
        .filter_map(|l| l.dead_letter.and_then(|d| d.source_id))
        .collect()
}
