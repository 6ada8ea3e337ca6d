//! A client's connection to one brick: many requests in flight on one TCP connection,
//! answered by id; reconnects on the next request after a failure.
//!
//! A brick that stops answering is declared gone after `ping_timeout` (default 42 s, as
//! gluster's `network.ping-timeout`): every request waiting on it then fails with
//! ENOTCONN, and so does every request until it is reachable again. No request ever
//! waits longer than that for a silent brick.
//!
//! A brick refusing connections (its server stopped, its machine up) is retried on each
//! request, which fails at once. A *silent* one — the ping timeout expired, or a new
//! connection or its hello timed out, as behind a partition or on a paused machine —
//! would cost every request a full connection timeout; instead requests fail at once with
//! ENOTCONN while a background task tries to reconnect every `RECONNECT_INTERVAL` (as
//! gluster's client does), and the connection it makes serves the next requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::proto::{self, Errno, FrameSink, FromBrick, MAGIC, Notify, Op, PROTOCOL_VERSION, Reply};

/// Default time after which a silent brick is declared gone (gluster's ping-timeout).
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(42);
/// Longest wait for a TCP connection to a brick (capped by the ping timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a silent brick is tried again in the background (gluster: 3 s).
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(3);

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
    /// Requests are written by the task that makes them (proto::FrameSink).
    sink: Arc<FrameSink>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>,
    dead: CancellationToken,
    /// Set by the pinger when it ended the connection because the brick went silent
    /// (not closed, not refused): the brick is then reconnected in the background.
    went_silent: Arc<AtomicBool>,
}

/// Why a connection could not be opened.
enum OpenError {
    /// Nothing answered in time: the brick's host is silent (partition, paused machine).
    Silent,
    /// An answer that says no (refused, reset, wrong brick, bad hello).
    Refused(Errno),
}

impl Drop for Live {
    fn drop(&mut self) {
        self.dead.cancel();
    }
}

