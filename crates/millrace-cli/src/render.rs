//! Everything that turns data into text: escaping of binary data, durations, tables for people,
//! JSON for scripts, and the writers for stdout and stderr.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::error::Result;

/// Writes `text` to stdout (a closed pipe ends the command quietly).
pub(crate) fn out(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    if !text.ends_with('\n') && !text.is_empty() {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(())
}

/// Writes a note or warning line to stderr (ignoring failures: there is nowhere else to report).
pub(crate) fn note(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{text}");
}

/// Writes `value` to stdout as pretty JSON.
pub(crate) fn json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| crate::error::CliError::runtime(format!("cannot encode JSON: {e}")))?;
    out(&text)
}

/// Writes `value` to stdout as one line of JSON.
pub(crate) fn json_line<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string(value)
        .map_err(|e| crate::error::CliError::runtime(format!("cannot encode JSON: {e}")))?;
    out(&text)
}

/// Readable text for arbitrary bytes: valid UTF-8 stays as it is, except that backslashes and
/// control characters are escaped (`\\`, `\n`, `\t`, `\x01`), and every byte that is not valid
/// UTF-8 becomes `\xNN`.
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Like [`escape`], and quoted (`"a b"`) when the text is empty or holds spaces, quotes or `=`, so
/// that `field=value` lists stay unambiguous.
pub(crate) fn token(bytes: &[u8]) -> String {
    let text = escape(bytes);
    if text.is_empty() || text.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') {
        format!("\"{}\"", text.replace('"', "\\\""))
    } else {
        text
    }
}

/// Cuts `text` to at most `max` characters, ending with `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A duration for people, to its two largest units: `850ms`, `42s`, `3m 12s`, `2h 5m`,
/// `3days 4h`.
pub(crate) fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let full = humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    full.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// `1 entry`, `2 entries`: `n` and the singular or plural noun.
pub(crate) fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// [`duration`] of a millisecond count.
pub(crate) fn millis(ms: u64) -> String {
    duration(Duration::from_millis(ms))
}

/// A duration in whole milliseconds (for JSON).
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// `?` for unknown values.
pub(crate) fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

/// Bytes in JSON: a string when they are valid UTF-8, else `{"hex": "fffe"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonBytes(pub(crate) Vec<u8>);

impl Serialize for JsonBytes {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut hex = String::with_capacity(self.0.len() * 2);
                for b in &self.0 {
                    let _ = write!(hex, "{b:02x}");
                }
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("hex", &hex)?;
                map.end()
            }
        }
    }
}

impl std::fmt::Display for JsonBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&escape(&self.0))
    }
}

/// Field/value pairs for JSON, in order: `[["field", "value"], ...]`.
pub(crate) fn json_fields(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<[JsonBytes; 2]> {
    fields
        .iter()
        .map(|(k, v)| [JsonBytes(k.clone()), JsonBytes(v.clone())])
        .collect()
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A plain-text table: a header row, then rows, columns separated by two spaces.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub(crate) fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            columns: columns
                .iter()
                .map(|(name, align)| ((*name).to_owned(), *align))
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank, extra cells are dropped).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, ending with a newline.
    pub(crate) fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(widths.len()) {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.clone()).collect();
        for row in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, (_, align)) in self.columns.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                let pad = widths[i].saturating_sub(width(cell));
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_is_escaped_readably() {
        assert_eq!(escape(b"plain"), "plain");
        assert_eq!(escape(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape(b"a\nb\\c\x01"), "a\\nb\\\\c\\u{1}");
        assert_eq!(escape("grüße".as_bytes()), "grüße");
        assert_eq!(token(b"a b"), "\"a b\"");
        assert_eq!(token(b""), "\"\"");
        assert_eq!(token(b"k=v"), "\"k=v\"");
        assert_eq!(token(b"say \"hi\""), "\"say \\\"hi\\\"\"");
    }

    #[test]
    fn json_bytes_are_strings_or_hex() {
        let v = serde_json::to_string(&JsonBytes(b"hi".to_vec())).unwrap();
        assert_eq!(v, "\"hi\"");
        let v = serde_json::to_string(&JsonBytes(b"\xff\x00".to_vec())).unwrap();
        assert_eq!(v, "{\"hex\":\"ff00\"}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(millis(850), "850ms");
        assert_eq!(millis(192_000), "3m 12s");
        assert_eq!(millis(192_999), "3m 12s");
        assert_eq!(millis(7_384_000), "2h 3m");
        assert_eq!(count(1u64, "entry", "entries"), "1 entry");
        assert_eq!(count(0u64, "entry", "entries"), "0 entries");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&[("NAME", Align::Left), ("N", Align::Right)]);
        t.row(vec!["a".into(), "10".into()]);
        t.row(vec!["long".into(), "2".into()]);
        assert_eq!(t.render(), "NAME   N\na     10\nlong   2\n");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
