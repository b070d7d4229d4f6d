//! millrace-bench: drains a preloaded Redis stream through a consumer group with two hand-written
//! redis-rs loops and with millrace, alternating over rounds, on a throwaway redis-server, and
//! reports throughput, end-to-end latency, client and server CPU per message and peak RSS.
//!
//! ```text
//! cargo run --release -p millrace-bench --                 # the full default run (~3 min)
//! cargo run --release -p millrace-bench -- --quick         # a smoke run (~30 s)
//! cargo run --release -p millrace-bench -- --write-docs    # also writes docs/benchmarks.md
//! cargo run --release -p millrace-bench -- --soak-messages 5000000   # RSS over a long run only
//! ```
//!
//! See `--help` and `docs/benchmarks.md`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod adaptive;
mod baseline;
mod bench;
mod cluster;
mod keyed;
mod latency;
mod many;
mod measure;
mod micro;
mod mr;
mod parsers;
mod report;
mod soak;
mod tls;
mod workload;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

use bench::{Config, Env, Variant};
use report::ConfigResult;

/// Errors of the benchmark itself.
pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The latency section alternates the variants over this many rounds and pools the samples.
const LATENCY_ROUNDS: usize = 2;

const SECTIONS: [&str; 12] = [
    "main",
    "typed",
    "count",
    "consumers",
    "tls",
    "parsers",
    "latency",
    "micro",
    "cluster",
    "adaptive",
    "streams",
    "keyed",
];

