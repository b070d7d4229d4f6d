//! The `streams` section: 1,000 streams × 200 backlog entries drained (a) by one multi-stream
//! consumer (one `MultiStreamSpec`, one consumer name, in one process) and (b) by 1,000
//! single-stream consumers in one process, against (c) one stream holding the same entries drained
//! by one consumer. Every run is a child process of its own (`--streams-child`), so its peak RSS
//! is its own; it reports wall time, CPU of both sides, the connections it held, and, in the last
//! round, the idle cost: CPU of both sides over a window without traffic.

pub(crate) mod child;
mod hand;
mod report;

use std::fmt::Write as _;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::bench::{verify_drained, Env};
use crate::measure;
use crate::report::thousands;
use crate::Res;

/// The stream of form (c).
pub(crate) const ONE_STREAM: &str = "many:one:events";

/// Who drains the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// (a) one multi-stream consumer over every stream.
    Multi,
    /// (a0) form (a) run by another build of the benchmark (`--streams-other-exe`): a
    /// before/after comparison within one run.
    MultiOther,
    /// (b) one single-stream consumer per stream.
    Singles,
    /// (c) one consumer of one stream holding every entry.
    OneStream,
    /// (d) the hand-written multi-stream loop ([`hand`]) over the streams of (a).
    HandLoop,
}

impl Form {
    pub(super) const ALL: [Form; 5] = [
        Form::Multi,
        Form::MultiOther,
        Form::Singles,
        Form::OneStream,
        Form::HandLoop,
    ];

    fn key(self) -> &'static str {
        match self {
            Form::Multi => "multi",
            Form::MultiOther => "multi-other",
            Form::Singles => "singles",
            Form::OneStream => "one",
            Form::HandLoop => "hand",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Form> {
        Form::ALL.into_iter().find(|f| f.key() == s)
    }

    pub(super) fn label(self, streams: usize) -> String {
        match self {
            Form::Multi => format!("(a) one multi-stream consumer, {streams} streams"),
            Form::MultiOther => {
                format!("(a0) one multi-stream consumer, {streams} streams, the other build")
            }
            Form::Singles => format!("(b) {streams} single-stream consumers"),
            Form::OneStream => "(c) one consumer, one stream".to_owned(),
            Form::HandLoop => format!(
                "(d) hand-written loop, {streams} streams: one XREADGROUP COUNT {}, one pipeline of XACKs",
                hand::HAND_COUNT
            ),
        }
    }
}

/// The streams of forms (a) and (b).
pub(crate) fn stream_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("many:{i}:events")).collect()
}

/// What one child measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Measured {
    /// From before `start()` until the last ack.
    pub(crate) wall_ms: f64,
    /// From before `start()` until the first batch reached the handler.
    pub(crate) first_ms: f64,
    /// Entries the handlers got, duplicates included.
    pub(crate) handled: u64,
    /// Entries delivered again (a reconnect's replay): duplicates, counted.
    pub(crate) redelivered: u64,
    /// Reconnects of the consumers after transient errors.
    pub(crate) reconnects: u64,
    /// Batches with entries the handlers got.
    pub(crate) batches: u64,
    /// `XREADGROUP` and `XACK` calls the server ran during the drain.
    pub(crate) reads: u64,
    pub(crate) acks: u64,
    pub(crate) client_cpu: f64,
    pub(crate) server_cpu: f64,
    pub(crate) peak_rss_kib: u64,
    /// Most connections the consumers held during the drain (`INFO clients` every 50 ms).
    pub(crate) max_conns: usize,
    /// Connections the consumers held in the idle window (`CLIENT LIST TYPE normal`).
    pub(crate) idle_conns: usize,
    pub(crate) idle_client_cpu: f64,
    pub(crate) idle_server_cpu: f64,
    /// Length of the idle window; 0 when none was measured.
    pub(crate) idle_secs: f64,
}

const RESULT_PREFIX: &str = "STREAMS-RESULT";

/// The child's line with the server commands per second of its idle window.
pub(crate) const IDLE_COMMANDS_PREFIX: &str = "STREAMS-IDLE-COMMANDS";