pub struct BrickConn {
    /// This connection itself, for the background reconnect task (weak, so that an
    /// unmounted client's connections are dropped and the task ends).
    me: Weak<BrickConn>,
    /// The brick is silent: requests fail at once while a background task reconnects.
    silent: AtomicBool,
    brick: BrickAddr,
    client: String,
    ping_timeout: Duration,
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
    next_id: AtomicU64,
    notes: mpsc::UnboundedSender<Notify>,
    /// The receiving end of `notes`, kept for its user (see [`BrickConn::take_notices`]).
    kept_notes: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Notify>>>,
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
            Arc::new_cyclic(|me| BrickConn {
                me: me.clone(),
                silent: AtomicBool::new(false),
                brick,
                client,
                ping_timeout,
                live: tokio::sync::Mutex::new(None),
                next_id: AtomicU64::new(1),
                notes,
                kept_notes: std::sync::Mutex::new(None),
            }),
            rx,
        )
    }

    /// Keeps the receiver of this connection's notices for [`BrickConn::take_notices`].
    pub fn keep_notices(&self, rx: mpsc::UnboundedReceiver<Notify>) {
        *self.kept_notes.lock().expect("kept notes") = Some(rx);
    }

    /// The receiver kept by [`BrickConn::keep_notices`] (once).
    pub fn take_notices(&self) -> Option<mpsc::UnboundedReceiver<Notify>> {
        self.kept_notes.lock().expect("kept notes").take()
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
        if live.sink.send(frame).await.is_err() {
            live.pending.lock().expect("pending").remove(&id);
            live.dead.cancel();
            return Err(Errno(libc::ENOTCONN));
        }
        match rx.await {
            Ok((Ok(reply), data)) => Ok((reply, data)),
            Ok((Err(e), _)) => Err(e),
            // The connection died with the request unanswered.
            Err(_) => Err(Errno(libc::ENOTCONN)),
        }
    }

    /// Writes a request at once, without waiting, when a connection is up and has room
    /// (`None` otherwise: nothing sent); the returned future waits for the answer. A
    /// request sent so is on the wire before any request made after this returns, and
    /// the brick answers its quick requests in order (server.rs, `Run::Inline`).
    pub fn send_now(
        &self,
        op: Op,
    ) -> Option<impl std::future::Future<Output = Result<Reply, Errno>> + Send + 'static> {
        if self.silent.load(Ordering::Acquire) {
            return None;
        }
        let live = {
            let guard = self.live.try_lock().ok()?;
            let live = guard.as_ref()?;
            if live.dead.is_cancelled() {
                return None;
            }
            live.clone()
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let frame = proto::encode_frame(id, &op, 0).ok()?;
        let (tx, rx) = oneshot::channel();
        live.pending.lock().expect("pending").insert(id, tx);
        if !matches!(live.sink.try_send(frame), Ok(true)) {
            live.pending.lock().expect("pending").remove(&id);
            return None;
        }
        Some(async move {
            match rx.await {
                Ok((Ok(reply), _)) => Ok(reply),
                Ok((Err(e), _)) => Err(e),
                Err(_) => Err(Errno(libc::ENOTCONN)),
            }
        })
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
        if self.silent.load(Ordering::Acquire) {
            return Err(Errno(libc::ENOTCONN));
        }
        let mut guard = self.live.lock().await;
        if let Some(l) = guard.as_ref() {
            if !l.dead.is_cancelled() {
                return Ok(l.clone());
            }
            if l.went_silent.load(Ordering::Acquire) {
                *guard = None;
                self.reconnect_in_background();
                return Err(Errno(libc::ENOTCONN));
            }
        }
        *guard = None;
        // Another caller may have found the brick silent while this one waited.
        if self.silent.load(Ordering::Acquire) {
            return Err(Errno(libc::ENOTCONN));
        }
        match self.open().await {
            Ok(live) => {
                let live = Arc::new(live);
                *guard = Some(live.clone());
                Ok(live)
            }
            Err(OpenError::Silent) => {
                self.reconnect_in_background();
                Err(Errno(libc::ENOTCONN))
            }
            Err(OpenError::Refused(e)) => Err(e),
        }
    }

    /// Marks the brick silent and, unless one runs already, starts the task that tries
    /// it again every `RECONNECT_INTERVAL` until a connection is made (or this client
    /// is dropped).
    fn reconnect_in_background(&self) {
        if self.silent.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            "brick {} is silent: requests to it fail (ENOTCONN) until a reconnection, tried every {:?}",
            self.brick.addr,
            RECONNECT_INTERVAL
        );
        let me = self.me.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECONNECT_INTERVAL).await;
                let Some(conn) = me.upgrade() else { return };
                let Ok(live) = conn.open().await else {
                    continue;
                };
                *conn.live.lock().await = Some(Arc::new(live));
                conn.silent.store(false, Ordering::Release);
                tracing::info!("brick {} answers again", conn.brick.addr);
                return;
            }
        });
    }

    async fn open(&self) -> Result<Live, OpenError> {
        let refused = |e: i32| OpenError::Refused(Errno(e));
        let wait = CONNECT_TIMEOUT.min(self.ping_timeout);
        let stream = match tokio::time::timeout(wait, TcpStream::connect(&self.brick.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("brick {}: {e}", self.brick.addr);
                return Err(refused(libc::ENOTCONN));
            }
            Err(_) => return Err(OpenError::Silent),
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
        let hello_frame = proto::encode_frame(0, &hello, 0).map_err(|_| refused(libc::EINVAL))?;
        let answer = tokio::time::timeout(wait, async {
            wr.write_all(&hello_frame).await?;
            proto::read_frame(&mut rd).await
        })
        .await;
        let frame = match answer {
            Ok(Ok(Some(f))) => f,
            Ok(_) => return Err(refused(libc::ENOTCONN)),
            Err(_) => return Err(OpenError::Silent),
        };
        match proto::decode::<FromBrick>(&frame.body) {
            Ok(FromBrick::Reply(Ok(Reply::Hello { .. }))) => {}
            Ok(FromBrick::Reply(Err(e))) => {
                tracing::warn!(
                    "brick {} refused this client: {} (wrong volume or brick id?)",
                    self.brick.addr,
                    e.describe()
                );
                return Err(refused(libc::ENOTCONN));
            }
            _ => return Err(refused(libc::EPROTO)),
        }

        let sink = Arc::new(FrameSink::new(wr));
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>> = Arc::default();
        let dead = CancellationToken::new();
        let last_heard = Arc::new(Mutex::new(Instant::now()));
        let went_silent = Arc::new(AtomicBool::new(false));

        // What the socket did not take at once; the write half closes when the last
        // holder of the sink (this task, the pinger, `Live`) is gone.
        let (d, s) = (dead.clone(), sink.clone());
        tokio::spawn(async move {
            s.flush_queued(d.clone()).await;
            d.cancel();
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
        let (d, heard, ping_tx, timeout, silent) = (
            dead.clone(),
            last_heard,
            sink.clone(),
            self.ping_timeout,
            went_silent.clone(),
        );
        let addr = self.brick.addr.clone();
        tokio::spawn(async move {
            let ping = proto::encode_frame(0, &Op::Ping, 0).expect("small frame");
            let mut tick = tokio::time::interval(ping_interval);
            loop {
                tokio::select! {
                    _ = d.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let silent_for = heard.lock().expect("heard").elapsed();
                if silent_for > timeout {
                    tracing::warn!("brick {addr} silent for {silent_for:?}: disconnecting");
                    silent.store(true, Ordering::Release);
                    d.cancel();
                    break;
                }
                match ping_tx.try_send(ping.clone()) {
                    // Not sent: the queue is full of real requests, which will be heard from.
                    Ok(_) => {}
                    Err(_) => {
                        d.cancel();
                        break;
                    }
                }
            }
        });
        Ok(Live {
            sink,
            pending,
            dead,
            went_silent,
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod silent_tests;
