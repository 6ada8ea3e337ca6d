//! Causal delivery of point-to-point messages with matrix clocks (Raynal, Schiper and
//! Toueg 1991), between mail servers.
//!
//! The processes are the **servers** (one per domain, numbered as in
//! [`Directory`](crate::servers::Directory)), not the users: a user sends and reads only
//! at the server of their own domain, so anything a user has seen was delivered at that
//! server before the user's next message was sent there. Causality between users is
//! therefore contained in causality between servers (the server-level order may add
//! dependencies, never lose one), and the matrix is `domains × domains` whatever the
//! number of users.
//!
//! Server `i` keeps a count matrix `M`: `M[k][l]` is the number of messages server `k`
//! has sent to server `l`, as far as `i` knows. Column `i` is special: `M[k][i]` is the
//! number of messages from `k` that `i` has delivered (see [`absorb`]).
//!
//! - **Send** one message to the set of remote domains `D`: `M[i][d] += 1` for every
//!   `d ∈ D`, then every copy carries the same stamp `ST = M`. Counting all copies
//!   before stamping any of them makes each copy say that the others were sent first.
//! - **Deliver** at `i` a copy from `j` stamped `ST` when it is the next one on the link
//!   (`ST[j][i] = M[j][i] + 1`) and nothing sent to `i` before it is missing
//!   (`ST[k][i] ≤ M[k][i]` for every `k ≠ j`); then `M = max(M, ST)`. Otherwise hold
//!   it back. A copy with `ST[j][i] ≤ M[j][i]` was delivered already (a retried
//!   forward whose acknowledgement was lost): drop it.
//!
//! In [`Order::Fifo`] mode only the link condition is checked: messages from one server
//! stay in order, messages from different servers are delivered as they come.

use nuage_coord::clock::MatrixClock;

/// How a server orders the delivery of mail from other servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Causal order (matrix clocks): the default.
    #[default]
    Causal,
    /// FIFO per link only: what TCP and sequence numbers give without clocks.
    Fifo,
}

impl std::str::FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "causal" => Ok(Order::Causal),
            "fifo" => Ok(Order::Fifo),
            _ => Err(format!("`{s}` is not an order (causal or fifo)")),
        }
    }
}

impl std::fmt::Display for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Order::Causal => "causal",
            Order::Fifo => "fifo",
        })
    }
}

/// What to do with a message that just arrived (or is waiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// Something it depends on has not arrived: keep it back.
    Hold,
    /// Already delivered: drop it.
    Duplicate,
}

/// Checks that `stamp` is a stamp `from` may have sent to `clock`'s owner: same size,
/// stamped by `from`, counting at least this message on the link.
pub fn check_stamp(clock: &MatrixClock, from: usize, stamp: &MatrixClock) -> Result<(), String> {
    if stamp.n() != clock.n() {
        return Err(format!(
            "the stamp is a {0}×{0} matrix, this server's is {1}×{1}",
            stamp.n(),
            clock.n()
        ));
    }
    if stamp.me() != from {
        return Err(format!(
            "the stamp was made by process {}, not by the sender {from}",
            stamp.me()
        ));
    }
    if from == clock.me() {
        return Err("a server does not forward mail to itself".into());
    }
    if stamp.get(from, clock.me()) == 0 {
        return Err("the stamp does not count the message itself".into());
    }
    Ok(())
}

/// Whether the message from `from` stamped `stamp` can be delivered now.
pub fn verdict(order: Order, clock: &MatrixClock, from: usize, stamp: &MatrixClock) -> Verdict {
    let me = clock.me();
    let on_link = stamp.get(from, me);
    let delivered = clock.get(from, me);
    if on_link <= delivered {
        return Verdict::Duplicate;
    }
    if on_link > delivered + 1 {
        return Verdict::Hold;
    }
    if order == Order::Causal
        && (0..clock.n()).any(|k| k != from && stamp.get(k, me) > clock.get(k, me))
    {
        return Verdict::Hold;
    }
    Verdict::Deliver
}

