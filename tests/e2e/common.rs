//! Shared helpers: a server per test, stream commands, and a recording handler.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace::{Batch, EntryId, HandlerResult, RawEntry, Source};
use millrace_testkit::RedisServer;
use redis::aio::{ConnectionLike, MultiplexedConnection};

pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub(crate) async fn server() -> (RedisServer, MultiplexedConnection) {
    init_tracing();
    let server = RedisServer::start();
    let con = connect(&server).await;
    (server, con)
}

/// The test's own connection: a generous response timeout, since a loaded 2-core machine can take
/// longer than redis-rs's default 500 ms.
pub(crate) async fn connect(server: &RedisServer) -> MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    server
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

pub(crate) async fn xadd(
    con: &mut MultiplexedConnection,
    stream: &str,
    fields: &[(&str, &str)],
) -> EntryId {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let id: String = cmd.query_async(con).await.unwrap();
    id.parse().unwrap()
}

pub(crate) async fn xadd_n(
    con: &mut MultiplexedConnection,
    stream: &str,
    n: usize,
) -> Vec<EntryId> {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD").arg(stream).arg("*").arg("n").arg(i);
    }
    let ids: Vec<String> = pipe.query_async(con).await.unwrap();
    ids.into_iter().map(|s| s.parse().unwrap()).collect()
}

/// `CLIENT LIST`: one line per client connection of the server.
pub(crate) async fn client_list(con: &MultiplexedConnection) -> String {
    redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut con.clone())
        .await
        .unwrap()
}

pub(crate) async fn create_group(con: &mut MultiplexedConnection, stream: &str, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(con)
        .await
        .unwrap();
}

/// Total pending entries of a group; `u64::MAX` while the group or key does not exist, so a wait for
/// "nothing pending" cannot pass before the consumer has even created its group.
pub(crate) async fn pending<C: ConnectionLike + Send>(
    con: &mut C,
    stream: &str,
    group: &str,
) -> u64 {
    let r: redis::RedisResult<(u64, redis::Value, redis::Value, redis::Value)> =
        redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(con)
            .await;
    r.map(|r| r.0).unwrap_or(u64::MAX)
}

/// True when the group has been delivered everything in the stream and nothing is pending: the
/// consumers are done, not merely not started. The three facts come from one `MULTI`/`EXEC`, so
/// they describe one moment: read in separate round trips, a consumer's read landing between
/// "nothing pending" and "everything delivered" made both true while the entries it had just
/// read were still pending (see `drained_is_not_fooled_by_a_read_between_its_checks`).
pub(crate) async fn drained<C: ConnectionLike + Send>(
    con: &mut C,
    stream: &str,
    group: &str,
) -> bool {
    type Fields = HashMap<String, redis::Value>;
    let snapshot: redis::RedisResult<(
        (u64, redis::Value, redis::Value, redis::Value),
        Fields,
        Vec<Fields>,
    )> = redis::pipe()
        .atomic()
        .cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(con)
        .await;
    // An error: the key or the group does not exist (yet).
    let Ok(((pending, ..), info, groups)) = snapshot else {
        return false;
    };
    if pending != 0 {
        return false;
    }
    let last_id = match info.get("last-generated-id") {
        Some(redis::Value::BulkString(b)) => EntryId::from_bytes(b),
        _ => None,
    };
    let delivered = groups
        .iter()
        .find_map(|g| match (g.get("name"), g.get("last-delivered-id")) {
            (Some(redis::Value::BulkString(n)), Some(redis::Value::BulkString(id)))
                if n.as_slice() == group.as_bytes() =>
            {
                EntryId::from_bytes(id)
            }
            _ => None,
        });
    matches!((last_id, delivered), (Some(l), Some(d)) if d >= l)
}

