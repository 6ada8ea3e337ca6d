//! End-to-end tracing: spans carried across processes by a W3C `traceparent`, written
//! by each process as a CTF 1.8 trace (`DIR/ctf/<host>-<role>-<pid>/`) and as Trace
//! Event JSON (`DIR/json/<host>-<role>-<pid>.json`).
//!
//! A process turns tracing on once with [`install`]; until then every span is a no-op
//! that only passes its parent's context along (so an untraced manager still links a
//! traced client to a traced worker). Events are encoded into memory chunks under one
//! mutex and written by a flusher thread every [`FLUSH_INTERVAL`] (or sooner when many
//! chunks wait), outside that mutex, so recording a span costs a clock read, a lock and
//! a few hundred bytes of copying: no system call, no allocation, no file lock.
//!
//! See docs/tracing.md for the formats and how to open them.

pub mod analyze;
mod buffer;
pub mod ctf;
pub mod json;
pub mod read;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;

/// gRPC metadata key (and environment variable `NUAGE_TRACEPARENT` for tasks) carrying
/// the trace context.
pub const TRACEPARENT: &str = "traceparent";
/// How often buffered events reach the files.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest span name, component or detail written; longer ones are cut.
pub const MAX_FIELD_BYTES: usize = 256;

/// Where a span belongs: the request (trace) and the span itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
}

impl TraceContext {
    /// `00-<trace id>-<span id>-01` (W3C Trace Context, sampled).
    pub fn traceparent(&self) -> String {
        // By hand: core::fmt's padded hex was a visible part of a traced job's cost.
        let mut b = *b"00-00000000000000000000000000000000-0000000000000000-01";
        hex_into(self.trace_id, &mut b[3..35]);
        hex_into(u128::from(self.span_id), &mut b[36..52]);
        String::from_utf8(b.to_vec()).expect("hex is ASCII")
    }

    /// Parses a `traceparent`; `None` for anything malformed or all-zero.
    pub fn parse(text: &str) -> Option<TraceContext> {
        let b = text.trim().as_bytes();
        // version "00", '-', 32 hex, '-', 16 hex, '-', 2 hex flags.
        if b.len() != 55 || &b[..3] != b"00-" || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        parse_hex(&b[53..55])?;
        let trace_id = parse_hex(&b[3..35])?;
        let span_id = parse_hex(&b[36..52])? as u64;
        (trace_id != 0 && span_id != 0).then_some(TraceContext { trace_id, span_id })
    }

    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// Reads the trace context of an incoming gRPC request.
pub fn from_metadata(meta: &tonic::metadata::MetadataMap) -> Option<TraceContext> {
    meta.get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
}

/// Adds the trace context to an outgoing gRPC request.
pub fn inject<T>(request: &mut tonic::Request<T>, ctx: Option<TraceContext>) {
    if let Some(ctx) = ctx {
        if let Ok(v) = ctx.traceparent().parse() {
            request.metadata_mut().insert(TRACEPARENT, v);
        }
    }
}

/// A random id: splitmix64 over a per-thread state seeded from the OS. Ids only need
/// to be unique, not secret; a `getrandom` call per span was a third of its cost.
fn random_id() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(crate::random_u64());
    }
    STATE.with(|state| {
        let x = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn new_span_id() -> u64 {
    loop {
        let id = random_id();
        if id != 0 {
            return id;
        }
    }
}

fn new_trace_id() -> u128 {
    (u128::from(random_id()) << 64) | u128::from(new_span_id())
}

/// Nanoseconds since the Unix epoch (the clock of every trace).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One recorded span, as written (begin and end) and as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: u64,
    pub name: String,
    pub component: String,
    pub detail: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub pid: u32,
    pub tid: u32,
}

/// The process being traced.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub hostname: String,
    /// `client`, `manager`, `worker`, `app`, `auth`…
    pub role: String,
    pub pid: u32,
}

/// A tracer: the buffers and files of one process.
///
/// Two locks, so that recording never waits for a file: `hot` guards the chunks that
/// spans are encoded into (held for the encoding only: no system call, no allocation
/// in the steady state), `files` the files, held by the flusher while it writes the
/// chunks it took out of `hot`.
pub struct Tracer {
    info: ProcessInfo,
    hot: Mutex<Hot>,
    /// Signalled (once per flush) when enough chunks wait to wake the flusher early.
    wake: Condvar,
    files: Mutex<Files>,
    ctf_dir: PathBuf,
    json_path: PathBuf,
}

