//! Runs the real `millrace` binary against throwaway redis-server processes, one per test, and
//! checks its output, its exit codes and what it changed in Redis.
// Helpers outside `#[test]` functions unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use millrace::dead_letter::META_FIELDS;
use millrace_testkit::{wait_until, RedisServer};
use redis::{Connection, Value};
use serde_json::Value as Json;

mod support;
use support::{finish, millrace, Run};

const WAIT: Duration = Duration::from_secs(10);

fn command(url: &str, args: &[&str]) -> Command {
    let mut cmd = millrace();
    cmd.arg("--redis").arg(url).args(args);
    cmd
}

fn run_url(url: &str, args: &[&str]) -> Run {
    finish(&mut command(url, args))
}

fn run(server: &RedisServer, args: &[&str]) -> Run {
    run_url(&server.url(), args)
}

#[track_caller]
fn ok(server: &RedisServer, args: &[&str]) -> Run {
    let r = run(server, args);
    assert_eq!(r.code, 0, "millrace {args:?}:\n{r:?}");
    r
}

#[track_caller]
fn fails(server: &RedisServer, args: &[&str], code: i32, message: &str) -> Run {
    let r = run(server, args);
    assert_eq!(r.code, code, "millrace {args:?}:\n{r:?}");
    assert!(
        r.stderr.contains(message),
        "millrace {args:?}: stderr lacks {message:?}:\n{r:?}"
    );
    r
}

fn start() -> (RedisServer, Connection) {
    let server = RedisServer::start();
    let con = server.client().get_connection().unwrap();
    (server, con)
}

fn xadd(con: &mut Connection, stream: &str, fields: &[(&[u8], &[u8])]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query(con).unwrap()
}

fn xadd_n(con: &mut Connection, stream: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| xadd(con, stream, &[(b"n", i.to_string().as_bytes())]))
        .collect()
}

fn q<T: redis::FromRedisValue>(con: &mut Connection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con).unwrap()
}

fn group(con: &mut Connection, stream: &str, group: &str, start: &str) {
    let _: () = q(con, &["XGROUP", "CREATE", stream, group, start, "MKSTREAM"]);
}

/// Reads up to `count` new entries as `consumer` (they become pending).
fn read(con: &mut Connection, stream: &str, group: &str, consumer: &str, count: usize) {
    let _: Value = q(
        con,
        &[
            "XREADGROUP",
            "GROUP",
            group,
            consumer,
            "COUNT",
            &count.to_string(),
            "STREAMS",
            stream,
            ">",
        ],
    );
}

fn xlen(con: &mut Connection, stream: &str) -> u64 {
    q(con, &["XLEN", stream])
}

/// The pending ids of a group, with their consumers and delivery counts.
fn pel(con: &mut Connection, stream: &str, g: &str) -> Vec<(String, String, u64)> {
    let rows: Vec<(String, String, u64, u64)> = q(con, &["XPENDING", stream, g, "-", "+", "1000"]);
    rows.into_iter().map(|(id, c, _, n)| (id, c, n)).collect()
}

fn consumer_names(con: &mut Connection, stream: &str, g: &str) -> Vec<String> {
    let v: Value = q(con, &["XINFO", "CONSUMERS", stream, g]);
    let Value::Array(rows) = v else { return vec![] };
    rows.into_iter()
        .filter_map(|row| {
            let fields: Vec<Value> = match row {
                Value::Array(a) => a,
                _ => return None,
            };
            let i = fields
                .iter()
                .position(|f| matches!(f, Value::BulkString(b) if b == b"name"))?;
            redis::from_redis_value(fields[i + 1].clone()).ok()
        })
        .collect()
}

fn consumer_idle_ms(con: &mut Connection, stream: &str, g: &str, consumer: &str) -> u64 {
    let v: Vec<Vec<Value>> = q(con, &["XINFO", "CONSUMERS", stream, g]);
    for fields in v {
        let get = |name: &[u8]| {
            let i = fields
                .iter()
                .position(|f| matches!(f, Value::BulkString(b) if b == name))?;
            Some(fields[i + 1].clone())
        };
        let is_it = get(b"name")
            .and_then(|n| redis::from_redis_value::<String>(n).ok())
            .is_some_and(|n| n == consumer);
        if is_it {
            return get(b"idle")
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or(0);
        }
    }
    panic!("no consumer {consumer}");
}

/// Adds a dead letter in millrace's format to `dlq` and returns its id.
fn dead_letter(
    con: &mut Connection,
    dlq: &str,
    source: &str,
    source_id: &str,
    reason: &str,
    fields: &[(&[u8], &[u8])],
) -> String {
    let meta: [&str; 7] = [
        source,
        source_id,
        "workers",
        "worker-1",
        "5",
        reason,
        "1700000000000",
    ];
    let mut all: Vec<(&[u8], &[u8])> = META_FIELDS
        .iter()
        .zip(meta.iter())
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    all.extend_from_slice(fields);
    xadd(con, dlq, &all)
}

