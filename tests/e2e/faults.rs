//! The fault suite: real worker processes (examples/orders.rs) under real faults.
//!
//! Each scenario starts its own redis-server, produces a few thousand orders with `orders produce`,
//! runs `orders work` child processes, injects one kind of fault while they work (SIGKILL of a worker,
//! handler panics and errors, SIGKILL of Redis, dropped connections, stalls, a clean SIGTERM, poison
//! orders), then drains: it polls `orders report` until nothing is pending and every order is either
//! processed or dead-lettered. It then checks that nothing was lost, that the duplicates stay within
//! the bound the scenario allows (each bound is argued where it is asserted) and that the group's
//! pending list is empty.
//!
//! The `orders` binary is the one next to this test binary (`target/<profile>/examples/orders`,
//! built by `cargo build --workspace --examples`); if it is missing it is built first.
//! Each scenario prints one line with its numbers; see them with `-- faults --nocapture`.
#![allow(clippy::print_stderr)]

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use millrace::dead_letter::DeadLetter;
use millrace::streams::{self, ReadItem};
use millrace::{EntryId, RawEntry};
use millrace_testkit::{eventually, RedisServer};
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::AsyncConnectionConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::{init_tracing, WAIT};

const STREAM: &str = "orders:new";
const DLQ: &str = "orders:new:dlq";
const GROUP: &str = "order_processors";
const PROCESSED: &str = "orders:processed";

/// `--count` of every worker; the duplicate bounds are multiples of it.
const COUNT: u64 = 20;
/// Batches per worker whose fate a fault can leave in doubt (handled, not yet acknowledged): the
/// one being handled, the ids of up to two batches in the XACK in flight, and up to two more
/// batches' ids held back until it returns (millrace's ack hold limit is 2 × count).
const IN_DOUBT: u64 = 5;
/// How long a drain may take before the scenario fails (a passing drain takes a few seconds).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a (debug) worker may take to connect and announce "ready" on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Worker options shared by the scenarios: batches of [`COUNT`], XAUTOCLAIM after 1 s idle, checked
/// every 200 ms, so entries left by a dead or failing worker come back within about a second.
fn fast_claims() -> Vec<String> {
    args(&[
        "--count",
        &COUNT.to_string(),
        "--claim-min-idle",
        "1s",
        "--claim-interval",
        "200ms",
    ])
}

/// `fast_claims` plus a `--max-deliveries` high enough that no healthy order is dead-lettered when
/// every connection drop or stall re-delivers the batches in flight: those scenarios test loss and
/// duplicates, and assert that the dead-letter stream stays empty.
fn fast_claims_no_dlq() -> Vec<String> {
    let mut a = fast_claims();
    a.extend(args(&["--max-deliveries", "1000"]));
    a
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// The `orders` example binary next to this test binary, brought up to date once per run.
pub(crate) fn orders_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| millrace_tests::example_bin("orders"))
}

/// What `orders report` prints.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Report {
    produced: u64,
    processed: u64,
    duplicates: u64,
    dead_lettered: u64,
    pending: u64,
    lost: u64,
}

impl Report {
    /// Parses the one flat JSON object of integers that `orders report` prints.
    fn parse(json: &str) -> Option<Report> {
        let body = json.trim().strip_prefix('{')?.strip_suffix('}')?;
        let mut r = Report::default();
        let mut seen = 0;
        for pair in body.split(',') {
            let (key, value) = pair.split_once(':')?;
            let value: u64 = value.trim().parse().ok()?;
            let field = match key.trim().trim_matches('"') {
                "produced" => &mut r.produced,
                "processed" => &mut r.processed,
                "duplicates" => &mut r.duplicates,
                "dead_lettered" => &mut r.dead_lettered,
                "pending" => &mut r.pending,
                "lost" => &mut r.lost,
                _ => continue,
            };
            *field = value;
            seen += 1;
        }
        (seen == 6).then_some(r)
    }
}

