//! Runs the real `millrace` binary with `--redis-sentinel` against the test kit's 1 master + 2
//! replicas + 3 Sentinels (with passwords): it asks the Sentinels for the master and works on it,
//! and a master name no Sentinel knows, or a missing data-node password, says what to fix without
//! printing a password.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

use millrace_testkit::SentinelGroup;

mod support;
use support::{finish, millrace, Run};

const PW: &str = "s3nt-pw";

fn run(args: &[&str]) -> Run {
    finish(millrace().args(args))
}

#[test]
fn redis_sentinel_finds_the_master_and_lists_its_streams() {
    let group = SentinelGroup::start_with_password(PW);
    let mut master = redis::Client::open(group.master().url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("orders")
        .arg("*")
        .arg("n")
        .arg(1)
        .query(&mut master)
        .unwrap();
    let urls = group.sentinel_urls().join(",");

    let arg = format!(":{PW}@{}={urls}", group.master_name());
    let r = run(&["--redis-sentinel", &arg, "--json", "streams"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.json().to_string().contains("\"orders\""), "{r:?}");
    assert!(!r.stdout.contains(PW) && !r.stderr.contains(PW), "{r:?}");

    // The environment variable works as the option does.
    let out = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_URLS")
        .env("REDIS_SENTINEL", &arg)
        .args(["groups", "orders"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // On the command line it wins over REDIS_URL; both only in the environment is a usage error.
    let both = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_millrace"))
            .env_remove("REDIS_CLUSTER_URLS")
            .env("REDIS_URL", "redis://127.0.0.1:1")
            .env("REDIS_SENTINEL", &arg)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = both(&["--redis-sentinel", &arg, "groups", "orders"]);
    assert!(out.status.success(), "{out:?}");
    let out = both(&["groups", "orders"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("REDIS_URL and REDIS_SENTINEL are set together")
            && stderr.contains("--redis or --redis-sentinel"),
        "{stderr}"
    );

    let arg = format!(":{PW}@no-such-master={urls}");
    let r = run(&["--redis-sentinel", &arg, "streams"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("no Sentinel knows a master named `no-such-master`"),
        "{r:?}"
    );
    assert!(!r.stderr.contains(PW), "{r:?}");

    // Without the data nodes' password the master refuses: the error says so, naming no password.
    let arg = format!("{}={urls}", group.master_name());
    let r = run(&["--redis-sentinel", &arg, "streams"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("authentication"), "{r:?}");
    assert!(
        r.stderr
            .contains("password in --redis-sentinel (or REDIS_SENTINEL)"),
        "{r:?}"
    );
    assert!(!r.stderr.contains(PW), "{r:?}");
}

#[test]
fn redis_sentinel_input_is_checked() {
    let r = run(&["--redis-sentinel", "mymaster", "streams"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("MASTER=URL"), "{r:?}");
    let r = run(&["--redis-sentinel", "=redis://127.0.0.1:26379", "streams"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("names no master"), "{r:?}");
    let r = run(&[
        "--redis-sentinel",
        "m=redis://127.0.0.1:1",
        "--redis",
        "redis://127.0.0.1:2",
        "streams",
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("exclude each other"), "{r:?}");
    let r = run(&[
        "--redis-sentinel",
        "m=redis://:s3cret@127.0.0.1:1",
        "streams",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("could not reach any Sentinel"), "{r:?}");
    assert!(!r.stderr.contains("s3cret"), "{r:?}");
}