fn wait_for_exit(child: &mut Child) -> Run {
    wait_until(WAIT, "millrace to exit", || {
        child.try_wait().unwrap().is_some()
    });
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout).unwrap();
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).unwrap();
    }
    Run {
        code: child.wait().unwrap().code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

fn blocked_clients(con: &mut Connection) -> u64 {
    let info: String = q(con, &["INFO", "clients"]);
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn streams_lists_only_streams_with_length_ids_and_groups() {
    let (server, mut con) = start();
    let ids = xadd_n(&mut con, "orders", 3);
    group(&mut con, "orders", "workers", "0");
    xadd_n(&mut con, "payments", 1);
    let _: () = q(&mut con, &["SET", "a-string", "x"]);

    let r = ok(&server, &["streams"]);
    assert!(
        r.stdout.contains("orders") && r.stdout.contains("payments"),
        "{r:?}"
    );
    assert!(!r.stdout.contains("a-string"), "{r:?}");
    assert!(
        r.stdout.contains(&ids[0]) && r.stdout.contains(&ids[2]),
        "{r:?}"
    );

    let j = ok(&server, &["--json", "streams", "ord*"]).json();
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["stream"], "orders");
    assert_eq!(rows[0]["length"], 3);
    assert_eq!(rows[0]["groups"], 1);
    assert_eq!(rows[0]["first_id"], ids[0].as_str());
    assert_eq!(rows[0]["last_id"], ids[2].as_str());

    let r = ok(&server, &["streams", "nothing*"]);
    assert!(r.stdout.contains("no streams match"), "{r:?}");
}

#[test]
fn groups_consumers_and_pending_show_the_group_state() {
    let (server, mut con) = start();
    let ids = xadd_n(&mut con, "orders", 5);
    group(&mut con, "orders", "workers", "0");
    read(&mut con, "orders", "workers", "w1", 2);
    read(&mut con, "orders", "workers", "w2", 1);

    let r = ok(&server, &["groups", "orders"]);
    assert!(
        r.stdout.contains("LAG") && r.stdout.contains("workers"),
        "{r:?}"
    );
    let j = ok(&server, &["--json", "groups", "orders"]).json();
    assert_eq!(j[0]["group"], "workers");
    assert_eq!(j[0]["consumers"], 2);
    assert_eq!(j[0]["pending"], 3);
    assert_eq!(j[0]["last_delivered_id"], ids[2].as_str());
    assert_eq!(j[0]["entries_read"], 3);
    assert_eq!(j[0]["lag"], 2);

    // After deleting an entry the group has not read, Redis cannot tell the lag: "?" / null.
    let _: u64 = q(&mut con, &["XDEL", "orders", &ids[4]]);
    let j = ok(&server, &["--json", "groups", "orders"]).json();
    assert!(j[0]["lag"].is_null(), "{j}");
    let r = ok(&server, &["groups", "orders"]);
    let row = r.stdout.lines().find(|l| l.starts_with("workers")).unwrap();
    assert!(row.trim_end().ends_with('?'), "{r:?}");

    let j = ok(&server, &["--json", "consumers", "orders", "workers"]).json();
    let pending: Vec<(String, u64)> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["consumer"].as_str().unwrap().to_owned(),
                c["pending"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pending, vec![("w1".to_owned(), 2), ("w2".to_owned(), 1)]);
    assert!(j[0]["idle_ms"].is_u64());
    let r = ok(&server, &["consumers", "orders", "workers"]);
    assert!(
        r.stdout.contains("IDLE") && r.stdout.contains("w2"),
        "{r:?}"
    );

    let j = ok(&server, &["--json", "pending", "orders", "workers"]).json();
    assert_eq!(j["total"], 3);
    let entries = j["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["id"], ids[0].as_str());
    assert_eq!(entries[0]["consumer"], "w1");
    assert_eq!(entries[0]["deliveries"], 1);

    let j = ok(
        &server,
        &["--json", "pending", "orders", "workers", "--consumer", "w2"],
    )
    .json();
    assert_eq!(j["total"], 1);
    assert_eq!(j["entries"][0]["id"], ids[2].as_str());
    let j = ok(
        &server,
        &["--json", "pending", "orders", "workers", "--limit", "1"],
    )
    .json();
    assert_eq!(j["entries"].as_array().unwrap().len(), 1);
    let r = ok(&server, &["pending", "orders", "workers", "--idle", "1h"]);
    assert!(
        r.stdout.contains("no pending entries idle for at least 1h"),
        "{r:?}"
    );
    let r = ok(&server, &["pending", "orders", "workers"]);
    assert!(r.stdout.contains("3 shown, 3 pending"), "{r:?}");
}

#[test]
fn missing_streams_groups_and_wrong_key_types_fail_with_clear_errors() {
    let (server, mut con) = start();
    xadd_n(&mut con, "orders", 1);
    group(&mut con, "orders", "workers", "0");
    let _: () = q(&mut con, &["SET", "a-string", "x"]);
    let _: () = q(&mut con, &["HSET", "a-hash", "f", "v"]);

    fails(&server, &["groups", "nope"], 1, "no such stream `nope`");
    fails(
        &server,
        &["groups", "a-string"],
        1,
        "key `a-string` is a string, not a stream",
    );
    fails(
        &server,
        &["consumers", "a-hash", "g"],
        1,
        "key `a-hash` is a hash, not a stream",
    );
    fails(
        &server,
        &["consumers", "orders", "nogroup"],
        1,
        "group `nogroup` does not exist on stream `orders`",
    );
    fails(
        &server,
        &["pending", "orders", "nogroup"],
        1,
        "group `nogroup` does not exist",
    );
    fails(
        &server,
        &["pending", "nope", "workers"],
        1,
        "no such stream `nope`",
    );
    fails(
        &server,
        &["trim", "a-string", "--maxlen", "1"],
        1,
        "is a string, not a stream",
    );
    fails(
        &server,
        &["reap", "orders", "nogroup", "--idle", "1h"],
        1,
        "group `nogroup` does not exist",
    );
    fails(
        &server,
        &[
            "tail",
            "orders",
            "--group",
            "nogroup",
            "--consumer",
            "c",
            "--count",
            "1",
        ],
        1,
        "group `nogroup` does not exist",
    );
    fails(
        &server,
        &["tail", "a-string", "--count", "1"],
        1,
        "is a string, not a stream",
    );
    fails(
        &server,
        &["dlq", "list", "nope"],
        1,
        "no such stream `nope` (and no dead-letter stream `nope:dlq`)",
    );
    fails(
        &server,
        &["dlq", "list", "orders", "--dlq", "a-string"],
        1,
        "key `a-string` is a string, not a stream",
    );
    // A stream without a dead-letter stream simply has no dead letters.
    let r = ok(&server, &["dlq", "list", "orders"]);
    assert!(r.stdout.contains("no dead letters"), "{r:?}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let (server, mut con) = start();
    xadd_n(&mut con, "orders", 1);
    group(&mut con, "orders", "workers", "0");
    fails(
        &server,
        &["pending", "orders", "workers", "--idle", "5"],
        2,
        "--idle",
    );
    fails(
        &server,
        &["pending", "orders", "workers", "--idle", "soon"],
        2,
        "expected a duration with a unit",
    );
    fails(
        &server,
        &["reap", "orders", "workers", "--idle", "1 fortnight"],
        2,
        "--idle",
    );
    fails(
        &server,
        &["top", "--once", "--interval", "0s"],
        2,
        "at least 100ms",
    );
    fails(
        &server,
        &["trim", "orders", "--minid", "abc"],
        2,
        "is not a stream entry id",
    );
    fails(&server, &["trim", "orders"], 2, "--maxlen");
    fails(
        &server,
        &["trim", "orders", "--maxlen", "1", "--minid", "1-0"],
        2,
        "cannot be used with",
    );
    fails(
        &server,
        &["tail", "orders", "--group", "workers"],
        2,
        "--consumer",
    );
    fails(
        &server,
        &["dlq", "show", "orders", "not-an-id"],
        2,
        "is not a stream entry id",
    );
    fails(&server, &["frobnicate"], 2, "unrecognized subcommand");
}

#[test]
fn redis_cluster_pointed_at_one_server_says_it_is_not_a_cluster() {
    let server = RedisServer::start();
    let out = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_URLS")
        .args(["--redis-cluster", &server.url(), "streams"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("is not a Redis Cluster"), "{r:?}");
    assert!(r.stderr.contains("--redis "), "{r:?}");

    let r = finish(millrace().args([
        "--redis-cluster",
        "redis://:s3cret@127.0.0.1:1,redis://u:s3cret@127.0.0.1:2",
        "streams",
    ]));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("cannot connect to any node"), "{r:?}");
    assert!(!r.stderr.contains("s3cret"), "{r:?}");
}

#[test]
fn connection_errors_never_show_the_password() {
    let sentinel = "S3ntinel-PW-4711";
    // Nothing listens on a just-freed port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://:{sentinel}@127.0.0.1:{port}");
    let r = run_url(&url, &["streams"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("cannot connect to Redis at redis://:***@127.0.0.1"),
        "{r:?}"
    );
    assert!(!format!("{r:?}").contains(sentinel), "{r:?}");

    let server = RedisServer::builder().password(sentinel).start();
    let wrong = format!("redis://:wrong-{sentinel}@127.0.0.1:{}", server.port());
    let r = run_url(&wrong, &["streams"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("authentication failed"), "{r:?}");
    assert!(!format!("{r:?}").contains(sentinel), "{r:?}");

    let r = run_url(&server.url_without_password(), &["streams"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("authentication failed"), "{r:?}");

    // REDIS_URL works, and --help does not print its value.
    let out = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .env("REDIS_URL", server.url())
        .arg("streams")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .env("REDIS_URL", server.url())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(sentinel));
}

#[test]
fn trim_refuses_without_force_when_a_group_would_lose_entries() {
    let (server, mut con) = start();
    let ids = xadd_n(&mut con, "orders", 10);
    group(&mut con, "orders", "workers", "0");
    read(&mut con, "orders", "workers", "w1", 5); // 0..5 pending, 5..10 not delivered

    // The two oldest entries are pending in `workers`.
    let r = fails(
        &server,
        &["trim", "orders", "--maxlen", "8"],
        3,
        "re-run with --force",
    );
    assert!(r.stdout.contains("would remove 2 of 10 entries"), "{r:?}");
    assert!(r.stdout.contains("workers"), "{r:?}");
    assert_eq!(xlen(&mut con, "orders"), 10);
    let j = run(
        &server,
        &["--json", "trim", "orders", "--maxlen", "8", "--dry-run"],
    );
    assert_eq!(j.code, 3, "{j:?}");
    let j = j.json();
    assert_eq!(j["remove"], 2);
    assert_eq!(j["refused"], true);
    assert_eq!(j["unsafe_groups"][0]["pending"], 2);
    assert_eq!(j["unsafe_groups"][0]["undelivered"], 0);
    assert_eq!(j["unsafe_groups"][0]["oldest_pending"], ids[0].as_str());

    // Acknowledge everything delivered: entries after the last-delivered id still block a trim.
    let mut ack = vec!["XACK", "orders", "workers"];
    ack.extend(ids[..5].iter().map(String::as_str));
    let _: u64 = q(&mut con, &ack);
    let j = run(&server, &["--json", "trim", "orders", "--maxlen", "2"]);
    assert_eq!(j.code, 3, "{j:?}");
    let j = j.json();
    assert_eq!(j["remove"], 8);
    assert_eq!(j["unsafe_groups"][0]["undelivered"], 3);
    assert_eq!(j["unsafe_groups"][0]["pending"], 0);
    assert_eq!(xlen(&mut con, "orders"), 10);

    // Everything up to the cut is delivered and acknowledged: the trim goes ahead.
    let r = ok(&server, &["trim", "orders", "--maxlen", "5"]);
    assert!(r.stdout.contains("trimmed 5 entries"), "{r:?}");
    assert_eq!(xlen(&mut con, "orders"), 5);
    // --minid removes the entries below the id.
    let r = run(
        &server,
        &["trim", "orders", "--minid", &ids[7], "--dry-run"],
    );
    assert_eq!(r.code, 3, "{r:?}");
    read(&mut con, "orders", "workers", "w1", 10);
    let mut ack = vec!["XACK", "orders", "workers"];
    ack.extend(ids[5..].iter().map(String::as_str));
    let _: u64 = q(&mut con, &ack);
    let j = ok(&server, &["--json", "trim", "orders", "--minid", &ids[7]]).json();
    assert_eq!(j["removed"], 2);
    assert_eq!(xlen(&mut con, "orders"), 3);
    let r = ok(&server, &["trim", "orders", "--maxlen", "100"]);
    assert!(r.stdout.contains("nothing to trim"), "{r:?}");

    // --force trims entries a group still needs, and says so.
    xadd_n(&mut con, "orders", 2);
    read(&mut con, "orders", "workers", "w1", 1);
    let r = ok(&server, &["trim", "orders", "--maxlen", "0", "--force"]);
    assert!(r.stdout.contains("--force given"), "{r:?}");
    assert!(r.stdout.contains("trimmed 5 entries"), "{r:?}");
    assert_eq!(xlen(&mut con, "orders"), 0);
}

#[test]
fn reap_claims_pending_entries_first_and_never_drops_them() {
    let (server, mut con) = start();
    xadd_n(&mut con, "orders", 6);
    group(&mut con, "orders", "workers", "0");
    read(&mut con, "orders", "workers", "dead", 3);
    let _: () = q(
        &mut con,
        &["XGROUP", "CREATECONSUMER", "orders", "workers", "empty"],
    );
    let before = pel(&mut con, "orders", "workers");
    assert_eq!(before.len(), 3);
    // Idle for 2 s, so that `alive`, touched just before the reap, is far from the threshold
    // even on a loaded machine.
    wait_until(WAIT, "the dead consumers to be idle for 2s", || {
        consumer_idle_ms(&mut con, "orders", "workers", "dead") >= 2000
            && consumer_idle_ms(&mut con, "orders", "workers", "empty") >= 2000
    });
    read(&mut con, "orders", "workers", "alive", 2); // active: must be left alone

    let j = ok(
        &server,
        &[
            "--json",
            "reap",
            "orders",
            "workers",
            "--idle",
            "2s",
            "--dry-run",
        ],
    )
    .json();
    assert_eq!(j["consumers"].as_array().unwrap().len(), 2, "{j}");
    assert_eq!(consumer_names(&mut con, "orders", "workers").len(), 3);

    let j = ok(
        &server,
        &["--json", "reap", "orders", "workers", "--idle", "2s"],
    )
    .json();
    let rows = j["consumers"].as_array().unwrap();
    let dead = rows.iter().find(|r| r["consumer"] == "dead").unwrap();
    assert_eq!(dead["claimed"], 3);
    assert_eq!(dead["deleted"], true);
    let empty = rows.iter().find(|r| r["consumer"] == "empty").unwrap();
    assert_eq!(empty["deleted"], true);
    assert!(rows.iter().all(|r| r["consumer"] != "alive"));

    let mut names = consumer_names(&mut con, "orders", "workers");
    names.sort();
    assert_eq!(names, vec!["alive", "millrace-reaper"]);
    // Every entry the dead consumer held is still pending, now for the reaper, with its delivery
    // count unchanged.
    let after = pel(&mut con, "orders", "workers");
    assert_eq!(after.len(), 5);
    for (id, _, deliveries) in &before {
        let moved = after.iter().find(|(i, _, _)| i == id).unwrap();
        assert_eq!(moved.1, "millrace-reaper");
        assert_eq!(moved.2, *deliveries);
    }

    // The reaper itself is never reaped.
    let r = ok(&server, &["reap", "orders", "workers", "--idle", "1h"]);
    assert!(r.stdout.contains("no consumer"), "{r:?}");
}

#[test]
fn reap_deletes_nothing_when_claiming_is_not_permitted() {
    let (server, mut con) = start();
    xadd_n(&mut con, "orders", 2);
    group(&mut con, "orders", "workers", "0");
    read(&mut con, "orders", "workers", "dead", 2);
    let _: () = q(
        &mut con,
        &[
            "ACL",
            "SETUSER",
            "ops",
            "on",
            ">ops-S3cret",
            "~*",
            "+@all",
            "-xclaim",
        ],
    );
    let url = format!("redis://ops:ops-S3cret@127.0.0.1:{}", server.port());
    let r = run_url(&url, &["reap", "orders", "workers", "--idle", "0s"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("permission denied"), "{r:?}");
    assert!(!format!("{r:?}").contains("ops-S3cret"), "{r:?}");
    assert_eq!(consumer_names(&mut con, "orders", "workers"), vec!["dead"]);
    assert_eq!(pel(&mut con, "orders", "workers").len(), 2);
}

#[test]
fn dlq_list_show_and_replay_round_trip_binary_fields() {
    let (server, mut con) = start();
    xadd_n(&mut con, "orders", 1);
    group(&mut con, "orders", "workers", "$");
    let binary: (&[u8], &[u8]) = (b"\xff\xfename", b"v\x00\x01 \xc3");
    let d1 = dead_letter(
        &mut con,
        "orders:dlq",
        "orders",
        "1-1",
        "handler timeout after 30s",
        &[binary, (b"order_id", b"42")],
    );
    let d2 = dead_letter(
        &mut con,
        "orders:dlq",
        "orders",
        "1-2",
        "bad json: expected `,`",
        &[(b"raw", b"{oops")],
    );
    let d3 = dead_letter(
        &mut con,
        "orders:dlq",
        "orders",
        "1-3",
        "entry was deleted",
        &[],
    );
    let other = dead_letter(
        &mut con,
        "orders:dlq",
        "payments",
        "9-9",
        "timeout",
        &[(b"x", b"y")],
    );

    let r = ok(&server, &["dlq", "list", "orders"]);
    assert!(
        r.stdout.contains(&d1) && r.stdout.contains("handler timeout"),
        "{r:?}"
    );
    assert!(!r.stdout.contains(&other), "{r:?}");
    assert!(
        r.stderr
            .contains("1 entry of `orders:dlq` belong to other streams"),
        "{r:?}"
    );
    let j = ok(&server, &["--json", "dlq", "list", "orders"]).json();
    assert_eq!(j.as_array().unwrap().len(), 3);
    assert_eq!(j[0]["source_id"], "1-1");
    assert_eq!(j[0]["group"], "workers");
    assert_eq!(j[0]["deliveries"], 5);
    assert_eq!(j[0]["field_count"], 2);

    let r = ok(&server, &["dlq", "show", "orders", &d1]);
    assert!(
        r.stdout
            .contains("\\xff\\xfename = \"v\\u{0}\\u{1} \\xc3\""),
        "{r:?}"
    );
    assert!(r.stdout.contains("handler timeout after 30s"), "{r:?}");
    let j = ok(&server, &["--json", "dlq", "show", "orders", &d1]).json();
    assert_eq!(j["fields"][0][0]["hex"], "fffe6e616d65");
    assert_eq!(j["fields"][0][1]["hex"], "760001 20c3".replace(' ', ""));
    assert_eq!(j["fields"][1][1], "42");
    fails(
        &server,
        &["dlq", "show", "orders", "5-5"],
        1,
        "no dead letter `5-5` in `orders:dlq`",
    );

    // A dry run changes nothing.
    let j = ok(
        &server,
        &[
            "--json",
            "dlq",
            "replay",
            "orders",
            "--filter-reason",
            "timeout",
            "--dry-run",
        ],
    )
    .json();
    assert_eq!(j["replayed"].as_array().unwrap().len(), 1);
    assert_eq!(j["replayed"][0]["dlq_id"], d1.as_str());
    assert_eq!(xlen(&mut con, "orders:dlq"), 4);
    assert_eq!(xlen(&mut con, "orders"), 1);

    let j = ok(
        &server,
        &[
            "--json",
            "dlq",
            "replay",
            "orders",
            "--filter-reason",
            "timeout",
        ],
    )
    .json();
    let new_id = j["replayed"][0]["new_id"].as_str().unwrap().to_owned();
    assert_eq!(xlen(&mut con, "orders:dlq"), 3);
    // The original fields are back in the source stream, byte for byte, in order.
    let v: Value = q(&mut con, &["XRANGE", "orders", &new_id, &new_id]);
    let back = millrace::streams::reply::parse_entries(v);
    let millrace::streams::ReadItem::Entry(entry) = &back[0] else {
        panic!("{back:?}")
    };
    assert_eq!(
        entry.fields,
        vec![
            (binary.0.to_vec(), binary.1.to_vec()),
            (b"order_id".to_vec(), b"42".to_vec())
        ]
    );
    // The group receives it as a new entry.
    let j = ok(&server, &["--json", "groups", "orders"]).json();
    assert_eq!(j[0]["lag"], 1);

    // A dead letter without original fields cannot be replayed; naming it is an error.
    let r = fails(
        &server,
        &["dlq", "replay", "orders", "--id", &d3],
        1,
        "could not be replayed",
    );
    assert!(r.stdout.contains("has no original fields"), "{r:?}");
    fails(
        &server,
        &["dlq", "replay", "orders", "--id", "5-5"],
        1,
        "no dead letter `5-5`",
    );

    // Replaying the rest moves d2, skips d3 and leaves the other stream's dead letter alone.
    let r = ok(&server, &["dlq", "replay", "orders"]);
    assert!(r.stdout.contains("replayed 1 dead letter "), "{r:?}");
    assert!(
        r.stdout.contains(&d2) && r.stdout.contains(&format!("skipped {d3}")),
        "{r:?}"
    );
    assert_eq!(xlen(&mut con, "orders:dlq"), 2);
    assert_eq!(xlen(&mut con, "orders"), 3);

    // Replaying into a stream that does not exist would create it without groups: refused.
    dead_letter(&mut con, "gone:dlq", "gone", "1-1", "x", &[(b"a", b"b")]);
    fails(
        &server,
        &["dlq", "replay", "gone"],
        1,
        "no such stream `gone`",
    );
    assert_eq!(xlen(&mut con, "gone:dlq"), 1);
}

#[test]
fn dlq_purge_needs_yes_without_a_terminal() {
    let (server, mut con) = start();
    xadd_n(&mut con, "orders", 1);
    let a = dead_letter(
        &mut con,
        "orders:dlq",
        "orders",
        "1-1",
        "boom",
        &[(b"f", b"1")],
    );
    let b = dead_letter(
        &mut con,
        "orders:dlq",
        "orders",
        "1-2",
        "bang",
        &[(b"f", b"2")],
    );
    let other = dead_letter(
        &mut con,
        "orders:dlq",
        "payments",
        "1-3",
        "boom",
        &[(b"f", b"3")],
    );

    // stdin is not a terminal here: no way to confirm, so refuse.
    let r = fails(&server, &["dlq", "purge", "orders"], 3, "--yes");
    assert!(r.stderr.contains("will not delete 2 dead letters"), "{r:?}");
    assert_eq!(xlen(&mut con, "orders:dlq"), 3);
    let r = ok(&server, &["dlq", "purge", "orders", "--dry-run"]);
    assert!(
        r.stdout.contains("would delete 2") && r.stdout.contains(&a),
        "{r:?}"
    );
    assert_eq!(xlen(&mut con, "orders:dlq"), 3);

    let j = ok(
        &server,
        &["--json", "dlq", "purge", "orders", "--id", &b, "--yes"],
    )
    .json();
    assert_eq!(j["deleted"], 1);
    assert_eq!(xlen(&mut con, "orders:dlq"), 2);
    let r = ok(&server, &["dlq", "purge", "orders", "--yes"]);
    assert!(r.stdout.contains("deleted 1 dead letter "), "{r:?}");
    assert!(r.stdout.contains("were kept"), "{r:?}");
    let left: Vec<(String, Vec<(String, String)>)> =
        q(&mut con, &["XRANGE", "orders:dlq", "-", "+"]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, other);
    fails(
        &server,
        &["dlq", "purge", "orders", "--id", "7-7", "--yes"],
        1,
        "no dead letter `7-7`",
    );
}

#[test]
fn tail_follows_new_entries_and_stops_after_count() {
    let (server, mut con) = start();
    xadd_n(&mut con, "events", 2); // old entries are not shown
    let mut child = command(&server.url(), &["tail", "events", "--count", "2"])
        .spawn()
        .unwrap();
    wait_until(WAIT, "tail to block in XREAD", || {
        blocked_clients(&mut con) >= 1
    });
    let id1 = xadd(
        &mut con,
        "events",
        &[(b"user", b"ada"), (b"note", b"hello world")],
    );
    let id2 = xadd(&mut con, "events", &[(b"\xff", b"caf\xc3\xa9\n")]);
    let r = wait_for_exit(&mut child);
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("{id1} user=ada note=\"hello world\""),
            format!("{id2} \\xff=café\\n")
        ]
    );

    // --json prints one object per line.
    let mut child = command(&server.url(), &["--json", "tail", "events", "--count", "1"])
        .spawn()
        .unwrap();
    wait_until(WAIT, "tail to block in XREAD", || {
        blocked_clients(&mut con) >= 1
    });
    let id3 = xadd(&mut con, "events", &[(b"k", b"v")]);
    let r = wait_for_exit(&mut child);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["id"], id3.as_str());
    assert_eq!(j["fields"], serde_json::json!([["k", "v"]]));
}

#[test]
fn tail_as_a_group_consumer_leaves_entries_pending_unless_ack() {
    let (server, mut con) = start();
    group(&mut con, "events", "debug", "0");
    let ids = xadd_n(&mut con, "events", 3);
    let r = ok(
        &server,
        &[
            "tail",
            "events",
            "--group",
            "debug",
            "--consumer",
            "me",
            "--count",
            "2",
        ],
    );
    assert_eq!(r.stdout.lines().count(), 2, "{r:?}");
    assert!(r.stdout.starts_with(&format!("{} n=0", ids[0])), "{r:?}");
    assert_eq!(pel(&mut con, "events", "debug").len(), 2);
    let r = ok(
        &server,
        &[
            "tail",
            "events",
            "--group",
            "debug",
            "--consumer",
            "me",
            "--count",
            "1",
            "--ack",
        ],
    );
    assert!(r.stdout.starts_with(&ids[2]), "{r:?}");
    assert_eq!(pel(&mut con, "events", "debug").len(), 2);
}

#[test]
fn top_once_prints_streams_groups_and_rates() {
    let (server, mut con) = start();
    xadd_n(&mut con, "orders", 4);
    group(&mut con, "orders", "workers", "0");
    read(&mut con, "orders", "workers", "w1", 1);
    xadd_n(&mut con, "quiet", 1);

    let j = ok(&server, &["--json", "top", "--once", "--interval", "100ms"]).json();
    let streams = j["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2);
    let orders = &streams[0];
    assert_eq!(orders["stream"], "orders");
    assert_eq!(orders["length"], 4);
    assert!(orders["added_per_sec"].is_f64(), "{j}");
    assert_eq!(orders["groups"][0]["group"], "workers");
    assert_eq!(orders["groups"][0]["pending"], 1);
    assert_eq!(orders["groups"][0]["lag"], 3);
    assert!(orders["groups"][0]["read_per_sec"].is_f64(), "{j}");
    assert!(streams[1]["groups"].as_array().unwrap().is_empty());

    let r = ok(&server, &["top", "--once", "--interval", "100ms"]);
    assert!(
        !r.stdout.contains('\x1b'),
        "no screen control codes in a snapshot: {r:?}"
    );
    assert!(
        r.stdout.contains("READ/S") && r.stdout.contains("workers"),
        "{r:?}"
    );
}

#[test]
fn top_with_a_pattern_names_keys_of_other_types_and_shows_one_group() {
    let (server, mut con) = start();
    for stream in ["tenant:1:events", "tenant:2:events", "tenant:3:events"] {
        xadd_n(&mut con, stream, 1);
    }
    group(&mut con, "tenant:1:events", "billing", "0");
    group(&mut con, "tenant:2:events", "billing", "0");
    group(&mut con, "tenant:2:events", "audit", "0");
    let _: () = q(&mut con, &["HSET", "tenant:h:events", "f", "v"]);
    xadd_n(&mut con, "orders", 1);

    let args = [
        "--json",
        "top",
        "tenant:*:events",
        "--group",
        "billing",
        "--once",
        "--interval",
        "100ms",
    ];
    let j = ok(&server, &args).json();
    assert_eq!(j["pattern"]["pattern"], "tenant:*:events", "{j}");
    assert_eq!(j["pattern"]["streams"], 3, "{j}");
    assert_eq!(j["pattern"]["group"], "billing", "{j}");
    assert_eq!(j["pattern"]["streams_with_group"], 2, "{j}");
    assert_eq!(j["pattern"]["skipped"][0]["key"], "tenant:h:events", "{j}");
    assert_eq!(j["pattern"]["skipped"][0]["type"], "hash", "{j}");
    let streams = j["streams"].as_array().unwrap();
    let groups_of = |i: usize| -> Vec<String> {
        let groups = streams[i]["groups"].as_array().unwrap();
        groups
            .iter()
            .map(|g| g["group"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(streams.len(), 3, "{j}");
    assert_eq!(groups_of(1), ["billing"], "audit is left out: {j}");
    assert!(groups_of(2).is_empty(), "{j}");

    let r = ok(&server, &args[1..]);
    assert!(
        r.stdout.contains(
            "`tenant:*:events`: 3 streams, 2 with group `billing`; 1 key of another type skipped: tenant:h:events (hash)"
        ),
        "{r:?}"
    );
    // Without a pattern nothing but streams is looked at, and there is no header.
    let j = ok(&server, &["--json", "top", "--once", "--interval", "100ms"]).json();
    assert!(j.get("pattern").is_none(), "{j}");
    assert_eq!(j["streams"].as_array().unwrap().len(), 4, "{j}");
}

/// Sends SIGINT, as Ctrl-C does.
fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Reads stdout lines of a running child on a thread, so a test can wait for them with a timeout.
fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn tail_and_top_end_with_exit_130_on_ctrl_c() {
    let (server, mut con) = start();
    group(&mut con, "events", "workers", "$");
    let mut tail = command(&server.url(), &["tail", "events"]).spawn().unwrap();
    let tail_lines = lines_of(&mut tail);
    wait_until(WAIT, "tail to block in XREAD", || {
        blocked_clients(&mut con) >= 1
    });
    let id = xadd(&mut con, "events", &[(b"k", b"v")]);
    assert_eq!(tail_lines.recv_timeout(WAIT).unwrap(), format!("{id} k=v"));
    interrupt(&tail);
    let r = wait_for_exit(&mut tail);
    assert_eq!(
        r.code, 130,
        "the shell's code for an interrupted command: {r:?}"
    );
    assert!(r.stderr.is_empty(), "{r:?}");

    let mut top = command(&server.url(), &["--json", "top", "--interval", "100ms"])
        .spawn()
        .unwrap();
    let top_lines = lines_of(&mut top);
    let first: Json = serde_json::from_str(&top_lines.recv_timeout(WAIT).unwrap()).unwrap();
    assert!(
        first["streams"][0]["added_per_sec"].is_null(),
        "no rate before a second sample"
    );
    xadd_n(&mut con, "events", 5);
    let second: Json = serde_json::from_str(&top_lines.recv_timeout(WAIT).unwrap()).unwrap();
    assert!(second["streams"][0]["added_per_sec"].is_f64(), "{second}");
    interrupt(&top);
    let r = wait_for_exit(&mut top);
    assert_eq!(r.code, 130, "{r:?}");
}

#[test]
fn dlq_replay_of_an_entry_with_thousands_of_fields() {
    let (server, mut con) = start();
    group(&mut con, "orders", "workers", "$");
    let names: Vec<String> = (0..5_000).map(|i| format!("f{i}")).collect();
    let values: Vec<String> = (0..5_000).map(|i| i.to_string()).collect();
    let fields: Vec<(&[u8], &[u8])> = names
        .iter()
        .zip(&values)
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    let d = dead_letter(
        &mut con,
        "orders:dlq",
        "orders",
        "1-1",
        "too big to decode",
        &fields,
    );
    let j = ok(&server, &["--json", "dlq", "replay", "orders", "--id", &d]).json();
    assert_eq!(j["replayed"].as_array().unwrap().len(), 1, "{j}");
    assert_eq!(xlen(&mut con, "orders:dlq"), 0);
    let back: Vec<(String, Vec<(String, String)>)> = q(&mut con, &["XRANGE", "orders", "-", "+"]);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].1.len(), 5_000, "every field back");
    assert_eq!(back[0].1[4_999], ("f4999".to_owned(), "4999".to_owned()));
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish_without_redis() {
    // Nothing listens on port 1: completions never connect.
    let url = "redis://127.0.0.1:1";
    let bash = run_url(url, &["completions", "bash"]);
    assert_eq!(bash.code, 0, "{bash:?}");
    assert!(bash.stdout.contains("_millrace()"), "{bash:?}");
    assert!(
        bash.stdout.contains("dlq"),
        "subcommands are completed: {bash:?}"
    );
    let zsh = run_url(url, &["completions", "zsh"]);
    assert!(zsh.stdout.starts_with("#compdef millrace"), "{zsh:?}");
    let fish = run_url(url, &["completions", "fish"]);
    assert!(fish.stdout.contains("complete -c millrace"), "{fish:?}");
    let r = run_url(url, &["completions", "tcsh"]);
    assert_eq!(r.code, 2, "{r:?}");
}

#[test]
fn every_subcommand_shows_the_global_options_under_their_own_heading() {
    let url = "redis://127.0.0.1:1";
    for args in [
        &["streams", "--help"][..],
        &["dlq", "replay", "--help"],
        &["top", "--help"],
        &["tail", "--help"],
    ] {
        let r = run_url(url, args);
        assert_eq!(r.code, 0, "{r:?}");
        let global = r
            .stdout
            .split_once("Global options:")
            .unwrap_or_else(|| panic!("no global heading in {args:?}: {r:?}"))
            .1;
        for option in ["--redis", "--json", "--tls-ca-cert"] {
            assert!(global.contains(option), "{option} in {args:?}: {r:?}");
        }
        let own = r.stdout.split_once("Global options:").unwrap().0;
        assert!(!own.contains("--redis <URL>"), "{args:?}: {r:?}");
    }
}

#[test]
fn trim_minid_zero_has_nothing_to_trim() {
    let (server, mut con) = start();
    xadd_n(&mut con, "orders", 3);
    for minid in ["0", "0-0"] {
        let r = ok(&server, &["trim", "orders", "--minid", minid]);
        assert!(r.stdout.contains("nothing to trim"), "{r:?}");
        let j = ok(&server, &["--json", "trim", "orders", "--minid", minid]).json();
        assert_eq!(j["remove"], 0, "{j}");
    }
    assert_eq!(xlen(&mut con, "orders"), 3);
}

#[test]
fn names_that_are_not_utf8_are_addressed_as_the_output_shows_them() {
    let (server, mut con) = start();
    let name: &[u8] = b"\xffcart\\1";
    let _: String = redis::cmd("XADD")
        .arg(name)
        .arg("*")
        .arg("k")
        .arg("v")
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(name)
        .arg("workers")
        .arg("0")
        .query(&mut con)
        .unwrap();
    let shown = r"\xffcart\\1";
    let r = ok(&server, &["streams"]);
    assert!(r.stdout.contains(shown), "{r:?}");
    let r = ok(&server, &["groups", shown]);
    assert!(r.stdout.contains("workers"), "{r:?}");
    let j = ok(&server, &["--json", "pending", shown, "workers"]).json();
    assert_eq!(j["total"], 0, "{j}");
    assert_eq!(j["stream"]["hex"], "ff636172745c31", "{j}");
    let r = ok(&server, &["dlq", "list", shown]);
    assert!(
        r.stdout.contains(&format!("no dead letters for `{shown}`")),
        "{r:?}"
    );
    let r = ok(
        &server,
        &["--json", "trim", shown, "--maxlen", "0", "--force"],
    );
    assert_eq!(r.json()["removed"], 1, "{r:?}");
    // Group and consumer names use the same syntax.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(name)
        .arg(b"\xfeg")
        .arg("0")
        .query(&mut con)
        .unwrap();
    let r = ok(&server, &["groups", shown]);
    assert!(r.stdout.contains(r"\xfeg"), "{r:?}");
    let j = ok(
        &server,
        &["--json", "pending", shown, r"\xfeg", "--consumer", r"\x01c"],
    )
    .json();
    assert_eq!(j["group"]["hex"], "fe67", "{j}");
    ok(&server, &["consumers", shown, r"\xfeg"]);
    let r = run(&server, &["groups", r"\xzz"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("two hex digits"), "{r:?}");
}

#[test]
fn dlq_list_refuses_a_stream_that_is_not_a_dead_letter_stream() {
    let (server, mut con) = start();
    xadd_n(&mut con, "orders", 2);
    fails(
        &server,
        &["dlq", "list", "orders", "--dlq", "orders"],
        1,
        "`orders` is not a dead-letter stream",
    );
    dead_letter(
        &mut con,
        "orders:dlq",
        "orders",
        "1-1",
        "bad",
        &[(b"k", b"v")],
    );
    fails(
        &server,
        &["dlq", "list", "orders:dlq"],
        1,
        "give its source stream instead: `millrace dlq list orders`",
    );
    let r = ok(&server, &["dlq", "list", "orders"]);
    assert!(r.stdout.contains("bad"), "{r:?}");
}

#[test]
fn top_shows_oldest_pending_idle_and_dead_letters_and_sorts_by_a_column() {
    let (server, mut con) = start();
    xadd_n(&mut con, "a-orders", 3);
    group(&mut con, "a-orders", "few", "0");
    read(&mut con, "a-orders", "few", "w", 1);
    xadd_n(&mut con, "b-orders", 5);
    group(&mut con, "b-orders", "many", "0");
    read(&mut con, "b-orders", "many", "w", 4);
    dead_letter(
        &mut con,
        "b-orders:dlq",
        "b-orders",
        "1-1",
        "bad",
        &[(b"k", b"v")],
    );

    let j = ok(&server, &["--json", "top", "--once", "--interval", "100ms"]).json();
    let streams = j["streams"].as_array().unwrap();
    let b = streams.iter().find(|s| s["stream"] == "b-orders").unwrap();
    assert_eq!(b["dead_letters"], 1, "{j}");
    assert!(b["groups"][0]["oldest_pending_idle_ms"].is_u64(), "{j}");
    let a = streams.iter().find(|s| s["stream"] == "a-orders").unwrap();
    assert!(a["dead_letters"].is_null(), "no dead-letter stream: {j}");

    let r = ok(
        &server,
        &["top", "--once", "--interval", "100ms", "--sort", "pending"],
    );
    assert!(
        r.stdout.contains("OLDEST-IDLE") && r.stdout.contains("DLQ"),
        "{r:?}"
    );
    assert!(r.stdout.contains("PENDING▼"), "{r:?}");
    let many = r.stdout.find("many").unwrap();
    let few = r.stdout.find("few").unwrap();
    assert!(many < few, "most pending first: {r:?}");

    fails(&server, &["top", "--interval", "10ms"], 2, "at least 100ms");
}

#[test]
fn the_default_build_speaks_tls_and_says_when_a_server_does_not() {
    let tls = RedisServer::builder().tls().start();
    let ca = tls.ca_cert_path().unwrap();
    let mut cmd = command(&tls.url(), &["--json", "streams"]);
    cmd.arg("--tls-ca-cert").arg(&ca);
    let r = finish(&mut cmd);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json(), serde_json::json!([]));

    let r = run_url(&tls.url(), &["streams"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--tls-ca-cert"), "a private CA: {r:?}");
    let r = run_url(&tls.url().replace("rediss://", "redis://"), &["streams"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("use rediss://"), "a TLS port: {r:?}");

    let (plain, _con) = start();
    let url = format!("rediss://127.0.0.1:{}", plain.port());
    let r = run_url(&url, &["streams"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("does not speak TLS"), "{r:?}");
    assert!(r.stderr.contains("use redis://"), "{r:?}");
}

/// The operator ACL that docs/cli.md documents, word for word.
const OPERATOR_ACL: &str =
    "~* resetchannels -@all +scan +type +xinfo +xrange +xpending +xadd +xdel \
     +xtrim +xclaim +xgroup|delconsumer +evalsha +eval +xread +xreadgroup +xack";

#[test]
fn the_documented_operator_acl_runs_every_command() {
    // Read at run time, so that the test binary of a packaged crate (without docs/) still builds.
    let page = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md");
    let docs = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{page}: {e}"));
    let (server, mut con) = start();
    let rules: Vec<&str> = OPERATOR_ACL.split_whitespace().collect();
    assert!(
        docs.contains(&rules.join(" ")),
        "docs/cli.md shows the ACL this test uses"
    );
    let mut setuser = redis::cmd("ACL");
    setuser.arg("SETUSER").arg("ops").arg("on").arg(">ops-pw");
    for r in &rules {
        setuser.arg(*r);
    }
    let _: () = setuser.query(&mut con).unwrap();
    let url = format!("redis://ops:ops-pw@127.0.0.1:{}", server.port());
    let ids = xadd_n(&mut con, "orders", 4);
    group(&mut con, "orders", "workers", "0");
    read(&mut con, "orders", "workers", "gone", 2);
    let d = dead_letter(
        &mut con,
        "orders:dlq",
        "orders",
        &ids[0],
        "bad",
        &[(b"k", b"v")],
    );
    let d2 = dead_letter(
        &mut con,
        "orders:dlq",
        "orders",
        &ids[1],
        "bad",
        &[(b"k", b"w")],
    );
    for args in [
        &["streams"][..],
        &["groups", "orders"],
        &["consumers", "orders", "workers"],
        &["pending", "orders", "workers"],
        &["dlq", "list", "orders"],
        &["dlq", "show", "orders", &d],
        &["dlq", "replay", "orders", "--id", &d],
        &["dlq", "purge", "orders", "--id", &d2, "--yes"],
        &["reap", "orders", "workers", "--idle", "0s"],
        &["tail", "orders", "--count", "1"],
        &[
            "tail",
            "orders",
            "--group",
            "workers",
            "--consumer",
            "me",
            "--count",
            "1",
            "--ack",
        ],
        &["top", "--once", "--interval", "100ms"],
    ] {
        if args == ["tail", "orders", "--count", "1"] {
            let mut child = command(&url, args).spawn().unwrap();
            wait_until(WAIT, "tail to block", || blocked_clients(&mut con) >= 1);
            xadd_n(&mut con, "orders", 1);
            let r = wait_for_exit(&mut child);
            assert_eq!(r.code, 0, "millrace {args:?} as the operator:\n{r:?}");
            continue;
        }
        let r = run_url(&url, args);
        assert_eq!(r.code, 0, "millrace {args:?} as the operator:\n{r:?}");
    }
    // The read-only subset the page names is enough for the read-only commands.
    let viewer_rules = "+scan +type +xinfo +xrange +xpending +xread";
    assert!(
        docs.contains(viewer_rules),
        "docs/cli.md names the read-only rules"
    );
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg("viewer")
        .arg("on")
        .arg(">viewer-pw")
        .arg("~*")
        .arg("resetchannels")
        .arg("-@all");
    for r in viewer_rules.split_whitespace() {
        setuser.arg(r);
    }
    let _: () = setuser.query(&mut con).unwrap();
    let viewer = format!("redis://viewer:viewer-pw@127.0.0.1:{}", server.port());
    let letter = dead_letter(
        &mut con,
        "orders:dlq",
        "orders",
        &ids[2],
        "bad",
        &[(b"k", b"v")],
    );
    for args in [
        &["streams"][..],
        &["groups", "orders"],
        &["consumers", "orders", "workers"],
        &["pending", "orders", "workers"],
        &["dlq", "list", "orders"],
        &["dlq", "show", "orders", &letter],
        &["top", "--once", "--interval", "100ms"],
        &["tail", "orders", "--count", "1"],
    ] {
        if args[0] == "tail" {
            let mut child = command(&viewer, args).spawn().unwrap();
            wait_until(WAIT, "tail to block", || blocked_clients(&mut con) >= 1);
            xadd_n(&mut con, "orders", 1);
            let r = wait_for_exit(&mut child);
            assert_eq!(r.code, 0, "millrace {args:?} as a viewer:\n{r:?}");
            continue;
        }
        let r = run_url(&viewer, args);
        assert_eq!(r.code, 0, "millrace {args:?} as a viewer:\n{r:?}");
    }

    // The first three entries are handled now, so the checked trim runs.
    let _: u64 = q(
        &mut con,
        &["XACK", "orders", "workers", &ids[0], &ids[1], &ids[2]],
    );
    let r = run_url(&url, &["--json", "trim", "orders", "--minid", &ids[3]]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["removed"], 3, "{r:?}");
}

/// Runs `millrace top` on a pseudo-terminal (util-linux `script`), so that it draws its screen.
#[test]
fn top_on_a_terminal_redraws_in_place_on_the_alternate_screen_and_quits_on_q() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    let (server, mut con) = start();
    xadd_n(&mut con, "orders", 2);
    group(&mut con, "orders", "workers", "0");
    let inner = format!(
        "stty cols 120 rows 30; exec {} --redis {} top --interval 100ms",
        env!("CARGO_BIN_EXE_millrace"),
        server.url()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &inner, "/dev/null"])
        .env_remove("REDIS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script` runs the command on a pseudo-terminal");
    let screen = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let shown = |text: &str| String::from_utf8_lossy(&screen.lock().unwrap()).contains(text);
    wait_until(WAIT, "the first screen", || shown("READ/S"));
    let mut keys = child.stdin.take().unwrap();
    keys.write_all(b"6").unwrap();
    keys.flush().unwrap();
    wait_until(WAIT, "key 6 to sort by PENDING", || shown("PENDING▼"));
    keys.write_all(b"q").unwrap();
    keys.flush().unwrap();
    let r = wait_for_exit(&mut child);
    assert_eq!(r.code, 0, "q quits: {r:?}");
    let screen = String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    assert!(
        screen.starts_with("\x1b[?1049h"),
        "enters the alternate screen: {screen:?}"
    );
    assert!(
        screen.trim_end().ends_with("\x1b[?1049l"),
        "and leaves it: {screen:?}"
    );
    assert!(
        !screen.contains("\x1b[2J"),
        "never blanks the whole screen (that flickers): {screen:?}"
    );
}
