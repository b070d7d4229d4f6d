//! The entries the benchmark drains (user events: `user_id`, `action`, `page`, as in the
//! quickstart), the preload, the shared progress counter, and a walker over raw `XREADGROUP` replies for the
//! hand-written loops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::Notify;

use crate::Res;

const ACTIONS: [&str; 4] = ["login", "view", "purchase", "logout"];
const PAGES: [&str; 4] = ["/", "/products", "/cart", "/checkout"];

/// The typed message: three short fields decoded with serde (millrace) or by hand (baselines).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct UserEvent {
    pub(crate) user_id: u64,
    pub(crate) action: String,
    pub(crate) page: String,
}

/// The `k`-th event's fields, deterministic.
pub(crate) fn event(k: usize) -> (u64, &'static str, &'static str) {
    (
        (k as u64 * 7919) % 100_000 + 1,
        ACTIONS[k % 4],
        PAGES[(k / 4) % 4],
    )
}

/// Queues `XADD <stream> * user_id … action … page …` of the `k`-th event on `pipe` (reply ignored).
pub(crate) fn push_event(pipe: &mut redis::Pipeline, stream: &str, k: usize) {
    let (user, action, page) = event(k);
    pipe.cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("user_id")
        .arg(user)
        .arg("action")
        .arg(action)
        .arg("page")
        .arg(page)
        .ignore();
}

/// A multiplexed connection whose commands may wait up to 30 s for their reply (the default 500 ms
/// fails acks when 256 consumer threads keep the runtime's workers from running for a while).
pub(crate) async fn connect(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Deletes `stream` and adds `n` entries with three short fields, pipelined.
pub(crate) async fn preload(conn: &mut MultiplexedConnection, stream: &str, n: usize) -> Res<()> {
    let _: () = redis::cmd("DEL").arg(stream).query_async(conn).await?;
    let mut k = 0;
    while k < n {
        let end = (k + 5_000).min(n);
        let mut pipe = redis::pipe();
        for i in k..end {
            push_event(&mut pipe, stream, i);
        }
        pipe.query_async::<()>(conn).await?;
        k = end;
    }
    let len: usize = redis::cmd("XLEN").arg(stream).query_async(conn).await?;
    if len != n {
        return Err(format!("preload: stream holds {len} entries, expected {n}").into());
    }
    Ok(())
}

/// How many entries were handled, by all consumers of one run together.
#[derive(Debug)]
pub(crate) struct Progress {
    target: u64,
    handled: AtomicU64,
    done: AtomicBool,
    notify: Notify,
}

impl Progress {
    pub(crate) fn new(target: u64) -> Self {
        Progress {
            target,
            handled: AtomicU64::new(0),
            done: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// Counts `n` handled entries; true for the call that reaches the target.
    pub(crate) fn add(&self, n: usize) -> bool {
        let before = self.handled.fetch_add(n as u64, Ordering::AcqRel);
        if before < self.target && before + n as u64 >= self.target {
            self.done.store(true, Ordering::Release);
            self.notify.notify_one();
            return true;
        }
        false
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    pub(crate) fn target(&self) -> u64 {
        self.target
    }

    pub(crate) fn handled(&self) -> u64 {
        self.handled.load(Ordering::Acquire)
    }

    /// Waits until the target is reached.
    pub(crate) async fn wait(&self) {
        while !self.is_done() {
            self.notify.notified().await;
        }
    }
}

/// Microseconds on a process-wide monotonic clock; the latency producer writes it into `ts`.
pub(crate) fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// End-to-end latency samples in microseconds.
#[derive(Debug, Default)]
pub(crate) struct Samples(Mutex<Vec<u64>>);

impl Samples {
    pub(crate) fn record_ts(&self, ts: &[u8]) {
        let now = now_us();
        if let Some(sent) = std::str::from_utf8(ts)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(now.saturating_sub(sent));
        }
    }

    pub(crate) fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What a hand-written loop does with each entry.
#[derive(Debug, Clone)]
pub(crate) enum Work {
    /// Nothing (the no-op handler).
    Noop,
    /// Decode into [`UserEvent`] by hand.
    Typed,
    /// Record `now - ts` of the entry's `ts` field.
    Latency(std::sync::Arc<Samples>),
}

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

/// What a careful hand-written decoder of the three fields looks like.
pub(crate) fn decode_by_hand(fields: &[Value]) -> Option<UserEvent> {
    let (mut user_id, mut action, mut page) = (None, None, None);
    for pair in fields.chunks_exact(2) {
        let (k, v) = (bulk(&pair[0])?, bulk(&pair[1])?);
        match k {
            b"user_id" => user_id = std::str::from_utf8(v).ok()?.parse().ok(),
            b"action" => action = Some(std::str::from_utf8(v).ok()?.to_owned()),
            b"page" => page = Some(std::str::from_utf8(v).ok()?.to_owned()),
            _ => {}
        }
    }
    Some(UserEvent {
        user_id: user_id?,
        action: action?,
        page: page?,
    })
}

/// Walks an `XREADGROUP` reply (RESP2 array or RESP3 map; nil on timeout), does `work` for every
/// entry and returns the entry ids, moved out of the reply, ready for `XACK`.
pub(crate) fn take_ids(reply: Value, work: &Work) -> Res<Vec<Vec<u8>>> {
    let streams: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(a) => a,
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        other => return Err(format!("unexpected XREADGROUP reply {other:?}").into()),
    };
    let mut ids = Vec::new();
    for stream in streams {
        let Value::Array(mut pair) = stream else {
            return Err("stream element is not an array".into());
        };
        let Some(Value::Array(entries)) = pair.pop() else {
            return Err("stream entries are not an array".into());
        };
        ids.reserve(entries.len());
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                return Err("entry is not an array".into());
            };
            let fields = match parts.pop() {
                Some(Value::Array(f)) => f,
                _ => return Err("entry fields are not an array".into()),
            };
            let Some(Value::BulkString(id)) = parts.pop() else {
                return Err("entry id is not a bulk string".into());
            };
            match work {
                Work::Noop => {}
                Work::Typed => {
                    let event = decode_by_hand(&fields).ok_or("undecodable entry")?;
                    std::hint::black_box(&event);
                }
                Work::Latency(samples) => {
                    if let Some(ts) = fields
                        .chunks_exact(2)
                        .find(|p| bulk(&p[0]) == Some(b"ts"))
                        .and_then(|p| bulk(&p[1]))
                    {
                        samples.record_ts(ts);
                    }
                }
            }
            std::hint::black_box(&fields);
            ids.push(id);
        }
    }
    Ok(ids)
}
