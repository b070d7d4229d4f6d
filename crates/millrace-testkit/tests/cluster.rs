//! The cluster kit against a real Redis Cluster, and what Redis itself tells
//! clients when a shard fails over, a slot moves or a shard has no master:
//! the replies the consumer wiring must handle, seen on a plain socket.
//!
//! Each test owns one cluster and runs its steps in order, so the suite
//! starts two clusters, not one per step. Run with `--nocapture` to see how
//! long each fault took and the exact replies Redis sent.
#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use millrace_testkit::{wait_until, RedisCluster};

const WAIT: Duration = Duration::from_secs(15);

/// A RESP2 reply, as a plain socket sees it.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
    /// The server closed the connection.
    Closed,
}

impl Reply {
    fn error(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// A client on its own socket that speaks raw RESP, with no redirection.
struct Raw {
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(address: &str) -> Raw {
        let stream = TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        Raw {
            reader: BufReader::new(stream),
        }
    }

    /// Connects to node `index`, authenticated if the cluster has a password.
    fn to(cluster: &RedisCluster, index: usize) -> Raw {
        let mut raw = Raw::connect(&cluster.node(index).address());
        if let Some(pw) = cluster.password() {
            assert_eq!(raw.call(&["AUTH", pw]), Reply::Simple("OK".into()));
        }
        raw
    }

    fn send(&mut self, args: &[&str]) {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.reader
            .get_mut()
            .write_all(out.as_bytes())
            .expect("write");
    }

    fn read(&mut self) -> Reply {
        read_reply(&mut self.reader)
    }

    fn call(&mut self, args: &[&str]) -> Reply {
        self.send(args);
        self.read()
    }

    /// Sends a blocking command and reads its reply on another thread.
    fn blocked(mut self, args: &[&str]) -> JoinHandle<Reply> {
        self.send(args);
        std::thread::spawn(move || self.read())
    }
}

fn read_reply(r: &mut impl BufRead) -> Reply {
    let mut line = String::new();
    if r.read_line(&mut line).expect("read a reply line") == 0 {
        return Reply::Closed;
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => Reply::Simple(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Integer(rest.parse().expect("integer")),
        "$" => match rest.parse::<i64>().expect("bulk length") {
            -1 => Reply::Bulk(None),
            n => {
                let mut body = vec![0; usize::try_from(n).expect("length") + 2];
                r.read_exact(&mut body).expect("bulk body");
                body.truncate(body.len() - 2);
                Reply::Bulk(Some(body))
            }
        },
        "*" => match rest.parse::<i64>().expect("array length") {
            -1 => Reply::Array(None),
            n => Reply::Array(Some((0..n).map(|_| read_reply(r)).collect())),
        },
        other => panic!("unexpected reply type {other:?} in {line:?}"),
    }
}

fn blocked_clients(cluster: &RedisCluster, node: usize) -> u64 {
    let mut con = cluster
        .node(node)
        .client()
        .get_connection()
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut con)
        .expect("INFO clients");
    info.lines()
        .find_map(|l| l.trim().strip_prefix("blocked_clients:"))
        .and_then(|n| n.parse().ok())
        .expect("blocked_clients in INFO")
}

fn query<T: redis::FromRedisValue>(cluster: &RedisCluster, node: usize, cmd: &redis::Cmd) -> T {
    let mut con = cluster
        .node(node)
        .client()
        .get_connection()
        .expect("connect");
    cmd.query(&mut con).expect("command")
}

/// Keys `{tag}0`, `{tag}1`, … all in the slot of `tag`.
fn tagged(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{{tag}}}{i}")).collect()
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn kit_helpers_do_what_they_say() {
    let started = Instant::now();
    // With a password, so replication, failover, MIGRATE and redis-cli all
    // have to authenticate.
    let mut cluster = RedisCluster::builder()
        .password("kit:pw")
        .acl_user("worker", ["on", ">w@pw", "~orders*", "+@all"])
        .start();
    eprintln!("cluster started in {:?}", started.elapsed());
    assert_eq!(cluster.password(), Some("kit:pw"));
    assert!(cluster
        .node(0)
        .url()
        .starts_with("redis://:kit%3Apw@127.0.0.1:"));
    let mut unauthenticated = Raw::connect(&cluster.node(0).address());
    assert!(unauthenticated
        .call(&["GET", "foo"])
        .error()
        .is_some_and(|e| e.starts_with("NOAUTH")));

    // Shape: 3 masters with one replica each, every node ok.
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.seed_urls().len(), 6);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "masters: {masters:?}");
    for &m in &masters {
        assert_eq!(cluster.replicas_of(m).len(), 1, "replicas of {m}");
    }
    for node in cluster.nodes() {
        assert_eq!(node.id().len(), 40);
        assert_ne!(node.bus_port(), node.port());
        let info: String = query(&cluster, node.index(), redis::cmd("CLUSTER").arg("INFO"));
        assert!(
            info.contains("cluster_state:ok"),
            "node {}: {info}",
            node.index()
        );
    }

