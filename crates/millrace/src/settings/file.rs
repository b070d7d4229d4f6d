//! The shape of `millrace.toml`: the serde types its tables deserialize into (`redis` or
//! `[redis]`, `[sentinel]`, `service`, `[connection]`, `[restart]`, `[[consumers]]`,
//! `[[multi_streams]]`).

#[cfg(feature = "tls")]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConsumerOptions, RestartPolicy};
use crate::connection::ConnectionOptions;
use crate::error::{Error, Result};
use crate::multi_spec::MultiStreamSpec;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConnection {
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
    /// The connection options this `[connection]` table sets, over the defaults.
    pub(super) fn options(&self) -> Result<ConnectionOptions> {
        let mut connection = ConnectionOptions::default();
        if let Some(t) = self.connect_timeout {
            connection.connect_timeout = t;
        }
        if let Some(t) = self.command_timeout {
            connection.command_timeout = t;
        }
        if let Some(w) = self.wait_for_redis {
            connection.wait_for_redis = w;
        }
        self.tls_into(connection)
    }

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

/// One `[[multi_streams]]` entry: a consumer over many streams
/// ([`MultiStreamSpec`](crate::MultiStreamSpec)), named or found by a key pattern.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MultiStreamDecl {
    /// The streams read, in order (a list, or one comma-separated string as an environment
    /// variable gives it). Exactly one of `streams` and `pattern` is set.
    #[serde(default, deserialize_with = "string_list")]
    pub streams: Vec<String>,
    /// The key pattern streams are found by (`SCAN … MATCH`, for example `tenant:*:events`).
    pub pattern: Option<String>,
    /// Consumer group.
    pub group: String,
    /// Consumer name (with `replicas > 1`, the base of `{consumer}-{index}`).
    pub consumer: Option<String>,
    /// How many consumers to start with this declaration, each reading every stream. Default 1.
    #[serde(default = "one")]
    pub replicas: usize,
    /// How often the pattern is matched against the keys (a pattern only). Default 10s.
    #[serde(default, with = "crate::config::opt_duration")]
    pub discovery_interval: Option<Duration>,
    /// Options: `defaults` overridden by this declaration's own table.
    #[serde(default)]
    pub options: ConsumerOptions,
}

impl MultiStreamDecl {
    /// Checks that exactly one of `streams` and `pattern` is set, naming the declaration (`at`).
    pub(super) fn check_source(&self, at: &str) -> Result<()> {
        match (self.streams.is_empty(), &self.pattern) {
            (false, Some(_)) => Err(Error::config(
                None,
                &format!("{at}.pattern"),
                "and `streams` are both set: name the streams, or give a pattern to find them by, not both",
            )),
            (true, None) => Err(Error::config(
                None,
                &format!("{at}.streams"),
                "is empty and there is no `pattern`: name the streams (`streams = [\"a\", \"b\"]`) or give a key pattern (`pattern = \"tenant:*:events\"`)",
            )),
            _ => Ok(()),
        }
    }

    /// The spec this declaration makes for the consumer `name`, without a handler.
    pub(super) fn spec(&self, name: String) -> MultiStreamSpec {
        let spec = match &self.pattern {
            Some(pattern) => MultiStreamSpec::pattern(pattern, &self.group, name),
            None => MultiStreamSpec::new(self.streams.iter().cloned(), &self.group, name),
        };
        let spec = spec.with_options(self.options.clone());
        match self.discovery_interval {
            Some(every) => spec.discovery_interval(every),
            None => spec,
        }
    }
}

/// A list of names, or one comma-separated string of them.
fn string_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    Ok(match SeedList::deserialize(d)? {
        SeedList::List(names) => names,
        SeedList::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// `redis = "url"`, or a `[redis]` table: `cluster = [urls]` (or one comma-separated string, as
/// `MILLRACE_REDIS__CLUSTER` gives it).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum FileRedis {
    Url(String),
    Table(FileRedisTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRedisTable {
    cluster: SeedList,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum SeedList {
    List(Vec<String>),
    Text(String),
}

/// `[sentinel]`: a master behind Redis Sentinel, by the name the Sentinels monitor and their
/// URLs (a list, or one comma-separated string as `MILLRACE_SENTINEL__URLS` gives it), with the
/// data nodes' optional username and password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSentinel {
    master: String,
    #[serde(deserialize_with = "string_list")]
    urls: Vec<String>,
    username: Option<String>,
    password: Option<String>,
}

impl FileSentinel {
    pub(super) fn target(self) -> Result<RedisTarget> {
        if self.username.is_some() && self.password.is_none() {
            return Err(Error::config(
                None,
                "sentinel.username",
                "is set without `sentinel.password`: give the data nodes' password too",
            ));
        }
        Ok(RedisTarget::Sentinel {
            master: self.master,
            urls: self.urls,
            username: self.username,
            password: self.password,
        })
    }
}

/// Where the supervisor connects.
#[derive(Clone)]
pub(super) enum RedisTarget {
    Url(String),
    Cluster(Vec<String>),
    Sentinel {
        master: String,
        urls: Vec<String>,
        username: Option<String>,
        password: Option<String>,
    },
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
pub(super) struct FileConfig {
    pub(super) redis: Option<FileRedis>,
    pub(super) sentinel: Option<FileSentinel>,
    pub(super) service: Option<String>,
    pub(super) connection: Option<FileConnection>,
    #[serde(default)]
    pub(super) restart: RestartPolicy,
    #[serde(default)]
    pub(super) consumers: Vec<ConsumerDecl>,
    #[serde(default)]
    pub(super) multi_streams: Vec<MultiStreamDecl>,
}
