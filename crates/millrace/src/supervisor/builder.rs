//! [`SupervisorBuilder`]: what a supervisor is built from (where Redis is, options, consumers and
//! multi-stream consumers), and `start`, which checks it, connects and spawns the supervision tree.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorCell};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ready, stream_sets, MetricsLabels, Supervisor};
use crate::actors::supervisor_actor::{NameLease, SupArgs, SupervisorActor, SupervisorShared};
use crate::config::RestartPolicy;
use crate::connection::{Backend, ConnectionOptions};
use crate::error::{Error, Result};
use crate::multi_spec::MultiStreamSpec;
use crate::spec::ConsumerSpec;

/// Where the supervisor connects, as the builder was told.
pub(super) enum RedisSource {
    Url(String),
    Client(Box<redis::Client>),
    Cluster(Vec<String>),
    Sentinel(crate::sentinel::SentinelConfig),
}

/// Builds and starts a [`Supervisor`].
///
/// ```no_run
/// # async fn demo() -> millrace::Result<()> {
/// use millrace::{Batch, ConsumerSpec, HandlerResult, RawEntry, Supervisor};
///
/// let app = Supervisor::builder()
///     .redis("redis://127.0.0.1:6379")
///     .consumer(ConsumerSpec::new("orders", "processors", "proc-1").handler(
///         |batch: Batch<RawEntry>| async move {
///             for entry in &batch {
///                 println!("{}: {:?}", entry.id, entry.message.get_str("item"));
///             }
///             HandlerResult::Ok
///         },
///     ))
///     .start()
///     .await?;
/// app.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct SupervisorBuilder {
    pub(super) redis: Option<RedisSource>,
    pub(super) connection: ConnectionOptions,
    pub(super) restart: RestartPolicy,
    pub(super) consumers: Vec<ConsumerSpec>,
    pub(super) multis: Vec<MultiStreamSpec>,
    pub(super) ready_grace: std::time::Duration,
    pub(super) metrics_labels: MetricsLabels,
    #[cfg(feature = "http")]
    pub(crate) http: Option<std::net::SocketAddr>,
}

impl fmt::Debug for SupervisorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redis = match &self.redis {
            None => "unset".to_owned(),
            Some(RedisSource::Url(_)) => "<url, not shown>".to_owned(),
            Some(RedisSource::Client(c)) => format!("{:?}", c.get_connection_info().addr()),
            Some(RedisSource::Cluster(seeds)) => {
                format!("<cluster of {} seed urls, not shown>", seeds.len())
            }
            Some(RedisSource::Sentinel(config)) => format!("{config:?}"),
        };
        f.debug_struct("SupervisorBuilder")
            .field("redis", &redis)
            .field("connection", &self.connection)
            .field("restart", &self.restart)
            .field("consumers", &self.consumers)
            .field("multi_stream", &self.multis)
            .finish()
    }
}

