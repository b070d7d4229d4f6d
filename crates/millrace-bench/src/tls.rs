//! TLS against plain TCP: one millrace consumer at COUNT 500 over each, alternating within every
//! round of the same run, each on a throwaway redis-server of its own (the TLS one with a
//! certificate made for the run); then the peak RSS of 16 consumers over each.

use std::fmt::Write as _;

use millrace_testkit::RedisServer;

use crate::bench::{run_once, summarize, Config, Env, Summary, Variant};
use crate::Res;

/// What the section measured.
#[derive(Debug, Clone)]
pub(crate) struct TlsResult {
    pub(crate) messages: usize,
    pub(crate) rounds: usize,
    pub(crate) plain: Summary,
    pub(crate) tls: Summary,
    /// Peak RSS of the process while 16 consumers drained the stream, plain and TLS, in KiB.
    pub(crate) plain16_kib: u64,
    pub(crate) tls16_kib: u64,
}

impl TlsResult {
    /// TLS throughput over plain throughput.
    pub(crate) fn ratio(&self) -> f64 {
        self.tls.msgs_per_sec / self.plain.msgs_per_sec
    }
}

fn config(consumers: usize, messages: usize) -> Config {
    Config {
        key: format!("tls-c{consumers}"),
        title: format!("{consumers} consumer(s), COUNT 500, no-op handler"),
        count: 500,
        consumers,
        typed: false,
        variants: vec![Variant::C],
        messages,
    }
}

pub(crate) async fn run(messages: usize, rounds: usize) -> Res<TlsResult> {
    let plain_server = RedisServer::start();
    let tls_server = RedisServer::builder().tls().start();
    let ca = tls_server
        .ca_cert_path()
        .ok_or("the TLS server has no CA")?;
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(ca)?),
    };
    let mut plain = Env::new(plain_server.url()).await?;
    let mut tls = Env::with_tls(tls_server.url(), certificates).await?;

    let one = config(1, messages);
    let (mut plain_runs, mut tls_runs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so neither always runs on a warmer machine.
        for tls_turn in [round % 2 == 1, round % 2 == 0] {
            let (env, runs, label) = if tls_turn {
                (&mut tls, &mut tls_runs, "TLS  ")
            } else {
                (&mut plain, &mut plain_runs, "plain")
            };
            let r = run_once(env, &one, Variant::C).await?;
            println!(
                "  round {}/{rounds} {label} {:>9.0} msgs/s  client CPU {:.2} µs/msg",
                round + 1,
                r.cost.msgs_per_sec(),
                r.cost.client_us_per_msg()
            );
            runs.push(r);
        }
    }
    let sixteen = config(16, messages);
    let plain16 = run_once(&mut plain, &sixteen, Variant::C).await?;
    let tls16 = run_once(&mut tls, &sixteen, Variant::C).await?;
    Ok(TlsResult {
        messages,
        rounds,
        plain: summarize(Variant::C, &plain_runs),
        tls: summarize(Variant::C, &tls_runs),
        plain16_kib: plain16.cost.peak_rss_kib,
        tls16_kib: tls16.cost.peak_rss_kib,
    })
}

pub(crate) fn table(r: &TlsResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### TLS against plain TCP, millrace, 1 consumer, COUNT 500, no-op handler — {} entries per run, {} round(s), medians\n",
        r.messages, r.rounds
    );
    s.push_str("| connection | msgs/s (min–max) | client CPU µs/msg | server CPU µs/msg | peak RSS, 16 consumers, MiB |\n");
    s.push_str("|---|--:|--:|--:|--:|\n");
    for (name, m, kib) in [
        ("plain TCP", &r.plain, r.plain16_kib),
        ("TLS (tokio-rustls)", &r.tls, r.tls16_kib),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.2} | {:.1} |",
            m.msgs_per_sec,
            m.min,
            m.max,
            m.client_us,
            m.server_us,
            kib as f64 / 1024.0
        );
    }
    let _ = writeln!(
        s,
        "\nTLS / plain: {:.2}× (target ≥ 0.70×). RSS measured in this benchmark process after the runs above, so it includes what they left; each server is a throwaway redis-server of its own.",
        r.ratio()
    );
    s
}
