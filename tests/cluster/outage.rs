//! A graceful failover of one master, read by a multi-stream consumer of twenty tenants: logged
//! once for that master (its streams counted), never per stream, and no read size dropped.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace::{Batch, HandlerResult, MultiStreamSpec, RawEntry, StartId};
use millrace_testkit::eventually;

use crate::common::{cluster, connect, wait_running, Seen, WAIT};

/// Captured log output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

// One thread runs every task, so the subscriber set here sees the consumers' events; the blocking
// failover runs on the blocking pool.
#[tokio::test(flavor = "current_thread")]
async fn a_failover_is_logged_once_for_its_master_with_the_streams_counted() {
    let cluster = Arc::new(cluster());
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let streams: Vec<String> = (0..20).map(|i| format!("tenant:{{{i}}}:events")).collect();
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
    let before = captured.lines().len();
    let promoted = tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || cluster.failover(master)
    })
    .await
    .unwrap();
    assert_eq!(cluster.owner_of_key(&streams[0]), promoted);
    let mut con = connect(&cluster).await;
    let mut added = Vec::new();
    for (i, stream) in streams.iter().enumerate() {
        let id: String = redis::cmd("XADD")
            .arg(stream)
            .arg(format!("1-{}", i + 1))
            .arg("n")
            .arg(1)
            .query_async(&mut con)
            .await
            .expect("XADD");
        added.push(id.parse().expect("an id"));
    }
    eventually(WAIT, "an entry of every stream handled", || {
        let counts = seen.counts();
        let done = added.iter().all(|id| counts.contains_key(id));
        async move { done }
    })
    .await;
    // Every stream on the master read again: none of them was taken for a cut-off read.
    let mid_reply: Vec<String> = captured
        .lines()
        .split_off(before)
        .into_iter()
        .filter(|l| l.contains("mid-reply"))
        .collect();
    assert!(mid_reply.is_empty(), "{mid_reply:#?}");
    eventually(WAIT, "the line that reading resumed", || {
        let resumed = captured
            .lines()
            .iter()
            .any(|l| l.contains("reading from the server resumed"));
        async move { resumed }
    })
    .await;
    let lines = captured.lines().split_off(before);
    let count = |text: &str| lines.iter().filter(|l| l.contains(text)).count();
    assert_eq!(count("reading from the node stopped"), 1, "{lines:#?}");
    assert_eq!(count("reading from the server resumed"), 1, "{lines:#?}");
    let resumed = lines
        .iter()
        .find(|l| l.contains("reading from the server resumed"))
        .unwrap();
    assert!(
        resumed.contains(&format!("streams={on_master}")),
        "{on_master} streams on the master: {resumed}"
    );
    let warnings = count(" WARN ");
    assert!(
        warnings < on_master.max(2),
        "{warnings} WARN lines for one failover of one master: {lines:#?}"
    );
    app.shutdown().await.expect("shutdown");
}
