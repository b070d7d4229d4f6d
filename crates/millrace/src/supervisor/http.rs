//! The built-in HTTP endpoint (feature `http`): `GET /health` (liveness), `/ready` (readiness) and
//! `/metrics` (Prometheus text), started by [`SupervisorBuilder::http`] and stopped with the
//! supervisor. A small HTTP/1.1 responder over tokio, one request per connection, no dependency
//! beyond tokio: it answers probes and scrapes, nothing else.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Supervisor, SupervisorBuilder};

/// Longest request head read (request line and headers).
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request and read the answer.
const IO_LIMIT: Duration = Duration::from_secs(5);

impl SupervisorBuilder {
    /// Serves `GET /health`, `/ready` and `/metrics` on `addr` (feature `http`) from `start()` until
    /// [`Supervisor::shutdown`] returns; `start()` fails when it cannot listen there. Port 0 picks
    /// a free port: [`Supervisor::http_addr`] tells which.
    ///
    /// - `/health` (liveness): 200 `ok` while the supervisor runs; 503 with the reason once it
    ///   gave up on a consumer or was shut down (restart the process).
    /// - `/ready` (readiness): 200 `ready` when [`Supervisor::is_ready`]; otherwise 503 with
    ///   [`Supervisor::unready_reasons`], one per line.
    /// - `/metrics`: [`Supervisor::render_metrics`], labelled as
    ///   [`metrics_labels`](Self::metrics_labels) says.
    ///
    /// ```no_run
    /// # async fn demo() -> millrace::Result<()> {
    /// let app = millrace::Supervisor::builder()
    ///     .redis("redis://127.0.0.1:6379")
    ///     .http(([0, 0, 0, 0], 9100))
    ///     .start()
    ///     .await?;
    /// println!("probes and metrics on {:?}", app.http_addr());
    /// # Ok(()) }
    /// ```
    pub fn http(mut self, addr: impl Into<SocketAddr>) -> Self {
        self.http = Some(addr.into());
        self
    }
}

/// Binds the endpoint's listener (before the supervisor starts, so a taken port fails `start()`).
pub(crate) async fn bind(addr: SocketAddr) -> crate::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        crate::Error::config(
            None,
            "http",
            format!("cannot listen on {addr}: {e}; choose another address or port"),
        )
    })
}

/// Answers requests on `listener` until `cancel` fires.
pub(crate) async fn serve(listener: TcpListener, app: Supervisor, cancel: CancellationToken) {
    loop {
        let (socket, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "http: accept failed");
                    continue;
                }
            },
        };
        let app = app.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(IO_LIMIT, answer(socket, &app))
                .await
                .is_err()
            {
                debug!(%peer, "http: the client took too long");
            }
        });
    }
}

async fn answer(mut socket: TcpStream, app: &Supervisor) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/health") => match app.liveness() {
            Ok(()) => (200, "text/plain; charset=utf-8", "ok\n".to_owned()),
            Err(why) => (503, "text/plain; charset=utf-8", format!("{why}\n")),
        },
        ("GET" | "HEAD", "/ready") => {
            let reasons = app.unready_reasons();
            if reasons.is_empty() {
                (200, "text/plain; charset=utf-8", "ready\n".to_owned())
            } else {
                (503, "text/plain; charset=utf-8", reasons.join("\n") + "\n")
            }
        }
        ("GET" | "HEAD", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            app.render_metrics(),
        ),
        ("GET" | "HEAD", _) => (
            404,
            "text/plain; charset=utf-8",
            "not found: try /health, /ready or /metrics\n".to_owned(),
        ),
        _ => (
            405,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_owned(),
        ),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = socket.write_all(&response).await;
    let _ = socket.shutdown().await;
}
