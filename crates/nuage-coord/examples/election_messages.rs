//! How many messages Chang-Roberts needs on average, measured by the seeded simulator.
//!
//! `cargo run --release -p nuage-coord --example election_messages -- [TRIALS] [SEED]`
//!
//! For each N: random id orders along the ring, every process initiating before the first
//! delivery; prints the mean, min and max election messages, N·H_N (the expected value),
//! N ln N, the worst case N(N+1)/2, and the mean of all messages (election + elected +
//! numbering token).

use nuage_coord::election::sim::{self, Initiators};

const DEFAULT_TRIALS: usize = 2000;
const SIZES: [usize; 8] = [4, 8, 16, 32, 64, 128, 256, 512];

fn main() {
    let mut args = std::env::args().skip(1);
    let trials: usize = args
        .next()
        .map(|a| a.parse().expect("TRIALS must be a number"))
        .unwrap_or(DEFAULT_TRIALS);
    let seed: u64 = args
        .next()
        .map(|a| a.parse().expect("SEED must be a number"))
        .unwrap_or(1);
    println!("trials per N: {trials}, seed: {seed}, every process initiates");
    println!(
        "{:>5} {:>10} {:>6} {:>6} {:>10} {:>9} {:>8} {:>9} {:>10}",
        "N", "mean", "min", "max", "N*H_N", "mean/NHN", "N ln N", "N(N+1)/2", "mean all"
    );
    for (k, &n) in SIZES.iter().enumerate() {
        let s = sim::measure(n, trials, Initiators::All, seed.wrapping_add(k as u64));
        let nh = n as f64 * sim::harmonic(n);
        println!(
            "{:>5} {:>10.1} {:>6} {:>6} {:>10.1} {:>9.3} {:>8.1} {:>9} {:>10.1}",
            n,
            s.mean_election,
            s.min_election,
            s.max_election,
            nh,
            s.mean_election / nh,
            n as f64 * (n as f64).ln(),
            n * (n + 1) / 2,
            s.mean_total
        );
    }
    println!();
    println!("one initiator at a random position:");
    for (k, &n) in SIZES.iter().enumerate() {
        let s = sim::measure(
            n,
            trials,
            Initiators::One,
            seed.wrapping_add(100 + k as u64),
        );
        println!(
            "{:>5} mean {:>8.1}  min {:>5}  max {:>5}",
            n, s.mean_election, s.min_election, s.max_election
        );
    }
}
