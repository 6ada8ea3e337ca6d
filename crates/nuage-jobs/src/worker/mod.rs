//! The worker: registers with the manager, heartbeats, runs the tasks it is given one
//! at a time, and reports what happened to each.
//!
//! Four loops share one [`Shared`]:
//! - the main loop registers (claiming the task it still holds, if any), then reads the
//!   Assignments stream, starting tasks and passing cancellations on;
//! - the heartbeat loop renews the lease and obeys `kill_running`;
//! - the lease loop stops the running task if no heartbeat was acknowledged for the
//!   lease (the manager requeues it only after the longer worker timeout, so the task
//!   never runs twice at once);
//! - the reporter sends reports in order, retrying through manager restarts, and frees
//!   the slot once the manager has answered the Finished report.

pub mod runner;
mod spawn;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use crate::config::{DEFAULT_KILL_GRACE, format_duration};
use crate::proto::{self, assignment, report_request::Report, workers_client::WorkersClient};
use crate::trace::{self, Span, TraceContext};
use runner::{Control, TaskSpec};

/// Waits between attempts to reach the manager: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a connection attempt to the manager may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Before the first Register reply, the heartbeat period.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest a worker waits for its task to stop when it is itself stopping.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a worker needs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The manager's URL (`http://host:port`).
    pub manager: String,
    /// Unique among the manager's live workers.
    pub name: String,
    /// Where tasks run (default: the worker's own working directory).
    pub workdir: Option<PathBuf>,
    /// The program run for the default task (the nuage binary).
    pub program: PathBuf,
    pub default_task_duration: Duration,
}

#[derive(Debug, Clone)]
struct SessionInfo {
    id: String,
    heartbeat: Duration,
    lease: Duration,
}

/// The task this worker holds.
#[derive(Debug)]
struct Slot {
    job_id: u64,
    attempt: u32,
    /// The task has ended; its Finished report is on its way.
    finished: bool,
    /// The manager said this attempt is no longer ours: stop it, report nothing.
    dropped: bool,
    control: mpsc::UnboundedSender<Control>,
}

struct Shared {
    opts: WorkerOptions,
    client: WorkersClient<Channel>,
    session: watch::Sender<Option<SessionInfo>>,
    slot: Mutex<Option<Slot>>,
    /// When the last acknowledged heartbeat (or registration) was sent.
    last_ack: Mutex<Instant>,
    /// The lease of the latest session (still binding while there is none).
    lease: Mutex<Option<Duration>>,
    /// Something found the session gone: the main loop registers again.
    relogin: Notify,
    /// The slot became empty (a task waiting for it may start).
    freed: Notify,
    reports: mpsc::UnboundedSender<Pending>,
}

/// A report waiting to be delivered.
struct Pending {
    job_id: u64,
    attempt: u32,
    report: Report,
    trace: Option<TraceContext>,
    /// The worker.run span, ended once the Finished report is answered.
    run_span: Option<Span>,
}

impl Shared {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Slot>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running_task(&self) -> Option<proto::RunningTask> {
        self.slot()
            .as_ref()
            .filter(|s| !s.dropped)
            .map(|s| proto::RunningTask {
                job_id: s.job_id,
                attempt: s.attempt,
                finished: s.finished,
            })
    }

    fn current_session(&self) -> Option<SessionInfo> {
        self.session.borrow().clone()
    }

    fn session_lost(&self) {
        self.session.send_replace(None);
        self.relogin.notify_one();
    }
}

