//! What the declarations of [`Settings`] become: a supervisor builder for the Redis they name, and
//! the specs of their consumers and multi-stream consumers, replicas expanded and named.

use super::file::RedisTarget;
use super::{stable_name, Settings};
use crate::error::{Error, Result};
use crate::multi_spec::MultiStreamSpec;
use crate::spec::ConsumerSpec;
use crate::supervisor::{Supervisor, SupervisorBuilder};

impl Settings {
    /// A supervisor builder with the Redis URL (file, `MILLRACE_REDIS`, or `REDIS_URL`), the
    /// cluster's seed URLs (`[redis] cluster`, `MILLRACE_REDIS__CLUSTER`) or the Sentinels'
    /// master name and URLs (`[sentinel]`, `MILLRACE_SENTINEL__…`, see
    /// [`SupervisorBuilder::redis_sentinel`]), connection options and restart policy set.
    ///
    /// ```
    /// # fn main() -> millrace::Result<()> {
    /// let settings = millrace::Settings::from_toml_str(r#"
    ///     [sentinel]
    ///     master = "mymaster"
    ///     urls = ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]
    ///     password = "PASSWORD"
    /// "#)?;
    /// let builder = settings.supervisor()?; // then .consumers(…).start().await
    /// assert!(!format!("{builder:?}").contains("PASSWORD"));
    /// # Ok(()) }
    /// ```
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
            RedisTarget::Sentinel { urls, .. } if urls.is_empty() => {
                return Err(Error::config(
                    None,
                    "sentinel.urls",
                    "is empty: name at least one Sentinel (`redis://host:26379`)",
                ))
            }
            RedisTarget::Sentinel {
                master,
                urls,
                username,
                password,
            } => {
                let builder = Supervisor::builder().redis_sentinel(master, urls);
                match password {
                    Some(pw) => builder.sentinel_data_auth(username.as_deref(), &pw),
                    None => builder,
                }
            }
        };
        Ok(builder
            .connection_options(self.connection.clone())
            .restart_policy(self.restart.clone()))
    }

    /// A declaration's consumer name: the one it gives, else a stable name for this host and the
    /// service (`service`, or `millrace`).
    fn consumer_name(&self, declared: &Option<String>) -> String {
        declared
            .clone()
            .unwrap_or_else(|| stable_name(self.service.as_deref().unwrap_or("millrace")))
    }

    /// Specs for every consumer declared on `stream`, replicas expanded, all with `handler`.
    pub fn consumers<M, H>(&self, stream: &str, handler: H) -> Vec<ConsumerSpec>
    where
        M: crate::Decode,
        H: crate::Handler<M>,
    {
        let template = ConsumerSpec::new(stream, "", "").handler(handler);
        self.consumers
            .iter()
            .filter(|d| d.stream == stream)
            .flat_map(|decl| {
                let base = self.consumer_name(&decl.consumer);
                template
                    .clone()
                    .with_options(decl.options.clone())
                    .with_id(&decl.group, &base)
                    .replicas(decl.replicas)
            })
            .collect()
    }

    /// Specs for every multi-stream consumer declared in `group` (`[[multi_streams]]`), replicas
    /// expanded (`{consumer}-0` …, each reading every stream), all with `handler`. Start each with
    /// [`SupervisorBuilder::multi_stream`].
    ///
    /// ```
    /// # fn main() -> millrace::Result<()> {
    /// use millrace::{Batch, HandlerResult, RawEntry, Settings};
    ///
    /// let settings = Settings::from_toml_str(r#"
    ///     [[multi_streams]]
    ///     streams = ["orders:eu", "orders:us"]
    ///     group = "billing"
    ///     consumer = "billing-1"
    ///     [[multi_streams]]
    ///     pattern = "tenant:*:events"
    ///     group = "audit"
    ///     consumer = "audit"
    ///     discovery_interval = "5s"
    /// "#)?;
    /// let handler = |_b: Batch<RawEntry>| async { HandlerResult::Ok };
    /// let billing = settings.multi_streams("billing", handler);
    /// assert_eq!(billing[0].streams(), ["orders:eu", "orders:us"]);
    /// let audit = settings.multi_streams("audit", handler);
    /// assert_eq!(audit[0].key_pattern(), Some("tenant:*:events"));
    /// let mut builder = millrace::Supervisor::builder().redis("redis://127.0.0.1:6379");
    /// for spec in billing.into_iter().chain(audit) {
    ///     builder = builder.multi_stream(spec); // then .start().await
    /// }
    /// # Ok(()) }
    /// ```
    pub fn multi_streams<M, H>(&self, group: &str, handler: H) -> Vec<MultiStreamSpec>
    where
        M: crate::Decode,
        H: crate::Handler<M>,
    {
        let with_handler = MultiStreamSpec::new(Vec::<String>::new(), "", "").handler(handler);
        self.multi_streams
            .iter()
            .filter(|d| d.group == group)
            .flat_map(|decl| {
                let base = self.consumer_name(&decl.consumer);
                replica_names(&base, decl.replicas)
                    .into_iter()
                    .map(|name| decl.spec(name).with_handler_of(&with_handler))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// `base` for one replica, `{base}-0` … `{base}-{n-1}` for more (as [`ConsumerSpec::replicas`]).
fn replica_names(base: &str, n: usize) -> Vec<String> {
    match n {
        1 => vec![base.to_owned()],
        n => (0..n).map(|i| format!("{base}-{i}")).collect(),
    }
}
