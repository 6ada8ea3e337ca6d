//! Chandy-Lamport snapshots over a complete graph of launched processes.
//!
//! The application conserves a quantity: every process starts with [`INITIAL_UNITS`]
//! units and, in a loop, waits on its channels with a timeout, then sends a random part
//! of its units to a random peer (`transfer`). The total is constant, so every consistent
//! snapshot must record exactly N × [`INITIAL_UNITS`]: the units each process holds when
//! it records its state, plus the units in flight on each channel.
//!
//! The snapshot ([`Recorder`], pure logic): the initiator records its state and sends a
//! marker on every outgoing channel; a process receiving the first marker of a snapshot
//! on channel c records its state, records c as empty, sends markers on every outgoing
//! channel and records every other incoming channel until that channel's marker comes;
//! transfers received on a channel being recorded are its in-flight messages. Channels are
//! FIFO (one TCP connection per direction, one writer task per channel), which the
//! algorithm needs. Non-blocking (the classic one): the application keeps sending while a
//! snapshot is in progress. Blocking (the variant of the classic lab): a process sends no
//! transfer from the moment it records its state until its local snapshot is complete.
//! Messages: N(N − 1) markers per snapshot.

pub mod drive;
pub mod run;

pub use run::run_member;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Units each process starts with.
pub const INITIAL_UNITS: u64 = 1_000;
/// Most units moved by one transfer.
pub const MAX_TRANSFER: u64 = 25;

/// Blocking or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Blocking,
    Nonblocking,
}

/// What travels on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelMsg {
    /// First message: the sender's number.
    Hello {
        from: u32,
    },
    Transfer {
        units: u64,
    },
    Marker {
        snapshot: u64,
    },
}

/// One process's recording of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub snapshot: u64,
    pub process: u32,
    /// Units held when the state was recorded.
    pub units: u64,
    /// Per incoming channel (by sender), the transfers in flight.
    pub channels: BTreeMap<u32, Vec<u64>>,
}

impl Checkpoint {
    pub fn in_flight(&self) -> u64 {
        self.channels.values().flatten().sum()
    }
}

/// Chandy-Lamport's local part for one process, one snapshot at a time.
#[derive(Debug, Clone)]
pub struct Recorder {
    me: u32,
    peers: Vec<u32>,
    current: Option<(Checkpoint, BTreeSet<u32>)>,
    last_done: u64,
}

/// What the process must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing more.
    None,
    /// Send `marker(snapshot)` on every outgoing channel.
    SendMarkers(u64),
    /// Send markers, and the local snapshot is already complete (no incoming channel to
    /// wait for).
    SendMarkersAndDone(u64, Checkpoint),
    /// The local snapshot is complete.
    Done(Checkpoint),
}

impl Recorder {
    pub fn new(me: u32, peers: Vec<u32>) -> Self {
        Recorder {
            me,
            peers,
            current: None,
            last_done: 0,
        }
    }

    /// True while a snapshot is being recorded here.
    pub fn recording(&self) -> bool {
        self.current.is_some()
    }

    /// Records the state (`units`) for `snapshot`, waiting for markers on all incoming
    /// channels except `except`.
    fn record(&mut self, snapshot: u64, units: u64, except: Option<u32>) -> Effect {
        let waiting: BTreeSet<u32> = self
            .peers
            .iter()
            .copied()
            .filter(|p| Some(*p) != except)
            .collect();
        let cp = Checkpoint {
            snapshot,
            process: self.me,
            units,
            channels: self.peers.iter().map(|p| (*p, Vec::new())).collect(),
        };
        if waiting.is_empty() {
            self.last_done = snapshot;
            Effect::SendMarkersAndDone(snapshot, cp)
        } else {
            self.current = Some((cp, waiting));
            Effect::SendMarkers(snapshot)
        }
    }

    /// This process initiates `snapshot` holding `units`.
    pub fn initiate(&mut self, snapshot: u64, units: u64) -> Result<Effect, String> {
        if self.current.is_some() || snapshot <= self.last_done {
            return Err(format!("snapshot {snapshot} cannot start now"));
        }
        Ok(self.record(snapshot, units, None))
    }

    /// A marker of `snapshot` arrived from `from`; `units` is the current state.
    pub fn marker(&mut self, from: u32, snapshot: u64, units: u64) -> Result<Effect, String> {
        match &mut self.current {
            None => {
                if snapshot <= self.last_done {
                    return Err(format!(
                        "marker of finished snapshot {snapshot} from {from}"
                    ));
                }
                Ok(self.record(snapshot, units, Some(from)))
            }
            Some((cp, waiting)) => {
                if cp.snapshot != snapshot {
                    return Err(format!(
                        "marker of snapshot {snapshot} during snapshot {}",
                        cp.snapshot
                    ));
                }
                if !waiting.remove(&from) {
                    return Err(format!("second marker from {from}"));
                }
                if waiting.is_empty() {
                    let (cp, _) = self.current.take().expect("some");
                    self.last_done = snapshot;
                    Ok(Effect::Done(cp))
                } else {
                    Ok(Effect::None)
                }
            }
        }
    }

    /// A transfer arrived from `from`: in flight if that channel is being recorded.
    pub fn transfer(&mut self, from: u32, units: u64) {
        if let Some((cp, waiting)) = &mut self.current {
            if waiting.contains(&from) {
                cp.channels.entry(from).or_default().push(units);
            }
        }
    }
}

#[cfg(test)]
mod tests;
