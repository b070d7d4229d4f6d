//! How a producer's adds go over the wire: `XADD` commands, cut into pipelines that stay correct
//! on a cluster during a live slot migration.
//!
//! redis-rs sends a cluster pipeline to the master of its first key and, when any command of it
//! is answered with `ASK` or `MOVED`, sends the *whole* pipeline again to the node named (after
//! `ASKING`). A pipeline of adds to several streams of one slot, sent while that slot moves key by
//! key, would then add the streams that have not moved yet to the target too, where they become a
//! second copy that the migration can no longer move (`BUSYKEY`) and that replaces the original
//! once the slot is handed over. So on a cluster a pipeline holds one stream's entries only, and
//! is wrapped in `MULTI`/`EXEC`: a queued command answered with a redirect aborts the block
//! (`EXECABORT`), an `EXEC` answered with one discards it, so a pipeline sent again was never
//! applied before; and `ASKING` holds for a whole `MULTI` block, so the target takes it whole.
//!
//! Each cluster pipeline also starts with its own `ASKING`. redis-rs sends its `ASKING` before a
//! redirected pipeline as a separate request on the node's shared connection, so when several
//! pipelines are redirected at once one of them can use up another's flag: that pipeline is then
//! answered `MOVED` back to the source, which answers `ASK` again, until redis-rs's retries run
//! out. An `ASKING` inside the pipeline is written with it, so it always precedes its `MULTI`.
//! Everywhere else `ASKING` changes nothing: only a master importing the slot reads it, and
//! redis-rs sends a pipeline there only after an `ASK` (the key is not on the source) or once the
//! slot is the target's.

use redis::Value;

use super::encode::Fields;
use super::trim::Trim;
use crate::connection::Control;
use crate::entry::EntryId;
use crate::error::{classify, redact, Error, Result};
use crate::trace::TraceFields;

/// Entries sent in one round trip.
#[derive(Debug)]
pub(super) struct Chunk {
    /// The stream, on a cluster (every item's); unused on one server.
    pub(super) stream: usize,
    /// (index in the call, stream index, fields), in the order given.
    items: Vec<(usize, usize, Fields)>,
    /// Wrapped in `MULTI`/`EXEC`.
    transaction: bool,
    /// On a cluster: starts with `ASKING`.
    cluster: bool,
}

impl Chunk {
    /// Puts the ids this chunk got at the indexes of its entries.
    pub(super) fn place(&self, added: Vec<EntryId>, ids: &mut [EntryId]) {
        for ((at, _, _), id) in self.items.iter().zip(added) {
            ids[*at] = id;
        }
    }
}

/// Cuts a call's entries into chunks: on one server up to `max` entries in the order given; on a
/// cluster per stream, up to `max` entries each, in the order given within the stream.
pub(super) fn plan(
    streams: &[String],
    order: &[usize],
    fields: Vec<Fields>,
    max: usize,
    cluster: bool,
) -> Vec<Chunk> {
    let mut chunks: Vec<Chunk> = Vec::new();
    if !cluster {
        for (at, (stream, fields)) in order.iter().zip(fields).enumerate() {
            match chunks.last_mut() {
                Some(chunk) if chunk.items.len() < max => chunk.items.push((at, *stream, fields)),
                _ => chunks.push(Chunk {
                    stream: 0,
                    items: vec![(at, *stream, fields)],
                    transaction: false,
                    cluster: false,
                }),
            }
        }
        return chunks;
    }
    // The open chunk of each stream, by stream index.
    let mut open: Vec<Option<usize>> = vec![None; streams.len()];
    for (at, (stream, fields)) in order.iter().zip(fields).enumerate() {
        match open[*stream] {
            Some(c) if chunks[c].items.len() < max => chunks[c].items.push((at, *stream, fields)),
            _ => {
                open[*stream] = Some(chunks.len());
                chunks.push(Chunk {
                    stream: *stream,
                    items: vec![(at, *stream, fields)],
                    transaction: true,
                    cluster: true,
                });
            }
        }
    }
    for chunk in &mut chunks {
        chunk.transaction = chunk.items.len() > 1;
    }
    chunks
}

/// `XADD stream [trim] * fields… [traceparent … tracestate …]`; the trace fields are left out
/// when the entry has its own `traceparent`.
pub(super) fn xadd(
    stream: &str,
    fields: &Fields,
    trim: Option<&Trim>,
    trace: Option<&TraceFields>,
) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream);
    if let Some(trim) = trim {
        trim.write(&mut cmd);
    }
    cmd.arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    if let Some(trace) = trace {
        if !fields.iter().any(|(k, _)| crate::trace::is_trace_field(k)) {
            trace.write(&mut cmd);
        }
    }
    cmd
}

