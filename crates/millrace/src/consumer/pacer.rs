//! The read pace of one consumer ([`ReadPace`]): its read size, how many entries a read asks for
//! (`COUNT`), and how many batches the reader fetches ahead of the handler, decided from what the
//! reads return and how long the handler takes. One decision for both readers; no I/O here.
//!
//! - **Adaptive** (`count` unset): a read size that makes a batch take the handler about
//!   `batch_target`. It starts at [`START`] and grows to twice a full read's size while reads come
//!   back full and a batch that large still fits the target; it drops at once to what fits when a batch takes
//!   longer (judged per entry, so a slow trickle of single entries shrinks it too); it stays
//!   within `min_count..=max_count`.
//!   A stream of a multi-stream consumer starts at the shared read's slice ([`SLICE`], 256)
//!   instead, fetching one batch ahead until its first batch is handled: its reads are bounded
//!   together with the other streams' ([`SLICE`] entries each, 4,096 per read), and a backlog of
//!   many streams is then read in one or two batches per stream, not five (each a batch and an
//!   `XACK`).
//! - **Fixed** (`count = n`): `n`.
//! - **Read-ahead**, either way: the reader fetches [`FETCHED_AHEAD`] batches ahead while that many
//!   batches plus the one in hand take no longer than `batch_target` together, else one. So a
//!   consumer holds at most about `batch_target` of work, or two batches (the one in hand and the
//!   next) when a single batch takes longer: a slow consumer never sits on more than its own next
//!   batch.
//! - **After a read was cut off mid-reply** (a reply too large for the client output buffer closes
//!   the connection after its entries went to the pending list), reads take one entry at a time,
//!   and the ceiling doubles back after every [`CLEAN_READS_TO_GROW`] clean reads.

use std::collections::VecDeque;
use std::time::Duration;

use tracing::warn;

use crate::config::ConsumerOptions;
use crate::reader::{ReadPace, FETCHED_AHEAD, SLICE};

/// Where an adaptive read size starts (within its bounds): small, because the handler's speed is
/// not known yet and the first reads go out before any batch is handled.
pub(crate) const START: usize = 10;
/// Clean reads after which a ceiling lowered by a cut-off read doubles again.
const CLEAN_READS_TO_GROW: u32 = 8;

/// How the read size is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sizing {
    Fixed(usize),
    Adaptive { min: usize, max: usize },
}

/// Decides one consumer's read pace: read size and read-ahead (see the module docs).
#[derive(Debug)]
pub(crate) struct Pacer {
    sizing: Sizing,
    target: Duration,
    /// The read size the handler's speed asks for (the fixed count when fixed).
    wanted: usize,
    /// At most this many entries per read: the largest size, or less after a cut-off read.
    ceiling: usize,
    clean_reads: u32,
    ahead: usize,
    /// The counts of the last reads that can still be in flight: a batch handed over now was read
    /// with one of them.
    recent: VecDeque<usize>,
}

impl Pacer {
    pub(crate) fn new(opts: &ConsumerOptions) -> Self {
        let sizing = match opts.count {
            Some(n) => Sizing::Fixed(n),
            None => Sizing::Adaptive {
                min: opts.min_count,
                max: opts.max_count,
            },
        };
        let (wanted, largest) = match sizing {
            Sizing::Fixed(n) => (n, n),
            Sizing::Adaptive { min, max } => (START.clamp(min, max), max),
        };
        let mut recent = VecDeque::with_capacity(FETCHED_AHEAD + 1);
        recent.push_back(wanted);
        Pacer {
            sizing,
            target: opts.batch_target,
            wanted,
            ceiling: largest,
            clean_reads: 0,
            ahead: FETCHED_AHEAD,
            recent,
        }
    }

    /// The pace of a stream of a multi-stream consumer: an adaptive size starts at [`SLICE`]
    /// (within `min_count..=max_count`), one batch ahead until the handler's speed is known.
    pub(crate) fn member(opts: &ConsumerOptions) -> Self {
        let mut pacer = Pacer::new(opts);
        if let Sizing::Adaptive { min, max } = pacer.sizing {
            pacer.wanted = SLICE.clamp(min, max);
            pacer.ahead = 1;
            pacer.recent.clear();
            pacer.recent.push_back(pacer.wanted);
        }
        pacer
    }

