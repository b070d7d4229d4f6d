//! How the consumers of one multi-stream consumer spread their periodic work: each stream's first
//! claim tick and gauge refresh at a fixed place in its interval (from a hash of the stream's name),
//! intervals stretched so the whole group stays within a rate however many streams it has, a
//! bound on own-pending replays running at once, the shared reads their streams join, and the
//! line their acks are written on together.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use super::acker::AckLine;
use crate::reader::SharedReaders;

/// Claim ticks per second one multi-stream consumer makes at most, over all its streams. With the
/// default `claim_interval` of 30s, up to 300 streams tick at their own interval; 1,000 streams
/// tick every 100s each.
pub(crate) const CLAIM_TICKS_PER_SECOND: u32 = 10;
/// Gauge refreshes per second one multi-stream consumer makes at most, over all its streams (each
/// is three commands). With the default `gauge_interval` of 10s, up to 50 streams refresh at
/// their own interval; 1,000 streams every 200s each.
pub(crate) const GAUGE_REFRESHES_PER_SECOND: u32 = 5;
/// Own-pending replays of one multi-stream consumer that run at once, each on a connection of its
/// own: after a start or a reconnect every stream replays, and they take turns, so a thousand
/// streams open a few connections, not a thousand.
pub(crate) const REPLAYS_AT_ONCE: usize = 4;

/// The streams of one multi-stream consumer, as their consumers see each other: how many there
/// are, whose turn it is to replay, the supervisor's shared reads they join, and the line they
/// write their acks on.
#[derive(Debug)]
pub(crate) struct Cohort {
    streams: AtomicUsize,
    replays: Semaphore,
    /// The start-up note on how dead letters move was logged (once per multi-stream consumer).
    dead_letter_path_logged: std::sync::atomic::AtomicBool,
    readers: Arc<SharedReaders>,
    /// Where the streams' acks are written together.
    acks: Arc<AckLine>,
}

impl Cohort {
    /// A cohort whose streams join the shared reads of `readers` (one per supervisor).
    pub(crate) fn new(readers: Arc<SharedReaders>) -> Arc<Cohort> {
        Arc::new(Cohort {
            streams: AtomicUsize::new(0),
            replays: Semaphore::new(REPLAYS_AT_ONCE),
            dead_letter_path_logged: std::sync::atomic::AtomicBool::new(false),
            readers,
            acks: Arc::new(AckLine::new()),
        })
    }

    /// The line the streams write their acks on, together.
    pub(crate) fn ack_line(&self) -> Arc<AckLine> {
        self.acks.clone()
    }

    /// True the first time it is asked: the one stream that logs how the set's dead letters move.
    pub(crate) fn first_dead_letter_note(&self) -> bool {
        !self.dead_letter_path_logged.swap(true, Ordering::Relaxed)
    }

    /// The shared reads this cohort's streams join.
    pub(crate) fn readers(&self) -> &SharedReaders {
        &self.readers
    }

    /// The number of streams read now (kept by the supervisor).
    pub(crate) fn set_streams(&self, n: usize) {
        self.streams.store(n, Ordering::Relaxed);
    }

    /// A turn to replay own pending entries; held for the replay.
    pub(crate) async fn replay_turn(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed.
        self.replays.acquire().await.ok()
    }

    /// `configured`, or longer so the cohort's streams together do at most `per_second` a second.
    fn stretched(&self, configured: Duration, per_second: u32) -> Duration {
        let streams = u32::try_from(self.streams.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        configured.max(Duration::from_secs(1) * streams / per_second.max(1))
    }
}

/// When a periodic job of one consumer runs: every `every`, or, for a stream of a multi-stream
/// consumer, at its stream's place in an interval stretched to the group's rate.
///
/// The due time is worked out when asked, from the interval in effect then: the streams of a
/// multi-stream consumer join one by one, and a first run placed in the interval of the streams
/// counted so far would fall early (the first of a thousand streams would see an interval of its
/// own), so together they would run the job faster than the group's rate until every stream had
/// run once.
#[derive(Debug)]
pub(crate) struct Cadence {
    every: Duration,
    group: Option<(Arc<Cohort>, u32)>,
    /// Where in the interval this stream's first run falls, in `[0, 1)`.
    place: f64,
    /// When the job last ran, or, before its first run, when its interval began.
    since: Instant,
    ran: bool,
}

impl Cadence {
    /// A job of a consumer of its own; it first runs at once (see [`Cadence::first_at`]).
    pub(crate) fn own(every: Duration) -> Cadence {
        Cadence {
            every,
            group: None,
            place: 0.0,
            since: Instant::now(),
            ran: false,
        }
    }

    /// A job of `stream` in a multi-stream consumer, which does at most `per_second` of them.
    pub(crate) fn shared(
        every: Duration,
        stream: &str,
        cohort: Arc<Cohort>,
        per_second: u32,
    ) -> Cadence {
        Cadence {
            every,
            group: Some((cohort, per_second)),
            place: place_of(stream),
            since: Instant::now(),
            ran: false,
        }
    }

    /// For a consumer of its own, the job first runs at `at`; a stream of a multi-stream consumer
    /// keeps its place in the interval, so a thousand streams started together do not all run
    /// the job at once.
    pub(crate) fn first_at(mut self, at: Instant) -> Cadence {
        if self.group.is_none() {
            self.since = at;
        }
        self
    }

    /// The interval in effect now.
    pub(crate) fn interval(&self) -> Duration {
        match &self.group {
            Some((cohort, per_second)) => cohort.stretched(self.every, *per_second),
            None => self.every,
        }
    }

