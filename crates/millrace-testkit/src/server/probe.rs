//! Talking to a server without a client: a raw RESP `PING` and `INFO server` that tells our process
//! from another on the port, and percent-encoding for the URLs the kit builds.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Connects, authenticates if needed and sends `PING` and `INFO server`; true
/// if the answer is `PONG` from the process `expected_pid` (so a server of
/// someone else that won the race for the port is not mistaken for ours).
pub(crate) fn probe(port: u16, password: Option<&str>, expected_pid: u32) -> bool {
    fn inner(port: u16, password: Option<&str>, expected_pid: u32) -> std::io::Result<bool> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut request = Vec::new();
        if let Some(pw) = password {
            resp_command(&mut request, &["AUTH", pw]);
        }
        resp_command(&mut request, &["PING"]);
        resp_command(&mut request, &["INFO", "server"]);
        (&stream).write_all(&request)?;
        let mut reader = BufReader::new(&stream);
        if password.is_some() && read_reply(&mut reader)? != "+OK" {
            return Ok(false);
        }
        if read_reply(&mut reader)? != "+PONG" {
            return Ok(false);
        }
        let info = read_reply(&mut reader)?;
        let wanted = format!("process_id:{expected_pid}");
        Ok(info.lines().any(|l| l.trim() == wanted))
    }
    inner(port, password, expected_pid).unwrap_or(false)
}

fn resp_command(out: &mut Vec<u8>, parts: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for p in parts {
        out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one RESP2 reply: a simple string/error/integer line as is
/// (`+PONG`), a bulk string as its content.
fn read_reply(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end().to_owned();
    let Some(len) = line.strip_prefix('$') else {
        return Ok(line);
    };
    let Ok(len) = len.parse::<usize>() else {
        return Ok(String::new()); // null bulk string
    };
    let mut body = vec![0; len + 2];
    reader.read_exact(&mut body)?;
    body.truncate(len);
    Ok(String::from_utf8_lossy(&body).into_owned())
}

pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_unreserved() {
        assert_eq!(percent_encode("aZ9-._~"), "aZ9-._~");
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }

    #[test]
    fn resp_encoding() {
        let mut out = Vec::new();
        resp_command(&mut out, &["AUTH", "pw"]);
        assert_eq!(out, b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n");
    }

    #[test]
    fn reply_parsing() -> std::io::Result<()> {
        let mut r = BufReader::new(&b"+PONG\r\n$5\r\nab\r\nc\r\n-ERR x\r\n"[..]);
        assert_eq!(read_reply(&mut r)?, "+PONG");
        assert_eq!(read_reply(&mut r)?, "ab\r\nc");
        assert_eq!(read_reply(&mut r)?, "-ERR x");
        Ok(())
    }
}
