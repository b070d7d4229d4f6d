//! CPU cost per entry of the client-side steps, on a synthetic 500-entry `XREADGROUP` reply, timed
//! with the thread's own CPU clock (so other load on the machine barely moves it): what redis-rs
//! does to every reply, what millrace adds, and what the hand-written loops do instead; and the
//! `redis-protocol` crate's RESP2 decoders on the same bytes, as the alternative to millrace's own.

use std::time::Duration;

use redis::Value;

use crate::workload::{decode_by_hand, event, take_ids, UserEvent, Work};

/// Per-entry cost of one step, in ns.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) name: &'static str,
    pub(crate) who: &'static str,
    pub(crate) ns_per_entry: f64,
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn bulk(s: impl Into<Vec<u8>>) -> Value {
    Value::BulkString(s.into())
}

/// A RESP2 `XREADGROUP` reply of `n` entries like the preloaded ones.
fn reply(n: usize) -> Value {
    let entries = (0..n)
        .map(|k| {
            let (user, action, page) = event(k);
            Value::Array(vec![
                bulk(format!("1700000000000-{k}")),
                Value::Array(vec![
                    bulk("user_id"),
                    bulk(user.to_string()),
                    bulk("action"),
                    bulk(action),
                    bulk("page"),
                    bulk(page),
                ]),
            ])
        })
        .collect();
    Value::Array(vec![Value::Array(vec![
        bulk("bench:events"),
        Value::Array(entries),
    ])])
}

/// The same reply as RESP2 bytes on the wire.
fn resp_bytes(n: usize) -> Vec<u8> {
    fn bulk_into(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
    }
    let mut out = b"*1\r\n*2\r\n".to_vec();
    bulk_into(&mut out, b"bench:events");
    out.extend_from_slice(format!("*{n}\r\n").as_bytes());
    for k in 0..n {
        let (user, action, page) = event(k);
        out.extend_from_slice(b"*2\r\n");
        bulk_into(&mut out, format!("1700000000000-{k}").as_bytes());
        out.extend_from_slice(b"*6\r\n");
        for b in [
            b"user_id".as_slice(),
            user.to_string().as_bytes(),
            b"action",
            action.as_bytes(),
            b"page",
            page.as_bytes(),
        ] {
            bulk_into(&mut out, b);
        }
    }
    out
}

/// Runs `f` over fresh clones of a 500-entry reply until about `budget` of CPU is spent; returns
/// ns per entry (clones made outside the timed part).
fn time(budget: Duration, mut f: impl FnMut(Value)) -> f64 {
    const N: usize = 500;
    const CLONES: usize = 16;
    let proto = reply(N);
    let (mut spent, mut entries) = (Duration::ZERO, 0usize);
    while spent < budget {
        let batch: Vec<Value> = (0..CLONES).map(|_| proto.clone()).collect();
        let t = thread_cpu();
        for v in batch {
            f(v);
        }
        spent += thread_cpu().saturating_sub(t);
        entries += N * CLONES;
    }
    spent.as_nanos() as f64 / entries as f64
}

/// Runs `f` (one 500-entry batch per call) until about `budget` of CPU is spent; ns per entry.
fn time_plain(budget: Duration, mut f: impl FnMut()) -> f64 {
    let (mut spent, mut entries) = (Duration::ZERO, 0usize);
    while spent < budget {
        let t = thread_cpu();
        for _ in 0..16 {
            f();
        }
        spent += thread_cpu().saturating_sub(t);
        entries += 500 * 16;
    }
    spent.as_nanos() as f64 / entries as f64
}

