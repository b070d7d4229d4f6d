//! The cluster section: the test kit's Redis Cluster (3 masters + 3 replicas), one preloaded stream
//! per master (names chosen so that each lands on a different master), drained by
//!
//! * the read-ahead loop (b) of [`baseline`], one per stream, on plain redis-rs
//!   connections to the stream's owner (a blocking read connection on its own thread, acks on a
//!   multiplexed one), and
//! * millrace on `Supervisor::builder().redis_cluster(seeds)`, one consumer per stream,
//!
//! for the three masters at once and for one master alone, alternating within every round. The CPU
//! of the client and of every `redis-server` (masters and replicas: a master ships every read and
//! ack to its replica) is read before each run and after its replicas caught up (`WAIT`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Value;

use millrace_testkit::RedisCluster;

use crate::baseline::{self, Loop, Target};
use crate::bench::{median, verify_drained, BLOCK};
use crate::measure;
use crate::mr;
use crate::report::thousands;
use crate::workload::{Progress, Work};
use crate::Res;

/// Entries per read, in both variants.
const COUNT: usize = 500;

/// Who drains the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The read-ahead loop (b), hand-written on redis-rs, one per stream.
    HandWritten,
    /// millrace on a cluster client, one consumer per stream.
    Millrace,
}

impl Who {
    fn label(self) -> &'static str {
        match self {
            Who::HandWritten => "(b) read-ahead, redis-rs to each owner",
            Who::Millrace => "(c) millrace, redis_cluster(seeds)",
        }
    }
}

/// One stream and the master that owns it.
#[derive(Debug)]
struct Shard {
    stream: String,
    /// Index of the owning node.
    owner: usize,
}

/// What one run cost.
#[derive(Debug, Clone)]
struct ClusterRun {
    who: Who,
    streams: usize,
    wall: Duration,
    handled: u64,
    client_cpu: f64,
    /// CPU seconds of every node, by node index.
    node_cpu: Vec<f64>,
}

impl ClusterRun {
    fn rate(&self) -> f64 {
        self.handled as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn busy(&self, cpu: f64) -> f64 {
        cpu / self.wall.as_secs_f64().max(1e-9)
    }

    /// CPU µs per entry.
    fn per_msg(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.handled.max(1) as f64
    }
}

/// The cluster, its streams and an admin connection to every node.
struct ClusterEnv {
    cluster: RedisCluster,
    shards: Vec<Shard>,
    /// One per node, by node index.
    admins: Vec<MultiplexedConnection>,
    /// "master" or "replica of n", by node index, as at start.
    roles: Vec<String>,
    seq: u64,
}

async fn node_cpus(admins: &mut [MultiplexedConnection]) -> Res<Vec<f64>> {
    let mut out = Vec::with_capacity(admins.len());
    for a in admins {
        out.push(measure::server_cpu(a).await?);
    }
    Ok(out)
}

async fn xgroup(conn: &mut MultiplexedConnection, args: &[&str]) -> Res<()> {
    let _: Value = redis::cmd("XGROUP").arg(args).query_async(conn).await?;
    Ok(())
}

impl ClusterEnv {
    async fn start(per_stream: usize) -> Res<ClusterEnv> {
        let t = Instant::now();
        let cluster = tokio::task::spawn_blocking(RedisCluster::start).await?;
        let masters = cluster.masters();
        println!(
            "started a cluster of {} nodes ({} masters) in {:.2?}",
            cluster.nodes().len(),
            masters.len(),
            t.elapsed()
        );
        let mut shards = Vec::new();
        for &m in &masters {
            // `{sN}` is the hash tag: the first N whose slot this master owns.
            let stream = (0..10_000)
                .map(|n| format!("bench:{{s{n}}}:events"))
                .find(|s| cluster.owner_of_key(s) == m)
                .ok_or_else(|| format!("no stream name found for master {m}"))?;
            shards.push(Shard { stream, owner: m });
        }
        let mut admins = Vec::new();
        let mut roles = Vec::new();
        for node in cluster.nodes() {
            admins.push(crate::workload::connect(&node.client()).await?);
            let i = node.index();
            roles.push(if masters.contains(&i) {
                "master".to_owned()
            } else {
                let of = masters
                    .iter()
                    .find(|&&m| cluster.replicas_of(m).contains(&i))
                    .map_or("?".to_owned(), |m| m.to_string());
                format!("replica of {of}")
            });
        }
        for s in &shards {
            let t = Instant::now();
            crate::workload::preload(&mut admins[s.owner], &s.stream, per_stream).await?;
            println!(
                "preloaded {per_stream} entries into `{}` (slot {}, master node {}) in {:.2?}",
                s.stream,
                cluster.keyslot(&s.stream),
                s.owner,
                t.elapsed()
            );
        }
        Ok(ClusterEnv {
            cluster,
            shards,
            admins,
            roles,
            seq: 0,
        })
    }

