//! The framer and parser checked against redis-rs on generated input.
//!
//! - **Differential**: generated `XREADGROUP` and `XAUTOCLAIM` replies (random entry counts,
//!   binary and empty field names and values, nil entries of deleted ids, nested arrays, integers,
//!   status and error replies anywhere, lengths declared larger than what follows), serialised to
//!   RESP2 and fed to [`FrameBuf`] in random chunks. A reply redis-rs's `parse_redis_value` accepts
//!   must frame to exactly its own bytes, [`parse_value`] must give the same `redis::Value`, and
//!   [`parse_read_reply`] the same items as redis-rs's value through the tolerant
//!   `streams::reply` parser (an error reply: the same server error). A reply redis-rs refuses
//!   must not frame: an error, or still waiting for bytes.
//! - **Split**: a multi-stream reply splits ([`split_read_reply`]) into its streams' names in
//!   order, and its parts parsed one by one ([`parse_stream_entries`]) give exactly the items of
//!   the whole reply; any reply the splitter accepts agrees with the whole-reply parser.
//! - **Corruption**: random bytes, and valid replies with bytes flipped, inserted or cut, never
//!   panic, never grow the buffer past twice what was fed, and end in a frame, an `InvalidData`
//!   error, or "need more bytes". A valid reply cut short always waits for more.
//!
//! Cases per property: `MILLRACE_PROPTEST_CASES` (default 1,000, a few seconds in a debug build).
//! A long run: `MILLRACE_PROPTEST_CASES=10000000 cargo test --release -p millrace --lib proptests`.

use std::io;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use redis::Value;

use super::{parse_read_reply, parse_stream_entries, parse_value, split_read_reply, FrameBuf};
use crate::streams::{reply, ReadItem};

fn config() -> Config {
    let cases = std::env::var("MILLRACE_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// A RESP2 value as generated; `Huge*` declare more than follows, so the reply is incomplete.
#[derive(Debug, Clone)]
enum Resp {
    Bulk(Vec<u8>),
    Simple(String),
    Error(String),
    Int(i64),
    NilBulk,
    NilArray,
    Array(Vec<Resp>),
    HugeArray(u64, Vec<Resp>),
    HugeBulk(u64, Vec<u8>),
}

impl Resp {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Resp::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Resp::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Resp::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
            Resp::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
            Resp::NilBulk => out.extend_from_slice(b"$-1\r\n"),
            Resp::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Resp::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                items.iter().for_each(|i| i.write(out));
            }
            Resp::HugeArray(extra, items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len() as u64 + extra).as_bytes());
                items.iter().for_each(|i| i.write(out));
            }
            Resp::HugeBulk(extra, b) => {
                out.extend_from_slice(format!("${}\r\n", b.len() as u64 + extra).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }
}

/// Binary field names and values: empty, short, or containing CR, LF and CRLF.
fn blob() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..12),
        1 => Just(Vec::new()),
        1 => prop::collection::vec(prop::sample::select(vec![b'\r', b'\n', b'$', b'*', b'a']), 0..6),
        1 => prop::collection::vec(any::<u8>(), 100..400),
    ]
}

/// A status or error text: printable ASCII without CR or LF, as Redis sends.
fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,24}"
}

/// Any value, arrays nested up to a few levels.
fn any_value() -> impl Strategy<Value = Resp> {
    let leaf = prop_oneof![
        blob().prop_map(Resp::Bulk),
        text().prop_map(Resp::Simple),
        Just(Resp::Simple("OK".into())),
        text().prop_map(|t| Resp::Error(format!("ERR {t}"))),
        any::<i64>().prop_map(Resp::Int),
        Just(Resp::NilBulk),
        Just(Resp::NilArray),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop::collection::vec(inner, 0..5).prop_map(Resp::Array)
    })
}

