//! A short-lived connection for reading a consumer's own pending entries (`XREADGROUP … <id>`):
//! the same socket kind, handshake and reply parser as the live reader, one command at a time.

use std::time::Duration;

use redis::RedisResult;

use super::conn::Conn;
use crate::connection::{Backend, Node};
use crate::protocol;
use crate::streams::ReadItem;

/// One consumer's connection for its replay. A reply the server refuses to send (larger than its
/// client output buffer) closes this connection only.
pub(crate) struct PendingReader {
    conn: Conn,
    command_timeout: Duration,
}

impl std::fmt::Debug for PendingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReader").finish_non_exhaustive()
    }
}

impl PendingReader {
    /// Connects to `node` and handshakes; a refused connection reports the server's words.
    pub(crate) async fn open(backend: &Backend, node: &Node) -> RedisResult<PendingReader> {
        let command_timeout = backend.command_timeout();
        let (conn, _) = Conn::open(backend, node, command_timeout).await?;
        Ok(PendingReader {
            conn,
            command_timeout,
        })
    }

    /// Runs one read command (never blocking) and parses its reply.
    pub(crate) async fn read(&mut self, cmd: &redis::Cmd) -> RedisResult<Vec<ReadItem>> {
        self.conn.send(&cmd.get_packed_command()).await?;
        let frame = self.conn.frame(self.command_timeout).await?;
        protocol::parse_read_reply(&frame)
    }

    /// Closes the connection and waits (briefly) until the server has let go of it.
    pub(crate) async fn close(self) {
        self.conn.close().await;
    }
}
