//! The frames of one ring: what has been received, up to where everything has been
//! received (`aru`), what every member is known to hold (`safe_line`), what has been
//! delivered, and the reassembly of fragmented messages.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

use super::nodeset::{NodeId, NodeSet};
use super::packet::{self, CHUNK_FIRST, CHUNK_LAST, CHUNK_MIDDLE, CHUNK_WHOLE, Recovered, RingId};

/// Largest upper-layer message reassembled from fragments; a larger one is dropped.
pub const MAX_REASSEMBLED: usize = 64 << 20;

/// One frame (a DATA packet's content) as kept by a receiver.
#[derive(Debug, Clone)]
pub struct Frame {
    pub sender: NodeId,
    pub safe: bool,
    /// Set for frames that carry an old ring's frame during recovery.
    pub recovered: Option<Recovered>,
    pub chunks: Bytes,
}

/// A message reassembled and ready for the upper layer.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub sender: NodeId,
    pub data: Bytes,
}

#[derive(Debug)]
pub struct Order {
    pub ring: RingId,
    pub members: NodeSet,
    pub frames: BTreeMap<u64, Frame>,
    /// Every frame up to and including `aru` has been received.
    pub aru: u64,
    /// Highest frame sequence number received.
    pub high: u64,
    /// Every frame up to and including `delivered` has been delivered (or skipped).
    pub delivered: u64,
    /// Every member holds every frame up to and including `safe_line`.
    pub safe_line: u64,
    /// Old-ring frames are no longer accepted directly (only through recovery).
    pub frozen: bool,
    reassembly: BTreeMap<NodeId, BytesMut>,
}

impl Order {
    pub fn new(ring: RingId, members: NodeSet) -> Order {
        Order {
            ring,
            members,
            frames: BTreeMap::new(),
            aru: 0,
            high: 0,
            delivered: 0,
            safe_line: 0,
            frozen: false,
            reassembly: BTreeMap::new(),
        }
    }

    /// Adds a frame if it is new. Returns whether it was.
    pub fn insert(&mut self, seq: u64, frame: Frame) -> bool {
        assert!(seq > 0, "frame sequence numbers start at 1");
        if seq <= self.delivered || self.frames.contains_key(&seq) {
            return false;
        }
        self.frames.insert(seq, frame);
        self.high = self.high.max(seq);
        while self.frames.contains_key(&(self.aru + 1)) {
            self.aru += 1;
        }
        true
    }

    pub fn has(&self, seq: u64) -> bool {
        seq <= self.delivered.min(self.aru) || self.frames.contains_key(&seq)
    }

    /// Raises the safe line.
    pub fn observe_safe_line(&mut self, line: u64) {
        self.safe_line = self.safe_line.max(line);
    }

    /// Delivers frames in order while each is received and, if SAFE, under the safe line
    /// (`safe_limit` overrides the safe line during recovery). Returns the messages.
    pub fn deliver_in_order(&mut self, safe_limit: u64, out: &mut Vec<Delivered>) {
        loop {
            let s = self.delivered + 1;
            let Some(frame) = self.frames.get(&s) else {
                break;
            };
            if frame.safe && s > safe_limit {
                break;
            }
            let frame = frame.clone();
            self.delivered = s;
            if frame.recovered.is_none() {
                self.unpack(&frame, out);
            }
        }
        self.collect_garbage();
    }

    /// Delivers what remains up to `high` at the end of recovery: after the first missing
    /// frame, only frames whose sender is in `trans` (their messages cannot depend on the
    /// missing ones). Partly received messages are dropped.
    pub fn deliver_transitional(&mut self, high: u64, trans: NodeSet, out: &mut Vec<Delivered>) {
        let mut gap = false;
        for s in self.delivered + 1..=high {
            match self.frames.get(&s).cloned() {
                None => gap = true,
                Some(frame) => {
                    if (!gap || trans.contains(frame.sender)) && frame.recovered.is_none() {
                        self.unpack(&frame, out);
                    }
                }
            }
        }
        self.delivered = self.delivered.max(high);
        self.reassembly.clear();
    }

