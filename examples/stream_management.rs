//! Stream management through redis-rs while a millrace consumer runs: XLEN, XRANGE/XREVRANGE,
//! XINFO STREAM/GROUPS/CONSUMERS, XPENDING (summary and extended), XCLAIM of a stuck entry, and
//! XTRIM without deleting entries a group has not read yet.
//!
//! Run it:
//!     cargo run -p millrace-examples --example stream_management
//! It uses `REDIS_URL` when set; otherwise it starts a throwaway redis-server through the testkit.
//! It stops by itself once the walk-through is done (or on Ctrl-C).
//!
//! The story: `user_events` has two groups. `processors` runs a millrace consumer whose handler
//! fails on `export` events (a downstream outage), so that entry stays pending; `audit` exists but
//! nobody reads it yet. The example inspects both, claims the stuck entry for a recovery consumer by
//! hand (millrace's own `XAUTOCLAIM` would do it after `claim_min_idle`), and trims the stream only as
//! far as every group has read and acknowledged.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millrace::{for_each_entry, ConsumerSpec, Entry, EntryId, HandlerError, StartId, Supervisor};
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamClaimReply, StreamId, StreamInfoConsumersReply, StreamInfoGroupsReply,
    StreamInfoStreamReply, StreamMaxlen, StreamPendingCountReply, StreamPendingReply,
    StreamRangeReply, StreamTrimOptions, StreamTrimmingMode,
};
use redis::AsyncCommands;

const STREAM: &str = "user_events";
const GROUP: &str = "processors";
const AUDIT: &str = "audit";

/// One user event: `XADD user_events * user_id 3 action view`.
#[derive(Debug, serde::Deserialize)]
struct UserEvent {
    user_id: u64,
    action: String,
}

type AnyResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> AnyResult {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();

    // A throwaway server unless REDIS_URL points at one.
    let (_server, url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = millrace_testkit::RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    };
    let client = redis::Client::open(url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let _: () = con.del(STREAM).await?;

    add_events(&mut con, 30, Some(7)).await?;
    // A second group that nobody reads yet: its entries are "undelivered".
    let _: () = con.xgroup_create(STREAM, AUDIT, "0").await?;

    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let app = Supervisor::builder()
        .redis(url)
        .consumer(
            ConsumerSpec::new(STREAM, GROUP, "worker-1")
                .start_id(StartId::Beginning)
                .block(Duration::from_millis(500))
                .handler(for_each_entry(move |entry: Entry<UserEvent>| {
                    let counter = counter.clone();
                    async move {
                        let event = &entry.message;
                        if event.action == "export" {
                            return Err(HandlerError::msg(format!(
                                "export for user {}: export service unavailable",
                                event.user_id
                            )));
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                        Ok::<(), HandlerError>(())
                    }
                })),
        )
        .start()
        .await?;

    let outcome = tokio::select! {
        r = walk_through(&app, &mut con, &handled) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        r = app.wait() => match r {
            Ok(()) => Err("the supervisor stopped".into()),
            Err(e) => Err(e.into()),
        },
    };
    app.shutdown().await?;
    outcome
}

async fn walk_through(
    app: &Supervisor,
    con: &mut MultiplexedConnection,
    handled: &AtomicUsize,
) -> AnyResult {
    wait_until("worker-1 handles 29 of 30 events", || {
        handled.load(Ordering::SeqCst) >= 29
    })
    .await?;
    println!("worker-1 handled 29 events; the `export` event failed and stays pending\n");

    section("XLEN, XRANGE, XREVRANGE");
    let len: usize = con.xlen(STREAM).await?;
    println!("XLEN {STREAM} -> {len}");
    let first: StreamRangeReply = con.xrange_count(STREAM, "-", "+", 3).await?;
    println!("XRANGE {STREAM} - + COUNT 3 (oldest first):");
    for e in &first.ids {
        println!("  {}", show(e));
    }
    let last: StreamRangeReply = con.xrevrange_count(STREAM, "+", "-", 3).await?;
    println!("XREVRANGE {STREAM} + - COUNT 3 (newest first):");
    for e in &last.ids {
        println!("  {}", show(e));
    }

    section("XINFO STREAM");
    let info: StreamInfoStreamReply = con.xinfo_stream(STREAM).await?;
    println!(
        "length {}, groups {}, radix-tree-keys {}, last-generated-id {}",
        info.length, info.groups, info.radix_tree_keys, info.last_generated_id
    );
    println!("first-entry {}", show(&info.first_entry));
    println!("last-entry  {}", show(&info.last_entry));

    section("XINFO GROUPS");
    print_groups(con).await?;

    section("XINFO CONSUMERS");
    print_consumers(con).await?;

    section("XPENDING (summary)");
    let summary: StreamPendingReply = con.xpending(STREAM, GROUP).await?;
    let stuck_id = match &summary {
        StreamPendingReply::Data(d) => {
            println!(
                "XPENDING {STREAM} {GROUP} -> {} pending, oldest {}, newest {}",
                d.count, d.start_id, d.end_id
            );
            for c in &d.consumers {
                println!("  consumer {}: {} pending", c.name, c.pending);
            }
            d.start_id.clone()
        }
        _ => return Err("expected the failed `export` entry to be pending".into()),
    };

    section("XPENDING (extended: idle time and deliveries)");
    // Let the entry sit idle a little, so a minimum idle time can be shown at work.
    tokio::time::sleep(Duration::from_millis(300)).await;
    print_pending(con).await?;

    section("XCLAIM of the stuck entry");
    // Only entries idle at least MIN-IDLE-TIME are claimed: a busy consumer keeps its work. millrace
    // runs XAUTOCLAIM every `claim_interval` for entries idle over `claim_min_idle` (60s by default);
    // here a recovery consumer takes it by hand.
    let claimed: StreamClaimReply = con
        .xclaim(STREAM, GROUP, "recovery-1", 250, &[&stuck_id])
        .await?;
    for e in &claimed.ids {
        println!(
            "XCLAIM {STREAM} {GROUP} recovery-1 250 {stuck_id} -> {}",
            show(e)
        );
    }
    print_pending(con).await?;
    // The export service is back: recovery-1 handles the entry and acknowledges it.
    let acked: usize = con.xack(STREAM, GROUP, &[&stuck_id]).await?;
    println!("recovery-1 handled it; XACK {STREAM} {GROUP} {stuck_id} -> {acked}");
    let pending: StreamPendingReply = con.xpending(STREAM, GROUP).await?;
    println!("pending in `{GROUP}` now: {}", pending.count());
    // XCLAIM created the consumer `recovery-1` in the group; remove it now that it holds nothing
    // (XGROUP DELCONSUMER drops a consumer's pending entries too: check before deleting one).
    let dropped: usize = con.xgroup_delconsumer(STREAM, GROUP, "recovery-1").await?;
    println!("XGROUP DELCONSUMER {STREAM} {GROUP} recovery-1 -> {dropped} pending entries dropped");
    print_consumers(con).await?;

    section("XTRIM without deleting what a group has not read");
    add_events(con, 270, None).await?;
    wait_until("worker-1 handles the new events", || {
        handled.load(Ordering::SeqCst) >= 299
    })
    .await?;
    let len: usize = con.xlen(STREAM).await?;
    println!("added 270 events; XLEN {STREAM} -> {len}");
    print_groups(con).await?;
    let keep = 100;
    trim_if_safe(con, keep).await?;

    println!("\n`{AUDIT}` catches up: a millrace consumer joins that group");
    app.add_consumer(
        ConsumerSpec::new(STREAM, AUDIT, "auditor-1")
            .count(100)
            .block(Duration::from_millis(500))
            .handler(for_each_entry(|_: Entry<UserEvent>| async {
                Ok::<(), HandlerError>(())
            })),
    )
    .await?;
    let audit = millrace::ConsumerId::new(STREAM, AUDIT, "auditor-1");
    wait_until("auditor-1 catches up", || {
        app.consumer_health(&audit)
            .is_some_and(|h| h.counters.acked >= 300)
    })
    .await?;
    print_groups(con).await?;
    trim_if_safe(con, keep).await?;
    let info: StreamInfoStreamReply = con.xinfo_stream(STREAM).await?;
    println!(
        "after trimming: length {}, first-entry {}",
        info.length, info.first_entry.id
    );
    Ok(())
}

/// Trims to about `keep` entries with `XTRIM MAXLEN ~`, but only when no group still needs an
/// entry that would go: one it has not been delivered yet, or one still pending (unacknowledged).
async fn trim_if_safe(con: &mut MultiplexedConnection, keep: usize) -> AnyResult {
    // The oldest entry any group still needs.
    let groups: StreamInfoGroupsReply = con.xinfo_groups(STREAM).await?;
    let mut needed: Option<(EntryId, String)> = None;
    for g in &groups.groups {
        let delivered: EntryId = g.last_delivered_id.parse()?;
        // The first entry the group has not been delivered yet.
        let mut oldest = EntryId::new(delivered.ms, delivered.seq + 1);
        let why_undelivered = format!("`{}` has not read past {}", g.name, delivered);
        let mut why = why_undelivered;
        if g.pending > 0 {
            let p: StreamPendingReply = con.xpending(STREAM, &g.name).await?;
            if let StreamPendingReply::Data(d) = p {
                let first_pending: EntryId = d.start_id.parse()?;
                if first_pending < oldest {
                    oldest = first_pending;
                    why = format!("`{}` has {} still pending", g.name, first_pending);
                }
            }
        }
        if needed.as_ref().is_none_or(|(id, _)| oldest < *id) {
            needed = Some((oldest, why));
        }
    }
    // The oldest entry `MAXLEN ~ keep` could keep at most: the `keep`-th newest. (With `~`, Redis
    // removes only whole radix-tree nodes, 100 entries each by default, so it may keep more.)
    let newest: StreamRangeReply = con.xrevrange_count(STREAM, "+", "-", keep).await?;
    let Some(cut) = newest.ids.last() else {
        return Ok(());
    };
    let cut: EntryId = cut.id.parse()?;
    match needed {
        Some((oldest, why)) if oldest < cut => {
            let at_risk: StreamRangeReply = con
                .xrange(STREAM, oldest.to_string(), format!("({cut}"))
                .await?;
            println!(
                "not trimming to ~{keep}: {why}; MAXLEN ~ {keep} could delete {} entries from {oldest} on that were never handled",
                at_risk.ids.len()
            );
            // What is safe: everything below the oldest needed entry (exact MINID, nothing more).
            let opts = StreamTrimOptions::minid(StreamTrimmingMode::Exact, oldest.to_string());
            let n: usize = con.xtrim_options(STREAM, &opts).await?;
            println!(
                "XTRIM {STREAM} MINID = {oldest} -> {n} entries trimmed (only fully handled ones)"
            );
        }
        _ => {
            let n: usize = con.xtrim(STREAM, StreamMaxlen::Approx(keep)).await?;
            println!(
                "every group has read and acknowledged everything older than {cut}: XTRIM {STREAM} MAXLEN ~ {keep} -> {n} entries trimmed"
            );
        }
    }
    Ok(())
}

async fn print_groups(con: &mut MultiplexedConnection) -> AnyResult {
    let groups: StreamInfoGroupsReply = con.xinfo_groups(STREAM).await?;
    for g in &groups.groups {
        println!(
            "  group {:<10} consumers {}  pending {}  last-delivered-id {}  entries-read {}  lag {}",
            g.name,
            g.consumers,
            g.pending,
            g.last_delivered_id,
            opt(g.entries_read),
            opt(g.lag),
        );
    }
    Ok(())
}

async fn print_consumers(con: &mut MultiplexedConnection) -> AnyResult {
    let consumers: StreamInfoConsumersReply = con.xinfo_consumers(STREAM, GROUP).await?;
    for c in &consumers.consumers {
        println!(
            "  consumer {:<10} pending {}  idle {}ms",
            c.name, c.pending, c.idle
        );
    }
    Ok(())
}

async fn print_pending(con: &mut MultiplexedConnection) -> AnyResult {
    let rows: StreamPendingCountReply = con.xpending_count(STREAM, GROUP, "-", "+", 10).await?;
    println!("XPENDING {STREAM} {GROUP} - + 10:");
    for p in &rows.ids {
        println!(
            "  {}  consumer {:<10} idle {}ms  deliveries {}",
            p.id, p.consumer, p.last_delivered_ms, p.times_delivered
        );
    }
    Ok(())
}

/// Adds `n` events; the one at `export_at` (0-based) is an `export`.
async fn add_events(
    con: &mut MultiplexedConnection,
    n: usize,
    export_at: Option<usize>,
) -> AnyResult {
    const ACTIONS: [&str; 4] = ["login", "view", "purchase", "logout"];
    let mut pipe = redis::pipe();
    for i in 0..n {
        let action = if Some(i) == export_at {
            "export"
        } else {
            ACTIONS[i % ACTIONS.len()]
        };
        pipe.cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg("user_id")
            .arg(1 + i % 5)
            .arg("action")
            .arg(action)
            .ignore();
    }
    pipe.query_async::<()>(con).await?;
    Ok(())
}

fn show(e: &StreamId) -> String {
    let field = |k: &str| e.get::<String>(k).unwrap_or_default();
    format!(
        "{}  user_id={} action={}",
        e.id,
        field("user_id"),
        field("action")
    )
}

fn opt(v: Option<usize>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "?".to_owned())
}

fn section(title: &str) {
    println!("\n== {title}");
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> AnyResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
