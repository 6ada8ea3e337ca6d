use std::collections::VecDeque;

use super::*;
use crate::rng::SplitMix64;

/// A seeded simulation: N processes move units over FIFO channels in random order while
/// snapshots run one after the other; every snapshot must record the conserved total.
fn simulate(n: u32, snapshots: u64, blocking: bool, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let mut units: Vec<u64> = vec![INITIAL_UNITS; n as usize];
    let mut rec: Vec<Recorder> = (0..n)
        .map(|i| Recorder::new(i, (0..n).filter(|&j| j != i).collect()))
        .collect();
    // channels[from][to]
    let mut chans: Vec<Vec<VecDeque<ChannelMsg>>> =
        vec![vec![VecDeque::new(); n as usize]; n as usize];
    let mut done: Vec<Vec<Checkpoint>> = Vec::new();
    let mut current: Vec<Checkpoint> = Vec::new();
    let mut next_snapshot = 1;
    let mut steps = 0;
    while (done.len() as u64) < snapshots {
        steps += 1;
        assert!(steps < 1_000_000, "no progress");
        match rng.below(10) {
            // Start the next snapshot at a random process, if none is running.
            0 if current.is_empty() && rec.iter().all(|r| !r.recording()) => {
                let i = rng.below(n as usize);
                let eff = rec[i].initiate(next_snapshot, units[i]).unwrap();
                apply(i as u32, n, eff, &mut chans, &mut current);
                next_snapshot += 1;
            }
            // A transfer from a random process.
            1..=4 => {
                let i = rng.below(n as usize);
                if blocking && rec[i].recording() {
                    continue;
                }
                let mut j = rng.below(n as usize - 1);
                if j >= i {
                    j += 1;
                }
                let amount = (rng.below(MAX_TRANSFER as usize) as u64 + 1).min(units[i]);
                if amount > 0 {
                    units[i] -= amount;
                    chans[i][j].push_back(ChannelMsg::Transfer { units: amount });
                }
            }
            // Deliver the oldest message of a random non-empty channel.
            _ => {
                let busy: Vec<(usize, usize)> = (0..n as usize)
                    .flat_map(|a| (0..n as usize).map(move |b| (a, b)))
                    .filter(|&(a, b)| !chans[a][b].is_empty())
                    .collect();
                if busy.is_empty() {
                    continue;
                }
                let (a, b) = busy[rng.below(busy.len())];
                match chans[a][b].pop_front().unwrap() {
                    ChannelMsg::Transfer { units: u } => {
                        units[b] += u;
                        rec[b].transfer(a as u32, u);
                    }
                    ChannelMsg::Marker { snapshot } => {
                        let eff = rec[b].marker(a as u32, snapshot, units[b]).unwrap();
                        apply(b as u32, n, eff, &mut chans, &mut current);
                    }
                    ChannelMsg::Hello { .. } => unreachable!(),
                }
            }
        }
        if current.len() == n as usize {
            done.push(std::mem::take(&mut current));
        }
    }
    let expected = u64::from(n) * INITIAL_UNITS;
    for (k, cps) in done.iter().enumerate() {
        let total: u64 = cps.iter().map(|c| c.units + c.in_flight()).sum();
        assert_eq!(total, expected, "snapshot {} (seed {seed}): {cps:?}", k + 1);
    }
    assert_eq!(units.iter().sum::<u64>() + in_flight(&chans), expected);
}

fn in_flight(chans: &[Vec<VecDeque<ChannelMsg>>]) -> u64 {
    chans
        .iter()
        .flatten()
        .flatten()
        .map(|m| match m {
            ChannelMsg::Transfer { units } => *units,
            _ => 0,
        })
        .sum()
}

fn apply(
    i: u32,
    n: u32,
    eff: Effect,
    chans: &mut [Vec<VecDeque<ChannelMsg>>],
    current: &mut Vec<Checkpoint>,
) {
    let send = |chans: &mut [Vec<VecDeque<ChannelMsg>>], s: u64| {
        for j in (0..n).filter(|&j| j != i) {
            chans[i as usize][j as usize].push_back(ChannelMsg::Marker { snapshot: s });
        }
    };
    match eff {
        Effect::None => {}
        Effect::SendMarkers(s) => send(chans, s),
        Effect::SendMarkersAndDone(s, cp) => {
            send(chans, s);
            current.push(cp);
        }
        Effect::Done(cp) => current.push(cp),
    }
}

#[test]
fn every_snapshot_records_the_conserved_total() {
    for seed in 0..40 {
        let n = 2 + (seed % 7) as u32;
        simulate(n, 25, seed % 2 == 0, seed);
    }
}

#[test]
fn markers_out_of_place_are_errors() {
    let mut r = Recorder::new(0, vec![1, 2]);
    assert_eq!(r.initiate(1, 10).unwrap(), Effect::SendMarkers(1));
    assert!(r.initiate(2, 10).is_err(), "one snapshot at a time");
    r.transfer(1, 4);
    assert_eq!(r.marker(1, 1, 14).unwrap(), Effect::None);
    r.transfer(1, 5); // after 1's marker: not in flight for this snapshot
    r.transfer(2, 3);
    assert!(r.marker(1, 1, 0).is_err(), "second marker on a channel");
    match r.marker(2, 1, 0).unwrap() {
        Effect::Done(cp) => {
            assert_eq!(cp.units, 10);
            assert_eq!(cp.channels[&1], vec![4]);
            assert_eq!(cp.channels[&2], vec![3]);
            assert_eq!(cp.in_flight(), 7);
        }
        other => panic!("{other:?}"),
    }
    assert!(r.marker(1, 1, 0).is_err(), "marker of a finished snapshot");
}
