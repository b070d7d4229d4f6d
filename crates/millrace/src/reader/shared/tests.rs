//! The shared reader against a real redis-server from the testkit: routing, credits, one
//! stream's errors kept to it, membership while a read blocks, untaken entries released, a lost
//! connection told to everyone. Each test asserts Redis's own state (pending ids, idle times).

use std::time::Duration;

use millrace_testkit::{eventually, RedisServer};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

use super::{SharedReaders, Subscription};
use crate::connection::{Backend, ConnectionOptions};
use crate::error::Error;
use crate::id::ConsumerId;
use crate::reader::{ReaderConfig, FETCHED_AHEAD};
use crate::streams::ReadItem;

const WAIT: Duration = Duration::from_secs(10);

struct Fixture {
    _server: RedisServer,
    backend: Backend,
    /// The shared reads, as a supervisor's multi-stream consumers hold them.
    readers: SharedReaders,
    admin: MultiplexedConnection,
}

/// A server with group `g` (from the start) on each of `streams`.
async fn fixture(streams: &[&str]) -> Fixture {
    let server = RedisServer::start();
    let backend = Backend::open(&server.url(), ConnectionOptions::default()).expect("backend");
    let mut admin = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    for stream in streams {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg("g")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut admin)
            .await
            .expect("XGROUP CREATE");
    }
    Fixture {
        _server: server,
        backend,
        readers: SharedReaders::default(),
        admin,
    }
}

impl Fixture {
    /// Subscribes `stream` for consumer `c` of group `g`, with BLOCK `block`.
    async fn subscribe_with(&self, stream: &str, count: usize, block: Duration) -> Subscription {
        let node = self.backend.node_for(stream).await.expect("node");
        let config = ReaderConfig {
            id: ConsumerId::new(stream, "g", "c"),
            count,
            block,
            read_timeout: block + Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
        };
        self.readers
            .subscribe(&self.backend, &node, config)
            .await
            .expect("subscribe")
    }

    async fn subscribe(&self, stream: &str, count: usize) -> Subscription {
        self.subscribe_with(stream, count, Duration::from_secs(2))
            .await
    }

    /// Adds `n` entries to `stream`; returns their ids.
    async fn add(&mut self, stream: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let id: String = self
                .admin
                .xadd(stream, "*", &[("n", i)])
                .await
                .expect("XADD");
            ids.push(id);
        }
        ids
    }
}

/// Ids pending for consumer `c` on `stream`, idle at least `min_idle`.
async fn pending_ids(
    mut admin: MultiplexedConnection,
    stream: &str,
    min_idle: Duration,
) -> Vec<String> {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg("g")
        .arg("IDLE")
        .arg(min_idle.as_millis() as u64)
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg("c")
        .query_async(&mut admin)
        .await
        .expect("XPENDING");
    rows.into_iter().map(|r| r.0).collect()
}

async fn pending_count(mut admin: MultiplexedConnection, stream: &str) -> usize {
    let summary: (usize, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(stream)
        .arg("g")
        .query_async(&mut admin)
        .await
        .expect("XPENDING");
    summary.0
}

/// Whether the server has a client blocked (the shared read, in these tests).
async fn a_read_blocks(mut admin: MultiplexedConnection) -> bool {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut admin)
        .await
        .expect("INFO clients");
    info.lines()
        .find_map(|l| l.trim().strip_prefix("blocked_clients:"))
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// The ids of the server's client connections.
async fn client_ids(mut admin: MultiplexedConnection) -> Vec<i64> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect()
}

fn ids(items: &[ReadItem]) -> Vec<String> {
    items
        .iter()
        .filter_map(ReadItem::id)
        .map(|id| id.to_string())
        .collect()
}

/// Takes batches until `n` entries came; fails after [`WAIT`].
async fn take(sub: &mut Subscription, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("a batch in time")
            .expect("a batch");
        got.extend(ids(&batch));
    }
    got
}

