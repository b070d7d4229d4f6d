//! `millrace groups STREAM`: the consumer groups of a stream, after which server (name, version,
//! role) holds it.

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
    /// The server holding the stream and its version, e.g. `redis 8.2.3 (master)`.
    server: String,
}

/// Shows the groups of `stream`.
pub(crate) async fn run(redis: &mut Redis, json: bool, stream: &Key) -> Result<()> {
    redis.require_stream(stream).await?;
    let master = if redis.is_cluster() {
        crate::server::master_of(redis, stream).await?
    } else {
        None
    };
    let server = crate::server::describe(redis, master.as_deref()).await?;
    let at = master.unwrap_or_else(|| redis.target.clone());
    let heading = format!("server: {server} at {at}\n");
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
            server: server.to_string(),
        })
        .collect();
    if json {
        return render::json(&rows);
    }
    if rows.is_empty() {
        return render::out(&format!(
            "{heading}stream `{stream}` has no consumer groups"
        ));
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
    render::out(&format!("{heading}{}", table.render()))
}
