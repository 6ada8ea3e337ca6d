//! Vector clocks (Fidge 1988, Mattern 1989).

use super::codec::{DecodeError, Reader, parse_list, put_varint};
use super::{Causality, MAX_PROCESSES};

/// One counter per process: entry `k` is the number of events of process `k` that
/// happened before (or are) the stamped event.
///
/// Vectors of different lengths compare as if the shorter one were padded with zeros, so
/// a group can grow; equality follows the same rule (`[1,0] == [1]`).
#[derive(Debug, Clone, Default)]
pub struct VectorClock {
    counters: Vec<u64>,
}

impl VectorClock {
    /// All zeros, for `n` processes.
    pub fn new(n: usize) -> Self {
        assert!(
            n <= MAX_PROCESSES,
            "{n} processes (at most {MAX_PROCESSES})"
        );
        VectorClock {
            counters: vec![0; n],
        }
    }

    pub fn from_counters(counters: Vec<u64>) -> Self {
        assert!(counters.len() <= MAX_PROCESSES);
        VectorClock { counters }
    }

    pub fn counters(&self) -> &[u64] {
        &self.counters
    }

    pub fn len(&self) -> usize {
        self.counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Entry `process` (0 beyond the end).
    pub fn get(&self, process: usize) -> u64 {
        self.counters.get(process).copied().unwrap_or(0)
    }

    /// Sets entry `process`, growing the vector if needed.
    pub fn set(&mut self, process: usize, value: u64) {
        assert!(process < MAX_PROCESSES, "process {process} out of range");
        if process >= self.counters.len() {
            self.counters.resize(process + 1, 0);
        }
        self.counters[process] = value;
    }

    /// A local event of process `me` (also a send: the result travels with the message).
    pub fn tick(&mut self, me: usize) -> &Self {
        let next = self
            .get(me)
            .checked_add(1)
            .expect("vector clock overflowed u64");
        self.set(me, next);
        self
    }

    /// Process `me` receives a message stamped `stamp`: merge, then count the receive.
    pub fn receive(&mut self, me: usize, stamp: &VectorClock) -> &Self {
        self.merge(stamp);
        self.tick(me)
    }

    /// Entry-wise maximum. Commutative, associative and idempotent: the least upper bound.
    pub fn merge(&mut self, other: &VectorClock) {
        if other.counters.len() > self.counters.len() {
            self.counters.resize(other.counters.len(), 0);
        }
        for (mine, theirs) in self.counters.iter_mut().zip(&other.counters) {
            *mine = (*mine).max(*theirs);
        }
    }

    /// How the event stamped `self` relates to the event stamped `other`.
    pub fn compare(&self, other: &VectorClock) -> Causality {
        let n = self.counters.len().max(other.counters.len());
        (0..n).fold(Causality::Equal, |c, k| {
            c.combine(self.get(k), other.get(k))
        })
    }

    /// `self → other`: every entry ≤ and the vectors differ.
    pub fn happened_before(&self, other: &VectorClock) -> bool {
        self.compare(other) == Causality::Before
    }

    pub fn concurrent_with(&self, other: &VectorClock) -> bool {
        self.compare(other) == Causality::Concurrent
    }

    /// Appends the binary form: a varint count, then each counter as a varint.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.counters.len() as u64);
        for &c in &self.counters {
            put_varint(out, c);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes exactly one vector from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r)?;
        r.finish()?;
        Ok(v)
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count(MAX_PROCESSES)?;
        let counters = (0..n).map(|_| r.varint()).collect::<Result<_, _>>()?;
        Ok(VectorClock { counters })
    }
}

impl PartialEq for VectorClock {
    fn eq(&self, other: &Self) -> bool {
        self.compare(other) == Causality::Equal
    }
}

impl Eq for VectorClock {}

impl PartialOrd for VectorClock {
    /// The causal partial order: `None` for concurrent vectors.
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        use std::cmp::Ordering;
        match self.compare(other) {
            Causality::Before => Some(Ordering::Less),
            Causality::After => Some(Ordering::Greater),
            Causality::Equal => Some(Ordering::Equal),
            Causality::Concurrent => None,
        }
    }
}

impl std::fmt::Display for VectorClock {
    /// `[a,b,c]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[")?;
        for (i, c) in self.counters.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("]")
    }
}

impl std::str::FromStr for VectorClock {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, DecodeError> {
        Ok(VectorClock {
            counters: parse_list(s, MAX_PROCESSES)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(c: &[u64]) -> VectorClock {
        VectorClock::from_counters(c.to_vec())
    }

    #[test]
    fn compare_names_the_four_relations() {
        assert_eq!(v(&[1, 0]).compare(&v(&[1, 1])), Causality::Before);
        assert_eq!(v(&[2, 1]).compare(&v(&[1, 1])), Causality::After);
        assert_eq!(v(&[1, 1]).compare(&v(&[1, 1])), Causality::Equal);
        assert_eq!(v(&[1, 0]).compare(&v(&[0, 1])), Causality::Concurrent);
        // Missing entries count as zero.
        assert_eq!(v(&[1]).compare(&v(&[1, 0])), Causality::Equal);
        assert_eq!(v(&[1]).compare(&v(&[1, 2])), Causality::Before);
    }

    #[test]
    fn message_exchange() {
        let mut p0 = VectorClock::new(2);
        let mut p1 = VectorClock::new(2);
        p0.tick(0);
        let stamp = p0.tick(0).clone(); // send
        p1.tick(1);
        p1.receive(1, &stamp);
        assert_eq!(p1, v(&[2, 2]));
        assert!(stamp.happened_before(&p1));
        p0.tick(0);
        assert!(p0.concurrent_with(&p1));
    }

    #[test]
    fn text_form() {
        assert_eq!(v(&[3, 0, 12]).to_string(), "[3,0,12]");
        assert_eq!("[3, 0,12]".parse::<VectorClock>().unwrap(), v(&[3, 0, 12]));
        assert_eq!("[]".parse::<VectorClock>().unwrap(), v(&[]));
        assert!("3,0".parse::<VectorClock>().is_err());
        assert!("[a]".parse::<VectorClock>().is_err());
    }

    #[test]
    fn decode_refuses_huge_counts_before_allocating() {
        let mut bytes = Vec::new();
        put_varint(&mut bytes, u64::MAX);
        assert!(matches!(
            VectorClock::decode(&bytes),
            Err(DecodeError::TooManyProcesses { .. })
        ));
    }
}
