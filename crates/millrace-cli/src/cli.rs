//! The command line: global options and one subcommand per job, parsed with clap's derive API.
//! Here the global options, where to connect and the subcommands; each subcommand's own
//! arguments are in `args`.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Parser, Subcommand};
use clap_complete::Shell;

use crate::connect::Endpoint;
use crate::error::CliError;
use crate::key::{parse_key, Key};

mod args;

pub(crate) use args::{
    DlqCommand, DlqSelect, DlqTarget, PendingArgs, ReapArgs, SortBy, TailArgs, TopArgs, TrimArgs,
};

/// Where to connect without --redis, --redis-cluster or their environment variables.
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";
/// The heading of the options every subcommand takes.
const GLOBAL: &str = "Global options";

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
    fn dlq_key_defaults_to_stream_colon_dlq() {
        let t = DlqTarget {
            stream: parse_key("orders").unwrap(),
            dlq: None,
        };
        assert_eq!(t.dlq_key().as_bytes(), b"orders:dlq");
    }
}
