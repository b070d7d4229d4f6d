//! The commands a sweep sends: the nodes to scan (the server, or every master from the slot map),
//! one `SCAN cursor MATCH pattern COUNT n` page on one node, and `TYPE` of the keys a page could
//! not place.

use redis::{RedisResult, Value};

use super::sweep::KeyKind;
use crate::cluster::{fetch_slot_map, NodeAddress};
use crate::connection::{Backend, Control};

/// The nodes a sweep covers: `[None]` (the server), or every master of the cluster. A cluster
/// whose slots are not all served (a master died and its replica is not promoted yet) fails with
/// `CLUSTERDOWN`: a sweep then would miss that master's streams and drop them.
pub(crate) async fn nodes(backend: &Backend) -> RedisResult<Vec<Option<NodeAddress>>> {
    if !backend.is_cluster() {
        return Ok(vec![None]);
    }
    let map = fetch_slot_map(&mut backend.control()).await?;
    if !map.is_complete() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
            "some slots have no master",
            "the sweep waits until every slot is served again".to_owned(),
        )));
    }
    Ok(map.masters().into_iter().cloned().map(Some).collect())
}

/// One `SCAN cursor [MATCH pattern] COUNT count [TYPE type]` page on `node`: the next cursor and
/// the keys. Discovery sends no `TYPE`: the keys of other types are counted from the same page
/// (see [`types`]), which costs the server no more than `TYPE stream` does. The CLI lists streams
/// with `TYPE stream`.
pub(crate) async fn page(
    control: &mut Control,
    node: Option<&NodeAddress>,
    cursor: u64,
    pattern: Option<&str>,
    count: usize,
    type_filter: Option<&str>,
) -> RedisResult<(u64, Vec<Vec<u8>>)> {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor);
    if let Some(pattern) = pattern {
        cmd.arg("MATCH").arg(pattern);
    }
    cmd.arg("COUNT").arg(count);
    if let Some(type_filter) = type_filter {
        cmd.arg("TYPE").arg(type_filter);
    }
    let reply: Value = control.query_on(node, cmd).await?;
    parse_page(reply)
}

/// `[cursor, [key, …]]`, in RESP2 or RESP3.
fn parse_page(reply: Value) -> RedisResult<(u64, Vec<Vec<u8>>)> {
    let malformed = |what: &str| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected SCAN reply",
            what.to_owned(),
        ))
    };
    let Value::Array(mut parts) = reply else {
        return Err(malformed("not an array"));
    };
    if parts.len() != 2 {
        return Err(malformed("not a cursor and a key list"));
    }
    let keys = parts.pop().unwrap_or(Value::Nil);
    let cursor: u64 = match parts.pop() {
        Some(Value::BulkString(b)) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("the cursor is not a number"))?,
        _ => return Err(malformed("no cursor")),
    };
    let Value::Array(keys) = keys else {
        return Err(malformed("the keys are not a list"));
    };
    let keys = keys
        .into_iter()
        .filter_map(|k| match k {
            Value::BulkString(b) => Some(b),
            Value::SimpleString(s) => Some(s.into_bytes()),
            _ => None,
        })
        .collect();
    Ok((cursor, keys))
}

/// `TYPE` of each name, sent together (one round trip's worth on the multiplexed control
/// connection; on a cluster each to its key's master).
pub(crate) async fn types(
    control: &Control,
    names: Vec<String>,
) -> RedisResult<Vec<(String, KeyKind)>> {
    let asks = names.into_iter().map(|name| {
        let mut control = control.clone();
        async move {
            let kind: String = redis::cmd("TYPE")
                .arg(&name)
                .query_async(&mut control)
                .await?;
            Ok::<_, redis::RedisError>((name, KeyKind::from_type(&kind)))
        }
    });
    futures::future::try_join_all(asks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_page_is_a_cursor_and_keys() {
        let reply = Value::Array(vec![bulk("1234"), Value::Array(vec![bulk("a"), bulk("b")])]);
        let (cursor, keys) = parse_page(reply).expect("a page");
        assert_eq!(cursor, 1234);
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        let last = Value::Array(vec![bulk("0"), Value::Array(vec![])]);
        assert_eq!(parse_page(last).expect("the last page"), (0, Vec::new()));
    }

    #[test]
    fn odd_replies_are_parse_errors() {
        for reply in [
            Value::Nil,
            Value::Array(vec![bulk("1")]),
            Value::Array(vec![bulk("x"), Value::Array(vec![])]),
            Value::Array(vec![bulk("1"), bulk("a")]),
        ] {
            let err = parse_page(reply).expect_err("malformed");
            assert_eq!(err.kind(), redis::ErrorKind::Parse);
        }
    }
}
