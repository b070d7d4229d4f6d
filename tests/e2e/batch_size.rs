//! The read size: adaptive by default (it grows against a fast handler up to `max_count`, and a
//! slow handler's consumer holds no more than its batch time allows), fixed when `count` is set,
//! and bad settings refused. Asserted on what Redis holds and what the handler saw, never on time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace::{Batch, ConsumerSpec, Error, HandlerResult, RawEntry, StartId, Supervisor};
use redis::aio::MultiplexedConnection;

use crate::common::*;

/// Where an adaptive read size starts (docs/configuration.md).
const START: usize = 10;
/// Batches a consumer may hold at once: the one in the handler, the one fetched ahead, and the
/// one whose `XACK` is in flight, plus one for a read written while the pace changed.
const HELD_BATCHES: usize = 4;

fn spec(consumer: &str) -> ConsumerSpec {
    ConsumerSpec::new("s", "g", consumer)
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(200))
}

/// The sizes of the batches a handler saw, in order.
#[derive(Clone, Default)]
struct Sizes(Arc<Mutex<Vec<usize>>>);

impl Sizes {
    fn handler(
        &self,
    ) -> impl Fn(Batch<RawEntry>) -> futures::future::Ready<HandlerResult> + Clone + Send + Sync
    {
        let sizes = self.clone();
        move |batch: Batch<RawEntry>| {
            sizes.0.lock().unwrap().push(batch.len());
            futures::future::ready(HandlerResult::Ok)
        }
    }

    fn all(&self) -> Vec<usize> {
        self.0.lock().unwrap().clone()
    }

    fn total(&self) -> usize {
        self.all().iter().sum()
    }
}

async fn drain(
    server: &millrace_testkit::RedisServer,
    spec: ConsumerSpec,
    sizes: &Sizes,
    n: usize,
) {
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec)
        .start()
        .await
        .unwrap();
    millrace_testkit::eventually(WAIT, "every entry handled", || {
        let sizes = sizes.clone();
        async move { sizes.total() >= n }
    })
    .await;
    app.shutdown().await.unwrap();
}

/// With a backlog and a quick handler the batches grow from the start size, doubling, up to
/// `max_count`, and never past it. (A target of 10 s makes "quick" true on any machine.)
#[tokio::test]
async fn the_adaptive_read_size_grows_to_max_count_against_a_quick_handler() {
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 3000).await;
    let sizes = Sizes::default();
    let spec = spec("c")
        .batch_target(Duration::from_secs(10))
        .max_count(100)
        .handler(sizes.handler());
    drain(&server, spec, &sizes, 3000).await;
    let all = sizes.all();
    assert_eq!(all.first(), Some(&START), "{all:?}");
    assert_eq!(all.iter().max(), Some(&100), "{all:?}");
    let mut largest = 0;
    for &n in &all {
        assert!(
            largest == 0 || n <= 2 * largest,
            "grows to twice the largest batch so far at most: {all:?}"
        );
        largest = largest.max(n);
    }
}

/// A fixed `count` reads exactly that many while there is a backlog, however quick the handler.
#[tokio::test]
async fn a_fixed_count_reads_that_many_and_never_adapts() {
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 500).await;
    let sizes = Sizes::default();
    drain(
        &server,
        spec("c").count(7).handler(sizes.handler()),
        &sizes,
        500,
    )
    .await;
    let all = sizes.all();
    let (last, full) = all.split_last().unwrap();
    assert!(full.iter().all(|&n| n == 7), "{all:?}");
    assert!(*last <= 7, "{all:?}");
}

/// Pending entries per consumer, from `XPENDING`'s summary (`[count, first, last, owners]`).
async fn pending_by_consumer(con: &mut MultiplexedConnection) -> HashMap<String, usize> {
    let summary: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg("s")
        .arg("g")
        .query_async(con)
        .await
        .unwrap();
    let owners: Vec<(String, String)> = match summary.get(3) {
        Some(v @ redis::Value::Array(_)) => redis::from_redis_value(v.clone()).unwrap(),
        _ => Vec::new(),
    };
    owners
        .into_iter()
        .map(|(owner, n)| (owner, n.parse().unwrap()))
        .collect()
}