    /// When the job is due, in the interval in effect now.
    pub(crate) fn due(&self) -> Instant {
        let interval = self.interval();
        if self.ran {
            self.since + interval
        } else {
            self.since + interval.mul_f64(self.place)
        }
    }

    /// The job runs now: the next run is one interval later.
    pub(crate) fn ran(&mut self, now: Instant) {
        self.since = now;
        self.ran = true;
    }
}

/// A stable place in `[0, 1)` for a stream name (FNV-1a): the same in every process and restart.
fn place_of(stream: &str) -> f64 {
    let hash = stream.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash >> 11) as f64 / (1_u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_stable_and_spread() {
        assert_eq!(place_of("tenant:1"), place_of("tenant:1"));
        let places: Vec<f64> = (0..1000)
            .map(|i| place_of(&format!("tenant:{i}:events")))
            .collect();
        assert!(places.iter().all(|p| (0.0..1.0).contains(p)));
        // Every tenth of the interval gets some streams, none most of them.
        for decile in 0..10 {
            let n = places
                .iter()
                .filter(|p| (**p * 10.0) as usize == decile)
                .count();
            assert!((50..=150).contains(&n), "decile {decile}: {n} of 1000");
        }
    }

    #[test]
    fn intervals_stretch_with_the_number_of_streams() {
        let cohort = Cohort::new(Arc::default());
        let claims = Cadence::shared(
            Duration::from_secs(30),
            "a",
            cohort.clone(),
            CLAIM_TICKS_PER_SECOND,
        );
        let gauges = Cadence::shared(
            Duration::from_secs(10),
            "a",
            cohort.clone(),
            GAUGE_REFRESHES_PER_SECOND,
        );
        cohort.set_streams(50);
        assert_eq!(claims.interval(), Duration::from_secs(30));
        assert_eq!(gauges.interval(), Duration::from_secs(10));
        cohort.set_streams(1000);
        assert_eq!(claims.interval(), Duration::from_secs(100));
        assert_eq!(gauges.interval(), Duration::from_secs(200));
        assert_eq!(
            Cadence::own(Duration::from_secs(10)).interval(),
            Duration::from_secs(10)
        );
    }

    /// The times (from `start`) at which `streams` streams joining one by one run a job whose
    /// configured interval is `every`, at most `per_second` a second, over `window`, stepping the
    /// clock by 10ms like a consumer that wakes when its timer is due.
    fn runs(
        every: Duration,
        per_second: u32,
        streams: usize,
        window: Duration,
    ) -> Vec<Vec<Duration>> {
        let cohort = Cohort::new(Arc::default());
        let start = Instant::now();
        let mut cadences: Vec<Cadence> = (0..streams)
            .map(|i| {
                cohort.set_streams(i + 1);
                Cadence::shared(
                    every,
                    &format!("tenant:{i}:events"),
                    cohort.clone(),
                    per_second,
                )
            })
            .collect();
        let mut runs = vec![Vec::new(); streams];
        let step = Duration::from_millis(10);
        let mut at = Duration::ZERO;
        while at < window {
            for (cadence, runs) in cadences.iter_mut().zip(&mut runs) {
                if start + at >= cadence.due() {
                    cadence.ran(start + at);
                    runs.push(at);
                }
            }
            at += step;
        }
        runs
    }

    #[test]
    fn streams_joining_one_by_one_stay_within_the_groups_rate() {
        // 1,000 streams: claims every 100s each (10 a second), gauges every 200s (5 a second).
        for (every, per_second, stretched) in [
            (
                Duration::from_secs(30),
                CLAIM_TICKS_PER_SECOND,
                Duration::from_secs(100),
            ),
            (
                Duration::from_secs(10),
                GAUGE_REFRESHES_PER_SECOND,
                Duration::from_secs(200),
            ),
        ] {
            let runs = runs(every, per_second, 1000, stretched);
            for (i, runs) in runs.iter().enumerate() {
                // Each stream runs once in the stretched interval, at its place in it (not at its
                // place in the shorter interval of the streams that had joined before it).
                let place = stretched.mul_f64(place_of(&format!("tenant:{i}:events")));
                assert_eq!(runs.len(), 1, "stream {i} ran at {runs:?}");
                assert!(
                    runs[0] + Duration::from_millis(10) >= place,
                    "stream {i} ran at {:?}, its place is {place:?}",
                    runs[0]
                );
            }
            // Any tenth of the interval holds at most 150 first runs (the spread of the places,
            // see `places_are_stable_and_spread`): about `per_second` a second, not a burst.
            let tenth = stretched / 10;
            for k in 0..10 {
                let (from, to) = (tenth * k, tenth * (k + 1));
                let n = runs
                    .iter()
                    .flatten()
                    .filter(|at| (from..to).contains(*at))
                    .count();
                assert!(
                    n <= 150,
                    "{n} runs between {from:?} and {to:?} (every {every:?})"
                );
            }
        }
    }

    #[test]
    fn a_consumer_of_its_own_keeps_its_first_run() {
        let at = Instant::now() + Duration::from_secs(3);
        let mut own = Cadence::own(Duration::from_secs(10)).first_at(at);
        assert_eq!(own.due(), at);
        own.ran(at);
        assert_eq!(own.due(), at + Duration::from_secs(10));
        let cohort = Cohort::new(Arc::default());
        cohort.set_streams(1);
        let shared = Cadence::shared(Duration::from_secs(10), "a", cohort, 1).first_at(at);
        assert!(shared.due() <= Instant::now() + Duration::from_secs(10));
    }
}
