//! One run of the `streams` section in a process of its own (so its peak RSS is its own): start
//! the consumers of one form, drain the backlog, optionally stay idle for a while, and print one
//! `STREAMS-RESULT` line for the parent to read.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use millrace::{
    Batch, ConsumerSpec, Handler, HandlerResult, MultiStreamSpec, RawEntry, StartId, Supervisor,
    SupervisorBuilder,
};
use redis::aio::MultiplexedConnection;

use super::{Form, Measured, IDLE_COMMANDS_PREFIX, ONE_STREAM};
use crate::measure;
use crate::workload::Progress;
use crate::Res;

/// What the child is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct ChildArgs {
    pub(crate) url: String,
    pub(crate) form: Form,
    pub(crate) group: String,
    pub(crate) streams: usize,
    pub(crate) backlog: usize,
    /// Seconds of idle measurement after the drain; 0 for none.
    pub(crate) idle_secs: u64,
}

/// Time the consumers get after the drain before the idle window opens (replays end, gauges and
/// claim ticks of the start-up have run).
const SETTLE: Duration = Duration::from_secs(5);

/// When the first batch arrived, and how many batches there were.
#[derive(Debug, Default)]
pub(super) struct Batches {
    pub(super) first: OnceLock<Instant>,
    pub(super) count: AtomicUsize,
}

/// Counts the entries and the batches, and notes when the first batch arrived.
fn noop(progress: &Arc<Progress>, batches: &Arc<Batches>) -> impl Handler<RawEntry> {
    let (progress, batches) = (progress.clone(), batches.clone());
    move |batch: Batch<RawEntry>| {
        batches.first.get_or_init(Instant::now);
        if !batch.is_empty() {
            batches.count.fetch_add(1, Ordering::Relaxed);
        }
        let progress = progress.clone();
        async move {
            progress.add(std::hint::black_box(&batch).len());
            HandlerResult::Ok
        }
    }
}

/// The supervisor of one form, every stream's group created at `0`, default options otherwise.
fn builder(args: &ChildArgs, progress: &Arc<Progress>, first: &Arc<Batches>) -> SupervisorBuilder {
    let builder = Supervisor::builder().redis(args.url.clone());
    let names = super::stream_names(args.streams);
    match args.form {
        Form::Multi | Form::MultiOther => builder.multi_stream(
            MultiStreamSpec::new(names, &args.group, "c0")
                .start_id(StartId::Beginning)
                .handler(noop(progress, first)),
        ),
        Form::Singles => builder.consumers(names.into_iter().map(|stream| {
            ConsumerSpec::new(stream, &args.group, "c0")
                .start_id(StartId::Beginning)
                .handler(noop(progress, first))
        })),
        Form::OneStream | Form::HandLoop => builder.consumer(
            ConsumerSpec::new(ONE_STREAM, &args.group, "c0")
                .start_id(StartId::Beginning)
                .handler(noop(progress, first)),
        ),
    }
}

/// Normal clients connected now (`INFO clients`, cheap enough to sample during a run).
async fn connected(admin: &mut MultiplexedConnection) -> Res<usize> {
    Ok(measure::info_field(admin, "clients", "connected_clients")
        .await?
        .parse()?)
}

