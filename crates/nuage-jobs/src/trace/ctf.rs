//! A CTF 1.8 writer of our own (Common Trace Format, https://diamon.org/ctf/v1.8.3/):
//! one trace directory per process with a TSDL `metadata` file and one stream file,
//! `stream`, made of packets. babeltrace2 reads it, Trace Compass opens it as a generic
//! CTF trace, and [`super::read`] reads it back for the analyzer.
//!
//! Layout, all little-endian and byte-aligned (no bit fields, so every reader agrees):
//!
//! ```text
//! packet header   u32 magic 0xC1FC1FC1, u8[16] trace uuid, u32 stream_id = 0
//! packet context  u64 timestamp_begin, u64 timestamp_end, u64 content_size (bits),
//!                 u64 packet_size (bits), u64 packet_seq_num, u64 events_discarded
//! event header    u32 id, u64 timestamp
//! event context   i32 _vpid, i32 _vtid
//! span_begin (0)  string trace_id, u64 span_id, u64 parent_id, string name,
//!                 string component, string detail
//! span_end (1)    string trace_id, u64 span_id, string name, string component
//! ```
//!
//! Timestamps are on clock `realtime`: nanoseconds since the Unix epoch, declared
//! `absolute = true`, so traces of several processes and machines merge on one time
//! line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::Context;

use super::{ProcessInfo, SpanState, clip};

/// Packet magic number (CTF 1.8 §5).
pub const MAGIC: u32 = 0xC1FC_1FC1;
/// A packet is written once its events reach this size (or at each flush).
pub const PACKET_EVENTS_BYTES: usize = 60 << 10;
/// Bytes of packet header + context.
pub const PACKET_PREAMBLE_BYTES: usize = 4 + 16 + 4 + 6 * 8;
/// Event ids.
pub const EVENT_SPAN_BEGIN: u32 = 0;
pub const EVENT_SPAN_END: u32 = 1;
/// Name of the stream file in each trace directory.
pub const STREAM_FILE: &str = "stream";
/// Written in the metadata's env, checked by the reader.
pub const FORMAT_VERSION: u32 = 1;

