//! What Redis says about streams, groups and consumers: SCAN ... TYPE stream and the XINFO
//! commands, read tolerantly into plain structs.

use std::collections::BTreeSet;

use millrace::EntryId;
use redis::Value;

use crate::connect::{is_missing, Redis};
use crate::error::Result;
use crate::key::Key;
use crate::value::{self, Fields};

/// Keys scanned per SCAN call.
const SCAN_COUNT: usize = 1000;

/// `XINFO STREAM` of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamInfo {
    /// Number of entries.
    pub(crate) length: u64,
    /// Id of the oldest entry.
    pub(crate) first_id: Option<EntryId>,
    /// Id of the newest entry.
    pub(crate) last_id: Option<EntryId>,
    /// The last id the stream handed out (also after the entry was deleted).
    pub(crate) last_generated_id: Option<EntryId>,
    /// Entries ever added (Redis 7.0+).
    pub(crate) entries_added: Option<u64>,
    /// Number of consumer groups.
    pub(crate) groups: u64,
}

/// One row of `XINFO GROUPS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupInfo {
    /// Group name.
    pub(crate) name: Vec<u8>,
    /// Number of consumers.
    pub(crate) consumers: u64,
    /// Entries delivered but not acknowledged.
    pub(crate) pending: u64,
    /// The id of the last entry delivered to the group.
    pub(crate) last_delivered_id: Option<EntryId>,
    /// Logical read counter (Redis 7.0+; nil after some deletions).
    pub(crate) entries_read: Option<u64>,
    /// Entries not yet delivered (Redis 7.0+; nil when Redis cannot tell).
    pub(crate) lag: Option<u64>,
}

/// One row of `XINFO CONSUMERS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsumerInfo {
    /// Consumer name.
    pub(crate) name: Vec<u8>,
    /// Entries it holds pending.
    pub(crate) pending: u64,
    /// Milliseconds since it last interacted (read, claimed, ...).
    pub(crate) idle_ms: u64,
    /// Milliseconds since its last successful read or claim (Redis 7.2+).
    pub(crate) inactive_ms: Option<u64>,
}

/// A stream key and, on a cluster, the master that holds it (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FoundStream {
    /// The stream key.
    pub(crate) key: Vec<u8>,
    /// The master the key was found on; `None` on one server.
    pub(crate) master: Option<String>,
}

/// Every stream key matching `pattern` (all streams without one), sorted, via
/// `SCAN cursor MATCH pattern COUNT n TYPE stream` (never `KEYS`); on a cluster, on every master.
pub(crate) async fn scan_streams(
    redis: &mut Redis,
    pattern: Option<&str>,
) -> Result<Vec<FoundStream>> {
    scan(redis, pattern, Some("stream")).await
}

/// Every key matching `pattern`, of any type, sorted (`SCAN cursor MATCH pattern COUNT n`); on a
/// cluster, on every master. [`FoundStream`] names them, though some may not be streams.
pub(crate) async fn scan_matching(redis: &mut Redis, pattern: &str) -> Result<Vec<FoundStream>> {
    scan(redis, Some(pattern), None).await
}

async fn scan(
    redis: &mut Redis,
    pattern: Option<&str>,
    type_filter: Option<&str>,
) -> Result<Vec<FoundStream>> {
    let mut found = BTreeSet::new();
    if redis.is_cluster() {
        for master in redis.masters().await? {
            for key in scan_node(redis, Some(&master), pattern, type_filter).await? {
                found.insert(FoundStream {
                    key,
                    master: Some(master.clone()),
                });
            }
        }
    } else {
        for key in scan_node(redis, None, pattern, type_filter).await? {
            found.insert(FoundStream { key, master: None });
        }
    }
    Ok(found.into_iter().collect())
}

