//! Distributed order processing with crashing workers, and the process the fault suite drives.
//!
//! Run it (with a Redis at REDIS_URL, e.g. `redis-server --port 6379 &`):
//!     cargo run -p millrace-examples --example orders -- produce --count 1000
//!     cargo run -p millrace-examples --example orders -- work --consumer w1 --panic-rate 0.05 &
//!     cargo run -p millrace-examples --example orders -- work --consumer w2 --fail-rate 0.1 &
//!     cargo run -p millrace-examples --example orders -- report
//! `--redis URL` overrides REDIS_URL; `--redis-cluster URL[,URL…]` runs all three on a Redis
//! Cluster instead (the URLs of some of its nodes), and `--redis-sentinel
//! [USER:PASSWORD@]MASTER=URL[,URL…]` on the master behind Redis Sentinel (as the CLI's option;
//! `work`'s consumers follow it through failovers, the example's own connections, the producer's
//! included, go to the master the Sentinels named at start). `--streams N` (on all three) spreads the orders
//! over N streams, `orders:new:0` … `orders:new:{N-1}`, and `work` reads them all as one
//! multi-stream consumer. `work` runs until SIGINT or SIGTERM, then drains and exits 0.
//! `report` prints one JSON object: produced, processed, duplicates, dead_lettered, pending, lost.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use millrace::{
    Batch, ConsumerSpec, Handler, HandlerResult, MultiStreamSpec, RestartPolicy, StartId,
    Supervisor,
};
use rand::Rng;

#[derive(Parser)]
#[command(about = "Order processing with supervised, crash-prone workers")]
struct Cli {
    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    redis: String,
    /// A Redis Cluster's node URLs, separated by commas (used instead of `--redis`).
    #[arg(long, value_delimiter = ',')]
    redis_cluster: Vec<String>,
    /// The master behind Redis Sentinel: `[USER:PASSWORD@]MASTER=URL[,URL…]`, the data nodes'
    /// credentials, the master's name and the Sentinels' URLs (used instead of `--redis`).
    #[arg(long, hide_env_values = true, conflicts_with = "redis_cluster")]
    redis_sentinel: Option<String>,
    /// Spread the orders over this many streams, `<stream>:0` … `<stream>:{N-1}` (1: `<stream>`
    /// alone); `work` reads them all as one multi-stream consumer.
    #[arg(long, default_value_t = 1, global = true)]
    streams: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the orders live: one server, a cluster, or the master behind Sentinels.
#[derive(Clone)]
enum Target {
    Server(String),
    Cluster(Vec<String>),
    Sentinel {
        master: String,
        sentinels: Vec<String>,
        /// The data nodes' username (empty for the default user) and password.
        auth: Option<(String, String)>,
    },
}

impl Target {
    /// `[USER:PASSWORD@]MASTER=URL[,URL…]`.
    fn sentinel(arg: &str) -> AnyResult<Target> {
        let (head, urls) = arg
            .split_once('=')
            .ok_or("--redis-sentinel: give MASTER=URL[,URL…]")?;
        let (auth, master) = match head.rsplit_once('@') {
            Some((auth, master)) => {
                let (user, pw) = auth.split_once(':').unwrap_or(("", auth));
                (Some((user.to_owned(), pw.to_owned())), master)
            }
            None => (None, head),
        };
        Ok(Target::Sentinel {
            master: master.to_owned(),
            sentinels: urls.split(',').map(str::to_owned).collect(),
            auth,
        })
    }

    /// One server's URL for the example's own connections: behind Sentinel, the master's now
    /// (`SENTINEL get-master-addr-by-name` on the first Sentinel that knows it).
    async fn resolved(&self) -> AnyResult<Target> {
        let Target::Sentinel {
            master,
            sentinels,
            auth,
        } = self
        else {
            return Ok(self.clone());
        };
        for url in sentinels {
            let asked = async {
                let mut con = redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query_async::<Option<(String, u16)>>(&mut con)
                    .await
            };
            if let Ok(Some((host, port))) = asked.await {
                let auth = auth
                    .as_ref()
                    .map(|(user, pw)| format!("{user}:{pw}@"))
                    .unwrap_or_default();
                return Ok(Target::Server(format!("redis://{auth}{host}:{port}")));
            }
        }
        Err(format!("no Sentinel names a master `{master}`").into())
    }

