//! Consumers declared in a `millrace.toml` file, with `MILLRACE_…` environment overrides, and stable
//! consumer names for fleets.
//!
//! ```toml
//! redis = "redis://127.0.0.1:6379"      # or MILLRACE_REDIS / REDIS_URL
//! # On a Redis Cluster, the URLs of some of its nodes instead (MILLRACE_REDIS__CLUSTER, comma-separated):
//! # [redis]
//! # cluster = ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
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
//! ```
//!
//! Environment overrides use `__` between levels: `MILLRACE_DEFAULTS__COUNT=50`,
//! `MILLRACE_RESTART__WINDOW=30s`, `MILLRACE_CONSUMERS__0__OPTIONS__BLOCK=1s`, `MILLRACE_REDIS=…`.
//! Unknown keys, in the file or the environment, are refused with an error naming them.

mod env;
mod file;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::config::{ConsumerOptions, RestartPolicy};
use crate::connection::ConnectionOptions;
use crate::error::{Error, Result};
use crate::spec::ConsumerSpec;
use crate::supervisor::{Supervisor, SupervisorBuilder};
use env::{set_path, toml_message, ENV_PREFIX, TOP_LEVEL};
pub use file::ConsumerDecl;
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
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("redis", &self.redis.as_ref().map(|_| "<set, not shown>"))
            .field("service", &self.service)
            .field("connection", &self.connection)
            .field("restart", &self.restart)
            .field("consumers", &self.consumers)
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
        for (name, value) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Only the file's own sections: other tools' MILLRACE_* variables are not ours.
            let top = path
                .split("__")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !TOP_LEVEL.contains(&top.as_str()) {
                continue;
            }
            set_path(&mut root, path, &value, &name)?;
        }
        let defaults = match root.remove("defaults") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(Error::config(None, "defaults", "must be a table")),
            None => toml::Table::new(),
        };
        if let Some(toml::Value::Array(consumers)) = root.get_mut("consumers") {
            for decl in consumers.iter_mut() {
                if let toml::Value::Table(decl) = decl {
                    let mut merged = defaults.clone();
                    if let Some(toml::Value::Table(own)) = decl.remove("options") {
                        merged.extend(own);
                    }
                    decl.insert("options".to_owned(), toml::Value::Table(merged));
                }
            }
        } else if !defaults.is_empty() {
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
            decl.options.validate(None).map_err(|e| match e {
                Error::Config { field, reason, .. } => {
                    Error::config(None, &format!("consumers[{i}].options.{field}"), reason)
                }
                other => other,
            })?;
            if decl.replicas == 0 {
                return Err(Error::config(
                    None,
                    &format!("consumers[{i}].replicas"),
                    "must be at least 1",
                ));
            }
        }
        Ok(Settings {
            redis: file.redis.map(RedisTarget::from),
            service: file.service,
            connection,
            restart: file.restart,
            consumers: file.consumers,
        })
    }

    /// The consumer declarations.
    pub fn declarations(&self) -> &[ConsumerDecl] {
        &self.consumers
    }

    /// A supervisor builder with the Redis URL (file, `MILLRACE_REDIS`, or `REDIS_URL`) or the
    /// cluster's seed URLs (`[redis] cluster`, `MILLRACE_REDIS__CLUSTER`), connection options and
    /// restart policy set.
    pub fn supervisor(&self) -> Result<SupervisorBuilder> {
        let target = self
            .redis
            .clone()
            .or_else(|| std::env::var("REDIS_URL").ok().map(RedisTarget::Url))
            .ok_or_else(|| {
                Error::config(
                    None,
                    "redis",
                    "is not set in the file, MILLRACE_REDIS or REDIS_URL",
                )
            })?;
        let builder = match target {
            RedisTarget::Url(url) => Supervisor::builder().redis(url),
            RedisTarget::Cluster(seeds) if seeds.is_empty() => {
                return Err(Error::config(
                    None,
                    "redis.cluster",
                    "is empty: name at least one node of the cluster",
                ))
            }
            RedisTarget::Cluster(seeds) => Supervisor::builder().redis_cluster(seeds),
        };
        Ok(builder
            .connection_options(self.connection.clone())
            .restart_policy(self.restart.clone()))
    }

    /// Specs for every consumer declared on `stream`, replicas expanded, all with `handler`.
    pub fn consumers<M, H>(&self, stream: &str, handler: H) -> Vec<ConsumerSpec>
    where
        M: crate::Decode,
        H: crate::Handler<M>,
    {
        let template = ConsumerSpec::new(stream, "", "").handler(handler);
        let service = self.service.as_deref().unwrap_or("millrace");
        self.consumers
            .iter()
            .filter(|d| d.stream == stream)
            .flat_map(|decl| {
                let base = decl
                    .consumer
                    .clone()
                    .unwrap_or_else(|| stable_name(service));
                template
                    .clone()
                    .with_options(decl.options.clone())
                    .with_id(&decl.group, &base)
                    .replicas(decl.replicas)
            })
            .collect()
    }
}