    // The owner of a key serves it; another master redirects to it.
    assert_eq!(cluster.keyslot("foo"), 12182);
    let owner = cluster.owner_of_key("foo");
    let () = query(&cluster, owner, redis::cmd("SET").arg("foo").arg("bar"));
    let other = *masters
        .iter()
        .find(|&&m| m != owner)
        .expect("another master");
    let moved = Raw::to(&cluster, other).call(&["GET", "foo"]);
    assert_eq!(
        moved.error(),
        Some(format!("MOVED 12182 {}", cluster.node(owner).address()).as_str())
    );

    // Graceful failover: the replica serves the slot, the old master follows it.
    let t = Instant::now();
    let promoted = cluster.failover(owner);
    eprintln!("graceful failover settled in {:?}", t.elapsed());
    assert_ne!(promoted, owner);
    assert_eq!(cluster.owner_of_key("foo"), promoted);
    assert_eq!(cluster.replicas_of(promoted), vec![owner]);
    let value: String = query(&cluster, promoted, redis::cmd("GET").arg("foo"));
    assert_eq!(value, "bar");

    // Live migration in steps: keys move in batches, then the slot.
    let keys = tagged("mig", 250);
    let slot = cluster.keyslot(&keys[0]);
    let source = cluster.owner_of_slot(slot);
    let target = *cluster
        .masters()
        .iter()
        .find(|&&m| m != source)
        .expect("a target master");
    for k in &keys {
        let () = query(&cluster, source, redis::cmd("SET").arg(k).arg(k));
    }
    let mut migration = cluster.start_migration(slot, target);
    assert_eq!(
        (migration.slot(), migration.from(), migration.to()),
        (slot, source, target)
    );
    assert_eq!(migration.keys_left(), 250);
    assert_eq!(migration.move_keys(100), 100);
    assert_eq!(migration.keys_left(), 150);
    assert_eq!(
        cluster.owner_of_slot(slot),
        source,
        "the slot is not moved before finish"
    );
    assert_eq!(migration.move_all_keys(), 150);
    assert_eq!(migration.keys_left(), 0);
    migration.finish();
    assert_eq!(cluster.owner_of_slot(slot), target);
    let n: usize = query(
        &cluster,
        target,
        redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot),
    );
    assert_eq!(n, 250);
    let value: String = query(&cluster, target, redis::cmd("GET").arg(&keys[42]));
    assert_eq!(value, keys[42]);

    // And back in one call.
    cluster.migrate_slot(slot, source);
    assert_eq!(cluster.owner_of_slot(slot), source);

    // kill -9 of a master: its replica is promoted, replicated writes survive.
    let victim = cluster.owner_of_key("foo");
    let () = query(&cluster, victim, redis::cmd("SET").arg("foo").arg("kept"));
    let replicated: i64 = query(&cluster, victim, redis::cmd("WAIT").arg(1).arg(5000));
    assert_eq!(replicated, 1);
    let victim_pid = cluster.node(victim).pid().expect("pid");
    // A reader blocked on the killed master just loses its connection.
    let reader =
        Raw::to(&cluster, victim).blocked(&["XREAD", "BLOCK", "0", "STREAMS", "{foo}s", "$"]);
    wait_until(WAIT, "the reader to block", || {
        blocked_clients(&cluster, victim) == 1
    });
    let t = Instant::now();
    let heir = cluster.kill_master(victim);
    eprintln!("replica promoted {:?} after kill -9", t.elapsed());
    assert_eq!(reader.join().expect("reader thread"), Reply::Closed);
    assert!(!cluster.node(victim).is_running());
    assert!(!process_exists(victim_pid));
    assert_eq!(cluster.owner_of_key("foo"), heir);
    let value: String = query(&cluster, heir, redis::cmd("GET").arg("foo"));
    assert_eq!(value, "kept");

    // The killed master comes back on its port as a replica of its heir.
    let port = cluster.node(victim).port();
    cluster.restart(victim);
    assert_eq!(cluster.node(victim).port(), port);
    assert_eq!(cluster.replicas_of(heir), vec![victim]);
    assert_eq!(cluster.masters().len(), 3);

    // The ACL user exists on every node, the restarted one included, and
    // has only its rights.
    let urls = cluster.seed_urls_as("worker", "w@pw");
    assert!(
        urls[0].starts_with("redis://worker:w%40pw@127.0.0.1:"),
        "{}",
        urls[0]
    );
    let mut worker = redis::cluster::ClusterClient::new(urls)
        .expect("client")
        .get_connection()
        .expect("connect as the ACL user");
    for i in 0..20 {
        let key = format!("orders:{i}");
        redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("f")
            .arg(i)
            .exec(&mut worker)
            .expect("XADD as worker");
    }
    let denied = redis::cmd("SET")
        .arg("other")
        .arg(1)
        .exec(&mut worker)
        .expect_err("no rights on other keys");
    assert_eq!(denied.code(), Some("NOPERM"), "{denied}");
    for node in cluster.nodes() {
        let user: redis::Value = query(
            &cluster,
            node.index(),
            redis::cmd("ACL").arg("GETUSER").arg("worker"),
        );
        assert_ne!(user, redis::Value::Nil, "node {}", node.index());
    }

    // Drop removes every process and directory.
    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid()).collect();
    let dirs: Vec<_> = cluster
        .nodes()
        .iter()
        .map(|n| n.dir().to_path_buf())
        .collect();
    assert_eq!(pids.len(), 6);
    drop(cluster);
    for pid in pids {
        assert!(!process_exists(pid), "redis-server {pid} survived drop");
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} survived drop", dir.display());
    }
    eprintln!("kit test took {:?}", started.elapsed());
}

