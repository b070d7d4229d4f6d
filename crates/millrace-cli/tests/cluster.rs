//! Runs the real `millrace` binary with `--redis-cluster` against a throwaway Redis Cluster of
//! three masters, one per test; without replicas, except where a test fails a master over.
// Helpers outside `#[test]` functions unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use millrace_testkit::{wait_until, RedisCluster};
use redis::cluster::ClusterConnection;
use redis::Value;

mod support;
use support::{finish, millrace, Run};

const WAIT: Duration = Duration::from_secs(10);

/// Runs `millrace --redis-cluster SEEDS ARGS` and expects exit 0. One seed is enough; two are
/// given, comma-separated, as an operator would.
#[track_caller]
fn ok(cluster: &RedisCluster, args: &[&str]) -> Run {
    let seeds = cluster.seed_urls()[..2].join(",");
    let r = finish(millrace().arg("--redis-cluster").arg(seeds).args(args));
    assert_eq!(r.code, 0, "millrace {args:?}:\n{r:?}");
    r
}

fn start() -> (RedisCluster, ClusterConnection) {
    let cluster = RedisCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .start();
    let con = cluster.client().get_connection().unwrap();
    (cluster, con)
}

fn q<T: redis::FromRedisValue>(con: &mut ClusterConnection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con).unwrap()
}

/// `host:port` of the master that owns `key`'s slot, as the CLI names it.
fn master_of(cluster: &RedisCluster, key: &str) -> String {
    format!(
        "127.0.0.1:{}",
        cluster.node(cluster.owner_of_key(key)).port()
    )
}

/// One stream name per master: `{s0}`, `{s1}`, … until every master owns one. The hash tag keeps
/// each stream's `:dlq` in its slot.
fn one_stream_per_master(cluster: &RedisCluster) -> Vec<String> {
    let masters = cluster.masters();
    let mut streams: Vec<String> = Vec::new();
    for i in 0.. {
        let name = format!("{{s{i}}}");
        let owner = cluster.owner_of_key(&name);
        if !streams.iter().any(|s| cluster.owner_of_key(s) == owner) {
            streams.push(name);
        }
        if streams.len() == masters.len() {
            break;
        }
    }
    streams
}

