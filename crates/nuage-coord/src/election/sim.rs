//! A seeded, replayable simulation of the election on a ring of N processes.
//!
//! Links are FIFO (as TCP is); at every step the scheduler picks, with the seeded
//! generator, one possible action: an initiator that has not started yet starts, or the
//! oldest message of one non-empty link is delivered. So one seed is one interleaving,
//! and many seeds explore many of them. [`run`] checks nothing itself: it reports what
//! happened, and the tests and the message-count measurement look at the [`Outcome`].

use std::collections::{BTreeMap, VecDeque};

use super::{Id, Kind, Message, Process, ProtocolError};
use crate::rng::SplitMix64;

/// The upper bound of steps, far beyond the worst case (N(N+1)/2 + 2N messages plus the
/// starts), so a protocol bug that loops ends as an error instead of hanging a test.
fn step_limit(n: usize) -> usize {
    n * n + 4 * n + 16
}

/// One message in transit, for the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Ring position of the sender; the receiver is `(from + 1) % N`.
    pub from: usize,
    pub msg: Message,
}

/// What a run ended with.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The processes, in ring order, in their final state.
    pub processes: Vec<Process>,
    /// Messages sent, per kind.
    pub counts: BTreeMap<Kind, usize>,
    /// Every message, in the order it was sent.
    pub trace: Vec<Sent>,
    /// Messages never delivered (zero in a correct run).
    pub in_flight: usize,
}

impl Outcome {
    pub fn count(&self, kind: Kind) -> usize {
        self.counts.get(&kind).copied().unwrap_or(0)
    }
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }
}

/// When the initiators start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Starts {
    /// Every initiator starts before any message is delivered: the setting of the
    /// classic average-case analysis (N·H_N election messages when all initiate).
    First,
    /// Starts are interleaved with deliveries by the scheduler: an initiator may already
    /// be a participant (it forwarded a larger id) when its turn comes, and then sends
    /// nothing of its own.
    Interleaved,
}

/// Runs the election on processes with `ids` (in ring order), where the processes at
/// positions `initiators` start, under the schedule chosen by `starts` and `seed`.
/// Duplicate ids are refused: with them no algorithm on an anonymous ring can elect.
pub fn run(
    ids: &[Id],
    initiators: &[usize],
    starts: Starts,
    seed: u64,
) -> Result<Outcome, ProtocolError> {
    let n = ids.len();
    assert!(n >= 1, "a ring needs a process");
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(ProtocolError(format!(
            "id {} is held by two processes",
            w[0]
        )));
    }
    let mut rng = SplitMix64::new(seed);
    let mut processes: Vec<Process> = ids.iter().map(|&id| Process::new(id)).collect();
    let mut links: Vec<VecDeque<Message>> = vec![VecDeque::new(); n];
    let mut to_start: Vec<usize> = initiators.to_vec();
    to_start.sort_unstable();
    to_start.dedup();
    assert!(to_start.iter().all(|&i| i < n), "initiator out of range");
    let mut counts = BTreeMap::new();
    let mut trace = Vec::new();
    let mut send = |from: usize, msg: Message, links: &mut Vec<VecDeque<Message>>| {
        *counts.entry(msg.kind()).or_insert(0) += 1;
        trace.push(Sent { from, msg });
        links[from].push_back(msg);
    };
    if starts == Starts::First {
        for i in std::mem::take(&mut to_start) {
            if let Some(msg) = processes[i].start() {
                send(i, msg, &mut links);
            }
        }
    }
    for _ in 0..step_limit(n) {
        let busy: Vec<usize> = (0..n).filter(|&i| !links[i].is_empty()).collect();
        let choices = to_start.len() + busy.len();
        if choices == 0 {
            break;
        }
        let pick = rng.below(choices);
        if pick < to_start.len() {
            let i = to_start.swap_remove(pick);
            if let Some(msg) = processes[i].start() {
                send(i, msg, &mut links);
            }
        } else {
            let from = busy[pick - to_start.len()];
            let msg = links[from].pop_front().expect("busy link");
            let to = (from + 1) % n;
            if let Some(out) = processes[to].receive(msg)? {
                send(to, out, &mut links);
            }
        }
    }
    let in_flight = links.iter().map(VecDeque::len).sum();
    if in_flight > 0 || !to_start.is_empty() {
        return Err(ProtocolError(format!(
            "no end after {} steps ({in_flight} messages in flight)",
            step_limit(n)
        )));
    }
    Ok(Outcome {
        processes,
        counts,
        trace,
        in_flight,
    })
}

/// Distinct random ids for a ring of `n` (the order along the ring is random).
pub fn random_ids(n: usize, rng: &mut SplitMix64) -> Vec<Id> {
    let mut ids: Vec<Id> = (1..=n as Id).collect();
    rng.shuffle(&mut ids);
    ids
}

/// The message counts of many runs with random id orders.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub trials: usize,
    /// Mean number of election messages.
    pub mean_election: f64,
    pub min_election: usize,
    pub max_election: usize,
    /// Mean of all messages (election + elected + token).
    pub mean_total: f64,
}

/// Which processes initiate in [`measure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiators {
    /// Every process.
    All,
    /// One process, at a random position.
    One,
}

/// Runs `trials` elections on rings of `n` with random id orders and schedules, every
/// initiator starting before the first delivery ([`Starts::First`]).
pub fn measure(n: usize, trials: usize, who: Initiators, seed: u64) -> Stats {
    assert!(trials > 0);
    let mut rng = SplitMix64::new(seed);
    let (mut sum, mut sum_total) = (0usize, 0usize);
    let (mut min, mut max) = (usize::MAX, 0);
    for _ in 0..trials {
        let ids = random_ids(n, &mut rng);
        let initiators: Vec<usize> = match who {
            Initiators::All => (0..n).collect(),
            Initiators::One => vec![rng.below(n)],
        };
        let out = run(&ids, &initiators, Starts::First, rng.next_u64()).expect("a correct run");
        let e = out.count(Kind::Election);
        sum += e;
        sum_total += out.total();
        min = min.min(e);
        max = max.max(e);
    }
    Stats {
        n,
        trials,
        mean_election: sum as f64 / trials as f64,
        min_election: min,
        max_election: max,
        mean_total: sum_total as f64 / trials as f64,
    }
}

/// The harmonic number H_n = 1 + 1/2 + … + 1/n.
pub fn harmonic(n: usize) -> f64 {
    (1..=n).map(|k| 1.0 / k as f64).sum()
}