/// Benchmark millrace against hand-written redis-rs consumer-group loops.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Entries preloaded and drained per run.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Rounds; the variants alternate within every round and the medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// A short smoke run: 40,000 entries, 3 rounds, 2 s of latency per variant.
    #[arg(long)]
    quick: bool,
    /// Write the results to docs/benchmarks.md.
    #[arg(long)]
    write_docs: bool,
    /// Seconds of fixed-rate traffic per variant in the latency section.
    #[arg(long, default_value_t = 5.0)]
    latency_secs: f64,
    /// Entries per second in the latency section.
    #[arg(long, default_value_t = 2_000)]
    latency_rate: u64,
    /// Sections to run, comma-separated: main, typed, count, consumers, tls, parsers, latency,
    /// micro, cluster. `tls` runs millrace alone, over TLS and plain TCP on servers of their own;
    /// `parsers` drains the stream with millrace's RESP parser and with `redis-protocol`'s in one
    /// loop. `cluster` (not in the default list: it starts a 6-node Redis Cluster and adds 1–2
    /// minutes) compares the read-ahead loop (b), one per master, with millrace on
    /// `redis_cluster(seeds)`, for three masters at once and for one master alone. `adaptive`
    /// (not in the default list, about a minute) compares millrace's default read size with fixed
    /// counts: one consumer draining `--messages`, and 4 consumers with a 5 ms-per-entry handler.
    /// `streams` (not in the default list, about 2 minutes) drains `--streams-count` streams of
    /// `--streams-backlog` entries with one multi-stream consumer and with one consumer per
    /// stream, against one stream with every entry; see `--streams-count`. `keyed` (not in the
    /// default list, about 10 s) drains 2,000 entries over 100 keys with `key_concurrency = 32`
    /// and a 10 ms-per-entry handler, against the ideal.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "main,typed,count,consumers,tls,parsers,latency,micro"
    )]
    sections: Vec<String>,
    /// Variants to run, comma-separated: a, a' (or a2), b, b' (or b2), c.
    #[arg(long, value_delimiter = ',', default_value = "a,a2,b,b2,c")]
    variants: Vec<String>,
    /// Streams of the `streams` section (not in the default list): this many streams with
    /// --streams-backlog entries each, drained (a) by one multi-stream consumer and (b) by one
    /// consumer per stream, against (c) one stream with all the entries and one consumer; then
    /// --streams-idle-secs without traffic. (b) needs about 2 file descriptors per stream
    /// (`ulimit -n`).
    #[arg(long, default_value_t = 1_000)]
    streams_count: usize,
    /// Backlog entries per stream in the `streams` section.
    #[arg(long, default_value_t = 200)]
    streams_backlog: usize,
    /// Seconds of the idle window in the `streams` section's last round.
    #[arg(long, default_value_t = 30)]
    streams_idle_secs: u64,
    /// Forms of the `streams` section, comma-separated: `multi` (a), `singles` (b), `one` (c),
    /// `hand` (d, the hand-written multi-stream loop).
    #[arg(long, value_delimiter = ',', default_value = "multi,singles,one,hand")]
    streams_forms: Vec<String>,
    /// Also runs form (a) with this other build of millrace-bench, as form (a0), alternating
    /// with the other forms in every round: a before/after comparison within one run.
    #[arg(long)]
    streams_other_exe: Option<std::path::PathBuf>,
    /// Internal: run one `streams` form in this process (`multi`, `singles`, `one`, `hand`).
    #[arg(long, hide = true)]
    streams_child: Option<String>,
    /// Internal: the consumer group of a `--streams-child` run.
    #[arg(long, hide = true, default_value = "many")]
    streams_group: String,
    /// Entries per stream (one stream per master) and run in the `cluster` section.
    #[arg(long, default_value_t = 100_000)]
    cluster_messages: usize,
    /// Consumer counts of the `consumers` section, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,16,256")]
    consumers: Vec<usize>,
    /// Only the soak: 16 millrace consumers at COUNT 500 drain this many entries (fed while they
    /// run) while RSS is sampled. With --write-docs its table replaces the soak block of the docs.
    #[arg(long)]
    soak_messages: Option<u64>,
    /// Print the server time per command of every run (INFO commandstats).
    #[arg(long)]
    commandstats: bool,
    /// Diagnostics: millrace's `claim_count` (entries per XAUTOCLAIM) for every run.
    #[arg(long)]
    mr_claim_count: Option<usize>,
    /// Diagnostics: millrace's `claim_calls_per_tick` (XAUTOCLAIM calls per claim tick).
    #[arg(long)]
    mr_claim_calls_per_tick: Option<usize>,
    /// Diagnostics: XREADGROUP calls the read-ahead loop (b) keeps in flight.
    #[arg(long, default_value_t = 2)]
    read_ahead_depth: usize,
    /// Internal: print the peak RSS of every millrace run as `RSS-PROBE <config> <KiB>` (the full
    /// run starts itself with it to measure 16 consumers in a fresh process).
    #[arg(long, hide = true)]
    rss_probe: bool,
    /// Use this Redis instead of starting a throwaway redis-server (its CPU is still read from INFO).
    #[arg(long, env = "MILLRACE_BENCH_REDIS_URL")]
    redis_url: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("millrace-bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Versions of a few dependencies, read from the workspace lock file.
fn locked_version(name: &str) -> String {
    let lock = include_str!("../../../Cargo.lock");
    let needle = format!("name = \"{name}\"\nversion = \"");
    lock.find(&needle)
        .and_then(|i| lock[i + needle.len()..].split('"').next())
        .unwrap_or("?")
        .to_owned()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".to_owned())
}

/// `YYYY-MM-DD HH:MM UTC` without a date library.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

/// The millrace commit benchmarked: `$MILLRACE_BENCH_COMMIT`, else `git rev-parse` of the checkout.
fn commit() -> Option<String> {
    if let Ok(c) = std::env::var("MILLRACE_BENCH_COMMIT") {
        return Some(c);
    }
    let out = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()?;
    let c = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !c.is_empty()).then_some(c)
}

fn command_line() -> String {
    let rest: Vec<String> = std::env::args().skip(1).collect();
    if rest.is_empty() {
        "cargo run --release -p millrace-bench".to_owned()
    } else {
        format!(
            "cargo run --release -p millrace-bench -- {}",
            rest.join(" ")
        )
    }
}

fn docs_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/benchmarks.md")
}

const SOAK_BEGIN: &str = "<!-- soak:begin -->";
const SOAK_END: &str = "<!-- soak:end -->";

