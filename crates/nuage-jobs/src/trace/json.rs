//! Trace Event JSON (the format of chrome://tracing, opened by Perfetto UI): one file
//! per process, in the JSON Array Format, one complete event (`"ph":"X"`) per span with
//! the real pid and tid and absolute timestamps (microseconds since the Unix epoch,
//! with nanosecond decimals). A file cut short by a crash lacks only its closing `]`,
//! which the format allows.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::json;

use super::buffer::{Chunk, ChunkBuf};
use super::{ProcessInfo, SpanState, clip};

/// One process's JSON file: the opening of the array is written at creation, the
/// spans in chunks by the flusher, the closing bracket by [`JsonFile::finish`].
pub struct JsonFile {
    file: File,
    closed: bool,
}

impl JsonFile {
    pub fn create(path: &Path, info: &ProcessInfo) -> anyhow::Result<JsonFile> {
        let mut file = File::options()
            .create_new(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let meta = json!({
            "name": "process_name", "ph": "M", "pid": info.pid, "tid": info.pid,
            "args": {"name": format!("nuage {} @ {}", info.role, info.hostname)},
        });
        write!(file, "[\n{meta}").context("writing the JSON trace")?;
        Ok(JsonFile {
            file,
            closed: false,
        })
    }

    /// Writes a chunk of encoded spans (nothing once the array is closed).
    pub fn write_chunk(&mut self, chunk: &Chunk) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        self.file.write_all(chunk.buf.as_slice())
    }

    /// Closes the array; nothing is written after.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if !self.closed {
            self.closed = true;
            self.file.write_all(b"\n]\n")?;
        }
        Ok(())
    }
}

/// Encodes one span as a complete event, preceded by the comma that separates it from
/// the previous element of the array (the process's metadata event comes first).
///
/// Written by hand, byte by byte, straight into the chunk: a JSON value per span, and
/// then `core::fmt`, were most of what a traced job cost (docs/tracing.md). Timestamps
/// are integers written with three decimals: an f64 would round away nanoseconds.
pub(crate) fn encode_span(buf: &mut ChunkBuf, s: &SpanState, end_ns: u64, pid: u32, tid: u32) {
    let dur_ns = end_ns.saturating_sub(s.start_ns);
    let mut ids = [0u8; 16 + 16 + 32];
    super::hex_into(u128::from(s.parent_id), &mut ids[..16]);
    super::hex_into(u128::from(s.span_id), &mut ids[16..32]);
    super::hex_into(s.trace_id, &mut ids[32..]);
    buf.extend(b",\n{\"name\":");
    json_str(buf, s.name);
    buf.extend(b",\"cat\":");
    json_str(buf, s.component);
    buf.extend(b",\"ph\":\"X\",\"ts\":");
    micros(buf, s.start_ns);
    buf.extend(b",\"dur\":");
    micros(buf, dur_ns);
    buf.extend(b",\"pid\":");
    decimal(buf, u64::from(pid));
    buf.extend(b",\"tid\":");
    decimal(buf, u64::from(tid));
    buf.extend(b",\"args\":{\"detail\":");
    json_str(buf, clip(&s.detail));
    buf.extend(b",\"parent_id\":\"");
    buf.extend(&ids[..16]);
    buf.extend(b"\",\"span_id\":\"");
    buf.extend(&ids[16..32]);
    buf.extend(b"\",\"trace_id\":\"");
    buf.extend(&ids[32..]);
    buf.extend(b"\"}}");
}

/// `s` as a JSON string literal: quoted, with `"`, `\\` and control characters escaped.
fn json_str(buf: &mut ChunkBuf, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 => {
                buf.extend(&bytes[plain..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                buf.extend(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xf) as usize],
                ]);
                plain = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend(&bytes[plain..i]);
        buf.extend(esc);
        plain = i + 1;
    }
    buf.extend(&bytes[plain..]);
    buf.push(b'"');
}

/// `v` in decimal.
fn decimal(buf: &mut ChunkBuf, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend(&digits[i..]);
}

/// Nanoseconds as microseconds with three decimals, exactly.
fn micros(buf: &mut ChunkBuf, ns: u64) {
    decimal(buf, ns / 1000);
    let frac = ns % 1000;
    buf.extend(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl Fn(&mut ChunkBuf)) -> String {
        let mut b = ChunkBuf::new().unwrap();
        f(&mut b);
        String::from_utf8(b.as_slice().to_vec()).unwrap()
    }

    #[test]
    fn micros_keep_nanoseconds() {
        assert_eq!(
            encoded(|b| micros(b, 1_723_456_789_123_456_789)),
            "1723456789123456.789"
        );
        assert_eq!(encoded(|b| micros(b, 5)), "0.005");
        assert_eq!(encoded(|b| micros(b, 1_000)), "1.000");
        assert_eq!(encoded(|b| decimal(b, 0)), "0");
        assert_eq!(encoded(|b| decimal(b, u64::MAX)), u64::MAX.to_string());
    }

    #[test]
    fn a_span_is_one_json_object() {
        let s = SpanState {
            trace_id: 0xabc,
            span_id: 0x12,
            parent_id: 0,
            name: "manager.dispatch",
            component: "manager",
            detail: "job 7 to \"w1\"".into(),
            start_ns: 1_723_456_789_123_456_789,
        };
        let text = encoded(|b| encode_span(b, &s, s.start_ns + 2_500, 42, 43));
        let v: serde_json::Value = serde_json::from_str(text.strip_prefix(",\n").unwrap()).unwrap();
        assert_eq!(v["name"], "manager.dispatch");
        assert_eq!(v["cat"], "manager");
        assert_eq!(v["ph"], "X");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["tid"], 43);
        assert_eq!(v["dur"].to_string(), "2.5");
        assert!(text.contains(r#""ts":1723456789123456.789,"#), "{text}");
        assert_eq!(v["args"]["detail"], "job 7 to \"w1\"");
        assert_eq!(v["args"]["span_id"], "0000000000000012");
        assert_eq!(v["args"]["parent_id"], "0000000000000000");
        assert_eq!(v["args"]["trace_id"], format!("{:032x}", 0xabc));
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
            let text = encoded(|b| json_str(b, s));
            let back: String =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back, s);
        }
    }
}
