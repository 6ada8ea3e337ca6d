//! The manager: a FIFO queue of jobs in SQLite, the workers' sessions, and the
//! scheduler that gives the oldest queued job to an idle worker.
//!
//! All scheduling state sits in one [`Core`] behind one mutex: the queue, which worker
//! runs which attempt, the sessions. Every change is written to the store in the same
//! critical section, so memory and disk never disagree and a restart rebuilds the
//! memory from the disk ([`Core::load`]).
//!
//! Invariants (asserted in [`Core::check`] by the tests):
//! - a job id is in at most one of: the queue, `running`;
//! - a worker holds at most one job, and a running job names exactly that worker;
//! - a job is only given to a worker with a live session and an open assignment stream.
//!
//! Faults: a session that misses heartbeats for the worker timeout is lost and its job
//! goes back to the head of the queue (or fails after the maximum attempts). A worker
//! stops its task itself after the lease (half the timeout) without an acknowledged
//! heartbeat, so a task is never running twice. After a restart the jobs recorded as
//! running wait one worker timeout for their worker to register again and claim them.

// The handlers answer with tonic's `Status`, which is large; boxing it in every
// internal function would only move the allocation around.
#![allow(clippy::result_large_err)]

mod grpc;
pub mod metrics;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::config::{self, ManagerOptions, format_duration};
use crate::proto::{self, Assignment, Job, JobState, assignment};
use crate::trace::{Span, TraceContext};
use metrics::JobMetrics;
use nuage_core::metrics::Metrics;
use store::{Ending, Store, Stream, is_final};

/// Jobs changes kept for slow watchers before they must resynchronise.
const EVENTS_CAPACITY: usize = 4096;
/// Finished jobs between two prunings of the history.
const PRUNE_EVERY: u32 = 1000;
/// Name of the database in the manager's data directory.
pub const DB_FILE: &str = "jobs.db";

/// New output of a running job, for `logs --follow`.
#[derive(Debug, Clone)]
pub struct LogEvent {
    pub job_id: u64,
    /// The attempt that wrote it.
    pub attempt: u32,
    pub stream: Stream,
    pub offset: u64,
    pub data: Arc<Vec<u8>>,
}

/// A job given to a worker.
#[derive(Debug)]
struct Assigned {
    worker: String,
    attempt: u32,
    dispatched: Instant,
    /// When the job last entered the queue (None for jobs queued before a restart).
    queued_at: Option<Instant>,
    started: bool,
    cancel_requested: bool,
    /// Set for a job found running at start-up whose worker has not claimed it yet.
    orphan_deadline: Option<Instant>,
    /// The `worker.run` context is the worker's; this is the manager's root span for a
    /// job submitted without a trace (None otherwise).
    job_span: Option<Span>,
}

/// A worker the manager knows.
#[derive(Debug)]
struct WorkerEntry {
    name: String,
    session: Option<String>,
    address: String,
    registered_us: i64,
    last_heartbeat: Instant,
    last_heartbeat_us: i64,
    job: Option<u64>,
    tx: Option<mpsc::UnboundedSender<Result<Assignment, Status>>>,
    tasks_done: u64,
}

impl WorkerEntry {
    fn live(&self) -> bool {
        self.session.is_some()
    }
    fn can_take(&self) -> bool {
        self.live() && self.job.is_none() && self.tx.as_ref().is_some_and(|t| !t.is_closed())
    }
}

/// The scheduling state.
pub(crate) struct Core {
    store: Store,
    opts: ManagerOptions,
    queue: VecDeque<u64>,
    /// queue_seq below every queued job (a requeued job takes `head_seq - 1`) and of
    /// the newest job.
    head_seq: i64,
    tail_seq: i64,
    running: HashMap<u64, Assigned>,
    workers: HashMap<String, WorkerEntry>,
    sessions: HashMap<String, String>,
    /// Workers that became idle, oldest first (entries are checked when taken).
    idle: VecDeque<String>,
    /// `manager.queued` spans of traced jobs waiting in the queue; root spans of jobs
    /// submitted untraced while the manager traces.
    queued_spans: HashMap<u64, Span>,
    job_spans: HashMap<u64, Span>,
    finished_since_prune: u32,
    job_events: broadcast::Sender<Job>,
    log_events: broadcast::Sender<LogEvent>,
    metrics: JobMetrics,
    /// When each queued job entered the queue, for the queue-to-start histogram.
    queued_at: HashMap<u64, Instant>,
}

