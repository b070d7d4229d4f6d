//! Form (d) of the `streams` section: the straightforward hand-written multi-stream loop the
//! targets compare with. One `XREADGROUP GROUP g c COUNT 5 STREAMS s1 … sN > … >` over every
//! stream, the reply walked entry by entry (fields kept, as a no-op handler sees them), then one
//! pipeline of one `XACK` per stream that had entries; until every entry is acknowledged.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis::Value;

use super::child::{Batches, ChildArgs};
use crate::workload::Progress;
use crate::Res;

/// COUNT per stream of the hand loop's read (what a straightforward loop over 1,000 streams
/// picks to keep one reply near 5,000 entries).
pub(crate) const HAND_COUNT: usize = 5;

/// Creates the group on every stream (at `0`) and drains them.
pub(super) async fn drain(
    client: &redis::Client,
    args: &ChildArgs,
    progress: &Arc<Progress>,
    batches: &Arc<Batches>,
) -> Res<()> {
    let mut conn = crate::workload::connect(client).await?;
    let names = super::stream_names(args.streams);
    let mut create = redis::pipe();
    for name in &names {
        create
            .cmd("XGROUP")
            .arg("CREATE")
            .arg(name)
            .arg(&args.group)
            .arg("0")
            .ignore();
    }
    create.query_async::<()>(&mut conn).await?;
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(&args.group)
        .arg("c0")
        .arg("COUNT")
        .arg(HAND_COUNT)
        .arg("STREAMS")
        .arg(&names);
    for _ in &names {
        read.arg(">");
    }
    while !progress.is_done() {
        let reply: Value = read.query_async(&mut conn).await?;
        let parts = per_stream(reply)?;
        if parts.is_empty() {
            continue;
        }
        batches.first.get_or_init(std::time::Instant::now);
        let mut acks = redis::pipe();
        let mut handled = 0;
        for (stream, ids) in parts {
            batches.count.fetch_add(1, Ordering::Relaxed);
            handled += ids.len();
            acks.cmd("XACK")
                .arg(stream)
                .arg(&args.group)
                .arg(ids)
                .ignore();
        }
        acks.query_async::<()>(&mut conn).await?;
        progress.add(handled);
    }
    Ok(())
}

/// A stream's name and the ids of its entries in one reply.
type Part = (Vec<u8>, Vec<Vec<u8>>);

/// Each stream's name and entry ids in a reply (RESP2 array or RESP3 map; nil when nothing).
fn per_stream(reply: Value) -> Res<Vec<Part>> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m,
        Value::Array(a) => a
            .into_iter()
            .map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let entries = pair.pop().unwrap_or(Value::Nil);
                    let name = pair.pop().unwrap_or(Value::Nil);
                    Ok((name, entries))
                }
                other => Err(format!("unexpected stream element {other:?}")),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(format!("unexpected XREADGROUP reply {other:?}").into()),
    };
    let mut parts = Vec::with_capacity(streams.len());
    for (name, entries) in streams {
        let (Value::BulkString(name), Value::Array(entries)) = (name, entries) else {
            return Err("stream name or entries of an unexpected type".into());
        };
        let mut ids = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                return Err("entry is not an array".into());
            };
            let fields = parts.pop();
            let Some(Value::BulkString(id)) = parts.pop() else {
                return Err("entry id is not a bulk string".into());
            };
            std::hint::black_box(&fields);
            ids.push(id);
        }
        if !ids.is_empty() {
            parts.push((name, ids));
        }
    }
    Ok(parts)
}
