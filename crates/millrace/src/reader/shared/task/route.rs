//! Routing one reply of a shared read: each stream's part to its subscriber, credits back to the
//! streams that got nothing, entries for streams nobody subscribes to released, and an error
//! reply traced to the stream it concerns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use redis::{RedisError, RedisResult};
use tracing::debug;

use super::Task;
use crate::entry::EntryId;
use crate::error::Error;
use crate::id::ConsumerId;
use crate::protocol;
use crate::reader::contract::{depth_after, release_on};
use crate::reader::shared::state::{Delivery, Planned};
use crate::reader::shared::SharedRead;
use crate::streams::ReadItem;

/// Error replies in a row that may be read again before the read gives up (every stream then
/// reconnects): an error that names no stream is followed by one that does.
const UNATTRIBUTED_AT_MOST: u32 = 3;

/// The key a `NOGROUP` reply names: `No such key 'k' or consumer group 'g' in XREADGROUP …`.
/// `None` for the reply to a read blocked on a group destroyed meanwhile, which names none.
pub(super) fn nogroup_key(message: &str) -> Option<&str> {
    const BEFORE: &str = "No such key '";
    const AFTER: &str = "' or consumer group '";
    let start = message.find(BEFORE)? + BEFORE.len();
    let end = message.rfind(AFTER)?;
    message.get(start..end)
}

impl Task {
    /// Routes the reply to `read`, then counts it routed (for streams waiting to leave).
    pub(super) async fn route(&mut self, read: Planned, frame: Vec<u8>) -> RedisResult<()> {
        let routed = self.route_reply(read, frame).await;
        self.read.wake.replied();
        routed
    }

    async fn route_reply(&mut self, read: Planned, frame: Vec<u8>) -> RedisResult<()> {
        if frame.first() == Some(&b'-') {
            self.read
                .state()
                .settle(&read, Instant::now(), false, |_| false);
            return match protocol::parse_value(&frame) {
                Err(e) if e.code().is_some() => self.on_error(&read, e).await,
                Err(e) => Err(e),
                Ok(_) => Ok(()),
            };
        }
        let parts = protocol::split_read_reply(&frame)?;
        self.unattributed = 0;
        let frame = Arc::new(frame);
        let names: Vec<Option<&str>> = parts
            .iter()
            .map(|p| std::str::from_utf8(&frame[p.key.clone()]).ok())
            .collect();
        let tokens: HashMap<&str, u64> = read.streams.iter().map(|(n, t)| (&**n, *t)).collect();
        let mut orphans = Vec::new();
        {
            let mut state = self.read.state();
            for (part, name) in parts.iter().zip(&names) {
                let lane = name
                    .and_then(|n| Some((n, *tokens.get(n)?)))
                    .and_then(|(n, t)| state.lane(n, t))
                    .filter(|lane| !lane.excluded);
                let delivery = Delivery::Part {
                    frame: frame.clone(),
                    at: part.entries_at,
                    sent: read.sent,
                };
                if lane.is_none_or(|lane| lane.tx.send(delivery).is_err()) {
                    orphans.push((*name, part.entries_at));
                }
            }
            let got: HashSet<&str> = names.iter().flatten().copied().collect();
            state.settle(&read, Instant::now(), true, |n| got.contains(n));
        }
        let fullest = parts.iter().map(|p| p.entries).max().unwrap_or(0);
        self.depth = depth_after(fullest, read.count);
        for (name, at) in orphans {
            release_orphan(&self.read, name, &frame, at).await;
        }
        Ok(())
    }
}

/// Releases the entries of a part nobody takes (its stream left the read meanwhile).
async fn release_orphan(read: &SharedRead, name: Option<&str>, frame: &[u8], at: usize) {
    let key = &read.key;
    let Some(stream) = name else {
        debug!("entries of a stream whose name is not UTF-8; they stay pending");
        return;
    };
    let id = ConsumerId::new(stream, &*key.group, &*key.consumer);
    let ids: Vec<EntryId> = protocol::parse_stream_entries(frame, at)
        .map(|items| items.iter().filter_map(ReadItem::id).collect())
        .unwrap_or_default();
    release_on(&mut read.control.clone(), &id, &ids).await;
}