/// One scenario's redis-server and the `orders` processes run against it.
struct Drill {
    name: &'static str,
    server: RedisServer,
    url: String,
    con: ConnectionManager,
    started: Instant,
}

impl Drill {
    async fn new(name: &'static str) -> Drill {
        Drill::with(name, RedisServer::builder()).await
    }

    async fn with(name: &'static str, builder: millrace_testkit::ServerBuilder) -> Drill {
        init_tracing();
        let bin = tokio::task::spawn_blocking(orders_bin)
            .await
            .expect("locating the orders binary");
        assert!(bin.exists());
        let server = builder.start();
        let url = server.url();
        let con = ConnectionManager::new_with_config(server.client(), patient_manager())
            .await
            .expect("connecting to the test server");
        Drill {
            name,
            server,
            url,
            con,
            started: Instant::now(),
        }
    }

    /// SIGKILLs redis-server, starts it again on the same port and data directory (it loads the
    /// AOF), and reconnects the test's own connection.
    async fn kill_and_restart_redis(&mut self) {
        self.server.kill();
        self.server.restart();
        self.con = ConnectionManager::new_with_config(self.server.client(), patient_manager())
            .await
            .expect("reconnecting to the restarted server");
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.server.dir().join(format!("{name}.log"))
    }

    fn command(&self, log: &str) -> Command {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(log))
            .expect("opening a process log");
        let mut cmd = Command::new(orders_bin());
        cmd.arg("--redis")
            .arg(&self.url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        cmd
    }

    /// `orders produce --count N --poison-rate P`, to completion.
    async fn produce(&self, count: u64, poison_rate: f64) {
        let out = self
            .command("produce")
            .args(["produce", "--count", &count.to_string()])
            .args(["--poison-rate", &poison_rate.to_string()])
            .output()
            .await
            .expect("running orders produce");
        assert!(
            out.status.success(),
            "orders produce failed: {}\n{}",
            out.status,
            tail(&self.log_path("produce"), 30)
        );
    }

    /// Spawns `orders work --consumer NAME ARGS…` and waits until it prints "ready".
    async fn worker(&self, name: &str, extra: &[String]) -> Worker {
        let mut child = self
            .command(name)
            .args(["work", "--consumer", name])
            .args(extra)
            .spawn()
            .expect("spawning orders work");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let mut w = Worker {
            name: name.to_owned(),
            child,
            lines,
            log: self.log_path(name),
        };
        w.wait_for_line("ready", READY_TIMEOUT).await;
        w
    }

