//! Trace Event JSON (the format of chrome://tracing, opened by Perfetto UI): one file
//! per process, in the JSON Array Format, one complete event (`"ph":"X"`) per span with
//! the real pid and tid and absolute timestamps (microseconds since the Unix epoch,
//! with nanosecond decimals). A file cut short by a crash lacks only its closing `]`,
//! which the format allows.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use serde_json::json;

use super::{ProcessInfo, SpanState, clip};

pub struct JsonWriter {
    out: BufWriter<File>,
    closed: bool,
}

impl JsonWriter {
    pub fn create(path: &Path, info: &ProcessInfo) -> anyhow::Result<JsonWriter> {
        let file = File::options()
            .create_new(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = BufWriter::with_capacity(64 << 10, file);
        let meta = json!({
            "name": "process_name", "ph": "M", "pid": info.pid, "tid": info.pid,
            "args": {"name": format!("nuage {} @ {}", info.role, info.hostname)},
        });
        write!(out, "[\n{meta}").context("writing the JSON trace")?;
        Ok(JsonWriter { out, closed: false })
    }

    pub(crate) fn span(&mut self, s: &SpanState, end_ns: u64, pid: u32, tid: u32) {
        if self.closed {
            return;
        }
        let dur_ns = end_ns.saturating_sub(s.start_ns);
        // Written by hand, straight into the buffer: building a JSON value per span
        // was most of its cost. Timestamps too: an f64 would round away nanoseconds.
        let r = write!(
            self.out,
            r#",
{{"name":{},"cat":{},"ph":"X","ts":{},"dur":{},"pid":{pid},"tid":{tid},"args":{{"detail":{},"parent_id":"{:016x}","span_id":"{:016x}","trace_id":"{:032x}"}}}}"#,
            JsonStr(s.name),
            JsonStr(s.component),
            Micros(s.start_ns),
            Micros(dur_ns),
            JsonStr(clip(&s.detail)),
            s.parent_id,
            s.span_id,
            s.trace_id,
        );
        if let Err(e) = r {
            tracing::warn!("writing the JSON trace failed: {e}");
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Closes the array; nothing is written after.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if !self.closed {
            self.closed = true;
            self.out.write_all(b"\n]\n")?;
        }
        self.out.flush()
    }
}

/// A string as a JSON string literal (quoted, escaped).
struct JsonStr<'a>(&'a str);

impl std::fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut plain = 0;
        f.write_str("\"")?;
        for (i, c) in self.0.char_indices() {
            let escaped = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if (c as u32) < 0x20 => {
                    f.write_str(&self.0[plain..i])?;
                    write!(f, "\\u{:04x}", c as u32)?;
                    plain = i + c.len_utf8();
                    continue;
                }
                _ => continue,
            };
            f.write_str(&self.0[plain..i])?;
            f.write_str(escaped)?;
            plain = i + c.len_utf8();
        }
        f.write_str(&self.0[plain..])?;
        f.write_str("\"")
    }
}

/// Nanoseconds written as microseconds with three decimals, exactly.
struct Micros(u64);

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_keep_nanoseconds() {
        assert_eq!(
            Micros(1_723_456_789_123_456_789).to_string(),
            "1723456789123456.789"
        );
        assert_eq!(Micros(5).to_string(), "0.005");
    }

    #[test]
    fn strings_are_escaped_as_json_reads_them() {
        for s in [
            "",
            "plain",
            "a \"q\" b\\c",
            "tab\tnl\ncr\r",
            "\u{1}\u{1f}x",
            "é✓ \u{7f}",
        ] {
            let text = JsonStr(s).to_string();
            let back: String =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back, s);
        }
    }
}
