//! millrace under the application's own ractor supervisor, as one branch of your supervision tree:
//! when millrace gives up on a consumer, the escalation reaches your actor.
//!
//! Run it:
//!     cargo run -p millrace-examples --example under_ractor
//! It uses `REDIS_URL` when set; otherwise it starts a throwaway redis-server through the testkit.
//! It stops by itself once every job is dealt with (or on Ctrl-C).
//!
//! The `App` actor starts millrace with `start_linked(myself.get_cell())`. The first handler has a
//! bug: it panics on a job whose `amount` is not a number. millrace restarts the consumer with
//! backoff, it replays the batch and panics again, until the restart limit (2 restarts within 10s)
//! is reached; millrace then stops and `App::handle_supervisor_evt` receives `ActorFailed` with
//! the `millrace::Error::RestartLimit`. The app logs it and decides: once, it starts millrace again
//! with a fixed handler that decodes jobs into a typed struct, so the bad job cannot be decoded and
//! millrace moves it to the dead-letter stream instead of calling the handler. A second escalation
//! would stop the app.
//!
//! ractor is used with `default-features = false, features = ["tokio_runtime"]`: the `Actor` trait
//! is implemented with plain `async fn`s, no `async-trait`.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace::dead_letter::DeadLetter;
use millrace::{Batch, ConsumerSpec, HandlerResult, RawEntry, RestartPolicy, StartId, Supervisor};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

const STREAM: &str = "jobs";
const GROUP: &str = "workers";
const JOBS: u64 = 10;
const BAD_JOB: u64 = 5;

/// A job as the fixed handler reads it: a non-numeric `amount` cannot be decoded.
#[derive(Debug, serde::Deserialize)]
struct Job {
    job_id: u64,
    amount: u32,
}

/// The app actor's messages.
#[derive(Debug)]
enum AppMsg {
    /// Every good job was handled.
    Done,
    /// Ctrl-C.
    Stop,
}

/// Which handler millrace runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// Parses `amount` by hand and panics when it is not a number.
    Buggy,
    /// Decodes into [`Job`]; millrace dead-letters what does not decode.
    Fixed,
}

/// Jobs handled so far, with how many times each (at-least-once: a replayed batch runs again).
#[derive(Debug, Default)]
struct Ledger {
    handled: Mutex<BTreeMap<u64, u32>>,
}

impl Ledger {
    /// Records a handled job; true when this completes the set of good jobs.
    fn record(&self, job: u64) -> bool {
        let mut handled = self.handled.lock().unwrap_or_else(|p| p.into_inner());
        let before = handled.len();
        *handled.entry(job).or_default() += 1;
        before < handled.len() && handled.len() as u64 == JOBS - 1
    }
}

struct App;

struct AppArgs {
    url: String,
    ledger: Arc<Ledger>,
    /// What the app ended with, for `main`.
    outcome: Arc<Mutex<Option<Result<(), String>>>>,
}

struct AppState {
    url: String,
    ledger: Arc<Ledger>,
    outcome: Arc<Mutex<Option<Result<(), String>>>>,
    millrace: Option<Supervisor>,
    /// How many more times the app starts millrace again after it gave up.
    restarts_left: u32,
}

impl AppState {
    fn finish(&self, outcome: Result<(), String>) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    }
}

/// Starts millrace linked under `app`, running the given handler version.
async fn start_millrace(
    app: &ActorRef<AppMsg>,
    url: &str,
    ledger: &Arc<Ledger>,
    version: Version,
) -> millrace::Result<Supervisor> {
    let mut policy = RestartPolicy::default();
    policy.max_restarts = 2;
    policy.window = Duration::from_secs(10);
    policy.backoff_initial = Duration::from_millis(50);
    policy.backoff_max = Duration::from_millis(200);
    let spec = ConsumerSpec::new(STREAM, GROUP, "worker-1")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(500))
        // Above the deliveries the buggy runs cause, so the restart limit is what stops them.
        .max_deliveries(10);
    let (ledger, me) = (ledger.clone(), app.clone());
    let spec = match version {
        Version::Buggy => spec.handler(move |batch: Batch<RawEntry>| {
            let ledger = ledger.clone();
            async move {
                for entry in &batch {
                    let raw = &entry.message;
                    let job = raw.get_str("job_id").unwrap_or("?");
                    let Some(amount) = raw.get_str("amount").and_then(|a| a.parse::<u32>().ok())
                    else {
                        panic!(
                            "job {job}: amount {:?} is not a number",
                            raw.get_str("amount").unwrap_or_default()
                        );
                    };
                    println!(
                        "  buggy handler: job {job} amount {amount} (delivery {})",
                        entry.deliveries.unwrap_or(0)
                    );
                    if let Ok(id) = job.parse() {
                        ledger.record(id);
                    }
                }
                HandlerResult::Ok
            }
        }),
        Version::Fixed => spec.handler(move |batch: Batch<Job>| {
            let (ledger, me) = (ledger.clone(), me.clone());
            async move {
                for entry in &batch {
                    let job = &entry.message;
                    println!(
                        "  fixed handler: job {} amount {} (delivery {})",
                        job.job_id,
                        job.amount,
                        entry.deliveries.unwrap_or(0)
                    );
                    if ledger.record(job.job_id) {
                        let _ = me.cast(AppMsg::Done);
                    }
                }
                HandlerResult::Ok
            }
        }),
    };
    println!("app: starting millrace with the {version:?} handler");
    Supervisor::builder()
        .redis(url)
        .restart_policy(policy)
        .consumer(spec)
        .start_linked(app.get_cell())
        .await
}

