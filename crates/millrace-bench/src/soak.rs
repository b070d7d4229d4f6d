//! `--soak-messages M`: 16 millrace consumers at COUNT 500 drain M entries that a producer task
//! keeps adding (the backlog bounded, the stream trimmed), while RSS is sampled: is memory flat?

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::{verify_drained, Env, BLOCK};
use crate::measure::{self, Snapshot};
use crate::mr::{self, MrHandler, MrRun};
use crate::workload::{event, Progress};
use crate::Res;

/// Backlog the producer keeps at most (added, not yet handled).
const MAX_BACKLOG: u64 = 100_000;
const CHUNK: u64 = 5_000;

/// One RSS sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) handled: u64,
    pub(crate) elapsed: Duration,
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
}

/// The soak's outcome.
#[derive(Debug, Clone)]
pub(crate) struct SoakResult {
    pub(crate) messages: u64,
    pub(crate) consumers: usize,
    pub(crate) count: usize,
    pub(crate) samples: Vec<Sample>,
    pub(crate) msgs_per_sec: f64,
    pub(crate) client_us: f64,
    pub(crate) server_us: f64,
    pub(crate) conns_left: usize,
}

async fn producer(
    client: redis::Client,
    stream: String,
    total: u64,
    progress: Arc<Progress>,
) -> Res<()> {
    let mut conn = crate::workload::connect(&client).await?;
    let mut added = 0u64;
    while added < total {
        if added.saturating_sub(progress.handled()) > MAX_BACKLOG {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let n = CHUNK.min(total - added);
        let mut pipe = redis::pipe();
        for i in added..added + n {
            let (user, action, page) = event(i as usize);
            // Entries older than the newest 300k were all delivered (the backlog is at most ~105k),
            // so trimming them never loses an unread entry.
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(300_000)
                .arg("*")
                .arg("user_id")
                .arg(user)
                .arg("action")
                .arg(action)
                .arg("page")
                .arg(page)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        added += n;
    }
    Ok(())
}

pub(crate) async fn run(
    env: &mut Env,
    total: u64,
    consumers: usize,
    count: usize,
) -> Res<SoakResult> {
    let stream = "bench:soak".to_owned();
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
    measure::reset_peak_rss();
    let before = Snapshot::take(&mut env.admin).await?;
    let settings = MrRun {
        url: env.url.clone(),
        stream: stream.clone(),
        group: group.clone(),
        consumers,
        count: Some(count),
        block: BLOCK,
        handler: MrHandler::Noop,
        tls: env.tls.clone(),
    };
    let running = mr::start(&settings, total).await?;
    let mut feeder = Some(tokio::spawn(producer(
        env.client.clone(),
        stream.clone(),
        total,
        running.progress.clone(),
    )));
    let start = Instant::now();
    let step = (total / 20).max(1);
    let mut next = step;
    let mut samples = Vec::new();
    let (mut last_handled, mut last_change) = (0, Instant::now());
    while !running.progress.is_done() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if running.progress.handled() != last_handled {
            (last_handled, last_change) = (running.progress.handled(), Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(60) {
            return Err(format!("soak stalled at {last_handled} handled entries").into());
        }
        if feeder.as_ref().is_some_and(|f| f.is_finished()) {
            // Surface a producer error at once instead of waiting for the limit.
            if let Some(f) = feeder.take() {
                f.await.map_err(|e| format!("soak producer: {e}"))??;
            }
        }
        let handled = running.progress.handled();
        if handled >= next {
            let (rss, hwm) = measure::rss_kib();
            samples.push(Sample {
                handled,
                elapsed: start.elapsed(),
                rss_kib: rss,
                hwm_kib: hwm,
            });
            println!(
                "  soak: {handled:>10} handled, {:>6.1}s, RSS {:.1} MiB (peak {:.1} MiB)",
                start.elapsed().as_secs_f64(),
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
            next = (handled / step + 1) * step;
        }
    }
    if let Some(f) = feeder.take() {
        f.await.map_err(|e| format!("soak producer: {e}"))??;
    }
    let end = running.wait_acked(Duration::from_secs(600)).await?;
    let after = Snapshot::take(&mut env.admin).await?;
    let handled = running.progress.handled();
    let (rss, hwm) = measure::rss_kib();
    if samples.last().map(|s| s.handled) != Some(handled) {
        samples.push(Sample {
            handled,
            elapsed: start.elapsed(),
            rss_kib: rss,
            hwm_kib: hwm,
        });
    }
    running.shutdown().await?;
    let left =
        measure::settle_clients(&mut env.admin, env.base_clients, Duration::from_secs(2)).await?;
    verify_drained(&mut env.admin, &stream, &group, total).await?;
    let cost = measure::Cost::between(&before, &after, end, handled);
    Ok(SoakResult {
        messages: total,
        consumers,
        count,
        samples,
        msgs_per_sec: cost.msgs_per_sec(),
        client_us: cost.client_us_per_msg(),
        server_us: cost.server_us_per_msg(),
        conns_left: left.saturating_sub(env.base_clients),
    })
}