    /// One run of `who` over the first `streams` shards, each on a fresh group.
    async fn run_once(&mut self, who: Who, streams: usize, per_stream: usize) -> Res<ClusterRun> {
        self.seq += 1;
        let group = format!("g{}", self.seq);
        let shards: Vec<(String, usize)> = self.shards[..streams]
            .iter()
            .map(|s| (s.stream.clone(), s.owner))
            .collect();
        for (stream, owner) in &shards {
            xgroup(&mut self.admins[*owner], &["CREATE", stream, &group, "0"]).await?;
        }
        let n = per_stream as u64;
        let limit = Duration::from_secs(300);
        let cpu0 = node_cpus(&mut self.admins).await?;
        let (at0, client0) = (Instant::now(), measure::process_cpu());
        let (end, handled) = match who {
            Who::HandWritten => {
                let mut runs = Vec::new();
                let mut progresses = Vec::new();
                for (stream, owner) in &shards {
                    let target = Target {
                        client: self.cluster.node(*owner).client(),
                        stream: stream.as_str().into(),
                        group: group.as_str().into(),
                        count: COUNT,
                        block_ms: BLOCK.as_millis() as u64,
                        work: Work::Noop,
                    };
                    let progress = Arc::new(Progress::new(n));
                    progresses.push(progress.clone());
                    runs.push(baseline::run(Loop::ReadAhead, target, 1, progress));
                }
                let ends = tokio::time::timeout(limit, futures::future::join_all(runs))
                    .await
                    .map_err(|_| format!("the hand-written loops did not finish in {limit:?}"))?;
                let mut last = at0;
                for e in ends {
                    last = last.max(e?);
                }
                (last, progresses.iter().map(|p| p.handled()).sum::<u64>())
            }
            Who::Millrace => {
                let pairs: Vec<(String, String)> = shards
                    .iter()
                    .map(|(s, _)| (s.clone(), group.clone()))
                    .collect();
                let running = mr::start_cluster(
                    self.cluster.seed_urls(),
                    &pairs,
                    COUNT,
                    BLOCK,
                    n * streams as u64,
                )
                .await?;
                let end = running.wait_acked(limit).await?;
                let handled = running.progress.handled();
                running.shutdown().await?;
                (end, handled)
            }
        };
        let client_cpu = measure::process_cpu().saturating_sub(client0).as_secs_f64();
        // The replicas apply the run's replication stream after the last ack; wait until they
        // have caught up, so their CPU is counted in this run and not in the next one.
        for (_, owner) in &shards {
            let _: i64 = redis::cmd("WAIT")
                .arg(1)
                .arg(10_000)
                .query_async(&mut self.admins[*owner])
                .await?;
        }
        let cpu1 = node_cpus(&mut self.admins).await?;
        let expected = n * streams as u64;
        if handled != expected {
            return Err(format!(
                "{}: handled {handled} entries, expected exactly {expected}",
                who.label()
            )
            .into());
        }
        for (stream, owner) in &shards {
            verify_drained(&mut self.admins[*owner], stream, &group, n).await?;
            xgroup(&mut self.admins[*owner], &["DESTROY", stream, &group]).await?;
        }
        Ok(ClusterRun {
            who,
            streams,
            wall: end.saturating_duration_since(at0),
            handled,
            client_cpu,
            node_cpu: cpu0
                .iter()
                .zip(&cpu1)
                .map(|(a, b)| (b - a).max(0.0))
                .collect(),
        })
    }
}

/// The medians of one (who, streams) cell.
struct Cell {
    who: Who,
    streams: usize,
    rate: f64,
    min: f64,
    max: f64,
    /// Client CPU µs per entry.
    client_us: f64,
    /// CPU µs per entry of every node, by node index.
    node_us: Vec<f64>,
    /// Of all nodes together.
    servers_us: f64,
}

fn cell(runs: &[ClusterRun], who: Who, streams: usize, nodes: usize) -> Cell {
    let mine: Vec<&ClusterRun> = runs
        .iter()
        .filter(|r| r.who == who && r.streams == streams)
        .collect();
    let rates: Vec<f64> = mine.iter().map(|r| r.rate()).collect();
    Cell {
        who,
        streams,
        rate: median(rates.clone()),
        min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        max: rates.iter().copied().fold(0.0, f64::max),
        client_us: median(mine.iter().map(|r| r.per_msg(r.client_cpu)).collect()),
        node_us: (0..nodes)
            .map(|i| median(mine.iter().map(|r| r.per_msg(r.node_cpu[i])).collect()))
            .collect(),
        servers_us: median(
            mine.iter()
                .map(|r| r.per_msg(r.node_cpu.iter().sum()))
                .collect(),
        ),
    }
}

fn verdict(ratio: f64, target: f64) -> &'static str {
    if ratio >= target {
        "met"
    } else {
        "not met"
    }
}