    /// Runs `orders report`; an error while Redis is down or a connection was just killed.
    async fn report(&self) -> Result<Report, String> {
        let out = self
            .command("report")
            .arg("report")
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("orders report: {}", out.status));
        }
        stdout
            .lines()
            .rev()
            .find_map(Report::parse)
            .ok_or_else(|| format!("unexpected report: {stdout}"))
    }

    /// Polls `orders report` until all `produced` orders are in, nothing is pending and every order
    /// is processed or dead-lettered (`lost == 0`). Fails with the last report and the workers' logs
    /// if that does not happen within [`DRAIN_TIMEOUT`] or if a worker exits meanwhile.
    async fn drain(&self, produced: u64, workers: &mut [&mut Worker]) -> Report {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut last;
        loop {
            for w in workers.iter_mut() {
                if let Ok(Some(status)) = w.child.try_wait() {
                    panic!(
                        "{}: worker {} exited ({status}) before the drain\n{}",
                        self.name,
                        w.name,
                        w.tail()
                    );
                }
            }
            last = match self.report().await {
                Ok(r) if r.produced == produced && r.pending == 0 && r.lost == 0 => return r,
                other => other,
            };
            if Instant::now() >= deadline {
                let logs: String = workers.iter().map(|w| w.tail()).collect();
                panic!(
                    "{}: not drained within {DRAIN_TIMEOUT:?}; last report: {last:?}\n{logs}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until at least `n` distinct orders have been processed.
    async fn processed_at_least(&self, n: u64) {
        eventually(WAIT, &format!("{n} orders processed"), || {
            let mut con = self.con.clone();
            async move {
                redis::cmd("HLEN")
                    .arg(PROCESSED)
                    .query_async::<u64>(&mut con)
                    .await
                    .is_ok_and(|len| len >= n)
            }
        })
        .await;
    }

    /// The group's pending count (XPENDING summary).
    async fn group_pending(&self) -> u64 {
        let mut con = self.con.clone();
        group_pending(&mut con).await
    }

    /// Ids pending for one consumer.
    async fn pending_of(&self, consumer: &str) -> Vec<EntryId> {
        let mut con = self.con.clone();
        streams::xpending_range(
            &mut con,
            STREAM,
            GROUP,
            None,
            EntryId::MIN,
            EntryId::new(u64::MAX, u64::MAX),
            100_000,
            Some(consumer),
        )
        .await
        .expect("XPENDING")
        .into_iter()
        .map(|r| r.id)
        .collect()
    }

    /// The order ids of the orders whose quantity is not a number (`produce --poison-rate`).
    async fn poison_order_ids(&self) -> HashSet<u64> {
        let mut con = self.con.clone();
        entries(&mut con, STREAM)
            .await
            .iter()
            .filter(|e| {
                e.get_str("quantity")
                    .is_some_and(|q| q.parse::<u32>().is_err())
            })
            .map(order_id)
            .collect()
    }

    /// The order ids in the dead-letter stream, one per dead letter (duplicates kept).
    async fn dead_lettered_order_ids(&self) -> Vec<u64> {
        let mut con = self.con.clone();
        entries(&mut con, DLQ)
            .await
            .iter()
            .map(|e| {
                let dl = DeadLetter::parse(e).expect("a dead letter with its metadata");
                assert_eq!(dl.source_stream, STREAM);
                assert_eq!(dl.group, GROUP);
                order_id(&RawEntry::new(e.id, dl.fields))
            })
            .collect()
    }

    /// Asserts what every scenario ends with: nothing lost, at most `max_duplicates`, exactly
    /// `dead_lettered` dead letters, an empty pending list. Prints the scenario's numbers.
    async fn check(&self, r: Report, produced: u64, max_duplicates: u64, dead_lettered: u64) {
        eprintln!(
            "faults::{}: {r:?} (duplicates bound {max_duplicates}) in {:.1?}",
            self.name,
            self.started.elapsed()
        );
        assert_eq!(r.produced, produced, "{}: {r:?}", self.name);
        assert_eq!(r.lost, 0, "{}: {r:?}", self.name);
        assert_eq!(
            r.processed + dead_lettered,
            produced,
            "{}: every order processed or dead-lettered once: {r:?}",
            self.name
        );
        assert!(
            r.duplicates <= max_duplicates,
            "{}: {} duplicates, more than the bound {max_duplicates}: {r:?}",
            self.name,
            r.duplicates
        );
        assert_eq!(
            r.dead_lettered, dead_lettered,
            "{}: dead letters: {r:?}",
            self.name
        );
        assert_eq!(self.group_pending().await, 0, "{}: group PEL", self.name);
    }
}

/// A running `orders work` process.
struct Worker {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
}

impl Worker {
    fn printed(&self, line: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l == line)
    }

    async fn wait_for_line(&mut self, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.printed(line) {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader task collect what the process printed last.
                tokio::task::yield_now().await;
                if self.printed(line) {
                    return;
                }
                panic!(
                    "worker {} exited ({status}) before printing {line:?}\n{}",
                    self.name,
                    self.tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not print {line:?} within {timeout:?}\n{}",
                self.name,
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, like a crash, and reap it.
    async fn sigkill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reaping a killed worker");
    }

    /// SIGTERM; waits for the graceful stop ("stopped") and the exit, and returns its status.
    async fn sigterm(&mut self) -> ExitStatus {
        let pid = self.child.id().expect("a running worker");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("running kill -TERM");
        assert!(status.success(), "kill -TERM {pid}: {status}");
        let exit = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "worker {} did not exit within {WAIT:?} of SIGTERM\n{}",
                    self.name,
                    self.tail()
                )
            })
            .expect("waiting for the worker");
        self.wait_for_line("stopped", Duration::from_secs(1)).await;
        exit
    }

    fn tail(&self) -> String {
        format!(
            "--- worker {} (last lines of {}) ---\n{}",
            self.name,
            self.log.display(),
            tail(&self.log, 40)
        )
    }
}

fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n") + "\n"
        }
        Err(e) => format!("<cannot read {}: {e}>\n", path.display()),
    }
}

