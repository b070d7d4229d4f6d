//! The supervisor: restarts after panics, the restart limit, fatal errors, duplicates, adding and
//! removing consumers, graceful shutdown, and placement under a user's ractor supervisor.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace::{
    Batch, ConsumerId, ConsumerSpec, Error, HandlerResult, RawEntry, RestartPolicy, Source,
    StartId, Supervisor,
};
use millrace_testkit::{eventually, RedisServer};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::common::*;

fn spec(stream: &str, group: &str, consumer: &str) -> ConsumerSpec {
    ConsumerSpec::new(stream, group, consumer)
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(200))
}

fn quick_restarts(max: usize) -> RestartPolicy {
    let mut p = RestartPolicy::default();
    p.max_restarts = max;
    p.backoff_initial = Duration::from_millis(10);
    p.backoff_max = Duration::from_millis(50);
    p
}

#[tokio::test]
async fn a_panicking_handler_is_restarted_and_its_batch_handled_again() {
    let (server, mut con) = server().await;
    let ids = xadd_n(&mut con, "s", 3).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Seen::default();
    let (calls2, seen2) = (calls.clone(), seen.clone());
    let app = Supervisor::builder()
        .redis(server.url())
        .restart_policy(quick_restarts(3))
        .consumer(spec("s", "g", "c").handler(move |batch: Batch<RawEntry>| {
            seen2.record(&batch);
            if calls2.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("boom on the first batch");
            }
            async { HandlerResult::Ok }
        }))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "nothing pending", || {
        let mut con = con.clone();
        let n = seen.len();
        async move { n >= 6 && pending(&mut con, "s", "g").await == 0 }
    })
    .await;
    let all = seen.all();
    assert_eq!(all[..3].iter().map(|s| s.0).collect::<Vec<_>>(), ids);
    assert!(all[..3].iter().all(|s| s.2 == Source::New));
    assert_eq!(
        all[3..].iter().map(|s| s.0).collect::<Vec<_>>(),
        ids,
        "the crashed batch is replayed"
    );
    assert!(
        all[3..]
            .iter()
            .all(|s| s.2 == Source::Replay && s.1 == Some(2)),
        "{all:?}"
    );
    let h = app
        .consumer_health(&ConsumerId::new("s", "g", "c"))
        .unwrap();
    assert_eq!(h.restarts_total, 1);
    assert!(h
        .last_error
        .unwrap_or_default()
        .contains("boom on the first batch"));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_restart_limit_escalates_with_an_error_naming_the_consumer() {
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 1).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .restart_policy(quick_restarts(2))
        .consumer(
            spec("s", "g", "doomed").handler(move |_batch: Batch<RawEntry>| {
                calls2.fetch_add(1, Ordering::SeqCst);
                panic!("always broken");
                #[allow(unreachable_code)]
                async {
                    HandlerResult::Ok
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let err = tokio::time::timeout(WAIT, app.wait())
        .await
        .expect("supervisor gives up")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("consumer `doomed`")
            && err.contains("gave up after 2 restarts")
            && err.contains("always broken"),
        "{err}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "first run + 2 restarts, then no more"
    );
    assert_eq!(
        pending(&mut con, "s", "g").await,
        1,
        "the entry stays pending for someone else"
    );
    assert!(app.shutdown().await.is_err());
}

#[tokio::test]
async fn an_error_restarting_cannot_fix_stops_at_once_and_says_what_to_do() {
    let (server, mut con) = server().await;
    let _: () = redis::cmd("SET")
        .arg("notastream")
        .arg("x")
        .query_async(&mut con)
        .await
        .unwrap();
    let app = Supervisor::builder()
        .redis(server.url())
        .restart_policy(quick_restarts(5))
        .consumer(spec("notastream", "g", "c").handler(recording(&Seen::default())))
        .start()
        .await
        .unwrap();
    let err = tokio::time::timeout(WAIT, app.wait())
        .await
        .expect("fails fast")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`notastream`")
            && err.contains("not a stream")
            && err.contains("consumer `c`"),
        "{err}"
    );
    let h = app
        .consumer_health(&ConsumerId::new("notastream", "g", "c"))
        .unwrap();
    assert_eq!(h.restarts_total, 0, "no restart loop on WRONGTYPE");
}

#[tokio::test]
async fn a_duplicate_consumer_triple_is_refused() {
    let (server, _con) = server().await;
    let seen = Seen::default();
    let err = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "same").handler(recording(&seen)))
        .consumer(spec("s", "g", "same").handler(recording(&seen)))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateConsumer { .. }), "{err}");

    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "same").handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    let err = app
        .add_consumer(spec("s", "g", "same").handler(recording(&seen)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
    // Another supervisor in the same process is refused too.
    let err = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "same").handler(recording(&seen)))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateConsumer { .. }), "{err}");
    // Other names are fine.
    app.add_consumer(spec("s", "g", "other").handler(recording(&seen)))
        .await
        .unwrap();
    app.shutdown().await.unwrap();
    // After shutdown the name is free again.
    let again = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "same").handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    again.shutdown().await.unwrap();
}

