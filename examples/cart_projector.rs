//! Event sourcing for shopping carts: a projector consumer group
//! keeps a hash per user from the `cart_events` stream; then a new group rebuilds the projection
//! from the start of the stream, and the two are compared.
//!
//! Run it:
//!     cargo run -p millrace-examples --example cart_projector
//! It uses `REDIS_URL` when set; otherwise it starts a throwaway redis-server through the testkit.
//! It stops by itself once the rebuilt projection is checked (or on Ctrl-C).
//!
//! Delivery is at-least-once, so the projection is idempotent: next to each cart it stores the id
//! of the last event applied to it, and a Lua script applies an event and moves that id in one
//! atomic step, skipping events at or below it. Ids are compared as numbers (milliseconds, then
//! sequence), never as text. The live projector "crashes" once after applying a batch but before
//! the ack; the batch comes back and every event of it is skipped, so nothing is counted twice.
//!
//! Skipping "at or below the last applied id" needs each user's events applied in stream order,
//! so each group here has a single projector. To scale out, partition: one stream per slice of
//! users (`cart_events:{0..N}`, by a hash of the user id) with one projector each, which also
//! is how several projectors share the work without stepping on each other's toes.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use millrace::{Batch, ConsumerSpec, EntryId, Handler, HandlerResult, StartId, Supervisor};
use redis::aio::MultiplexedConnection;

const STREAM: &str = "cart_events";
const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// One cart event: `XADD cart_events * user alice type add_item item book quantity 1`.
#[derive(Debug, serde::Deserialize)]
struct CartEvent {
    user: String,
    #[serde(rename = "type")]
    kind: String,
    item: Option<String>,
    quantity: Option<u32>,
}

/// Applies one event to `KEYS[1]` (the cart: item -> quantity) and `KEYS[2]` (its metadata: the
/// last applied id, checkouts, events applied), unless the event is at or below the last applied
/// id. ARGV: id milliseconds, id sequence, id text, type, item, quantity. Returns 1 when applied,
/// 0 when skipped. Lua numbers are doubles: exact for millisecond timestamps and sequences below 2^53.
const APPLY: &str = r#"
local ms, seq = tonumber(ARGV[1]), tonumber(ARGV[2])
local last = redis.call('HMGET', KEYS[2], 'last_ms', 'last_seq')
if last[1] then
  local last_ms, last_seq = tonumber(last[1]), tonumber(last[2])
  if ms < last_ms or (ms == last_ms and seq <= last_seq) then
    return 0
  end
end
local kind, item, qty = ARGV[4], ARGV[5], tonumber(ARGV[6])
if kind == 'add_item' then
  redis.call('HINCRBY', KEYS[1], item, qty)
elseif kind == 'remove_item' then
  if redis.call('HINCRBY', KEYS[1], item, -qty) <= 0 then
    redis.call('HDEL', KEYS[1], item)
  end
elseif kind == 'checkout' then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[2], 'checkouts', 1)
end
redis.call('HSET', KEYS[2], 'last_ms', ARGV[1], 'last_seq', ARGV[2], 'last_id', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'applied', 1)
return 1
"#;

/// What one projector did.
#[derive(Debug, Default)]
struct Progress {
    applied: AtomicUsize,
    skipped: AtomicUsize,
    /// The highest id handled so far.
    highest: Mutex<EntryId>,
}

