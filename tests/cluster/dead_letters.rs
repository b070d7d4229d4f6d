//! Dead letters on a cluster: a stream and its dead-letter stream in different slots (even on
//! different masters) move in steps; with a hash tag they share a slot and move atomically.
//! Either way the entry ends up in the dead-letter stream once and is acknowledged.

use std::time::Duration;

use millrace::{Batch, ConsumerSpec, HandlerResult, RawEntry, StartId, Supervisor};
use redis::cluster_async::ClusterConnection;

use crate::common::{cluster, connect, pending, wait_running, WAIT};

async fn xadd(con: &mut ClusterConnection, stream: &str, note: &str) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("note")
        .arg(note)
        .query_async(con)
        .await
        .expect("XADD")
}

/// The `millrace.source_id` of every entry in `dlq`.
async fn dead_letter_sources(con: &mut ClusterConnection, dlq: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(dlq)
        .arg("-")
        .arg("+")
        .query_async(con)
        .await
        .expect("XRANGE");
    entries
        .into_iter()
        .filter_map(|(_, fields)| {
            let at = fields.iter().position(|f| f == "millrace.source_id")?;
            fields.get(at + 1).cloned()
        })
        .collect()
}

fn refusing_poison(stream: &str) -> ConsumerSpec {
    ConsumerSpec::new(stream, "g", "c")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(500))
        .handler(|batch: Batch<RawEntry>| {
            for entry in &batch {
                if entry.message.get_str("note") == Some("poison") {
                    batch.dead_letter(entry.id, "poison: refused on purpose");
                }
            }
            async { HandlerResult::Ok }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_reach_a_dead_letter_stream_in_another_slot_or_the_same_one() {
    let cluster = cluster();
    // `orders-N:dlq` on another master than `orders-N`: the step path. `{orders}` and
    // `{orders}:dlq` share a slot: the atomic script.
    let apart = (0..10_000)
        .map(|i| format!("orders-{i}"))
        .find(|s| cluster.owner_of_key(s) != cluster.owner_of_key(format!("{s}:dlq")))
        .expect("some stream and its dead-letter stream on different masters");
    let tagged = "{orders}".to_owned();
    let mut con = connect(&cluster).await;
    let app = Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .consumer(refusing_poison(&apart))
        .consumer(refusing_poison(&tagged))
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    for stream in [&apart, &tagged] {
        xadd(&mut con, stream, "fine").await;
        let poison = xadd(&mut con, stream, "poison").await;
        xadd(&mut con, stream, "fine").await;
        let dlq = format!("{stream}:dlq");
        millrace_testkit::eventually(WAIT, "the poison entry dead-lettered, none pending", || {
            let (mut con, stream, dlq) = (con.clone(), stream.clone(), dlq.clone());
            async move {
                pending(&mut con, &stream).await == 0
                    && !dead_letter_sources(&mut con, &dlq).await.is_empty()
            }
        })
        .await;
        assert_eq!(
            dead_letter_sources(&mut con, &dlq).await,
            vec![poison],
            "{stream}: the poison entry, once"
        );
    }
    app.shutdown().await.expect("shutdown");
}

/// A stream and its dead-letter stream in one slot (`{mig}`, `{mig}:dlq`) move their dead letters
/// with one script. While their slot is being migrated and the dead-letter stream has moved but
/// the stream has not, the script gets `TRYAGAIN` (its keys are on two nodes); the move then goes
/// in steps, each following the migration's `ASK`: the poison entry reaches the dead-letter stream
/// during the migration, not after it. Once the migration ends, each poison entry is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_during_a_slot_migration_moves_in_steps_instead_of_waiting_for_it() {
    let cluster = cluster();
    let stream = "{mig}";
    let dlq = "{mig}:dlq";
    let mut con = connect(&cluster).await;
    let app = Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .consumer(refusing_poison(stream))
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    // Both keys exist: the first poison entry moves with the script as usual.
    let first = xadd(&mut con, stream, "poison").await;
    millrace_testkit::eventually(WAIT, "the first poison entry moved", || {
        let mut con = con.clone();
        async move {
            dead_letter_sources(&mut con, dlq).await.len() == 1
                && pending(&mut con, stream).await == 0
        }
    })
    .await;

    // The slot migrates; only the dead-letter stream has moved so far.
    let slot = cluster.keyslot(stream);
    let from = cluster.owner_of_key(stream);
    let to = cluster
        .masters()
        .into_iter()
        .find(|&m| m != from)
        .expect("another master");
    let mut migration = cluster.start_migration(slot, to);
    on_node(
        &cluster,
        from,
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(cluster.node(to).port())
            .arg("")
            .arg(0)
            .arg(5_000)
            .arg("KEYS")
            .arg(dlq),
    );
    let second = xadd(&mut con, stream, "poison").await;
    millrace_testkit::eventually(WAIT, "the poison entry moved during the migration", || {
        let mut con = con.clone();
        async move {
            dead_letter_sources(&mut con, dlq).await.len() == 2
                && pending(&mut con, stream).await == 0
        }
    })
    .await;
    assert_eq!(
        migration.keys_left(),
        1,
        "the stream is still on the source: the move did not wait for the migration"
    );
    tokio::task::block_in_place(|| {
        migration.move_all_keys();
        migration.finish();
    });
    let mut con = connect(&cluster).await;
    assert_eq!(
        dead_letter_sources(&mut con, dlq).await,
        vec![first, second],
        "each poison entry once"
    );
    assert_eq!(pending(&mut con, stream).await, 0);
    for h in app.health() {
        assert_eq!(h.dead_letters_waiting, 0, "{h:?}");
    }
    app.shutdown().await.expect("shutdown");
}

/// What a multi-stream handler saw: (stream, entry id) pairs, repeats being duplicates.
#[derive(Clone, Default)]
struct Handled(std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>);

impl Handled {
    fn counts(&self) -> std::collections::HashMap<(String, String), usize> {
        let mut counts = std::collections::HashMap::new();
        for key in self.0.lock().unwrap().iter() {
            *counts.entry(key.clone()).or_default() += 1;
        }
        counts
    }
}

/// Runs `cmd` on cluster node `index` directly.
fn on_node(cluster: &millrace_testkit::RedisCluster, index: usize, cmd: &mut redis::Cmd) {
    let mut con = cluster
        .node(index)
        .client()
        .get_connection()
        .expect("a connection to the node");
    let _: redis::Value = cmd.query(&mut con).expect("the node command");
}

/// Waits until the replica of `master` has every write `master` accepted so far. `WAIT` counts
/// only the writes of the connection it is sent on, so it follows a write of its own: the
/// replication stream is in order, so once the replica has that one it has the earlier ones, the
/// dead letters millrace added included. (A `WAIT` alone on a fresh connection returns at once.)
fn replicated(cluster: &millrace_testkit::RedisCluster, master: usize) {
    let key = (0..10_000)
        .map(|i| format!("replication-probe-{i}"))
        .find(|k| cluster.owner_of_key(k) == master)
        .expect("a key on the master");
    let mut con = cluster
        .node(master)
        .client()
        .get_connection()
        .expect("a connection to the master");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(1)
        .query(&mut con)
        .expect("SET");
    let replicas: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(30_000)
        .query(&mut con)
        .expect("WAIT");
    assert_eq!(
        replicas, 1,
        "the replica has the master's writes before the kill"
    );
}

/// The master holding the dead-letter streams of tenants on the other masters is killed (`kill -9`)
/// under load, with plain names, so every dead letter moves in two steps across masters. While it
/// is down (its replica is kept from taking over until the test says so), the tenants' good
/// entries go on being handled and acknowledged, each once; the entries to dead-letter wait,
/// pending and not handed to the handler again. Once the replica is promoted the moves complete:
/// each poison entry once in its dead-letter stream, nothing pending, no restart.
///
/// The healthy masters keep serving their slots while one shard has no master
/// (`cluster-require-full-coverage no`): with Redis's default (`yes`) every master refuses every
/// command once the dead master has been failing for a node timeout (1.5 s here), so "no stall on
/// healthy masters" could only be checked in a race with that timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_dead_letter_master_stalls_and_duplicates_nothing_on_healthy_masters() {
    crate::common::init_tracing();
    let cluster = millrace_testkit::RedisCluster::builder()
        .arg("--cluster-require-full-coverage")
        .arg("no")
        .start();
    dead_letter_master_killed(cluster).await;
}