/// The keys matching `pattern` (and of type `type_filter`, if given) on one node (`None`: the
/// server).
async fn scan_node(
    redis: &mut Redis,
    node: Option<&str>,
    pattern: Option<&str>,
    type_filter: Option<&str>,
) -> Result<BTreeSet<Vec<u8>>> {
    let mut keys = BTreeSet::new();
    let mut cursor = 0;
    loop {
        let (next, page) = redis
            .scan_page(node, cursor, pattern, SCAN_COUNT, type_filter)
            .await?;
        keys.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(keys)
}

/// `XINFO STREAM key`; `None` when the key vanished or is not a stream.
pub(crate) async fn stream(redis: &mut Redis, key: &[u8]) -> Result<Option<StreamInfo>> {
    let reply: Value = match redis.raw(redis::cmd("XINFO").arg("STREAM").arg(key)).await {
        Ok(v) => v,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(redis.error(&e)),
    };
    let f = Fields::from_value(reply);
    Ok(Some(StreamInfo {
        length: f.int("length").unwrap_or_default(),
        first_id: f.entry_id("first-entry"),
        last_id: f.entry_id("last-entry"),
        last_generated_id: f.id("last-generated-id"),
        entries_added: f.int("entries-added"),
        groups: f.int("groups").unwrap_or_default(),
    }))
}

/// `XINFO GROUPS key` (the caller has checked that the key is a stream).
pub(crate) async fn groups(redis: &mut Redis, key: &[u8]) -> Result<Vec<GroupInfo>> {
    let reply: Value = redis
        .query(redis::cmd("XINFO").arg("GROUPS").arg(key))
        .await?;
    Ok(parse_groups(reply))
}

/// `XINFO GROUPS`; `None` when the key vanished or is not a stream.
pub(crate) async fn groups_if_stream(
    redis: &mut Redis,
    key: &[u8],
) -> Result<Option<Vec<GroupInfo>>> {
    match redis.raw(redis::cmd("XINFO").arg("GROUPS").arg(key)).await {
        Ok(v) => Ok(Some(parse_groups(v))),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(redis.error(&e)),
    }
}

fn parse_groups(reply: Value) -> Vec<GroupInfo> {
    value::list(reply)
        .into_iter()
        .filter_map(|g| {
            let f = Fields::from_value(g);
            Some(GroupInfo {
                name: f.bytes("name")?,
                consumers: f.int("consumers").unwrap_or_default(),
                pending: f.int("pending").unwrap_or_default(),
                last_delivered_id: f.id("last-delivered-id"),
                entries_read: f.int("entries-read"),
                lag: f.int("lag"),
            })
        })
        .collect()
}

/// `XINFO CONSUMERS key group`, explaining a missing stream or group.
pub(crate) async fn consumers(
    redis: &mut Redis,
    stream: &Key,
    group: &Key,
) -> Result<Vec<ConsumerInfo>> {
    let reply: Value = redis
        .group_query(
            redis::cmd("XINFO").arg("CONSUMERS").arg(stream).arg(group),
            stream,
            group,
        )
        .await?;
    Ok(value::list(reply)
        .into_iter()
        .filter_map(|c| {
            let f = Fields::from_value(c);
            Some(ConsumerInfo {
                name: f.bytes("name")?,
                pending: f.int("pending").unwrap_or_default(),
                idle_ms: f.int("idle").unwrap_or_default(),
                inactive_ms: f.int("inactive"),
            })
        })
        .collect())
}

/// How long the oldest pending entry of `group` has been idle (`XPENDING key group - + 1`); `None`
/// when nothing is pending or the group vanished.
pub(crate) async fn oldest_pending_idle(
    redis: &mut Redis,
    key: &[u8],
    group: &[u8],
) -> Result<Option<u64>> {
    let cmd = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1)
        .to_owned();
    match redis.raw::<Value>(&cmd).await {
        Ok(v) => Ok(millrace::streams::parse_pending(v)
            .first()
            .map(|row| row.idle_ms)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(redis.error(&e)),
    }
}
