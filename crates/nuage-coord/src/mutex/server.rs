//! The lock server: a queue of sessions under one std mutex, so that ticket numbers,
//! grants and log lines come out in one consistent order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use super::{HELLO_TIMEOUT, MAX_CLIENTS, MAX_NAME, Reply, Request};
use crate::frame::{FrameReader, write_frame};

/// What the server did, in the order it did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Request {
        ticket: u64,
        peer: SocketAddr,
        name: String,
    },
    Grant {
        ticket: u64,
        peer: SocketAddr,
        name: String,
        waited_ms: u64,
    },
    Release {
        ticket: u64,
        peer: SocketAddr,
        held_ms: u64,
        /// False when the holder's connection ended without a `release`.
        clean: bool,
    },
    /// A waiter left the queue before its grant (it closed or died).
    Abandon { ticket: u64, peer: SocketAddr },
    /// A session ended on an error before it was queued.
    Error { peer: SocketAddr, error: String },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Request { ticket, peer, name } => {
                write!(f, "request #{ticket} from {peer} ({name})")
            }
            Event::Grant {
                ticket,
                peer,
                name,
                waited_ms,
            } => write!(f, "grant #{ticket} to {peer} ({name}) after {waited_ms} ms"),
            Event::Release {
                ticket,
                peer,
                held_ms,
                clean,
            } => {
                let how = if *clean {
                    "released"
                } else {
                    "connection lost while holding"
                };
                write!(f, "release #{ticket} by {peer} after {held_ms} ms ({how})")
            }
            Event::Abandon { ticket, peer } => {
                write!(f, "abandon #{ticket} by {peer} (left the queue)")
            }
            Event::Error { peer, error } => write!(f, "{peer}: error: {error}"),
        }
    }
}

/// Receives server events; called with the queue locked, so it must not block long.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

struct Waiter {
    ticket: u64,
    peer: SocketAddr,
    name: String,
    since: Instant,
    grant: oneshot::Sender<()>,
}

struct Holder {
    ticket: u64,
    peer: SocketAddr,
    since: Instant,
}

struct Queue {
    next_ticket: u64,
    holder: Option<Holder>,
    waiting: VecDeque<Waiter>,
    sink: EventSink,
}

impl Queue {
    /// Queues a request; returns its ticket, how many are ahead, and the receiver that
    /// fires on grant.
    fn enqueue(&mut self, peer: SocketAddr, name: String) -> (u64, usize, oneshot::Receiver<()>) {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let (grant, granted) = oneshot::channel();
        let ahead = self.waiting.len() + usize::from(self.holder.is_some());
        (self.sink)(Event::Request {
            ticket,
            peer,
            name: name.clone(),
        });
        self.waiting.push_back(Waiter {
            ticket,
            peer,
            name,
            since: Instant::now(),
            grant,
        });
        self.grant_next();
        (ticket, ahead, granted)
    }

    /// Grants the lock to the oldest live waiter if nobody holds it.
    fn grant_next(&mut self) {
        while self.holder.is_none() {
            let Some(w) = self.waiting.pop_front() else {
                return;
            };
            if w.grant.send(()).is_err() {
                // Its session is already gone; it will not take the lock.
                (self.sink)(Event::Abandon {
                    ticket: w.ticket,
                    peer: w.peer,
                });
                continue;
            }
            (self.sink)(Event::Grant {
                ticket: w.ticket,
                peer: w.peer,
                name: w.name,
                waited_ms: w.since.elapsed().as_millis() as u64,
            });
            self.holder = Some(Holder {
                ticket: w.ticket,
                peer: w.peer,
                since: Instant::now(),
            });
        }
    }

