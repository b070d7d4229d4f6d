//! Which master serves each slot, from `CLUSTER SHARDS` (Redis 7.0+) or `CLUSTER SLOTS`.

use std::fmt;

use redis::{ErrorKind, RedisError, RedisResult, Value};

use crate::cluster::slot::{key_slot, SLOT_COUNT};

/// A node's client address, as `MOVED`, `ASK` and the slot listings give it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct NodeAddress {
    /// Host name or IP; empty when the node does not know how clients reach it (then it is the
    /// host the reply came from).
    pub(crate) host: String,
    /// Client port (the TLS port on a TLS cluster).
    pub(crate) port: u16,
}

impl NodeAddress {
    /// Parses `host:port`, `[v6]:port` or `v6:port` (the port is after the last colon).
    pub(crate) fn parse(address: &str) -> Option<NodeAddress> {
        let (host, port) = address.rsplit_once(':')?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Some(NodeAddress {
            host: host.to_owned(),
            port: port.parse().ok()?,
        })
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A run of slots and the master serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRange {
    /// First slot, inclusive.
    pub(crate) start: u16,
    /// Last slot, inclusive.
    pub(crate) end: u16,
    /// The master serving the slots.
    pub(crate) master: NodeAddress,
    /// The master's node id, if the listing gave it.
    pub(crate) master_id: Option<String>,
    /// Its replicas that the listing calls healthy (`CLUSTER SLOTS` lists them all).
    pub(crate) replicas: Vec<NodeAddress>,
}

/// Slot → master, as one node sees the cluster at one moment. A consumer resolves its stream's
/// owner here, and looks again after a [`ClusterReply`](crate::cluster::ClusterReply) that says
/// the owner changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SlotMap {
    /// Sorted by `start`, not overlapping.
    ranges: Vec<SlotRange>,
}

impl SlotMap {
    /// The map from a `CLUSTER SHARDS` reply (RESP2 or RESP3). Shards without a master that
    /// is `online` are left out, so their slots have no owner (as during a failover).
    pub(crate) fn from_shards(reply: &Value) -> RedisResult<SlotMap> {
        let mut ranges = Vec::new();
        for shard in array(reply, "CLUSTER SHARDS reply")? {
            let shard = map(shard, "a shard")?;
            let slots = array(field(&shard, "slots")?, "a shard's slots")?;
            let mut master = None;
            let mut replicas = Vec::new();
            for node in array(field(&shard, "nodes")?, "a shard's nodes")? {
                let node = map(node, "a shard node")?;
                if text(field(&node, "health")?)? != "online" {
                    continue;
                }
                let host = match field(&node, "endpoint").and_then(text) {
                    Ok(endpoint) if endpoint != "?" => endpoint,
                    _ => text(field(&node, "ip")?)?,
                };
                let port = match field(&node, "tls-port") {
                    Ok(port) => integer(port)?,
                    Err(_) => integer(field(&node, "port")?)?,
                };
                let address = NodeAddress { host, port };
                match text(field(&node, "role")?)?.as_str() {
                    "master" => master = Some((address, text(field(&node, "id")?)?)),
                    _ => replicas.push(address),
                }
            }
            let Some((master, id)) = master else { continue };
            for pair in slots.chunks(2) {
                let [start, end] = pair else {
                    return Err(malformed("a shard's slots are not start/end pairs"));
                };
                ranges.push(SlotRange {
                    start: integer(start)?,
                    end: integer(end)?,
                    master: master.clone(),
                    master_id: Some(id.clone()),
                    replicas: replicas.clone(),
                });
            }
        }
        SlotMap::new(ranges)
    }

    /// The map from a `CLUSTER SLOTS` reply (RESP2 or RESP3).
    pub(crate) fn from_slots(reply: &Value) -> RedisResult<SlotMap> {
        let mut ranges = Vec::new();
        for range in array(reply, "CLUSTER SLOTS reply")? {
            let items = array(range, "a slot range")?;
            let [start, end, master, replicas @ ..] = items else {
                return Err(malformed("a slot range has fewer than three items"));
            };
            let (master, master_id) = slots_node(master)?;
            ranges.push(SlotRange {
                start: integer(start)?,
                end: integer(end)?,
                master,
                master_id,
                replicas: replicas
                    .iter()
                    .map(|r| slots_node(r).map(|(address, _)| address))
                    .collect::<RedisResult<_>>()?,
            });
        }
        SlotMap::new(ranges)
    }

