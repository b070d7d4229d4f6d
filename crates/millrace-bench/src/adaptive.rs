//! The `adaptive` section: millrace's default read size (adaptive) against fixed counts, in one
//! run. (a) One consumer drains a backlog with a no-op handler: the default against each fixed
//! `COUNT`, and the hand-written read-ahead loop (b) at COUNT 500 for reference. (b) Four consumers
//! whose handler sleeps 5 ms per entry drain 2,000 entries: the drain time against the ideal
//! (2,000 × 5 ms ÷ 4), and the most entries each consumer held pending at once, sampled from
//! `XPENDING` all through the run.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::bench::{self, Config, Env, Variant, BLOCK};
use crate::measure::{self, Cost, Snapshot};
use crate::mr::{self, MrHandler, MrRun};
use crate::report::thousands;
use crate::Res;

/// The fixed counts the backlog drain compares the default with.
const FIXED: [usize; 5] = [10, 100, 500, 1000, 2000];
/// The fixed counts the slow-handler drain compares the default with.
const SLOW_FIXED: [usize; 3] = [10, 100, 500];
const SLOW_ENTRIES: usize = 2_000;
const SLOW_CONSUMERS: usize = 4;
const PER_ENTRY: Duration = Duration::from_millis(5);
/// The slow-handler drain repeats this many times (alternating the read sizes).
const SLOW_ROUNDS: usize = 2;
/// Targets of the issue.
const BACKLOG_TARGET: f64 = 0.9;
const DRAIN_TARGET: f64 = 1.15;
const HELD_TARGET: Duration = Duration::from_millis(500);

/// A read size under test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Size {
    Default,
    Fixed(usize),
    /// The hand-written read-ahead loop (b) at this COUNT.
    Loop(usize),
}

impl Size {
    fn label(self) -> String {
        match self {
            Size::Default => "millrace default (adaptive)".to_owned(),
            Size::Fixed(n) => format!("millrace COUNT {n}"),
            Size::Loop(n) => format!("(b) read-ahead loop, COUNT {n}"),
        }
    }

    fn count(self) -> Option<usize> {
        match self {
            Size::Default => None,
            Size::Fixed(n) | Size::Loop(n) => Some(n),
        }
    }
}

/// One millrace drain: what it cost and, when sampled, the most entries each consumer held.
struct Drain {
    cost: Cost,
    most_held: HashMap<String, usize>,
}

/// Runs both parts; returns the Markdown to print (and to put in docs/benchmarks.md).
pub(crate) async fn run(env: &mut Env, messages: usize, rounds: usize) -> Res<String> {
    let load_before = measure::loadavg();
    let backlog = backlog(env, messages, rounds).await?;
    let slow = slow_handler(env).await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "- load average before: {load_before}; after: {}\n",
        measure::loadavg()
    );
    out.push_str(&backlog);
    out.push_str(&slow);
    Ok(out)
}

/// (a) One consumer, no-op handler, the default against fixed counts and the read-ahead loop.
async fn backlog(env: &mut Env, messages: usize, rounds: usize) -> Res<String> {
    let mut sizes = vec![Size::Default];
    sizes.extend(FIXED.iter().map(|&n| Size::Fixed(n)));
    sizes.push(Size::Loop(500));
    let mut runs: Vec<(Size, Cost)> = Vec::new();
    for round in 0..rounds {
        for i in 0..sizes.len() {
            let size = sizes[(i + round) % sizes.len()];
            let cost = match size {
                Size::Loop(count) => {
                    let cfg = Config {
                        key: format!("adaptive-loop{count}"),
                        title: size.label(),
                        count,
                        consumers: 1,
                        typed: false,
                        variants: vec![Variant::B],
                        messages,
                    };
                    bench::run_once(env, &cfg, Variant::B).await?.cost
                }
                _ => {
                    drain(env, size.count(), 1, MrHandler::Noop, messages, false)
                        .await?
                        .cost
                }
            };
            println!(
                "  round {}/{rounds} {:<34} {:>10} msgs/s  client {:>5.2} µs/msg",
                round + 1,
                size.label(),
                thousands(cost.msgs_per_sec()),
                cost.client_us_per_msg()
            );
            runs.push((size, cost));
        }
    }
    Ok(backlog_table(&sizes, &runs, messages, rounds))
}

