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

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConsumerOptions, RestartPolicy};
use crate::connection::ConnectionOptions;
use crate::error::{Error, Result};
use crate::spec::ConsumerSpec;
use crate::supervisor::{Supervisor, SupervisorBuilder};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConnection {
    #[serde(default, with = "crate::config::opt_duration")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "crate::config::opt_duration")]
    command_timeout: Option<Duration>,
    wait_for_redis: Option<bool>,
    /// PEM root certificates to trust instead of the Mozilla roots (`tls` feature).
    tls_ca_cert: Option<PathBuf>,
    /// PEM client certificate chain and key for mutual TLS (`tls` feature), both or neither.
    tls_client_cert: Option<PathBuf>,
    tls_client_key: Option<PathBuf>,
}

impl FileConnection {
    /// Reads the TLS files named, if any, into `options`.
    fn tls_into(&self, options: ConnectionOptions) -> Result<ConnectionOptions> {
        let named = [
            &self.tls_ca_cert,
            &self.tls_client_cert,
            &self.tls_client_key,
        ];
        if named.iter().all(|p| p.is_none()) {
            return Ok(options);
        }
        #[cfg(not(feature = "tls"))]
        {
            Err(Error::config(
                None,
                "connection.tls_ca_cert",
                "and the other `tls_…` settings need millrace's `tls` cargo feature",
            ))
        }
        #[cfg(feature = "tls")]
        {
            let read = |field: &str, path: &Path| {
                std::fs::read(path).map_err(|e| {
                    Error::config(
                        None,
                        &format!("connection.{field}"),
                        format!("cannot be read from {}: {e}", path.display()),
                    )
                })
            };
            let client_tls = match (&self.tls_client_cert, &self.tls_client_key) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: read("tls_client_cert", cert)?,
                    client_key: read("tls_client_key", key)?,
                }),
                (None, None) => None,
                _ => {
                    return Err(Error::config(
                        None,
                        "connection.tls_client_cert",
                        "and `tls_client_key` go together: set both or neither",
                    ))
                }
            };
            let root_cert = match &self.tls_ca_cert {
                Some(path) => Some(read("tls_ca_cert", path)?),
                None => None,
            };
            Ok(options.tls_certificates(redis::TlsCertificates {
                client_tls,
                root_cert,
            }))
        }
    }
}

/// One `[[consumers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ConsumerDecl {
    /// Stream key.
    pub stream: String,
    /// Consumer group.
    pub group: String,
    /// Consumer name (with `replicas > 1`, the base of `{consumer}-{index}`).
    pub consumer: Option<String>,
    /// How many consumers to start with this declaration. Default 1.
    #[serde(default = "one")]
    pub replicas: usize,
    /// Options: `defaults` overridden by this consumer's own table.
    #[serde(default)]
    pub options: ConsumerOptions,
}

fn one() -> usize {
    1
}

