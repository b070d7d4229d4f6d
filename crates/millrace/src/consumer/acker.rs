//! The one ack path of a consumer: every acknowledgement (live batches, replays, claims, deleted
//! entries) goes through here, with one retry policy. Acks of live batches are coalesced: one `XACK`
//! is in flight at a time, and the ids of batches handled meanwhile wait for it and go together.
//! The streams of a multi-stream consumer on one server write their acks together ([`AckLine`]).

mod line;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tracing::warn;

use super::client::ConsumerClient;
use super::stats::Stats;
use crate::acked_delete::AckCommand;
use crate::entry::EntryId;
use crate::error::{Error, Result};

pub(crate) use line::AckLine;

/// How an `XACK` sent in the background ended: it landed, or it failed and hands its ids back.
type Outcome = std::result::Result<(), (Error, Vec<EntryId>)>;

/// The `XACK` in flight: its outcome once it returned.
#[derive(Debug)]
struct InFlight {
    rx: oneshot::Receiver<Outcome>,
    /// The outcome, taken from `rx` by [`InFlight::is_finished`] before anyone awaited it.
    ready: Option<Outcome>,
}

impl InFlight {
    fn is_finished(&mut self) -> bool {
        if self.ready.is_some() {
            return true;
        }
        match self.rx.try_recv() {
            Ok(outcome) => {
                self.ready = Some(outcome);
                true
            }
            Err(oneshot::error::TryRecvError::Empty) => false,
            // The sender is gone without an answer: awaiting it says so at once.
            Err(oneshot::error::TryRecvError::Closed) => true,
        }
    }

    /// Cancel-safe: awaits the outcome by reference, so a dropped wait loses nothing.
    /// `None` when the sending side went away without an answer.
    async fn outcome(&mut self) -> Option<Outcome> {
        if let Some(outcome) = self.ready.take() {
            return Some(outcome);
        }
        (&mut self.rx).await.ok()
    }
}

/// Ids a stream adds to its request on a line while the line has not written it yet: acks of
/// the stream's batches handled meanwhile go out in the same `XACK`.
#[derive(Debug, Default)]
struct Unwritten {
    ids: Vec<EntryId>,
    /// The line took the ids: later ones wait for the next request.
    written: bool,
}

fn lock(u: &Mutex<Unwritten>) -> MutexGuard<'_, Unwritten> {
    u.lock().unwrap_or_else(|e| e.into_inner())
}

/// One stream's acknowledgements, with what it needs to send them alone.
#[derive(Debug)]
struct AckRequest {
    client: ConsumerClient,
    stats: Stats,
    command: AckCommand,
    ids: Vec<EntryId>,
    /// On a line: ids added while it waits to be written.
    unwritten: Option<Arc<Mutex<Unwritten>>>,
    done: oneshot::Sender<Outcome>,
}

impl AckRequest {
    /// Takes the ids added while the request waited: from now on, nothing more joins it.
    fn close(&mut self) {
        if let Some(unwritten) = &self.unwritten {
            let mut u = lock(unwritten);
            u.written = true;
            self.ids.append(&mut u.ids);
        }
    }

    /// Sends the request's `XACK` (in chunks) on its own, with the consumer's retry policy, and
    /// answers it.
    async fn send_alone(mut self) {
        self.close();
        let AckRequest {
            client,
            stats,
            command,
            ids,
            done,
            ..
        } = self;
        let id = client.id();
        let (stream, group) = (&*id.stream, &*id.group);
        let acked = client
            .retry(command.name(), stream, |mut c| {
                let ids = &ids;
                async move { command.send(&mut c, stream, group, ids).await }
            })
            .await;
        let outcome = match acked {
            Ok(_) => {
                stats.acked(ids.len());
                Ok(())
            }
            Err(e) => Err((e, ids)),
        };
        let _ = done.send(outcome);
    }

    /// The request landed (in a line's pipeline).
    fn landed(self) {
        self.stats.acked(self.ids.len());
        let _ = self.done.send(Ok(()));
    }
}

