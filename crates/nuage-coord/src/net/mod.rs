//! Socket tools: a datagram (UDP) and a stream (TCP) client/server pair, the first
//! programs a distributed-systems course writes, done as dependable tools.
//!
//! Servers report what happens as [`Event`]s to a callback (the CLI prints them); they
//! run until their shutdown token is cancelled. Every bound is a named constant below.

mod connect;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::time::Duration;

pub use connect::{connect_tcp, resolve};

/// How long a client waits for a TCP connection to be accepted.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long name resolution may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The answer the servers send for every message.
pub const ANSWER: &[u8] = b"OK\n";

/// Something a server saw, reported in order per client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A datagram arrived (UDP).
    Datagram { from: SocketAddr, data: Vec<u8> },
    /// A client connected (TCP).
    Connected { peer: SocketAddr },
    /// A whole message (one line, without its end of line) arrived (TCP).
    Message { peer: SocketAddr, data: Vec<u8> },
    /// The client closed its side; the server closed its own (TCP).
    Closed { peer: SocketAddr, messages: u64 },
    /// The session with a client ended on an error (TCP) or a datagram could not be
    /// answered (UDP); the server goes on.
    Error { peer: SocketAddr, error: String },
}

impl std::fmt::Display for Event {
    /// One line per event, as `nuage net … -server` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Datagram { from, data } => write!(f, "{from}: {}", printable(data)),
            Event::Connected { peer } => write!(f, "{peer} connected"),
            Event::Message { peer, data } => write!(f, "{peer}: {}", printable(data)),
            Event::Closed { peer, messages } => {
                let s = if *messages == 1 { "" } else { "s" };
                write!(f, "{peer} closed ({messages} message{s})")
            }
            Event::Error { peer, error } => write!(f, "{peer}: error: {error}"),
        }
    }
}

/// A callback that receives server events; it must not block for long.
pub type EventSink = std::sync::Arc<dyn Fn(Event) + Send + Sync>;

/// Bytes shown on one line: valid UTF-8 stays as is, except control characters and
/// backslashes, which are escaped (`\n`, `\t`, `\\`, `\x07`); invalid bytes become `\xNN`.
/// So every message prints as exactly one line, whatever it holds.
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    use std::fmt::Write;
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            use std::fmt::Write;
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// This machine's hostname, as `tcp-client` sends it.
pub fn hostname() -> anyhow::Result<String> {
    let name = nix::unistd::gethostname()
        .map_err(|e| anyhow::anyhow!("cannot read this machine's hostname: {e}"))?;
    Ok(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_keeps_one_line() {
        assert_eq!(printable(b"hello"), "hello");
        assert_eq!(printable("été ✓".as_bytes()), "été ✓");
        assert_eq!(printable(b"a\nb\tc\\"), "a\\nb\\tc\\\\");
        assert_eq!(printable(b"\x07\xff"), "\\u{7}\\xff");
        assert_eq!(printable("\u{9b}".as_bytes()), "\\u{9b}");
    }

    #[test]
    fn events_print_as_one_line() {
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let e = Event::Message {
            peer,
            data: b"x\ny".to_vec(),
        };
        assert_eq!(e.to_string(), "127.0.0.1:4000: x\\ny");
        assert_eq!(
            Event::Closed { peer, messages: 1 }.to_string(),
            "127.0.0.1:4000 closed (1 message)"
        );
    }
}
