//! A TCP proxy that injects network faults between a client and Redis.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use crate::RedisServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forward everything.
    Normal,
    /// Accept and keep connections, forward nothing.
    Blackhole,
    /// Close new connections at once; existing ones keep working.
    Refuse,
}

/// A TCP proxy on `127.0.0.1` in front of a local Redis port, for fault
/// tests: partitions ([`blackhole`](Self::blackhole)), connection resets
/// ([`reset_all`](Self::reset_all)), refused connections
/// ([`refuse`](Self::refuse)) and replies cut mid-way
/// ([`cut_downstream_after`](Self::cut_downstream_after)).
///
/// Point the client at [`url`](Self::url) (or [`url_for`](Self::url_for)) instead of
/// the server's URL. Each accepted connection gets its own upstream
/// connection; when either side closes, both are closed. The fault switches
/// are synchronous and take effect immediately for all connections.
///
/// [`start`](Self::start) must be called inside a Tokio runtime; the proxy
/// runs on tasks of that runtime, which are aborted (closing every proxied
/// connection) when the `FaultProxy` is dropped.
pub struct FaultProxy {
    port: u16,
    upstream_port: u16,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

struct Shared {
    mode: watch::Sender<Mode>,
    conns: Mutex<HashMap<u64, Conn>>,
    accepted: AtomicUsize,
    next_id: AtomicU64,
}

struct Conn {
    abort: AbortHandle,
    /// `Some(n)`: forward at most `n` more server→client bytes, then close.
    cut: Arc<Mutex<Option<usize>>>,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a connection from the table when its task ends or is aborted.
struct ConnGuard {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.conns().remove(&self.id);
    }
}

impl FaultProxy {
    /// Starts a proxy on a free port of `127.0.0.1` that forwards to
    /// `127.0.0.1:upstream_port`. Connections to the upstream are opened when
    /// a client connects (and, if blackholed, only once healed).
    ///
    /// # Panics
    ///
    /// Panics if it cannot bind a port, or outside a Tokio runtime.
    pub async fn start(upstream_port: u16) -> FaultProxy {
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
            Ok(l) => l,
            Err(e) => panic!("millrace-testkit: FaultProxy cannot bind 127.0.0.1:0: {e}"),
        };
        let port = match listener.local_addr() {
            Ok(a) => a.port(),
            Err(e) => panic!("millrace-testkit: FaultProxy local_addr: {e}"),
        };
        let shared = Arc::new(Shared {
            mode: watch::Sender::new(Mode::Normal),
            conns: Mutex::new(HashMap::new()),
            accepted: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, upstream_port, Arc::clone(&shared)));
        tracing::debug!(port, upstream_port, "fault proxy started");
        FaultProxy {
            port,
            upstream_port,
            shared,
            accept_task,
        }
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The upstream port it forwards to.
    pub fn upstream_port(&self) -> u16 {
        self.upstream_port
    }

    /// `redis://127.0.0.1:PORT` for the proxy's port (no credentials; see
    /// [`url_for`](Self::url_for)).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `server`'s [`url`](RedisServer::url) (scheme and password included)
    /// with the port replaced by the proxy's.
    pub fn url_for(&self, server: &RedisServer) -> String {
        let url = server.url();
        let suffix = format!(":{}", server.port());
        match url.strip_suffix(&suffix) {
            Some(base) => format!("{base}:{}", self.port),
            None => self.url(),
        }
    }

    /// Simulates a network partition: existing connections stay open and new
    /// ones are accepted, but no byte is forwarded in either direction (the
    /// proxy stops reading, so senders see TCP back-pressure) until
    /// [`heal`](Self::heal). New connections are not opened upstream while
    /// blackholed.
    pub fn blackhole(&self) {
        tracing::debug!(port = self.port, "fault proxy: blackhole");
        self.shared.mode.send_replace(Mode::Blackhole);
    }

