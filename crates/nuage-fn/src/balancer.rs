//! Placing a new connection on one of the machines that run its function (this one
//! included): round-robin in the order of the machines' names, or least-connections
//! counting the connections this machine has placed and that are still open (as an
//! HAProxy instance counts its own). The other machines follow as fallbacks, in turn, so
//! a connection that cannot be placed on the chosen machine goes to the next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::spec::Balance;

/// Where a connection can be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// On this machine.
    Local,
    /// On another machine, through its relay at `host:port`.
    Peer { host: String, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub machine: String,
    pub target: Target,
}

#[derive(Default)]
pub struct Balancer {
    /// Per function: how many connections were placed round-robin.
    turns: Mutex<HashMap<String, usize>>,
    /// Per (function, machine): connections placed there and still open.
    open: Mutex<HashMap<(String, String), u32>>,
}

/// Counts a connection as open on a machine until dropped.
pub struct Placed {
    balancer: Arc<Balancer>,
    key: (String, String),
}

impl Drop for Placed {
    fn drop(&mut self) {
        let mut open = self.balancer.open.lock().expect("balancer lock poisoned");
        let n = open
            .get_mut(&self.key)
            .expect("a placed connection is counted");
        *n -= 1;
        if *n == 0 {
            open.remove(&self.key);
        }
    }
}

impl Balancer {
    /// `machines` (sorted by name, at least one) in the order to try for a new
    /// connection of `function`.
    pub fn order(
        &self,
        function: &str,
        policy: Balance,
        mut machines: Vec<Candidate>,
    ) -> Vec<Candidate> {
        assert!(!machines.is_empty(), "placing a connection needs a machine");
        assert!(
            machines.windows(2).all(|w| w[0].machine < w[1].machine),
            "candidates are sorted by machine name"
        );
        let turn = {
            let mut turns = self.turns.lock().expect("balancer lock poisoned");
            let t = turns.entry(function.to_owned()).or_insert(0);
            let turn = *t;
            *t = t.wrapping_add(1);
            turn
        };
        let n = machines.len();
        machines.rotate_left(turn % n);
        if policy == Balance::LeastConns {
            let open = self.open.lock().expect("balancer lock poisoned");
            // A stable sort keeps the round-robin order among equals.
            machines.sort_by_key(|c| {
                open.get(&(function.to_owned(), c.machine.clone()))
                    .copied()
                    .unwrap_or(0)
            });
        }
        machines
    }

    /// Counts a connection of `function` as open on `machine` while the guard lives.
    pub fn placed(self: &Arc<Self>, function: &str, machine: &str) -> Placed {
        let key = (function.to_owned(), machine.to_owned());
        *self
            .open
            .lock()
            .expect("balancer lock poisoned")
            .entry(key.clone())
            .or_insert(0) += 1;
        Placed {
            balancer: self.clone(),
            key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machines(names: &[&str]) -> Vec<Candidate> {
        names
            .iter()
            .map(|n| Candidate {
                machine: n.to_string(),
                target: if *n == "n1" {
                    Target::Local
                } else {
                    Target::Peer {
                        host: n.to_string(),
                        port: 1,
                    }
                },
            })
            .collect()
    }

    fn firsts(b: &Balancer, policy: Balance, names: &[&str], n: usize) -> Vec<String> {
        (0..n)
            .map(|_| b.order("f", policy, machines(names))[0].machine.clone())
            .collect()
    }

    #[test]
    fn round_robin_alternates_and_falls_back_in_turn() {
        let b = Balancer::default();
        assert_eq!(
            firsts(&b, Balance::RoundRobin, &["n1", "n2"], 4),
            ["n1", "n2", "n1", "n2"]
        );
        // Turn 4 of 3 machines: n2 first, then the others in turn as fallbacks.
        let order = b.order("f", Balance::RoundRobin, machines(&["n1", "n2", "n3"]));
        let names: Vec<_> = order.iter().map(|c| c.machine.as_str()).collect();
        assert_eq!(names, ["n2", "n3", "n1"]);
        // Each function has its own turn.
        assert_eq!(firsts(&b, Balance::RoundRobin, &["n1", "n2"], 1), ["n2"]);
        let g = b.order("g", Balance::RoundRobin, machines(&["n1", "n2"]));
        assert_eq!(g[0].machine, "n1");
    }

    #[test]
    fn least_conns_prefers_the_emptiest() {
        let b = Arc::new(Balancer::default());
        let _a = b.placed("f", "n1");
        let _c = b.placed("f", "n1");
        let d = b.placed("f", "n2");
        assert_eq!(
            firsts(&b, Balance::LeastConns, &["n1", "n2", "n3"], 2),
            ["n3", "n3"]
        );
        let _e = b.placed("f", "n3");
        let _g = b.placed("f", "n3");
        assert_eq!(
            firsts(&b, Balance::LeastConns, &["n1", "n2", "n3"], 1),
            ["n2"]
        );
        drop(d);
        assert_eq!(
            firsts(&b, Balance::LeastConns, &["n1", "n2", "n3"], 1),
            ["n2"]
        );
        // Other functions are counted apart.
        assert!(b.order("g", Balance::LeastConns, machines(&["n1"])).len() == 1);
    }
}
