//! Keyed concurrency: a batch this consumer owns is split by key into sub-batches (one per key, in
//! stream order), up to `key_concurrency` of them run at once under one heartbeat, and each
//! sub-batch's report is applied to its own entries. An entry whose key function panicked is
//! treated as a handler panic.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tracing::Instrument;

use super::handling::Handled;
use super::outcome;
use super::Consumer;
use crate::config::ConsumerOptions;
use crate::entry::DeliveredEntry;
use crate::entry::{EntryId, Source};
use crate::error::Result;
use crate::handler::{panic_message, Outcome, RunReport};

/// A batch split by key.
#[derive(Debug, Default)]
pub(crate) struct Split {
    /// One sub-batch per key, each in stream order; keys in the order of their first entry.
    pub(crate) groups: Vec<(Option<Vec<u8>>, Vec<DeliveredEntry>)>,
    /// Entries whose key function panicked, with its message.
    pub(crate) broken: Vec<(EntryId, String)>,
}

/// Splits `batch` by the key of `opts` (`key_by`, else `key_field`).
pub(crate) fn split(batch: Vec<DeliveredEntry>, opts: &ConsumerOptions) -> Split {
    let mut out = Split::default();
    let mut index: HashMap<Option<Vec<u8>>, usize> = HashMap::new();
    for item in batch {
        let raw = &item.0;
        let key = match (&opts.key_by, &opts.key_field) {
            (Some(f), _) => match std::panic::catch_unwind(AssertUnwindSafe(|| f.key(raw))) {
                Ok(key) => key,
                Err(payload) => {
                    out.broken.push((raw.id, panic_message(payload.as_ref())));
                    continue;
                }
            },
            (None, Some(field)) => raw.get(field).map(<[u8]>::to_vec),
            (None, None) => None,
        };
        let at = *index.entry(key.clone()).or_insert_with(|| {
            out.groups.push((key, Vec::new()));
            out.groups.len() - 1
        });
        out.groups[at].1.push(item);
    }
    out
}

impl Consumer {
    /// Runs `batch` as sub-batches by key, at most `lanes` at once, and applies each one's report
    /// to its own entries. A panic (of the handler or the key function) restarts the consumer once
    /// every report is applied.
    pub(super) async fn run_keyed(
        &mut self,
        batch: Vec<DeliveredEntry>,
        source: Source,
        idle: Duration,
        lanes: usize,
    ) -> Result<Handled> {
        let ids: Vec<EntryId> = batch.iter().map(|(e, _)| e.id).collect();
        let counts: HashMap<EntryId, Option<u64>> = batch.iter().map(|(e, d)| (e.id, *d)).collect();
        let Split { groups, broken } = split(batch, &self.opts);
        let runner = self.runner.clone();
        let (meta, timeout) = (self.meta.clone(), self.opts.handler_timeout);
        let runs = futures::stream::iter(groups.into_iter().map(|(key, items)| {
            let first = items.first().map(|(e, d)| (e.id, *d));
            let key = key.as_deref().map(String::from_utf8_lossy);
            // The `batch` span of the plain path, per sub-batch, with its key.
            let span = tracing::info_span!(
                "batch",
                %source,
                entries = items.len(),
                entry_id = %first.map(|f| f.0).unwrap_or_default(),
                deliveries = first.and_then(|f| f.1),
                key = key.as_deref().unwrap_or("(none)"),
            );
            runner
                .run(meta.clone(), source, items, timeout)
                .instrument(span)
        }))
        .buffer_unordered(lanes)
        .collect::<Vec<RunReport>>()
        .boxed();
        let started = Instant::now();
        let mut reports = self.with_heartbeat(runs, &ids, idle).await;
        let took = started.elapsed();
        self.stats.batch_handled(took, ids.len());
        reports.extend(broken.into_iter().map(|(id, message)| RunReport {
            handed: vec![id],
            undecodable: Vec::new(),
            outcome: Outcome::Panicked(format!("the key function panicked: {message}")),
            dead_letters: Vec::new(),
            retries: Vec::new(),
        }));
        let mut handled = Handled::default();
        let mut panicked = None;
        for report in reports {
            let plan = outcome::plan_with(
                report,
                |id| counts.get(&id).copied().flatten(),
                self.opts.retry_backoff.as_ref(),
            );
            let (one, panic) = self.settle(plan, took).await?;
            handled.ack.extend(one.ack);
            handled.handler_took = handled.handler_took.or(one.handler_took);
            panicked = panicked.or(panic);
        }
        handled.handed = ids.len();
        match panicked {
            Some(message) => {
                // The other keys' sub-batches succeeded: acknowledge them before the restart, so a
                // panic of one key does not hand the others out again.
                self.acker.ack(std::mem::take(&mut handled.ack)).await?;
                Err(self.panicked(message))
            }
            None => Ok(handled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::RawEntry;
    use crate::KeyFn;

    fn entry(seq: u64, key: Option<&str>) -> DeliveredEntry {
        let fields = key
            .map(|k| vec![(b"k".to_vec(), k.as_bytes().to_vec())])
            .unwrap_or_default();
        (RawEntry::new(EntryId::new(1, seq), fields), Some(1))
    }

    fn seqs(split: &Split) -> Vec<Vec<u64>> {
        let groups = split.groups.iter();
        groups
            .map(|(_, g)| g.iter().map(|(e, _)| e.id.seq).collect())
            .collect()
    }

    #[test]
    fn a_field_splits_by_key_in_stream_order_and_keyless_entries_share_one() {
        let opts = ConsumerOptions {
            key_field: Some("k".into()),
            ..ConsumerOptions::default()
        };
        let batch = vec![
            entry(1, Some("a")),
            entry(2, Some("b")),
            entry(3, None),
            entry(4, Some("a")),
            entry(5, None),
            entry(6, Some("b")),
        ];
        let s = split(batch, &opts);
        assert_eq!(seqs(&s), vec![vec![1, 4], vec![2, 6], vec![3, 5]]);
        assert!(s.broken.is_empty());
    }

    #[test]
    fn a_panicking_key_function_sets_its_entry_apart() {
        let opts = ConsumerOptions {
            key_by: Some(KeyFn::new(|e: &RawEntry| {
                assert!(e.id.seq != 2, "no key for 2");
                Some(vec![u8::try_from(e.id.seq % 2).unwrap_or(0)])
            })),
            ..ConsumerOptions::default()
        };
        let s = split(vec![entry(1, None), entry(2, None), entry(3, None)], &opts);
        assert_eq!(seqs(&s), vec![vec![1, 3]]);
        assert_eq!(s.broken.len(), 1);
        assert_eq!(s.broken[0].0.seq, 2);
        assert!(s.broken[0].1.contains("no key for 2"));
    }
}
