//! The token ring with a process killed at a random moment, in a seeded simulator:
//! FIFO links, messages to a dead process lost, the successor repairs and probes.

use std::collections::VecDeque;

use super::*;
use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Token(u64),
    Probe(u32),
}

struct Sim {
    procs: Vec<TokenProcess>,
    alive: Vec<bool>,
    /// succ[i]: where process i sends; links[i]: messages from i to succ[i].
    succ: Vec<usize>,
    links: Vec<VecDeque<Msg>>,
    regenerations: usize,
}

impl Sim {
    fn tokens(&self) -> usize {
        self.links
            .iter()
            .enumerate()
            .filter(|(i, _)| self.alive[self.succ[*i]])
            .flat_map(|(_, l)| l.iter())
            .filter(|m| matches!(m, Msg::Token(_)))
            .count()
    }

    fn send(&mut self, from: usize, m: Msg) {
        if self.alive[self.succ[from]] {
            self.links[from].push_back(m);
        } // else: written to a dead process's socket: lost
    }

    /// `q`'s predecessor died and its link is drained: link from the live one before.
    fn repair(&mut self, q: usize) {
        let n = self.procs.len();
        let mut p = (q + n - 1) % n;
        while !self.alive[p] {
            p = (p + n - 1) % n;
        }
        assert_ne!(p, q, "a live process remains besides q");
        self.succ[p] = q;
        self.links[p].clear(); // the new link starts empty
        self.procs[q].probe_sent();
        self.send(q, Msg::Probe(q as u32));
    }
}

#[test]
fn a_killed_process_never_leaves_zero_or_two_tokens() {
    let mut rng = SplitMix64::new(99);
    let mut regenerated = 0;
    for _ in 0..500 {
        let n = 3 + rng.below(8);
        let records: Vec<u32> = (0..n).map(|_| rng.below(6) as u32).collect();
        let mut sim = Sim {
            procs: records.iter().map(|&r| TokenProcess::new(r)).collect(),
            alive: vec![true; n],
            succ: (0..n).map(|i| (i + 1) % n).collect(),
            links: vec![VecDeque::new(); n],
            regenerations: 0,
        };
        sim.send(0, Msg::Token(1));
        let kill_at = rng.below(40);
        let victim = rng.below(n);
        let mut repaired_pending = false;
        for step in 0..20_000 {
            if step == kill_at {
                sim.alive[victim] = false;
                repaired_pending = true;
            }
            // The victim's successor repairs once it has drained the victim's link.
            if repaired_pending {
                let q = (0..n).find(|&i| sim.alive[i] && sim.succ[victim] == i && i != victim);
                if let Some(q) = q {
                    if sim.links[victim].is_empty() {
                        sim.repair(q);
                        repaired_pending = false;
                    }
                }
            }
            // Never two tokens; and none only while a repair's probe is out.
            let probing = sim.procs.iter().any(|p| p.probe.is_some());
            assert!(sim.tokens() <= 1, "two tokens");
            if !probing && !repaired_pending {
                assert_eq!(sim.tokens(), 1, "no token and nobody probing");
            }
            let busy: Vec<usize> = (0..n).filter(|&i| !sim.links[i].is_empty()).collect();
            if busy.is_empty() {
                break;
            }
            let from = busy[rng.below(busy.len())];
            let m = sim.links[from].pop_front().unwrap();
            let to = sim.succ[from];
            if !sim.alive[to] {
                continue;
            }
            let generation = match m {
                Msg::Probe(o) if o as usize == to => match sim.procs[to].probe_returned() {
                    Some(g) => {
                        sim.regenerations += 1;
                        g
                    }
                    None => continue,
                },
                Msg::Probe(o) => {
                    sim.send(to, Msg::Probe(o));
                    continue;
                }
                Msg::Token(g) => g,
            };
            if let Visit::Pass { generation, .. } = sim.procs[to].on_token(generation) {
                let done = (0..n).all(|i| !sim.alive[i] || sim.procs[i].written() == records[i]);
                if done && !repaired_pending && !probing {
                    break;
                }
                sim.send(to, Msg::Token(generation));
            }
        }
        for i in (0..n).filter(|&i| sim.alive[i]) {
            assert_eq!(sim.procs[i].written(), records[i], "process {i} of {n}");
        }
        assert!(sim.regenerations <= 1);
        regenerated += sim.regenerations;
    }
    assert!(
        regenerated > 0,
        "some runs lost the token and regenerated it"
    );
}

