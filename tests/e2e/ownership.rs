//! One owner at a time: a batch is never handled by two consumers at once, a consumer never handles
//! its own read-ahead twice, a clean stop hands out only what it still owns, and a slow handler's
//! consumer keeps at most one batch ahead. Handlers here take a fixed time per batch (the workload);
//! the tests wait on events, and their margins are whole fractions of `claim_min_idle`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace::{
    Batch, ConsumerSpec, EntryId, HandlerResult, RawEntry, Source, StartId, Supervisor,
};
use millrace_testkit::{eventually, RedisServer};

use crate::common::*;

fn spec(consumer: &str, min_idle_ms: u64) -> ConsumerSpec {
    ConsumerSpec::new("s", "g", consumer)
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(200))
        .claim_min_idle(Duration::from_millis(min_idle_ms))
        .claim_interval(Duration::from_millis(20))
}

/// Records every hand-off, and every id handed over while another handler still works on it.
#[derive(Clone, Default)]
struct Work {
    seen: Seen,
    in_progress: Arc<Mutex<HashSet<EntryId>>>,
    overlaps: Arc<Mutex<Vec<EntryId>>>,
    claimed_started: Arc<AtomicBool>,
}

impl Work {
    /// A handler that records the batch, works `took`, and acks it.
    fn handler(
        &self,
        took: Duration,
    ) -> impl Fn(Batch<RawEntry>) -> futures::future::BoxFuture<'static, HandlerResult>
           + Send
           + Sync
           + 'static {
        let work = self.clone();
        move |batch: Batch<RawEntry>| {
            work.seen.record(&batch);
            let ids: Vec<EntryId> = batch.iter().map(|e| e.id).collect();
            {
                let mut busy = work.in_progress.lock().unwrap();
                for id in &ids {
                    if !busy.insert(*id) {
                        work.overlaps.lock().unwrap().push(*id);
                    }
                }
            }
            if batch.source == Source::Claimed {
                work.claimed_started.store(true, Ordering::SeqCst);
            }
            let work = work.clone();
            Box::pin(async move {
                tokio::time::sleep(took).await;
                let mut busy = work.in_progress.lock().unwrap();
                for id in &ids {
                    busy.remove(id);
                }
                HandlerResult::Ok
            })
        }
    }

    fn handled_twice(&self) -> Vec<(EntryId, usize)> {
        let mut twice: Vec<_> = self
            .seen
            .count_by_id()
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .collect();
        twice.sort();
        twice
    }

    fn assert_each_once(&self, ids: &[EntryId]) {
        assert!(
            self.overlaps.lock().unwrap().is_empty(),
            "handled by two handlers at once: {:?}",
            self.overlaps.lock().unwrap()
        );
        assert_eq!(
            self.handled_twice(),
            vec![],
            "handled twice: {:?}",
            self.seen.all()
        );
        let handled: HashSet<EntryId> = self.seen.ids().into_iter().collect();
        assert!(
            ids.iter().all(|id| handled.contains(id)),
            "every entry handled"
        );
    }
}

async fn wait_drained(con: &redis::aio::MultiplexedConnection) {
    eventually(WAIT, "everything delivered and nothing pending", || {
        let mut con = con.clone();
        async move { drained(&mut con, "s", "g").await }
    })
    .await;
}

/// A consumer of the test's group whose handler works `took_ms` per batch of up to `count`.
fn worker(work: &Work, name: &str, min_idle_ms: u64, count: usize, took_ms: u64) -> ConsumerSpec {
    spec(name, min_idle_ms)
        .count(count)
        .handler(work.handler(Duration::from_millis(took_ms)))
}

/// A supervisor of its own running `consumers`.
async fn start(server: &RedisServer, consumers: Vec<ConsumerSpec>) -> Supervisor {
    let mut builder = Supervisor::builder().redis(server.url());
    for consumer in consumers {
        builder = builder.consumer(consumer);
    }
    builder.start().await.unwrap()
}

/// Waits until `flag` is set.
async fn wait_for(what: &str, flag: &AtomicBool) {
    eventually(WAIT, what, || {
        let set = flag.load(Ordering::SeqCst);
        async move { set }
    })
    .await;
}

/// A consumer whose handler takes 0.4 × `claim_min_idle` per batch fetches batches ahead; by the
/// time the last of them is handed over it has waited longer than `claim_min_idle`, and the
/// consumer's own claim tick takes it. It must still be handled once, and with its true count.
#[tokio::test]
async fn a_consumer_never_handles_its_own_read_ahead_twice() {
    let (server, mut con) = server().await;
    let ids = xadd_n(&mut con, "s", 60).await;
    let work = Work::default();
    let app = start(&server, vec![worker(&work, "w1", 1000, 10, 400)]).await;
    wait_drained(&con).await;
    app.shutdown().await.unwrap();
    work.assert_each_once(&ids);
    for (id, deliveries, source, _) in work.seen.all() {
        if source == Source::New {
            assert_eq!(deliveries, Some(1), "{id}: a new entry's first delivery");
        }
    }
}

