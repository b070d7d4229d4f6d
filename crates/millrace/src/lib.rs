//! # millrace
//!
//! Supervised, self-healing workers over Redis Streams consumer groups.
//!
//! You write a [`Handler`]; millrace runs one supervised consumer per (stream, group, consumer):
//! it creates the group, replays the consumer's own pending entries after every (re)start, reads new
//! entries with `XREADGROUP`, acknowledges what the handler says, claims entries other consumers left
//! idle with `XAUTOCLAIM`, moves poison and undecodable entries to a dead-letter stream, reconnects
//! after Redis faults, and restarts crashed consumers with backoff up to a limit.
//!
//! ```no_run
//! use millrace::{Batch, ConsumerSpec, Handler, HandlerResult, Supervisor};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { order_id: u64, quantity: u32 }
//!
//! struct Orders;
//!
//! impl Handler<Order> for Orders {
//!     async fn handle(&self, batch: Batch<Order>) -> HandlerResult {
//!         for entry in &batch {
//!             println!("order {} x{}", entry.message.order_id, entry.message.quantity);
//!         }
//!         HandlerResult::Ok
//!     }
//! }
//!
//! # async fn run() -> millrace::Result<()> {
//! let app = Supervisor::builder()
//!     .redis("redis://127.0.0.1:6379")
//!     .consumer(ConsumerSpec::new("orders", "processors", "proc-1").handler(Orders))
//!     .start() // fails at once if Redis cannot be reached or refuses the password
//!     .await?;
//! tokio::select! {
//!     _ = tokio::signal::ctrl_c() => app.shutdown().await?, // finish the in-flight batch, ack, stop
//!     result = app.wait() => result?, // returns only if the supervisor gives up on a consumer
//! }
//! # Ok(()) }
//! ```
//!
//! Delivery is at-least-once: handlers must be idempotent. [`HandlerResult`] says what each
//! result does in Redis; [`Supervisor`] and [`ConsumerOptions`] cover restarts, shutdown and every
//! setting.
//!
//! ## Cargo features
//! - `opentelemetry`: W3C trace context across the stream: [`Producer`] writes the current
//!   span's `traceparent`/`tracestate` into each entry, and each consumer's `batch` span links to
//!   the producer spans of its entries (see `ConsumerOptions::trace_entries` for per-entry spans).
//! - `tls`: `rediss://` URLs through rustls (ring provider, Mozilla roots). millrace installs the
//!   ring provider as the process default when it starts, unless one is installed already.
//!
//! Do not enable ractor's `async-trait` or `cluster` features in the same binary: cargo unifies
//! features, and either one changes ractor's traits under millrace.

mod acked_delete;
mod actors;
pub mod capabilities;
mod cluster;
mod config;
mod connection;
mod consumer;
pub mod dead_letter;
pub mod decode;
mod discovery;
mod durations;
mod each_entry;
mod entry;
mod error;
mod handler;
mod health;
mod id;
mod keyed;
mod multi_spec;
pub mod producer;
mod protocol;
mod reader;
mod redact;
mod retry;
mod sentinel;
mod settings;
mod spec;
pub mod streams;
mod supervisor;
mod telemetry;
#[cfg(feature = "tls")]
mod tls;
mod tls_advice;
mod trace;

pub use config::{ConsumerOptions, OnGroupLost, RestartPolicy, StartId};
pub use connection::ConnectionOptions;
pub use decode::{Decode, DecodeError};
pub use each_entry::{for_each_entry, for_each_entry_in_order, EachEntry, EachEntryInOrder};
pub use entry::{Batch, BatchMeta, Entry, EntryId, ParseEntryIdError, RawEntry, Source};
pub use error::{Error, Result};
pub use handler::{Handler, HandlerError, HandlerResult};
pub use health::{ConsumerCounters, ConsumerHealth, ConsumerState, GroupGauges, StreamSet};
pub use id::ConsumerId;
pub use keyed::KeyFn;
pub use multi_spec::MultiStreamSpec;
pub use producer::{Producer, ProducerBuilder, Trim};
pub use retry::RetryBackoff;
pub use settings::{stable_name, ConsumerDecl, MultiStreamDecl, Settings};
pub use spec::ConsumerSpec;
pub use supervisor::{MetricsLabels, Supervisor, SupervisorBuilder, DEFAULT_READY_GRACE};

/// What the `millrace` command builds on (connection, node scan, colocation, redaction); not
/// part of the API.
#[doc(hidden)]
#[path = "cli_support.rs"]
pub mod __cli;