#[derive(Debug)]
pub(crate) struct Acker {
    client: ConsumerClient,
    stats: Stats,
    /// Most ids that wait for the `XACK` in flight (see [`Acker::ack_behind`]).
    hold_limit: usize,
    /// The `XACK` in flight; on failure it hands its ids back, so they are not forgotten.
    in_flight: Option<InFlight>,
    /// While the `XACK` in flight waits on the line to be written, ids that join it.
    unwritten: Option<Arc<Mutex<Unwritten>>>,
    held: Vec<EntryId>,
    /// `XACK`, or `XACKDEL … ACKED` with `delete_acked` (acked_delete.rs).
    command: AckCommand,
    /// For a stream of a multi-stream consumer: the line its acks are written on, with the other
    /// streams'.
    line: Option<Arc<AckLine>>,
}

impl Acker {
    /// An acker for batches of up to `count` entries. At most two batches' ids wait for the `XACK`
    /// in flight: this bounds what a crash leaves handled but unacknowledged (see
    /// `docs/semantics.md`, where duplicates come from).
    pub(crate) fn new(client: ConsumerClient, stats: Stats, count: usize) -> Self {
        Acker {
            client,
            stats,
            hold_limit: (count * 2).min(10_000),
            in_flight: None,
            unwritten: None,
            held: Vec::new(),
            command: AckCommand::Ack,
            line: None,
        }
    }

    /// Acknowledges with `command` instead of `XACK`.
    pub(crate) fn with_command(mut self, command: AckCommand) -> Self {
        self.command = command;
        self
    }

    /// Writes the acks on `line`, together with the other streams' that share it (a stream of a
    /// multi-stream consumer); `None` sends them alone.
    pub(crate) fn on_line(mut self, line: Option<Arc<AckLine>>) -> Self {
        self.line = line;
        self
    }

    /// Acknowledges `ids` and waits until every acknowledgement so far has landed.
    pub(crate) async fn ack(&mut self, ids: Vec<EntryId>) -> Result<()> {
        self.held.extend(ids);
        self.flush().await
    }

    /// Acknowledges without waiting: when an `XACK` is in flight, `ids` wait for it (up to the hold
    /// limit; past it, this waits) and go with the next one. With small batches the loop therefore
    /// never waits for an ack round trip. On a line, ids join the `XACK` in flight while the line
    /// has not written it yet (within the same limit). A failed `XACK` fails the session (the
    /// entries come back through the replay).
    pub(crate) async fn ack_behind(&mut self, ids: Vec<EntryId>) -> Result<()> {
        if ids.is_empty() && self.held.is_empty() {
            return Ok(());
        }
        let busy = self.in_flight.as_mut().is_some_and(|t| !t.is_finished());
        // Ids that joined the XACK in flight while the line has not written it: they wait as the
        // held ones do, and count against the same limit.
        let mut joined = 0;
        if busy {
            if let Some(unwritten) = &self.unwritten {
                let mut u = lock(unwritten);
                if !u.written {
                    if u.ids.len() + self.held.len() + ids.len() <= self.hold_limit {
                        u.ids.extend(ids);
                        return Ok(());
                    }
                    joined = u.ids.len();
                }
            }
        }
        if busy && joined + self.held.len() + ids.len() <= self.hold_limit {
            self.held.extend(ids);
            return Ok(());
        }
        // Idle, or the hold is full: send what is held (waiting for the XACK in flight first) and
        // let these ids follow. In flight and held each stay within the limit. (With nothing
        // held, because the ids waiting had joined the XACK in flight, these go out at once.)
        if busy {
            self.send_held().await?;
            self.held.extend(ids);
            if !self.is_acking() {
                return self.send_held().await;
            }
            return Ok(());
        }
        self.held.extend(ids);
        self.send_held().await
    }

    /// Whether an `XACK` is in flight: then [`Acker::returned`] is worth awaiting, to send the
    /// ids held behind it, and to learn whether it landed. A consumer that goes quiet after its
    /// last batch must still hear of a failed last `XACK` (its entries would otherwise sit
    /// handled but pending until another consumer's `XAUTOCLAIM` takes them, and be handled
    /// twice).
    pub(crate) fn is_acking(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Waits for the `XACK` in flight to return, then sends the ids held behind it. When it
    /// failed, its ids are held again (the next [`Acker::flush`] retries them) and the error is
    /// returned, which ends the session.
    pub(crate) async fn returned(&mut self) -> Result<()> {
        self.send_held().await
    }

    /// Sends every held id and waits until all have landed.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.send_held().await?;
        self.wait_in_flight().await
    }

