//! FaultProxy in front of a real redis-server.

use std::time::Duration;

use millrace_testkit::{eventually, FaultProxy, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const SHORT: Duration = Duration::from_millis(200);
const LONG: Duration = Duration::from_secs(5);

async fn connect(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .expect("connect to the proxy")
}

/// Reads exactly `n` bytes, or fewer if the connection is closed first.
async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    while out.len() < n {
        match timeout(LONG, stream.read(&mut buf))
            .await
            .expect("read timed out")
        {
            Ok(0) | Err(_) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
        }
    }
    out
}

async fn ping(stream: &mut TcpStream) -> Vec<u8> {
    stream.write_all(b"PING\r\n").await.expect("write");
    read_n(stream, 7).await
}

#[tokio::test]
async fn faults_on_a_current_thread_runtime() {
    forwards_blackholes_heals_resets_refuses_and_cuts().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_a_multi_thread_runtime() {
    forwards_blackholes_heals_resets_refuses_and_cuts().await;
}

async fn forwards_blackholes_heals_resets_refuses_and_cuts() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}", proxy.port()));
    assert_eq!(proxy.url_for(&server), proxy.url());

    // Normal forwarding, through a real client too.
    let client = redis::Client::open(proxy.url()).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect through the proxy");
    let pong: String = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
    drop(con);
    drop(client);

    let mut a = connect(&proxy).await;
    assert_eq!(ping(&mut a).await, b"+PONG\r\n");
    eventually(LONG, "the client's connection to close", || async {
        proxy.connections() == 1
    })
    .await;

    // Blackhole: nothing comes back, until healed.
    proxy.blackhole();
    a.write_all(b"PING\r\n").await.expect("write");
    let mut buf = [0u8; 7];
    assert!(
        timeout(SHORT, a.read(&mut buf)).await.is_err(),
        "data crossed a blackhole"
    );
    let mut b = connect(&proxy).await; // accepted, but not forwarded either
    b.write_all(b"PING\r\n").await.expect("write");
    assert!(
        timeout(SHORT, b.read(&mut buf)).await.is_err(),
        "data crossed a blackhole"
    );
    proxy.heal();
    assert_eq!(read_n(&mut a, 7).await, b"+PONG\r\n");
    assert_eq!(read_n(&mut b, 7).await, b"+PONG\r\n");

    // Cut: the next reply on each open connection is truncated, then closed.
    proxy.cut_downstream_after(3);
    assert_eq!(ping(&mut a).await, b"+PO");
    assert_eq!(ping(&mut b).await, b"+PO");
    eventually(LONG, "cut connections to be dropped", || async {
        proxy.connections() == 0
    })
    .await;
    let mut c = connect(&proxy).await; // opened after the cut: unaffected
    assert_eq!(ping(&mut c).await, b"+PONG\r\n");

    // Reset: every open connection is closed.
    eventually(LONG, "one open connection", || async {
        proxy.connections() == 1
    })
    .await;
    proxy.reset_all();
    assert_eq!(read_n(&mut c, 1).await, b"");
    assert_eq!(proxy.connections(), 0);

    // Refuse: new connections are closed at once, open ones keep working.
    let mut d = connect(&proxy).await;
    assert_eq!(ping(&mut d).await, b"+PONG\r\n");
    proxy.refuse();
    let accepted = proxy.accepted();
    let mut e = connect(&proxy).await;
    assert_eq!(read_n(&mut e, 1).await, b"");
    assert_eq!(proxy.accepted(), accepted + 1);
    assert_eq!(ping(&mut d).await, b"+PONG\r\n");
    proxy.heal();
    let mut f = connect(&proxy).await;
    assert_eq!(ping(&mut f).await, b"+PONG\r\n");

    // Drop closes everything.
    drop(proxy);
    assert_eq!(read_n(&mut f, 1).await, b"");
}
