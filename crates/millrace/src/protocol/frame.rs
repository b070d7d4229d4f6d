//! Framing: where each complete RESP2 reply in a stream of bytes ends.

use std::io;

use super::{bad_bulk_end, int, invalid, line, not_resp, too_large, MAX_BULK, MAX_DEPTH, MAX_LINE};

/// Initial buffer; it grows for replies larger than this and shrinks back between replies.
const BUFFER: usize = 64 * 1024;
/// A buffered reply of at most this many bytes counts as small (see [`FrameBuf::small_reply_buffered`]).
const SMALL_REPLY: usize = 2048;

/// Where the scan of the reply at the front of the buffer stands.
#[derive(Debug)]
struct Scan {
    /// Bytes of the reply scanned so far, from `FrameBuf::pos`.
    off: usize,
    /// Values still to read at each nesting level; the outermost is the reply itself.
    remaining: Vec<i64>,
    /// Set while a bulk string's payload is incomplete: its declared length, and the offset where
    /// it ends (CRLF included).
    bulk: Option<(i64, usize)>,
}

impl Scan {
    fn new() -> Self {
        Scan {
            off: 0,
            remaining: vec![1],
            bulk: None,
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

    /// The buffer's current size, for tests of its growth.
    #[cfg(test)]
    pub(super) fn buffer_len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no byte of a next reply is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    /// Free space to read into, never empty. A full buffer moves its unread bytes to the front
    /// and, if they fill more than half of it, doubles: memory grows with the bytes that arrive
    /// (at most twice as much), never with a length a header only declares. Between replies a
    /// grown buffer shrinks back, so one large entry does not hold memory for good.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
            if self.buf.len() > BUFFER && self.scan.off == 0 {
                self.buf = vec![0; BUFFER];
            }
        }
        if self.end == self.buf.len() {
            let unread = self.end - self.pos;
            self.buf.copy_within(self.pos..self.end, 0);
            self.pos = 0;
            self.end = unread;
            if unread > self.buf.len() / 2 {
                self.buf.resize(self.buf.len() * 2, 0);
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
    /// again: the scan resumes where it stopped). An error leaves the buffer unusable: the
    /// connection must be closed.
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
            if let Some((len, bulk_end)) = s.bulk {
                if self.end - self.pos < bulk_end {
                    return Ok(None);
                }
                let at = self.pos + bulk_end;
                if self.buf[at - 2..at] != *b"\r\n" {
                    return Err(bad_bulk_end(len));
                }
                s.off = bulk_end;
                s.bulk = None;
                s.one_done();
                continue;
            }
            let from = self.pos + s.off;
            let Some((text, used)) = line(&self.buf[from..self.end])? else {
                if self.end - from > MAX_LINE {
                    return Err(invalid(
                        "a reply line without an end (is this a Redis server?)",
                    ));
                }
                return Ok(None);
            };
            s.off += used;
            let Some((&kind, digits)) = text.split_first() else {
                return Err(invalid("empty line in a reply"));
            };
            match kind {
                b'*' => {
                    let n = int(digits)?;
                    // Levels: the reply, a [stream, entries] pair, the entry list.
                    if s.remaining.len() == 3 {
                        self.last_entries = self.last_entries.saturating_add(n.max(0) as usize);
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
                        return Err(too_large(n));
                    }
                    if n < 0 {
                        s.one_done();
                    } else {
                        s.bulk = Some((n, s.off + n as usize + 2));
                    }
                }
                b'+' | b'-' | b':' => s.one_done(),
                other => return Err(not_resp(other)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_declared_length_alone_does_not_grow_the_buffer() {
        let mut fb = FrameBuf::new();
        let header = format!("${}\r\nabc", MAX_BULK);
        let spare = fb.spare();
        spare[..header.len()].copy_from_slice(header.as_bytes());
        fb.filled(header.len());
        assert!(fb.next_frame().expect("no error").is_none());
        let _ = fb.spare();
        assert_eq!(fb.buf.len(), BUFFER);
    }

    #[test]
    fn the_entry_count_comes_from_the_headers() {
        let reply: &[u8] = b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n\
            *2\r\n$3\r\n1-1\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n*2\r\n$3\r\n2-0\r\n*-1\r\n";
        let mut fb = FrameBuf::new();
        for (reply, n) in [(reply, 2), (b"*-1\r\n".as_slice(), 0), (reply, 2)] {
            let spare = fb.spare();
            spare[..reply.len()].copy_from_slice(reply);
            fb.filled(reply.len());
            assert!(fb.next_frame().expect("frame").is_some());
            assert_eq!(fb.last_entries(), n);
        }
    }
}
