//! What `start()` learns from the server it connects to (capabilities.rs): it runs on every
//! server of the matrix (`MILLRACE_SERVER`), and a URL naming a node that cannot hold the
//! consumers' data fails at once, saying which URL to give instead.

use std::time::Duration;

use millrace::capabilities::ServerInfo;
use millrace::{ConsumerSpec, StartId, Supervisor};
use millrace_testkit::{RedisServer, ServerKind};

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
