//! The command line: global options and one subcommand per job, parsed with clap's derive API.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgGroup, ArgMatches, Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use millrace::EntryId;

use crate::connect::Endpoint;
use crate::error::CliError;
use crate::key::{parse_key, Key};

/// Where to connect without --redis, --redis-cluster or their environment variables.
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";
/// The heading of the options every subcommand takes.
const GLOBAL: &str = "Global options";
/// The shortest `top --interval`: faster refreshes load Redis with `XINFO` calls for little gain.
pub(crate) const MIN_TOP_INTERVAL: Duration = Duration::from_millis(100);

/// Inspect and repair Redis Streams consumer groups: streams, groups, consumers, pending entries,
/// dead letters, safe trimming and safe consumer clean-up.
///
/// Stream, group and consumer names are shown and given in one escape syntax: `\xNN` for a byte that is not UTF-8,
/// `\\` for a backslash, `\n`, `\t`, `\u{1}` for control characters.
///
/// Exit codes: 0 ok, 1 runtime or Redis error (also a missing stream or group, or a key of the wrong
/// type), 2 usage error, 3 refused for safety (re-run with --force or --yes after reading why), 130
/// interrupted (Ctrl-C in `tail` and `top`).
#[derive(Debug, Parser)]
#[command(name = "millrace", version, about, long_about)]
pub(crate) struct Cli {
    /// Redis URL, e.g. redis://user:password@host:6379/0 or rediss://... for TLS. The password is
    /// never printed. Default: redis://127.0.0.1:6379.
    #[arg(
        long = "redis",
        env = "REDIS_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL",
        help_heading = GLOBAL
    )]
    pub(crate) redis: Option<String>,

    /// A Redis Cluster instead of one server: seed node URLs, comma-separated (any one that
    /// answers is enough; all with the same credentials), e.g.
    /// redis://127.0.0.1:7000,redis://127.0.0.1:7001. Not together with --redis.
    #[arg(
        long = "redis-cluster",
        env = "REDIS_CLUSTER_URLS",
        global = true,
        hide_env_values = true,
        value_name = "URL,...",
        value_delimiter = ',',
        help_heading = GLOBAL
    )]
    pub(crate) redis_cluster: Vec<String>,

    /// A master with replicas behind Redis Sentinel instead of one server: the master's name and
    /// the Sentinels' URLs, e.g. mymaster=redis://10.0.0.1:26379,redis://10.0.0.2:26379 (a
    /// Sentinel's own password in its URL: redis://:PW@host:26379). The data nodes' credentials
    /// go before the name as in a URL: USER:PASSWORD@mymaster=... or :PASSWORD@mymaster=...
    /// millrace asks the Sentinels for the master (SENTINEL GET-MASTER-ADDR-BY-NAME) and connects
    /// to it. Not together with --redis or --redis-cluster.
    #[arg(
        long = "redis-sentinel",
        env = "REDIS_SENTINEL",
        global = true,
        hide_env_values = true,
        value_name = "[AUTH@]MASTER=URL,...",
        help_heading = GLOBAL
    )]
    pub(crate) redis_sentinel: Option<String>,

    /// With rediss://: also trust the CA certificate in this PEM file (for a server whose
    /// certificate is not signed by a public CA).
    #[arg(
        long,
        env = "MILLRACE_TLS_CA_CERT",
        global = true,
        value_name = "PEM",
        help_heading = GLOBAL
    )]
    pub(crate) tls_ca_cert: Option<PathBuf>,

    /// Print machine-readable JSON instead of tables (one JSON document per line for `tail` and
    /// a refreshing `top`).
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub(crate) json: bool,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Where to connect: `--redis-sentinel`, `--redis-cluster` or `--redis`. One given on the
    /// command line wins over the others' environment variables; two on the command line (or two
    /// only in the environment) is a usage error.
    pub(crate) fn endpoint(&self, matches: &ArgMatches) -> Result<Endpoint, CliError> {
        let from_line = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        let set = [
            ("--redis", "REDIS_URL", "redis", self.redis.is_some()),
            (
                "--redis-cluster",
                "REDIS_CLUSTER_URLS",
                "redis_cluster",
                !self.redis_cluster.is_empty(),
            ),
            (
                "--redis-sentinel",
                "REDIS_SENTINEL",
                "redis_sentinel",
                self.redis_sentinel.is_some(),
            ),
        ];
        let on_line: Vec<_> = set.iter().filter(|s| from_line(s.2)).collect();
        let chosen = match on_line.as_slice() {
            [one] => Some(one.2),
            [] => {
                let in_env: Vec<_> = set.iter().filter(|s| s.3).collect();
                match in_env.as_slice() {
                    [] => None,
                    [one] => Some(one.2),
                    many => {
                        return Err(CliError::usage(format!(
                            "{} are set together: unset all but one, or choose with {}",
                            many.iter().map(|s| s.1).collect::<Vec<_>>().join(" and "),
                            many.iter().map(|s| s.0).collect::<Vec<_>>().join(" or "),
                        )))
                    }
                }
            }
            many => {
                return Err(CliError::usage(format!(
                    "{} exclude each other: give one",
                    many.iter().map(|s| s.0).collect::<Vec<_>>().join(" and ")
                )))
            }
        };
        Ok(match chosen {
            Some("redis_cluster") => Endpoint::Cluster(self.redis_cluster.clone()),
            Some("redis_sentinel") => parse_sentinel(self.redis_sentinel.as_deref().unwrap_or(""))?,
            _ => Endpoint::Server(
                self.redis
                    .clone()
                    .unwrap_or_else(|| DEFAULT_REDIS.to_owned()),
            ),
        })
    }
}

