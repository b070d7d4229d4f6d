//! `millrace reap STREAM GROUP --idle 1h`: delete idle consumers without losing their entries.
//!
//! `XGROUP DELCONSUMER` silently drops a consumer's pending entries, so for every consumer idle
//! longer than `--idle` this command runs the library's reaper
//! ([`millrace::streams::reap_consumer`]): it first moves the consumer's pending entries to
//! `--into` with `XCLAIM` (keeping their delivery counts and about their idle time, so workers can
//! still claim them at once), and then deletes the consumer only if, atomically, it holds no
//! pending entry and is still idle. A consumer with pending entries is never deleted.

use millrace::streams::{self, IdleConsumer, ReapOutcome};
use serde::Serialize;

use crate::cli::ReapArgs;
use crate::connect::{is_missing, Redis};
use crate::error::Result;
use crate::render::{self, escape, millis, Align, JsonBytes, Table};

#[derive(Debug, Serialize)]
struct Row {
    consumer: JsonBytes,
    idle_ms: u64,
    /// Pending entries before the reap.
    pending: u64,
    /// Entries moved to `--into`.
    claimed: u64,
    /// Pending entries that were already deleted from the stream; XCLAIM dropped them.
    dropped_deleted: u64,
    /// `deleted`, `would delete`, or why the consumer was kept.
    action: String,
    deleted: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    stream: JsonBytes,
    group: JsonBytes,
    into: JsonBytes,
    idle_ms: u64,
    dry_run: bool,
    consumers: Vec<Row>,
}

/// Reaps idle consumers.
pub(crate) async fn run(redis: &mut Redis, json: bool, args: &ReapArgs) -> Result<()> {
    let (stream, group) = (&args.stream, &args.group);
    redis.require_stream(stream).await?;
    let idle_ms = u64::try_from(args.idle.as_millis()).unwrap_or(u64::MAX);
    let consumers =
        match streams::idle_consumers(redis.conn(), stream, group, args.idle, &args.into).await {
            Ok(c) => c,
            Err(e) if is_missing(&e) => return Err(redis.explain_missing(stream, group).await),
            Err(e) => return Err(redis.error(&e)),
        };
    let mut report = Report {
        stream: JsonBytes(stream.as_bytes().to_vec()),
        group: JsonBytes(group.as_bytes().to_vec()),
        into: JsonBytes(args.into.as_bytes().to_vec()),
        idle_ms,
        dry_run: args.dry_run,
        consumers: Vec::new(),
    };
    for c in consumers {
        let row = if args.dry_run {
            Row {
                consumer: JsonBytes(c.name.clone()),
                idle_ms: render::ms(c.idle),
                pending: c.pending,
                claimed: 0,
                dropped_deleted: 0,
                action: if c.pending > 0 {
                    format!(
                        "would move {} pending to `{}`, then delete",
                        c.pending, args.into
                    )
                } else {
                    "would delete".to_owned()
                },
                deleted: false,
            }
        } else {
            reap_one(redis, args, c).await?
        };
        report.consumers.push(row);
    }
    if json {
        return render::json(&report);
    }
    if report.consumers.is_empty() {
        return render::out(&format!(
            "no consumer of group `{group}` on `{stream}` is idle for {} or longer",
            render::duration(args.idle)
        ));
    }
    let mut table = Table::new(&[
        ("CONSUMER", Align::Left),
        ("IDLE", Align::Right),
        ("PENDING", Align::Right),
        ("CLAIMED", Align::Right),
        ("ACTION", Align::Left),
    ]);
    for r in &report.consumers {
        table.row(vec![
            escape(&r.consumer.0),
            millis(r.idle_ms),
            r.pending.to_string(),
            r.claimed.to_string(),
            r.action.clone(),
        ]);
    }
    let deleted = report.consumers.iter().filter(|r| r.deleted).count();
    let mut text = table.render();
    text.push_str(&if args.dry_run {
        format!(
            "dry run: {} would be reaped",
            render::count(report.consumers.len() as u64, "consumer", "consumers")
        )
    } else {
        format!(
            "deleted {deleted} of {} idle {}",
            report.consumers.len(),
            if report.consumers.len() == 1 {
                "consumer"
            } else {
                "consumers"
            }
        )
    });
    render::out(&text)
}

async fn reap_one(redis: &mut Redis, args: &ReapArgs, c: IdleConsumer) -> Result<Row> {
    let reaped = streams::reap_consumer(
        redis.conn(),
        &args.stream,
        &args.group,
        &c.name,
        args.idle,
        Some(args.into.as_bytes()),
    )
    .await
    .map_err(|e| redis.error(&e))?;
    let (action, deleted) = match reaped.outcome {
        ReapOutcome::Deleted => ("deleted", true),
        ReapOutcome::KeptPending => (
            "kept: it still has pending entries (it was active again)",
            false,
        ),
        ReapOutcome::KeptActive => ("kept: it became active", false),
        _ => ("already gone", false),
    };
    Ok(Row {
        consumer: JsonBytes(c.name),
        idle_ms: render::ms(c.idle),
        pending: c.pending,
        claimed: reaped.claimed,
        dropped_deleted: reaped.dropped_deleted,
        action: action.to_owned(),
        deleted,
    })
}
