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
#[derive(Debug)]
pub(crate) struct Cadence {
    every: Duration,
    group: Option<(Arc<Cohort>, u32)>,
    /// Where in the interval this stream's job falls, in `[0, 1)`.
    place: f64,
}

impl Cadence {
    /// A job of a consumer of its own.
    pub(crate) fn own(every: Duration) -> Cadence {
        Cadence {
            every,
            group: None,
            place: 0.0,
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
        }
    }

    /// The interval in effect now.
    pub(crate) fn interval(&self) -> Duration {
        match &self.group {
            Some((cohort, per_second)) => cohort.stretched(self.every, *per_second),
            None => self.every,
        }
    }

    /// When the job first runs: `own_first` for a consumer of its own, else the stream's place in
    /// the interval, so a thousand streams started together do not all run it at once.
    pub(crate) fn first(&self, own_first: Instant) -> Instant {
        match self.group {
            Some(_) => Instant::now() + self.interval().mul_f64(self.place),
            None => own_first,
        }
    }

    /// When the job runs next, if it starts now.
    pub(crate) fn next(&self) -> Instant {
        Instant::now() + self.interval()
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

    #[test]
    fn a_consumer_of_its_own_keeps_its_first_run() {
        let at = Instant::now() + Duration::from_secs(3);
        assert_eq!(Cadence::own(Duration::from_secs(10)).first(at), at);
        let cohort = Cohort::new(Arc::default());
        cohort.set_streams(1);
        let shared = Cadence::shared(Duration::from_secs(10), "a", cohort, 1);
        assert!(shared.first(at) <= Instant::now() + Duration::from_secs(10));
    }
}