/// `[USER:PASSWORD@]MASTER=URL,URL...`: the `=` is the last one before the first URL's `://`.
fn parse_sentinel(value: &str) -> Result<Endpoint, CliError> {
    let bad = |what: &str| {
        CliError::usage(format!(
            "--redis-sentinel {what}: give MASTER=URL[,URL...], e.g. \
             mymaster=redis://127.0.0.1:26379 (the data nodes' credentials as :PASSWORD@mymaster=...)"
        ))
    };
    let scheme = value.find("://").unwrap_or(value.len());
    let eq = value[..scheme]
        .rfind('=')
        .ok_or_else(|| bad("names no Sentinel URL"))?;
    let (head, urls) = (&value[..eq], &value[eq + 1..]);
    let (data_auth, master) = match head.rsplit_once('@') {
        Some((auth, master)) => (Some(auth.to_owned()), master),
        None => (None, head),
    };
    if master.trim().is_empty() {
        return Err(bad("names no master"));
    }
    let sentinels: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if sentinels.is_empty() {
        return Err(bad("names no Sentinel URL"));
    }
    Ok(Endpoint::Sentinel {
        master: master.trim().to_owned(),
        sentinels,
        data_auth,
    })
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List streams (found with SCAN ... TYPE stream) with length, first and last id and number of
    /// groups.
    Streams {
        /// Only keys matching this glob pattern (SCAN MATCH), e.g. `orders*`.
        pattern: Option<String>,
    },
    /// Show the consumer groups of a stream: consumers, pending, last-delivered-id, entries-read
    /// and lag.
    Groups {
        /// The stream key.
        #[arg(value_parser = parse_key)]
        stream: Key,
    },
    /// Show the consumers of a group: pending entries, idle and inactive time.
    Consumers {
        /// The stream key.
        #[arg(value_parser = parse_key)]
        stream: Key,
        /// The consumer group.
        #[arg(value_parser = parse_key)]
        group: Key,
    },
    /// List pending entries of a group: id, consumer, idle time and delivery count.
    Pending(PendingArgs),
    /// Inspect, replay or purge dead letters (entries millrace moved to `<stream>:dlq`).
    Dlq {
        /// What to do with the dead letters.
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Trim old entries, refusing when a group has not yet read them or still holds them pending.
    Trim(TrimArgs),
    /// Clean up idle consumers safely: claim their pending entries first, then delete them only
    /// if nothing is pending.
    Reap(ReapArgs),
    /// Follow new entries of a stream like `tail -f`, until Ctrl-C.
    Tail(TailArgs),
    /// A refreshing terminal view of streams, groups, lag, pending entries, the oldest pending idle
    /// time, dead letters and rates; `q` quits, keys 1-9 sort.
    Top(TopArgs),
    /// Print a shell completion script for bash, zsh or fish.
    ///
    /// For example: `millrace completions bash > ~/.local/share/bash-completion/completions/millrace`,
    /// `millrace completions fish > ~/.config/fish/completions/millrace.fish`.
    Completions {
        /// The shell.
        shell: Shell,
    },
}

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
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn redis_sentinel_takes_auth_master_and_urls() {
        let sentinel = |v: &str| match parse_sentinel(v) {
            Ok(Endpoint::Sentinel {
                master,
                sentinels,
                data_auth,
            }) => Ok((master, sentinels, data_auth)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        let (master, urls, auth) =
            sentinel("u:p=w@d@my=master=redis://:x=y@h:1, redis://h:2,").unwrap();
        assert_eq!(master, "my=master");
        assert_eq!(urls, ["redis://:x=y@h:1", "redis://h:2"]);
        assert_eq!(auth.as_deref(), Some("u:p=w@d"));
        let (master, _, auth) = sentinel("m=redis://h:1").unwrap();
        assert_eq!((master.as_str(), auth), ("m", None));
        assert!(sentinel("m").unwrap_err().contains("names no Sentinel URL"));
        assert!(sentinel("m=")
            .unwrap_err()
            .contains("names no Sentinel URL"));
        assert!(sentinel(":pw@=redis://h:1")
            .unwrap_err()
            .contains("names no master"));
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_top_interval("50ms").is_err());
        assert_eq!(parse_top_interval("100ms"), Ok(MIN_TOP_INTERVAL));
    }

    #[test]
    fn dlq_key_defaults_to_stream_colon_dlq() {
        let t = DlqTarget {
            stream: parse_key("orders").unwrap(),
            dlq: None,
        };
        assert_eq!(t.dlq_key().as_bytes(), b"orders:dlq");
    }
}