#[tokio::test]
async fn consumers_can_be_added_and_removed_while_running() {
    let (server, mut con) = server().await;
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c1").handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    app.add_consumer(spec("s", "g", "c2").handler(recording(&seen)))
        .await
        .unwrap();
    assert_eq!(app.health().len(), 2);
    wait_running(&app).await;
    xadd_n(&mut con, "s", 50).await;
    eventually(WAIT, "all handled", || {
        let s = seen.clone();
        async move { s.len() >= 50 }
    })
    .await;
    app.remove_consumer(&ConsumerId::new("s", "g", "c1"))
        .await
        .unwrap();
    assert_eq!(app.health().len(), 1);
    let err = app
        .remove_consumer(&ConsumerId::new("s", "g", "c1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownConsumer { .. }));
    xadd_n(&mut con, "s", 10).await;
    eventually(WAIT, "the remaining consumer handles new entries", || {
        let s = seen.clone();
        async move { s.len() >= 60 }
    })
    .await;
    assert!(seen.all()[50..].iter().all(|s| s.3 == "c2"));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_under_load_loses_nothing_and_duplicates_nothing() {
    let (server, mut con) = server().await;
    let ids = xadd_n(&mut con, "s", 2000).await;
    let seen = Seen::default();
    let make = |seen: &Seen| {
        let seen = seen.clone();
        spec("s", "g", "c")
            .count(50)
            .handler(move |batch: Batch<RawEntry>| {
                seen.record(&batch);
                async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    HandlerResult::Ok
                }
            })
    };
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(make(&seen))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "some handled", || {
        let s = seen.clone();
        async move { s.len() >= 300 }
    })
    .await;
    app.shutdown().await.unwrap();
    let handled_before = seen.len();
    assert!(handled_before < 2000, "shutdown happened mid-stream");
    // Whatever was fetched but not handled went back to the group; nothing handled is pending.
    let rows = pending_rows(&mut con, "s", "g").await;
    let handled: HashSet<_> = seen.ids().into_iter().collect();
    assert!(
        rows.iter().all(|r| !handled.contains(&r.id)),
        "a handled entry was left unacked"
    );
    // A new incarnation picks up the rest.
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(make(&seen))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "all handled", || {
        let mut con = con.clone();
        let n = seen.len();
        async move { n >= 2000 && pending(&mut con, "s", "g").await == 0 }
    })
    .await;
    app.shutdown().await.unwrap();
    let counts = seen.count_by_id();
    let dups: usize = counts.values().map(|c| c - 1).sum();
    assert_eq!(dups, 0, "a clean stop/start handles nothing twice");
    assert_eq!(counts.len(), ids.len());
}

/// A user's own ractor supervisor that records what it hears from millrace.
struct Parent(Arc<Mutex<Vec<String>>>);

impl Actor for Parent {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        evt: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, err) = evt {
            self.0.lock().unwrap().push(err.to_string());
        }
        Ok(())
    }
}

