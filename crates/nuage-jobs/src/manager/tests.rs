//! The scheduling core on its own: FIFO order, one task per worker, requeue at the
//! head, attempts, stale reports, and the reconciliation after a restart. The
//! invariants of [`Core::check`] are asserted after every step.

use super::*;
use crate::proto::report_request::Report;

struct Fixture {
    _tmp: tempfile::TempDir,
    path: std::path::PathBuf,
    core: Core,
    metrics: Metrics,
}

fn opts(max_attempts: u32) -> ManagerOptions {
    ManagerOptions {
        max_attempts,
        ..ManagerOptions::default()
    }
}

fn load(path: &Path, opts: ManagerOptions, metrics: &Metrics) -> Core {
    let (jobs, _) = broadcast::channel(16);
    let (logs, _) = broadcast::channel(16);
    Core::load(
        Store::open(path).unwrap(),
        opts,
        jobs,
        logs,
        JobMetrics::new(metrics),
    )
    .unwrap()
}

fn fixture(max_attempts: u32) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(DB_FILE);
    let metrics = Metrics::new();
    let core = load(&path, opts(max_attempts), &metrics);
    Fixture {
        _tmp: tmp,
        path,
        core,
        metrics,
    }
}

type Rx = mpsc::UnboundedReceiver<Result<Assignment, Status>>;

impl Fixture {
    fn submit(&mut self, name: &str) -> u64 {
        let job = validate_submit(&proto::SubmitRequest {
            name: name.into(),
            task: Some(proto::submit_request::Task::Command(proto::Command {
                argv: vec!["true".into()],
            })),
            array_index: None,
        })
        .unwrap();
        let id = self.core.submit(job, None).unwrap();
        self.core.check();
        id
    }

    /// Registers `name` (claiming `running`) and opens its assignment stream.
    fn worker(&mut self, name: &str, running: Option<(u64, u32)>) -> (String, Rx, bool) {
        let reply = self
            .core
            .register(
                proto::RegisterRequest {
                    name: name.into(),
                    running: running.map(|(job_id, attempt)| proto::RunningTask {
                        job_id,
                        attempt,
                        finished: false,
                    }),
                    version: String::new(),
                },
                "test".into(),
            )
            .unwrap();
        self.core.check();
        let rx = self.core.open_assignments(&reply.session).unwrap();
        self.core.check();
        (reply.session, rx, reply.keep_running)
    }

    fn finish(&mut self, session: &str, id: u64, attempt: u32, exit: i32) -> bool {
        let r = self
            .core
            .report(
                proto::ReportRequest {
                    session: session.into(),
                    job_id: id,
                    attempt,
                    report: Some(Report::Finished(proto::Finished {
                        exit_code: Some(exit),
                        ..Default::default()
                    })),
                },
                None,
            )
            .unwrap();
        self.core.check();
        r.accepted
    }