    /// A connection for the example's own commands. On a cluster every command goes to the
    /// master of its key.
    async fn connect(&self, response_timeout: Option<Duration>) -> AnyResult<Conn> {
        Ok(match self {
            Target::Server(url) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(response_timeout);
                Conn::Server(
                    redis::aio::ConnectionManager::new_with_config(
                        redis::Client::open(url.as_str())?,
                        config,
                    )
                    .await?,
                )
            }
            Target::Sentinel { .. } => {
                return Box::pin(self.resolved().await?.connect(response_timeout)).await
            }
            Target::Cluster(seeds) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.clone());
                if let Some(timeout) = response_timeout {
                    builder = builder.response_timeout(timeout);
                }
                Conn::Cluster(builder.build()?.get_async_connection().await?)
            }
        })
    }

    fn supervisor(&self) -> millrace::SupervisorBuilder {
        match self {
            Target::Server(url) => Supervisor::builder().redis(url),
            Target::Cluster(seeds) => Supervisor::builder().redis_cluster(seeds.clone()),
            Target::Sentinel {
                master,
                sentinels,
                auth,
            } => {
                let builder = Supervisor::builder().redis_sentinel(master, sentinels.clone());
                match auth {
                    Some((user, pw)) => builder.sentinel_data_auth(
                        Some(user).filter(|u| !u.is_empty()).map(String::as_str),
                        pw,
                    ),
                    None => builder,
                }
            }
        }
    }
}

/// The example's own connection: it reconnects after a Redis restart or `CLIENT KILL` (a plain
/// multiplexed connection would fail every later command), and on a cluster follows `MOVED`.
#[derive(Clone)]
enum Conn {
    Server(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Adds N orders to the stream, pipelined with millrace's `Producer`.
    Produce {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value = "orders:new")]
        stream: String,
        /// Share of orders whose quantity is not a number (they cannot be decoded: dead letters).
        #[arg(long, default_value_t = 0.0)]
        poison_rate: f64,
        /// Orders per `add_many` call (on a cluster, pipelined per stream).
        #[arg(long, default_value_t = 1000)]
        pipeline: u64,
        /// Add at most this many orders per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Runs one supervised consumer until SIGINT/SIGTERM, then drains and exits 0.
    Work {
        #[arg(long)]
        consumer: String,
        #[arg(long, default_value = "order_processors")]
        group: String,
        #[arg(long, default_value = "orders:new")]
        stream: String,
        /// Probability per batch of returning Err instead of handling it.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Probability per batch of panicking instead of handling it.
        #[arg(long, default_value_t = 0.0)]
        panic_rate: f64,
        /// Simulated work per batch, in milliseconds.
        #[arg(long, default_value_t = 0)]
        work_ms: u64,
        #[arg(long, default_value_t = 10)]
        count: usize,
        #[arg(long, default_value = "1s")]
        block: humantime::Duration,
        #[arg(long, default_value = "1s")]
        claim_interval: humantime::Duration,
        #[arg(long, default_value = "5s")]
        claim_min_idle: humantime::Duration,
        #[arg(long, default_value_t = 5)]
        max_deliveries: u64,
        /// Restarts allowed per minute before the worker gives up (exit 1).
        #[arg(long, default_value_t = 10_000)]
        max_restarts: usize,
    },
    /// Prints one JSON object: produced, processed, duplicates, dead_lettered, pending, lost.
    Report {
        #[arg(long, default_value = "order_processors")]
        group: String,
        #[arg(long, default_value = "orders:new")]
        stream: String,
    },
}

#[derive(Debug, serde::Deserialize)]
struct Order {
    order_id: u64,
    #[allow(dead_code)]
    product_id: String,
    #[allow(dead_code)]
    user_id: u64,
    #[allow(dead_code)]
    quantity: u32,
    #[allow(dead_code)]
    timestamp: u64,
}

const PROCESSED: &str = "orders:processed";

fn produced_key(stream: &str) -> String {
    format!("{stream}:produced")
}

/// The streams the orders are spread over: `stream` itself, or `stream:0` … `stream:{n-1}`.
fn stream_names(stream: &str, n: usize) -> Vec<String> {
    if n <= 1 {
        return vec![stream.to_owned()];
    }
    (0..n).map(|i| format!("{stream}:{i}")).collect()
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    millrace::install_panic_hook();
    let cli = Cli::parse();
    let target = match (&cli.redis_sentinel, cli.redis_cluster.is_empty()) {
        (Some(arg), _) => Target::sentinel(arg).unwrap_or_else(|e| {
            eprintln!("orders: {e}");
            std::process::exit(2);
        }),
        (None, true) => Target::Server(cli.redis.clone()),
        (None, false) => Target::Cluster(cli.redis_cluster.clone()),
    };
    let result = match cli.cmd {
        Cmd::Produce {
            count,
            stream,
            poison_rate,
            pipeline,
            rate,
        } => {
            let shape = Shape {
                counter: produced_key(&stream),
                streams: stream_names(&stream, cli.streams),
            };
            produce(&target, &shape, count, poison_rate, pipeline, rate).await
        }
        Cmd::Work {
            consumer,
            group,
            stream,
            fail_rate,
            panic_rate,
            work_ms,
            count,
            block,
            claim_interval,
            claim_min_idle,
            max_deliveries,
            max_restarts,
        } => {
            let mut options = millrace::ConsumerOptions::default();
            options.start_id = StartId::Beginning;
            options.count = Some(count);
            options.block = block.into();
            options.claim_interval = claim_interval.into();
            options.claim_min_idle = claim_min_idle.into();
            options.max_deliveries = max_deliveries;
            let handling = Handling {
                fail_rate,
                panic_rate,
                work_ms,
                max_restarts,
            };
            let streams = stream_names(&stream, cli.streams);
            work(&target, streams, &group, &consumer, options, handling).await
        }
        Cmd::Report { group, stream } => {
            let shape = Shape {
                counter: produced_key(&stream),
                streams: stream_names(&stream, cli.streams),
            };
            report(&target, &shape, &group).await
        }
    };
    if let Err(e) = result {
        eprintln!("orders: {e}");
        std::process::exit(1);
    }
}

type AnyResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// An XRANGE reply: ids with their field/value pairs.
type Entries = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

/// Where the orders go: the streams, and the key counting the orders produced.
struct Shape {
    counter: String,
    streams: Vec<String>,
}

/// One order as `produce` writes it; `quantity` is text so that poison orders ("many") can be
/// written too.
#[derive(serde::Serialize)]
struct NewOrder {
    order_id: u64,
    product_id: String,
    user_id: u32,
    quantity: String,
    timestamp: u64,
}

/// Adds the orders with millrace's `Producer`: `--pipeline` orders per `add_many` call. On a
/// cluster it pipelines each stream's orders separately (in `MULTI`/`EXEC`), so a slot migrating
/// key by key meanwhile never gets a second copy of a stream that has not moved.
async fn produce(
    target: &Target,
    shape: &Shape,
    count: u64,
    poison_rate: f64,
    pipeline: u64,
    rate: u64,
) -> AnyResult {
    let producer = match target.resolved().await? {
        Target::Cluster(seeds) => millrace::Producer::builder().redis_cluster(seeds),
        Target::Server(url) => millrace::Producer::builder().redis(url),
        Target::Sentinel { .. } => return Err("the Sentinels named no master".into()),
    };
    let mut options = millrace::ConnectionOptions::default();
    options.command_timeout = Duration::from_secs(10);
    let producer = producer
        .connection_options(options)
        .max_pipeline(pipeline.max(1) as usize)
        .build()?;
    let mut con = target.connect(Some(Duration::from_secs(10))).await?;
    let start: u64 = redis::cmd("INCRBY")
        .arg(&shape.counter)
        .arg(0)
        .query_async(&mut con)
        .await?;
    let mut rng = rand::rng();
    let started = std::time::Instant::now();
    let mut next = start;
    while next < start + count {
        let end = (next + pipeline.max(1)).min(start + count);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let orders: Vec<(&str, NewOrder)> = (next..end)
            .map(|id| {
                let quantity = if rng.random::<f64>() < poison_rate {
                    "many".to_owned()
                } else {
                    rng.random_range(1..10u32).to_string()
                };
                let stream = &shape.streams[(id % shape.streams.len() as u64) as usize];
                let order = NewOrder {
                    order_id: id,
                    product_id: format!("p-{}", rng.random_range(0..500u32)),
                    user_id: rng.random_range(0..10_000u32),
                    quantity,
                    timestamp: now_ms,
                };
                (stream.as_str(), order)
            })
            .collect();
        producer.add_many(orders).await?;
        redis::cmd("INCRBY")
            .arg(&shape.counter)
            .arg(end - next)
            .query_async::<()>(&mut con)
            .await?;
        next = end;
        if rate > 0 {
            let due = Duration::from_secs_f64((next - start) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    println!(
        "produced {count} orders to {} (ids {start}..{})",
        shape.streams.join(", "),
        start + count
    );
    Ok(())
}

/// How `work`'s handler misbehaves, and how often the worker may restart a consumer.
struct Handling {
    fail_rate: f64,
    panic_rate: f64,
    work_ms: u64,
    max_restarts: usize,
}

/// Records each order it handles (`HINCRBY orders:processed <order_id> 1`), after `work_ms`,
/// unless the roll says to fail or panic.
struct Orders {
    recorder: Conn,
    fail_rate: f64,
    panic_rate: f64,
    work_ms: u64,
}

impl Handler<Order> for Orders {
    async fn handle(&self, batch: Batch<Order>) -> HandlerResult {
        let roll: f64 = rand::random();
        if self.work_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.work_ms)).await;
        }
        if roll < self.panic_rate {
            panic!("simulated crash while handling {} orders", batch.len());
        }
        if roll < self.panic_rate + self.fail_rate {
            return HandlerResult::err("simulated failure");
        }
        let mut pipe = redis::pipe();
        for entry in &batch {
            pipe.cmd("HINCRBY")
                .arg(PROCESSED)
                .arg(entry.message.order_id)
                .arg(1)
                .ignore();
        }
        match pipe.query_async::<()>(&mut self.recorder.clone()).await {
            Ok(()) => HandlerResult::Ok,
            Err(e) => HandlerResult::err(format!("recording failed: {e}")),
        }
    }
}

