//! `millrace pending STREAM GROUP`: pending entries with consumer, idle time and deliveries.

use redis::Value;
use serde::Serialize;

use crate::cli::PendingArgs;
use crate::connect::Redis;
use crate::error::Result;
use crate::render::{self, escape, millis, Align, JsonBytes, Table};
use crate::value;

#[derive(Debug, Serialize)]
struct Row {
    id: String,
    consumer: JsonBytes,
    idle_ms: u64,
    deliveries: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    stream: JsonBytes,
    group: JsonBytes,
    /// Pending entries of the group (or of --consumer), before the --idle filter and --limit.
    total: u64,
    entries: Vec<Row>,
}

/// Lists pending entries.
pub(crate) async fn run(redis: &mut Redis, json: bool, args: &PendingArgs) -> Result<()> {
    let (stream, group) = (&args.stream, &args.group);
    redis.require_stream(stream).await?;
    // Summary form: [count, min, max, [[consumer, count], ...]].
    let summary: Value = redis
        .group_query(redis::cmd("XPENDING").arg(stream).arg(group), stream, group)
        .await?;
    let mut parts = value::list(summary).into_iter();
    let group_total = parts
        .next()
        .and_then(|v| value::int(&v))
        .unwrap_or_default();
    let per_consumer = parts.nth(2).map(value::list).unwrap_or_default();
    let total = match &args.consumer {
        None => group_total,
        Some(c) => per_consumer
            .iter()
            .filter_map(|row| {
                let row = value::list_ref(row);
                if value::bytes(row.first()?)? == c.as_bytes() {
                    value::int(row.get(1)?)
                } else {
                    None
                }
            })
            .sum(),
    };
    let count = usize::try_from(args.limit).unwrap_or(usize::MAX);
    // Extended form: XPENDING key group [IDLE ms] - + count [consumer].
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream).arg(group);
    if let Some(idle) = args.idle {
        cmd.arg("IDLE").arg(render::ms(idle));
    }
    cmd.arg("-").arg("+").arg(count);
    if let Some(c) = &args.consumer {
        cmd.arg(c);
    }
    let rows = millrace::streams::parse_pending(redis.query(&cmd).await?);
    let report = Report {
        stream: JsonBytes(stream.as_bytes().to_vec()),
        group: JsonBytes(group.as_bytes().to_vec()),
        total,
        entries: rows
            .into_iter()
            .map(|r| Row {
                id: r.id.to_string(),
                consumer: JsonBytes(r.consumer),
                idle_ms: r.idle_ms,
                deliveries: r.deliveries,
            })
            .collect(),
    };
    if json {
        return render::json(&report);
    }
    let whose = match &args.consumer {
        Some(c) => format!("consumer `{c}` of group `{group}`"),
        None => format!("group `{group}`"),
    };
    if report.entries.is_empty() {
        let filter = args
            .idle
            .map(|d| format!(" idle for at least {}", render::duration(d)))
            .unwrap_or_default();
        return render::out(&format!(
            "no pending entries{filter} for {whose} ({total} pending in all)"
        ));
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("CONSUMER", Align::Left),
        ("IDLE", Align::Right),
        ("DELIVERIES", Align::Right),
    ]);
    for r in &report.entries {
        table.row(vec![
            r.id.clone(),
            escape(&r.consumer.0),
            millis(r.idle_ms),
            r.deliveries.to_string(),
        ]);
    }
    render::out(&table.render())?;
    render::out(&format!(
        "{} shown, {total} pending for {whose}",
        report.entries.len()
    ))
}