    /// The value of the series `name` (with its labels, as rendered).
    fn metric(&self, series: &str) -> f64 {
        let text = self.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    fn started(&mut self, session: &str, id: u64, attempt: u32) {
        let r = self
            .core
            .report(
                proto::ReportRequest {
                    session: session.into(),
                    job_id: id,
                    attempt,
                    report: Some(Report::Started(proto::Started { at_us: 1, pid: 1 })),
                },
                None,
            )
            .unwrap();
        assert!(r.accepted);
        self.core.check();
    }

    fn state(&self, id: u64) -> JobState {
        self.core.store.get(id, false).unwrap().unwrap().state()
    }
}

/// The next task on a stream: (job id, attempt), or None if nothing is waiting.
fn next_task(rx: &mut Rx) -> Option<(u64, u32)> {
    match rx.try_recv() {
        Ok(Ok(Assignment {
            kind: Some(assignment::Kind::Run(t)),
        })) => Some((t.job_id, t.attempt)),
        Ok(other) => panic!("not a task: {other:?}"),
        Err(_) => None,
    }
}

#[test]
fn oldest_job_first_and_one_task_per_worker() {
    let mut f = fixture(3);
    let ids: Vec<u64> = (0..4).map(|i| f.submit(&format!("j{i}"))).collect();
    let (s1, mut rx1, _) = f.worker("w1", None);
    let (s2, mut rx2, _) = f.worker("w2", None);
    assert_eq!(next_task(&mut rx1), Some((ids[0], 1)));
    assert_eq!(next_task(&mut rx2), Some((ids[1], 1)));
    // Busy workers get nothing more.
    assert_eq!(next_task(&mut rx1), None);
    assert_eq!(next_task(&mut rx2), None);
    assert!(f.finish(&s2, ids[1], 1, 0));
    assert_eq!(next_task(&mut rx2), Some((ids[2], 1)));
    assert!(f.finish(&s1, ids[0], 1, 1));
    assert_eq!(next_task(&mut rx1), Some((ids[3], 1)));
    assert_eq!(f.state(ids[0]), JobState::Failed);
    assert_eq!(f.state(ids[1]), JobState::Succeeded);
}

#[test]
fn a_lost_worker_s_job_goes_back_to_the_head_then_fails_after_max_attempts() {
    let mut f = fixture(2);
    let a = f.submit("a");
    let b = f.submit("b");
    let (_s1, mut rx1, _) = f.worker("w1", None);
    assert_eq!(next_task(&mut rx1), Some((a, 1)));
    f.core.lose_worker("w1", "test");
    f.core.check();
    // Back at the head, before b.
    assert_eq!(f.core.queue.iter().copied().collect::<Vec<_>>(), vec![a, b]);
    let (s2, mut rx2, _) = f.worker("w2", None);
    assert_eq!(next_task(&mut rx2), Some((a, 2)));
    // A late report of the first attempt is refused.
    let (s1b, _rx1b, _) = f.worker("w1", None);
    assert!(!f.finish(&s1b, a, 1, 0));
    // Its second (last) attempt is lost too: failed, and b goes on.
    f.core.lose_worker("w2", "test");
    f.core.check();
    assert_eq!(f.state(a), JobState::Failed);
    let job = f.core.store.get(a, true).unwrap().unwrap();
    assert!(
        job.reason.contains("lost on all 2 attempts"),
        "{}",
        job.reason
    );
    let (s3, mut rx3, _) = f.worker("w3", None);
    // w1 (registered again, idle) took b before w3 came.
    let got = next_task(&mut rx3);
    assert!(got.is_none() || got == Some((b, 1)));
    drop((s2, s3));
}

#[test]
fn cancel_of_a_queued_job_and_of_a_running_one() {
    let mut f = fixture(3);
    let a = f.submit("a");
    let b = f.submit("b");
    let job = f.core.cancel(b).unwrap();
    assert_eq!(job.state(), JobState::Cancelled);
    assert!(f.core.cancel(b).is_err());
    assert_eq!(
        f.core.cancel(999).unwrap_err().code(),
        tonic::Code::NotFound
    );
    let (s1, mut rx1, _) = f.worker("w1", None);
    assert_eq!(next_task(&mut rx1), Some((a, 1)));
    f.core.cancel(a).unwrap();
    f.core.check();
    match rx1.try_recv() {
        Ok(Ok(Assignment {
            kind: Some(assignment::Kind::Cancel(c)),
        })) => assert_eq!((c.job_id, c.attempt), (a, 1)),
        other => panic!("expected a cancel, got {other:?}"),
    }
    // The task ends by the signal: cancelled, not failed.
    assert!(f.finish(&s1, a, 1, 143));
    assert_eq!(f.state(a), JobState::Cancelled);
}

#[test]
fn after_a_restart_running_jobs_are_adopted_or_requeued() {
    let mut f = fixture(3);
    let a = f.submit("a");
    let b = f.submit("b");
    let c = f.submit("c");
    let (_s1, mut rx1, _) = f.worker("w1", None);
    let (_s2, mut rx2, _) = f.worker("w2", None);
    assert_eq!(next_task(&mut rx1), Some((a, 1)));
    assert_eq!(next_task(&mut rx2), Some((b, 1)));
    // The manager stops; a new one loads the same database.
    let path = f.path.clone();
    f.core = load(&path, opts(3), &f.metrics);
    f.core.check();
    assert_eq!(f.core.queue.iter().copied().collect::<Vec<_>>(), vec![c]);
    assert_eq!(f.core.running.len(), 2);
    // w1 comes back holding a: adopted. w2 comes back without b: b is requeued at
    // the head and w2 gets it again.
    let (s1, mut rx1, keep) = f.worker("w1", Some((a, 1)));
    assert!(keep);
    assert_eq!(next_task(&mut rx1), None);
    let (_s2, mut rx2, _) = f.worker("w2", None);
    assert_eq!(next_task(&mut rx2), Some((b, 2)));
    assert!(f.finish(&s1, a, 1, 0));
    assert_eq!(next_task(&mut rx1), Some((c, 1)));
    let hist = f.core.store.get(a, true).unwrap().unwrap().history;
    assert!(hist.iter().any(|h| h.event == "adopted"));
}

#[test]
fn a_worker_name_held_by_a_live_worker_is_refused() {
    let mut f = fixture(3);
    let _w = f.worker("w1", None);
    let err = f
        .core
        .register(
            proto::RegisterRequest {
                name: "w1".into(),
                running: None,
                version: String::new(),
            },
            "x".into(),
        )
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    for bad in ["", "a b", &"x".repeat(200)] {
        let r = f.core.register(
            proto::RegisterRequest {
                name: bad.into(),
                running: None,
                version: String::new(),
            },
            "x".into(),
        );
        assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}

#[test]
fn submit_validation() {
    use proto::submit_request::Task;
    let req = |name: &str, task: Option<Task>| proto::SubmitRequest {
        name: name.into(),
        task,
        array_index: None,
    };
    let cmd = |argv: &[&str]| {
        Some(Task::Command(proto::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
        }))
    };
    assert!(validate_submit(&req("t", cmd(&["true"]))).is_ok());
    assert!(validate_submit(&req("t", Some(Task::DefaultTask(proto::DefaultTask {})))).is_ok());
    for (r, needle) in [
        (req("t", cmd(&[])), "command is empty"),
        (req("t", cmd(&[""])), "command is empty"),
        (req("", cmd(&["true"])), "name is empty"),
        (req("t", None), "no task"),
        (req("a\nb", cmd(&["true"])), "control"),
        (req("t", cmd(&["a\0b"])), "NUL"),
    ] {
        let e = validate_submit(&r).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(needle), "{}", e.message());
    }
}

