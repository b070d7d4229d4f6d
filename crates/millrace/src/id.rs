//! The identity of one consumer: its (stream, group, consumer) triple, named in every error, log
//! span and metric label.

use std::fmt;
use std::sync::Arc;

use crate::entry::BatchMeta;

/// Names one consumer: a (stream, group, consumer) triple.
///
/// ```
/// let id = millrace::ConsumerId::new("orders", "processors", "proc-1");
/// assert_eq!(id.to_string(), "stream `orders`, group `processors`, consumer `proc-1`");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerId {
    /// Stream key.
    pub stream: Arc<str>,
    /// Consumer group name.
    pub group: Arc<str>,
    /// Consumer name within the group.
    pub consumer: Arc<str>,
}

impl ConsumerId {
    /// Builds an id.
    pub fn new(
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        ConsumerId {
            stream: Arc::from(stream.into()),
            group: Arc::from(group.into()),
            consumer: Arc::from(consumer.into()),
        }
    }

    pub(crate) fn meta(&self) -> BatchMeta {
        BatchMeta {
            stream: self.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
        }
    }
}

impl fmt::Display for ConsumerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream `{}`, group `{}`, consumer `{}`",
            self.stream, self.group, self.consumer
        )
    }
}
