//! What a shared read and its subscribers share: one lane per stream (its credits, read-ahead,
//! COUNT and the channel its parts go to), and the decisions without I/O: which streams go into
//! the next read, with what COUNT, and what a reply gives back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::error::Error;
use crate::id::ConsumerId;
use crate::reader::contract::Credits;
use crate::reader::ReadPace;

/// Most entries one shared read asks for across its streams: COUNT is scaled down so that COUNT
/// times the read's streams that had entries in their last reply stays under it (bounded reply
/// memory).
pub(super) const REPLY_BUDGET: usize = 4096;

/// Entries per stream a read of streams with a backlog asks for at least (or the largest of
/// their read sizes, if smaller): when more streams have entries than [`REPLY_BUDGET`] gives
/// this many each, a read takes the ones read least recently, up to `REPLY_BUDGET / SLICE` of
/// them, and the next read the next ones. So a deep backlog is read in large slices per stream
/// (few batches, few acks per stream), not a few entries of every stream per read.
pub(crate) const SLICE: usize = 256;

/// What the read task hands a subscriber.
#[derive(Debug)]
pub(super) enum Delivery {
    /// The stream's part of a reply: the whole reply, shared, and where the stream's entry list
    /// begins in it. `sent` is when the read was written.
    Part {
        frame: Arc<Vec<u8>>,
        at: usize,
        sent: Instant,
    },
    /// Nothing for this stream for a BLOCK's time, though the reads went well: an empty batch,
    /// as a single reader's BLOCK timeout gives (so its consumer's health shows the reads).
    Quiet,
    /// An error for this stream (its group or key is gone, the connection was lost).
    Failed(Error),
}

/// One stream's place in the shared read.
#[derive(Debug)]
pub(super) struct Lane {
    /// Tells this subscription from an earlier one of the same stream.
    pub(super) token: u64,
    pub(super) id: ConsumerId,
    pub(super) tx: mpsc::UnboundedSender<Delivery>,
    /// Reads that may still include this stream, and its [`ReadPace`] (a single reader's
    /// [`Credits`]): one comes back per part taken, or at once when a reply had nothing for it.
    pub(super) credits: Credits,
    /// Reads on the wire that include it.
    pub(super) in_flight: usize,
    /// Left out of reads after an error was routed to it, until its subscription goes.
    pub(super) excluded: bool,
    /// When it was last handed anything (a part, or [`Delivery::Quiet`]).
    pub(super) told: Instant,
    /// Whether the last reply that included it had entries for it (taken to be so until a reply
    /// shows otherwise): a read's COUNT is divided among the streams that have.
    pub(super) had_data: bool,
    /// The number of the last read that included it while it had entries (the least recently
    /// read go first when not all fit).
    pub(super) last_read: u64,
}

impl Lane {
    fn new(token: u64, id: ConsumerId, count: usize, tx: mpsc::UnboundedSender<Delivery>) -> Lane {
        Lane {
            token,
            id,
            tx,
            credits: Credits::new(count),
            in_flight: 0,
            excluded: false,
            told: Instant::now(),
            had_data: true,
            last_read: 0,
        }
    }

    /// Credits usable now: none while excluded.
    pub(super) fn usable(&self) -> usize {
        if self.excluded {
            return 0;
        }
        self.credits.usable()
    }

    /// Whether the stream may be read but is in no read on the wire: a blocked read should be
    /// woken for it.
    fn waiting(&self) -> bool {
        self.in_flight == 0 && self.usable() > 0
    }
}

/// One read written: which streams (and which subscription of each) it includes, its COUNT, and
/// when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Planned {
    pub(super) streams: Vec<(Arc<str>, u64)>,
    pub(super) count: usize,
    pub(super) sent: Instant,
}

/// The lanes and the read's own flags, behind one lock.
#[derive(Debug, Default)]
pub(super) struct ReadState {
    pub(super) lanes: HashMap<Arc<str>, Lane>,
    /// No more reads: the last subscriber stopped.
    pub(super) stop: bool,
    /// The read task has ended (connection lost, or stopped); new subscribers start a new read.
    pub(super) ended: bool,
    /// A stream may be read that no read on the wire includes (it joined, or got a credit back).
    pub(super) wake: bool,
    /// How long a stream goes without a part before it is handed [`Delivery::Quiet`]: the BLOCK
    /// of the reads.
    pub(super) quiet_after: Duration,
    /// Reads planned so far (each written once, in this order): a stream that leaves while in a
    /// read on the wire waits until the reads settled reach this number as it left.
    pub(super) planned: u64,
    next_token: u64,
}

