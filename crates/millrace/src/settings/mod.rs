//! Consumers declared in a `millrace.toml` file, with `MILLRACE_…` environment overrides, and stable
//! consumer names for fleets.
//!
//! ```toml
//! redis = "redis://127.0.0.1:6379"      # or MILLRACE_REDIS / REDIS_URL
//! # On a Redis Cluster, the URLs of some of its nodes instead (MILLRACE_REDIS__CLUSTER, comma-separated):
//! # [redis]
//! # cluster = ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
//! # A master behind Redis Sentinel instead (MILLRACE_SENTINEL__MASTER, MILLRACE_SENTINEL__URLS, …):
//! # [sentinel]
//! # master = "mymaster"                 # the NAME of `sentinel monitor NAME host port quorum`
//! # urls = ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]
//! # username = "millrace"               # the data nodes' ACL user and password (optional)
//! # password = "…"
//!
//! [connection]
//! command_timeout = "5s"
//! # tls_ca_cert = "/etc/redis/ca.crt"   # rediss:// with a private CA (the `tls` feature)
//!
//! [restart]
//! max_restarts = 5
//! window = "1m"
//!
//! [defaults]                            # options every consumer starts from
//! count = 100
//! claim_min_idle = "2m"
//!
//! [[consumers]]
//! stream = "orders"
//! group = "processors"
//! consumer = "billing"                  # default: {service}-{host}
//! replicas = 4                          # billing-0 … billing-3
//! [consumers.options]                   # overrides `defaults` for this consumer
//! block = "2s"
//!
//! [[multi_streams]]                     # one consumer over many streams
//! streams = ["orders:eu", "orders:us"]  # or: pattern = "tenant:*:events"
//! group = "billing"
//! ```
//!
//! Environment overrides use `__` between levels: `MILLRACE_DEFAULTS__COUNT=50`,
//! `MILLRACE_RESTART__WINDOW=30s`, `MILLRACE_CONSUMERS__0__OPTIONS__BLOCK=1s`, `MILLRACE_REDIS=…`.
//! The index after the last declared entry declares a new one (`MILLRACE_MULTI_STREAMS__0__GROUP=g`).
//! Unknown keys, in the file or the environment, are refused with an error naming them.

mod env;
mod file;
mod specs;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::config::{ConsumerOptions, RestartPolicy};
use crate::connection::ConnectionOptions;
use crate::error::{Error, Result};
use env::toml_message;
pub use file::{ConsumerDecl, MultiStreamDecl};
use file::{FileConfig, RedisTarget};

/// A stable consumer name for fleets: `{service}-{host}`, where host is `HOSTNAME` or
/// `/etc/hostname`. Stable across restarts, so a restarted process replays its own pending entries
/// instead of leaving them to an abandoned name.
///
/// ```
/// let name = millrace::stable_name("billing");
/// assert!(name.starts_with("billing-"));
/// ```
pub fn stable_name(service: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{service}-{host}")
}

/// A loaded `millrace.toml`: the Redis URL, connection and restart settings, and consumer
/// declarations. Handlers are code, so you attach them per stream.
///
/// ```
/// # fn main() -> millrace::Result<()> {
/// use millrace::{Batch, HandlerResult, RawEntry, Settings};
///
/// let settings = Settings::from_toml_str(r#"
///     redis = "redis://127.0.0.1:6379"
///     [defaults]
///     count = 50
///     [[consumers]]
///     stream = "orders"
///     group = "processors"
///     consumer = "billing"
///     replicas = 2
/// "#)?;
/// let specs = settings.consumers("orders", |_b: Batch<RawEntry>| async { HandlerResult::Ok });
/// assert_eq!(specs.len(), 2);
/// assert_eq!(&*specs[1].id().consumer, "billing-1");
/// assert_eq!(specs[0].options().count, Some(50));
/// let builder = settings.supervisor()?.consumers(specs); // then .start().await
/// # let _ = builder; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Settings {
    redis: Option<RedisTarget>,
    service: Option<String>,
    connection: ConnectionOptions,
    restart: RestartPolicy,
    consumers: Vec<ConsumerDecl>,
    multi_streams: Vec<MultiStreamDecl>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("redis", &self.redis.as_ref().map(|_| "<set, not shown>"))
            .field("service", &self.service)
            .field("connection", &self.connection)
            .field("restart", &self.restart)
            .field("consumers", &self.consumers)
            .field("multi_streams", &self.multi_streams)
            .finish()
    }
}

