//! Connecting to a cluster as on one server: a least-privilege ACL user in the node URLs, and TLS
//! with a private CA, on the control connection and the read sockets alike.

use millrace::{ConnectionOptions, Supervisor};
use millrace_testkit::RedisCluster;

use crate::common::one_entry_is_handled;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_acl_user_consumes_on_a_cluster() {
    crate::common::init_tracing();
    // The rules `ConsumerSpec::acl_rules` gives for one server, on `orders-*`, plus reading the
    // slot map (`CLUSTER SLOTS` for redis-rs, `CLUSTER SHARDS` for millrace).
    let cluster = RedisCluster::builder()
        .acl_user(
            "consumer",
            [
                "on",
                ">S3cret-pw",
                "~orders-*",
                "resetchannels",
                "-@all",
                "+xreadgroup",
                "+xack",
                "+xautoclaim",
                "+xclaim",
                "+xpending",
                "+xgroup|create",
                "+xadd",
                "+xrange",
                "+evalsha",
                "+eval",
                "+xinfo|groups",
                "+client|id",
                "+client|unblock",
                "+cluster|slots",
                "+cluster|shards",
            ],
        )
        .start();
    let builder =
        Supervisor::builder().redis_cluster(cluster.seed_urls_as("consumer", "S3cret-pw"));
    one_entry_is_handled(&cluster, builder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_reached_with_a_private_ca() {
    if millrace_testkit::skip_without_tls() {
        return;
    }
    crate::common::init_tracing();
    let cluster = RedisCluster::builder().tls().start();
    let ca = std::fs::read(cluster.ca_cert_path().expect("a TLS cluster has a CA")).expect("CA");
    let options = ConnectionOptions::default().tls_certificates(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca),
    });
    let builder = Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .connection_options(options);
    one_entry_is_handled(&cluster, builder).await;
}
