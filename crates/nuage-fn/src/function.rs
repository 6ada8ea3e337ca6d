//! A function running on this machine: its listening port, the admission of its
//! connections, their placement (here or on another machine), and serving them here in
//! spawn or pool mode. Removal drains it: the port closes, requests in flight finish,
//! then its processes stop.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, BufReader, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balancer::Target;
use crate::limiter::{Limiter, Permit, Refusal};
use crate::line::{self, Line};
use crate::logs::LogRing;
use crate::pool::Pool;
use crate::process::Program;
use crate::relay;
use crate::service::Shared;
use crate::spawn::Spawner;
use crate::spec::{FunctionSpec, Limits, Mode};
use crate::stats::{ErrorKind, GaugeGuard, Stats};
use crate::types::LocalStatus;

/// How long a refusal line may take to leave.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// After the drain timeout, how long the killed requests may take to end.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// After a failed accept (out of file descriptors and the like), the wait before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A client connection to serve on this machine.
pub enum Conn {
    /// Accepted from the function's port: a blocking socket that tokio does not watch,
    /// so spawn mode hands it to the process as it is (no epoll registration to add and
    /// remove, no mode switch: three system calls less per connection).
    Accepted(std::net::TcpStream),
    /// Relayed from another machine, or converted for pool mode or a relay.
    Tokio(TcpStream),
}

impl Conn {
    /// The connection as a tokio stream (pool mode, relays, refusals).
    pub fn into_tokio(self) -> std::io::Result<TcpStream> {
        match self {
            Conn::Accepted(s) => {
                s.set_nonblocking(true)?;
                TcpStream::from_std(s)
            }
            Conn::Tokio(s) => Ok(s),
        }
    }

    /// The connection as a blocking socket tokio no longer watches (spawn mode).
    pub fn into_blocking(self) -> std::io::Result<std::net::TcpStream> {
        match self {
            Conn::Accepted(s) => Ok(s),
            Conn::Tokio(s) => {
                let s = s.into_std()?;
                s.set_nonblocking(false)?;
                Ok(s)
            }
        }
    }
}

/// How the function's code is run.
pub enum Engine {
    /// Boxed: a spawner holds the prepared command; a pool is behind an Arc.
    Spawn(Box<Spawner>),
    Pool(Arc<Pool>),
}

pub struct Function {
    pub name: String,
    spec: RwLock<FunctionSpec>,
    pub program: Program,
    pub engine: Engine,
    pub stats: Arc<Stats>,
    pub logs: Arc<LogRing>,
    limiter: Arc<Limiter>,
    /// Connection and gateway tasks, awaited by a drain.
    tracker: TaskTracker,
    /// Cancelled when the function stops taking new connections and requests.
    draining: CancellationToken,
    /// Cancelled when whatever still runs must end now.
    stop: CancellationToken,
    max_line: usize,
    max_response: usize,
    connection_idle: Duration,
    pub local_addr: SocketAddr,
}