    fn new(mut ranges: Vec<SlotRange>) -> RedisResult<SlotMap> {
        ranges.sort_by_key(|r| r.start);
        for r in &ranges {
            if r.start > r.end || r.end >= SLOT_COUNT {
                return Err(malformed(format!("slot range {}-{}", r.start, r.end)));
            }
        }
        if ranges.windows(2).any(|w| w[0].end >= w[1].start) {
            return Err(malformed("overlapping slot ranges"));
        }
        Ok(SlotMap { ranges })
    }

    /// This map with each master's address as `listed` gives it (by node id), where it lists the
    /// master: `listed` is a `CLUSTER SLOTS` reply to the same client, which names the port this
    /// client is to use (on a TLS cluster that also listens without TLS, the TLS port to a TLS
    /// client and the plain one to a plain client, where `CLUSTER SHARDS` lists both), and is
    /// where the cluster connection takes its addresses from.
    fn with_addresses_of(mut self, listed: &SlotMap) -> SlotMap {
        let by_id: std::collections::HashMap<&str, &NodeAddress> = listed
            .ranges
            .iter()
            .filter_map(|r| Some((r.master_id.as_deref()?, &r.master)))
            .collect();
        for range in &mut self.ranges {
            let Some(address) = range.master_id.as_deref().and_then(|id| by_id.get(id)) else {
                continue;
            };
            range.master.port = address.port;
            if !address.host.is_empty() {
                range.master.host = address.host.clone();
            }
        }
        self
    }

    /// The range that holds `slot`, if some master serves it.
    pub(crate) fn range(&self, slot: u16) -> Option<&SlotRange> {
        let i = self.ranges.partition_point(|r| r.end < slot);
        self.ranges.get(i).filter(|r| r.start <= slot)
    }

    /// The master serving `slot`.
    pub(crate) fn owner(&self, slot: u16) -> Option<&NodeAddress> {
        self.range(slot).map(|r| &r.master)
    }

    /// The master serving `key` (a stream's name), with the key's slot.
    pub(crate) fn owner_of_key(&self, key: &[u8]) -> (u16, Option<&NodeAddress>) {
        let slot = key_slot(key);
        (slot, self.owner(slot))
    }

    /// Every master that serves slots, once each, in slot order.
    pub(crate) fn masters(&self) -> Vec<&NodeAddress> {
        let mut out: Vec<&NodeAddress> = Vec::new();
        for r in &self.ranges {
            if !out.contains(&&r.master) {
                out.push(&r.master);
            }
        }
        out
    }

    /// Whether every one of the 16384 slots has a master.
    pub(crate) fn is_complete(&self) -> bool {
        let served: u32 = self
            .ranges
            .iter()
            .map(|r| u32::from(r.end - r.start) + 1)
            .sum();
        served == u32::from(SLOT_COUNT)
    }

    /// The ranges, sorted by first slot.
    #[cfg(test)]
    pub(crate) fn ranges(&self) -> &[SlotRange] {
        &self.ranges
    }
}

/// Asks the node behind `con` for the slot map: `CLUSTER SHARDS` (which says which masters are
/// online) with the addresses `CLUSTER SLOTS` gives this client (the ports it is to use), or
/// `CLUSTER SLOTS` alone if the server does not know `CLUSTER SHARDS` (before 7.0).
pub(crate) async fn fetch_slot_map(
    con: &mut impl redis::aio::ConnectionLike,
) -> RedisResult<SlotMap> {
    match redis::cmd("CLUSTER")
        .arg("SHARDS")
        .query_async::<Value>(con)
        .await
    {
        Ok(reply) => {
            let map = SlotMap::from_shards(&reply)?;
            let listed = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(con)
                .await;
            match listed.and_then(|listed| SlotMap::from_slots(&listed)) {
                Ok(listed) => Ok(map.with_addresses_of(&listed)),
                // Without it (no permission) the shards' own ports stand: the TLS port where
                // one is listed.
                Err(e) => {
                    tracing::debug!(error = %e, "CLUSTER SLOTS failed; using the ports CLUSTER SHARDS lists");
                    Ok(map)
                }
            }
        }
        Err(e)
            if e.to_string()
                .to_ascii_lowercase()
                .contains("unknown subcommand") =>
        {
            let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(con).await?;
            SlotMap::from_slots(&reply)
        }
        Err(e) => Err(e),
    }
}

/// The master that serves `key` (a stream's name) now, as the node behind `con` sees it: what a
/// consumer reads from after it learned that the owner changed. `None` while the slot has no
/// master (between a master's death and its replica's promotion, or in a shard without any):
/// retry later. `con` may be a node's connection or a `ClusterConnection` (any node answers).
pub(crate) async fn resolve_owner(
    con: &mut impl redis::aio::ConnectionLike,
    key: &[u8],
) -> RedisResult<Option<NodeAddress>> {
    let map = fetch_slot_map(con).await?;
    Ok(map.owner_of_key(key).1.cloned())
}

/// `[host, port, id?, …]` of a `CLUSTER SLOTS` node.
fn slots_node(value: &Value) -> RedisResult<(NodeAddress, Option<String>)> {
    let items = array(value, "a slot node")?;
    let [host, port, rest @ ..] = items else {
        return Err(malformed("a slot node has fewer than two items"));
    };
    let address = NodeAddress {
        host: text(host)?,
        port: integer(port)?,
    };
    let id = rest.first().map(text).transpose()?;
    Ok((address, id))
}

fn malformed(what: impl Into<String>) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "unexpected cluster topology reply",
        what.into(),
    ))
}

