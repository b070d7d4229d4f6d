//! Tests of `millrace.toml` parsing and environment overrides.

use std::time::Duration;

use super::*;
use crate::{Batch, HandlerResult, RawEntry};

const FILE: &str = r#"
    redis = "redis://127.0.0.1:6379"
    [restart]
    max_restarts = 3
    [defaults]
    count = 50
    block = "2s"
    [[consumers]]
    stream = "orders"
    group = "g"
    consumer = "w"
    replicas = 2
    [consumers.options]
    block = "1s"
"#;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn handler(_b: Batch<RawEntry>) -> futures::future::Ready<HandlerResult> {
    futures::future::ready(HandlerResult::Ok)
}

#[test]
fn defaults_merge_and_replicas_expand() {
    let s = Settings::from_toml_str(FILE).unwrap();
    let specs = s.consumers("orders", handler);
    assert_eq!(specs.len(), 2);
    let o = specs[0].options();
    assert_eq!((o.count, o.block), (Some(50), Duration::from_secs(1)));
    assert_eq!(&*specs[1].id().consumer, "w-1");
    assert!(s.consumers("other", handler).is_empty());
    assert_eq!(s.restart.max_restarts, 3);
}

#[test]
fn environment_overrides_apply() {
    let s = Settings::parse(
        FILE,
        env(&[
            ("MILLRACE_DEFAULTS__COUNT", "7"),
            ("MILLRACE_CONSUMERS__0__OPTIONS__BLOCK", "3s"),
            ("MILLRACE_RESTART__WINDOW", "30s"),
            ("MILLRACE_REDIS_SERVER", "/usr/bin/redis-server"),
            ("MILLRACE_CONNECTION__WAIT_FOR_REDIS", "true"),
        ]),
    )
    .unwrap();
    let o = s.declarations()[0].options.clone();
    assert_eq!((o.count, o.block), (Some(7), Duration::from_secs(3)));
    assert_eq!(s.restart.window, Duration::from_secs(30));
    assert!(s.connection.wait_for_redis);
}