    /// The session of `ticket` ended (`clean`: it sent `release`).
    fn leave(&mut self, ticket: u64, clean: bool) {
        if self.holder.as_ref().is_some_and(|h| h.ticket == ticket) {
            let h = self.holder.take().expect("checked");
            (self.sink)(Event::Release {
                ticket,
                peer: h.peer,
                held_ms: h.since.elapsed().as_millis() as u64,
                clean,
            });
            self.grant_next();
        } else if let Some(pos) = self.waiting.iter().position(|w| w.ticket == ticket) {
            let w = self.waiting.remove(pos).expect("found");
            (self.sink)(Event::Abandon {
                ticket,
                peer: w.peer,
            });
        }
    }
}

/// A bound lock server; [`MutexServer::run`] serves until shutdown.
pub struct MutexServer {
    listener: TcpListener,
}

impl MutexServer {
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = nuage_core::net::bind_tcp(addr, "the mutex server", "--port").await?;
        Ok(MutexServer { listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket")
    }

    /// Serves until `shutdown` is cancelled; every event goes to `sink`.
    pub async fn run(self, shutdown: CancellationToken, sink: EventSink) -> anyhow::Result<()> {
        let queue = Arc::new(Mutex::new(Queue {
            next_ticket: 0,
            holder: None,
            waiting: VecDeque::new(),
            sink: sink.clone(),
        }));
        let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("mutex server: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                sessions.spawn(refuse(
                    stream,
                    format!("the server already has {MAX_CLIENTS} clients; try again later"),
                ));
                continue;
            };
            // Reap finished sessions so the set stays as small as the live ones.
            while sessions.try_join_next().is_some() {}
            let queue = queue.clone();
            let sink = sink.clone();
            let stop = shutdown.clone();
            sessions.spawn(async move {
                if let Err(e) = session(stream, peer, queue, stop).await {
                    sink(Event::Error {
                        peer,
                        error: format!("{e:#}"),
                    });
                }
                drop(permit);
            });
        }
        while sessions.join_next().await.is_some() {}
        Ok(())
    }
}

async fn refuse(mut stream: TcpStream, reason: String) {
    let _ = write_frame(&mut stream, &Reply::Refused { reason }).await;
}

/// Removes the session's ticket from the queue however the session ends.
struct Ticket {
    queue: Arc<Mutex<Queue>>,
    ticket: u64,
    clean: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.leave(self.ticket, self.clean);
    }
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    queue: Arc<Mutex<Queue>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::<_, Request>::new(read);
    let first = tokio::time::timeout(HELLO_TIMEOUT, reader.read())
        .await
        .with_context(|| format!("no acquire within {}s", HELLO_TIMEOUT.as_secs()))??;
    let name = match first {
        None => return Ok(()),
        Some(Request::Acquire { name }) => clean_name(&name),
        Some(Request::Release) => {
            let reason = "release before acquire".to_owned();
            let _ = write_frame(
                &mut write,
                &Reply::Refused {
                    reason: reason.clone(),
                },
            )
            .await;
            anyhow::bail!(reason);
        }
    };
    let (ticket, ahead, granted) = queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .enqueue(peer, name);
    let mut guard = Ticket {
        queue,
        ticket,
        clean: false,
    };
    write_frame(&mut write, &Reply::Queued { ticket, ahead }).await?;
    // While waiting, the only thing the client may do is go away.
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        g = granted => g.context("the queue dropped this session")?,
        r = reader.read() => {
            return match r {
                Ok(None) => Ok(()),
                Ok(Some(m)) => Err(anyhow::anyhow!("unexpected {m:?} while waiting")),
                Err(e) => Err(e),
            };
        }
    }
    write_frame(&mut write, &Reply::Granted { ticket }).await?;
    let end = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = reader.read() => r,
    };
    match end {
        Ok(Some(Request::Release)) => {
            guard.clean = true;
            Ok(())
        }
        Ok(None) => Ok(()),
        Ok(Some(m)) => Err(anyhow::anyhow!("unexpected {m:?} while holding")),
        Err(e) => Err(e),
    }
}

/// A name safe to print on one line, at most [`MAX_NAME`] characters.
pub(super) fn clean_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    if cleaned.is_empty() {
        "anonymous".to_owned()
    } else {
        cleaned
    }
}
