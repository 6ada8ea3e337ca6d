//! The functions service of a node: the registry, the functions running on this machine,
//! the relay that takes connections other machines place here, and the loop that checks
//! the other machines' health and keeps every registry the same.
//!
//! Every change (deploy, scale, removal) becomes a registry entry with a new version,
//! merged here, applied here, and pushed to the other machines; a machine that missed the
//! push pulls it when it sees that its registry digest differs from another's.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nuage_core::metrics::Metrics;
use nuage_core::service::{BoxFuture, Endpoint, Service, ServiceContext, Started};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::balancer::{Balancer, Candidate, Target};
use crate::cluster::{self, Cluster, HEALTH_INTERVAL, HEALTH_TIMEOUT, PEER_CALL_TIMEOUT};
use crate::command::SearchPath;
use crate::config::{FnConfig, SECTION};
use crate::function::{Function, refuse};
use crate::ready::Ready;
use crate::registry::{Entry, Registry};
use crate::relay;
use crate::spec::FunctionSpec;
use crate::types::{ApplyReply, LocalStatus, NodeReport};

/// How often functions that could not start (port taken, command missing) are tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long the node's stop waits for every function to end.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(8);

/// The functions service, as `nuage up` runs it.
pub struct FunctionsService;

impl Service for FunctionsService {
    fn name(&self) -> &'static str {
        "functions"
    }

    fn start(self: Box<Self>, ctx: ServiceContext) -> BoxFuture<anyhow::Result<Started>> {
        Box::pin(start(ctx))
    }
}

/// What every part of the service shares.
pub struct Shared {
    /// This node's name.
    pub me: String,
    pub config: FnConfig,
    pub listen_ip: IpAddr,
    pub search: SearchPath,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub balancer: Arc<Balancer>,
    /// Relay connections to the other machines, opened ahead of need.
    pub ready: Arc<Ready>,
    pub cluster: Cluster,
    pub relay_port: u16,
    registry: Mutex<Registry>,
    running: Mutex<BTreeMap<String, Arc<Function>>>,
    /// Functions placed here that could not start, and why.
    start_errors: Mutex<BTreeMap<String, String>>,
    /// One reconciliation at a time (they await drains and starts).
    apply_lock: tokio::sync::Mutex<()>,
    /// Wakes the reconciler (a pulled registry entry changed something).
    reconcile: Notify,
}

async fn start(ctx: ServiceContext) -> anyhow::Result<Started> {
    let config: FnConfig = ctx.config.section(SECTION)?;
    config.check().map_err(anyhow::Error::msg)?;
    let listen_ip = config.listen_ip.unwrap_or(ctx.config.listen.api.ip());
    let registry = Registry::open(&ctx.data_dir)?;
    let relay_addr = SocketAddr::new(listen_ip, config.relay_port);
    let relay_listener =
        nuage_core::net::bind_tcp(relay_addr, "the functions relay", "[functions] relay_port")
            .await?;
    let relay_port = relay_listener.local_addr()?.port();
    let me = ctx.config.name.to_string();
    let shared = Arc::new(Shared {
        me: me.clone(),
        search: SearchPath::new(&config.path),
        config,
        listen_ip,
        metrics: ctx.metrics.clone(),
        shutdown: ctx.shutdown.clone(),
        balancer: Arc::new(Balancer::default()),
        ready: Arc::new(Ready::default()),
        cluster: Cluster::new(me, ctx.peers.clone()),
        relay_port,
        registry: Mutex::new(registry),
        running: Mutex::new(BTreeMap::new()),
        start_errors: Mutex::new(BTreeMap::new()),
        apply_lock: tokio::sync::Mutex::new(()),
        reconcile: Notify::new(),
    });
    // Every function of the registry placed here listens again.
    shared.apply_local().await;
    let count = shared.running().len();
    tracing::info!("{count} functions running; relay on {listen_ip}:{relay_port}");

    let routes = crate::api::routes(shared.clone());
    let task = tokio::spawn(run(shared.clone(), relay_listener));
    Ok(Started {
        endpoints: vec![Endpoint::new("tcp", SocketAddr::new(listen_ip, relay_port))],
        routes: Some(routes),
        task,
    })
}

/// Runs until shutdown: the relay, health checks, anti-entropy, retries; then stops every
/// function and flushes the registry.
async fn run(shared: Arc<Shared>, relay_listener: TcpListener) -> anyhow::Result<()> {
    let relay = tokio::spawn(relay_loop(shared.clone(), relay_listener));
    let health = tokio::spawn(health_loop(shared.clone()));
    let reconciler = tokio::spawn(reconcile_loop(shared.clone()));
    shared.shutdown.cancelled().await;
    shared.ready.clear();
    let functions: Vec<Arc<Function>> = std::mem::take(&mut *shared.running())
        .into_values()
        .collect();
    if tokio::time::timeout(STOP_TIMEOUT, stop_all(functions, true))
        .await
        .is_err()
    {
        tracing::warn!("functions still stopping after {STOP_TIMEOUT:?}");
    }
    let _ = tokio::join!(relay, health, reconciler);
    shared.registry().checkpoint()?;
    Ok(())
}

