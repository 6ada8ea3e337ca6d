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
        let args = json!({
            "trace_id": format!("{:032x}", s.trace_id),
            "span_id": format!("{:016x}", s.span_id),
            "parent_id": format!("{:016x}", s.parent_id),
            "detail": clip(&s.detail),
        });
        // Timestamps are written by hand: an f64 would round away the nanoseconds.
        let event = format!(
            r#"{{"name":{},"cat":{},"ph":"X","ts":{},"dur":{},"pid":{pid},"tid":{tid},"args":{args}}}"#,
            json!(s.name),
            json!(s.component),
            micros(s.start_ns),
            micros(dur_ns),
        );
        if let Err(e) = write!(self.out, ",\n{event}") {
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

/// Nanoseconds as microseconds with three decimals, exactly.
fn micros(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_keep_nanoseconds() {
        assert_eq!(micros(1_723_456_789_123_456_789), "1723456789123456.789");
        assert_eq!(micros(5), "0.005");
    }
}
