//! Keyed concurrency: sub-batches of different keys run at once, each key's entries in stream
//! order and never two sub-batches of one key at a time; under handler `Err`s, `RetryAfter`s,
//! handler panics and a panicking key function nothing is lost, and an entry is handled again only
//! after its sub-batch failed or asked for it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace::{
    Batch, ConsumerSpec, HandlerResult, KeyFn, RawEntry, RestartPolicy, RetryBackoff, StartId,
    Supervisor,
};
use millrace_testkit::eventually;

use crate::common::*;

const KEYS: usize = 20;
const PER_KEY: usize = 20;

/// What the handler saw, shared by its calls.
#[derive(Default)]
struct Log {
    /// Every call: its key, its entries' `i` and delivery counts, and whether it failed.
    calls: Vec<(String, Vec<(usize, u64)>, bool)>,
    /// Keys with a sub-batch in the handler now.
    in_flight: HashSet<String>,
    /// Two sub-batches of one key in the handler at once (must stay empty).
    overlaps: Vec<String>,
    most_at_once: usize,
}

fn field(e: &RawEntry, name: &str) -> String {
    e.get_str(name).unwrap().to_owned()
}

#[tokio::test]
async fn keyed_sub_batches_keep_order_per_key_under_errs_and_panics_and_lose_nothing() {
    let (server, mut con) = server().await;
    // Entries interleaved over the keys: key k's i-th entry is `k<k>`, `i`.
    let mut pipe = redis::pipe();
    for i in 0..PER_KEY {
        for k in 0..KEYS {
            pipe.cmd("XADD")
                .arg("s")
                .arg("*")
                .arg("k")
                .arg(format!("k{k}"))
                .arg("i")
                .arg(i);
        }
    }
    let _: Vec<String> = pipe.query_async(&mut con).await.unwrap();
    let log: Arc<Mutex<Log>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let key_panics = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (log, calls) = (log.clone(), calls.clone());
        move |batch: Batch<RawEntry>| {
            let (log, calls) = (log.clone(), calls.clone());
            async move {
                let key = field(&batch.entries[0].message, "k");
                let seen: Vec<(usize, u64)> = batch
                    .iter()
                    .map(|e| {
                        (
                            field(&e.message, "i").parse().unwrap(),
                            e.deliveries.unwrap(),
                        )
                    })
                    .collect();
                assert!(
                    batch.iter().all(|e| field(&e.message, "k") == key),
                    "one key per sub-batch"
                );
                {
                    let mut l = log.lock().unwrap();
                    if !l.in_flight.insert(key.clone()) {
                        l.overlaps.push(key.clone());
                    }
                    l.most_at_once = l.most_at_once.max(l.in_flight.len());
                }
                tokio::time::sleep(Duration::from_millis(2 * seen.len() as u64)).await;
                // Every 7th call fails with Err, every 11th panics, every 13th asks for a retry
                // after 30 ms, on first deliveries only, so everything gets through in the end.
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let first = seen.iter().all(|(_, d)| *d == 1);
                let err = first && n % 7 == 0;
                let panic = first && n % 11 == 0 && !err;
                let later = first && n % 13 == 0 && !err && !panic;
                {
                    let mut l = log.lock().unwrap();
                    l.in_flight.remove(&key);
                    l.calls.push((key.clone(), seen, err || panic || later));
                }
                assert!(!panic, "handler panicked on purpose");
                if err {
                    HandlerResult::err("refused on purpose")
                } else if later {
                    HandlerResult::RetryAfter(Duration::from_millis(30))
                } else {
                    HandlerResult::Ok
                }
            }
        }
    };
    // The key function panics the first time it sees k3's 5th entry.
    let key_fn = {
        let key_panics = key_panics.clone();
        KeyFn::new(move |e: &RawEntry| {
            if e.get_str("k") == Some("k3")
                && e.get_str("i") == Some("5")
                && key_panics.fetch_add(1, Ordering::SeqCst) == 0
            {
                panic!("the key function panicked on purpose");
            }
            e.get("k").map(<[u8]>::to_vec)
        })
    };
    let mut policy = RestartPolicy::default();
    policy.max_restarts = 1000;
    policy.backoff_initial = Duration::from_millis(5);
    policy.backoff_max = Duration::from_millis(10);
    let app = Supervisor::builder()
        .redis(server.url())
        .restart_policy(policy)
        .consumer(
            ConsumerSpec::new("s", "g", "c")
                .start_id(StartId::Beginning)
                .block(Duration::from_millis(200))
                .count(60)
                .key_concurrency(8)
                .key_by(key_fn)
                .max_deliveries(10)
                .retry_backoff(RetryBackoff::fixed(Duration::from_millis(50)))
                .claim_min_idle(Duration::from_secs(5))
                .claim_interval(Duration::from_millis(200))
                .handler(handler),
        )
        .start()
        .await
        .unwrap();
    eventually(WAIT, "every entry handled and acknowledged", || {
        let mut con = con.clone();
        async move { drained(&mut con, "s", "g").await }
    })
    .await;
    app.shutdown().await.unwrap();
    assert!(
        key_panics.load(Ordering::SeqCst) >= 1,
        "the key function panicked once"
    );
    let l = log.lock().unwrap();
    assert!(
        l.overlaps.is_empty(),
        "two sub-batches of one key at once: {:?}",
        l.overlaps
    );
    assert!(l.most_at_once > 1, "different keys ran concurrently");
    // Nothing lost: every entry was in a call that succeeded. Duplicates: an entry is seen again
    // only after a failure of a call it was in.
    let mut ok: HashSet<(String, usize)> = HashSet::new();
    let mut seen: HashMap<(String, usize), (usize, usize)> = HashMap::new();
    for (key, entries, failed) in &l.calls {
        for (i, _) in entries {
            let e = seen.entry((key.clone(), *i)).or_default();
            e.0 += 1;
            if *failed {
                e.1 += 1;
            } else {
                ok.insert((key.clone(), *i));
            }
        }
    }
    assert_eq!(ok.len(), KEYS * PER_KEY, "every entry handled successfully");
    for (entry, (times, failures)) in &seen {
        assert_eq!(
            *times,
            failures + 1,
            "{entry:?}: handled {times} times, {failures} failed"
        );
    }
    // Order per key: each call's entries ascend, and new entries (first deliveries) of a key reach
    // the handler in stream order across calls.
    let mut last_new: HashMap<&str, usize> = HashMap::new();
    for (key, entries, _) in &l.calls {
        assert!(
            entries.windows(2).all(|w| w[0].0 < w[1].0),
            "{key}: {entries:?}"
        );
        for (i, d) in entries {
            if *d == 1 {
                if let Some(prev) = last_new.insert(key, *i) {
                    assert!(prev < *i, "{key}: new entry {i} after {prev}");
                }
            }
        }
    }
    let failed = l.calls.iter().filter(|c| c.2).count();
    println!(
        "keyed: {} calls, {failed} failed, at most {} keys at once",
        l.calls.len(),
        l.most_at_once
    );
}