/// The manager service (shared by the gRPC handlers).
pub struct Manager {
    core: Mutex<Core>,
    opts: ManagerOptions,
    job_events: broadcast::Sender<Job>,
    log_events: broadcast::Sender<LogEvent>,
    /// Cancelled when the manager stops: ends the streams it serves.
    stopping: CancellationToken,
}

fn status_internal(e: anyhow::Error) -> Status {
    tracing::error!("jobs manager: {e:#}");
    Status::internal(format!("the manager's database failed: {e:#}"))
}

fn not_found(id: u64) -> Status {
    Status::not_found(format!("no job {id} (see `nuage jobs ls`)"))
}

/// A task to run, validated.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub name: String,
    /// None: the worker's default task.
    pub argv: Option<Vec<String>>,
    pub array_index: Option<u32>,
}

/// Checks a Submit request; the error is INVALID_ARGUMENT with a message for people.
pub fn validate_submit(req: &proto::SubmitRequest) -> Result<NewJob, Status> {
    let name = req.name.trim();
    if name.is_empty() {
        return Err(Status::invalid_argument(
            "the job name is empty; give a name such as tache45",
        ));
    }
    if name.chars().count() > config::MAX_NAME_LEN {
        return Err(Status::invalid_argument(format!(
            "the job name is longer than {} characters",
            config::MAX_NAME_LEN
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "the job name contains control characters",
        ));
    }
    let argv = match &req.task {
        None => {
            return Err(Status::invalid_argument(
                "no task: set default_task or command (with the CLI: NAME alone, or NAME -- CMD ARG…)",
            ));
        }
        Some(proto::submit_request::Task::DefaultTask(_)) => None,
        Some(proto::submit_request::Task::Command(c)) => {
            if c.argv.is_empty() || c.argv[0].trim().is_empty() {
                return Err(Status::invalid_argument(
                    "the command is empty; give a program to run after `--`, or no `--` for the default task",
                ));
            }
            if c.argv.len() > config::MAX_ARGS {
                return Err(Status::invalid_argument(format!(
                    "the command has {} arguments, more than {}",
                    c.argv.len(),
                    config::MAX_ARGS
                )));
            }
            let bytes: usize = c.argv.iter().map(|a| a.len()).sum();
            if bytes > config::MAX_COMMAND_BYTES {
                return Err(Status::invalid_argument(format!(
                    "the command is {bytes} bytes, more than {}",
                    config::MAX_COMMAND_BYTES
                )));
            }
            if c.argv.iter().any(|a| a.contains('\0')) {
                return Err(Status::invalid_argument("an argument contains a NUL byte"));
            }
            Some(c.argv.clone())
        }
    };
    Ok(NewJob {
        name: name.to_owned(),
        argv,
        array_index: req.array_index,
    })
}

impl Core {
    /// Rebuilds the queue and the assignments from the store.
    fn load(
        store: Store,
        opts: ManagerOptions,
        job_events: broadcast::Sender<Job>,
        log_events: broadcast::Sender<LogEvent>,
        metrics: JobMetrics,
    ) -> anyhow::Result<Core> {
        let queued = store.queued()?;
        let head_seq = queued.first().map_or(0, |q| q.1);
        let tail_seq = queued.last().map_or(0, |q| q.1);
        let deadline = Instant::now() + opts.worker_timeout;
        let running = store
            .running()?
            .into_iter()
            .map(|(id, worker, attempt)| {
                (
                    id,
                    Assigned {
                        worker,
                        attempt,
                        dispatched: Instant::now(),
                        queued_at: None,
                        started: true,
                        cancel_requested: false,
                        orphan_deadline: Some(deadline),
                        job_span: None,
                    },
                )
            })
            .collect::<HashMap<_, _>>();
        let mut core = Core {
            store,
            opts,
            queue: queued.iter().map(|q| q.0).collect(),
            head_seq,
            tail_seq,
            running,
            workers: HashMap::new(),
            sessions: HashMap::new(),
            idle: VecDeque::new(),
            queued_spans: HashMap::new(),
            job_spans: HashMap::new(),
            finished_since_prune: 0,
            job_events,
            log_events,
            metrics,
            queued_at: HashMap::new(),
        };
        let ids: Vec<u64> = core.running.keys().copied().collect();
        for id in ids {
            if let Some(job) = core.store.get(id, false)? {
                core.running.get_mut(&id).expect("listed").cancel_requested = job.cancel_requested;
            }
        }
        if !core.running.is_empty() || !core.queue.is_empty() {
            tracing::info!(
                "jobs manager: {} queued job(s); {} job(s) were running: waiting {} for their workers to come back",
                core.queue.len(),
                core.running.len(),
                format_duration(core.opts.worker_timeout)
            );
        }
        Ok(core)
    }

    /// Asserts the invariants of the module documentation (after every step of the
    /// tests; O(jobs), too slow to run on every request of a large queue).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let queued: std::collections::HashSet<u64> = self.queue.iter().copied().collect();
        assert_eq!(queued.len(), self.queue.len(), "a job is queued twice");
        for (id, a) in &self.running {
            assert!(!queued.contains(id), "job {id} is both queued and running");
            if a.orphan_deadline.is_none() {
                let w = self
                    .workers
                    .get(&a.worker)
                    .expect("a running job names a known worker");
                assert_eq!(
                    w.job,
                    Some(*id),
                    "job {id} runs on {} which does not hold it",
                    a.worker
                );
            }
        }
        for w in self.workers.values() {
            if let Some(j) = w.job {
                assert_eq!(
                    self.running.get(&j).map(|a| a.worker.as_str()),
                    Some(w.name.as_str())
                );
            }
        }
        for (s, n) in &self.sessions {
            assert_eq!(self.workers[n].session.as_deref(), Some(s.as_str()));
        }
    }

    fn publish(&mut self, id: u64) {
        if self.job_events.receiver_count() == 0 {
            return;
        }
        match self.store.get(id, false) {
            Ok(Some(job)) => {
                let _ = self.job_events.send(job);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("jobs manager: reading job {id}: {e:#}"),
        }
    }

    fn submit(&mut self, job: NewJob, parent: Option<TraceContext>) -> Result<u64, Status> {
        if self.queue.len() >= self.opts.max_queued {
            return Err(Status::resource_exhausted(format!(
                "the queue is full ({} jobs); wait for some to run or raise max_queued",
                self.opts.max_queued
            )));
        }
        let now = crate::now_us();
        // A job submitted without a trace gets one here when the manager traces.
        let mut job_span = None;
        let parent = match parent {
            Some(p) => Some(p),
            None => {
                let s = Span::root("manager.job", "manager", format!("job {}", job.name));
                let ctx = s.context();
                job_span = ctx.map(|_| s);
                ctx
            }
        };
        let enqueue = Span::child(parent, "manager.enqueue", "manager", String::new);
        let traceparent = parent.map(|p| p.traceparent()).unwrap_or_default();
        let seq = self.tail_seq + 1;
        let id = self
            .store
            .insert(
                &job.name,
                job.argv.as_deref(),
                job.array_index,
                &traceparent,
                seq,
                now,
            )
            .map_err(status_internal)?;
        self.tail_seq = seq;
        self.queue.push_back(id);
        self.queued_at.insert(id, Instant::now());
        self.metrics.submitted.inc();
        enqueue.end();
        if parent.is_some() {
            self.queued_spans.insert(
                id,
                Span::child(parent, "manager.queued", "queue", || format!("job {id}")),
            );
        }
        if let Some(s) = job_span {
            self.job_spans.insert(id, s);
        }
        self.publish(id);
        self.dispatch();
        Ok(id)
    }

    /// Gives queued jobs to idle workers, oldest job first, while both exist.
    fn dispatch(&mut self) {
        while !self.queue.is_empty() {
            let Some(name) = self.take_idle() else { return };
            let id = self.queue.pop_front().expect("not empty");
            self.assign(id, &name);
        }
    }

    fn take_idle(&mut self) -> Option<String> {
        while let Some(name) = self.idle.pop_front() {
            if self.workers.get(&name).is_some_and(WorkerEntry::can_take) {
                return Some(name);
            }
        }
        None
    }

    fn make_idle(&mut self, name: &str) {
        if !self.idle.iter().any(|n| n == name) {
            self.idle.push_back(name.to_owned());
        }
    }

    fn assign(&mut self, id: u64, name: &str) {
        let now = crate::now_us();
        let (job_name, argv, array_index, traceparent, attempts) = match self.store.task(id) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("jobs manager: cannot read job {id}, left queued: {e:#}");
                self.queue.push_front(id);
                return;
            }
        };
        let parent = TraceContext::parse(&traceparent);
        if let Some(span) = self.queued_spans.remove(&id) {
            span.end();
        }
        let dispatch_span = Span::child(parent, "manager.dispatch", "manager", || {
            format!("job {id} to {name}")
        });
        let attempt = attempts + 1;
        if let Err(e) = self.store.dispatched(id, name, attempt, now) {
            tracing::error!(
                "jobs manager: cannot record the dispatch of job {id}, left queued: {e:#}"
            );
            self.queue.push_front(id);
            return;
        }
        let task = proto::Task {
            job_id: id,
            attempt,
            name: job_name,
            argv: argv.unwrap_or_default(),
            array_index,
            max_output_bytes: self.opts.max_output_bytes,
            // The worker's spans hang under this dispatch.
            traceparent: dispatch_span
                .context()
                .map_or(traceparent, |c| c.traceparent()),
        };
        let worker = self.workers.get_mut(name).expect("idle worker exists");
        debug_assert!(worker.job.is_none(), "worker {name} given two jobs");
        worker.job = Some(id);
        let delivered = worker.tx.as_ref().is_some_and(|tx| {
            tx.send(Ok(Assignment {
                kind: Some(assignment::Kind::Run(task)),
            }))
            .is_ok()
        });
        self.running.insert(
            id,
            Assigned {
                worker: name.to_owned(),
                attempt,
                dispatched: Instant::now(),
                queued_at: self.queued_at.remove(&id),
                started: false,
                cancel_requested: false,
                orphan_deadline: None,
                job_span: self.job_spans.remove(&id),
            },
        );
        dispatch_span.end();
        self.publish(id);
        if !delivered {
            // The stream closed between the check and the send.
            self.workers.get_mut(name).expect("exists").tx = None;
            self.requeue_or_fail(
                id,
                &format!("the assignment stream of worker {name} closed"),
            );
        }
    }

    /// Takes a job away from its worker: back to the queue's head, or failed after its
    /// last attempt, or cancelled if that was asked.
    fn requeue_or_fail(&mut self, id: u64, why: &str) {
        let Some(a) = self.running.remove(&id) else {
            return;
        };
        if let Some(w) = self.workers.get_mut(&a.worker) {
            if w.job == Some(id) {
                w.job = None;
                if w.can_take() {
                    let n = w.name.clone();
                    self.make_idle(&n);
                }
            }
        }
        let now = crate::now_us();
        let ended = if a.cancel_requested {
            Some(JobState::Cancelled)
        } else if a.attempt >= self.opts.max_attempts {
            Some(JobState::Failed)
        } else {
            None
        };
        let result = if a.cancel_requested {
            self.store.ended(
                id,
                a.attempt,
                &a.worker,
                JobState::Cancelled,
                "cancelled",
                &format!("cancelled; {why}"),
                now,
            )
        } else if a.attempt >= self.opts.max_attempts {
            self.store.ended(
                id,
                a.attempt,
                &a.worker,
                JobState::Failed,
                "lost",
                &format!("lost on all {} attempts; last: {why}", a.attempt),
                now,
            )
        } else {
            self.head_seq -= 1;
            let seq = self.head_seq;
            let r = self.store.requeued(id, a.attempt, &a.worker, seq, why, now);
            if r.is_ok() {
                self.queue.push_front(id);
                self.queued_at.insert(id, Instant::now());
                self.metrics.requeued.inc();
                if let Ok((_, _, _, tp, _)) = self.store.task(id) {
                    let parent = TraceContext::parse(&tp);
                    if parent.is_some() {
                        self.queued_spans.insert(
                            id,
                            Span::child(parent, "manager.queued", "queue", || {
                                format!("job {id} (requeued)")
                            }),
                        );
                    }
                }
                if let Some(s) = a.job_span {
                    self.job_spans.insert(id, s);
                }
            }
            r
        };
        match (result, ended) {
            (Err(e), _) => {
                tracing::error!("jobs manager: recording that job {id} was lost: {e:#}")
            }
            (Ok(()), Some(state)) => self.metrics.finished(state),
            (Ok(()), None) => {}
        }
        tracing::info!(
            "jobs manager: job {id} attempt {} taken from {}: {why}",
            a.attempt,
            a.worker
        );
        self.publish(id);
        self.dispatch();
    }

    /// A worker stopped heartbeating: forget its session, take its job back.
    fn lose_worker(&mut self, name: &str, why: &str) {
        let Some(w) = self.workers.get_mut(name) else {
            return;
        };
        if let Some(s) = w.session.take() {
            self.sessions.remove(&s);
        }
        w.tx = None;
        let job = w.job;
        tracing::warn!("jobs manager: worker {name} lost: {why}");
        if let Some(id) = job {
            self.requeue_or_fail(id, &format!("worker {name} {why}"));
        }
    }

    /// Periodic: lost workers, unclaimed jobs after a restart.
    fn reap(&mut self) {
        let timeout = self.opts.worker_timeout;
        let silent: Vec<String> = self
            .workers
            .values()
            .filter(|w| w.live() && w.last_heartbeat.elapsed() > timeout)
            .map(|w| w.name.clone())
            .collect();
        for name in silent {
            self.lose_worker(
                &name,
                &format!("stopped heartbeating for {}", format_duration(timeout)),
            );
        }
        let now = Instant::now();
        let orphans: Vec<(u64, String)> = self
            .running
            .iter()
            .filter(|(_, a)| a.orphan_deadline.is_some_and(|d| now >= d))
            .map(|(id, a)| (*id, a.worker.clone()))
            .collect();
        for (id, worker) in orphans {
            self.requeue_or_fail(
                id,
                &format!(
                    "worker {worker} did not claim it within {} of the manager's restart",
                    format_duration(timeout)
                ),
            );
        }
    }

    fn register(
        &mut self,
        req: proto::RegisterRequest,
        address: String,
    ) -> Result<proto::RegisterReply, Status> {
        let name = req.name.trim().to_owned();
        if name.is_empty()
            || name.len() > config::MAX_NAME_LEN
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Status::invalid_argument(format!(
                "bad worker name {:?}: 1–{} characters, no spaces",
                req.name,
                config::MAX_NAME_LEN
            )));
        }
        if let Some(w) = self.workers.get(&name) {
            if w.live() {
                if w.last_heartbeat.elapsed() <= self.opts.worker_timeout {
                    return Err(Status::already_exists(format!(
                        "worker name {name} is held by a live worker at {} (last heartbeat {} ago); choose another --name, or wait {} for it to expire",
                        w.address,
                        format_duration(w.last_heartbeat.elapsed()),
                        format_duration(self.opts.worker_timeout)
                    )));
                }
                self.lose_worker(
                    &name,
                    "was replaced by a new registration after its timeout",
                );
            }
        } else if self.workers.len() >= config::MAX_WORKERS {
            return Err(Status::resource_exhausted(format!(
                "{} workers already",
                config::MAX_WORKERS
            )));
        }
        let session = format!("{:016x}{:016x}", crate::random_u64(), crate::random_u64());
        let now_us = crate::now_us();
        let entry = self
            .workers
            .entry(name.clone())
            .or_insert_with(|| WorkerEntry {
                name: name.clone(),
                session: None,
                address: String::new(),
                registered_us: 0,
                last_heartbeat: Instant::now(),
                last_heartbeat_us: 0,
                job: None,
                tx: None,
                tasks_done: 0,
            });
        entry.session = Some(session.clone());
        entry.address = address;
        entry.registered_us = now_us;
        entry.last_heartbeat = Instant::now();
        entry.last_heartbeat_us = now_us;
        entry.tx = None;
        entry.job = None;
        entry.tasks_done = 0;
        self.sessions.insert(session.clone(), name.clone());

        // Jobs recorded as running on this worker name: adopt the one it claims, take
        // back the others (a worker holds one task; a new registration proves any other
        // is gone).
        let claim = req.running.as_ref().map(|r| (r.job_id, r.attempt));
        let mine: Vec<(u64, u32)> = self
            .running
            .iter()
            .filter(|(_, a)| a.worker == name)
            .map(|(id, a)| (*id, a.attempt))
            .collect();
        let mut keep = false;
        for (id, attempt) in mine {
            if claim == Some((id, attempt)) {
                keep = true;
                let a = self.running.get_mut(&id).expect("listed");
                a.orphan_deadline = None;
                a.started = true;
                self.workers.get_mut(&name).expect("inserted").job = Some(id);
                if let Err(e) = self.store.note(
                    id,
                    attempt,
                    &name,
                    "adopted",
                    "its worker registered again and still holds it",
                    now_us,
                ) {
                    tracing::error!("jobs manager: {e:#}");
                }
                tracing::info!(
                    "jobs manager: worker {name} registered again and kept job {id} attempt {attempt}"
                );
            } else {
                self.requeue_or_fail(id, &format!("worker {name} registered again without it"));
            }
        }
        let detail = match (claim, keep) {
            (Some((id, attempt)), false) => {
                format!("job {id} attempt {attempt} is not yours any more; drop it")
            }
            _ => String::new(),
        };
        tracing::info!("jobs manager: worker {name} registered");
        Ok(proto::RegisterReply {
            session,
            heartbeat_interval_ms: self.opts.heartbeat_interval().as_millis() as u32,
            lease_ms: self.opts.lease().as_millis() as u32,
            keep_running: keep,
            detail,
        })
    }

    fn session(&self, session: &str) -> Result<String, Status> {
        self.sessions
            .get(session)
            .cloned()
            .ok_or_else(|| Status::not_found("unknown or expired worker session; register again"))
    }

    fn heartbeat(&mut self, req: proto::HeartbeatRequest) -> Result<proto::HeartbeatReply, Status> {
        let name = self.session(&req.session)?;
        let w = self.workers.get_mut(&name).expect("session names a worker");
        w.last_heartbeat = Instant::now();
        w.last_heartbeat_us = crate::now_us();
        let held = w.job;
        let claim = req.running.map(|r| (r.job_id, r.attempt, r.finished));
        let kill = match (claim, held) {
            (Some((id, attempt, _)), Some(h)) if id == h => {
                let a = &self.running[&h];
                a.attempt != attempt || a.cancel_requested
            }
            // A task that has ended, whose Finished report we accepted before the
            // worker heard back: nothing to kill.
            (Some((_, _, true)), _) => false,
            (Some(_), _) => true,
            (None, Some(h)) => {
                // Given a job it does not know: the assignment was lost on the way.
                let a = &self.running[&h];
                if !a.started && a.dispatched.elapsed() > self.opts.worker_timeout {
                    self.requeue_or_fail(h, &format!("worker {name} never received it"));
                }
                false
            }
            (None, None) => false,
        };
        Ok(proto::HeartbeatReply { kill_running: kill })
    }

    fn open_assignments(
        &mut self,
        session: &str,
    ) -> Result<mpsc::UnboundedReceiver<Result<Assignment, Status>>, Status> {
        let name = self.session(session)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let w = self.workers.get_mut(&name).expect("session names a worker");
        w.tx = Some(tx.clone());
        match w.job {
            Some(id) => {
                // A new stream after a broken one: send the task again if it may not have
                // arrived (the worker ignores a task it already runs), and a pending cancel.
                let a = &self.running[&id];
                if !a.started {
                    if let Ok((job_name, argv, array_index, traceparent, _)) = self.store.task(id) {
                        let task = proto::Task {
                            job_id: id,
                            attempt: a.attempt,
                            name: job_name,
                            argv: argv.unwrap_or_default(),
                            array_index,
                            max_output_bytes: self.opts.max_output_bytes,
                            traceparent,
                        };
                        let _ = tx.send(Ok(Assignment {
                            kind: Some(assignment::Kind::Run(task)),
                        }));
                    }
                }
                if a.cancel_requested {
                    let _ = tx.send(Ok(self.cancel_message(id, a.attempt)));
                }
            }
            None => {
                self.make_idle(&name);
                self.dispatch();
            }
        }
        Ok(rx)
    }

    fn cancel_message(&self, id: u64, attempt: u32) -> Assignment {
        Assignment {
            kind: Some(assignment::Kind::Cancel(proto::CancelTask {
                job_id: id,
                attempt,
                grace_ms: self.opts.kill_grace.as_millis() as u32,
            })),
        }
    }

    fn report(
        &mut self,
        req: proto::ReportRequest,
        parent: Option<TraceContext>,
    ) -> Result<proto::ReportReply, Status> {
        let name = self.session(&req.session)?;
        let id = req.job_id;
        let current = self.running.get(&id).is_some_and(|a| {
            a.worker == name && a.attempt == req.attempt && a.orphan_deadline.is_none()
        });
        let now = crate::now_us();
        use proto::report_request::Report;
        if !current {
            let detail = format!(
                "report from worker {name} about job {id} attempt {}, which it no longer runs",
                req.attempt
            );
            if matches!(req.report, Some(Report::Finished(_))) {
                if let Err(e) = self.store.note(
                    id,
                    req.attempt,
                    &name,
                    "stale_report",
                    "ignored: the attempt was taken back",
                    now,
                ) {
                    tracing::debug!("jobs manager: {e:#}");
                }
            }
            return Ok(proto::ReportReply {
                accepted: false,
                detail,
            });
        }
        match req.report {
            None => return Err(Status::invalid_argument("empty report")),
            Some(Report::Started(s)) => {
                let a = self.running.get_mut(&id).expect("current");
                a.started = true;
                if let Some(q) = a.queued_at.take() {
                    self.metrics.queue_to_start.observe_since(q);
                }
                self.store
                    .started(id, req.attempt, &name, s.at_us, s.pid, now)
                    .map_err(status_internal)?;
                self.publish(id);
            }
            Some(Report::Output(o)) => {
                self.running.get_mut(&id).expect("current").started = true;
                self.store_output(id, req.attempt, &o)?;
            }
            Some(Report::Finished(f)) => {
                let _span =
                    Span::child(parent, "manager.report", "manager", || format!("job {id}"));
                if let Some(o) = &f.output {
                    self.store_output(id, req.attempt, o)?;
                }
                if f.fenced {
                    self.requeue_or_fail(
                        id,
                        &format!(
                            "worker {name} stopped the task (it lost contact with the manager, or is stopping)"
                        ),
                    );
                    return Ok(proto::ReportReply {
                        accepted: true,
                        detail: String::new(),
                    });
                }
                let a = self.running.remove(&id).expect("current");
                let (state, reason) = if a.cancel_requested {
                    (JobState::Cancelled, "cancelled while running".to_owned())
                } else if !f.error.is_empty() {
                    (JobState::Failed, f.error.clone())
                } else if f.exit_code == Some(0) {
                    (JobState::Succeeded, String::new())
                } else if let Some(sig) = f.signal {
                    (
                        JobState::Failed,
                        format!("killed by signal {sig} ({})", signal_name(sig)),
                    )
                } else {
                    (
                        JobState::Failed,
                        format!("exit status {}", f.exit_code.unwrap_or(-1)),
                    )
                };
                let ending = Ending {
                    state,
                    exit_code: f.exit_code,
                    signal: f.signal,
                    reason,
                    started_us: f.started_at_us,
                    finished_us: if f.finished_at_us > 0 {
                        f.finished_at_us
                    } else {
                        now
                    },
                    stdout_total: f.stdout_total,
                    stderr_total: f.stderr_total,
                };
                let stored = self.store.finished(id, req.attempt, &name, &ending, now);
                if let Some(s) = a.job_span {
                    s.end();
                }
                let w = self.workers.get_mut(&name).expect("session names a worker");
                w.job = None;
                w.tasks_done += 1;
                if w.can_take() {
                    self.make_idle(&name);
                }
                stored.map_err(status_internal)?;
                self.metrics.finished(state);
                self.publish(id);
                self.finished_since_prune += 1;
                if self.finished_since_prune >= PRUNE_EVERY {
                    self.finished_since_prune = 0;
                    match self.store.prune(self.opts.history_limit) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            "jobs manager: dropped the {n} oldest finished jobs (history limit {})",
                            self.opts.history_limit
                        ),
                        Err(e) => tracing::warn!("jobs manager: pruning the history: {e:#}"),
                    }
                }
                self.dispatch();
            }
        }
        Ok(proto::ReportReply {
            accepted: true,
            detail: String::new(),
        })
    }

    fn store_output(&mut self, id: u64, attempt: u32, o: &proto::Output) -> Result<(), Status> {
        let limit = self.opts.max_output_bytes;
        for (stream, offset, data) in [
            (Stream::Stdout, o.stdout_offset, &o.stdout),
            (Stream::Stderr, o.stderr_offset, &o.stderr),
        ] {
            if let Some((at, new)) = self
                .store
                .append_output(id, stream, offset, data, limit)
                .map_err(status_internal)?
            {
                if self.log_events.receiver_count() > 0 {
                    let _ = self.log_events.send(LogEvent {
                        job_id: id,
                        attempt,
                        stream,
                        offset: at,
                        data: Arc::new(new),
                    });
                }
            }
        }
        Ok(())
    }

    fn cancel(&mut self, id: u64) -> Result<Job, Status> {
        let job = self
            .store
            .get(id, false)
            .map_err(status_internal)?
            .ok_or_else(|| not_found(id))?;
        let now = crate::now_us();
        match job.state() {
            s if is_final(s) => {
                return Err(Status::failed_precondition(format!(
                    "job {id} already {}",
                    store::state_name(s)
                )));
            }
            JobState::Queued => {
                self.queue.retain(|&j| j != id);
                self.queued_at.remove(&id);
                if let Some(s) = self.queued_spans.remove(&id) {
                    s.end();
                }
                if let Some(s) = self.job_spans.remove(&id) {
                    s.end();
                }
                self.store
                    .ended(
                        id,
                        job.attempts,
                        "",
                        JobState::Cancelled,
                        "cancelled",
                        "cancelled while queued",
                        now,
                    )
                    .map_err(status_internal)?;
                self.metrics.finished(JobState::Cancelled);
            }
            _ => {
                let Some(a) = self.running.get_mut(&id) else {
                    return Err(Status::internal(format!(
                        "job {id} is running but has no worker"
                    )));
                };
                if !a.cancel_requested {
                    a.cancel_requested = true;
                    let (worker, attempt) = (a.worker.clone(), a.attempt);
                    self.store
                        .cancel_requested(id, attempt, &worker, now)
                        .map_err(status_internal)?;
                    let msg = self.cancel_message(id, attempt);
                    if let Some(tx) = self.workers.get(&worker).and_then(|w| w.tx.as_ref()) {
                        let _ = tx.send(Ok(msg));
                    }
                }
            }
        }
        self.publish(id);
        self.store
            .get(id, false)
            .map_err(status_internal)?
            .ok_or_else(|| not_found(id))
    }

    fn workers(&self) -> Vec<proto::WorkerInfo> {
        let mut list: Vec<proto::WorkerInfo> = self
            .workers
            .values()
            .map(|w| proto::WorkerInfo {
                name: w.name.clone(),
                address: w.address.clone(),
                state: if !w.live() {
                    "lost"
                } else if w.job.is_some() {
                    "busy"
                } else if w.tx.is_none() {
                    "connecting"
                } else {
                    "idle"
                }
                .to_owned(),
                job_id: w.job.unwrap_or(0),
                registered_at_us: w.registered_us,
                last_heartbeat_us: w.last_heartbeat_us,
                tasks_done: w.tasks_done,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Ends every stream (the manager is stopping).
    fn close_streams(&mut self) {
        for w in self.workers.values_mut() {
            w.tx = None;
        }
    }
}

/// `SIGKILL` for 9, etc.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned())
}

impl Manager {
    /// Opens (or creates) the manager's database in `data_dir`; its metrics go to
    /// `metrics` (the node's registry).
    pub fn open(
        data_dir: &Path,
        opts: ManagerOptions,
        metrics: &Metrics,
    ) -> anyhow::Result<Arc<Manager>> {
        opts.validate()?;
        let store = Store::open(&data_dir.join(DB_FILE))?;
        let (job_events, _) = broadcast::channel(EVENTS_CAPACITY);
        let (log_events, _) = broadcast::channel(EVENTS_CAPACITY);
        let core = Core::load(
            store,
            opts.clone(),
            job_events.clone(),
            log_events.clone(),
            JobMetrics::new(metrics),
        )?;
        let manager = Arc::new(Manager {
            core: Mutex::new(core),
            opts,
            job_events,
            log_events,
            stopping: CancellationToken::new(),
        });
        metrics::register_gauges(metrics, &manager);
        Ok(manager)
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        // A panic while holding the lock is a bug; the state may be half-changed, so
        // stop rather than go on with it.
        self.core
            .lock()
            .expect("jobs manager state poisoned by an earlier panic")
    }

    pub fn options(&self) -> &ManagerOptions {
        &self.opts
    }

    /// Serves the gRPC services on `listener` until `shutdown` is cancelled; reaps lost
    /// workers meanwhile.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let reaper = {
            let m = self.clone();
            let period = (self.opts.worker_timeout / 10).max(Duration::from_millis(50));
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => m.core().reap(),
                    }
                }
            })
        };
        let max_message = (2 * self.opts.max_output_bytes as usize) + (1 << 20);
        let stopping = self.stopping.clone();
        let stop_streams = {
            let m = self.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                m.stopping.cancel();
                m.core().close_streams();
            }
        };
        let incoming = crate::incoming_nodelay(listener);
        let result = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(
                proto::jobs_server::JobsServer::new(grpc::Grpc(self.clone()))
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message),
            )
            .add_service(
                proto::workers_server::WorkersServer::new(grpc::Grpc(self.clone()))
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message),
            )
            .serve_with_incoming_shutdown(incoming, stop_streams)
            .await;
        stopping.cancel();
        reaper.abort();
        result.context("the jobs manager's gRPC server failed")
    }

    /// Binds `opts.listen` with an error that says what to do.
    pub async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
        nuage_core::net::bind_tcp(addr, "the jobs manager", flag).await
    }
}

#[cfg(test)]
mod tests;