impl ReadState {
    /// No lanes yet; streams are handed [`Delivery::Quiet`] after `quiet_after` without entries.
    pub(super) fn new(quiet_after: Duration) -> ReadState {
        ReadState {
            quiet_after,
            ..ReadState::default()
        }
    }

    /// Adds a lane for `id.stream` (replacing an earlier subscription of the stream, whose
    /// channel then closes); returns its token and its channel's receiving end.
    pub(super) fn join(
        &mut self,
        id: ConsumerId,
        count: usize,
    ) -> (u64, mpsc::UnboundedReceiver<Delivery>) {
        self.next_token += 1;
        let token = self.next_token;
        let (tx, rx) = mpsc::unbounded_channel();
        let lane = Lane::new(token, id.clone(), count, tx);
        self.lanes.insert(id.stream, lane);
        self.wake = true;
        (token, rx)
    }

    /// Removes the lane of `stream` if it is still subscription `token`'s. Returns whether no
    /// lane is left, and, when the lane was in a read on the wire, how many reads must settle
    /// before no read on the wire names the stream any more (replies come in the order written).
    pub(super) fn leave(&mut self, stream: &str, token: u64) -> (bool, Option<u64>) {
        let mut on_the_wire = None;
        if self.lanes.get(stream).is_some_and(|l| l.token == token) {
            if let Some(lane) = self.lanes.remove(stream) {
                on_the_wire = (lane.in_flight > 0).then_some(self.planned);
            }
        }
        (self.lanes.is_empty(), on_the_wire)
    }

    /// Whether new subscribers may join: not stopping, not ended.
    pub(super) fn open(&self) -> bool {
        !self.stop && !self.ended
    }

    /// The lane of subscription `token` of `stream`, if it is still there.
    pub(super) fn lane(&mut self, stream: &str, token: u64) -> Option<&mut Lane> {
        self.lanes.get_mut(stream).filter(|l| l.token == token)
    }

    /// Gives a credit back to a lane after its subscriber took a part; says whether the task
    /// should be woken (the lane may now be read and no read on the wire includes it).
    pub(super) fn taken(&mut self, stream: &str, token: u64) -> bool {
        let Some(lane) = self.lane(stream, token) else {
            return false;
        };
        lane.credits.give_back();
        let waiting = lane.waiting();
        self.wake |= waiting;
        waiting
    }

    /// Sets a lane's COUNT and read-ahead; says whether the task should be woken (a wider
    /// read-ahead may let the stream be read now).
    pub(super) fn set_pace(&mut self, stream: &str, token: u64, pace: ReadPace) -> bool {
        let Some(lane) = self.lane(stream, token) else {
            return false;
        };
        let waiting = lane.credits.set_pace(pace) && lane.waiting();
        self.wake |= waiting;
        waiting
    }

    /// The next read: every stream with a usable credit that had no entries in its last reply,
    /// and of those that had, as many as get [`SLICE`] entries each within [`REPLY_BUDGET`], the
    /// least recently read first; one credit taken from each, and the COUNT of [`read_count`].
    /// `None` when stopped or no stream may be read. When streams with entries were left out,
    /// the read is to be woken if it blocks (they wait to be read).
    pub(super) fn plan(&mut self, sent: Instant) -> Option<Planned> {
        if self.stop {
            return None;
        }
        let mut quiet = Vec::new();
        let mut busy: Vec<(u64, Arc<str>)> = Vec::new();
        let mut largest = 1;
        for (name, lane) in &self.lanes {
            if lane.usable() == 0 {
                continue;
            }
            if lane.had_data {
                busy.push((lane.last_read, name.clone()));
                largest = largest.max(lane.credits.count());
            } else {
                quiet.push(name.clone());
            }
        }
        let fit = (REPLY_BUDGET / largest.min(SLICE)).max(1);
        let left_out = busy.len().saturating_sub(fit);
        if left_out > 0 {
            busy.select_nth_unstable(fit);
            busy.truncate(fit);
        }
        self.wake = left_out > 0;
        if quiet.is_empty() && busy.is_empty() {
            return None;
        }
        self.planned += 1;
        let (mut count, with_data) = (0, busy.len());
        let mut streams = Vec::with_capacity(quiet.len() + busy.len());
        let names = quiet.into_iter().chain(busy.into_iter().map(|(_, n)| n));
        for name in names {
            if let Some(lane) = self.lanes.get_mut(&name) {
                lane.credits.take(1);
                lane.in_flight += 1;
                if lane.had_data {
                    lane.last_read = self.planned;
                }
                count = count.max(lane.credits.count());
                streams.push((name, lane.token));
            }
        }
        Some(Planned {
            streams,
            count: read_count(count, with_data),
            sent,
        })
    }

