//! RESP2 without I/O, and without any notion of when to read: [`FrameBuf`] collects a socket's
//! bytes and finds where each complete reply ends (headers read, payloads skipped by length,
//! resumable across reads); [`parse_read_reply`] and [`parse_value`] turn one complete reply into
//! stream entries or a `redis::Value`. The reader (`crate::reader`) decides what to send and when.
//!
//! Why not redis-rs's parser: it builds a `redis::Value` tree with a parser-combinator library,
//! which costs about as much client CPU as everything else millrace does per entry. Why not the
//! `redis-protocol` crate: measured on the same replies, the reader's path on it costs 25 to 30%
//! more (`docs/decisions/0005-own-resp-parser.md`). This parser makes one pass and allocates only
//! the field names and values. Shapes other than the expected
//! ones are read as a `redis::Value` and go through the same tolerant parser as every other reply,
//! so an oddity stays confined to its entry.
//!
//! Strictness: every line and every bulk payload must end in CRLF. A bare LF or any other
//! terminator means the connection is out of step with the server, and is an error rather than
//! a guess.
//!
//! Limits, so hostile or corrupt input cannot make the reader allocate without bound: nesting
//! ([`MAX_DEPTH`]), one bulk string ([`MAX_BULK`], Redis's own `proto-max-bulk-len`), one line
//! ([`MAX_LINE`]), and what an array header may reserve up front ([`MAX_RESERVE`]). The read
//! buffer only grows as bytes arrive, never to a length a header merely declares.

use std::io;

mod frame;
mod parse;
#[cfg(test)]
mod proptests;

pub(crate) use frame::FrameBuf;
pub(crate) use parse::{parse_read_reply, parse_stream_entries, parse_value, split_read_reply};

/// Deepest nesting accepted in a reply; a stream reply has four levels.
pub(crate) const MAX_DEPTH: usize = 32;
/// Longest bulk string accepted: Redis's own `proto-max-bulk-len` default.
pub(crate) const MAX_BULK: i64 = 512 * 1024 * 1024;
/// Longest header line accepted (a length or a short status text); more without a line end is
/// not RESP, and reading on would grow the buffer without bound.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// Most elements reserved up front for an array, whatever its header claims.
pub(crate) const MAX_RESERVE: usize = 4096;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn bare_lf() -> io::Error {
    invalid("a reply line ends without CR before its LF (the connection is out of step with the server)")
}

fn bad_bulk_end(len: i64) -> io::Error {
    invalid(format!(
        "a bulk string of {len} bytes is not followed by CRLF (the connection is out of step with the server)"
    ))
}

fn too_large(len: i64) -> io::Error {
    invalid(format!(
        "a bulk string of {len} bytes, over the {MAX_BULK}-byte limit"
    ))
}

fn not_resp(byte: u8) -> io::Error {
    invalid(format!(
        "unexpected RESP type byte {byte:#04x} (is this a Redis server speaking RESP2?)"
    ))
}

/// The integer of a length or `:` line: an optional `-` and the digits of an `i64`.
fn int(digits: &[u8]) -> io::Result<i64> {
    let bad = || invalid("bad length or integer in a reply");
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(bad());
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        let d = i64::from(d - b'0');
        // Accumulated with the sign, so `i64::MIN` fits.
        n = n
            .checked_mul(10)
            .and_then(|n| {
                if neg {
                    n.checked_sub(d)
                } else {
                    n.checked_add(d)
                }
            })
            .ok_or_else(bad)?;
    }
    Ok(n)
}

/// The line of `buf` before its CRLF, and the length consumed with the CRLF; `Ok(None)` when no
/// LF is in `buf` yet.
fn line(buf: &[u8]) -> io::Result<Option<(&[u8], usize)>> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    match nl.checked_sub(1).map(|cr| (cr, buf[cr])) {
        Some((cr, b'\r')) => Ok(Some((&buf[..cr], nl + 1))),
        _ => Err(bare_lf()),
    }
}