    /// Entries the next read asks for.
    pub(crate) fn count(&self) -> usize {
        self.wanted.min(self.ceiling).max(1)
    }

    /// What the reader is to do now.
    pub(crate) fn pace(&self) -> ReadPace {
        ReadPace {
            count: self.count(),
            ahead: self.ahead,
        }
    }

    /// The handler took `took` for a batch of `handed` entries, out of a read that returned `read`
    /// entries. Returns the pace for the reads from now on.
    pub(crate) fn handled(&mut self, read: usize, handed: usize, took: Duration) -> ReadPace {
        let full = read >= self.recent.iter().copied().min().unwrap_or(1);
        let handed = handed.max(1);
        if let Sizing::Adaptive { min, max } = self.sizing {
            let fits = fitting(handed, took, self.target).clamp(min, max);
            if fits < self.wanted {
                self.wanted = fits;
            } else if full {
                // Twice what the read returned: a read written before the last growth says the
                // backlog held its own count, not more.
                self.wanted = fits.min(read.saturating_mul(2)).max(self.wanted);
            }
        }
        // The next batch at the new size, judged at this batch's time per entry.
        let next = took.mul_f64(self.count() as f64 / handed as f64);
        let all_ahead = next.saturating_mul(FETCHED_AHEAD as u32 + 1);
        self.ahead = if all_ahead <= self.target {
            FETCHED_AHEAD
        } else {
            1
        };
        self.remember();
        self.pace()
    }

    /// A read failed mid-reply: one entry at a time for a while. If the reply was too large for the
    /// server's output buffer, single entries get through, and every entry of the cut-off reply but
    /// the oversized one is delivered once more, not once per halving (each cut-off read counts a
    /// delivery for all of its entries).
    pub(crate) fn cut_off(&mut self) {
        if self.ceiling != 1 {
            warn!("a read failed mid-reply; reading one entry at a time for a while");
            self.ceiling = 1;
        }
        self.clean_reads = 0;
        self.remember();
    }

    /// A read succeeded: after enough clean reads, the ceiling doubles back towards the largest size.
    pub(crate) fn read_ok(&mut self) {
        let largest = match self.sizing {
            Sizing::Fixed(n) => n,
            Sizing::Adaptive { max, .. } => max,
        };
        if self.ceiling < largest {
            self.clean_reads += 1;
            if self.clean_reads >= CLEAN_READS_TO_GROW {
                self.clean_reads = 0;
                self.ceiling = self.ceiling.saturating_mul(2).min(largest);
            }
        }
    }

    fn remember(&mut self) {
        if self.recent.len() > FETCHED_AHEAD {
            self.recent.pop_front();
        }
        self.recent.push_back(self.count());
    }
}