/// Measures every step; `budget` is the CPU time spent on each.
pub(crate) fn run(budget: Duration) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut push = |name, who, ns| {
        steps.push(Step {
            name,
            who,
            ns_per_entry: ns,
        })
    };
    push(
        "drop the reply (`Value` tree)",
        "all",
        time(budget, |v| drop(std::hint::black_box(v))),
    );
    push(
        "`Value::extract_error` (what `Cmd::query_async` does to every reply)",
        "redis-rs",
        time(budget, |v| {
            let _ = std::hint::black_box(v.extract_error());
        }),
    );
    push(
        "walk the reply, take the ids (hand-written loops), drop",
        "(a), (b)",
        time(budget, |v| {
            let _ = std::hint::black_box(take_ids(v, &Work::Noop));
        }),
    );
    push(
        "`streams::reply::parse_read_reply` → `RawEntry`s, drop",
        "millrace (replays, claims)",
        time(budget, |v| {
            std::hint::black_box(millrace::streams::reply::parse_read_reply(v));
        }),
    );
    let resp = resp_bytes(500);
    push(
        "parse the RESP bytes into a `Value` tree (`redis::parse_redis_value`), drop",
        "redis-rs, before all of the above",
        time_plain(budget, || {
            std::hint::black_box(redis::parse_redis_value(&resp).ok());
        }),
    );
    let mut path = millrace::__bench::ReplyPath::default();
    push(
        "frame the RESP bytes and parse them → `RawEntry`s, drop (the live reader's path)",
        "millrace",
        time_plain(budget, || {
            std::hint::black_box(path.frame_and_parse(&resp).map(|items| items.len()).ok());
        }),
    );
    push(
        "frame the RESP bytes only (the reader task's share of the path above)",
        "millrace",
        time_plain(budget, || {
            std::hint::black_box(path.frame(&resp).map(|f| f.len()).ok());
        }),
    );
    push(
        "`redis-protocol` `decode_range`: offsets only, nothing copied, drop",
        "redis-protocol",
        time_plain(budget, || {
            std::hint::black_box(redis_protocol::resp2::decode::decode_range(&resp).ok());
        }),
    );
    push(
        "`redis-protocol` `decode` → `OwnedFrame` tree, drop",
        "redis-protocol",
        time_plain(budget, || {
            std::hint::black_box(redis_protocol::resp2::decode::decode(&resp).ok());
        }),
    );
    let shared = bytes_of(&resp);
    push(
        "`redis-protocol` `decode_bytes` → `BytesFrame` tree (zero-copy), drop",
        "redis-protocol",
        time_plain(budget, || {
            std::hint::black_box(redis_protocol::resp2::decode::decode_bytes(&shared).ok());
        }),
    );
    push(
        "`redis-protocol` `decode_range` → `RawEntry`s, drop (the live reader's path on it)",
        "redis-protocol",
        time_plain(budget, || {
            std::hint::black_box(alt::range_to_items(&resp).len());
        }),
    );
    push(
        "`redis-protocol` `decode_bytes` → `RawEntry`s, drop",
        "redis-protocol",
        time_plain(budget, || {
            std::hint::black_box(alt::bytes_to_items(&shared).len());
        }),
    );
    push(
        "decode `UserEvent` by hand from the reply, drop",
        "(a), (b) typed",
        time(budget, |v| {
            if let Value::Array(mut s) = v {
                if let Some(Value::Array(mut pair)) = s.pop() {
                    if let Some(Value::Array(entries)) = pair.pop() {
                        for e in entries {
                            if let Value::Array(parts) = e {
                                if let Some(Value::Array(fields)) = parts.get(1) {
                                    std::hint::black_box(decode_by_hand(fields));
                                }
                            }
                        }
                    }
                }
            }
        }),
    );
    push(
        "parse_read_reply + serde `decode::from_fields::<UserEvent>`, drop",
        "millrace typed",
        time(budget, |v| {
            for item in millrace::streams::reply::parse_read_reply(v) {
                if let millrace::streams::ReadItem::Entry(e) = item {
                    let _ =
                        std::hint::black_box(millrace::decode::from_fields::<UserEvent>(&e.fields));
                }
            }
        }),
    );
    let ids: Vec<millrace::EntryId> = (0..500)
        .map(|k| millrace::EntryId::new(1_700_000_000_000, k))
        .collect();
    let raw_ids: Vec<Vec<u8>> = ids.iter().map(|i| i.to_string().into_bytes()).collect();
    push(
        "pack `XACK` with 500 `EntryId`s",
        "millrace",
        time_plain(budget, || {
            let mut cmd = redis::cmd("XACK");
            cmd.arg("bench:events").arg("g").arg(&ids[..]);
            std::hint::black_box(cmd.get_packed_command());
        }),
    );
    push(
        "pack `XACK` with 500 ids kept as bytes",
        "(a), (b)",
        time_plain(budget, || {
            let mut cmd = redis::cmd("XACK");
            cmd.arg("bench:events").arg("g").arg(&raw_ids[..]);
            std::hint::black_box(cmd.get_packed_command());
        }),
    );
    steps
}

