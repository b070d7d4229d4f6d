//! What a reply says about the cluster's topology, and what a consumer does about it.

use redis::RedisError;

use crate::cluster::slot_map::NodeAddress;

/// A reply that is about the cluster's topology rather than about the command.
///
/// On one server, `UNBLOCKED the stream key no longer exists` means the stream was deleted and the
/// group is lost. On a cluster it also means the key was migrated to another master, with its
/// group and pending entries: so it is [`KeyGone`](Self::KeyGone), which re-resolves the owner
/// first and never recreates a group by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClusterReply {
    /// `MOVED slot host:port`: the slot is served by `owner` from now on.
    Moved {
        /// The key's slot.
        slot: u16,
        /// The master that serves it.
        owner: NodeAddress,
    },
    /// `ASK slot host:port`: the slot is being migrated and this key is already on `target`. Only
    /// the one command goes there, preceded by `ASKING`; the slot's owner is unchanged until the
    /// migration ends, when the source starts answering `MOVED`.
    Ask {
        /// The key's slot.
        slot: u16,
        /// The master that imports the slot.
        target: NodeAddress,
    },
    /// `UNBLOCKED force unblock from blocking operation, instance state changed (master ->
    /// replica?)`: the master a read was blocked on became a replica (a failover).
    Demoted,
    /// `UNBLOCKED the stream key no longer exists`: the key was migrated away or deleted.
    KeyGone,
    /// `READONLY`: a write reached a replica, so the owner this client knew is stale.
    ReadOnly,
    /// `CLUSTERDOWN`: some slot has no master (between a master's death and its replica's
    /// promotion, or for good if the shard has none left).
    ClusterDown,
    /// `TRYAGAIN`: a multi-key command during a migration found its keys split between source and
    /// target.
    TryAgain,
    /// `MASTERDOWN`: a replica lost its master while `replica-serve-stale-data` is off.
    MasterDown,
    /// `CROSSSLOT`: one command or script named keys of different slots.
    CrossSlot,
}

/// What a consumer does about a [`ClusterReply`]. None of these counts against the restart
/// budget: the topology changing is not the consumer failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Look the slot's owner up again now (a `MOVED` names it), reconnect the read socket there,
    /// replay the consumer's own pending entries, and go on.
    FollowOwner,
    /// Send only this command to the named target, after `ASKING`.
    AskOnce,
    /// Back off, report it in health, then look the owner up again.
    RetryLater,
    /// A configuration error that retrying cannot fix: stop with an error that names the keys.
    Fatal,
}

impl ClusterReply {
    /// The topology reply `err` is, or `None` if it is about something else (then the rules of a
    /// single server apply).
    pub(crate) fn classify(err: &RedisError) -> Option<ClusterReply> {
        ClusterReply::from_parts(err.code()?, err.detail().unwrap_or(""))
    }

    /// The topology reply an error line (`MOVED 3999 127.0.0.1:6381`, with or without the
    /// leading `-`) is, if any.
    #[cfg(test)]
    pub(crate) fn from_error_line(line: &str) -> Option<ClusterReply> {
        let line = line.strip_prefix('-').unwrap_or(line).trim_end();
        let (code, detail) = line.split_once(' ').unwrap_or((line, ""));
        ClusterReply::from_parts(code, detail)
    }

    fn from_parts(code: &str, detail: &str) -> Option<ClusterReply> {
        let redirect = || {
            let (slot, address) = detail.trim().split_once(' ')?;
            Some((slot.parse().ok()?, NodeAddress::parse(address)?))
        };
        match code {
            "MOVED" => redirect().map(|(slot, owner)| ClusterReply::Moved { slot, owner }),
            "ASK" => redirect().map(|(slot, target)| ClusterReply::Ask { slot, target }),
            "UNBLOCKED" if detail.contains("instance state changed") => Some(ClusterReply::Demoted),
            "UNBLOCKED" if detail.contains("no longer exists") => Some(ClusterReply::KeyGone),
            "READONLY" => Some(ClusterReply::ReadOnly),
            "CLUSTERDOWN" => Some(ClusterReply::ClusterDown),
            "TRYAGAIN" => Some(ClusterReply::TryAgain),
            "MASTERDOWN" => Some(ClusterReply::MasterDown),
            "CROSSSLOT" => Some(ClusterReply::CrossSlot),
            _ => None,
        }
    }

    /// What to do about it.
    pub(crate) fn action(&self) -> Action {
        match self {
            ClusterReply::Moved { .. }
            | ClusterReply::Demoted
            | ClusterReply::KeyGone
            | ClusterReply::ReadOnly => Action::FollowOwner,
            ClusterReply::Ask { .. } => Action::AskOnce,
            ClusterReply::ClusterDown | ClusterReply::TryAgain | ClusterReply::MasterDown => {
                Action::RetryLater
            }
            ClusterReply::CrossSlot => Action::Fatal,
        }
    }

