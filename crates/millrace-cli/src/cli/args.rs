//! Each subcommand's own arguments (`pending`, `dlq`, `trim`, `reap`, `tail`, `top`), and the
//! parsers of their values (durations, entry ids).

use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use millrace::EntryId;

use crate::key::{parse_key, Key};

/// The shortest `top --interval`: faster refreshes load Redis with `XINFO` calls for little gain.
pub(crate) const MIN_TOP_INTERVAL: Duration = Duration::from_millis(100);

/// Arguments of `pending`.
#[derive(Debug, Args)]
pub(crate) struct PendingArgs {
    /// The stream key.
    #[arg(value_parser = parse_key)]
    pub(crate) stream: Key,
    /// The consumer group.
    #[arg(value_parser = parse_key)]
    pub(crate) group: Key,
    /// Only entries held by this consumer.
    #[arg(long, value_parser = parse_key)]
    pub(crate) consumer: Option<Key>,
    /// Only entries idle at least this long, e.g. `5m`, `90s`, `1h 30m`.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) idle: Option<Duration>,
    /// Show at most this many entries (oldest first).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) limit: u64,
}

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters: id, source id, group, deliveries, reason and age.
    List {
        /// Where the dead letters are.
        #[command(flatten)]
        target: DlqTarget,
        /// Show at most this many dead letters (oldest first).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
    },
    /// Show one dead letter in full, with its original fields.
    Show {
        /// Where the dead letters are.
        #[command(flatten)]
        target: DlqTarget,
        /// The dead letter's id in the dead-letter stream.
        #[arg(value_parser = parse_id)]
        id: EntryId,
    },
    /// Move dead letters back to their source stream (XADD there, XDEL here; atomic per entry).
    Replay {
        /// Where the dead letters are.
        #[command(flatten)]
        target: DlqTarget,
        /// Which dead letters (all when neither --id nor --filter-reason is given).
        #[command(flatten)]
        select: DlqSelect,
        /// Print what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters for good. Asks for confirmation on a terminal unless --yes.
    Purge {
        /// Where the dead letters are.
        #[command(flatten)]
        target: DlqTarget,
        /// Which dead letters (all when neither --id nor --filter-reason is given).
        #[command(flatten)]
        select: DlqSelect,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print what would be deleted, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The source stream and its dead-letter stream.
#[derive(Debug, Args)]
pub(crate) struct DlqTarget {
    /// The source stream (the dead-letter stream defaults to `<STREAM>:dlq`).
    #[arg(value_parser = parse_key)]
    pub(crate) stream: Key,
    /// The dead-letter stream, when it is not `<STREAM>:dlq`.
    #[arg(long, value_name = "KEY", value_parser = parse_key)]
    pub(crate) dlq: Option<Key>,
}

impl DlqTarget {
    /// The dead-letter stream key.
    pub(crate) fn dlq_key(&self) -> Key {
        self.dlq
            .clone()
            .unwrap_or_else(|| self.stream.with_suffix(":dlq"))
    }

    /// The library's view of the dead-letter stream.
    pub(crate) fn dead_letters(&self) -> millrace::dead_letter::DeadLetterStream {
        millrace::dead_letter::DeadLetterStream::with_key(&self.stream, self.dlq_key())
    }
}

/// Which dead letters a command acts on.
#[derive(Debug, Args)]
pub(crate) struct DlqSelect {
    /// A dead letter's id in the dead-letter stream; repeat for several.
    #[arg(long = "id", value_name = "ID", value_parser = parse_id)]
    pub(crate) ids: Vec<EntryId>,
    /// Only dead letters whose reason contains this text.
    #[arg(long, value_name = "TEXT")]
    pub(crate) filter_reason: Option<String>,
}

/// Arguments of `trim`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("cut").required(true).args(["maxlen", "minid", "acked"])))]
pub(crate) struct TrimArgs {
    /// The stream key.
    #[arg(value_parser = parse_key)]
    pub(crate) stream: Key,
    /// Keep only the newest N entries.
    #[arg(long, value_name = "N")]
    pub(crate) maxlen: Option<u64>,
    /// Remove entries with ids lower than this one.
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub(crate) minid: Option<EntryId>,
    /// Remove the entries every consumer group has acknowledged, never one a group has not
    /// (`XTRIM … ACKED` on Redis 8.2 and newer, a checked trim up to the oldest unacknowledged
    /// entry elsewhere).
    #[arg(long, conflicts_with = "force")]
    pub(crate) acked: bool,
    /// Trim even entries that a group has not read yet or still holds pending (they are lost to it).
    #[arg(long)]
    pub(crate) force: bool,
    /// Print what would be removed, change nothing (exit 3 when a real run would be refused).
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// Arguments of `reap`.
#[derive(Debug, Args)]
pub(crate) struct ReapArgs {
    /// The stream key.
    #[arg(value_parser = parse_key)]
    pub(crate) stream: Key,
    /// The consumer group.
    #[arg(value_parser = parse_key)]
    pub(crate) group: Key,
    /// Reap consumers idle longer than this, e.g. `1h`.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) idle: Duration,
    /// The consumer that receives the reaped consumers' pending entries.
    #[arg(long, value_name = "CONSUMER", default_value = "millrace-reaper", value_parser = parse_key)]
    pub(crate) into: Key,
    /// Print what would be claimed and deleted, change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// Arguments of `tail`.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// The stream key.
    #[arg(value_parser = parse_key)]
    pub(crate) stream: Key,
    /// Read as this consumer group (XREADGROUP) instead of plain XREAD; needs --consumer.
    #[arg(long, requires = "consumer", value_parser = parse_key)]
    pub(crate) group: Option<Key>,
    /// The consumer name to read as, with --group.
    #[arg(long, requires = "group", value_parser = parse_key)]
    pub(crate) consumer: Option<Key>,
    /// With --group: acknowledge what was printed (by default entries stay pending for the
    /// consumer, so real workers can claim them).
    #[arg(long, requires = "group")]
    pub(crate) ack: bool,
    /// Exit after printing N entries.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
}

/// Arguments of `top`.
#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    /// Only streams matching this glob pattern (as a pattern consumer matches them); keys matching
    /// it that are not streams are named and counted in a header line.
    pub(crate) pattern: Option<String>,
    /// Only this consumer group's rows; a stream without it shows one row with `-`, so the streams
    /// a pattern consumer of the group reads and the ones it has not picked up show side by side.
    #[arg(long, value_parser = parse_key)]
    pub(crate) group: Option<Key>,
    /// Time between refreshes (and between the two samples of --once), at least 100ms, e.g. `1s`,
    /// `500ms`.
    #[arg(long, default_value = "1s", value_parser = parse_top_interval, value_name = "DURATION")]
    pub(crate) interval: Duration,
    /// The column to sort by, largest first (names and streams A to Z); on the screen, keys 1-9
    /// choose a column too.
    #[arg(long, value_enum, default_value_t = SortBy::Stream)]
    pub(crate) sort: SortBy,
    /// Print one snapshot (with rates measured over one interval) and exit.
    #[arg(long)]
    pub(crate) once: bool,
}

/// The columns `top` can sort by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SortBy {
    /// Stream name, then group name.
    Stream,
    /// Entries in the stream.
    Length,
    /// Entries added per second.
    In,
    /// Consumers of the group.
    Consumers,
    /// Pending entries of the group.
    Pending,
    /// Idle time of the group's oldest pending entry.
    OldestIdle,
    /// Entries not yet delivered to the group.
    Lag,
    /// Entries the group reads per second.
    Read,
    /// Entries in the stream's dead-letter stream.
    Dlq,
}

/// Parses `top --interval`: a duration of at least [`MIN_TOP_INTERVAL`].
pub(crate) fn parse_top_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_TOP_INTERVAL {
        return Err("must be at least 100ms (each refresh asks Redis about every stream)".into());
    }
    Ok(d)
}

/// Parses a humantime duration (`5m`, `1h 30m`, `250ms`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{e}; expected a duration with a unit, e.g. `90s`, `5m`, `1h 30m`, `250ms`")
    })
}

/// Parses a stream entry id (`1700000000000-0`).
pub(crate) fn parse_id(s: &str) -> Result<EntryId, String> {
    s.trim().parse::<EntryId>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_top_interval("50ms").is_err());
        assert_eq!(parse_top_interval("100ms"), Ok(MIN_TOP_INTERVAL));
    }
}
