//! RESP2 without I/O: [`FrameBuf`] collects a socket's bytes and finds where each complete reply
//! ends (headers read, payloads skipped by length, resumable across reads); [`parse_read_reply`]
//! and [`parse_value`] turn one complete reply into entries or a `redis::Value`.
//!
//! Why not redis-rs's parser: it builds a `redis::Value` tree with a parser-combinator library,
//! which costs about as much client CPU as everything else millrace does per entry. This parser
//! makes one pass and allocates only the field names and values. Shapes other than the expected
//! ones are read as a `redis::Value` and go through the same tolerant parser as every other reply,
//! so an oddity stays confined to its entry.

use std::io;

use redis::{RedisResult, Value};

use crate::entry::{EntryId, RawEntry};
use crate::streams::{reply, ReadItem};

/// Initial buffer; it grows for entries larger than this and shrinks back between replies.
const BUFFER: usize = 64 * 1024;
/// Deepest nesting accepted in a reply; a stream reply has four levels.
const MAX_DEPTH: usize = 32;
/// Longest bulk string accepted: Redis's own `proto-max-bulk-len` default.
const MAX_BULK: i64 = 512 * 1024 * 1024;
/// Longest header line accepted (a length or a short status text); more without a line end is
/// not RESP, and reading on would grow the buffer without bound.
const MAX_LINE: usize = 64 * 1024;
/// Most elements reserved up front for an array, whatever its header claims.
const MAX_RESERVE: usize = 4096;
/// A buffered reply of at most this many bytes counts as small (see [`FrameBuf::small_reply_buffered`]).
const SMALL_REPLY: usize = 2048;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn int(digits: &[u8]) -> io::Result<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return Err(invalid("bad length or integer in a reply"));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(invalid("bad length or integer in a reply"));
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Ok(if neg { -n } else { n })
}

/// Where the scan of the reply at the front of the buffer stands.
#[derive(Debug)]
struct Scan {
    /// Bytes of the reply scanned so far, from `FrameBuf::pos`.
    off: usize,
    /// Values still to read at each nesting level; the outermost is the reply itself.
    remaining: Vec<i64>,
    /// Set while a bulk string's payload is incomplete: the offset where it ends (CRLF included).
    bulk_end: Option<usize>,
}

impl Scan {
    fn new() -> Self {
        Scan {
            off: 0,
            remaining: vec![1],
            bulk_end: None,
        }
    }

    fn one_done(&mut self) {
        if let Some(top) = self.remaining.last_mut() {
            *top -= 1;
        }
    }
}

/// A read buffer that finds complete RESP2 replies.
#[derive(Debug)]
pub(crate) struct FrameBuf {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    scan: Scan,
    /// Entries in the last complete `XREADGROUP` reply, from its headers alone.
    last_entries: usize,
}

impl FrameBuf {
    pub(crate) fn new() -> Self {
        FrameBuf {
            buf: vec![0; BUFFER],
            pos: 0,
            end: 0,
            scan: Scan::new(),
            last_entries: 0,
        }
    }

    /// How many entries the last reply framed held, read from its headers: the length of the
    /// array at the depth of a stream's entry list (`[[stream, [entries…]]]`); 0 for a nil reply.
    pub(crate) fn last_entries(&self) -> usize {
        self.last_entries
    }