async fn group_pending<C: ConnectionLike + Send>(con: &mut C) -> u64 {
    let r: redis::RedisResult<(u64, redis::Value, redis::Value, redis::Value)> =
        redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .query_async(con)
            .await;
    r.expect("XPENDING summary").0
}

async fn entries<C: ConnectionLike + Send>(con: &mut C, key: &str) -> Vec<RawEntry> {
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(con)
        .await
        .expect("XRANGE");
    streams::parse_entries(v)
        .into_iter()
        .map(|item| match item {
            ReadItem::Entry(e) => e,
            other => panic!("unexpected item in {key}: {other:?}"),
        })
        .collect()
}

fn order_id(e: &RawEntry) -> u64 {
    e.get_str("order_id")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("entry {} has no order_id", e.id))
}

/// A connection without a response timeout, for commands that block on purpose (`DEBUG SLEEP`).
/// The harness's own commands (XRANGE of a whole stream, HGETALL) may take longer than redis-rs's
/// default 500 ms on a loaded 2-core machine.
fn patient_manager() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(30)))
}

async fn patient_connection(server: &RedisServer) -> MultiplexedConnection {
    server
        .client()
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .expect("connecting")
}

// C.2 #4: a worker SIGKILLed mid-load comes back under the same name and its own-PEL replay
// handles what it held.
#[tokio::test]
async fn a_killed_worker_restarted_under_its_name_replays_its_pending_entries() {
    const ORDERS: u64 = 3000;
    const KILLS: u64 = 3;
    let d = Drill::new("sigkill_same_name").await;
    d.produce(ORDERS, 0.0).await;
    // XAUTOCLAIM only after 60 s: within this scenario only the own-PEL replay can bring the killed
    // worker's entries back.
    let mut opts = args(&["--count", &COUNT.to_string(), "--claim-min-idle", "60s"]);
    // 2 ms per batch keeps the worker mid-load at each kill (without it, a fast worker may have
    // handled everything between two polls of the progress).
    opts.extend(args(&["--max-deliveries", "1000", "--work-ms", "2"]));
    let mut w = d.worker("w1", &opts).await;
    for kill in 1..=KILLS {
        d.processed_at_least(kill * ORDERS / (KILLS + 1)).await;
        w.sigkill().await;
        let held = d.pending_of("w1").await;
        assert!(
            !held.is_empty(),
            "killed mid-load: the read-ahead batch at least is pending"
        );
        w = d.worker("w1", &opts).await;
        // The restarted worker handles what it held before it reads anything new.
        eventually(WAIT, "the entries held at the kill are handled", || {
            let held = held.clone();
            let d = &d;
            async move {
                let now: HashSet<EntryId> = d.pending_of("w1").await.into_iter().collect();
                held.iter().all(|id| !now.contains(id))
            }
        })
        .await;
    }
    let r = d.drain(ORDERS, &mut [&mut w]).await;
    // Bound: per kill, at most IN_DOUBT batches were recorded (HINCRBY) but not acked. The
    // read-ahead batches are never recorded before they are handled.
    d.check(r, ORDERS, KILLS * IN_DOUBT * COUNT, 0).await;
}