/// The soak block of the current docs file, if any.
fn existing_soak_block() -> Option<String> {
    let text = std::fs::read_to_string(docs_path()).ok()?;
    let start = text.find(SOAK_BEGIN)?;
    let end = text.find(SOAK_END)? + SOAK_END.len();
    (start < end).then(|| text[start..end].to_owned())
}

fn configs(args: &Args, messages: usize, variants: &[Variant]) -> Vec<Config> {
    let want = |s: &str| args.sections.iter().any(|x| x == s);
    let only = |vs: &[Variant]| -> Vec<Variant> {
        vs.iter()
            .copied()
            .filter(|v| variants.contains(v))
            .collect()
    };
    let abc = only(&[Variant::A, Variant::B, Variant::C]);
    let mut out = Vec::new();
    if want("main") {
        out.push(Config {
            key: "main".into(),
            title: "1 consumer, COUNT 500, no-op handler".into(),
            count: 500,
            consumers: 1,
            typed: false,
            variants: only(&[Variant::A, Variant::A2, Variant::B, Variant::B2, Variant::C]),
            messages,
        });
    }
    if want("typed") {
        out.push(Config {
            key: "typed".into(),
            title: "1 consumer, COUNT 500, typed 3-field struct".into(),
            count: 500,
            consumers: 1,
            typed: true,
            variants: abc.clone(),
            messages,
        });
    }
    if want("count") {
        for count in [10, 100] {
            out.push(Config {
                key: format!("count{count}"),
                title: format!("1 consumer, COUNT {count}, no-op handler"),
                count,
                consumers: 1,
                typed: false,
                variants: abc.clone(),
                // Small batches are slow: fewer entries keep the run short.
                messages: if count == 10 {
                    messages / 4
                } else {
                    messages / 2
                },
            });
        }
    }
    if want("consumers") {
        for &k in &args.consumers {
            out.push(Config {
                key: format!("consumers{k}"),
                title: format!("{k} consumers, COUNT 500, no-op handler"),
                count: 500,
                consumers: k,
                typed: false,
                variants: abc.clone(),
                messages,
            });
        }
    }
    out.retain(|c| !c.variants.is_empty());
    out
}

/// Runs this benchmark again as a child process, 16 millrace consumers only, and returns its peak RSS.
async fn rss_probe(url: &str, messages: usize) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = tokio::process::Command::new(exe)
        .args([
            "--redis-url",
            url,
            "--sections",
            "consumers",
            "--consumers",
            "16",
        ])
        .args(["--variants", "c", "--rounds", "1", "--rss-probe"])
        .args(["--messages", &messages.to_string()])
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.strip_prefix("RSS-PROBE consumers16 ")?
            .trim()
            .parse()
            .ok()
    })
}

