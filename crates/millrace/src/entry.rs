//! Stream entries as millrace hands them to handlers: ids, raw field pairs, decoded messages and batches.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A Redis stream entry id: milliseconds and a sequence number.
///
/// Ids compare as `(milliseconds, sequence)` numbers, never as strings
/// (`"9-0"` sorts after `"10-0"` as text, but `9-0 < 10-0` here).
///
/// ```
/// use millrace::EntryId;
/// let a: EntryId = "9-0".parse().unwrap();
/// let b: EntryId = "10-0".parse().unwrap();
/// assert!(a < b);
/// assert_eq!(b.to_string(), "10-0");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EntryId {
    /// Milliseconds part (the server time the entry was added, for `*` ids).
    pub ms: u64,
    /// Sequence number within the millisecond.
    pub seq: u64,
}

impl EntryId {
    /// The smallest id, `0-0`.
    pub const MIN: EntryId = EntryId { ms: 0, seq: 0 };

    /// Builds an id from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        EntryId { ms, seq }
    }

    /// Parses an id from the bytes Redis sends (`b"1700000000000-3"`).
    pub fn from_bytes(bytes: &[u8]) -> Option<EntryId> {
        fn num(b: &[u8]) -> Option<u64> {
            if b.is_empty() {
                return None;
            }
            let mut n: u64 = 0;
            for &c in b {
                if !c.is_ascii_digit() {
                    return None;
                }
                n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            }
            Some(n)
        }
        match bytes.iter().position(|&c| c == b'-') {
            Some(i) => Some(EntryId {
                ms: num(&bytes[..i])?,
                seq: num(&bytes[i + 1..])?,
            }),
            None => Some(EntryId {
                ms: num(bytes)?,
                seq: 0,
            }),
        }
    }

    /// The wall-clock time the id encodes, as milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.ms
    }
}

impl Ord for EntryId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ms, self.seq).cmp(&(other.ms, other.seq))
    }
}

impl PartialOrd for EntryId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The text was not a stream entry id of the form `<ms>-<seq>` (or `<ms>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a stream entry id (expected `<milliseconds>-<sequence>`, e.g. `1700000000000-0`)"
)]
pub struct ParseEntryIdError(pub String);

impl FromStr for EntryId {
    type Err = ParseEntryIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseEntryIdError(s.to_owned());
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (s, "0"),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(bad());
        }
        Ok(EntryId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl redis::ToRedisArgs for EntryId {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        fn put(buf: &mut [u8; 41], mut at: usize, mut n: u64) -> usize {
            loop {
                at -= 1;
                buf[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    return at;
                }
            }
        }
        let mut buf = [0u8; 41];
        let mut at = put(&mut buf, 41, self.seq) - 1;
        buf[at] = b'-';
        at = put(&mut buf, at, self.ms);
        out.write_arg(&buf[at..]);
    }
}

impl redis::ToSingleRedisArg for EntryId {}

/// One raw entry with its delivery count, as a read or a claim delivered it, ready to decode.
pub(crate) type DeliveredEntry = (RawEntry, Option<u64>);

/// A stream entry exactly as stored: its id and its field/value pairs as bytes,
/// in the order they were added, duplicates kept.
///
/// Use `RawEntry` as a handler's message type to decode entries yourself.
///
/// ```
/// use millrace::{EntryId, RawEntry};
/// let e = RawEntry::new(EntryId::new(1, 0), vec![(b"f".to_vec(), b"a".to_vec()), (b"f".to_vec(), b"b".to_vec())]);
/// assert_eq!(e.get("f"), Some(&b"a"[..]));
/// assert_eq!(e.get_all("f").count(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// The entry id.
    pub id: EntryId,
    /// Field/value pairs in stream order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawEntry {
    /// Builds a raw entry.
    pub fn new(id: EntryId, fields: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        RawEntry { id, fields }
    }

    /// The first value of `field`, if present.
    pub fn get(&self, field: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k.as_slice() == field.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of `field`, in order.
    pub fn get_all<'a>(&'a self, field: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k.as_slice() == field.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `field` as UTF-8 text, if present and valid.
    pub fn get_str(&self, field: &str) -> Option<&str> {
        self.get(field).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Where a batch's entries came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// New entries read with `XREADGROUP ... >`.
    New,
    /// This consumer's own pending entries, replayed with `XREADGROUP ... 0` after a (re)start or read error.
    Replay,
    /// Entries taken over from idle consumers with `XAUTOCLAIM`.
    Claimed,
    /// This consumer's own entries coming back after a retry delay
    /// ([`HandlerResult::RetryAfter`](crate::HandlerResult::RetryAfter),
    /// [`Batch::retry_after`], [`RetryBackoff`](crate::RetryBackoff)).
    Retried,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::New => "new",
            Source::Replay => "replay",
            Source::Claimed => "claimed",
            Source::Retried => "retried",
        })
    }
}

/// One decoded entry of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<M> {
    /// The entry id; return it in [`HandlerResult::Partial`](crate::HandlerResult::Partial) to ack just this entry.
    pub id: EntryId,
    /// How many times Redis has delivered the entry, this delivery included, when known.
    pub deliveries: Option<u64>,
    /// The decoded message.
    pub message: M,
}

/// The stream, group and consumer a batch was read for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchMeta {
    /// Stream key.
    pub stream: Arc<str>,
    /// Consumer group name.
    pub group: Arc<str>,
    /// Consumer name within the group.
    pub consumer: Arc<str>,
}

