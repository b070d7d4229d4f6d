//! The `orders` example on a cluster: `--redis-cluster URL,URL…` for produce, work and report, as
//! the acceptance runs drive it. SIGTERM still drains and exits 0; a worker killed with kill -9 and
//! restarted under its name replays its own entries, and one that never returns has its entries
//! claimed by the other.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

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
