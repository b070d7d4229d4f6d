//! Tables (Markdown, printed as they are and written to `docs/benchmarks.md`) and the verdict on
//! the targets.

use std::fmt::Write as _;

use crate::bench::{Config, Summary, Variant};
use crate::latency::LatencyResult;
use crate::soak::SoakResult;

/// `1234567.8` → `1,234,568`.
pub(crate) fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "–".to_owned();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// One configuration's results.
#[derive(Debug, Clone)]
pub(crate) struct ConfigResult {
    pub(crate) config: Config,
    pub(crate) rounds: usize,
    pub(crate) summaries: Vec<Summary>,
}

impl ConfigResult {
    pub(crate) fn get(&self, v: Variant) -> Option<&Summary> {
        self.summaries.iter().find(|s| s.variant == v)
    }

    fn ratio(&self, num: Variant, den: Variant) -> Option<f64> {
        Some(self.get(num)?.msgs_per_sec / self.get(den)?.msgs_per_sec)
    }

    /// The detailed table of one configuration.
    pub(crate) fn table(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### {} — {} entries per run, {} round(s), medians\n",
            c.title,
            thousands(c.messages as f64),
            self.rounds
        );
        s.push_str("| variant | msgs/s | min – max | client CPU µs/msg | server CPU µs/msg | server busy | others' CPU | peak RSS MiB |\n");
        s.push_str("|---|--:|--:|--:|--:|--:|--:|--:|\n");
        for m in &self.summaries {
            let _ = writeln!(
                s,
                "| {} | {} | {} – {} | {:.2} | {:.2} | {:.0}% | {:.2} cores | {} |",
                m.variant.label(),
                thousands(m.msgs_per_sec),
                thousands(m.min),
                thousands(m.max),
                m.client_us,
                m.server_us,
                m.server_busy * 100.0,
                m.others_busy,
                mib(m.peak_rss_kib),
            );
        }
        let mut notes = Vec::new();
        if let Some(r) = self.ratio(Variant::C, Variant::A) {
            notes.push(format!("c/a = {r:.2}"));
        }
        if let Some(r) = self.ratio(Variant::C, Variant::B) {
            notes.push(format!("c/b = {r:.2}"));
        }
        if let Some(r) = self.ratio(Variant::B, Variant::A) {
            notes.push(format!("b/a = {r:.2}"));
        }
        if let Some(m) = self.get(Variant::C) {
            if let (Some(d), Some(left)) = (m.shutdown, m.conns_left) {
                notes.push(format!(
                    "millrace `shutdown()` took at most {d:.1?}; worst run: {left}"
                ));
            }
        }
        if !notes.is_empty() {
            let _ = writeln!(s, "\n{}", notes.join("; "));
        }
        let _ = writeln!(
            s,
            "\nServer time by command (INFO commandstats, last round):\n"
        );
        for m in &self.summaries {
            let _ = writeln!(
                s,
                "- {}: {}",
                m.variant.label(),
                crate::measure::commandstats_line(&m.commands)
            );
        }
        s
    }
}

/// The one-line-per-configuration summary.
pub(crate) fn summary_table(results: &[ConfigResult]) -> String {
    let mut s = String::new();
    s.push_str("| configuration | (a) msgs/s | (b) msgs/s | (c) millrace msgs/s | c/a | c/b | client CPU µs/msg a / b / c | server CPU µs/msg a / b / c | peak RSS (c) MiB |\n");
    s.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    let rate = |r: &ConfigResult, v| {
        r.get(v)
            .map(|m| thousands(m.msgs_per_sec))
            .unwrap_or_else(|| "–".into())
    };
    let us = |r: &ConfigResult, f: &dyn Fn(&Summary) -> f64| {
        [Variant::A, Variant::B, Variant::C]
            .iter()
            .map(|v| {
                r.get(*v)
                    .map(|m| format!("{:.2}", f(m)))
                    .unwrap_or_else(|| "–".into())
            })
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for r in results {
        let ratio = |n, d| {
            r.ratio(n, d)
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.config.title,
            rate(r, Variant::A),
            rate(r, Variant::B),
            rate(r, Variant::C),
            ratio(Variant::C, Variant::A),
            ratio(Variant::C, Variant::B),
            us(r, &|m| m.client_us),
            us(r, &|m| m.server_us),
            r.get(Variant::C)
                .map(|m| mib(m.peak_rss_kib))
                .unwrap_or_else(|| "–".into()),
        );
    }
    s
}

pub(crate) fn latency_table(rate: u64, results: &[LatencyResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### End-to-end latency at {} entries/s (XADD → handler), one consumer\n",
        thousands(rate as f64)
    );
    s.push_str("| variant | entries | achieved rate/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | client CPU µs/msg (incl. producer) | server CPU µs/msg |\n");
    s.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            r.variant.label(),
            thousands(r.samples as f64),
            thousands(r.achieved_rate),
            r.p50,
            r.p90,
            r.p99,
            r.p999,
            r.max,
            r.cost.client_us_per_msg(),
            r.cost.server_us_per_msg(),
        );
    }
    s
}

