//! The daemon-to-daemon packets, one UDP datagram each, little-endian.
//!
//! Every packet starts with an 9-byte header: magic `NG`, format version, kind, the
//! configuration hash (daemons with different configurations ignore each other) and
//! the sender's index in the configuration.
//!
//! | kind | body |
//! |---|---|
//! | DATA (1) | ring id, seq, origin, flags (SAFE, RECOVERED), chunks length, [old ring, old seq, old sender, old flags], chunks |
//! | TOKEN (2) | ring id, tseq, seq, fcc, flags, complete_by, n, n × aru, n × pending, rtr list |
//! | JOIN (3) | highest ring seq seen, proc set, fail set |
//! | COMMIT (4) | new ring id, members, rotation, per member: filled, old ring, aru, high, safe line |
//! | WAKE (5) | ring id |
//! | PRESENCE (6) | ring id, members |
//!
//! A DATA packet carries *chunks*: `kind u8, len u32, bytes`, where kind is a whole
//! upper-layer message or the first, a middle or the last fragment of one.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::nodeset::{NodeId, NodeSet};

const MAGIC: u16 = 0x474e; // "NG" little-endian
const FORMAT: u8 = 1;
/// Size of the common header.
pub const HEADER_LEN: usize = 9;
/// Size of a chunk header.
pub const CHUNK_HEADER_LEN: usize = 5;
/// Size of a DATA packet's fixed part after the common header, recovered fields included.
pub const DATA_OVERHEAD: usize = HEADER_LEN + 9 + 8 + 1 + 1 + 4 + 9 + 8 + 1 + 1;

/// A ring's identity: a sequence number that only grows, and its representative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RingId {
    pub seq: u64,
    pub rep: NodeId,
}

impl std::fmt::Display for RingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.seq, self.rep)
    }
}

pub const DATA_SAFE: u8 = 1;
pub const DATA_RECOVERED: u8 = 2;

pub const CHUNK_WHOLE: u8 = 0;
pub const CHUNK_FIRST: u8 = 1;
pub const CHUNK_MIDDLE: u8 = 2;
pub const CHUNK_LAST: u8 = 3;

/// A frame of an old ring carried again inside a new ring during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub ring: RingId,
    pub seq: u64,
    pub sender: NodeId,
    pub safe: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub ring: RingId,
    pub seq: u64,
    /// The daemon that broadcast the frame first (a retransmission may come from another).
    pub origin: NodeId,
    pub safe: bool,
    pub recovered: Option<Recovered>,
    pub chunks: Bytes,
}

pub const TOKEN_RECOVERY_COMPLETE: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub ring: RingId,
    /// Counts hops; a daemon ignores a token whose tseq it has seen.
    pub tseq: u64,
    /// Highest frame sequence number assigned in the ring.
    pub seq: u64,
    /// Frames broadcast (new and retransmitted) during the last rotation.
    pub fcc: u32,
    pub flags: u8,
    pub complete_by: NodeId,
    /// Per member (by rank): all frames up to this one received.
    pub arus: Vec<u64>,
    /// Per member (by rank): frames waiting to be broadcast (recovery: old frames).
    pub pend: Vec<u32>,
    /// Frames someone is missing.
    pub rtr: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub ring_seq: u64,
    pub proc_set: NodeSet,
    pub fail_set: NodeSet,
}

/// What a daemon reports about its old ring when a new ring forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberInfo {
    pub old_ring: RingId,
    pub aru: u64,
    pub high: u64,
    pub safe_line: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub ring: RingId,
    pub members: NodeSet,
    /// 0 while members fill in their info, 1 once all have.
    pub rotation: u8,
    /// Per member (by rank).
    pub infos: Vec<Option<MemberInfo>>,
}

