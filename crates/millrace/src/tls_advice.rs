//! What a failed first connection says when the cause is TLS, not reachability: a certificate
//! signed by a CA millrace was not given, `rediss://` at a plain-text port, `redis://` at a
//! TLS-only port. Each names what is wrong and the URL scheme or certificate setting that fixes
//! it (the CLI's `connect.rs` says the same for its flags).

use std::time::Duration;

use redis::ConnectionAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::Error;

/// How long the plain-text probe of a port may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The setting that names the CA, for the advice.
const CA_SETTING: &str = "give the CA certificate (PEM) that signed the server's certificate: \
    millrace.toml `[connection] tls_ca_cert = \"/path/ca.crt\"` (or MILLRACE_TLS_CA_CERT), or \
    `ConnectionOptions::tls_certificates` in code";

/// A TLS diagnosis of a failed connection to `addr`, or `None` when TLS is not the cause
/// (`failure` is the error's text; a timeout has none).
pub(crate) async fn explain(addr: &ConnectionAddr, failure: &str, display: &str) -> Option<Error> {
    let lower = failure.to_ascii_lowercase();
    match addr {
        ConnectionAddr::TcpTls { host, port, .. } => {
            if answers_plain_resp(host, *port).await {
                return Some(fatal(
                    format!(
                        "the server at {display} does not speak TLS: it answered a plain-text \
                         PING on that port"
                    ),
                    "use redis:// instead of rediss:// for this port, or the server's TLS port \
                     (its `tls-port`)",
                ));
            }
            if lower.contains("unknownissuer") || lower.contains("certificate") {
                return Some(fatal(
                    format!(
                        "TLS to {display} failed: the server's certificate was refused \
                         ({failure}), so it is not signed by a CA this client trusts"
                    ),
                    CA_SETTING,
                ));
            }
            None
        }
        ConnectionAddr::Tcp(host, port)
            if lower.contains("reset by peer")
                || lower.contains("connection reset")
                || lower.contains("broken pipe") =>
        {
            if answers_plain_resp(host, *port).await {
                return None;
            }
            Some(fatal(
                format!(
                    "{display} closed the connection at the first command ({failure}), and does \
                     not answer plain-text RESP: it looks like a TLS-only port"
                ),
                "use rediss:// for a TLS port (and tls_ca_cert if its certificate is signed by a \
                 private CA), or the server's plain `port`",
            ))
        }
        _ => None,
    }
}

fn fatal(reason: String, hint: &str) -> Error {
    Error::Fatal {
        consumer: None,
        command: "connecting to Redis",
        reason,
        hint: hint.to_owned(),
        source: None,
    }
}

/// True when `host:port` answers a plain-text `PING` with a RESP reply within
/// [`PROBE_TIMEOUT`]. A TLS server never does: it waits for a handshake, or drops the
/// connection.
pub(crate) async fn answers_plain_resp(host: &str, port: u16) -> bool {
    let probe = async {
        let mut socket = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        socket.write_all(b"PING\r\n").await.ok()?;
        let mut first = [0u8; 1];
        socket.read_exact(&mut first).await.ok()?;
        Some(matches!(first[0], b'+' | b'-'))
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}
