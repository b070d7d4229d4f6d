//! Parked dead-letter moves against a real server: an entry parked while the retry round's
//! ownership check is on the wire is not forgotten by that check.

use std::sync::Arc;
use std::time::Duration;

use millrace_testkit::{eventually, RedisServer};
use redis::aio::MultiplexedConnection;

use super::DeadLetterMover;
use crate::connection::{Backend, ConnectionOptions};
use crate::consumer::stats::Stats;
use crate::entry::{EntryId, RawEntry};
use crate::health::HealthCell;
use crate::id::ConsumerId;

const WAIT: Duration = Duration::from_secs(15);

async fn admin(server: &RedisServer) -> MultiplexedConnection {
    server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection")
}

async fn query<T: redis::FromRedisValue>(
    con: &mut MultiplexedConnection,
    cmd: &mut redis::Cmd,
) -> T {
    cmd.query_async(con).await.expect("admin command")
}

/// `INFO clients`' `blocked_clients` (a command held by `CLIENT PAUSE` counts).
async fn blocked_clients(con: &mut MultiplexedConnection) -> u64 {
    let info: String = query(con, redis::cmd("INFO").arg("clients")).await;
    info.lines()
        .find_map(|l| l.trim().strip_prefix("blocked_clients:"))
        .and_then(|n| n.parse().ok())
        .expect("blocked_clients")
}

/// The `millrace.source_id` of every entry in `dlq`.
async fn dead_letter_sources(con: &mut MultiplexedConnection, dlq: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<String>)> =
        query(con, redis::cmd("XRANGE").arg(dlq).arg("-").arg("+")).await;
    entries
        .into_iter()
        .filter_map(|(_, fields)| {
            let at = fields.iter().position(|f| f == "millrace.source_id")?;
            fields.get(at + 1).cloned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_parked_while_the_retry_checks_ownership_is_kept_and_made() {
    let server = RedisServer::start();
    let mut con = admin(&server).await;
    let (a, b) = (EntryId::new(1, 0), EntryId::new(2, 0));
    let _: () = query(
        &mut con,
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("s")
            .arg("g")
            .arg("0")
            .arg("MKSTREAM"),
    )
    .await;
    for id in [a, b] {
        let _: String = query(
            &mut con,
            redis::cmd("XADD")
                .arg("s")
                .arg(id.to_string())
                .arg("f")
                .arg("v"),
        )
        .await;
    }
    let _: redis::Value = query(
        &mut con,
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("STREAMS")
            .arg("s")
            .arg(">"),
    )
    .await;
    // The dead-letter stream cannot be written: a key of another type holds its name.
    let _: () = query(&mut con, redis::cmd("SET").arg("s:dlq").arg("not a stream")).await;

    let backend = Backend::open(&server.url(), ConnectionOptions::default()).expect("backend");
    let id = ConsumerId::new("s", "g", "c");
    let health = Arc::new(HealthCell::new(id.clone()));
    let stats = Stats::new(&id, health.clone());
    let mover = DeadLetterMover::new(
        id,
        "s:dlq".to_owned(),
        false,
        backend.control(),
        stats,
        Duration::from_secs(5),
        Duration::from_secs(60),
    );
    let entry = |id| RawEntry::new(id, vec![(b"f".to_vec(), b"v".to_vec())]);
    mover
        .dead_letter(a, Some(entry(a)), Some(1), "poison".to_owned())
        .await;
    assert!(mover.is_parked(a), "the failed move of `a` is parked");

    // Hold the retry round's ownership check (a script, so a write) on the wire, and park `b`
    // meanwhile: it is not among the entries the check asked about.
    let _: () = query(
        &mut con,
        redis::cmd("CLIENT").arg("PAUSE").arg(10_000).arg("WRITE"),
    )
    .await;
    eventually(
        WAIT,
        "the retry round's ownership check held by the pause",
        || {
            let mut con = con.clone();
            async move { blocked_clients(&mut con).await >= 1 }
        },
    )
    .await;
    mover
        .dead_letter(b, Some(entry(b)), Some(1), "poison".to_owned())
        .await;
    assert!(
        mover.is_parked(b),
        "`b` parks behind `a` without a round trip"
    );
    let _: () = query(&mut con, redis::cmd("CLIENT").arg("UNPAUSE")).await;
    let _: i64 = query(&mut con, redis::cmd("DEL").arg("s:dlq")).await;

    eventually(WAIT, "both moves made", || {
        let mut con = con.clone();
        async move {
            let mut sources = dead_letter_sources(&mut con, "s:dlq").await;
            sources.sort();
            sources == ["1-0", "2-0"]
        }
    })
    .await;
    eventually(WAIT, "no move waiting", || {
        let waiting = health.snapshot().dead_letters_waiting;
        async move { waiting == 0 }
    })
    .await;
    let pending: (u64, redis::Value, redis::Value, redis::Value) =
        query(&mut con, redis::cmd("XPENDING").arg("s").arg("g")).await;
    assert_eq!(pending.0, 0, "both entries acknowledged");
}
