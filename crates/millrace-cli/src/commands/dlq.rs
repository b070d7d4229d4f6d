//! `millrace dlq list|show|replay|purge STREAM`: dead letters in `STREAM:dlq` (or `--dlq KEY`).
//!
//! A dead letter is an entry that starts with millrace's seven `millrace.*` metadata fields and
//! then holds the original fields ([`millrace::dead_letter`]). `list`, `replay` and `purge` (without
//! `--id`) act on the dead letters whose recorded source stream is STREAM, so a dead-letter stream
//! shared by several streams stays safe; entries of other streams are counted and left alone.
//!
//! Here what every subcommand shares (the target checked, the dead letters selected, the
//! confirmation); reading in `read`, `replay` and `purge` in theirs.

use std::io::{BufRead, IsTerminal, Write};

use millrace::dead_letter::{is_dead_letter_stream, Selected, Selection};
use millrace::EntryId;

use crate::cli::{DlqCommand, DlqSelect, DlqTarget};
use crate::connect::{wrong_type, KeyState, Redis};
use crate::error::{CliError, Result};
use crate::render;

/// Characters of a reason shown in a table (`list`, `replay`).
const REASON_WIDTH: usize = 60;

mod purge;
mod read;
mod replay;

use purge::purge;
use read::{list, show};
use replay::replay;

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
