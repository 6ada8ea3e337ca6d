//! Pool mode: warm instances of a function, shared by every connection of the function
//! on this machine.
//!
//! A request takes an idle instance (the most recently used, so the others can idle
//! out), or starts one if fewer than `--max` exist (scale from zero, scale up while
//! requests wait), or waits for one to be free. An instance that dies is replaced on
//! demand and its request gets an error line; an instance over `--timeout` is killed.
//! Every quarter second, instances idle longer than `--idle-timeout` are stopped down to
//! `--min`, and the pool is filled up to `--min`. Starts after crashes are backed off.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::instance::{CallError, Instance};
use crate::logs::LogRing;
use crate::process::Program;
use crate::spec::Limits;
use crate::stats::{ErrorKind, GaugeGuard, Stats};

/// How often the pool looks for instances to stop, dead idle ones, and `--min` (short,
/// so an idle instance that died is replaced soon; a look is a lock and a `waitpid`).
pub const MAINTENANCE_PERIOD: Duration = Duration::from_millis(250);

/// Why a request got no answer; `ERR ` and [`PoolError::message`] is the line the client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    Timeout(u64),
    Exited(String),
    StartFailed(String),
    Failing {
        why: String,
        retry_in: Duration,
    },
    BadResponse(String),
    /// The function is being removed or the node stops.
    Closed,
}

impl PoolError {
    pub fn kind(&self) -> Option<ErrorKind> {
        Some(match self {
            PoolError::Timeout(_) => ErrorKind::Timeout,
            PoolError::Exited(_) => ErrorKind::Exited,
            PoolError::StartFailed(_) => ErrorKind::StartFailed,
            PoolError::Failing { .. } => ErrorKind::Failing,
            PoolError::BadResponse(_) => ErrorKind::BadResponse,
            PoolError::Closed => return None,
        })
    }

    /// The error as the client reads it, without `ERR ` and newline.
    pub fn message(&self) -> String {
        match self {
            PoolError::Timeout(secs) => format!("timeout after {secs}s"),
            PoolError::Exited(status) => format!("instance exited ({status})"),
            PoolError::StartFailed(why) => format!("cannot start the function: {why}"),
            PoolError::Failing { why, retry_in } => format!(
                "function failing ({why}); next start in {:.1}s",
                retry_in.as_secs_f64()
            ),
            PoolError::BadResponse(why) => format!("bad response: {why}"),
            PoolError::Closed => "function stopping".to_owned(),
        }
    }
}

pub struct Pool {
    program: Program,
    limits: Mutex<Limits>,
    state: Mutex<State>,
    backoff: Mutex<Backoff>,
    stats: Arc<Stats>,
    logs: Arc<LogRing>,
    max_response: usize,
    wake: Notify,
    /// Instances being stopped.
    stopping: TaskTracker,
}

#[derive(Default)]
struct State {
    /// Idle instances, least recently used first.
    idle: Vec<Instance>,
    /// Requests waiting for an instance, oldest first.
    waiters: VecDeque<oneshot::Sender<Lease>>,
    /// Instances alive or being started (idle + leased + starting).
    live: u32,
    closed: bool,
}

/// An instance taken from the pool. Dropped unused, it goes back; dropped in the middle
/// of a request (`dirty`), its state is unknown and it is killed.
pub struct Lease {
    pool: Arc<Pool>,
    instance: Option<Instance>,
    dirty: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            if self.dirty {
                self.pool.discard(instance, None);
            } else {
                self.pool.release(instance);
            }
        }
    }
}

impl Pool {
    pub fn new(
        program: Program,
        limits: Limits,
        stats: Arc<Stats>,
        logs: Arc<LogRing>,
        max_response: usize,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            program,
            limits: Mutex::new(limits),
            state: Mutex::new(State::default()),
            backoff: Mutex::new(Backoff::default()),
            stats,
            logs,
            max_response,
            wake: Notify::new(),
            stopping: TaskTracker::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("pool lock poisoned")
    }

