//! Adding entries: [`Producer`] encodes messages into fields (the mirror of the consumer's
//! decoding), trims, writes the current trace context, and adds entries one at a time or
//! pipelined; on a Redis Cluster it groups a pipeline per stream, so a live slot migration never
//! splits a stream.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::connection::{Backend, ConnectionOptions, Control};
use crate::entry::EntryId;
use crate::error::{Error, Result};

mod encode;
mod send;
#[cfg(test)]
mod tests;
mod trim;

pub use encode::{to_fields, EncodeError, Fields};
pub use trim::Trim;

use send::Chunk;

/// Streams a cluster producer adds to at once (each stream's own pipelines go one after another).
const STREAMS_IN_FLIGHT: usize = 32;

/// Adds entries to streams: typed messages through serde, optional trimming, the current span's
/// trace context, single and pipelined adds, on one server or a Redis Cluster. Cheap to clone.
///
/// A message is a struct (or a map) of scalar fields, encoded as a consumer of the same type
/// decodes it: numbers and booleans as text, `None` left out (see [`to_fields`]).
///
/// ```no_run
/// use millrace::producer::{Producer, Trim};
///
/// #[derive(serde::Serialize)]
/// struct Order { order_id: u64, quantity: u32 }
///
/// # async fn run() -> millrace::Result<()> {
/// let producer = Producer::builder()
///     .redis("redis://127.0.0.1:6379")
///     .trim(Trim::max_len(1_000_000))
///     .build()?;
/// let id = producer.add("orders", &Order { order_id: 1, quantity: 2 }).await?;
/// let ids = producer
///     .add_many((2..100).map(|n| ("orders", Order { order_id: n, quantity: 1 })))
///     .await?;
/// # let _ = (id, ids); Ok(()) }
/// ```
///
/// Adding is at-least-once: when a reply is lost (a timeout, a dropped connection), the entries
/// may have been added, and adding them again duplicates them. Consumers are idempotent anyway.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    trim: Option<Trim>,
    trace_context: bool,
    max_pipeline: usize,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("server", &self.inner.backend.server())
            .field("trim", &self.inner.trim)
            .field("trace_context", &self.inner.trace_context)
            .field("max_pipeline", &self.inner.max_pipeline)
            .finish()
    }
}

/// Builds a [`Producer`]; from [`Producer::builder`].
#[derive(Debug, Clone)]
pub struct ProducerBuilder {
    target: Option<Target>,
    options: ConnectionOptions,
    trim: Option<Trim>,
    trace_context: bool,
    max_pipeline: usize,
}

#[derive(Clone)]
enum Target {
    Url(String),
    Cluster(Vec<String>),
}

impl fmt::Debug for Target {
    // URLs may hold passwords: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Url(_) => "Url(<redacted>)",
            Target::Cluster(_) => "Cluster(<redacted>)",
        })
    }
}

impl ProducerBuilder {
    /// The Redis server's URL (`redis://`, `rediss://` with the `tls` feature, `unix://`).
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.target = Some(Target::Url(url.into()));
        self
    }

    /// A Redis Cluster, by the URLs of some of its nodes (any one that answers is enough).
    pub fn redis_cluster<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.target = Some(Target::Cluster(urls.into_iter().map(Into::into).collect()));
        self
    }

    /// Timeouts and TLS certificates, as for consumers. The command timeout bounds one pipeline.
    pub fn connection_options(mut self, options: ConnectionOptions) -> Self {
        self.options = options;
        self
    }

    /// Trims every stream it adds to, with each `XADD` (default: no trimming).
    pub fn trim(mut self, trim: Trim) -> Self {
        self.trim = Some(trim);
        self
    }

    /// Whether to write the current span's W3C trace context into each entry (fields
    /// `traceparent` and `tracestate`). Default `true`; it takes effect with the `opentelemetry`
    /// feature, when the current span has an OpenTelemetry context.
    pub fn trace_context(mut self, on: bool) -> Self {
        self.trace_context = on;
        self
    }

    /// The most entries of one [`Producer::add_many`] sent in one pipeline (default 1,000; larger
    /// calls are sent in several, in order). On a cluster it is per stream.
    pub fn max_pipeline(mut self, entries: usize) -> Self {
        self.max_pipeline = entries;
        self
    }

    /// Checks the settings and opens the client; the first add connects.
    pub fn build(self) -> Result<Producer> {
        if let Some(trim) = &self.trim {
            trim.validate()?;
        }
        if self.max_pipeline == 0 {
            return Err(Error::config(
                None,
                "producer.max_pipeline",
                "is 0: send at least 1 entry per pipeline",
            ));
        }
        let backend = match self.target {
            Some(Target::Url(url)) => Backend::open(&url, self.options)?,
            Some(Target::Cluster(urls)) => Backend::open_cluster(&urls, self.options)?,
            None => return Err(Error::config(
                None,
                "redis",
                "is not set: call `.redis(url)` or `.redis_cluster(urls)` on the producer builder",
            )),
        };
        Ok(Producer {
            inner: Arc::new(Inner {
                backend,
                trim: self.trim,
                trace_context: self.trace_context,
                max_pipeline: self.max_pipeline,
            }),
        })
    }
}

