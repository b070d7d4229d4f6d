//! `millrace dlq list|show|replay|purge STREAM`: dead letters in `STREAM:dlq` (or `--dlq KEY`).
//!
//! A dead letter is an entry that starts with millrace's seven `millrace.*` metadata fields and
//! then holds the original fields ([`millrace::dead_letter`]). `list`, `replay` and `purge` (without
//! `--id`) act on the dead letters whose recorded source stream is STREAM, so a dead-letter stream
//! shared by several streams stays safe; entries of other streams are counted and left alone.

use std::io::{BufRead, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use millrace::dead_letter::{is_dead_letter_stream, Letter, Replay, Selected, Selection};
use millrace::EntryId;
use serde::Serialize;

use crate::cli::{DlqCommand, DlqSelect, DlqTarget};
use crate::connect::{no_such_stream, wrong_type, KeyState, Redis};
use crate::error::{CliError, Result};
use crate::render::{self, escape, json_fields, opt, truncate, Align, JsonBytes, Table};

/// Replays of at least this many entries show a progress bar (on a terminal).
const PROGRESS_FROM: usize = 50;
/// Characters of the reason shown by `list`.
const REASON_WIDTH: usize = 60;

/// How long ago the letter was dead-lettered (or added, for an entry that is not a dead letter).
fn age_ms(l: &Letter, now: u64) -> u64 {
    let at = l
        .dead_letter
        .as_ref()
        .and_then(|d| d.dead_lettered_at_ms)
        .unwrap_or(l.entry.id.ms);
    now.saturating_sub(at)
}

fn letter_json(l: &Letter, now: u64, with_fields: bool) -> LetterJson {
    let d = l.dead_letter.as_ref();
    let fields: &[(Vec<u8>, Vec<u8>)] = match d {
        Some(d) => &d.fields,
        None => &l.entry.fields,
    };
    LetterJson {
        id: l.entry.id.to_string(),
        dead_letter: d.is_some(),
        source_stream: d.map(|d| d.source_stream.clone()),
        source_id: d.and_then(|d| d.source_id).map(|i| i.to_string()),
        group: d.map(|d| d.group.clone()),
        consumer: d.map(|d| d.consumer.clone()),
        deliveries: d.and_then(|d| d.deliveries),
        reason: d.map(|d| d.reason.clone()),
        dead_lettered_at_ms: d.and_then(|d| d.dead_lettered_at_ms),
        age_ms: age_ms(l, now),
        field_count: fields.len(),
        fields: with_fields.then(|| json_fields(fields)),
    }
}

#[derive(Debug, Serialize)]
struct LetterJson {
    id: String,
    /// False when the entry does not start with the `millrace.*` fields.
    dead_letter: bool,
    source_stream: Option<String>,
    source_id: Option<String>,
    group: Option<String>,
    consumer: Option<String>,
    deliveries: Option<u64>,
    reason: Option<String>,
    dead_lettered_at_ms: Option<u64>,
    age_ms: u64,
    /// Number of original fields (all fields for a non-dead-letter entry).
    field_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<Vec<[JsonBytes; 2]>>,
}

/// Runs a `dlq` subcommand.
pub(crate) async fn run(redis: &mut Redis, json: bool, command: DlqCommand) -> Result<()> {
    match command {
        DlqCommand::List { target, limit } => list(redis, json, &target, limit).await,
        DlqCommand::Show { target, id } => show(redis, json, &target, id).await,
        DlqCommand::Replay {
            target,
            select,
            dry_run,
        } => replay(redis, json, &target, &select, dry_run).await,
        DlqCommand::Purge {
            target,
            select,
            yes,
            dry_run,
        } => purge(redis, json, &target, &select, yes, dry_run).await,
    }
}

/// Refuses a dead-letter stream given where its source stream was meant (`dlq list orders:dlq`).
async fn refuse_a_dead_letter_stream(redis: &mut Redis, target: &DlqTarget) -> Result<()> {
    let looks = is_dead_letter_stream(redis.conn(), &target.stream)
        .await
        .map_err(|e| redis.error(&e))?;
    if looks != Some(true) {
        return Ok(());
    }
    let hint = match target.stream.strip_suffix(":dlq") {
        Some(source) => format!("`millrace dlq list {source}`"),
        None => format!("the source stream with `--dlq {}`", target.stream),
    };
    Err(CliError::runtime(format!(
        "`{}` is itself a dead-letter stream (its entries are millrace dead letters); give its \
         source stream instead: {hint}",
        target.stream
    )))
}

/// True when the dead-letter stream exists; `false` when it does not but the source stream does
/// (no dead letters yet); an error when neither exists or a key has the wrong type.
async fn open(redis: &mut Redis, target: &DlqTarget) -> Result<bool> {
    let dlq = target.dlq_key();
    match redis.stream_state(&dlq).await? {
        KeyState::Stream => Ok(true),
        KeyState::Other(t) => Err(wrong_type(&dlq, &t)),
        KeyState::Missing => match redis.stream_state(&target.stream).await? {
            KeyState::Stream => Ok(false),
            KeyState::Other(t) => Err(wrong_type(&target.stream, &t)),
            KeyState::Missing => Err(CliError::runtime(format!(
                "no such stream `{}` (and no dead-letter stream `{dlq}`); list the streams with \
                 `millrace streams`, or name the dead-letter stream with --dlq",
                target.stream
            ))),
        },
    }
}

fn not_found(target: &DlqTarget, ids: &[EntryId]) -> CliError {
    let ids: Vec<String> = ids.iter().map(|i| format!("`{i}`")).collect();
    CliError::runtime(format!(
        "no dead letter {} in `{}`; list them with `millrace dlq list {}`",
        ids.join(", "),
        target.dlq_key(),
        target.stream
    ))
}

/// The dead letters a replay or purge acts on (none when the dead-letter stream does not exist),
/// failing when a named id is missing.
async fn select(redis: &mut Redis, target: &DlqTarget, sel: &DlqSelect) -> Result<Selected> {
    if !open(redis, target).await? {
        return Ok(Selected::default());
    }
    let mut selection = if sel.ids.is_empty() {
        Selection::all()
    } else {
        Selection::ids(sel.ids.iter().copied())
    };
    if let Some(text) = &sel.filter_reason {
        selection = selection.reason_contains(text.clone());
    }
    let selected = target
        .dead_letters()
        .select(redis.conn(), &selection)
        .await
        .map_err(|e| redis.error(&e))?;
    if !selected.missing.is_empty() {
        return Err(not_found(target, &selected.missing));
    }
    Ok(selected)
}

async fn list(redis: &mut Redis, json: bool, target: &DlqTarget, limit: u64) -> Result<()> {
    let dlq = target.dlq_key();
    let now = render::now_ms();
    let listing = if open(redis, target).await? {
        let max = usize::try_from(limit).unwrap_or(usize::MAX);
        target
            .dead_letters()
            .list(redis.conn(), max)
            .await
            .map_err(|e| redis.error(&e))?
    } else {
        refuse_a_dead_letter_stream(redis, target).await?;
        Default::default()
    };
    let (letters, others) = (listing.letters, listing.other_sources);
    if others == 0 && !letters.is_empty() && letters.iter().all(|l| l.dead_letter.is_none()) {
        return Err(CliError::runtime(format!(
            "`{dlq}` is not a dead-letter stream: none of its oldest {} starts with the millrace.* \
             fields; name the dead-letter stream with --dlq, or see its entries with \
             `millrace tail`",
            letters_of(letters.len(), "entry", "entries")
        )));
    }
    if json {
        let rows: Vec<LetterJson> = letters.iter().map(|l| letter_json(l, now, false)).collect();
        return render::json(&rows);
    }
    if letters.is_empty() {
        render::out(&format!(
            "no dead letters for `{}` in `{dlq}`",
            target.stream
        ))?;
    } else {
        let mut table = Table::new(&[
            ("ID", Align::Left),
            ("SOURCE-ID", Align::Left),
            ("GROUP", Align::Left),
            ("DELIVERIES", Align::Right),
            ("AGE", Align::Right),
            ("REASON", Align::Left),
        ]);
        for l in &letters {
            let d = l.dead_letter.as_ref();
            table.row(vec![
                l.entry.id.to_string(),
                opt(d.and_then(|d| d.source_id)),
                d.map_or_else(|| "?".to_owned(), |d| escape(d.group.as_bytes())),
                opt(d.and_then(|d| d.deliveries)),
                render::millis(age_ms(l, now)),
                d.map_or_else(
                    || "(not a millrace dead letter)".to_owned(),
                    |d| truncate(&escape(d.reason.as_bytes()), REASON_WIDTH),
                ),
            ]);
        }
        render::out(&table.render())?;
    }
    if listing.truncated {
        render::note(&format!(
            "(showing the oldest {}; raise --limit to see more)",
            letters.len()
        ));
    }
    if others > 0 {
        render::note(&format!(
            "({} of `{dlq}` belong to other streams and are not shown)",
            letters_of(others, "entry", "entries")
        ));
    }
    Ok(())
}

async fn show(redis: &mut Redis, json: bool, target: &DlqTarget, id: EntryId) -> Result<()> {
    let dlq = target.dlq_key();
    let letter = if open(redis, target).await? {
        target
            .dead_letters()
            .get(redis.conn(), id)
            .await
            .map_err(|e| redis.error(&e))?
    } else {
        None
    };
    let Some(letter) = letter else {
        return Err(not_found(target, &[id]));
    };
    let now = render::now_ms();
    if json {
        return render::json(&letter_json(&letter, now, true));
    }
    let mut text = String::new();
    let field_lines = |fields: &[(Vec<u8>, Vec<u8>)], text: &mut String| {
        for (k, v) in fields {
            text.push_str(&format!("  {} = {}\n", render::token(k), render::token(v)));
        }
    };
    match &letter.dead_letter {
        None => {
            text.push_str(&format!(
                "entry {id} of `{dlq}` is not a millrace dead letter (it does not start with the \
                 millrace.* fields); its {} fields:\n",
                letter.entry.fields.len()
            ));
            field_lines(&letter.entry.fields, &mut text);
        }
        Some(d) => {
            let when = d.dead_lettered_at_ms.map_or_else(
                || "?".to_owned(),
                |ms| {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
                    format!(
                        "{} ({} ago)",
                        humantime::format_rfc3339_seconds(at),
                        render::millis(now.saturating_sub(ms))
                    )
                },
            );
            let rows = [
                ("dead letter", format!("{id} in `{dlq}`")),
                ("source stream", escape(d.source_stream.as_bytes())),
                ("source id", opt(d.source_id)),
                ("group", escape(d.group.as_bytes())),
                ("consumer", escape(d.consumer.as_bytes())),
                ("deliveries", opt(d.deliveries)),
                ("dead-lettered", when),
                ("reason", escape(d.reason.as_bytes())),
            ];
            for (name, value) in rows {
                text.push_str(&format!("{name:<14} {value}\n"));
            }
            text.push_str(&format!("fields ({}):\n", d.fields.len()));
            field_lines(&d.fields, &mut text);
        }
    }
    render::out(&text)
}

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

async fn replay(
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

#[derive(Debug, Serialize)]
struct PurgeReport {
    stream: JsonBytes,
    dlq: JsonBytes,
    dry_run: bool,
    /// Ids deleted (or that would be, in a dry run).
    ids: Vec<String>,
    deleted: u64,
}

async fn purge(
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

fn n_letters(n: usize) -> String {
    letters_of(n, "dead letter", "dead letters")
}

fn letters_of(n: usize, one: &str, many: &str) -> String {
    render::count(u64::try_from(n).unwrap_or(u64::MAX), one, many)
}

/// Asks on the terminal whether to `action`; refuses (exit 3) without a terminal, or when the
/// answer is not yes.
fn confirm(action: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(CliError::refused(format!(
            "will not {action} without confirmation, and stdin is not a terminal to ask on; \
             re-run with --yes (or --dry-run to see what would go)"
        )));
    }
    let mut stderr = std::io::stderr().lock();
    write!(stderr, "{action}? [y/N] ")?;
    stderr.flush()?;
    drop(stderr);
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(CliError::refused("not confirmed; nothing was deleted"))
    }
}
