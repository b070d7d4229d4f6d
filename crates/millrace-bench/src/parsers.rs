//! The two RESP2 parsers end to end: one consumer drains the preloaded stream at COUNT 500 over a
//! raw TCP socket, `XREADGROUP` then `XACK` with every id of the batch, the same loop twice, once
//! with millrace's framer and parser and once with `redis-protocol`'s `decode_range` (its fastest
//! decoder in the micro rows). The rest of millrace is left out, so the parser's share of the client
//! CPU shows.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use millrace::__bench::ReplyPath;
use millrace::streams::ReadItem;
use redis::ConnectionAddr;
use redis_protocol::bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bench::{median, Env};
use crate::measure;
use crate::micro::alt;
use crate::Res;

const COUNT: usize = 500;

/// Which parser a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parser {
    Millrace,
    RedisProtocol,
}

impl Parser {
    fn label(self) -> &'static str {
        match self {
            Parser::Millrace => "millrace (`FrameBuf` + `parse_read_reply`)",
            Parser::RedisProtocol => "redis-protocol (`decode_range` → `RawEntry`s)",
        }
    }
}

/// A socket and the parser's buffer.
enum Conn {
    Millrace(TcpStream, Box<ReplyPath>),
    RedisProtocol(TcpStream, BytesMut),
}

impl Conn {
    async fn send(&mut self, packed: &[u8]) -> Res<()> {
        let (Conn::Millrace(s, _) | Conn::RedisProtocol(s, _)) = self;
        s.write_all(packed).await?;
        Ok(())
    }

    /// The next reply's entries (nothing for a reply that is not an `XREADGROUP` one).
    async fn reply(&mut self) -> Res<Vec<ReadItem>> {
        loop {
            let n = match self {
                Conn::Millrace(s, p) => {
                    if let Some(frame) = p.next_frame()? {
                        return Ok(ReplyPath::parse(&frame).unwrap_or_default());
                    }
                    let n = s.read(p.spare()).await?;
                    p.filled(n);
                    n
                }
                Conn::RedisProtocol(s, buf) => {
                    if let Some((frame, used)) = redis_protocol::resp2::decode::decode_range(buf)
                        .map_err(|e| format!("redis-protocol: {e:?}"))?
                    {
                        let items = alt::range_frame_to_items(frame, &buf[..used]);
                        buf.advance(used);
                        return Ok(items);
                    }
                    buf.reserve(64 * 1024);
                    s.read_buf(buf).await?
                }
            };
            if n == 0 {
                return Err("the server closed the connection".into());
            }
        }
    }
}

/// One drain: entries per second and client CPU per entry.
struct Drain {
    msgs_per_sec: f64,
    client_us: f64,
}

async fn drain(env: &mut Env, parser: Parser, n: usize) -> Res<Drain> {
    let group = env.next_name("p");
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&env.stream)
        .arg(&group)
        .arg("0")
        .query_async(&mut env.admin)
        .await?;
    let info = env.client.get_connection_info();
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err("the parser section needs a plain TCP server".into());
    };
    let socket = TcpStream::connect((host.as_str(), *port)).await?;
    socket.set_nodelay(true)?;
    let mut conn = match parser {
        Parser::Millrace => Conn::Millrace(socket, Box::default()),
        Parser::RedisProtocol => Conn::RedisProtocol(socket, BytesMut::with_capacity(64 * 1024)),
    };
    let read = millrace::streams::xreadgroup_cmd(
        &env.stream,
        &group,
        "c",
        COUNT,
        Some(Duration::from_millis(100)),
        ">",
    )
    .get_packed_command();
    let (cpu0, t0) = (measure::process_cpu(), Instant::now());
    let mut handled = 0;
    while handled < n {
        conn.send(&read).await?;
        let items = conn.reply().await?;
        let ids: Vec<String> = items
            .iter()
            .filter_map(|i| match i {
                ReadItem::Entry(e) => Some(e.id.to_string()),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            continue;
        }
        handled += ids.len();
        let mut ack = redis::cmd("XACK");
        ack.arg(&env.stream).arg(&group).arg(&ids);
        conn.send(&ack.get_packed_command()).await?;
        conn.reply().await?;
    }
    let (cpu, wall) = (measure::process_cpu() - cpu0, t0.elapsed());
    crate::bench::verify_drained(&mut env.admin, &env.stream, &group, n as u64).await?;
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&env.stream)
        .arg(&group)
        .query_async(&mut env.admin)
        .await?;
    Ok(Drain {
        msgs_per_sec: n as f64 / wall.as_secs_f64(),
        client_us: cpu.as_secs_f64() * 1e6 / n as f64,
    })
}

/// Alternates the two parsers over `rounds` rounds; returns the table.
pub(crate) async fn run(env: &mut Env, messages: usize, rounds: usize) -> Res<String> {
    env.ensure_preloaded(messages).await?;
    let parsers = [Parser::Millrace, Parser::RedisProtocol];
    let mut results: Vec<Vec<Drain>> = vec![Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in 0..parsers.len() {
            let i = (k + round) % parsers.len();
            env.quiesce().await?;
            let d = drain(env, parsers[i], messages).await?;
            println!(
                "  round {}/{rounds} {:<48} {:>9.0} msgs/s  client CPU {:.2} µs/msg",
                round + 1,
                parsers[i].label(),
                d.msgs_per_sec,
                d.client_us
            );
            results[i].push(d);
        }
    }
    let mut s = format!(
        "### The RESP parsers end to end: 1 consumer, COUNT 500, `XREADGROUP` then `XACK` on a raw socket — {messages} entries per run, {rounds} round(s), medians\n\n| parser | msgs/s | client CPU µs/msg |\n|---|--:|--:|\n"
    );
    let mut med = Vec::new();
    for (p, runs) in parsers.iter().zip(&results) {
        let rate = median(runs.iter().map(|d| d.msgs_per_sec).collect());
        let cpu = median(runs.iter().map(|d| d.client_us).collect());
        let _ = writeln!(s, "| {} | {rate:.0} | {cpu:.2} |", p.label());
        med.push((rate, cpu));
    }
    let _ = writeln!(
        s,
        "\nredis-protocol / millrace: {:.2}× the throughput, {:.2}× the client CPU per entry.",
        med[1].0 / med[0].0,
        med[1].1 / med[0].1
    );
    Ok(s)
}