fn array<'a>(value: &'a Value, what: &str) -> RedisResult<&'a [Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(malformed(format!("{what} is not an array: {other:?}"))),
    }
}

/// A RESP3 map, or a RESP2 flat array of name/value pairs.
fn map<'a>(value: &'a Value, what: &str) -> RedisResult<Vec<(&'a Value, &'a Value)>> {
    match value {
        Value::Map(pairs) => Ok(pairs.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(items) if items.len() % 2 == 0 => {
            Ok(items.chunks(2).map(|kv| (&kv[0], &kv[1])).collect())
        }
        other => Err(malformed(format!("{what} is not a map: {other:?}"))),
    }
}

fn field<'a>(pairs: &[(&'a Value, &'a Value)], name: &str) -> RedisResult<&'a Value> {
    pairs
        .iter()
        .find(|(k, _)| text(k).is_ok_and(|k| k == name))
        .map(|(_, v)| *v)
        .ok_or_else(|| malformed(format!("no `{name}` field")))
}

fn text(value: &Value) -> RedisResult<String> {
    match value {
        Value::BulkString(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::VerbatimString { text, .. } => Ok(text.clone()),
        other => Err(malformed(format!("not a string: {other:?}"))),
    }
}

fn integer<T: TryFrom<i64>>(value: &Value) -> RedisResult<T> {
    match value {
        Value::Int(n) => T::try_from(*n).map_err(|_| malformed(format!("{n} is out of range"))),
        other => Err(malformed(format!("not an integer: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn shard_node(id: &str, port: i64, role: &str, health: &str) -> Value {
        Value::Array(vec![
            bulk("id"),
            bulk(id),
            bulk("port"),
            Value::Int(port),
            bulk("ip"),
            bulk("127.0.0.1"),
            bulk("endpoint"),
            bulk("127.0.0.1"),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            Value::Int(42),
            bulk("health"),
            bulk(health),
        ])
    }

    fn shard(slots: &[i64], nodes: Vec<Value>) -> Value {
        Value::Array(vec![
            bulk("slots"),
            Value::Array(slots.iter().map(|&s| Value::Int(s)).collect()),
            bulk("nodes"),
            Value::Array(nodes),
        ])
    }

    #[test]
    fn shards_give_the_online_master_of_each_slot() {
        let reply = Value::Array(vec![
            shard(
                &[0, 5460, 16000, 16000],
                vec![
                    shard_node("a", 7000, "master", "online"),
                    shard_node("d", 7003, "replica", "online"),
                ],
            ),
            shard(
                &[5461, 15999, 16001, 16383],
                vec![
                    shard_node("b", 7001, "master", "failed"),
                    shard_node("e", 7004, "master", "online"),
                ],
            ),
            // A shard with no online master: its slots have no owner.
            shard(&[], vec![shard_node("c", 7002, "master", "failed")]),
        ]);
        let map = SlotMap::from_shards(&reply).expect("parses");
        assert!(map.is_complete());
        assert_eq!(map.owner(0).map(|a| a.port), Some(7000));
        assert_eq!(map.owner(16000).map(|a| a.port), Some(7000));
        assert_eq!(map.owner(5461).map(|a| a.port), Some(7004));
        assert_eq!(map.owner(16383).map(|a| a.port), Some(7004));
        let first = map.range(100).expect("range");
        assert_eq!(first.master_id.as_deref(), Some("a"));
        assert_eq!(first.replicas.len(), 1);
        assert_eq!(map.masters().len(), 2);
        assert_eq!(map.owner_of_key(b"foo").0, 12182);
    }

    #[test]
    fn a_tls_cluster_that_also_listens_without_tls_is_reached_on_the_port_of_the_client() {
        // Both ports listed, as a TLS cluster whose nodes also have a plain port lists them.
        let node = |id: &str, port: i64, tls_port: i64| {
            Value::Array(vec![
                bulk("id"),
                bulk(id),
                bulk("port"),
                Value::Int(port),
                bulk("tls-port"),
                Value::Int(tls_port),
                bulk("ip"),
                bulk("127.0.0.1"),
                bulk("endpoint"),
                bulk("127.0.0.1"),
                bulk("role"),
                bulk("master"),
                bulk("replication-offset"),
                Value::Int(1),
                bulk("health"),
                bulk("online"),
            ])
        };
        let shards = Value::Array(vec![
            shard(&[0, 8191], vec![node("a", 7000, 7100)]),
            shard(&[8192, 16383], vec![node("b", 7001, 7101)]),
        ]);
        // `CLUSTER SLOTS` answers each client with its own kind of port.
        let slots = |a: i64, b: i64| {
            let master = |port: i64, id: &str| {
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk(id)])
            };
            Value::Array(vec![
                Value::Array(vec![Value::Int(0), Value::Int(8191), master(a, "a")]),
                Value::Array(vec![Value::Int(8192), Value::Int(16383), master(b, "b")]),
            ])
        };
        let shards = SlotMap::from_shards(&shards).expect("parses");
        for (a, b) in [(7000, 7001), (7100, 7101)] {
            let listed = SlotMap::from_slots(&slots(a, b)).expect("parses");
            let map = shards.clone().with_addresses_of(&listed);
            assert_eq!(map.owner(0).map(|o| o.port), Some(a as u16));
            assert_eq!(map.owner(16383).map(|o| o.port), Some(b as u16));
        }
        // A master `CLUSTER SLOTS` still lists but that is not online (killed, not yet replaced)
        // stays without slots: the shards say who is online.
        let failing = Value::Array(vec![shard(
            &[0, 16383],
            vec![shard_node("a", 7100, "master", "fail")],
        )]);
        let map = SlotMap::from_shards(&failing)
            .expect("parses")
            .with_addresses_of(&SlotMap::from_slots(&slots(7000, 7001)).expect("parses"));
        assert_eq!(map.owner(0), None);
    }

    #[test]
    fn slots_give_each_ranges_master() {
        let node = |port: i64, id: &str| {
            Value::Array(vec![
                bulk("127.0.0.1"),
                Value::Int(port),
                bulk(id),
                Value::Array(vec![]),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node(7001, "b"),
                node(7004, "e"),
            ]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node(7000, "a")]),
        ]);
        let map = SlotMap::from_slots(&reply).expect("parses");
        assert!(!map.is_complete());
        assert_eq!(
            map.owner(5460).map(ToString::to_string).as_deref(),
            Some("127.0.0.1:7000")
        );
        assert_eq!(map.owner(5461).map(|a| a.port), Some(7001));
        assert_eq!(map.range(5461).map(|r| r.replicas.len()), Some(1));
        assert_eq!(map.owner(10923), None);
        assert_eq!(map.ranges()[0].start, 0);
    }

    #[test]
    fn overlapping_or_bad_ranges_are_refused() {
        let node = Value::Array(vec![bulk("h"), Value::Int(1)]);
        let overlapping = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(10), node.clone()]),
            Value::Array(vec![Value::Int(10), Value::Int(20), node.clone()]),
        ]);
        assert!(SlotMap::from_slots(&overlapping).is_err());
        let beyond = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16384),
            node,
        ])]);
        assert!(SlotMap::from_slots(&beyond).is_err());
    }

    #[test]
    fn addresses_parse_and_print() {
        let a = NodeAddress::parse("[::1]:7000").expect("v6");
        assert_eq!((a.host.as_str(), a.port), ("::1", 7000));
        assert_eq!(a.to_string(), "[::1]:7000");
        assert_eq!(
            NodeAddress::parse("10.0.0.1:6379").map(|a| a.port),
            Some(6379)
        );
        assert_eq!(NodeAddress::parse("nohost"), None);
    }
}
