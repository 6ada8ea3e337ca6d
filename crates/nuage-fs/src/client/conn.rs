//! A client's connection to one brick: many requests in flight on one TCP connection,
//! answered by id; reconnects on the next request after a failure.
//!
//! A brick that stops answering is declared gone after `ping_timeout` (default 42 s, as
//! gluster's `network.ping-timeout`): every request waiting on it then fails with
//! ENOTCONN, and so does every request until it is reachable again. No request ever
//! waits longer than that for a silent brick.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::proto::{self, Errno, FromBrick, MAGIC, Notify, Op, PROTOCOL_VERSION, Reply};

/// Default time after which a silent brick is declared gone (gluster's ping-timeout).
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(42);
/// Longest wait for a TCP connection to a brick (capped by the ping timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for the writer.
const WRITE_QUEUE: usize = 256;

/// What a connection needs to know to say hello.
#[derive(Debug, Clone)]
pub struct BrickAddr {
    /// `host:port` of the brick server.
    pub addr: String,
    pub volume_id: String,
    pub brick_id: u32,
}

type Answer = (Result<Reply, Errno>, Vec<u8>);

struct Live {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>,
    dead: CancellationToken,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.dead.cancel();
    }
}

pub struct BrickConn {
    brick: BrickAddr,
    client: String,
    ping_timeout: Duration,
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
    next_id: AtomicU64,
    notes: mpsc::UnboundedSender<Notify>,
}

impl BrickConn {
    /// A connection (made on first use). Lock contention notices arrive on the returned
    /// receiver.
    pub fn new(
        brick: BrickAddr,
        client: String,
        ping_timeout: Duration,
    ) -> (Arc<BrickConn>, mpsc::UnboundedReceiver<Notify>) {
        let (notes, rx) = mpsc::unbounded_channel();
        (
            Arc::new(BrickConn {
                brick,
                client,
                ping_timeout,
                live: tokio::sync::Mutex::new(None),
                next_id: AtomicU64::new(1),
                notes,
            }),
            rx,
        )
    }

    pub fn addr(&self) -> &BrickAddr {
        &self.brick
    }

    /// Whether a connection is up now (without trying to make one).
    pub fn is_connected(&self) -> bool {
        match self.live.try_lock() {
            Ok(g) => g.as_ref().is_some_and(|l| !l.dead.is_cancelled()),
            Err(_) => true,
        }
    }

    /// Sends a request (with `data` as the frame's data part) and waits for its answer.
    pub async fn call(&self, op: Op, data: &[u8]) -> Result<(Reply, Vec<u8>), Errno> {
        let live = self.connect().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut frame =
            proto::encode_frame(id, &op, data.len()).map_err(|_| Errno(libc::EINVAL))?;
        frame.extend_from_slice(data);
        let (tx, rx) = oneshot::channel();
        live.pending.lock().expect("pending").insert(id, tx);
        if live.tx.send(frame).await.is_err() {
            live.pending.lock().expect("pending").remove(&id);
            return Err(Errno(libc::ENOTCONN));
        }
        match rx.await {
            Ok((Ok(reply), data)) => Ok((reply, data)),
            Ok((Err(e), _)) => Err(e),
            // The connection died with the request unanswered.
            Err(_) => Err(Errno(libc::ENOTCONN)),
        }
    }

    /// Like `call`, for requests without a data part whose reply has none.
    pub async fn req(&self, op: Op) -> Result<Reply, Errno> {
        self.call(op, &[]).await.map(|(r, _)| r)
    }

    /// Drops the current connection (tests, and callers that know it is broken).
    pub async fn disconnect(&self) {
        self.live.lock().await.take();
    }

    async fn connect(&self) -> Result<Arc<Live>, Errno> {
        let mut guard = self.live.lock().await;
        if let Some(l) = guard.as_ref() {
            if !l.dead.is_cancelled() {
                return Ok(l.clone());
            }
        }
        *guard = None;
        let live = Arc::new(self.open().await?);
        *guard = Some(live.clone());
        Ok(live)
    }

