//! `millrace streams [PATTERN]`: every stream with length, first/last id and number of groups;
//! on a cluster, the streams of every master, each with its master; first, which server (name,
//! version, role) each node is.

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
    /// The server holding the stream and its version, e.g. `redis 8.2.3 (master)`.
    server: Option<String>,
}

/// Lists the streams matching `pattern`.
pub(crate) async fn run(redis: &mut Redis, json: bool, pattern: Option<&str>) -> Result<()> {
    let mut rows = Vec::new();
    let cluster = redis.is_cluster();
    let nodes = crate::server::nodes(redis).await?;
    let single = (!cluster)
        .then(|| nodes.values().next().map(ToString::to_string))
        .flatten();
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
                server: match &found.master {
                    Some(m) => nodes.get(m).map(ToString::to_string),
                    None => single.clone(),
                },
                master: found.master,
            });
        }
    }
    if json {
        return render::json(&rows);
    }
    let servers = crate::server::lines(&nodes);
    if rows.is_empty() {
        return render::out(&match pattern {
            Some(p) => format!("{servers}no streams match `{p}`"),
            None => format!("{servers}no streams"),
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
    render::out(&format!("{servers}{}", table.render()))
}
