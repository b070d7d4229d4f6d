//! The throughput runs: one preloaded stream, a fresh consumer group per run, variants alternating
//! over rounds, every run checked (every entry handled once, nothing left pending).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Client, Value};

use crate::baseline::{self, Loop, Target};
use crate::measure::{self, Cost, Snapshot};
use crate::mr::{self, MrHandler, MrRun};
use crate::workload::{Progress, Work};
use crate::Res;

/// How long one read blocks, in every variant.
pub(crate) const BLOCK: Duration = Duration::from_millis(100);

/// A way of draining the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Variant {
    /// (a) sequential XREADGROUP then XACK, raw replies.
    A,
    /// (a′) sequential through redis-rs's `StreamReadReply`.
    A2,
    /// (b) read-ahead on a blocking connection.
    B,
    /// (b′) read-ahead on a multiplexed connection.
    B2,
    /// (c) millrace.
    C,
}

impl Variant {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Variant::A => "(a) sequential",
            Variant::A2 => "(a') sequential, redis-rs StreamReadReply",
            Variant::B => "(b) read-ahead",
            Variant::B2 => "(b') read-ahead, multiplexed connection",
            Variant::C => "(c) millrace",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Variant> {
        match s.trim() {
            "a" => Some(Variant::A),
            "a'" | "a2" => Some(Variant::A2),
            "b" => Some(Variant::B),
            "b'" | "b2" => Some(Variant::B2),
            "c" => Some(Variant::C),
            _ => None,
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One configuration of the matrix.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Short key, e.g. `count500-c1`.
    pub(crate) key: String,
    pub(crate) title: String,
    pub(crate) count: usize,
    pub(crate) consumers: usize,
    pub(crate) typed: bool,
    pub(crate) variants: Vec<Variant>,
    /// Entries drained per run.
    pub(crate) messages: usize,
}

/// One measured run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) variant: Variant,
    pub(crate) cost: Cost,
    /// millrace only: how long `shutdown()` took.
    pub(crate) shutdown: Option<Duration>,
    /// millrace only: connections of the run still open right after `shutdown()` returned.
    pub(crate) conns_left: Option<ConnsLeft>,
    /// Server time per command during the run (up to the ack of the last entry; for millrace this
    /// also covers the shutdown).
    pub(crate) commands: Vec<(String, u64, u64)>,
}

/// Connections of a millrace run left open after `shutdown()` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ConnsLeft {
    /// Right after it returned.
    pub(crate) immediately: usize,
    /// After waiting up to 2 s for them to close.
    pub(crate) after_wait: usize,
    /// How long that wait took.
    pub(crate) waited: Duration,
}

impl fmt::Display for ConnsLeft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.immediately == 0 {
            write!(f, "0 connections left")
        } else {
            write!(
                f,
                "{} connection(s) still open when it returned, {} after {:.1?}",
                self.immediately, self.after_wait, self.waited
            )
        }
    }
}

/// The server, the preloaded stream and an admin connection.
#[derive(Debug)]
pub(crate) struct Env {
    pub(crate) url: String,
    pub(crate) client: Client,
    pub(crate) admin: MultiplexedConnection,
    /// Normal clients open when no run is going (the admin connection).
    pub(crate) base_clients: usize,
    pub(crate) stream: String,
    pub(crate) preloaded: usize,
    seq: u64,
    /// The CA to trust, for a `rediss://` server.
    pub(crate) tls: Option<redis::TlsCertificates>,
}

impl Env {
    pub(crate) async fn new(url: String) -> Res<Env> {
        Env::connect(url, None).await
    }

    /// An environment on a `rediss://` server whose certificate `tls` vouches for.
    pub(crate) async fn with_tls(url: String, tls: redis::TlsCertificates) -> Res<Env> {
        millrace::install_tls_provider();
        Env::connect(url, Some(tls)).await
    }