/// An entry id: mostly `<ms>-<seq>`, sometimes not.
fn entry_id() -> impl Strategy<Value = Resp> {
    prop_oneof![
        8 => (any::<u64>(), any::<u64>()).prop_map(|(ms, seq)| Resp::Bulk(format!("{ms}-{seq}").into_bytes())),
        1 => (0u64..1000).prop_map(|ms| Resp::Bulk(ms.to_string().into_bytes())),
        1 => blob().prop_map(Resp::Bulk),
        1 => any_value(),
    ]
}

/// The fields of an entry: pairs mostly, sometimes odd, non-string, nil or nested.
fn fields() -> impl Strategy<Value = Resp> {
    let pair = (blob(), blob()).prop_map(|(k, v)| vec![Resp::Bulk(k), Resp::Bulk(v)]);
    prop_oneof![
        8 => prop::collection::vec(pair, 1..6).prop_map(|p| Resp::Array(p.concat())),
        1 => Just(Resp::NilArray),
        1 => Just(Resp::NilBulk),
        1 => Just(Resp::Array(Vec::new())),
        1 => prop::collection::vec(blob().prop_map(Resp::Bulk), 1..6).prop_map(Resp::Array),
        1 => prop::collection::vec(any_value(), 0..6).prop_map(Resp::Array),
        1 => any_value(),
    ]
}

fn entry() -> impl Strategy<Value = Resp> {
    prop_oneof![
        12 => (entry_id(), fields()).prop_map(|(id, f)| Resp::Array(vec![id, f])),
        1 => entry_id().prop_map(|id| Resp::Array(vec![id])),
        1 => (entry_id(), fields(), any_value()).prop_map(|(id, f, x)| Resp::Array(vec![id, f, x])),
        1 => any_value(),
    ]
}

fn entries() -> impl Strategy<Value = Resp> {
    prop_oneof![
        10 => prop::collection::vec(entry(), 0..8).prop_map(Resp::Array),
        1 => Just(Resp::NilArray),
        1 => any_value(),
    ]
}

/// `[[stream, [entries…]], …]`, nil, an error, or something else.
fn xreadgroup_reply() -> impl Strategy<Value = Resp> {
    let stream = prop_oneof![
        10 => (blob(), entries()).prop_map(|(name, e)| Resp::Array(vec![Resp::Bulk(name), e])),
        1 => any_value(),
    ];
    prop_oneof![
        10 => prop::collection::vec(stream, 1..3).prop_map(Resp::Array),
        1 => Just(Resp::NilArray),
        1 => Just(Resp::Array(Vec::new())),
        1 => text().prop_map(|t| Resp::Error(format!("NOGROUP {t}"))),
        1 => any_value(),
    ]
}

/// `[[stream, [entries…]], …]` for several streams, as a shared read gets them, with the names.
fn multi_stream_reply() -> impl Strategy<Value = (Vec<Vec<u8>>, Resp)> {
    prop::collection::vec((blob(), prop::collection::vec(entry(), 0..6)), 0..5).prop_map(
        |streams| {
            let names = streams.iter().map(|(n, _)| n.clone()).collect();
            let reply = streams
                .into_iter()
                .map(|(n, e)| Resp::Array(vec![Resp::Bulk(n), Resp::Array(e)]))
                .collect();
            (names, Resp::Array(reply))
        },
    )
}

/// The items of every part of `bytes`, in order.
fn joined_parts(bytes: &[u8]) -> redis::RedisResult<Option<Vec<ReadItem>>> {
    let Ok(parts) = split_read_reply(bytes) else {
        return Ok(None);
    };
    let mut joined = Vec::new();
    for part in &parts {
        joined.extend(parse_stream_entries(bytes, part.entries_at)?);
    }
    Ok(Some(joined))
}

/// `[cursor, [entries…], [deleted ids…]]`.
fn xautoclaim_reply() -> impl Strategy<Value = Resp> {
    (
        entry_id(),
        entries(),
        prop::collection::vec(entry_id(), 0..4),
    )
        .prop_map(|(cursor, e, deleted)| Resp::Array(vec![cursor, e, Resp::Array(deleted)]))
}

