//! Sets of daemons as 128-bit masks: a configuration has at most 128 daemons, so every
//! set operation of the membership protocol is one machine instruction or two.

use std::fmt;

/// A daemon's index in the configuration (the order of spread.conf).
pub type NodeId = u8;

/// Most daemons in one configuration.
pub const MAX_NODES: usize = 128;

/// A set of daemons.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct NodeSet(pub u128);

impl NodeSet {
    pub const EMPTY: NodeSet = NodeSet(0);

    pub fn single(n: NodeId) -> NodeSet {
        assert!((n as usize) < MAX_NODES);
        NodeSet(1u128 << n)
    }
    /// The first `n` daemons.
    pub fn first(n: usize) -> NodeSet {
        assert!(n <= MAX_NODES);
        if n == MAX_NODES {
            NodeSet(u128::MAX)
        } else {
            NodeSet((1u128 << n) - 1)
        }
    }
    pub fn contains(self, n: NodeId) -> bool {
        (n as usize) < MAX_NODES && self.0 & (1u128 << n) != 0
    }
    pub fn insert(&mut self, n: NodeId) {
        *self = self.with(n);
    }
    pub fn with(self, n: NodeId) -> NodeSet {
        NodeSet(self.0 | NodeSet::single(n).0)
    }
    pub fn without(self, n: NodeId) -> NodeSet {
        NodeSet(self.0 & !NodeSet::single(n).0)
    }
    pub fn union(self, o: NodeSet) -> NodeSet {
        NodeSet(self.0 | o.0)
    }
    pub fn minus(self, o: NodeSet) -> NodeSet {
        NodeSet(self.0 & !o.0)
    }
    pub fn intersect(self, o: NodeSet) -> NodeSet {
        NodeSet(self.0 & o.0)
    }
    pub fn is_subset(self, o: NodeSet) -> bool {
        self.0 & !o.0 == 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    /// The lowest member.
    pub fn min(self) -> Option<NodeId> {
        (self.0 != 0).then(|| self.0.trailing_zeros() as NodeId)
    }
    /// Members in increasing order.
    pub fn iter(self) -> impl Iterator<Item = NodeId> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let n = bits.trailing_zeros() as NodeId;
            bits &= bits - 1;
            Some(n)
        })
    }
    /// Position of `n` among the members (its rank), if a member.
    pub fn index_of(self, n: NodeId) -> Option<usize> {
        self.contains(n).then(|| {
            let below = if n == 0 {
                0
            } else {
                self.0 & ((1u128 << n) - 1)
            };
            below.count_ones() as usize
        })
    }
    /// The member after `n` in increasing order, wrapping around.
    pub fn successor(self, n: NodeId) -> Option<NodeId> {
        if self.is_empty() {
            return None;
        }
        let above = if n as usize + 1 >= MAX_NODES {
            0
        } else {
            self.0 & !((1u128 << (n + 1)) - 1)
        };
        if above != 0 {
            Some(above.trailing_zeros() as NodeId)
        } else {
            self.min()
        }
    }
}

impl fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<NodeId> for NodeSet {
    fn from_iter<I: IntoIterator<Item = NodeId>>(iter: I) -> Self {
        let mut s = NodeSet::EMPTY;
        for n in iter {
            s.insert(n);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let s: NodeSet = [1, 3, 127].into_iter().collect();
        assert_eq!(s.len(), 3);
        assert_eq!(s.iter().collect::<Vec<_>>(), [1, 3, 127]);
        assert_eq!(s.min(), Some(1));
        assert_eq!(s.successor(1), Some(3));
        assert_eq!(s.successor(3), Some(127));
        assert_eq!(s.successor(127), Some(1));
        assert_eq!(s.successor(2), Some(3));
        assert_eq!(s.index_of(127), Some(2));
        assert_eq!(s.index_of(2), None);
        assert!(NodeSet::single(3).is_subset(s));
        assert_eq!(s.minus(NodeSet::single(3)), [1, 127].into_iter().collect());
        assert_eq!(NodeSet::first(128).len(), 128);
        assert_eq!(NodeSet::single(0).successor(0), Some(0));
        assert_eq!(NodeSet::EMPTY.successor(0), None);
    }
}