/// Runs the section and returns its Markdown tables.
pub(crate) async fn run(per_stream: usize, rounds: usize) -> Res<String> {
    let mut env = ClusterEnv::start(per_stream).await?;
    let masters = env.shards.len();
    let nodes = env.admins.len();
    // Rotate the order every round so no run always comes first (or last).
    let order = [
        (Who::HandWritten, masters),
        (Who::Millrace, masters),
        (Who::HandWritten, 1),
        (Who::Millrace, 1),
    ];
    let mut runs = Vec::new();
    for round in 0..rounds {
        for i in 0..order.len() {
            let (who, streams) = order[(i + round) % order.len()];
            let r = env.run_once(who, streams, per_stream).await?;
            let nodes_line: Vec<String> = r
                .node_cpu
                .iter()
                .map(|c| format!("{:.0}%", r.busy(*c) * 100.0))
                .collect();
            println!(
                "  round {}/{rounds} {:<40} {} master(s) {:>10} msgs/s  client {:>4.0}%  nodes {}",
                round + 1,
                who.label(),
                streams,
                thousands(r.rate()),
                r.busy(r.client_cpu) * 100.0,
                nodes_line.join(" ")
            );
            runs.push(r);
        }
    }
    let cells: Vec<Cell> = order
        .iter()
        .map(|&(who, streams)| cell(&runs, who, streams, nodes))
        .collect();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Redis Cluster: {masters} masters + {} replicas, one stream per master, {per_stream} entries per stream per run, COUNT {COUNT}, no-op handler, {rounds} rounds\n",
        nodes - masters
    );
    let _ = write!(
        out,
        "| variant | masters | msgs/s (median) | min–max | client CPU µs/msg | all nodes µs/msg |"
    );
    for (i, role) in env.roles.iter().enumerate() {
        let _ = write!(out, " node {i} ({role}) µs/msg |");
    }
    let _ = write!(out, "\n|---|--:|--:|--:|--:|--:|");
    for _ in 0..nodes {
        let _ = write!(out, "--:|");
    }
    out.push('\n');
    for c in &cells {
        let _ = write!(
            out,
            "| {} | {} | {} | {}–{} | {:.2} | {:.2} |",
            c.who.label(),
            c.streams,
            thousands(c.rate),
            thousands(c.min),
            thousands(c.max),
            c.client_us,
            c.servers_us
        );
        for us in &c.node_us {
            let _ = write!(out, " {us:.2} |");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\nCPU columns are CPU µs per entry, medians over the rounds (the per-run lines above give \
         CPU over wall time instead; a replica can exceed 100% there, as it goes on applying the \
         run after the last ack); each \
         node's is `used_cpu_sys + used_cpu_user` from its `INFO cpu`, read before the run and \
         after `WAIT 1` on every master used (the replicas have applied the run by then); \
         msgs/s ends at the last ack.\n"
    );
    let rate = |who: Who, streams: usize| {
        cells
            .iter()
            .find(|c| c.who == who && c.streams == streams)
            .map_or(f64::NAN, |c| c.rate)
    };
    let mr_vs_hw_all = rate(Who::Millrace, masters) / rate(Who::HandWritten, masters);
    let mr_vs_hw_one = rate(Who::Millrace, 1) / rate(Who::HandWritten, 1);
    let mr_scale = rate(Who::Millrace, masters) / rate(Who::Millrace, 1);
    let hw_scale = rate(Who::HandWritten, masters) / rate(Who::HandWritten, 1);
    let _ = writeln!(out, "| ratio | value | target | |\n|---|---|---|---|");
    let _ = writeln!(
        out,
        "| millrace / hand-written, {masters} masters | {mr_vs_hw_all:.2}× | ≥ 0.9× | {} |",
        verdict(mr_vs_hw_all, 0.9)
    );
    let _ = writeln!(
        out,
        "| millrace / hand-written, 1 master | {mr_vs_hw_one:.2}× | ≥ 0.9× | {} |",
        verdict(mr_vs_hw_one, 0.9)
    );
    let _ = writeln!(
        out,
        "| millrace, {masters} masters / 1 master | {mr_scale:.2}× | ≥ 1.3× | {} |",
        verdict(mr_scale, 1.3)
    );
    let _ = writeln!(
        out,
        "| hand-written, {masters} masters / 1 master | {hw_scale:.2}× | (reference) | |"
    );
    drop(env);
    Ok(out)
}