    /// The node the reply names, for `MOVED` and `ASK`.
    #[cfg(test)]
    pub(crate) fn node(&self) -> Option<&NodeAddress> {
        match self {
            ClusterReply::Moved { owner: node, .. } | ClusterReply::Ask { target: node, .. } => {
                Some(node)
            }
            _ => None,
        }
    }
}

/// The master a `MOVED` reply names for its slot, if `err` is one: where the owner is to be looked
/// for first. An empty host (`MOVED 12 :7001`, a node that does not know its own address) is the
/// host of the node that answered, which the caller knows.
pub(crate) fn moved_owner(err: &RedisError) -> Option<NodeAddress> {
    match ClusterReply::classify(err)? {
        ClusterReply::Moved { owner, .. } => Some(owner),
        _ => None,
    }
}

impl Action {
    /// What a consumer does after `err` on a cluster: a topology reply's [`ClusterReply::action`];
    /// [`RetryLater`](Self::RetryLater) for a lost or refused connection (a killed master refuses
    /// connections until its replica is promoted, then the owner is looked up again); `None` for
    /// anything else, which the single-server rules handle.
    pub(crate) fn for_error(err: &RedisError) -> Option<Action> {
        if let Some(reply) = ClusterReply::classify(err) {
            return Some(reply.action());
        }
        (err.is_connection_dropped() || err.is_connection_refusal() || err.is_timeout())
            .then_some(Action::RetryLater)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(host: &str, port: u16) -> NodeAddress {
        NodeAddress {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn error_lines_are_classified() {
        let cases = [
            (
                "-MOVED 3999 127.0.0.1:6381",
                ClusterReply::Moved {
                    slot: 3999,
                    owner: address("127.0.0.1", 6381),
                },
                Action::FollowOwner,
            ),
            (
                "ASK 12182 10.0.0.7:7002",
                ClusterReply::Ask {
                    slot: 12182,
                    target: address("10.0.0.7", 7002),
                },
                Action::AskOnce,
            ),
            (
                "-UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)",
                ClusterReply::Demoted,
                Action::FollowOwner,
            ),
            (
                "-UNBLOCKED the stream key no longer exists",
                ClusterReply::KeyGone,
                Action::FollowOwner,
            ),
            (
                "-READONLY You can't write against a read only replica.",
                ClusterReply::ReadOnly,
                Action::FollowOwner,
            ),
            ("-CLUSTERDOWN The cluster is down", ClusterReply::ClusterDown, Action::RetryLater),
            (
                "-TRYAGAIN Multiple keys request during rehashing of slot",
                ClusterReply::TryAgain,
                Action::RetryLater,
            ),
            (
                "-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
                ClusterReply::MasterDown,
                Action::RetryLater,
            ),
            (
                "-CROSSSLOT Keys in request don't hash to the same slot",
                ClusterReply::CrossSlot,
                Action::Fatal,
            ),
        ];
        for (line, reply, action) in cases {
            assert_eq!(
                ClusterReply::from_error_line(line),
                Some(reply.clone()),
                "{line}"
            );
            assert_eq!(reply.action(), action, "{line}");
        }
    }

    #[test]
    fn other_errors_are_not_topology() {
        for line in [
            "-UNBLOCKED client unblocked via CLIENT UNBLOCK",
            "-NOGROUP No such key 'orders' or consumer group 'g'",
            "-ERR unknown command",
            "-MOVED not-a-slot 127.0.0.1:1",
            "-MOVED 12",
        ] {
            assert_eq!(ClusterReply::from_error_line(line), None, "{line}");
        }
    }

    #[test]
    fn the_owner_a_moved_names_is_where_a_consumer_goes_first() {
        let err = |line: &str| {
            redis::parse_redis_value(format!("{line}\r\n").as_bytes())
                .expect("a reply")
                .extract_error()
                .expect_err("an error reply")
        };
        assert_eq!(
            moved_owner(&err("-MOVED 3999 127.0.0.1:6381")),
            Some(address("127.0.0.1", 6381))
        );
        assert_eq!(moved_owner(&err("-MOVED 1 :7001")), Some(address("", 7001)));
        for other in [
            "-ASK 3999 127.0.0.1:6381",
            "-CLUSTERDOWN The cluster is down",
            "-UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)",
        ] {
            assert_eq!(moved_owner(&err(other)), None, "{other}");
        }
    }

    #[test]
    fn a_moved_without_host_names_the_port() {
        // With `cluster-preferred-endpoint-type unknown-endpoint` the host is left empty: it is
        // the host the client is connected to.
        let reply = ClusterReply::from_error_line("-MOVED 1 :7001");
        assert_eq!(
            reply.as_ref().and_then(ClusterReply::node),
            Some(&address("", 7001))
        );
    }
}
