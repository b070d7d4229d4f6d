//! The test kit's Sentinel group against real processes: 1 master, 2 replicas, 3 Sentinels, with
//! passwords; a graceful failover and a kill -9 of the master each promote a replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use millrace_testkit::{wait_until, SentinelGroup};

#[test]
fn a_sentinel_group_fails_over_gracefully_and_after_a_kill() {
    let mut group = SentinelGroup::start_with_password("s3cret");
    assert_eq!(group.sentinel_urls().len(), 3);
    let first = group.master_port().expect("a master");
    assert_eq!(group.master().port(), first);

    let second = group.failover();
    assert_ne!(second, first);
    assert_eq!(group.master_port(), Some(second));

    let third = group.kill_master();
    assert_ne!(third, second);
    let mut con = group.master().client().get_connection().unwrap();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();

    // The killed node comes back as a replica.
    group.restart_node(second);
    let mut old = group
        .nodes()
        .iter()
        .find(|n| n.port() == second)
        .unwrap()
        .client()
        .get_connection()
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the killed master back as a replica",
        || {
            let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut old).unwrap();
            matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"slave")
        },
    );
}
