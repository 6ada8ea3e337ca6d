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
