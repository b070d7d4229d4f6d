//! Tests of building and checking a [`MultiStreamSpec`](super::MultiStreamSpec).

use super::*;
use crate::spec::MAX_NAME_LEN;
use crate::{Batch, HandlerResult, RawEntry};

fn spec(streams: &[&str]) -> MultiStreamSpec {
    MultiStreamSpec::new(streams.iter().copied(), "g", "c")
        .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok })
}

fn refused(spec: &MultiStreamSpec) -> String {
    spec.validate().expect_err("refused").to_string()
}

#[test]
fn names_and_patterns_with_control_characters_are_refused() {
    let err = refused(&spec(&["a", "b\r\nc"]));
    assert!(
        err.contains("stream `b\\r\\nc`, group `g`, consumer `c`"),
        "{err}"
    );
    assert!(
        err.contains("`streams` names a stream that holds the control character `\\r`"),
        "{err}"
    );
    let err = refused(
        &MultiStreamSpec::new(["a"], "g\n", "c")
            .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok }),
    );
    assert!(
        err.contains("`group` holds the control character `\\n`"),
        "{err}"
    );
    assert!(err.contains("group `g\\n`, consumer `c`"), "{err}");
    let err = refused(
        &MultiStreamSpec::new(["a"], "g", "c\0")
            .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok }),
    );
    assert!(
        err.contains("`consumer` holds the control character `\\u{0}`"),
        "{err}"
    );
    let err = refused(
        &MultiStreamSpec::pattern("tenant:*\n", "g", "c")
            .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok }),
    );
    assert!(
        err.contains("`pattern` `tenant:*\\n` holds the control character"),
        "{err}"
    );
    assert!(err.contains("group `g`, consumer `c`"), "{err}");
    assert!(!err.contains(['\r', '\n', '\0']), "{err:?}");
}

#[test]
fn zero_streams_are_refused_naming_the_group_and_consumer() {
    let err = refused(&spec(&[]));
    assert!(err.contains("`streams` names no stream"), "{err}");
    assert!(err.contains("group `g`, consumer `c`"), "{err}");
}

#[test]
fn a_stream_named_twice_is_refused_naming_it() {
    let err = refused(&spec(&["a", "b", "b"]));
    assert!(err.contains("stream `b`, group `g`, consumer `c`"), "{err}");
    assert!(err.contains("twice"), "{err}");
}

#[test]
fn empty_and_over_long_names_are_refused() {
    assert!(refused(&spec(&["a", ""])).contains("position 1"));
    let long = "x".repeat(MAX_NAME_LEN + 1);
    assert!(refused(&spec(&["a", &long])).contains("1 to 4096 bytes"));
    let no_group = MultiStreamSpec::new(["a"], "", "c")
        .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok });
    assert!(refused(&no_group).contains("`group` must be 1 to"));
    let no_handler = MultiStreamSpec::new(["a"], "g", "c");
    assert!(refused(&no_handler).contains("`handler` is not set"));
}

#[test]
fn each_stream_has_its_own_dead_letter_stream() {
    let s = spec(&["a", "b"]);
    assert_eq!(s.for_stream("a").dead_letter_stream_name(), "a:dlq");
    assert_eq!(s.for_stream("b").dead_letter_stream_name(), "b:dlq");
    let s = s.dead_letter_stream("{stream}:dead".to_owned());
    assert!(s.validate().is_ok());
    assert_eq!(s.for_stream("b").dead_letter_stream_name(), "b:dead");
}

#[test]
fn a_fixed_dead_letter_stream_is_refused() {
    let err = refused(&spec(&["a", "b"]).dead_letter_stream("all:dlq".to_owned()));
    assert!(
        err.contains("`dead_letter_stream` is the fixed name `all:dlq`"),
        "{err}"
    );
    assert!(err.contains("{stream}"), "{err}");
}

#[test]
fn a_stream_that_is_another_ones_dead_letter_stream_is_refused() {
    let err = refused(&spec(&["a", "a:dlq"]));
    assert!(err.contains("stream `a`, group `g`"), "{err}");
    assert!(
        err.contains("its dead-letter stream `a:dlq` is one of the streams read"),
        "{err}"
    );
}

#[test]
fn the_options_apply_to_every_stream_and_its_consumer_reads_shared() {
    let s = spec(&["a", "b"])
        .count(7)
        .start_id(StartId::Beginning)
        .on_group_lost(OnGroupLost::Fail);
    let b = s.for_stream("b");
    assert_eq!(b.membership, Membership::NamedSet);
    assert_eq!(b.options().count, Some(7));
    assert_eq!(b.options().start_id, StartId::Beginning);
    assert_eq!(
        crate::ConsumerSpec::new("b", "g", "c").membership,
        Membership::OwnStream
    );
    let found = MultiStreamSpec::pattern("t:*", "g", "c").for_stream("t:1");
    assert_eq!(found.membership, Membership::Pattern);
}

#[test]
fn a_pattern_starts_with_no_stream_and_keeps_its_interval() {
    let s = MultiStreamSpec::pattern("t:*", "g", "c")
        .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok });
    assert!(s.validate().is_ok());
    assert_eq!(s.discovery_every(), Some(DEFAULT_DISCOVERY_INTERVAL));
    let s = s.discovery_interval(Duration::from_secs(1));
    assert_eq!(s.discovery_every(), Some(Duration::from_secs(1)));
    let err = refused(&s.clone().discovery_interval(Duration::ZERO));
    assert!(
        err.contains("`discovery_interval` must be at least 10ms"),
        "{err}"
    );
    let empty = MultiStreamSpec::pattern("", "g", "c")
        .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok });
    assert!(refused(&empty).contains("`pattern` must be 1 to"));
}

#[test]
fn a_discovery_interval_on_named_streams_is_refused() {
    let err = refused(&spec(&["a"]).discovery_interval(Duration::from_secs(1)));
    assert!(
        err.contains("`discovery_interval` applies to `MultiStreamSpec::pattern` only"),
        "{err}"
    );
}

#[test]
fn acl_rules_allow_xackdel_when_acknowledged_entries_are_deleted() {
    for s in [spec(&["a", "b"]), MultiStreamSpec::pattern("t:*", "g", "c")] {
        assert!(!s.acl_rules().contains("xackdel"), "{}", s.acl_rules());
        let mut options = s.options().clone();
        options.delete_acked = true;
        let rules = s.with_options(options).acl_rules();
        assert!(rules.ends_with(" +xackdel"), "{rules}");
        assert!(rules.contains("+type"), "{rules}");
    }
}