/// The metadata text of a trace.
pub fn metadata(uuid: &[u8; 16], info: &ProcessInfo) -> String {
    let uuid = format_uuid(uuid);
    let host = escape(&info.hostname);
    let role = escape(&info.role);
    format!(
        r#"/* CTF 1.8 */

typealias integer {{ size = 8; align = 8; signed = false; }} := uint8_t;
typealias integer {{ size = 32; align = 8; signed = false; }} := uint32_t;
typealias integer {{ size = 64; align = 8; signed = false; }} := uint64_t;
typealias integer {{ size = 32; align = 8; signed = true; }} := int32_t;
typealias integer {{ size = 64; align = 8; signed = false; base = 16; }} := uint64_hex_t;

trace {{
	major = 1;
	minor = 8;
	uuid = "{uuid}";
	byte_order = le;
	packet.header := struct {{
		uint32_t magic;
		uint8_t  uuid[16];
		uint32_t stream_id;
	}};
}};

env {{
	hostname = "{host}";
	domain = "nuage";
	tracer_name = "nuage";
	tracer_major = 0;
	tracer_minor = 1;
	nuage_trace_format = {FORMAT_VERSION};
	procname = "nuage-{role}";
	role = "{role}";
	vpid = {pid};
}};

clock {{
	name = "realtime";
	description = "CLOCK_REALTIME: nanoseconds since the Unix epoch";
	freq = 1000000000;
	precision = 1;
	offset_s = 0;
	offset = 0;
	absolute = true;
}};

typealias integer {{ size = 64; align = 8; signed = false; map = clock.realtime.value; }} := uint64_clock_realtime_t;

stream {{
	id = 0;
	packet.context := struct {{
		uint64_clock_realtime_t timestamp_begin;
		uint64_clock_realtime_t timestamp_end;
		uint64_t content_size;
		uint64_t packet_size;
		uint64_t packet_seq_num;
		uint64_t events_discarded;
	}};
	event.header := struct {{
		uint32_t id;
		uint64_clock_realtime_t timestamp;
	}};
	event.context := struct {{
		int32_t _vpid;
		int32_t _vtid;
	}};
}};

event {{
	name = "nuage:span_begin";
	id = {EVENT_SPAN_BEGIN};
	stream_id = 0;
	fields := struct {{
		string trace_id;
		uint64_hex_t span_id;
		uint64_hex_t parent_id;
		string name;
		string component;
		string detail;
	}};
}};

event {{
	name = "nuage:span_end";
	id = {EVENT_SPAN_END};
	stream_id = 0;
	fields := struct {{
		string trace_id;
		uint64_hex_t span_id;
		string name;
		string component;
	}};
}};
"#,
        pid = info.pid
    )
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A TSDL string literal body: no quotes, backslashes or control characters.
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Writes one process's stream.
pub struct CtfWriter {
    file: File,
    uuid: [u8; 16],
    /// Encoded events of the packet being built.
    events: Vec<u8>,
    first_ts: u64,
    last_ts: u64,
    seq: u64,
}

impl CtfWriter {
    /// Creates `dir` with its metadata and an empty stream file.
    pub fn create(dir: &Path, info: &ProcessInfo) -> anyhow::Result<CtfWriter> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create trace directory {}", dir.display()))?;
        let mut uuid = [0u8; 16];
        getrandom::fill(&mut uuid).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
        uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4
        uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
        let meta_path = dir.join("metadata");
        std::fs::write(&meta_path, metadata(&uuid, info))
            .with_context(|| format!("cannot write {}", meta_path.display()))?;
        let stream_path = dir.join(STREAM_FILE);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&stream_path)
            .with_context(|| format!("cannot create {}", stream_path.display()))?;
        Ok(CtfWriter {
            file,
            uuid,
            events: Vec::with_capacity(PACKET_EVENTS_BYTES + 1024),
            first_ts: 0,
            last_ts: 0,
            seq: 0,
        })
    }

    /// Starts an event at `ts` (clamped so the stream never goes back in time);
    /// returns the timestamp used.
    fn header(&mut self, id: u32, ts: u64, pid: u32, tid: u32) -> u64 {
        let ts = ts.max(self.last_ts);
        if self.events.is_empty() {
            self.first_ts = ts;
        }
        self.last_ts = ts;
        self.events.extend_from_slice(&id.to_le_bytes());
        self.events.extend_from_slice(&ts.to_le_bytes());
        self.events.extend_from_slice(&(pid as i32).to_le_bytes());
        self.events.extend_from_slice(&(tid as i32).to_le_bytes());
        ts
    }

    fn string(&mut self, s: &str) {
        // CTF strings end at the first NUL: drop any inside.
        self.events.extend(clip(s).bytes().filter(|&b| b != 0));
        self.events.push(0);
    }

    /// Encodes a span_begin event; returns its timestamp.
    pub(crate) fn span_begin(&mut self, ts: u64, pid: u32, tid: u32, s: &SpanState) -> u64 {
        let ts = self.header(EVENT_SPAN_BEGIN, ts, pid, tid);
        self.string(&format!("{:032x}", s.trace_id));
        self.events.extend_from_slice(&s.span_id.to_le_bytes());
        self.events.extend_from_slice(&s.parent_id.to_le_bytes());
        self.string(s.name);
        self.string(s.component);
        self.string(&s.detail);
        self.maybe_write();
        ts
    }

    /// Encodes a span_end event; returns its timestamp.
    pub(crate) fn span_end(&mut self, ts: u64, pid: u32, tid: u32, s: &SpanState) -> u64 {
        let ts = self.header(EVENT_SPAN_END, ts, pid, tid);
        self.string(&format!("{:032x}", s.trace_id));
        self.events.extend_from_slice(&s.span_id.to_le_bytes());
        self.string(s.name);
        self.string(s.component);
        self.maybe_write();
        ts
    }

    fn maybe_write(&mut self) {
        if self.events.len() >= PACKET_EVENTS_BYTES {
            if let Err(e) = self.flush() {
                tracing::warn!("writing the CTF trace failed: {e}");
            }
        }
    }

    /// Writes the pending events as one packet.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let packet = encode_packet(
            &self.uuid,
            self.first_ts,
            self.last_ts,
            self.seq,
            &self.events,
        );
        self.events.clear();
        self.seq += 1;
        self.file.write_all(&packet)
    }
}

/// A whole packet: header, context, then the encoded events.
pub fn encode_packet(uuid: &[u8; 16], begin: u64, end: u64, seq: u64, events: &[u8]) -> Vec<u8> {
    let size_bits = ((PACKET_PREAMBLE_BYTES + events.len()) * 8) as u64;
    let mut p = Vec::with_capacity(PACKET_PREAMBLE_BYTES + events.len());
    p.extend_from_slice(&MAGIC.to_le_bytes());
    p.extend_from_slice(uuid);
    p.extend_from_slice(&0u32.to_le_bytes()); // stream_id
    p.extend_from_slice(&begin.to_le_bytes());
    p.extend_from_slice(&end.to_le_bytes());
    p.extend_from_slice(&size_bits.to_le_bytes()); // content_size
    p.extend_from_slice(&size_bits.to_le_bytes()); // packet_size
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes()); // events_discarded
    debug_assert_eq!(p.len(), PACKET_PREAMBLE_BYTES);
    p.extend_from_slice(events);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_format() {
        let u: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(format_uuid(&u), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn metadata_names_the_process() {
        let info = ProcessInfo {
            hostname: "n\"1".into(),
            role: "manager".into(),
            pid: 42,
        };
        let m = metadata(&[0; 16], &info);
        assert!(m.starts_with("/* CTF 1.8 */"));
        assert!(m.contains("hostname = \"n_1\";"));
        assert!(m.contains("vpid = 42;"));
        assert!(m.contains("absolute = true;"));
    }

    #[test]
    fn packet_sizes_are_in_bits() {
        let p = encode_packet(&[7; 16], 10, 20, 3, &[1, 2, 3]);
        assert_eq!(p.len(), PACKET_PREAMBLE_BYTES + 3);
        let content = u64::from_le_bytes(p[40..48].try_into().unwrap());
        assert_eq!(content, (p.len() * 8) as u64);
        assert_eq!(u32::from_le_bytes(p[0..4].try_into().unwrap()), MAGIC);
    }
}