#[test]
fn counters_follow_the_jobs_and_queue_to_start_is_observed_once_per_start() {
    let mut f = fixture(2);
    let ids: Vec<u64> = (0..4).map(|i| f.submit(&format!("j{i}"))).collect();
    assert_eq!(f.metric("nuage_jobs_submitted_total"), 4.0);
    f.core.cancel(ids[3]).unwrap();
    let (s1, mut rx1, _) = f.worker("w1", None);
    assert_eq!(next_task(&mut rx1), Some((ids[0], 1)));
    f.started(&s1, ids[0], 1);
    assert!(f.finish(&s1, ids[0], 1, 0));
    assert_eq!(next_task(&mut rx1), Some((ids[1], 1)));
    f.started(&s1, ids[1], 1);
    assert!(f.finish(&s1, ids[1], 1, 3));
    // ids[2]: lost twice (max attempts 2) → failed, requeued once on the way.
    assert_eq!(next_task(&mut rx1), Some((ids[2], 1)));
    f.started(&s1, ids[2], 1);
    f.core.lose_worker("w1", "test");
    let (s2, mut rx2, _) = f.worker("w2", None);
    assert_eq!(next_task(&mut rx2), Some((ids[2], 2)));
    f.started(&s2, ids[2], 2);
    f.core.lose_worker("w2", "test");
    f.core.check();
    assert_eq!(
        f.metric("nuage_jobs_finished_total{state=\"succeeded\"}"),
        1.0
    );
    assert_eq!(f.metric("nuage_jobs_finished_total{state=\"failed\"}"), 2.0);
    assert_eq!(
        f.metric("nuage_jobs_finished_total{state=\"cancelled\"}"),
        1.0
    );
    assert_eq!(f.metric("nuage_jobs_requeued_total"), 1.0);
    // One observation per start: 3 first attempts and the requeued one.
    assert_eq!(f.metric("nuage_jobs_queue_to_start_seconds_count"), 4.0);
    assert_eq!(
        f.metric("nuage_jobs_queue_to_start_seconds_bucket{le=\"+Inf\"}"),
        4.0
    );
}
