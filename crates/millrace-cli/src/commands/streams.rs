//! `millrace streams [PATTERN]`: every stream with length, first/last id and number of groups;
//! on a cluster, the streams of every master, each with its master.

use serde::Serialize;

use crate::connect::Redis;
use crate::error::Result;
use crate::info;
use crate::render::{self, escape, opt, Align, JsonBytes, Table};

#[derive(Debug, Serialize)]
struct Row {
    stream: JsonBytes,
    length: u64,
    first_id: Option<String>,
    last_id: Option<String>,
    last_generated_id: Option<String>,
    entries_added: Option<u64>,
    groups: u64,
    /// On a cluster, the master that holds the stream (`host:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    master: Option<String>,
}

/// Lists the streams matching `pattern`.
pub(crate) async fn run(redis: &mut Redis, json: bool, pattern: Option<&str>) -> Result<()> {
    let mut rows = Vec::new();
    let cluster = redis.is_cluster();
    for found in info::scan_streams(redis, pattern).await? {
        let key = found.key;
        // A key deleted between SCAN and XINFO is skipped.
        if let Some(s) = info::stream(redis, &key).await? {
            rows.push(Row {
                stream: JsonBytes(key),
                length: s.length,
                first_id: s.first_id.map(|i| i.to_string()),
                last_id: s.last_id.map(|i| i.to_string()),
                last_generated_id: s.last_generated_id.map(|i| i.to_string()),
                entries_added: s.entries_added,
                groups: s.groups,
                master: found.master,
            });
        }
    }
    if json {
        return render::json(&rows);
    }
    if rows.is_empty() {
        return render::out(&match pattern {
            Some(p) => format!("no streams match `{p}`"),
            None => "no streams".to_owned(),
        });
    }
    let mut columns = vec![
        ("STREAM", Align::Left),
        ("LENGTH", Align::Right),
        ("FIRST-ID", Align::Left),
        ("LAST-ID", Align::Left),
        ("GROUPS", Align::Right),
    ];
    if cluster {
        columns.push(("MASTER", Align::Left));
    }
    let mut table = Table::new(&columns);
    for r in &rows {
        let mut row = vec![
            escape(&r.stream.0),
            r.length.to_string(),
            opt(r.first_id.as_deref()),
            opt(r.last_id.as_deref()),
            r.groups.to_string(),
        ];
        if cluster {
            row.push(opt(r.master.as_deref()));
        }
        table.row(row);
    }
    render::out(&table.render())
}