fn backlog_table(sizes: &[Size], runs: &[(Size, Cost)], messages: usize, rounds: usize) -> String {
    let rates = |size: Size| -> Vec<f64> {
        runs.iter()
            .filter(|(s, _)| *s == size)
            .map(|(_, c)| c.msgs_per_sec())
            .collect()
    };
    let median_of = |size: Size| bench::median(rates(size));
    let best = FIXED
        .iter()
        .map(|&n| (n, median_of(Size::Fixed(n))))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, f64::NAN));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Adaptive batch size (a): 1 consumer drains a backlog, no-op handler — {} entries per run, {rounds} round(s), medians\n",
        thousands(messages as f64)
    );
    let _ = writeln!(
        s,
        "| read size | msgs/s | min – max | client µs/msg | server µs/msg | vs best fixed COUNT |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for &size in sizes {
        let mine: Vec<&Cost> = runs
            .iter()
            .filter(|(s, _)| *s == size)
            .map(|(_, c)| c)
            .collect();
        let r = rates(size);
        let each = |f: &dyn Fn(&Cost) -> f64| bench::median(mine.iter().map(|c| f(c)).collect());
        let _ = writeln!(
            s,
            "| {} | {} | {} – {} | {:.2} | {:.2} | {:.2}× |",
            size.label(),
            thousands(median_of(size)),
            thousands(r.iter().copied().fold(f64::INFINITY, f64::min)),
            thousands(r.iter().copied().fold(0.0, f64::max)),
            each(&|c| c.client_us_per_msg()),
            each(&|c| c.server_us_per_msg()),
            median_of(size) / best.1
        );
    }
    let ratio = median_of(Size::Default) / best.1;
    let _ = writeln!(
        s,
        "\nTarget: the default reaches ≥ {BACKLOG_TARGET}× the best fixed COUNT (here COUNT {}): {:.2}×, **{}**.\n",
        best.0,
        ratio,
        if ratio >= BACKLOG_TARGET { "met" } else { "missed" }
    );
    s
}

/// (b) Four consumers, 5 ms per entry: drain time and the most each consumer held.
async fn slow_handler(env: &mut Env) -> Res<String> {
    let mut sizes = vec![Size::Default];
    sizes.extend(SLOW_FIXED.iter().map(|&n| Size::Fixed(n)));
    let mut runs: Vec<(Size, Drain)> = Vec::new();
    for round in 0..SLOW_ROUNDS {
        for i in 0..sizes.len() {
            let size = sizes[(i + round) % sizes.len()];
            let handler = MrHandler::SleepPerEntry(PER_ENTRY);
            let d = drain(
                env,
                size.count(),
                SLOW_CONSUMERS,
                handler,
                SLOW_ENTRIES,
                true,
            )
            .await?;
            println!(
                "  round {}/{SLOW_ROUNDS} {:<34} drained in {:.2} s, most held {:?}",
                round + 1,
                size.label(),
                d.cost.wall.as_secs_f64(),
                sorted(&d.most_held)
            );
            runs.push((size, d));
        }
    }
    Ok(slow_table(&sizes, &runs))
}

fn sorted(held: &HashMap<String, usize>) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = held.iter().map(|(k, v)| (k.clone(), *v)).collect();
    v.sort();
    v
}

fn slow_table(sizes: &[Size], runs: &[(Size, Drain)]) -> String {
    let ideal = PER_ENTRY.as_secs_f64() * SLOW_ENTRIES as f64 / SLOW_CONSUMERS as f64;
    let held_limit = (HELD_TARGET.as_nanos() / PER_ENTRY.as_nanos()) as usize;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Adaptive batch size (b): {SLOW_CONSUMERS} consumers, handler sleeps {} ms per entry, {} entries — {SLOW_ROUNDS} round(s); ideal drain {ideal:.2} s\n",
        PER_ENTRY.as_millis(),
        thousands(SLOW_ENTRIES as f64)
    );
    let _ = writeln!(
        s,
        "| read size | drain time, each round | vs ideal (median) | most pending per consumer, each round (XPENDING sampled) | as the consumer's own work (worst) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---|---:|");
    let mut verdict = (f64::NAN, 0usize);
    for &size in sizes {
        let mine: Vec<&Drain> = runs
            .iter()
            .filter(|(s, _)| *s == size)
            .map(|(_, d)| d)
            .collect();
        let walls: Vec<f64> = mine.iter().map(|d| d.cost.wall.as_secs_f64()).collect();
        let worst = mine
            .iter()
            .flat_map(|d| d.most_held.values().copied())
            .max()
            .unwrap_or(0);
        let held: Vec<String> = mine
            .iter()
            .map(|d| {
                let v: Vec<String> = sorted(&d.most_held)
                    .iter()
                    .map(|(_, n)| n.to_string())
                    .collect();
                v.join(" / ")
            })
            .collect();
        let ratio = bench::median(walls.clone()) / ideal;
        if size == Size::Default {
            verdict = (ratio, worst);
        }
        let _ = writeln!(
            s,
            "| {} | {} | {:.2}× | {} | {:.2} s |",
            size.label(),
            walls
                .iter()
                .map(|w| format!("{w:.2} s"))
                .collect::<Vec<_>>()
                .join(", "),
            ratio,
            held.join("; "),
            (PER_ENTRY * worst as u32).as_secs_f64()
        );
    }
    let (ratio, worst) = verdict;
    let _ = writeln!(
        s,
        "\nTargets for the default: drain within {DRAIN_TARGET}× of the ideal: {ratio:.2}×, **{}**; no consumer holds more than {:.1} s of its own work ({held_limit} entries) pending: at most {worst} entries ({:.2} s), **{}**.\n",
        if ratio <= DRAIN_TARGET { "met" } else { "missed" },
        HELD_TARGET.as_secs_f64(),
        (PER_ENTRY * worst as u32).as_secs_f64(),
        if worst <= held_limit { "met" } else { "missed" }
    );
    s
}