fn bytes_of(b: &[u8]) -> redis_protocol::bytes::Bytes {
    redis_protocol::bytes::Bytes::copy_from_slice(b)
}

/// The live reader's path built on `redis-protocol` instead: decode one reply, then take the
/// entries out of the frame tree (happy path only, so it is if anything flattered).
pub(crate) mod alt {
    use millrace::streams::ReadItem;
    use millrace::{EntryId, RawEntry};
    use redis_protocol::resp2::decode::{decode_bytes, decode_range};
    use redis_protocol::resp2::types::{BytesFrame, RangeFrame};

    fn entries_of<F>(
        reply: Vec<F>,
        list: impl Fn(F) -> Option<Vec<F>>,
        entry: impl Fn(F) -> Option<ReadItem>,
    ) -> Vec<ReadItem> {
        let mut out = Vec::new();
        for stream in reply {
            let Some(mut pair) = list(stream) else {
                continue;
            };
            let Some(entries) = pair.pop().and_then(&list) else {
                continue;
            };
            out.extend(entries.into_iter().filter_map(&entry));
        }
        out
    }

    pub(super) fn range_to_items(buf: &[u8]) -> Vec<ReadItem> {
        match decode_range(buf) {
            Ok(Some((frame, _))) => range_frame_to_items(frame, buf),
            _ => Vec::new(),
        }
    }

    /// The entries of one `XREADGROUP` reply decoded by `decode_range` out of `buf`; nothing for
    /// any other reply.
    pub(crate) fn range_frame_to_items(frame: RangeFrame, buf: &[u8]) -> Vec<ReadItem> {
        let RangeFrame::Array(reply) = frame else {
            return Vec::new();
        };
        let bulk = |f: &RangeFrame| match f {
            RangeFrame::BulkString((a, b)) => Some(&buf[*a..*b]),
            _ => None,
        };
        let list = |f: RangeFrame| match f {
            RangeFrame::Array(v) => Some(v),
            _ => None,
        };
        entries_of(reply, list, |e| {
            let RangeFrame::Array(parts) = e else {
                return None;
            };
            let id = EntryId::from_bytes(bulk(parts.first()?)?)?;
            let RangeFrame::Array(flat) = parts.get(1)? else {
                return Some(ReadItem::Tombstone(id));
            };
            let fields = flat
                .chunks_exact(2)
                .map(|kv| Some((bulk(&kv[0])?.to_vec(), bulk(&kv[1])?.to_vec())))
                .collect::<Option<Vec<_>>>()?;
            Some(ReadItem::Entry(RawEntry::new(id, fields)))
        })
    }

    pub(super) fn bytes_to_items(buf: &redis_protocol::bytes::Bytes) -> Vec<ReadItem> {
        match decode_bytes(buf) {
            Ok(Some((frame, _))) => frame_to_items(frame),
            _ => Vec::new(),
        }
    }

    /// The entries of one decoded `XREADGROUP` reply; nothing for any other reply.
    pub(crate) fn frame_to_items(frame: BytesFrame) -> Vec<ReadItem> {
        let BytesFrame::Array(reply) = frame else {
            return Vec::new();
        };
        let list = |f: BytesFrame| match f {
            BytesFrame::Array(v) => Some(v),
            _ => None,
        };
        entries_of(reply, list, |e| {
            let BytesFrame::Array(parts) = e else {
                return None;
            };
            let BytesFrame::BulkString(id) = parts.first()? else {
                return None;
            };
            let id = EntryId::from_bytes(id)?;
            let BytesFrame::Array(flat) = parts.get(1)? else {
                return Some(ReadItem::Tombstone(id));
            };
            let fields = flat
                .chunks_exact(2)
                .map(|kv| match kv {
                    [BytesFrame::BulkString(k), BytesFrame::BulkString(v)] => {
                        Some((k.to_vec(), v.to_vec()))
                    }
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(ReadItem::Entry(RawEntry::new(id, fields)))
        })
    }
}
