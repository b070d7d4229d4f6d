//! `millrace tail STREAM`: follow new entries like `tail -f`.
//!
//! Without a group it reads with `XREAD BLOCK`, starting after the stream's last id at start-up (what
//! `$` means) and then after the last id it saw, so no entry added between two reads is missed. With `--group G --consumer C` it reads with
//! `XREADGROUP ... >` as that consumer; entries stay pending for it unless `--ack`.
//!
//! Ctrl-C ends it with exit code 130, the shell's convention for an interrupted command. It never
//! abandons a read in flight: the current `BLOCK` (at most [`BLOCK`]) is allowed to
//! finish and whatever it returned is printed, because an abandoned `XREADGROUP` would still put
//! entries into the consumer's pending list unseen.

use std::time::Duration;

use millrace::streams::ReadItem;
use millrace::{EntryId, RawEntry};
use serde::Serialize;

use crate::cli::TailArgs;
use crate::connect::{is_missing, KeyState, Redis};
use crate::error::{CliError, Result};
use crate::key::Key;
use crate::render::{self, json_fields, token, JsonBytes};

/// How long one read blocks.
const BLOCK: Duration = Duration::from_secs(1);
/// Entries per read.
const COUNT: usize = 100;

#[derive(Debug, Serialize)]
struct Line {
    id: String,
    fields: Vec<[JsonBytes; 2]>,
}

/// Follows the stream until Ctrl-C (exit 130) or `--count` entries.
pub(crate) async fn run(redis: &mut Redis, json: bool, args: &TailArgs) -> Result<()> {
    let stream = &args.stream;
    // Resolve `$` once: re-sending `$` after an empty read would skip entries added in between.
    let mut last = match redis.stream_state(stream).await? {
        KeyState::Stream => crate::info::stream(redis, stream.as_bytes())
            .await?
            .and_then(|s| s.last_generated_id)
            .unwrap_or(EntryId::MIN)
            .to_string(),
        KeyState::Missing if args.group.is_none() => {
            render::note(&format!(
                "stream `{stream}` does not exist yet; waiting for its first entry"
            ));
            EntryId::MIN.to_string()
        }
        KeyState::Missing => return Err(crate::connect::no_such_stream(stream)),
        KeyState::Other(t) => return Err(crate::connect::wrong_type(stream, &t)),
    };
    let mut conn = redis.blocking_connection(BLOCK).await?;
    let mut printed: u64 = 0;
    let mut stop = Box::pin(tokio::signal::ctrl_c());
    let mut stopping = false;
    loop {
        let want = args.count.map_or(COUNT, |n| {
            usize::try_from(n - printed).unwrap_or(COUNT).min(COUNT)
        });
        let cmd = match (&args.group, &args.consumer) {
            (Some(g), Some(c)) => {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(g)
                    .arg(c)
                    .arg("COUNT")
                    .arg(want)
                    .arg("BLOCK")
                    .arg(render::ms(BLOCK))
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(">");
                cmd
            }
            _ => {
                let mut cmd = redis::cmd("XREAD");
                cmd.arg("COUNT")
                    .arg(want)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis().max(1) as u64)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(&last);
                cmd
            }
        };
        let items = {
            let read = millrace::streams::read(&mut conn, &cmd);
            tokio::pin!(read);
            loop {
                tokio::select! {
                    r = &mut read => break r,
                    _ = &mut stop, if !stopping => stopping = true,
                }
            }
        };
        let items = match items {
            Ok(items) => items,
            // On a cluster `UNBLOCKED` means the owner changed (a failover turned the master into
            // a replica, or the slot moved): read again, and the cluster connection follows the
            // `MOVED` to the new master. Nothing is skipped: `XREAD` goes on from the last id.
            Err(e) if redis.is_cluster() && e.code() == Some("UNBLOCKED") => {
                if stopping {
                    return Err(CliError::interrupted());
                }
                continue;
            }
            Err(e) if is_missing(&e) || e.code() == Some("UNBLOCKED") => {
                let group = args.group.clone().unwrap_or_else(|| Key::from(&b""[..]));
                return Err(explain(redis, stream, &group, &e).await);
            }
            Err(e) => return Err(redis.error(&e)),
        };
        let mut acks = Vec::new();
        for item in items {
            if let Some(id) = item.id() {
                last = id.to_string();
            }
            match item {
                ReadItem::Entry(e) => {
                    print_entry(&e, json)?;
                    acks.push(e.id);
                    printed += 1;
                }
                ReadItem::Tombstone(id) => render::note(&format!("{id} (deleted)")),
                ReadItem::Malformed { id, reason } => render::note(&format!(
                    "{} (unreadable entry: {reason})",
                    id.map_or_else(|| "?".to_owned(), |i| i.to_string())
                )),
            }
        }
        if args.ack && !acks.is_empty() {
            ack(&mut conn, redis, args, &acks).await?;
        }
        if stopping {
            return Err(CliError::interrupted());
        }
        if args.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
    }
}

async fn ack(
    conn: &mut crate::connect::Connection,
    redis: &Redis,
    args: &TailArgs,
    ids: &[EntryId],
) -> Result<()> {
    if let Some(group) = &args.group {
        redis::cmd("XACK")
            .arg(&args.stream)
            .arg(group)
            .arg(ids)
            .query_async::<redis::Value>(conn)
            .await
            .map_err(|e| redis.error(&e))?;
    }
    Ok(())
}

async fn explain(redis: &mut Redis, stream: &Key, group: &Key, e: &redis::RedisError) -> CliError {
    if e.code() == Some("UNBLOCKED") {
        return CliError::runtime(format!("stream `{stream}` was deleted while tailing it"));
    }
    redis.explain_missing(stream, group).await
}

fn print_entry(e: &RawEntry, json: bool) -> Result<()> {
    if json {
        return render::json_line(&Line {
            id: e.id.to_string(),
            fields: json_fields(&e.fields),
        });
    }
    let mut line = e.id.to_string();
    for (k, v) in &e.fields {
        line.push(' ');
        line.push_str(&token(k));
        line.push('=');
        line.push_str(&token(v));
    }
    render::out(&line)
}
