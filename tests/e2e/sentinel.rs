//! A primary with replicas behind Redis Sentinel (the test kit's 1 master + 2 replicas + 3
//! Sentinels, with passwords): consumers follow the master through a graceful `SENTINEL
//! FAILOVER` and through kill -9 of the master, under a steady producer. Afterwards every
//! confirmed entry was handled, nothing is pending, and no consumer was restarted; the time to
//! handling again after each failover is printed. Also the bad input: an unknown master name,
//! Sentinels all down.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use millrace::{Batch, ConsumerSpec, EntryId, HandlerResult, RawEntry, StartId, Supervisor};
use millrace_testkit::{eventually, SentinelGroup};
use tokio::task::block_in_place;

use crate::common::init_tracing;

const PW: &str = "s3nt-pw";
const LONG: Duration = Duration::from_secs(60);

/// The master's URL as the Sentinels name it now.
async fn master_url(sentinels: &[String]) -> Option<String> {
    for s in sentinels {
        let Ok(client) = redis::Client::open(s.as_str()) else {
            continue;
        };
        let Ok(mut con) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let addr: redis::RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query_async(&mut con)
            .await;
        if let Ok(Some((host, port))) = addr {
            return Some(format!("redis://:{PW}@{host}:{port}"));
        }
    }
    None
}

/// Adds entries to the master of the moment; an entry counts as confirmed once `WAIT 2` says both
/// replicas have it. (`WAIT 1` is not enough: Sentinel promotes by the replication offsets it last
/// saw, so after a kill -9 it can promote the replica that had not received the entry yet, and the
/// entry is gone with the old master. Seen on Redis 8.2.)
fn produce(
    sentinels: Vec<String>,
    stop: Arc<AtomicBool>,
    confirmed: Arc<Mutex<Vec<EntryId>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let added = async {
                let url = master_url(&sentinels).await?;
                let client = redis::Client::open(url).ok()?;
                let mut con = client.get_multiplexed_async_connection().await.ok()?;
                for _ in 0..50 {
                    n += 1;
                    let id: String = redis::cmd("XADD")
                        .arg("jobs")
                        .arg("*")
                        .arg("n")
                        .arg(n)
                        .query_async(&mut con)
                        .await
                        .ok()?;
                    let acked: i64 = redis::cmd("WAIT")
                        .arg(2)
                        .arg(1000)
                        .query_async(&mut con)
                        .await
                        .ok()?;
                    if acked >= 2 {
                        confirmed.lock().unwrap().push(id.parse().ok()?);
                    }
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Some(())
            };
            if added.await.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
}

#[derive(Clone, Default)]
struct Handled(Arc<Mutex<Vec<EntryId>>>);

fn spec(handled: &Handled) -> ConsumerSpec {
    let handled = handled.clone();
    ConsumerSpec::new("jobs", "g", "c")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(500))
        .claim_interval(Duration::from_millis(500))
        .claim_min_idle(Duration::from_secs(2))
        .handler(move |batch: Batch<RawEntry>| {
            let handled = handled.clone();
            async move {
                handled
                    .0
                    .lock()
                    .unwrap()
                    .extend(batch.entries.iter().map(|e| e.id));
                HandlerResult::Ok
            }
            .boxed()
        })
}