// C.2 #5: a worker SIGKILLed for good; the survivor's XAUTOCLAIM takes its entries after
// claim_min_idle.
#[tokio::test]
async fn a_killed_worker_that_never_returns_is_covered_by_xautoclaim() {
    const ORDERS: u64 = 3000;
    let d = Drill::new("sigkill_never_returns").await;
    d.produce(ORDERS, 0.0).await;
    // w1 never finishes a batch: whenever it is killed it holds its batch and read-ahead, however
    // fast or slow the machine is. w2 handles the rest meanwhile.
    let mut stuck = fast_claims();
    stuck.extend(args(&["--work-ms", "600000"]));
    let mut w1 = d.worker("w1", &stuck).await;
    let mut w2 = d.worker("w2", &fast_claims()).await;
    eventually(WAIT, "w1 holds entries", || async {
        !d.pending_of("w1").await.is_empty()
    })
    .await;
    d.processed_at_least(ORDERS / 3).await;
    w1.sigkill().await;
    let killed_at = Instant::now();
    let held = d.pending_of("w1").await;
    assert!(!held.is_empty(), "killed mid-load: w1 held entries");
    eventually(WAIT, "w2 claimed everything w1 held", || async {
        d.pending_of("w1").await.is_empty()
    })
    .await;
    let reclaimed_in = killed_at.elapsed();
    let r = d.drain(ORDERS, &mut [&mut w2]).await;
    eprintln!(
        "faults::sigkill_never_returns: {} entries held by w1 reclaimed {reclaimed_in:.1?} after the kill",
        held.len()
    );
    // Bound: w1 recorded at most two batches it had not acked when it died (the one being handled
    // and the one whose XACK was in flight); w2 records them again.
    d.check(r, ORDERS, IN_DOUBT * COUNT, 0).await;
}

// C.2 #2 and #19: handler panics (the supervisor restarts the consumer, which replays its PEL) and
// handler errors (the batch stays pending and is claimed back) lose nothing.
#[tokio::test]
async fn handler_panics_and_errors_lose_nothing() {
    const ORDERS: u64 = 3000;
    let d = Drill::new("panics_and_errors").await;
    d.produce(ORDERS, 0.0).await;
    let mut opts = fast_claims_no_dlq();
    opts.extend(args(&["--panic-rate", "0.05", "--fail-rate", "0.05"]));
    let mut w1 = d.worker("w1", &opts).await;
    let mut w2 = d.worker("w2", &opts).await;
    let r = d.drain(ORDERS, &mut [&mut w1, &mut w2]).await;
    // Bound 0: the handler panics or fails before it records anything, and records a batch only in
    // the call that returns Ok, which is then acked with no fault in between. A batch is claimed by
    // the other worker only after 1 s idle, far more than handling one takes.
    d.check(r, ORDERS, 0, 0).await;
}

// C.2 #8: Redis SIGKILLed and restarted (AOF, fsync always) twice during load.
#[tokio::test]
async fn redis_killed_and_restarted_with_fsync_always_loses_nothing() {
    const ORDERS: u64 = 3000;
    const WORKERS: u64 = 2;
    const KILLS: u64 = 2;
    let mut d = Drill::with("redis_sigkill", RedisServer::builder().appendonly(true)).await;
    d.produce(ORDERS, 0.0).await;
    let mut w1 = d.worker("w1", &fast_claims_no_dlq()).await;
    let mut w2 = d.worker("w2", &fast_claims_no_dlq()).await;
    for kill in 1..=KILLS {
        d.processed_at_least(kill * ORDERS / (KILLS + 1)).await;
        d.kill_and_restart_redis().await;
    }
    let r = d.drain(ORDERS, &mut [&mut w1, &mut w2]).await;
    // Bound: with fsync always every reply the workers saw is durable, so a kill only leaves
    // recorded-but-unacked batches: at most two per worker per kill (the one being handled and the
    // one whose XACK was in flight).
    d.check(r, ORDERS, KILLS * WORKERS * IN_DOUBT * COUNT, 0)
        .await;
}

