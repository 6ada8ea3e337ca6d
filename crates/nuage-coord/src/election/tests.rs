use super::sim::{self, Initiators, Starts};
use super::*;
use crate::rng::SplitMix64;

/// Checks every property the issue asks for on one finished run.
fn check(ids: &[Id], out: &sim::Outcome) {
    let n = ids.len();
    let max = *ids.iter().max().unwrap();
    let leader_pos = ids.iter().position(|&i| i == max).unwrap();
    let leaders: Vec<_> = out.processes.iter().filter(|p| p.is_leader()).collect();
    assert_eq!(leaders.len(), 1, "exactly one leader");
    assert_eq!(leaders[0].id(), max, "the leader has the largest id");
    assert_eq!(leaders[0].size(), Some(n as u32), "the leader learns N");
    for (pos, p) in out.processes.iter().enumerate() {
        assert_eq!(p.leader(), Some(max), "everyone knows the leader");
        // Ranks follow the ring from the leader: 0, 1, …, N-1, no gap, no repeat.
        let expected = (pos + n - leader_pos) % n;
        assert_eq!(p.rank(), Some(expected as u32));
        assert!(p.is_done());
    }
    assert_eq!(out.in_flight, 0);
    assert_eq!(out.count(Kind::Elected), n);
    assert_eq!(out.count(Kind::Token), n);
    let e = out.count(Kind::Election);
    assert!(
        e >= n && e <= n * (n + 1) / 2,
        "{e} election messages for N={n}"
    );
}

#[test]
fn one_leader_the_largest_for_every_n_and_initiator_set() {
    let mut rng = SplitMix64::new(0xc0ffee);
    for n in 3..=64 {
        for round in 0..6 {
            let ids: Vec<Id> = sim::random_ids(n, &mut rng)
                .into_iter()
                .map(|i| i * 1000 + rng.below(1000) as Id)
                .collect();
            let initiators: Vec<usize> = match round {
                0 => vec![0],
                1 => (0..n).collect(),
                2 => vec![
                    ids.iter()
                        .position(|&i| i == *ids.iter().max().unwrap())
                        .unwrap(),
                ],
                3 => vec![
                    ids.iter()
                        .position(|&i| i == *ids.iter().min().unwrap())
                        .unwrap(),
                ],
                _ => {
                    let one = rng.below(n);
                    let mut set: Vec<usize> = (0..n).filter(|_| rng.below(3) == 0).collect();
                    set.push(one);
                    set
                }
            };
            for k in 0..4 {
                let seed = rng.next_u64();
                let starts = if k % 2 == 0 {
                    Starts::First
                } else {
                    Starts::Interleaved
                };
                let out = sim::run(&ids, &initiators, starts, seed)
                    .unwrap_or_else(|e| panic!("n={n} seed={seed}: {e}"));
                check(&ids, &out);
            }
        }
    }
}

#[test]
fn extreme_orders_cost_what_theory_says() {
    for n in [3usize, 10, 64] {
        // Ids decreasing along the ring, everyone initiating: the worst case.
        let decreasing: Vec<Id> = (1..=n as Id).rev().collect();
        let all: Vec<usize> = (0..n).collect();
        // Everyone started first: id k travels k hops, whatever the delivery order.
        for seed in 0..20 {
            let out = sim::run(&decreasing, &all, Starts::First, seed).unwrap();
            check(&decreasing, &out);
            assert_eq!(out.count(Kind::Election), n * (n + 1) / 2);
        }
        // Ids increasing along the ring: every candidate but the largest dies at once.
        let increasing: Vec<Id> = (1..=n as Id).collect();
        let out = sim::run(&increasing, &all, Starts::First, 1).unwrap();
        check(&increasing, &out);
        assert_eq!(out.count(Kind::Election), 2 * n - 1);
        // A single initiator that is the largest: exactly N election messages.
        let out = sim::run(&increasing, &[n - 1], Starts::Interleaved, 7).unwrap();
        assert_eq!(out.count(Kind::Election), n);
    }
}

#[test]
fn interleaved_starts_never_cost_more_than_the_worst_case() {
    let n = 12;
    let ids: Vec<Id> = (1..=n as Id).rev().collect();
    let all: Vec<usize> = (0..n).collect();
    let counts: Vec<usize> = (0..500)
        .map(|s| {
            let out = sim::run(&ids, &all, Starts::Interleaved, s).unwrap();
            check(&ids, &out);
            out.count(Kind::Election)
        })
        .collect();
    assert!(counts.iter().all(|&c| c <= n * (n + 1) / 2));
    assert!(
        counts.iter().any(|&c| c > 2 * n),
        "some schedules are costly"
    );
    assert!(
        counts.iter().any(|&c| c < n * (n + 1) / 2),
        "some are cheaper"
    );
}

#[test]
fn same_seed_replays_the_same_run() {
    let mut rng = SplitMix64::new(5);
    let ids = sim::random_ids(20, &mut rng);
    let all: Vec<usize> = (0..20).collect();
    let a = sim::run(&ids, &all, Starts::Interleaved, 99).unwrap();
    let b = sim::run(&ids, &all, Starts::Interleaved, 99).unwrap();
    assert_eq!(a.trace, b.trace);
}

#[test]
fn mean_election_messages_grow_like_n_log_n() {
    // With every process initiating and random id orders, the expected count is N·H_N.
    for n in [8usize, 32, 64, 128] {
        let stats = sim::measure(n, 300, Initiators::All, 11);
        let expected = n as f64 * sim::harmonic(n);
        let ratio = stats.mean_election / expected;
        assert!(
            (0.9..1.1).contains(&ratio),
            "N={n}: mean {} vs N·H_N {expected}",
            stats.mean_election
        );
        // And far below the quadratic worst case.
        assert!(n < 32 || stats.mean_election < (n * (n + 1) / 2) as f64 / 4.0);
    }
}

#[test]
fn duplicate_ids_are_refused() {
    let ids = [5, 3, 5, 1];
    let err = sim::run(&ids, &[0, 1, 2, 3], Starts::First, 3).unwrap_err();
    assert!(err.0.contains("id 5 is held by two"), "{err}");
}

#[test]
fn unexpected_messages_are_errors() {
    let mut p = Process::new(4);
    assert!(p.receive(Message::Token { value: 1 }).is_err());
    let mut p = Process::new(4);
    assert!(p.receive(Message::Election { id: 4 }).is_err());
    let mut p = Process::new(4);
    assert!(p.receive(Message::Elected { id: 2 }).is_err());
    let mut p = Process::new(4);
    assert_eq!(p.start(), Some(Message::Election { id: 4 }));
    assert_eq!(p.start(), None, "a participant does not start twice");
}

#[test]
fn messages_print_and_encode() {
    let m = Message::Election { id: 12 };
    assert_eq!(m.to_string(), "election(12)");
    assert_eq!(
        serde_json::to_string(&Message::Token { value: 3 }).unwrap(),
        r#"{"token":{"value":3}}"#
    );
}
