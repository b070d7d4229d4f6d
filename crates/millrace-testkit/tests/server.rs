//! The testkit against a real redis-server.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use millrace_testkit::{wait_until, RedisServer, ServerKind};

fn ping(url: &str) -> redis::RedisResult<String> {
    let mut con = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    redis::cmd("PING").query(&mut con)
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn start_ping_and_drop_cleans_up() {
    let server = RedisServer::start();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(server.url(), server.url_without_password());
    assert!(server.ca_cert_path().is_none());
    assert!(server.is_running());
    let pid = server.pid().expect("a running server has a pid");
    assert_eq!(ping(&server.url()).expect("PING"), "PONG");

    let mut con = server.client().get_connection().expect("connect");
    let pid_from_info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut con)
        .expect("INFO");
    assert!(pid_from_info.contains(&format!("process_id:{pid}")));
    assert!(server.log().contains("Ready to accept connections"));

    let dir = server.dir().to_path_buf();
    assert!(dir.join("redis.log").exists());
    drop(con);
    drop(server);
    assert!(!process_exists(pid), "redis-server {pid} survived drop");
    assert!(!dir.exists(), "{} survived drop", dir.display());
}

#[test]
fn kill_and_restart_with_appendonly_keeps_data() {
    let mut server = RedisServer::builder().appendonly(true).start();
    let port = server.port();
    let mut con = server.client().get_connection().expect("connect");
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .exec(&mut con)
        .expect("SET");
    let old_pid = server.pid().expect("pid");

    server.kill();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(!process_exists(old_pid));
    assert!(ping(&server.url()).is_err());

    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(old_pid));
    let mut con = server.client().get_connection().expect("reconnect");
    let v: String = redis::cmd("GET").arg("k").query(&mut con).expect("GET");
    assert_eq!(v, "v");
}

#[test]
fn stop_is_graceful_and_flushes_the_aof() {
    let mut server = RedisServer::builder().appendonly(false).start();
    let mut con = server.client().get_connection().expect("connect");
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .exec(&mut con)
        .expect("SET");
    server.stop();
    assert!(!server.is_running());
    assert!(server.log().contains("ready to exit"), "{}", server.log());
    server.stop(); // idempotent

    server.restart();
    let mut con = server.client().get_connection().expect("reconnect");
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con).expect("GET");
    assert_eq!(v.as_deref(), Some("v"));
}

#[test]
fn freeze_and_thaw() {
    let server = RedisServer::start();
    server.freeze();
    assert!(server.is_running(), "a frozen server is still running");

    // The kernel accepts the connection, but nobody answers.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    stream.write_all(b"PING\r\n").expect("write");
    let mut buf = [0u8; 7];
    let err = stream.read(&mut buf).expect_err("a frozen server answered");
    assert!(matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));

    server.thaw();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.read_exact(&mut buf).expect("read after thaw");
    assert_eq!(&buf, b"+PONG\r\n");
}

#[test]
fn password_goes_into_the_url() {
    let server = RedisServer::builder().password("s3cr:t@x").start();
    let port = server.port();
    assert_eq!(
        server.url(),
        format!("redis://:s3cr%3At%40x@127.0.0.1:{port}")
    );
    assert_eq!(
        server.url_without_password(),
        format!("redis://127.0.0.1:{port}")
    );
    assert_eq!(ping(&server.url()).expect("PING with password"), "PONG");
    let err = ping(&server.url_without_password()).expect_err("PING without password");
    assert!(err.to_string().contains("NOAUTH"), "{err}");
}

#[test]
fn extra_args_are_passed() {
    let server = RedisServer::builder()
        .arg("--maxmemory-policy")
        .arg("allkeys-lru")
        .start();
    let mut con = server.client().get_connection().expect("connect");
    let (_, policy): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query(&mut con)
        .expect("CONFIG GET");
    assert_eq!(policy, "allkeys-lru");
}

#[test]
fn bad_args_fail_with_the_server_output() {
    let err = RedisServer::builder()
        .arg("--no-such-option")
        .arg("1")
        .try_start()
        .expect_err("redis-server accepted a bogus option");
    let msg = err.to_string();
    assert!(msg.contains("no-such-option"), "{msg}");
}

#[test]
fn tls_server_is_reachable_with_redis_cli() {
    let server = RedisServer::builder().tls().password("pw").start();
    let port = server.port();
    assert_eq!(server.url(), format!("rediss://:pw@127.0.0.1:{port}"));
    let ca = server.ca_cert_path().expect("a TLS server has a CA");
    assert!(ca.exists());
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&ca)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "--user",
            "default",
            "--pass",
            "pw",
            "--no-auth-warning",
            "PING",
        ])
        .output()
        .expect("run redis-cli");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PONG",
        "{out:?}"
    );

    // The same CA also validates the hostname form of the certificate.
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&ca)
        .args(["-h", "localhost", "-p", &port.to_string()])
        .args(["--pass", "pw", "--no-auth-warning", "PING"])
        .output()
        .expect("run redis-cli");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PONG",
        "{out:?}"
    );
}

#[test]
fn debug_restart_works_with_the_absolute_binary_path() {
    let server = RedisServer::start();
    let pid = server.pid().expect("pid");
    let mut con = server.client().get_connection().expect("connect");
    // DEBUG RESTART re-executes argv[0] in place (same pid); the connection drops.
    let _ = redis::cmd("DEBUG").arg("RESTART").exec(&mut con);
    wait_until(Duration::from_secs(10), "PING after DEBUG RESTART", || {
        ping(&server.url()).is_ok()
    });
    assert_eq!(server.pid(), Some(pid));
}

#[test]
fn restart_panics_clearly_if_the_port_was_taken() {
    let mut server = RedisServer::start();
    server.kill();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", server.port())).expect("squat");
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.restart()))
        .expect_err("restart on a taken port succeeded");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("address already in use"), "{msg}");
    assert!(!server.is_running());
    drop(squatter);
    server.restart();
    assert!(server.is_running());
}

/// `$MILLRACE_SERVER` picks the server the kit runs; its `INFO server` proves
/// which one started (the pip-fetched ones are checked by version, not name).
#[test]
fn the_server_started_is_the_one_millrace_server_names() {
    let kind = ServerKind::current();
    let server = RedisServer::start();
    let mut con = server.client().get_connection().expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut con)
        .expect("INFO");
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::to_owned)
    };
    match kind {
        ServerKind::Redis70 => {
            let version = field("redis_version").expect("redis_version");
            assert!(version.starts_with("7."), "{kind}: redis_version {version}");
            assert_eq!(field("valkey_version"), None, "{kind}");
        }
        ServerKind::Redis82 => {
            assert_eq!(field("redis_version").as_deref(), Some("8.2.3"), "{kind}");
            assert_eq!(field("valkey_version"), None, "{kind}");
        }
        ServerKind::Valkey91 => {
            assert_eq!(field("valkey_version").as_deref(), Some("9.1.2"), "{kind}");
            assert_eq!(field("server_name").as_deref(), Some("valkey"), "{kind}");
        }
    }
    assert_eq!(
        kind.has_tls(),
        millrace_testkit::tls_unavailable().is_none()
    );
}
