//! Ports for servers: one free port per server of this process, below the ephemeral range when it
//! can, held until the server is dropped.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, MutexGuard, OnceLock};

use rand::Rng;

use crate::TestkitError;

/// A port handed to one server of this process, not handed to another
/// until the server is dropped.
#[derive(Debug)]
pub(crate) struct PortReservation {
    pub(crate) port: u16,
}

fn reserved_ports() -> MutexGuard<'static, HashSet<u16>> {
    static RESERVED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    RESERVED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

impl PortReservation {
    /// Picks a port that can be bound on 127.0.0.1 right now.
    ///
    /// It prefers ports below the kernel's ephemeral range: a port from that
    /// range (what binding port 0 returns) can be grabbed by any outgoing
    /// connection as its local port while a killed server is down, and then
    /// the restart fails. Falls back to binding port 0.
    pub(crate) fn pick() -> Result<PortReservation, TestkitError> {
        let (lo, hi) = (15_000u16, ephemeral_range_start().saturating_sub(1));
        let mut reserved = reserved_ports();
        if hi > lo + 1_000 {
            let mut rng = rand::rng();
            for _ in 0..200 {
                let port = rng.random_range(lo..=hi);
                if !reserved.contains(&port) && bindable(port) {
                    reserved.insert(port);
                    return Ok(PortReservation { port });
                }
            }
        }
        for _ in 0..200 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| TestkitError::io("binding 127.0.0.1:0 to find a free port", e))?
                .port();
            if reserved.insert(port) {
                return Ok(PortReservation { port });
            }
        }
        Err(TestkitError::io(
            "finding a free port",
            std::io::ErrorKind::AddrInUse.into(),
        ))
    }
}

impl Drop for PortReservation {
    fn drop(&mut self) {
        reserved_ports().remove(&self.port);
    }
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
