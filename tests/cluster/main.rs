//! millrace consumers on a real Redis Cluster (the test kit's 3 masters + 3 replicas): streams on
//! different masters, and the stream's owner changing under load (graceful failover, kill -9 of
//! the master, live slot migration). Each test ends with a check from Redis: every entry the
//! producer saw confirmed was handled, nothing is pending, and duplicates are counted.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod connecting;
mod dead_letters;
mod faults;
mod many_streams;
mod orders;
mod outage;
mod placement;
mod producing;
mod retry;