/// Sends one chunk; returns its ids in order.
pub(super) async fn run(
    control: &mut Control,
    streams: &[String],
    chunk: &Chunk,
    trim: Option<&Trim>,
    trace: Option<&TraceFields>,
) -> Result<Vec<EntryId>> {
    let total = chunk.items.len();
    if let ([(_, stream, fields)], false) = (chunk.items.as_slice(), chunk.cluster) {
        let name = &streams[*stream];
        let value: Value = xadd(name, fields, trim, trace)
            .query_async(control)
            .await
            .map_err(|e| failed(name, e, 0, 1))?;
        return Ok(vec![parse_id(name, value)?]);
    }
    let mut pipe = redis::pipe();
    // Replies before the first `XADD`'s.
    let mut before = 0;
    if chunk.cluster {
        pipe.cmd("ASKING");
        before += 1;
    }
    if chunk.transaction {
        pipe.cmd("MULTI");
        before += 1;
    }
    for (_, stream, fields) in &chunk.items {
        pipe.add_command(xadd(&streams[*stream], fields, trim, trace));
    }
    if chunk.transaction {
        pipe.cmd("EXEC");
    }
    // The stream of the pipeline's `i`-th command.
    let stream_at = |i: usize| -> &str {
        let i = i.saturating_sub(before);
        let (_, stream, _) = &chunk.items[i.min(total - 1)];
        &streams[*stream]
    };
    let values: Vec<Value> = match pipe.query_async(control).await {
        Ok(values) => values,
        Err(e) => {
            let (stream, added) = match e.clone().into_server_errors() {
                Some(errors) if !chunk.transaction && !errors.is_empty() => {
                    (stream_at(errors[0].0), total - errors.len())
                }
                _ => (stream_at(0), 0),
            };
            return Err(failed(stream, e, added, total));
        }
    };
    let ids = if chunk.transaction {
        match values.into_iter().last() {
            Some(Value::Array(ids)) => ids,
            other => {
                return Err(failed(
                    stream_at(0),
                    unexpected(format!("EXEC answered {other:?}")),
                    0,
                    total,
                ))
            }
        }
    } else {
        values.into_iter().skip(before).collect()
    };
    ids.into_iter()
        .enumerate()
        .map(|(i, v)| parse_id(stream_at(i + before), v))
        .collect()
}

pub(super) fn unexpected(what: String) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply to XADD",
        what,
    ))
}

/// The id in an `XADD` reply.
pub(super) fn parse_id(stream: &str, value: Value) -> Result<EntryId> {
    let id = match &value {
        Value::BulkString(b) => EntryId::from_bytes(b),
        Value::SimpleString(s) => EntryId::from_bytes(s.as_bytes()),
        Value::VerbatimString { text, .. } => EntryId::from_bytes(text.as_bytes()),
        _ => None,
    };
    match (id, value) {
        (Some(id), _) => Ok(id),
        (None, Value::ServerError(e)) => Err(failed(stream, e.into(), 0, 1)),
        (None, other) => Err(failed(
            stream,
            unexpected(format!("{other:?} instead of an entry id")),
            0,
            1,
        )),
    }
}

/// A failed add, naming the stream, how much of the round trip was added, and what to do.
pub(super) fn failed(stream: &str, err: redis::RedisError, added: usize, total: usize) -> Error {
    let share = if total > 1 {
        format!(" ({added} of the {total} entries sent with it were added)")
    } else {
        String::new()
    };
    let (reason, hint, retryable) = match classify(None, "XADD", stream, err) {
        Error::Transient { source, .. } => (
            redact(&source.to_string()),
            "retry the add once Redis answers again; when a reply was lost the entries may already be in the stream, and adding them again duplicates them".to_owned(),
            true,
        ),
        Error::Fatal { reason, hint, .. } => (reason, hint, false),
        other => (other.to_string(), "check the stream and the server".to_owned(), false),
    };
    Error::Produce {
        stream: stream.to_owned(),
        reason: format!("{reason}{share}"),
        hint,
        retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: u8) -> Fields {
        vec![(b"n".to_vec(), vec![n])]
    }

    #[test]
    fn a_cluster_pipeline_holds_one_stream_in_a_transaction() {
        let streams = vec!["a".to_owned(), "b".to_owned()];
        let order = [0, 1, 0, 0, 1, 0];
        let chunks = plan(&streams, &order, (0..6).map(f).collect(), 2, true);
        let shape: Vec<(usize, Vec<usize>, bool)> = chunks
            .iter()
            .map(|c| {
                assert!(c.items.iter().all(|(_, s, _)| *s == c.stream));
                (
                    c.stream,
                    c.items.iter().map(|i| i.0).collect(),
                    c.transaction,
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, vec![0, 2], true),
                (1, vec![1, 4], true),
                (0, vec![3, 5], true)
            ]
        );
        let lone = plan(&streams, &[1], vec![f(0)], 10, true);
        assert!(!lone[0].transaction, "one entry is one command");
        assert!(lone[0].cluster, "after its own ASKING");
    }

    #[test]
    fn one_server_pipelines_in_the_order_given() {
        let streams = vec!["a".to_owned(), "b".to_owned()];
        let chunks = plan(&streams, &[0, 1, 0], (0..3).map(f).collect(), 2, false);
        assert_eq!(chunks.len(), 2);
        assert!(chunks.iter().all(|c| !c.transaction));
        assert_eq!(chunks[0].items.len(), 2);
    }
}
