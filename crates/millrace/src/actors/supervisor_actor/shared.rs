//! What the supervisor actor and its `Supervisor` handle share: the backend, health, the first
//! failure, the cancellation tree and task tracker, and the multi-stream registry.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::MultiRegistry;
use crate::connection::Backend;
use crate::error::Error;
use crate::health::HealthCell;
use crate::id::ConsumerId;

/// State shared between the supervisor actor and its [`Supervisor`](crate::Supervisor) handle.
#[derive(Debug)]
pub(crate) struct SupervisorShared {
    pub(crate) backend: Arc<Backend>,
    pub(crate) health: Mutex<BTreeMap<ConsumerId, Arc<HealthCell>>>,
    pub(crate) failure: Mutex<Option<Error>>,
    /// The root of the cancellation tree: each consumer incarnation gets a child token.
    pub(crate) cancel: CancellationToken,
    /// Every consume loop the supervisor started, so a shutdown can wait for all of them.
    pub(crate) tasks: TaskTracker,
    /// The multi-stream consumers: their streams, the reads they share and what discovery found.
    pub(crate) multi: Mutex<MultiRegistry>,
}

impl SupervisorShared {
    pub(crate) fn multi(&self) -> MutexGuard<'_, MultiRegistry> {
        self.multi.lock().unwrap_or_else(|p| p.into_inner())
    }
}
