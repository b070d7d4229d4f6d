//! Acks of a multi-stream consumer: a backlog of many streams is acknowledged with about one
//! `XACK` per stream (streams start at the shared read's slice, and their acks are written
//! together), and only entries a handler acknowledged are: the rest stay pending. A stream whose
//! `XACK` fails in the shared pipeline fails alone.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millrace::{
    Batch, ConsumerId, EntryId, HandlerResult, MultiStreamSpec, RawEntry, StartId, Supervisor,
};
use millrace_testkit::eventually;
use redis::aio::MultiplexedConnection;

use crate::common::*;

/// Streams, and entries in each.
const STREAMS: usize = 40;
const ENTRIES: u64 = 200;

fn name(i: usize) -> String {
    format!("tenant:{i}:events")
}

/// The ids pending in group `g` of `stream` (for any consumer).
async fn pending_ids(con: &mut MultiplexedConnection, stream: &str) -> BTreeSet<EntryId> {
    let last = EntryId::new(u64::MAX, u64::MAX);
    millrace::streams::xpending_range(con, stream, "g", None, EntryId::MIN, last, 10_000, None)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// Stream 0's handler fails every batch; every other stream's acknowledges all but the entries
/// whose id is a multiple of 10 (`Partial`).
fn kept(stream: &str, id: EntryId) -> bool {
    stream == name(0) || id.ms.is_multiple_of(10)
}

#[tokio::test]
async fn a_backlog_of_many_streams_takes_about_one_xack_per_stream_and_acks_only_handled_entries() {
    let (server, mut con) = server().await;
    let names: Vec<String> = (0..STREAMS).map(name).collect();
    for stream in &names {
        let mut pipe = redis::pipe();
        for i in 1..=ENTRIES {
            pipe.cmd("XADD")
                .arg(stream)
                .arg(format!("{i}-0"))
                .arg("n")
                .arg(i)
                .ignore();
        }
        let () = pipe.query_async(&mut con).await.unwrap();
    }
    let xacks_before = command_calls(&mut con, "xack").await;
    let handled = Handled::default();
    let seen = handled.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .multi_stream(
            MultiStreamSpec::new(names.iter().cloned(), "g", "c")
                .start_id(StartId::Beginning)
                .block(Duration::from_millis(200))
                .claim_min_idle(Duration::from_secs(600))
                .handler(move |batch: Batch<RawEntry>| {
                    seen.record(&batch);
                    let stream = batch.meta.stream.to_string();
                    let result = if stream == name(0) {
                        HandlerResult::err("stream 0 fails")
                    } else {
                        HandlerResult::Partial(
                            batch
                                .iter()
                                .map(|e| e.id)
                                .filter(|id| !kept(&stream, *id))
                                .collect(),
                        )
                    };
                    async move { result }
                }),
        )
        .start()
        .await
        .unwrap();

    let expected: Vec<BTreeSet<EntryId>> = names
        .iter()
        .map(|s| {
            (1..=ENTRIES)
                .map(|i| EntryId::new(i, 0))
                .filter(|id| kept(s, *id))
                .collect()
        })
        .collect();
    eventually(
        WAIT,
        "every stream left exactly its failed entries pending",
        || {
            let (mut con, names, expected) = (con.clone(), names.clone(), expected.clone());
            let all_handled = handled.len() >= STREAMS * ENTRIES as usize;
            async move {
                if !all_handled {
                    return false;
                }
                for (stream, want) in names.iter().zip(&expected) {
                    if pending_ids(&mut con, stream).await != *want {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    app.shutdown().await.unwrap();

    // Nothing acknowledged that the handler did not acknowledge, even after the stop's flush;
    // and every entry was handled exactly once.
    for (stream, want) in names.iter().zip(&expected) {
        assert_eq!(pending_ids(&mut con, stream).await, *want, "{stream}");
        for i in 1..=ENTRIES {
            assert!(handled.has(stream, EntryId::new(i, 0)), "{stream} {i}-0");
        }
    }
    assert_eq!(
        handled.len(),
        STREAMS * ENTRIES as usize,
        "none handled twice"
    );

    // Each stream's start checks its XACK permission with one harmless XACK. The rest
    // acknowledged STREAMS - 1 streams' backlogs of 200 entries: one XACK each when a stream's
    // backlog comes in one slice, against about five when each stream started at 10 entries a
    // read and acknowledged each batch on its own.
    let xacks = command_calls(&mut con, "xack").await - xacks_before - STREAMS as u64;
    assert!(
        xacks <= STREAMS as u64,
        "{xacks} XACK commands for {} streams' backlogs",
        STREAMS - 1
    );
    assert!(xacks >= STREAMS as u64 - 1, "{xacks} XACK commands");
}

/// `XACK` calls that failed (`failed_calls` in `INFO commandstats`).
async fn failed_xacks(con: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xack:"))
        .and_then(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("failed_calls="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Stream b becomes a key of another type while its first batch is in its handler, so its `XACK`
/// fails where the three streams' acks are written together: b fails alone (and is dropped, as
/// a stream replaced by another type is), a's and c's acks land, and they keep flowing.
#[tokio::test]
async fn a_stream_whose_xack_fails_in_the_shared_pipeline_fails_alone() {
    let (server, mut con) = server().await;
    let names = ["a", "b", "c"];
    for stream in names {
        for i in 1..=5u64 {
            let _: String = redis::cmd("XADD")
                .arg(stream)
                .arg(format!("{i}-0"))
                .arg("n")
                .arg(i)
                .query_async(&mut con)
                .await
                .unwrap();
        }
    }
    let failed_before = failed_xacks(&mut con).await;
    let handled = Handled::default();
    let seen = handled.clone();
    // The three first batches return together, so their acks go out together.
    let together = Arc::new(tokio::sync::Barrier::new(names.len()));
    let first = Arc::new([(); 3].map(|_| AtomicBool::new(true)));
    let admin = con.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .multi_stream(
            MultiStreamSpec::new(names, "g", "c")
                .start_id(StartId::Beginning)
                .block(Duration::from_millis(200))
                .claim_min_idle(Duration::from_secs(600))
                .handler(move |batch: Batch<RawEntry>| {
                    seen.record(&batch);
                    let stream = batch.meta.stream.to_string();
                    let i = names.iter().position(|s| *s == stream).unwrap();
                    let first_batch = first[i].swap(false, Ordering::SeqCst);
                    let (together, mut con) = (together.clone(), admin.clone());
                    async move {
                        if first_batch {
                            if stream == "b" {
                                // One atomic step: the stream key becomes a string.
                                let _: () = redis::cmd("SET")
                                    .arg("tmp")
                                    .arg("x")
                                    .query_async(&mut con)
                                    .await
                                    .unwrap();
                                let _: () = redis::cmd("RENAME")
                                    .arg("tmp")
                                    .arg("b")
                                    .query_async(&mut con)
                                    .await
                                    .unwrap();
                            }
                            together.wait().await;
                        }
                        HandlerResult::Ok
                    }
                }),
        )
        .start()
        .await
        .unwrap();

    eventually(WAIT, "b dropped", || {
        let streams = app.streams_of("g", "c");
        async move { streams == ["a", "c"] }
    })
    .await;
    eventually(WAIT, "a's and c's first entries acknowledged", || {
        let mut con = con.clone();
        async move {
            pending_ids(&mut con, "a").await.is_empty()
                && pending_ids(&mut con, "c").await.is_empty()
        }
    })
    .await;
    assert!(
        failed_xacks(&mut con).await - failed_before >= 2,
        "b's XACK reached Redis and failed, in the pipeline and again alone (the unit test \
         a_failed_xack_on_a_line_fails_its_stream_alone counts the two exactly)"
    );
    let a = xadd(&mut con, "a", &[("n", "6")]).await;
    let c = xadd(&mut con, "c", &[("n", "6")]).await;
    handled.wait_for("a", a).await;
    handled.wait_for("c", c).await;
    eventually(WAIT, "a's and c's new entries acknowledged", || {
        let mut con = con.clone();
        async move {
            pending_ids(&mut con, "a").await.is_empty()
                && pending_ids(&mut con, "c").await.is_empty()
        }
    })
    .await;
    for stream in ["a", "c"] {
        for i in 1..=5 {
            assert!(handled.has(stream, EntryId::new(i, 0)), "{stream} {i}-0");
        }
        let restarts = app
            .consumer_health(&ConsumerId::new(stream, "g", "c"))
            .map(|h| h.restarts_total);
        assert_eq!(restarts, Some(0), "{stream} never failed");
    }
    assert_eq!(handled.len(), 5 + 5 + 5 + 2, "none handled twice");
    let kind: String = redis::cmd("TYPE")
        .arg("b")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(kind, "string", "the other key is left alone");
    assert!(app.failure().is_none() && app.is_ready());
    app.shutdown().await.unwrap();
}
