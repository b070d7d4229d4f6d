//! `millrace dlq list|show|replay|purge STREAM`: dead letters in `STREAM:dlq` (or `--dlq KEY`).
//!
//! A dead letter is an entry that starts with millrace's seven `millrace.*` metadata fields and
//! then holds the original fields ([`millrace::dead_letter`]). `list`, `replay` and `purge` (without
//! `--id`) act on the dead letters whose recorded source stream is STREAM, so a dead-letter stream
//! shared by several streams stays safe; entries of other streams are counted and left alone.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::LazyLock;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use millrace::dead_letter::DeadLetter;
use millrace::streams::reply::{parse_entries, ReadItem};
use millrace::{EntryId, RawEntry};
use redis::Value;
use serde::Serialize;

use crate::cli::{DlqCommand, DlqSelect, DlqTarget};
use crate::connect::{no_such_stream, wrong_type, KeyState, Redis};
use crate::error::{CliError, Result};
use crate::render::{self, escape, json_fields, opt, truncate, Align, JsonBytes, Table};

/// Entries per XRANGE page and per XDEL call.
const PAGE: usize = 500;
/// Replays of at least this many entries show a progress bar (on a terminal).
const PROGRESS_FROM: usize = 50;
/// Characters of the reason shown by `list`.
const REASON_WIDTH: usize = 60;

/// Moves one dead letter back: if it is still in the dead-letter stream, XADD the original fields
/// to the source stream, then XDEL it. Returns the new id, or nil when the dead letter was gone.
/// A failing XADD (wrong type, OOM) raises before the XDEL, so nothing changes.
static REPLAY_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
",
    )
});

/// Dead letters with more original fields than this are replayed in steps: Lua's `unpack` stops
/// near 8,000 values, so the script cannot pass a larger entry to `XADD`.
const SCRIPT_FIELD_LIMIT: usize = 1_000;

/// Replays a dead letter too large for the script: if it is still in the dead-letter stream, XADD
/// its fields to the source stream, then XDEL it. Not atomic: a crash between the two leaves it in
/// both streams (replayed twice if replayed again), never in neither.
async fn replay_in_steps(
    conn: &mut redis::aio::MultiplexedConnection,
    dlq: &str,
    stream: &str,
    dlq_id: EntryId,
    fields: &[(Vec<u8>, Vec<u8>)],
) -> redis::RedisResult<Option<String>> {
    let still: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(dlq)
        .arg(dlq_id)
        .arg(dlq_id)
        .query_async(conn)
        .await?;
    if still.is_empty() {
        return Ok(None);
    }
    let mut xadd = redis::cmd("XADD");
    xadd.arg(stream).arg("*");
    for (k, v) in fields {
        xadd.arg(k.as_slice()).arg(v.as_slice());
    }
    let id: String = xadd.query_async(conn).await?;
    let _: i64 = redis::cmd("XDEL")
        .arg(dlq)
        .arg(dlq_id)
        .query_async(conn)
        .await?;
    Ok(Some(id))
}

/// One entry of the dead-letter stream.
#[derive(Debug, Clone)]
struct Letter {
    entry: RawEntry,
    /// `None` when the entry is not a millrace dead letter.
    dead: Option<DeadLetter>,
}

impl Letter {
    fn from_entry(entry: RawEntry) -> Letter {
        let dead = DeadLetter::parse(&entry);
        Letter { entry, dead }
    }

    fn belongs_to(&self, stream: &str) -> bool {
        self.dead
            .as_ref()
            .is_some_and(|d| d.source_stream == stream)
    }

    fn reason_contains(&self, text: &str) -> bool {
        self.dead.as_ref().is_some_and(|d| d.reason.contains(text))
    }

    fn age_ms(&self, now: u64) -> u64 {
        let at = self
            .dead
            .as_ref()
            .and_then(|d| d.dead_lettered_at_ms)
            .unwrap_or(self.entry.id.ms);
        now.saturating_sub(at)
    }

