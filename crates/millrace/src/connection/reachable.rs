//! The reachability check at start: connect once, and say what failed (unreachable, refused
//! password, wrong database) naming the server.

use redis::{AsyncConnectionConfig, Client};

use super::backend::{Backend, Target};
use crate::error::{Error, Result};

impl Backend {
    /// Connects once and sends `PING`, to fail fast at start when Redis cannot be reached or
    /// refuses the credentials. The error names the server and says what to check.
    pub(crate) async fn check_reachable(&self) -> Result<()> {
        match &self.target {
            Target::Single { client, .. } => self.check_node(client, &self.display).await,
            Target::Cluster { seeds } => {
                // Any seed that answers is enough; a refused password is reported at once, since
                // every node has the same users.
                let mut unreachable = Vec::new();
                for seed in seeds {
                    let display = seed.addr().to_string();
                    #[cfg(feature = "tls")]
                    let client = match &self.options.tls {
                        Some(c) => Client::build_with_tls(seed.clone(), c.0.clone()),
                        None => Client::open(seed.clone()),
                    };
                    #[cfg(not(feature = "tls"))]
                    let client = Client::open(seed.clone());
                    let client = client.map_err(|e| Error::InvalidUrl {
                        reason: crate::error::redact(&e.to_string()),
                    })?;
                    match self.check_node(&client, &display).await {
                        Ok(()) => return Ok(()),
                        Err(e) if e.is_authentication_failure() => return Err(e),
                        Err(e) => unreachable.push(e),
                    }
                }
                Err(unreachable.pop().map_or_else(
                    || self.unreachable("no seed node".into()),
                    |last| match last {
                        Error::Fatal {
                            command: "connecting to Redis",
                            hint,
                            ..
                        } => Error::Fatal {
                            consumer: None,
                            command: "connecting to Redis",
                            reason: format!(
                                "could not reach any seed node of the {}",
                                self.display
                            ),
                            hint,
                            source: None,
                        },
                        other => other,
                    },
                ))
            }
        }
    }

    /// [`Backend::check_reachable`] for one node.
    async fn check_node(&self, client: &Client, display: &str) -> Result<()> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.connect_timeout))
            .set_response_timeout(Some(self.options.command_timeout));
        // One overall bound as well: a server that accepts the connection but never answers the
        // handshake must not hold `start` longer than both timeouts together.
        let limit = self.options.connect_timeout + self.options.command_timeout;
        // Connecting runs the handshake (AUTH, SELECT): it fails on a refused password or
        // database. No command follows, so a least-privilege ACL user needs nothing more. Without
        // a password nothing is authenticated, so a PING asks whether the server wants one
        // (NOAUTH); the default user it then runs as may PING.
        let without_password = client
            .get_connection_info()
            .redis_settings()
            .password()
            .is_none();
        let attempt = async {
            let mut con = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            if without_password {
                redis::cmd("PING").query_async::<()>(&mut con).await?;
            }
            Ok::<_, redis::RedisError>(con)
        };
        let failed = match tokio::time::timeout(limit, attempt).await {
            // A master of a supported server, not a replica or a Sentinel (capabilities.rs).
            Ok(Ok(mut con)) => {
                let check =
                    crate::capabilities::check_data_node(&mut con, display, self.is_cluster());
                return tokio::time::timeout(self.options.command_timeout, check)
                    .await
                    .unwrap_or(Ok(()));
            }
            Ok(Err(e)) => e,
            Err(_) => {
                // A TLS mismatch says so, not "could not reach" (tls_advice.rs).
                let addr = client.get_connection_info().addr();
                if let Some(tls) = crate::tls_advice::explain(addr, "timed out", display).await {
                    return Err(tls);
                }
                return Err(unreachable_at(
                    display,
                    format!("no answer within {}", humantime::format_duration(limit)),
                ));
            }
        };
        let refused = |command: &'static str, reason: String, hint: &str| Error::Fatal {
            consumer: None,
            command,
            reason,
            hint: hint.to_owned(),
            source: None,
        };
        let check_credentials = "check the username and password in the Redis URL \
            (`redis://user:password@host:port`), and that the ACL user exists and is `on` \
            (`ACL LIST` shows both)";
        if failed.code() == Some("NOAUTH") {
            return Err(refused(
                "AUTH",
                format!(
                    "authentication failed at {}: the server requires a password and the URL has none",
                    display
                ),
                check_credentials,
            ));
        }
        if failed.kind() == redis::ErrorKind::AuthenticationFailed
            || failed.code() == Some("WRONGPASS")
        {
            return Err(refused(
                "AUTH",
                format!(
                    "authentication failed at {}: the server refused the username or password",
                    display
                ),
                check_credentials,
            ));
        }
        let addr = client.get_connection_info().addr();
        if let Some(tls) = crate::tls_advice::explain(addr, &failed.to_string(), display).await {
            return Err(tls);
        }
        if failed.is_timeout()
            || failed.is_io_error()
            || failed.is_connection_refusal()
            || failed.is_connection_dropped()
        {
            return Err(unreachable_at(
                display,
                crate::error::redact(&failed.to_string()),
            ));
        }
        Err(refused(
            "connecting to Redis",
            format!(
                "{} answered the connection with an error: {}",
                display,
                crate::error::redact(&failed.to_string())
            ),
            "check the Redis URL's database number and protocol, and the server's log",
        ))
    }

    fn unreachable(&self, what: String) -> Error {
        unreachable_at(&self.display, what)
    }
}

fn unreachable_at(display: &str, what: String) -> Error {
    Error::Fatal {
        consumer: None,
        command: "connecting to Redis",
        reason: format!("could not reach {display}: {what}"),
        hint: "check that redis-server runs at that address and accepts connections from \
                   here (host, port, TLS or not), or set `wait_for_redis` (builder: \
                   `.wait_for_redis(true)`, millrace.toml: `[connection] wait_for_redis = true`) \
                   to start anyway and retry until Redis is there"
            .to_owned(),
        source: None,
    }
}