/// The channel to the manager: lazy (the manager may not be up yet), with HTTP/2
/// keepalives so a dead connection (a partition) is noticed and replaced.
pub fn channel(url: &str, keepalive: Duration) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("`{url}` is not a manager URL"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive * 2)
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Runs a worker until `shutdown` is cancelled; then stops its task (SIGTERM, SIGKILL
/// after the grace period) and returns.
pub async fn run(opts: WorkerOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let channel = channel(&opts.manager, DEFAULT_HEARTBEAT)?;
    let client = WorkersClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let (session, _) = watch::channel(None);
    let shared = Arc::new(Shared {
        opts,
        client,
        session,
        slot: Mutex::new(None),
        last_ack: Mutex::new(Instant::now()),
        lease: Mutex::new(None),
        relogin: Notify::new(),
        freed: Notify::new(),
        reports: reports_tx,
    });
    let background = [
        tokio::spawn(heartbeat_loop(shared.clone(), shutdown.clone())),
        tokio::spawn(lease_loop(shared.clone(), shutdown.clone())),
        tokio::spawn(report_loop(shared.clone(), reports_rx, shutdown.clone())),
    ];
    main_loop(&shared, &shutdown).await;
    // Stop the task we hold and give it back: reported as fenced, the manager requeues
    // it (at the head) instead of failing it. Then give the report a moment to go out.
    let control = shared.slot().as_ref().map(|s| s.control.clone());
    if let Some(c) = control {
        tracing::info!(
            "worker {}: stopping; giving the running task back",
            shared.opts.name
        );
        let _ = c.send(Control::Kill { fenced: true });
        let deadline = Instant::now() + STOP_TIMEOUT;
        while shared.slot().is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for b in background {
        b.abort();
    }
    Ok(())
}

async fn backoff(delay: &mut Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => return false,
        _ = tokio::time::sleep(*delay) => {}
    }
    *delay = (*delay * 2).min(RETRY_MAX);
    true
}

async fn main_loop(shared: &Arc<Shared>, shutdown: &CancellationToken) {
    let name = shared.opts.name.clone();
    let mut last_error = String::new();
    let mut delay = RETRY_FIRST;
    'session: loop {
        if shutdown.is_cancelled() {
            return;
        }
        // Register, claiming the task we hold.
        let session = match shared.current_session() {
            Some(s) => s,
            None => {
                let sent = Instant::now();
                let request = proto::RegisterRequest {
                    name: name.clone(),
                    running: shared.running_task(),
                    version: nuage_core::VERSION.to_owned(),
                };
                match shared
                    .client
                    .clone()
                    .register(timed(request, CONNECT_TIMEOUT * 2))
                    .await
                {
                    Ok(reply) => {
                        let r = reply.into_inner();
                        delay = RETRY_FIRST;
                        last_error.clear();
                        if !r.keep_running {
                            drop_slot(shared, &r.detail);
                        }
                        *shared.last_ack.lock().unwrap_or_else(|p| p.into_inner()) = sent;
                        *shared.lease.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Duration::from_millis(u64::from(r.lease_ms.max(100))));
                        let info = SessionInfo {
                            id: r.session,
                            heartbeat: Duration::from_millis(u64::from(
                                r.heartbeat_interval_ms.max(50),
                            )),
                            lease: Duration::from_millis(u64::from(r.lease_ms.max(100))),
                        };
                        tracing::info!(
                            "worker {name}: registered with {} (heartbeat {}, lease {})",
                            shared.opts.manager,
                            format_duration(info.heartbeat),
                            format_duration(info.lease)
                        );
                        shared.session.send_replace(Some(info.clone()));
                        info
                    }
                    Err(status) => {
                        let msg = describe(&status, &shared.opts.manager);
                        if msg != last_error {
                            tracing::warn!("worker {name}: cannot register: {msg}; retrying");
                            last_error = msg;
                        }
                        if !backoff(&mut delay, shutdown).await {
                            return;
                        }
                        continue 'session;
                    }
                }
            }
        };
        // The assignments of this session.
        let request = proto::AssignmentsRequest {
            session: session.id.clone(),
        };
        let mut stream = match shared.client.clone().assignments(request).await {
            Ok(s) => s.into_inner(),
            Err(status) => {
                if status.code() == Code::NotFound {
                    shared.session_lost();
                } else if !backoff(&mut delay, shutdown).await {
                    return;
                }
                continue 'session;
            }
        };
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = shared.relogin.notified() => continue 'session,
                m = stream.message() => m,
            };
            match message {
                Ok(Some(proto::Assignment { kind: Some(kind) })) => match kind {
                    assignment::Kind::Run(task) => start_task(shared, task),
                    assignment::Kind::Cancel(c) => {
                        let slot = shared.slot();
                        if let Some(s) = slot
                            .as_ref()
                            .filter(|s| s.job_id == c.job_id && s.attempt == c.attempt)
                        {
                            tracing::info!("worker {name}: cancelling job {}", c.job_id);
                            let _ = s.control.send(Control::Terminate {
                                grace: Duration::from_millis(u64::from(c.grace_ms)),
                            });
                        }
                    }
                },
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    // The stream broke (manager restart, network): open it again, or
                    // register again if the session is gone.
                    tracing::debug!("worker {name}: assignment stream ended");
                    if !backoff(&mut delay, shutdown).await {
                        return;
                    }
                    continue 'session;
                }
            }
        }
    }
}