    /// Back to normal forwarding: ends [`blackhole`](Self::blackhole) (data
    /// held back is then delivered) and [`refuse`](Self::refuse), and cancels
    /// pending [`cut_downstream_after`](Self::cut_downstream_after) cuts.
    pub fn heal(&self) {
        tracing::debug!(port = self.port, "fault proxy: heal");
        for conn in self.shared.conns().values() {
            *conn.cut.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        self.shared.mode.send_replace(Mode::Normal);
    }

    /// Closes every current connection (both the client and the upstream
    /// side). New connections are still accepted.
    pub fn reset_all(&self) {
        tracing::debug!(port = self.port, "fault proxy: reset_all");
        let aborts: Vec<AbortHandle> = self.shared.conns().drain().map(|(_, c)| c.abort).collect();
        for a in aborts {
            a.abort();
        }
    }

    /// Closes new connections as soon as they are accepted (the client sees
    /// its connection closed at once). Existing connections keep working.
    /// Undone by [`heal`](Self::heal).
    pub fn refuse(&self) {
        tracing::debug!(port = self.port, "fault proxy: refuse");
        self.shared.mode.send_replace(Mode::Refuse);
    }

    /// Arms a cut on every currently open connection: of its next
    /// server→client data only the first `bytes` bytes are forwarded, then
    /// the connection is closed (both sides). With `bytes == 0` the
    /// connection is closed as soon as the server sends anything.
    /// Connections opened afterwards are not affected; [`heal`](Self::heal)
    /// disarms cuts that have not fired yet.
    pub fn cut_downstream_after(&self, bytes: usize) {
        tracing::debug!(port = self.port, bytes, "fault proxy: cut_downstream_after");
        for conn in self.shared.conns().values() {
            *conn.cut.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        }
    }

    /// How many proxied connections are open now.
    pub fn connections(&self) -> usize {
        self.shared.conns().len()
    }

    /// How many connections were accepted in total (including those closed
    /// at once by [`refuse`](Self::refuse)).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.reset_all();
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .field("upstream_port", &self.upstream_port)
            .field("mode", &*self.shared.mode.borrow())
            .field("connections", &self.connections())
            .field("accepted", &self.accepted())
            .finish()
    }
}

async fn accept_loop(listener: TcpListener, upstream_port: u16, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "fault proxy: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if *shared.mode.borrow() == Mode::Refuse {
            drop(client);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let cut = Arc::new(Mutex::new(None));
        let guard = ConnGuard {
            id,
            shared: Arc::clone(&shared),
        };
        // Hold the table lock across spawn + insert so the guard's removal
        // (on a fast exit) cannot run before the insertion.
        let mut conns = shared.conns();
        let task = tokio::spawn(proxy_conn(
            client,
            upstream_port,
            shared.mode.subscribe(),
            Arc::clone(&cut),
            guard,
        ));
        conns.insert(
            id,
            Conn {
                abort: task.abort_handle(),
                cut,
            },
        );
    }
}

async fn proxy_conn(
    client: TcpStream,
    upstream_port: u16,
    mut mode: watch::Receiver<Mode>,
    cut: Arc<Mutex<Option<usize>>>,
    _guard: ConnGuard,
) {
    if flowing(&mut mode).await.is_err() {
        return;
    }
    let upstream = match TcpStream::connect((Ipv4Addr::LOCALHOST, upstream_port)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(upstream_port, error = %e, "fault proxy: upstream connect failed");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::select! {
        () = pump(client_read, upstream_write, mode.clone(), None) => {}
        () = pump(upstream_read, client_write, mode, Some(cut)) => {}
    }
}

/// Waits until the proxy is not blackholed; `Err` if the proxy is gone.
async fn flowing(mode: &mut watch::Receiver<Mode>) -> Result<(), ()> {
    mode.wait_for(|m| *m != Mode::Blackhole)
        .await
        .map(|_| ())
        .map_err(|_| ())
}

/// Copies `from` to `to` until EOF, an error, or a cut fires.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    cut: Option<Arc<Mutex<Option<usize>>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if flowing(&mut mode).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Data read just before a blackhole is held back too.
        if flowing(&mut mode).await.is_err() {
            return;
        }
        let (end, close) = match &cut {
            Some(cut) => {
                let mut cut = cut.lock().unwrap_or_else(|e| e.into_inner());
                match *cut {
                    Some(budget) if budget <= n => {
                        *cut = None;
                        (budget, true)
                    }
                    Some(budget) => {
                        *cut = Some(budget - n);
                        (n, false)
                    }
                    None => (n, false),
                }
            }
            None => (n, false),
        };
        if end > 0 && to.write_all(&buf[..end]).await.is_err() {
            return;
        }
        if close {
            let _ = to.flush().await;
            return;
        }
    }
}