// C.2 #11: every client connection dropped (`CLIENT KILL TYPE normal`) again and again during load.
#[tokio::test]
async fn connections_killed_repeatedly_lose_nothing() {
    const ORDERS: u64 = 4000;
    const WORKERS: u64 = 2;
    const KILLS: u64 = 6;
    let d = Drill::new("client_kill").await;
    d.produce(ORDERS, 0.0).await;
    let mut w1 = d.worker("w1", &fast_claims_no_dlq()).await;
    let mut w2 = d.worker("w2", &fast_claims_no_dlq()).await;
    d.processed_at_least(ORDERS / 8).await;
    let mut every = tokio::time::interval(Duration::from_millis(300));
    for _ in 0..KILLS {
        every.tick().await;
        let mut con = d.con.clone();
        // SKIPME yes (the default) spares this connection.
        let killed: redis::RedisResult<u64> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut con)
            .await;
        killed.expect("CLIENT KILL TYPE normal");
    }
    let r = d.drain(ORDERS, &mut [&mut w1, &mut w2]).await;
    // Bound: a dropped connection can cut between a batch's HINCRBY pipeline and its XACK (or lose
    // the reply of either): at most two batches per worker per kill (the one being handled and the
    // one whose XACK was in flight).
    d.check(r, ORDERS, KILLS * WORKERS * IN_DOUBT * COUNT, 0)
        .await;
}

// C.2 #16: `CLIENT PAUSE 1500 WRITE` during load: reads, acks and the handler's writes stall.
#[tokio::test]
async fn a_write_pause_during_load_loses_nothing() {
    const ORDERS: u64 = 3000;
    const WORKERS: u64 = 2;
    const PAUSES: u64 = 2;
    let d = Drill::new("client_pause").await;
    d.produce(ORDERS, 0.0).await;
    let mut w1 = d.worker("w1", &fast_claims_no_dlq()).await;
    let mut w2 = d.worker("w2", &fast_claims_no_dlq()).await;
    for pause in 1..=PAUSES {
        d.processed_at_least(pause * ORDERS / (PAUSES + 1)).await;
        let mut con = d.con.clone();
        let () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1500)
            .arg("WRITE")
            .query_async(&mut con)
            .await
            .expect("CLIENT PAUSE");
        // The pause is over when a write gets through again.
        let _: u64 = redis::cmd("INCR")
            .arg("faults:after-pause")
            .query_async(&mut patient_connection(&d.server).await)
            .await
            .expect("a write after the pause");
    }
    let r = d.drain(ORDERS, &mut [&mut w1, &mut w2]).await;
    // Bound: a stalled handler write can outlast the recorder's response timeout (500 ms): the
    // batch fails, yet its HINCRBYs run when the pause ends, and it is handled again. During one
    // pause a worker can fail that way with the batch in hand and with the read-ahead batch after
    // it (the next read waits for the pause): at most two batches per worker per pause.
    d.check(r, ORDERS, PAUSES * WORKERS * IN_DOUBT * COUNT, 0)
        .await;
}

// C.2 #16: `DEBUG SLEEP 2` (longer than the workers' BLOCK of 1 s) during load: the server answers
// nothing for 2 s.
#[tokio::test]
async fn a_server_stall_longer_than_block_loses_nothing() {
    const ORDERS: u64 = 3000;
    const WORKERS: u64 = 2;
    const STALLS: u64 = 2;
    let d = Drill::new("debug_sleep").await;
    d.produce(ORDERS, 0.0).await;
    let mut opts = fast_claims_no_dlq();
    opts.extend(args(&["--block", "1s"]));
    let mut w1 = d.worker("w1", &opts).await;
    let mut w2 = d.worker("w2", &opts).await;
    let mut con = patient_connection(&d.server).await;
    for stall in 1..=STALLS {
        d.processed_at_least(stall * ORDERS / (STALLS + 1)).await;
        let () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(2)
            .query_async(&mut con)
            .await
            .expect("DEBUG SLEEP 2");
    }
    let r = d.drain(ORDERS, &mut [&mut w1, &mut w2]).await;
    // Bound: as for the write pause, a stalled handler write can time out on the client and still
    // run, for the batch in hand and the read-ahead one: at most two batches per worker per stall.
    d.check(r, ORDERS, STALLS * WORKERS * IN_DOUBT * COUNT, 0)
        .await;
}