impl Task {
    /// An error reply: traced to its stream when it names one (which alone gets it and is left
    /// out of the read). A `NOGROUP` that names no stream of the read (it names none, as for a
    /// group destroyed while the read blocked, or it prints the name differently, as Redis does
    /// for control characters) is placed by asking each stream of the read: only those whose
    /// group or key is really gone get it. Any other error ends the read.
    async fn on_error(&mut self, read: &Planned, e: RedisError) -> RedisResult<()> {
        let culprits = match e.code() {
            Some("NOGROUP") => match nogroup_key(&e.to_string()) {
                Some(key) if self.has_lane(key) => vec![key.to_owned()],
                _ => lost_groups(&self.read, read).await,
            },
            Some("WRONGTYPE") => wrong_types(&self.read, read).await,
            // A key deleted while the read blocked; the next read names it (NOGROUP).
            Some("UNBLOCKED") => Vec::new(),
            _ => return Err(e),
        };
        let mut routed = false;
        for stream in &culprits {
            routed |= self.fail_stream(stream, &e);
        }
        if routed {
            self.unattributed = 0;
            return Ok(());
        }
        self.unattributed += 1;
        debug!(error = %e, "a shared read's error names no stream it reads; reading again");
        if self.unattributed > UNATTRIBUTED_AT_MOST {
            // Not the error itself: a `NOGROUP` no stream's group explains must not be taken
            // for every stream's lost group. Each stream reconnects, as after a lost connection.
            tracing::warn!(error = %e, "a shared read's errors name no stream it reads; every stream in it reconnects");
            return Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!("the shared read's errors name no stream it reads: {e}"),
            )));
        }
        Ok(())
    }

    fn has_lane(&self, stream: &str) -> bool {
        self.read.state().lanes.contains_key(stream)
    }

    /// Gives `stream`'s subscriber the error and leaves the stream out of reads until it
    /// subscribes again. Returns whether the stream has a subscriber here.
    fn fail_stream(&self, stream: &str, e: &RedisError) -> bool {
        let mut state = self.read.state();
        let Some(lane) = state.lanes.get_mut(stream) else {
            return false;
        };
        if !lane.excluded {
            lane.excluded = true;
            let error = Error::from_redis(&lane.id, "XREADGROUP", stream, e.clone());
            let _ = lane.tx.send(Delivery::Failed(error));
        }
        true
    }
}

/// The streams of `read` whose group (or key) is gone: `XPENDING key group` (one pipeline, a
/// command every consumer may run) answers `NOGROUP` for them alone.
async fn lost_groups(shared: &SharedRead, read: &Planned) -> Vec<String> {
    let mut pipe = redis::pipe();
    for (name, _) in &read.streams {
        pipe.cmd("XPENDING").arg(&**name).arg(&*shared.key.group);
    }
    let mut control = shared.control.clone();
    let replies: Vec<RedisResult<redis::Value>> =
        match pipe.ignore_errors().query_async(&mut control).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "XPENDING failed; the NOGROUP stays untraced");
                return Vec::new();
            }
        };
    read.streams
        .iter()
        .zip(replies)
        .filter(|(_, r)| r.as_ref().is_err_and(|e| e.code() == Some("NOGROUP")))
        .map(|((name, _), _)| name.to_string())
        .collect()
}

/// The streams of `read` whose keys hold another type (`TYPE`, one pipeline).
async fn wrong_types(shared: &SharedRead, read: &Planned) -> Vec<String> {
    let mut pipe = redis::pipe();
    for (name, _) in &read.streams {
        pipe.cmd("TYPE").arg(&**name);
    }
    let mut control = shared.control.clone();
    let types: Vec<String> = match pipe.query_async(&mut control).await {
        Ok(t) => t,
        Err(e) => {
            debug!(error = %e, "TYPE failed; the WRONGTYPE stays untraced");
            return Vec::new();
        }
    };
    read.streams
        .iter()
        .zip(types)
        .filter(|(_, t)| t != "stream" && t != "none")
        .map(|((name, _), _)| name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::nogroup_key;

    #[test]
    fn nogroup_names_its_key() {
        assert_eq!(
            nogroup_key("NOGROUP: No such key 'tenant:1' or consumer group 'g' in XREADGROUP with GROUP option"),
            Some("tenant:1")
        );
        assert_eq!(
            nogroup_key("No such key 'it's' or consumer group 'g' in XREADGROUP with GROUP option"),
            Some("it's")
        );
        assert_eq!(
            nogroup_key("NOGROUP: the consumer group this client was blocked on no longer exists"),
            None
        );
    }
}
