//! The `keyed` section: keyed concurrency. One consumer whose handler sleeps 10 ms per entry drains
//! 2,000 entries spread over 100 keys with `key_concurrency = 32` (the default adaptive read size,
//! and a fixed COUNT 500), against the ideal 2,000 × 10 ms ÷ 32; the handler checks the order of
//! every key's entries, and the drain checks from Redis that every entry was acknowledged.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use millrace::{Batch, ConsumerSpec, HandlerResult, RawEntry, StartId, Supervisor};
use redis::Value;

use crate::bench::{self, Env, BLOCK};
use crate::measure;
use crate::Res;

const ENTRIES: usize = 2_000;
const KEYS: usize = 100;
const LANES: usize = 32;
const PER_ENTRY: Duration = Duration::from_millis(10);
const ROUNDS: usize = 2;

/// One drain: its wall time, and how many entries came out of order for their key.
struct Drain {
    wall: Duration,
    out_of_order: u64,
}

/// Runs the section; returns the Markdown to print (and to put in docs/benchmarks.md).
pub(crate) async fn run(env: &mut Env) -> Res<String> {
    let load_before = measure::loadavg();
    let counts = [None, Some(500)];
    let mut runs: Vec<(Option<usize>, Drain)> = Vec::new();
    for round in 0..ROUNDS {
        for i in 0..counts.len() {
            let count = counts[(i + round) % counts.len()];
            let d = drain(env, count).await?;
            println!(
                "  round {}/{ROUNDS} {:<22} drained in {:.3} s, {} out of order",
                round + 1,
                label(count),
                d.wall.as_secs_f64(),
                d.out_of_order
            );
            runs.push((count, d));
        }
    }
    let ideal = PER_ENTRY.as_secs_f64() * ENTRIES as f64 / LANES as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Keyed concurrency: 1 consumer, `key_concurrency = {LANES}`, handler sleeps {} ms per entry, {} entries over {KEYS} keys — {ROUNDS} round(s); ideal drain {ideal:.3} s\n",
        PER_ENTRY.as_millis(),
        crate::report::thousands(ENTRIES as f64)
    );
    let _ = writeln!(
        s,
        "- load average before: {load_before}; after: {}\n",
        measure::loadavg()
    );
    let _ = writeln!(
        s,
        "| read size | drain time, each round | vs ideal (median) | entries out of order for their key |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for count in counts {
        let mine: Vec<&Drain> = runs
            .iter()
            .filter(|(c, _)| *c == count)
            .map(|(_, d)| d)
            .collect();
        let walls: Vec<f64> = mine.iter().map(|d| d.wall.as_secs_f64()).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.2}× | {} |",
            label(count),
            walls
                .iter()
                .map(|w| format!("{w:.3} s"))
                .collect::<Vec<_>>()
                .join(", "),
            bench::median(walls.clone()) / ideal,
            mine.iter().map(|d| d.out_of_order).sum::<u64>()
        );
    }
    Ok(s)
}

fn label(count: Option<usize>) -> String {
    match count {
        None => "default (adaptive)".to_owned(),
        Some(n) => format!("COUNT {n}"),
    }
}

/// Drains a fresh stream of `ENTRIES` entries (key `k` = i mod `KEYS`, `i` = position).
async fn drain(env: &mut Env, count: Option<usize>) -> Res<Drain> {
    let stream = env.next_name("keyed");
    let mut pipe = redis::pipe();
    for i in 0..ENTRIES {
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("k")
            .arg(i % KEYS)
            .arg("i")
            .arg(i)
            .ignore();
    }
    let _: Value = pipe.query_async(&mut env.admin).await?;
    let _: Value = redis::cmd("XGROUP")
        .arg(&["CREATE", stream.as_str(), "g", "0"][..])
        .query_async(&mut env.admin)
        .await?;
    env.quiesce().await?;
    let handled = Arc::new(AtomicU64::new(0));
    let out_of_order = Arc::new(AtomicU64::new(0));
    let last: Arc<Mutex<HashMap<Vec<u8>, u64>>> = Arc::default();
    let handler = {
        let (handled, out_of_order, last) = (handled.clone(), out_of_order.clone(), last.clone());
        move |batch: Batch<RawEntry>| {
            let (handled, out_of_order, last) =
                (handled.clone(), out_of_order.clone(), last.clone());
            async move {
                tokio::time::sleep(PER_ENTRY * batch.len() as u32).await;
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                for e in &batch {
                    let key = e.message.get("k").unwrap_or_default().to_vec();
                    let i: u64 = e
                        .message
                        .get_str("i")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if last.insert(key, i).is_some_and(|prev| prev >= i) {
                        out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                }
                handled.fetch_add(batch.len() as u64, Ordering::Relaxed);
                HandlerResult::Ok
            }
        }
    };
    let mut spec = ConsumerSpec::new(&stream, "g", "c")
        .start_id(StartId::Beginning)
        .block(BLOCK)
        .key_concurrency(LANES)
        .key_field("k".to_owned());
    if let Some(n) = count {
        spec = spec.count(n);
    }
    let started = Instant::now();
    let app = Supervisor::builder()
        .redis(env.url.clone())
        .consumer(spec.handler(handler))
        .start()
        .await?;
    let limit = Instant::now() + Duration::from_secs(120);
    let wall = loop {
        let acked: u64 = app.health().iter().map(|h| h.counters.acked).sum();
        if acked >= ENTRIES as u64 {
            break started.elapsed();
        }
        if Instant::now() > limit {
            return Err(format!("keyed: {acked} of {ENTRIES} acknowledged in 120 s").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    app.shutdown().await?;
    bench::verify_drained(&mut env.admin, &stream, "g", ENTRIES as u64).await?;
    let _: Value = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut env.admin)
        .await?;
    Ok(Drain {
        wall,
        out_of_order: out_of_order.load(Ordering::Relaxed),
    })
}
