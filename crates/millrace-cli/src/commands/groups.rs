//! `millrace groups STREAM`: the consumer groups of a stream.

use serde::Serialize;

use crate::connect::Redis;
use crate::error::Result;
use crate::info;
use crate::key::Key;
use crate::render::{self, escape, opt, Align, JsonBytes, Table};

#[derive(Debug, Serialize)]
struct Row {
    group: JsonBytes,
    consumers: u64,
    pending: u64,
    last_delivered_id: Option<String>,
    entries_read: Option<u64>,
    lag: Option<u64>,
}

/// Shows the groups of `stream`.
pub(crate) async fn run(redis: &mut Redis, json: bool, stream: &Key) -> Result<()> {
    redis.require_stream(stream).await?;
    let rows: Vec<Row> = info::groups(redis, stream.as_bytes())
        .await?
        .into_iter()
        .map(|g| Row {
            group: JsonBytes(g.name),
            consumers: g.consumers,
            pending: g.pending,
            last_delivered_id: g.last_delivered_id.map(|i| i.to_string()),
            entries_read: g.entries_read,
            lag: g.lag,
        })
        .collect();
    if json {
        return render::json(&rows);
    }
    if rows.is_empty() {
        return render::out(&format!("stream `{stream}` has no consumer groups"));
    }
    let mut table = Table::new(&[
        ("GROUP", Align::Left),
        ("CONSUMERS", Align::Right),
        ("PENDING", Align::Right),
        ("LAST-DELIVERED", Align::Left),
        ("ENTRIES-READ", Align::Right),
        ("LAG", Align::Right),
    ]);
    for r in &rows {
        table.row(vec![
            escape(&r.group.0),
            r.consumers.to_string(),
            r.pending.to_string(),
            opt(r.last_delivered_id.as_deref()),
            opt(r.entries_read),
            opt(r.lag),
        ]);
    }
    render::out(&table.render())
}
