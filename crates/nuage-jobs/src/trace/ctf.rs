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
use std::io::{IoSlice, Write};
use std::path::Path;

use anyhow::Context;

use super::buffer::{CHUNK_FILL_BYTES, Chunk, ChunkBuf};
use super::{ProcessInfo, SpanState, clip};

/// Packet magic number (CTF 1.8 §5).
pub const MAGIC: u32 = 0xC1FC_1FC1;
/// A packet is closed once its events reach this size (or at each flush).
pub const PACKET_EVENTS_BYTES: usize = CHUNK_FILL_BYTES;
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

/// Creates `dir` with its metadata and an empty stream file; returns the stream.
pub fn create(dir: &Path, info: &ProcessInfo) -> anyhow::Result<CtfFile> {
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
    Ok(CtfFile { file, uuid, seq: 0 })
}

/// The stream file of one process: closed chunks of encoded events become packets.
pub struct CtfFile {
    file: File,
    uuid: [u8; 16],
    seq: u64,
}

impl CtfFile {
    /// Writes one chunk as a packet: the preamble and the events in one `writev`,
    /// nothing copied.
    pub fn write_packet(&mut self, chunk: &Chunk) -> std::io::Result<()> {
        let events = chunk.buf.as_slice();
        if events.is_empty() {
            return Ok(());
        }
        let pre = packet_preamble(
            &self.uuid,
            chunk.first_ts,
            chunk.last_ts,
            self.seq,
            chunk.discarded,
            events.len(),
        );
        self.seq += 1;
        let n = self
            .file
            .write_vectored(&[IoSlice::new(&pre), IoSlice::new(events)])?;
        // Short writes (a full disk, a signal) finish the packet byte by byte.
        if n < pre.len() {
            self.file.write_all(&pre[n..])?;
            self.file.write_all(events)
        } else {
            self.file.write_all(&events[n - pre.len()..])
        }
    }
}

/// Encodes the fixed-size part of an event (header and context).
fn header(buf: &mut ChunkBuf, id: u32, ts: u64, pid: u32, tid: u32) {
    let mut h = [0u8; 20];
    h[0..4].copy_from_slice(&id.to_le_bytes());
    h[4..12].copy_from_slice(&ts.to_le_bytes());
    h[12..16].copy_from_slice(&(pid as i32).to_le_bytes());
    h[16..20].copy_from_slice(&(tid as i32).to_le_bytes());
    buf.extend(&h);
}

/// A CTF string: the bytes up to [`super::MAX_FIELD_BYTES`], without NULs (CTF strings
/// end at the first), then a NUL.
fn string(buf: &mut ChunkBuf, s: &str) {
    let s = clip(s).as_bytes();
    if s.contains(&0) {
        for &b in s.iter().filter(|&&b| b != 0) {
            buf.push(b);
        }
    } else {
        buf.extend(s);
    }
    buf.push(0);
}

/// The trace id as 32 lowercase hex digits and a NUL, without allocating.
fn trace_id(buf: &mut ChunkBuf, id: u128) {
    let mut hex = [0u8; 33];
    super::hex_into(id, &mut hex[..32]);
    buf.extend(&hex);
}

/// Encodes a span_begin event at `ts`.
pub(crate) fn span_begin(buf: &mut ChunkBuf, ts: u64, pid: u32, tid: u32, s: &SpanState) {
    header(buf, EVENT_SPAN_BEGIN, ts, pid, tid);
    trace_id(buf, s.trace_id);
    buf.extend(&s.span_id.to_le_bytes());
    buf.extend(&s.parent_id.to_le_bytes());
    string(buf, s.name);
    string(buf, s.component);
    string(buf, &s.detail);
}

/// Encodes a span_end event at `ts`.
pub(crate) fn span_end(buf: &mut ChunkBuf, ts: u64, pid: u32, tid: u32, s: &SpanState) {
    header(buf, EVENT_SPAN_END, ts, pid, tid);
    trace_id(buf, s.trace_id);
    buf.extend(&s.span_id.to_le_bytes());
    string(buf, s.name);
    string(buf, s.component);
}

/// A packet's header and context, for `events_len` bytes of events.
pub fn packet_preamble(
    uuid: &[u8; 16],
    begin: u64,
    end: u64,
    seq: u64,
    discarded: u64,
    events_len: usize,
) -> [u8; PACKET_PREAMBLE_BYTES] {
    let size_bits = ((PACKET_PREAMBLE_BYTES + events_len) * 8) as u64;
    let mut p = [0u8; PACKET_PREAMBLE_BYTES];
    p[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    p[4..20].copy_from_slice(uuid);
    p[20..24].copy_from_slice(&0u32.to_le_bytes()); // stream_id
    p[24..32].copy_from_slice(&begin.to_le_bytes());
    p[32..40].copy_from_slice(&end.to_le_bytes());
    p[40..48].copy_from_slice(&size_bits.to_le_bytes()); // content_size
    p[48..56].copy_from_slice(&size_bits.to_le_bytes()); // packet_size
    p[56..64].copy_from_slice(&seq.to_le_bytes());
    p[64..72].copy_from_slice(&discarded.to_le_bytes()); // events_discarded
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
        let p = packet_preamble(&[7; 16], 10, 20, 3, 0, 3);
        let content = u64::from_le_bytes(p[40..48].try_into().unwrap());
        assert_eq!(content, ((PACKET_PREAMBLE_BYTES + 3) * 8) as u64);
        assert_eq!(u32::from_le_bytes(p[0..4].try_into().unwrap()), MAGIC);
    }
}
