//! Whether a stream of a multi-stream consumer is gone: its key deleted, or replaced by a key of
//! another type. Such a stream is dropped from its multi-stream consumer instead of being created
//! again or failing the others.

use super::Consumer;
use crate::error::Error;

impl Consumer {
    /// After a lost group or a fatal error: true when this consumer is one stream of a
    /// multi-stream consumer and its key no longer holds a stream. Asked with `TYPE`, on a cluster
    /// of the slot's owner now, so a key that migrated is not taken for a deleted one. False when
    /// it cannot tell (then the error is handled as for any consumer).
    pub(super) async fn stream_is_gone(&mut self, err: &Error) -> bool {
        if self.cohort.is_none() {
            return false;
        }
        // Recreating a lost group without MKSTREAM found no key: no TYPE needed.
        if let Error::GroupLost { detail, .. } = err {
            if detail.contains("requires the key to exist") {
                return true;
            }
        }
        let stream = self.id.stream.clone();
        let kind = self
            .client
            .retry("TYPE", &stream, |mut c| {
                let stream = &stream;
                async move {
                    redis::cmd("TYPE")
                        .arg(&**stream)
                        .query_async::<String>(&mut c)
                        .await
                }
            })
            .await;
        matches!(kind, Ok(kind) if kind != "stream")
    }
}
