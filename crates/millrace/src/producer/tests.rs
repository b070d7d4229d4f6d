//! The producer against a real server: what it adds decodes back, ids come in the order given,
//! trimming bounds the stream, and failures name the stream and what to do.

use millrace_testkit::RedisServer;

use super::{Producer, Trim};
use crate::EntryId;

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Order {
    order_id: u64,
    price: f64,
    note: Option<String>,
}

type Range = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

async fn range(server: &RedisServer, stream: &str) -> Range {
    let mut con = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .unwrap()
}

#[tokio::test]
async fn what_is_added_decodes_back_with_ids_in_the_order_given() {
    let server = RedisServer::start();
    let producer = Producer::builder()
        .redis(server.url())
        .max_pipeline(3)
        .build()
        .unwrap();
    let one = Order {
        order_id: 0,
        price: 9.5,
        note: None,
    };
    let first = producer.add("a", &one).await.unwrap();
    let ids = producer
        .add_many((1..=8).map(|n| {
            let stream = if n % 2 == 0 { "a" } else { "b" };
            (
                stream,
                Order {
                    order_id: n,
                    price: n as f64 / 4.0,
                    note: Some(format!("#{n}")),
                },
            )
        }))
        .await
        .unwrap();
    assert_eq!(ids.len(), 8);
    // ids[i] is order i + 1's: odd orders went to `b`, even ones to `a`.
    let of_a: Vec<EntryId> = ids.iter().skip(1).step_by(2).copied().collect();
    assert!(
        of_a.windows(2).all(|w| w[0] < w[1]),
        "ids in the order given: {ids:?}"
    );
    assert!(first < of_a[0]);
    let a = range(&server, "a").await;
    let stored: Vec<(EntryId, Order)> = a
        .iter()
        .map(|(id, fields)| {
            (
                id.parse().unwrap(),
                crate::decode::from_fields(fields).unwrap(),
            )
        })
        .collect();
    assert_eq!(stored[0], (first, one));
    let orders: Vec<u64> = stored.iter().map(|(_, o)| o.order_id).collect();
    assert_eq!(orders, [0, 2, 4, 6, 8]);
    let stored_ids: Vec<EntryId> = stored.iter().skip(1).map(|(id, _)| *id).collect();
    assert_eq!(stored_ids, of_a);
    assert_eq!(stored[1].1.note.as_deref(), Some("#2"));
    assert_eq!(range(&server, "b").await.len(), 4);
}

#[tokio::test]
async fn trimming_bounds_the_stream() {
    let server = RedisServer::start();
    let exact = Producer::builder()
        .redis(server.url())
        .trim(Trim::max_len(10).exact())
        .build()
        .unwrap();
    exact
        .add_many((0..50).map(|n| {
            (
                "exact",
                Order {
                    order_id: n,
                    price: 1.0,
                    note: None,
                },
            )
        }))
        .await
        .unwrap();
    let kept = range(&server, "exact").await;
    assert_eq!(kept.len(), 10);
    let last: Order = crate::decode::from_fields(&kept[9].1).unwrap();
    assert_eq!(last.order_id, 49, "the newest are kept");
    let about = Producer::builder()
        .redis(server.url())
        .trim(Trim::max_len(100))
        .build()
        .unwrap();
    about
        .add_many((0..1000).map(|n| {
            (
                "about",
                Order {
                    order_id: n,
                    price: 1.0,
                    note: None,
                },
            )
        }))
        .await
        .unwrap();
    let kept = range(&server, "about").await.len();
    assert!(
        (100..1000).contains(&kept),
        "approximate trimming kept {kept}"
    );
}

#[derive(serde::Serialize)]
struct Nested {
    order_id: u64,
    lines: Vec<u32>,
}

#[tokio::test]
async fn failures_name_the_stream_and_what_to_do() {
    let server = RedisServer::start();
    let producer = Producer::builder().redis(server.url()).build().unwrap();
    let mut con = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("v")
        .query_async(&mut con)
        .await
        .unwrap();
    let err = producer
        .add(
            "plain",
            &Order {
                order_id: 1,
                price: 1.0,
                note: None,
            },
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("stream `plain`") && text.contains("not a stream"),
        "{text}"
    );
    assert!(err.is_fatal() && !err.is_retryable(), "{text}");
    // A message that cannot be encoded fails the whole call before anything is sent.
    let err = producer
        .add_many([
            (
                "nested",
                Nested {
                    order_id: 1,
                    lines: vec![],
                },
            ),
            (
                "nested",
                Nested {
                    order_id: 2,
                    lines: vec![1],
                },
            ),
        ])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("stream `nested`") && text.contains("field `lines`"),
        "{text}"
    );
    assert!(range(&server, "nested").await.is_empty(), "nothing added");
    // An unreachable server is worth retrying.
    let port = server.port();
    drop(server);
    let gone = Producer::builder()
        .redis(format!("redis://127.0.0.1:{port}"))
        .build()
        .unwrap();
    let err = gone
        .add(
            "s",
            &Order {
                order_id: 1,
                price: 1.0,
                note: None,
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("stream `s`"), "{err}");
}

#[test]
fn bad_settings_are_refused_at_build() {
    let no_server = Producer::builder().build().unwrap_err();
    assert!(no_server.to_string().contains(".redis(url)"), "{no_server}");
    let zero = Producer::builder()
        .redis("redis://127.0.0.1")
        .max_pipeline(0)
        .build();
    assert!(zero.unwrap_err().to_string().contains("max_pipeline"));
    let trim = Producer::builder()
        .redis("redis://127.0.0.1")
        .trim(Trim::max_len(0))
        .build();
    assert!(trim.unwrap_err().to_string().contains("producer.trim"));
}

#[tokio::test]
async fn a_user_allowed_only_xadd_can_produce() {
    let server = RedisServer::start();
    let mut con = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("producer")
        .arg("on")
        .arg(">producer-pw")
        .arg("~orders*")
        .arg("resetchannels")
        .arg("-@all")
        .arg("+xadd")
        .query_async(&mut con)
        .await
        .unwrap();
    let url = format!("redis://producer:producer-pw@127.0.0.1:{}", server.port());
    let producer = Producer::builder().redis(url).build().unwrap();
    let order = Order {
        order_id: 1,
        price: 1.0,
        note: None,
    };
    producer.add("orders", &order).await.unwrap();
    producer
        .add_many([("orders", &order), ("orders", &order)])
        .await
        .unwrap();
    let err = producer.add("elsewhere", &order).await.unwrap_err();
    assert!(
        err.to_string().contains("~elsewhere"),
        "the missing key pattern is named: {err}"
    );
    assert!(err.is_fatal(), "{err}");
    assert_eq!(range(&server, "orders").await.len(), 3);
}
