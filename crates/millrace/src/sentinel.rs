//! Redis Sentinel: the consumers follow the master through failovers. A forwarder on a loopback
//! port asks the Sentinels for the master (`SENTINEL get-master-addr-by-name`) for every new
//! connection and pipes it there; when the Sentinels name another master it closes the
//! connections to the old one, so every connection of millrace (control and reads) reconnects,
//! through the forwarder, to the new master. Data-node credentials travel inside the piped
//! connection (`AUTH` goes to the master itself); the Sentinels' own password is in their URLs.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

/// How often the Sentinels are asked whether the master changed.
const POLL: Duration = Duration::from_millis(200);

/// Where the master is: the master name the Sentinels monitor, the Sentinels' URLs, and the
/// credentials of the data nodes. Made by
/// [`SupervisorBuilder::redis_sentinel`](crate::SupervisorBuilder::redis_sentinel).
#[derive(Clone)]
pub(crate) struct SentinelConfig {
    pub(crate) master_name: String,
    pub(crate) sentinels: Vec<String>,
    /// `user:password@` or `:password@` for the data nodes, percent-encoded; empty without.
    pub(crate) data_auth: String,
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("master_name", &self.master_name)
            .field("sentinels", &self.sentinels.len())
            .finish_non_exhaustive()
    }
}

/// The running forwarder; stops when dropped or when the supervisor is done.
#[derive(Debug)]
pub(crate) struct Forwarder {
    cancel: Option<CancellationToken>,
}

impl Forwarder {
    /// Hands the forwarder's life to `done`: it stops once the supervisor has stopped.
    pub(crate) fn stop_when(mut self, mut done: watch::Receiver<bool>) {
        if let Some(cancel) = self.cancel.take() {
            tokio::spawn(async move {
                let _ = done.wait_for(|d| *d).await;
                cancel.cancel();
            });
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(c) = &self.cancel {
            c.cancel();
        }
    }
}

/// Asks the Sentinels for the master (failing with what to fix when none answers or none knows
/// the name) and starts the forwarder; returns it and the URL millrace connects to.
pub(crate) async fn start(
    config: &SentinelConfig,
    timeout: Duration,
) -> Result<(Forwarder, String)> {
    let sentinels = parse(config)?;
    let first = master_of(&sentinels, &config.master_name, timeout).await?;
    info!(master_name = %config.master_name, master = %first, "Sentinel names the master");
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| {
        fatal(
            format!("cannot listen on loopback for the Sentinel forwarder: {e}"),
            "check that 127.0.0.1 is usable",
        )
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| fatal(format!("the Sentinel forwarder has no address: {e}"), ""))?
        .port();
    let (tx, rx) = watch::channel(first);
    let cancel = CancellationToken::new();
    let name = config.master_name.clone();
    tokio::spawn(watch_master(sentinels, name, timeout, tx, cancel.clone()));
    tokio::spawn(accept(listener, rx, cancel.clone()));
    let url = format!("redis://{}127.0.0.1:{port}", config.data_auth);
    Ok((
        Forwarder {
            cancel: Some(cancel),
        },
        url,
    ))
}

/// The master's address as the Sentinels name it now (what `start` asks first), failing as
/// `start` does; for the `millrace` command.
pub(crate) async fn master_addr(config: &SentinelConfig, timeout: Duration) -> Result<SocketAddr> {
    master_of(&parse(config)?, &config.master_name, timeout).await
}

fn parse(config: &SentinelConfig) -> Result<Vec<redis::ConnectionInfo>> {
    if config.master_name.trim().is_empty() {
        return Err(Error::config(
            None,
            "redis_sentinel",
            "the master name is empty: give the NAME of `sentinel monitor NAME host port quorum`",
        ));
    }
    if config.sentinels.is_empty() {
        return Err(Error::config(
            None,
            "redis_sentinel",
            "names no Sentinel: give at least one Sentinel URL (`redis://host:26379`)",
        ));
    }
    config
        .sentinels
        .iter()
        .map(|url| {
            let info = url.as_str().into_connection_info().map_err(|e| Error::InvalidUrl {
                reason: crate::error::redact(&e.to_string()),
            })?;
            match info.addr() {
                ConnectionAddr::Tcp(..) => Ok(info),
                _ => Err(Error::config(
                    None,
                    "redis_sentinel",
                    "names a Sentinel by TLS or unix socket: Sentinels are reached over plain TCP (`redis://host:26379`)",
                )),
            }
        })
        .collect()
}

/// The master's address as the first Sentinel that knows `name` says.
async fn master_of(
    sentinels: &[redis::ConnectionInfo],
    name: &str,
    timeout: Duration,
) -> Result<SocketAddr> {
    let mut failures = Vec::new();
    let mut unknown = 0;
    for s in sentinels {
        match ask(s, name, timeout).await {
            Ok(Some(addr)) => return Ok(addr),
            Ok(None) => unknown += 1,
            Err(e) => failures.push(format!(
                "{}: {}",
                s.addr(),
                crate::error::redact(&e.to_string())
            )),
        }
    }
    if unknown > 0 {
        return Err(fatal(
            format!("no Sentinel knows a master named `{name}` ({unknown} answered)"),
            "check the master name: it is the NAME of `sentinel monitor NAME host port quorum` in \
             sentinel.conf (`SENTINEL MASTERS` on a Sentinel lists them)",
        ));
    }
    Err(fatal(
        format!("could not reach any Sentinel: {}", failures.join("; ")),
        "check the Sentinel URLs (host and port, usually 26379), their password, and that \
         redis-sentinel runs there",
    ))
}

/// `SENTINEL get-master-addr-by-name`: `None` when this Sentinel does not know the name.
async fn ask(
    sentinel: &redis::ConnectionInfo,
    name: &str,
    timeout: Duration,
) -> redis::RedisResult<Option<SocketAddr>> {
    let client = redis::Client::open(sentinel.clone())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(name)
        .query_async(&mut con)
        .await?;
    Ok(match reply {
        Some((host, port)) => tokio::net::lookup_host((host.as_str(), port)).await?.next(),
        None => None,
    })
}

/// Polls the Sentinels and publishes a changed master.
async fn watch_master(
    sentinels: Vec<redis::ConnectionInfo>,
    name: String,
    timeout: Duration,
    tx: watch::Sender<SocketAddr>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        if let Ok(addr) = master_of(&sentinels, &name, timeout).await {
            if *tx.borrow() != addr {
                warn!(master_name = %name, old = %*tx.borrow(), new = %addr, "the Sentinels name a new master; reconnecting to it");
                tx.send_replace(addr);
            }
        }
    }
}

