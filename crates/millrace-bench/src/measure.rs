//! What a run costs: wall time, client CPU (CLOCK_PROCESS_CPUTIME_ID), server CPU (INFO CPU),
//! everybody else's CPU (/proc/stat minus the two), peak RSS (/proc/self/status VmHWM, reset per run
//! through /proc/self/clear_refs), and connections left open (CLIENT LIST).

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::Res;

/// CPU time of this whole process, all threads, user + system.
pub(crate) fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// `(VmRSS, VmHWM)` of this process in KiB.
pub(crate) fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` value 5), so the next reading is the peak
/// of what happens in between. False when the kernel refuses.
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Busy and total CPU time of the whole machine from /proc/stat, in seconds.
pub(crate) fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    let total = busy + get(3) + get(4);
    let hz = 100.0; // USER_HZ is 100 on every Linux this runs on.
    (busy as f64 / hz, total as f64 / hz)
}

/// The 1-minute load average.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

/// A field of `INFO section`.
pub(crate) async fn info_field(
    conn: &mut MultiplexedConnection,
    section: &str,
    field: &str,
) -> Res<String> {
    let info: String = redis::cmd("INFO").arg(section).query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| format!("INFO {section} has no {field}").into())
}

/// Server CPU seconds so far: `used_cpu_sys + used_cpu_user`.
pub(crate) async fn server_cpu(conn: &mut MultiplexedConnection) -> Res<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let get = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok(get("used_cpu_sys") + get("used_cpu_user"))
}

/// Normal client connections open on the server (the caller's own included).
pub(crate) async fn client_count(conn: &mut MultiplexedConnection) -> Res<usize> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("normal")
        .query_async(conn)
        .await?;
    Ok(list.lines().filter(|l| !l.trim().is_empty()).count())
}

/// Waits (up to `limit`) until at most `expected` clients are connected; returns the last count.
pub(crate) async fn settle_clients(
    conn: &mut MultiplexedConnection,
    expected: usize,
    limit: Duration,
) -> Res<usize> {
    let until = Instant::now() + limit;
    loop {
        let n = client_count(conn).await?;
        if n <= expected || Instant::now() >= until {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Resets the server's per-command statistics (`CONFIG RESETSTAT`).
pub(crate) async fn reset_commandstats(conn: &mut MultiplexedConnection) -> Res<()> {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await?;
    Ok(())
}

/// Server time per command since the last reset, `(command, calls, µs)`, most expensive first;
/// the benchmark's own INFO / CONFIG / CLIENT calls are left out.
pub(crate) async fn commandstats(conn: &mut MultiplexedConnection) -> Res<Vec<(String, u64, u64)>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let mut out: Vec<(String, u64, u64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |f: &str| -> Option<u64> {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_owned(), field("calls")?, field("usec")?))
        })
        .filter(|(n, _, _)| !matches!(n.as_str(), "info" | "config|resetstat" | "client|list"))
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.2));
    Ok(out)
}

/// `xreadgroup 61% (400 calls), xack 35% (400), …`
pub(crate) fn commandstats_line(stats: &[(String, u64, u64)]) -> String {
    let total: u64 = stats.iter().map(|s| s.2).sum::<u64>().max(1);
    stats
        .iter()
        .take(5)
        .map(|(n, calls, usec)| {
            format!(
                "{n} {:.0}% ({calls} calls)",
                *usec as f64 * 100.0 / total as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A reading of every meter at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub(crate) at: Instant,
    client_cpu: Duration,
    server_cpu: f64,
    machine_busy: f64,
}

impl Snapshot {
    pub(crate) async fn take(admin: &mut MultiplexedConnection) -> Res<Snapshot> {
        let server_cpu = server_cpu(admin).await?;
        Ok(Snapshot {
            at: Instant::now(),
            client_cpu: process_cpu(),
            server_cpu,
            machine_busy: machine_cpu().0,
        })
    }
}

/// What one run cost.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cost {
    /// Wall time from the start until the last entry was handled and acknowledged.
    pub(crate) wall: Duration,
    /// Entries handled.
    pub(crate) handled: u64,
    /// CPU seconds of this process (all threads).
    pub(crate) client_cpu: f64,
    /// CPU seconds of redis-server.
    pub(crate) server_cpu: f64,
    /// CPU seconds of everything else on the machine (10 ms resolution).
    pub(crate) others_cpu: f64,
    /// Peak RSS of this process during the run, KiB.
    pub(crate) peak_rss_kib: u64,
}

impl Cost {
    /// `end_wall` ends the wall-time span (the last ack); `before` and `after` bracket the CPU.
    pub(crate) fn between(
        before: &Snapshot,
        after: &Snapshot,
        end_wall: Instant,
        handled: u64,
    ) -> Cost {
        let client_cpu = after
            .client_cpu
            .saturating_sub(before.client_cpu)
            .as_secs_f64();
        let server_cpu = (after.server_cpu - before.server_cpu).max(0.0);
        let others = (after.machine_busy - before.machine_busy) - client_cpu - server_cpu;
        let wall = end_wall.saturating_duration_since(before.at);
        Cost {
            wall,
            handled,
            client_cpu,
            server_cpu,
            others_cpu: others.clamp(0.0, cores() * wall.as_secs_f64()),
            peak_rss_kib: rss_kib().1,
        }
    }

    pub(crate) fn msgs_per_sec(&self) -> f64 {
        self.handled as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub(crate) fn client_us_per_msg(&self) -> f64 {
        self.client_cpu * 1e6 / self.handled.max(1) as f64
    }

    pub(crate) fn server_us_per_msg(&self) -> f64 {
        self.server_cpu * 1e6 / self.handled.max(1) as f64
    }

    /// Server CPU over wall time: 1.0 is one core saturated (Redis runs commands on one thread).
    pub(crate) fn server_busy(&self) -> f64 {
        self.server_cpu / self.wall.as_secs_f64().max(1e-9)
    }

    /// Everybody else's CPU over wall time, in cores.
    pub(crate) fn others_busy(&self) -> f64 {
        self.others_cpu / self.wall.as_secs_f64().max(1e-9)
    }
}