/// The manager no longer gives us the task we hold: stop it and forget it.
fn drop_slot(shared: &Shared, why: &str) {
    let mut slot = shared.slot();
    if let Some(s) = slot.as_mut() {
        tracing::warn!(
            "worker {}: dropping job {} attempt {}: {why}",
            shared.opts.name,
            s.job_id,
            s.attempt
        );
        s.dropped = true;
        let _ = s.control.send(Control::Kill { fenced: false });
        if s.finished {
            *slot = None;
            shared.freed.notify_waiters();
        }
    }
}

fn start_task(shared: &Arc<Shared>, task: proto::Task) {
    // The usual case, an empty slot: start at once, on this thread (a spawned task
    // could wait for another thread to be scheduled on a busy machine).
    {
        let mut slot = shared.slot();
        if slot.is_none() {
            let (control_tx, control_rx) = mpsc::unbounded_channel();
            *slot = Some(Slot {
                job_id: task.job_id,
                attempt: task.attempt,
                finished: false,
                dropped: false,
                control: control_tx,
            });
            drop(slot);
            run_task(shared, task, control_rx);
            return;
        }
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        // The slot may still hold a task that is over: one whose Finished report the
        // manager accepted (and so gave us the next task) before its reply reached us,
        // or one being stopped after the manager took it back. Wait for it to clear
        // rather than refuse the new task.
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            // Registered before looking, so a slot freed in between still wakes us.
            let freed = shared.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut slot = shared.slot();
                match slot.as_ref() {
                    None => {
                        let (control_tx, control_rx) = mpsc::unbounded_channel();
                        *slot = Some(Slot {
                            job_id: task.job_id,
                            attempt: task.attempt,
                            finished: false,
                            dropped: false,
                            control: control_tx,
                        });
                        drop(slot);
                        run_task(&shared, task, control_rx);
                        return;
                    }
                    Some(s) if (s.dropped || s.finished) && Instant::now() < deadline => {}
                    Some(s) => {
                        if s.job_id != task.job_id || s.attempt != task.attempt {
                            tracing::error!(
                                "worker {}: given job {} while holding job {}; refused (the heartbeat will settle it)",
                                shared.opts.name,
                                task.job_id,
                                s.job_id
                            );
                        }
                        // Else: a task we already run, sent again after a broken stream.
                        return;
                    }
                }
            }
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    });
}

fn run_task(shared: &Arc<Shared>, task: proto::Task, control_rx: mpsc::UnboundedReceiver<Control>) {
    let parent = TraceContext::parse(&task.traceparent);
    let run_span = Span::child(parent, "worker.run", "worker", || {
        format!("job {} on {}", task.job_id, shared.opts.name)
    });
    let spec = TaskSpec {
        job_id: task.job_id,
        attempt: task.attempt,
        name: task.name,
        argv: task.argv,
        array_index: task.array_index,
        max_output_bytes: task.max_output_bytes,
        trace: run_span.context(),
        worker: shared.opts.name.clone(),
        manager: shared.opts.manager.clone(),
        workdir: shared.opts.workdir.clone(),
        program: shared.opts.program.clone(),
        default_task_duration: shared.opts.default_task_duration,
    };
    let (job_id, attempt) = (spec.job_id, spec.attempt);
    let trace = run_span.context();
    let shared = shared.clone();
    tokio::spawn(async move {
        let reports = shared.reports.clone();
        let finished = runner::run(spec, control_rx, |report| {
            let _ = reports.send(Pending {
                job_id,
                attempt,
                report,
                trace,
                run_span: None,
            });
        })
        .await;
        if let Some(s) = shared.slot().as_mut() {
            if s.job_id == job_id && s.attempt == attempt {
                s.finished = true;
            }
        }
        let _ = shared.reports.send(Pending {
            job_id,
            attempt,
            report: Report::Finished(finished),
            trace,
            run_span: Some(run_span),
        });
    });
}

