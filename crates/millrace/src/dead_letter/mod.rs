//! Dead letters: the entries millrace moved out of a stream, and everything done with them.
//!
//! A consumer moves an entry it cannot handle (poison, undecodable, or a handler's explicit request)
//! to the stream's dead-letter stream, `<stream>:dlq` by default, in one atomic step: the copy is
//! added there and the entry acknowledged. [`DeadLetterStream`] reads them back, replays them to
//! their source stream and purges them; the `millrace dlq` command is a thin layer over it.
//!
//! A dead-letter entry starts with [`META_FIELDS`] in this order, then the original fields in their
//! original order:
//!
//! | field | value |
//! |---|---|
//! | `millrace.source_stream` | the stream the entry came from |
//! | `millrace.source_id` | its id there |
//! | `millrace.group` | the consumer group |
//! | `millrace.consumer` | the consumer that moved it |
//! | `millrace.deliveries` | Redis's delivery count at the move (empty when unknown) |
//! | `millrace.reason` | why it was moved |
//! | `millrace.dead_lettered_at_ms` | when, in Unix milliseconds |
//!
//! Moves in both directions (dead-lettering and replaying) are atomic Lua scripts for entries of up
//! to 1,000 fields. Larger entries (Lua's `unpack` stops near 8,000 values) move in steps: the
//! copy first, then the acknowledgement or deletion of the original, so a crash between the two
//! leaves the entry in both streams, never in neither.
//!
//! ```no_run
//! use millrace::dead_letter::{DeadLetterStream, Replay, Selection};
//!
//! # async fn run() -> redis::RedisResult<()> {
//! let client = redis::Client::open("redis://127.0.0.1:6379")?;
//! let mut conn = client.get_multiplexed_async_connection().await?;
//! let dlq = DeadLetterStream::of("orders");
//!
//! // The oldest 20 dead letters of `orders`, with why they were moved.
//! for letter in dlq.list(&mut conn, 20).await?.letters {
//!     if let Some(dead) = &letter.dead_letter {
//!         println!("{} from {:?}: {}", letter.entry.id, dead.source_id, dead.reason);
//!     }
//! }
//!
//! // Send the ones that timed out back to `orders`, where the groups read them again.
//! let selection = Selection::all().reason_contains("timeout");
//! for letter in dlq.select(&mut conn, &selection).await?.letters {
//!     match dlq.replay(&mut conn, &letter).await? {
//!         Replay::Replayed { new_id } => println!("{} is back as {new_id}", letter.entry.id),
//!         Replay::Skipped(why) => println!("{} skipped: {why}", letter.entry.id),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

mod letter;
mod mover;
mod replay;
mod stream;
mod transfer;

pub use letter::{DeadLetter, Letter, META_FIELDS};
pub(crate) use mover::{check_permissions, move_entry, now_ms, DeadLetterInfo};
pub use replay::{Replay, Skip};
pub use stream::{is_dead_letter_stream, DeadLetterStream, Listing, Selected, Selection};
pub(crate) use transfer::Marker;

/// A name for `stream` that keeps it and its dead-letter stream (`<stream>:dlq`) in one slot of a
/// Redis Cluster, so dead letters move atomically: a name with a hash tag already is kept; else
/// the first `:`-separated part with a digit in it (the tenant's id, usually) goes in braces; else
/// the whole name. `tenant:{42}:events` still matches the pattern `tenant:*:events`, where
/// `{tenant:42:events}` would not.
///
/// ```
/// use millrace::dead_letter::colocated_name;
/// assert_eq!(colocated_name("tenant:42:events"), "tenant:{42}:events");
/// assert_eq!(colocated_name("orders:new:3"), "orders:new:{3}");
/// assert_eq!(colocated_name("orders"), "{orders}");
/// assert_eq!(colocated_name("tenant:{42}:events"), "tenant:{42}:events");
/// ```
pub fn colocated_name(stream: &str) -> String {
    let tagged = stream
        .find('{')
        .is_some_and(|open| stream[open + 1..].find('}').is_some_and(|close| close > 0));
    if tagged {
        return stream.to_owned();
    }
    let parts: Vec<&str> = stream.split(':').collect();
    match parts
        .iter()
        .position(|p| p.bytes().any(|b| b.is_ascii_digit()))
    {
        Some(i) if parts.len() > 1 => parts
            .iter()
            .enumerate()
            .map(|(j, p)| {
                if j == i {
                    format!("{{{p}}}")
                } else {
                    (*p).to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(":"),
        _ => format!("{{{stream}}}"),
    }
}