/// Drains (or, with `kill`, ends at once) every function given, concurrently.
async fn stop_all(functions: Vec<Arc<Function>>, kill: bool) {
    let mut set = tokio::task::JoinSet::new();
    for f in functions {
        set.spawn(async move {
            if kill {
                f.kill().await
            } else {
                f.drain(f.limits().timeout()).await
            }
        });
    }
    while set.join_next().await.is_some() {}
}

impl Shared {
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().expect("registry lock poisoned")
    }

    pub fn running(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Function>>> {
        self.running.lock().expect("running lock poisoned")
    }

    fn start_errors(&self) -> MutexGuard<'_, BTreeMap<String, String>> {
        self.start_errors
            .lock()
            .expect("start errors lock poisoned")
    }

    /// The function `name` if it runs on this machine.
    pub fn function(&self, name: &str) -> Option<Arc<Function>> {
        self.running().get(name).cloned()
    }

    /// Why `name` could not start here, if it could not.
    pub fn start_error(&self, name: &str) -> Option<String> {
        self.start_errors().get(name).cloned()
    }

    /// The machines a new connection of `spec` may be placed on, sorted by name: this one
    /// if it runs the function, and every healthy machine that reports it running.
    pub fn candidates(&self, spec: &FunctionSpec) -> Vec<Candidate> {
        let mut out = Vec::new();
        for machine in self.cluster.machines() {
            if !spec.placed_on(&machine) {
                continue;
            }
            if machine == self.me {
                if self.function(&spec.name).is_some_and(|f| !f.is_draining()) {
                    out.push(Candidate {
                        machine,
                        target: Target::Local,
                    });
                }
                continue;
            }
            let Some(peer) = self.cluster.peer(&machine) else {
                continue;
            };
            let Some((host, port)) = self.cluster.relay_of(&peer) else {
                continue;
            };
            let runs = self.cluster.view(&machine).report.is_some_and(|r| {
                r.functions
                    .iter()
                    .any(|f| f.name == spec.name && f.state == "running")
            });
            if runs {
                out.push(Candidate {
                    machine,
                    target: Target::Peer { host, port },
                });
            }
        }
        out
    }

    /// The status of every function on this machine, failed starts included.
    pub fn local_statuses(&self) -> Vec<LocalStatus> {
        let mut out: Vec<LocalStatus> = self.running().values().map(|f| f.status()).collect();
        for (name, error) in self.start_errors().iter() {
            if !out.iter().any(|s| &s.name == name) {
                out.push(LocalStatus {
                    name: name.clone(),
                    state: "failed".into(),
                    error: Some(error.clone()),
                    program: None,
                    instances: 0,
                    in_flight: 0,
                    connections: 0,
                    served: 0,
                    errors: 0,
                    cold_starts: 0,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn report(&self) -> NodeReport {
        let (digest, max_version) = {
            let r = self.registry();
            (r.digest(), r.max_version())
        };
        NodeReport {
            node: self.me.clone(),
            relay_port: self.relay_port,
            digest,
            max_version,
            functions: self.local_statuses(),
        }
    }

    /// Whether `spec` could start here: its command exists and is executable, and its
    /// port is free (or held by the same function already).
    pub fn check_local(&self, spec: &FunctionSpec) -> Result<(), String> {
        self.search.resolve(&spec.command[0])?;
        let same_port = self
            .function(&spec.name)
            .is_some_and(|f| f.local_addr.port() == spec.port);
        if !same_port {
            let addr = SocketAddr::new(self.listen_ip, spec.port);
            std::net::TcpListener::bind(addr).map_err(|e| {
                nuage_core::net::bind_error(
                    &e,
                    addr,
                    &format!("function `{}`", spec.name),
                    "--port",
                )
                .to_string()
            })?;
        }
        Ok(())
    }

    /// Merges entries; returns whether anything changed.
    pub fn merge(&self, entries: Vec<Entry>) -> anyhow::Result<bool> {
        let mut registry = self.registry();
        let mut changed = false;
        for entry in entries {
            changed |= registry.merge(entry)?;
        }
        Ok(changed)
    }

    /// Makes what runs here match the registry: starts what is placed here and missing,
    /// restarts what changed in a way that needs it, adjusts limits, drains what was
    /// removed. Start errors are kept (shown by `fn ls`, retried later).
    pub async fn apply_local(self: &Arc<Self>) {
        let _one_at_a_time = self.apply_lock.lock().await;
        if self.shutdown.is_cancelled() {
            return;
        }
        let wanted: BTreeMap<String, FunctionSpec> = self
            .registry()
            .specs()
            .filter(|s| s.placed_on(&self.me))
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        // Stop what is gone or must restart, all at once (each drains for its timeout).
        let mut stopping = Vec::new();
        {
            let mut running = self.running();
            let names: Vec<String> = running.keys().cloned().collect();
            for name in names {
                let keep = match wanted.get(&name) {
                    None => false,
                    Some(spec) => {
                        let f = &running[&name];
                        if f.spec().needs_restart(spec) {
                            false
                        } else {
                            if f.spec() != *spec {
                                f.update(spec.clone());
                            }
                            true
                        }
                    }
                };
                if !keep {
                    stopping.push(running.remove(&name).expect("a running function"));
                }
            }
        }
        stop_all(stopping, false).await;
        self.start_errors()
            .retain(|name, _| wanted.contains_key(name));
        for (name, spec) in wanted {
            if self.running().contains_key(&name) {
                continue;
            }
            match Function::start(self, spec).await {
                Ok(f) => {
                    self.running().insert(name.clone(), f);
                    self.start_errors().remove(&name);
                }
                Err(e) => {
                    let first = self
                        .start_errors()
                        .insert(name.clone(), e.clone())
                        .is_none();
                    if first {
                        tracing::warn!(function = %name, "cannot start: {e}");
                    }
                }
            }
        }
    }

    /// Merges entries and applies them here; the start errors of their names.
    pub async fn merge_and_apply(
        self: &Arc<Self>,
        entries: Vec<Entry>,
    ) -> anyhow::Result<ApplyReply> {
        let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
        self.merge(entries)?;
        self.apply_local().await;
        let errors = self.start_errors();
        Ok(ApplyReply {
            errors: names
                .into_iter()
                .filter_map(|n| errors.get(&n).map(|e| (n, e.clone())))
                .collect(),
        })
    }
}

/// Takes the connections other machines place here.
async fn relay_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _from)) => {
                tokio::spawn(take_relayed(shared.clone(), stream));
            }
            Err(e) => {
                tracing::warn!("relay accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn take_relayed(shared: Arc<Shared>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // A connection the other machine keeps ready stays silent until it is used.
    let mut first = [0u8; 1];
    tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout(relay::IDLE_BEFORE_HEADER, stream.peek(&mut first)) => match r {
            Ok(Ok(1..)) => {}
            _ => return, // closed, failed, or idle too long
        },
    }
    let header = tokio::time::timeout(relay::HEADER_TIMEOUT, relay::read_header(&mut stream)).await;
    let (name, client) = match header {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!("relay: {e}");
            return;
        }
        Err(_) => return,
    };
    let function = match shared.function(&name) {
        Some(f) if !f.is_draining() => f,
        _ => {
            let why = format!("function `{name}` does not run on {}", shared.me);
            let _ = relay::answer(&mut stream, Err(&why)).await;
            return;
        }
    };
    let permit = match function.admit(Some(client.ip())) {
        Ok(p) => p,
        Err(refusal) => {
            // The limits hold on every machine: the client hears the refusal.
            let _ = relay::answer(&mut stream, Ok(())).await;
            return refuse(&mut stream, &refusal.message).await;
        }
    };
    if relay::answer(&mut stream, Ok(())).await.is_err() {
        return;
    }
    // Served in this task (tracked for drains): no hop to a new task between the `+` and
    // the process start, on the path of every relayed connection.
    function
        .tracked(function.serve_local(crate::function::Conn::Tokio(stream), client, permit))
        .await;
}

/// Checks every other machine's health, keeps their reports, and pulls their registry
/// when it differs from ours.
async fn health_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let peers = shared.cluster.peers();
        let names: Vec<String> = peers.iter().map(|p| p.name.to_string()).collect();
        shared.cluster.retain(&names);
        let mut checks = tokio::task::JoinSet::new();
        for peer in peers {
            let shared = shared.clone();
            checks.spawn(async move { check_peer(&shared, &peer).await });
        }
        let mut pulled = false;
        while let Some(r) = checks.join_next().await {
            pulled |= r.unwrap_or(false);
        }
        if pulled {
            shared.reconcile.notify_one();
        }
    }
}

