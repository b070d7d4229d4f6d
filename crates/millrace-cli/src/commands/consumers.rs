//! `millrace consumers STREAM GROUP`: the consumers of a group.

use serde::Serialize;

use crate::connect::Redis;
use crate::error::Result;
use crate::info;
use crate::key::Key;
use crate::render::{self, escape, millis, Align, JsonBytes, Table};

#[derive(Debug, Serialize)]
struct Row {
    consumer: JsonBytes,
    pending: u64,
    idle_ms: u64,
    inactive_ms: Option<u64>,
}

/// Shows the consumers of `group`.
pub(crate) async fn run(redis: &mut Redis, json: bool, stream: &Key, group: &Key) -> Result<()> {
    redis.require_stream(stream).await?;
    let rows: Vec<Row> = info::consumers(redis, stream, group)
        .await?
        .into_iter()
        .map(|c| Row {
            consumer: JsonBytes(c.name),
            pending: c.pending,
            idle_ms: c.idle_ms,
            inactive_ms: c.inactive_ms,
        })
        .collect();
    if json {
        return render::json(&rows);
    }
    if rows.is_empty() {
        return render::out(&format!("group `{group}` of `{stream}` has no consumers"));
    }
    let mut table = Table::new(&[
        ("CONSUMER", Align::Left),
        ("PENDING", Align::Right),
        ("IDLE", Align::Right),
        ("INACTIVE", Align::Right),
    ]);
    for r in &rows {
        table.row(vec![
            escape(&r.consumer.0),
            r.pending.to_string(),
            millis(r.idle_ms),
            r.inactive_ms.map_or_else(|| "?".to_owned(), millis),
        ]);
    }
    render::out(&table.render())
}
