//! Soak run: a million orders through four crash-prone `orders work` processes while Redis is
//! SIGKILLed and restarted twice, then the numbers that matter: lost (target 0), duplicates
//! (target ≤ 2 %), dead letters, throughput (target ≥ 10 k orders/s) and worker memory (RSS growth
//! after warm-up, target ≤ 16 MB). A benchmark-style run, not a test; it exits 1 if a target is missed.
//!
//! Run it (it starts its own redis-server with `appendfsync always`; none needs to be running):
//!     cargo run --release -p millrace-examples --example soak -- --orders 1000000
//! Smaller and quicker: `-- --orders 100000`. `-- --help` lists the knobs.
//!
//! What it does:
//! * starts a testkit redis-server (AOF, fsync always) and `--workers` child processes of the
//!   `orders` example (`work --count 100 --panic-rate 0.01`), built next to this binary;
//! * produces the orders in-process with the same fields and counter key as `orders produce`,
//!   paced to `--rate` per second, each pipeline in MULTI/EXEC so that a Redis crash never leaves
//!   half a pipeline behind (after a failure it resumes from the `orders:new:produced` counter);
//!   an order is poison (quantity "many") when a hash of its id falls under `--poison-rate`, so
//!   the expected number of dead letters is known exactly;
//! * SIGKILLs Redis and restarts it (same port and data directory) at 25 % and 60 % of production;
//! * waits for the drain (nothing pending, every order processed or dead-lettered), capped by
//!   `--drain-timeout`, and computes the verdict as `orders report` does.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use millrace::RawEntry;
use millrace_testkit::RedisServer;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::AsyncConnectionConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const STREAM: &str = "orders:new";
const DLQ: &str = "orders:new:dlq";
const GROUP: &str = "order_processors";
const PRODUCED: &str = "orders:new:produced";
const PROCESSED: &str = "orders:processed";

/// Share of the orders after which Redis is SIGKILLed and restarted.
const KILL_AT: [f64; 2] = [0.25, 0.60];
/// Processed orders after which the workers count as warmed up (capped at a tenth of the run).
const WARM_UP: u64 = 100_000;
/// Largest tolerated RSS growth of a worker between warm-up and the end.
const RSS_GROWTH_LIMIT_KB: u64 = 16 * 1024;

type AnyResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser, Debug)]
#[command(about = "Soak: orders through crash-prone workers while Redis is killed twice")]
struct Args {
    /// Orders to produce.
    #[arg(long, default_value_t = 1_000_000)]
    orders: u64,
    /// Worker processes (`orders work`).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// COUNT of each worker's reads.
    #[arg(long, default_value_t = 100)]
    count: u64,
    /// Probability per batch that a worker's handler panics.
    #[arg(long, default_value_t = 0.01)]
    panic_rate: f64,
    /// Share of poison orders (undecodable: they end in the dead-letter stream).
    #[arg(long, default_value_t = 0.001)]
    poison_rate: f64,
    /// Orders produced per second (0: as fast as possible).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Orders per MULTI/EXEC pipeline.
    #[arg(long, default_value_t = 1_000)]
    pipeline: u64,
    /// Longest wait for the drain once production is over.
    #[arg(long, default_value = "5m")]
    drain_timeout: humantime::Duration,
    /// The `orders` example binary (default: next to this binary; under `cargo run` it is built first).
    #[arg(long)]
    orders_bin: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs the soak; true if every target was met.
async fn run(args: Args) -> AnyResult<bool> {
    let bin = orders_bin(args.orders_bin.clone())?;
    let mut server = RedisServer::builder()
        .appendonly(true)
        // Reloading the AOF of a million orders takes a while.
        .startup_timeout(Duration::from_secs(300))
        .start();
    let url = server.url();
    let logs = std::env::temp_dir().join(format!("millrace-soak-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    println!(
        "soak: {} orders, {} workers (count {}, panic-rate {}), poison-rate {}, rate {}, redis {} with appendfsync always",
        args.orders,
        args.workers,
        args.count,
        args.panic_rate,
        args.poison_rate,
        if args.rate == 0 { "unpaced".to_owned() } else { format!("{}/s", args.rate) },
        server.url_without_password(),
    );
    println!("soak: worker logs in {}", logs.display());

    let mut workers = Vec::with_capacity(args.workers);
    for i in 1..=args.workers {
        workers.push(Worker::spawn(
            &bin,
            &url,
            &format!("soak-w{i}"),
            &args,
            &logs,
        )?);
    }
    for w in &mut workers {
        w.wait_ready(Duration::from_secs(60)).await?;
    }

    let mut monitor = ConnectionManager::new(server.client()).await?;
    let progress = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let producer = tokio::spawn(produce(
        server.client(),
        args.orders,
        args.rate,
        args.pipeline,
        args.poison_rate,
        progress.clone(),
    ));

    let warm_up_at = WARM_UP.min(args.orders / 10).max(1);
    let mut rss_warm: Option<Vec<u64>> = None;
    let mut rss_max = vec![0u64; workers.len()];
    let mut kills = KILL_AT
        .iter()
        .map(|share| (share * args.orders as f64) as u64)
        .peekable();
    let mut recoveries: Vec<String> = Vec::new();
    let mut next_progress = Instant::now();
    let mut producer = Some(producer);
    let mut produce_stats = None;
    let mut drain_deadline: Option<Instant> = None;
    let report = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for w in &mut workers {
            if let Some(status) = w.child.try_wait()? {
                return Err(format!(
                    "worker {} exited early ({status}); see {}",
                    w.name,
                    w.log.display()
                )
                .into());
            }
        }
        let produced = progress.load(Ordering::Relaxed);
        let processed = hlen(&mut monitor).await;

        // Faults: SIGKILL Redis at 25 % and 60 % of production, restart it at once.
        if let Some(&at) = kills.peek() {
            if produced >= at {
                kills.next();
                let killed_at = started.elapsed();
                let down = Instant::now();
                tokio::task::block_in_place(|| {
                    server.kill();
                    server.restart();
                });
                let back_in = down.elapsed();
                monitor = ConnectionManager::new(server.client()).await?;
                let before = hlen(&mut monitor).await.unwrap_or(0);
                let back = Instant::now();
                let first = loop {
                    if hlen(&mut monitor).await.unwrap_or(0) > before {
                        break back.elapsed();
                    }
                    if back.elapsed() > Duration::from_secs(60) {
                        return Err(format!(
                            "no order handled within 60 s of the Redis restart; see the worker logs in {}",
                            logs.display()
                        )
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                let line = format!(
                    "redis SIGKILL at {produced} produced (t={:.1}s): restarted and AOF loaded in {:.2}s; first order handled {:.0} ms after that",
                    killed_at.as_secs_f64(),
                    back_in.as_secs_f64(),
                    first.as_secs_f64() * 1000.0
                );
                println!("soak: {line}");
                recoveries.push(line);
                continue;
            }
        }

        // Memory: after warm-up, then the highest seen.
        if let Some(p) = processed {
            if rss_warm.is_none() && p >= warm_up_at {
                let rss: Vec<u64> = workers.iter().map(Worker::rss_kb).collect();
                println!(
                    "soak: warmed up at {p} processed; worker RSS {}",
                    rss.iter().map(|kb| mb(*kb)).collect::<Vec<_>>().join(", ")
                );
                rss_warm = Some(rss);
            }
        }
        for (max, w) in rss_max.iter_mut().zip(&workers) {
            *max = (*max).max(w.rss_kb());
        }

        if Instant::now() >= next_progress {
            next_progress = Instant::now() + Duration::from_secs(5);
            let pending = xpending(&mut monitor).await;
            println!(
                "soak: t={:>5.1}s produced {produced:>8} processed {:>8} pending {:>6}",
                started.elapsed().as_secs_f64(),
                processed.map_or("?".to_owned(), |p| p.to_string()),
                pending.map_or("?".to_owned(), |p| p.to_string()),
            );
        }

        if let Some(handle) = producer.take_if(|h| h.is_finished()) {
            let stats = handle.await??;
            println!(
                "soak: production done at t={:.1}s ({} pipelines retried after errors)",
                started.elapsed().as_secs_f64(),
                stats.retries
            );
            produce_stats = Some(stats);
            drain_deadline = Some(Instant::now() + *args.drain_timeout);
        }
        let Some(deadline) = drain_deadline else {
            continue;
        };
        // Drained? Cheap checks first, then the full report.
        let dead = xlen(&mut monitor, DLQ).await.unwrap_or(0);
        let drained =
            xpending(&mut monitor).await == Some(0) && processed.unwrap_or(0) + dead >= args.orders;
        if drained {
            if let Ok(r) = report(&server.client()).await {
                if r.pending == 0 && r.lost == 0 && r.produced == args.orders {
                    break r;
                }
            }
        }
        if Instant::now() >= deadline {
            let last = report(&server.client()).await;
            println!(
                "soak: not drained within {}; last report: {last:?}",
                args.drain_timeout
            );
            break last?;
        }
    };
    let total = started.elapsed();
    let rss_end: Vec<u64> = workers.iter().map(Worker::rss_kb).collect();
    let stats = produce_stats.unwrap_or_default();
    let group_pending = xpending(&mut monitor).await;

    for w in &mut workers {
        w.stop().await;
    }

    // The verdict.
    let dup_share = report.duplicates as f64 / args.orders.max(1) as f64;
    let throughput = args.orders as f64 / total.as_secs_f64();
    let rss_warm = rss_warm.unwrap_or_else(|| vec![0; workers.len()]);
    let growth: Vec<i64> = rss_end
        .iter()
        .zip(&rss_warm)
        .map(|(end, warm)| *end as i64 - *warm as i64)
        .collect();
    let max_growth = growth.iter().copied().max().unwrap_or(0);
    let poison = (0..args.orders)
        .filter(|id| is_poison(*id, args.poison_rate))
        .count() as u64;
    let checks = [
        report.lost == 0 && report.produced == args.orders,
        dup_share <= 0.02,
        report.dead_lettered == poison,
        report.pending == 0 && group_pending == Some(0),
        throughput >= 10_000.0,
        max_growth <= RSS_GROWTH_LIMIT_KB as i64,
    ];
    let mark = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!();
    println!(
        "soak result ({} orders, {} workers):",
        args.orders,
        workers.len()
    );
    println!(
        "  lost            {:>10}   target 0                      {}",
        report.lost,
        mark(checks[0])
    );
    println!(
        "  duplicates      {:>10}   {:.3} %, target <= 2 %         {}",
        report.duplicates,
        dup_share * 100.0,
        mark(checks[1])
    );
    println!(
        "  dead-lettered   {:>10}   poison produced {poison:<10}   {}",
        report.dead_lettered,
        mark(checks[2])
    );
    println!(
        "  pending         {:>10}   group PEL {:<16}   {}",
        report.pending,
        group_pending.map_or("?".to_owned(), |p| p.to_string()),
        mark(checks[3])
    );
    println!("  processed       {:>10}", report.processed);
    println!(
        "  total time      {:>9.1}s   first XADD to drained",
        total.as_secs_f64()
    );
    println!(
        "  throughput      {:>8.0}/s   target >= 10000/s             {}",
        throughput,
        mark(checks[4])
    );
    println!(
        "  producer        {:>10}   pipelines retried after Redis errors",
        stats.retries
    );
    for (i, w) in workers.iter().enumerate() {
        println!(
            "  RSS {:<11} {:>9} after warm-up, {:>9} at the end ({:+.1} MB), max {}",
            w.name,
            mb(rss_warm[i]),
            mb(rss_end[i]),
            growth[i] as f64 / 1024.0,
            mb(rss_max[i]),
        );
    }
    println!(
        "  RSS growth      {:>+9.1} MB  worst worker, target <= 16 MB  {}",
        max_growth as f64 / 1024.0,
        mark(checks[5])
    );
    for line in &recoveries {
        println!("  {line}");
    }
    let ok = checks.iter().all(|c| *c);
    println!(
        "  verdict: {}",
        if ok {
            "all targets met"
        } else {
            "TARGETS MISSED"
        }
    );
    Ok(ok)
}

/// Whether an order is poison: a fixed hash of its id, so the run knows how many to expect.
fn is_poison(order_id: u64, rate: f64) -> bool {
    // splitmix64
    let mut z = order_id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z as f64 / u64::MAX as f64) < rate
}

#[derive(Debug, Default)]
struct ProduceStats {
    retries: u64,
}

/// Produces `total` orders, `pipeline` per MULTI/EXEC together with the counter increment, paced
/// to `rate` per second. After an error (Redis down) it waits for Redis and resumes from the
/// counter, which is exactly what was committed.
async fn produce(
    client: redis::Client,
    total: u64,
    rate: u64,
    pipeline: u64,
    poison_rate: f64,
    progress: Arc<AtomicU64>,
) -> AnyResult<ProduceStats> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_number_of_retries(1_000);
    let mut con = ConnectionManager::new_with_config(client, config).await?;
    let mut stats = ProduceStats::default();
    let mut next = committed(&mut con).await;
    let started = Instant::now();
    let start = next;
    while next < total {
        let end = (next + pipeline.max(1)).min(total);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for id in next..end {
            let quantity = if is_poison(id, poison_rate) {
                "many".to_owned()
            } else {
                (1 + id % 9).to_string()
            };
            pipe.cmd("XADD")
                .arg(STREAM)
                .arg("*")
                .arg("order_id")
                .arg(id)
                .arg("product_id")
                .arg(format!("p-{}", id % 500))
                .arg("user_id")
                .arg(id.wrapping_mul(7919) % 10_000)
                .arg("quantity")
                .arg(quantity)
                .arg("timestamp")
                .arg(now_ms)
                .ignore();
        }
        pipe.cmd("INCRBY").arg(PRODUCED).arg(end - next).ignore();
        match pipe.query_async::<()>(&mut con).await {
            Ok(()) => next = end,
            Err(_) => {
                stats.retries += 1;
                next = committed(&mut con).await;
            }
        }
        progress.store(next, Ordering::Relaxed);
        if rate > 0 {
            let due = Duration::from_secs_f64((next - start) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    Ok(stats)
}

/// The produced counter, waiting for Redis as long as it takes.
async fn committed(con: &mut ConnectionManager) -> u64 {
    loop {
        let r: redis::RedisResult<Option<u64>> =
            redis::cmd("GET").arg(PRODUCED).query_async(con).await;
        match r {
            Ok(n) => return n.unwrap_or(0),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn hlen<C: ConnectionLike + Send>(con: &mut C) -> Option<u64> {
    redis::cmd("HLEN")
        .arg(PROCESSED)
        .query_async(con)
        .await
        .ok()
}

async fn xlen<C: ConnectionLike + Send>(con: &mut C, key: &str) -> Option<u64> {
    redis::cmd("XLEN").arg(key).query_async(con).await.ok()
}

async fn xpending<C: ConnectionLike + Send>(con: &mut C) -> Option<u64> {
    let r: redis::RedisResult<(u64, redis::Value, redis::Value, redis::Value)> =
        redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .query_async(con)
            .await;
    r.ok().map(|r| r.0)
}

/// The verdict, computed like `orders report` does (produced, processed, duplicates, dead letters,
/// pending, lost) but over a connection without a response timeout: reading a million-field hash
/// takes longer than redis-rs's default 500 ms.
#[derive(Debug, Default)]
struct Report {
    produced: u64,
    processed: u64,
    duplicates: u64,
    dead_lettered: u64,
    pending: u64,
    lost: u64,
}

async fn report(client: &redis::Client) -> AnyResult<Report> {
    let mut con = client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await?;
    let produced: u64 = redis::cmd("GET")
        .arg(PRODUCED)
        .query_async::<Option<u64>>(&mut con)
        .await?
        .unwrap_or(0);
    let mut seen = vec![false; usize::try_from(produced)?];
    let processed: Vec<(u64, u64)> = redis::cmd("HGETALL")
        .arg(PROCESSED)
        .query_async(&mut con)
        .await?;
    let mut r = Report {
        produced,
        ..Report::default()
    };
    for (id, n) in &processed {
        r.processed += 1;
        r.duplicates += n.saturating_sub(1);
        if let Some(s) = usize::try_from(*id).ok().and_then(|i| seen.get_mut(i)) {
            *s = true;
        }
    }
    let dead: redis::Value = redis::cmd("XRANGE")
        .arg(DLQ)
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await?;
    for item in millrace::streams::parse_entries(dead) {
        let millrace::streams::ReadItem::Entry(entry) = item else {
            continue;
        };
        r.dead_lettered += 1;
        let order = millrace::dead_letter::DeadLetter::parse(&entry)
            .map(|dl| RawEntry::new(entry.id, dl.fields))
            .and_then(|raw| {
                raw.get_str("order_id")
                    .and_then(|s| s.parse::<usize>().ok())
            });
        if let Some(s) = order.and_then(|i| seen.get_mut(i)) {
            *s = true;
        }
    }
    r.pending = xpending(&mut con).await.ok_or("XPENDING failed")?;
    r.lost = seen.iter().filter(|s| !**s).count() as u64;
    Ok(r)
}

/// One `orders work` child process.
struct Worker {
    name: String,
    child: Child,
    pid: u32,
    ready: tokio::sync::watch::Receiver<bool>,
    log: PathBuf,
}

impl Worker {
    fn spawn(bin: &Path, url: &str, name: &str, args: &Args, logs: &Path) -> AnyResult<Worker> {
        let log = logs.join(format!("{name}.log"));
        let stderr = OpenOptions::new().create(true).append(true).open(&log)?;
        let mut child = Command::new(bin)
            .arg("--redis")
            .arg(url)
            .args(["work", "--consumer", name])
            .args(["--count", &args.count.to_string()])
            .args(["--panic-rate", &args.panic_rate.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("worker exited at once")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, ready) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "ready" {
                    let _ = tx.send(true);
                }
            }
        });
        Ok(Worker {
            name: name.to_owned(),
            child,
            pid,
            ready,
            log,
        })
    }

    async fn wait_ready(&mut self, timeout: Duration) -> AnyResult {
        match tokio::time::timeout(timeout, self.ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!(
                "worker {} not ready within {timeout:?}; see {}",
                self.name,
                self.log.display()
            )
            .into()),
        }
    }

    /// VmRSS in KiB, 0 if unreadable.
    fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// SIGTERM, then SIGKILL if it has not exited within 30 s.
    async fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("soak: worker {} exited with {status}", self.name),
            _ => {
                eprintln!(
                    "soak: worker {} did not stop within 30 s; killing it",
                    self.name
                );
                let _ = self.child.kill().await;
            }
        }
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// The `orders` binary: `explicit`, else the one next to this binary. Under `cargo run` (CARGO
/// is set) it is (re)built first with this binary's profile, so the run never uses a stale one.
fn orders_bin(explicit: Option<PathBuf>) -> AnyResult<PathBuf> {
    if let Some(bin) = explicit {
        return Ok(bin);
    }
    let exe = std::env::current_exe()?;
    // …/target/<profile>/examples/soak
    let examples = exe.parent().ok_or("no parent directory")?;
    let bin = examples.join("orders");
    if let (Ok(cargo), Some(profile_dir)) = (std::env::var("CARGO"), examples.parent()) {
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let target_dir = profile_dir.parent().ok_or("no target directory")?;
        println!("soak: building the orders example ({profile} profile)");
        let status = std::process::Command::new(&cargo)
            .args(["build", "-p", "millrace-examples", "--example", "orders"])
            .arg("--profile")
            .arg(&profile)
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()?;
        if !status.success() {
            return Err(format!("building the orders example failed: {status}").into());
        }
    }
    if !bin.exists() {
        return Err(format!(
            "{} not found; build it with `cargo build --release -p millrace-examples --example orders` or pass --orders-bin",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}
