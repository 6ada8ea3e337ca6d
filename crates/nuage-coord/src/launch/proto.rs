//! What the launcher and its processes say to each other (frames of [`crate::frame`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::election;

/// From a launched process to the launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToLauncher {
    /// The process is up: its number, pid, host name and the port it listens on.
    Hello {
        index: u32,
        pid: u32,
        host: String,
        port: u16,
    },
    /// Its ring links are up (one to the successor, one from the predecessor).
    Ready,
    /// The pid message came back to its origin: every process's (host, pid), in ring
    /// order from the origin.
    Circulated { pids: Vec<(String, u32)> },
    /// This process's end of the election.
    Elected(ElectionReport),
    /// (token ring) This process has written all its `records` records, having seen the
    /// token `visits` times; it keeps passing the token until told to stop.
    TokenDone { records: u32, visits: u64 },
    /// (token ring) Something worth telling: a repaired ring, a regenerated token.
    TokenNote { text: String },
    /// (token ring) This process excluded `index`, its predecessor, after it stayed
    /// silent longer than the token timeout: the launcher no longer waits for it.
    TokenExcluded { index: u32 },
    /// The process gives up (the error says why); it exits after sending this.
    Failed { error: String },
    /// (snapshot) This process's part of `snapshot`: units held when it recorded its
    /// state, and units in flight on its incoming channels.
    Recorded {
        snapshot: u64,
        units: u64,
        in_flight: u64,
    },
    /// (detector) A detector's lists changed.
    Lists { alive: Vec<u32>, dead: Vec<u32> },
    /// (exec) The program runs, with this pid.
    Running { pid: u32 },
    /// (exec) The program ended: its exit code, or the signal that ended it; `stopped`
    /// when the launcher asked for it.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        stopped: bool,
    },
}

/// What one process knows at the end of an election.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionReport {
    pub id: election::Id,
    pub leader: election::Id,
    pub rank: u32,
    /// N, known by the leader only.
    pub size: Option<u32>,
    /// Every message this process sent, in order.
    pub sent: Vec<election::Message>,
}

/// How the ring is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bootstrap {
    /// Each process knows only its predecessor in launch order and connects to it; the
    /// last process's address travels back up the chain to the first, which closes the
    /// ring by connecting to the last.
    Chain,
    /// Every process is given the first one's address; it joins there and the first
    /// tells each its successor (in order of arrival).
    First,
}

/// What to run once the ring is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Process 0 sends a message around; each appends its pid.
    Circulate,
    /// Chang-Roberts with this process's id; `initiator` starts it.
    Election { id: election::Id, initiator: bool },
    /// Token-ring mutual exclusion: append `records` records of `lines` lines each to
    /// `file`, one record per token visit.
    TokenMutex {
        file: std::path::PathBuf,
        records: u32,
        lines: u32,
        /// How long the predecessor may stay silent before it is excluded (ms).
        token_timeout_ms: u64,
    },
}

/// The launcher's orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToProcess {
    /// Build the ring: `n` processes; `contact` is the predecessor's address (chain,
    /// except process 0) or the first's (first, except process 0).
    Ring {
        n: u32,
        bootstrap: Bootstrap,
        contact: Option<SocketAddr>,
        algorithm: Algorithm,
    },
    /// Run `program args…` (no shell), output to this process's log; `n` processes in
    /// all (given to the program as `NUAGE_LAUNCH_SIZE`, its number as
    /// `NUAGE_LAUNCH_INDEX`).
    Exec {
        n: u32,
        program: String,
        args: Vec<String>,
    },
    /// Run the failure detector: `members[i]` is process i's address.
    Detect {
        members: Vec<SocketAddr>,
        period_ms: u64,
        threshold: u64,
    },
    /// Connect to every other process for snapshots (then report ready).
    Snapshots {
        members: Vec<SocketAddr>,
        mode: crate::snapshot::Mode,
        max_delay_us: u64,
        dir: std::path::PathBuf,
    },
    /// Initiate snapshot number `snapshot`.
    SnapshotStart { snapshot: u64 },
    /// Every process is ready: run the algorithm.
    Go,
    /// Stop and exit.
    Stop,
}