/// Drains `n` preloaded entries with millrace on a fresh group; with `sample`, `XPENDING` is read
/// all through the run for the most entries each consumer held.
async fn drain(
    env: &mut Env,
    count: Option<usize>,
    consumers: usize,
    handler: MrHandler,
    n: usize,
    sample: bool,
) -> Res<Drain> {
    env.ensure_preloaded(n).await?;
    let group = env.next_name("adaptive");
    let stream = env.stream.clone();
    xgroup(env, &["CREATE", &stream, &group, "0"]).await?;
    env.quiesce().await?;
    let sampler = if sample {
        Some(Sampler::start(env, &stream, &group).await?)
    } else {
        None
    };
    let before = Snapshot::take(&mut env.admin).await?;
    let run = MrRun {
        url: env.url.clone(),
        stream: stream.clone(),
        group: group.clone(),
        consumers,
        count,
        block: BLOCK,
        handler,
        tls: env.tls.clone(),
    };
    let running = mr::start(&run, n as u64).await?;
    let end = running.wait_acked(Duration::from_secs(300)).await?;
    let after = Snapshot::take(&mut env.admin).await?;
    let handled = running.progress.handled();
    running.shutdown().await?;
    let most_held = match sampler {
        Some(s) => s.stop().await?,
        None => HashMap::new(),
    };
    if handled != n as u64 {
        return Err(format!("handled {handled} entries, expected exactly {n}").into());
    }
    bench::verify_drained(&mut env.admin, &stream, &group, n as u64).await?;
    xgroup(env, &["DESTROY", &stream, &group]).await?;
    Ok(Drain {
        cost: Cost::between(&before, &after, end, handled),
        most_held,
    })
}

async fn xgroup(env: &mut Env, args: &[&str]) -> Res<()> {
    let _: Value = redis::cmd("XGROUP")
        .arg(args)
        .query_async(&mut env.admin)
        .await?;
    Ok(())
}

/// Reads `XPENDING`'s summary in a loop on a connection of its own, keeping each consumer's most.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Res<HashMap<String, usize>>>,
}

impl Sampler {
    async fn start(env: &Env, stream: &str, group: &str) -> Res<Sampler> {
        let mut con = crate::workload::connect(&env.client).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, stream, group) = (stop.clone(), stream.to_owned(), group.to_owned());
        let task = tokio::spawn(async move {
            let mut most: HashMap<String, usize> = HashMap::new();
            while !flag.load(Ordering::Acquire) {
                let summary: Vec<Value> = redis::cmd("XPENDING")
                    .arg(&stream)
                    .arg(&group)
                    .query_async(&mut con)
                    .await?;
                if let Some(owners @ Value::Array(_)) = summary.get(3) {
                    let owners: Vec<(String, String)> = redis::from_redis_value(owners.clone())?;
                    for (owner, n) in owners {
                        let n: usize = n.parse()?;
                        let m = most.entry(owner).or_default();
                        *m = (*m).max(n);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(most)
        });
        Ok(Sampler { stop, task })
    }

    async fn stop(self) -> Res<HashMap<String, usize>> {
        self.stop.store(true, Ordering::Release);
        self.task.await?
    }
}
