//! What differs between the servers of the test matrix (`MILLRACE_SERVER`: Redis 7.0, Redis 8.2,
//! Valkey 9.1), through the real `millrace` binary: the server each listing names, and
//! `trim --acked`, which takes `XTRIM … ACKED` where the server has it and the checked trim where
//! it does not, and on both never removes an entry a group has not acknowledged.
#![allow(clippy::unwrap_used)]

use millrace_testkit::{RedisServer, ServerKind};
use redis::Connection;

mod support;
use support::{finish, millrace, Run};

fn run(server: &RedisServer, args: &[&str]) -> Run {
    finish(millrace().arg("--redis").arg(server.url()).args(args))
}

#[track_caller]
fn ok(server: &RedisServer, args: &[&str]) -> Run {
    let r = run(server, args);
    assert_eq!(r.code, 0, "millrace {args:?}:\n{r:?}");
    r
}

fn q<T: redis::FromRedisValue>(con: &mut Connection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con).unwrap()
}

fn ids_of(con: &mut Connection, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    reply.ids.into_iter().map(|e| e.id).collect()
}

/// What `INFO server` / `HELLO` must call the server of this run.
fn expected_label() -> &'static str {
    match ServerKind::current() {
        ServerKind::Redis70 => "redis 7.",
        ServerKind::Redis82 => "redis 8.2.3",
        ServerKind::Valkey91 => "valkey 9.1.2",
    }
}

#[test]
fn streams_and_groups_name_the_server_and_its_version() {
    let server = RedisServer::start();
    let mut con = server.client().get_connection().unwrap();
    let _: String = q(&mut con, &["XADD", "orders", "*", "n", "1"]);
    let _: () = q(&mut con, &["XGROUP", "CREATE", "orders", "workers", "0"]);
    let label = expected_label();
    let r = ok(&server, &["streams"]);
    assert!(r.stdout.starts_with(&format!("server: {label}")), "{r:?}");
    assert!(r.stdout.contains("(master) at redis://127.0.0.1:"), "{r:?}");
    let j = ok(&server, &["--json", "streams"]).json();
    assert!(j[0]["server"].as_str().unwrap().starts_with(label), "{j}");
    let r = ok(&server, &["groups", "orders"]);
    assert!(r.stdout.starts_with(&format!("server: {label}")), "{r:?}");
    let j = ok(&server, &["--json", "groups", "orders"]).json();
    assert!(j[0]["server"].as_str().unwrap().starts_with(label), "{j}");
}

#[test]
fn trim_acked_removes_only_entries_every_group_acknowledged() {
    let server = RedisServer::start();
    let mut con = server.client().get_connection().unwrap();
    let ids: Vec<String> = (0..6)
        .map(|i| q(&mut con, &["XADD", "s", "*", "n", &i.to_string()]))
        .collect();
    for g in ["g", "h"] {
        let _: () = q(&mut con, &["XGROUP", "CREATE", "s", g, "0"]);
    }
    // g was delivered the first four and acknowledged the 1st and 3rd; h was delivered all six
    // and acknowledged all but the last.
    let _: redis::Value = q(
        &mut con,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "COUNT",
            "4",
            "STREAMS",
            "s",
            ">",
        ],
    );
    let _: redis::Value = q(
        &mut con,
        &[
            "XREADGROUP",
            "GROUP",
            "h",
            "c",
            "COUNT",
            "6",
            "STREAMS",
            "s",
            ">",
        ],
    );
    let _: u64 = q(&mut con, &["XACK", "s", "g", &ids[0], &ids[2]]);
    let _: u64 = q(
        &mut con,
        &[
            "XACK", "s", "h", &ids[0], &ids[1], &ids[2], &ids[3], &ids[4],
        ],
    );

    let dry = ok(&server, &["--json", "trim", "s", "--acked", "--dry-run"]).json();
    assert_eq!(dry["removed"], 0, "{dry}");
    assert_eq!(dry["cut"], ids[0].as_str(), "{dry}");
    assert_eq!(ids_of(&mut con, "s"), ids, "a dry run changes nothing");

    let j = ok(&server, &["--json", "trim", "s", "--acked"]).json();
    let left = ids_of(&mut con, "s");
    let kind = ServerKind::current();
    match kind {
        // XTRIM … ACKED: the 1st and 3rd, also the one behind g's pending 2nd.
        ServerKind::Redis82 => {
            assert_eq!(j["method"], "xtrim-acked", "{kind}: {j}");
            assert_eq!(
                left,
                [
                    ids[1].clone(),
                    ids[3].clone(),
                    ids[4].clone(),
                    ids[5].clone()
                ],
                "{kind}"
            );
        }
        // The checked trim stops at g's oldest pending entry: only the 1st goes.
        ServerKind::Redis70 | ServerKind::Valkey91 => {
            assert_eq!(j["method"], "checked", "{kind}: {j}");
            assert_eq!(left, &ids[1..], "{kind}");
        }
    }
    assert_eq!(j["removed"], ids.len() - left.len(), "{j}");
    // Never an entry a group has not acknowledged: g's pending 2nd and 4th, h's pending 6th, the
    // 5th g was never delivered.
    for kept in [&ids[1], &ids[3], &ids[4], &ids[5]] {
        assert!(left.contains(kept), "{kind}: {kept} was removed");
    }

    // A stream without groups: nothing is acknowledged, so nothing goes (ACKED alone would take
    // everything).
    let _: String = q(&mut con, &["XADD", "lonely", "*", "n", "1"]);
    let r = run(&server, &["trim", "lonely", "--acked"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("no consumer group reads it"), "{r:?}");
    let n: u64 = q(&mut con, &["XLEN", "lonely"]);
    assert_eq!(n, 1);
}