#[test]
fn redis_tells_blocked_readers_and_clients_what_changed() {
    let started = Instant::now();
    let mut cluster = RedisCluster::start();

    // 1. A reader blocked on a master that a graceful failover demotes gets
    //    UNBLOCKED (not MOVED); the group and its PEL are on the new master.
    let stream = "{fo}orders";
    let master = cluster.owner_of_key(stream);
    let address = cluster.node(master).address();
    let mut raw = Raw::connect(&address);
    assert_eq!(
        raw.call(&["XGROUP", "CREATE", stream, "g", "$", "MKSTREAM"]),
        Reply::Simple("OK".into())
    );
    raw.call(&["XADD", stream, "*", "f", "1"]);
    let Reply::Array(Some(_)) = raw.call(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "COUNT",
        "1",
        "STREAMS",
        stream,
        ">",
    ]) else {
        panic!("XREADGROUP did not deliver the entry");
    };
    let reader = Raw::connect(&address).blocked(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "BLOCK",
        "0",
        "STREAMS",
        stream,
        ">",
    ]);
    wait_until(WAIT, "the reader to block", || {
        blocked_clients(&cluster, master) == 1
    });
    let promoted = cluster.failover(master);
    let reply = reader.join().expect("reader thread");
    let error = reply.error().expect("an error reply");
    assert!(
        error.starts_with("UNBLOCKED") && error.contains("instance state changed"),
        "{error}"
    );
    eprintln!("failover: blocked reader got -{error}");
    let moved = Raw::connect(&address).call(&["XLEN", stream]);
    let slot = cluster.keyslot(stream);
    assert_eq!(
        moved.error(),
        Some(format!("MOVED {slot} {}", cluster.node(promoted).address()).as_str())
    );
    let pending: redis::streams::StreamPendingReply = query(
        &cluster,
        promoted,
        redis::cmd("XPENDING").arg(stream).arg("g"),
    );
    assert_eq!(pending.count(), 1, "the PEL survives the failover");

    // 2. Live migration of the stream's slot.
    let source = promoted;
    let target = *cluster
        .masters()
        .iter()
        .find(|&&m| m != source)
        .expect("a target master");
    let source_address = cluster.node(source).address();
    let target_address = cluster.node(target).address();
    let group_reader = Raw::connect(&source_address).blocked(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "BLOCK",
        "0",
        "STREAMS",
        stream,
        ">",
    ]);
    // A reader on a key of the slot that does not exist (yet).
    let missing = "{fo}missing";
    let missing_reader =
        Raw::connect(&source_address).blocked(&["XREAD", "BLOCK", "0", "STREAMS", missing, "$"]);
    wait_until(WAIT, "both readers to block", || {
        blocked_clients(&cluster, source) == 2
    });

    let mut migration = cluster.start_migration(slot, target);
    // IMPORTING/MIGRATING alone disturbs nobody, and the source still serves
    // the key it has.
    assert_eq!(blocked_clients(&cluster, source), 2);
    assert_eq!(
        Raw::connect(&source_address).call(&["XLEN", stream]),
        Reply::Integer(1)
    );
    // A key of the slot the source does not have: ASK to the target.
    let ask = Raw::connect(&source_address).call(&["XLEN", missing]);
    assert_eq!(
        ask.error(),
        Some(format!("ASK {slot} {target_address}").as_str())
    );

    assert_eq!(migration.move_all_keys(), 1);
    let reply = group_reader.join().expect("reader thread");
    let error = reply.error().expect("an error reply");
    assert_eq!(error, "UNBLOCKED the stream key no longer exists");
    eprintln!("migration: blocked group reader got -{error}");
    // The source answers ASK for the moved stream; the target serves it to
    // a client that says ASKING, with the group and its PEL.
    for command in [
        &["XLEN", stream][..],
        &["XADD", stream, "*", "f", "2"][..],
        &["XREADGROUP", "GROUP", "g", "c", "STREAMS", stream, ">"][..],
    ] {
        let ask = Raw::connect(&source_address).call(command);
        assert_eq!(
            ask.error(),
            Some(format!("ASK {slot} {target_address}").as_str()),
            "{command:?}"
        );
    }
    let mut asking = Raw::connect(&target_address);
    let moved = asking.call(&["XLEN", stream]);
    assert_eq!(
        moved.error(),
        Some(format!("MOVED {slot} {source_address}").as_str()),
        "without ASKING the target redirects back"
    );
    assert_eq!(asking.call(&["ASKING"]), Reply::Simple("OK".into()));
    let Reply::Array(Some(summary)) = asking.call(&["XPENDING", stream, "g"]) else {
        panic!("XPENDING after ASKING");
    };
    assert_eq!(
        summary[0],
        Reply::Integer(1),
        "the PEL travels with the key"
    );
    // The reader blocked on the missing key is still blocked.
    assert!(!missing_reader.is_finished());

    migration.finish();
    let reply = missing_reader.join().expect("reader thread");
    assert_eq!(
        reply.error(),
        Some(format!("MOVED {slot} {target_address}").as_str()),
        "the reader blocked on a missing key is redirected when the slot moves"
    );
    let moved = Raw::connect(&source_address).call(&["XLEN", stream]);
    assert_eq!(
        moved.error(),
        Some(format!("MOVED {slot} {target_address}").as_str())
    );

    // 3. A shard without a master: CLUSTERDOWN everywhere until it is back.
    let victim = cluster.owner_of_key("other");
    let replicas = cluster.replicas_of(victim);
    let survivor = *cluster
        .masters()
        .iter()
        .find(|&&m| m != victim)
        .expect("another master");
    let survivor_key = (0..100)
        .map(|i| format!("k{i}"))
        .find(|k| cluster.owner_of_key(k) == survivor)
        .expect("a key served by the surviving master");
    for &r in &replicas {
        cluster.kill(r);
    }
    cluster.kill(victim);
    let t = Instant::now();
    let mut last = Reply::Bulk(None);
    wait_until(WAIT, "CLUSTERDOWN", || {
        last = Raw::connect(&cluster.node(survivor).address()).call(&["GET", &survivor_key]);
        last.error().is_some_and(|e| e.starts_with("CLUSTERDOWN"))
    });
    eprintln!(
        "CLUSTERDOWN after {:?}: -{}",
        t.elapsed(),
        last.error().unwrap_or_default()
    );
    cluster.restart(victim);
    assert_eq!(
        cluster.owner_of_key("other"),
        victim,
        "no replica was left to take over"
    );
    for r in replicas {
        cluster.restart(r);
    }
    assert_eq!(
        Raw::connect(&cluster.node(survivor).address()).call(&["GET", &survivor_key]),
        Reply::Bulk(None)
    );
    eprintln!("behaviour test took {:?}", started.elapsed());
}

