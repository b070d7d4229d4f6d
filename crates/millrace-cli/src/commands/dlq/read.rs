//! `dlq list` and `dlq show`: dead letters read, as a table or JSON.

use millrace::dead_letter::Letter;
use millrace::EntryId;
use serde::Serialize;

use super::{letters_of, not_found, open, refuse_a_dead_letter_stream, REASON_WIDTH};
use crate::cli::DlqTarget;
use crate::connect::Redis;
use crate::error::{CliError, Result};
use crate::render::{self, escape, json_fields, opt, truncate, Align, JsonBytes, Table};

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

pub(super) async fn list(
    redis: &mut Redis,
    json: bool,
    target: &DlqTarget,
    limit: u64,
) -> Result<()> {
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

pub(super) async fn show(
    redis: &mut Redis,
    json: bool,
    target: &DlqTarget,
    id: EntryId,
) -> Result<()> {
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