pub(crate) fn micro_table(steps: &[crate::micro::Step]) -> String {
    let mut s = String::from(
        "### Client CPU per entry of single steps (synthetic 500-entry reply, thread CPU clock)\n\n| step | done by | ns/entry |\n|---|---|--:|\n",
    );
    for x in steps {
        let _ = writeln!(s, "| {} | {} | {:.0} |", x.name, x.who, x.ns_per_entry);
    }
    s
}

pub(crate) fn soak_table(r: &SoakResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Soak: {} entries, {} consumers, COUNT {}\n",
        thousands(r.messages as f64),
        r.consumers,
        r.count
    );
    s.push_str("| handled | elapsed s | VmRSS MiB | VmHWM MiB |\n|--:|--:|--:|--:|\n");
    for x in &r.samples {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} | {} |",
            thousands(x.handled as f64),
            x.elapsed.as_secs_f64(),
            mib(x.rss_kib),
            mib(x.hwm_kib)
        );
    }
    let _ = writeln!(
        s,
        "\n{} msgs/s while a producer task in the same process adds them; client CPU {:.2} µs/msg (producer included), server CPU {:.2} µs/msg; connections left after shutdown: {}.",
        thousands(r.msgs_per_sec),
        r.client_us,
        r.server_us,
        r.conns_left
    );
    s
}

/// One target of the issue and whether it was met.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) met: Option<bool>,
}

fn find<'a>(results: &'a [ConfigResult], key: &str) -> Option<&'a ConfigResult> {
    results.iter().find(|r| r.config.key == key)
}

