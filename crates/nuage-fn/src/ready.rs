//! Relay connections opened ahead of need. A connection placed on another machine costs a
//! TCP handshake to that machine's relay, and the other node's accept, before the header
//! can go. So this machine keeps a few connections to each peer it relays to open and
//! idle ([`READY_PER_PEER`]), replenished in the background after each use: a placed
//! connection takes one and sends its header at once.
//!
//! A ready connection may have died since it was opened (the other node restarted or
//! crashed): one that is closed, has data to read, or is older than [`READY_MAX_AGE`] is
//! discarded when taken, and [`crate::relay::connect`] falls back to a fresh connection
//! when a ready one closes before answering, so the client never notices. The receiver
//! waits up to [`crate::relay::IDLE_BEFORE_HEADER`] for the header of an idle connection,
//! longer than [`READY_MAX_AGE`], so a ready connection is never closed under the header.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::relay;
use crate::sockopt;

/// Ready connections kept per peer relay.
pub const READY_PER_PEER: usize = 4;
/// A ready connection older than this is closed rather than used.
pub const READY_MAX_AGE: Duration = Duration::from_secs(20);

type Peer = (String, u16);

/// The ready connections of this machine, per peer relay (`host`, `port`).
#[derive(Default)]
pub struct Ready {
    ready: Mutex<HashMap<Peer, VecDeque<(TcpStream, Instant)>>>,
    /// Peers being replenished (one task per peer at a time).
    filling: Mutex<HashSet<Peer>>,
}

impl Ready {
    fn ready(&self) -> MutexGuard<'_, HashMap<Peer, VecDeque<(TcpStream, Instant)>>> {
        self.ready.lock().expect("ready connections lock poisoned")
    }

    /// A ready connection to `host:port` that is still open and silent, if any; the ones
    /// found dead or too old are closed.
    pub fn take(&self, host: &str, port: u16) -> Option<TcpStream> {
        let mut ready = self.ready();
        let queue = ready.get_mut(&(host.to_owned(), port))?;
        while let Some((stream, opened)) = queue.pop_front() {
            if opened.elapsed() < READY_MAX_AGE && sockopt::open_and_silent(stream.as_fd()) {
                return Some(stream);
            }
        }
        None
    }

    /// How many ready connections to `host:port` are kept now.
    pub fn count(&self, host: &str, port: u16) -> usize {
        self.ready()
            .get(&(host.to_owned(), port))
            .map_or(0, VecDeque::len)
    }

    /// Opens connections to `host:port` in the background until [`READY_PER_PEER`] are
    /// ready. Stops at the first failure: a peer that does not answer gets no retries
    /// from here (the next placed connection asks again).
    pub fn replenish(self: &Arc<Self>, host: &str, port: u16) {
        let peer = (host.to_owned(), port);
        if !self
            .filling
            .lock()
            .expect("ready filling lock poisoned")
            .insert(peer.clone())
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let missing = {
                    let mut ready = this.ready();
                    let queue = ready.entry(peer.clone()).or_default();
                    queue.retain(|(s, opened)| {
                        opened.elapsed() < READY_MAX_AGE && sockopt::open_and_silent(s.as_fd())
                    });
                    READY_PER_PEER.saturating_sub(queue.len())
                };
                if missing == 0 {
                    break;
                }
                match relay::open(&peer.0, peer.1).await {
                    Ok(stream) => this
                        .ready()
                        .entry(peer.clone())
                        .or_default()
                        .push_back((stream, Instant::now())),
                    Err(_) => break,
                }
            }
            this.filling
                .lock()
                .expect("ready filling lock poisoned")
                .remove(&peer);
        });
    }

    /// Closes every ready connection (shutdown).
    pub fn clear(&self) {
        self.ready().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_connections_ready_and_discards_dead_ones() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ready = Arc::new(Ready::default());
        assert!(ready.take("127.0.0.1", port).is_none(), "nothing ready yet");
        ready.replenish("127.0.0.1", port);
        let mut accepted = Vec::new();
        for _ in 0..READY_PER_PEER {
            accepted.push(listener.accept().await.unwrap().0);
        }
        for _ in 0..100 {
            if ready.count("127.0.0.1", port) == READY_PER_PEER {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ready.count("127.0.0.1", port), READY_PER_PEER);
        assert!(ready.take("127.0.0.1", port).is_some());

        // The peer closes the others (it restarted): they are discarded, not handed out.
        drop(accepted);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ready.take("127.0.0.1", port).is_none());
        assert_eq!(ready.count("127.0.0.1", port), 0);

        // A peer that has gone: replenishing stops at the first failure.
        drop(listener);
        ready.replenish("127.0.0.1", port);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ready.count("127.0.0.1", port), 0);
    }
}