#[test]
fn a_tls_cluster_replicates_fails_over_and_migrates_over_tls() {
    let started = Instant::now();
    let cluster = RedisCluster::builder().tls().start();
    eprintln!("TLS cluster started in {:?}", started.elapsed());
    let ca = cluster.ca_cert_path().expect("a TLS cluster has a CA");
    assert!(ca.exists());
    for url in cluster.seed_urls() {
        assert!(url.starts_with("rediss://127.0.0.1:"), "{url}");
    }

    let mut con = cluster
        .client()
        .get_connection()
        .expect("a TLS cluster connection");
    let keys: Vec<String> = (0..30).map(|i| format!("tls:{i}")).collect();
    for k in &keys {
        redis::cmd("SET").arg(k).arg(k).exec(&mut con).expect("SET");
    }
    let owners: std::collections::HashSet<usize> =
        keys.iter().map(|k| cluster.owner_of_key(k)).collect();
    assert_eq!(owners.len(), 3, "the keys span every master");

    // Replication and the cluster bus run over TLS: a failover completes.
    let promoted = cluster.failover(cluster.owner_of_key(&keys[0]));
    assert_eq!(cluster.owner_of_key(&keys[0]), promoted);
    // MIGRATE runs over TLS too.
    let slot = cluster.keyslot(&keys[1]);
    let target = cluster
        .masters()
        .into_iter()
        .find(|&m| m != cluster.owner_of_slot(slot))
        .expect("another master");
    cluster.migrate_slot(slot, target);
    assert_eq!(cluster.owner_of_key(&keys[1]), target);

    // The cluster client follows both.
    for k in &keys {
        let v: String = redis::cmd("GET").arg(k).query(&mut con).expect("GET");
        assert_eq!(&v, k);
    }
    eprintln!("TLS cluster test took {:?}", started.elapsed());
}

#[test]
fn a_cluster_that_cannot_start_says_why() {
    let err = RedisCluster::builder()
        .masters(2)
        .try_start()
        .expect_err("redis-cli needs 3 masters");
    assert!(err.to_string().contains("at least 3 masters"), "{err}");

    // A node that refuses its configuration: the error carries its log.
    let err = RedisCluster::builder()
        .arg("--no-such-option")
        .arg("x")
        .try_start()
        .expect_err("an unknown option");
    let message = err.to_string();
    assert!(message.contains("no-such-option"), "{message}");
}
