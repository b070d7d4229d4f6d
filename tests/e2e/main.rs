//! End-to-end tests of millrace against real redis-server processes started by the testkit.
//! Each module covers one behaviour; tests await real events (never fixed sleeps).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity
)]

mod common;

mod acks;
mod batch_size;
mod config;
mod dead_letters;
mod discovery;
mod faults;
mod http;
mod keyed;
mod many_stream_acks;
mod many_streams;
mod outage;
mod ownership;
mod readiness;
mod readme;
mod recovery;
mod repository;
mod retry;
mod sentinel;
mod servers;
mod startup;
mod supervision;
mod tls;