#[test]
fn the_environment_makes_a_fixed_count_adaptive_and_sets_its_bounds() {
    let s = Settings::parse(
        FILE,
        env(&[
            ("MILLRACE_DEFAULTS__COUNT", "adaptive"),
            ("MILLRACE_DEFAULTS__BATCH_TARGET", "250ms"),
            ("MILLRACE_DEFAULTS__MAX_COUNT", "400"),
        ]),
    )
    .unwrap();
    let o = s.declarations()[0].options.clone();
    assert_eq!(o.count, None);
    assert_eq!(o.batch_target, Duration::from_millis(250));
    assert_eq!((o.min_count, o.max_count), (1, 400));
    let err = Settings::parse(FILE, env(&[("MILLRACE_DEFAULTS__MAX_COUNT", "0")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("consumers[0].options.min_count"), "{err}");
    let err = Settings::parse(FILE, env(&[("MILLRACE_DEFAULTS__COUNT", "many")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("adaptive"), "{err}");
}

#[test]
fn tls_files_are_read_and_a_missing_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, "not checked until a connection is made").unwrap();
    let file =
        |extra: &str| format!("redis = \"rediss://127.0.0.1:6380\"\n[connection]\n{extra}\n");
    let with_ca = Settings::from_toml_str(&file(&format!(
        "tls_ca_cert = {:?}",
        ca.display().to_string()
    )));
    let missing = Settings::from_toml_str(&file("tls_ca_cert = \"/nonexistent/ca.crt\""));
    let half = Settings::from_toml_str(&file(&format!(
        "tls_client_cert = {:?}",
        ca.display().to_string()
    )));
    if cfg!(feature = "tls") {
        assert!(with_ca.is_ok(), "{with_ca:?}");
        let err = missing.unwrap_err().to_string();
        assert!(
            err.contains("connection.tls_ca_cert") && err.contains("/nonexistent/ca.crt"),
            "{err}"
        );
        let err = half.unwrap_err().to_string();
        assert!(err.contains("tls_client_key"), "{err}");
    } else {
        let err = with_ca.unwrap_err().to_string();
        assert!(err.contains("`tls` cargo feature"), "{err}");
    }
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    let err = Settings::parse(FILE, env(&[("MILLRACE_DEFAULTS__CONT", "7")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cont"), "{err}");
    let err = Settings::from_toml_str(&FILE.replace("replicas = 2", "replicas = 2\nreplica = 1"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("replica"), "{err}");
    let err = Settings::from_toml_str(&FILE.replace("block = \"1s\"", "block = \"1\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("block") && err.contains("no unit"), "{err}");
    let err = Settings::from_toml_str(&FILE.replace("count = 50", "count = 0"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("consumers[0].options.count"), "{err}");
    let err = Settings::parse(FILE, env(&[("MILLRACE_CONSUMERS__3__GROUP", "x")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("index 3"), "{err}");
}

#[test]
fn a_cluster_is_named_by_its_seeds_in_the_file_or_the_environment() {
    let file = FILE.replace(
        r#"redis = "redis://127.0.0.1:6379""#,
        "[redis]\ncluster = [\"redis://u:S3cret@127.0.0.1:7000\", \"redis://u:S3cret@127.0.0.1:7001\"]",
    );
    let s = Settings::from_toml_str(&file).unwrap();
    assert!(matches!(&s.redis, Some(RedisTarget::Cluster(seeds)) if seeds.len() == 2));
    assert!(!format!("{s:?}").contains("S3cret"));
    let builder = format!("{:?}", s.supervisor().unwrap());
    assert!(builder.contains("cluster of 2 seed urls"), "{builder}");
    assert!(!builder.contains("S3cret"), "{builder}");

    let s = Settings::parse(
        FILE,
        env(&[("MILLRACE_REDIS__CLUSTER", "redis://127.0.0.1:7000")]),
    );
    // `redis` is a URL in the file: the override of a key inside it is refused…
    assert!(s.is_err());
    let s = Settings::parse(
        &FILE.replace(r#"redis = "redis://127.0.0.1:6379""#, ""),
        env(&[(
            "MILLRACE_REDIS__CLUSTER",
            "redis://127.0.0.1:7000, redis://127.0.0.1:7001,redis://127.0.0.1:7002",
        )]),
    )
    .unwrap();
    // …and without one in the file, the environment names the cluster.
    assert!(
        matches!(&s.redis, Some(RedisTarget::Cluster(seeds)) if seeds.len() == 3 && seeds[1] == "redis://127.0.0.1:7001")
    );
}

const SENTINEL: &str = r#"
    [sentinel]
    master = "mymaster"
    urls = ["redis://:S3ntPw@127.0.0.1:26379", "redis://:S3ntPw@127.0.0.1:26380"]
    username = "millrace"
    password = "S3cret"
"#;

#[test]
fn a_master_behind_sentinel_is_named_in_the_file_or_the_environment() {
    let file = FILE.replace(r#"redis = "redis://127.0.0.1:6379""#, SENTINEL);
    let s = Settings::from_toml_str(&file).unwrap();
    assert!(matches!(
        &s.redis,
        Some(RedisTarget::Sentinel { master, urls, username, password })
            if master == "mymaster" && urls.len() == 2
                && username.as_deref() == Some("millrace") && password.as_deref() == Some("S3cret")
    ));
    let builder = format!("{:?}", s.supervisor().unwrap());
    assert!(builder.contains("mymaster"), "{builder}");
    for shown in [format!("{s:?}"), builder] {
        assert!(
            !shown.contains("S3cret") && !shown.contains("S3ntPw"),
            "{shown}"
        );
    }

    // The environment alone: the URLs as one comma-separated string.
    let s = Settings::parse(
        &FILE.replace(r#"redis = "redis://127.0.0.1:6379""#, ""),
        env(&[
            ("MILLRACE_SENTINEL__MASTER", "other"),
            (
                "MILLRACE_SENTINEL__URLS",
                "redis://127.0.0.1:26379, redis://127.0.0.1:26380,redis://127.0.0.1:26381",
            ),
            ("MILLRACE_SENTINEL__PASSWORD", "pw"),
        ]),
    )
    .unwrap();
    assert!(matches!(
        &s.redis,
        Some(RedisTarget::Sentinel { master, urls, username: None, password: Some(_) })
            if master == "other" && urls.len() == 3 && urls[1] == "redis://127.0.0.1:26380"
    ));
    // The environment overrides the file's master name.
    let s = Settings::parse(&file, env(&[("MILLRACE_SENTINEL__MASTER", "m2")])).unwrap();
    assert!(matches!(&s.redis, Some(RedisTarget::Sentinel { master, .. }) if master == "m2"));
}

#[test]
fn sentinel_and_redis_together_or_incomplete_are_refused_naming_the_keys() {
    let err = |file: &str, vars: &[(&str, &str)]| match Settings::parse(file, env(vars)) {
        Ok(s) => s.supervisor().map(|_| ()).unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    let both = format!("{FILE}\n{SENTINEL}");
    let e = err(&both, &[]);
    assert!(e.contains("redis, sentinel") && e.contains("keep"), "{e}");
    assert!(!e.contains("S3cret"), "{e}");
    let no_redis = FILE.replace(r#"redis = "redis://127.0.0.1:6379""#, "");
    let e = err(
        &format!("{no_redis}\n[redis]\ncluster = [\"redis://127.0.0.1:7000\"]\n{SENTINEL}"),
        &[],
    );
    assert!(e.contains("redis, sentinel"), "{e}");
    // The environment adds a Sentinel next to the file's `redis`.
    let e = err(
        FILE,
        &[
            ("MILLRACE_SENTINEL__MASTER", "m"),
            ("MILLRACE_SENTINEL__URLS", "redis://127.0.0.1:26379"),
        ],
    );
    assert!(e.contains("redis, sentinel"), "{e}");
    // Missing pieces name the key.
    let e = err(
        &no_redis,
        &[("MILLRACE_SENTINEL__URLS", "redis://127.0.0.1:26379")],
    );
    assert!(e.contains("master"), "{e}");
    let e = err(&no_redis, &[("MILLRACE_SENTINEL__MASTER", "m")]);
    assert!(e.contains("urls"), "{e}");
    let e = err(
        &no_redis,
        &[
            ("MILLRACE_SENTINEL__MASTER", "m"),
            ("MILLRACE_SENTINEL__URLS", ""),
        ],
    );
    assert!(e.contains("sentinel.urls") && e.contains("is empty"), "{e}");
    let e = err(
        &no_redis,
        &[
            ("MILLRACE_SENTINEL__MASTER", "m"),
            ("MILLRACE_SENTINEL__URLS", "redis://127.0.0.1:26379"),
            ("MILLRACE_SENTINEL__USERNAME", "u"),
        ],
    );
    assert!(
        e.contains("sentinel.username") && e.contains("password"),
        "{e}"
    );
    let e = err(&no_redis, &[("MILLRACE_SENTINEL__PORT", "1")]);
    assert!(e.contains("port"), "{e}");
}

#[test]
fn debug_hides_the_url() {
    let s = Settings::from_toml_str(&FILE.replace("redis://127", "redis://u:S3cret@127")).unwrap();
    assert!(!format!("{s:?}").contains("S3cret"));
}

#[test]
fn multi_stream_consumers_are_declared_by_streams_or_pattern() {
    let s = Settings::from_toml_str(
        r#"
        service = "svc"
        [defaults]
        count = 50
        block = "2s"
        [[multi_streams]]
        streams = ["orders:eu", "orders:us"]
        group = "billing"
        consumer = "b"
        replicas = 2
        [multi_streams.options]
        block = "1s"
        [[multi_streams]]
        pattern = "tenant:*:events"
        group = "audit"
        discovery_interval = "5s"
        "#,
    )
    .unwrap();
    assert_eq!(s.multi_stream_declarations().len(), 2);
    let billing = s.multi_streams("billing", handler);
    let names: Vec<&str> = billing.iter().map(|m| m.consumer()).collect();
    assert_eq!(names, ["b-0", "b-1"]);
    for spec in &billing {
        assert_eq!(spec.streams(), ["orders:eu", "orders:us"]);
        assert_eq!(spec.group(), "billing");
        assert_eq!(spec.options().count, Some(50), "[defaults]");
        assert_eq!(
            spec.options().block,
            Duration::from_secs(1),
            "its own options"
        );
        spec.validate().expect("a complete spec, handler set");
    }
    let audit = s.multi_streams("audit", handler);
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].key_pattern(), Some("tenant:*:events"));
    assert!(
        audit[0].consumer().starts_with("svc-"),
        "stable_name(service)"
    );
    assert_eq!(audit[0].options().block, Duration::from_secs(2));
    audit[0].validate().expect("a complete pattern spec");
    assert!(s.multi_streams("other", handler).is_empty());
    // Single-stream declarations are separate.
    assert!(s.consumers("orders:eu", handler).is_empty());
}

#[test]
fn multi_stream_consumers_can_be_declared_in_the_environment_alone() {
    // Given in any order; the indexes say which entry each variable belongs to.
    let s = Settings::parse(
        "redis = \"redis://127.0.0.1:6379\"",
        env(&[
            ("MILLRACE_MULTI_STREAMS__1__PATTERN", "tenant:*:events"),
            ("MILLRACE_MULTI_STREAMS__1__GROUP", "audit"),
            ("MILLRACE_MULTI_STREAMS__1__CONSUMER", "a"),
            ("MILLRACE_MULTI_STREAMS__0__STREAMS", "orders:eu, orders:us"),
            ("MILLRACE_MULTI_STREAMS__0__GROUP", "billing"),
            ("MILLRACE_MULTI_STREAMS__0__CONSUMER", "b"),
            ("MILLRACE_MULTI_STREAMS__0__OPTIONS__COUNT", "7"),
            ("MILLRACE_MULTI_STREAMS__1__DISCOVERY_INTERVAL", "30s"),
        ]),
    )
    .unwrap();
    let billing = s.multi_streams("billing", handler);
    assert_eq!(billing.len(), 1);
    assert_eq!(billing[0].streams(), ["orders:eu", "orders:us"]);
    assert_eq!(billing[0].consumer(), "b");
    assert_eq!(billing[0].options().count, Some(7));
    let audit = s.multi_streams("audit", handler);
    assert_eq!(audit[0].key_pattern(), Some("tenant:*:events"));
    assert_eq!(
        s.multi_stream_declarations()[1].discovery_interval,
        Some(Duration::from_secs(30))
    );
    // A TOML list works as well, and overrides a file's entry.
    let s = Settings::parse(
        "[[multi_streams]]\nstreams = [\"x\"]\ngroup = \"g\"",
        env(&[("MILLRACE_MULTI_STREAMS__0__STREAMS", r#"["y", "z"]"#)]),
    )
    .unwrap();
    assert_eq!(s.multi_streams("g", handler)[0].streams(), ["y", "z"]);
}

#[test]
fn bad_multi_stream_declarations_name_the_entry() {
    let refused = |text: &str, vars: &[(&str, &str)]| {
        Settings::parse(text, env(vars))
            .expect_err("refused")
            .to_string()
    };
    let both = refused(
        "[[multi_streams]]\nstreams = [\"a\"]\npattern = \"t:*\"\ngroup = \"g\"",
        &[],
    );
    assert!(
        both.contains("`multi_streams[0].pattern` and `streams` are both set"),
        "{both}"
    );
    let neither = refused("[[multi_streams]]\ngroup = \"g\"", &[]);
    assert!(
        neither.contains("`multi_streams[0].streams` is empty and there is no `pattern`"),
        "{neither}"
    );
    let replicas = refused(
        "[[multi_streams]]\nstreams = \"a\"\ngroup = \"g\"\nreplicas = 0",
        &[],
    );
    assert!(
        replicas.contains("`multi_streams[0].replicas`"),
        "{replicas}"
    );
    let option = refused(
        "[[multi_streams]]\nstreams = \"a\"\ngroup = \"g\"\n[multi_streams.options]\ncount = 0",
        &[],
    );
    assert!(
        option.contains("multi_streams[0].options.count"),
        "{option}"
    );
    let unknown = refused("[[multi_streams]]\nstream = \"a\"\ngroup = \"g\"", &[]);
    assert!(unknown.contains("stream"), "{unknown}");
    let gap = refused("", &[("MILLRACE_MULTI_STREAMS__1__GROUP", "g")]);
    assert!(
        gap.contains(
            "index 1 is past the 0 declared entries: declare entries in order, from index 0"
        ),
        "{gap}"
    );
}
