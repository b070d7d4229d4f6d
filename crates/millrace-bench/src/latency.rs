//! End-to-end latency at a fixed rate: a producer thread adds one entry every `1/rate` seconds on an
//! absolute schedule, stamping a `ts` field (µs on a process-wide monotonic clock) just before its
//! `XADD`; the consumer records `now - ts` for every entry as the handler (or loop) sees it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::baseline::{self, Loop, Target};
use crate::bench::{Env, Variant, BLOCK};
use crate::measure::{self, Cost, Snapshot};
use crate::mr::{self, MrHandler, MrRun};
use crate::workload::{event, now_us, Progress, Samples, Work};
use crate::Res;

/// Latency percentiles of one variant, in µs.
#[derive(Debug, Clone)]
pub(crate) struct LatencyResult {
    pub(crate) variant: Variant,
    pub(crate) samples: usize,
    pub(crate) achieved_rate: f64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) cost: Cost,
    /// Every sample, sorted.
    pub(crate) sorted: Vec<u64>,
}

impl LatencyResult {
    fn from_samples(variant: Variant, achieved_rate: f64, cost: Cost, mut s: Vec<u64>) -> Self {
        s.sort_unstable();
        LatencyResult {
            variant,
            samples: s.len(),
            achieved_rate,
            p50: percentile(&s, 0.50),
            p90: percentile(&s, 0.90),
            p99: percentile(&s, 0.99),
            p999: percentile(&s, 0.999),
            max: s.last().copied().unwrap_or(0),
            cost,
            sorted: s,
        }
    }

    /// Pools the samples and costs of several runs of one variant.
    pub(crate) fn merge(parts: Vec<LatencyResult>) -> Option<LatencyResult> {
        let variant = parts.first()?.variant;
        let mut cost = Cost::default();
        let (mut samples, mut rate_sum) = (Vec::new(), 0.0);
        let n = parts.len() as f64;
        for p in parts {
            cost.wall += p.cost.wall;
            cost.handled += p.cost.handled;
            cost.client_cpu += p.cost.client_cpu;
            cost.server_cpu += p.cost.server_cpu;
            cost.others_cpu += p.cost.others_cpu;
            cost.peak_rss_kib = cost.peak_rss_kib.max(p.cost.peak_rss_kib);
            rate_sum += p.achieved_rate;
            samples.extend(p.sorted);
        }
        Some(LatencyResult::from_samples(
            variant,
            rate_sum / n,
            cost,
            samples,
        ))
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Adds `total` entries at `rate`/s from a dedicated thread; returns the achieved rate.
fn produce(client: redis::Client, stream: String, total: u64, rate: u64) -> Res<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut conn = crate::workload::connect(&client).await?;
        let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
        let start = Instant::now();
        for i in 0..total {
            let deadline = start + period * i as u32;
            let now = Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            }
            let (user, action, page) = event(i as usize);
            let _: redis::Value = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("user_id")
                .arg(user)
                .arg("action")
                .arg(action)
                .arg("page")
                .arg(page)
                .arg("ts")
                .arg(now_us())
                .query_async(&mut conn)
                .await?;
        }
        Ok(total as f64 / start.elapsed().as_secs_f64())
    })
}

/// Waits until a client is blocked in XREADGROUP on the server (the consumer is ready).
async fn wait_blocked_reader(env: &mut Env) -> Res<()> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut env.admin)
            .await?;
        if list
            .lines()
            .any(|l| l.contains("cmd=xreadgroup") && l.contains("flags=b"))
        {
            return Ok(());
        }
        if Instant::now() > until {
            return Err("no consumer blocked in XREADGROUP within 10s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One latency run of `variant`: `secs` seconds at `rate` entries/s, one consumer, COUNT `count`.
pub(crate) async fn run(
    env: &mut Env,
    variant: Variant,
    secs: f64,
    rate: u64,
    count: usize,
) -> Res<LatencyResult> {
    let stream = env.next_name("bench:lat:");
    let group = "g".to_owned();
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut env.admin)
        .await?;
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&group)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut env.admin)
        .await?;
    env.quiesce().await?;
    let total = ((secs * rate as f64).round() as u64).max(1);
    let samples = Arc::new(Samples::default());
    let limit = Duration::from_secs_f64(secs + 30.0);

    enum Consumer {
        Loop(tokio::task::JoinHandle<Res<Instant>>, Arc<Progress>),
        Millrace(mr::Running),
    }
    let consumer = match variant {
        Variant::C => {
            let settings = MrRun {
                url: env.url.clone(),
                stream: stream.clone(),
                group: group.clone(),
                consumers: 1,
                count: Some(count),
                block: BLOCK,
                handler: MrHandler::Latency(samples.clone()),
                tls: env.tls.clone(),
            };
            Consumer::Millrace(mr::start(&settings, total).await?)
        }
        _ => {
            let kind = match variant {
                Variant::B => Loop::ReadAhead,
                Variant::B2 => Loop::ReadAheadMultiplexed,
                Variant::A2 => Loop::SequentialTypedApi,
                _ => Loop::Sequential,
            };
            let target = Target {
                client: env.client.clone(),
                stream: stream.as_str().into(),
                group: group.as_str().into(),
                count,
                block_ms: BLOCK.as_millis() as u64,
                work: Work::Latency(samples.clone()),
            };
            let progress = Arc::new(Progress::new(total));
            Consumer::Loop(
                tokio::spawn(baseline::run(kind, target, 1, progress.clone())),
                progress,
            )
        }
    };
    wait_blocked_reader(env).await?;

    measure::reset_peak_rss();
    let before = Snapshot::take(&mut env.admin).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (client, s) = (env.client.clone(), stream.clone());
    std::thread::spawn(move || {
        let _ = tx.send(produce(client, s, total, rate).map_err(|e| e.to_string()));
    });
    let achieved_rate = rx.await.map_err(|_| "producer thread died")??;
    let (end, handled) = match consumer {
        Consumer::Loop(task, progress) => {
            let end = tokio::time::timeout(limit, task)
                .await
                .map_err(|_| format!("{variant} did not handle every entry"))?
                .map_err(|e| format!("{variant}: {e}"))??;
            (end, progress.handled())
        }
        Consumer::Millrace(running) => {
            let end = running.wait_acked(limit).await?;
            let handled = running.progress.handled();
            running.shutdown().await?;
            (end, handled)
        }
    };
    let after = Snapshot::take(&mut env.admin).await?;
    let cost = Cost::between(&before, &after, end, handled);
    crate::bench::verify_drained(&mut env.admin, &stream, &group, total).await?;
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut env.admin)
        .await?;

    let s = samples.take();
    if s.len() as u64 != total {
        return Err(format!("{variant}: {} latency samples of {total}", s.len()).into());
    }
    Ok(LatencyResult::from_samples(variant, achieved_rate, cost, s))
}