/// A reply with one length somewhere declared larger than what follows.
fn huge(reply: Resp, extra: u64, at: usize) -> Resp {
    fn go(r: Resp, extra: u64, at: &mut usize) -> Resp {
        let here = *at == 0;
        *at = at.saturating_sub(1);
        match r {
            Resp::Array(items) if here => Resp::HugeArray(extra, items),
            Resp::Bulk(b) if here => Resp::HugeBulk(extra, b),
            Resp::Array(items) => {
                Resp::Array(items.into_iter().map(|i| go(i, extra, at)).collect())
            }
            other => other,
        }
    }
    let mut at = at;
    go(reply, extra, &mut at)
}

fn valid_reply() -> impl Strategy<Value = Resp> {
    prop_oneof![xreadgroup_reply(), xautoclaim_reply()]
}

fn reply() -> impl Strategy<Value = Resp> {
    prop_oneof![
        8 => valid_reply(),
        1 => (valid_reply(), 1u64..(1 << 40), 0usize..40).prop_map(|(r, extra, at)| huge(r, extra, at)),
    ]
}

/// What feeding bytes to a [`FrameBuf`] ended in.
#[derive(Debug)]
struct Fed {
    frames: Vec<Vec<u8>>,
    /// The framer's error, if any (feeding stops there).
    error: Option<io::Error>,
    /// Bytes fed and not yet part of a frame.
    pending: bool,
    /// Largest the buffer grew.
    peak_buffer: usize,
}

/// Feeds `data` in chunks of the given sizes (cycled), framing as it goes.
fn feed(data: &[u8], chunks: &[usize]) -> Fed {
    let mut fb = FrameBuf::new();
    let mut fed = Fed {
        frames: Vec::new(),
        error: None,
        pending: false,
        peak_buffer: fb.buffer_len(),
    };
    let mut at = 0;
    let mut framed = 0;
    let mut sizes = chunks.iter().cycle();
    loop {
        loop {
            match fb.next_frame() {
                Ok(Some(f)) => {
                    framed += f.len();
                    fed.frames.push(f);
                }
                Ok(None) => break,
                Err(e) => {
                    fed.error = Some(e);
                    return fed;
                }
            }
        }
        if at == data.len() {
            fed.pending = framed < data.len();
            return fed;
        }
        let want = sizes.next().copied().unwrap_or(data.len()).max(1);
        let spare = fb.spare();
        let n = want.min(spare.len()).min(data.len() - at);
        spare[..n].copy_from_slice(&data[at..at + n]);
        fb.filled(n);
        at += n;
        fed.peak_buffer = fed.peak_buffer.max(fb.buffer_len());
    }
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        1 => Just(vec![usize::MAX]),
        1 => Just(vec![1]),
        4 => prop::collection::vec(1usize..64, 1..8),
        1 => prop::collection::vec(1usize..100_000, 1..4),
    ]
}

/// Checks one serialised reply against redis-rs.
fn differential(bytes: &[u8], chunks: &[usize]) -> Result<(), TestCaseError> {
    let fed = feed(bytes, chunks);
    match redis::parse_redis_value(bytes) {
        Ok(expected) => {
            prop_assert!(
                fed.error.is_none(),
                "framer refused a valid reply: {:?}",
                fed.error
            );
            prop_assert_eq!(&fed.frames, &vec![bytes.to_vec()]);
            prop_assert!(!fed.pending);
            let frame = &fed.frames[0];
            match (&expected, parse_value(frame)) {
                (Value::ServerError(e), Err(ours)) => {
                    let theirs = redis::RedisError::from(e.clone());
                    prop_assert_eq!(theirs.code(), ours.code());
                    prop_assert_eq!(theirs.to_string(), ours.to_string());
                }
                (_, Ok(ours)) => prop_assert_eq!(&ours, &expected),
                (_, Err(ours)) => prop_assert!(false, "parse_value: {ours} for {expected:?}"),
            }
            match (expected, parse_read_reply(frame)) {
                (Value::ServerError(e), Err(ours)) => {
                    prop_assert_eq!(Some(e.code()), ours.code());
                }
                (Value::ServerError(_), Ok(items)) => {
                    prop_assert!(false, "an error reply read as items: {items:?}")
                }
                (expected, Ok(items)) => {
                    prop_assert_eq!(items, reply::parse_read_reply(expected))
                }
                (expected, Err(ours)) => {
                    prop_assert!(false, "parse_read_reply: {ours} for {expected:?}")
                }
            }
        }
        Err(_) => {
            // The same class: redis-rs refuses it, and the framer either refuses it too or
            // is still waiting for the rest (a length declared larger than what follows).
            prop_assert!(fed.frames.is_empty(), "framed what redis-rs refuses");
            prop_assert!(fed.error.is_some() || fed.pending);
        }
    }
    Ok(())
}