/// Pending ids of a group with their owner and delivery count.
pub(crate) async fn pending_rows(
    con: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Vec<millrace::streams::PendingRow> {
    millrace::streams::xpending_range(
        con,
        stream,
        group,
        None,
        EntryId::MIN,
        EntryId::new(u64::MAX, u64::MAX),
        100_000,
        None,
    )
    .await
    .unwrap()
}

pub(crate) async fn command_calls(con: &mut MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    let key = format!("cmdstat_{}:calls=", command.to_lowercase());
    info.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What a handler saw: every (entry id, deliveries, source, consumer) in order.
#[derive(Clone, Default)]
pub(crate) struct Seen(pub(crate) Arc<Mutex<Vec<(EntryId, Option<u64>, Source, String)>>>);

impl Seen {
    pub(crate) fn record<M>(&self, batch: &Batch<M>) {
        let mut seen = self.0.lock().unwrap();
        for e in batch {
            seen.push((
                e.id,
                e.deliveries,
                batch.source,
                batch.meta.consumer.to_string(),
            ));
        }
    }

    pub(crate) fn ids(&self) -> Vec<EntryId> {
        self.0.lock().unwrap().iter().map(|s| s.0).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub(crate) fn count_by_id(&self) -> HashMap<EntryId, usize> {
        let mut m = HashMap::new();
        for (id, ..) in self.0.lock().unwrap().iter() {
            *m.entry(*id).or_default() += 1;
        }
        m
    }

    pub(crate) fn all(&self) -> Vec<(EntryId, Option<u64>, Source, String)> {
        self.0.lock().unwrap().clone()
    }
}

/// A handler that records and acks everything.
pub(crate) fn recording(
    seen: &Seen,
) -> impl Fn(Batch<RawEntry>) -> futures::future::Ready<HandlerResult> + Send + Sync + 'static {
    let seen = seen.clone();
    move |batch: Batch<RawEntry>| {
        seen.record(&batch);
        futures::future::ready(HandlerResult::Ok)
    }
}

/// What a multi-stream handler saw: (stream, entry id) pairs. Ids repeat across streams, so the
/// stream is part of every check.
#[derive(Clone, Default)]
pub(crate) struct Handled(pub(crate) Arc<Mutex<Vec<(String, EntryId)>>>);

impl Handled {
    /// A handler that records every entry and acks it.
    pub(crate) fn handler(
        &self,
    ) -> impl Fn(Batch<RawEntry>) -> futures::future::Ready<HandlerResult> + Send + Sync + 'static
    {
        let handled = self.clone();
        move |batch: Batch<RawEntry>| {
            handled.record(&batch);
            futures::future::ready(HandlerResult::Ok)
        }
    }

    pub(crate) fn record(&self, batch: &Batch<RawEntry>) {
        let mut seen = self.0.lock().unwrap();
        seen.extend(batch.iter().map(|e| (batch.meta.stream.to_string(), e.id)));
    }

    pub(crate) fn has(&self, stream: &str, id: EntryId) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(s, i)| s == stream && *i == id)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Waits until the handler has seen `id` of `stream`.
    pub(crate) async fn wait_for(&self, stream: &str, id: EntryId) {
        millrace_testkit::eventually(WAIT, &format!("{stream} {id} handled"), || {
            let seen = self.has(stream, id);
            async move { seen }
        })
        .await;
    }
}

/// Starts a supervisor of the one multi-stream consumer `spec` on `server`.
pub(crate) async fn start_multi(
    server: &RedisServer,
    spec: millrace::MultiStreamSpec,
) -> millrace::Supervisor {
    millrace::Supervisor::builder()
        .redis(server.url())
        .multi_stream(spec)
        .start()
        .await
        .unwrap()
}

/// Whether `key` exists.
pub(crate) async fn exists(con: &mut MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<u64>(con)
        .await
        .unwrap()
        == 1
}

/// Waits until every consumer of `app` is reading.
pub(crate) async fn wait_running(app: &millrace::Supervisor) {
    millrace_testkit::eventually(WAIT, "every consumer running", || {
        let ready = app.is_ready();
        async move { ready }
    })
    .await;
}

/// After a handler panic the consumer restarts with a new reader; the old reader's blocked read
/// must not survive it. Otherwise the server, serving its oldest blocked client first, would hand
/// the next entry to a reader nobody listens to, and the entry would wait for `claim_min_idle`.
/// `builder` says where Redis is; `con` is the test's own connection to it.
pub(crate) async fn new_entries_reach_the_restarted_consumer(
    builder: millrace::SupervisorBuilder,
    mut con: MultiplexedConnection,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let seen = Seen::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (seen, calls) = (seen.clone(), calls.clone());
        move |batch: Batch<RawEntry>| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("the first batch fails");
            }
            seen.record(&batch);
            futures::future::ready(HandlerResult::Ok)
        }
    };
    let mut policy = millrace::RestartPolicy::default();
    policy.backoff_initial = Duration::from_millis(10);
    policy.backoff_max = Duration::from_millis(50);
    let app = builder
        .restart_policy(policy)
        .consumer(
            millrace::ConsumerSpec::new("s", "g", "c")
                .start_id(millrace::StartId::Beginning)
                .block(Duration::from_secs(10))
                .claim_min_idle(Duration::from_secs(600))
                .handler(handler),
        )
        .start()
        .await
        .unwrap();
    wait_running(&app).await;
    let first = xadd(&mut con, "s", &[("n", "1")]).await;
    millrace_testkit::eventually(WAIT, "the first entry handled after the restart", || {
        let ids = seen.ids();
        async move { ids == vec![first] }
    })
    .await;
    wait_running(&app).await;
    let second = xadd(&mut con, "s", &[("n", "2")]).await;
    millrace_testkit::eventually(
        WAIT,
        "the second entry handled by the new incarnation",
        || {
            let ids = seen.ids();
            async move { ids == vec![first, second] }
        },
    )
    .await;
    app.shutdown().await.unwrap();
}