/// Entries that take about `target` at the per-entry time of a batch of `handed` entries that took
/// `took` (an upper bound of the per-entry cost when the handler also pays per batch: so the size
/// errs small, and grows back while reads are full).
fn fitting(handed: usize, took: Duration, target: Duration) -> usize {
    let took = took.as_nanos().max(1);
    let n = (handed as u128).saturating_mul(target.as_nanos()) / took;
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn adaptive() -> Pacer {
        Pacer::new(&ConsumerOptions::default())
    }

    fn fixed(n: usize) -> Pacer {
        Pacer::new(&ConsumerOptions {
            count: Some(n),
            ..Default::default()
        })
    }

    /// Feeds full batches of a handler that takes `per_entry` per entry until the size settles.
    fn settle(b: &mut Pacer, per_entry: Duration) -> ReadPace {
        let mut pace = b.pace();
        for _ in 0..40 {
            let n = pace.count;
            pace = b.handled(n, n, per_entry * n as u32);
        }
        pace
    }

    #[test]
    fn a_stream_of_a_multi_stream_consumer_starts_at_the_slice_one_batch_ahead() {
        let b = Pacer::member(&ConsumerOptions::default());
        assert_eq!(
            b.pace(),
            ReadPace {
                count: SLICE,
                ahead: 1
            }
        );
        let small = Pacer::member(&ConsumerOptions {
            max_count: 100,
            ..Default::default()
        });
        assert_eq!(small.count(), 100, "within max_count");
        assert_eq!(
            fixed(7).count(),
            Pacer::member(&ConsumerOptions {
                count: Some(7),
                ..Default::default()
            })
            .count(),
            "a fixed count stays"
        );
        // A slow handler shrinks it at once, as for any consumer.
        let mut slow = Pacer::member(&ConsumerOptions::default());
        let pace = slow.handled(SLICE, SLICE, MS * 10 * SLICE as u32);
        assert_eq!(pace.count, 10, "100 ms of 10 ms entries");
        assert_eq!(pace.ahead, 1);
    }

    #[test]
    fn the_adaptive_size_starts_small_with_full_read_ahead() {
        let b = adaptive();
        assert_eq!(
            b.pace(),
            ReadPace {
                count: START,
                ahead: FETCHED_AHEAD
            }
        );
    }

    #[test]
    fn full_reads_and_a_fast_handler_grow_it_by_doubling_up_to_max_count() {
        let mut b = adaptive();
        let mut sizes = vec![b.count()];
        for _ in 0..12 {
            let n = b.count();
            sizes.push(b.handled(n, n, Duration::from_micros(n as u64)).count);
        }
        assert_eq!(
            &sizes[..4],
            &[START, 2 * START, 4 * START, 8 * START],
            "{sizes:?}"
        );
        assert_eq!(sizes.last(), Some(&1000), "{sizes:?}");
        assert!(sizes.windows(2).all(|w| w[1] <= 2 * w[0]), "{sizes:?}");
        assert_eq!(
            b.pace().ahead,
            FETCHED_AHEAD,
            "a fast handler keeps the read-ahead"
        );
    }

    #[test]
    fn reads_that_are_not_full_do_not_grow_it() {
        let mut b = adaptive();
        for _ in 0..20 {
            b.handled(3, 3, Duration::from_micros(3));
        }
        assert_eq!(b.count(), START);
    }

    #[test]
    fn a_slow_handler_gets_batches_of_about_the_target_and_one_batch_ahead() {
        let mut b = adaptive();
        let pace = settle(&mut b, 5 * MS);
        assert_eq!(
            pace,
            ReadPace {
                count: 20,
                ahead: 1
            },
            "5 ms per entry, 100 ms target"
        );
        let mut b = adaptive();
        let pace = settle(&mut b, Duration::from_micros(250));
        assert_eq!(pace.count, 400);
        assert_eq!(pace.ahead, 1);
    }

    #[test]
    fn a_slower_batch_shrinks_it_at_once_even_when_the_read_was_not_full() {
        let mut b = adaptive();
        settle(&mut b, Duration::from_micros(1));
        assert_eq!(b.count(), 1000);
        // A trickle: 2 entries, 50 ms each.
        let pace = b.handled(2, 2, 100 * MS);
        assert_eq!(pace, ReadPace { count: 2, ahead: 1 });
        // One entry longer than the target: the smallest size.
        assert_eq!(b.handled(1, 1, 300 * MS).count, 1);
    }

    #[test]
    fn the_size_stays_within_min_count_and_max_count() {
        let opts = ConsumerOptions {
            min_count: 5,
            max_count: 40,
            ..Default::default()
        };
        let mut b = Pacer::new(&opts);
        assert_eq!(settle(&mut b, Duration::from_nanos(10)).count, 40);
        assert_eq!(settle(&mut b, Duration::from_secs(1)).count, 5);
        let opts = ConsumerOptions {
            min_count: 50,
            ..Default::default()
        };
        assert_eq!(
            Pacer::new(&opts).count(),
            50,
            "start is raised to min_count"
        );
        let opts = ConsumerOptions {
            max_count: 4,
            ..Default::default()
        };
        assert_eq!(
            Pacer::new(&opts).count(),
            4,
            "start is lowered to max_count"
        );
    }

    #[test]
    fn the_work_held_stays_near_the_target_whatever_the_handler_speed() {
        // Held: the batch in hand plus the batches fetched ahead, at the settled size.
        for micros in [1u64, 10, 30, 100, 1_000, 5_000, 20_000, 99_000] {
            let per_entry = Duration::from_micros(micros);
            let mut b = adaptive();
            let pace = settle(&mut b, per_entry);
            let held = per_entry * (pace.count * (pace.ahead + 1)) as u32;
            let limit = (2 * b.target).max(per_entry * 2);
            assert!(held <= limit, "{micros} µs/entry: {pace:?} holds {held:?}");
        }
    }

    #[test]
    fn a_batch_as_slow_as_the_target_is_not_refetched_ahead() {
        // 30 µs per entry at max_count 1000: 30 ms per batch; four of them exceed 100 ms.
        let mut b = adaptive();
        assert_eq!(settle(&mut b, Duration::from_micros(30)).ahead, 1);
        // 20 µs: four batches take 80 ms.
        let mut b = adaptive();
        assert_eq!(
            settle(&mut b, Duration::from_micros(20)).ahead,
            FETCHED_AHEAD
        );
    }

    #[test]
    fn a_handler_that_speeds_up_regains_size_and_read_ahead() {
        let mut b = adaptive();
        settle(&mut b, 5 * MS);
        let pace = settle(&mut b, Duration::from_micros(1));
        assert_eq!(
            pace,
            ReadPace {
                count: 1000,
                ahead: FETCHED_AHEAD
            }
        );
    }

    #[test]
    fn a_full_batch_read_before_the_last_growth_grows_it_no_further() {
        let mut b = adaptive();
        // Grown to 20 after the first batch; the reads in flight were written with 10: full,
        // but they only show a backlog of 10.
        assert_eq!(b.handled(10, 10, Duration::from_micros(10)).count, 20);
        assert_eq!(b.handled(10, 10, Duration::from_micros(10)).count, 20);
        assert_eq!(b.handled(20, 20, Duration::from_micros(20)).count, 40);
        // A batch of 10 read before the growth to 40 does not shrink it either.
        assert_eq!(b.handled(10, 10, Duration::from_micros(10)).count, 40);
    }

    #[test]
    fn a_fixed_count_never_changes_but_its_read_ahead_does() {
        let mut b = fixed(7);
        assert_eq!(
            b.pace(),
            ReadPace {
                count: 7,
                ahead: FETCHED_AHEAD
            }
        );
        assert_eq!(b.handled(7, 7, Duration::from_micros(1)).count, 7);
        assert_eq!(b.handled(7, 7, 70 * MS), ReadPace { count: 7, ahead: 1 });
        assert_eq!(
            b.handled(2, 2, MS),
            ReadPace {
                count: 7,
                ahead: FETCHED_AHEAD
            }
        );
    }

    #[test]
    fn a_cut_off_read_drops_to_one_entry_and_grows_back_after_clean_reads() {
        for mut b in [fixed(100), adaptive()] {
            settle(&mut b, Duration::from_micros(1));
            let top = b.count();
            b.cut_off();
            assert_eq!(b.count(), 1);
            let mut sizes = Vec::new();
            for _ in 0..200 {
                b.read_ok();
                sizes.push(b.count());
            }
            assert_eq!(sizes[CLEAN_READS_TO_GROW as usize - 2], 1, "{sizes:?}");
            assert_eq!(sizes[CLEAN_READS_TO_GROW as usize - 1], 2, "{sizes:?}");
            assert_eq!(sizes.last(), Some(&top));
            // A second cut-off read starts over.
            b.cut_off();
            assert_eq!(b.count(), 1);
        }
    }

    #[test]
    fn a_handler_that_takes_no_measurable_time_counts_as_fast() {
        let mut b = adaptive();
        assert_eq!(b.handled(10, 10, Duration::ZERO).count, 20);
        assert_eq!(
            fitting(1, Duration::ZERO, Duration::from_secs(60)),
            60_000_000_000
        );
    }
}