/// `redis = "url"`, or a `[redis]` table: `cluster = [urls]` (or one comma-separated string, as
/// `MILLRACE_REDIS__CLUSTER` gives it).
#[derive(Deserialize)]
#[serde(untagged)]
enum FileRedis {
    Url(String),
    Table(FileRedisTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRedisTable {
    cluster: SeedList,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SeedList {
    List(Vec<String>),
    Text(String),
}

/// Where the supervisor connects.
#[derive(Clone)]
enum RedisTarget {
    Url(String),
    Cluster(Vec<String>),
}

impl From<FileRedis> for RedisTarget {
    fn from(redis: FileRedis) -> Self {
        match redis {
            FileRedis::Url(url) => RedisTarget::Url(url),
            FileRedis::Table(FileRedisTable {
                cluster: SeedList::List(urls),
            }) => RedisTarget::Cluster(urls),
            FileRedis::Table(FileRedisTable {
                cluster: SeedList::Text(urls),
            }) => RedisTarget::Cluster(
                urls.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    redis: Option<FileRedis>,
    service: Option<String>,
    connection: Option<FileConnection>,
    #[serde(default)]
    restart: RestartPolicy,
    #[serde(default)]
    consumers: Vec<ConsumerDecl>,
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

const ENV_PREFIX: &str = "MILLRACE_";
const TOP_LEVEL: [&str; 6] = [
    "redis",
    "service",
    "connection",
    "restart",
    "defaults",
    "consumers",
];

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
        let mut connection = ConnectionOptions::default();
        if let Some(c) = file.connection {
            if let Some(t) = c.connect_timeout {
                connection.connect_timeout = t;
            }
            if let Some(t) = c.command_timeout {
                connection.command_timeout = t;
            }
            if let Some(w) = c.wait_for_redis {
                connection.wait_for_redis = w;
            }
            connection = c.tls_into(connection)?;
        }
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

fn toml_message(e: &toml::de::Error) -> String {
    e.to_string()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets `a__b__0__c` in the table to `value`, parsed as a TOML scalar when it looks like one.
fn set_path(root: &mut toml::Table, path: &str, value: &str, name: &str) -> Result<()> {
    let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let parsed = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.to_owned())),
        Err(_) => toml::Value::String(value.to_owned()),
    };
    let bad = || {
        Error::config(
            None,
            name,
            "does not name a setting (use `__` between levels, e.g. MILLRACE_DEFAULTS__COUNT)",
        )
    };
    let mut table = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.is_empty() {
            return Err(bad());
        }
        if last {
            table.insert(part.clone(), parsed);
            return Ok(());
        }
        let next = parts.get(i + 1).ok_or_else(bad)?;
        let entry = table.entry(part.clone()).or_insert_with(|| {
            if next.parse::<usize>().is_ok() {
                toml::Value::Array(Vec::new())
            } else {
                toml::Value::Table(toml::Table::new())
            }
        });
        table = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                let index: usize = next.parse().map_err(|_| bad())?;
                let declared = items.len();
                let item = items.get_mut(index).ok_or_else(|| {
                    Error::config(
                        None,
                        name,
                        format!("index {index} is past the {declared} declared entries"),
                    )
                })?;
                // Skip the index part on the next round.
                return match item {
                    toml::Value::Table(t) => set_path(t, &parts[i + 2..].join("__"), value, name),
                    _ => Err(bad()),
                };
            }
            _ => return Err(bad()),
        };
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Batch, HandlerResult, RawEntry};

    const FILE: &str = r#"
        redis = "redis://127.0.0.1:6379"
        [restart]
        max_restarts = 3
        [defaults]
        count = 50
        block = "2s"
        [[consumers]]
        stream = "orders"
        group = "g"
        consumer = "w"
        replicas = 2
        [consumers.options]
        block = "1s"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn handler(_b: Batch<RawEntry>) -> futures::future::Ready<HandlerResult> {
        futures::future::ready(HandlerResult::Ok)
    }

    #[test]
    fn defaults_merge_and_replicas_expand() {
        let s = Settings::from_toml_str(FILE).unwrap();
        let specs = s.consumers("orders", handler);
        assert_eq!(specs.len(), 2);
        let o = specs[0].options();
        assert_eq!((o.count, o.block), (Some(50), Duration::from_secs(1)));
        assert_eq!(&*specs[1].id().consumer, "w-1");
        assert!(s.consumers("other", handler).is_empty());
        assert_eq!(s.restart.max_restarts, 3);
    }

    #[test]
    fn environment_overrides_apply() {
        let s = Settings::parse(
            FILE,
            env(&[
                ("MILLRACE_DEFAULTS__COUNT", "7"),
                ("MILLRACE_CONSUMERS__0__OPTIONS__BLOCK", "3s"),
                ("MILLRACE_RESTART__WINDOW", "30s"),
                ("MILLRACE_REDIS_SERVER", "/usr/bin/redis-server"),
                ("MILLRACE_CONNECTION__WAIT_FOR_REDIS", "true"),
            ]),
        )
        .unwrap();
        let o = s.declarations()[0].options.clone();
        assert_eq!((o.count, o.block), (Some(7), Duration::from_secs(3)));
        assert_eq!(s.restart.window, Duration::from_secs(30));
        assert!(s.connection.wait_for_redis);
    }

    #[test]
    fn the_environment_makes_a_fixed_count_adaptive_and_sets_its_bounds() {
        let s = Settings::parse(
            FILE,
            env(&[
                ("MILLRACE_DEFAULTS__COUNT", "adaptive"),
                ("MILLRACE_DEFAULTS__BATCH_TARGET", "250ms"),
                ("MILLRACE_DEFAULTS__MAX_COUNT", "400"),
            ]),
        )
        .unwrap();
        let o = s.declarations()[0].options.clone();
        assert_eq!(o.count, None);
        assert_eq!(o.batch_target, Duration::from_millis(250));
        assert_eq!((o.min_count, o.max_count), (1, 400));
        let err = Settings::parse(FILE, env(&[("MILLRACE_DEFAULTS__MAX_COUNT", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("consumers[0].options.min_count"), "{err}");
        let err = Settings::parse(FILE, env(&[("MILLRACE_DEFAULTS__COUNT", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("adaptive"), "{err}");
    }

    #[test]
    fn tls_files_are_read_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "not checked until a connection is made").unwrap();
        let file =
            |extra: &str| format!("redis = \"rediss://127.0.0.1:6380\"\n[connection]\n{extra}\n");
        let with_ca = Settings::from_toml_str(&file(&format!(
            "tls_ca_cert = {:?}",
            ca.display().to_string()
        )));
        let missing = Settings::from_toml_str(&file("tls_ca_cert = \"/nonexistent/ca.crt\""));
        let half = Settings::from_toml_str(&file(&format!(
            "tls_client_cert = {:?}",
            ca.display().to_string()
        )));
        if cfg!(feature = "tls") {
            assert!(with_ca.is_ok(), "{with_ca:?}");
            let err = missing.unwrap_err().to_string();
            assert!(
                err.contains("connection.tls_ca_cert") && err.contains("/nonexistent/ca.crt"),
                "{err}"
            );
            let err = half.unwrap_err().to_string();
            assert!(err.contains("tls_client_key"), "{err}");
        } else {
            let err = with_ca.unwrap_err().to_string();
            assert!(err.contains("`tls` cargo feature"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = Settings::parse(FILE, env(&[("MILLRACE_DEFAULTS__CONT", "7")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cont"), "{err}");
        let err =
            Settings::from_toml_str(&FILE.replace("replicas = 2", "replicas = 2\nreplica = 1"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("replica"), "{err}");
        let err = Settings::from_toml_str(&FILE.replace("block = \"1s\"", "block = \"1\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("block") && err.contains("no unit"), "{err}");
        let err = Settings::from_toml_str(&FILE.replace("count = 50", "count = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("consumers[0].options.count"), "{err}");
        let err = Settings::parse(FILE, env(&[("MILLRACE_CONSUMERS__3__GROUP", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("index 3"), "{err}");
    }

    #[test]
    fn a_cluster_is_named_by_its_seeds_in_the_file_or_the_environment() {
        let file = FILE.replace(
            r#"redis = "redis://127.0.0.1:6379""#,
            "[redis]\ncluster = [\"redis://u:S3cret@127.0.0.1:7000\", \"redis://u:S3cret@127.0.0.1:7001\"]",
        );
        let s = Settings::from_toml_str(&file).unwrap();
        assert!(matches!(&s.redis, Some(RedisTarget::Cluster(seeds)) if seeds.len() == 2));
        assert!(!format!("{s:?}").contains("S3cret"));
        let builder = format!("{:?}", s.supervisor().unwrap());
        assert!(builder.contains("cluster of 2 seed urls"), "{builder}");
        assert!(!builder.contains("S3cret"), "{builder}");

        let s = Settings::parse(
            FILE,
            env(&[("MILLRACE_REDIS__CLUSTER", "redis://127.0.0.1:7000")]),
        );
        // `redis` is a URL in the file: the override of a key inside it is refused…
        assert!(s.is_err());
        let s = Settings::parse(
            &FILE.replace(r#"redis = "redis://127.0.0.1:6379""#, ""),
            env(&[(
                "MILLRACE_REDIS__CLUSTER",
                "redis://127.0.0.1:7000, redis://127.0.0.1:7001,redis://127.0.0.1:7002",
            )]),
        )
        .unwrap();
        // …and without one in the file, the environment names the cluster.
        assert!(
            matches!(&s.redis, Some(RedisTarget::Cluster(seeds)) if seeds.len() == 3 && seeds[1] == "redis://127.0.0.1:7001")
        );
    }

    #[test]
    fn debug_hides_the_url() {
        let s =
            Settings::from_toml_str(&FILE.replace("redis://127", "redis://u:S3cret@127")).unwrap();
        assert!(!format!("{s:?}").contains("S3cret"));
    }
}
