//! The mail server of one domain: sessions with clients and peer servers, and one
//! forwarder per remote domain that drains the durable outbound queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nuage_core::datadir::DataDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::causal::Order;
use crate::frame::{Frame, FrameError, read_frame, write_frame};
use crate::protocol::{self, Request};
use crate::servers::Directory;
use crate::store::{Accepted, DB_FILE, Outbound, QueueStatus, Store, now_ms};

/// Most client and peer connections served at once; more are told to retry.
pub const MAX_CONNECTIONS: usize = 256;
/// A session with no frame for this long is closed.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one forwarding round (connect, send a window of copies, read their
/// answers) may take.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before retrying a failed forward; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(200);
/// Longest wait between two forwarding attempts (retries go on forever).
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// After a framing error, how long the server keeps reading (and discarding) before
/// it closes, so the peer gets the error answer rather than a reset connection.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// After a framing error, how many bytes the server discards at most.
pub const LINGER_BYTES: u64 = 4 << 20;
/// Most copies sent to a peer before reading their answers.
pub const FORWARD_WINDOW: usize = 32;
/// A kept connection to a peer server unused for this long is replaced by a new one
/// (well before the peer's [`SESSION_IDLE_TIMEOUT`] closes it).
pub const PEER_IDLE_CLOSE: Duration = Duration::from_secs(60);
/// Longest artificial delay `--delay-to` accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub domain: String,
    pub directory: Directory,
    pub data_dir: PathBuf,
    pub order: Order,
    /// Artificial latency added to the link towards a domain (`--delay-to`).
    pub delays: Vec<(String, Duration)>,
    /// How errors name the settings: `--domain` on the command line, `[mail] domain`
    /// in nuage.toml.
    pub names: SettingNames,
}

/// The names of the settings a user can change, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingNames {
    pub domain: &'static str,
    pub port: &'static str,
    pub delay_to: &'static str,
}

impl SettingNames {
    /// `nuage mail serve`'s options.
    pub const CLI: SettingNames = SettingNames {
        domain: "--domain",
        port: "--port",
        delay_to: "--delay-to",
    };
    /// The keys of `[mail]` in nuage.toml.
    pub const CONFIG: SettingNames = SettingNames {
        domain: "[mail] domain",
        port: "[mail] port",
        delay_to: "[mail] delay_to",
    };
}

/// A bound server, ready to [`run`](MailServer::run).
pub struct MailServer {
    listener: TcpListener,
    shared: Arc<Shared>,
    /// The data dir's lock, when this server runs alone (a node holds its own).
    _data_dir: Option<DataDir>,
}

struct Shared {
    store: Mutex<Store>,
    domain: String,
    order: Order,
    directory: Directory,
    delays: HashMap<String, Duration>,
    /// Wakes the forwarder of a domain when a copy is queued for it.
    wake: HashMap<String, Arc<Notify>>,
}

impl MailServer {
    /// Checks the configuration, opens (and locks) the data dir and binds the port.
    pub async fn bind(config: ServerConfig) -> anyhow::Result<MailServer> {
        let data_dir = DataDir::open(&config.data_dir)?;
        MailServer::bind_with(config, Some(data_dir)).await
    }

    /// Like [`bind`](Self::bind) for a service of `nuage up`: the node holds the lock
    /// of its data dir, and `config.data_dir` is this service's directory inside it.
    pub async fn bind_in_node(config: ServerConfig) -> anyhow::Result<MailServer> {
        MailServer::bind_with(config, None).await
    }

