//! What `start()` learns from the server it connects to (capabilities.rs): it runs on every
//! server of the matrix (`MILLRACE_SERVER`), and a URL naming a node that cannot hold the
//! consumers' data fails at once, saying which URL to give instead.

use std::time::Duration;

use millrace::capabilities::ServerInfo;
use millrace::{ConsumerSpec, StartId, Supervisor};
use millrace_testkit::{eventually, RedisServer, ServerKind};

use crate::common::*;

fn spec() -> ConsumerSpec {
    ConsumerSpec::new("s", "g", "c")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(300))
        .handler(recording(&Seen::default()))
}

#[tokio::test]
async fn the_server_is_detected_by_what_it_says_not_assumed() {
    let server = RedisServer::start();
    let mut con = connect(&server).await;
    let info = ServerInfo::detect(&mut con).await.unwrap();
    let kind = ServerKind::current();
    assert!(info.is_supported() && !info.is_replica(), "{kind}: {info}");
    match kind {
        ServerKind::Redis70 => assert!(info.name == "redis" && info.version.major == 7, "{info}"),
        ServerKind::Redis82 => assert_eq!(info.to_string(), "redis 8.2.3 (master)"),
        ServerKind::Valkey91 => assert_eq!(info.to_string(), "valkey 9.1.2 (master)"),
    }
    // The version rule and the server's own COMMAND INFO agree.
    let probed = millrace::capabilities::probe_command(&mut con, "XACKDEL")
        .await
        .unwrap();
    assert_eq!(probed, Some(info.has_acked_trim()), "{kind}: {info}");
    assert_eq!(info.has_acked_trim(), kind == ServerKind::Redis82, "{kind}");
}

#[tokio::test]
async fn a_replica_given_as_the_redis_url_is_refused_at_start_naming_the_fix() {
    init_tracing();
    let master = RedisServer::start();
    let replica = RedisServer::builder()
        .arg("--replicaof")
        .arg("127.0.0.1")
        .arg(master.port().to_string())
        .start();
    let err = Supervisor::builder()
        .redis(replica.url())
        .consumer(spec())
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{}", replica.port())),
        "{text}"
    );
    assert!(
        text.contains("is a replica") && text.contains("READONLY"),
        "{text}"
    );
    assert!(text.contains("master's URL"), "{text}");
    assert!(err.is_fatal(), "{err:?}");
    // Nothing was created on the replica's master through it.
    let mut con = connect(&master).await;
    let exists: u64 = redis::cmd("EXISTS")
        .arg("s")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

async fn xlen(con: &mut redis::aio::MultiplexedConnection, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(con)
        .await
        .unwrap()
}

fn deleting(group: &str, seen: &Seen) -> ConsumerSpec {
    ConsumerSpec::new("jobs", group, "c")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(300))
        .delete_acked(true)
        .handler(recording(seen))
}

/// `delete_acked` on a server with `XACKDEL` (Redis 8.2): an entry goes once every group of the
/// stream acknowledged it, never before. Where the server lacks it (Redis 7.0, Valkey 9.1),
/// `start()` refuses at once, naming the option, the server and what to do instead.
#[tokio::test]
async fn delete_acked_deletes_an_entry_once_every_group_acknowledged_it_or_is_refused_at_start() {
    init_tracing();
    let server = RedisServer::start();
    let mut con = connect(&server).await;
    for g in ["a", "b"] {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("jobs")
            .arg(g)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut con)
            .await
            .unwrap();
    }
    xadd_n(&mut con, "jobs", 20).await;
    let seen_a = Seen::default();
    let started = Supervisor::builder()
        .redis(server.url())
        .consumer(deleting("a", &seen_a))
        .start()
        .await;
    let kind = ServerKind::current();
    if kind != ServerKind::Redis82 {
        let err = started.expect_err("a server without XACKDEL is refused");
        let text = err.to_string();
        assert!(
            text.contains("delete_acked") && text.contains("XACKDEL"),
            "{text}"
        );
        assert!(text.contains("millrace trim STREAM --acked"), "{text}");
        let name = if kind == ServerKind::Valkey91 {
            "valkey 9.1.2"
        } else {
            "redis 7."
        };
        assert!(text.contains(name), "{kind}: {text}");
        assert_eq!(xlen(&mut con, "jobs").await, 20);
        return;
    }
    let app = started.unwrap();
    // Group a acknowledged every entry; b was delivered none: all stay.
    eventually(WAIT, "group a handled all 20", || {
        let n = seen_a.len();
        async move { n >= 20 }
    })
    .await;
    eventually(WAIT, "group a acknowledged all 20", || {
        let mut con = con.clone();
        async move { pending(&mut con, "jobs", "a").await == 0 }
    })
    .await;
    assert_eq!(
        xlen(&mut con, "jobs").await,
        20,
        "b has not acknowledged them"
    );
    app.shutdown().await.unwrap();
    // Once b acknowledged them too, they are gone.
    let seen_b = Seen::default();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(deleting("b", &seen_b))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "the stream emptied as b acknowledged", || {
        let mut con = con.clone();
        async move { xlen(&mut con, "jobs").await == 0 }
    })
    .await;
    assert_eq!(seen_b.len(), 20);
    assert_eq!(pending(&mut con, "jobs", "b").await, 0);
    app.shutdown().await.unwrap();
}