    async fn connect(url: String, tls: Option<redis::TlsCertificates>) -> Res<Env> {
        let client = match &tls {
            Some(certificates) => Client::build_with_tls(url.as_str(), certificates.clone())?,
            None => Client::open(url.as_str())?,
        };
        let mut admin = crate::workload::connect(&client).await?;
        let base_clients = measure::client_count(&mut admin).await?;
        Ok(Env {
            url,
            client,
            admin,
            base_clients,
            stream: "bench:events".to_owned(),
            preloaded: 0,
            seq: 0,
            tls,
        })
    }

    pub(crate) fn next_name(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{}", self.seq)
    }

    /// Makes the stream hold exactly `n` entries (preloads again only when `n` changes).
    pub(crate) async fn ensure_preloaded(&mut self, n: usize) -> Res<()> {
        if self.preloaded != n {
            let t = std::time::Instant::now();
            crate::workload::preload(&mut self.admin, &self.stream, n).await?;
            println!(
                "preloaded {n} entries into `{}` in {:.2?}",
                self.stream,
                t.elapsed()
            );
            self.preloaded = n;
        }
        Ok(())
    }

    /// Waits until only the admin connection is open.
    pub(crate) async fn quiesce(&mut self) -> Res<()> {
        let n = measure::settle_clients(&mut self.admin, self.base_clients, Duration::from_secs(5))
            .await?;
        if n > self.base_clients {
            println!(
                "  warning: {} connections of earlier runs still open",
                n - self.base_clients
            );
        }
        Ok(())
    }
}