impl Settings {
    /// Loads a file, then applies `MILLRACE_…` environment overrides.
    pub fn load(path: impl AsRef<Path>) -> Result<Settings> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(
                None,
                &path.display().to_string(),
                format!("cannot be read: {e}"),
            )
        })?;
        Self::parse(&text, std::env::vars())
    }

    /// Parses TOML text (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Settings> {
        Self::parse(text, std::iter::empty())
    }

    /// Parses TOML text and applies overrides given as `(name, value)` pairs named like environment
    /// variables (`MILLRACE_DEFAULTS__COUNT`).
    pub fn parse(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Settings> {
        let mut root: toml::Table = toml::from_str(text)
            .map_err(|e| Error::config(None, "millrace.toml", toml_message(&e)))?;
        env::apply(&mut root, env)?;
        let defaults = match root.remove("defaults") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(Error::config(None, "defaults", "must be a table")),
            None => toml::Table::new(),
        };
        let mut declared = false;
        for section in ["consumers", "multi_streams"] {
            if let Some(toml::Value::Array(decls)) = root.get_mut(section) {
                declared = true;
                for decl in decls.iter_mut() {
                    if let toml::Value::Table(decl) = decl {
                        let mut merged = defaults.clone();
                        if let Some(toml::Value::Table(own)) = decl.remove("options") {
                            merged.extend(own);
                        }
                        decl.insert("options".to_owned(), toml::Value::Table(merged));
                    }
                }
            }
        }
        if !declared && !defaults.is_empty() {
            // Still validate the defaults table.
            ConsumerOptions::deserialize(toml::Value::Table(defaults.clone()))
                .map_err(|e| Error::config(None, "defaults", e.to_string()))?;
        }
        let file: FileConfig = FileConfig::deserialize(toml::Value::Table(root))
            .map_err(|e| Error::config(None, "millrace.toml", e.to_string()))?;
        let connection = match &file.connection {
            Some(c) => c.options()?,
            None => ConnectionOptions::default(),
        };
        connection.validate()?;
        file.restart.validate()?;
        for (i, decl) in file.consumers.iter().enumerate() {
            check_declaration(&format!("consumers[{i}]"), &decl.options, decl.replicas)?;
        }
        for (i, decl) in file.multi_streams.iter().enumerate() {
            let at = format!("multi_streams[{i}]");
            check_declaration(&at, &decl.options, decl.replicas)?;
            decl.check_source(&at)?;
        }
        let redis = match (file.redis, file.sentinel) {
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    None,
                    "redis, sentinel",
                    "are both set (in the file or by MILLRACE_REDIS… and MILLRACE_SENTINEL__… \
                     variables): keep `redis` for one server or a cluster, or `[sentinel]` for a \
                     master behind Redis Sentinel",
                ))
            }
            (Some(redis), None) => Some(RedisTarget::from(redis)),
            (None, Some(sentinel)) => Some(sentinel.target()?),
            (None, None) => None,
        };
        Ok(Settings {
            redis,
            service: file.service,
            connection,
            restart: file.restart,
            consumers: file.consumers,
            multi_streams: file.multi_streams,
        })
    }

    /// The multi-stream consumer declarations (`[[multi_streams]]`).
    pub fn multi_stream_declarations(&self) -> &[MultiStreamDecl] {
        &self.multi_streams
    }

    /// The consumer declarations.
    pub fn declarations(&self) -> &[ConsumerDecl] {
        &self.consumers
    }
}

/// Checks what every declaration has: its options and its replica count, naming the declaration
/// (`consumers[0]`) in the error.
fn check_declaration(at: &str, options: &ConsumerOptions, replicas: usize) -> Result<()> {
    options.validate(None).map_err(|e| match e {
        Error::Config { field, reason, .. } => {
            Error::config(None, &format!("{at}.options.{field}"), reason)
        }
        other => other,
    })?;
    if replicas == 0 {
        return Err(Error::config(
            None,
            &format!("{at}.replicas"),
            "must be at least 1",
        ));
    }
    Ok(())
}
