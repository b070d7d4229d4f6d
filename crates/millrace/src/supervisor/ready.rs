//! Readiness: whether the supervisor is doing its work ([`Supervisor::is_ready`]), with the reasons
//! when it is not ([`Supervisor::unready_reasons`]); and the start-up check that a cluster seed is
//! a cluster.

use std::time::Duration;

use super::{Supervisor, SupervisorBuilder};
use crate::connection::Backend;
use crate::error::{Error, Result};

/// How long a consumer that was running may reconnect, restart or start a new session before
/// [`Supervisor::is_ready`] turns false, and how long a pattern's sweeps may fail; see
/// [`SupervisorBuilder::ready_grace`].
pub const DEFAULT_READY_GRACE: Duration = Duration::from_secs(10);

impl SupervisorBuilder {
    /// How long a consumer that was running may be away from `Running` (reconnecting after a lost
    /// connection or a failover, restarting after a panic) and a pattern's sweeps may fail, before
    /// [`Supervisor::is_ready`] says false. Default [`DEFAULT_READY_GRACE`] (10 s): a failover on
    /// a cluster with `cluster-node-timeout 1500` (about 3 s) keeps the service ready; a dead
    /// master with Redis's default 15 s node timeout (about 30 s) does not. `Duration::ZERO`
    /// makes any reconnect unready at once.
    ///
    /// ```
    /// let builder = millrace::Supervisor::builder().ready_grace(std::time::Duration::from_secs(5));
    /// # drop(builder);
    /// ```
    pub fn ready_grace(mut self, grace: Duration) -> Self {
        self.ready_grace = grace;
        self
    }
}

impl Supervisor {
    /// True when the supervisor is doing its work: it runs; every consumer is reading (or, having
    /// read before, is back within [`ready_grace`](SupervisorBuilder::ready_grace) of losing its
    /// connection or restarting); every multi-stream consumer reads at least one stream; and every
    /// pattern consumer has completed a sweep, with no sweep failing for longer than the grace.
    /// [`unready_reasons`](Self::unready_reasons) says why not.
    ///
    /// ```no_run
    /// # fn demo(app: &millrace::Supervisor) {
    /// let status = if app.is_ready() { 200 } else { 503 };
    /// # let _ = status;
    /// # }
    /// ```
    pub fn is_ready(&self) -> bool {
        self.unready_reasons().is_empty()
    }

    /// Liveness: `Ok` while the supervisor runs; `Err` with the reason once it gave up on a
    /// consumer or was shut down (what the built-in `/health` answers).
    pub fn liveness(&self) -> std::result::Result<(), String> {
        if !*self.done.borrow() {
            return Ok(());
        }
        Err(match self.failure() {
            Some(f) => format!("the supervisor stopped: {f}"),
            None => "the supervisor was shut down".to_owned(),
        })
    }

    /// The address the built-in HTTP endpoint listens on (`SupervisorBuilder::http`, feature
    /// `http`); `None` without it.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http_addr
    }

    /// Why [`is_ready`](Self::is_ready) is false, one line per cause (empty when ready): the
    /// consumers out of `Running` past the grace, with their state, for how long and their last
    /// error; the multi-stream consumers without a stream; the pattern consumers without a
    /// completed sweep or whose sweeps fail.
    pub fn unready_reasons(&self) -> Vec<String> {
        if let Err(why) = self.liveness() {
            return vec![why];
        }
        let grace = self.ready_grace;
        let mut reasons: Vec<String> = self
            .shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|h| h.readiness(grace).err())
            .collect();
        let multi = self.shared.multi();
        for set in multi.sets() {
            let name = format!("{}/{}", set.group, set.consumer);
            let found = multi.discovered(&set.group, &set.consumer);
            if let Some(pattern) = &set.pattern {
                let failing = found.and_then(|d| d.failing_since.map(|t| (t.elapsed(), d)));
                let sweeps = found.map_or(0, |d| d.sweeps);
                match failing {
                    Some((for_, d)) if for_ >= grace || sweeps == 0 => reasons.push(format!(
                        "{name}: the sweeps for `{pattern}` fail: {}",
                        d.last_error.as_deref().unwrap_or("unknown error")
                    )),
                    _ if sweeps == 0 => reasons.push(format!(
                        "{name}: no sweep for `{pattern}` has completed yet"
                    )),
                    _ => {}
                }
                if sweeps > 0 && set.streams.is_empty() {
                    reasons.push(format!("{name}: no stream matches `{pattern}`"));
                }
            } else if set.streams.is_empty() {
                reasons.push(format!("{name}: reads no stream"));
            }
        }
        reasons
    }
}

/// On a cluster, asks a seed for the slot map: a server without cluster support fails the start
/// with an error saying so (unreachable seeds were reported before this runs; other failures are
/// left to the consumers' retries).
pub(super) async fn check_cluster(backend: &Backend, display: &str) -> Result<()> {
    if !backend.is_cluster() {
        return Ok(());
    }
    let limit = backend.connect_timeout() + backend.command_timeout();
    let mut control = backend.control();
    let map = crate::cluster::fetch_slot_map(&mut control);
    match tokio::time::timeout(limit, map).await {
        Ok(Err(e)) if e.to_string().contains("cluster support disabled") => Err(Error::Fatal {
            consumer: None,
            command: "CLUSTER SHARDS",
            reason: format!(
                "{display} is not a Redis Cluster: the server answered that cluster support is disabled"
            ),
            hint: "for one server use `SupervisorBuilder::redis(url)` instead of `redis_cluster(urls)`; \
                   for a cluster, point `redis_cluster` at nodes started with `cluster-enabled yes`"
                .to_owned(),
            source: None,
        }),
        _ => Ok(()),
    }
}
