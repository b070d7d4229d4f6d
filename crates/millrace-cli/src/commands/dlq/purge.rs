//! `dlq purge`: dead letters deleted for good, after a confirmation (or `--yes`); `--dry-run`
//! only counts them.

use millrace::dead_letter::Letter;
use millrace::EntryId;
use serde::Serialize;

use super::{confirm, letters_of, n_letters, select};
use crate::cli::{DlqSelect, DlqTarget};
use crate::connect::Redis;
use crate::error::Result;
use crate::render::{self, JsonBytes};

#[derive(Debug, Serialize)]
struct PurgeReport {
    stream: JsonBytes,
    dlq: JsonBytes,
    dry_run: bool,
    /// Ids deleted (or that would be, in a dry run).
    ids: Vec<String>,
    deleted: u64,
}

pub(super) async fn purge(
    redis: &mut Redis,
    json: bool,
    target: &DlqTarget,
    sel: &DlqSelect,
    yes: bool,
    dry_run: bool,
) -> Result<()> {
    let dlq = target.dlq_key();
    let selected = select(redis, target, sel).await?;
    let others = selected.left_out;
    let ids: Vec<EntryId> = selected.letters.iter().map(Letter::id).collect();
    let mut report = PurgeReport {
        stream: JsonBytes(target.stream.as_bytes().to_vec()),
        dlq: JsonBytes(dlq.as_bytes().to_vec()),
        dry_run,
        ids: ids.iter().map(ToString::to_string).collect(),
        deleted: 0,
    };
    let n = ids.len();
    if n > 0 && !dry_run && !yes {
        confirm(&format!("delete {} from `{dlq}` for good", n_letters(n)))?;
    }
    if !dry_run {
        report.deleted = target
            .dead_letters()
            .purge(redis.conn(), &ids)
            .await
            .map_err(|e| redis.error(&e))?;
    }
    if json {
        return render::json(&report);
    }
    let mut text = if dry_run {
        let mut t = format!("dry run: would delete {} from `{dlq}`", n_letters(n));
        if n > 0 {
            t.push_str(": ");
            t.push_str(&report.ids.join(" "));
        }
        t
    } else if n == 0 {
        format!("nothing to purge in `{dlq}`")
    } else {
        format!(
            "deleted {} from `{dlq}`",
            render::count(report.deleted, "dead letter", "dead letters")
        )
    };
    if others > 0 {
        text.push_str(&format!(
            "\n({} of `{dlq}` belong to other streams or are not dead letters and were kept; name \
             them with --id to delete them)",
            letters_of(others, "entry", "entries")
        ));
    }
    render::out(&text)
}