impl Measured {
    fn fields(&self) -> [(&'static str, f64); 16] {
        [
            ("wall_ms", self.wall_ms),
            ("first_ms", self.first_ms),
            ("handled", self.handled as f64),
            ("redelivered", self.redelivered as f64),
            ("reconnects", self.reconnects as f64),
            ("batches", self.batches as f64),
            ("reads", self.reads as f64),
            ("acks", self.acks as f64),
            ("client_cpu", self.client_cpu),
            ("server_cpu", self.server_cpu),
            ("peak_rss_kib", self.peak_rss_kib as f64),
            ("max_conns", self.max_conns as f64),
            ("idle_conns", self.idle_conns as f64),
            ("idle_client_cpu", self.idle_client_cpu),
            ("idle_server_cpu", self.idle_server_cpu),
            ("idle_secs", self.idle_secs),
        ]
    }

    /// `STREAMS-RESULT wall_ms=… first_ms=… …`
    pub(crate) fn to_line(&self) -> String {
        let mut line = RESULT_PREFIX.to_owned();
        for (k, v) in self.fields() {
            let _ = write!(line, " {k}={v}");
        }
        line
    }

    fn parse(line: &str) -> Option<Measured> {
        let mut m = Measured::default();
        for pair in line.strip_prefix(RESULT_PREFIX)?.split_whitespace() {
            let (k, v) = pair.split_once('=')?;
            let v: f64 = v.parse().ok()?;
            match k {
                "wall_ms" => m.wall_ms = v,
                "first_ms" => m.first_ms = v,
                "handled" => m.handled = v as u64,
                "redelivered" => m.redelivered = v as u64,
                "reconnects" => m.reconnects = v as u64,
                "batches" => m.batches = v as u64,
                "reads" => m.reads = v as u64,
                "acks" => m.acks = v as u64,
                "client_cpu" => m.client_cpu = v,
                "server_cpu" => m.server_cpu = v,
                "peak_rss_kib" => m.peak_rss_kib = v as u64,
                "max_conns" => m.max_conns = v as usize,
                "idle_conns" => m.idle_conns = v as usize,
                "idle_client_cpu" => m.idle_client_cpu = v,
                "idle_server_cpu" => m.idle_server_cpu = v,
                "idle_secs" => m.idle_secs = v,
                _ => return None,
            }
        }
        Some(m)
    }

    pub(super) fn rate(&self) -> f64 {
        self.handled as f64 / (self.wall_ms / 1e3).max(1e-9)
    }

    /// Entries per second from the first batch to the last ack (start-up left out).
    pub(super) fn drain_rate(&self) -> f64 {
        self.handled as f64 / ((self.wall_ms - self.first_ms) / 1e3).max(1e-9)
    }
}

/// The section's settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) streams: usize,
    pub(crate) backlog: usize,
    pub(crate) rounds: usize,
    pub(crate) idle_secs: u64,
    /// The forms to run, in [`Form::ALL`]'s order.
    pub(crate) forms: Vec<Form>,
    /// The build that runs form (a0), if any.
    pub(crate) other_exe: Option<std::path::PathBuf>,
}

/// Adds `backlog` entries to each of `streams` streams, pipelined.
async fn preload_many(
    admin: &mut MultiplexedConnection,
    streams: usize,
    backlog: usize,
) -> Res<()> {
    for chunk in stream_names(streams).chunks(50) {
        let mut pipe = redis::pipe();
        for stream in chunk {
            pipe.cmd("DEL").arg(stream).ignore();
            for i in 0..backlog {
                crate::workload::push_event(&mut pipe, stream, i);
            }
        }
        pipe.query_async::<()>(admin).await?;
    }
    Ok(())
}