/// The next error of `sub`, which must come within [`WAIT`]; empty batches (a quiet BLOCK's
/// time) are skipped, entries are a failure.
async fn next_error(sub: &mut Subscription) -> Error {
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match sub.next().await {
                Ok(items) if items.is_empty() => continue,
                Ok(items) => panic!("entries instead of an error: {items:?}"),
                Err(e) => return e,
            }
        }
    })
    .await;
    outcome.expect("an error in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_three_streams_go_to_their_subscribers() {
    let mut f = fixture(&["a", "b", "c"]).await;
    let added = [
        f.add("a", 7).await,
        f.add("b", 3).await,
        f.add("c", 12).await,
    ];
    let mut subs = Vec::new();
    for stream in ["a", "b", "c"] {
        subs.push(f.subscribe(stream, 4).await);
    }
    assert_eq!(f.readers.running(), 1, "one read for all three");
    for (sub, added) in subs.iter_mut().zip(&added) {
        assert_eq!(&take(sub, added.len()).await, added);
    }
    // Entries added later are routed as well.
    let later = f.add("b", 2).await;
    assert_eq!(take(&mut subs[1], 2).await, later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_credit_is_left_out_of_the_read() {
    let mut f = fixture(&["slow", "fast"]).await;
    f.add("slow", 100).await;
    let _slow = f.subscribe("slow", 2).await;
    let mut fast = f.subscribe("fast", 2).await;
    let ahead = FETCHED_AHEAD * 2;
    eventually(WAIT, "the slow stream's read-ahead fetched", || async {
        pending_count(f.admin.clone(), "slow").await == ahead
    })
    .await;
    // Many more reads go out for the fast stream; none takes more of the slow one.
    let added = f.add("fast", 40).await;
    assert_eq!(take(&mut fast, 40).await, added);
    assert_eq!(pending_count(f.admin.clone(), "slow").await, ahead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_group_fails_its_stream_only() {
    let mut f = fixture(&["a", "b"]).await;
    let mut a = f.subscribe("a", 10).await;
    let mut b = f.subscribe("b", 10).await;
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg("a")
        .arg("g")
        .query_async(&mut f.admin)
        .await
        .expect("XGROUP DESTROY");
    let err = next_error(&mut a).await;
    assert!(matches!(err, Error::GroupLost { .. }), "{err}");
    assert!(err.to_string().contains("`a`"), "{err}");
    let added = f.add("b", 3).await;
    assert_eq!(take(&mut b, 3).await, added);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_fails_its_stream_only() {
    let mut f = fixture(&["a", "b"]).await;
    let mut a = f.subscribe("a", 10).await;
    let mut b = f.subscribe("b", 10).await;
    eventually(WAIT, "the read to block", || a_read_blocks(f.admin.clone())).await;
    let _: () = f.admin.del("a").await.expect("DEL");
    let err = next_error(&mut a).await;
    assert!(matches!(err, Error::GroupLost { .. }), "{err}");
    let added = f.add("b", 3).await;
    assert_eq!(take(&mut b, 3).await, added);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_fails_its_stream_only() {
    let mut f = fixture(&["a", "b"]).await;
    let mut a = f.subscribe("a", 10).await;
    let mut b = f.subscribe("b", 10).await;
    let _: () = redis::pipe()
        .atomic()
        .del("b")
        .set("b", "not a stream")
        .query_async(&mut f.admin)
        .await
        .expect("DEL and SET");
    let err = next_error(&mut b).await;
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert!(err.to_string().contains("`b`"), "{err}");
    let added = f.add("a", 3).await;
    assert_eq!(take(&mut a, 3).await, added);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_joining_a_blocked_read_is_read_at_once() {
    let mut f = fixture(&["a", "b"]).await;
    // BLOCK far beyond the wait below: only a wake gets `b` read in time.
    let block = Duration::from_secs(600);
    let _a = f.subscribe_with("a", 10, block).await;
    eventually(WAIT, "the read of `a` to block", || {
        a_read_blocks(f.admin.clone())
    })
    .await;
    let added = f.add("b", 2).await;
    let mut b = f.subscribe_with("b", 10, block).await;
    assert_eq!(take(&mut b, 2).await, added);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscription_leaves_its_entries_pending_and_released() {
    let mut f = fixture(&["a", "b"]).await;
    let added = f.add("a", 20).await;
    let a = f.subscribe("a", 2).await;
    let _b = f.subscribe("b", 2).await;
    let ahead = FETCHED_AHEAD * 2;
    eventually(WAIT, "a's read-ahead fetched", || async {
        pending_count(f.admin.clone(), "a").await == ahead
    })
    .await;
    drop(a);
    let day = Duration::from_secs(23 * 3600);
    let fetched = added[..ahead].to_vec();
    eventually(WAIT, "a's fetched entries released", || async {
        pending_ids(f.admin.clone(), "a", day).await == fetched
    })
    .await;
    // Nothing lost: all fetched entries are pending, the rest were never read.
    assert_eq!(
        pending_ids(f.admin.clone(), "a", Duration::ZERO).await,
        fetched
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_stop_returns_untaken_entries_and_closes_the_read() {
    let mut f = fixture(&["a"]).await;
    let added = f.add("a", 20).await;
    let mut a = f.subscribe("a", 2).await;
    let first = take(&mut a, 2).await;
    let ahead = 2 + FETCHED_AHEAD * 2;
    eventually(WAIT, "a's read-ahead fetched", || async {
        pending_count(f.admin.clone(), "a").await == ahead
    })
    .await;
    let read_client = a.client_id().expect("CLIENT ID");
    let mut control = f.backend.control();
    let untaken = ids(&a.stop(&mut control).await);
    assert_eq!(f.readers.running(), 0);
    assert!(
        !client_ids(f.admin.clone()).await.contains(&read_client),
        "the read's socket is closed"
    );
    // What stop returned and what the read released are exactly the fetched, untaken entries.
    let mut released = pending_ids(f.admin.clone(), "a", Duration::from_secs(23 * 3600)).await;
    released.extend(untaken);
    released.sort();
    assert_eq!(first, added[..2]);
    assert_eq!(released, added[2..ahead]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_is_every_subscribers_transient_error() {
    let mut f = fixture(&["a", "b"]).await;
    let mut a = f.subscribe("a", 10).await;
    let mut b = f.subscribe("b", 10).await;
    let client_id = a.client_id().expect("CLIENT ID");
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(client_id)
        .query_async(&mut f.admin)
        .await
        .expect("CLIENT KILL");
    for sub in [&mut a, &mut b] {
        let err = next_error(sub).await;
        assert!(err.is_retryable(), "{err}");
    }
    drop((a, b));
    // The next subscribe starts a new read.
    let added = f.add("a", 2).await;
    let mut again = f.subscribe("a", 10).await;
    assert_eq!(take(&mut again, 2).await, added);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_returns_untaken_entries_while_the_others_read_on() {
    let mut f = fixture(&["a", "b"]).await;
    let added = f.add("a", 20).await;
    let a = f.subscribe("a", 2).await;
    let mut b = f.subscribe("b", 2).await;
    let ahead = FETCHED_AHEAD * 2;
    eventually(WAIT, "a's read-ahead fetched", || async {
        pending_count(f.admin.clone(), "a").await == ahead
    })
    .await;
    let untaken = ids(&a.stop(&mut f.backend.control()).await);
    assert_eq!(f.readers.running(), 1, "b still reads");
    // What stop returned, and what the read released of a read still on the wire, are exactly
    // the fetched entries.
    let day = Duration::from_secs(23 * 3600);
    eventually(WAIT, "every fetched entry returned or released", || async {
        let mut all = pending_ids(f.admin.clone(), "a", day).await;
        all.extend(untaken.iter().cloned());
        all.sort();
        all == added[..ahead]
    })
    .await;
    let later = f.add("b", 3).await;
    assert_eq!(take(&mut b, 3).await, later);
    assert_eq!(
        pending_count(f.admin.clone(), "a").await,
        ahead,
        "a is no longer read"
    );
}

#[test]
fn a_subscription_can_move_between_threads() {
    fn send<T: Send>(_: &T) {}
    fn subscription_next(sub: &mut Subscription) {
        send(&sub.next());
    }
    let _ = subscription_next;
}

/// On a cluster, streams that share a slot share a read; one in another slot gets its own, and a
/// stream joining a blocked read wakes it through the node the read is connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_read_is_shared_per_slot() {
    let cluster = tokio::task::block_in_place(|| {
        millrace_testkit::RedisCluster::builder()
            .replicas_per_master(0)
            .start()
    });
    let backend =
        Backend::open_cluster(&cluster.seed_urls(), ConnectionOptions::default()).expect("backend");
    let mut admin = cluster
        .client()
        .get_async_connection()
        .await
        .expect("cluster connection");
    let (a, b) = ("{t}a", "{t}b");
    let other = (0..)
        .map(|i| format!("o{i}"))
        .find(|k| cluster.keyslot(k) != cluster.keyslot(a))
        .expect("a key in another slot");
    for stream in [a, b, other.as_str()] {
        let _: () = redis::cmd("XGROUP")
            .arg(&["CREATE", stream, "g", "0", "MKSTREAM"])
            .query_async(&mut admin)
            .await
            .expect("XGROUP CREATE");
    }
    let readers = SharedReaders::default();
    let subscribe = |stream: String| {
        let backend = &backend;
        let readers = &readers;
        async move {
            let node = backend.node_for(&stream).await.expect("owner");
            let block = Duration::from_secs(600);
            let config = ReaderConfig {
                id: ConsumerId::new(stream, "g", "c"),
                count: 10,
                block,
                read_timeout: block + Duration::from_secs(5),
                command_timeout: Duration::from_secs(5),
            };
            readers
                .subscribe(backend, &node, config)
                .await
                .expect("subscribe")
        }
    };
    let _sub_a = subscribe(a.to_owned()).await;
    let owner = cluster.owner_of_key(a);
    let node = cluster.node(owner).client();
    eventually(WAIT, "the read of `a` to block on its master", || async {
        let conn = node.get_multiplexed_async_connection().await;
        a_read_blocks(conn.expect("node connection")).await
    })
    .await;
    let add = |stream: &'static str| {
        let mut admin = admin.clone();
        async move {
            let id: String = admin.xadd(stream, "*", &[("f", "v")]).await.expect("XADD");
            vec![id]
        }
    };
    let added_b = add(b).await;
    let mut sub_b = subscribe(b.to_owned()).await;
    assert_eq!(take(&mut sub_b, 1).await, added_b, "woken on its node");
    assert_eq!(readers.running(), 1, "one read for the slot");
    let mut sub_other = subscribe(other.clone()).await;
    assert_eq!(readers.running(), 2, "another slot, another read");
    let id: String = admin.xadd(&other, "*", &[("f", "v")]).await.expect("XADD");
    assert_eq!(take(&mut sub_other, 1).await, vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_streams_share_one_read_and_each_gets_its_own_entries() {
    let names: Vec<String> = (0..200).map(|i| format!("tenant:{i}:events")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut f = fixture(&refs).await;
    let mut pipe = redis::pipe();
    for name in &names {
        for n in 0..30 {
            pipe.xadd(name, "*", &[("n", n)]);
        }
    }
    let added: Vec<String> = pipe.query_async(&mut f.admin).await.expect("XADD");
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut sub = f.subscribe(name, 50).await;
        let expected = added[i * 30..(i + 1) * 30].to_vec();
        tasks.push(tokio::spawn(async move {
            assert_eq!(take(&mut sub, 30).await, expected);
            sub
        }));
    }
    assert_eq!(f.readers.running(), 1);
    for task in tasks {
        task.await.expect("every stream got its entries, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_returned_while_the_read_blocks_wakes_it() {
    let mut f = fixture(&["slow", "idle"]).await;
    let added = f.add("slow", 6).await;
    // BLOCK far beyond the waits below: only a wake gets `slow` read again in time.
    let block = Duration::from_secs(600);
    let mut slow = f.subscribe_with("slow", 2, block).await;
    slow.set_pace(crate::reader::ReadPace { count: 2, ahead: 1 });
    let _idle = f.subscribe_with("idle", 2, block).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        // One batch ahead: `slow` is left out of the read that blocks on `idle`, until this
        // batch is taken and its credit comes back.
        got.extend(take(&mut slow, 2).await);
    }
    assert_eq!(got, added);
}

/// A dropped subscription (a failed session) wakes the read that still names its stream, in the
/// background: an entry added meanwhile is either never delivered to the consumer that left, or
/// delivered and handed back to the group; once the stream is quiet, never pending for it as if
/// being handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_blocked_read_brings_for_a_stream_that_left_are_released() {
    let mut f = fixture(&["a", "b"]).await;
    let a = f.subscribe_with("a", 10, Duration::from_secs(600)).await;
    let b = f.subscribe_with("b", 10, Duration::from_secs(600)).await;
    // The read of `a` alone may block first, and be woken for `b`: wait for the read of both.
    eventually(WAIT, "the read of both to block", || {
        let both = a.in_a_read() && b.in_a_read();
        let admin = f.admin.clone();
        async move { both && a_read_blocks(admin).await }
    })
    .await;
    drop(a);
    let quiet = f
        .readers
        .quieting(&ConsumerId::new("a", "g", "c"))
        .expect("the read naming `a` is on the wire");
    let added = f.add("a", 1).await;
    tokio::time::timeout(WAIT, quiet.cancelled())
        .await
        .expect("the stream quiet: the read woken");
    let released = pending_ids(f.admin.clone(), "a", Duration::from_secs(23 * 3600)).await;
    let pending = pending_count(f.admin.clone(), "a").await;
    assert!(
        (released == added && pending == 1) || pending == 0,
        "handed back ({released:?}) or never delivered, not pending as if handled ({pending})"
    );
}

/// A stop returns only once no read on the wire names the stream: an entry added after it is
/// never delivered to the consumer that left (the blocked read is woken, not left to deliver it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_added_after_a_stop_is_never_delivered_to_the_stream_that_left() {
    let mut f = fixture(&["a", "b"]).await;
    // BLOCK far beyond the waits below: only a wake ends the read that names `a`.
    let block = Duration::from_secs(600);
    let a = f.subscribe_with("a", 10, block).await;
    let mut b = f.subscribe_with("b", 10, block).await;
    // Once `b` got an entry, every read written after names both streams.
    let first = f.add("b", 1).await;
    assert_eq!(take(&mut b, 1).await, first);
    eventually(WAIT, "the read of both to block", || {
        a_read_blocks(f.admin.clone())
    })
    .await;
    let untaken = a.stop(&mut f.backend.control()).await;
    assert!(untaken.is_empty(), "nothing was fetched for `a`");
    f.add("a", 1).await;
    // Redis serves a blocked read as the XADD that feeds it runs: once `b`'s entry added after
    // `a`'s is read, a read still naming `a` would have taken `a`'s entry.
    let later = f.add("b", 1).await;
    assert_eq!(take(&mut b, 1).await, later);
    assert_eq!(
        pending_count(f.admin.clone(), "a").await,
        0,
        "the entry added after the stop was delivered to the consumer that left"
    );
}

/// Redis prints a key with CR or LF in a `NOGROUP` with spaces instead, so the error names no
/// stream of the read: the read asks each stream, and only the one whose group is gone gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nogroup_naming_no_stream_of_the_read_fails_only_the_stream_whose_group_is_gone() {
    let odd = "tenant\r\n7";
    let mut f = fixture(&["healthy", odd]).await;
    let mut healthy = f.subscribe("healthy", 10).await;
    let mut lost = f.subscribe(odd, 10).await;
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(odd)
        .arg("g")
        .query_async(&mut f.admin)
        .await
        .expect("XGROUP DESTROY");
    let err = next_error(&mut lost).await;
    assert!(matches!(err, Error::GroupLost { .. }), "{err}");
    // The healthy stream reads on, its group untouched: no error, its entries in order.
    let added = f.add("healthy", 3).await;
    assert_eq!(take(&mut healthy, 3).await, added);
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("healthy")
        .query_async(&mut f.admin)
        .await
        .expect("XINFO GROUPS");
    assert_eq!(groups.len(), 1, "the healthy stream's group is still there");
}

/// Clients blocked on the server now.
async fn blocked_clients(mut admin: MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut admin)
        .await
        .expect("INFO clients");
    info.lines()
        .find_map(|l| l.trim().strip_prefix("blocked_clients:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A dropped subscription hands its untaken entries back in the background. A restarted
/// consumer's replay waits until that is done (`SharedReaders::quieting`): the release never
/// lands on entries the replay took, which would then sit idle for a day while being handled
/// (and be claimed by another consumer meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_release_never_touches_entries_a_replay_took() {
    let mut f = fixture(&["a", "b"]).await;
    f.add("a", 20).await;
    let a = f.subscribe("a", 2).await;
    let _b = f.subscribe("b", 2).await;
    let ahead = FETCHED_AHEAD * 2;
    eventually(WAIT, "a's read-ahead fetched", || async {
        pending_count(f.admin.clone(), "a").await == ahead
    })
    .await;
    // Commands on the control connection queue behind a BLPOP on it: the release is held back
    // until the list gets an element.
    let mut held = f.backend.control();
    let blocked_before = blocked_clients(f.admin.clone()).await;
    let hold = tokio::spawn(async move {
        redis::cmd("BLPOP")
            .arg("hold")
            .arg(0)
            .query_async::<redis::Value>(&mut held)
            .await
    });
    eventually(WAIT, "the control connection to block", || async {
        blocked_clients(f.admin.clone()).await > blocked_before
    })
    .await;
    drop(a);
    let id = ConsumerId::new("a", "g", "c");
    let quiet = f.readers.quieting(&id).expect("the release is under way");
    // The restarted consumer's replay, as `consumer::replay` runs it: after the stream is quiet.
    let mut replayer = f.admin.clone();
    let replay = tokio::spawn(async move {
        quiet.cancelled().await;
        redis::cmd("XREADGROUP")
            .arg(&["GROUP", "g", "c", "STREAMS", "a", "0"])
            .query_async::<redis::Value>(&mut replayer)
            .await
            .expect("replay")
    });
    let _: () = f.admin.lpush("hold", "go").await.expect("LPUSH");
    hold.await.expect("BLPOP task").expect("BLPOP");
    tokio::time::timeout(WAIT, replay)
        .await
        .expect("the replay ran once the stream was quiet")
        .expect("replay task");
    // Every fetched entry was replayed (idle reset); none is left idle for a day.
    assert_eq!(
        pending_ids(f.admin.clone(), "a", Duration::from_secs(23 * 3600)).await,
        Vec::<String>::new()
    );
    assert_eq!(pending_count(f.admin.clone(), "a").await, ahead);
}