impl Progress {
    fn highest(&self) -> EntryId {
        *self.highest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Projects cart events into `<prefix>:<user>` and `<prefix>:<user>:meta`.
struct Projector {
    prefix: &'static str,
    con: MultiplexedConnection,
    script: redis::Script,
    progress: Arc<Progress>,
    /// When set, the next batch of 3 or more events panics after being applied, before its ack.
    crash_once: AtomicBool,
}

impl Projector {
    fn new(prefix: &'static str, con: MultiplexedConnection, crash_once: bool) -> Self {
        Projector {
            prefix,
            con,
            script: redis::Script::new(APPLY),
            progress: Arc::new(Progress::default()),
            crash_once: AtomicBool::new(crash_once),
        }
    }

    async fn apply(&self, id: EntryId, event: &CartEvent) -> redis::RedisResult<bool> {
        let mut con = self.con.clone();
        let mut call = self.script.prepare_invoke();
        call.key(format!("{}:{}", self.prefix, event.user))
            .key(format!("{}:{}:meta", self.prefix, event.user))
            .arg(id.ms)
            .arg(id.seq)
            .arg(id.to_string())
            .arg(&event.kind)
            .arg(event.item.as_deref().unwrap_or(""))
            .arg(event.quantity.unwrap_or(0));
        let applied: i64 = call.invoke_async(&mut con).await?;
        Ok(applied == 1)
    }
}

impl Handler<CartEvent> for Arc<Projector> {
    async fn handle(&self, batch: Batch<CartEvent>) -> HandlerResult {
        let mut done = Vec::with_capacity(batch.len());
        for entry in &batch {
            let e = &entry.message;
            let what = match (&e.item, e.quantity) {
                (Some(item), Some(q)) => format!("{} {item} x{q}", e.kind),
                _ => e.kind.clone(),
            };
            match self.apply(entry.id, e).await {
                Ok(true) => {
                    self.progress.applied.fetch_add(1, Ordering::Relaxed);
                    println!("  [{}] {} {:<5} {what}", batch.meta.group, entry.id, e.user);
                }
                Ok(false) => {
                    self.progress.skipped.fetch_add(1, Ordering::Relaxed);
                    println!(
                        "  [{}] {} {:<5} {what}: already applied, skipped (delivery {})",
                        batch.meta.group,
                        entry.id,
                        e.user,
                        entry.deliveries.unwrap_or(0)
                    );
                }
                // Stop at the first failure: a later event of the same user must not be applied
                // before this one, or this one would be skipped as "already applied" when it
                // comes back. Acknowledge what was applied; the rest stays pending.
                Err(err) => {
                    return if done.is_empty() {
                        HandlerResult::Err(err.into())
                    } else {
                        HandlerResult::Partial(done)
                    };
                }
            }
            done.push(entry.id);
            let mut highest = self
                .progress
                .highest
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *highest = (*highest).max(entry.id);
        }
        if batch.len() >= 3 && self.crash_once.swap(false, Ordering::SeqCst) {
            panic!(
                "simulated crash after applying {} events, before the ack",
                batch.len()
            );
        }
        HandlerResult::Ok
    }
}

type AnyResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> AnyResult {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    millrace::install_panic_hook();

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
    let mut stale = vec![STREAM.to_owned()];
    for user in USERS {
        for prefix in ["cart", "cart_rebuilt"] {
            stale.push(format!("{prefix}:{user}"));
            stale.push(format!("{prefix}:{user}:meta"));
        }
    }
    let _: () = redis::cmd("DEL").arg(&stale).query_async(&mut con).await?;

    // (user, type, item, quantity), in the order they happen.
    let events: [(&str, &str, &str, u32); 18] = [
        ("alice", "add_item", "book", 1),
        ("bob", "add_item", "socks", 2),
        ("alice", "add_item", "pen", 3),
        ("carol", "add_item", "tea", 4),
        ("bob", "add_item", "hat", 1),
        ("alice", "remove_item", "pen", 1),
        ("carol", "remove_item", "tea", 1),
        ("carol", "checkout", "", 0),
        ("alice", "add_item", "mug", 1),
        ("bob", "remove_item", "socks", 2),
        ("carol", "add_item", "tea", 2),
        ("alice", "checkout", "", 0),
        ("carol", "add_item", "cups", 2),
        ("bob", "add_item", "socks", 1),
        ("alice", "add_item", "lamp", 1),
        ("carol", "remove_item", "cups", 1),
        ("bob", "add_item", "scarf", 1),
        ("alice", "add_item", "pen", 2),
    ];
    let (before, after) = events.split_at(10);
    let mut last_id = EntryId::MIN;
    for event in before {
        last_id = add(&mut con, event).await?;
    }
    println!("added {} cart events to `{STREAM}`", before.len());

    // The live projection, with one simulated crash between applying a batch and its ack.
    let live = Arc::new(Projector::new("cart", con.clone(), true));
    let app = Supervisor::builder()
        .redis(url)
        .consumer(projector_spec(
            "cart_projectors",
            "projector-1",
            live.clone(),
        ))
        .start()
        .await?;
    println!("live projector started (group `cart_projectors`)");
    for event in after {
        last_id = add(&mut con, event).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("added {} more events; the last is {last_id}", after.len());

    let outcome = tokio::select! {
        r = run(&app, &live, last_id, con.clone()) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        r = app.wait() => match r {
            Ok(()) => Err("the supervisor stopped".into()),
            Err(e) => Err(e.into()),
        },
    };
    app.shutdown().await?;
    outcome
}

/// Waits for the live projection, rebuilds it in a new group, and compares the two.
async fn run(
    app: &Supervisor,
    live: &Arc<Projector>,
    last_id: EntryId,
    mut con: MultiplexedConnection,
) -> AnyResult {
    wait_for(live, last_id).await?;
    println!(
        "live projection is up to date: {} events applied, {} redelivered ones skipped",
        live.progress.applied.load(Ordering::Relaxed),
        live.progress.skipped.load(Ordering::Relaxed)
    );

    // A new projector comes online: a new group starting at the beginning of the stream rebuilds
    // every cart into fresh keys, while the live projector keeps its own position.
    println!(
        "\nrebuilding into `cart_rebuilt:*` with a new group `cart_rebuild` from the beginning"
    );
    let rebuilt = Arc::new(Projector::new("cart_rebuilt", con.clone(), false));
    app.add_consumer(projector_spec(
        "cart_rebuild",
        "rebuilder-1",
        rebuilt.clone(),
    ))
    .await?;
    wait_for(&rebuilt, last_id).await?;
    println!(
        "rebuild done: {} events applied",
        rebuilt.progress.applied.load(Ordering::Relaxed)
    );

    println!("\nprojections:");
    let mut equal = true;
    for user in USERS {
        let mut views = Vec::new();
        for prefix in ["cart", "cart_rebuilt"] {
            let cart: BTreeMap<String, u32> = redis::cmd("HGETALL")
                .arg(format!("{prefix}:{user}"))
                .query_async(&mut con)
                .await?;
            let mut meta: BTreeMap<String, String> = redis::cmd("HGETALL")
                .arg(format!("{prefix}:{user}:meta"))
                .query_async(&mut con)
                .await?;
            // The split-out id parts are bookkeeping; `last_id` says the same.
            meta.retain(|k, _| k != "last_ms" && k != "last_seq");
            views.push((cart, meta));
        }
        let same = views[0] == views[1];
        equal &= same;
        let (cart, meta) = &views[0];
        let items = cart
            .iter()
            .map(|(item, q)| format!("{item} x{q}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "  {user:<5} cart [{items}]  checkouts {}  events applied {}  last event {}  rebuilt: {}",
            meta.get("checkouts").map(String::as_str).unwrap_or("0"),
            meta.get("applied").map(String::as_str).unwrap_or("0"),
            meta.get("last_id").map(String::as_str).unwrap_or("-"),
            if same { "equal" } else { "DIFFERENT" },
        );
        if !same {
            println!("    live:    {:?}\n    rebuilt: {:?}", views[0], views[1]);
        }
    }
    if !equal {
        return Err("the rebuilt projection differs from the live one".into());
    }
    println!("the rebuilt projection equals the live one");
    Ok(())
}

fn projector_spec(group: &str, consumer: &str, projector: Arc<Projector>) -> ConsumerSpec {
    ConsumerSpec::new(STREAM, group, consumer)
        .start_id(StartId::Beginning)
        .count(4)
        .block(Duration::from_millis(500))
        .handler(projector)
}

/// Waits until `projector` has handled every event up to `last`.
async fn wait_for(projector: &Projector, last: EntryId) -> AnyResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    while projector.progress.highest() < last {
        if Instant::now() > deadline {
            return Err(format!("`{}` did not catch up in time", projector.prefix).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Adds one event and returns its id.
async fn add(
    con: &mut MultiplexedConnection,
    (user, kind, item, quantity): &(&str, &str, &str, u32),
) -> AnyResult<EntryId> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(STREAM)
        .arg("*")
        .arg("user")
        .arg(user)
        .arg("type")
        .arg(kind);
    if !item.is_empty() {
        cmd.arg("item").arg(item).arg("quantity").arg(quantity);
    }
    let id: String = cmd.query_async(con).await?;
    Ok(id.parse()?)
}
