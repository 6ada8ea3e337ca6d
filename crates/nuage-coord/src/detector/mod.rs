//! A hierarchical failure detector: two detectors, each watching half of the processes
//! with heartbeats that carry counters, telling each other what they suspect.
//!
//! Processes 0 and 1 of a launch are the detectors; every other process p is watched by
//! detector `p % 2`. Each period a detector sends `ping(seq)` to each process it watches
//! (and to the other detector) and records the last counter sent; every process answers
//! `pong(seq)`, and the detector records the last counter received. A process is
//! suspected when `last sent − last received` exceeds the threshold K, i.e. after about
//! K + 1 periods without an answer; an answer clears the suspicion. Each period a
//! detector also sends the other its suspects (`report`). Each keeps alive and dead lists
//! over all processes: its own half from its own counters, the other half from the
//! other's latest report. If the other detector is suspected, a detector takes over its
//! half (it pings every process) until the other answers again.
//!
//! [`Watch`] and [`lists`] are the logic, pure and unit-tested; `run.rs` puts it on
//! sockets.

pub mod drive;
mod run;

pub use run::{FdMsg, run_member};

use std::collections::BTreeMap;
use std::time::Duration;

/// The classic lab's heartbeat period.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(15);
/// Unanswered heartbeats tolerated before suspecting.
pub const DEFAULT_THRESHOLD: u64 = 3;
/// Shortest period accepted.
pub const MIN_PERIOD: Duration = Duration::from_millis(10);

/// The heartbeat counters of one detector.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Per process: (last counter sent, last counter received).
    counters: BTreeMap<u32, (u64, u64)>,
}

impl Watch {
    /// The counter of the next ping to `p` (each process has its own, from 1), recorded
    /// as sent.
    pub fn next_ping(&mut self, p: u32) -> u64 {
        let c = self.counters.entry(p).or_insert((0, 0));
        c.0 += 1;
        c.0
    }

    /// `p` answered counter `seq` (answers to counters never sent are ignored).
    pub fn received(&mut self, p: u32, seq: u64) {
        if let Some(c) = self.counters.get_mut(&p) {
            if seq <= c.0 {
                c.1 = c.1.max(seq);
            }
        }
    }

    /// Is `p` suspected (more than `threshold` heartbeats unanswered)?
    pub fn suspected(&self, p: u32, threshold: u64) -> bool {
        self.counters
            .get(&p)
            .is_some_and(|(sent, got)| sent.saturating_sub(*got) > threshold)
    }

    pub fn counters(&self, p: u32) -> (u64, u64) {
        self.counters.get(&p).copied().unwrap_or((0, 0))
    }
}

/// Who detector `me` (0 or 1) watches among `n` processes: the other detector, the
/// processes of its half, and the other half too when `takeover` (the other detector is
/// suspected).
pub fn watched(me: u32, n: u32, takeover: bool) -> Vec<u32> {
    assert!(me < 2 && n >= 3);
    let other = 1 - me;
    std::iter::once(other)
        .chain((2..n).filter(|p| takeover || p % 2 == me))
        .collect()
}

/// The alive and dead lists of detector `me` over all `n` processes: its own view of
/// what it watches, the other detector's latest report for the rest.
pub fn lists(
    me: u32,
    n: u32,
    watch: &Watch,
    threshold: u64,
    peer_report: &[u32],
) -> (Vec<u32>, Vec<u32>) {
    let other = 1 - me;
    let takeover = watch.suspected(other, threshold);
    let mine = watched(me, n, takeover);
    let mut alive = Vec::new();
    let mut dead = Vec::new();
    for p in 0..n {
        let is_dead = if p == me {
            false
        } else if mine.contains(&p) {
            watch.suspected(p, threshold)
        } else {
            peer_report.contains(&p)
        };
        if is_dead {
            dead.push(p);
        } else {
            alive.push(p);
        }
    }
    (alive, dead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspicion_follows_the_counter_gap() {
        let mut w = Watch::default();
        for seq in 1..=3 {
            assert_eq!(w.next_ping(5), seq);
        }
        assert!(!w.suspected(5, 3), "gap 3 is not over 3");
        w.next_ping(5);
        assert!(w.suspected(5, 3));
        w.received(5, 4);
        assert!(!w.suspected(5, 3), "an answer clears it");
        // A late answer to an old ping never lowers what was received; a forged one
        // from the future is ignored.
        w.received(5, 2);
        w.received(5, 99);
        assert_eq!(w.counters(5), (4, 4));
        assert!(!w.suspected(9, 0), "never pinged: not suspected");
    }

    #[test]
    fn halves_and_takeover() {
        assert_eq!(watched(0, 8, false), vec![1, 2, 4, 6]);
        assert_eq!(watched(1, 8, false), vec![0, 3, 5, 7]);
        assert_eq!(watched(0, 8, true), vec![1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn lists_merge_own_view_and_the_peers_report() {
        let mut w = Watch::default();
        for p in watched(0, 6, false) {
            let seq = w.next_ping(p);
            w.received(p, seq);
        }
        for _ in 0..4 {
            w.next_ping(2); // 2 stopped answering
        }
        let (alive, dead) = lists(0, 6, &w, 3, &[5]);
        assert_eq!(dead, vec![2, 5]);
        assert_eq!(alive, vec![0, 1, 3, 4]);
        // The other detector falls silent: detector 0 now judges 3 and 5 itself, and
        // ignores the stale report; they have never been pinged yet, so alive.
        for _ in 0..4 {
            w.next_ping(1);
        }
        let (alive, dead) = lists(0, 6, &w, 3, &[5]);
        assert_eq!(dead, vec![1, 2]);
        assert_eq!(alive, vec![0, 3, 4, 5]);
    }
}