#[tokio::test]
async fn millrace_runs_under_a_users_ractor_supervisor_and_escalates_to_it() {
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 1).await;
    let heard = Arc::new(Mutex::new(Vec::new()));
    let (parent, parent_join) = Actor::spawn(None, Parent(heard.clone()), ()).await.unwrap();
    let app = Supervisor::builder()
        .redis(server.url())
        .restart_policy(quick_restarts(1))
        .consumer(spec("s", "g", "c").handler(|_b: Batch<RawEntry>| async { panic!("poisoned") }))
        .start_linked(parent.get_cell())
        .await
        .unwrap();
    eventually(WAIT, "the parent heard of the failure", || {
        let n = heard.lock().unwrap().len();
        async move { n == 1 }
    })
    .await;
    let msg = heard.lock().unwrap()[0].clone();
    assert!(
        msg.contains("consumer `c`") && msg.contains("poisoned"),
        "{msg}"
    );
    // The names are free as soon as the parent hears of the failure: it can start them again.
    let again = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c").handler(recording(&Seen::default())))
        .start()
        .await
        .expect("the failed tree released its consumer names before escalating");
    again.shutdown().await.unwrap();
    assert!(app.wait().await.is_err());
    parent.stop(None);
    parent_join.await.unwrap();
}

#[tokio::test]
async fn a_stop_does_not_wait_for_a_blocked_read() {
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 1).await;
    let seen = Seen::default();
    let seen2 = seen.clone();
    // BLOCK far longer than the test's patience: a stop must wake the read (CLIENT UNBLOCK), not
    // wait for it to run out.
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(spec("s", "g", "c").block(Duration::from_secs(120)).handler(
            move |batch: Batch<RawEntry>| {
                seen2.record(&batch);
                async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    HandlerResult::Ok
                }
            },
        ))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "the batch is being handled", || {
        let n = seen.len();
        async move { n == 1 }
    })
    .await;
    tokio::time::timeout(Duration::from_secs(20), app.shutdown())
        .await
        .expect("shutdown finished long before BLOCK ran out")
        .unwrap();
    assert_eq!(
        pending(&mut con, "s", "g").await,
        0,
        "the in-flight batch finished and was acked"
    );
}

#[tokio::test]
async fn a_missing_group_without_create_group_is_a_clear_error() {
    let (server, mut con) = server().await;
    xadd_n(&mut con, "s", 1).await;
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            spec("s", "nogroup", "c")
                .create_group(false)
                .handler(recording(&Seen::default())),
        )
        .start()
        .await
        .unwrap();
    let err = tokio::time::timeout(WAIT, app.wait())
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not exist") && err.contains("XGROUP CREATE s nogroup"),
        "{err}"
    );
}

/// A restarted consumer gets the next entries, not its dead predecessor's reader.
#[tokio::test]
async fn after_a_restart_new_entries_reach_the_new_reader_not_the_old_one() {
    let (server, con) = server().await;
    new_entries_reach_the_restarted_consumer(Supervisor::builder().redis(server.url()), con).await;
}

/// A consumer that cannot authenticate stops the supervisor at once, and `wait()` returns an error
/// that keeps its structure: it says authentication failed, names the consumer once, and is fatal.
#[tokio::test]
async fn wait_after_a_wrong_password_says_authentication_failed_and_is_fatal() {
    init_tracing();
    let server = RedisServer::builder().password("right").start();
    let app = Supervisor::builder()
        .redis(format!("redis://:wrong@127.0.0.1:{}", server.port()))
        .wait_for_redis(true)
        .consumer(ConsumerSpec::new("s", "g", "c1").handler(recording(&Seen::default())))
        .start()
        .await
        .unwrap();
    let err = tokio::time::timeout(WAIT, app.wait())
        .await
        .expect("the supervisor gives up")
        .expect_err("a wrong password fails the supervisor");
    let text = err.to_string();
    assert!(err.is_fatal(), "{text}");
    assert!(err.is_authentication_failure(), "{text}");
    assert!(text.contains("authentication failed"), "{text}");
    assert_eq!(
        err.consumer(),
        Some(&ConsumerId::new("s", "g", "c1")),
        "{text}"
    );
    assert_eq!(
        text.matches("consumer `c1`").count(),
        1,
        "the consumer is named once: {text}"
    );
    assert!(!text.contains("wrong"), "the password is not shown: {text}");
    let source = std::error::Error::source(&err).expect("the consumer's own error is the source");
    assert!(
        source.to_string().contains("authentication failed"),
        "{source}"
    );
}