impl Commit {
    pub fn complete(&self) -> bool {
        self.infos.iter().all(Option::is_some)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Data(Data),
    Token(Token),
    Join(Join),
    Commit(Commit),
    Wake(RingId),
    Presence { ring: RingId, members: NodeSet },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub sender: NodeId,
    pub body: Body,
}

/// Why a datagram was not a packet of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    NotOurs,
    OtherConfiguration { hash: u32 },
    Malformed(&'static str),
}

fn put_ring(out: &mut BytesMut, r: RingId) {
    out.put_u64_le(r.seq);
    out.put_u8(r.rep);
}

fn header(out: &mut BytesMut, kind: u8, config_hash: u32, sender: NodeId) {
    out.put_u16_le(MAGIC);
    out.put_u8(FORMAT);
    out.put_u8(kind);
    out.put_u32_le(config_hash);
    out.put_u8(sender);
}

/// Encodes a DATA packet; `chunks` are appended as they are.
pub fn encode_data(config_hash: u32, sender: NodeId, d: &Data) -> Bytes {
    let mut out = BytesMut::with_capacity(DATA_OVERHEAD + d.chunks.len());
    header(&mut out, 1, config_hash, sender);
    put_ring(&mut out, d.ring);
    out.put_u64_le(d.seq);
    out.put_u8(d.origin);
    let mut flags = 0;
    if d.safe {
        flags |= DATA_SAFE;
    }
    if d.recovered.is_some() {
        flags |= DATA_RECOVERED;
    }
    out.put_u8(flags);
    // The explicit length makes a truncated datagram an error even at a chunk boundary.
    out.put_u32_le(u32::try_from(d.chunks.len()).expect("a frame fits a datagram"));
    if let Some(r) = &d.recovered {
        put_ring(&mut out, r.ring);
        out.put_u64_le(r.seq);
        out.put_u8(r.sender);
        out.put_u8(u8::from(r.safe));
    }
    out.put_slice(&d.chunks);
    out.freeze()
}

pub fn encode(config_hash: u32, p: &Packet) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    match &p.body {
        Body::Data(d) => return encode_data(config_hash, p.sender, d),
        Body::Token(t) => {
            header(&mut out, 2, config_hash, p.sender);
            put_ring(&mut out, t.ring);
            out.put_u64_le(t.tseq);
            out.put_u64_le(t.seq);
            out.put_u32_le(t.fcc);
            out.put_u8(t.flags);
            out.put_u8(t.complete_by);
            assert_eq!(t.arus.len(), t.pend.len());
            out.put_u8(t.arus.len() as u8);
            for a in &t.arus {
                out.put_u64_le(*a);
            }
            for p in &t.pend {
                out.put_u32_le(*p);
            }
            out.put_u16_le(t.rtr.len() as u16);
            for s in &t.rtr {
                out.put_u64_le(*s);
            }
        }
        Body::Join(j) => {
            header(&mut out, 3, config_hash, p.sender);
            out.put_u64_le(j.ring_seq);
            out.put_u128_le(j.proc_set.0);
            out.put_u128_le(j.fail_set.0);
        }
        Body::Commit(c) => {
            header(&mut out, 4, config_hash, p.sender);
            put_ring(&mut out, c.ring);
            out.put_u128_le(c.members.0);
            out.put_u8(c.rotation);
            assert_eq!(c.infos.len(), c.members.len());
            for info in &c.infos {
                match info {
                    None => out.put_u8(0),
                    Some(i) => {
                        out.put_u8(1);
                        put_ring(&mut out, i.old_ring);
                        out.put_u64_le(i.aru);
                        out.put_u64_le(i.high);
                        out.put_u64_le(i.safe_line);
                    }
                }
            }
        }
        Body::Wake(r) => {
            header(&mut out, 5, config_hash, p.sender);
            put_ring(&mut out, *r);
        }
        Body::Presence { ring, members } => {
            header(&mut out, 6, config_hash, p.sender);
            put_ring(&mut out, *ring);
            out.put_u128_le(members.0);
        }
    }
    out.freeze()
}

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Malformed("truncated packet"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16_le())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64_le())
    }
    fn u128(&mut self) -> Result<u128, DecodeError> {
        self.need(16)?;
        Ok(self.buf.get_u128_le())
    }
    fn ring(&mut self) -> Result<RingId, DecodeError> {
        Ok(RingId {
            seq: self.u64()?,
            rep: self.node()?,
        })
    }
    fn node(&mut self) -> Result<NodeId, DecodeError> {
        let n = self.u8()?;
        if n as usize >= super::nodeset::MAX_NODES {
            return Err(DecodeError::Malformed("daemon index out of range"));
        }
        Ok(n)
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            Err(DecodeError::Malformed("trailing bytes"))
        } else {
            Ok(())
        }
    }
}

