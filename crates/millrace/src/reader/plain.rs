//! The reader over a plain TCP or Unix socket: a task on the runtime with a socket of its own,
//! which frames replies and hands their bytes to the consume loop.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, RedisResult, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::resp::{self, FrameBuf};
use super::{depth_after, Batches, Fetched, ReaderConfig, Shared, CLOSE_WAIT, READS_IN_FLIGHT};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn timed_out(what: &str) -> redis::RedisError {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out")).into()
}

/// A socket and its read buffer.
struct Conn {
    io: Box<dyn Io>,
    buf: FrameBuf,
    command_timeout: Duration,
}

impl Conn {
    async fn connect(
        info: &ConnectionInfo,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> RedisResult<Conn> {
        let io: Box<dyn Io> = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = tokio::time::timeout(
                    connect_timeout,
                    tokio::net::TcpStream::connect((host.as_str(), *port)),
                )
                .await
                .map_err(|_| timed_out("connecting"))??;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Box::new(
                tokio::time::timeout(connect_timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| timed_out("connecting"))??,
            ),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "not a plain TCP or Unix address",
                )
                .into())
            }
        };
        Ok(Conn {
            io,
            buf: FrameBuf::new(),
            command_timeout,
        })
    }

    /// Reads more bytes, waiting at most `limit`; the peer closing is an error.
    async fn fill(&mut self, limit: Duration) -> RedisResult<()> {
        let spare = self.buf.spare();
        let n = tokio::time::timeout(limit, self.io.read(spare))
            .await
            .map_err(|_| timed_out("reading a reply"))??;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )
            .into());
        }
        self.buf.filled(n);
        Ok(())
    }

    async fn send(&mut self, packed: &[u8]) -> RedisResult<()> {
        tokio::time::timeout(self.command_timeout, self.io.write_all(packed))
            .await
            .map_err(|_| timed_out("writing a command"))??;
        Ok(())
    }

    /// The next complete reply's bytes.
    async fn frame(&mut self, limit: Duration) -> RedisResult<Vec<u8>> {
        loop {
            if let Some(frame) = self.buf.next_frame()? {
                return Ok(frame);
            }
            self.fill(limit).await?;
        }
    }

    /// Runs one command during the handshake.
    async fn call(&mut self, packed: &[u8]) -> RedisResult<Value> {
        self.send(packed).await?;
        let frame = self.frame(self.command_timeout).await?;
        resp::parse_value(&frame)
    }

    /// Authenticates and selects the database of `info`, then asks for the connection's
    /// `CLIENT ID` (`None` without the permission). Any other error (say, `max number of clients
    /// reached`) fails the connect with the server's words.
    async fn handshake(&mut self, info: &ConnectionInfo) -> RedisResult<Option<i64>> {
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            self.call(&auth.get_packed_command()).await?;
        }
        if settings.db() != 0 {
            self.call(&redis::cmd("SELECT").arg(settings.db()).get_packed_command())
                .await?;
        }
        match self
            .call(&redis::cmd("CLIENT").arg("ID").get_packed_command())
            .await
        {
            Ok(Value::Int(id)) => Ok(Some(id)),
            Ok(_) => Ok(None),
            Err(e) if e.code() == Some("NOPERM") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Closes the writing half and waits (briefly) for the server to close its end, so the
    /// server has let go of the connection when this returns.
    async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            if self.io.shutdown().await.is_ok() {
                let mut sink = [0u8; 512];
                while matches!(self.io.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        })
        .await;
    }
}

/// Connects and handshakes, then spawns the read task. Returns the connection's client id and
/// the task's abort handle.
pub(super) async fn start(
    info: &ConnectionInfo,
    connect_timeout: Duration,
    config: ReaderConfig,
    shared: Arc<Shared>,
    tx: Batches,
    finished: oneshot::Sender<()>,
) -> RedisResult<(Option<i64>, tokio::task::AbortHandle)> {
    let mut conn = Conn::connect(info, connect_timeout, config.command_timeout).await?;
    let client_id = conn.handshake(info).await?;
    let task = tokio::spawn(async move {
        let _finished = finished;
        read_loop(conn, &config, &shared, &tx).await;
    });
    Ok((client_id, task.abort_handle()))
}

/// Writes reads as credits allow, and on every reply writes the next read before the reply is
/// framed (small, complete replies are handed over first). Ends on stop (after the reads in
/// flight returned), on an error (sent on), or when the consume loop is gone.
async fn read_loop(mut conn: Conn, config: &ReaderConfig, shared: &Shared, tx: &Batches) {
    let mut count = config.count;
    let mut packed = config.packed_read(count);
    let mut in_flight = 0usize;
    // Start as for a backlog: a consumer starting up often has one.
    let mut depth = READS_IN_FLIGHT;
    let fail = |e: redis::RedisError| {
        let _ = tx.send(Err(config.error(e)));
    };
    loop {
        let (to_write, new_count, stopped) = shared.take_credits(in_flight, depth);
        if new_count != count {
            count = new_count;
            packed = config.packed_read(count);
        }
        for _ in 0..to_write {
            if let Err(e) = conn.send(&packed).await {
                return fail(e);
            }
            in_flight += 1;
        }
        if in_flight == 0 {
            if stopped {
                conn.close().await;
                return;
            }
            // No credit: wait for the consume loop to take a batch (or to stop).
            shared.notify.notified().await;
            continue;
        }
        if conn.buf.is_empty() {
            if let Err(e) = conn.fill(config.read_timeout).await {
                return fail(e);
            }
        }
        in_flight -= 1;
        // The reply has begun, so the server has executed the read. A small, complete reply is
        // handed over first (it is waited for; the next read follows at the top of the loop); for
        // a large one, which means a backlog, the next read goes on the wire before this reply is
        // framed.
        if !conn.buf.small_reply_buffered() {
            depth = READS_IN_FLIGHT;
            if shared.take_one(count, in_flight, depth) {
                if let Err(e) = conn.send(&packed).await {
                    return fail(e);
                }
                in_flight += 1;
            }
        }
        let frame = match conn.frame(config.read_timeout).await {
            Ok(f) => f,
            Err(e) => return fail(e),
        };
        depth = depth_after(conn.buf.last_entries(), count);
        if !hand_over(tx, frame) {
            return;
        }
    }
}

/// Hands a reply to the consume loop. Returns whether to go on reading: not after an error reply
/// (the consume loop ends the session on it), nor when the consume loop is gone.
fn hand_over(tx: &Batches, frame: Vec<u8>) -> bool {
    let error = frame.first() == Some(&b'-');
    tx.send(Ok(Fetched::Frame(frame))).is_ok() && !error
}