struct Hot {
    ctf: buffer::Chunks,
    json: buffer::Chunks,
    /// Last CTF timestamp: a stream never goes back in time.
    last_ts: u64,
    /// No more JSON after [`Tracer::finish`] closed the array.
    json_closed: bool,
    wake_sent: bool,
}

struct Files {
    ctf: ctf::CtfFile,
    json: json::JsonFile,
    /// Chunks being written (kept to hand them back for reuse).
    ctf_out: Vec<buffer::Chunk>,
    json_out: Vec<buffer::Chunk>,
}

impl Tracer {
    /// Creates the trace files of this process under `dir`.
    pub fn create(dir: &Path, role: &str) -> anyhow::Result<Tracer> {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned());
        let info = ProcessInfo {
            hostname,
            role: role.to_owned(),
            pid: std::process::id(),
        };
        let base = format!("{}-{}-{}", info.hostname, info.role, info.pid);
        let ctf_root = dir.join("ctf");
        let json_root = dir.join("json");
        for d in [&ctf_root, &json_root] {
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create trace directory {}", d.display()))?;
        }
        // A pid can come back (containers, long runs): never mix two processes.
        let mut name = base.clone();
        let mut n = 1;
        while ctf_root.join(&name).exists() || json_root.join(format!("{name}.json")).exists() {
            n += 1;
            name = format!("{base}.{n}");
        }
        let ctf_dir = ctf_root.join(&name);
        let json_path = json_root.join(format!("{name}.json"));
        let ctf = ctf::create(&ctf_dir, &info)?;
        let json = json::JsonFile::create(&json_path, &info)?;
        Ok(Tracer {
            info,
            hot: Mutex::new(Hot {
                ctf: buffer::Chunks::new(),
                json: buffer::Chunks::new(),
                last_ts: 0,
                json_closed: false,
                wake_sent: false,
            }),
            wake: Condvar::new(),
            files: Mutex::new(Files {
                ctf,
                json,
                ctf_out: Vec::new(),
                json_out: Vec::new(),
            }),
            ctf_dir,
            json_path,
        })
    }

    pub fn info(&self) -> &ProcessInfo {
        &self.info
    }
    pub fn ctf_dir(&self) -> &Path {
        &self.ctf_dir
    }
    pub fn json_path(&self) -> &Path {
        &self.json_path
    }

    fn lock_hot(&self) -> std::sync::MutexGuard<'_, Hot> {
        self.hot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the flusher if enough chunks wait (once until it runs).
    fn maybe_wake(&self, h: &mut Hot) {
        let waiting = h.ctf.closed.len().max(h.json.closed.len());
        if !h.wake_sent && waiting >= buffer::WAKE_PENDING_CHUNKS {
            h.wake_sent = true;
            self.wake.notify_one();
        }
    }

    /// Records the beginning of `s`, setting its start time. The clock is read under
    /// the lock so that the events of the stream are in time order.
    fn begin(&self, s: &mut SpanState) {
        let tid = gettid();
        let mut h = self.lock_hot();
        let ts = now_ns().max(h.last_ts);
        h.last_ts = ts;
        s.start_ns = ts;
        if let Some(buf) = h.ctf.room(ts) {
            ctf::span_begin(buf, ts, self.info.pid, tid, s);
        }
        self.maybe_wake(&mut h);
    }

    fn end(&self, s: &SpanState) {
        let tid = gettid();
        let mut h = self.lock_hot();
        let ts = now_ns().max(h.last_ts);
        h.last_ts = ts;
        if let Some(buf) = h.ctf.room(ts) {
            ctf::span_end(buf, ts, self.info.pid, tid, s);
        }
        if !h.json_closed {
            if let Some(buf) = h.json.room(ts) {
                json::encode_span(buf, s, ts, self.info.pid, tid);
            }
        }
        self.maybe_wake(&mut h);
    }

    /// Writes buffered events to the files. The chunks are taken out under the hot
    /// lock and written outside it, so recording goes on meanwhile.
    pub fn flush(&self) -> std::io::Result<()> {
        let mut f = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let f = &mut *f;
        {
            let mut h = self.lock_hot();
            h.ctf.take_closed(&mut f.ctf_out);
            h.json.take_closed(&mut f.json_out);
            h.wake_sent = false;
        }
        let mut result = Ok(());
        for c in &f.ctf_out {
            if let Err(e) = f.ctf.write_packet(c) {
                result = result.and(Err(e));
            }
        }
        for c in &f.json_out {
            if let Err(e) = f.json.write_chunk(c) {
                result = result.and(Err(e));
            }
        }
        let mut h = self.lock_hot();
        h.ctf.give_back(&mut f.ctf_out);
        h.json.give_back(&mut f.json_out);
        result
    }

    /// Flushes and closes the JSON array; later spans are still written to CTF.
    pub fn finish(&self) -> std::io::Result<()> {
        // No JSON is encoded after this, so the flush below writes the last of it
        // (and any concurrent flush writes none) before the array is closed.
        self.lock_hot().json_closed = true;
        self.flush()?;
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .json
            .finish()
    }

    /// Sleeps until the next flush is due: [`FLUSH_INTERVAL`] or an early wake.
    fn wait_for_flush(&self) {
        let h = self.lock_hot();
        let _ = self
            .wake
            .wait_timeout_while(h, FLUSH_INTERVAL, |h| !h.wake_sent);
    }
}

