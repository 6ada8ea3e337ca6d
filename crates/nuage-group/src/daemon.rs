//! The daemon: client sessions (TCP and a Unix socket), the ring over UDP, and the group
//! layer between them.
//!
//! One *core* task owns the ring state machine and the group layer; it reads UDP
//! datagrams, runs timers, and takes client requests from a bounded channel. Each client
//! session has a reader task (frames → requests to the core) and a writer task (the
//! session's bounded queue of messages → socket). A session whose queue is full (the
//! client does not read) is disconnected; a session that sends a malformed frame is
//! ended; neither touches the core's state beyond the session's own disconnect.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use nuage_core::service::Endpoint;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::conf::SpreadConf;
use crate::group::{GroupLayer, Op};
use crate::pace::Pacing;
use crate::ring::packet::{self, Body, DecodeError, Packet};
use crate::ring::{NodeId, Ring, RingConfig, RingId, Send};
use crate::wire::{self, HEADER_LEN, Header, Request, Version, code};

/// How long a new connection has to send its connect request (as Spread: 1 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Most client sessions of one daemon.
pub const MAX_SESSIONS: usize = 1000;
/// Requests from sessions waiting for the core.
const CORE_QUEUE: usize = 1024;
/// Largest datagram read.
const MAX_DATAGRAM_READ: usize = 65_536;
/// Socket buffer asked for the ring's UDP socket, each way.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;
/// Default directory of the Unix socket (`/tmp/<port>`, as Spread).
pub const DEFAULT_RUNTIME_DIR: &str = "/tmp";
/// Environment variable naming the Unix socket directory, for daemon and clients alike.
pub const RUNTIME_DIR_ENV: &str = "NUAGE_GROUP_RUNTIME_DIR";

/// Everything the daemon needs to start.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub conf: SpreadConf,
    /// This daemon's index in `conf.daemons`.
    pub me: usize,
    /// Directory of the Unix socket `<port>` and the status socket `<port>.status`.
    pub runtime_dir: PathBuf,
    /// Where the port, address and socket directory are chosen, named by errors such as
    /// "address in use" (default: [`DAEMON_SETTINGS_HINT`]).
    pub settings_hint: &'static str,
    /// Longest a token is held back to fill frames, in µs (see [`crate::pace`];
    /// default [`crate::pace::TOKEN_PACE_US`], `$NUAGE_GROUP_TOKEN_PACE_US` overrides).
    pub token_pace_us: u64,
}

/// Where `nuage group daemon`'s port, address and socket directory are chosen.
pub const DAEMON_SETTINGS_HINT: &str = "this daemon's line in spread.conf (-c) or --runtime-dir";

impl DaemonConfig {
    /// Chooses this daemon (by `name`, else by local address) and the socket directory
    /// (`runtime_dir`, else `$NUAGE_GROUP_RUNTIME_DIR`, else `/tmp`).
    pub fn new(
        conf: SpreadConf,
        name: Option<&str>,
        runtime_dir: Option<PathBuf>,
    ) -> anyhow::Result<DaemonConfig> {
        conf.check().map_err(anyhow::Error::msg)?;
        let me = conf.pick_self(name).map_err(anyhow::Error::msg)?;
        let me = conf
            .daemons
            .iter()
            .position(|d| d.name == me.name)
            .expect("picked from the list");
        Ok(DaemonConfig {
            conf,
            me,
            runtime_dir: runtime_dir.unwrap_or_else(default_runtime_dir),
            settings_hint: DAEMON_SETTINGS_HINT,
            token_pace_us: Pacing::hold_us_from_env()?,
        })
    }

    pub fn name(&self) -> &str {
        &self.conf.daemons[self.me].name
    }

    pub fn port(&self) -> u16 {
        self.conf.daemons[self.me].port
    }

    /// The Unix socket clients connect to.
    pub fn socket_path(&self) -> PathBuf {
        self.runtime_dir.join(self.port().to_string())
    }

    /// The socket that answers status requests (one JSON document per connection).
    pub fn status_path(&self) -> PathBuf {
        status_path(&self.runtime_dir, self.port())
    }
}

/// The socket directory clients and daemons use by default.
pub fn default_runtime_dir() -> PathBuf {
    std::env::var_os(RUNTIME_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR))
}