async fn run(mut args: Args) -> Res<bool> {
    if args.quick {
        args.messages = 40_000;
        args.rounds = 3;
        args.latency_secs = 2.0;
    }
    for s in &args.sections {
        if !SECTIONS.contains(&s.as_str()) {
            return Err(format!("unknown section `{s}`; known: {}", SECTIONS.join(", ")).into());
        }
    }
    let mut variants = Vec::new();
    for v in &args.variants {
        variants.push(Variant::parse(v).ok_or_else(|| format!("unknown variant `{v}`"))?);
    }
    if args.messages == 0 || args.rounds == 0 {
        return Err("--messages and --rounds must be at least 1".into());
    }

    if let Some(form) = &args.streams_child {
        let form = many::Form::parse(form).ok_or_else(|| format!("unknown form `{form}`"))?;
        let url = args
            .redis_url
            .clone()
            .ok_or("--streams-child needs --redis-url")?;
        many::child::run(many::child::ChildArgs {
            url,
            form,
            group: args.streams_group.clone(),
            streams: args.streams_count,
            backlog: args.streams_backlog,
            idle_secs: args.streams_idle_secs,
        })
        .await?;
        return Ok(true);
    }
    mr::set_tuning(mr::Tuning {
        claim_count: args.mr_claim_count,
        claim_calls_per_tick: args.mr_claim_calls_per_tick,
    });
    baseline::set_read_ahead_depth(args.read_ahead_depth);
    let started = Instant::now();
    let load_before = measure::loadavg();
    let (busy0, total0) = measure::machine_cpu();
    let server = match &args.redis_url {
        Some(_) => None,
        None => Some(millrace_testkit::RedisServer::start()),
    };
    let url = match (&args.redis_url, &server) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => s.url(),
        (None, None) => return Err("no Redis".into()),
    };
    let mut env = Env::new(url).await?;
    let redis_version = measure::info_field(&mut env.admin, "server", "redis_version").await?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    let mut header = String::new();
    let _ = writeln!(header, "- date: {}", utc_now());
    let _ = writeln!(header, "- command: `{}`", command_line());
    let _ = writeln!(
        header,
        "- machine: {} × {}, {} RAM, Linux {}",
        cores,
        cpu_model(),
        mem_total(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(
        header,
        "- versions: millrace {}{}, redis-rs {}, ractor {}, tokio {}, {}, Redis {} ({})",
        env!("CARGO_PKG_VERSION"),
        commit()
            .map(|c| format!(" (commit {c})"))
            .unwrap_or_default(),
        locked_version("redis"),
        locked_version("ractor"),
        locked_version("tokio"),
        env!("MILLRACE_BENCH_RUSTC"),
        redis_version,
        if server.is_some() {
            "throwaway redis-server started by millrace-testkit, persistence off"
        } else {
            "external server"
        }
    );
    println!("millrace-bench\n{header}- load average at start: {load_before}\n");

    if let Some(total) = args.soak_messages {
        println!("## Soak\n");
        let result = soak::run(&mut env, total, 16, 500).await?;
        let table = report::soak_table(&result);
        println!("{table}");
        let verdicts = report::verdicts(&[], &[], Some(&result), None, None);
        println!("{}", report::verdict_table(&verdicts));
        if args.write_docs {
            let block = format!(
                "{SOAK_BEGIN}\n{header}\n{table}\n{}{SOAK_END}",
                report::verdict_table(&verdicts)
            );
            let path = docs_path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let new = match (text.find(SOAK_BEGIN), text.find(SOAK_END)) {
                (Some(a), Some(b)) if a < b => {
                    format!("{}{block}{}", &text[..a], &text[b + SOAK_END.len()..])
                }
                _ => format!("{text}\n## Soak\n\n{block}\n"),
            };
            std::fs::write(&path, new)?;
            println!("wrote the soak block of {}", path.display());
        }
        return Ok(verdicts.iter().all(|v| v.met != Some(false)));
    }

    let mut results: Vec<ConfigResult> = Vec::new();
    for cfg in configs(&args, args.messages, &variants) {
        println!("## {} ({} entries per run)", cfg.title, cfg.messages);
        let mut runs = Vec::new();
        for round in 0..args.rounds {
            // Rotate the order every round so no variant always runs first (or last).
            let k = cfg.variants.len();
            for i in 0..k {
                let variant = cfg.variants[(i + round) % k];
                let r = bench::run_once(&mut env, &cfg, variant).await?;
                println!(
                    "  round {}/{} {:<44} {:>10} msgs/s  client {:>5.2} µs/msg  server {:>5.2} µs/msg  server busy {:>3.0}%  others {:.2} cores  peak RSS {:.1} MiB{}",
                    round + 1,
                    args.rounds,
                    variant.label(),
                    report::thousands(r.cost.msgs_per_sec()),
                    r.cost.client_us_per_msg(),
                    r.cost.server_us_per_msg(),
                    r.cost.server_busy() * 100.0,
                    r.cost.others_busy(),
                    r.cost.peak_rss_kib as f64 / 1024.0,
                    match (r.shutdown, r.conns_left) {
                        (Some(d), Some(left)) => format!("  shutdown {d:.1?}, {left}"),
                        _ => String::new(),
                    }
                );
                if args.commandstats {
                    println!(
                        "      server time: {}",
                        measure::commandstats_line(&r.commands)
                    );
                }
                runs.push(r);
            }
        }
        let summaries = cfg
            .variants
            .iter()
            .map(|v| bench::summarize(*v, &runs))
            .collect();
        let result = ConfigResult {
            config: cfg,
            rounds: args.rounds,
            summaries,
        };
        println!("\n{}", result.table());
        results.push(result);
    }

    if args.rss_probe {
        for r in &results {
            if let Some(c) = r.get(Variant::C) {
                println!("RSS-PROBE {} {}", r.config.key, c.peak_rss_kib);
            }
        }
        return Ok(true);
    }
    // Peak RSS of 16 millrace consumers measured in a fresh process, without the allocator memory
    // that earlier runs (256 consumers, 16 read-ahead threads) leave behind in this one.
    let mut rss16 = None;
    if results.iter().any(|r| r.config.key == "consumers16") {
        rss16 = rss_probe(&env.url, args.messages).await;
        if let Some(kib) = rss16 {
            println!(
                "peak RSS of a fresh process running 16 millrace consumers at COUNT 500: {:.1} MiB\n",
                kib as f64 / 1024.0
            );
        }
    }

    let mut tls_table = String::new();
    let mut tls_ratio = None;
    if args.sections.iter().any(|s| s == "tls") {
        println!(
            "## TLS against plain TCP ({} entries per run, {} rounds)",
            args.messages, args.rounds
        );
        let r = tls::run(args.messages, args.rounds).await?;
        tls_table = tls::table(&r);
        tls_ratio = Some(r.ratio());
        println!("\n{tls_table}");
    }

    let mut parsers_table = String::new();
    if args.sections.iter().any(|s| s == "parsers") {
        println!(
            "## The RESP parsers end to end ({} entries per run, {} rounds)",
            args.messages, args.rounds
        );
        parsers_table = parsers::run(&mut env, args.messages, args.rounds).await?;
        println!("\n{parsers_table}");
    }

    let mut cluster_table = String::new();
    if args.sections.iter().any(|s| s == "cluster") {
        println!(
            "## Redis Cluster ({} entries per stream and run, {} rounds)",
            args.cluster_messages, args.rounds
        );
        cluster_table = cluster::run(args.cluster_messages, args.rounds).await?;
        println!("\n{cluster_table}");
    }

    let mut adaptive_table = String::new();
    if args.sections.iter().any(|s| s == "adaptive") {
        println!(
            "## Adaptive batch size ({} entries per backlog run, {} rounds)",
            args.messages, args.rounds
        );
        adaptive_table = adaptive::run(&mut env, args.messages, args.rounds).await?;
        println!("\n{adaptive_table}");
    }

    let mut keyed_table = String::new();
    if args.sections.iter().any(|s| s == "keyed") {
        println!("## Keyed concurrency");
        keyed_table = keyed::run(&mut env).await?;
        println!("\n{keyed_table}");
    }

    if args.sections.iter().any(|s| s == "streams") {
        println!(
            "## {} streams × {} entries ({} rounds)",
            args.streams_count, args.streams_backlog, args.rounds
        );
        let settings = many::Settings {
            streams: args.streams_count,
            backlog: args.streams_backlog,
            rounds: args.rounds,
            idle_secs: args.streams_idle_secs,
            forms: many::forms(&args.streams_forms, args.streams_other_exe.is_some())?,
            other_exe: args.streams_other_exe.clone(),
        };
        println!("\n{}", many::run(&mut env, &settings).await?);
    }

    let mut lat = Vec::new();
    if args.sections.iter().any(|s| s == "latency") {
        let rounds = LATENCY_ROUNDS;
        println!(
            "## Latency at {} entries/s, {} s per variant in {rounds} alternating rounds",
            args.latency_rate, args.latency_secs
        );
        // Let the machine settle after the heavy runs before timing single entries.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let order: Vec<Variant> = [Variant::A, Variant::B, Variant::C]
            .into_iter()
            .filter(|v| variants.contains(v))
            .collect();
        let mut parts: Vec<Vec<latency::LatencyResult>> = vec![Vec::new(); order.len()];
        for round in 0..rounds {
            for i in 0..order.len() {
                let k = (i + round) % order.len();
                let v = order[k];
                let secs = args.latency_secs / rounds as f64;
                let r = latency::run(&mut env, v, secs, args.latency_rate, 500).await?;
                println!(
                    "  round {}/{rounds} {:<44} p50 {} µs  p99 {} µs  max {} µs  ({} entries at {:.0}/s)",
                    round + 1,
                    v.label(),
                    r.p50,
                    r.p99,
                    r.max,
                    r.samples,
                    r.achieved_rate
                );
                parts[k].push(r);
            }
        }
        lat = parts
            .into_iter()
            .filter_map(latency::LatencyResult::merge)
            .collect();
        println!("\n{}", report::latency_table(args.latency_rate, &lat));
    }

    let mut micro_table = String::new();
    if args.sections.iter().any(|s| s == "micro") {
        let steps = micro::run(std::time::Duration::from_millis(if args.quick {
            30
        } else {
            150
        }));
        micro_table = report::micro_table(&steps);
        println!("{micro_table}");
    }

    let (busy1, total1) = measure::machine_cpu();
    let load_after = measure::loadavg();
    let machine_busy = (busy1 - busy0) / (total1 - total0).max(1e-9) * cores as f64;
    let mut quiet = String::new();
    let _ = writeln!(
        quiet,
        "- load average at start: {load_before}; at end: {load_after}; whole machine busy {:.2} of {cores} cores on average over the {:.0} s run (benchmark and redis-server included); the `others' CPU` column is what everything else used during each run",
        machine_busy,
        started.elapsed().as_secs_f64()
    );
    println!("{quiet}");

    let verdicts = report::verdicts(&results, &lat, None, rss16, tls_ratio);
    let summary = report::summary_table(&results);
    let verdict_table = report::verdict_table(&verdicts);
    println!("## Summary\n\n{summary}\n## Targets\n\n{verdict_table}");

    if args.write_docs {
        let mut doc = String::new();
        doc.push_str(DOC_INTRO);
        let _ = writeln!(doc, "## Last run\n\n{header}{quiet}");
        let _ = writeln!(doc, "## Summary\n\n{summary}");
        let _ = writeln!(doc, "## Targets\n\n{verdict_table}");
        let _ = writeln!(doc, "## Details\n");
        for r in &results {
            let _ = writeln!(doc, "{}", r.table());
        }
        if !tls_table.is_empty() {
            let _ = writeln!(doc, "{tls_table}");
        }
        if !parsers_table.is_empty() {
            let _ = writeln!(doc, "{parsers_table}");
        }
        if !cluster_table.is_empty() {
            let _ = writeln!(doc, "{cluster_table}");
        }
        if !adaptive_table.is_empty() {
            let _ = writeln!(doc, "{adaptive_table}");
        }
        if !keyed_table.is_empty() {
            let _ = writeln!(doc, "{keyed_table}");
        }
        if !lat.is_empty() {
            let _ = writeln!(doc, "{}", report::latency_table(args.latency_rate, &lat));
        }
        if !micro_table.is_empty() {
            let _ = writeln!(doc, "{micro_table}");
        }
        let _ = writeln!(doc, "## Soak\n");
        match existing_soak_block() {
            Some(block) => {
                let _ = writeln!(doc, "{block}");
            }
            None => {
                let _ = writeln!(
                    doc,
                    "{SOAK_BEGIN}\nNot run yet: `cargo run --release -p millrace-bench -- --soak-messages 5000000 --write-docs`.\n{SOAK_END}"
                );
            }
        }
        doc.push_str(DOC_METHOD);
        let path = docs_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, doc)?;
        println!("wrote {}", path.display());
    }
    drop(server);
    Ok(verdicts.iter().all(|v| v.met != Some(false)))
}