#[test]
fn stale_tokens_are_dropped_and_probes_decide_once() {
    let mut p = TokenProcess::new(2);
    assert!(matches!(
        p.on_token(1),
        Visit::Pass {
            enter: true,
            finished_now: false,
            generation: 1
        }
    ));
    p.probe_sent();
    assert_eq!(
        p.probe_returned(),
        Some(2),
        "no token during the probe: regenerate"
    );
    assert_eq!(p.on_token(1), Visit::Stale);
    assert!(matches!(
        p.on_token(2),
        Visit::Pass {
            enter: true,
            finished_now: true,
            generation: 2
        }
    ));
    p.probe_sent();
    p.on_token(2);
    assert_eq!(p.probe_returned(), None, "a token came: it is alive");
    assert_eq!(p.probe_returned(), None, "a probe decides once");
    let mut idle = TokenProcess::new(0);
    assert!(matches!(
        idle.on_token(1),
        Visit::Pass {
            enter: false,
            finished_now: true,
            ..
        }
    ));
}

/// A process of the paused-holder simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Stopped (SIGSTOP); its links stay open, so nobody sees a connection close.
    Paused,
    /// Paused, then excluded by its successor after the token timeout.
    Excluded,
    /// Resumed after its exclusion: it met its stale token(s) and left.
    Left,
}

/// The token ring with one process paused at a random moment (possibly holding the
/// token, possibly inside the critical section), never killed: its successor excludes it
/// after the timeout (no connection closes), repairs and probes; the paused process may
/// resume before its exclusion (a slow process: nothing happens) or after (it must find
/// its token stale at the fence and leave).
struct PauseSim {
    procs: Vec<TokenProcess>,
    state: Vec<State>,
    succ: Vec<usize>,
    links: Vec<VecDeque<Msg>>,
    /// A paused process's token, taken just before the pause: (generation, entering the
    /// critical section).
    held: Vec<Option<(u64, bool)>>,
    /// Messages that were in flight to a process when it was excluded: it reads them if
    /// it ever resumes.
    stale_inbox: Vec<VecDeque<Msg>>,
    /// The shared resource's fence: the highest generation that wrote.
    fence: u64,
    /// Generations of the critical sections, in the order they wrote.
    writes: Vec<(usize, u64)>,
    /// Writes refused by the fence.
    refused: usize,
    regenerations: usize,
    newest: u64,
}

impl PauseSim {
    fn in_ring(&self, i: usize) -> bool {
        matches!(self.state[i], State::Running | State::Paused)
    }

    /// Tokens in the ring, of any generation (on links between ring members, or held by
    /// a paused member); stale ones may only be with excluded processes.
    fn ring_tokens(&self) -> usize {
        let on_links = (0..self.links.len())
            .filter(|&i| self.in_ring(i) && self.in_ring(self.succ[i]))
            .flat_map(|i| self.links[i].iter())
            .filter(|m| matches!(m, Msg::Token(_)))
            .count();
        let held = (0..self.held.len())
            .filter(|&i| self.in_ring(i) && self.held[i].is_some())
            .count();
        on_links + held
    }

    fn send(&mut self, from: usize, m: Msg) {
        if self.in_ring(from) && self.in_ring(self.succ[from]) {
            self.links[from].push_back(m);
        } // an excluded process's messages reach nobody
    }

    /// The critical section at the shared resource, checked against the fence.
    fn write(&mut self, who: usize, generation: u64) -> bool {
        if generation < self.fence {
            assert!(
                !self.in_ring(who),
                "only an excluded process holds a stale token"
            );
            self.refused += 1;
            self.procs[who].saw_generation(self.fence);
            return false;
        }
        self.fence = generation;
        self.writes.push((who, generation));
        true
    }