    /// Waits for the `XACK` in flight, then sends the held ids in one `XACK` in the background:
    /// on the line when the stream has one, else alone.
    async fn send_held(&mut self) -> Result<()> {
        self.wait_in_flight().await?;
        if self.held.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        self.unwritten = self.line.as_ref().map(|_| Arc::default());
        let request = AckRequest {
            client: self.client.clone(),
            stats: self.stats.clone(),
            command: self.command,
            ids: std::mem::take(&mut self.held),
            unwritten: self.unwritten.clone(),
            done,
        };
        match &self.line {
            Some(line) => line.submit(request),
            None => {
                tokio::spawn(request.send_alone());
            }
        }
        self.in_flight = Some(InFlight { rx, ready: None });
        Ok(())
    }

    /// Cancel-safe: the live loop awaits [`Acker::returned`] in a `select!` and drops the wait
    /// when a batch or a timer comes first, so the `XACK` is let go of only once it has returned.
    /// (Taking it first lost it on such a drop: the ids held behind it then waited for the next
    /// batch, and after a stream's last batch for `XAUTOCLAIM`, which handed them out again.)
    async fn wait_in_flight(&mut self) -> Result<()> {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let outcome = in_flight.outcome().await;
        self.in_flight = None;
        self.unwritten = None;
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err((e, ids))) => {
                warn!(error = %e, entries = ids.len(), "an XACK failed; its entries stay pending until it is sent again");
                self.held.extend(ids);
                Err(e)
            }
            None => Err(Error::Internal {
                consumer: self.client.id().clone(),
                message: "an XACK in flight was dropped without an answer; its entries stay pending and come back".to_owned(),
            }),
        }
    }

    /// Forgets the held ids: after a failed session whose last acks could not land, the own-PEL
    /// replay brings their entries back (they are still pending), so nothing is lost.
    pub(crate) fn forget_held(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    //! The acker against a real redis-server: an `XACK` that fails in the background is reported
    //! to the loop and its ids are kept for the retry, never forgotten.

    use std::sync::Arc;
    use std::time::Duration;

    use millrace_testkit::RedisServer;

    use super::Acker;
    use crate::connection::{Backend, ConnectionOptions};
    use crate::consumer::client::ConsumerClient;
    use crate::consumer::stats::Stats;
    use crate::entry::EntryId;
    use crate::health::HealthCell;
    use crate::id::ConsumerId;

    fn acker(backend: &Backend, stream: &str) -> Acker {
        let id = ConsumerId::new(stream, "g", "c");
        let client = ConsumerClient::new(id.clone(), backend.control(), Duration::from_millis(50));
        let stats = Stats::new(&id, Arc::new(HealthCell::new(id.clone())));
        Acker::new(client, stats, 10)
    }

    async fn admin(server: &RedisServer) -> redis::aio::MultiplexedConnection {
        server
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection")
    }

    /// Stream `s` with group `g` holding `ids`, all delivered to `c` and pending.
    async fn pending_in_s(admin: &mut redis::aio::MultiplexedConnection, ids: &[EntryId]) {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("s")
            .arg("g")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(admin)
            .await
            .expect("XGROUP CREATE");
        for id in ids {
            let _: String = redis::cmd("XADD")
                .arg("s")
                .arg(id.to_string())
                .arg("f")
                .arg("v")
                .query_async(admin)
                .await
                .expect("XADD");
        }
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("STREAMS")
            .arg("s")
            .arg(">")
            .query_async(admin)
            .await
            .expect("XREADGROUP");
    }

    /// How many entries group `g` of `s` has pending.
    async fn pending_count(admin: &mut redis::aio::MultiplexedConnection) -> u64 {
        let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg("s")
            .arg("g")
            .query_async(admin)
            .await
            .expect("XPENDING");
        pending.0
    }

    #[tokio::test]
    async fn a_failed_last_xack_is_reported_and_its_ids_are_sent_again_by_the_flush() {
        let server = RedisServer::start();
        let backend = Backend::open(&server.url(), ConnectionOptions::default()).expect("backend");
        let mut admin = admin(&server).await;
        // A string where the stream should be: XACK fails (WRONGTYPE) in the background.
        let _: () = redis::cmd("SET")
            .arg("s")
            .arg("not a stream")
            .query_async(&mut admin)
            .await
            .expect("SET");
        let mut acker = acker(&backend, "s");
        let ids = vec![EntryId::new(1, 0), EntryId::new(2, 0)];
        acker
            .ack_behind(ids.clone())
            .await
            .expect("sent in the background");
        assert!(acker.is_acking(), "the loop must wait for the last XACK");
        let err = acker
            .returned()
            .await
            .expect_err("the failed XACK is reported");
        assert!(err.to_string().contains("XACK"), "{err}");
        assert_eq!(acker.held, ids, "the failed XACK's ids are kept");
        assert!(!acker.is_acking());

        // The stream is back (with its group and the entries pending): the flush acknowledges
        // the kept ids.
        let _: () = redis::cmd("DEL")
            .arg("s")
            .query_async(&mut admin)
            .await
            .expect("DEL");
        pending_in_s(&mut admin, &ids).await;
        acker.flush().await.expect("flush");
        assert_eq!(
            pending_count(&mut admin).await,
            0,
            "the kept ids were acknowledged"
        );
    }

    /// Streams on one line share a pipeline; a stream whose `XACK` fails there gets its own
    /// error (naming its stream) and keeps its ids, and the other streams' acks land.
    #[tokio::test]
    async fn a_failed_xack_on_a_line_fails_its_stream_alone() {
        let server = RedisServer::start();
        let mut admin = admin(&server).await;
        pending_in_s(&mut admin, &[EntryId::new(1, 0), EntryId::new(2, 0)]).await;
        let _: () = redis::cmd("SET")
            .arg("bad")
            .arg("not a stream")
            .query_async(&mut admin)
            .await
            .expect("SET");
        let backend = Backend::open(&server.url(), ConnectionOptions::default()).expect("backend");
        let line = Arc::new(super::AckLine::new());
        let mut good = acker(&backend, "s").on_line(Some(line.clone()));
        let mut bad = acker(&backend, "bad").on_line(Some(line));
        let ids = vec![EntryId::new(1, 0), EntryId::new(2, 0)];
        good.ack_behind(ids.clone()).await.expect("queued");
        bad.ack_behind(ids.clone()).await.expect("queued");
        good.returned()
            .await
            .expect("the good stream's XACK landed");
        assert_eq!(pending_count(&mut admin).await, 0, "s acknowledged");
        let err = bad
            .returned()
            .await
            .expect_err("the bad stream's XACK failed");
        let text = err.to_string();
        assert!(text.contains("XACK") && text.contains("bad"), "{text}");
        assert_eq!(bad.held, ids, "the failed XACK's ids are kept");
        // Both requests went in one pipeline; the bad one was sent again alone (a WRONGTYPE is
        // not retried further), the good one was not.
        assert_eq!(
            xack_stat(&mut admin, "calls").await,
            3,
            "2 in the pipeline, 1 alone"
        );
        assert_eq!(
            xack_stat(&mut admin, "failed_calls").await,
            2,
            "the bad one, twice"
        );
    }

    /// A stream's batches handled before the line wrote its request join that request: one
    /// `XACK` for both. (The test's runtime runs one task at a time, so the line's task cannot
    /// write the first request before the second batch's ids arrive.)
    #[tokio::test]
    async fn acks_of_a_stream_waiting_on_the_line_go_in_one_xack() {
        let server = RedisServer::start();
        let mut admin = admin(&server).await;
        pending_in_s(&mut admin, &[EntryId::new(1, 0), EntryId::new(2, 0)]).await;
        let backend = Backend::open(&server.url(), ConnectionOptions::default()).expect("backend");
        let mut s = acker(&backend, "s").on_line(Some(Arc::new(super::AckLine::new())));
        let calls_before = xack_calls(&mut admin).await;
        s.ack_behind(vec![EntryId::new(1, 0)])
            .await
            .expect("queued on the line");
        s.ack_behind(vec![EntryId::new(2, 0)])
            .await
            .expect("joins the request not written yet");
        assert!(s.held.is_empty(), "the second id joined the first's XACK");
        s.flush().await.expect("lands");
        assert_eq!(pending_count(&mut admin).await, 0, "both acknowledged");
        assert_eq!(
            xack_calls(&mut admin).await - calls_before,
            1,
            "one XACK for both batches"
        );
    }

    /// Ids that joined a request the line has not written yet count against the hold limit:
    /// past it, the next ids wait for the `XACK` in flight instead of being held beside it.
    #[tokio::test]
    async fn ids_joined_to_an_unwritten_xack_count_against_the_hold_limit() {
        let server = RedisServer::start();
        let mut admin = admin(&server).await;
        let ids: Vec<EntryId> = (1..=22).map(|ms| EntryId::new(ms, 0)).collect();
        pending_in_s(&mut admin, &ids).await;
        let backend = Backend::open(&server.url(), ConnectionOptions::default()).expect("backend");
        // A read size of 10: at most 20 ids wait.
        let mut s = acker(&backend, "s").on_line(Some(Arc::new(super::AckLine::new())));
        s.ack_behind(ids[..1].to_vec()).await.expect("queued");
        s.ack_behind(ids[1..20].to_vec())
            .await
            .expect("19 ids join the request not written yet");
        assert!(s.held.is_empty());
        s.ack_behind(ids[20..].to_vec())
            .await
            .expect("past the limit: waits for the XACK in flight, then sends");
        assert!(
            s.held.is_empty(),
            "21 ids would wait beside the XACK in flight: {:?}",
            s.held
        );
        s.flush().await.expect("lands");
        assert_eq!(pending_count(&mut admin).await, 0, "all acknowledged");
    }

    async fn xack_calls(admin: &mut redis::aio::MultiplexedConnection) -> u64 {
        xack_stat(admin, "calls").await
    }

    /// A field of `XACK`'s line in `INFO commandstats` (`calls`, `failed_calls`).
    async fn xack_stat(admin: &mut redis::aio::MultiplexedConnection, field: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(admin)
            .await
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_xack:"))
            .and_then(|rest| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// The live loop waits for [`Acker::returned`] in a `select!` and drops the wait when a batch
    /// or a timer comes first: the `XACK` in flight must stay known, and the ids held behind it
    /// must still be sent.
    #[tokio::test]
    async fn ids_held_behind_an_xack_are_sent_after_a_dropped_wait() {
        let server = RedisServer::start();
        let mut admin = admin(&server).await;
        pending_in_s(&mut admin, &[EntryId::new(1, 0), EntryId::new(2, 0)]).await;
        let backend = Backend::open(&server.url(), ConnectionOptions::default()).expect("backend");
        let _: () = redis::cmd("PING")
            .query_async(&mut backend.control())
            .await
            .expect("the control connection is up");
        let mut acker = acker(&backend, "s");

        // While the server answers nothing, the first XACK stays in flight and the second
        // batch's id waits behind it.
        server.freeze();
        acker
            .ack_behind(vec![EntryId::new(1, 0)])
            .await
            .expect("sent");
        acker
            .ack_behind(vec![EntryId::new(2, 0)])
            .await
            .expect("held");
        let dropped = tokio::time::timeout(Duration::from_millis(50), acker.returned()).await;
        assert!(
            dropped.is_err(),
            "the XACK cannot return from a frozen server"
        );
        assert!(
            acker.is_acking(),
            "the XACK in flight is still known after the wait was dropped"
        );
        assert_eq!(acker.held, vec![EntryId::new(2, 0)]);

        server.thaw();
        acker.flush().await.expect("every ack lands");
        assert_eq!(pending_count(&mut admin).await, 0, "both acknowledged");
    }
}
