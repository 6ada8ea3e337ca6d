//! The memory spans are recorded into: fixed-size chunks that the hot path fills and
//! the flusher thread writes to the files, outside the lock the hot path takes.
//!
//! Why not a `Vec` or a `BufWriter`: profiles of a traced worker (docs/tracing.md) showed
//! the trace's buffers costing it at every `fork` of a task (the kernel copies and
//! write-protects every touched page of the parent, and the parent then takes a
//! copy-on-write fault on each page it writes). A chunk is its own anonymous mapping,
//! marked `MADV_DONTFORK`, so a fork skips it entirely; the child of a fork only runs
//! `exec`, so it never needs the trace. Chunks never grow (no reallocation, so the advice
//! stays on the right pages) and are reused, so the steady state maps nothing.

use std::ptr::NonNull;

/// Bytes of one chunk's events after which it is closed (a CTF packet, a piece of JSON).
pub const CHUNK_FILL_BYTES: usize = 60 << 10;
/// Largest encoded event (CTF: under 1 KiB with 256-byte fields; JSON: under 2.5 KiB
/// with every byte of the detail escaped). A chunk with less room than this is closed
/// before an event is encoded into it, so an event always fits.
pub const MAX_EVENT_BYTES: usize = 8 << 10;
/// Size of a chunk's mapping.
pub const CHUNK_BYTES: usize = CHUNK_FILL_BYTES + MAX_EVENT_BYTES;

/// A fixed-capacity byte buffer in its own mapping, left out of forked children.
pub struct ChunkBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (like a Box<[u8]>).
unsafe impl Send for ChunkBuf {}

impl ChunkBuf {
    /// Maps a new chunk; `None` if the system refuses the memory.
    pub fn new() -> Option<ChunkBuf> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHUNK_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the range is exactly the mapping made above. The advice is an
        // optimisation: if refused, forks just copy the chunk like other memory.
        unsafe { libc::madvise(p, CHUNK_BYTES, libc::MADV_DONTFORK) };
        Some(ChunkBuf {
            ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"),
            len: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the chunk should be closed: filled, or without room for an event.
    pub fn is_full(&self) -> bool {
        self.len >= CHUNK_FILL_BYTES
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of the mapping were written by `extend`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Appends `bytes`; false (and nothing appended) if they do not fit, which the
    /// callers rule out by closing a chunk once [`ChunkBuf::is_full`].
    pub fn extend(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > CHUNK_BYTES - self.len {
            return false;
        }
        // SAFETY: in bounds (checked above); the source is a distinct slice.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                bytes.len(),
            );
        }
        self.len += bytes.len();
        true
    }

    pub fn push(&mut self, byte: u8) -> bool {
        self.extend(&[byte])
    }
}

impl std::io::Write for ChunkBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.extend(buf) {
            Ok(buf.len())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "trace chunk full",
            ))
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), CHUNK_BYTES) };
    }
}

/// A closed or open chunk and what a CTF packet needs to know about it.
pub struct Chunk {
    pub buf: ChunkBuf,
    /// Timestamps of its first and last events (CTF packet context).
    pub first_ts: u64,
    pub last_ts: u64,
    /// Events discarded in this stream so far when the chunk was closed (CTF counts
    /// them cumulatively).
    pub discarded: u64,
}

impl Chunk {
    fn new() -> Option<Chunk> {
        Some(Chunk {
            buf: ChunkBuf::new()?,
            first_ts: 0,
            last_ts: 0,
            discarded: 0,
        })
    }
}

/// Most chunks waiting for the flusher, per format: 64 × 68 KiB ≈ 4.3 MiB. Past it
/// (the disk does not keep up, or the flusher is stuck), events are discarded and
/// counted, as CTF's `events_discarded` allows.
pub const MAX_PENDING_CHUNKS: usize = 64;
/// Closed chunks after which the flusher is woken before its next tick.
pub const WAKE_PENDING_CHUNKS: usize = 8;

/// One format's chunks: the one being filled, the closed ones waiting to be written,
/// and spare ones to reuse.
pub struct Chunks {
    current: Option<Chunk>,
    pub closed: Vec<Chunk>,
    spares: Vec<Chunk>,
    /// Events discarded so far (cumulative).
    pub discarded: u64,
}

impl Chunks {
    pub fn new() -> Chunks {
        Chunks {
            current: None,
            closed: Vec::new(),
            spares: Vec::new(),
            discarded: 0,
        }
    }

    /// The chunk to encode an event of time `ts` into, with room for any event; `None`
    /// when too many chunks wait (the event is then counted as discarded).
    pub fn room(&mut self, ts: u64) -> Option<&mut ChunkBuf> {
        if self.current.as_ref().is_some_and(|c| c.buf.is_full()) {
            self.close_current();
        }
        if self.current.is_none() {
            if self.closed.len() >= MAX_PENDING_CHUNKS {
                self.discarded += 1;
                return None;
            }
            let Some(c) = self.spares.pop().or_else(Chunk::new) else {
                self.discarded += 1;
                return None;
            };
            self.current = Some(c);
        }
        let c = self.current.as_mut().expect("set above");
        if c.buf.is_empty() {
            c.first_ts = ts;
        }
        c.last_ts = ts;
        Some(&mut c.buf)
    }

    /// Closes the chunk being filled, if it holds anything.
    pub fn close_current(&mut self) {
        if let Some(mut c) = self.current.take_if(|c| !c.buf.is_empty()) {
            c.discarded = self.discarded;
            self.closed.push(c);
        }
    }

    /// Takes the closed chunks (to write them outside the lock).
    pub fn take_closed(&mut self, into: &mut Vec<Chunk>) {
        self.close_current();
        into.append(&mut self.closed);
    }

    /// Gives back written chunks for reuse.
    pub fn give_back(&mut self, chunks: &mut Vec<Chunk>) {
        for mut c in chunks.drain(..) {
            c.buf.clear();
            self.spares.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_never_overflows() {
        let mut b = ChunkBuf::new().unwrap();
        assert!(b.extend(&[1; CHUNK_FILL_BYTES]));
        assert!(b.is_full());
        assert!(b.extend(&[2; MAX_EVENT_BYTES]));
        assert!(!b.push(3));
        assert_eq!(b.len(), CHUNK_BYTES);
        assert_eq!(b.as_slice()[CHUNK_BYTES - 1], 2);
    }

    #[test]
    fn chunks_rotate_bound_and_count_discards() {
        let mut c = Chunks::new();
        for i in 0..MAX_PENDING_CHUNKS {
            let b = c.room(i as u64).expect("room");
            assert!(b.extend(&[0; CHUNK_FILL_BYTES]));
        }
        assert_eq!(c.closed.len(), MAX_PENDING_CHUNKS - 1);
        // The current chunk is full and no more may wait: discarded.
        assert!(c.room(99).is_none());
        assert_eq!(c.discarded, 1);
        let mut out = Vec::new();
        c.take_closed(&mut out);
        assert_eq!(out.len(), MAX_PENDING_CHUNKS);
        assert_eq!(out[0].first_ts, 0);
        // The discard came after these chunks: the next one counts it.
        assert_eq!(out.last().unwrap().discarded, 0);
        c.give_back(&mut out);
        assert!(c.closed.is_empty());
        assert!(c.room(100).unwrap().push(1), "room again after the flush");
        c.take_closed(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].first_ts, out[0].discarded), (100, 1));
    }
}