impl fmt::Display for BatchMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream `{}`, group `{}`, consumer `{}`",
            self.stream, self.group, self.consumer
        )
    }
}

/// A batch of decoded entries handed to a [`Handler`](crate::Handler), with where it came from.
#[derive(Debug, Clone)]
pub struct Batch<M> {
    /// Stream, group and consumer.
    pub meta: BatchMeta,
    /// How the entries were fetched.
    pub source: Source,
    /// The entries, in stream order.
    pub entries: Vec<Entry<M>>,
    pub(crate) dead_letters: DeadLetterRequests,
    pub(crate) retries: RetryRequests,
}

/// Entries a handler asked to have back after a delay, shared between the batch and the consume
/// loop.
#[derive(Debug, Clone, Default)]
pub(crate) struct RetryRequests(Arc<std::sync::Mutex<Vec<(EntryId, std::time::Duration)>>>);

impl RetryRequests {
    pub(crate) fn take(&self) -> Vec<(EntryId, std::time::Duration)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Entries a handler asked to dead-letter, shared between the batch and the consume loop.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeadLetterRequests(Arc<std::sync::Mutex<Vec<(EntryId, String)>>>);

impl DeadLetterRequests {
    pub(crate) fn take(&self) -> Vec<(EntryId, String)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl<M> Batch<M> {
    /// Builds a batch, for testing handlers without Redis.
    ///
    /// ```
    /// use millrace::{Batch, BatchMeta, Entry, EntryId, Source};
    /// let meta = BatchMeta { stream: "s".into(), group: "g".into(), consumer: "c".into() };
    /// let batch = Batch::new(meta, Source::New, vec![Entry { id: EntryId::new(1, 0), deliveries: Some(1), message: 42 }]);
    /// assert_eq!(batch.len(), 1);
    /// ```
    pub fn new(meta: BatchMeta, source: Source, entries: Vec<Entry<M>>) -> Self {
        Batch {
            meta,
            source,
            entries,
            dead_letters: DeadLetterRequests::default(),
            retries: RetryRequests::default(),
        }
    }

    /// Leaves this entry pending and has it come back after `delay` (counted from when the handler
    /// returns), whatever the handler returns: for an entry that may succeed later (a rate-limited
    /// or missing downstream). Like [`HandlerResult::RetryAfter`](crate::HandlerResult::RetryAfter)
    /// for one entry; the rest of the batch follows the result. The entry stays pending in Redis
    /// meanwhile and counts a delivery when it comes back. A delay above `claim_min_idle` is
    /// shortened to it (with a warning). Ids not in the batch are ignored with a warning; a
    /// dead-letter request for the same entry wins.
    ///
    /// ```
    /// use std::time::Duration;
    /// use millrace::{Batch, HandlerResult, RawEntry};
    /// async fn handle(batch: Batch<RawEntry>) -> HandlerResult {
    ///     for e in &batch {
    ///         if e.message.get_str("region") == Some("eu") {
    ///             batch.retry_after(e.id, Duration::from_secs(2)); // the EU service is throttled
    ///         }
    ///     }
    ///     HandlerResult::Ok // acknowledges the others
    /// }
    /// ```
    pub fn retry_after(&self, id: EntryId, delay: std::time::Duration) {
        self.retries
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, delay));
    }

    /// Moves this entry to the dead-letter stream with `reason` once the handler returns, whatever
    /// it returns: for entries that will never succeed (invalid content, a permanent downstream
    /// refusal). The move is atomic (the entry is acknowledged by it) and is recorded with the
    /// entry's original fields. Ids not in the batch are ignored with a warning.
    ///
    /// ```
    /// use millrace::{Batch, HandlerResult, RawEntry};
    /// async fn handle(batch: Batch<RawEntry>) -> HandlerResult {
    ///     for e in &batch {
    ///         if e.message.get("price").is_none() {
    ///             batch.dead_letter(e.id, "no price: cannot be billed");
    ///         }
    ///     }
    ///     HandlerResult::Ok
    /// }
    /// ```
    pub fn dead_letter(&self, id: EntryId, reason: impl Into<String>) {
        self.dead_letters
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, reason.into()));
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the batch holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ids of all entries, in order.
    pub fn ids(&self) -> Vec<EntryId> {
        self.entries.iter().map(|e| e.id).collect()
    }

    /// Iterates over the entries.
    pub fn iter(&self) -> std::slice::Iter<'_, Entry<M>> {
        self.entries.iter()
    }
}

impl<M> IntoIterator for Batch<M> {
    type Item = Entry<M>;
    type IntoIter = std::vec::IntoIter<Entry<M>>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, M> IntoIterator for &'a Batch<M> {
    type Item = &'a Entry<M>;
    type IntoIter = std::slice::Iter<'a, Entry<M>>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_numerically() {
        let ids: Vec<EntryId> = ["10-0", "9-5", "9-10", "0-1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(
            sorted.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            vec!["0-1", "9-5", "9-10", "10-0"]
        );
    }

    #[test]
    fn bad_ids_are_rejected() {
        for bad in [
            "",
            "-",
            "a-1",
            "1-",
            "1-2-3",
            " 1-2",
            "18446744073709551616-0",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad}");
        }
        assert_eq!("5".parse::<EntryId>().unwrap(), EntryId::new(5, 0));
    }
}
