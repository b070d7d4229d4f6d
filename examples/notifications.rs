//! A notification system: several consumer groups (email, SMS, push) each read every notification
//! of one stream, independently.
//!
//! Run it:
//!     cargo run -p millrace-examples --example notifications
//! It uses `REDIS_URL` when set; otherwise it starts a throwaway redis-server through the testkit.
//! It stops by itself once every group has handled every notification (or on Ctrl-C).
//!
//! One `notifications` stream; three consumer groups, `email`, `sms` and `push`, each with two
//! workers of its own. Every group receives every notification (each group has its own position
//! in the stream, created at `0` with `StartId::Beginning`, so notifications added before the
//! workers started are delivered too), while within a group each notification goes to one worker
//! (`XREADGROUP ... >`). Each notification names the channels it should go out on; a group sends
//! the ones for its channel and acknowledges the others as skipped. At the end the example checks
//! that each group handled each notification at least once and prints a per-group summary.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace::{Batch, ConsumerSpec, EntryId, Handler, HandlerResult, StartId, Supervisor};
use tokio::sync::Notify;

const STREAM: &str = "notifications";
const GROUPS: [&str; 3] = ["email", "sms", "push"];
const WORKERS_PER_GROUP: usize = 2;

/// One notification, as added with `XADD notifications * user_id 7 kind new_follower ...`.
#[derive(Debug, serde::Deserialize)]
struct Notification {
    user_id: u64,
    kind: String,
    message: String,
    /// Comma-separated channels this notification goes out on: `email,push`.
    channels: String,
}

/// What one group did.
#[derive(Debug, Default)]
struct GroupLog {
    /// Every notification the group handled, with how often (more than once after a redelivery).
    handled: BTreeMap<EntryId, u32>,
    /// Notifications sent on this group's channel.
    sent: usize,
    /// Notifications for other channels, acknowledged without sending.
    skipped: usize,
    /// Notifications handled per worker.
    per_worker: BTreeMap<String, usize>,
}

/// Shared by all six workers: what each group handled, and a signal once all is done.
struct Tracker {
    /// How many notifications the producer adds.
    total: usize,
    /// The ids added so far.
    expected: Mutex<HashSet<EntryId>>,
    groups: Mutex<BTreeMap<String, GroupLog>>,
    all_done: Notify,
}

impl Tracker {
    fn expect(&self, id: EntryId) {
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }

    fn expected(&self) -> HashSet<EntryId> {
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True once every notification was added and every group handled each of them.
    fn complete(&self) -> bool {
        let expected = self.expected();
        if expected.len() < self.total {
            return false;
        }
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        GROUPS.iter().all(|g| {
            groups
                .get(*g)
                .is_some_and(|log| expected.iter().all(|id| log.handled.contains_key(id)))
        })
    }
}

/// The handler of every worker: "sends" the notifications for its group's channel.
struct Notifier {
    tracker: Arc<Tracker>,
}

impl Handler<Notification> for Notifier {
    async fn handle(&self, batch: Batch<Notification>) -> HandlerResult {
        let channel = &*batch.meta.group;
        let worker = &*batch.meta.consumer;
        let mut lines = Vec::new();
        let mut sent = 0;
        for entry in &batch {
            let n = &entry.message;
            if n.channels.split(',').any(|c| c.trim() == channel) {
                // A real notifier would call the mail, SMS or push provider here.
                sent += 1;
                lines.push(format!(
                    "  {channel:<5} {worker:<7} {} sent to user {}: {} ({})",
                    entry.id, n.user_id, n.message, n.kind
                ));
            }
        }
        // Simulated provider latency, so the two workers of a group share the load.
        tokio::time::sleep(Duration::from_millis(20)).await;
        {
            let mut groups = self
                .tracker
                .groups
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let log = groups.entry(channel.to_owned()).or_default();
            for entry in &batch {
                *log.handled.entry(entry.id).or_default() += 1;
            }
            log.sent += sent;
            log.skipped += batch.len() - sent;
            *log.per_worker.entry(worker.to_owned()).or_default() += batch.len();
        }
        for line in lines {
            println!("{line}");
        }
        if self.tracker.complete() {
            self.tracker.all_done.notify_one();
        }
        HandlerResult::Ok
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    let _: () = redis::cmd("DEL").arg(STREAM).query_async(&mut con).await?;

    let notifications = [
        (7, "new_follower", "ada started following you", "push,email"),
        (7, "product_update", "your watched item is back", "email"),
        (8, "security", "new sign-in from Lisbon", "email,sms,push"),
        (9, "new_follower", "grace started following you", "push"),
        (8, "order_shipped", "order 1042 has shipped", "sms,push"),
        (9, "product_update", "price drop on 3 items", "email"),
        (7, "security", "password changed", "email,sms"),
        (8, "new_follower", "linus started following you", "push"),
        (
            9,
            "order_shipped",
            "order 1043 has shipped",
            "email,sms,push",
        ),
        (7, "digest", "your weekly digest", "email"),
        (8, "reminder", "your cart misses you", "push"),
        (9, "security", "two-factor enabled", "sms"),
    ];
    let tracker = Arc::new(Tracker {
        total: notifications.len(),
        expected: Mutex::new(HashSet::new()),
        groups: Mutex::new(BTreeMap::new()),
        all_done: Notify::new(),
    });

    // Half of them before the workers start: `StartId::Beginning` creates each group at `0`, so
    // every group gets these too (with the default `StartId::New` they would be skipped).
    let (before, after) = notifications.split_at(notifications.len() / 2);
    for (user_id, kind, message, channels) in before {
        let id = add(&mut con, *user_id, kind, message, channels).await?;
        tracker.expect(id);
    }
    println!(
        "added {} notifications to `{STREAM}` before starting the workers",
        before.len()
    );

    let mut specs = Vec::new();
    for group in GROUPS {
        for n in 1..=WORKERS_PER_GROUP {
            specs.push(
                ConsumerSpec::new(STREAM, group, format!("{group}-{n}"))
                    .start_id(StartId::Beginning)
                    .count(2)
                    .block(Duration::from_millis(500))
                    .handler(Notifier {
                        tracker: tracker.clone(),
                    }),
            );
        }
    }
    let app = Supervisor::builder()
        .redis(url)
        .consumers(specs)
        .start()
        .await?;
    println!(
        "started {} workers: groups {} with {WORKERS_PER_GROUP} workers each",
        GROUPS.len() * WORKERS_PER_GROUP,
        GROUPS.join(", ")
    );

    // The other half while the workers run.
    for (user_id, kind, message, channels) in after {
        let id = add(&mut con, *user_id, kind, message, channels).await?;
        tracker.expect(id);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    println!("added {} more notifications while running", after.len());
    // The workers may have handled the last one before it was recorded as expected.
    if tracker.complete() {
        tracker.all_done.notify_one();
    }

    let finished = tokio::select! {
        _ = tracker.all_done.notified() => true,
        _ = tokio::signal::ctrl_c() => { println!("interrupted"); false }
        r = app.wait() => { r?; false }
        _ = tokio::time::sleep(Duration::from_secs(30)) => { println!("timed out"); false }
    };
    app.shutdown().await?;

    let expected = tracker.expected();
    println!("\nsummary ({} notifications):", expected.len());
    // The workers are stopped: take what they recorded.
    let groups = std::mem::take(&mut *tracker.groups.lock().unwrap_or_else(|p| p.into_inner()));
    let mut all_ok = finished;
    for group in GROUPS {
        let empty = GroupLog::default();
        let log = groups.get(group).unwrap_or(&empty);
        let missing = expected
            .iter()
            .filter(|id| !log.handled.contains_key(id))
            .count();
        let redelivered: u32 = log.handled.values().map(|n| n - 1).sum();
        let pending: u64 = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(group)
            .query_async::<(u64, redis::Value, redis::Value, redis::Value)>(&mut con)
            .await?
            .0;
        let workers = log
            .per_worker
            .iter()
            .map(|(w, n)| format!("{w}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "  {group:<5}  handled {:>2}/{}  sent {:>2}  skipped {:>2}  handled twice {redelivered}  pending {pending}  [{workers}]",
            log.handled.len(),
            expected.len(),
            log.sent,
            log.skipped,
        );
        all_ok &= missing == 0 && pending == 0;
    }
    if !all_ok {
        return Err("not every group handled every notification".into());
    }
    println!("every group handled every notification");
    Ok(())
}

/// Adds one notification and returns its id.
async fn add(
    con: &mut redis::aio::MultiplexedConnection,
    user_id: u64,
    kind: &str,
    message: &str,
    channels: &str,
) -> Result<EntryId, Box<dyn std::error::Error>> {
    let id: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("user_id")
        .arg(user_id)
        .arg("kind")
        .arg(kind)
        .arg("message")
        .arg(message)
        .arg("channels")
        .arg(channels)
        .query_async(con)
        .await?;
    Ok(id.parse()?)
}
