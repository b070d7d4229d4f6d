//! Trace context end to end on a real server, spans exported to memory: the producer's span and
//! the handler's spans share a trace id, batch spans link to the producer's span, and entries
//! without or with broken trace fields are handled as usual.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::{Batch, ConsumerSpec, HandlerResult, Producer, StartId, Supervisor};

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Msg {
    n: u32,
}

fn trace_id_of(span: &tracing::Span) -> TraceId {
    span.context().span().span_context().trace_id()
}

#[tokio::test]
async fn the_handler_continues_the_producers_trace_and_odd_entries_are_handled() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("millrace-test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = millrace_testkit::RedisServer::start();
    let producer = Producer::builder().redis(server.url()).build().unwrap();
    let produce = tracing::info_span!("produce");
    let produced_in = trace_id_of(&produce);
    let traced = producer
        .add("events", &Msg { n: 1 })
        .instrument(produce.clone())
        .await
        .unwrap();
    drop(produce);
    // One entry without trace fields, one with a broken traceparent: both handled as usual.
    let mut con = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("events")
        .arg("*")
        .arg("n")
        .arg(2)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("events")
        .arg("*")
        .arg("n")
        .arg(3)
        .arg("traceparent")
        .arg("00-not-a-trace-01")
        .query_async(&mut con)
        .await
        .unwrap();

    let seen: Arc<Mutex<Vec<(u32, TraceId)>>> = Arc::default();
    let record = seen.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            ConsumerSpec::new("events", "g", "c")
                .start_id(StartId::Beginning)
                .count(1)
                .trace_entries(true)
                .block(Duration::from_millis(200))
                .handler(move |batch: Batch<Msg>| {
                    let work = tracing::info_span!("handler_work");
                    let id = trace_id_of(&work);
                    for e in &batch {
                        record.lock().unwrap().push((e.message.n, id));
                    }
                    futures::future::ready(HandlerResult::Ok)
                }),
        )
        .start()
        .await
        .unwrap();
    millrace_testkit::eventually(Duration::from_secs(30), "3 entries handled", || {
        let n = seen.lock().unwrap().len();
        async move { n >= 3 }
    })
    .await;
    app.shutdown().await.unwrap();
    provider.force_flush().unwrap();

    let seen = seen.lock().unwrap().clone();
    let mut ns: Vec<u32> = seen.iter().map(|(n, _)| *n).collect();
    ns.sort();
    assert_eq!(ns, [1, 2, 3], "each entry handled once");
    for (n, id) in &seen {
        assert_eq!(
            *n == 1,
            *id == produced_in,
            "entry {n}: trace {id}, producer's {produced_in}"
        );
    }
    let spans = exporter.get_finished_spans().unwrap();
    let producer_span = spans
        .iter()
        .find(|s| s.name == "produce")
        .expect("the producer span");
    let linked = spans
        .iter()
        .filter(|s| s.name == "batch")
        .filter(|s| {
            s.links.iter().any(|l| {
                l.span_context.trace_id() == produced_in
                    && l.span_context.span_id() == producer_span.span_context.span_id()
            })
        })
        .count();
    assert_eq!(linked, 1, "one batch span links to the producer's");
    let entry = spans
        .iter()
        .find(|s| s.name == "entry")
        .expect("an entry span");
    assert_eq!(entry.span_context.trace_id(), produced_in);
    assert_eq!(entry.parent_span_id, producer_span.span_context.span_id());
    let _ = traced;
}

#[tokio::test]
async fn a_batch_span_links_to_every_traced_entry_it_holds() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("millrace-test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = millrace_testkit::RedisServer::start();
    let producer = Producer::builder().redis(server.url()).build().unwrap();
    let mut traces = Vec::new();
    for n in 1..=3 {
        let span = tracing::info_span!("produce", n);
        traces.push(trace_id_of(&span));
        producer
            .add("many", &Msg { n })
            .instrument(span)
            .await
            .unwrap();
    }
    let handled: Arc<Mutex<Vec<(usize, TraceId)>>> = Arc::default();
    let record = handled.clone();
    let app = Supervisor::builder()
        .redis(server.url())
        .consumer(
            ConsumerSpec::new("many", "g", "c")
                .start_id(StartId::Beginning)
                .count(10)
                .block(Duration::from_millis(200))
                .handler(move |batch: Batch<Msg>| {
                    let id = trace_id_of(&tracing::Span::current());
                    record.lock().unwrap().push((batch.len(), id));
                    futures::future::ready(HandlerResult::Ok)
                }),
        )
        .start()
        .await
        .unwrap();
    millrace_testkit::eventually(Duration::from_secs(30), "the batch handled", || {
        let n = handled.lock().unwrap().len();
        async move { n >= 1 }
    })
    .await;
    app.shutdown().await.unwrap();
    provider.force_flush().unwrap();

    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 1, "one batch of three: {handled:?}");
    let (entries, handler_trace) = handled[0];
    assert_eq!(entries, 3);
    assert!(
        !traces.contains(&handler_trace),
        "a batch of many runs in a trace of its own"
    );
    let spans = exporter.get_finished_spans().unwrap();
    let batch = spans
        .iter()
        .find(|s| s.name == "batch")
        .expect("the batch span");
    assert_eq!(batch.span_context.trace_id(), handler_trace);
    let mut linked: Vec<TraceId> = batch
        .links
        .iter()
        .map(|l| l.span_context.trace_id())
        .collect();
    linked.sort_by_key(|t| t.to_bytes());
    traces.sort_by_key(|t| t.to_bytes());
    assert_eq!(linked, traces, "a link to each entry's producer span");
    assert!(
        spans.iter().all(|s| s.name != "entry"),
        "no entry spans unless asked"
    );
}
