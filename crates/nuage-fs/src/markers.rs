//! Replication change markers: what each copy of a file knows about the other copies.
//!
//! Every copy of a file or directory in a replica set carries, in the extended attribute
//! `trusted.nuage.afr`, three counters per kind of change (data, metadata, entry):
//!
//! - `dirty[k]`: changes of kind k begun on this copy and not yet confirmed on every copy
//!   (raised before a change, lowered once every copy has done it);
//! - `pending[b][k]`: changes of kind k this copy has and copy `b` missed. A copy with
//!   `pending[b] > 0` *accuses* `b`.
//!
//! A copy accused by nobody is a good source. Copies accused by a source are sinks and are
//! healed from it. When every copy is accused by another one, the copies have diverged
//! (split-brain): nuage reports it and never picks a winner by itself.

use serde::{Deserialize, Serialize};

/// The kinds of change a marker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// File contents.
    Data = 0,
    /// Mode, owner, times, user extended attributes.
    Metadata = 1,
    /// Names in a directory.
    Entry = 2,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Data, Kind::Metadata, Kind::Entry];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Data => "data",
            Kind::Metadata => "metadata",
            Kind::Entry => "entry",
        }
    }
}

/// Counters, one per [`Kind`].
pub type Counts = [u32; 3];

/// Most copies one marker can name (a replica set's bricks, including ones removed
/// since); a longer attribute is refused as corrupt.
pub const MAX_MARKED_BRICKS: usize = 64;

/// The markers of one copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfrState {
    pub dirty: Counts,
    /// Sorted by brick id; entries whose counters are all zero are left out.
    pub pending: Vec<(u32, Counts)>,
}

/// A change to apply to markers atomically (counters never go below zero).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfrDelta {
    pub dirty: [i32; 3],
    pub pending: Vec<(u32, [i32; 3])>,
}

impl AfrDelta {
    pub fn is_empty(&self) -> bool {
        self.dirty == [0; 3] && self.pending.iter().all(|(_, c)| *c == [0; 3])
    }

    /// Raise `dirty` for `kinds` and accuse `absent` bricks of missing them.
    pub fn pre_op(kinds: &[Kind], absent: &[u32]) -> AfrDelta {
        let mut d = AfrDelta::default();
        for k in kinds {
            d.dirty[*k as usize] += 1;
        }
        for b in absent {
            let mut c = [0; 3];
            for k in kinds {
                c[*k as usize] = 1;
            }
            d.pending.push((*b, c));
        }
        d
    }

    /// The same delta without its change to `dirty` (accusations only).
    pub fn without_dirty(mut self) -> AfrDelta {
        self.dirty = [0; 3];
        self
    }

    /// Adds `other` to this delta.
    pub fn merge(&mut self, other: &AfrDelta) {
        for k in 0..3 {
            self.dirty[k] += other.dirty[k];
        }
        for (b, c) in &other.pending {
            match self.pending.iter_mut().find(|(x, _)| x == b) {
                Some((_, mine)) => {
                    for k in 0..3 {
                        mine[k] += c[k];
                    }
                }
                None => self.pending.push((*b, *c)),
            }
        }
    }
}

impl AfrState {
    pub fn is_clean(&self) -> bool {
        self.dirty == [0; 3] && self.pending.is_empty()
    }

    pub fn pending_for(&self, brick: u32) -> Counts {
        self.pending
            .iter()
            .find(|(b, _)| *b == brick)
            .map_or([0; 3], |(_, c)| *c)
    }

    /// Whether this copy accuses `brick` of missing changes of `kind`.
    pub fn accuses(&self, brick: u32, kind: Kind) -> bool {
        self.pending_for(brick)[kind as usize] > 0
    }

    pub fn apply(&mut self, delta: &AfrDelta) {
        for k in 0..3 {
            self.dirty[k] = add_clamped(self.dirty[k], delta.dirty[k]);
        }
        for (b, c) in &delta.pending {
            let mut cur = self.pending_for(*b);
            for k in 0..3 {
                cur[k] = add_clamped(cur[k], c[k]);
            }
            self.pending.retain(|(x, _)| x != b);
            if cur != [0; 3] {
                self.pending.push((*b, cur));
            }
        }
        self.pending.sort_by_key(|(b, _)| *b);
    }

