//! The fault suite: real worker processes (examples/orders.rs) under real faults.
