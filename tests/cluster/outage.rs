//! A graceful failover of one master, read by a multi-stream consumer of twenty tenants: logged
//! once for that master (its streams counted), never per stream, and no read size dropped.

use std::sync::Arc;
use std::time::Duration;

use millrace::{Batch, HandlerResult, MultiStreamSpec, RawEntry, StartId};
use millrace_tests::{assert_one_outage, tenant_streams, Logs};

use crate::common::{add_one_to_each, cluster, connect, wait_running, Seen, WAIT};

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
    let recorder = seen.clone();
    let app = millrace::Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .multi_stream(
            MultiStreamSpec::new(streams.clone(), "g", "c")
                .start_id(StartId::Beginning)
                .block(Duration::from_secs(5))
                .handler(move |batch: Batch<RawEntry>| {
                    recorder.record(&batch);
                    futures::future::ready(HandlerResult::Ok)
                }),
        )
        .start()
        .await
        .expect("start on the cluster");
    wait_running(&app).await;
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
