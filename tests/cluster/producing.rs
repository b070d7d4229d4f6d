//! `millrace::producer::Producer` on a cluster: pipelined adds to several streams of one slot while
//! that slot migrates key by key lose nothing, duplicate nothing, and never leave a second copy of
//! a stream on the wrong master.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use millrace::producer::Producer;
use millrace_testkit::RedisCluster;
use tokio::task::block_in_place;

use crate::common::{cluster, connect, WAIT};

#[derive(serde::Serialize, serde::Deserialize)]
struct Numbered {
    seq: u64,
}

/// Streams of one slot (one hash tag), as a producer spreading one tenant's events would use.
const STREAMS: usize = 8;
/// Entries per `add_many` call, round robin over the streams.
const PER_CALL: u64 = 40;

fn streams() -> Vec<String> {
    (0..STREAMS).map(|i| format!("{{produced}}:{i}")).collect()
}

/// Adds numbered entries with `add_many` until told to stop; counts the calls that returned and
/// keeps every confirmed sequence number.
struct Load {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl Load {
    fn start(producer: Producer) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), calls.clone());
        let task = tokio::spawn(async move {
            let names = streams();
            let mut confirmed = Vec::new();
            let mut next = 0u64;
            while !s.load(Ordering::SeqCst) {
                let batch: Vec<(&str, Numbered)> = (next..next + PER_CALL)
                    .map(|seq| (names[seq as usize % STREAMS].as_str(), Numbered { seq }))
                    .collect();
                match producer.add_many(batch).await {
                    Ok(ids) => {
                        assert_eq!(ids.len() as u64, PER_CALL);
                        confirmed.extend(next..next + PER_CALL);
                    }
                    Err(e) => panic!("add_many failed during the migration: {e}"),
                }
                next += PER_CALL;
                c.fetch_add(1, Ordering::SeqCst);
            }
            confirmed
        });
        Load { stop, calls, task }
    }

    /// Waits until `n` more calls have returned.
    async fn calls_more(&self, n: u64) {
        let target = self.calls.load(Ordering::SeqCst) + n;
        let calls = self.calls.clone();
        millrace_testkit::eventually(WAIT, &format!("{n} more add_many calls"), move || {
            let done = calls.load(Ordering::SeqCst) >= target;
            async move { done }
        })
        .await;
    }

    async fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the producer task")
    }
}

/// Every entry's sequence number, read from the stream's owner, per stream.
async fn read_all(cluster: &RedisCluster) -> HashMap<String, Vec<u64>> {
    let mut con = connect(cluster).await;
    let mut out = HashMap::new();
    for stream in streams() {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query_async(&mut con)
            .await
            .expect("XRANGE");
        let seqs = entries
            .iter()
            .map(|(_, fields)| {
                let (_, v) = fields.iter().find(|(k, _)| k == "seq").expect("a seq");
                v.parse().expect("a number")
            })
            .collect();
        out.insert(stream, seqs);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_adds_during_a_key_by_key_migration_lose_and_duplicate_nothing() {
    let cluster = cluster();
    let slot = cluster.keyslot("{produced}");
    let from = cluster.owner_of_slot(slot);
    let to = *cluster.masters().iter().find(|&&m| m != from).unwrap();
    let producer = Producer::builder()
        .redis_cluster(cluster.seed_urls())
        .build()
        .expect("a producer");
    let load = Load::start(producer);
    // Every stream exists on the source before the slot starts to move.
    load.calls_more(3).await;
    let migration = cluster.start_migration(slot, to);
    let mut migration = migration;
    loop {
        // Some pipelines meet the slot half moved after each key.
        load.calls_more(3).await;
        if block_in_place(|| migration.move_keys(1)) == 0 {
            break;
        }
    }
    load.calls_more(3).await;
    block_in_place(|| migration.finish());
    load.calls_more(3).await;
    let confirmed = load.stop().await;

    // No copy of any stream is left on another master.
    for master in cluster.masters() {
        if master == to {
            continue;
        }
        let mut con = cluster
            .node(master)
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to the master");
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut con)
            .await
            .expect("CLUSTER GETKEYSINSLOT");
        assert!(
            keys.is_empty(),
            "keys of slot {slot} left on master {master}: {keys:?}"
        );
    }
    let stored = read_all(&cluster).await;
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (stream, seqs) in &stored {
        let mut last = None;
        for &seq in seqs {
            *seen.entry(seq).or_default() += 1;
            // The entries of one stream keep the order they were given in.
            assert!(last < Some(seq), "{stream}: {seq} after {last:?}");
            last = Some(seq);
            assert_eq!(
                streams()[seq as usize % STREAMS],
                *stream,
                "seq {seq} in {stream}"
            );
        }
    }
    let lost: Vec<u64> = confirmed
        .iter()
        .copied()
        .filter(|s| !seen.contains_key(s))
        .collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "migration under the pipelined producer: confirmed {}, stored {}, lost {}, duplicates {duplicates}",
        confirmed.len(),
        seen.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} entries, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(duplicates, 0, "duplicate entries");
    assert_eq!(
        seen.len(),
        confirmed.len(),
        "entries that were never confirmed"
    );
}

/// The ACL line docs/producing.md gives a cluster producer is enough for single and pipelined adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_line_lets_a_cluster_producer_add() {
    crate::common::init_tracing();
    let rules = [
        "on",
        ">producer-pw",
        "~orders*",
        "resetchannels",
        "-@all",
        "+xadd",
        "+asking",
        "+multi",
        "+exec",
        "+cluster|slots",
    ];
    let cluster = RedisCluster::builder().acl_user("producer", rules).start();
    let producer = Producer::builder()
        .redis_cluster(cluster.seed_urls_as("producer", "producer-pw"))
        .build()
        .expect("a producer");
    producer
        .add("orders:1", &Numbered { seq: 0 })
        .await
        .expect("one add");
    let ids = producer
        .add_many((1..=20).map(|seq| (format!("orders:{}", seq % 4), Numbered { seq })))
        .await
        .expect("pipelined adds to streams on several masters");
    assert_eq!(ids.len(), 20);
}