const DOC_INTRO: &str = "# Benchmarks

Written by `crates/millrace-bench` (`--write-docs`); the numbers below are exactly what the command
printed. Rerun with:

```text
cargo run --release -p millrace-bench -- --write-docs          # full run, about 3 minutes
cargo run --release -p millrace-bench -- --quick               # smoke run
cargo run --release -p millrace-bench -- --soak-messages 5000000 --write-docs   # RSS soak only
```

What is compared, on one throwaway `redis-server` and one stream of preloaded entries with three
short fields (`user_id`, `action`, `page`), each run on a fresh consumer group created at `0`:

- **(a) sequential**: `XREADGROUP GROUP g c COUNT n BLOCK 100 STREAMS s >`, then one `XACK` with all
  ids of the batch, on one connection; replies walked as raw `redis::Value`.
- **(a') sequential, redis-rs StreamReadReply**: the same loop through redis-rs's typed stream API
  (`xread_options` → `StreamReadReply`, `xack`), as its documentation shows (main table only).
- **(b) read-ahead**: two `XREADGROUP` calls always in flight on the read connection, acks on a
  second connection without waiting for them: the fastest loop we know, the physical limit. The
  read connection is a blocking `redis::Connection` on a thread of its own, which writes the next
  `XREADGROUP` the moment a reply is in, before parsing the next one, so the server executes the
  next read while the client parses.
- **(b') read-ahead, multiplexed connection** (main table only): the same on a
  `MultiplexedConnection`. Its driver task parses every reply already received before it writes the
  next queued command (`PipelineSink::poll_ready`/`poll_flush` call `poll_read` first), so the
  server idles while the client parses and the second read in flight buys almost nothing.
- **(c) millrace**: `Supervisor` with `ConsumerSpec::count(n).block(100ms)` and a handler that only
  counts (no-op, `Batch<RawEntry>`) or receives a serde-decoded 3-field struct (typed). Each
  consumer reads on a socket of its own (two reads pipelined while replies come back full, one once
  caught up), writes the next read when a reply begins, and parses RESP itself; acks go over the
  shared control connection, one `XACK` in flight
  ([architecture](architecture.md#connections)).

In the typed table the hand-written loops decode the same struct by hand from the reply.

";

const DOC_METHOD: &str = "
## How it is measured

- **msgs/s**: entries of the run ÷ wall time from before the consumers connect until the last `XACK`
  of the run has been answered (for millrace: until the acked counters of `Supervisor::health()` reach
  the total, polled in a tight loop). Connecting, group checks and actor start-up are inside the time.
  Medians over the rounds; the variants alternate within every round, in a rotating order.
- **Every run is checked**: the handlers saw exactly N entries and `XINFO GROUPS` shows the group
  with 0 pending and N entries read; a run that fails the check aborts the benchmark.
- **client CPU**: `CLOCK_PROCESS_CPUTIME_ID` of the benchmark process (all threads) over the run.
- **server CPU**: `INFO CPU` deltas of `used_cpu_sys + used_cpu_user`; **server busy** is that over
  wall time (100% is one core, Redis executes commands on one thread).
- **others' CPU**: `/proc/stat` busy time of the whole machine minus the two above, in cores: how much
  the machine was disturbed by other work during each run (10 ms resolution).
- **peak RSS**: `VmHWM` of the benchmark process, reset before each run through `/proc/self/clear_refs`;
  it includes the harness and allocator memory kept from earlier runs (glibc keeps what the 256-consumer
  and read-ahead-thread runs freed). The 16-consumer RSS target is therefore also measured in a
  fresh child process that runs only millrace with 16 consumers (`--rss-probe`, started by the
  benchmark itself), and the soak samples RSS over millions of entries in a process of its own.
- **latency**: a producer thread adds one entry every 500 µs on an absolute schedule with a `ts` field
  (µs on a monotonic clock of the same process) stamped just before its `XADD`; the consumer records
  `now − ts` per entry when its handler (or loop) sees it. One consumer, COUNT 500, BLOCK 100 ms.
  The variants alternate over two rounds of half the time each and the samples are pooled.
- **server time by command**: `INFO commandstats` after `CONFIG RESETSTAT` before each run.
- **single steps**: a synthetic 500-entry reply cloned outside the timed part and processed by one
  step at a time, timed with `CLOCK_THREAD_CPUTIME_ID`; glibc malloc dominates several of them, so
  read them as orders of magnitude.
- **connections**: `CLIENT LIST TYPE normal` right after `shutdown()` returns and again after up to 2 s.
- The machine is shared by the client, the server and whatever else runs: numbers taken while other
  work runs (see `others' CPU`, load average) are noisy; compare ratios within one run.
";
