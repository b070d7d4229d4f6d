//! `millrace streams [PATTERN]`: every stream with length, first/last id and number of groups.

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
}

/// Lists the streams matching `pattern`.
pub(crate) async fn run(redis: &mut Redis, json: bool, pattern: Option<&str>) -> Result<()> {
    let mut rows = Vec::new();
    for key in info::scan_streams(redis, pattern).await? {
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
    let mut table = Table::new(&[
        ("STREAM", Align::Left),
        ("LENGTH", Align::Right),
        ("FIRST-ID", Align::Left),
        ("LAST-ID", Align::Left),
        ("GROUPS", Align::Right),
    ]);
    for r in &rows {
        table.row(vec![
            escape(&r.stream.0),
            r.length.to_string(),
            opt(r.first_id.as_deref()),
            opt(r.last_id.as_deref()),
            r.groups.to_string(),
        ]);
    }
    render::out(&table.render())
}
