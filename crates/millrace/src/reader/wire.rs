//! The reader thread's connection: a plain socket (TCP or Unix) with a RESP2 reader that turns an
//! `XREADGROUP` reply straight into [`ReadItem`]s, or, for TLS, a blocking redis-rs connection.
//!
//! The plain socket exists for speed: redis-rs parses a reply into a `redis::Value` tree with a
//! parser-combinator library, which costs about as much client CPU as everything else millrace does
//! per entry. This reader makes one pass over the bytes, allocates only the field names and values,
//! and learns that a reply has begun (so the server has executed the read) before it parses it.
//! Shapes other than the expected ones are read as a `redis::Value` and go through the same
//! tolerant parser as every other reply, so an oddity stays confined to its entry.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::Duration;

use redis::{Client, ConnectionAddr, RedisResult, Value};

use crate::entry::{EntryId, RawEntry};
use crate::streams::{reply, ReadItem};

/// Initial read buffer; it grows for entries larger than this.
const BUFFER: usize = 64 * 1024;
/// Deepest nesting accepted in a reply; a stream reply has four levels.
const MAX_DEPTH: usize = 32;
/// Longest bulk string accepted: Redis's own `proto-max-bulk-len` default.
const MAX_BULK: i64 = 512 * 1024 * 1024;
/// Longest wait for the server to close its end after the reader closed its own.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// A reply of at most this many bytes is parsed before the next read is written: it is quick to
/// parse, and handing it over first shortens the latency of a lightly loaded consumer.
const SMALL_REPLY: usize = 2048;
/// Most elements reserved up front for an array, whatever its header claims.
const MAX_RESERVE: usize = 4096;

/// One blocking read connection.
pub(crate) enum Wire {
    /// A socket of our own, read with [`RespReader`].
    Plain(RespReader<Socket>),
    /// A redis-rs connection (TLS), with the reply received but not yet parsed.
    Redis(redis::Connection, Option<Value>),
}

impl Wire {
    /// Connects, authenticates, selects the database of `client`'s settings and asks for the
    /// connection's `CLIENT ID` (`None` without the permission). The handshake waits at most
    /// `command_timeout` for each reply; reads after it wait `read_timeout`.
    pub(crate) fn connect(
        client: &Client,
        connect_timeout: Duration,
        command_timeout: Duration,
        read_timeout: Duration,
    ) -> RedisResult<(Wire, Option<i64>)> {
        let info = client.get_connection_info();
        let socket = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = connect_tcp(host, *port, connect_timeout)?;
                stream.set_nodelay(true)?;
                Some(Socket::Tcp(stream))
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Some(Socket::Unix(UnixStream::connect(path)?)),
            _ => None,
        };
        let mut wire = match socket {
            Some(socket) => {
                socket.set_timeouts(command_timeout, command_timeout)?;
                let mut reader = RespReader::new(socket);
                let settings = info.redis_settings();
                if let Some(password) = settings.password() {
                    let mut auth = redis::cmd("AUTH");
                    if let Some(user) = settings.username() {
                        auth.arg(user);
                    }
                    auth.arg(password);
                    reader.call(&auth.get_packed_command())?;
                }
                if settings.db() != 0 {
                    reader.call(&redis::cmd("SELECT").arg(settings.db()).get_packed_command())?;
                }
                Wire::Plain(reader)
            }
            None => {
                let conn = client.get_connection_with_timeout(connect_timeout)?;
                conn.set_read_timeout(Some(command_timeout))?;
                conn.set_write_timeout(Some(command_timeout))?;
                Wire::Redis(conn, None)
            }
        };
        // The id lets a stop wake a blocked read with CLIENT UNBLOCK; without the permission a
        // stop waits for BLOCK to run out instead. Any other error (say, `max number of clients
        // reached`) fails the connect with the server's words.
        let client_id = match wire.call(&redis::cmd("CLIENT").arg("ID").get_packed_command()) {
            Ok(Value::Int(id)) => Some(id),
            Ok(_) => None,
            Err(e) if e.code() == Some("NOPERM") => None,
            Err(e) => return Err(e),
        };
        match &wire {
            Wire::Plain(r) => r.stream.set_timeouts(read_timeout, command_timeout)?,
            Wire::Redis(conn, _) => conn.set_read_timeout(Some(read_timeout))?,
        }
        Ok((wire, client_id))
    }

    /// Runs one command and returns its reply (used before reads start).
    pub(crate) fn call(&mut self, packed: &[u8]) -> RedisResult<Value> {
        match self {
            Wire::Plain(r) => r.call(packed),
            Wire::Redis(conn, _) => {
                conn.send_packed_command(packed)?;
                match conn.recv_response()? {
                    Value::ServerError(e) => Err(e.into()),
                    v => Ok(v),
                }
            }
        }
    }

    pub(crate) fn send(&mut self, packed: &[u8]) -> RedisResult<()> {
        match self {
            Wire::Plain(r) => Ok(r.stream.write_all(packed)?),
            Wire::Redis(conn, _) => conn.send_packed_command(packed),
        }
    }

    /// Closes the connection and waits (up to the read timeout) until the server has closed its
    /// end, so the server has let go of it when this returns.
    pub(crate) fn close(&mut self) {
        if let Wire::Plain(r) = self {
            r.close();
        }
    }

    /// Waits until the next reply has begun to arrive: the server has executed the command.
    /// Returns whether the reply is small and complete already (quick to parse).
    pub(crate) fn wait_reply(&mut self) -> RedisResult<bool> {
        match self {
            Wire::Plain(r) => {
                r.wait()?;
                Ok(r.buffered_small_reply())
            }
            Wire::Redis(conn, pending) => {
                if pending.is_none() {
                    *pending = Some(conn.recv_response()?);
                }
                Ok(false)
            }
        }
    }

    /// Reads the reply of an `XREADGROUP` on one stream: on a plain socket its bytes, to be parsed
    /// by [`parse_frame`] on the consume loop's side; with TLS, parsed here.
    pub(crate) fn fetch(&mut self) -> RedisResult<Fetched> {
        match self {
            Wire::Plain(r) => {
                let frame = r.frame()?;
                if frame.first() == Some(&b'-') {
                    // An error reply ends the reader: parse it here, so it says which error.
                    return parse_frame(frame).map(Fetched::Items);
                }
                Ok(Fetched::Frame(frame))
            }
            Wire::Redis(conn, pending) => {
                let value = match pending.take() {
                    Some(v) => v,
                    None => conn.recv_response()?,
                };
                match value {
                    Value::ServerError(e) => Err(e.into()),
                    v => Ok(Fetched::Items(reply::parse_read_reply(v))),
                }
            }
        }
    }
}

