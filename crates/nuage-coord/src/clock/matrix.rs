//! Matrix clocks (Wuu and Bernstein 1984; Sarin and Lynch 1987): a process's vector
//! clock plus its knowledge of every other process's vector clock.

use super::codec::{DecodeError, Reader, put_varint};
use super::{Causality, MAX_MATRIX_PROCESSES, VectorClock};

/// An `n × n` matrix of counters kept by process `me`.
///
/// As a knowledge clock ([`tick`](Self::tick), [`send`](Self::send),
/// [`receive`](Self::receive)), row `me` is `me`'s own vector clock and row `k` is what
/// `me` knows of `k`'s vector clock; `min_column(j)` is then how many events of `j`
/// every process is known to have seen.
///
/// The same structure also serves as a count matrix ([`increment`](Self::increment),
/// [`merge`](Self::merge)): cell `(k, l)` counts the messages `k` sent to `l` as far
/// as `me` knows, which is what causal delivery of point-to-point messages needs
/// (Raynal, Schiper and Toueg 1991; the mail service uses it that way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixClock {
    n: usize,
    me: usize,
    /// Row-major, `n * n` cells.
    cells: Vec<u64>,
}

impl MatrixClock {
    /// All zeros, for `n` processes, kept by process `me`.
    pub fn new(n: usize, me: usize) -> Self {
        assert!(
            n <= MAX_MATRIX_PROCESSES,
            "{n} processes (at most {MAX_MATRIX_PROCESSES})"
        );
        assert!(me < n, "process {me} is not one of {n}");
        MatrixClock {
            n,
            me,
            cells: vec![0; n * n],
        }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn me(&self) -> usize {
        self.me
    }

    /// Cell `(i, j)`; 0 outside the matrix.
    pub fn get(&self, i: usize, j: usize) -> u64 {
        if i < self.n && j < self.n {
            self.cells[i * self.n + j]
        } else {
            0
        }
    }

    pub fn set(&mut self, i: usize, j: usize, value: u64) {
        assert!(
            i < self.n && j < self.n,
            "cell ({i},{j}) outside {0}×{0}",
            self.n
        );
        self.cells[i * self.n + j] = value;
    }

    /// Adds one to cell `(i, j)` and returns the new value.
    pub fn increment(&mut self, i: usize, j: usize) -> u64 {
        let v = self
            .get(i, j)
            .checked_add(1)
            .expect("matrix clock overflowed u64");
        self.set(i, j, v);
        v
    }

    /// Row `i` as a vector.
    pub fn row(&self, i: usize) -> VectorClock {
        assert!(i < self.n);
        VectorClock::from_counters(self.cells[i * self.n..(i + 1) * self.n].to_vec())
    }

    /// This process's own vector clock (row `me`).
    pub fn vector(&self) -> VectorClock {
        self.row(self.me)
    }

    /// A local event.
    pub fn tick(&mut self) -> &Self {
        self.increment(self.me, self.me);
        self
    }

    /// A send is an event; the returned matrix travels with the message.
    pub fn send(&mut self) -> MatrixClock {
        self.tick();
        self.clone()
    }

    /// Process `me` receives a message that process `from` stamped `stamp`: it learns
    /// everything `from` knew (entry-wise maximum), its own vector absorbs `from`'s
    /// (row `me` ≥ row `from` of the stamp), and the receive counts as an event.
    pub fn receive(&mut self, from: usize, stamp: &MatrixClock) {
        assert_eq!(stamp.n, self.n, "matrix clocks of different sizes");
        assert!(from < self.n);
        self.merge(stamp);
        for j in 0..self.n {
            let v = self.get(self.me, j).max(stamp.get(from, j));
            self.set(self.me, j, v);
        }
        self.tick();
    }

    /// Entry-wise maximum. Commutative, associative and idempotent: the least upper bound.
    pub fn merge(&mut self, other: &MatrixClock) {
        assert_eq!(other.n, self.n, "matrix clocks of different sizes");
        for (mine, theirs) in self.cells.iter_mut().zip(&other.cells) {
            *mine = (*mine).max(*theirs);
        }
    }

    /// The least value of column `j`: how many events (or messages to `j`) every
    /// process is known to know of.
    pub fn min_column(&self, j: usize) -> u64 {
        (0..self.n).map(|i| self.get(i, j)).min().unwrap_or(0)
    }

    /// How the event stamped `self` relates to the event stamped `other`: entry-wise
    /// over the whole matrix. For knowledge clocks this is exactly happened-before: a
    /// later event knows at least what an earlier one knew, and an event `f` that knows
    /// `e`'s own count (`f[p][p] ≥ e[p][p]`, p = e's process) comes after `e`.
    pub fn compare(&self, other: &MatrixClock) -> Causality {
        let n = self.n.max(other.n);
        let mut c = Causality::Equal;
        for i in 0..n {
            for j in 0..n {
                c = c.combine(self.get(i, j), other.get(i, j));
            }
        }
        c
    }

    pub fn happened_before(&self, other: &MatrixClock) -> bool {
        self.compare(other) == Causality::Before
    }

    /// Appends the binary form: varint `n`, varint `me`, then the `n²` cells row by row.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.n as u64);
        put_varint(out, self.me as u64);
        for &c in &self.cells {
            put_varint(out, c);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes exactly one matrix from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let n = r.count(MAX_MATRIX_PROCESSES)?;
        let me = r.varint()?;
        if me >= n as u64 {
            return Err(DecodeError::BadProcess {
                process: me,
                n: n as u64,
            });
        }
        let cells = (0..n * n).map(|_| r.varint()).collect::<Result<_, _>>()?;
        r.finish()?;
        Ok(MatrixClock {
            n,
            me: me as usize,
            cells,
        })
    }
}

impl std::fmt::Display for MatrixClock {
    /// Rows in brackets, e.g. `[[2,1],[0,1]]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[")?;
        for i in 0..self.n {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", self.row(i))?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_transfers_knowledge() {
        let mut p0 = MatrixClock::new(3, 0);
        let mut p1 = MatrixClock::new(3, 1);
        let mut p2 = MatrixClock::new(3, 2);
        let m = p0.send();
        p1.receive(0, &m);
        // p1 knows p0's first event, and knows that p0 knew it.
        assert_eq!(p1.vector().counters(), &[1, 1, 0]);
        assert_eq!(p1.row(0).counters(), &[1, 0, 0]);
        let m = p1.send();
        p2.receive(1, &m);
        assert_eq!(p2.vector().counters(), &[1, 2, 1]);
        assert_eq!(p2.row(1).counters(), &[1, 2, 0]);
        // p2 knows that every process has seen p0's first event, and that nobody but
        // itself has seen an event of p2.
        assert_eq!(p2.min_column(0), 1);
        assert_eq!(p2.min_column(2), 0);
        assert!(m.happened_before(&p2));
    }

    #[test]
    fn decode_checks_me_and_size() {
        let mut c = MatrixClock::new(2, 1);
        c.increment(0, 1);
        assert_eq!(MatrixClock::decode(&c.to_bytes()).unwrap(), c);
        assert_eq!(c.to_string(), "[[0,1],[0,0]]");
        let bad_me = [2u8, 2, 0, 0, 0, 0];
        assert!(matches!(
            MatrixClock::decode(&bad_me),
            Err(DecodeError::BadProcess { .. })
        ));
        assert!(matches!(
            MatrixClock::decode(&[0xff, 0x7f, 0]),
            Err(DecodeError::TooManyProcesses { .. })
        ));
        assert_eq!(MatrixClock::decode(&[2, 0, 0]), Err(DecodeError::Truncated));
    }
}