/// Samples `connected_clients` every 50 ms until `stop` is set; keeps the largest.
fn sample_connections(
    mut admin: MultiplexedConnection,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let max = Arc::new(AtomicUsize::new(0));
    let seen = max.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = connected(&mut admin).await {
                seen.fetch_max(n, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (max, task)
}

/// Sums of the consumers' counters: (acked, redelivered, reconnects).
fn counters(supervisor: &Supervisor) -> (u64, u64, u64) {
    supervisor.health().iter().fold((0, 0, 0), |(a, r, c), h| {
        (
            a + h.counters.acked,
            r + h.counters.redelivered,
            c + h.counters.reconnects,
        )
    })
}

/// Entries acknowledged, each once: acks of entries delivered again (after a reconnect's replay)
/// are left out.
fn acked_once(supervisor: &Supervisor) -> u64 {
    let (acked, redelivered, _) = counters(supervisor);
    acked.saturating_sub(redelivered)
}

/// Runs the child and prints its `STREAMS-RESULT` line.
pub(crate) async fn run(args: ChildArgs) -> Res<()> {
    let client = redis::Client::open(args.url.as_str())?;
    let mut admin = crate::workload::connect(&client).await?;
    let sampler_conn = crate::workload::connect(&client).await?;
    // Everything open before the consumers start: the parent's and these two.
    let base = connected(&mut admin).await?;
    let total = (args.streams * args.backlog) as u64;
    let progress = Arc::new(Progress::new(total));
    let batches = Arc::new(Batches::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (max_conns, sampler) = sample_connections(sampler_conn, stop.clone());

    measure::reset_peak_rss();
    measure::reset_commandstats(&mut admin).await?;
    let server0 = measure::server_cpu(&mut admin).await?;
    let (t0, cpu0) = (Instant::now(), measure::process_cpu());
    let limit = Duration::from_secs(600);
    let supervisor = if args.form == Form::HandLoop {
        tokio::time::timeout(
            limit,
            super::hand::drain(&client, &args, &progress, &batches),
        )
        .await
        .map_err(|_| format!("handled {} of {total} within {limit:?}", progress.handled()))??;
        None
    } else {
        Some(builder(&args, &progress, &batches).start().await?)
    };
    if let Some(supervisor) = &supervisor {
        tokio::time::timeout(limit, progress.wait())
            .await
            .map_err(|_| format!("handled {} of {total} within {limit:?}", progress.handled()))?;
        while acked_once(supervisor) < total {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let wall = t0.elapsed();
    let (_, redelivered, reconnects) = supervisor.as_ref().map_or((0, 0, 0), counters);
    let client_cpu = measure::process_cpu().saturating_sub(cpu0).as_secs_f64();
    let server_cpu = measure::server_cpu(&mut admin).await? - server0;
    let calls = measure::commandstats(&mut admin).await?;
    let calls_of = |name: &str| calls.iter().find(|c| c.0 == name).map_or(0, |c| c.1);
    // One more sample at the end, for a drain shorter than the sampling period.
    max_conns.fetch_max(connected(&mut admin).await?, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let mut m = Measured {
        wall_ms: wall.as_secs_f64() * 1e3,
        first_ms: batches
            .first
            .get()
            .map_or(0.0, |f| f.saturating_duration_since(t0).as_secs_f64() * 1e3),
        batches: batches.count.load(Ordering::Relaxed) as u64,
        reads: calls_of("xreadgroup"),
        acks: calls_of("xack"),
        handled: progress.handled(),
        redelivered,
        reconnects,
        client_cpu,
        server_cpu,
        peak_rss_kib: measure::rss_kib().1,
        max_conns: max_conns.load(Ordering::Relaxed).saturating_sub(base),
        ..Measured::default()
    };
    if let Some(supervisor) = supervisor {
        if args.idle_secs > 0 {
            idle(&args, &mut admin, base, &mut m).await?;
        }
        supervisor.shutdown().await?;
    }
    println!("{}", m.to_line());
    Ok(())
}

/// The idle window: no traffic for `idle_secs`, CPU of both sides and the connections held.
async fn idle(
    args: &ChildArgs,
    admin: &mut MultiplexedConnection,
    base: usize,
    m: &mut Measured,
) -> Res<()> {
    tokio::time::sleep(SETTLE).await;
    // The sampler's connection is gone by now.
    m.idle_conns = measure::client_count(admin).await?.saturating_sub(base - 1);
    measure::reset_commandstats(admin).await?;
    let server0 = measure::server_cpu(admin).await?;
    let (t0, cpu0) = (Instant::now(), measure::process_cpu());
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    m.idle_client_cpu = measure::process_cpu().saturating_sub(cpu0).as_secs_f64();
    m.idle_server_cpu = measure::server_cpu(admin).await? - server0;
    m.idle_secs = t0.elapsed().as_secs_f64();
    // What the consumers asked of the server while idle, per second.
    let calls = measure::commandstats(admin).await?;
    let per_second: Vec<String> = calls
        .iter()
        .filter(|(name, ..)| name != "ping")
        .map(|(name, n, usec)| {
            format!(
                "{name} {:.1}/s ({:.0} µs/s)",
                *n as f64 / m.idle_secs,
                *usec as f64 / m.idle_secs
            )
        })
        .collect();
    println!("{IDLE_COMMANDS_PREFIX} {}", per_second.join(", "));
    Ok(())
}