impl Function {
    /// Resolves the command, binds the port and starts accepting.
    pub async fn start(shared: &Arc<Shared>, spec: FunctionSpec) -> Result<Arc<Function>, String> {
        let path = shared.search.resolve(&spec.command[0])?;
        let addr = SocketAddr::new(shared.listen_ip, spec.port);
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            nuage_core::net::bind_error(&e, addr, &format!("function `{}`", spec.name), "--port")
                .to_string()
        })?;
        let local_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stats = Arc::new(Stats::new(&shared.metrics, &spec.name));
        let logs = Arc::new(LogRing::default());
        let program = Program {
            function: spec.name.clone(),
            path,
            args: spec.command[1..].to_vec(),
            env: spec.env.clone(),
        };
        let draining = shared.shutdown.child_token();
        let engine = match spec.mode {
            Mode::Spawn => Engine::Spawn(Box::new(
                Spawner::new(program.clone(), stats.clone(), logs.clone())
                    .map_err(|e| format!("function `{}`: {e}", spec.name))?,
            )),
            Mode::Pool => {
                let pool = Pool::new(
                    program.clone(),
                    spec.limits,
                    stats.clone(),
                    logs.clone(),
                    shared.config.max_response(),
                );
                tokio::spawn(pool.clone().maintain(draining.clone()));
                Engine::Pool(pool)
            }
        };
        let function = Arc::new(Function {
            name: spec.name.clone(),
            spec: RwLock::new(spec),
            program,
            engine,
            stats,
            logs,
            limiter: Arc::new(Limiter::default()),
            tracker: TaskTracker::new(),
            draining,
            stop: shared.shutdown.child_token(),
            max_line: shared.config.max_line(),
            max_response: shared.config.max_response(),
            connection_idle: shared.config.connection_idle_timeout(),
            local_addr,
        });
        tokio::spawn(accept_loop(function.clone(), shared.clone(), listener));
        tracing::info!(
            function = %function.name,
            "listening on {local_addr} ({}, {})",
            function.spec().mode,
            function.program.path.display()
        );
        Ok(function)
    }

    pub fn spec(&self) -> FunctionSpec {
        self.spec.read().expect("spec lock poisoned").clone()
    }

    pub fn limits(&self) -> Limits {
        self.spec.read().expect("spec lock poisoned").limits
    }

    /// Applies a new spec that needs no restart (limits, balance, placement).
    pub fn update(&self, spec: FunctionSpec) {
        assert!(!self.spec().needs_restart(&spec), "update needs a restart");
        if let Engine::Pool(pool) = &self.engine {
            pool.set_limits(spec.limits);
        }
        *self.spec.write().expect("spec lock poisoned") = spec;
    }

    /// Longest answer line of an instance, newline included.
    pub fn max_response(&self) -> usize {
        self.max_response
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Admits a connection or gateway request from `source` (per-source limit applies
    /// only with a source).
    pub fn admit(self: &Arc<Self>, source: Option<std::net::IpAddr>) -> Result<Permit, Refusal> {
        let limits = self.limits();
        self.limiter
            .admit(source, limits.max_conns, limits.per_source)
            .inspect_err(|r| self.stats.error(r.kind))
    }

    /// Runs `fut` as part of this function: a drain waits for it.
    pub async fn tracked<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.tracker.track_future(fut).await
    }

    pub fn status(&self) -> LocalStatus {
        let (error, instances) = match &self.engine {
            Engine::Spawn(s) => (s.failing(), self.stats.instances.get()),
            Engine::Pool(p) => (p.failing(), i64::from(p.live())),
        };
        let state = if self.is_draining() {
            "draining"
        } else if error.is_some() {
            "failing"
        } else {
            "running"
        }
        .to_owned();
        LocalStatus {
            name: self.name.clone(),
            state,
            error,
            program: Some(self.program.path.display().to_string()),
            instances: instances.max(0) as u64,
            in_flight: self.stats.in_flight.get().max(0) as u64,
            connections: self.stats.connections.get().max(0) as u64,
            served: self.stats.requests.get(),
            errors: self.stats.errors_total(),
            cold_starts: self.stats.cold_starts.get(),
        }
    }

    /// Serves a connection on this machine (accepted here, or relayed here).
    pub async fn serve_local(self: &Arc<Self>, conn: Conn, client: SocketAddr, permit: Permit) {
        let _permit = permit;
        self.stats.connections_total.inc();
        let _open = GaugeGuard::new(&self.stats.connections);
        match &self.engine {
            Engine::Spawn(spawner) => {
                let socket = match conn.into_blocking() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(function = %self.name, "cannot hand the connection over: {e}");
                        return;
                    }
                };
                spawner
                    .serve(
                        socket,
                        client,
                        &self.limits(),
                        self.connection_idle,
                        &self.draining,
                        &self.stop,
                    )
                    .await
            }
            Engine::Pool(pool) => match conn.into_tokio() {
                Ok(stream) => self.serve_lines(pool, stream).await,
                Err(e) => tracing::warn!(function = %self.name, "connection: {e}"),
            },
        }
    }

    /// Pool mode: request lines in, one answer line out per request, until the client
    /// ends, goes idle, or the function drains.
    async fn serve_lines(&self, pool: &Arc<Pool>, stream: TcpStream) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        loop {
            let next = tokio::select! {
                biased;
                _ = self.draining.cancelled() => break,
                r = tokio::time::timeout(self.connection_idle, line::read_line(&mut reader, self.max_line)) => r,
            };
            let mut reply = match next {
                Err(_) | Ok(Err(_)) | Ok(Ok(Line::End)) => break,
                Ok(Ok(Line::TooLong)) => {
                    self.stats.error(ErrorKind::TooLong);
                    format!("ERR request too long (max {} bytes)", self.max_line).into_bytes()
                }
                Ok(Ok(Line::Full(request))) => {
                    let answer = tokio::select! {
                        a = pool.call(&request) => a,
                        _ = self.stop.cancelled() => break,
                    };
                    match answer {
                        Ok(answer) => answer,
                        Err(e) => format!("ERR {}", e.message()).into_bytes(),
                    }
                }
            };
            reply.push(b'\n');
            if write.write_all(&reply).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    }

    /// Stops taking connections (the port closes), lets requests in flight finish for at
    /// most `grace`, ends what remains, then stops the processes.
    pub async fn drain(&self, grace: Duration) {
        self.draining.cancel();
        self.tracker.close();
        if let Engine::Spawn(spawner) = &self.engine {
            spawner.close();
        }
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            if !grace.is_zero() {
                tracing::warn!(function = %self.name, "requests still running after {grace:?}: ending them");
            }
            self.stop.cancel();
            let _ = tokio::time::timeout(KILL_WAIT, self.tracker.wait()).await;
        }
        self.stop.cancel();
        if let Engine::Pool(pool) = &self.engine {
            let _ = tokio::time::timeout(KILL_WAIT, pool.close()).await;
        }
        tracing::info!(function = %self.name, "stopped");
    }

    /// Ends everything now (the node stops).
    pub async fn kill(&self) {
        self.stop.cancel();
        self.drain(Duration::ZERO).await;
    }
}

