//! Parsing: one complete RESP2 reply, held in memory, into stream entries or a `redis::Value`.

use std::io;
use std::ops::Range;

use redis::{RedisResult, Value};

use super::{
    bad_bulk_end, int, invalid, line, not_resp, too_large, MAX_BULK, MAX_DEPTH, MAX_RESERVE,
};
use crate::entry::{EntryId, RawEntry};
use crate::streams::{reply, ReadItem};

/// The start of one RESP2 value.
#[derive(Debug)]
enum Header {
    /// `*n`; negative is a nil array.
    Array(i64),
    /// `$n`; negative is a nil string.
    Bulk(i64),
    /// `+text`.
    Simple(Vec<u8>),
    /// `-text`: the whole error line.
    Error(Vec<u8>),
    /// `:n`.
    Int(i64),
}

/// Parses one complete reply held in memory.
struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn truncated() -> io::Error {
    invalid("truncated reply")
}

impl Parser<'_> {
    fn header(&mut self) -> io::Result<Header> {
        let (line, used) = line(&self.buf[self.pos..])?.ok_or_else(truncated)?;
        self.pos += used;
        let Some((&kind, digits)) = line.split_first() else {
            return Err(invalid("empty line in a reply"));
        };
        Ok(match kind {
            b'*' => Header::Array(int(digits)?),
            b'$' => match int(digits)? {
                n if n > MAX_BULK => return Err(too_large(n)),
                n => Header::Bulk(n),
            },
            b':' => Header::Int(int(digits)?),
            b'+' => Header::Simple(digits.to_vec()),
            b'-' => Header::Error(line.to_vec()),
            other => return Err(not_resp(other)),
        })
    }

    /// The `len` bytes of a bulk string and its CRLF.
    fn body(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let range = self.bulk_range(len)?;
        Ok(self.buf[range].to_vec())
    }

    /// A bulk string's bytes, or `None` (after consuming it) for anything else.
    fn bulk_or_skip(&mut self, depth: usize) -> io::Result<Option<Vec<u8>>> {
        match self.header()? {
            Header::Bulk(n) if n >= 0 => Ok(Some(self.body(n as usize)?)),
            h => Ok(reply::bytes(self.finish(h, depth)?)),
        }
    }

    /// Reads the rest of a value whose header was read, as a `redis::Value`.
    fn finish(&mut self, header: Header, depth: usize) -> io::Result<Value> {
        if depth > MAX_DEPTH {
            return Err(invalid("reply nested too deeply"));
        }
        Ok(match header {
            Header::Array(n) if n < 0 => Value::Nil,
            Header::Bulk(n) if n < 0 => Value::Nil,
            Header::Array(n) => {
                let mut items = Vec::with_capacity((n as usize).min(MAX_RESERVE));
                for _ in 0..n {
                    let h = self.header()?;
                    items.push(self.finish(h, depth + 1)?);
                }
                Value::Array(items)
            }
            Header::Bulk(n) => Value::BulkString(self.body(n as usize)?),
            Header::Int(i) => Value::Int(i),
            Header::Simple(s) if s == b"OK" => Value::Okay,
            Header::Simple(s) => Value::SimpleString(String::from_utf8_lossy(&s).into_owned()),
            Header::Error(line) => server_error(&line),
        })
    }

    /// `[[stream, [[id, [f, v, …]], …]]]`, or nil after BLOCK ran out.
    fn read_items(&mut self) -> RedisResult<Vec<ReadItem>> {
        let streams = match self.header()? {
            Header::Array(n) if n >= 0 => n,
            h => {
                return match self.finish(h, 0)? {
                    Value::ServerError(e) => Err(e.into()),
                    v => Ok(reply::parse_read_reply(v)),
                }
            }
        };
        let mut out = Vec::new();
        for _ in 0..streams {
            match self.header()? {
                Header::Array(2) => {
                    let h = self.header()?;
                    self.finish(h, 2)?; // the stream name
                    self.entry_list(&mut out)?;
                }
                h => {
                    let v = self.finish(h, 1)?;
                    out.extend(reply::parse_read_reply(Value::Array(vec![v])));
                }
            }
        }
        Ok(out)
    }

    /// One stream's entry list, `[[id, [f, v, …]], …]`, appended to `out`.
    fn entry_list(&mut self, out: &mut Vec<ReadItem>) -> io::Result<()> {
        match self.header()? {
            Header::Array(n) if n >= 0 => {
                out.reserve((n as usize).min(MAX_RESERVE));
                for _ in 0..n {
                    out.push(self.entry()?);
                }
            }
            h => out.extend(reply::parse_entries(self.finish(h, 2)?)),
        }
        Ok(())
    }

    /// Skips one value whose header was read, allocating nothing for bulk payloads.
    fn skip(&mut self, header: Header, depth: usize) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(invalid("reply nested too deeply"));
        }
        match header {
            Header::Array(n) => {
                for _ in 0..n.max(0) {
                    let h = self.header()?;
                    self.skip(h, depth + 1)?;
                }
            }
            Header::Bulk(n) if n >= 0 => {
                self.bulk_range(n as usize)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Where the `len` bytes of a bulk string lie; moves past them and their CRLF.
    fn bulk_range(&mut self, len: usize) -> io::Result<Range<usize>> {
        let end = self.pos.checked_add(len).ok_or_else(truncated)?;
        let Some(crlf) = self.buf.get(end..end + 2) else {
            return Err(truncated());
        };
        if crlf != b"\r\n" {
            return Err(bad_bulk_end(len as i64));
        }
        let range = self.pos..end;
        self.pos = end + 2;
        Ok(range)
    }

    /// A multi-stream reply's parts: headers read and payloads skipped, nothing copied.
    fn split(&mut self) -> RedisResult<Vec<StreamPart>> {
        let streams = match self.header()? {
            Header::Array(n) if n >= 0 => n,
            Header::Array(_) => return Ok(Vec::new()),
            Header::Bulk(n) if n < 0 => return Ok(Vec::new()),
            Header::Error(line) => match server_error(&line) {
                Value::ServerError(e) => return Err(e.into()),
                _ => return Err(unexpected_shape().into()),
            },
            _ => return Err(unexpected_shape().into()),
        };
        let mut parts = Vec::with_capacity((streams as usize).min(MAX_RESERVE));
        for _ in 0..streams {
            let (Header::Array(2), Header::Bulk(len)) = (self.header()?, self.header()?) else {
                return Err(unexpected_shape().into());
            };
            let key = self.bulk_range(usize::try_from(len).map_err(|_| unexpected_shape())?)?;
            let entries_at = self.pos;
            let entries = match self.header()? {
                Header::Array(n) => n,
                _ => return Err(unexpected_shape().into()),
            };
            self.skip(Header::Array(entries), 2)?;
            parts.push(StreamPart {
                key,
                entries_at,
                entries: usize::try_from(entries).unwrap_or(0),
            });
        }
        Ok(parts)
    }

    /// One `[id, [f, v, …]]` element, always read to its end.
    fn entry(&mut self) -> io::Result<ReadItem> {
        let h = match self.header()? {
            Header::Array(2) => None,
            h => Some(h),
        };
        if let Some(h) = h {
            return Ok(reply::parse_entry(self.finish(h, 3)?));
        }
        let id = self.bulk_or_skip(4)?.and_then(|b| EntryId::from_bytes(&b));
        let fields = self.header()?;
        let Some(id) = id else {
            self.finish(fields, 4)?;
            return Ok(ReadItem::Malformed {
                id: None,
                reason: "an entry id is not of the form <ms>-<seq>".into(),
            });
        };
        let n = match fields {
            Header::Array(n) if n <= 0 => return Ok(ReadItem::Tombstone(id)),
            Header::Bulk(n) if n < 0 => return Ok(ReadItem::Tombstone(id)),
            Header::Array(n) => n as usize,
            h => {
                let v = self.finish(h, 4)?;
                let entry = Value::Array(vec![Value::BulkString(id.to_string().into_bytes()), v]);
                return Ok(reply::parse_entry(entry));
            }
        };
        let mut pairs = Vec::with_capacity((n / 2).min(MAX_RESERVE));
        let mut bad = false;
        let mut key = None;
        for _ in 0..n {
            let b = self.bulk_or_skip(5)?;
            match (b, key.take()) {
                (Some(v), Some(k)) => pairs.push((k, v)),
                (Some(k), None) => key = Some(k),
                (None, _) => bad = true,
            }
        }
        Ok(if n % 2 != 0 {
            ReadItem::Malformed {
                id: Some(id),
                reason: "odd number of field/value elements".into(),
            }
        } else if bad {
            ReadItem::Malformed {
                id: Some(id),
                reason: "a field or value is not a string".into(),
            }
        } else {
            ReadItem::Entry(RawEntry { id, fields: pairs })
        })
    }
}

/// A server error line (`-CODE message`) as a `Value::ServerError`, parsed by redis-rs so the error
/// code and kind are what every other millrace error path sees.
fn server_error(line: &[u8]) -> Value {
    let mut raw = line.to_vec();
    raw.extend_from_slice(b"\r\n");
    match redis::parse_redis_value(&raw) {
        Ok(v @ Value::ServerError(_)) => v,
        _ => Value::SimpleString(String::from_utf8_lossy(line).into_owned()),
    }
}

/// Parses a complete `XREADGROUP` reply for one stream into entries; an error reply is an error.
pub(crate) fn parse_read_reply(frame: &[u8]) -> RedisResult<Vec<ReadItem>> {
    Parser { buf: frame, pos: 0 }.read_items()
}

/// One stream's part of a multi-stream `XREADGROUP` reply, found by [`split_read_reply`]: where
/// the stream's name lies in the reply, where its entry list begins (for
/// [`parse_stream_entries`]), and how many entries the list holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamPart {
    /// The stream's name, as a range of the reply's bytes.
    pub(crate) key: Range<usize>,
    /// Offset of the entry list's header in the reply.
    pub(crate) entries_at: usize,
    /// Entries in the list, from its header.
    pub(crate) entries: usize,
}