/// Runs one child; returns what it measured.
async fn run_child(env: &Env, s: &Settings, form: Form, group: &str, idle: bool) -> Res<Measured> {
    let (exe, key) = match (form, &s.other_exe) {
        (Form::MultiOther, Some(other)) => (other.clone(), Form::Multi.key()),
        _ => (std::env::current_exe()?, form.key()),
    };
    let out = tokio::process::Command::new(exe)
        .args(["--redis-url", &env.url, "--streams-child", key])
        .args(["--streams-group", group])
        .args(["--streams-count", &s.streams.to_string()])
        .args(["--streams-backlog", &s.backlog.to_string()])
        .args([
            "--streams-idle-secs",
            &if idle { s.idle_secs } else { 0 }.to_string(),
        ])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(idle) = stdout
        .lines()
        .find_map(|l| l.strip_prefix(IDLE_COMMANDS_PREFIX))
    {
        println!("  idle, {}: server commands{idle}", form.label(s.streams));
    }
    stdout
        .lines()
        .find_map(Measured::parse)
        .filter(|_| out.status.success())
        .ok_or_else(|| {
            format!(
                "{} failed ({}):\n{stdout}\n{}",
                form.label(s.streams),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into()
        })
}

/// Checks that every stream of the form is drained, and destroys the run's groups.
async fn verify_and_clean(env: &mut Env, s: &Settings, form: Form, group: &str) -> Res<()> {
    let (streams, each) = match form {
        Form::OneStream => (vec![ONE_STREAM.to_owned()], s.streams * s.backlog),
        Form::Multi | Form::MultiOther | Form::Singles | Form::HandLoop => {
            (stream_names(s.streams), s.backlog)
        }
    };
    for stream in &streams {
        verify_drained(&mut env.admin, stream, group, each as u64).await?;
    }
    let mut pipe = redis::pipe();
    for stream in &streams {
        pipe.cmd("XGROUP")
            .arg("DESTROY")
            .arg(stream)
            .arg(group)
            .ignore();
    }
    pipe.query_async::<()>(&mut env.admin).await?;
    Ok(())
}

/// Runs the section; returns its Markdown table and targets.
pub(crate) async fn run(env: &mut Env, s: &Settings) -> Res<String> {
    let total = s.streams * s.backlog;
    let t = std::time::Instant::now();
    preload_many(&mut env.admin, s.streams, s.backlog).await?;
    crate::workload::preload(&mut env.admin, ONE_STREAM, total).await?;
    println!(
        "preloaded {} streams × {} entries and `{ONE_STREAM}` with {total} in {:.2?}",
        s.streams,
        s.backlog,
        t.elapsed()
    );
    let floor = server_floor(&mut env.admin, Duration::from_secs(10)).await?;
    let mut runs: Vec<(Form, Measured)> = Vec::new();
    for round in 0..s.rounds {
        for i in 0..s.forms.len() {
            let form = s.forms[(i + round) % s.forms.len()];
            let group = env.next_name("many");
            let idle = round + 1 == s.rounds && s.idle_secs > 0;
            let m = run_child(env, s, form, &group, idle).await?;
            // Every entry handled at least once (and the group drained, checked next);
            // duplicates are counted and shown.
            if m.handled < total as u64 {
                return Err(format!(
                    "{}: handled {} of {total}",
                    form.label(s.streams),
                    m.handled
                )
                .into());
            }
            verify_and_clean(env, s, form, &group).await?;
            println!(
                "  round {}/{} {:<44} {:>9} msgs/s (drain {:>9}/s, first entry after {:>5.0} ms)  {:>6.1} entries/batch, {} XREADGROUP, {} XACK  {:>4} conns  peak RSS {:>6.1} MiB  {} handled twice, {} reconnects{}",
                round + 1,
                s.rounds,
                form.label(s.streams),
                thousands(m.rate()),
                thousands(m.drain_rate()),
                m.first_ms,
                m.handled as f64 / m.batches.max(1) as f64,
                m.reads,
                m.acks,
                m.max_conns,
                m.peak_rss_kib as f64 / 1024.0,
                m.handled - total as u64,
                m.reconnects,
                if m.idle_secs > 0.0 {
                    format!(
                        "  idle {:.0} s: client {:.2}% server {:.2}% of a core, {} conns",
                        m.idle_secs,
                        m.idle_client_cpu / m.idle_secs * 100.0,
                        m.idle_server_cpu / m.idle_secs * 100.0,
                        m.idle_conns
                    )
                } else {
                    String::new()
                }
            );
            runs.push((form, m));
        }
        env.quiesce().await?;
    }
    Ok(report::report(s, &runs, floor))
}

/// The forms named in `keys` (`multi`, `singles`, `one`, `hand`), and (a0) when another build
/// runs it (`other`), in [`Form::ALL`]'s order.
pub(crate) fn forms(keys: &[String], other: bool) -> Res<Vec<Form>> {
    for k in keys {
        Form::parse(k).ok_or_else(|| format!("unknown streams form `{k}`"))?;
    }
    Ok(Form::ALL
        .into_iter()
        .filter(|f| keys.iter().any(|k| k == f.key()) || (other && *f == Form::MultiOther))
        .collect())
}

/// The server's own CPU with no consumer connected, as a share of a core.
async fn server_floor(admin: &mut MultiplexedConnection, window: Duration) -> Res<f64> {
    let before = measure::server_cpu(admin).await?;
    tokio::time::sleep(window).await;
    Ok((measure::server_cpu(admin).await? - before) / window.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_line_reads_back() {
        let m = Measured {
            wall_ms: 812.5,
            first_ms: 120.0,
            handled: 200_000,
            redelivered: 3,
            reconnects: 1,
            batches: 1_000,
            reads: 250,
            acks: 1_000,
            client_cpu: 0.75,
            server_cpu: 0.5,
            peak_rss_kib: 30_000,
            max_conns: 3,
            idle_conns: 3,
            idle_client_cpu: 0.01,
            idle_server_cpu: 0.02,
            idle_secs: 30.0,
        };
        assert_eq!(Measured::parse(&m.to_line()), Some(m));
        assert_eq!(Measured::parse("something else"), None);
        assert_eq!(Form::parse("multi"), Some(Form::Multi));
    }
}