/// A slow consumer whose handler takes just under `claim_min_idle` hands over a batch that was read
/// ahead and has waited almost that long, while a quick consumer of the group claims every 20 ms.
/// Taking the batch (not just checking it) resets its idle time at the hand-off, and the heartbeat
/// keeps it, so the quick consumer never gets it while it is being handled.
#[tokio::test]
async fn two_consumers_never_handle_one_batch_at_once() {
    let (server, mut con) = server().await;
    let ids = xadd_n(&mut con, "s", 40).await;
    let work = Work::default();
    let consumers = vec![
        worker(&work, "w1", 1500, 5, 1400),
        worker(&work, "w2", 1500, 5, 20),
    ];
    let app = start(&server, consumers).await;
    wait_drained(&con).await;
    app.shutdown().await.unwrap();
    work.assert_each_once(&ids);
}

/// w1 is slow; w2 claims w1's read-ahead and is handling it when w1 stops cleanly. w1's release
/// must not hand w2's batch to w3.
#[tokio::test]
async fn a_clean_stop_releases_only_what_the_consumer_still_owns() {
    let (server, mut con) = server().await;
    let ids = xadd_n(&mut con, "s", 15).await;
    let work = Work::default();
    let w1 = start(&server, vec![worker(&work, "w1", 800, 5, 3000)]).await;
    eventually(WAIT, "w1 handles its first batch", || {
        let n = work.seen.len();
        async move { n > 0 }
    })
    .await;
    let w2 = start(&server, vec![worker(&work, "w2", 800, 5, 3000)]).await;
    wait_for(
        "w2 handles a batch it claimed from w1",
        &work.claimed_started,
    )
    .await;
    let w3 = start(&server, vec![worker(&work, "w3", 800, 5, 10)]).await;
    wait_running(&w3).await;
    w1.shutdown().await.unwrap();
    wait_drained(&con).await;
    w2.shutdown().await.unwrap();
    w3.shutdown().await.unwrap();
    work.assert_each_once(&ids);
}

/// After a slow batch a consumer fetches one batch ahead, and a batch whose entries were all
/// skipped (claimed by a peer meanwhile) does not widen that again: whenever its handler starts,
/// it holds at most the batch in hand and one more. The peer is the test itself, claiming with
/// `XAUTOCLAIM` as a client in another language would.
#[tokio::test]
async fn a_slow_consumer_keeps_at_most_one_batch_ahead() {
    const COUNT: usize = 5;
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 60).await;
    let held: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (samples, admin) = (held.clone(), con.clone());
    let slow = move |batch: Batch<RawEntry>| {
        let (samples, mut admin) = (samples.clone(), admin.clone());
        let source = batch.source;
        async move {
            if source == Source::New {
                let rows = pending_rows(&mut admin, "s", "g").await;
                let mine = rows.iter().filter(|r| r.consumer == b"slow").count();
                samples.lock().unwrap().push(mine);
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
            HandlerResult::Ok
        }
    };
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("slow", 500).count(COUNT).handler(slow))
        .start()
        .await
        .unwrap();
    wait_running(&app).await;
    let stop = Arc::new(AtomicBool::new(false));
    let thief = {
        let (stop, mut con) = (stop.clone(), con.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let claimed = millrace::streams::xautoclaim(
                    &mut con,
                    "s",
                    "g",
                    "thief",
                    Duration::from_millis(500),
                    EntryId::MIN,
                    100,
                )
                .await
                .unwrap();
                let ids: Vec<EntryId> = claimed.claimed.iter().filter_map(|i| i.id()).collect();
                millrace::streams::xack(&mut con, "s", "g", &ids)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_drained(&con).await;
    stop.store(true, Ordering::SeqCst);
    thief.await.unwrap();
    app.shutdown().await.unwrap();
    let samples = held.lock().unwrap().clone();
    // The first batches were fetched before the handler was known to be slow.
    let settled = samples.iter().skip(4).copied().collect::<Vec<_>>();
    assert!(
        !settled.is_empty(),
        "the slow consumer handled batches after its first ones: {samples:?}"
    );
    assert!(
        settled.iter().all(|&n| n <= 2 * COUNT),
        "pending for the slow consumer at each hand-off: {samples:?}"
    );
}