    /// Settles a read whose reply came (at `now`, fine if `ok`): its lanes are no longer on the
    /// wire with it, those `got` says had no part get their credit back at once (and, if `ok`,
    /// count as without entries for the next COUNT), and those told nothing for
    /// [`ReadState::quiet_after`] are handed [`Delivery::Quiet`].
    pub(super) fn settle(
        &mut self,
        read: &Planned,
        now: Instant,
        ok: bool,
        mut got: impl FnMut(&str) -> bool,
    ) {
        let quiet_after = self.quiet_after;
        for (name, token) in &read.streams {
            if let Some(lane) = self.lane(name, *token) {
                lane.in_flight = lane.in_flight.saturating_sub(1);
                if got(name) {
                    lane.told = now;
                    lane.had_data = true;
                } else {
                    lane.credits.give_back();
                    lane.had_data &= !ok;
                    if ok && !lane.excluded && now.duration_since(lane.told) >= quiet_after {
                        lane.told = now;
                        let _ = lane.tx.send(Delivery::Quiet);
                    }
                }
                self.wake |= self.lanes.get(&**name).is_some_and(Lane::waiting);
            }
        }
    }
}

/// COUNT of a read: the largest of its streams' counts, scaled down so that COUNT times its
/// streams that had entries last time (`with_data`) stays within [`REPLY_BUDGET`]; at least 1.
pub(super) fn read_count(largest: usize, with_data: usize) -> usize {
    largest.min(REPLY_BUDGET / with_data.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::FETCHED_AHEAD;

    fn id(stream: &str) -> ConsumerId {
        ConsumerId::new(stream, "g", "c")
    }

    fn names(p: &Planned) -> Vec<&str> {
        let mut v: Vec<&str> = p.streams.iter().map(|(n, _)| &**n).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_stream_without_credit_is_left_out_of_the_read() {
        let mut s = ReadState::default();
        let (a, _ra) = s.join(id("a"), 10);
        let (_b, _rb) = s.join(id("b"), 10);
        let now = Instant::now();
        // Three reads each take one credit of both streams; `a`'s parts are never taken.
        for _ in 0..FETCHED_AHEAD {
            let p = s.plan(now).expect("a read");
            assert_eq!(names(&p), ["a", "b"]);
            s.settle(&p, now, true, |n| n == "a");
        }
        let p = s.plan(now).expect("b still has credit");
        assert_eq!(names(&p), ["b"]);
        s.settle(&p, now, true, |_| false);
        assert!(s.taken("a", a), "a taken part wakes the read for `a`");
        assert_eq!(names(&s.plan(now).expect("a read")), ["a", "b"]);
    }

    #[test]
    fn a_slow_stream_fetches_one_batch_ahead() {
        let mut s = ReadState::default();
        let (a, _ra) = s.join(id("a"), 10);
        assert!(!s.set_pace(
            "a",
            a,
            ReadPace {
                count: 10,
                ahead: 1
            }
        ));
        let now = Instant::now();
        let p = s.plan(now).expect("one read");
        s.settle(&p, now, true, |_| true);
        assert!(s.plan(now).is_none(), "one part ahead only");
        assert!(s.taken("a", a));
        assert!(s.plan(now).is_some());
    }

    /// docs/many-streams.md, "What a slow stream can hold": one COUNT for all the streams of a
    /// read, and a slow stream (read-ahead 1) in no read while it holds a part in hand and one
    /// fetched: at most two parts of the read's COUNT.
    #[test]
    fn a_slow_stream_holds_at_most_two_parts_of_the_reads_count() {
        let mut s = ReadState::default();
        let (slow, _rs) = s.join(id("slow"), 10);
        let (fast, _rf) = s.join(id("fast"), 1000);
        assert!(!s.set_pace(
            "slow",
            slow,
            ReadPace {
                count: 10,
                ahead: 1
            }
        ));
        let now = Instant::now();
        let p = s.plan(now).expect("a read");
        assert_eq!(names(&p), ["fast", "slow"]);
        assert_eq!(p.count, 1000, "the largest read size of the read's streams");
        s.settle(&p, now, true, |_| true);
        // The slow stream's handler takes its part; the next read fetches one more for it.
        assert!(s.taken("slow", slow));
        s.taken("fast", fast);
        let p = s.plan(now).expect("a read");
        assert_eq!(names(&p), ["fast", "slow"]);
        s.settle(&p, now, true, |_| true);
        // Its handler is still on the first: the fast stream reads on, the slow one waits.
        for _ in 0..10 {
            s.taken("fast", fast);
            let p = s.plan(now).expect("the fast stream reads on");
            assert_eq!(names(&p), ["fast"]);
            s.settle(&p, now, true, |_| true);
        }
        // With many streams with entries COUNT shrinks to the reply budget's share, and it is
        // never more than the budget.
        assert_eq!(read_count(1000, 16), REPLY_BUDGET / 16);
        assert_eq!(read_count(100_000, 1), REPLY_BUDGET);
    }

    #[test]
    fn a_stream_without_entries_hears_once_per_block() {
        let mut s = ReadState::new(Duration::from_secs(5));
        let (_a, mut rx) = s.join(id("a"), 10);
        let start = Instant::now();
        let p = s.plan(start).expect("a read");
        s.settle(&p, start + Duration::from_secs(1), true, |_| false);
        assert!(rx.try_recv().is_err(), "too early");
        let p = s.plan(start).expect("a read");
        s.settle(&p, start + Duration::from_secs(6), true, |_| false);
        assert!(matches!(rx.try_recv(), Ok(Delivery::Quiet)));
        let p = s.plan(start).expect("a read");
        s.settle(&p, start + Duration::from_secs(7), true, |_| false);
        assert!(rx.try_recv().is_err(), "once per BLOCK");
    }

    #[test]
    fn count_is_scaled_to_the_reply_budget() {
        assert_eq!(read_count(500, 0), 500);
        assert_eq!(read_count(500, 1000), REPLY_BUDGET / 1000);
        assert_eq!(read_count(10, 100_000), 1);
        assert_eq!(read_count(10, 2), 10);
    }

    #[test]
    fn a_backlog_of_many_streams_is_read_in_slices_least_recently_read_first() {
        let mut s = ReadState::default();
        let streams: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
        for name in &streams {
            s.join(id(name), 1000);
        }
        let now = Instant::now();
        let fit = REPLY_BUDGET / SLICE;
        // Every stream has a backlog: a read takes `fit` of them, SLICE entries each, and the
        // next reads the others; every stream is read once before any is read twice.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..streams.len().div_ceil(fit) {
            let p = s.plan(now).expect("a read");
            assert_eq!(p.streams.len(), fit);
            assert_eq!(p.count, SLICE);
            assert!(s.wake, "streams left out wake a read that blocks");
            s.settle(&p, now, true, |_| true);
            let unread = streams.len() - seen.len();
            let new = p
                .streams
                .iter()
                .filter(|(n, _)| seen.insert(n.clone()))
                .count();
            assert_eq!(
                new,
                fit.min(unread),
                "the streams read least recently go first"
            );
            // Their consumers take the parts: credits come back.
            for (name, token) in &p.streams {
                s.taken(name, *token);
            }
        }
        assert_eq!(seen.len(), streams.len());
        // A stream read alone asks for its own full count.
        let mut alone = ReadState::default();
        alone.join(id("s0"), 1000);
        let p = alone.plan(now).expect("a read");
        assert_eq!(p.count, 1000);
    }

    #[test]
    fn a_replaced_subscription_no_longer_counts() {
        let mut s = ReadState::default();
        let (old, _r1) = s.join(id("a"), 10);
        let (new, _r2) = s.join(id("a"), 10);
        assert!(!s.taken("a", old));
        assert!(!s.leave("a", old).0, "the new lane stays");
        assert!(s.leave("a", new).0);
        assert!(s.plan(Instant::now()).is_none());
    }
}
