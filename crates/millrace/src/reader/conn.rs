//! The reader's own connection: a plain TCP, Unix or TLS socket behind one byte-stream type,
//! the handshake (AUTH, SELECT, CLIENT ID), and commands written and replies framed on it.

use std::io;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, RedisResult, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::CLOSE_WAIT;
use crate::connection::{Backend, Node};
use crate::protocol::{self, FrameBuf};

/// Any byte stream the reader can run over: TCP, a Unix socket, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn timed_out(what: &str) -> redis::RedisError {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out")).into()
}

/// Begins the message of a connection lost after part of a reply arrived.
const MID_REPLY: &str = "the connection was lost mid-reply";

fn mid_reply(kind: io::ErrorKind, e: &dyn std::fmt::Display) -> io::Error {
    io::Error::new(kind, format!("{MID_REPLY}: {e}"))
}

/// Whether a read failed after its reply began: the reply was cut off (a truncated frame).
pub(crate) fn cut_mid_reply(e: &redis::RedisError) -> bool {
    e.is_io_error() && e.to_string().contains(MID_REPLY)
}

/// Whether a read failed because its connection was lost (closed or reset by the server, a
/// failover, `CLIENT KILL`), not on a timeout or a refused connection.
pub(crate) fn connection_lost(e: &redis::RedisError) -> bool {
    (e.is_io_error() || e.is_connection_dropped()) && !e.is_timeout() && !e.is_connection_refusal()
}

async fn tcp(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens the socket of `node`'s address: TCP and, for `rediss://`, the TLS handshake too.
async fn socket(node: &Node) -> RedisResult<Box<dyn Io>> {
    Ok(match node.info.addr() {
        ConnectionAddr::Tcp(host, port) => Box::new(tcp(host, *port).await?),
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        #[cfg(feature = "tls")]
        ConnectionAddr::TcpTls { host, port, .. } => {
            let tls = node.tls.as_ref().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "TLS is not set up for this server",
                )
            })?;
            let stream = tcp(host, *port).await?;
            Box::new(tls.connect(stream).await?)
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an address this build cannot connect to (is the `tls` feature off?)",
            )
            .into())
        }
    })
}

/// A socket and its read buffer.
pub(super) struct Conn {
    io: Box<dyn Io>,
    pub(super) buf: FrameBuf,
    command_timeout: Duration,
}

impl Conn {
    /// Connects to `node` (within the connect timeout, the TLS handshake included) and
    /// handshakes. Returns the connection and its `CLIENT ID` (`None` without the permission).
    pub(super) async fn open(
        backend: &Backend,
        node: &Node,
        command_timeout: Duration,
    ) -> RedisResult<(Conn, Option<i64>)> {
        Conn::connect(node, backend.connect_timeout(), command_timeout).await
    }

    /// [`Conn::open`] with the connect timeout given.
    pub(super) async fn connect(
        node: &Node,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> RedisResult<(Conn, Option<i64>)> {
        let io = tokio::time::timeout(connect_timeout, socket(node))
            .await
            .map_err(|_| timed_out("connecting"))??;
        let mut conn = Conn {
            io,
            buf: FrameBuf::new(),
            command_timeout,
        };
        let client_id = conn.handshake(&node.info).await?;
        Ok((conn, client_id))
    }

    /// Reads more bytes, waiting at most `limit`; the peer closing is an error. A connection lost
    /// while part of a reply is buffered says so ([`cut_mid_reply`]).
    pub(super) async fn fill(&mut self, limit: Duration) -> RedisResult<()> {
        let begun = !self.buf.is_empty();
        let spare = self.buf.spare();
        let n = tokio::time::timeout(limit, self.io.read(spare))
            .await
            .map_err(|_| timed_out("reading a reply"))?
            .map_err(|e| if begun { mid_reply(e.kind(), &e) } else { e })?;
        if n == 0 {
            let closed = "the server closed the connection";
            return Err(if begun {
                mid_reply(io::ErrorKind::UnexpectedEof, &closed)
            } else {
                io::Error::new(io::ErrorKind::UnexpectedEof, closed)
            }
            .into());
        }
        self.buf.filled(n);
        Ok(())
    }

    pub(super) async fn send(&mut self, packed: &[u8]) -> RedisResult<()> {
        tokio::time::timeout(self.command_timeout, self.io.write_all(packed))
            .await
            .map_err(|_| timed_out("writing a command"))??;
        Ok(())
    }

    /// The next complete reply's bytes.
    pub(super) async fn frame(&mut self, limit: Duration) -> RedisResult<Vec<u8>> {
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
        protocol::parse_value(&frame)
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
    pub(super) async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            if self.io.shutdown().await.is_ok() {
                let mut sink = [0u8; 512];
                while matches!(self.io.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_over(io: tokio::io::DuplexStream) -> Conn {
        Conn {
            io: Box::new(io),
            buf: FrameBuf::new(),
            command_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_reply_cut_after_its_first_bytes_is_cut_mid_reply() {
        let (ours, mut server) = tokio::io::duplex(1024);
        let mut conn = conn_over(ours);
        server.write_all(b"*1\r\n*2\r\n$1\r\ns\r\n").await.unwrap();
        drop(server);
        let e = conn.frame(Duration::from_secs(5)).await.unwrap_err();
        assert!(cut_mid_reply(&e), "{e}");
        assert!(connection_lost(&e), "{e}");
    }

    #[tokio::test]
    async fn a_connection_closed_before_any_reply_byte_is_a_lost_connection_only() {
        let (ours, server) = tokio::io::duplex(1024);
        let mut conn = conn_over(ours);
        drop(server);
        let e = conn.frame(Duration::from_secs(5)).await.unwrap_err();
        assert!(!cut_mid_reply(&e), "{e}");
        assert!(connection_lost(&e), "{e}");
    }
}