async fn work(
    target: &Target,
    streams: Vec<String>,
    group: &str,
    consumer: &str,
    options: millrace::ConsumerOptions,
    handling: Handling,
) -> AnyResult {
    let handler = Orders {
        recorder: target.connect(Some(Duration::from_secs(5))).await?,
        fail_rate: handling.fail_rate,
        panic_rate: handling.panic_rate,
        work_ms: handling.work_ms,
    };
    let mut policy = RestartPolicy::default();
    policy.max_restarts = handling.max_restarts;
    policy.backoff_initial = Duration::from_millis(10);
    policy.backoff_max = Duration::from_millis(250);
    let builder = target.supervisor().restart_policy(policy);
    let builder = match streams.as_slice() {
        [one] => builder.consumer(
            ConsumerSpec::new(one, group, consumer)
                .with_options(options)
                .handler(handler),
        ),
        _ => builder.multi_stream(
            MultiStreamSpec::new(streams, group, consumer)
                .with_options(options)
                .handler(handler),
        ),
    };
    let app = builder.start().await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ready = tokio::time::interval(Duration::from_millis(20));
    let mut announced = false;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            r = app.wait() => { r?; return Ok(()); }
            _ = ready.tick(), if !announced => {
                if app.is_ready() {
                    println!("ready");
                    announced = true;
                }
            }
        }
    }
    app.shutdown().await?;
    println!("stopped");
    Ok(())
}

async fn report(target: &Target, shape: &Shape, group: &str) -> AnyResult {
    // A long response timeout: HGETALL of a million processed orders takes longer than the
    // default 500 ms.
    let mut con = target.connect(Some(Duration::from_secs(600))).await?;
    let produced: u64 = redis::cmd("GET")
        .arg(&shape.counter)
        .query_async::<Option<u64>>(&mut con)
        .await?
        .unwrap_or(0);
    let processed: Vec<(u64, u64)> = redis::cmd("HGETALL")
        .arg(PROCESSED)
        .query_async(&mut con)
        .await?;
    let processed_ids: HashSet<u64> = processed.iter().map(|(id, _)| *id).collect();
    let duplicates: u64 = processed.iter().map(|(_, n)| n.saturating_sub(1)).sum();
    let (mut dead_lettered, mut dead_ids, mut pending) = (0, HashSet::new(), 0);
    for stream in &shape.streams {
        let (letters, ids) = dead_order_ids(&mut con, &format!("{stream}:dlq")).await?;
        dead_lettered += letters;
        dead_ids.extend(ids);
        pending += group_pending(&mut con, stream, group).await;
    }
    let lost = (0..produced)
        .filter(|id| !processed_ids.contains(id) && !dead_ids.contains(id))
        .count();
    let json = serde_json::json!({
        "produced": produced,
        "processed": processed_ids.len(),
        "duplicates": duplicates,
        "dead_lettered": dead_lettered,
        "pending": pending,
        "lost": lost,
    });
    println!("{json}");
    Ok(())
}

/// The number of entries in a dead-letter stream, and the order ids they hold.
async fn dead_order_ids(con: &mut Conn, dlq: &str) -> AnyResult<(usize, Vec<u64>)> {
    let dead: Entries = redis::cmd("XRANGE")
        .arg(dlq)
        .arg("-")
        .arg("+")
        .query_async(con)
        .await?;
    let mut ids = Vec::with_capacity(dead.len());
    for (id, fields) in &dead {
        let entry = millrace::RawEntry::new(id.parse()?, fields.clone());
        if let Some(order) = millrace::dead_letter::DeadLetter::parse(&entry) {
            let raw = millrace::RawEntry::new(entry.id, order.fields);
            if let Some(order_id) = raw.get_str("order_id").and_then(|s| s.parse::<u64>().ok()) {
                ids.push(order_id);
            }
        }
    }
    Ok((dead.len(), ids))
}

/// Entries pending in `group` on `stream` (0 when the group does not exist).
async fn group_pending(con: &mut Conn, stream: &str, group: &str) -> u64 {
    match redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async::<redis::Value>(con)
        .await
    {
        Ok(redis::Value::Array(parts)) => match parts.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}