impl Producer {
    /// A builder: `.redis(url)` or `.redis_cluster(urls)`, then options, then `.build()`.
    pub fn builder() -> ProducerBuilder {
        ProducerBuilder {
            target: None,
            options: ConnectionOptions::default(),
            trim: None,
            trace_context: true,
            max_pipeline: 1_000,
        }
    }

    /// Adds one message to `stream` (`XADD stream [trim] * fields…`) and returns its id.
    pub async fn add<T: Serialize + ?Sized>(&self, stream: &str, message: &T) -> Result<EntryId> {
        let fields = encode_for(stream, message)?;
        self.add_fields(stream, fields).await
    }

    /// Adds one entry of raw field/value pairs to `stream` and returns its id.
    pub async fn add_fields(&self, stream: &str, fields: Fields) -> Result<EntryId> {
        let trace = self.trace_fields();
        let streams = [stream.to_owned()];
        let cluster = self.inner.backend.is_cluster();
        let chunks = send::plan(&streams, &[0], vec![fields], 1, cluster);
        let mut control = self.control();
        let trim = self.inner.trim.as_ref();
        let ids = send::run(&mut control, &streams, &chunks[0], trim, trace.as_ref()).await?;
        ids.into_iter()
            .next()
            .ok_or_else(|| send::failed(stream, send::unexpected("no id".into()), 0, 1))
    }

    /// Adds many messages, each to its stream, pipelined; returns their ids in the order given.
    /// Entries of one stream are added in the order given.
    ///
    /// On one server the adds go in pipelines of up to `max_pipeline` entries. On a cluster each
    /// stream's entries go in their own pipelines, wrapped in `MULTI`/`EXEC` so that a redirect
    /// (`MOVED`, or `ASK` during a live slot migration, which makes the client send the pipeline
    /// again elsewhere) finds the block added whole or not at all; different streams go at once.
    ///
    /// Every message is encoded before anything is sent: one that cannot be encoded fails the
    /// call with nothing added. A Redis error fails the call and names the stream; the entries of
    /// other pipelines may have been added.
    pub async fn add_many<S, T, I>(&self, entries: I) -> Result<Vec<EntryId>>
    where
        S: AsRef<str>,
        T: Serialize,
        I: IntoIterator<Item = (S, T)>,
    {
        let mut streams: Vec<String> = Vec::new();
        let mut by_stream: HashMap<String, usize> = HashMap::new();
        let mut order: Vec<usize> = Vec::new(); // entry i goes to streams[order[i]]
        let mut fields = Vec::new();
        for (stream, message) in entries {
            let stream = stream.as_ref();
            fields.push(encode_for(stream, &message)?);
            let at = *by_stream.entry(stream.to_owned()).or_insert_with(|| {
                streams.push(stream.to_owned());
                streams.len() - 1
            });
            order.push(at);
        }
        let trace = self.trace_fields();
        let chunks = send::plan(
            &streams,
            &order,
            fields,
            self.inner.max_pipeline,
            self.inner.backend.is_cluster(),
        );
        let mut ids = vec![EntryId::default(); order.len()];
        if self.inner.backend.is_cluster() {
            // One task per stream, its chunks in order; streams concurrently.
            let mut per_stream: Vec<Vec<Chunk>> = streams.iter().map(|_| Vec::new()).collect();
            for chunk in chunks {
                per_stream[chunk.stream].push(chunk);
            }
            let (trim, trace) = (self.inner.trim.as_ref(), trace.as_ref());
            let mut results = futures::stream::iter(per_stream)
                .map(|chunks| {
                    let mut control = self.control();
                    let streams = &streams;
                    async move {
                        let mut out = Vec::new();
                        for chunk in chunks {
                            let added =
                                send::run(&mut control, streams, &chunk, trim, trace).await?;
                            out.push((chunk, added));
                        }
                        Ok::<_, Error>(out)
                    }
                })
                .buffer_unordered(STREAMS_IN_FLIGHT);
            let mut first_error = None;
            while let Some(result) = results.next().await {
                match result {
                    Ok(done) => {
                        for (chunk, added) in done {
                            chunk.place(added, &mut ids);
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        } else {
            let mut control = self.control();
            for chunk in chunks {
                let added = send::run(
                    &mut control,
                    &streams,
                    &chunk,
                    self.inner.trim.as_ref(),
                    trace.as_ref(),
                )
                .await?;
                chunk.place(added, &mut ids);
            }
        }
        Ok(ids)
    }

    fn control(&self) -> Control {
        self.inner.backend.control()
    }

    fn trace_fields(&self) -> Option<crate::trace::TraceFields> {
        if self.inner.trace_context {
            crate::trace::current()
        } else {
            None
        }
    }
}

fn encode_for<T: Serialize + ?Sized>(stream: &str, message: &T) -> Result<Fields> {
    to_fields(message).map_err(|e| Error::Produce {
        stream: stream.to_owned(),
        reason: format!("the message cannot be encoded as stream fields: {e}"),
        hint: "give the message type scalar fields only (numbers, strings, booleans, unit enums, Options of them); nothing was added".into(),
        retryable: false,
    })
}
