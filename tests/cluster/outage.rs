//! A graceful failover of one master, read by a multi-stream consumer of twenty tenants: logged
//! once for that master (its streams counted), never per stream, and no read size dropped.

use std::sync::Arc;
use std::time::Duration;

use millrace_tests::{assert_one_outage, tenant_streams, Logs};

use crate::common::{add_one_to_each, cluster, connect, start_recording_set, Seen, WAIT};

// One thread runs every task, so the subscriber set here sees the consumers' events; the blocking
// failover runs on the blocking pool.
#[tokio::test(flavor = "current_thread")]
async fn a_failover_is_logged_once_for_its_master_with_the_streams_counted() {
    let cluster = Arc::new(cluster());
    let logs = Logs::capture("info");
    let streams = tenant_streams(20);
    let master = cluster.owner_of_key(&streams[0]);
    let on_master = streams
        .iter()
        .filter(|s| cluster.owner_of_key(s) == master)
        .count();
    let seen = Seen::default();
    let app = start_recording_set(&cluster, &streams, Duration::from_secs(5), &seen).await;
    let before = logs.mark();
    let promoted = tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || cluster.failover(master)
    })
    .await
    .unwrap();
    assert_eq!(cluster.owner_of_key(&streams[0]), promoted);
    let mut con = connect(&cluster).await;
    let added = add_one_to_each(&mut con, &streams).await;
    seen.wait_for_all(&added).await;
    // Every stream on the master read again (none taken for a cut-off read), logged once.
    logs.wait_for("reading from the server resumed", WAIT).await;
    assert_one_outage(
        &logs.since(before),
        "reading from the node stopped",
        on_master,
    );
    app.shutdown().await.expect("shutdown");
}
