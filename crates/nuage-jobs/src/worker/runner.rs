//! Running one task: a process in its own process group, its stdout and stderr
//! captured up to a bound (the rest counted and dropped, so the task never blocks on a
//! full pipe), output sent to the manager as it comes, and its end reported.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::spawn;
use crate::proto;
use crate::trace::{Span, TraceContext};

/// How often new output of a running task is sent to the manager.
pub const OUTPUT_FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// After the task's main process exits, how long to wait for its pipes to close (the
/// rest of its process group is killed first).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Read buffer per pipe.
const READ_BUFFER: usize = 16 << 10;

/// What the worker's main loop may ask of a running task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM to the group, SIGKILL after the grace period (a cancel).
    Terminate { grace: Duration },
    /// SIGKILL to the group now; `fenced` when the worker's lease ran out.
    Kill { fenced: bool },
}

/// A task as the worker runs it.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub job_id: u64,
    pub attempt: u32,
    pub name: String,
    /// Empty: the default task.
    pub argv: Vec<String>,
    pub array_index: Option<u32>,
    pub max_output_bytes: u64,
    pub trace: Option<TraceContext>,
    pub worker: String,
    pub manager: String,
    pub workdir: Option<PathBuf>,
    /// The nuage binary and the duration of the default task.
    pub program: PathBuf,
    pub default_task_duration: Duration,
}

/// Captured output of one stream.
#[derive(Debug, Default)]
struct Capture {
    kept: Vec<u8>,
    total: u64,
    /// Bytes of `kept` already sent.
    sent: usize,
}

impl Capture {
    fn push(&mut self, data: &[u8], limit: u64) {
        self.total += data.len() as u64;
        let room = (limit as usize).saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..room.min(data.len())]);
    }
    /// The unsent bytes and their offset, marking them sent.
    fn take(&mut self) -> (u64, Vec<u8>) {
        let offset = self.sent as u64;
        let new = self.kept[self.sent..].to_vec();
        self.sent = self.kept.len();
        (offset, new)
    }
    fn pending(&self) -> bool {
        self.sent < self.kept.len()
    }
}

fn take_output(out: &mut Capture, err: &mut Capture) -> proto::Output {
    let (stdout_offset, stdout) = out.take();
    let (stderr_offset, stderr) = err.take();
    proto::Output {
        stdout_offset,
        stdout,
        stderr_offset,
        stderr,
    }
}

/// The task's command line and environment: the worker's environment with the job's
/// variables (`NUAGE_JOB_ID`, `NUAGE_JOB_NAME`, `NUAGE_ATTEMPT`, `NUAGE_WORKER`,
/// `NUAGE_MANAGER`, `NUAGE_ARRAY_TASK_ID` for an array task, `NUAGE_TRACEPARENT` when
/// traced).
fn build_command(
    spec: &TaskSpec,
    trace: Option<TraceContext>,
) -> std::io::Result<spawn::TaskCommand> {
    let duration = format!("{}ms", spec.default_task_duration.as_millis());
    let argv: Vec<&OsStr> = if spec.argv.is_empty() {
        [
            spec.program.as_os_str(),
            OsStr::new("jobs"),
            OsStr::new("default-task"),
            OsStr::new(&spec.name),
            OsStr::new("--worker"),
            OsStr::new(&spec.worker),
            OsStr::new("--duration"),
            OsStr::new(&duration),
        ]
        .into()
    } else {
        spec.argv.iter().map(OsStr::new).collect()
    };
    let (job_id, attempt) = (spec.job_id.to_string(), spec.attempt.to_string());
    let index = spec.array_index.map(|i| i.to_string());
    let traceparent = trace.map(|t| t.traceparent());
    let mut set = vec![
        ("NUAGE_JOB_ID", job_id.as_str()),
        ("NUAGE_JOB_NAME", spec.name.as_str()),
        ("NUAGE_ATTEMPT", attempt.as_str()),
        ("NUAGE_WORKER", spec.worker.as_str()),
        ("NUAGE_MANAGER", spec.manager.as_str()),
    ];
    set.extend(index.as_deref().map(|i| ("NUAGE_ARRAY_TASK_ID", i)));
    set.extend(traceparent.as_deref().map(|t| ("NUAGE_TRACEPARENT", t)));
    spawn::TaskCommand::new(
        &argv,
        &set,
        &["NUAGE_TRACEPARENT", "NUAGE_ARRAY_TASK_ID"],
        spec.workdir.as_deref(),
    )
}