async fn accept(
    listener: TcpListener,
    master: watch::Receiver<SocketAddr>,
    cancel: CancellationToken,
) {
    loop {
        let inbound = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match inbound {
            Ok((client, _)) => {
                tokio::spawn(pipe(client, master.clone(), cancel.clone()));
            }
            Err(e) => {
                debug!(error = %e, "Sentinel forwarder: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Pipes one connection to the current master until either side closes, the master changes or
/// the forwarder stops.
async fn pipe(
    mut client: TcpStream,
    mut master: watch::Receiver<SocketAddr>,
    cancel: CancellationToken,
) {
    let target = *master.borrow_and_update();
    let Ok(mut server) = TcpStream::connect(target).await else {
        return; // the client sees the connection close and reconnects
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        () = cancel.cancelled() => {}
        () = async {
            while master.changed().await.is_ok() {
                if *master.borrow_and_update() != target {
                    return;
                }
            }
            std::future::pending::<()>().await;
        } => {}
    }
}

/// `user:password@` (`:password@` without a user), percent-encoded, for the forwarder's URL.
pub(crate) fn userinfo(username: Option<&str>, password: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!(
        "{}:{}@",
        username.map(enc).unwrap_or_default(),
        enc(password)
    )
}

fn fatal(reason: String, hint: &str) -> Error {
    Error::Fatal {
        consumer: None,
        command: "asking Redis Sentinel for the master",
        reason,
        hint: hint.to_owned(),
        source: None,
    }
}