#[test]
fn streams_and_top_list_the_streams_of_every_master_with_its_owner() {
    let (cluster, mut con) = start();
    let streams = one_stream_per_master(&cluster);
    assert_eq!(streams.len(), 3);
    for (i, s) in streams.iter().enumerate() {
        for n in 0..=i {
            let _: String = q(&mut con, &["XADD", s, "*", "n", &n.to_string()]);
        }
    }
    let _: () = q(&mut con, &["SET", "{s0}:not-a-stream", "x"]);

    let j = ok(&cluster, &["--json", "streams"]).json();
    let rows = j.as_array().unwrap();
    let mut want = streams.clone();
    want.sort();
    let names: Vec<&str> = rows.iter().map(|r| r["stream"].as_str().unwrap()).collect();
    assert_eq!(names, want, "{j}");
    for r in rows {
        let s = r["stream"].as_str().unwrap();
        assert_eq!(r["master"], master_of(&cluster, s), "{j}");
        let i = streams.iter().position(|x| x == s).unwrap();
        assert_eq!(r["length"], i as u64 + 1, "{j}");
    }

    // The table names each stream's master too; a pattern filters on every master.
    let pattern = format!("*{}", &streams[1][1..]);
    let r = ok(&cluster, &["streams", &pattern]);
    assert!(r.stdout.contains("MASTER"), "{r:?}");
    assert!(r.stdout.contains(&streams[1]), "{r:?}");
    assert!(
        r.stdout.contains(&master_of(&cluster, &streams[1])),
        "{r:?}"
    );
    assert!(!r.stdout.contains(&streams[0]), "{r:?}");

    // `top` shows the streams of every master together, each with its master.
    let j = ok(
        &cluster,
        &["--json", "top", "--once", "--interval", "100ms"],
    )
    .json();
    let rows = j["streams"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{j}");
    for r in rows {
        let s = r["stream"].as_str().unwrap();
        assert_eq!(r["master"], master_of(&cluster, s), "{j}");
    }
    let r = ok(&cluster, &["top", "--once", "--interval", "100ms"]);
    assert!(r.stdout.contains("MASTER"), "{r:?}");
    for s in &streams {
        assert!(r.stdout.contains(&master_of(&cluster, s)), "{r:?}");
    }
}

#[test]
fn key_routed_commands_reach_each_streams_master() {
    let (cluster, mut con) = start();
    let streams = one_stream_per_master(&cluster);
    for s in &streams {
        for n in 0..4 {
            let _: String = q(&mut con, &["XADD", s, "*", "n", &n.to_string()]);
        }
        let _: () = q(&mut con, &["XGROUP", "CREATE", s, "workers", "0"]);
        let _: Value = q(
            &mut con,
            &[
                "XREADGROUP",
                "GROUP",
                "workers",
                "gone",
                "COUNT",
                "2",
                "STREAMS",
                s,
                ">",
            ],
        );
    }

    for s in &streams {
        let j = ok(&cluster, &["--json", "groups", s]).json();
        assert_eq!(j[0]["group"], "workers", "{j}");
        assert_eq!(j[0]["pending"], 2, "{j}");

        let j = ok(&cluster, &["--json", "consumers", s, "workers"]).json();
        assert_eq!(j[0]["consumer"], "gone", "{j}");

        let j = ok(&cluster, &["--json", "pending", s, "workers"]).json();
        assert_eq!(j["entries"].as_array().unwrap().len(), 2, "{j}");
    }

    // `tail` blocks on the stream's own master and prints what is added there.
    let s = &streams[2];
    let mut owner = cluster
        .node(cluster.owner_of_key(s))
        .client()
        .get_connection()
        .unwrap();
    let seeds = cluster.seed_urls().join(",");
    let child = millrace()
        .args(["--redis-cluster", &seeds, "tail", s, "--count", "1"])
        .spawn()
        .unwrap();
    wait_until(WAIT, "tail to block on the stream's master", || {
        blocked_clients(&mut owner) >= 1
    });
    let id: String = q(&mut con, &["XADD", s, "*", "n", "late"]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(&id), "{stdout}");

    // Reap claims the idle consumer's entries on its master before deleting it.
    let s = &streams[1];
    wait_until(WAIT, "the consumer to be idle for 1s", || {
        let v: Vec<Vec<Value>> = q(&mut con, &["XINFO", "CONSUMERS", s, "workers"]);
        v.iter().all(|fields| {
            fields
                .iter()
                .position(|f| matches!(f, Value::BulkString(b) if b == b"idle"))
                .and_then(|i| redis::from_redis_value::<u64>(fields[i + 1].clone()).ok())
                .is_some_and(|idle| idle >= 1000)
        })
    });
    let j = ok(&cluster, &["--json", "reap", s, "workers", "--idle", "1s"]).json();
    assert_eq!(j["consumers"][0]["claimed"], 2, "{j}");
    let pending: Vec<Value> = q(&mut con, &["XPENDING", s, "workers", "-", "+", "10"]);
    assert_eq!(pending.len(), 2, "the reaped entries stay pending");

    // Trim refuses what the group has not read, on the stream's own master.
    let r = finish(
        millrace()
            .arg("--redis-cluster")
            .arg(cluster.seed_urls()[0].clone())
            .args(["trim", s, "--maxlen", "1"]),
    );
    assert_eq!(r.code, 3, "{r:?}");
    let streams0 = &streams[0];
    ok(&cluster, &["trim", streams0, "--maxlen", "1", "--force"]);
    assert_eq!(q::<u64>(&mut con, &["XLEN", streams0]), 1);

    // Dead letters: the hash tag keeps `{sN}:dlq` in the stream's slot, so replay is atomic.
    let dlq = format!("{s}:dlq");
    let meta = millrace::dead_letter::META_FIELDS;
    let values = [
        s.as_str(),
        "1-1",
        "workers",
        "worker-1",
        "5",
        "boom",
        "1700000000000",
    ];
    let mut add = redis::cmd("XADD");
    add.arg(&dlq).arg("*");
    for (k, v) in meta.iter().zip(values) {
        add.arg(*k).arg(v);
    }
    add.arg("n").arg("dead");
    let _: String = add.query(&mut con).unwrap();
    let j = ok(&cluster, &["--json", "dlq", "list", s]).json();
    assert_eq!(j.as_array().map(Vec::len), Some(1), "{j}");
    let before: u64 = q(&mut con, &["XLEN", s]);
    ok(&cluster, &["dlq", "replay", s]);
    assert_eq!(q::<u64>(&mut con, &["XLEN", &dlq]), 0);
    assert_eq!(q::<u64>(&mut con, &["XLEN", s]), before + 1);

    // Without a hash tag `orders:dlq` is in another slot: a dry run says how it would move and
    // changes nothing; the replay moves the entry in two steps, once, and a second run finds
    // nothing left to move.
    let _: String = q(&mut con, &["XADD", "orders", "*", "n", "1"]);
    let mut add = redis::cmd("XADD");
    add.arg("orders:dlq").arg("*");
    let values = [
        "orders",
        "1-1",
        "workers",
        "worker-1",
        "5",
        "boom",
        "1700000000000",
    ];
    for (k, v) in meta.iter().zip(values) {
        add.arg(*k).arg(v);
    }
    add.arg("n").arg("dead");
    let _: String = add.query(&mut con).unwrap();
    let dry = ok(&cluster, &["dlq", "replay", "orders", "--dry-run"]);
    assert!(dry.stdout.contains("different slots"), "{dry:?}");
    assert!(dry.stdout.contains("would replay 1"), "{dry:?}");
    assert_eq!(q::<u64>(&mut con, &["XLEN", "orders:dlq"]), 1);
    assert_eq!(q::<u64>(&mut con, &["XLEN", "orders"]), 1);
    let moved = ok(&cluster, &["dlq", "replay", "orders"]);
    assert!(moved.stdout.contains("replayed 1"), "{moved:?}");
    assert_eq!(q::<u64>(&mut con, &["XLEN", "orders:dlq"]), 0);
    assert_eq!(q::<u64>(&mut con, &["XLEN", "orders"]), 2);
    let again = ok(&cluster, &["dlq", "replay", "orders"]);
    assert!(again.stdout.contains("replayed 0"), "{again:?}");
    assert_eq!(q::<u64>(&mut con, &["XLEN", "orders"]), 2);
    // A dry run against a stream that does not exist reports instead of refusing.
    let _: String = {
        let mut add = redis::cmd("XADD");
        add.arg("gone:dlq").arg("*");
        let values = [
            "gone",
            "1-1",
            "workers",
            "worker-1",
            "5",
            "boom",
            "1700000000000",
        ];
        for (k, v) in meta.iter().zip(values) {
            add.arg(*k).arg(v);
        }
        add.arg("n").arg("dead");
        add.query(&mut con).unwrap()
    };
    let dry = ok(&cluster, &["dlq", "replay", "gone", "--dry-run"]);
    assert!(dry.stdout.contains("would be refused"), "{dry:?}");
}

#[test]
fn the_cluster_option_comes_from_the_environment_and_excludes_redis() {
    let (cluster, mut con) = start();
    let _: String = q(&mut con, &["XADD", "orders", "*", "n", "1"]);
    let seeds = cluster.seed_urls().join(",");

    let r = finish(
        millrace()
            .env("REDIS_CLUSTER_URLS", &seeds)
            .args(["--json", "streams"]),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()[0]["master"],
        master_of(&cluster, "orders"),
        "{r:?}"
    );

    // On the command line, --redis-cluster wins over REDIS_URL.
    let r = finish(millrace().env("REDIS_URL", "redis://127.0.0.1:1").args([
        "--redis-cluster",
        &seeds,
        "groups",
        "orders",
    ]));
    assert_eq!(r.code, 0, "{r:?}");

    let r = finish(millrace().args([
        "--redis",
        "redis://127.0.0.1:1",
        "--redis-cluster",
        &seeds,
        "streams",
    ]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("exclude each other"), "{r:?}");
}

#[test]
fn a_tls_cluster_with_a_password_needs_only_the_ca_certificate() {
    let cluster = RedisCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .tls()
        .password("s3cret-pw")
        .start();
    let mut con = cluster.client().get_connection().unwrap();
    let _: String = q(&mut con, &["XADD", "orders", "*", "n", "1"]);
    let seeds = cluster.seed_urls().join(",");
    assert!(seeds.starts_with("rediss://"), "{seeds}");
    let ca = cluster.ca_cert_path().unwrap();

    let r = finish(
        millrace()
            .args(["--redis-cluster", &seeds, "--json", "streams"])
            .args(["--tls-ca-cert".as_ref(), ca.as_os_str()]),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()[0]["master"],
        master_of(&cluster, "orders"),
        "{r:?}"
    );

    // Without the CA the certificate is not trusted; the password is never printed.
    let r = finish(millrace().args(["--redis-cluster", &seeds, "streams"]));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!r.stderr.contains("s3cret-pw"), "{r:?}");
    assert!(r.stderr.contains("***"), "{r:?}");
    assert!(r.stderr.contains("--tls-ca-cert"), "{r:?}");
}

#[test]
fn tail_follows_its_stream_across_a_failover() {
    let cluster = RedisCluster::builder()
        .masters(3)
        .replicas_per_master(1)
        .start();
    let mut con = cluster.client().get_connection().unwrap();
    let _: String = q(&mut con, &["XADD", "orders", "*", "n", "0"]);
    let master = cluster.owner_of_key("orders");
    let mut old = cluster.node(master).client().get_connection().unwrap();
    let child = millrace()
        .args([
            "--redis-cluster",
            &cluster.seed_urls().join(","),
            "tail",
            "orders",
            "--count",
            "2",
        ])
        .spawn()
        .unwrap();
    wait_until(WAIT, "tail to block on the stream's master", || {
        blocked_clients(&mut old) >= 1
    });
    let promoted = cluster.failover(master);
    let mut con = cluster.client().get_connection().unwrap();
    let first: String = q(&mut con, &["XADD", "orders", "*", "n", "1"]);
    let second: String = q(&mut con, &["XADD", "orders", "*", "n", "2"]);
    assert_eq!(cluster.owner_of_key("orders"), promoted);

    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(&first), "{stdout}\n{stderr}");
    assert!(stdout.contains(&second), "{stdout}\n{stderr}");
}

fn blocked_clients(con: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("clients").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