/// Records the delivery of the message from `from` stamped `stamp` (whose verdict was
/// [`Verdict::Deliver`]). In causal mode, `M = max(M, ST)`: column `me` stays the count
/// of delivered messages because `ST[k][me] ≤ M[k][me]` for `k ≠ from` and
/// `ST[from][me] = M[from][me] + 1`. In FIFO mode the delivery count is set directly
/// and column `me` is not merged (the stamp may count messages not delivered yet),
/// while the rest of the knowledge is still merged, so this server's own stamps stay
/// complete for servers that order causally.
pub fn absorb(order: Order, clock: &mut MatrixClock, from: usize, stamp: &MatrixClock) {
    let me = clock.me();
    let on_link = stamp.get(from, me);
    assert_eq!(
        on_link,
        clock.get(from, me) + 1,
        "absorbing a message that is not the next on its link"
    );
    match order {
        Order::Causal => clock.merge(stamp),
        Order::Fifo => {
            for k in 0..clock.n() {
                for l in (0..clock.n()).filter(|&l| l != me) {
                    let v = clock.get(k, l).max(stamp.get(k, l));
                    clock.set(k, l, v);
                }
            }
            clock.set(from, me, on_link);
        }
    }
}

/// Counts one message from `clock`'s owner to each of `destinations` and returns the
/// stamp every copy carries.
pub fn stamp_send(clock: &mut MatrixClock, destinations: &[usize]) -> MatrixClock {
    let me = clock.me();
    for &d in destinations {
        assert_ne!(d, me, "local mail is not stamped");
        clock.increment(me, d);
    }
    clock.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: usize = 0;
    const B: usize = 1;
    const N: usize = 2;

    #[test]
    fn the_three_domain_scenario() {
        let mut a = MatrixClock::new(3, A);
        let mut b = MatrixClock::new(3, B);
        let mut n = MatrixClock::new(3, N);
        // Afida (a) writes to Brandon (b) and Nabilla (n): one message, two copies.
        let st_a = stamp_send(&mut a, &[B, N]);
        // b receives its copy at once and delivers it.
        check_stamp(&b, A, &st_a).unwrap();
        assert_eq!(verdict(Order::Causal, &b, A, &st_a), Verdict::Deliver);
        absorb(Order::Causal, &mut b, A, &st_a);
        // Brandon replies to both.
        let st_b = stamp_send(&mut b, &[A, N]);
        // n gets the reply first (the a→n link is slow): it must wait.
        assert_eq!(verdict(Order::Causal, &n, B, &st_b), Verdict::Hold);
        // With FIFO only, it would be delivered at once: the wrong order.
        assert_eq!(verdict(Order::Fifo, &n, B, &st_b), Verdict::Deliver);
        // Afida's copy arrives: deliverable, and then so is the reply.
        assert_eq!(verdict(Order::Causal, &n, A, &st_a), Verdict::Deliver);
        absorb(Order::Causal, &mut n, A, &st_a);
        assert_eq!(verdict(Order::Causal, &n, B, &st_b), Verdict::Deliver);
        absorb(Order::Causal, &mut n, B, &st_b);
        // A retried copy is recognised.
        assert_eq!(verdict(Order::Causal, &n, A, &st_a), Verdict::Duplicate);
        assert_eq!((n.get(A, N), n.get(B, N)), (1, 1));
    }

    #[test]
    fn bad_stamps_are_refused() {
        let mut a = MatrixClock::new(3, A);
        let n = MatrixClock::new(3, N);
        assert!(
            check_stamp(&n, A, &a.clone())
                .unwrap_err()
                .contains("does not count")
        );
        let st = stamp_send(&mut a, &[N]);
        assert!(
            check_stamp(&n, B, &st)
                .unwrap_err()
                .contains("not by the sender")
        );
        assert!(
            check_stamp(&MatrixClock::new(2, 1), A, &st)
                .unwrap_err()
                .contains("3×3")
        );
        check_stamp(&n, A, &st).unwrap();
    }

    /// A small seeded generator (xorshift64*), so every run is replayable.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// One copy in flight: destination, sender, stamp, and the ground-truth vector
    /// clock of its send event (events: sends and deliveries at every server).
    struct Copy {
        to: usize,
        from: usize,
        stamp: MatrixClock,
        sent_vc: Vec<u64>,
        id: usize,
    }

    fn before(x: &[u64], y: &[u64]) -> bool {
        x.iter().zip(y).all(|(a, b)| a <= b) && x != y
    }

    /// Runs a random execution: servers send to random sets of others, copies arrive in
    /// random order (and some twice). Returns the number of causality violations seen
    /// by receivers (a message delivered before one sent causally before it to the
    /// same server).
    fn simulate(order: Order, seed: u64, servers: usize, messages: usize) -> usize {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut clocks: Vec<MatrixClock> =
            (0..servers).map(|i| MatrixClock::new(servers, i)).collect();
        let mut vcs: Vec<Vec<u64>> = vec![vec![0; servers]; servers];
        let mut in_flight: Vec<Copy> = Vec::new();
        let mut held: Vec<Vec<Copy>> = (0..servers).map(|_| Vec::new()).collect();
        // Per receiver: (send vc, id) of every message delivered there.
        let mut delivered: Vec<Vec<(Vec<u64>, usize)>> = vec![Vec::new(); servers];
        // Per receiver: every message ever sent to it (send vc, id).
        let mut sent_to: Vec<Vec<(Vec<u64>, usize)>> = vec![Vec::new(); servers];
        let mut violations = 0;
        let mut sent = 0;
        while sent < messages || !in_flight.is_empty() {
            if sent < messages && (in_flight.is_empty() || rng.below(3) == 0) {
                let from = rng.below(servers);
                let mut dests: Vec<usize> = (0..servers)
                    .filter(|&d| d != from && rng.below(2) == 0)
                    .collect();
                if dests.is_empty() {
                    dests.push((from + 1) % servers);
                }
                vcs[from][from] += 1;
                let stamp = stamp_send(&mut clocks[from], &dests);
                for &to in &dests {
                    sent_to[to].push((vcs[from].clone(), sent));
                    in_flight.push(Copy {
                        to,
                        from,
                        stamp: stamp.clone(),
                        sent_vc: vcs[from].clone(),
                        id: sent,
                    });
                }
                sent += 1;
                continue;
            }
            // Deliver a random copy in flight (sometimes leaving a duplicate behind).
            let k = rng.below(in_flight.len());
            let copy = if rng.below(10) == 0 {
                let c = &in_flight[k];
                Copy {
                    to: c.to,
                    from: c.from,
                    stamp: c.stamp.clone(),
                    sent_vc: c.sent_vc.clone(),
                    id: c.id,
                }
            } else {
                in_flight.swap_remove(k)
            };
            let to = copy.to;
            check_stamp(&clocks[to], copy.from, &copy.stamp).unwrap();
            held[to].push(copy);
            // Deliver everything deliverable at `to`.
            loop {
                let ready = held[to]
                    .iter()
                    .position(|c| verdict(order, &clocks[to], c.from, &c.stamp) != Verdict::Hold);
                let Some(p) = ready else { break };
                let c = held[to].remove(p);
                match verdict(order, &clocks[to], c.from, &c.stamp) {
                    Verdict::Duplicate => continue,
                    Verdict::Deliver => {}
                    Verdict::Hold => unreachable!(),
                }
                absorb(order, &mut clocks[to], c.from, &c.stamp);
                for (i, v) in c.sent_vc.iter().enumerate() {
                    vcs[to][i] = vcs[to][i].max(*v);
                }
                vcs[to][to] += 1;
                // Every message sent to `to` causally before this one must be delivered.
                let missing = sent_to[to].iter().any(|(vc, id)| {
                    before(vc, &c.sent_vc) && !delivered[to].iter().any(|(_, d)| d == id)
                });
                if missing {
                    violations += 1;
                }
                assert!(
                    !delivered[to].iter().any(|(_, d)| *d == c.id),
                    "seed {seed}: message {} delivered twice",
                    c.id
                );
                delivered[to].push((c.sent_vc, c.id));
            }
        }
        // Liveness: nothing stays held back once everything has arrived.
        for (to, h) in held.iter().enumerate() {
            assert!(
                h.iter()
                    .all(|c| verdict(order, &clocks[to], c.from, &c.stamp) == Verdict::Duplicate),
                "seed {seed}: server {to} still holds {} message(s)",
                h.len()
            );
            assert_eq!(delivered[to].len(), sent_to[to].len(), "seed {seed}");
        }
        violations
    }

    #[test]
    fn random_executions_deliver_everything_in_causal_order() {
        for seed in 0..300 {
            assert_eq!(simulate(Order::Causal, seed, 4, 40), 0, "seed {seed}");
        }
    }

    #[test]
    fn fifo_alone_violates_causality_in_random_executions() {
        let violations: usize = (0..100)
            .map(|seed| simulate(Order::Fifo, seed, 4, 40))
            .sum();
        assert!(violations > 0, "FIFO never reordered causally related mail");
    }
}
