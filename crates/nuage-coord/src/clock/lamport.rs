//! Lamport's scalar clock ("Time, Clocks, and the Ordering of Events in a Distributed
//! System", 1978).

use super::codec::{DecodeError, Reader, put_varint};

/// The clock of one process: a counter that ticks at every event and jumps past any
/// timestamp it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LamportClock {
    process: u64,
    time: u64,
}

/// A Lamport timestamp: the clock's time at an event and the process it happened on.
///
/// Timestamps are totally ordered by `(time, process)`. That order extends causality
/// (`a → b` implies `a < b`) but does not reveal it: `a < b` may hold for concurrent
/// events, so a Lamport timestamp cannot tell "happened before" from "concurrent".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LamportTimestamp {
    pub time: u64,
    pub process: u64,
}

impl LamportClock {
    /// A clock at time 0 for `process`.
    pub fn new(process: u64) -> Self {
        LamportClock { process, time: 0 }
    }

    pub fn process(&self) -> u64 {
        self.process
    }

    /// The time of the last event (0 before any).
    pub fn time(&self) -> u64 {
        self.time
    }

    /// A local event: advances the clock and returns the event's timestamp.
    pub fn tick(&mut self) -> LamportTimestamp {
        self.time = self
            .time
            .checked_add(1)
            .expect("Lamport clock overflowed u64");
        self.now()
    }

    /// A send is an event; the returned timestamp travels with the message.
    pub fn send(&mut self) -> LamportTimestamp {
        self.tick()
    }

    /// Receiving a message stamped `stamp`: the clock jumps past it, and the receive is
    /// an event after both the sender's send and every earlier local event.
    pub fn receive(&mut self, stamp: LamportTimestamp) -> LamportTimestamp {
        self.time = self.time.max(stamp.time);
        self.tick()
    }

    /// Merges without counting an event (e.g. learning a time by other means).
    pub fn merge(&mut self, stamp: LamportTimestamp) {
        self.time = self.time.max(stamp.time);
    }

    /// The timestamp of the last event.
    pub fn now(&self) -> LamportTimestamp {
        LamportTimestamp {
            time: self.time,
            process: self.process,
        }
    }
}

impl LamportTimestamp {
    /// Appends the binary form: two varints, time then process.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.time);
        put_varint(out, self.process);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes exactly one timestamp from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let stamp = LamportTimestamp {
            time: r.varint()?,
            process: r.varint()?,
        };
        r.finish()?;
        Ok(stamp)
    }
}

impl std::fmt::Display for LamportTimestamp {
    /// `time.process`, e.g. `12.3`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.time, self.process)
    }
}

impl std::str::FromStr for LamportTimestamp {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, DecodeError> {
        let bad = || DecodeError::Syntax(format!("`{s}` is not a Lamport timestamp time.process"));
        let (time, process) = s.trim().split_once('.').ok_or_else(bad)?;
        Ok(LamportTimestamp {
            time: time.parse().map_err(|_| bad())?,
            process: process.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_jumps_past_the_stamp() {
        let mut a = LamportClock::new(0);
        let mut b = LamportClock::new(1);
        for _ in 0..5 {
            a.tick();
        }
        let sent = a.send();
        assert_eq!(sent.time, 6);
        let got = b.receive(sent);
        assert_eq!(got.time, 7);
        assert!(sent < got);
        // A clock ahead of the stamp still ticks.
        let late = b.receive(LamportTimestamp {
            time: 1,
            process: 0,
        });
        assert_eq!(late.time, 8);
    }

    #[test]
    fn ties_are_broken_by_process() {
        let a = LamportTimestamp {
            time: 3,
            process: 0,
        };
        let b = LamportTimestamp {
            time: 3,
            process: 1,
        };
        assert!(a < b);
    }

    #[test]
    fn text_and_bytes_round_trip() {
        let t = LamportTimestamp {
            time: 300,
            process: 7,
        };
        assert_eq!(t.to_string(), "300.7");
        assert_eq!("300.7".parse::<LamportTimestamp>().unwrap(), t);
        assert_eq!(LamportTimestamp::decode(&t.to_bytes()).unwrap(), t);
        assert!("300".parse::<LamportTimestamp>().is_err());
        assert!(LamportTimestamp::decode(&[1]).is_err());
    }
}