    fn json(&self, now: u64, with_fields: bool) -> LetterJson {
        let d = self.dead.as_ref();
        let fields: &[(Vec<u8>, Vec<u8>)] = match d {
            Some(d) => &d.fields,
            None => &self.entry.fields,
        };
        LetterJson {
            id: self.entry.id.to_string(),
            dead_letter: d.is_some(),
            source_stream: d.map(|d| d.source_stream.clone()),
            source_id: d.and_then(|d| d.source_id).map(|i| i.to_string()),
            group: d.map(|d| d.group.clone()),
            consumer: d.map(|d| d.consumer.clone()),
            deliveries: d.and_then(|d| d.deliveries),
            reason: d.map(|d| d.reason.clone()),
            dead_lettered_at_ms: d.and_then(|d| d.dead_lettered_at_ms),
            age_ms: self.age_ms(now),
            field_count: fields.len(),
            fields: with_fields.then(|| json_fields(fields)),
        }
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

/// Pages through the dead-letter stream oldest first, keeping the letters `keep` accepts, up to
/// `limit`. Returns them and how many entries were passed over.
async fn scan(
    redis: &mut Redis,
    dlq: &str,
    limit: Option<usize>,
    mut keep: impl FnMut(&Letter) -> bool,
) -> Result<(Vec<Letter>, usize)> {
    let mut kept = Vec::new();
    let mut passed = 0;
    let mut start = "-".to_owned();
    loop {
        let reply: Value = redis
            .query(
                redis::cmd("XRANGE")
                    .arg(dlq)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(PAGE),
            )
            .await?;
        let items = parse_entries(reply);
        let n = items.len();
        for item in items {
            if let Some(id) = item.id() {
                start = format!("({id}");
            }
            match item {
                ReadItem::Entry(e) => {
                    let letter = Letter::from_entry(e);
                    if keep(&letter) {
                        kept.push(letter);
                        if limit.is_some_and(|l| kept.len() >= l) {
                            return Ok((kept, passed));
                        }
                    } else {
                        passed += 1;
                    }
                }
                ReadItem::Tombstone(_) | ReadItem::Malformed { .. } => passed += 1,
            }
        }
        if n < PAGE {
            return Ok((kept, passed));
        }
    }
}

/// One entry by id.
async fn fetch(redis: &mut Redis, dlq: &str, id: EntryId) -> Result<Option<Letter>> {
    let reply: Value = redis
        .query(redis::cmd("XRANGE").arg(dlq).arg(id).arg(id))
        .await?;
    Ok(parse_entries(reply)
        .into_iter()
        .find_map(|item| match item {
            ReadItem::Entry(e) if e.id == id => Some(Letter::from_entry(e)),
            _ => None,
        }))
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

/// The dead letters a replay or purge acts on, and how many entries were left out because they
/// belong to another stream or are not dead letters.
async fn select(
    redis: &mut Redis,
    target: &DlqTarget,
    select: &DlqSelect,
) -> Result<(Vec<Letter>, usize)> {
    let dlq = target.dlq_key();
    let reason_ok = |l: &Letter| {
        select
            .filter_reason
            .as_deref()
            .is_none_or(|text| l.reason_contains(text))
    };
    if select.ids.is_empty() {
        let mut others = 0;
        let (letters, _) = scan(redis, &dlq, None, |l| {
            if !l.belongs_to(&target.stream) {
                others += 1;
                return false;
            }
            reason_ok(l)
        })
        .await?;
        return Ok((letters, others));
    }
    let mut letters = Vec::new();
    let mut missing = Vec::new();
    let mut ids = select.ids.clone();
    ids.sort();
    ids.dedup();
    for id in ids {
        match fetch(redis, &dlq, id).await? {
            Some(l) => letters.push(l),
            None => missing.push(id),
        }
    }
    if !missing.is_empty() {
        return Err(not_found(target, &missing));
    }
    letters.retain(|l| reason_ok(l));
    Ok((letters, 0))
}

async fn list(redis: &mut Redis, json: bool, target: &DlqTarget, limit: u64) -> Result<()> {
    let dlq = target.dlq_key();
    let now = render::now_ms();
    let (letters, others) = if open(redis, target).await? {
        let max = usize::try_from(limit).unwrap_or(usize::MAX);
        // Entries that are not dead letters at all are shown too: they need attention.
        scan(redis, &dlq, Some(max), |l| {
            l.belongs_to(&target.stream) || l.dead.is_none()
        })
        .await?
    } else {
        (Vec::new(), 0)
    };
    if json {
        let rows: Vec<LetterJson> = letters.iter().map(|l| l.json(now, false)).collect();
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
            let d = l.dead.as_ref();
            table.row(vec![
                l.entry.id.to_string(),
                opt(d.and_then(|d| d.source_id)),
                d.map_or_else(|| "?".to_owned(), |d| escape(d.group.as_bytes())),
                opt(d.and_then(|d| d.deliveries)),
                render::millis(l.age_ms(now)),
                d.map_or_else(
                    || "(not a millrace dead letter)".to_owned(),
                    |d| truncate(&escape(d.reason.as_bytes()), REASON_WIDTH),
                ),
            ]);
        }
        render::out(&table.render())?;
    }
    if u64::try_from(letters.len()).is_ok_and(|n| n >= limit) {
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
        fetch(redis, &dlq, id).await?
    } else {
        None
    };
    let Some(letter) = letter else {
        return Err(not_found(target, &[id]));
    };
    let now = render::now_ms();
    if json {
        return render::json(&letter.json(now, true));
    }
    let mut text = String::new();
    let field_lines = |fields: &[(Vec<u8>, Vec<u8>)], text: &mut String| {
        for (k, v) in fields {
            text.push_str(&format!("  {} = {}\n", render::token(k), render::token(v)));
        }
    };
    match &letter.dead {
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
    stream: String,
    dlq: String,
    dry_run: bool,
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
    let stream = target.stream.as_str();
    let dlq = target.dlq_key();
    let exists = open(redis, target).await?;
    match redis.stream_state(stream).await? {
        KeyState::Stream => {}
        KeyState::Other(t) => return Err(wrong_type(stream, &t)),
        KeyState::Missing => {
            return Err(CliError::runtime(format!(
                "{}: replaying would create it without consumer groups; create it and its groups \
                 first (XGROUP CREATE {stream} <group> 0 MKSTREAM)",
                no_such_stream(stream)
            )))
        }
    }
    let (letters, others) = if exists {
        select(redis, target, sel).await?
    } else {
        (Vec::new(), 0)
    };
    let mut report = ReplayReport {
        stream: stream.to_owned(),
        dlq: dlq.clone(),
        dry_run,
        replayed: Vec::new(),
        skipped: Vec::new(),
    };
    let mut plan = Vec::new();
    for l in letters {
        let why = match &l.dead {
            None => Some("not a millrace dead letter".to_owned()),
            Some(d) if d.source_stream != stream => Some(format!(
                "came from stream `{}`, not `{stream}`",
                d.source_stream
            )),
            Some(d) if d.fields.is_empty() => Some(
                "has no original fields (it was unreadable when it was dead-lettered); inspect it \
                 with `dlq show` and purge it"
                    .to_owned(),
            ),
            Some(_) => None,
        };
        match why {
            Some(why) => report.skipped.push(Skipped {
                dlq_id: l.entry.id.to_string(),
                why,
            }),
            None => plan.push(l),
        }
    }
    let progress = progress_bar(plan.len());
    let mut failure = None;
    for l in &plan {
        let Some(d) = &l.dead else { continue };
        let mut new_id = None;
        if !dry_run {
            let outcome = if d.fields.len() > SCRIPT_FIELD_LIMIT {
                replay_in_steps(redis.conn(), &dlq, stream, l.entry.id, &d.fields).await
            } else {
                let mut inv = REPLAY_SCRIPT.key(&dlq);
                inv.key(stream).arg(l.entry.id);
                for (k, v) in &d.fields {
                    inv.arg(k.as_slice()).arg(v.as_slice());
                }
                inv.invoke_async::<Option<String>>(redis.conn()).await
            };
            match outcome {
                Ok(Some(id)) => new_id = Some(id),
                Ok(None) => {
                    report.skipped.push(Skipped {
                        dlq_id: l.entry.id.to_string(),
                        why: "no longer in the dead-letter stream (replayed or purged meanwhile)"
                            .into(),
                    });
                    progress.inc(1);
                    continue;
                }
                Err(e) => {
                    failure = Some(CliError::runtime(format!(
                        "replaying dead letter {} failed after {} replayed: {}",
                        l.entry.id,
                        report.replayed.len(),
                        redis.error(&e)
                    )));
                    break;
                }
            }
        }
        report.replayed.push(Replayed {
            dlq_id: l.entry.id.to_string(),
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
        print_replay(&report, others)?;
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
            report.dlq,
            report.stream
        )
    } else {
        format!(
            "replayed {} from `{}` to `{}`",
            n_letters(n),
            report.dlq,
            report.stream
        )
    });
    if others > 0 {
        text.push_str(&format!(
            "\n({} of `{}` belong to other streams and were left alone)",
            letters_of(others, "entry", "entries"),
            report.dlq
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
    stream: String,
    dlq: String,
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
    let (letters, others) = if open(redis, target).await? {
        select(redis, target, sel).await?
    } else {
        (Vec::new(), 0)
    };
    let ids: Vec<EntryId> = letters.iter().map(|l| l.entry.id).collect();
    let mut report = PurgeReport {
        stream: target.stream.clone(),
        dlq: dlq.clone(),
        dry_run,
        ids: ids.iter().map(ToString::to_string).collect(),
        deleted: 0,
    };
    let n = ids.len();
    if n > 0 && !dry_run && !yes {
        confirm(&format!("delete {} from `{dlq}` for good", n_letters(n)))?;
    }
    if !dry_run {
        for chunk in ids.chunks(PAGE) {
            let deleted: u64 = redis.query(redis::cmd("XDEL").arg(&dlq).arg(chunk)).await?;
            report.deleted += deleted;
        }
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