/// Writes `ERR <message>` and closes the connection.
pub async fn refuse(stream: &mut TcpStream, message: &str) {
    let line = format!("ERR {message}\n");
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn accept_loop(function: Arc<Function>, shared: Arc<Shared>, listener: TcpListener) {
    // The listener is watched by tokio, the accepted sockets are not (see [`Conn`]).
    let listener = match listener.into_std().and_then(|l| {
        // SAFETY: the listener's descriptor stays valid and the same until the AsyncFd
        // (which owns the listener) is dropped.
        unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
    }) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(function = %function.name, "cannot watch the port: {e}");
            return;
        }
    };
    loop {
        let ready = tokio::select! {
            _ = function.draining.cancelled() => break,
            r = listener.readable() => r,
        };
        let mut ready = match ready {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(function = %function.name, "accept: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        // accept4(SOCK_CLOEXEC): a blocking socket, whatever the listener's mode.
        match ready.try_io(|l| socket2::SockRef::from(l.get_ref()).accept()) {
            Ok(Ok((socket, addr))) => {
                let Some(client) = addr.as_socket() else {
                    continue; // not an IP peer: cannot happen on a TCP listener
                };
                let f = function.clone();
                let s = shared.clone();
                function
                    .tracker
                    .spawn(async move { f.place(&s, socket.into(), client).await });
            }
            Ok(Err(e)) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(function = %function.name, "accept: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
            Err(_would_block) => {} // readiness cleared by try_io: wait for the next
        }
    }
    drop(listener);
}

impl Function {
    /// Admits a new connection and places it: here, or relayed to another machine that
    /// runs the function; if the chosen machine cannot take it, the next one.
    async fn place(
        self: Arc<Self>,
        shared: &Arc<Shared>,
        socket: std::net::TcpStream,
        client: SocketAddr,
    ) {
        let _ = socket.set_nodelay(true);
        let conn = Conn::Accepted(socket);
        let permit = match self.admit(Some(client.ip())) {
            Ok(p) => p,
            Err(refusal) => {
                if let Ok(mut stream) = conn.into_tokio() {
                    refuse(&mut stream, &refusal.message).await;
                }
                return;
            }
        };
        let spec = self.spec();
        let candidates = shared.candidates(&spec);
        if candidates.len() <= 1 {
            let _placed = shared.balancer.placed(&self.name, &shared.me);
            return self.serve_local(conn, client, permit).await;
        }
        // Balanced: relays need tokio's stream.
        let mut stream = match conn.into_tokio() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(function = %self.name, "connection: {e}");
                return;
            }
        };
        let order = shared.balancer.order(&self.name, spec.balance, candidates);
        let mut failures = Vec::new();
        for candidate in order {
            match candidate.target {
                Target::Local => {
                    let _placed = shared.balancer.placed(&self.name, &candidate.machine);
                    return self.serve_local(Conn::Tokio(stream), client, permit).await;
                }
                Target::Peer { host, port } => {
                    match relay::connect(
                        &host,
                        port,
                        &self.name,
                        client,
                        &mut stream,
                        &shared.ready,
                    )
                    .await
                    {
                        Ok(upstream) => {
                            let _placed = shared.balancer.placed(&self.name, &candidate.machine);
                            self.stats.relayed.inc();
                            tokio::select! {
                                _ = relay::splice(stream, upstream) => {}
                                _ = self.stop.cancelled() => {}
                            }
                            return;
                        }
                        Err(e) => {
                            if e.unreachable {
                                shared.cluster.mark_down(&candidate.machine, &e.message);
                            }
                            failures.push(format!("{}: {}", candidate.machine, e.message));
                        }
                    }
                }
            }
        }
        self.stats.error(ErrorKind::NoMachine);
        refuse(
            &mut stream,
            &format!(
                "no machine can take the connection ({})",
                failures.join("; ")
            ),
        )
        .await;
    }
}