/// Decodes a datagram. DATA chunks are a slice of `buf` (no copy).
pub fn decode(buf: Bytes, config_hash: u32) -> Result<Packet, DecodeError> {
    let mut r = Reader { buf };
    if r.buf.remaining() < HEADER_LEN || r.u16()? != MAGIC {
        return Err(DecodeError::NotOurs);
    }
    if r.u8()? != FORMAT {
        return Err(DecodeError::Malformed("unknown format version"));
    }
    let kind = r.u8()?;
    let hash = r.u32()?;
    if hash != config_hash {
        return Err(DecodeError::OtherConfiguration { hash });
    }
    let sender = r.node()?;
    let body = match kind {
        1 => {
            let ring = r.ring()?;
            let seq = r.u64()?;
            let origin = r.node()?;
            let flags = r.u8()?;
            let chunks_len = r.u32()? as usize;
            let recovered = if flags & DATA_RECOVERED != 0 {
                Some(Recovered {
                    ring: r.ring()?,
                    seq: r.u64()?,
                    sender: r.node()?,
                    safe: r.u8()? != 0,
                })
            } else {
                None
            };
            if r.buf.remaining() != chunks_len {
                return Err(DecodeError::Malformed(
                    "chunks length does not match the datagram",
                ));
            }
            let chunks = std::mem::take(&mut r.buf);
            check_chunks(&chunks)?;
            Body::Data(Data {
                ring,
                seq,
                origin,
                safe: flags & DATA_SAFE != 0,
                recovered,
                chunks,
            })
        }
        2 => {
            let ring = r.ring()?;
            let tseq = r.u64()?;
            let seq = r.u64()?;
            let fcc = r.u32()?;
            let flags = r.u8()?;
            let complete_by = r.node()?;
            let n = r.u8()? as usize;
            let arus = (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?;
            let pend = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            let nr = r.u16()? as usize;
            let rtr = (0..nr).map(|_| r.u64()).collect::<Result<_, _>>()?;
            r.end()?;
            Body::Token(Token {
                ring,
                tseq,
                seq,
                fcc,
                flags,
                complete_by,
                arus,
                pend,
                rtr,
            })
        }
        3 => {
            let j = Join {
                ring_seq: r.u64()?,
                proc_set: NodeSet(r.u128()?),
                fail_set: NodeSet(r.u128()?),
            };
            r.end()?;
            Body::Join(j)
        }
        4 => {
            let ring = r.ring()?;
            let members = NodeSet(r.u128()?);
            let rotation = r.u8()?;
            let infos = (0..members.len())
                .map(|_| -> Result<Option<MemberInfo>, DecodeError> {
                    Ok(match r.u8()? {
                        0 => None,
                        _ => Some(MemberInfo {
                            old_ring: r.ring()?,
                            aru: r.u64()?,
                            high: r.u64()?,
                            safe_line: r.u64()?,
                        }),
                    })
                })
                .collect::<Result<_, _>>()?;
            r.end()?;
            Body::Commit(Commit {
                ring,
                members,
                rotation,
                infos,
            })
        }
        5 => {
            let ring = r.ring()?;
            r.end()?;
            Body::Wake(ring)
        }
        6 => {
            let ring = r.ring()?;
            let members = NodeSet(r.u128()?);
            r.end()?;
            Body::Presence { ring, members }
        }
        _ => return Err(DecodeError::Malformed("unknown packet kind")),
    };
    Ok(Packet { sender, body })
}

/// Checks that `chunks` is a well-formed sequence of chunks.
fn check_chunks(mut chunks: &[u8]) -> Result<(), DecodeError> {
    while !chunks.is_empty() {
        if chunks.len() < CHUNK_HEADER_LEN {
            return Err(DecodeError::Malformed("truncated chunk header"));
        }
        if chunks[0] > CHUNK_LAST {
            return Err(DecodeError::Malformed("unknown chunk kind"));
        }
        let len = u32::from_le_bytes(chunks[1..5].try_into().expect("4 bytes")) as usize;
        if chunks.len() < CHUNK_HEADER_LEN + len {
            return Err(DecodeError::Malformed("truncated chunk"));
        }
        chunks = &chunks[CHUNK_HEADER_LEN + len..];
    }
    Ok(())
}

/// Appends a chunk.
pub fn put_chunk(out: &mut BytesMut, kind: u8, bytes: &[u8]) {
    out.put_u8(kind);
    out.put_u32_le(bytes.len() as u32);
    out.put_slice(bytes);
}

/// Iterates over the chunks of a well-formed DATA body (checked at decode).
pub fn chunks(body: &Bytes) -> impl Iterator<Item = (u8, Bytes)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= body.len() {
            return None;
        }
        let kind = body[at];
        let len = u32::from_le_bytes(body[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        let bytes = body.slice(at + CHUNK_HEADER_LEN..at + CHUNK_HEADER_LEN + len);
        at += CHUNK_HEADER_LEN + len;
        Some((kind, bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: Packet) {
        let bytes = encode(0xabcd, &p);
        assert_eq!(decode(bytes.clone(), 0xabcd).unwrap(), p);
        assert_eq!(
            decode(bytes.clone(), 1),
            Err(DecodeError::OtherConfiguration { hash: 0xabcd })
        );
        for cut in 0..bytes.len() {
            // Every truncation is refused, never a panic.
            assert!(decode(bytes.slice(..cut), 0xabcd).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let ring = RingId { seq: 77, rep: 2 };
        let mut chunks = BytesMut::new();
        put_chunk(&mut chunks, CHUNK_WHOLE, b"hello");
        put_chunk(&mut chunks, CHUNK_FIRST, b"wor");
        round_trip(Packet {
            sender: 1,
            body: Body::Data(Data {
                ring,
                seq: 9,
                origin: 1,
                safe: true,
                recovered: None,
                chunks: chunks.clone().freeze(),
            }),
        });
        round_trip(Packet {
            sender: 1,
            body: Body::Data(Data {
                ring,
                seq: 10,
                origin: 3,
                safe: false,
                recovered: Some(Recovered {
                    ring: RingId { seq: 5, rep: 0 },
                    seq: 3,
                    sender: 4,
                    safe: true,
                }),
                chunks: chunks.freeze(),
            }),
        });
        round_trip(Packet {
            sender: 0,
            body: Body::Token(Token {
                ring,
                tseq: 100,
                seq: 50,
                fcc: 3,
                flags: TOKEN_RECOVERY_COMPLETE,
                complete_by: 2,
                arus: vec![50, 49, 48],
                pend: vec![0, 1, u32::MAX],
                rtr: vec![49, 50],
            }),
        });
        round_trip(Packet {
            sender: 127,
            body: Body::Join(Join {
                ring_seq: 12,
                proc_set: [0, 1, 127].into_iter().collect(),
                fail_set: NodeSet::single(1),
            }),
        });
        round_trip(Packet {
            sender: 0,
            body: Body::Commit(Commit {
                ring,
                members: [0, 2].into_iter().collect(),
                rotation: 1,
                infos: vec![
                    Some(MemberInfo {
                        old_ring: RingId { seq: 3, rep: 0 },
                        aru: 4,
                        high: 6,
                        safe_line: 2,
                    }),
                    None,
                ],
            }),
        });
        round_trip(Packet {
            sender: 3,
            body: Body::Wake(ring),
        });
        round_trip(Packet {
            sender: 3,
            body: Body::Presence {
                ring,
                members: NodeSet::first(5),
            },
        });
    }

    #[test]
    fn foreign_and_malformed_datagrams() {
        assert_eq!(
            decode(Bytes::from_static(b"GET / HTTP/1.0"), 0),
            Err(DecodeError::NotOurs)
        );
        let mut bad = BytesMut::new();
        header(&mut bad, 1, 0, 0);
        put_ring(&mut bad, RingId::default());
        bad.put_u64_le(1);
        bad.put_u8(0);
        bad.put_u8(0);
        bad.put_u32_le(5);
        bad.put_slice(&[9, 0, 0, 0, 0]);
        assert_eq!(
            decode(bad.freeze(), 0),
            Err(DecodeError::Malformed("unknown chunk kind"))
        );
        let mut big_node = BytesMut::new();
        header(&mut big_node, 5, 0, 200);
        assert!(decode(big_node.freeze(), 0).is_err());
    }

    #[test]
    fn chunk_iteration() {
        let mut b = BytesMut::new();
        put_chunk(&mut b, CHUNK_WHOLE, b"a");
        put_chunk(&mut b, CHUNK_LAST, b"");
        let b = b.freeze();
        let v: Vec<(u8, Bytes)> = chunks(&b).collect();
        assert_eq!(v, [(0, Bytes::from_static(b"a")), (3, Bytes::new())]);
    }
}
