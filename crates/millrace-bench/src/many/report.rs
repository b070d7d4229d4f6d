//! The `streams` section's table: medians per form, the idle window, and the multi-stream form's
//! targets marked met or missed.

use std::fmt::Write as _;

use super::{Form, Measured, Settings};
use crate::bench::median;
use crate::report::thousands;

/// One form's medians, and its idle run.
struct Row {
    form: Form,
    rate: f64,
    min: f64,
    max: f64,
    drain: f64,
    first_ms: f64,
    /// Entries per batch the handlers got.
    batch: f64,
    /// `XREADGROUP` and `XACK` calls of a run.
    calls: (f64, f64),
    conns: usize,
    /// Entries handled twice over all runs (a reconnect's replay).
    twice: u64,
    rss_mib: f64,
    client_us: f64,
    server_us: f64,
    idle: Option<Measured>,
}

fn row(form: Form, runs: &[(Form, Measured)], total: u64) -> Row {
    let mine: Vec<&Measured> = runs
        .iter()
        .filter(|(f, _)| *f == form)
        .map(|(_, m)| m)
        .collect();
    let rates: Vec<f64> = mine.iter().map(|m| m.rate()).collect();
    let per_msg = |cpu: f64, m: &Measured| cpu * 1e6 / m.handled.max(1) as f64;
    Row {
        form,
        rate: median(rates.clone()),
        min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        max: rates.iter().copied().fold(0.0, f64::max),
        drain: median(mine.iter().map(|m| m.drain_rate()).collect()),
        first_ms: median(mine.iter().map(|m| m.first_ms).collect()),
        batch: median(
            mine.iter()
                .map(|m| m.handled as f64 / m.batches.max(1) as f64)
                .collect(),
        ),
        calls: (
            median(mine.iter().map(|m| m.reads as f64).collect()),
            median(mine.iter().map(|m| m.acks as f64).collect()),
        ),
        conns: mine.iter().map(|m| m.max_conns).max().unwrap_or(0),
        twice: mine.iter().map(|m| m.handled - total).sum(),
        rss_mib: mine.iter().map(|m| m.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        client_us: median(mine.iter().map(|m| per_msg(m.client_cpu, m)).collect()),
        server_us: median(mine.iter().map(|m| per_msg(m.server_cpu, m)).collect()),
        idle: mine
            .iter()
            .find(|m| m.idle_secs > 0.0)
            .map(|m| (*m).clone()),
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}

pub(super) fn report(s: &Settings, runs: &[(Form, Measured)], floor: f64) -> String {
    let rows: Vec<Row> = s
        .forms
        .iter()
        .map(|f| row(*f, runs, (s.streams * s.backlog) as u64))
        .collect();
    let hand = rows
        .iter()
        .find(|r| r.form == Form::HandLoop)
        .map(|r| r.rate);
    let one = rows
        .iter()
        .find(|r| r.form == Form::OneStream)
        .map_or(f64::NAN, |r| r.rate);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {} streams × {} entries, against one stream of {}: default options, no-op handler, {} rounds\n",
        s.streams,
        s.backlog,
        s.streams * s.backlog,
        s.rounds
    );
    let _ = writeln!(out, "| form | msgs/s (median) | min–max | vs (c) | drain msgs/s after the first entry | first entry after | entries per batch | XREADGROUP / XACK calls | XACK per 1,000 entries | connections (max) | handled twice (all runs) | peak RSS | client CPU µs/msg | server CPU µs/msg | idle: client CPU | idle: server CPU | idle: connections |");
    let _ = writeln!(
        out,
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    let total = (s.streams * s.backlog) as f64;
    for r in &rows {
        let idle = |cpu: fn(&Measured) -> f64| {
            r.idle.as_ref().map_or("-".to_owned(), |m| {
                format!("{:.2}% of a core", cpu(m) / m.idle_secs * 100.0)
            })
        };
        let _ = writeln!(
            out,
            "| {} | {} | {}–{} | {:.2}× | {} | {:.0} ms | {:.1} | {} / {} | {:.1} | {} | {} | {:.1} MiB | {:.2} | {:.2} | {} | {} | {} |",
            r.form.label(s.streams),
            thousands(r.rate),
            thousands(r.min),
            thousands(r.max),
            r.rate / one,
            thousands(r.drain),
            r.first_ms,
            r.batch,
            thousands(r.calls.0),
            thousands(r.calls.1),
            r.calls.1 * 1000.0 / total.max(1.0),
            r.conns,
            r.twice,
            r.rss_mib,
            r.client_us,
            r.server_us,
            idle(|m| m.idle_client_cpu),
            idle(|m| m.idle_server_cpu),
            r.idle.as_ref().map_or("-".to_owned(), |m| m.idle_conns.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "\nThe server's own CPU with no consumer connected (10 s before the runs): {:.2}% of a core; \
         the idle columns include it.\n",
        floor * 100.0
    );
    for a in rows
        .iter()
        .filter(|r| matches!(r.form, Form::Multi | Form::MultiOther))
    {
        let name = match a.form {
            Form::MultiOther => "(a0) multi-stream, the other build",
            _ => "(a) multi-stream",
        };
        let _ = writeln!(
            out,
            "| target, {name} | measured | target | |\n|---|---|---|---|"
        );
        let _ = writeln!(
            out,
            "| connections | {} | ≤ 8 | {} |",
            a.conns,
            verdict(a.conns <= 8)
        );
        let _ = writeln!(
            out,
            "| peak RSS | {:.1} MiB | ≤ 64 MiB | {} |",
            a.rss_mib,
            verdict(a.rss_mib <= 64.0)
        );
        let ratio = a.rate / one;
        let _ = writeln!(
            out,
            "| throughput vs (c) | {ratio:.2}× | ≥ 0.8× | {} |",
            verdict(ratio >= 0.8)
        );
        if let Some(hand) = hand {
            let ratio = a.rate / hand;
            let _ = writeln!(
                out,
                "| throughput vs (d) the hand-written loop | {ratio:.2}× | ≥ 1.5× | {} |",
                verdict(ratio >= 1.5)
            );
        }
        if let Some(m) = &a.idle {
            let client = m.idle_client_cpu / m.idle_secs * 100.0;
            let server = m.idle_server_cpu / m.idle_secs * 100.0;
            let _ = writeln!(
                out,
                "| idle client CPU | {client:.2}% of a core | ≤ 0.5% | {} |",
                verdict(client <= 0.5)
            );
            let _ = writeln!(
                out,
                "| idle server CPU | {server:.2}% of a core | ≤ 0.5% | {} |",
                verdict(server <= 0.5)
            );
        }
        let _ = writeln!(out);
    }
    out
}