/// `+client|setinfo` where the server has `CLIENT SETINFO` (Redis >= 7.2, Valkey), else nothing.
/// redis-rs names every connection with it; a user without it still connects, but each connection
/// leaves one `client|setinfo` denial in `ACL LOG`. Redis 7.0 rejects the rule as unknown.
/// docs/servers.md says so; the tests that assert an empty `ACL LOG` add this rule.
pub(crate) async fn client_setinfo_rule(con: &mut MultiplexedConnection) -> Option<&'static str> {
    let info: Vec<redis::Value> = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("client|setinfo")
        .query_async(con)
        .await
        .unwrap();
    match info.first() {
        Some(redis::Value::Nil) | None => None,
        Some(_) => Some("+client|setinfo"),
    }
}

/// The test's connection, with a consumer's read landing right after its first reply: what a
/// consumer reading at that moment does to a check made in several round trips.
struct ReadAfterFirstReply {
    con: MultiplexedConnection,
    consumer: MultiplexedConnection,
    read: bool,
}

impl ReadAfterFirstReply {
    /// `XREADGROUP GROUP g late STREAMS s >`, once.
    async fn read_once(&mut self) {
        if std::mem::replace(&mut self.read, true) {
            return;
        }
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("late")
            .arg("STREAMS")
            .arg("s")
            .arg(">")
            .query_async(&mut self.consumer)
            .await
            .unwrap();
    }
}

impl ConnectionLike for ReadAfterFirstReply {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let reply = self.con.req_packed_command(cmd).await;
            self.read_once().await;
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let replies = self.con.req_packed_commands(pipeline, offset, count).await;
            self.read_once().await;
            replies
        })
    }

    fn get_db(&self) -> i64 {
        self.con.get_db()
    }
}

/// `drained` must not pass while entries are pending: a read of new entries landing between the
/// moment it sees "nothing pending" and the moment it sees "everything delivered" made it pass
/// with the entries just read still pending (the handler had not seen them), and a test then
/// reported them as acknowledged without being handled.
#[tokio::test]
async fn drained_is_not_fooled_by_a_read_between_its_checks() {
    let (server, mut con) = server().await;
    create_group(&mut con, "s", "g").await;
    let ids = xadd_n(&mut con, "s", 5).await;
    let mut racing = ReadAfterFirstReply {
        con: con.clone(),
        consumer: connect(&server).await,
        read: false,
    };
    assert!(
        !drained(&mut racing, "s", "g").await,
        "drained while nothing was delivered yet"
    );
    assert!(racing.read, "the consumer's read did land");
    assert_eq!(pending(&mut con, "s", "g").await, 5);
    assert!(!drained(&mut con, "s", "g").await, "drained with 5 pending");
    let _: u64 = redis::cmd("XACK")
        .arg("s")
        .arg("g")
        .arg(&ids)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        drained(&mut con, "s", "g").await,
        "all delivered and acknowledged"
    );
}