/// One reply taken off the wire.
pub(crate) enum Fetched {
    /// The bytes of a complete RESP2 reply. Parsing it on the consume loop's side keeps every
    /// per-entry allocation on the runtime's threads: allocated on the reader thread and freed on
    /// another, they would each pin memory in a glibc arena of the reader's own (measured: RSS
    /// 33 MiB instead of 13 MiB with 16 consumers).
    Frame(Vec<u8>),
    /// A reply parsed already (TLS, or an error reply).
    Items(Vec<ReadItem>),
}

/// Parses a complete `XREADGROUP` reply taken off the wire by [`Wire::fetch`].
pub(crate) fn parse_frame(frame: Vec<u8>) -> RedisResult<Vec<ReadItem>> {
    let end = frame.len();
    let mut reader = RespReader {
        stream: Exhausted,
        buf: frame,
        pos: 0,
        end,
    };
    reader.read_items()
}

/// The stream behind a complete frame: nothing more to read.
struct Exhausted;

impl Read for Exhausted {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

impl Write for Exhausted {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a parsed frame is not a connection",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl HalfClose for Exhausted {
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_timeouts(&self, _read: Duration, _write: Duration) -> io::Result<()> {
        Ok(())
    }
}

fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host}:{port} resolves to no address"),
        )
    }))
}

/// A TCP or Unix socket.
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Socket {
    fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
            #[cfg(unix)]
            Socket::Unix(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
        }
    }
}

/// What [`RespReader::close`] needs of its stream.
pub(crate) trait HalfClose {
    /// Closes the writing half: the server reads end-of-file and closes the connection.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Sets the read and write timeouts.
    fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()>;
}

impl HalfClose for Socket {
    fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
        Socket::set_timeouts(self, read, write)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            #[cfg(unix)]
            Socket::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

/// A buffered RESP2 reader over a blocking stream.
pub(crate) struct RespReader<S> {
    stream: S,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

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

impl<S: Read + Write + HalfClose> RespReader<S> {
    pub(crate) fn new(stream: S) -> Self {
        RespReader {
            stream,
            buf: vec![0; BUFFER],
            pos: 0,
            end: 0,
        }
    }

