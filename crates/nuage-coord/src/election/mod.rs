//! Chang-Roberts election on a unidirectional ring, then numbering.
//!
//! [`Process`] is the algorithm as a pure state machine: it takes one event (start, or a
//! message from its predecessor) and returns the messages to send to its successor. The
//! same code runs in the seeded simulator ([`sim`]) and over real sockets.
//!
//! - **Election.** An initiator that is not yet a participant becomes one and sends
//!   `Election(own id)`. On `Election(j)`: if `j > id`, forward it (and participate); if
//!   `j < id` and not yet participating, replace it by `Election(id)`; if `j < id` and
//!   already participating, swallow it; if `j == id`, this process has the largest id:
//!   it is the leader and sends `Elected(id)`.
//! - **Announcement.** `Elected(j)` goes once around the ring; each process records the
//!   leader. When it comes back to the leader, the leader takes rank 0 and sends
//!   `Token(1)`.
//! - **Numbering.** On `Token(v)` a process takes rank `v` and sends `Token(v + 1)`; when
//!   the token comes back to the leader, `v` is the number of processes N.
//!
//! Ids must be distinct (the leader is the unique maximum). Messages: the election phase
//! costs N·H_N ≈ N ln N messages on average over random id orders when every process
//! initiates, N(N+1)/2 in the worst case (ids decreasing along the ring) and 2N−1 at best;
//! announcement and numbering cost N each.

pub mod sim;

use serde::{Deserialize, Serialize};

/// A process identifier; the largest one wins.
pub type Id = u64;

/// The messages of election and numbering, sent to the ring successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// Candidate `id` is the largest seen so far on its way.
    Election { id: Id },
    /// The leader is `id`.
    Elected { id: Id },
    /// The numbering token: the receiver's rank is `value`.
    Token { value: u32 },
}

impl Message {
    /// The kind of message, as printed and counted.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Election { .. } => Kind::Election,
            Message::Elected { .. } => Kind::Elected,
            Message::Token { .. } => Kind::Token,
        }
    }
}

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Election { id } => write!(f, "election({id})"),
            Message::Elected { id } => write!(f, "elected({id})"),
            Message::Token { value } => write!(f, "token({value})"),
        }
    }
}

/// Message kinds, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Election,
    Elected,
    Token,
}

/// Something wrong with the messages a process received: the ring is broken (two
/// processes with the same id, a lost or duplicated message). The run is aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// One process of the ring.
#[derive(Debug, Clone)]
pub struct Process {
    id: Id,
    participant: bool,
    leader: Option<Id>,
    rank: Option<u32>,
    /// The number of processes, known to the leader once the token came back.
    size: Option<u32>,
}

impl Process {
    pub fn new(id: Id) -> Self {
        Process {
            id,
            participant: false,
            leader: None,
            rank: None,
            size: None,
        }
    }

    pub fn id(&self) -> Id {
        self.id
    }
    pub fn leader(&self) -> Option<Id> {
        self.leader
    }
    pub fn rank(&self) -> Option<u32> {
        self.rank
    }
    pub fn is_leader(&self) -> bool {
        self.leader == Some(self.id)
    }
    /// N, known to the leader at the end.
    pub fn size(&self) -> Option<u32> {
        self.size
    }
    /// True when this process will neither send nor expect anything more: it has its
    /// rank, and the leader also knows N.
    pub fn is_done(&self) -> bool {
        self.rank.is_some() && (!self.is_leader() || self.size.is_some())
    }

    /// This process initiates an election (no effect if it already participates).
    pub fn start(&mut self) -> Option<Message> {
        if self.participant || self.leader.is_some() {
            return None;
        }
        self.participant = true;
        Some(Message::Election { id: self.id })
    }

    /// Handles a message from the predecessor; returns the one to send on, if any.
    pub fn receive(&mut self, msg: Message) -> Result<Option<Message>, ProtocolError> {
        match msg {
            Message::Election { id } => {
                if self.leader.is_some() && id != self.id {
                    return Err(self.err(format!("election({id}) after the leader is known")));
                }
                if id > self.id {
                    self.participant = true;
                    Ok(Some(msg))
                } else if id < self.id {
                    if self.participant {
                        Ok(None)
                    } else {
                        self.participant = true;
                        Ok(Some(Message::Election { id: self.id }))
                    }
                } else {
                    if !self.participant || self.leader.is_some() {
                        return Err(self.err(
                            "received its own id without having sent it (duplicate ids?)".into(),
                        ));
                    }
                    self.leader = Some(self.id);
                    Ok(Some(Message::Elected { id: self.id }))
                }
            }
            Message::Elected { id } => {
                if id == self.id {
                    if !self.is_leader() || self.rank.is_some() {
                        return Err(self.err("elected(own id) unexpected".into()));
                    }
                    self.participant = false;
                    self.rank = Some(0);
                    Ok(Some(Message::Token { value: 1 }))
                } else {
                    if self.leader.is_some() {
                        return Err(self.err(format!("second elected({id})")));
                    }
                    if id < self.id {
                        return Err(self.err(format!("elected({id}) names a smaller id")));
                    }
                    self.leader = Some(id);
                    self.participant = false;
                    Ok(Some(msg))
                }
            }
            Message::Token { value } => {
                if self.leader.is_none() {
                    return Err(self.err(format!("token({value}) before any leader")));
                }
                if self.is_leader() {
                    if self.size.is_some() {
                        return Err(self.err("numbering token came back twice".into()));
                    }
                    self.size = Some(value);
                    Ok(None)
                } else {
                    if self.rank.is_some() {
                        return Err(self.err(format!("second token({value})")));
                    }
                    self.rank = Some(value);
                    let next = value
                        .checked_add(1)
                        .ok_or_else(|| self.err("token overflow".into()))?;
                    Ok(Some(Message::Token { value: next }))
                }
            }
        }
    }

    fn err(&self, what: String) -> ProtocolError {
        ProtocolError(format!("process {}: {what}", self.id))
    }
}

#[cfg(test)]
mod tests;
