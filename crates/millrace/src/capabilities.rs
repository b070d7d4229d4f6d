//! What the server behind a connection is and what it supports, learned from the server itself
//! (`HELLO`, and `COMMAND INFO` where the user may run it), never assumed from the URL or a
//! setting; and the checks `start()` makes with it.
//!
//! ```no_run
//! use millrace::capabilities::ServerInfo;
//!
//! # async fn run() -> redis::RedisResult<()> {
//! let client = redis::Client::open("redis://127.0.0.1:6379")?;
//! let mut con = client.get_multiplexed_async_connection().await?;
//! let server = ServerInfo::detect(&mut con).await?;
//! println!("{server}"); // "redis 8.2.3 (master)"
//! if server.has_acked_trim() {
//!     // XTRIM … ACKED and XACKDEL are there
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;

use redis::aio::ConnectionLike;
use redis::Value;

/// A server version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// The major version (`8` in 8.2.3).
    pub major: u32,
    /// The minor version.
    pub minor: u32,
    /// The patch level.
    pub patch: u32,
}

impl Version {
    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Parses `8.2.3` (missing parts are 0; anything after a non-digit is ignored).
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.trim().split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next()??;
        Some(Version::new(
            major,
            parts.next().flatten().unwrap_or(0),
            parts.next().flatten().unwrap_or(0),
        ))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The oldest Redis millrace runs on: consumer groups' `entries-read`/lag and `XAUTOCLAIM`'s
/// deleted ids came with 7.0.
pub const OLDEST_REDIS: Version = Version::new(7, 0, 0);

/// The server behind one connection, as it describes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInfo {
    /// `redis`, `valkey`, or what another server calls itself.
    pub name: String,
    /// Its own version (Valkey's, not the Redis version it is compatible with).
    pub version: Version,
    /// `master` or `replica` (`sentinel` for a Sentinel).
    pub role: String,
    /// `standalone`, `cluster` or `sentinel`.
    pub mode: String,
}

impl ServerInfo {
    /// Asks the server with `HELLO` (no arguments: the protocol is left as it is), which any
    /// authenticated user may run, so a least-privilege ACL user needs no extra rule. A server
    /// without `HELLO` (older than 6.0) is asked `INFO server`.
    pub async fn detect<C: ConnectionLike + Send>(con: &mut C) -> redis::RedisResult<ServerInfo> {
        match redis::cmd("HELLO").query_async::<Value>(con).await {
            Ok(reply) => Ok(ServerInfo::from_hello(&reply)),
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                let info: String = redis::cmd("INFO").arg("server").query_async(con).await?;
                Ok(ServerInfo::from_info(&info))
            }
            Err(e) => Err(e),
        }
    }

    /// From a `HELLO` reply (a map in RESP3, a flat array of pairs in RESP2).
    pub fn from_hello(reply: &Value) -> ServerInfo {
        let pairs: Vec<(String, String)> = match reply {
            Value::Map(map) => map
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, text(v).unwrap_or_default())))
                .collect(),
            Value::Array(items) => items
                .chunks(2)
                .filter_map(|kv| {
                    Some((
                        text(kv.first()?)?,
                        kv.get(1).and_then(text).unwrap_or_default(),
                    ))
                })
                .collect(),
            _ => Vec::new(),
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        ServerInfo {
            name: field("server"),
            version: Version::parse(&field("version")).unwrap_or_default(),
            role: field("role"),
            mode: field("mode"),
        }
    }

    /// From an `INFO server` (and, when present, `INFO replication`) reply.
    pub fn from_info(info: &str) -> ServerInfo {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .map(str::to_owned)
        };
        let valkey = field("valkey_version");
        let name = field("server_name")
            .unwrap_or_else(|| if valkey.is_some() { "valkey" } else { "redis" }.to_owned());
        let version = valkey
            .or_else(|| field("redis_version"))
            .and_then(|v| Version::parse(&v))
            .unwrap_or_default();
        let role = match field("role").as_deref() {
            Some("slave") => "replica".to_owned(),
            Some(other) => other.to_owned(),
            None => String::new(),
        };
        ServerInfo {
            name,
            version,
            role,
            mode: field("redis_mode")
                .or_else(|| field("server_mode"))
                .unwrap_or_default(),
        }
    }

    /// Whether this is Valkey.
    pub fn is_valkey(&self) -> bool {
        self.name.eq_ignore_ascii_case("valkey")
    }

    /// Whether this server answers as a Sentinel, not a data node.
    pub fn is_sentinel(&self) -> bool {
        self.mode == "sentinel"
    }

    /// Whether this is a replica (it refuses writes with `READONLY`).
    pub fn is_replica(&self) -> bool {
        self.role == "replica" || self.role == "slave"
    }

    /// Whether millrace runs on it: Redis 7.0 or newer; any Valkey (its first release is
    /// compatible with Redis 7.2).
    pub fn is_supported(&self) -> bool {
        self.is_valkey() || self.version >= OLDEST_REDIS
    }

    /// Whether the server has `XACKDEL` and `XADD`/`XTRIM … ACKED` (Redis 8.2, Valkey 9.2), by
    /// version. [`probe_command`] asks the server itself where the user may run `COMMAND INFO`.
    pub fn has_acked_trim(&self) -> bool {
        if self.is_valkey() {
            self.version >= Version::new(9, 2, 0)
        } else {
            self.name == "redis" && self.version >= Version::new(8, 2, 0)
        }
    }
}