/// Against a handler that takes 5 ms per entry, two default consumers each hold at most a few
/// batches of the size that fits `batch_target` (100 ms ÷ 5 ms = 20 entries, or the start size
/// before the handler's speed is known), sampled from Redis all through the drain. A read size
/// that only grew while reads were full would reach `max_count` (1000) here, and read-ahead that
/// did not drop would hold four batches.
#[tokio::test]
async fn a_slow_handlers_consumer_holds_no_more_than_its_batch_target_allows() {
    const PER_ENTRY: Duration = Duration::from_millis(5);
    const TOTAL: usize = 400;
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", TOTAL).await;
    create_group(&mut con, "s", "g").await;
    let target = millrace::ConsumerOptions::default().batch_target;
    let fitting = (target.as_nanos() / PER_ENTRY.as_nanos()) as usize;
    let bound = HELD_BATCHES * fitting.max(START);
    let handled = Arc::new(Mutex::new(0usize));
    let slow = {
        let handled = handled.clone();
        move |batch: Batch<RawEntry>| {
            let handled = handled.clone();
            async move {
                tokio::time::sleep(PER_ENTRY * batch.len() as u32).await;
                *handled.lock().unwrap() += batch.len();
                HandlerResult::Ok
            }
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, mut con) = (stop.clone(), con.clone());
        tokio::spawn(async move {
            let mut most: HashMap<String, usize> = HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                for (owner, n) in pending_by_consumer(&mut con).await {
                    let m = most.entry(owner).or_default();
                    *m = (*m).max(n);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            most
        })
    };
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("c1").handler(slow.clone()))
        .consumer(spec("c2").handler(slow))
        .start()
        .await
        .unwrap();
    millrace_testkit::eventually(WAIT, "every entry handled", || {
        let handled = handled.clone();
        async move { *handled.lock().unwrap() >= TOTAL }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let most = sampler.await.unwrap();
    app.shutdown().await.unwrap();
    println!("most entries each consumer held at once: {most:?} (bound {bound})");
    assert!(
        !most.is_empty(),
        "the sampler saw the consumers' pending entries"
    );
    for (consumer, held) in &most {
        assert!(
            *held <= bound,
            "{consumer} held {held} entries at once; the bound is {bound}: {most:?}"
        );
    }
    assert_eq!(pending(&mut con, "s", "g").await, 0);
}

/// Read-size settings that cannot work are refused before anything starts, naming the consumer
/// and the field.
#[tokio::test]
async fn bad_read_size_settings_are_refused_naming_the_field() {
    let refused = |spec: ConsumerSpec| async move {
        let err = Supervisor::builder()
            .redis("redis://127.0.0.1:1")
            .consumer(spec.handler(Sizes::default().handler()))
            .start()
            .await
            .unwrap_err();
        match &err {
            Error::Config { field, .. } => (field.clone(), err.to_string()),
            other => panic!("expected a config error, got {other}"),
        }
    };
    let (field, msg) = refused(spec("c").min_count(200).max_count(100)).await;
    assert_eq!(field, "min_count");
    assert!(
        msg.contains("consumer `c`") && msg.contains("max_count"),
        "{msg}"
    );
    let (field, _) = refused(spec("c").batch_target(Duration::ZERO)).await;
    assert_eq!(field, "batch_target");
    let (field, _) = refused(spec("c").max_count(1_000_000)).await;
    assert_eq!(field, "max_count");
    let (field, msg) = refused(spec("c").count(0)).await;
    assert_eq!(field, "count");
    assert!(msg.contains("adaptive"), "{msg}");
}
