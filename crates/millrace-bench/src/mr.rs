//! (c): millrace through its public API, with a no-op, a typed or a latency-recording handler.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use millrace::{
    Batch, ConnectionOptions, ConsumerOptions, ConsumerSpec, HandlerResult, RawEntry, StartId,
    Supervisor,
};

use crate::workload::{Progress, Samples, UserEvent};
use crate::Res;

/// What the handler does.
#[derive(Debug, Clone)]
pub(crate) enum MrHandler {
    Noop,
    Typed,
    Latency(Arc<Samples>),
    /// Sleeps this long per entry of the batch (a handler that waits on I/O).
    SleepPerEntry(Duration),
}

/// One millrace run's settings.
#[derive(Debug, Clone)]
pub(crate) struct MrRun {
    pub(crate) url: String,
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) consumers: usize,
    /// `COUNT`, or `None` for millrace's default, the adaptive read size.
    pub(crate) count: Option<usize>,
    pub(crate) block: Duration,
    pub(crate) handler: MrHandler,
    /// The CA to trust for a `rediss://` URL.
    pub(crate) tls: Option<redis::TlsCertificates>,
}

/// Overrides of millrace's claim settings for every run (diagnostics; defaults otherwise).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tuning {
    pub(crate) claim_count: Option<usize>,
    pub(crate) claim_calls_per_tick: Option<usize>,
}

static TUNING: OnceLock<Tuning> = OnceLock::new();

/// Sets the overrides; call once before any run.
pub(crate) fn set_tuning(t: Tuning) {
    let _ = TUNING.set(t);
}

fn options() -> ConsumerOptions {
    let mut o = ConsumerOptions::default();
    let t = TUNING.get().copied().unwrap_or_default();
    if let Some(n) = t.claim_count {
        o.claim_count = n;
    }
    if let Some(n) = t.claim_calls_per_tick {
        o.claim_calls_per_tick = n;
    }
    o
}

fn spec(run: &MrRun, i: usize, progress: &Arc<Progress>) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(&run.stream, &run.group, format!("c{i}"))
        .with_options(options())
        .block(run.block)
        .start_id(StartId::Beginning);
    if let Some(count) = run.count {
        spec = spec.count(count);
    }
    let progress = progress.clone();
    match &run.handler {
        MrHandler::Noop => spec.handler(move |batch: Batch<RawEntry>| {
            let progress = progress.clone();
            async move {
                progress.add(std::hint::black_box(&batch).len());
                HandlerResult::Ok
            }
        }),
        MrHandler::Typed => spec.handler(move |batch: Batch<UserEvent>| {
            let progress = progress.clone();
            async move {
                for entry in &batch {
                    std::hint::black_box((
                        entry.message.user_id,
                        &entry.message.action,
                        &entry.message.page,
                    ));
                }
                progress.add(batch.len());
                HandlerResult::Ok
            }
        }),
        MrHandler::SleepPerEntry(each) => {
            let each = *each;
            spec.handler(move |batch: Batch<RawEntry>| {
                let progress = progress.clone();
                async move {
                    tokio::time::sleep(each * batch.len() as u32).await;
                    progress.add(batch.len());
                    HandlerResult::Ok
                }
            })
        }
        MrHandler::Latency(samples) => {
            let samples = samples.clone();
            spec.handler(move |batch: Batch<RawEntry>| {
                let (progress, samples) = (progress.clone(), samples.clone());
                async move {
                    for entry in &batch {
                        if let Some(ts) = entry.message.get("ts") {
                            samples.record_ts(ts);
                        }
                    }
                    progress.add(batch.len());
                    HandlerResult::Ok
                }
            })
        }
    }
}

/// A started supervisor and its progress.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) supervisor: Supervisor,
    pub(crate) progress: Arc<Progress>,
}

/// Starts the supervisor with `run.consumers` consumers.
pub(crate) async fn start(run: &MrRun, target: u64) -> Res<Running> {
    let progress = Arc::new(Progress::new(target));
    let mut options = ConnectionOptions::default();
    if let Some(certificates) = &run.tls {
        options = options.tls_certificates(certificates.clone());
    }
    let supervisor = Supervisor::builder()
        .redis(run.url.clone())
        .connection_options(options)
        .consumers((0..run.consumers).map(|i| spec(run, i, &progress)))
        .start()
        .await?;
    Ok(Running {
        supervisor,
        progress,
    })
}

/// Starts a supervisor on a Redis Cluster with one no-op consumer per `(stream, group)`; `target`
/// is the number of entries of all streams together.
pub(crate) async fn start_cluster(
    seeds: Vec<String>,
    streams: &[(String, String)],
    count: usize,
    block: Duration,
    target: u64,
) -> Res<Running> {
    let progress = Arc::new(Progress::new(target));
    let specs = streams.iter().enumerate().map(|(i, (stream, group))| {
        let run = MrRun {
            url: String::new(),
            stream: stream.clone(),
            group: group.clone(),
            consumers: 1,
            count: Some(count),
            block,
            handler: MrHandler::Noop,
            tls: None,
        };
        spec(&run, i, &progress)
    });
    let supervisor = Supervisor::builder()
        .redis_cluster(seeds)
        .consumers(specs)
        .start()
        .await?;
    Ok(Running {
        supervisor,
        progress,
    })
}

impl Running {
    fn acked(&self) -> u64 {
        self.supervisor
            .health()
            .iter()
            .map(|h| h.counters.acked)
            .sum()
    }

    /// Waits until the target is handled and acknowledged; returns when the last ack completed (to
    /// within the polling: a tight yield loop first, then 1 ms sleeps).
    pub(crate) async fn wait_acked(&self, limit: Duration) -> Res<Instant> {
        let target = self.progress_target();
        tokio::time::timeout(limit, self.progress.wait())
            .await
            .map_err(|_| {
                format!(
                    "millrace handled {} of {target} entries within {limit:?}; health: {:?}",
                    self.progress.handled(),
                    self.supervisor.health().first()
                )
            })?;
        let spin_until = Instant::now() + Duration::from_millis(20);
        let give_up = Instant::now() + limit;
        loop {
            if self.acked() >= target {
                return Ok(Instant::now());
            }
            if Instant::now() > give_up {
                return Err(
                    format!("millrace acknowledged {} of {target} entries", self.acked()).into(),
                );
            }
            if Instant::now() < spin_until {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    fn progress_target(&self) -> u64 {
        self.progress.target()
    }

    /// Graceful shutdown; returns how long it took.
    pub(crate) async fn shutdown(self) -> Res<Duration> {
        let t = Instant::now();
        self.supervisor.shutdown().await?;
        Ok(t.elapsed())
    }
}
