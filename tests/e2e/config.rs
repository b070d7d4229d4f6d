//! Bad configuration is refused before anything starts, with an error naming the field.

use std::time::Duration;

use millrace::{Batch, ConsumerOptions, ConsumerSpec, Error, HandlerResult, RawEntry, Supervisor};

fn handler(_b: Batch<RawEntry>) -> futures::future::Ready<HandlerResult> {
    futures::future::ready(HandlerResult::Ok)
}

async fn refused(spec: ConsumerSpec) -> (String, String) {
    // No server is needed: validation happens before connecting.
    let err = Supervisor::builder()
        .redis("redis://127.0.0.1:1")
        .consumer(spec)
        .start()
        .await
        .unwrap_err();
    match &err {
        Error::Config { field, .. } => (field.clone(), err.to_string()),
        other => panic!("expected a config error, got {other}"),
    }
}

#[tokio::test]
async fn count_zero_is_refused() {
    let (field, msg) = refused(ConsumerSpec::new("s", "g", "c").count(0).handler(handler)).await;
    assert_eq!(field, "count");
    assert!(
        msg.contains("consumer `c`") && msg.contains("no limit"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_read_timeout_not_above_block_is_refused() {
    let spec = ConsumerSpec::new("s", "g", "c")
        .block(Duration::from_secs(3))
        .read_timeout(Duration::from_millis(500))
        .handler(handler);
    let (field, msg) = refused(spec).await;
    assert_eq!(field, "read_timeout");
    assert!(msg.contains("strands"), "{msg}");
}

#[tokio::test]
async fn block_zero_and_other_bounds_are_refused() {
    assert_eq!(
        refused(
            ConsumerSpec::new("s", "g", "c")
                .block(Duration::ZERO)
                .handler(handler)
        )
        .await
        .0,
        "block"
    );
    assert_eq!(
        refused(
            ConsumerSpec::new("s", "g", "c")
                .max_deliveries(0)
                .handler(handler)
        )
        .await
        .0,
        "max_deliveries"
    );
    assert_eq!(
        refused(
            ConsumerSpec::new("s", "g", "c")
                .claim_interval(Duration::ZERO)
                .handler(handler)
        )
        .await
        .0,
        "claim_interval"
    );
    assert_eq!(
        refused(ConsumerSpec::new("", "g", "c").handler(handler))
            .await
            .0,
        "stream"
    );
    assert_eq!(refused(ConsumerSpec::new("s", "g", "c")).await.0, "handler");
    assert_eq!(
        refused(
            ConsumerSpec::new("s", "g", "c")
                .dead_letter_stream("s".into())
                .handler(handler)
        )
        .await
        .0,
        "dead_letter_stream"
    );
}

#[test]
fn bad_duration_strings_are_refused_naming_the_key() {
    for (text, key) in [
        ("block = \"5\"", "block"),
        ("claim_interval = \"-1s\"", "claim_interval"),
        ("claim_min_idle = \"1e9y\"", "claim_min_idle"),
        ("handler_timeout = \"\"", "handler_timeout"),
        ("shutdown_timeout = \"soon\"", "shutdown_timeout"),
    ] {
        let err = toml::from_str::<ConsumerOptions>(text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[tokio::test]
async fn a_bad_url_is_refused_without_echoing_the_password() {
    let err = Supervisor::builder()
        .redis("redis://user:S3ntinel-PW@host:notaport")
        .consumer(ConsumerSpec::new("s", "g", "c").handler(handler))
        .start()
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("S3ntinel-PW"), "{text}");
    let builder = Supervisor::builder().redis("redis://user:S3ntinel-PW@127.0.0.1:1");
    assert!(!format!("{builder:?}").contains("S3ntinel-PW"));
}
