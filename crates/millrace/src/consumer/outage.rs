//! Outages, counted per server: when reads from one server (or cluster node) stop because the
//! connection was lost (a failover, `CLIENT KILL`, a reset, a restart), one WARN says so for all of
//! its streams, and one line says when they read again and how many streams were affected, instead
//! of a line per stream.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use tracing::{info, warn};

use crate::error::Error;
use crate::id::ConsumerId;

/// One server's outage: the streams not reading from it now, and how many were affected.
struct Outage {
    since: Instant,
    waiting: usize,
    affected: usize,
}

/// Outages by server address, shared by every consumer in the process (so two supervisors reading
/// from one server share its lines, as they share its outage).
static OUTAGES: LazyLock<Mutex<HashMap<String, Outage>>> = LazyLock::new(Default::default);

fn outages() -> std::sync::MutexGuard<'static, HashMap<String, Outage>> {
    OUTAGES.lock().unwrap_or_else(|e| e.into_inner())
}

/// One consumer's part in the outage of `node`: counted until it reads again ([`Member::resumed`])
/// or is dropped (a stop during the outage, which logs nothing).
#[derive(Debug)]
pub(super) struct Member {
    node: String,
    done: bool,
}

impl Member {
    /// Consumer `id` stopped reading from `node` on `err` (on a cluster, `err` may also say that
    /// the stream's owner changed). The first stream of an outage logs the WARN; the others are
    /// counted.
    pub(super) fn began(node: &str, id: &ConsumerId, err: &Error, cluster: bool) -> Member {
        let mut all = outages();
        let outage = all.entry(node.to_owned()).or_insert_with(|| {
            if cluster {
                warn!(%node, error = %err, "reading from the node stopped: the connection was lost or the stream's owner changed; its streams look their owner up again, reconnect and replay their own pending entries (one line when reading resumes)");
            } else {
                warn!(%node, error = %err, "reading from the server stopped: the connection was lost; its streams reconnect and replay their own pending entries (one line when reading resumes)");
            }
            Outage {
                since: Instant::now(),
                waiting: 0,
                affected: 0,
            }
        });
        outage.waiting += 1;
        outage.affected += 1;
        tracing::debug!(%node, stream = %id.stream, error = %err, "the stream stopped reading: the connection was lost");
        Member {
            node: node.to_owned(),
            done: false,
        }
    }

    /// The consumer reads again. The last stream of the outage logs how many were affected.
    pub(super) fn resumed(mut self) {
        self.done = true;
        if let Some(outage) = leave(&self.node) {
            info!(node = %self.node, streams = outage.affected, after = ?outage.since.elapsed(), "reading from the server resumed");
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if !self.done {
            leave(&self.node);
        }
    }
}

/// Counts one stream of `node`'s outage out; the outage when it was the last.
fn leave(node: &str) -> Option<Outage> {
    let mut all = outages();
    let outage = all.get_mut(node)?;
    outage.waiting = outage.waiting.saturating_sub(1);
    if outage.waiting == 0 {
        all.remove(node)
    } else {
        None
    }
}
