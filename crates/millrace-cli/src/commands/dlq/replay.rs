//! `dlq replay`: dead letters sent back to their source stream (those that cannot go are skipped
//! with the reason), or only listed with `--dry-run`; a progress bar on a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use millrace::dead_letter::Replay;
use serde::Serialize;

use super::{letters_of, n_letters, select, REASON_WIDTH};
use crate::cli::{DlqSelect, DlqTarget};
use crate::connect::{no_such_stream, wrong_type, KeyState, Redis};
use crate::error::{CliError, Result};
use crate::render::{self, escape, opt, truncate, Align, JsonBytes, Table};

/// Replays of at least this many entries show a progress bar (on a terminal).
const PROGRESS_FROM: usize = 50;

#[derive(Debug, Serialize)]
struct Replayed {
    dlq_id: String,
    source_id: Option<String>,
    /// The entry's new id in the source stream (absent in a dry run).
    new_id: Option<String>,
    reason: String,
}

#[derive(Debug, Serialize)]
struct Skipped {
    dlq_id: String,
    why: String,
}

#[derive(Debug, Serialize)]
struct ReplayReport {
    stream: JsonBytes,
    dlq: JsonBytes,
    dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    replayed: Vec<Replayed>,
    skipped: Vec<Skipped>,
}

pub(super) async fn replay(
    redis: &mut Redis,
    json: bool,
    target: &DlqTarget,
    sel: &DlqSelect,
    dry_run: bool,
) -> Result<()> {
    let stream = &target.stream;
    let dlq = target.dlq_key();
    let selected = select(redis, target, sel).await?;
    // A dry run never refuses: what would stop a replay is said in its report instead.
    let mut note = None;
    let refusal = match redis.stream_state(stream).await? {
        KeyState::Stream => None,
        KeyState::Other(t) => Some(wrong_type(stream, &t)),
        KeyState::Missing => Some(CliError::runtime(format!(
            "{}: replaying would create it without consumer groups; create it and its groups \
             first (XGROUP CREATE {stream} <group> 0 MKSTREAM)",
            no_such_stream(stream)
        ))),
    };
    if let Some(refusal) = refusal {
        if !dry_run {
            return Err(refusal);
        }
        note = Some(format!("a replay would be refused: {refusal}"));
    }
    // On a cluster with the two keys in different slots, each entry moves in two steps (XADD to
    // the stream, then XDEL), retried without a second copy.
    let in_steps = !redis.same_slot(stream, &dlq).await?;
    if in_steps && note.is_none() {
        note = Some(format!(
            "`{stream}` and `{dlq}` are in different slots: each entry moves in two steps (XADD, then \
             XDEL; a retried step adds no second copy). Names like `{}` keep a stream and its \
             dead-letter stream in one slot",
            millrace::dead_letter::colocated_name(&stream.to_string())
        ));
    }
    let dead_letters = target.dead_letters();
    let mut report = ReplayReport {
        stream: JsonBytes(stream.as_bytes().to_vec()),
        dlq: JsonBytes(dlq.as_bytes().to_vec()),
        dry_run,
        note,
        replayed: Vec::new(),
        skipped: Vec::new(),
    };
    let mut plan = Vec::new();
    for l in &selected.letters {
        match dead_letters.check_replay(l) {
            Ok(_) => plan.push(l),
            Err(why) => report.skipped.push(Skipped {
                dlq_id: l.id().to_string(),
                why: why.to_string(),
            }),
        }
    }
    let progress = progress_bar(plan.len());
    let mut failure = None;
    for l in plan {
        let Some(d) = &l.dead_letter else { continue };
        let mut new_id = None;
        if !dry_run {
            let moved = if in_steps {
                dead_letters.replay_in_steps(redis.conn(), l).await
            } else {
                dead_letters.replay(redis.conn(), l).await
            };
            match moved {
                Ok(Replay::Replayed { new_id: id }) => new_id = Some(id.to_string()),
                Ok(Replay::Skipped(why)) => {
                    report.skipped.push(Skipped {
                        dlq_id: l.id().to_string(),
                        why: why.to_string(),
                    });
                    progress.inc(1);
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    failure = Some(CliError::runtime(format!(
                        "replaying dead letter {} failed after {} replayed: {}",
                        l.id(),
                        report.replayed.len(),
                        redis.error(&e)
                    )));
                    break;
                }
            }
        }
        report.replayed.push(Replayed {
            dlq_id: l.id().to_string(),
            source_id: d.source_id.map(|i| i.to_string()),
            new_id,
            reason: d.reason.clone(),
        });
        progress.inc(1);
    }
    progress.finish_and_clear();
    if json {
        render::json(&report)?;
    } else {
        print_replay(&report, selected.left_out)?;
    }
    if let Some(f) = failure {
        return Err(f);
    }
    if !sel.ids.is_empty() && !report.skipped.is_empty() {
        return Err(CliError::runtime(format!(
            "{} could not be replayed (see above)",
            letters_of(
                report.skipped.len(),
                "named dead letter",
                "named dead letters"
            )
        )));
    }
    Ok(())
}

fn print_replay(report: &ReplayReport, others: usize) -> Result<()> {
    let mut text = String::new();
    if !report.replayed.is_empty() {
        let mut table = if report.dry_run {
            Table::new(&[
                ("DLQ-ID", Align::Left),
                ("SOURCE-ID", Align::Left),
                ("REASON", Align::Left),
            ])
        } else {
            Table::new(&[
                ("DLQ-ID", Align::Left),
                ("SOURCE-ID", Align::Left),
                ("NEW-ID", Align::Left),
            ])
        };
        for r in &report.replayed {
            let last = if report.dry_run {
                truncate(&escape(r.reason.as_bytes()), REASON_WIDTH)
            } else {
                opt(r.new_id.as_deref())
            };
            table.row(vec![r.dlq_id.clone(), opt(r.source_id.as_deref()), last]);
        }
        text.push_str(&table.render());
    }
    for s in &report.skipped {
        text.push_str(&format!("skipped {}: {}\n", s.dlq_id, s.why));
    }
    let n = report.replayed.len();
    text.push_str(&if report.dry_run {
        format!(
            "dry run: would replay {} from `{}` to `{}`",
            n_letters(n),
            escape(&report.dlq.0),
            escape(&report.stream.0)
        )
    } else {
        format!(
            "replayed {} from `{}` to `{}`",
            n_letters(n),
            escape(&report.dlq.0),
            escape(&report.stream.0)
        )
    });
    if let Some(note) = &report.note {
        text.push_str(&format!("\n({note})"));
    }
    if others > 0 {
        text.push_str(&format!(
            "\n({} of `{}` belong to other streams and were left alone)",
            letters_of(others, "entry", "entries"),
            escape(&report.dlq.0)
        ));
    }
    render::out(&text)
}

fn progress_bar(len: usize) -> ProgressBar {
    if len < PROGRESS_FROM || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(
        Some(u64::try_from(len).unwrap_or(u64::MAX)),
        ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} dead letters {eta}") {
        bar.set_style(style);
    }
    bar
}
