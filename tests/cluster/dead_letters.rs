//! Dead letters on a cluster: a stream and its dead-letter stream in different slots (even on
//! different masters) move in steps; with a hash tag they share a slot and move atomically.
//! Either way the entry ends up in the dead-letter stream once and is acknowledged.

use std::time::Duration;

use millrace::{Batch, ConsumerSpec, HandlerResult, RawEntry, StartId, Supervisor};
use redis::cluster_async::ClusterConnection;

use crate::common::{cluster, connect, pending, wait_running, WAIT};

async fn xadd(con: &mut ClusterConnection, stream: &str, note: &str) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("note")
        .arg(note)
        .query_async(con)
        .await
        .expect("XADD")
}

/// The `millrace.source_id` of every entry in `dlq`.
async fn dead_letter_sources(con: &mut ClusterConnection, dlq: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(dlq)
        .arg("-")
        .arg("+")
        .query_async(con)
        .await
        .expect("XRANGE");
    entries
        .into_iter()
        .filter_map(|(_, fields)| {
            let at = fields.iter().position(|f| f == "millrace.source_id")?;
            fields.get(at + 1).cloned()
        })
        .collect()
}

fn refusing_poison(stream: &str) -> ConsumerSpec {
    ConsumerSpec::new(stream, "g", "c")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(500))
        .handler(|batch: Batch<RawEntry>| {
            for entry in &batch {
                if entry.message.get_str("note") == Some("poison") {
                    batch.dead_letter(entry.id, "poison: refused on purpose");
                }
            }
            async { HandlerResult::Ok }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_reach_a_dead_letter_stream_in_another_slot_or_the_same_one() {
    let cluster = cluster();
    // `orders-N:dlq` on another master than `orders-N`: the step path. `{orders}` and
    // `{orders}:dlq` share a slot: the atomic script.
    let apart = (0..10_000)
        .map(|i| format!("orders-{i}"))
        .find(|s| cluster.owner_of_key(s) != cluster.owner_of_key(format!("{s}:dlq")))
        .expect("some stream and its dead-letter stream on different masters");
    let tagged = "{orders}".to_owned();
    let mut con = connect(&cluster).await;
    let app = Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .consumer(refusing_poison(&apart))
        .consumer(refusing_poison(&tagged))
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    for stream in [&apart, &tagged] {
        xadd(&mut con, stream, "fine").await;
        let poison = xadd(&mut con, stream, "poison").await;
        xadd(&mut con, stream, "fine").await;
        let dlq = format!("{stream}:dlq");
        millrace_testkit::eventually(WAIT, "the poison entry dead-lettered, none pending", || {
            let (mut con, stream, dlq) = (con.clone(), stream.clone(), dlq.clone());
            async move {
                pending(&mut con, &stream).await == 0
                    && !dead_letter_sources(&mut con, &dlq).await.is_empty()
            }
        })
        .await;
        assert_eq!(
            dead_letter_sources(&mut con, &dlq).await,
            vec![poison],
            "{stream}: the poison entry, once"
        );
    }
    app.shutdown().await.expect("shutdown");
}