    async fn bind_with(config: ServerConfig, lock: Option<DataDir>) -> anyhow::Result<MailServer> {
        let names = config.names;
        let domain = crate::address::parse_domain(&config.domain)
            .map_err(|e| anyhow!("{}: {e}", names.domain))?;
        if config.directory.index(&domain).is_none() {
            bail!(
                "domain `{domain}` ({}) is not in the servers file (domains: {})",
                names.domain,
                config.directory.domain_list()
            );
        }
        let mut delays = HashMap::new();
        for (to, delay) in &config.delays {
            if config.directory.index(to).is_none() || *to == domain {
                bail!(
                    "{} {to}: not another domain of the servers file (domains: {})",
                    names.delay_to,
                    config.directory.domain_list()
                );
            }
            if *delay > MAX_DELAY {
                bail!(
                    "{} {to}: at most {} ms",
                    names.delay_to,
                    MAX_DELAY.as_millis()
                );
            }
            delays.insert(to.clone(), *delay);
        }
        let dir = lock
            .as_ref()
            .map_or(config.data_dir.clone(), |d| d.path().to_path_buf());
        let store = Store::open(
            &dir.join(DB_FILE),
            config.directory.clone(),
            &domain,
            config.order,
        )?;
        let listener =
            nuage_core::net::bind_tcp(config.listen, "the mail server", names.port).await?;
        let mine = config.directory.entry(&domain).expect("checked above");
        let port = listener.local_addr()?.port();
        if mine.port != port {
            warn!(
                "the servers file says the server of `{domain}` listens on port {} (line {}), but this one listens on {port}: other servers will look for it at {}:{}",
                mine.port, mine.line, mine.host, mine.port
            );
        }
        let wake = config
            .directory
            .entries()
            .iter()
            .filter(|e| e.domain != domain)
            .map(|e| (e.domain.clone(), Arc::new(Notify::new())))
            .collect();
        Ok(MailServer {
            listener,
            shared: Arc::new(Shared {
                store: Mutex::new(store),
                domain,
                order: config.order,
                directory: config.directory,
                delays,
                wake,
            }),
            _data_dir: lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then closes every session and forwarder.
    /// Whatever is queued stays in the data dir for the next start.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        let mut forwarders = JoinSet::new();
        for (dest, wake) in &shared.wake {
            forwarders.spawn(forwarder(
                shared.clone(),
                dest.clone(),
                wake.clone(),
                shutdown.clone(),
            ));
        }
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut sessions = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                sessions.spawn(async move {
                    let mut stream = stream;
                    let busy = protocol::err(format!(
                        "too many connections (the limit is {MAX_CONNECTIONS}); retry later"
                    ));
                    let _ = write_frame(&mut stream, &busy).await;
                });
                continue;
            };
            let shared = shared.clone();
            let stop = shutdown.clone();
            sessions.spawn(async move {
                session(shared, stream, peer, stop).await;
                drop(slot);
            });
        }
        drop(self.listener);
        while sessions.join_next().await.is_some() {}
        while forwarders.join_next().await.is_some() {}
        Ok(())
    }
}

/// Runs `f` on the store in a blocking thread (SQLite calls block).
async fn with_store<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Store) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = shared
            .store
            .lock()
            .map_err(|_| anyhow!("the mail store is unusable after a crash in another task"))?;
        f(&mut store)
    })
    .await
    .context("mail store task")?
}

async fn session(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            read = tokio::time::timeout(SESSION_IDLE_TIMEOUT, read_frame(&mut reader)) => read,
        };
        let frame = match read {
            Err(_) => {
                let idle = format!("idle for {} s; closing", SESSION_IDLE_TIMEOUT.as_secs());
                let _ = write_frame(&mut writer, &protocol::err(idle)).await;
                return;
            }
            Ok(Err(FrameError::Closed)) => return,
            Ok(Err(e)) => {
                // The framing is lost: answer why and end this session only.
                warn!("{peer}: {e}; closing the session");
                let _ = write_frame(&mut writer, &protocol::err(format!("{e}; closing"))).await;
                linger(reader, writer).await;
                return;
            }
            Ok(Ok(frame)) => frame,
        };
        let replies = match Request::from_frame(&frame) {
            Err(why) => vec![protocol::err(why)],
            Ok(Request::Quit) => {
                let _ = write_frame(&mut writer, &protocol::ok("bye")).await;
                return;
            }
            Ok(request) => handle(&shared, request, peer).await,
        };
        for reply in &replies {
            if let Err(e) = write_frame(&mut writer, reply).await {
                info!("{peer}: {e}; closing the session");
                return;
            }
        }
    }
}