    /// The attribute value: version byte 1, dirty as 3 big-endian u32, a u16 count, then
    /// per brick its id and 3 counters (all big-endian u32).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(15 + 16 * self.pending.len());
        out.push(1);
        for c in self.dirty {
            out.extend_from_slice(&c.to_be_bytes());
        }
        out.extend_from_slice(&(self.pending.len() as u16).to_be_bytes());
        for (b, counts) in &self.pending {
            out.extend_from_slice(&b.to_be_bytes());
            for c in counts {
                out.extend_from_slice(&c.to_be_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<AfrState, String> {
        let bad = |why: &str| format!("corrupt replication markers ({why})");
        if bytes.first() != Some(&1) {
            return Err(bad("unknown version"));
        }
        let u32_at = |i: usize| -> Result<u32, String> {
            bytes
                .get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| bad("too short"))
        };
        let mut st = AfrState::default();
        for k in 0..3 {
            st.dirty[k] = u32_at(1 + 4 * k)?;
        }
        let n = bytes
            .get(13..15)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| bad("too short"))?;
        if n > MAX_MARKED_BRICKS {
            return Err(bad("too many bricks"));
        }
        if bytes.len() != 15 + 16 * n {
            return Err(bad("wrong length"));
        }
        for i in 0..n {
            let at = 15 + 16 * i;
            let b = u32_at(at)?;
            let c = [u32_at(at + 4)?, u32_at(at + 8)?, u32_at(at + 12)?];
            if c != [0; 3] {
                st.pending.push((b, c));
            }
        }
        st.pending.sort_by_key(|(b, _)| *b);
        Ok(st)
    }
}

fn add_clamped(v: u32, d: i32) -> u32 {
    if d >= 0 {
        v.saturating_add(d as u32)
    } else {
        v.saturating_sub(d.unsigned_abs())
    }
}

/// What the markers of the reachable copies say about one kind of change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Clean,
    /// A change was begun and never confirmed, and nobody is accused: compare the copies
    /// (a crash in the middle of a change, or a change still in progress).
    Unconfirmed,
    /// Copy `sinks` must be made equal to `sources` (all sources are equivalent).
    Heal { sources: Vec<u32>, sinks: Vec<u32> },
    /// Every copy is accused by another: they diverged.
    SplitBrain,
}

/// Judges the copies `(brick id, markers)` of one file for `kind`.
pub fn judge(kind: Kind, copies: &[(u32, &AfrState)]) -> Verdict {
    let accused = |b: u32| {
        copies
            .iter()
            .any(|(other, st)| *other != b && st.accuses(b, kind))
    };
    let any_accusation = copies.iter().any(|(b, _)| accused(*b));
    if !any_accusation {
        let dirty = copies.iter().any(|(_, st)| st.dirty[kind as usize] > 0);
        return if dirty {
            Verdict::Unconfirmed
        } else {
            Verdict::Clean
        };
    }
    let (sources, sinks): (Vec<u32>, Vec<u32>) =
        copies.iter().map(|(b, _)| *b).partition(|b| !accused(*b));
    if sources.is_empty() {
        return Verdict::SplitBrain;
    }
    Verdict::Heal { sources, sinks }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(dirty: Counts, pending: &[(u32, Counts)]) -> AfrState {
        let mut s = AfrState {
            dirty,
            pending: pending.to_vec(),
        };
        s.pending.sort_by_key(|(b, _)| *b);
        s
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let s = st([1, 0, 2], &[(3, [4, 0, 0]), (7, [0, 1, 0])]);
        assert_eq!(AfrState::decode(&s.encode()).unwrap(), s);
        assert_eq!(
            AfrState::decode(&AfrState::default().encode()).unwrap(),
            AfrState::default()
        );
        assert!(AfrState::decode(&[]).is_err());
        assert!(AfrState::decode(&[2, 0]).is_err());
        let mut long = s.encode();
        long.push(0);
        assert!(AfrState::decode(&long).is_err());
    }

    #[test]
    fn deltas_apply_and_clamp() {
        let mut s = AfrState::default();
        s.apply(&AfrDelta::pre_op(&[Kind::Data], &[5]));
        assert_eq!(s, st([1, 0, 0], &[(5, [1, 0, 0])]));
        s.apply(&AfrDelta {
            dirty: [-1, -1, 0],
            pending: vec![(5, [-3, 0, 0])],
        });
        assert!(s.is_clean(), "{s:?}");
        let mut d = AfrDelta::pre_op(&[Kind::Entry], &[]);
        d.merge(&AfrDelta::pre_op(&[Kind::Entry], &[2]));
        assert_eq!(d.dirty, [0, 0, 2]);
        assert_eq!(d.pending, vec![(2, [0, 0, 1])]);
    }

    #[test]
    fn verdicts() {
        let clean = AfrState::default();
        let dirty = st([1, 0, 0], &[]);
        let a_accuses_b = st([0; 3], &[(2, [1, 0, 0])]);
        let b_accuses_a = st([0; 3], &[(1, [1, 0, 0])]);
        assert_eq!(
            judge(Kind::Data, &[(1, &clean), (2, &clean)]),
            Verdict::Clean
        );
        assert_eq!(
            judge(Kind::Data, &[(1, &dirty), (2, &clean)]),
            Verdict::Unconfirmed
        );
        assert_eq!(
            judge(Kind::Data, &[(1, &a_accuses_b), (2, &dirty)]),
            Verdict::Heal {
                sources: vec![1],
                sinks: vec![2]
            }
        );
        // Another kind is not affected.
        assert_eq!(
            judge(Kind::Metadata, &[(1, &a_accuses_b), (2, &clean)]),
            Verdict::Clean
        );
        assert_eq!(
            judge(Kind::Data, &[(1, &a_accuses_b), (2, &b_accuses_a)]),
            Verdict::SplitBrain
        );
        // Three copies: two accuse the third.
        let c_accuses_b = st([0; 3], &[(2, [2, 0, 0])]);
        assert_eq!(
            judge(
                Kind::Data,
                &[(1, &a_accuses_b), (2, &clean), (3, &c_accuses_b)]
            ),
            Verdict::Heal {
                sources: vec![1, 3],
                sinks: vec![2]
            }
        );
        // A copy accusing itself is ignored (dirty says that).
        let self_accused = st([0; 3], &[(1, [1, 0, 0])]);
        assert_eq!(
            judge(Kind::Data, &[(1, &self_accused), (2, &clean)]),
            Verdict::Clean
        );
    }
}