impl SupervisorBuilder {
    /// The Redis URL (`redis://[user:password@]host:port[/db]`, `rediss://` with the `tls` feature,
    /// `unix:///path`). It is never logged or shown by `Debug`.
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(RedisSource::Url(url.into()));
        self
    }

    /// A Redis Cluster, by the URLs of some of its nodes (`redis://[user:password@]host:port`,
    /// `rediss://` with the `tls` feature): any one that answers is enough to find the rest. Every
    /// URL carries the same credentials. Control commands go through redis-rs's cluster client,
    /// which follows `MOVED` and `ASK`; each consumer reads from the master that serves its
    /// stream's slot and follows it across failovers and slot migrations. The URLs are never
    /// logged or shown by `Debug`.
    ///
    /// ```no_run
    /// # async fn run() -> millrace::Result<()> {
    /// let app = millrace::Supervisor::builder()
    ///     .redis_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn redis_cluster<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.redis = Some(RedisSource::Cluster(
            seeds.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// A primary with replicas behind Redis Sentinel: `master_name` is the NAME of the Sentinels'
    /// `sentinel monitor NAME host port quorum`, `sentinels` their URLs
    /// (`redis://[:password@]host:26379`, the Sentinels' own password if they have one). Every
    /// connection (control and reads) goes to the master the Sentinels name at that moment, and
    /// is moved when they name another (a `SENTINEL FAILOVER`, or a promotion after the master
    /// died). The data nodes' credentials go to [`sentinel_data_auth`](Self::sentinel_data_auth).
    /// `start()` fails at once when no Sentinel answers or none knows `master_name`.
    ///
    /// ```no_run
    /// # async fn run() -> millrace::Result<()> {
    /// let app = millrace::Supervisor::builder()
    ///     .redis_sentinel("mymaster", ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"])
    ///     .sentinel_data_auth(Some("millrace"), "PASSWORD")
    ///     // .consumer(...)
    ///     .start()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn redis_sentinel<I, S>(mut self, master_name: impl Into<String>, sentinels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let data_auth = match &self.redis {
            Some(RedisSource::Sentinel(c)) => c.data_auth.clone(),
            _ => String::new(),
        };
        self.redis = Some(RedisSource::Sentinel(crate::sentinel::SentinelConfig {
            master_name: master_name.into(),
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            data_auth,
        }));
        self
    }

    /// The username (none for the default user) and password of the data nodes behind Sentinel
    /// (after [`redis_sentinel`](Self::redis_sentinel)). Never logged or shown by `Debug`.
    pub fn sentinel_data_auth(mut self, username: Option<&str>, password: &str) -> Self {
        if let Some(RedisSource::Sentinel(c)) = &mut self.redis {
            c.data_auth = crate::sentinel::userinfo(username, password);
        }
        self
    }

    /// A ready-made `redis::Client` (for a connection setting millrace has no option for). TLS
    /// certificates go through `ConnectionOptions::tls_certificates` (feature `tls`) instead: millrace's own
    /// read connections need them too, and a client built with certificates millrace was not
    /// given is refused at start.
    pub fn redis_client(mut self, client: redis::Client) -> Self {
        self.redis = Some(RedisSource::Client(Box::new(client)));
        self
    }

    /// Validates everything, connects to Redis once, and starts the supervisor and its consumers.
    /// Fails on invalid configuration, a duplicate consumer, or when Redis cannot be reached or
    /// refuses the credentials (the error names the server and what to check), unless
    /// [`wait_for_redis`](Self::wait_for_redis) is set. Once started, outages are retried.
    pub async fn start(self) -> Result<Supervisor> {
        self.start_inner(None).await
    }

    /// Like [`start`](Self::start), but links the supervisor under your own ractor actor: when millrace
    /// gives up on a consumer, your actor receives `SupervisionEvent::ActorFailed` with the error.
    pub async fn start_linked(self, parent: ActorCell) -> Result<Supervisor> {
        self.start_inner(Some(parent)).await
    }

    async fn start_inner(self, parent: Option<ActorCell>) -> Result<Supervisor> {
        self.restart.validate()?;
        let mut sentinel = None;
        let backend = match self.redis {
            None => {
                return Err(Error::config(
                    None,
                    "redis",
                    "is not set: call `.redis(url)` or `.redis_cluster(urls)`",
                ))
            }
            Some(RedisSource::Url(url)) => Backend::open(&url, self.connection)?,
            Some(RedisSource::Client(client)) => Backend::from_client(*client, self.connection)?,
            Some(RedisSource::Cluster(seeds)) => Backend::open_cluster(&seeds, self.connection)?,
            Some(RedisSource::Sentinel(config)) => {
                let timeout = self.connection.connect_timeout;
                let (forwarder, url) = crate::sentinel::start(&config, timeout).await?;
                sentinel = Some(forwarder);
                Backend::open(&url, self.connection)?
            }
        };
        let registry = stream_sets::registry(&self.multis)?;
        let mut consumers = self.consumers;
        for spec in &self.multis {
            consumers.extend(spec.streams().iter().map(|s| spec.for_stream(s)));
        }
        let mut seen = HashSet::new();
        for spec in &consumers {
            spec.validate()?;
            if !seen.insert(spec.id.clone()) {
                return Err(Error::DuplicateConsumer {
                    consumer: spec.id.clone(),
                });
            }
        }
        if !backend.waits_for_redis() {
            backend.check_reachable().await?;
            ready::check_cluster(&backend, backend.server()).await?;
            let deleting: Vec<_> = consumers
                .iter()
                .filter(|s| s.options.delete_acked)
                .map(|s| &s.id)
                .collect();
            crate::acked_delete::check_server(&backend, &deleting).await?;
        }
        #[cfg(feature = "http")]
        let listener = match self.http {
            Some(addr) => Some(super::http::bind(addr).await?),
            None => None,
        };
        let mut initial = Vec::with_capacity(consumers.len());
        for spec in consumers {
            let lease = NameLease::take(backend.server(), &spec.id)?;
            initial.push((spec, lease));
        }
        // Health is visible from the moment start() returns.
        let health = initial
            .iter()
            .map(|(spec, _): &(ConsumerSpec, NameLease)| {
                (
                    spec.id.clone(),
                    Arc::new(crate::health::HealthCell::new(spec.id.clone())),
                )
            })
            .collect::<BTreeMap<_, _>>();
        let shared = Arc::new(SupervisorShared {
            backend: Arc::new(backend),
            health: Mutex::new(health),
            failure: Mutex::new(None),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            multi: Mutex::new(registry),
        });
        let args = SupArgs {
            shared: shared.clone(),
            policy: self.restart,
            initial,
        };
        let spawned = match parent {
            Some(parent) => Actor::spawn_linked(None, SupervisorActor, args, parent).await,
            None => Actor::spawn(None, SupervisorActor, args).await,
        };
        let (actor, join) =
            spawned.map_err(|e| Error::Supervisor(format!("could not start: {e}")))?;
        let (done_tx, done_rx) = watch::channel(false);
        tokio::spawn(async move {
            let _ = join.await;
            let _ = done_tx.send(true);
        });
        if let Some(forwarder) = sentinel {
            forwarder.stop_when(done_rx.clone());
        }
        #[allow(unused_mut)]
        let mut app = Supervisor {
            actor,
            shared,
            done: done_rx,
            ready_grace: self.ready_grace,
            metrics_labels: self.metrics_labels,
            http_addr: None,
        };
        #[cfg(feature = "http")]
        if let Some(listener) = listener {
            app.http_addr = listener.local_addr().ok();
            let cancel = app.shared.cancel.child_token();
            let server = super::http::serve(listener, app.clone(), cancel);
            app.shared.tasks.spawn(server);
        }
        Ok(app)
    }
}
