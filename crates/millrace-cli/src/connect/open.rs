//! Opening a client or a cluster connection from the command line's URLs (TLS, a CA file), and
//! explaining a failed first connection: refused, not a cluster, a certificate, a plain-text
//! server behind `rediss://`.

use std::path::Path;
use std::time::Duration;

use millrace::__cli::answers_plain_resp;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{ConnectionAddr, RedisError};

use super::{Connection, Opener, CONNECT_TIMEOUT};
use crate::error::{self, CliError, Result};

/// Connects to a cluster through `opener`'s seeds, waiting up to `response` for each reply.
pub(super) async fn cluster_connection(
    opener: &Opener,
    response: Duration,
    target: &str,
) -> Result<Connection> {
    let Opener::Cluster { seeds, ca_cert } = opener else {
        return Err(CliError::runtime("not a cluster"));
    };
    let client = cluster_client(seeds, ca_cert.as_deref(), response, target)?;
    Connection::cluster(client)
        .await
        .map_err(|e| cluster_connect_error(&e, target))
}

/// Explains a failed first connection to a cluster.
fn cluster_connect_error(e: &RedisError, target: &str) -> CliError {
    if e.to_string().contains("cluster support disabled") {
        return CliError::runtime(format!(
            "{target} is not a Redis Cluster: the server answered that cluster support is \
             disabled; for one server use --redis (or REDIS_URL)"
        ));
    }
    if e.to_string().contains("certificate") {
        return CliError::runtime(format!(
            "TLS to {target} failed: {e}; if the nodes' certificates are signed by a private CA, \
             give that CA with --tls-ca-cert FILE (or MILLRACE_TLS_CA_CERT)"
        ));
    }
    if e.is_io_error() && !e.is_timeout() {
        return CliError::runtime(format!(
            "cannot connect to any node of {target}: {e}; are the nodes running? Point \
             --redis-cluster (or REDIS_CLUSTER_URLS) at them"
        ));
    }
    error::from_redis(e, target)
}

/// A cluster client for `seeds`, trusting `ca_cert` too when given.
fn cluster_client(
    seeds: &[redis::ConnectionInfo],
    ca_cert: Option<&[u8]>,
    response: Duration,
    target: &str,
) -> Result<ClusterClient> {
    let tls = seeds
        .iter()
        .any(|s| matches!(s.addr(), ConnectionAddr::TcpTls { .. }));
    let builder = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response);
    #[cfg(feature = "tls")]
    let builder = {
        if tls {
            millrace::install_tls_provider();
        }
        match ca_cert {
            Some(pem) => builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            }),
            None => builder,
        }
    };
    #[cfg(not(feature = "tls"))]
    if tls || ca_cert.is_some() {
        return Err(CliError::usage(format!(
            "{target} needs TLS, and this millrace was built without it; build it with the \
             default features (`cargo install millrace-cli`)"
        )));
    }
    builder.build().map_err(|e| error::from_redis(&e, target))
}

/// A client for `url`, trusting `ca_cert` too when given.
#[cfg(feature = "tls")]
pub(super) fn open_client(
    url: &str,
    ca_cert: Option<&Path>,
    target: &str,
) -> Result<redis::Client> {
    millrace::install_tls_provider();
    let client = match ca_cert {
        None => redis::Client::open(url),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                CliError::usage(format!(
                    "cannot read the CA certificate {}: {e}",
                    path.display()
                ))
            })?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
    };
    client.map_err(|e| error::from_redis(&e, target))
}

/// A client for `url`; this build has no TLS, so `rediss://` and a CA certificate are refused.
#[cfg(not(feature = "tls"))]
pub(super) fn open_client(
    url: &str,
    ca_cert: Option<&Path>,
    target: &str,
) -> Result<redis::Client> {
    if ca_cert.is_some() || url.starts_with("rediss:") {
        return Err(CliError::usage(format!(
            "{target} needs TLS, and this millrace was built without it; build it with the \
             default features (`cargo install millrace-cli`)"
        )));
    }
    redis::Client::open(url).map_err(|e| error::from_redis(&e, target))
}

/// Explains a failed first connection. A TLS handshake with a server that speaks plain RESP never
/// completes (the server waits for the end of a command line), so a failed `rediss://` connection
/// is followed by a plain `PING`: when that is answered, the server does not speak TLS there.
pub(super) async fn explain_connect_error(
    client: &redis::Client,
    e: &RedisError,
    target: &str,
) -> CliError {
    if e.is_connection_refusal() {
        return connect_error(e, target);
    }
    match client.get_connection_info().addr() {
        ConnectionAddr::TcpTls { host, port, .. } => {
            if answers_plain_resp(host, *port).await {
                return not_tls(target);
            }
            if e.to_string().contains("certificate") {
                return CliError::runtime(format!(
                    "TLS to {target} failed: {e}; if the server's certificate is signed by a \
                     private CA, give that CA with --tls-ca-cert FILE (or MILLRACE_TLS_CA_CERT)"
                ));
            }
        }
        ConnectionAddr::Tcp(..) if e.is_io_error() && !e.is_timeout() => {
            return CliError::runtime(format!(
                "cannot connect to Redis at {target}: {e}; is the server running, and does that \
                 port speak plain RESP? For a TLS port use rediss://"
            ));
        }
        _ => {}
    }
    connect_error(e, target)
}

/// How long a TLS handshake may take before the port is asked whether it speaks plain RESP.
const TLS_PROBE_AFTER: Duration = Duration::from_secs(1);

/// Resolves when a `rediss://` server has not finished the TLS handshake within
/// [`TLS_PROBE_AFTER`] and answers a plain-text `PING`; never otherwise. Such a server waits for
/// the end of a command line that the handshake never sends, so waiting for the connect timeout
/// would only delay the error.
pub(super) async fn plain_text_behind_tls(client: &redis::Client) {
    if let ConnectionAddr::TcpTls { host, port, .. } = client.get_connection_info().addr() {
        tokio::time::sleep(TLS_PROBE_AFTER).await;
        if answers_plain_resp(host, *port).await {
            return;
        }
    }
    std::future::pending().await
}

/// "does not speak TLS".
pub(super) fn not_tls(target: &str) -> CliError {
    CliError::runtime(format!(
        "the server at {target} does not speak TLS: it answered a plain-text PING on that port; \
         use redis:// instead of rediss://, or the server's TLS port"
    ))
}

pub(super) fn connect_error(e: &RedisError, target: &str) -> CliError {
    if e.is_io_error() && !e.is_timeout() {
        return CliError::runtime(format!(
            "cannot connect to Redis at {target}: {e}; is the server running? Point --redis (or \
             REDIS_URL) at it, or --redis-cluster (or REDIS_CLUSTER_URLS) at a cluster's nodes"
        ));
    }
    error::from_redis(e, target)
}
