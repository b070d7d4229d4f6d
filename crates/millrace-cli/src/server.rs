//! Which server each node is (`HELLO`: name, version, role), for the `streams` and `groups`
//! listings and for the commands whose path depends on what the server has (`trim --acked`).

use std::collections::BTreeMap;

use millrace::capabilities::ServerInfo;
use redis::Value;

use crate::connect::Redis;
use crate::error::Result;

/// The server `node` is (`host:port` of a cluster master), or the one server.
pub(crate) async fn describe(redis: &mut Redis, node: Option<&str>) -> Result<ServerInfo> {
    let reply: Value = redis.query_on(node, &redis::cmd("HELLO")).await?;
    Ok(ServerInfo::from_hello(&reply))
}

/// Every node the listing covers, each with its server: the masters of a cluster, or the one
/// server (named by the redacted URL).
pub(crate) async fn nodes(redis: &mut Redis) -> Result<BTreeMap<String, ServerInfo>> {
    let mut out = BTreeMap::new();
    if redis.is_cluster() {
        for master in redis.masters().await? {
            let info = describe(redis, Some(&master)).await?;
            out.insert(master, info);
        }
    } else {
        let info = describe(redis, None).await?;
        out.insert(redis.target.clone(), info);
    }
    Ok(out)
}

/// The master holding `key` on a cluster (the one where it exists); `None` on one server.
pub(crate) async fn master_of(redis: &mut Redis, key: &crate::key::Key) -> Result<Option<String>> {
    for master in redis.masters().await? {
        let exists: u64 = redis
            .query_on(Some(&master), redis::cmd("EXISTS").arg(key))
            .await?;
        if exists > 0 {
            return Ok(Some(master));
        }
    }
    Ok(None)
}

/// One line per node: `server: redis 8.2.3 (master) at 127.0.0.1:6379`.
pub(crate) fn lines(nodes: &BTreeMap<String, ServerInfo>) -> String {
    nodes
        .iter()
        .map(|(node, info)| format!("server: {info} at {node}\n"))
        .collect()
}