/// Checks every target the run has numbers for.
pub(crate) fn verdicts(
    results: &[ConfigResult],
    latency: &[LatencyResult],
    soak: Option<&SoakResult>,
    rss16_fresh_kib: Option<u64>,
    tls_over_plain: Option<f64>,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    let mut push = |target: &str, measured: String, met: Option<bool>| {
        out.push(Verdict {
            target: target.to_owned(),
            measured,
            met,
        })
    };
    if let Some(r) = tls_over_plain {
        push(
            "1 consumer, COUNT 500: millrace over TLS ≥ 0.7 × over plain TCP",
            format!("TLS/plain = {r:.2}"),
            Some(r >= 0.7),
        );
    }
    let main = find(results, "main");
    if let Some(m) = main {
        if let (Some(a), Some(b)) = (m.get(Variant::A), m.get(Variant::B)) {
            push(
                "reference (2 cores elsewhere): sequential ≈ 220k, read-ahead ≈ 390k msgs/s",
                format!(
                    "(a) {} msgs/s, (b) {} msgs/s",
                    thousands(a.msgs_per_sec),
                    thousands(b.msgs_per_sec)
                ),
                None,
            );
        }
        if let Some(r) = m.ratio(Variant::C, Variant::B) {
            push(
                "1 consumer, COUNT 500, no-op: millrace ≥ 0.9 × read-ahead",
                format!("c/b = {r:.2}"),
                Some(r >= 0.9),
            );
        }
        if let (Some(a), Some(c)) = (m.get(Variant::A), m.get(Variant::C)) {
            let r = c.client_us / a.client_us;
            push(
                "client CPU/msg ≤ 1.1 × sequential",
                format!(
                    "c {:.2} µs vs a {:.2} µs = {r:.2}×",
                    c.client_us, a.client_us
                ),
                Some(r <= 1.1),
            );
        }
    }
    if let (Some(m), Some(t)) = (main, find(results, "typed")) {
        if let (Some(noop), Some(typed)) = (m.get(Variant::C), t.get(Variant::C)) {
            let r = typed.msgs_per_sec / noop.msgs_per_sec;
            push(
                "typed decode ≥ 0.85 × no-op (millrace)",
                format!(
                    "{} vs {} msgs/s = {r:.2}",
                    thousands(typed.msgs_per_sec),
                    thousands(noop.msgs_per_sec)
                ),
                Some(r >= 0.85),
            );
        }
    }
    if let Some(c) = latency.iter().find(|l| l.variant == Variant::C) {
        push(
            "latency at 2k/s: p50 ≤ 150 µs",
            format!("p50 {} µs", c.p50),
            Some(c.p50 <= 150),
        );
        push(
            "latency at 2k/s: p99 ≤ 500 µs",
            format!("p99 {} µs (max {} µs)", c.p99, c.max),
            Some(c.p99 <= 500),
        );
    }
    let single = main.and_then(|m| m.get(Variant::C));
    if let (Some(one), Some(r16)) = (single, find(results, "consumers16")) {
        if let Some(c16) = r16.get(Variant::C) {
            push(
                "16 consumers aggregate ≥ single consumer (millrace)",
                format!(
                    "{} vs {} msgs/s = {:.2}",
                    thousands(c16.msgs_per_sec),
                    thousands(one.msgs_per_sec),
                    c16.msgs_per_sec / one.msgs_per_sec
                ),
                Some(c16.msgs_per_sec >= one.msgs_per_sec),
            );
            let judged = rss16_fresh_kib.unwrap_or(c16.peak_rss_kib);
            push(
                "RSS ≤ 32 MB with 16 consumers at COUNT 500",
                format!(
                    "peak {} MiB in a fresh process running only them{}; {} MiB in this process after the other variants",
                    rss16_fresh_kib.map(mib).unwrap_or_else(|| "–".into()),
                    if rss16_fresh_kib.is_some() { "" } else { " (not measured)" },
                    mib(c16.peak_rss_kib)
                ),
                Some(judged as f64 * 1024.0 <= 32e6),
            );
        }
    }
    if let (Some(one), Some(r256)) = (single, find(results, "consumers256")) {
        if let Some(c256) = r256.get(Variant::C) {
            let r = c256.msgs_per_sec / one.msgs_per_sec;
            push(
                "256 consumers: no collapse (≥ 0.5 × single consumer)",
                format!("{} msgs/s = {r:.2} × single", thousands(c256.msgs_per_sec)),
                Some(r >= 0.5),
            );
            let left = c256.conns_left;
            push(
                "256 consumers: every connection closed when `shutdown()` returns (CLIENT LIST)",
                left.map_or_else(|| "not measured".to_owned(), |l| format!("worst run: {l}")),
                left.map(|l| l.immediately == 0),
            );
        }
    }
    if let Some(s) = soak {
        let first = s
            .samples
            .iter()
            .find(|x| x.handled >= s.messages / 10)
            .or(s.samples.first());
        let last = s.samples.last();
        if let (Some(f), Some(l)) = (first, last) {
            let growth = l.rss_kib as f64 - f.rss_kib as f64;
            push(
                "soak: RSS ≤ 32 MB and flat (growth after the first 10% ≤ 2 MiB)",
                format!(
                    "VmRSS {} → {} MiB, peak {} MiB over {} entries",
                    mib(f.rss_kib),
                    mib(l.rss_kib),
                    mib(l.hwm_kib),
                    thousands(s.messages as f64)
                ),
                Some(l.hwm_kib as f64 * 1024.0 <= 32e6 && growth <= 2048.0),
            );
        }
    }
    out
}

pub(crate) fn verdict_table(v: &[Verdict]) -> String {
    let mut s = String::from("| target | measured | verdict |\n|---|---|---|\n");
    for x in v {
        let verdict = match x.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "for reference",
        };
        let _ = writeln!(s, "| {} | {} | {} |", x.target, x.measured, verdict);
    }
    s
}