    fn unpack(&mut self, frame: &Frame, out: &mut Vec<Delivered>) {
        let sender = frame.sender;
        for (kind, bytes) in packet::chunks(&frame.chunks) {
            match kind {
                CHUNK_WHOLE => out.push(Delivered {
                    sender,
                    data: bytes,
                }),
                CHUNK_FIRST => {
                    self.reassembly.insert(sender, BytesMut::from(&bytes[..]));
                }
                CHUNK_MIDDLE | CHUNK_LAST => {
                    let Some(buf) = self.reassembly.get_mut(&sender) else {
                        continue; // its start was lost with a failed daemon: drop it
                    };
                    if buf.len() + bytes.len() > MAX_REASSEMBLED {
                        self.reassembly.remove(&sender);
                        continue;
                    }
                    buf.extend_from_slice(&bytes);
                    if kind == CHUNK_LAST {
                        let data = self.reassembly.remove(&sender).expect("present").freeze();
                        out.push(Delivered { sender, data });
                    }
                }
                _ => unreachable!("chunk kinds are checked at decode"),
            }
        }
    }

    /// Frames every member holds and this daemon has delivered are never needed again.
    fn collect_garbage(&mut self) {
        let upto = self.delivered.min(self.safe_line);
        while let Some((&s, _)) = self.frames.first_key_value() {
            if s > upto {
                break;
            }
            self.frames.pop_first();
        }
    }

    /// Sequence numbers in `(aru, upto]` this daemon lacks, at most `limit`.
    pub fn missing(&self, upto: u64, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut s = self.aru + 1;
        while s <= upto && out.len() < limit {
            if !self.frames.contains_key(&s) {
                out.push(s);
            }
            s += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::packet::put_chunk;

    fn frame(sender: NodeId, safe: bool, chunks: &[(u8, &[u8])]) -> Frame {
        let mut b = BytesMut::new();
        for (k, c) in chunks {
            put_chunk(&mut b, *k, c);
        }
        Frame {
            sender,
            safe,
            recovered: None,
            chunks: b.freeze(),
        }
    }

    #[test]
    fn aru_delivery_and_safe_frames() {
        let mut o = Order::new(RingId::default(), NodeSet::first(2));
        assert!(o.insert(2, frame(1, false, &[(CHUNK_WHOLE, b"b")])));
        assert_eq!((o.aru, o.high), (0, 2));
        assert_eq!(o.missing(2, 10), [1]);
        o.insert(1, frame(0, true, &[(CHUNK_WHOLE, b"a")]));
        assert_eq!(o.aru, 2);
        let mut out = Vec::new();
        o.deliver_in_order(0, &mut out);
        assert!(out.is_empty(), "the SAFE frame 1 waits for the safe line");
        o.deliver_in_order(1, &mut out);
        assert_eq!(out.len(), 2);
        assert!(!o.insert(1, frame(0, false, &[])), "duplicates are refused");
    }

    #[test]
    fn fragments_interleave_per_sender() {
        let mut o = Order::new(RingId::default(), NodeSet::first(2));
        o.insert(1, frame(0, false, &[(CHUNK_FIRST, b"he")]));
        o.insert(
            2,
            frame(1, false, &[(CHUNK_WHOLE, b"x"), (CHUNK_FIRST, b"wo")]),
        );
        o.insert(
            3,
            frame(0, false, &[(CHUNK_MIDDLE, b"ll"), (CHUNK_LAST, b"o")]),
        );
        o.insert(4, frame(1, false, &[(CHUNK_LAST, b"rld")]));
        let mut out = Vec::new();
        o.deliver_in_order(u64::MAX, &mut out);
        let got: Vec<(NodeId, &[u8])> = out.iter().map(|d| (d.sender, &d.data[..])).collect();
        assert_eq!(got, [(1, &b"x"[..]), (0, b"hello"), (1, b"world")]);
    }

    #[test]
    fn transitional_delivery_skips_after_a_gap() {
        let mut o = Order::new(RingId::default(), NodeSet::first(3));
        o.insert(1, frame(0, false, &[(CHUNK_WHOLE, b"1")]));
        // 2 is missing everywhere.
        o.insert(3, frame(2, false, &[(CHUNK_WHOLE, b"from a lost sender")]));
        o.insert(4, frame(1, false, &[(CHUNK_WHOLE, b"4")]));
        let mut out = Vec::new();
        o.deliver_in_order(u64::MAX, &mut out);
        assert_eq!(out.len(), 1);
        o.deliver_transitional(4, [0, 1].into_iter().collect(), &mut out);
        let got: Vec<&[u8]> = out.iter().map(|d| &d.data[..]).collect();
        assert_eq!(got, [&b"1"[..], b"4"]);
        assert_eq!(o.delivered, 4);
    }
}