impl Actor for App {
    type Msg = AppMsg;
    type State = AppState;
    type Arguments = AppArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AppMsg>,
        args: AppArgs,
    ) -> Result<AppState, ActorProcessingErr> {
        Ok(AppState {
            url: args.url,
            ledger: args.ledger,
            outcome: args.outcome,
            millrace: None,
            restarts_left: 1,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<AppMsg>,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        let millrace = start_millrace(&myself, &state.url, &state.ledger, Version::Buggy).await?;
        state.millrace = Some(millrace);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<AppMsg>,
        msg: AppMsg,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        let reason = match msg {
            AppMsg::Done => "every good job is handled",
            AppMsg::Stop => "interrupted",
        };
        println!("app: {reason}; shutting millrace down");
        if let Some(millrace) = state.millrace.take() {
            // Graceful: the in-flight batch finishes, is acknowledged, and the undecodable job
            // it held is on the dead-letter stream.
            millrace.shutdown().await?;
        }
        state.finish(match msg {
            AppMsg::Done => Ok(()),
            AppMsg::Stop => Err("interrupted".to_owned()),
        });
        myself.stop(Some(reason.to_owned()));
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AppMsg>,
        evt: SupervisionEvent,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let ours = state
                    .millrace
                    .as_ref()
                    .is_some_and(|m| m.actor().get_id() == cell.get_id());
                if !ours {
                    return Ok(());
                }
                match err.downcast_ref::<millrace::Error>() {
                    Some(millrace::Error::RestartLimit {
                        consumer,
                        restarts,
                        last_error,
                        ..
                    }) => println!(
                        "app: millrace gave up on {consumer} after {restarts} restarts; last error: {last_error}"
                    ),
                    _ => println!("app: millrace failed: {err}"),
                }
                // Wait until the failed tree is fully down, so its consumer names are free again.
                if let Some(old) = state.millrace.take() {
                    let _ = old.wait().await;
                }
                if state.restarts_left == 0 {
                    println!("app: no restarts left; stopping");
                    state.finish(Err(format!("millrace failed twice: {err}")));
                    myself.stop(Some("millrace failed".to_owned()));
                    return Ok(());
                }
                state.restarts_left -= 1;
                println!("app: deploying the fix and starting millrace again");
                let millrace =
                    start_millrace(&myself, &state.url, &state.ledger, Version::Fixed).await?;
                state.millrace = Some(millrace);
            }
            SupervisionEvent::ActorTerminated(_, _, reason) => {
                println!(
                    "app: millrace stopped ({})",
                    reason.as_deref().unwrap_or("no reason")
                );
            }
            _ => {}
        }
        Ok(())
    }
}

type AnyResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// An XRANGE reply: ids with their field/value pairs.
type Entries = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

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
    let dlq = format!("{STREAM}:dlq");
    let _: () = redis::cmd("DEL")
        .arg(STREAM)
        .arg(&dlq)
        .query_async(&mut con)
        .await?;
    for job in 1..=JOBS {
        let amount = if job == BAD_JOB {
            "lots".to_owned()
        } else {
            (job * 10).to_string()
        };
        let _: String = redis::cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg("job_id")
            .arg(job)
            .arg("amount")
            .arg(amount)
            .query_async(&mut con)
            .await?;
    }
    println!("added {JOBS} jobs to `{STREAM}`; job {BAD_JOB} has amount \"lots\"");

    let ledger = Arc::new(Ledger::default());
    let outcome = Arc::new(Mutex::new(None));
    let (app, join) = Actor::spawn(
        Some("app".to_owned()),
        App,
        AppArgs {
            url,
            ledger: ledger.clone(),
            outcome: outcome.clone(),
        },
    )
    .await?;
    let mut join = join;
    tokio::select! {
        _ = &mut join => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            println!("timed out");
            app.cast(AppMsg::Stop)?;
            join.await?;
        }
        _ = tokio::signal::ctrl_c() => {
            app.cast(AppMsg::Stop)?;
            join.await?;
        }
    }

    println!("\nsummary:");
    let handled = ledger
        .handled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (job, times) in &handled {
        println!("  job {job}: handled {times} time(s)");
    }
    let dead: Entries = redis::cmd("XRANGE")
        .arg(&dlq)
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await?;
    for (id, fields) in dead {
        let entry = RawEntry::new(id.parse()?, fields);
        if let Some(d) = DeadLetter::parse(&entry) {
            let original = RawEntry::new(entry.id, d.fields.clone());
            println!(
                "  dead letter {}: job {} from {} {}: {}",
                d.id,
                original.get_str("job_id").unwrap_or("?"),
                d.source_stream,
                d.source_id.map(|i| i.to_string()).unwrap_or_default(),
                d.reason
            );
        }
    }
    let result = outcome.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match result {
        Some(Ok(())) if handled.len() as u64 == JOBS - 1 => {
            println!("every good job handled; the bad one is on `{dlq}`");
            Ok(())
        }
        Some(Err(e)) => Err(e.into()),
        _ => Err("the app stopped before every job was handled".into()),
    }
}