/// Internals exposed for `millrace-bench` only; not part of the API.
#[doc(hidden)]
pub mod __bench {
    /// The live reader's reply path on a plain socket, without the socket: frame a reply out of
    /// a reused buffer, then parse it into entries.
    #[derive(Debug)]
    pub struct ReplyPath(crate::protocol::FrameBuf);

    impl Default for ReplyPath {
        fn default() -> Self {
            ReplyPath(crate::protocol::FrameBuf::new())
        }
    }

    impl ReplyPath {
        /// Frames and parses one complete RESP2 `XREADGROUP` reply held in `bytes`.
        pub fn frame_and_parse(
            &mut self,
            bytes: &[u8],
        ) -> redis::RedisResult<Vec<crate::streams::ReadItem>> {
            crate::protocol::parse_read_reply(&self.frame(bytes)?)
        }

        /// Free space to read socket bytes into (see `FrameBuf::spare`).
        pub fn spare(&mut self) -> &mut [u8] {
            self.0.spare()
        }

        /// Records that `n` bytes were read into [`ReplyPath::spare`].
        pub fn filled(&mut self, n: usize) {
            self.0.filled(n)
        }

        /// The next complete reply's bytes, once buffered.
        pub fn next_frame(&mut self) -> std::io::Result<Option<Vec<u8>>> {
            self.0.next_frame()
        }

        /// Parses one complete `XREADGROUP` reply, as the consume loop does.
        pub fn parse(frame: &[u8]) -> redis::RedisResult<Vec<crate::streams::ReadItem>> {
            crate::protocol::parse_read_reply(frame)
        }

        /// Frames one complete RESP2 reply held in `bytes`: returns its bytes, as the reader
        /// hands them to the consume loop.
        pub fn frame(&mut self, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
            let mut at = 0;
            loop {
                if let Some(frame) = self.0.next_frame()? {
                    return Ok(frame);
                }
                if at == bytes.len() {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                let spare = self.0.spare();
                let n = spare.len().min(bytes.len() - at);
                spare[..n].copy_from_slice(&bytes[at..at + n]);
                self.0.filled(n);
                at += n;
            }
        }
    }
}

/// Installs rustls's ring crypto provider as the process default, if none is installed yet, so
/// `rediss://` connections do not panic. Safe to call more than once.
#[cfg(feature = "tls")]
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The README's and the guide's Rust examples, compiled as doctests in the repository (the
/// `millrace_repository` cfg comes from `build.rs`; a packaged crate has no `docs/` to include).
#[cfg(all(doctest, millrace_repository))]
mod doc_examples {
    #[doc = include_str!("../../../README.md")]
    struct Readme;
    #[doc = include_str!("../../../docs/README.md")]
    struct DocsReadme;
    #[doc = include_str!("../../../docs/concepts.md")]
    struct DocsConcepts;
    #[doc = include_str!("../../../docs/quickstart.md")]
    struct DocsQuickstart;
    #[doc = include_str!("../../../docs/handlers.md")]
    struct DocsHandlers;
    #[doc = include_str!("../../../docs/producing.md")]
    struct DocsProducing;
    #[doc = include_str!("../../../docs/semantics.md")]
    struct DocsSemantics;
    #[doc = include_str!("../../../docs/architecture.md")]
    struct DocsArchitecture;
    #[doc = include_str!("../../../docs/supervision.md")]
    struct DocsSupervision;
    #[doc = include_str!("../../../docs/recovery.md")]
    struct DocsRecovery;
    #[doc = include_str!("../../../docs/configuration.md")]
    struct DocsConfiguration;
    #[doc = include_str!("../../../docs/observability.md")]
    struct DocsObservability;
    #[doc = include_str!("../../../docs/permissions.md")]
    struct DocsPermissions;
    #[doc = include_str!("../../../docs/cli.md")]
    struct DocsCli;
    #[doc = include_str!("../../../docs/migrating.md")]
    struct DocsMigrating;
    #[doc = include_str!("../../../docs/cluster.md")]
    struct DocsCluster;
    #[doc = include_str!("../../../docs/many-streams.md")]
    struct DocsManyStreams;
    #[doc = include_str!("../../../docs/redis-behaviour.md")]
    struct DocsRedisBehaviour;
    #[doc = include_str!("../../../docs/decisions/0001-consume-loop-in-a-task.md")]
    struct DocsDecisionConsumeLoopInATask;
}

/// Replaces the default panic hook (which prints to stderr, with a backtrace when `RUST_BACKTRACE`
/// is set) with one that logs the panic through `tracing` at error level, with its location.
/// Handler panics are caught by millrace either way; this only changes how they are reported.
/// Call it once at start-up, after installing your subscriber.
///
/// ```
/// millrace::install_panic_hook();
/// ```
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = handler::panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(panic = %message, %location, "panicked");
    }));
}