    async fn open(&self) -> Result<Live, Errno> {
        let wait = CONNECT_TIMEOUT.min(self.ping_timeout);
        let stream = match tokio::time::timeout(wait, TcpStream::connect(&self.brick.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("brick {}: {e}", self.brick.addr);
                return Err(Errno(libc::ENOTCONN));
            }
            Err(_) => return Err(Errno(libc::ENOTCONN)),
        };
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(256 << 10, rd);
        let ping_interval =
            (self.ping_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
        let hello = Op::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            volume_id: self.brick.volume_id.clone(),
            brick_id: self.brick.brick_id,
            client: self.client.clone(),
            ping_interval_ms: ping_interval.as_millis() as u32,
        };
        let hello_frame = proto::encode_frame(0, &hello, 0).map_err(|_| Errno(libc::EINVAL))?;
        let answer = tokio::time::timeout(wait, async {
            wr.write_all(&hello_frame).await?;
            proto::read_frame(&mut rd).await
        })
        .await;
        let frame = match answer {
            Ok(Ok(Some(f))) => f,
            _ => return Err(Errno(libc::ENOTCONN)),
        };
        match proto::decode::<FromBrick>(&frame.body) {
            Ok(FromBrick::Reply(Ok(Reply::Hello { .. }))) => {}
            Ok(FromBrick::Reply(Err(e))) => {
                tracing::warn!(
                    "brick {} refused this client: {} (wrong volume or brick id?)",
                    self.brick.addr,
                    e.describe()
                );
                return Err(Errno(libc::ENOTCONN));
            }
            _ => return Err(Errno(libc::EPROTO)),
        }

        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>> = Arc::default();
        let dead = CancellationToken::new();
        let last_heard = Arc::new(Mutex::new(Instant::now()));

        // Writer.
        let d = dead.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = d.cancelled() => break,
                    f = rx.recv() => match f {
                        Some(f) => if wr.write_all(&f).await.is_err() { break },
                        None => break,
                    },
                }
            }
            d.cancel();
            let _ = wr.shutdown().await;
        });
        // Reader.
        let (d, p, heard, notes) = (
            dead.clone(),
            pending.clone(),
            last_heard.clone(),
            self.notes.clone(),
        );
        let addr = self.brick.addr.clone();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = d.cancelled() => break,
                    f = proto::read_frame(&mut rd) => match f {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!("brick {addr}: {e}");
                            break;
                        }
                    },
                };
                *heard.lock().expect("heard") = Instant::now();
                match proto::decode::<FromBrick>(&frame.body) {
                    Ok(FromBrick::Reply(r)) => {
                        if let Some(tx) = p.lock().expect("pending").remove(&frame.id) {
                            let _ = tx.send((r, frame.data));
                        }
                    }
                    Ok(FromBrick::Notify(n)) => {
                        let _ = notes.send(n);
                    }
                    Err(e) => {
                        tracing::warn!("brick {addr}: {e}");
                        break;
                    }
                }
            }
            d.cancel();
            // Fail everything still waiting: dropping the senders answers ENOTCONN.
            p.lock().expect("pending").clear();
        });
        // Pinger: keeps the brick from dropping an idle connection, and declares the
        // brick gone when nothing was heard from it for the ping timeout.
        let (d, heard, ping_tx, timeout) =
            (dead.clone(), last_heard, tx.clone(), self.ping_timeout);
        let addr = self.brick.addr.clone();
        tokio::spawn(async move {
            let ping = proto::encode_frame(0, &Op::Ping, 0).expect("small frame");
            let mut tick = tokio::time::interval(ping_interval);
            loop {
                tokio::select! {
                    _ = d.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let silent = heard.lock().expect("heard").elapsed();
                if silent > timeout {
                    tracing::warn!("brick {addr} silent for {silent:?}: disconnecting");
                    d.cancel();
                    break;
                }
                if ping_tx.try_send(ping.clone()).is_err() {
                    // The queue is full of real requests: they will be heard from.
                }
            }
        });
        Ok(Live { tx, pending, dead })
    }
}

#[cfg(test)]
mod tests;