/// Waits until the consumer has handled an entry added after the failover completed (its id's
/// milliseconds at or past `after_ms`, the wall clock then: the servers run on this machine), and
/// says how long after `since` (the start of the failover) that was.
async fn handling_again(handled: &Handled, since: Instant, after_ms: u64) -> Duration {
    eventually(LONG, "an entry added after the failover is handled", || {
        let seen = handled.0.lock().unwrap().iter().any(|id| id.ms >= after_ms);
        async move { seen }
    })
    .await;
    since.elapsed()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_follow_the_master_through_sentinel_failovers_losing_nothing() {
    init_tracing();
    let mut group = block_in_place(|| SentinelGroup::start_with_password(PW));
    let sentinels = group.sentinel_urls();
    let handled = Handled::default();
    let app = Supervisor::builder()
        .redis_sentinel(group.master_name(), sentinels.clone())
        .sentinel_data_auth(None, PW)
        .consumer(spec(&handled))
        .start()
        .await
        .unwrap();
    let (stop, confirmed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let producer = produce(sentinels.clone(), stop.clone(), confirmed.clone());
    eventually(LONG, "100 entries handled", || {
        let n = handled.0.lock().unwrap().len();
        async move { n >= 100 }
    })
    .await;

    let started = Instant::now();
    block_in_place(|| group.failover());
    let graceful = handling_again(&handled, started, now_ms()).await;

    let started = Instant::now();
    let killed = group.master().port();
    block_in_place(|| group.kill_master());
    let after_kill = handling_again(&handled, started, now_ms()).await;
    block_in_place(|| group.restart_node(killed));

    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let confirmed: Vec<EntryId> = confirmed.lock().unwrap().clone();
    eventually(LONG, "every confirmed entry handled", || {
        let seen: HashSet<EntryId> = handled.0.lock().unwrap().iter().copied().collect();
        let all = confirmed.iter().all(|id| seen.contains(id));
        async move { all }
    })
    .await;
    let master = master_url(&sentinels).await.unwrap();
    let mut con = redis::Client::open(master)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    eventually(LONG, "nothing pending", || {
        let mut con = con.clone();
        async move { crate::common::pending(&mut con, "jobs", "g").await == 0 }
    })
    .await;
    let restarts: u64 = app.health().iter().map(|h| h.restarts_total).sum();
    assert_eq!(restarts, 0, "no consumer restarted: {:?}", app.health());
    let handled_n = handled.0.lock().unwrap().len();
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "sentinel failovers: {} confirmed, {handled_n} handled ({} duplicates); handling again {} ms after SENTINEL FAILOVER began, {} ms after kill -9 of the master",
            confirmed.len(),
            handled_n - handled.0.lock().unwrap().iter().collect::<HashSet<_>>().len(),
            graceful.as_millis(),
            after_kill.as_millis()
        );
    }
    app.shutdown().await.unwrap();
    drop(con.clone());
    let _: () = redis::cmd("PING").query_async(&mut con).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_or_no_sentinel_fails_at_start_naming_the_fix() {
    init_tracing();
    let group = block_in_place(|| SentinelGroup::start_with_password(PW));
    let err = Supervisor::builder()
        .redis_sentinel("no-such-master", group.sentinel_urls())
        .sentinel_data_auth(None, PW)
        .consumer(spec(&Handled::default()))
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no Sentinel knows a master named `no-such-master`"),
        "{text}"
    );
    assert!(text.contains("sentinel monitor NAME"), "{text}");
    assert!(err.is_fatal(), "{err:?}");
    drop(group);

    // Sentinels all down: the ports of the dropped group's Sentinels.
    let err = Supervisor::builder()
        .redis_sentinel("mymaster", ["redis://127.0.0.1:1", "redis://127.0.0.1:2"])
        .consumer(spec(&Handled::default()))
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("could not reach any Sentinel"), "{text}");
    assert!(
        text.contains("127.0.0.1:1") && text.contains("127.0.0.1:2"),
        "{text}"
    );
    assert!(text.contains("redis-sentinel runs"), "{text}");
}

/// `[sentinel]` in `millrace.toml`: the supervisor `Settings::supervisor()` builds finds the master
/// through the Sentinels (with the data nodes' password from the file) and handles an entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_from_settings_finds_the_master_through_sentinel() {
    init_tracing();
    let group = block_in_place(|| SentinelGroup::start_with_password(PW));
    let urls = group
        .sentinel_urls()
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let settings = millrace::Settings::from_toml_str(&format!(
        "[sentinel]\nmaster = \"{}\"\nurls = [{urls}]\npassword = \"{PW}\"\n",
        group.master_name()
    ))
    .unwrap();
    let handled = Handled::default();
    let app = settings
        .supervisor()
        .unwrap()
        .consumer(spec(&handled))
        .start()
        .await
        .unwrap();
    let master = master_url(&group.sentinel_urls()).await.unwrap();
    let mut con = redis::Client::open(master)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let id: String = redis::cmd("XADD")
        .arg("jobs")
        .arg("*")
        .arg("n")
        .arg(1)
        .query_async(&mut con)
        .await
        .unwrap();
    let id: EntryId = id.parse().unwrap();
    eventually(LONG, "the entry is handled", || {
        let seen = handled.0.lock().unwrap().contains(&id);
        async move { seen }
    })
    .await;
    eventually(LONG, "nothing pending", || {
        let mut con = con.clone();
        async move { crate::common::pending(&mut con, "jobs", "g").await == 0 }
    })
    .await;
    app.shutdown().await.unwrap();
}

/// The `orders` example with `--redis-sentinel`: produce, work and report go to the master the
/// Sentinels name, and every order is processed; SIGTERM drains the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orders_example_produces_works_and_reports_behind_sentinel() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};

    init_tracing();
    let group = block_in_place(|| SentinelGroup::start_with_password(PW));
    let target = format!(
        ":{PW}@{}={}",
        group.master_name(),
        group.sentinel_urls().join(",")
    );
    let orders = || {
        let mut cmd = tokio::process::Command::new(crate::faults::orders_bin());
        cmd.arg("--redis-sentinel")
            .arg(&target)
            .env_remove("REDIS_URL")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    let report = || async {
        let out = orders().arg("report").output().await.unwrap();
        assert!(out.status.success(), "orders report: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let produced = orders()
        .args(["produce", "--count", "200"])
        .output()
        .await
        .unwrap();
    assert!(produced.status.success(), "orders produce: {produced:?}");

    let mut worker = orders()
        .args(["work", "--consumer", "w1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(LONG, lines.next_line())
        .await
        .expect("ready in time")
        .unwrap();
    assert_eq!(ready.as_deref(), Some("ready"));
    eventually(LONG, "every order processed", || async {
        let r = report().await;
        r.contains("\"processed\":200") && r.contains("\"pending\":0") && r.contains("\"lost\":0")
    })
    .await;
    let pid = worker.id().unwrap();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::time::timeout(LONG, worker.wait())
        .await
        .expect("the worker exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "SIGTERM drains and exits 0: {status}");
    let last = report().await;
    assert!(
        last.contains("\"produced\":200") && last.contains("\"lost\":0"),
        "{last}"
    );
}