async fn heartbeat_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let period = shared
            .current_session()
            .map_or(DEFAULT_HEARTBEAT, |s| s.heartbeat);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let Some(session) = shared.current_session() else {
            continue;
        };
        let sent = Instant::now();
        let named = shared.running_task();
        let request = proto::HeartbeatRequest {
            session: session.id.clone(),
            running: named,
        };
        match shared
            .client
            .clone()
            .heartbeat(timed(request, period.max(Duration::from_millis(500))))
            .await
        {
            Ok(reply) => {
                let mut ack = shared.last_ack.lock().unwrap_or_else(|p| p.into_inner());
                *ack = (*ack).max(sent);
                drop(ack);
                if reply.into_inner().kill_running {
                    let slot = shared.slot();
                    // Only the task the heartbeat named: the slot may hold a newer one
                    // by the time the reply arrives.
                    if let Some(s) = slot.as_ref().filter(|s| {
                        named
                            .as_ref()
                            .is_some_and(|n| (n.job_id, n.attempt) == (s.job_id, s.attempt))
                    }) {
                        tracing::info!(
                            "worker {}: the manager asks to stop job {}",
                            shared.opts.name,
                            s.job_id
                        );
                        let _ = s.control.send(Control::Terminate {
                            grace: DEFAULT_KILL_GRACE,
                        });
                    }
                }
            }
            Err(status) if status.code() == Code::NotFound => {
                // Only if the session is still the one we used.
                if shared.current_session().is_some_and(|s| s.id == session.id) {
                    tracing::warn!(
                        "worker {}: the manager forgot our session; registering again",
                        shared.opts.name
                    );
                    shared.session_lost();
                }
            }
            Err(status) => {
                tracing::debug!(
                    "worker {}: heartbeat failed: {}",
                    shared.opts.name,
                    describe(&status, &shared.opts.manager)
                );
            }
        }
    }
}

async fn lease_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let lease = *shared.lease.lock().unwrap_or_else(|p| p.into_inner());
        let period = lease.map_or(Duration::from_millis(100), |l| {
            (l / 20).clamp(Duration::from_millis(10), Duration::from_millis(100))
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        // No task was ever given without a registration, hence a lease.
        let Some(lease) = lease else { continue };
        let silent = shared
            .last_ack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if silent <= lease {
            continue;
        }
        let slot = shared.slot();
        if let Some(s) = slot.as_ref().filter(|s| !s.finished && !s.dropped) {
            tracing::warn!(
                "worker {}: no acknowledged heartbeat for {} (lease {}): stopping job {} so it never runs twice",
                shared.opts.name,
                format_duration(silent),
                format_duration(lease),
                s.job_id
            );
            let _ = s.control.send(Control::Kill { fenced: true });
        }
    }
}

async fn report_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    shutdown: CancellationToken,
) {
    let mut session_rx = shared.session.subscribe();
    while let Some(p) = rx.recv().await {
        let is_finished = matches!(p.report, Report::Finished(_));
        let report_span = if is_finished {
            Span::child(p.trace, "worker.report", "worker", || {
                format!("job {}", p.job_id)
            })
        } else {
            Span::none()
        };
        let mut delay = RETRY_FIRST;
        loop {
            // A report about a task the manager took back is dropped.
            let dropped = shared
                .slot()
                .as_ref()
                .is_none_or(|s| s.job_id != p.job_id || s.attempt != p.attempt || s.dropped);
            if dropped {
                break;
            }
            let Some(session) = shared.current_session() else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = session_rx.changed() => continue,
                }
            };
            let mut request = Request::new(proto::ReportRequest {
                session: session.id.clone(),
                job_id: p.job_id,
                attempt: p.attempt,
                report: Some(p.report.clone()),
            });
            request.set_timeout(Duration::from_secs(10));
            // Only the Finished report has a span on the manager's side; the others
            // carry no header (each costs an HPACK encode and decode).
            if is_finished {
                trace::inject(&mut request, report_span.context().or(p.trace));
            }
            match shared.client.clone().report(request).await {
                Ok(reply) => {
                    let r = reply.into_inner();
                    if !r.accepted {
                        tracing::warn!("worker {}: report refused: {}", shared.opts.name, r.detail);
                        if let Some(s) = shared.slot().as_mut() {
                            s.dropped = true;
                        }
                    }
                    break;
                }
                Err(status) if status.code() == Code::NotFound => {
                    if shared.current_session().is_some_and(|s| s.id == session.id) {
                        shared.session_lost();
                    }
                }
                Err(status) => {
                    tracing::debug!(
                        "worker {}: report failed: {}",
                        shared.opts.name,
                        describe(&status, &shared.opts.manager)
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
        report_span.end();
        if is_finished {
            drop(p.run_span);
            let mut slot = shared.slot();
            if slot
                .as_ref()
                .is_some_and(|s| s.job_id == p.job_id && s.attempt == p.attempt)
            {
                *slot = None;
                shared.freed.notify_waiters();
            }
        }
    }
}

fn timed<T>(message: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(timeout);
    r
}

/// One line about a failed call to the manager.
pub fn describe(status: &tonic::Status, url: &str) -> String {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown => {
            format!(
                "cannot reach the jobs manager at {url}: {}",
                status.message()
            )
        }
        _ => status.message().to_owned(),
    }
}
