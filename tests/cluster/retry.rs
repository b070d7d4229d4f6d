//! Retry after a delay on a cluster: the delay and take-back scripts run on the master that serves
//! the stream, and the entry comes back no earlier than asked, with one more delivery.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use millrace::{Batch, ConsumerSpec, HandlerResult, RawEntry, Source, StartId, Supervisor};

use crate::common::{cluster, connect, pending, stream_on, wait_running, WAIT};

/// Each handler call: the delivery count, the source, when.
type Calls = Arc<Mutex<Vec<(Option<u64>, Source, Instant)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_brings_an_entry_back_on_a_cluster_no_earlier_than_asked() {
    let cluster = cluster();
    let stream = stream_on(&cluster, 1, "retry");
    let mut con = connect(&cluster).await;
    let delay = Duration::from_millis(1000);
    let calls: Calls = Arc::default();
    let rec = calls.clone();
    let app = Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .consumer(
            ConsumerSpec::new(&stream, "g", "c")
                .start_id(StartId::Beginning)
                .block(Duration::from_millis(500))
                .claim_interval(Duration::from_secs(3600))
                .claim_min_idle(Duration::from_secs(30))
                .handler(move |batch: Batch<RawEntry>| {
                    let first = batch.iter().any(|e| e.deliveries == Some(1));
                    for e in &batch {
                        rec.lock()
                            .unwrap()
                            .push((e.deliveries, batch.source, Instant::now()));
                    }
                    async move {
                        if first {
                            HandlerResult::RetryAfter(delay)
                        } else {
                            HandlerResult::Ok
                        }
                    }
                }),
        )
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("n")
        .arg(1)
        .query_async(&mut con)
        .await
        .expect("XADD");
    millrace_testkit::eventually(WAIT, "handled twice, nothing pending", || {
        let (mut con, stream) = (con.clone(), stream.clone());
        let n = calls.lock().unwrap().len();
        async move { n >= 2 && pending(&mut con, &stream).await == 0 }
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[1].2 - calls[0].2 >= delay, "{calls:?}");
    assert_eq!((calls[1].0, calls[1].1), (Some(2), Source::Retried));
    app.shutdown().await.expect("shutdown");
}
