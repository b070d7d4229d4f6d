//! Keyed concurrency: the key function of [`ConsumerOptions::key_by`]. How a batch is split by key
//! and its sub-batches run is in `consumer/keyed.rs`.
//!
//! [`ConsumerOptions::key_by`]: crate::ConsumerOptions::key_by

use std::fmt;
use std::sync::Arc;

use crate::entry::RawEntry;

/// A function giving an entry's key for keyed concurrency (see
/// [`ConsumerOptions::key_concurrency`](crate::ConsumerOptions::key_concurrency)). Entries with the
/// same key are handled one sub-batch after another, in stream order; `None` is a key of its own
/// (the entries without a key are handled in order among themselves). A panic inside it counts as a
/// handler panic for that entry.
///
/// ```
/// use millrace::{ConsumerSpec, KeyFn, RawEntry};
///
/// let spec = ConsumerSpec::new("orders", "g", "c")
///     .key_concurrency(32)
///     .key_by(KeyFn::new(|e: &RawEntry| e.get("account").map(<[u8]>::to_vec)));
/// # let _ = spec;
/// ```
#[derive(Clone)]
pub struct KeyFn(Arc<KeyOf>);

/// What a key function is.
type KeyOf = dyn Fn(&RawEntry) -> Option<Vec<u8>> + Send + Sync;

impl KeyFn {
    /// A key function.
    pub fn new(f: impl Fn(&RawEntry) -> Option<Vec<u8>> + Send + Sync + 'static) -> Self {
        KeyFn(Arc::new(f))
    }

    pub(crate) fn key(&self, entry: &RawEntry) -> Option<Vec<u8>> {
        (self.0)(entry)
    }
}

impl fmt::Debug for KeyFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

/// Two key functions are equal when they are the same function (one `KeyFn` and its clones).
impl PartialEq for KeyFn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
