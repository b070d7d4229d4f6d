//! The group's gauges as one consumer sees them: pending entries (the group's and this consumer's),
//! the oldest pending entry's idle time, and the lag. Best effort: a failure (or a missing `XINFO`
//! permission) only leaves the figures stale.

use std::time::{Duration, Instant, SystemTime};

use redis::AsyncCommands;
use tracing::info;

use super::client::ConsumerClient;
use super::cohort::Cadence;
use super::stats::Stats;
use crate::entry::EntryId;
use crate::health::GroupGauges;
use crate::streams;

/// `XPENDING key group`: count, smallest id, largest id, per-consumer counts.
type PendingSummary = (u64, redis::Value, redis::Value, Vec<(String, String)>);

#[derive(Debug)]
pub(crate) struct Gauges {
    client: ConsumerClient,
    stats: Stats,
    cadence: Cadence,
    xinfo_allowed: bool,
}

impl Gauges {
    pub(crate) fn new(client: ConsumerClient, stats: Stats, cadence: Cadence) -> Self {
        Gauges {
            client,
            stats,
            cadence,
            xinfo_allowed: true,
        }
    }

    /// When the next refresh is due.
    pub(crate) fn next_refresh(&self) -> Instant {
        self.cadence.due()
    }

    pub(crate) async fn refresh(&mut self) {
        self.cadence.ran(Instant::now());
        let id = self.client.id().clone();
        let (stream, group) = (&*id.stream, &*id.group);
        let summary: redis::RedisResult<PendingSummary> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(self.client.conn())
            .await;
        let Ok((group_pending, _, _, consumers)) = summary else {
            return;
        };
        let consumer_pending = consumers
            .iter()
            .find(|(name, _)| *name == *id.consumer)
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0);
        let oldest_pending_idle = streams::xpending_range(
            self.client.conn(),
            stream,
            group,
            None,
            EntryId::MIN,
            EntryId::new(u64::MAX, u64::MAX),
            1,
            None,
        )
        .await
        .ok()
        .and_then(|rows| rows.first().map(|r| Duration::from_millis(r.idle_ms)));
        let (lag, last_delivered) = self.lag(stream, group).await.unwrap_or((None, None));
        let oldest_undelivered_age = match (lag, last_delivered) {
            (Some(0), _) => Some(Duration::ZERO),
            (_, Some(after)) => self.first_after(stream, &after).await,
            _ => None,
        };
        self.stats.group_gauges(GroupGauges {
            group_pending,
            consumer_pending,
            oldest_pending_idle,
            lag,
            oldest_undelivered_age,
            at: SystemTime::now(),
        });
    }

    /// The age of the first entry after `after` (the group's last delivered id): the oldest entry
    /// not yet delivered to the group, by its id's time. `Some(0)` when there is none.
    async fn first_after(&mut self, stream: &str, after: &str) -> Option<Duration> {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(self.client.conn())
            .await
            .ok()?;
        match streams::parse_entries(reply).first().and_then(|i| i.id()) {
            Some(id) => Some(crate::telemetry::since_entry_id(id.ms).unwrap_or_default()),
            None => Some(Duration::ZERO),
        }
    }

    /// The group's lag and last delivered id, from `XINFO GROUPS`.
    async fn lag(&mut self, stream: &str, group: &str) -> Option<(Option<u64>, Option<String>)> {
        if !self.xinfo_allowed {
            return None;
        }
        let reply = self
            .client
            .conn()
            .xinfo_groups::<_, redis::streams::StreamInfoGroupsReply>(stream)
            .await;
        match reply {
            Ok(reply) => reply
                .groups
                .into_iter()
                .find(|g| g.name == group)
                .map(|g| (g.lag.map(|l| l as u64), Some(g.last_delivered_id))),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
                info!("no permission for XINFO GROUPS: the lag gauge stays empty (grant +xinfo|groups to fill it)");
                self.xinfo_allowed = false;
                None
            }
            Err(_) => None,
        }
    }
}
