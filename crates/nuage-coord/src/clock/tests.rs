//! Property tests of the three clocks.
//!
//! The central one runs random executions (local events, sends, receives in any
//! interleaving) and checks every clock against the ground truth: happened-before
//! computed directly from the execution's graph (program order plus send → receive,
//! transitively closed).

use proptest::prelude::*;

use super::*;

/// One step of an execution, chosen by proptest.
#[derive(Debug, Clone)]
enum Step {
    Local(usize),
    /// Process sends to another (the message goes in flight).
    Send(usize, usize),
    /// Some in-flight message (index modulo their number) is received.
    Receive(usize),
}

fn step(n: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..n).prop_map(Step::Local),
        (0..n, 0..n).prop_map(|(p, to)| Step::Send(p, to)),
        any::<usize>().prop_map(Step::Receive),
    ]
}

fn execution() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (2usize..=5).prop_flat_map(|n| (Just(n), prop::collection::vec(step(n), 1..60)))
}

/// An event and the clock values each clock gave it.
struct Event {
    lamport: LamportTimestamp,
    vector: VectorClock,
    matrix: MatrixClock,
    /// Indexes of the events that directly precede it.
    preds: Vec<usize>,
}

struct Message {
    from: usize,
    to: usize,
    send_event: usize,
    lamport: LamportTimestamp,
    vector: VectorClock,
    matrix: MatrixClock,
}

fn simulate(n: usize, steps: &[Step]) -> Vec<Event> {
    let mut lamport: Vec<LamportClock> = (0..n).map(|p| LamportClock::new(p as u64)).collect();
    let mut vector: Vec<VectorClock> = (0..n).map(|_| VectorClock::new(n)).collect();
    let mut matrix: Vec<MatrixClock> = (0..n).map(|p| MatrixClock::new(n, p)).collect();
    let mut last: Vec<Option<usize>> = vec![None; n];
    let mut events: Vec<Event> = Vec::new();
    let mut in_flight: Vec<Message> = Vec::new();
    for s in steps {
        let (p, l, extra_pred) = match *s {
            Step::Local(p) => {
                vector[p].tick(p);
                matrix[p].tick();
                (p, lamport[p].tick(), None)
            }
            Step::Send(p, to) => {
                vector[p].tick(p);
                let l = lamport[p].send();
                let m = matrix[p].send();
                in_flight.push(Message {
                    from: p,
                    to,
                    send_event: events.len(),
                    lamport: l,
                    vector: vector[p].clone(),
                    matrix: m,
                });
                (p, l, None)
            }
            Step::Receive(i) => {
                if in_flight.is_empty() {
                    continue;
                }
                let m = in_flight.remove(i % in_flight.len());
                let p = m.to;
                vector[p].receive(p, &m.vector);
                matrix[p].receive(m.from, &m.matrix);
                (p, lamport[p].receive(m.lamport), Some(m.send_event))
            }
        };
        let mut preds: Vec<usize> = last[p].into_iter().collect();
        preds.extend(extra_pred);
        last[p] = Some(events.len());
        events.push(Event {
            lamport: l,
            vector: vector[p].clone(),
            matrix: matrix[p].clone(),
            preds,
        });
    }
    events
}

/// `reach[e][f]`: e happened before f (strictly).
fn happened_before(events: &[Event]) -> Vec<Vec<bool>> {
    let k = events.len();
    let mut reach = vec![vec![false; k]; k];
    // Events are in a topological order already (a predecessor is always earlier).
    for f in 0..k {
        for &p in &events[f].preds {
            assert!(p < f);
            reach[p][f] = true;
            for row in reach.iter_mut().take(p) {
                if row[p] {
                    row[f] = true;
                }
            }
        }
    }
    reach
}

fn vector() -> impl Strategy<Value = VectorClock> {
    prop::collection::vec(0u64..6, 0..5).prop_map(VectorClock::from_counters)
}

fn matrix(n: usize) -> impl Strategy<Value = MatrixClock> {
    prop::collection::vec(0u64..5, n * n).prop_map(move |cells| {
        let mut m = MatrixClock::new(n, 0);
        for (k, c) in cells.into_iter().enumerate() {
            m.set(k / n, k % n, c);
        }
        m
    })
}