    /// Whether no byte of a next reply is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    /// Free space to read into, never empty: unread bytes move to the front, and the buffer grows
    /// when it is full or a bulk string needs more room. Between replies a grown buffer shrinks
    /// back, so one large entry does not hold memory for good.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
            if self.buf.len() > BUFFER && self.scan.off == 0 {
                self.buf = vec![0; BUFFER];
            }
        }
        let want = self.scan.bulk_end.unwrap_or(0).max(self.end - self.pos + 1);
        if self.buf.len() - self.pos < want || self.end == self.buf.len() {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
            if self.buf.len() < want || self.end == self.buf.len() {
                let len = want.max(self.buf.len() * 2).next_power_of_two();
                self.buf.resize(len, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`FrameBuf::spare`].
    pub(crate) fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Whether the buffered bytes look like one whole, small reply: few, ending in CRLF. A guess
    /// (a later reply may be buffered too); it only decides what the reader does first.
    pub(crate) fn small_reply_buffered(&self) -> bool {
        let n = self.end - self.pos;
        (2..=SMALL_REPLY).contains(&n) && self.buf[self.end - 2..self.end] == *b"\r\n"
    }

    /// The next complete reply's bytes, once buffered; `None` until then (read more and ask
    /// again: the scan resumes where it stopped).
    pub(crate) fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        let s = &mut self.scan;
        if s.off == 0 && s.remaining.len() == 1 {
            self.last_entries = 0;
        }
        loop {
            while s.remaining.last() == Some(&0) {
                s.remaining.pop();
                if s.remaining.is_empty() {
                    let frame = self.buf[self.pos..self.pos + s.off].to_vec();
                    self.pos += s.off;
                    *s = Scan::new();
                    return Ok(Some(frame));
                }
                s.one_done();
            }
            if let Some(bulk_end) = s.bulk_end {
                if self.end - self.pos < bulk_end {
                    return Ok(None);
                }
                s.off = bulk_end;
                s.bulk_end = None;
                s.one_done();
                continue;
            }
            let from = self.pos + s.off;
            let Some(i) = self.buf[from..self.end].iter().position(|&b| b == b'\n') else {
                if self.end - from > MAX_LINE {
                    return Err(invalid(
                        "a reply line without an end (is this a Redis server?)",
                    ));
                }
                return Ok(None);
            };
            let nl = from + i;
            let line_end = if nl > from && self.buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            s.off = nl + 1 - self.pos;
            let Some((&kind, digits)) = self.buf[from..line_end].split_first() else {
                return Err(invalid("empty line in a reply"));
            };
            match kind {
                b'*' => {
                    let n = int(digits)?;
                    // Levels: the reply, a [stream, entries] pair, the entry list.
                    if s.remaining.len() == 3 {
                        self.last_entries += n.max(0) as usize;
                    }
                    if n <= 0 {
                        s.one_done();
                    } else if s.remaining.len() > MAX_DEPTH {
                        return Err(invalid("reply nested too deeply"));
                    } else {
                        s.remaining.push(n);
                    }
                }
                b'$' => {
                    let n = int(digits)?;
                    if n > MAX_BULK {
                        return Err(invalid(format!("a bulk string of {n} bytes")));
                    }
                    if n < 0 {
                        s.one_done();
                    } else {
                        s.bulk_end = Some(s.off + n as usize + 2);
                    }
                }
                b'+' | b'-' | b':' => s.one_done(),
                other => {
                    return Err(invalid(format!(
                        "unexpected RESP type byte {other:#04x} (is this a Redis server speaking RESP2?)"
                    )))
                }
            }
        }
    }
}

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
        let rest = &self.buf[self.pos..];
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(truncated)?;
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.pos += nl + 1;
        let Some((&kind, digits)) = line.split_first() else {
            return Err(invalid("empty line in a reply"));
        };
        Ok(match kind {
            b'*' => Header::Array(int(digits)?),
            b'$' => match int(digits)? {
                n if n > MAX_BULK => return Err(invalid(format!("a bulk string of {n} bytes"))),
                n => Header::Bulk(n),
            },
            b':' => Header::Int(int(digits)?),
            b'+' => Header::Simple(digits.to_vec()),
            b'-' => Header::Error(line.to_vec()),
            other => {
                return Err(invalid(format!(
                "unexpected RESP type byte {other:#04x} (is this a Redis server speaking RESP2?)"
            )))
            }
        })
    }

    /// The `len` bytes of a bulk string and its CRLF.
    fn body(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let end = self.pos.checked_add(len).ok_or_else(truncated)?;
        if end + 2 > self.buf.len() {
            return Err(truncated());
        }
        let out = self.buf[self.pos..end].to_vec();
        self.pos = end + 2;
        Ok(out)
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
                    match self.header()? {
                        Header::Array(n) if n >= 0 => {
                            out.reserve((n as usize).min(MAX_RESERVE));
                            for _ in 0..n {
                                out.push(self.entry()?);
                            }
                        }
                        h => out.extend(reply::parse_entries(self.finish(h, 2)?)),
                    }
                }
                h => {
                    let v = self.finish(h, 1)?;
                    out.extend(reply::parse_read_reply(Value::Array(vec![v])));
                }
            }
        }
        Ok(out)
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
    fn the_entry_count_comes_from_the_headers() {
        let mut fb = FrameBuf::new();
        for (reply, n) in [(REPLY, 3), (b"*-1\r\n".as_slice(), 0), (REPLY, 3)] {
            let spare = fb.spare();
            spare[..reply.len()].copy_from_slice(reply);
            fb.filled(reply.len());
            assert!(fb.next_frame().expect("frame").is_some());
            assert_eq!(fb.last_entries(), n);
        }
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
        let big = vec![b'x'; BUFFER * 3 + 5];
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
    fn a_grown_buffer_shrinks_back_between_replies() {
        let mut fb = FrameBuf::new();
        let big = format!("${}\r\n{}\r\n", BUFFER * 2, "y".repeat(BUFFER * 2));
        let mut at = 0;
        let data = big.as_bytes();
        while fb.next_frame().expect("frame").is_none() {
            let spare = fb.spare();
            let n = spare.len().min(data.len() - at);
            spare[..n].copy_from_slice(&data[at..at + n]);
            fb.filled(n);
            at += n;
        }
        assert!(fb.buf.len() > BUFFER);
        let _ = fb.spare();
        assert_eq!(fb.buf.len(), BUFFER);
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
}