    /// Process `to` handles one message; returns the token to pass on, if any.
    fn handle(&mut self, to: usize, m: Msg) -> Option<Msg> {
        let generation = match m {
            Msg::Probe(o) if o as usize == to => match self.procs[to].probe_returned() {
                Some(g) => {
                    self.regenerations += 1;
                    self.newest = self.newest.max(g);
                    g
                }
                None => return None,
            },
            Msg::Probe(o) => return Some(Msg::Probe(o)),
            Msg::Token(g) => g,
        };
        match self.procs[to].on_token(generation) {
            Visit::Stale => None,
            Visit::Pass {
                enter, generation, ..
            } => {
                if enter && !self.write(to, generation) {
                    return None; // refused: the stale token is dropped
                }
                Some(Msg::Token(generation))
            }
        }
    }
}

#[test]
fn a_paused_holder_is_excluded_and_its_stale_token_never_writes_after_the_new_one() {
    let mut rng = SplitMix64::new(7);
    let (mut regenerated, mut refused, mut resumed_late, mut inside) = (0, 0, 0, 0);
    for run in 0..1000 {
        let n = 3 + rng.below(8);
        let records: Vec<u32> = (0..n).map(|_| 1 + rng.below(6) as u32).collect();
        let mut sim = PauseSim {
            procs: records.iter().map(|&r| TokenProcess::new(r)).collect(),
            state: vec![State::Running; n],
            succ: (0..n).map(|i| (i + 1) % n).collect(),
            links: vec![VecDeque::new(); n],
            held: vec![None; n],
            stale_inbox: vec![VecDeque::new(); n],
            fence: 0,
            writes: Vec::new(),
            refused: 0,
            regenerations: 0,
            newest: 1,
        };
        sim.send(0, Msg::Token(1));
        let victim = rng.below(n);
        let pred = (victim + n - 1) % n;
        let pause_at = rng.below(40);
        let resume_after = 1 + rng.below(200);
        let mut resume_at = None;
        for step in 0..50_000 {
            if step == pause_at && sim.state[victim] == State::Running {
                // Paused, perhaps just after taking the token (then perhaps inside the
                // critical section: it decided to enter, has not written yet).
                if rng.below(2) == 0
                    && sim.links[pred]
                        .front()
                        .is_some_and(|m| matches!(m, Msg::Token(_)))
                {
                    let Some(Msg::Token(g)) = sim.links[pred].pop_front() else {
                        unreachable!()
                    };
                    sim.held[victim] = match sim.procs[victim].on_token(g) {
                        Visit::Pass {
                            enter, generation, ..
                        } => Some((generation, enter)),
                        Visit::Stale => None,
                    };
                }
                sim.state[victim] = State::Paused;
                resume_at = Some(step + resume_after);
            }
            // Resume: before its exclusion it was only slow; after it, it meets its stale
            // token(s) at the fence and leaves.
            if Some(step) == resume_at {
                match sim.state[victim] {
                    State::Paused => {
                        sim.state[victim] = State::Running;
                        if let Some((g, enter)) = sim.held[victim].take() {
                            if !enter || sim.write(victim, g) {
                                sim.send(victim, Msg::Token(g));
                            }
                        }
                    }
                    State::Excluded => {
                        resumed_late += 1;
                        if let Some((g, enter)) = sim.held[victim].take() {
                            if enter {
                                inside += 1;
                                let before = sim.fence;
                                let wrote = sim.write(victim, g);
                                assert_eq!(wrote, g >= before, "the fence decides");
                            }
                        }
                        while let Some(m) = sim.stale_inbox[victim].pop_front() {
                            let _ = sim.handle(victim, m);
                        }
                        sim.state[victim] = State::Left;
                    }
                    _ => {}
                }
            }
            // The timeout: the victim is paused and silent (its successor has drained
            // its link) → its successor excludes it, repairs and probes.
            let q = sim.succ[victim];
            let silent = sim.state[victim] == State::Paused && sim.links[victim].is_empty();
            let busy: Vec<usize> = (0..n)
                .filter(|&i| !sim.links[i].is_empty() && sim.state[sim.succ[i]] == State::Running)
                .collect();
            if silent && (busy.is_empty() || rng.below(8) == 0) {
                sim.state[victim] = State::Excluded;
                let mut p = pred;
                while !sim.in_ring(p) {
                    p = (p + n - 1) % n;
                }
                assert_ne!(p, q);
                let in_flight: Vec<Msg> = sim.links[p].drain(..).collect();
                sim.stale_inbox[victim].extend(in_flight);
                sim.succ[p] = q;
                sim.procs[q].probe_sent();
                sim.send(q, Msg::Probe(q as u32));
                continue;
            }
            let probing = sim
                .procs
                .iter()
                .enumerate()
                .any(|(i, p)| sim.in_ring(i) && p.probe.is_some());
            assert!(sim.ring_tokens() <= 1, "run {run}: two tokens in the ring");
            if !probing {
                assert_eq!(
                    sim.ring_tokens(),
                    1,
                    "run {run}: no token and nobody probing"
                );
            }
            if busy.is_empty() {
                if resume_at.is_some_and(|r| r > step) {
                    continue; // only the resumption is left to happen
                }
                break;
            }
            let from = busy[rng.below(busy.len())];
            let m = sim.links[from].pop_front().unwrap();
            let to = sim.succ[from];
            let done = (0..n).all(|i| !sim.in_ring(i) || sim.procs[i].written() == records[i]);
            if let Some(out) = sim.handle(to, m) {
                let done_now =
                    (0..n).all(|i| !sim.in_ring(i) || sim.procs[i].written() == records[i]);
                if done
                    && done_now
                    && !probing
                    && matches!(out, Msg::Token(_))
                    && resume_at.is_none_or(|r| r <= step)
                {
                    break;
                }
                sim.send(to, out);
            }
        }
        // Every process still in the ring wrote all its records; the fence kept the
        // writes in generation order; at most one regeneration.
        for i in (0..n).filter(|&i| sim.in_ring(i)) {
            assert_eq!(
                sim.procs[i].written(),
                records[i],
                "run {run}: process {i} of {n}"
            );
        }
        assert!(
            sim.writes.windows(2).all(|w| w[0].1 <= w[1].1),
            "run {run}: fence order"
        );
        assert!(sim.regenerations <= 1, "run {run}");
        if sim.regenerations == 1 {
            assert!(
                matches!(sim.state[victim], State::Excluded | State::Left),
                "run {run}: only an exclusion regenerates"
            );
        }
        regenerated += sim.regenerations;
        refused += sim.refused;
    }
    assert!(regenerated > 0, "some runs regenerated the token");
    assert!(
        resumed_late > 0 && inside > 0,
        "some excluded holders resumed, some inside"
    );
    assert!(refused > 0, "some stale tokens were refused by the fence");
}

#[tokio::test]
async fn the_fence_refuses_older_generations_and_names_a_corrupt_fence() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared");
    let fence = fence_path(&file);
    assert_eq!(fence, dir.path().join("shared.fence"));
    assert_eq!(
        fenced_append(&file, &fence, 1, "a\n").await.unwrap(),
        Fenced::Written
    );
    assert_eq!(
        fenced_append(&file, &fence, 2, "b\n").await.unwrap(),
        Fenced::Written
    );
    assert_eq!(
        fenced_append(&file, &fence, 2, "c\n").await.unwrap(),
        Fenced::Written
    );
    assert_eq!(
        fenced_append(&file, &fence, 1, "stale\n").await.unwrap(),
        Fenced::Refused { newest: 2 }
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a\nb\nc\n");
    assert_eq!(std::fs::read_to_string(&fence).unwrap(), "2\n");
    std::fs::write(&fence, "two\n").unwrap();
    let err = fenced_append(&file, &fence, 3, "d\n").await.unwrap_err();
    assert!(format!("{err:#}").contains("is corrupt"), "{err:#}");
}
