//! Lua scripts run with `EVALSHA`, falling back to `EVAL` when the server does not have the script
//! cached yet (which also caches it). Unlike `redis::Script`, this never needs the `SCRIPT LOAD`
//! permission, so the ACL rules millrace documents stay as they are.

use std::sync::OnceLock;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisResult, ToRedisArgs};

/// A Lua script and its SHA1, computed once.
#[derive(Debug)]
pub(crate) struct LuaScript {
    source: &'static str,
    sha: OnceLock<String>,
}

impl LuaScript {
    /// A script with this source.
    pub(crate) const fn new(source: &'static str) -> LuaScript {
        LuaScript {
            source,
            sha: OnceLock::new(),
        }
    }

    fn sha(&self) -> &str {
        self.sha
            .get_or_init(|| redis::Script::new(self.source).get_hash().to_owned())
    }

    /// Runs the script with `keys` and `args`.
    pub(crate) async fn run<T, C, K, A>(
        &self,
        conn: &mut C,
        keys: &[K],
        args: &[A],
    ) -> RedisResult<T>
    where
        T: FromRedisValue,
        C: ConnectionLike + Send,
        K: ToRedisArgs,
        A: ToRedisArgs,
    {
        let build = |head: &str, body: &str| {
            let mut cmd = redis::cmd(head);
            cmd.arg(body).arg(keys.len());
            for k in keys {
                cmd.arg(k);
            }
            for a in args {
                cmd.arg(a);
            }
            cmd
        };
        match build("EVALSHA", self.sha()).query_async(conn).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                build("EVAL", self.source).query_async(conn).await
            }
            other => other,
        }
    }
}
