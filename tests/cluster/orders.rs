//! The `orders` example on a cluster: `--redis-cluster URL,URL…` for produce, work and report, as
//! the acceptance runs drive it. SIGTERM still drains and exits 0; a worker killed with kill -9 and
//! restarted under its name replays its own entries, and one that never returns has its entries
//! claimed by the other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::common::{cluster, WAIT};

/// The `orders` example binary next to this test binary, brought up to date once per run.
fn orders_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| millrace_tests::example_bin("orders"))
}

fn orders(seeds: &str) -> Command {
    let mut cmd = Command::new(orders_bin());
    cmd.arg("--redis-cluster")
        .arg(seeds)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// One number of `orders report`'s JSON line.
fn field(report: &str, name: &str) -> u64 {
    let at = report
        .find(&format!("\"{name}\":"))
        .unwrap_or_else(|| panic!("`{name}` in {report}"));
    report[at + name.len() + 3..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a number")
}

async fn report(seeds: &str) -> String {
    let out = orders(seeds)
        .arg("report")
        .output()
        .await
        .expect("orders report");
    assert!(out.status.success(), "orders report: {}", out.status);
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Spawns `orders work --consumer NAME ARGS…` and waits until it prints "ready".
async fn worker(seeds: &str, name: &str, extra: &[&str]) -> tokio::process::Child {
    let mut child = orders(seeds)
        .args(["work", "--consumer", name])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("orders work");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("ready in time")
        .expect("stdout");
    assert_eq!(ready.as_deref(), Some("ready"), "{name}");
    // Keep reading stdout so the worker never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn processed_at_least(seeds: &str, n: u64) {
    millrace_testkit::eventually(WAIT, &format!("{n} orders processed"), || {
        let seeds = seeds.to_owned();
        async move { field(&report(&seeds).await, "processed") >= n }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_on_a_cluster_lose_nothing_restarted_or_not() {
    let cluster = cluster();
    let seeds = cluster.seed_urls().join(",");
    let produced = orders(&seeds)
        .args(["produce", "--count", "3000"])
        .output()
        .await
        .expect("orders produce");
    assert!(produced.status.success(), "orders produce: {produced:?}");
    let flags = [
        "--work-ms",
        "5",
        "--count",
        "20",
        "--claim-interval",
        "200ms",
        "--claim-min-idle",
        "1s",
        "--max-deliveries",
        "1000",
    ];
    let mut w1 = worker(&seeds, "w1", &flags).await;
    let mut w2 = worker(&seeds, "w2", &flags).await;
    processed_at_least(&seeds, 500).await;
    // w1 is killed and comes back under its name: it replays its own pending entries.
    w1.start_kill().expect("kill -9 w1");
    w1.wait().await.expect("w1 gone");
    processed_at_least(&seeds, 1000).await;
    let mut w1 = worker(&seeds, "w1", &flags).await;
    processed_at_least(&seeds, 1500).await;
    // w2 is killed for good: w1 claims what w2 held.
    w2.start_kill().expect("kill -9 w2");
    w2.wait().await.expect("w2 gone");
    millrace_testkit::eventually(WAIT, "every order processed, none pending", || {
        let seeds = seeds.clone();
        async move {
            let r = report(&seeds).await;
            field(&r, "lost") == 0 && field(&r, "pending") == 0
        }
    })
    .await;
    let last = report(&seeds).await;
    eprintln!("workers killed on a cluster: {last}");
    assert_eq!(field(&last, "processed"), 3000, "{last}");
    // At most what the killed workers held (fetched ahead and in flight) comes back twice.
    assert!(field(&last, "duplicates") <= 2 * 4 * 20, "{last}");
    w1.start_kill().expect("kill w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_produces_works_and_reports_on_a_cluster() {
    let cluster = cluster();
    let seeds = cluster.seed_urls().join(",");
    let produced = orders(&seeds)
        .args(["produce", "--count", "500", "--poison-rate", "0.02"])
        .output()
        .await
        .expect("orders produce");
    assert!(produced.status.success(), "orders produce: {produced:?}");

    let mut worker = orders(&seeds)
        .args(["work", "--consumer", "w1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("orders work");
    let mut lines = BufReader::new(worker.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("ready in time")
        .expect("stdout");
    assert_eq!(ready.as_deref(), Some("ready"));
    millrace_testkit::eventually(WAIT, "every order processed or dead-lettered", || {
        let seeds = seeds.clone();
        async move {
            let r = report(&seeds).await;
            field(&r, "lost") == 0 && field(&r, "pending") == 0
        }
    })
    .await;
    let pid = worker.id().expect("a running worker");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = tokio::time::timeout(WAIT, worker.wait())
        .await
        .expect("the worker exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "SIGTERM drains and exits 0: {status}");

    let last = report(&seeds).await;
    assert_eq!(field(&last, "produced"), 500, "{last}");
    assert_eq!(
        (field(&last, "lost"), field(&last, "pending")),
        (0, 0),
        "{last}"
    );
    assert!(
        field(&last, "dead_lettered") > 0,
        "poison orders dead-lettered: {last}"
    );
    eprintln!("orders on a cluster: {last}");
}

/// `orders produce --pipeline 50` spreading orders over 8 streams of one slot while that slot
/// migrates key by key (the streams and the counter): every order is stored once, in its stream,
/// on the slot's new master, and no copy of a stream stays on the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_produce_during_a_key_by_key_migration_splits_no_stream() {
    const COUNT: u64 = 60_000;
    let cluster = cluster();
    let seeds = cluster.seed_urls().join(",");
    let slot = cluster.keyslot("{orders}");
    let from = cluster.owner_of_slot(slot);
    let to = *cluster.masters().iter().find(|&&m| m != from).unwrap();
    let mut produce = orders(&seeds)
        .args(["--streams", "8", "produce", "--stream", "{orders}:new"])
        .args([
            "--count",
            &COUNT.to_string(),
            "--pipeline",
            "50",
            "--rate",
            "5000",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("orders produce");
    let mut con = crate::common::connect(&cluster).await;
    let counter = "{orders}:new:produced";
    // Waits until the producer has confirmed `more` orders beyond what it had.
    let progressed = |more: u64| {
        let con = con.clone();
        async move {
            let now = || {
                let mut con = con.clone();
                async move {
                    redis::cmd("GET")
                        .arg(counter)
                        .query_async::<Option<u64>>(&mut con)
                        .await
                        .expect("GET the counter")
                        .unwrap_or(0)
                }
            };
            let target = now().await + more;
            millrace_testkit::eventually(WAIT, "the producer to go on", || {
                let now = now();
                async move { now.await >= target }
            })
            .await;
        }
    };
    progressed(500).await;
    let mut migration = cluster.start_migration(slot, to);
    loop {
        progressed(150).await;
        if tokio::task::block_in_place(|| migration.move_keys(1)) == 0 {
            break;
        }
    }
    progressed(150).await;
    tokio::task::block_in_place(|| migration.finish());
    let status = tokio::time::timeout(Duration::from_secs(120), produce.wait())
        .await
        .expect("orders produce ends")
        .expect("wait");
    assert!(status.success(), "orders produce: {status}");

    let left: Vec<String> = {
        let mut source = cluster
            .node(from)
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to the old master");
        redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut source)
            .await
            .expect("CLUSTER GETKEYSINSLOT")
    };
    assert!(left.is_empty(), "keys left on the old master: {left:?}");
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for i in 0..8u64 {
        let stream = format!("{{orders}}:new:{i}");
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query_async(&mut con)
            .await
            .expect("XRANGE");
        for (_, fields) in entries {
            let (_, id) = fields
                .iter()
                .find(|(k, _)| k == "order_id")
                .expect("order_id");
            let id: u64 = id.parse().expect("a number");
            assert_eq!(id % 8, i, "order {id} in {stream}");
            *seen.entry(id).or_default() += 1;
        }
    }
    let lost = (0..COUNT).filter(|id| !seen.contains_key(id)).count();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "orders produce during a migration: stored {}, lost {lost}, duplicates {duplicates}",
        seen.len()
    );
    assert_eq!((lost, duplicates), (0, 0));
}