fn unexpected_shape() -> io::Error {
    invalid("an XREADGROUP reply of an unexpected shape (expected [[stream, [entries…]], …])")
}

/// Splits a complete multi-stream `XREADGROUP` reply into its streams' parts, reading headers
/// only: payloads are skipped by length and nothing is copied, so the reply can be shared and
/// each stream's part parsed where it is consumed. A nil reply (BLOCK ran out) has no parts; an
/// error reply is an error.
pub(crate) fn split_read_reply(frame: &[u8]) -> RedisResult<Vec<StreamPart>> {
    Parser { buf: frame, pos: 0 }.split()
}

/// Parses the entry list of one stream's part of a reply (`at` from [`StreamPart::entries_at`])
/// into entries, as [`parse_read_reply`] does for a one-stream reply.
pub(crate) fn parse_stream_entries(frame: &[u8], at: usize) -> RedisResult<Vec<ReadItem>> {
    let mut out = Vec::new();
    Parser {
        buf: frame,
        pos: at,
    }
    .entry_list(&mut out)?;
    Ok(out)
}

/// Parses a complete reply into a `redis::Value`; an error reply is an error.
pub(crate) fn parse_value(frame: &[u8]) -> RedisResult<Value> {
    let mut p = Parser { buf: frame, pos: 0 };
    let h = p.header()?;
    match p.finish(h, 0)? {
        Value::ServerError(e) => Err(e.into()),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FrameBuf, MAX_LINE};

    /// Feeds `data` into a [`FrameBuf`] `step` bytes at a time and parses every frame found.
    fn frames(data: &[u8], step: usize) -> io::Result<Vec<Vec<u8>>> {
        let mut fb = FrameBuf::new();
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            while let Some(f) = fb.next_frame()? {
                out.push(f);
            }
            if at == data.len() {
                return Ok(out);
            }
            let spare = fb.spare();
            let n = step.min(spare.len()).min(data.len() - at);
            spare[..n].copy_from_slice(&data[at..at + n]);
            fb.filled(n);
            at += n;
        }
    }

    fn read(data: &[u8], step: usize) -> RedisResult<Vec<ReadItem>> {
        let mut f = frames(data, step)?;
        if f.len() != 1 {
            return Err(invalid(format!("{} frames, not one", f.len())).into());
        }
        parse_read_reply(&f.remove(0))
    }

    const REPLY: &[u8] = b"*1\r\n*2\r\n$1\r\ns\r\n*3\r\n\
        *2\r\n$3\r\n1-1\r\n*4\r\n$1\r\na\r\n$2\r\nxy\r\n$1\r\nb\r\n$0\r\n\r\n\
        *2\r\n$3\r\n2-0\r\n*-1\r\n\
        *2\r\n$3\r\n3-0\r\n*2\r\n$1\r\nk\r\n:7\r\n";

    #[test]
    fn entries_tombstones_and_integers_at_any_chunking() {
        for step in [1, 2, 3, 7, 64, 100_000] {
            let items = read(REPLY, step).expect("parses");
            assert_eq!(
                items,
                vec![
                    ReadItem::Entry(RawEntry::new(
                        EntryId::new(1, 1),
                        vec![
                            (b"a".to_vec(), b"xy".to_vec()),
                            (b"b".to_vec(), b"".to_vec())
                        ]
                    )),
                    ReadItem::Tombstone(EntryId::new(2, 0)),
                    ReadItem::Entry(RawEntry::new(
                        EntryId::new(3, 0),
                        vec![(b"k".to_vec(), b"7".to_vec())]
                    )),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn a_multi_stream_reply_splits_by_headers_into_its_streams() {
        // `s` (the three items of REPLY), then `t` with one entry, then `u` with none.
        let mut reply = b"*3\r\n".to_vec();
        reply.extend_from_slice(&REPLY[4..]);
        reply.extend_from_slice(
            b"*2\r\n$1\r\nt\r\n*1\r\n*2\r\n$3\r\n9-9\r\n*2\r\n$1\r\nk\r\n$1\r\nv\r\n",
        );
        reply.extend_from_slice(b"*2\r\n$1\r\nu\r\n*0\r\n");
        let f = frames(&reply, 3).expect("frames");
        assert_eq!(f, vec![reply.clone()]);
        let parts = split_read_reply(&reply).expect("splits");
        let names: Vec<&[u8]> = parts.iter().map(|p| &reply[p.key.clone()]).collect();
        assert_eq!(names, [b"s".as_slice(), b"t", b"u"]);
        assert_eq!(
            parts.iter().map(|p| p.entries).collect::<Vec<_>>(),
            [3, 1, 0]
        );
        let s = parse_stream_entries(&reply, parts[0].entries_at).expect("s");
        assert_eq!(s, read(REPLY, 100).expect("the one-stream reply"));
        let t = parse_stream_entries(&reply, parts[1].entries_at).expect("t");
        assert_eq!(
            t.iter().filter_map(ReadItem::id).collect::<Vec<_>>(),
            [EntryId::new(9, 9)]
        );
        assert!(parse_stream_entries(&reply, parts[2].entries_at)
            .expect("u")
            .is_empty());
        assert_eq!(split_read_reply(b"*-1\r\n").expect("nil"), vec![]);
        let err = split_read_reply(b"-NOGROUP No such key 'k' or consumer group 'g'\r\n")
            .expect_err("an error reply");
        assert_eq!(err.code(), Some("NOGROUP"));
        assert!(
            split_read_reply(b"*1\r\n:1\r\n").is_err(),
            "not [stream, entries]"
        );
        assert!(
            split_read_reply(&reply[..reply.len() - 3]).is_err(),
            "cut short"
        );
    }

    #[test]
    fn frames_end_exactly_where_their_replies_do() {
        let mut two = REPLY.to_vec();
        two.extend_from_slice(b"*-1\r\n+OK\r\n");
        for step in [1, 5, 1000] {
            let f = frames(&two, step).expect("frames");
            assert_eq!(
                f,
                vec![REPLY.to_vec(), b"*-1\r\n".to_vec(), b"+OK\r\n".to_vec()]
            );
        }
    }

    #[test]
    fn nil_reply_is_empty_and_errors_keep_their_code() {
        assert_eq!(read(b"*-1\r\n", 1).expect("nil"), vec![]);
        let err = read(b"-NOGROUP No such key 's' or consumer group 'g'\r\n", 5)
            .expect_err("server error");
        assert_eq!(err.code(), Some("NOGROUP"));
        let err = parse_value(b"-ERR max number of clients reached\r\n").expect_err("error");
        assert!(err.to_string().contains("max number of clients"), "{err}");
        assert_eq!(parse_value(b":42\r\n").expect("int"), Value::Int(42));
    }

    #[test]
    fn odd_fields_and_bad_ids_stay_confined_to_their_entry() {
        let reply = b"*1\r\n*2\r\n$1\r\ns\r\n*3\r\n\
            *2\r\n$3\r\n1-1\r\n*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n\
            *2\r\n$4\r\nnope\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n\
            *2\r\n$3\r\n4-0\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n";
        let items = read(reply, 4).expect("parses");
        assert!(
            matches!(items[0], ReadItem::Malformed { id: Some(id), .. } if id == EntryId::new(1, 1))
        );
        assert!(matches!(items[1], ReadItem::Malformed { id: None, .. }));
        assert_eq!(items[2].id(), Some(EntryId::new(4, 0)));
        assert!(matches!(items[2], ReadItem::Entry(_)));
    }

    #[test]
    fn values_larger_than_the_buffer_and_a_cut_reply() {
        let big = vec![b'x'; 200_000];
        let mut reply =
            b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n".to_vec();
        reply.extend_from_slice(format!("${}\r\n", big.len()).as_bytes());
        reply.extend_from_slice(&big);
        reply.extend_from_slice(b"\r\n");
        for step in [10_000, 1_000_000] {
            let items = read(&reply, step).expect("parses");
            match &items[0] {
                ReadItem::Entry(e) => assert_eq!(e.fields[0].1, big),
                other => panic!("unexpected {other:?}"),
            }
        }
        let cut = &reply[..reply.len() - 100];
        assert!(frames(cut, 10_000).expect("no error yet").is_empty());
        assert!(parse_read_reply(cut).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        assert!(frames(b"hello\r\n", 3).is_err());
        assert!(frames(b"*1x\r\n", 3).is_err());
        // Absurd lengths fail instead of allocating them.
        assert!(frames(b"*1\r\n*2\r\n$999999999999\r\n", 3).is_err());
        assert!(parse_read_reply(b"*999999999999999\r\n").is_err());
        assert!(parse_read_reply(
            b"*1\r\n*2\r\n$1\r\ns\r\n*99999999999\r\n*2\r\n$3\r\n1-1\r\n*999999999999\r\n"
        )
        .is_err());
        let deep = "*1\r\n".repeat(100);
        assert!(frames(deep.as_bytes(), 50).is_err());
        let endless = vec![b'+'; MAX_LINE * 3];
        assert!(frames(&endless, 4096).is_err());
    }

    #[test]
    fn a_bare_lf_or_a_wrong_terminator_is_refused() {
        let cases: [&[u8]; 4] = [
            b"*1\n$1\r\na\r\n",
            b"*1\r\n$1\r\na\n\r",
            b"*1\r\n$1\r\naXY",
            b"*2\r\n$1\r\nab\r\n$0\r\n\r\n",
        ];
        for reply in cases {
            for step in [1, 3, 100] {
                let err = frames(reply, step).expect_err("refused");
                assert!(err.to_string().contains("out of step"), "{err}");
            }
            let err = parse_value(reply).expect_err("refused");
            assert!(err.to_string().contains("out of step"), "{err}");
        }
    }
}