/// Checks what the framer and parsers make of arbitrary bytes: no panic, bounded memory, and a
/// frame, a clear error or "need more bytes".
fn robust(bytes: &[u8], chunks: &[usize]) -> Result<(), TestCaseError> {
    let fed = feed(bytes, chunks);
    prop_assert!(
        fed.peak_buffer <= (2 * bytes.len()).max(64 * 1024),
        "buffer grew to {} for {} bytes",
        fed.peak_buffer,
        bytes.len()
    );
    if let Some(e) = &fed.error {
        prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        prop_assert!(!e.to_string().is_empty());
    }
    for frame in &fed.frames {
        // Either answer is fine; what matters is that there is one.
        let _ = parse_value(frame);
        let _ = parse_read_reply(frame);
    }
    Ok(())
}

/// A valid reply with a few bytes flipped, inserted or removed.
fn corrupted() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), any::<u8>(), 0u8..3);
    (reply(), prop::collection::vec(edit, 1..4)).prop_map(|(r, edits)| {
        let mut b = r.bytes();
        for (at, byte, kind) in edits {
            if b.is_empty() {
                b.push(byte);
                continue;
            }
            let i = at.index(b.len());
            match kind {
                0 => b[i] = byte,
                1 => b.insert(i, byte),
                _ => {
                    b.remove(i);
                }
            }
        }
        b
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_fast_path_agrees_with_redis_rs(reply in reply(), chunks in chunks()) {
        differential(&reply.bytes(), &chunks)?;
    }

    #[test]
    fn a_multi_stream_reply_splits_into_its_streams((names, reply) in multi_stream_reply()) {
        let bytes = reply.bytes();
        let parts = split_read_reply(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let found: Vec<Vec<u8>> = parts.iter().map(|p| bytes[p.key.clone()].to_vec()).collect();
        prop_assert_eq!(found, names);
        let whole = parse_read_reply(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let joined = joined_parts(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(joined, Some(whole));
    }

    #[test]
    fn a_split_reply_parses_as_the_whole_one(reply in reply()) {
        let bytes = reply.bytes();
        if let Ok(Some(joined)) = joined_parts(&bytes) {
            let whole = parse_read_reply(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(joined, whole);
        }
    }

    #[test]
    fn a_valid_reply_cut_short_waits_for_more(
        reply in valid_reply(),
        cut in any::<prop::sample::Index>(),
        chunks in chunks(),
    ) {
        let bytes = reply.bytes();
        let cut = cut.index(bytes.len());
        let fed = feed(&bytes[..cut], &chunks);
        prop_assert!(fed.frames.is_empty() && fed.error.is_none(), "{:?}", fed);
        prop_assert!(fed.pending || cut == 0);
        prop_assert!(parse_value(&bytes[..cut]).is_err());
    }

    #[test]
    fn random_bytes_end_in_a_frame_an_error_or_a_wait(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        chunks in chunks(),
    ) {
        robust(&bytes, &chunks)?;
    }

    #[test]
    fn corrupted_replies_end_in_a_frame_an_error_or_a_wait(
        bytes in corrupted(),
        chunks in chunks(),
    ) {
        robust(&bytes, &chunks)?;
    }
}
