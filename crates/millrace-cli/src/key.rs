//! Keys and names on the command line: the escape syntax the output uses (see
//! [`crate::render::escape`]), read back, so that a stream, group or consumer whose name is not
//! UTF-8 can be addressed as it is shown.

use std::fmt;

use redis::{RedisWrite, ToRedisArgs};

/// A Redis key (or group or consumer name) given on the command line. It is sent to Redis as its
/// bytes and shown escaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key(Vec<u8>);

impl Key {
    /// The key's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// This key with `suffix` appended (`orders` → `orders:dlq`).
    pub(crate) fn with_suffix(&self, suffix: &str) -> Key {
        let mut bytes = self.0.clone();
        bytes.extend_from_slice(suffix.as_bytes());
        Key(bytes)
    }

    /// This key without `suffix`, when it ends with it.
    pub(crate) fn strip_suffix(&self, suffix: &str) -> Option<Key> {
        self.0
            .strip_suffix(suffix.as_bytes())
            .map(|b| Key(b.to_vec()))
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Key {
        Key(bytes.to_vec())
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::render::escape(&self.0))
    }
}

impl ToRedisArgs for Key {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        out.write_arg(&self.0);
    }
}

/// Reads a key in the output's escape syntax: `\xNN` is a byte, `\\` a backslash, `\n`, `\r`,
/// `\t` and `\u{…}` what they say; everything else stands for itself.
pub(crate) fn parse_key(s: &str) -> Result<Key, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('\\') => out.push(b'\\'),
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let byte = u8::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 2)
                    .ok_or_else(|| {
                        format!("`\\x{hex}` is not a byte; write two hex digits, e.g. `\\xff`")
                    })?;
                out.push(byte);
            }
            Some('u') => {
                let rest: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let c = rest
                    .strip_prefix('{')
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32)
                    .ok_or_else(|| {
                        format!("`\\u{rest}}}` is not a character; write e.g. `\\u{{1}}`")
                    })?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            Some(other) => {
                return Err(format!(
                    "unknown escape `\\{other}`; write a backslash as `\\\\`, a byte as `\\xff`"
                ))
            }
            None => return Err("a trailing `\\`; write a backslash as `\\\\`".into()),
        }
    }
    Ok(Key(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::escape;

    #[test]
    fn keys_read_back_what_the_output_shows() {
        for bytes in [
            &b"orders"[..],
            b"\xff\xfeorders",
            b"a\\b",
            b"tab\there\nnl",
            b"\x01ctl",
            "grüße".as_bytes(),
            b"",
        ] {
            assert_eq!(parse_key(&escape(bytes)).unwrap().as_bytes(), bytes);
        }
    }

    #[test]
    fn bad_escapes_are_refused() {
        assert!(parse_key("\\xg1").is_err());
        assert!(parse_key("\\x1").is_err());
        assert!(parse_key("\\q").is_err());
        assert!(parse_key("end\\").is_err());
        assert!(parse_key("\\u{110000}").is_err());
    }
}