proptest! {
    #[test]
    fn clocks_agree_with_the_ground_truth((n, steps) in execution()) {
        let events = simulate(n, &steps);
        let hb = happened_before(&events);
        for (i, e) in events.iter().enumerate() {
            // The matrix clock's own row is the vector clock.
            prop_assert_eq!(&e.matrix.vector(), &e.vector);
            for (j, f) in events.iter().enumerate() {
                let expected = if i == j {
                    Causality::Equal
                } else if hb[i][j] {
                    Causality::Before
                } else if hb[j][i] {
                    Causality::After
                } else {
                    Causality::Concurrent
                };
                // Vector and matrix clocks characterise causality exactly.
                prop_assert_eq!(e.vector.compare(&f.vector), expected, "vector {} vs {}", i, j);
                prop_assert_eq!(e.matrix.compare(&f.matrix), expected, "matrix {} vs {}", i, j);
                // Lamport clocks only satisfy the clock condition, and order totally.
                if hb[i][j] {
                    prop_assert!(e.lamport < f.lamport);
                }
                if i != j {
                    prop_assert_ne!(e.lamport, f.lamport);
                }
            }
        }
    }

    #[test]
    fn knowledge_never_exceeds_the_truth((n, steps) in execution()) {
        // What process i knows of process k's vector is at most k's vector at that time:
        // in particular, nobody knows of more events of k than k has had.
        let events = simulate(n, &steps);
        for e in &events {
            let me = e.matrix.me();
            for k in 0..n {
                prop_assert!(e.matrix.get(k, k) <= e.matrix.get(me, k));
                prop_assert!(e.matrix.min_column(k) <= e.matrix.get(me, k));
            }
        }
    }

    #[test]
    fn happened_before_is_a_strict_partial_order(a in vector(), b in vector(), c in vector()) {
        prop_assert!(!a.happened_before(&a), "irreflexive");
        if a.happened_before(&b) {
            prop_assert!(!b.happened_before(&a), "antisymmetric");
            if b.happened_before(&c) {
                prop_assert!(a.happened_before(&c), "transitive");
            }
        }
        prop_assert_eq!(a.compare(&b), b.compare(&a).reverse());
        prop_assert_eq!(a.concurrent_with(&b), b.concurrent_with(&a));
    }

    #[test]
    fn vector_merge_is_the_least_upper_bound(a in vector(), b in vector(), c in vector()) {
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        prop_assert_eq!(&ab, &ba, "commutative");
        let mut aa = a.clone();
        aa.merge(&a);
        prop_assert_eq!(&aa, &a, "idempotent");
        let mut ab_c = ab.clone();
        ab_c.merge(&c);
        let mut bc = b.clone();
        bc.merge(&c);
        let mut a_bc = a.clone();
        a_bc.merge(&bc);
        prop_assert_eq!(&ab_c, &a_bc, "associative");
        prop_assert!(matches!(a.compare(&ab), Causality::Before | Causality::Equal));
        prop_assert!(matches!(b.compare(&ab), Causality::Before | Causality::Equal));
        // Least: any upper bound of both is above the merge.
        if matches!(a.compare(&c), Causality::Before | Causality::Equal)
            && matches!(b.compare(&c), Causality::Before | Causality::Equal)
        {
            prop_assert!(matches!(ab.compare(&c), Causality::Before | Causality::Equal));
        }
    }

    #[test]
    fn matrix_merge_is_commutative_and_idempotent(a in matrix(3), b in matrix(3), c in matrix(3)) {
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        prop_assert_eq!(&ab, &ba);
        let mut aa = a.clone();
        aa.merge(&a);
        prop_assert_eq!(&aa, &a);
        let mut ab_c = ab.clone();
        ab_c.merge(&c);
        let mut bc = b.clone();
        bc.merge(&c);
        let mut a_bc = a.clone();
        a_bc.merge(&bc);
        prop_assert_eq!(&ab_c, &a_bc);
        prop_assert!(matches!(a.compare(&ab), Causality::Before | Causality::Equal));
    }

    #[test]
    fn encodings_round_trip(v in vector(), m in matrix(4), t in any::<u64>(), p in any::<u64>()) {
        prop_assert_eq!(&VectorClock::decode(&v.to_bytes()).unwrap(), &v);
        prop_assert_eq!(&v.to_string().parse::<VectorClock>().unwrap(), &v);
        prop_assert_eq!(&MatrixClock::decode(&m.to_bytes()).unwrap(), &m);
        let l = LamportTimestamp { time: t, process: p };
        prop_assert_eq!(LamportTimestamp::decode(&l.to_bytes()).unwrap(), l);
        prop_assert_eq!(l.to_string().parse::<LamportTimestamp>().unwrap(), l);
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = VectorClock::decode(&bytes);
        let _ = MatrixClock::decode(&bytes);
        let _ = LamportTimestamp::decode(&bytes);
        // A strict prefix of a valid stamp is always refused.
        let v = VectorClock::from_counters(vec![300, 1, 70000]);
        let full = v.to_bytes();
        for cut in 0..full.len() {
            prop_assert!(VectorClock::decode(&full[..cut]).is_err());
        }
    }
}