/// Runs the task to its end. `report` receives Started and Output reports as they
/// happen; the Finished report is returned.
pub async fn run(
    spec: TaskSpec,
    mut control: mpsc::UnboundedReceiver<Control>,
    report: impl Fn(proto::report_request::Report),
) -> proto::Finished {
    use proto::report_request::Report;
    let task_span = Span::child(spec.trace, "task", "task", || {
        format!("job {} {}", spec.job_id, spec.name)
    });
    let started_at_us = crate::now_us();
    let mut child = match build_command(&spec, task_span.context()).and_then(|c| spawn::spawn(&c)) {
        Ok(c) => c,
        Err(e) => {
            let program = spec
                .argv
                .first()
                .map_or_else(|| spec.program.display().to_string(), Clone::clone);
            return proto::Finished {
                started_at_us,
                finished_at_us: crate::now_us(),
                error: format!("cannot start `{program}` on worker {}: {e}", spec.worker),
                ..Default::default()
            };
        }
    };
    let pid = child.id();
    let pgid = Pid::from_raw(pid as i32);
    report(Report::Started(proto::Started {
        at_us: started_at_us,
        pid,
    }));
    let limit = spec.max_output_bytes;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (mut out, mut err) = (Capture::default(), Capture::default());
    let (mut out_buf, mut err_buf) = (vec![0u8; READ_BUFFER], vec![0u8; READ_BUFFER]);
    let (mut out_open, mut err_open) = (true, true);
    let mut status: Option<std::process::ExitStatus> = None;
    let mut fenced = false;
    let mut kill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let mut flush = tokio::time::interval_at(
        Instant::now() + OUTPUT_FLUSH_INTERVAL,
        OUTPUT_FLUSH_INTERVAL,
    );
    let mut control_open = true;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        if status.is_some() && !out_open && !err_open {
            break;
        }
        tokio::select! {
            n = stdout.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => out.push(&out_buf[..n], limit),
            },
            n = stderr.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => err.push(&err_buf[..n], limit),
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s.unwrap_or_else(|_| std::process::ExitStatus::from_raw(0x7f00)));
                // What the task left behind in its group goes with it.
                let _ = killpg(pgid, Signal::SIGKILL);
                drain_until = Some(Instant::now() + DRAIN_TIMEOUT);
            }
            _ = flush.tick() => {
                if out.pending() || err.pending() {
                    report(Report::Output(take_output(&mut out, &mut err)));
                }
            }
            c = control.recv(), if control_open => match c {
                Some(Control::Terminate { grace }) if status.is_none() => {
                    let _ = killpg(pgid, Signal::SIGTERM);
                    kill_at.get_or_insert(Instant::now() + grace);
                }
                Some(Control::Kill { fenced: f }) if status.is_none() => {
                    fenced |= f;
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                Some(_) => {}
                None => control_open = false,
            },
            _ = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() && status.is_none() => {
                let _ = killpg(pgid, Signal::SIGKILL);
                kill_at = None;
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => {
                // A process that left the group still holds a pipe: stop reading.
                break;
            }
        }
    }
    let finished_at_us = crate::now_us();
    task_span.end();
    let status = status.expect("the loop ends after the exit");
    proto::Finished {
        started_at_us,
        finished_at_us,
        exit_code: status.code(),
        signal: status.signal(),
        error: String::new(),
        output: Some(take_output(&mut out, &mut err)),
        stdout_total: out.total,
        stderr_total: err.total,
        fenced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn spec(argv: &[&str]) -> TaskSpec {
        TaskSpec {
            job_id: 7,
            attempt: 1,
            name: "t".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            array_index: Some(3),
            max_output_bytes: 1000,
            trace: None,
            worker: "w".into(),
            manager: "http://m".into(),
            workdir: None,
            program: PathBuf::from("/nonexistent/nuage"),
            default_task_duration: Duration::from_millis(1),
        }
    }

    type Reports = Arc<Mutex<Vec<proto::report_request::Report>>>;

    async fn run_it(s: TaskSpec, ctl: Option<(Duration, Control)>) -> (proto::Finished, Reports) {
        let reports: Reports = Arc::default();
        let r = reports.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some((after, c)) = ctl {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(c);
            });
        }
        let f = run(s, rx, move |rep| r.lock().unwrap().push(rep)).await;
        (f, reports)
    }

    #[tokio::test]
    async fn captures_output_and_status() {
        let (f, reports) = run_it(
            spec(&[
                "sh",
                "-c",
                "echo out $NUAGE_JOB_ID $NUAGE_ARRAY_TASK_ID; echo err >&2; exit 3",
            ]),
            None,
        )
        .await;
        assert_eq!(f.exit_code, Some(3));
        assert!(!f.fenced);
        let o = f.output.unwrap();
        assert_eq!(o.stdout, b"out 7 3\n");
        assert_eq!(o.stderr, b"err\n");
        assert!(matches!(
            reports.lock().unwrap()[0],
            proto::report_request::Report::Started(_)
        ));
    }

    #[tokio::test]
    async fn output_beyond_the_bound_is_counted_not_kept() {
        let (f, _) = run_it(spec(&["sh", "-c", "head -c 5000 /dev/zero"]), None).await;
        assert_eq!(f.exit_code, Some(0));
        assert_eq!(f.stdout_total, 5000);
        assert_eq!(f.output.unwrap().stdout.len(), 1000);
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_not_a_panic() {
        let (f, _) = run_it(spec(&["/nonexistent/prog"]), None).await;
        assert!(
            f.error.contains("cannot start `/nonexistent/prog`"),
            "{}",
            f.error
        );
    }

    #[tokio::test]
    async fn terminate_kills_the_whole_group() {
        // The shell ignores SIGTERM; its child sleeps: SIGKILL after the grace period
        // must end both.
        let start = std::time::Instant::now();
        let (f, _) = run_it(
            spec(&["sh", "-c", "trap '' TERM; sleep 60 & wait"]),
            Some((
                Duration::from_millis(300),
                Control::Terminate {
                    grace: Duration::from_millis(300),
                },
            )),
        )
        .await;
        assert_eq!(f.signal, Some(9), "{f:?}");
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[tokio::test]
    async fn fenced_kill_is_reported() {
        let (f, _) = run_it(
            spec(&["sleep", "60"]),
            Some((Duration::from_millis(100), Control::Kill { fenced: true })),
        )
        .await;
        assert!(f.fenced);
        assert_eq!(f.signal, Some(9));
    }

    #[tokio::test]
    async fn long_output_is_streamed_while_running() {
        let (f, reports) = run_it(
            spec(&["sh", "-c", "echo first; sleep 1; echo second"]),
            None,
        )
        .await;
        assert_eq!(f.exit_code, Some(0));
        let outputs: Vec<Vec<u8>> = reports
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| match r {
                proto::report_request::Report::Output(o) => Some(o.stdout.clone()),
                _ => None,
            })
            .collect();
        // "first" is streamed while the task sleeps; "second" comes either in a later
        // stream report or in the final one (a loaded machine may notice the exit late).
        // Offsets must join the pieces without gap or overlap.
        assert_eq!(outputs.first(), Some(&b"first\n".to_vec()));
        let streamed = outputs.concat();
        let last = f.output.unwrap();
        assert_eq!(last.stdout_offset, streamed.len() as u64);
        assert_eq!(
            [streamed, last.stdout].concat(),
            b"first\nsecond\n".to_vec()
        );
    }
}