/// The same at Redis's defaults: a `cluster-node-timeout` of 15 s, and full coverage required. The
/// outage lasts longer (the replica is promoted only after its master was seen failing for a node
/// timeout, and from then until the promotion every master answers `CLUSTERDOWN`); the load
/// during the outage is handled well within the first 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_dead_letter_master_at_the_default_15_s_node_timeout() {
    crate::common::init_tracing();
    let cluster = millrace_testkit::RedisCluster::builder()
        .node_timeout(Duration::from_secs(15))
        .settle_timeout(Duration::from_secs(120))
        .start();
    dead_letter_master_killed(cluster).await;
}

#[allow(clippy::print_stderr)]
async fn dead_letter_master_killed(mut cluster: millrace_testkit::RedisCluster) {
    let dead = cluster.masters()[0];
    let streams: Vec<String> = (0..100_000)
        .map(|i| format!("tenant:{i}:events"))
        .filter(|s| {
            cluster.owner_of_key(s) != dead && cluster.owner_of_key(format!("{s}:dlq")) == dead
        })
        .take(6)
        .collect();
    assert_eq!(streams.len(), 6);
    let con = connect(&cluster).await;
    let handled = Handled::default();
    let recorder = handled.clone();
    let app = Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .multi_stream(
            millrace::MultiStreamSpec::new(streams.clone(), "g", "c")
                .start_id(StartId::Beginning)
                .block(Duration::from_millis(500))
                .handler(move |batch: Batch<RawEntry>| {
                    let stream = batch.meta.stream.to_string();
                    for entry in &batch {
                        recorder
                            .0
                            .lock()
                            .unwrap()
                            .push((stream.clone(), entry.id.to_string()));
                        if entry.message.get_str("note") == Some("poison") {
                            batch.dead_letter(entry.id, "poison: refused on purpose");
                        }
                    }
                    async { HandlerResult::Ok }
                }),
        )
        .start()
        .await
        .expect("start");
    wait_running(&app).await;

    // Load: every round one entry per tenant, every fifth of them poison.
    let mut written: Vec<(String, String, bool)> = Vec::new();
    let mut round = 0usize;
    let mut produce = |con: ClusterConnection, rounds: usize| {
        let streams = streams.clone();
        let start = round;
        round += rounds;
        async move {
            let mut con = con;
            let mut out = Vec::new();
            for r in start..start + rounds {
                for (i, stream) in streams.iter().enumerate() {
                    let poison = (r + i) % 5 == 0;
                    let id = xadd(&mut con, stream, if poison { "poison" } else { "fine" }).await;
                    out.push((stream.clone(), id, poison));
                }
            }
            out
        }
    };
    written.extend(produce(con.clone(), 20).await);
    let wait_handled = |written: Vec<(String, String, bool)>, what: &'static str| {
        let handled = handled.clone();
        async move {
            millrace_testkit::eventually(WAIT, what, || {
                let counts = handled.counts();
                let done = written
                    .iter()
                    .all(|(s, id, _)| counts.contains_key(&(s.clone(), id.clone())));
                async move { done }
            })
            .await;
        }
    };
    wait_handled(written.clone(), "the entries before the kill handled").await;
    // The moves so far have landed (a move follows its handler call), and reached the replica
    // before the master dies: replication is asynchronous, and a dead letter the master had not
    // passed on, acknowledged in its stream already, would die with it.
    for stream in &streams {
        let dlq = format!("{stream}:dlq");
        let poisons = written.iter().filter(|(s, _, p)| s == stream && *p).count();
        millrace_testkit::eventually(WAIT, "the moves before the kill made", || {
            let (mut con, stream, dlq) = (con.clone(), stream.clone(), dlq.clone());
            async move {
                pending(&mut con, &stream).await == 0
                    && dead_letter_sources(&mut con, &dlq).await.len() == poisons
            }
        })
        .await;
    }
    replicated(&cluster, dead);

    // The replica may not take over until told: the outage lasts as long as the test needs.
    let replica = cluster.replicas_of(dead)[0];
    on_node(
        &cluster,
        replica,
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-replica-no-failover")
            .arg("yes"),
    );
    cluster.kill(dead);
    let during = produce(con.clone(), 20).await;
    written.extend(during.clone());
    wait_handled(during, "the entries written during the outage handled").await;
    let waiting: u64 = app.health().iter().map(|h| h.dead_letters_waiting).sum();
    assert!(
        waiting > 0,
        "the outage's dead letters wait for their master (none can have moved)"
    );
    // No stall: every good entry written during the outage is acknowledged while the master is
    // still down (an acknowledgement goes out after its batch was handled, so it is awaited).
    for stream in &streams {
        let poison_pending = written.iter().filter(|(s, _, p)| s == stream && *p).count() as u64;
        millrace_testkit::eventually(
            WAIT,
            "the good entries acknowledged during the outage",
            || {
                let (mut con, stream) = (con.clone(), stream.clone());
                async move { pending(&mut con, &stream).await <= poison_pending }
            },
        )
        .await;
    }
    assert!(
        !cluster.node(dead).is_running() && cluster.masters().iter().all(|&m| m != replica),
        "still during the outage"
    );

    // The replica takes over; the waiting moves complete, more load meanwhile.
    on_node(
        &cluster,
        replica,
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-replica-no-failover")
            .arg("no"),
    );
    let began = std::time::Instant::now();
    tokio::task::block_in_place(|| cluster.wait_settled());
    eprintln!("replica promoted {:?} after allowing it", began.elapsed());
    // A fresh connection of the test's own, with the slot map of now (the old one may still be
    // finding its way around the dead node).
    let mut con = connect(&cluster).await;
    written.extend(produce(con.clone(), 5).await);
    for stream in &streams {
        let dlq = format!("{stream}:dlq");
        let poisons: Vec<String> = written
            .iter()
            .filter(|(s, _, p)| s == stream && *p)
            .map(|(_, id, _)| id.clone())
            .collect();
        millrace_testkit::eventually(WAIT, "every poison entry moved, nothing pending", || {
            let (mut con, stream, dlq, n) =
                (con.clone(), stream.clone(), dlq.clone(), poisons.len());
            async move {
                pending(&mut con, &stream).await == 0
                    && dead_letter_sources(&mut con, &dlq).await.len() >= n
            }
        })
        .await;
        let mut sources = dead_letter_sources(&mut con, &dlq).await;
        sources.sort();
        let mut expected = poisons.clone();
        expected.sort();
        assert_eq!(
            sources, expected,
            "{stream}: each poison entry once in {dlq}"
        );
    }
    let counts = handled.counts();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(counts.len(), written.len(), "every entry handled");
    for h in app.health() {
        assert_eq!(h.restarts_total, 0, "{h:?}");
        assert_eq!(h.dead_letters_waiting, 0, "{h:?}");
    }
    app.shutdown().await.expect("shutdown");
}