    /// Reads more bytes: at least one, or an error (the peer closing is an error mid-reply).
    fn fill(&mut self) -> io::Result<()> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            } else {
                let len = self.buf.len() * 2;
                self.buf.resize(len, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }

    fn close(&mut self) {
        // Bounded: an unresponsive server must not hold up a stop.
        let _ = self.stream.set_timeouts(CLOSE_WAIT, CLOSE_WAIT);
        if self.stream.shutdown_write().is_ok() {
            let mut sink = [0u8; 512];
            while matches!(self.stream.read(&mut sink), Ok(n) if n > 0) {}
        }
    }

    /// Blocks until at least one byte of the next reply is buffered.
    fn wait(&mut self) -> io::Result<()> {
        if self.pos == self.end && self.buf.len() > BUFFER {
            // A large entry grew the buffer; give the memory back between replies.
            self.buf = vec![0; BUFFER];
            self.pos = 0;
            self.end = 0;
        }
        if self.pos == self.end {
            self.fill()?;
        }
        Ok(())
    }

    /// Whether the buffered bytes are a whole reply, and a small one. Only a guess from the
    /// byte count and the buffer's end: a small reply ends with CRLF and nothing follows it
    /// (the next reply has not been sent yet, as its read is not written yet).
    fn buffered_small_reply(&self) -> bool {
        let n = self.end - self.pos;
        (2..=SMALL_REPLY).contains(&n) && self.buf[self.end - 2..self.end] == *b"\r\n"
    }

    /// Reads one complete value and returns its bytes, without interpreting them beyond the
    /// framing: headers are read, bulk payloads skipped by their length. Resumes where it left
    /// off after every read from the socket, so a large reply costs one pass.
    fn frame(&mut self) -> io::Result<Vec<u8>> {
        // Offsets are relative to `self.pos`, which `fill` may move.
        let mut off = 0usize;
        // Values still to read at each nesting level; the outermost is the reply itself.
        let mut remaining: Vec<i64> = vec![1];
        loop {
            while remaining.last() == Some(&0) {
                remaining.pop();
                match remaining.last_mut() {
                    Some(parent) => *parent -= 1,
                    None => {
                        let frame = self.buf[self.pos..self.pos + off].to_vec();
                        self.pos += off;
                        return Ok(frame);
                    }
                }
            }
            let nl = loop {
                let from = self.pos + off;
                if let Some(i) = self.buf[from..self.end].iter().position(|&b| b == b'\n') {
                    break from + i;
                }
                self.fill()?;
            };
            let line_start = self.pos + off;
            let line_end = if nl > line_start && self.buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            off = nl + 1 - self.pos;
            let Some((&kind, digits)) = self.buf[line_start..line_end].split_first() else {
                return Err(invalid("empty line in a reply"));
            };
            let top = remaining.len() - 1;
            match kind {
                b'*' => {
                    let n = int(digits)?;
                    if n <= 0 {
                        remaining[top] -= 1;
                    } else if remaining.len() > MAX_DEPTH {
                        return Err(invalid("reply nested too deeply"));
                    } else {
                        remaining.push(n);
                    }
                }
                b'$' => {
                    let n = int(digits)?;
                    if n > MAX_BULK {
                        return Err(invalid(format!("a bulk string of {n} bytes")));
                    }
                    if n >= 0 {
                        let need = off + n as usize + 2;
                        while self.end - self.pos < need {
                            if self.buf.len() - self.pos < need {
                                self.buf.copy_within(self.pos..self.end, 0);
                                self.end -= self.pos;
                                self.pos = 0;
                                if self.buf.len() < need {
                                    self.buf.resize(need.next_power_of_two(), 0);
                                }
                            }
                            self.fill()?;
                        }
                        off = need;
                    }
                    remaining[top] -= 1;
                }
                b'+' | b'-' | b':' => remaining[top] -= 1,
                other => {
                    return Err(invalid(format!(
                        "unexpected RESP type byte {other:#04x} (is this a Redis server speaking RESP2?)"
                    )))
                }
            }
        }
    }

    /// The next line without its CRLF, as a range of `buf`.
    fn line(&mut self) -> io::Result<(usize, usize)> {
        let mut from = self.pos;
        loop {
            if let Some(i) = self.buf[from..self.end].iter().position(|&b| b == b'\n') {
                let nl = from + i;
                let start = self.pos;
                self.pos = nl + 1;
                let stop = if nl > start && self.buf[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                return Ok((start, stop));
            }
            let scanned = self.end - self.pos;
            self.fill()?;
            // `fill` may have moved the unread bytes to the front of the buffer.
            from = self.pos + scanned;
        }
    }

    fn header(&mut self) -> io::Result<Header> {
        let (start, stop) = self.line()?;
        let Some((&kind, rest)) = self.buf[start..stop].split_first() else {
            return Err(invalid("empty line in a reply"));
        };
        Ok(match kind {
            b'*' => Header::Array(int(rest)?),
            b'$' => match int(rest)? {
                n if n > MAX_BULK => return Err(invalid(format!("a bulk string of {n} bytes"))),
                n => Header::Bulk(n),
            },
            b':' => Header::Int(int(rest)?),
            b'+' => Header::Simple(rest.to_vec()),
            b'-' => Header::Error(self.buf[start..stop].to_vec()),
            other => {
                return Err(invalid(format!(
                "unexpected RESP type byte {other:#04x} (is this a Redis server speaking RESP2?)"
            )))
            }
        })
    }

    /// The `len` bytes of a bulk string and its CRLF.
    fn body(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let need = len + 2;
        while self.end - self.pos < need {
            if self.buf.len() - self.pos < need {
                // Make room: move the unread bytes to the front, grow if still too small.
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
                if self.buf.len() < need {
                    self.buf.resize(need.next_power_of_two(), 0);
                }
            }
            self.fill()?;
        }
        let out = self.buf[self.pos..self.pos + len].to_vec();
        self.pos += need;
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

    /// Runs one command and reads its reply.
    fn call(&mut self, packed: &[u8]) -> RedisResult<Value> {
        self.stream.write_all(packed)?;
        let h = self.header()?;
        match self.finish(h, 0)? {
            Value::ServerError(e) => Err(e.into()),
            v => Ok(v),
        }
    }

    /// Reads an `XREADGROUP` reply: `[[stream, [[id, [f, v, …]], …]]]`, or nil after BLOCK ran out.
    fn read_items(&mut self) -> RedisResult<Vec<ReadItem>> {
        let streams = match self.header()? {
            Header::Array(n) if n >= 0 => n,
            Header::Error(line) => match server_error(&line) {
                Value::ServerError(e) => return Err(e.into()),
                _ => return Err(invalid("unreadable error reply").into()),
            },
            h => return Ok(reply::parse_read_reply(self.finish(h, 0)?)),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that returns its bytes a few at a time, to exercise every buffer boundary.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    impl HalfClose for Trickle {
        fn shutdown_write(&self) -> io::Result<()> {
            Ok(())
        }
        fn set_timeouts(&self, _read: Duration, _write: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Parses `data` both ways: directly off the stream, and framed first, then parsed (as the
    /// reader thread and the consume loop do); both must agree.
    fn read(data: &[u8], step: usize) -> RedisResult<Vec<ReadItem>> {
        let trickle = || Trickle {
            data: data.to_vec(),
            at: 0,
            step,
        };
        let direct = RespReader::new(trickle()).read_items();
        let framed = RespReader::new(trickle())
            .frame()
            .map_err(redis::RedisError::from)
            .and_then(parse_frame);
        match (&direct, &framed) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "framed parse differs"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("direct {a:?} but framed {b:?}"),
        }
        direct
    }

    #[test]
    fn a_frame_ends_exactly_where_its_reply_does() {
        let mut two = REPLY.to_vec();
        two.extend_from_slice(b"*-1\r\n");
        let mut r = RespReader::new(Trickle {
            data: two,
            at: 0,
            step: 5,
        });
        assert_eq!(r.frame().expect("first"), REPLY);
        assert_eq!(r.frame().expect("second"), b"*-1\r\n");
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
    fn nil_reply_is_empty_and_errors_keep_their_code() {
        assert_eq!(read(b"*-1\r\n", 1).expect("nil"), vec![]);
        let err = read(b"-NOGROUP No such key 's' or consumer group 'g'\r\n", 5)
            .expect_err("server error");
        assert_eq!(err.code(), Some("NOGROUP"));
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
        let items = read(&reply, 10_000).expect("parses");
        match &items[0] {
            ReadItem::Entry(e) => assert_eq!(e.fields[0].1, big),
            other => panic!("unexpected {other:?}"),
        }
        let cut = &reply[..reply.len() - 100];
        let err = read(cut, 10_000).expect_err("cut reply");
        assert!(err.is_io_error(), "{err:?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        assert!(read(b"hello\r\n", 3).is_err());
        assert!(read(b"*1x\r\n", 3).is_err());
        // Absurd lengths fail (or run out of input) instead of allocating them.
        assert!(read(b"*1\r\n*2\r\n$999999999999\r\n", 3).is_err());
        assert!(read(b"*999999999999999\r\n", 3).is_err());
        assert!(read(
            b"*1\r\n*2\r\n$1\r\ns\r\n*99999999999\r\n*2\r\n$3\r\n1-1\r\n*999999999999\r\n",
            3
        )
        .is_err());
    }
}
