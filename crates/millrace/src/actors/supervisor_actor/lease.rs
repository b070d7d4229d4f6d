//! The name lease: a consumer's (server, stream, group, consumer) held once in this process, so
//! two live consumers never share one name and one pending list.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use crate::error::{Error, Result};
use crate::id::ConsumerId;

/// Consumers running anywhere in this process, by server and id: two live consumers with one name
/// would share one pending list.
static ACTIVE: LazyLock<Mutex<HashSet<(String, ConsumerId)>>> = LazyLock::new(Default::default);

/// Holds a consumer's place in [`ACTIVE`] until dropped.
#[derive(Debug)]
pub(crate) struct NameLease {
    key: (String, ConsumerId),
}

impl NameLease {
    pub(crate) fn take(server: &str, id: &ConsumerId) -> Result<NameLease> {
        let key = (server.to_owned(), id.clone());
        let mut active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
        if !active.insert(key.clone()) {
            return Err(Error::DuplicateConsumer {
                consumer: id.clone(),
            });
        }
        Ok(NameLease { key })
    }
}

impl Drop for NameLease {
    fn drop(&mut self) {
        ACTIVE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}
