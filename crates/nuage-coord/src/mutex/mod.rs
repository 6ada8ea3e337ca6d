//! Central mutual exclusion: one server grants a lock first come, first served.
//!
//! A client connects, sends `acquire`, waits for `granted`, does its critical section and
//! sends `release` (or closes). The lock belongs to the TCP session: a client that dies
//! (crash, kill) while holding or waiting loses its place when the kernel closes its
//! socket, and the next waiter is granted. Requests are numbered (tickets) in the order
//! the server receives them, and grants follow ticket order: the log shows it.
//!
//! Wire: frames of [`crate::frame`], [`Request`] from the client, [`Reply`] from the
//! server. Limits: [`MAX_CLIENTS`] sessions at once; a session must send its `acquire`
//! within [`HELLO_TIMEOUT`].

mod client;
mod server;

pub use client::{Holder, acquire, run_locked};
pub use server::{Event, MutexServer};

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The server's default TCP port.
pub const DEFAULT_PORT: u16 = 7941;
/// Sessions (holders + waiters) at once; more are refused with an error message.
pub const MAX_CLIENTS: usize = 1024;
/// How long a new session may take to send its `acquire`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest client name kept (longer names are cut).
pub const MAX_NAME: usize = 128;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Ask for the lock; `name` says who is asking (for the log).
    Acquire { name: String },
    /// Give the lock back (the session then ends).
    Release,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The request is number `ticket`; `ahead` sessions hold or wait before it.
    Queued { ticket: u64, ahead: usize },
    /// The lock is yours.
    Granted { ticket: u64 },
    /// The server refuses the session (too many clients, protocol error).
    Refused { reason: String },
}

#[cfg(test)]
mod tests;