/// The two lowercase hex digits of every byte.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    t
};

/// Writes `v` as `out.len()` lowercase hex digits (the low ones; an even number, at
/// most 32), without allocating: a table lookup per byte (a digit at a time was most of
/// the cost of encoding a span).
pub(crate) fn hex_into(v: u128, out: &mut [u8]) {
    assert!(
        out.len() % 2 == 0 && out.len() <= 32,
        "hex of {} digits",
        out.len()
    );
    let bytes = v.to_be_bytes();
    let skip = 16 - out.len() / 2;
    for (pair, &byte) in out.chunks_exact_mut(2).zip(&bytes[skip..]) {
        pair.copy_from_slice(&HEX_PAIRS[byte as usize]);
    }
}

/// Lowercase or uppercase hex digits (at most 32) as a number; `None` for anything else.
fn parse_hex(digits: &[u8]) -> Option<u128> {
    if digits.is_empty() || digits.len() > 32 {
        return None;
    }
    let mut v: u128 = 0;
    for &c in digits {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

/// The calling thread's id, asked of the kernel once per thread.
fn gettid() -> u32 {
    thread_local! {
        static TID: u32 = nix::unistd::gettid().as_raw() as u32;
    }
    TID.with(|t| *t)
}

static TRACER: OnceLock<Arc<Tracer>> = OnceLock::new();

/// Turns tracing on for this process, writing under `dir`. A second call is ignored
/// (one process, one trace).
pub fn install(dir: &Path, role: &str) -> anyhow::Result<()> {
    if TRACER.get().is_some() {
        return Ok(());
    }
    let tracer = Arc::new(Tracer::create(dir, role)?);
    if TRACER.set(tracer.clone()).is_ok() {
        let weak = Arc::downgrade(&tracer);
        std::thread::Builder::new()
            .name("nuage-trace-flush".into())
            .spawn(move || {
                loop {
                    let Some(t) = weak.upgrade() else { return };
                    t.wait_for_flush();
                    if let Err(e) = t.flush() {
                        tracing::warn!("writing the trace failed: {e}");
                    }
                }
            })
            .context("starting the trace flusher")?;
    }
    Ok(())
}

/// The process's tracer, if tracing is on.
pub fn tracer() -> Option<&'static Arc<Tracer>> {
    TRACER.get()
}

pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Writes everything recorded so far and closes the JSON file; call before exiting.
pub fn finish() {
    if let Some(t) = TRACER.get() {
        if let Err(e) = t.finish() {
            tracing::warn!("writing the trace failed: {e}");
        }
    }
}

/// What a span needs to be written.
#[derive(Debug, Clone)]
pub(crate) struct SpanState {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: u64,
    pub name: &'static str,
    pub component: &'static str,
    pub detail: String,
    pub start_ns: u64,
}

/// A span: begun when made, ended by [`Span::end`] or when dropped. Without a tracer it
/// records nothing and its context is its parent's (so propagation still works).
#[must_use = "a span measures until it is ended or dropped"]
#[derive(Debug)]
pub struct Span {
    ctx: Option<TraceContext>,
    state: Option<SpanState>,
}

impl Span {
    /// A span that records nothing and carries no context.
    pub const fn none() -> Span {
        Span {
            ctx: None,
            state: None,
        }
    }

    /// The first span of a new trace (a request), if tracing is on.
    pub fn root(name: &'static str, component: &'static str, detail: String) -> Span {
        if !enabled() {
            return Span::none();
        }
        Self::start(new_trace_id(), 0, name, component, detail)
    }

    /// A span under `parent` (typically from another process). Without a parent or a
    /// tracer it records nothing and passes the parent along.
    pub fn child(
        parent: Option<TraceContext>,
        name: &'static str,
        component: &'static str,
        detail: impl FnOnce() -> String,
    ) -> Span {
        match parent {
            Some(p) if enabled() => Self::start(p.trace_id, p.span_id, name, component, detail()),
            _ => Span {
                ctx: parent,
                state: None,
            },
        }
    }

    fn start(
        trace_id: u128,
        parent_id: u64,
        name: &'static str,
        component: &'static str,
        detail: String,
    ) -> Span {
        let Some(t) = tracer() else {
            return Span::none();
        };
        let span_id = new_span_id();
        let mut state = SpanState {
            trace_id,
            span_id,
            parent_id,
            name,
            component,
            detail,
            start_ns: 0,
        };
        t.begin(&mut state);
        Span {
            ctx: Some(TraceContext { trace_id, span_id }),
            state: Some(state),
        }
    }

    /// The context children of this span should carry.
    pub fn context(&self) -> Option<TraceContext> {
        self.ctx
    }

    /// Ends the span now.
    pub fn end(mut self) {
        self.finish_now();
    }

    fn finish_now(&mut self) {
        if let (Some(state), Some(t)) = (self.state.take(), tracer()) {
            t.end(&state);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.finish_now();
    }
}

/// Cuts a field to [`MAX_FIELD_BYTES`] on a character boundary.
pub(crate) fn clip(s: &str) -> &str {
    if s.len() <= MAX_FIELD_BYTES {
        return s;
    }
    let mut end = MAX_FIELD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let ctx = TraceContext {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            span_id: 0xb7ad6b7169203331,
        };
        let text = ctx.traceparent();
        assert_eq!(
            text,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(TraceContext::parse(&text), Some(ctx));
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c8031zz-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            "00+0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn untraced_child_passes_its_parent_on() {
        // No tracer is installed in unit tests.
        let parent = TraceContext {
            trace_id: 7,
            span_id: 9,
        };
        let s = Span::child(Some(parent), "x", "y", String::new);
        assert_eq!(s.context(), Some(parent));
        assert_eq!(Span::child(None, "x", "y", String::new).context(), None);
    }

    #[test]
    fn hex_matches_core_fmt() {
        for v in [
            0u128,
            1,
            0xabc,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            let mut b = [0u8; 32];
            hex_into(v, &mut b);
            assert_eq!(std::str::from_utf8(&b).unwrap(), format!("{v:032x}"));
            let mut b = [0u8; 16];
            hex_into(v, &mut b);
            assert_eq!(
                std::str::from_utf8(&b).unwrap(),
                format!("{:016x}", v as u64)
            );
            assert_eq!(parse_hex(format!("{v:032x}").as_bytes()), Some(v));
            assert_eq!(parse_hex(format!("{v:X}").as_bytes()), Some(v));
        }
        assert_eq!(parse_hex(b""), None);
        assert_eq!(parse_hex(b"12g"), None);
    }

    #[test]
    fn clip_respects_characters() {
        let long = "é".repeat(200);
        let c = clip(&long);
        assert!(c.len() <= MAX_FIELD_BYTES);
        assert!(c.chars().all(|ch| ch == 'é'));
    }
}