/// `XINFO GROUPS` of `stream`, the entry for `group`.
pub(crate) async fn group_info(
    admin: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Res<HashMap<String, Value>> {
    let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(admin)
        .await?;
    groups
        .into_iter()
        .find(|g| matches!(g.get("name"), Some(Value::BulkString(n)) if n == group.as_bytes()))
        .ok_or_else(|| format!("group {group} not found on {stream}").into())
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

/// Fails unless the group has nothing pending and has read `expected` entries.
pub(crate) async fn verify_drained(
    admin: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    expected: u64,
) -> Res<()> {
    let info = group_info(admin, stream, group).await?;
    let pending = int(info.get("pending"));
    let read = int(info.get("entries-read"));
    if pending != Some(0) {
        return Err(format!("group {group}: {pending:?} entries left pending").into());
    }
    if let Some(read) = read {
        if read as u64 != expected {
            return Err(format!("group {group}: read {read} entries, expected {expected}").into());
        }
    }
    Ok(())
}

async fn xgroup(admin: &mut MultiplexedConnection, args: &[&str]) -> Res<()> {
    let _: Value = redis::cmd("XGROUP").arg(args).query_async(admin).await?;
    Ok(())
}

/// One run of `variant` on a fresh group over the preloaded stream.
pub(crate) async fn run_once(env: &mut Env, cfg: &Config, variant: Variant) -> Res<Run> {
    env.ensure_preloaded(cfg.messages).await?;
    let group = env.next_name("g");
    let stream = env.stream.clone();
    xgroup(&mut env.admin, &["CREATE", &stream, &group, "0"]).await?;
    env.quiesce().await?;
    let n = cfg.messages as u64;
    let limit = Duration::from_secs(300);
    measure::reset_commandstats(&mut env.admin).await?;
    measure::reset_peak_rss();
    let before = Snapshot::take(&mut env.admin).await?;
    let mut run = match variant {
        Variant::A | Variant::A2 | Variant::B | Variant::B2 => {
            let kind = match variant {
                Variant::A => Loop::Sequential,
                Variant::A2 => Loop::SequentialTypedApi,
                Variant::B2 => Loop::ReadAheadMultiplexed,
                _ => Loop::ReadAhead,
            };
            let target = Target {
                client: env.client.clone(),
                stream: stream.as_str().into(),
                group: group.as_str().into(),
                count: cfg.count,
                block_ms: BLOCK.as_millis() as u64,
                work: if cfg.typed { Work::Typed } else { Work::Noop },
            };
            let progress = Arc::new(Progress::new(n));
            let end = tokio::time::timeout(
                limit,
                baseline::run(kind, target, cfg.consumers, progress.clone()),
            )
            .await
            .map_err(|_| format!("{variant} did not finish within {limit:?}"))??;
            let after = Snapshot::take(&mut env.admin).await?;
            Run {
                variant,
                cost: Cost::between(&before, &after, end, progress.handled()),
                shutdown: None,
                conns_left: None,
                commands: Vec::new(),
            }
        }
        Variant::C => {
            let settings = MrRun {
                url: env.url.clone(),
                stream: stream.clone(),
                group: group.clone(),
                consumers: cfg.consumers,
                count: Some(cfg.count),
                block: BLOCK,
                handler: if cfg.typed {
                    MrHandler::Typed
                } else {
                    MrHandler::Noop
                },
                tls: env.tls.clone(),
            };
            let running = mr::start(&settings, n).await?;
            let end = running.wait_acked(limit).await?;
            let after = Snapshot::take(&mut env.admin).await?;
            let handled = running.progress.handled();
            let shutdown = running.shutdown().await?;
            let immediately = measure::client_count(&mut env.admin).await?;
            let t = std::time::Instant::now();
            let settled =
                measure::settle_clients(&mut env.admin, env.base_clients, Duration::from_secs(2))
                    .await?;
            let waited = t.elapsed();
            Run {
                variant,
                cost: Cost::between(&before, &after, end, handled),
                shutdown: Some(shutdown),
                conns_left: Some(ConnsLeft {
                    immediately: immediately.saturating_sub(env.base_clients),
                    after_wait: settled.saturating_sub(env.base_clients),
                    waited,
                }),
                commands: Vec::new(),
            }
        }
    };
    run.commands = measure::commandstats(&mut env.admin).await?;
    if run.cost.handled != n {
        return Err(format!(
            "{variant}: handled {} entries, expected exactly {n}",
            run.cost.handled
        )
        .into());
    }
    verify_drained(&mut env.admin, &stream, &group, n).await?;
    xgroup(&mut env.admin, &["DESTROY", &stream, &group]).await?;
    Ok(run)
}

/// Median of a list (mean of the two middle values for an even length).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Medians of one variant's runs in one configuration.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub(crate) variant: Variant,
    pub(crate) msgs_per_sec: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) client_us: f64,
    pub(crate) server_us: f64,
    pub(crate) server_busy: f64,
    pub(crate) others_busy: f64,
    pub(crate) peak_rss_kib: u64,
    pub(crate) shutdown: Option<Duration>,
    pub(crate) conns_left: Option<ConnsLeft>,
    /// Server time per command in the last run.
    pub(crate) commands: Vec<(String, u64, u64)>,
}

pub(crate) fn summarize(variant: Variant, runs: &[Run]) -> Summary {
    let mine: Vec<&Run> = runs.iter().filter(|r| r.variant == variant).collect();
    let each = |f: &dyn Fn(&Run) -> f64| median(mine.iter().map(|r| f(r)).collect());
    let rates: Vec<f64> = mine.iter().map(|r| r.cost.msgs_per_sec()).collect();
    Summary {
        variant,
        msgs_per_sec: median(rates.clone()),
        min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        max: rates.iter().copied().fold(0.0, f64::max),
        client_us: each(&|r| r.cost.client_us_per_msg()),
        server_us: each(&|r| r.cost.server_us_per_msg()),
        server_busy: each(&|r| r.cost.server_busy()),
        others_busy: each(&|r| r.cost.others_busy()),
        peak_rss_kib: mine.iter().map(|r| r.cost.peak_rss_kib).max().unwrap_or(0),
        shutdown: mine.iter().filter_map(|r| r.shutdown).max(),
        conns_left: mine.iter().filter_map(|r| r.conns_left).max(),
        commands: mine.last().map(|r| r.commands.clone()).unwrap_or_default(),
    }
}