/// One health check; returns whether the registry changed by pulling from the peer.
async fn check_peer(shared: &Shared, peer: &nuage_core::config::Peer) -> bool {
    let name = peer.name.as_str();
    let client = match cluster::client(&peer.address, HEALTH_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            shared.cluster.mark_down(name, &format!("{e:#}"));
            return false;
        }
    };
    let report: NodeReport = match client.get("/v1/functions/_peer/state").await {
        Ok(r) => r,
        Err(e) => {
            shared.cluster.mark_down(name, &format!("{e:#}"));
            return false;
        }
    };
    let differs = report.digest != shared.registry().digest();
    shared.cluster.record_report(name, report);
    if !differs {
        return false;
    }
    let client = match cluster::client(&peer.address, PEER_CALL_TIMEOUT) {
        Ok(c) => c,
        Err(_) => return false,
    };
    match client
        .get::<Vec<Entry>>("/v1/functions/_peer/entries")
        .await
    {
        Ok(entries) => match shared.merge(entries) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!("merging the registry of {name}: {e:#}");
                false
            }
        },
        Err(e) => {
            tracing::debug!("pulling the registry of {name}: {e:#}");
            false
        }
    }
}

/// Applies pulled changes, and retries functions that could not start.
async fn reconcile_loop(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.reconcile.notified() => {}
            _ = tokio::time::sleep(RETRY_INTERVAL) => {
                if shared.start_errors().is_empty() {
                    continue;
                }
            }
        }
        shared.apply_local().await;
    }
}