#[tokio::test]
async fn bad_keyed_options_are_refused_at_start() {
    let (server, _con) = server().await;
    let start = |spec: ConsumerSpec| {
        let url = server.url();
        async move {
            Supervisor::builder()
                .redis(url)
                .consumer(spec.handler(|_: Batch<RawEntry>| async { HandlerResult::Ok }))
                .start()
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let zero = start(
        ConsumerSpec::new("s", "g", "c")
            .key_concurrency(0)
            .key_field("k".to_owned()),
    )
    .await;
    assert!(
        zero.contains("key_concurrency") && zero.contains("at least 1") && zero.contains("`s`"),
        "{zero}"
    );
    let keyless = start(ConsumerSpec::new("s", "g", "c").key_concurrency(4)).await;
    assert!(
        keyless.contains("key_field") && keyless.contains("key_by"),
        "{keyless}"
    );
}

#[tokio::test]
async fn the_heartbeat_covers_every_sub_batch_waiting_or_running() {
    let (server, mut con) = server().await;
    let mut pipe = redis::pipe();
    for k in 0..5 {
        pipe.cmd("XADD").arg("s").arg("*").arg("k").arg(k);
    }
    let _: Vec<String> = pipe.query_async(&mut con).await.unwrap();
    let seen = Seen::default();
    let slow_seen = seen.clone();
    let min_idle = Duration::from_millis(600);
    // 5 keys, 2 at a time, 1.2 s each: the last sub-batch waits 2.4 s, four times claim_min_idle,
    // before it starts. Without the heartbeat over the whole batch it would be claimed.
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            ConsumerSpec::new("s", "g", "slow")
                .start_id(StartId::Beginning)
                .block(Duration::from_millis(200))
                .claim_min_idle(min_idle)
                .count(10) // all five in one batch
                .key_concurrency(2)
                .key_field("k".to_owned())
                .handler(move |batch: Batch<RawEntry>| {
                    slow_seen.record(&batch);
                    async {
                        tokio::time::sleep(Duration::from_millis(1200)).await;
                        HandlerResult::Ok
                    }
                }),
        )
        .start()
        .await
        .unwrap();
    eventually(WAIT, "the first sub-batches started", || {
        let n = seen.len();
        async move { n >= 1 }
    })
    .await;
    app.add_consumer(
        ConsumerSpec::new("s", "g", "eager")
            .claim_interval(Duration::from_millis(50))
            .claim_min_idle(min_idle)
            .handler(recording(&seen)),
    )
    .await
    .unwrap();
    eventually(WAIT, "nothing pending", || {
        let mut con = con.clone();
        async move { drained(&mut con, "s", "g").await }
    })
    .await;
    assert_eq!(seen.len(), 5, "no entry claimed away: {:?}", seen.all());
    let eager = app
        .consumer_health(&millrace::ConsumerId::new("s", "g", "eager"))
        .unwrap();
    assert_eq!(eager.counters.claimed, 0);
    app.shutdown().await.unwrap();
}