// C.2 #31: SIGTERM mid-stream stops the worker cleanly; restarted, it goes on with zero duplicates.
#[tokio::test]
async fn a_clean_stop_and_restart_duplicates_nothing() {
    const ORDERS: u64 = 1500;
    const BOUNCES: u64 = 2;
    let d = Drill::new("clean_bounce").await;
    d.produce(ORDERS, 0.0).await;
    // 20 ms of work per batch of 20: about 1.5 s of work, so each stop lands mid-stream.
    let mut opts = fast_claims_no_dlq();
    opts.extend(args(&["--work-ms", "20"]));
    let mut w = d.worker("w1", &opts).await;
    for bounce in 1..=BOUNCES {
        d.processed_at_least(bounce * ORDERS / (BOUNCES + 1)).await;
        let stopping = Instant::now();
        let status = w.sigterm().await;
        assert!(status.success(), "a clean stop exits 0: {status}");
        let stopped_in = stopping.elapsed();
        let r = d.report().await.expect("report after the stop");
        assert_eq!(r.duplicates, 0, "after clean stop {bounce}: {r:?}");
        assert!(r.lost > 0, "the stop landed mid-stream: {r:?}");
        // What the stopped worker still holds (the released read-ahead batch) was never recorded.
        let mut con = d.con.clone();
        for id in d.pending_of("w1").await {
            let v: redis::Value = redis::cmd("XRANGE")
                .arg(STREAM)
                .arg(id)
                .arg(id)
                .query_async(&mut con)
                .await
                .expect("XRANGE");
            for item in streams::parse_entries(v) {
                if let ReadItem::Entry(e) = item {
                    let recorded: bool = redis::cmd("HEXISTS")
                        .arg(PROCESSED)
                        .arg(order_id(&e))
                        .query_async(&mut con)
                        .await
                        .expect("HEXISTS");
                    assert!(!recorded, "entry {id} was handled but left pending");
                }
            }
        }
        eprintln!("faults::clean_bounce: stop {bounce} took {stopped_in:.1?}; {r:?}");
        w = d.worker("w1", &opts).await;
    }
    let r = d.drain(ORDERS, &mut [&mut w]).await;
    // Bound 0: a clean stop finishes and acks the batch in hand and handles nothing else.
    d.check(r, ORDERS, 0, 0).await;
}

// C.2 #21: poison orders (undecodable quantity) end in the dead-letter stream, each once.
#[tokio::test]
async fn poison_orders_end_in_the_dead_letter_stream() {
    const ORDERS: u64 = 3000;
    let d = Drill::new("poison").await;
    d.produce(ORDERS, 0.01).await;
    let poison = d.poison_order_ids().await;
    assert!(!poison.is_empty(), "1 % of 3000 orders are poison");
    let mut w1 = d.worker("w1", &fast_claims()).await;
    let mut w2 = d.worker("w2", &fast_claims()).await;
    let r = d.drain(ORDERS, &mut [&mut w1, &mut w2]).await;
    // Bound 0: no fault; poison orders are dead-lettered, not retried.
    d.check(r, ORDERS, 0, poison.len() as u64).await;
    let mut dead = d.dead_lettered_order_ids().await;
    dead.sort_unstable();
    let mut expected: Vec<u64> = poison.into_iter().collect();
    expected.sort_unstable();
    assert_eq!(dead, expected, "exactly the poison orders, each once");
}

#[test]
fn reports_are_parsed() {
    let r = Report::parse(
        r#"{"dead_lettered":3,"duplicates":1,"lost":0,"pending":2,"processed":10,"produced":13}"#,
    );
    assert_eq!(
        r,
        Some(Report {
            produced: 13,
            processed: 10,
            duplicates: 1,
            dead_lettered: 3,
            pending: 2,
            lost: 0,
        })
    );
    assert_eq!(Report::parse(r#"{"produced":1}"#), None);
    assert_eq!(Report::parse("produced 3 orders"), None);
}