/// The status socket of the daemon on `port`.
pub fn status_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("{port}.status"))
}

/// A hash of the daemon list: daemons with different lists ignore each other's packets.
fn config_hash(conf: &SpreadConf) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for d in &conf.daemons {
        for b in format!("{} {} {};", d.name, d.addr, d.port).bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// A daemon with its sockets bound, ready to run.
pub struct Daemon {
    cfg: DaemonConfig,
    tcp: Vec<TcpListener>,
    unix: UnixListener,
    status: UnixListener,
    udp: Option<UdpSocket>,
    core_tx: mpsc::Sender<CoreReq>,
    core_rx: mpsc::Receiver<CoreReq>,
}

/// Asks a running daemon for its status (what `nuage group status` shows).
#[derive(Clone)]
pub struct StatusHandle(mpsc::Sender<CoreReq>);

impl StatusHandle {
    /// The status document, or None once the daemon has stopped.
    pub async fn status(&self) -> Option<serde_json::Value> {
        let (reply, rx) = oneshot::channel();
        self.0.send(CoreReq::Status { reply }).await.ok()?;
        rx.await.ok()
    }
}

impl Daemon {
    /// Binds the client TCP port (on the configured address, and on loopback too), the
    /// Unix socket, the status socket and, with several daemons, the UDP port.
    pub async fn bind(cfg: DaemonConfig) -> anyhow::Result<Daemon> {
        let entry = cfg.conf.daemons[cfg.me].clone();
        let mut tcp = Vec::new();
        let mut addrs = vec![SocketAddr::new(entry.addr, entry.port)];
        if !entry.addr.is_loopback() && !entry.addr.is_unspecified() {
            addrs.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), entry.port));
        }
        for a in addrs {
            let l = nuage_core::net::bind_tcp(a, "the group daemon's clients", cfg.settings_hint)
                .await?;
            tcp.push(l);
        }
        std::fs::create_dir_all(&cfg.runtime_dir).with_context(|| {
            format!(
                "creating the runtime directory {}",
                cfg.runtime_dir.display()
            )
        })?;
        let unix = bind_unix(&cfg.socket_path(), cfg.settings_hint)?;
        let status = bind_unix(&cfg.status_path(), cfg.settings_hint)?;
        let udp = if cfg.conf.daemons.len() > 1 {
            let a = SocketAddr::new(entry.addr, entry.port);
            let s =
                nuage_core::net::bind_udp(a, "the group daemon's ring", cfg.settings_hint).await?;
            set_socket_buffers(&s);
            Some(s)
        } else {
            None
        };
        let (core_tx, core_rx) = mpsc::channel::<CoreReq>(CORE_QUEUE);
        Ok(Daemon {
            cfg,
            tcp,
            unix,
            status,
            udp,
            core_tx,
            core_rx,
        })
    }

    /// A handle for status requests while the daemon runs.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(self.core_tx.clone())
    }

    /// Where clients reach this daemon.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut v: Vec<Endpoint> = self
            .tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| Endpoint::new("tcp", a))
            .collect();
        v.push(Endpoint::new("unix", self.cfg.socket_path().display()));
        if let Some(u) = &self.udp
            && let Ok(a) = u.local_addr()
        {
            v.push(Endpoint::new("udp", a));
        }
        v
    }

    /// Runs until `shutdown` is cancelled; then closes every socket and removes the
    /// socket files.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Daemon {
            cfg,
            tcp,
            unix,
            status,
            udp,
            core_tx,
            core_rx,
        } = self;
        let cfg = Arc::new(cfg);
        let stop = shutdown.child_token();
        let mut tasks = tokio::task::JoinSet::new();
        for l in tcp {
            let (tx, stop, cfg) = (core_tx.clone(), stop.clone(), cfg.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        r = l.accept() => match r {
                            Ok((s, _)) => {
                                let _ = s.set_nodelay(true);
                                let (rd, wr) = s.into_split();
                                spawn_session(rd, wr, tx.clone(), cfg.clone(), stop.clone());
                            }
                            Err(e) => {
                                tracing::warn!("accepting a client: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            });
        }
        {
            let (tx, stop, cfg) = (core_tx.clone(), stop.clone(), cfg.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        r = unix.accept() => match r {
                            Ok((s, _)) => {
                                let (rd, wr) = s.into_split();
                                spawn_session(rd, wr, tx.clone(), cfg.clone(), stop.clone());
                            }
                            Err(e) => {
                                tracing::warn!("accepting a client: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            });
        }
        {
            let (tx, stop) = (core_tx.clone(), stop.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        r = status.accept() => if let Ok((mut s, _)) = r {
                            let (reply, rx) = oneshot::channel();
                            if tx.send(CoreReq::Status { reply }).await.is_err() {
                                break;
                            }
                            if let Ok(v) = rx.await {
                                let _ = s.write_all(format!("{v}\n").as_bytes()).await;
                            }
                        }
                    }
                }
            });
        }
        drop(core_tx);
        let result = Core::new(cfg.clone(), udp).run(core_rx, stop.clone()).await;
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_file(cfg.socket_path());
        let _ = std::fs::remove_file(cfg.status_path());
        result
    }
}

/// Asks for [`UDP_BUFFER_BYTES`] of socket buffer each way, so a rotation's worth of
/// frames is not dropped by a busy receiver; the kernel may grant less
/// (`net.core.rmem_max`), and then root forces it.
fn set_socket_buffers(s: &UdpSocket) {
    let sock = socket2::SockRef::from(s);
    let _ = sock.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = sock.set_send_buffer_size(UDP_BUFFER_BYTES);
    if sock.recv_buffer_size().unwrap_or(0) < UDP_BUFFER_BYTES {
        use std::os::fd::AsRawFd;
        let size = UDP_BUFFER_BYTES as libc::c_int;
        // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and its size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// Binds a Unix socket, replacing a stale socket file nobody listens on.
fn bind_unix(path: &Path, settings_hint: &str) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{} is in use: another daemon listens there; stop it, or choose another port or socket directory with {settings_hint}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding the Unix socket {}", path.display()))
}

// ---------------------------------------------------------------------------------------
// The core

enum CoreReq {
    Connect {
        name: String,
        membership: bool,
        queue: mpsc::Sender<Bytes>,
        reply: oneshot::Sender<Result<(String, u64), i32>>,
    },
    Op {
        private: String,
        session: u64,
        op: Op,
    },
    Disconnect {
        private: String,
        session: u64,
    },
    Status {
        reply: oneshot::Sender<serde_json::Value>,
    },
}

struct SessionEntry {
    id: u64,
    queue: mpsc::Sender<Bytes>,
    membership: bool,
}

struct Core {
    cfg: Arc<DaemonConfig>,
    udp: Option<UdpSocket>,
    peers: Vec<SocketAddr>,
    ring: Ring,
    group: GroupLayer,
    sessions: HashMap<String, SessionEntry>,
    next_session: u64,
    start: Instant,
    sends: Vec<Send>,
    clients_kicked: u64,
    datagrams_refused: u64,
    /// The last configuration logged.
    logged_ring: Option<RingId>,
    pacing: Pacing,
    /// A token held back (token pacing), handed to the ring when its timer ends or
    /// half a frame's worth of messages waits.
    paced: Option<PacedToken>,
    /// Messages the last token handed to the ring here took (a stream under way?).
    last_visit_ops: usize,
    pace_stats: PaceStats,
}

struct PacedToken {
    packet: Packet,
    /// Ends after the hold. tokio's timers count whole milliseconds; the hold is a few
    /// hundred microseconds, so a blocking-pool thread sleeps it (nanosleep).
    timer: tokio::task::JoinHandle<()>,
}

/// Token pacing counters, for the status page and the benchmark.
#[derive(Debug, Default, serde::Serialize)]
struct PaceStats {
    hold_us: u64,
    /// Tokens held back.
    tokens_paced: u64,
    /// Of those, released early because half a frame's worth of messages was waiting.
    released_full: u64,
    /// Tokens not held: the ring state did not allow it (see `Ring::may_pace`).
    declined_by_ring: u64,
    /// Tokens not held: the ring allowed it, but too few or enough messages waited.
    declined_by_load: u64,
}

impl Core {
    fn new(cfg: Arc<DaemonConfig>, udp: Option<UdpSocket>) -> Core {
        let c = &cfg.conf;
        let t = &c.timeouts;
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let mut rc = RingConfig::new(c.daemons.len(), cfg.me as NodeId, config_hash(c), boot);
        rc.token_timeout = t.token.as_millis() as u64;
        rc.hurry_timeout = t.hurry.as_millis() as u64;
        rc.alive_timeout = t.alive.as_millis() as u64;
        rc.join_timeout = t.join.as_millis() as u64;
        rc.gather_timeout = t.gather.as_millis() as u64;
        rc.form_timeout = t.form.as_millis() as u64;
        rc.window = c.window;
        rc.personal_window = c.personal_window;
        let pacing = Pacing::new(
            cfg.token_pace_us,
            rc.hurry_timeout,
            rc.max_datagram - packet::DATA_OVERHEAD,
        );
        let names = c.daemons.iter().map(|d| d.name.clone()).collect();
        Core {
            peers: c
                .daemons
                .iter()
                .map(|d| SocketAddr::new(d.addr, d.port))
                .collect(),
            ring: Ring::new(rc),
            group: GroupLayer::new(cfg.me as NodeId, names, boot),
            cfg,
            udp,
            sessions: HashMap::new(),
            next_session: 1,
            start: Instant::now(),
            sends: Vec::new(),
            clients_kicked: 0,
            datagrams_refused: 0,
            logged_ring: None,
            pacing,
            paced: None,
            last_visit_ops: 0,
            pace_stats: PaceStats {
                hold_us: pacing.hold.as_micros() as u64,
                ..PaceStats::default()
            },
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<CoreReq>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let now = self.now();
        self.ring.start(now, &mut self.group, &mut self.sends);
        self.flush().await;
        let mut buf = vec![0u8; MAX_DATAGRAM_READ];
        loop {
            let deadline = self.ring.next_deadline();
            let sleep_for = Duration::from_millis(deadline.saturating_sub(self.now()).min(60_000));
            let can_accept = self.group.can_accept();
            tokio::select! {
                _ = stop.cancelled() => break,
                req = rx.recv(), if can_accept => match req {
                    Some(req) => self.on_request(req),
                    None => break,
                },
                r = recv(self.udp.as_ref(), &mut buf) => match r {
                    Ok((n, from)) => self.on_datagram(Bytes::copy_from_slice(&buf[..n]), from),
                    Err(e) => tracing::debug!("ring socket: {e}"),
                },
                _ = tokio::time::sleep(sleep_for) => {
                    let now = self.now();
                    self.ring.tick(now, &mut self.group, &mut self.sends);
                }
                _ = paced_done(&mut self.paced) => self.release_paced(),
            }
            self.flush().await;
        }
        Ok(())
    }

    fn on_request(&mut self, req: CoreReq) {
        match req {
            CoreReq::Connect {
                name,
                membership,
                queue,
                reply,
            } => {
                let r = self.register(name, membership, queue);
                let _ = reply.send(r);
            }
            CoreReq::Op {
                private,
                session,
                op,
            } => {
                if self.sessions.get(&private).is_none_or(|s| s.id != session) {
                    return; // the session was disconnected meanwhile
                }
                self.submit(&op);
            }
            CoreReq::Disconnect { private, session } => {
                if self.sessions.get(&private).is_some_and(|s| s.id == session) {
                    tracing::info!("client {private} disconnected");
                    self.sessions.remove(&private);
                    self.submit(&Op::Kill { client: private });
                }
            }
            CoreReq::Status { reply } => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn register(
        &mut self,
        name: String,
        membership: bool,
        queue: mpsc::Sender<Bytes>,
    ) -> Result<(String, u64), i32> {
        if self.sessions.len() >= MAX_SESSIONS {
            tracing::warn!("refusing a client: {MAX_SESSIONS} sessions already");
            return Err(code::REJECT_QUOTA);
        }
        let daemon = self.cfg.name().to_owned();
        let private = if name.is_empty() {
            // Invent a unique name, as Spread does for clients that give none.
            loop {
                let n = self.next_session;
                self.next_session += 1;
                let p = wire::private_group(&format!("u{n}"), &daemon);
                if !self.sessions.contains_key(&p) {
                    break p;
                }
            }
        } else {
            let p = wire::private_group(&name, &daemon);
            if self.sessions.contains_key(&p) {
                return Err(code::REJECT_NOT_UNIQUE);
            }
            p
        };
        if private.len() >= wire::MAX_GROUP_NAME {
            return Err(code::REJECT_ILLEGAL_NAME);
        }
        let id = self.next_session;
        self.next_session += 1;
        tracing::info!("client {private} connected");
        self.sessions.insert(
            private.clone(),
            SessionEntry {
                id,
                queue,
                membership,
            },
        );
        Ok((private, id))
    }

    fn submit(&mut self, op: &Op) {
        self.group.submit(op);
        let now = self.now();
        self.ring
            .notify_pending(now, &mut self.group, &mut self.sends);
        if self.paced.is_some() && self.pacing.should_release(self.group.pending_load()) {
            self.pace_stats.released_full += 1;
            self.release_paced();
        }
    }

    /// Holds `p` back if it is a token worth pacing (see [`crate::pace`]); gives it back
    /// otherwise.
    fn try_pace(&mut self, p: Packet) -> Option<Packet> {
        let Body::Token(t) = &p.body else {
            return Some(p);
        };
        if self.paced.is_some() || self.pacing.hold.is_zero() {
            return Some(p);
        }
        if !self.ring.may_pace(t) {
            self.pace_stats.declined_by_ring += 1;
            return Some(p);
        }
        if !self
            .pacing
            .should_hold(self.group.pending_load(), self.last_visit_ops)
        {
            self.pace_stats.declined_by_load += 1;
            return Some(p);
        }
        let hold = self.pacing.hold;
        self.pace_stats.tokens_paced += 1;
        self.paced = Some(PacedToken {
            packet: p,
            timer: tokio::task::spawn_blocking(move || std::thread::sleep(hold)),
        });
        None
    }

    /// Hands the held token to the ring.
    fn release_paced(&mut self) {
        if let Some(t) = self.paced.take() {
            self.handle_packet(t.packet);
        }
    }

    /// Hands a packet to the ring, noting how many messages a token's visit took.
    fn handle_packet(&mut self, p: Packet) {
        let token = matches!(p.body, Body::Token(_));
        let before = self.group.stats().operations_sent;
        let now = self.now();
        self.ring.handle(now, p, &mut self.group, &mut self.sends);
        if token {
            self.last_visit_ops = (self.group.stats().operations_sent - before) as usize;
        }
    }

    fn on_datagram(&mut self, data: Bytes, from: SocketAddr) {
        match packet::decode(data, config_hash(&self.cfg.conf)) {
            Ok(p) => {
                // A packet must come from the address of the daemon it names.
                if self
                    .peers
                    .get(p.sender as usize)
                    .is_none_or(|a| a.ip() != from.ip())
                {
                    self.datagrams_refused += 1;
                    return;
                }
                if let Some(p) = self.try_pace(p) {
                    self.handle_packet(p);
                } // else held back; handled when released
            }
            Err(DecodeError::OtherConfiguration { hash }) => {
                self.datagrams_refused += 1;
                tracing::debug!("{from} runs another configuration (hash {hash:08x})");
            }
            Err(e) => {
                self.datagrams_refused += 1;
                tracing::debug!("refusing a datagram from {from}: {e:?}");
            }
        }
    }

    /// Sends the ring's packets and hands deliveries to sessions.
    async fn flush(&mut self) {
        let (ring, members) = self.ring.ring();
        if self.ring.is_operational() && self.logged_ring != Some(ring) {
            self.logged_ring = Some(ring);
            let names: Vec<&str> = members
                .iter()
                .map(|n| self.cfg.conf.daemons[n as usize].name.as_str())
                .collect();
            tracing::info!("configuration {ring}: daemons {}", names.join(", "));
        }
        loop {
            for s in std::mem::take(&mut self.sends) {
                let Some(udp) = &self.udp else { continue };
                for n in s.to.iter() {
                    if let Some(a) = self.peers.get(n as usize)
                        && let Err(e) = udp.send_to(&s.packet, a).await
                    {
                        tracing::debug!("sending to daemon {n} at {a}: {e}");
                    }
                }
            }
            let deliveries = self.group.take_deliveries();
            if deliveries.is_empty() {
                break;
            }
            for d in deliveries {
                let Some(s) = self.sessions.get(&d.to) else {
                    continue;
                };
                if d.membership && !s.membership {
                    continue;
                }
                match s.queue.try_send(d.frame) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(
                            "client {} has more than {} unread messages (MaxSessionMessages); disconnecting it",
                            d.to,
                            self.cfg.conf.max_session_messages
                        );
                        self.clients_kicked += 1;
                        self.sessions.remove(&d.to);
                        self.submit(&Op::Kill { client: d.to });
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
    }

    fn status(&self) -> serde_json::Value {
        let mut clients: Vec<&String> = self.sessions.keys().collect();
        clients.sort();
        let daemons: Vec<serde_json::Value> = self
            .cfg
            .conf
            .daemons
            .iter()
            .map(|d| serde_json::json!({"name": d.name, "address": format!("{}:{}", d.addr, d.port)}))
            .collect();
        let (ring, members) = self.ring.ring();
        let member_names: Vec<&str> = members
            .iter()
            .map(|n| self.cfg.conf.daemons[n as usize].name.as_str())
            .collect();
        serde_json::json!({
            "daemon": self.cfg.name(),
            "port": self.cfg.port(),
            "configured_daemons": daemons,
            "ring": ring.to_string(),
            "members": member_names,
            "operational": self.ring.is_operational(),
            "ring_state": self.ring.status(),
            "clients": clients,
            "groups": self.group.groups().into_iter().map(|(g, m)| serde_json::json!({"group": g, "members": m})).collect::<Vec<_>>(),
            "group_stats": self.group.stats(),
            "clients_disconnected_for_unread_messages": self.clients_kicked,
            "datagrams_refused": self.datagrams_refused,
            "token_pacing": self.pace_stats,
        })
    }
}

/// Ends when the held token's hold is over (never, with no token held).
async fn paced_done(paced: &mut Option<PacedToken>) {
    match paced {
        Some(t) => {
            let _ = (&mut t.timer).await;
        }
        None => std::future::pending().await,
    }
}

async fn recv(udp: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match udp {
        Some(u) => u.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------
// Sessions

fn spawn_session<R, W>(
    rd: R,
    wr: W,
    core: mpsc::Sender<CoreReq>,
    cfg: Arc<DaemonConfig>,
    stop: CancellationToken,
) where
    R: AsyncRead + Unpin + std::marker::Send + 'static,
    W: AsyncWrite + Unpin + std::marker::Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = session(rd, wr, core, cfg, stop).await {
            tracing::warn!("client session ended: {e}");
        }
    });
}

/// What the connect handshake learned.
struct Hello {
    version: Version,
    name: String,
    membership: bool,
}

/// Reads the connect request and runs the authentication exchange. On a refusal, the
/// error byte has been sent.
async fn handshake<R, W>(rd: &mut R, wr: &mut W) -> anyhow::Result<Hello>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut head = [0u8; 2];
    rd.read_exact(&mut head).await?;
    let (major, minor) = (head[0], head[1]);
    let patch = if Version::sends_patch(major, minor) {
        rd.read_u8().await?
    } else {
        0
    };
    let flags = rd.read_u8().await?;
    let name_len = rd.read_u8().await? as usize;
    let version = Version {
        major,
        minor,
        patch,
    };
    if !version.supported() {
        wr.write_all(&[code::REJECT_VERSION as u8]).await?;
        anyhow::bail!("client version {version} is older than 3.1.0");
    }
    if name_len > wire::MAX_PRIVATE_NAME {
        wr.write_all(&[code::REJECT_ILLEGAL_NAME as u8]).await?;
        anyhow::bail!(
            "client name of {name_len} bytes (limit {})",
            wire::MAX_PRIVATE_NAME
        );
    }
    let mut name = vec![0u8; name_len];
    rd.read_exact(&mut name).await?;
    let name = match String::from_utf8(name) {
        Ok(n) if wire::check_private_name(&n).is_ok() => n,
        _ => {
            wr.write_all(&[code::REJECT_ILLEGAL_NAME as u8]).await?;
            anyhow::bail!("illegal client name");
        }
    };
    if version.authenticates() {
        wr.write_all(&wire::encode_auth_list()).await?;
        let mut choice = [0u8; wire::MAX_AUTH_NAME * wire::MAX_AUTH_METHODS];
        rd.read_exact(&mut choice).await?;
        if let Err(e) = wire::check_auth_choice(&choice) {
            wr.write_all(&[code::REJECT_AUTH as u8]).await?;
            anyhow::bail!("{e}");
        }
    }
    Ok(Hello {
        version,
        name,
        membership: flags & 1 != 0,
    })
}

async fn session<R, W>(
    mut rd: R,
    mut wr: W,
    core: mpsc::Sender<CoreReq>,
    cfg: Arc<DaemonConfig>,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin + std::marker::Send + 'static,
    W: AsyncWrite + Unpin + std::marker::Send + 'static,
{
    let hello = match tokio::time::timeout(CONNECT_TIMEOUT, handshake(&mut rd, &mut wr)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!("refused a connection: {e:#}");
            return Ok(());
        }
        Err(_) => {
            tracing::debug!("a connection sent no connect request within {CONNECT_TIMEOUT:?}");
            return Ok(());
        }
    };
    let (queue, mut inbox) = mpsc::channel::<Bytes>(cfg.conf.max_session_messages);
    let (reply, answer) = oneshot::channel();
    core.send(CoreReq::Connect {
        name: hello.name,
        membership: hello.membership,
        queue,
        reply,
    })
    .await
    .map_err(|_| anyhow::anyhow!("daemon stopping"))?;
    let (private, id) = match answer.await? {
        Ok(x) => x,
        Err(code) => {
            wr.write_all(&[code as u8]).await?;
            return Ok(());
        }
    };
    wr.write_all(&wire::encode_accept(hello.version, &private))
        .await?;

    // Writer: the session's queue to the socket. It ends when the core drops the queue
    // (disconnect, too many unread messages, daemon stop) or the socket fails.
    let ended = CancellationToken::new();
    let writer = {
        let ended = ended.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = inbox.recv().await {
                batch.clear();
                batch.extend_from_slice(&first);
                while batch.len() < 256 * 1024 {
                    match inbox.try_recv() {
                        Ok(f) => batch.extend_from_slice(&f),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&batch).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
            ended.cancel();
        })
    };

    let result = tokio::select! {
        _ = ended.cancelled() => Ok(()),
        _ = stop.cancelled() => Ok(()),
        r = read_requests(&mut rd, &private, id, &core) => r,
    };
    // Tell the core; it drops the queue, which ends the writer.
    let _ = core
        .send(CoreReq::Disconnect {
            private: private.clone(),
            session: id,
        })
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    result.with_context(|| format!("client {private}"))
}

/// Reads frames until the client disconnects (KILL or end of stream) or breaks the
/// protocol (an error: the session ends).
async fn read_requests<R: AsyncRead + Unpin>(
    rd: &mut R,
    private: &str,
    session: u64,
    core: &mpsc::Sender<CoreReq>,
) -> anyhow::Result<()> {
    let mut head = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    loop {
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let h =
            Header::decode(&head).map_err(|e| anyhow::anyhow!("malformed message header: {e}"))?;
        wire::validate_client_header(&h, private)
            .map_err(|e| anyhow::anyhow!("malformed message: {e}"))?;
        payload.resize(h.payload_len().expect("validated"), 0);
        rd.read_exact(&mut payload).await?;
        let req = wire::decode_request(&h, &payload)
            .map_err(|e| anyhow::anyhow!("malformed message: {e}"))?;
        let op = match req {
            Request::Kill => return Ok(()),
            Request::Join(group) => Op::Join {
                client: private.to_owned(),
                group,
            },
            Request::Leave(group) => Op::Leave {
                client: private.to_owned(),
                group,
            },
            Request::Multicast(m) => Op::Data { frame: m.frame },
        };
        core.send(CoreReq::Op {
            private: private.to_owned(),
            session,
            op,
        })
        .await
        .map_err(|_| anyhow::anyhow!("daemon stopping"))?;
    }
}