impl fmt::Display for ServerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() {
            "server"
        } else {
            &self.name
        };
        write!(f, "{name} {}", self.version)?;
        if !self.role.is_empty() {
            write!(f, " ({})", self.role)?;
        }
        Ok(())
    }
}

/// Whether the server knows `command` (`COMMAND INFO`): `Some(true)` or `Some(false)`, or `None`
/// when the user may not ask (`NOPERM`): then decide by [`ServerInfo`]'s version.
pub async fn probe_command<C: ConnectionLike + Send>(
    con: &mut C,
    command: &str,
) -> redis::RedisResult<Option<bool>> {
    match redis::cmd("COMMAND")
        .arg("INFO")
        .arg(command)
        .query_async::<Vec<Value>>(con)
        .await
    {
        Ok(reply) => Ok(Some(!matches!(reply.first(), None | Some(Value::Nil)))),
        Err(e) if e.code() == Some("NOPERM") => Ok(None),
        Err(e) => Err(e),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The check `start()` makes on the data node it connected to: a server millrace runs on (Redis
/// 7.0 or newer, or Valkey), a master (a replica refuses every write with `READONLY`), and a data
/// node, not a Sentinel. Each failure names the server and what to change. A node that does not
/// answer `HELLO` as expected passes: the consumers' own commands then say what is wrong.
pub(crate) async fn check_data_node<C: ConnectionLike + Send>(
    con: &mut C,
    node: &str,
    cluster: bool,
) -> crate::error::Result<()> {
    let display = node;
    let Ok(server) = ServerInfo::detect(con).await else {
        return Ok(());
    };
    tracing::debug!(server = %server, at = node, "connected");
    let refuse = |reason: String, hint: &str| crate::error::Error::Fatal {
        consumer: None,
        command: "connecting to Redis",
        reason,
        hint: hint.to_owned(),
        source: None,
    };
    if server.is_sentinel() {
        return Err(refuse(
            format!("{display} is a Redis Sentinel, not a server holding data"),
            "give the URL of the master (or the Sentinel addresses and master name to \
             `redis_sentinel`), not a Sentinel's as the Redis URL",
        ));
    }
    if !server.is_supported() {
        return Err(refuse(
            format!(
                "{display} runs {server}, older than Redis {OLDEST_REDIS}, the oldest millrace \
                 runs on"
            ),
            "upgrade the server to Redis 7.0 or newer (or Valkey)",
        ));
    }
    if !cluster && server.is_replica() {
        return Err(refuse(
            format!("{display} is a replica: it refuses every write (READONLY), and consumer groups need writes"),
            "give the master's URL instead; to follow the master through failovers, use \
             Sentinel or Redis Cluster",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(pairs: &[(&str, &str)]) -> Value {
        Value::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| {
                    [
                        Value::BulkString(k.as_bytes().to_vec()),
                        Value::BulkString(v.as_bytes().to_vec()),
                    ]
                })
                .collect(),
        )
    }

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse("8.2.3"), Some(Version::new(8, 2, 3)));
        assert_eq!(Version::parse("7.0"), Some(Version::new(7, 0, 0)));
        assert_eq!(
            Version::parse("255.255.255"),
            Some(Version::new(255, 255, 255))
        );
        assert_eq!(Version::parse("x"), None);
        assert!(Version::new(6, 2, 14) < OLDEST_REDIS);
    }

    #[test]
    fn hello_names_the_server_and_what_it_has() {
        let redis82 = ServerInfo::from_hello(&hello(&[
            ("server", "redis"),
            ("version", "8.2.3"),
            ("proto", "2"),
            ("role", "master"),
            ("mode", "standalone"),
        ]));
        assert_eq!(redis82.to_string(), "redis 8.2.3 (master)");
        assert!(redis82.has_acked_trim() && redis82.is_supported() && !redis82.is_replica());
        let valkey = ServerInfo::from_hello(&hello(&[("server", "valkey"), ("version", "9.1.2")]));
        assert!(valkey.is_valkey() && valkey.is_supported() && !valkey.has_acked_trim());
        let redis70 = ServerInfo::from_hello(&hello(&[("server", "redis"), ("version", "7.0.15")]));
        assert!(redis70.is_supported() && !redis70.has_acked_trim());
        let old = ServerInfo::from_hello(&hello(&[("server", "redis"), ("version", "6.2.14")]));
        assert!(!old.is_supported());
        let replica = ServerInfo::from_hello(&hello(&[("role", "replica")]));
        assert!(replica.is_replica());
    }

    #[test]
    fn info_server_is_read_as_well() {
        let info = "# Server\r\nredis_version:5.0.7\r\nredis_mode:standalone\r\nrole:slave\r\n";
        let s = ServerInfo::from_info(info);
        assert_eq!(
            (s.name.as_str(), s.version),
            ("redis", Version::new(5, 0, 7))
        );
        assert!(s.is_replica() && !s.is_supported());
        let v = ServerInfo::from_info(
            "redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\n",
        );
        assert_eq!(
            (v.name.as_str(), v.version),
            ("valkey", Version::new(9, 1, 2))
        );
    }
}