/// Twenty tenants with plain names: one warning that their dead letters move in two steps, for the
/// set, suggesting `tenant:{<id>}:events`; twenty with hash-tagged names: none.
#[tokio::test(flavor = "current_thread")]
async fn the_two_step_warning_comes_once_per_consumer_set_and_names_the_tagged_form() {
    let captured = millrace_tests::Logs::capture("millrace=info");
    let cluster = millrace_testkit::RedisCluster::builder()
        .replicas_per_master(0)
        .start();
    let plain: Vec<String> = (0..20).map(|i| format!("tenant:{i}:events")).collect();
    let tagged: Vec<String> = (0..20).map(|i| format!("tenant:{{{i}}}:events")).collect();
    let set = |streams: &[String], consumer: &str| {
        millrace::MultiStreamSpec::new(streams.to_vec(), "g", consumer)
            .block(Duration::from_millis(500))
            .handler(|_batch: Batch<RawEntry>| async { HandlerResult::Ok })
    };
    let app = Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .multi_stream(set(&plain, "plain"))
        .multi_stream(set(&tagged, "tagged"))
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    app.shutdown().await.expect("shutdown");
    let logs = captured.text();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("move in two steps"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(warnings[0].contains("tenant:{"), "{}", warnings[0]);
    assert!(warnings[0].contains("consumer=plain"), "{}", warnings[0]);
}