/// Closes a session whose framing is lost so that the peer still reads the last
/// answer: half-close, then discard what the peer is still sending (at most
/// [`LINGER_BYTES`] bytes for at most [`LINGER_TIME`]). Closing with unread input would
/// make the kernel reset the connection and the peer could lose the answer.
async fn linger(mut reader: BufReader<OwnedReadHalf>, mut writer: OwnedWriteHalf) {
    let _ = writer.shutdown().await;
    let drain = async {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut (&mut reader).take(LINGER_BYTES), &mut sink).await;
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// The answer frames to one request.
async fn handle(shared: &Arc<Shared>, request: Request, peer: SocketAddr) -> Vec<Frame> {
    let result = match request {
        Request::Send(sub) => {
            let summary = format!(
                "{} → {}",
                sub.from,
                sub.to
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let outcome = with_store(shared, move |s| s.submit(&sub, now_ms())).await;
            outcome.map(|r| match r {
                Ok(done) => {
                    for dest in &done.queued {
                        shared.wake[dest].notify_one();
                    }
                    info!(
                        "{summary}: {} accepted ({} local, queued for [{}])",
                        done.id,
                        done.local,
                        done.queued.join(", ")
                    );
                    vec![protocol::ok(done.id)]
                }
                Err(why) => {
                    info!("{summary}: refused: {why}");
                    vec![protocol::err(why)]
                }
            })
        }
        Request::Read(owner) => {
            with_store(shared, move |s| s.read(&owner))
                .await
                .map(|r| match r {
                    Ok((messages, held)) => {
                        let mut frames: Vec<_> = messages.iter().map(|m| m.to_frame()).collect();
                        frames.push(protocol::ok(held.to_string()));
                        frames
                    }
                    Err(why) => vec![protocol::err(why)],
                })
        }
        Request::Status => {
            let (order, delays) = (shared.order, shared.delays.clone());
            let header = format!(
                "mail server of `{}`, {order} order, domains {}",
                shared.domain,
                shared.directory.domain_list()
            );
            with_store(shared, move |s| Ok((s.queue_status()?, s.held_back()?)))
                .await
                .map(|(queues, held)| {
                    vec![protocol::ok(status_report(
                        &header,
                        &queues,
                        held,
                        &delays,
                        now_ms(),
                    ))]
                })
        }
        Request::Forward(fwd) => {
            let what = format!("{} from {} ({})", fwd.id, fwd.origin, peer);
            with_store(shared, move |s| s.accept(&fwd, now_ms()))
                .await
                .map(|r| match r {
                    Ok(accepted) => {
                        let word = match accepted {
                            Accepted::Delivered { released } => {
                                info!("{what}: delivered, releasing {released} held back");
                                "delivered"
                            }
                            Accepted::Held => {
                                info!("{what}: held back until the mail it depends on arrives");
                                "held"
                            }
                            Accepted::Duplicate => {
                                info!("{what}: delivered before (a retry)");
                                "duplicate"
                            }
                        };
                        vec![protocol::ok(word)]
                    }
                    Err(why) => {
                        warn!("{what}: refused: {why}");
                        vec![protocol::err(why)]
                    }
                })
        }
        Request::Quit => unreachable!("handled by the session"),
    };
    result.unwrap_or_else(|e| {
        error!("{peer}: {e:#}");
        vec![protocol::err(format!(
            "internal error at the `{}` server: {e:#}; retry later",
            shared.domain
        ))]
    })
}

/// The text `STAT` answers: one line per fact.
fn status_report(
    header: &str,
    queues: &[QueueStatus],
    held: u64,
    delays: &HashMap<String, Duration>,
    now_ms: u64,
) -> String {
    let mut lines = vec![header.to_owned()];
    if queues.is_empty() {
        lines.push("outbound queue: empty".to_owned());
    }
    for q in queues {
        let age = Duration::from_millis(now_ms.saturating_sub(q.oldest_queued_at_ms));
        let mut line = format!(
            "queued for {}: {} message(s), oldest queued {} ago",
            q.dest,
            q.messages,
            nuage_core::time::human_duration(age)
        );
        if q.attempts > 0 {
            line.push_str(&format!(", {} failed attempt(s)", q.attempts));
        }
        if let Some(e) = &q.last_error {
            line.push_str(&format!(", last error: {e}"));
        }
        lines.push(line);
    }
    lines.push(format!("held back: {held} message(s)"));
    let mut delays: Vec<_> = delays.iter().collect();
    delays.sort();
    for (to, d) in delays {
        lines.push(format!("delay to {to}: {} ms (--delay-to)", d.as_millis()));
    }
    lines.join("\n")
}

/// Forwards the queue of `dest`, oldest first, forever: a copy leaves the queue only
/// when the destination answered OK (it committed the copy). Up to
/// [`FORWARD_WINDOW`] copies go out before the answers are read (the destination
/// answers in order); acknowledged copies leave the queue together.
async fn forwarder(shared: Arc<Shared>, dest: String, wake: Arc<Notify>, stop: CancellationToken) {
    let entry = shared
        .directory
        .entry(&dest)
        .expect("forwarders are made from the directory")
        .clone();
    let delay = shared.delays.get(&dest).copied().unwrap_or_default();
    let mut conn: Option<PeerConn> = None;
    let mut backoff = RETRY_FIRST;
    loop {
        let next = {
            let dest = dest.clone();
            with_store(&shared, move |s| s.outbound_batch(&dest, FORWARD_WINDOW)).await
        };
        let mut batch = match next {
            Ok(batch) if batch.is_empty() => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake.notified() => continue,
                }
            }
            Ok(batch) => batch,
            Err(e) => {
                error!("reading the queue for {dest}: {e:#}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_MAX) => continue,
                }
            }
        };
        // The artificial link delay: a copy leaves no earlier than `delay` after it was
        // queued. Wait for the oldest, then send those that are due.
        let due = |o: &Outbound| o.queued_at_ms + delay.as_millis() as u64;
        let now = now_ms();
        if due(&batch[0]) > now {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(due(&batch[0]) - now)) => {}
            }
        }
        let now = now_ms();
        batch.retain(|o| due(o) <= now);
        if conn
            .as_ref()
            .is_some_and(|c| c.last_used.elapsed() > PEER_IDLE_CLOSE)
        {
            conn = None;
        }
        let reused = conn.is_some();
        let mut answers = Vec::new();
        let attempt = tokio::time::timeout(
            FORWARD_TIMEOUT,
            forward_batch(&mut conn, &entry.host, entry.port, &batch, &mut answers),
        );
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = attempt => outcome.unwrap_or_else(|_| Err(anyhow!(
                "no answer within {} s", FORWARD_TIMEOUT.as_secs()
            ))),
        };
        // Copies acknowledged OK leave the queue, whatever happened after them.
        let acked: Vec<i64> = batch
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.is_ok())
            .map(|(o, _)| o.qid)
            .collect();
        for (o, a) in batch.iter().zip(&answers) {
            match a {
                Ok(word) => info!("{} forwarded to {dest}: {word}", o.forward.id),
                Err(why) => warn!("{} refused by {dest}: {why}", o.forward.id),
            }
        }
        if !acked.is_empty() {
            let done = acked.clone();
            if let Err(e) = with_store(&shared, move |s| s.outbound_done_many(&done)).await {
                error!("removing forwarded copies from the queue for {dest}: {e:#}");
            }
        }
        // The first copy not acknowledged, and why.
        let failure = batch
            .iter()
            .zip(answers.iter().map(Some).chain(std::iter::repeat(None)))
            .find_map(|(o, a)| match a {
                Some(Ok(_)) => None,
                Some(Err(why)) => Some((o, format!("the server refused: {why}"))),
                None => Some((
                    o,
                    match &outcome {
                        Err(e) => format!("{e:#}"),
                        Ok(()) => "no answer".to_owned(),
                    },
                )),
            });
        let Some((failed, why)) = failure else {
            backoff = RETRY_FIRST;
            continue;
        };
        conn = None;
        // A kept connection may have been closed by the peer (restart, idle timeout)
        // since its last use: try again at once on a new one.
        if reused && answers.is_empty() && outcome.is_err() {
            continue;
        }
        let qid = failed.qid;
        let attempts = {
            let why = why.clone();
            with_store(&shared, move |s| s.outbound_failed(qid, &why)).await
        };
        warn!(
            "cannot forward {} to {dest} at {}:{} (attempt {}): {why}; it stays queued, next try in {} ms",
            failed.forward.id,
            entry.host,
            entry.port,
            attempts.unwrap_or(0),
            backoff.as_millis()
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// A connection to a peer server, kept between forwards.
struct PeerConn {
    reader: BufReader<TcpStream>,
    last_used: Instant,
}

/// Sends every copy of `batch` as FWD over the (kept) connection to the destination,
/// then reads the answers in order into `answers` (`Ok(word)` for OK, `Err(why)` for
/// ERR). An error means the connection failed; `answers` then holds those read before.
async fn forward_batch(
    conn: &mut Option<PeerConn>,
    host: &str,
    port: u16,
    batch: &[Outbound],
    answers: &mut Vec<Result<String, String>>,
) -> anyhow::Result<()> {
    if conn.is_none() {
        *conn = Some(PeerConn {
            reader: BufReader::new(nuage_coord::net::connect_tcp(host, port).await?),
            last_used: Instant::now(),
        });
    }
    let c = conn.as_mut().expect("connected above");
    c.last_used = Instant::now();
    let mut bytes = Vec::new();
    for o in batch {
        bytes.extend(Request::Forward(o.forward.clone()).to_frame().to_bytes());
    }
    c.reader.get_mut().write_all(&bytes).await?;
    c.reader.get_mut().flush().await?;
    while answers.len() < batch.len() {
        let answer = read_frame(&mut c.reader)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let info = answer.text(0, "answer").unwrap_or_default().to_owned();
        answers.push(match answer.verb.as_str() {
            "OK" => Ok(info),
            "ERR" => Err(info),
            other => return Err(anyhow!("unexpected answer {other}")),
        });
    }
    Ok(())
}
