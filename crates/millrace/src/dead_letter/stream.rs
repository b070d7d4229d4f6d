//! A source stream's dead-letter stream: listing, selecting and purging its dead letters.

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use super::letter::Letter;
use crate::entry::EntryId;
use crate::streams::{parse_entries, ReadItem};

/// Entries per `XRANGE` page and ids per `XDEL` call.
const PAGE: usize = 500;

/// The dead-letter stream of one source stream: `<source>:dlq` unless named otherwise.
///
/// Several source streams may share one dead-letter stream: [`list`](Self::list) and
/// [`select`](Self::select) keep only the dead letters whose recorded source is this one, and count
/// the others. Keys are bytes, so streams whose names are not UTF-8 can be addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterStream {
    source: Vec<u8>,
    key: Vec<u8>,
}

/// What [`DeadLetterStream::list`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listing {
    /// Oldest first: the dead letters of this source, and entries that are not dead letters at all
    /// (they need someone's attention), up to the limit.
    pub letters: Vec<Letter>,
    /// Dead letters of other source streams that were passed over.
    pub other_sources: usize,
    /// True when the limit was reached (there may be more).
    pub truncated: bool,
}

/// Which dead letters [`DeadLetterStream::select`] picks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    ids: Vec<EntryId>,
    reason_contains: Option<String>,
}

impl Selection {
    /// Every dead letter of the source stream.
    pub fn all() -> Selection {
        Selection::default()
    }

    /// The entries with these ids in the dead-letter stream, whatever their source.
    pub fn ids(ids: impl IntoIterator<Item = EntryId>) -> Selection {
        let mut ids: Vec<EntryId> = ids.into_iter().collect();
        ids.sort();
        ids.dedup();
        Selection {
            ids,
            reason_contains: None,
        }
    }

    /// Only dead letters whose reason contains `text`.
    pub fn reason_contains(mut self, text: impl Into<String>) -> Selection {
        self.reason_contains = Some(text.into());
        self
    }

    fn accepts(&self, letter: &Letter) -> bool {
        self.reason_contains
            .as_deref()
            .is_none_or(|text| letter.reason_contains(text))
    }
}

/// What [`DeadLetterStream::select`] picked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Selected {
    /// The selected entries, oldest first.
    pub letters: Vec<Letter>,
    /// Entries left out because they belong to another source stream or are not dead letters
    /// (only counted when selecting all).
    pub left_out: usize,
    /// Ids asked for that are not in the dead-letter stream.
    pub missing: Vec<EntryId>,
}

impl DeadLetterStream {
    /// The dead-letter stream of `source`: `<source>:dlq`, millrace's default.
    ///
    /// ```
    /// use millrace::dead_letter::DeadLetterStream;
    ///
    /// assert_eq!(DeadLetterStream::of("orders").key(), b"orders:dlq");
    /// ```
    pub fn of(source: impl AsRef<[u8]>) -> DeadLetterStream {
        let source = source.as_ref().to_vec();
        let mut key = source.clone();
        key.extend_from_slice(b":dlq");
        DeadLetterStream { source, key }
    }

    /// The dead letters of `source` kept in the stream `key` (set with
    /// [`ConsumerOptions::dead_letter_stream`](crate::ConsumerOptions::dead_letter_stream)).
    pub fn with_key(source: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> DeadLetterStream {
        DeadLetterStream {
            source: source.as_ref().to_vec(),
            key: key.as_ref().to_vec(),
        }
    }

    /// The source stream.
    pub fn source(&self) -> &[u8] {
        &self.source
    }

    /// The dead-letter stream's key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The oldest `limit` dead letters of the source stream, and the entries that are not dead
    /// letters; dead letters of other sources are counted, not returned.
    pub async fn list<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        limit: usize,
    ) -> RedisResult<Listing> {
        let mut listing = Listing::default();
        if limit == 0 {
            return Ok(listing);
        }
        self.scan(conn, |letter| {
            if letter.dead_letter.is_some() && !letter.is_from(&self.source) {
                listing.other_sources += 1;
                return true;
            }
            listing.letters.push(letter);
            listing.truncated = listing.letters.len() >= limit;
            !listing.truncated
        })
        .await?;
        Ok(listing)
    }

    /// One entry of the dead-letter stream by id, whatever its source; `None` when there is none.
    pub async fn get<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        id: EntryId,
    ) -> RedisResult<Option<Letter>> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(id)
            .arg(id)
            .query_async(conn)
            .await?;
        Ok(parse_entries(reply)
            .into_iter()
            .find_map(|item| match item {
                ReadItem::Entry(e) if e.id == id => Some(Letter::new(e)),
                _ => None,
            }))
    }

    /// The entries a replay or purge acts on: the named ids (reporting the missing ones), or every
    /// dead letter of the source stream; in both cases narrowed by the reason filter.
    pub async fn select<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        selection: &Selection,
    ) -> RedisResult<Selected> {
        let mut selected = Selected::default();
        if selection.ids.is_empty() {
            self.scan(conn, |letter| {
                if !letter.is_from(&self.source) {
                    selected.left_out += 1;
                } else if selection.accepts(&letter) {
                    selected.letters.push(letter);
                }
                true
            })
            .await?;
            return Ok(selected);
        }
        for &id in &selection.ids {
            match self.get(conn, id).await? {
                Some(letter) if selection.accepts(&letter) => selected.letters.push(letter),
                Some(_) => {}
                None => selected.missing.push(id),
            }
        }
        Ok(selected)
    }

    /// Deletes these entries from the dead-letter stream for good; returns how many were there.
    pub async fn purge<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        ids: &[EntryId],
    ) -> RedisResult<u64> {
        let mut deleted = 0;
        for chunk in ids.chunks(PAGE) {
            let n: u64 = redis::cmd("XDEL")
                .arg(&self.key)
                .arg(chunk)
                .query_async(conn)
                .await?;
            deleted += n;
        }
        Ok(deleted)
    }

    /// Pages through the dead-letter stream oldest first, handing every entry to `visit` until it
    /// returns false. Deleted and unreadable entries are skipped.
    async fn scan<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        mut visit: impl FnMut(Letter) -> bool,
    ) -> RedisResult<()> {
        let mut start = "-".to_owned();
        loop {
            let reply: Value = redis::cmd("XRANGE")
                .arg(&self.key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(conn)
                .await?;
            let items = parse_entries(reply);
            let n = items.len();
            for item in items {
                if let Some(id) = item.id() {
                    start = format!("({id}");
                }
                if let ReadItem::Entry(e) = item {
                    if !visit(Letter::new(e)) {
                        return Ok(());
                    }
                }
            }
            if n < PAGE {
                return Ok(());
            }
        }
    }
}

/// Whether `key` looks like a dead-letter stream: `Some(true)` when its oldest entry is a millrace
/// dead letter, `Some(false)` when it is something else, `None` when the stream is empty or absent.
/// Useful to catch a dead-letter stream given where its source was meant.
pub async fn is_dead_letter_stream<C: ConnectionLike + Send>(
    conn: &mut C,
    key: impl AsRef<[u8]>,
) -> RedisResult<Option<bool>> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(key.as_ref())
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(parse_entries(reply)
        .into_iter()
        .find_map(|item| match item {
            ReadItem::Entry(e) => Some(Letter::new(e).dead_letter.is_some()),
            _ => None,
        }))
}
