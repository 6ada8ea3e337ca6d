//! Logical clocks: Lamport, vector and matrix clocks.
//!
//! Each clock belongs to one process of a fixed group of `n` processes, numbered
//! `0..n`. The three answer different questions:
//!
//! - a [`LamportClock`] gives every event a number such that `a → b` (a happened before
//!   b) implies `L(a) < L(b)`; ties are broken by process number, giving a total order
//!   consistent with causality. The converse does not hold: `L(a) < L(b)` says nothing.
//! - a [`VectorClock`] characterises causality exactly: `a → b` iff `V(a) < V(b)`, and
//!   two events are concurrent iff their vectors are incomparable.
//! - a [`MatrixClock`] also records what each process knows of the others' vectors
//!   (row `k` is this process's view of process `k`'s vector clock), which is what a
//!   process needs to know when every other process has seen an event (garbage
//!   collection) or, counting messages instead of events, to deliver point-to-point
//!   messages in causal order (see `mail`).
//!
//! Every clock encodes to a compact binary form (LEB128 varints) and decodes with
//! explicit bounds, so a malformed stamp from the network is an error, never a panic or
//! a huge allocation.

mod codec;
mod lamport;
mod matrix;
mod vector;

pub use codec::DecodeError;
pub use lamport::{LamportClock, LamportTimestamp};
pub use matrix::MatrixClock;
pub use vector::VectorClock;

/// Most processes a vector clock may have (decoding refuses more).
pub const MAX_PROCESSES: usize = 4096;
/// Most processes a matrix clock may have (n² counters; decoding refuses more).
pub const MAX_MATRIX_PROCESSES: usize = 256;

/// How two clock values (two events) are related.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Causality {
    /// The first happened before the second.
    Before,
    /// The second happened before the first.
    After,
    /// Same value: the same event (or two events no clock can tell apart).
    Equal,
    /// Neither happened before the other.
    Concurrent,
}

impl Causality {
    /// The relation seen from the other side.
    pub fn reverse(self) -> Causality {
        match self {
            Causality::Before => Causality::After,
            Causality::After => Causality::Before,
            other => other,
        }
    }

    /// Folds the comparison of one pair of counters into the relation of the whole.
    pub(crate) fn combine(self, a: u64, b: u64) -> Causality {
        use std::cmp::Ordering::*;
        match (self, a.cmp(&b)) {
            (c, Equal) => c,
            (Causality::Equal | Causality::Before, Less) => Causality::Before,
            (Causality::Equal | Causality::After, Greater) => Causality::After,
            _ => Causality::Concurrent,
        }
    }
}

impl std::fmt::Display for Causality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Causality::Before => "happened before",
            Causality::After => "happened after",
            Causality::Equal => "equal",
            Causality::Concurrent => "concurrent",
        })
    }
}

#[cfg(test)]
mod tests;