    fn backoff(&self) -> MutexGuard<'_, Backoff> {
        self.backoff.lock().expect("pool backoff lock poisoned")
    }

    pub fn limits(&self) -> Limits {
        *self.limits.lock().expect("pool limits lock poisoned")
    }

    /// New limits, applied at once (instances above a lower `--max` stop when free).
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock().expect("pool limits lock poisoned") = limits;
        self.wake.notify_one();
    }

    /// Instances alive (or starting).
    pub fn live(&self) -> u32 {
        self.state().live
    }

    /// Whether the function crash-loops, and why.
    pub fn failing(&self) -> Option<String> {
        let b = self.backoff();
        b.failing()
            .then(|| b.last_failure.clone().unwrap_or_default())
    }

    /// Sends one request line to an instance and returns its answer line.
    pub async fn call(self: &Arc<Self>, request: &[u8]) -> Result<Vec<u8>, PoolError> {
        let limits = self.limits();
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + limits.timeout());
        let _in_flight = GaugeGuard::new(&self.stats.in_flight);
        let result = self.call_until(request, deadline, &limits).await;
        match &result {
            Ok(_) => {
                self.stats.requests.inc();
                self.stats.latency.observe_since(started);
            }
            Err(e) => {
                if let Some(kind) = e.kind() {
                    self.stats.error(kind);
                }
            }
        }
        result
    }

    async fn call_until(
        self: &Arc<Self>,
        request: &[u8],
        deadline: tokio::time::Instant,
        limits: &Limits,
    ) -> Result<Vec<u8>, PoolError> {
        let mut lease = self.acquire(deadline, limits).await?;
        lease.dirty = true;
        let instance = lease.instance.as_mut().expect("a lease holds an instance");
        let outcome = instance.call(request, deadline, self.max_response).await;
        let instance = lease.instance.take().expect("a lease holds an instance");
        drop(lease);
        match outcome {
            Ok(answer) => {
                let mut instance = instance;
                instance.served += 1;
                self.backoff().success();
                self.release(instance);
                Ok(answer)
            }
            Err(CallError::Timeout) => {
                self.logs.push(
                    instance.pid,
                    "nuage",
                    &format!(
                        "killed: request over the timeout of {}s",
                        limits.timeout_secs
                    ),
                );
                self.discard(instance, None);
                Err(PoolError::Timeout(limits.timeout_secs))
            }
            Err(CallError::Exited(status)) => {
                let why = format!("exited with {status}");
                self.discard(instance, Some(why));
                Err(PoolError::Exited(status))
            }
            Err(CallError::BadResponse(why)) => {
                self.logs
                    .push(instance.pid, "nuage", &format!("killed: {why}"));
                self.discard(instance, None);
                Err(PoolError::BadResponse(why))
            }
        }
    }

    /// An idle instance, a new one, or the next one freed, before `deadline`.
    async fn acquire(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
        limits: &Limits,
    ) -> Result<Lease, PoolError> {
        loop {
            let waiter = {
                let mut st = self.state();
                if st.closed {
                    return Err(PoolError::Closed);
                }
                let mut dead = None;
                if let Some(mut instance) = st.idle.pop() {
                    match instance.exited() {
                        None => return Ok(self.lease(instance)),
                        Some(status) => dead = Some((instance, status)),
                    }
                }
                if let Some((instance, status)) = dead {
                    // Died while idle: replace it rather than fail the request.
                    drop(st);
                    self.discard(instance, Some(format!("exited while idle with {status}")));
                    continue;
                }
                let mut backing_off = None;
                if st.live < limits.max {
                    let now = Instant::now();
                    match self.backoff().wait(now) {
                        None => {
                            st.live += 1;
                            drop(st);
                            return self.start_reserved(true).map(|i| self.lease(i));
                        }
                        Some(wait) => backing_off = Some(wait),
                    }
                }
                match backing_off {
                    Some(wait) => Err(wait),
                    None => {
                        let (tx, rx) = oneshot::channel();
                        st.waiters.push_back(tx);
                        Ok(rx)
                    }
                }
            };
            match waiter {
                Ok(rx) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(lease)) => return Ok(lease),
                    Ok(Err(_)) => continue, // woken: room to start an instance
                    Err(_) => return Err(PoolError::Timeout(limits.timeout_secs)),
                },
                Err(wait) => {
                    let retry_at = tokio::time::Instant::now() + wait;
                    if retry_at >= deadline {
                        let why = self.backoff().last_failure.clone().unwrap_or_default();
                        return Err(PoolError::Failing {
                            why,
                            retry_in: wait,
                        });
                    }
                    tokio::time::sleep_until(retry_at).await;
                }
            }
        }
    }

    fn lease(self: &Arc<Self>, instance: Instance) -> Lease {
        Lease {
            pool: self.clone(),
            instance: Some(instance),
            dirty: false,
        }
    }

    /// Starts an instance for a place already counted in `live`; gives the place back
    /// if it cannot start.
    fn start_reserved(&self, cold: bool) -> Result<Instance, PoolError> {
        let started = Instant::now();
        match Instance::start(&self.program, &self.logs) {
            Ok(instance) => {
                self.stats.starts.inc();
                if cold {
                    self.stats.cold_starts.inc();
                }
                self.stats.instances.inc();
                self.logs.push(
                    instance.pid,
                    "nuage",
                    if cold {
                        "instance started (cold start)"
                    } else {
                        "instance started (--min)"
                    },
                );
                tracing::debug!(
                    function = %self.program.function,
                    pid = instance.pid,
                    "instance started"
                );
                Ok(instance)
            }
            Err(e) => {
                let why = format!("{}: {e}", self.program.path.display());
                self.backoff().failure(started, Instant::now(), why.clone());
                self.logs.push(0, "nuage", &format!("cannot start: {why}"));
                self.give_back_place();
                Err(PoolError::StartFailed(why))
            }
        }
    }

    /// One place fewer in `live`; a waiter may now start an instance.
    fn give_back_place(&self) {
        let mut st = self.state();
        assert!(st.live > 0, "pool live count underflow");
        st.live -= 1;
        // Wake the oldest waiter still waiting: it retries and may start an instance.
        while let Some(tx) = st.waiters.pop_front() {
            if !tx.is_closed() {
                drop(tx);
                break;
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// A healthy instance is free: to the oldest waiter, else idle (or stopped if the
    /// pool shrank or closed).
    fn release(self: &Arc<Self>, mut instance: Instance) {
        let mut st = self.state();
        let max = self.limits().max;
        if st.closed || st.live > max {
            drop(st);
            self.retire(instance, "stopped (pool shrinking)");
            return;
        }
        while let Some(tx) = st.waiters.pop_front() {
            match tx.send(self.lease(instance)) {
                Ok(()) => return,
                Err(mut lease) => {
                    instance = lease.instance.take().expect("the lease just made");
                }
            }
        }
        instance.idle_since = Instant::now();
        st.idle.push(instance);
    }

    /// Kills an instance whose state is unknown or that died, and records why.
    fn discard(&self, mut instance: Instance, died: Option<String>) {
        instance.kill();
        if let Some(why) = died {
            self.logs.push(instance.pid, "nuage", &why);
            tracing::info!(function = %self.program.function, pid = instance.pid, "instance {why}");
            self.backoff()
                .failure(instance.started, Instant::now(), why);
        }
        self.stats.instances.dec();
        self.stopping.spawn(async move {
            let _ = instance.stop().await;
        });
        self.give_back_place();
    }

    /// Stops a healthy instance politely (end of input).
    fn retire(&self, instance: Instance, why: &'static str) {
        self.stats.instances.dec();
        let logs = self.logs.clone();
        let pid = instance.pid;
        let served = instance.served;
        self.stopping.spawn(async move {
            let status = instance.stop().await;
            logs.push(
                pid,
                "nuage",
                &format!("{why} after {served} requests: {status}"),
            );
        });
        self.give_back_place();
    }

    /// Runs until `stop` is cancelled: stops idle instances past their idle timeout
    /// (down to `--min`), replaces idle instances that died, and keeps `--min` warm.
    pub async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(MAINTENANCE_PERIOD) => {}
                _ = self.wake.notified() => {}
            }
            self.maintain_once();
        }
    }

    fn maintain_once(self: &Arc<Self>) {
        let limits = self.limits();
        let now = Instant::now();
        let mut dead = Vec::new();
        let mut expired = Vec::new();
        {
            let mut st = self.state();
            if st.closed {
                return;
            }
            let mut keep = Vec::with_capacity(st.idle.len());
            for mut instance in std::mem::take(&mut st.idle) {
                match instance.exited() {
                    Some(status) => dead.push((instance, status)),
                    None => keep.push(instance),
                }
            }
            st.idle = keep;
            // Oldest idle first; never below --min counting the busy ones.
            let mut live = st.live - dead.len() as u32;
            while live > limits.min
                && st.idle.first().is_some_and(|i| {
                    now.saturating_duration_since(i.idle_since) >= limits.idle_timeout()
                })
            {
                expired.push(st.idle.remove(0));
                live -= 1;
            }
        }
        for (instance, status) in dead {
            self.discard(instance, Some(format!("exited while idle with {status}")));
        }
        for instance in expired {
            self.retire(instance, "stopped after the idle timeout");
        }
        // Fill up to --min, at the pace the back-off allows.
        loop {
            let mut st = self.state();
            if st.closed || st.live >= limits.min || self.backoff().wait(Instant::now()).is_some() {
                return;
            }
            st.live += 1;
            drop(st);
            match self.start_reserved(false) {
                Ok(instance) => self.release(instance),
                Err(_) => return,
            }
        }
    }

    /// Stops taking requests: waiting ones get [`PoolError::Closed`], idle instances
    /// stop, busy ones stop when their request ends. Then waits for them all (the
    /// caller bounds the wait).
    pub async fn close(&self) {
        let idle = {
            let mut st = self.state();
            st.closed = true;
            st.waiters.clear();
            std::mem::take(&mut st.idle)
        };
        for instance in idle {
            self.retire(instance, "stopped (function stopping)");
        }
        self.stopping.close();
        self.stopping.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DeployRequest;
    use nuage_core::metrics::Metrics;
    use std::collections::BTreeMap;

    fn pool(script: &str, min: u32, max: u32, timeout: u64, idle: u64) -> Arc<Pool> {
        let mut limits = DeployRequest {
            name: "t".into(),
            port: 1,
            mode: crate::spec::Mode::Pool,
            min: Some(min),
            max: Some(max),
            timeout: Some(timeout),
            idle_timeout: Some(idle),
            ..Default::default()
        }
        .to_spec()
        .unwrap()
        .limits;
        limits.max = max;
        let program = Program {
            function: "t".into(),
            path: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
        };
        let stats = Arc::new(Stats::new(&Metrics::new(), "t"));
        Pool::new(program, limits, stats, Arc::new(LogRing::default()), 1024)
    }

    #[tokio::test]
    async fn scales_from_zero_up_and_down() {
        let p = pool(
            "while read l; do sleep 0.3; echo \"$$ $l\"; done",
            0,
            3,
            10,
            1,
        );
        assert_eq!(p.live(), 0);
        let first = p.call(b"a").await.unwrap();
        assert_eq!(p.live(), 1);
        // Sequential requests reuse the warm instance.
        let second = p.call(b"b").await.unwrap();
        let pid = |a: &[u8]| {
            String::from_utf8_lossy(a)
                .split(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(pid(&first), pid(&second));
        // Five at once: the pool grows to its max of 3, no further.
        let calls: Vec<_> = (0..5)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move { p.call(format!("c{i}").as_bytes()).await })
            })
            .collect();
        let mut pids = std::collections::BTreeSet::new();
        for c in calls {
            pids.insert(pid(&c.await.unwrap().unwrap()));
        }
        assert_eq!(pids.len(), 3, "{pids:?}");
        assert_eq!(p.live(), 3);
        assert_eq!(p.stats.cold_starts.get(), 3);
        // Idle for longer than the idle timeout: back to --min (0).
        let stop = CancellationToken::new();
        tokio::spawn(p.clone().maintain(stop.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.live() > 0 {
            assert!(
                Instant::now() < deadline,
                "pool did not shrink: {}",
                p.live()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.cancel();
        p.close().await;
        assert_eq!(p.stats.instances.get(), 0);
    }

    #[tokio::test]
    async fn crash_and_timeout_get_error_lines_and_replacements() {
        let p = pool(
            "while read l; do case $l in crash) exit 3;; slow) sleep 30;; esac; echo \"ok $l\"; done",
            0,
            1,
            1,
            60,
        );
        assert_eq!(p.call(b"x").await.unwrap(), b"ok x");
        let e = p.call(b"crash").await.unwrap_err();
        assert_eq!(e.message(), "instance exited (status 3)");
        assert_eq!(p.call(b"y").await.unwrap(), b"ok y");
        let e = p.call(b"slow").await.unwrap_err();
        assert_eq!(e.message(), "timeout after 1s");
        assert_eq!(p.call(b"z").await.unwrap(), b"ok z");
        assert_eq!(p.stats.errors_total(), 2);
        p.close().await;
    }

    #[tokio::test]
    async fn crash_loop_is_backed_off() {
        let p = pool("exit 1", 1, 1, 1, 60);
        let stop = CancellationToken::new();
        tokio::spawn(p.clone().maintain(stop.clone()));
        tokio::time::sleep(Duration::from_secs(4)).await;
        let starts = p.stats.starts.get();
        // 100 ms, 200, 400, 800, 1600…: a handful of starts in 4 s, not hundreds.
        assert!((2..=8).contains(&starts), "{starts} starts");
        assert!(p.failing().is_some());
        let e = p.call(b"x").await.unwrap_err();
        assert!(
            matches!(e, PoolError::Failing { .. } | PoolError::Exited(_)),
            "{e:?}"
        );
        stop.cancel();
        p.close().await;
    }
}
