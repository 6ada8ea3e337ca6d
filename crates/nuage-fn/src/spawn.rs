//! Spawn mode, the inetd model: each connection gets a fresh process whose stdin and
//! stdout *are* the connection's socket. nuage relays nothing; it keeps its own descriptor
//! of the socket only to watch it (TCP_INFO says when data last went each way), so it can
//! close an idle connection and answer a request left unanswered past `--timeout`.
//! Processes start through [`nuage_core::launch`] (a vfork-like clone without glibc's
//! per-signal resets) and are reaped by pidfd.

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use nuage_core::launch::standby::Standby;
use nuage_core::launch::{self, Dispositions, Options, Prepared};

use crate::backoff::Backoff;
use crate::logs::{LogRing, collect_stderr};
use crate::process::{self, CLIENT_ENV, Program, describe};
use crate::sockopt;
use crate::spec::Limits;
use crate::stats::{ErrorKind, GaugeGuard, Stats};
use crate::stderr::ProcessStderr;

/// How often a connection's socket is looked at for idleness and late answers.
pub const WATCH_PERIOD: Duration = Duration::from_millis(500);

pub struct Spawner {
    program: Program,
    /// The program as `execve` takes it, with the function's environment.
    prepared: Arc<Prepared>,
    /// A process of the program started ahead, waiting for the next connection; when it
    /// is taken (or while the next one is being made) a connection starts its own.
    standby: Standby,
    /// The signals this process handles or ignores, reset in each child.
    dispositions: Dispositions,
    backoff: Mutex<Backoff>,
    stats: Arc<Stats>,
    logs: Arc<LogRing>,
}

/// Why a one-shot run (HTTP gateway) gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    Timeout(u64),
    Exited(String),
    StartFailed(String),
    Failing(String),
    TooMuchOutput(usize),
}

impl RunError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RunError::Timeout(_) => ErrorKind::Timeout,
            RunError::Exited(_) => ErrorKind::ExitStatus,
            RunError::StartFailed(_) => ErrorKind::StartFailed,
            RunError::Failing(_) => ErrorKind::Failing,
            RunError::TooMuchOutput(_) => ErrorKind::BadResponse,
        }
    }

    pub fn message(&self) -> String {
        match self {
            RunError::Timeout(secs) => format!("timeout after {secs}s"),
            RunError::Exited(status) => format!("function exited with {status}"),
            RunError::StartFailed(why) => format!("cannot start the function: {why}"),
            RunError::Failing(why) => why.clone(),
            RunError::TooMuchOutput(max) => format!("bad response: more than {max} bytes"),
        }
    }
}

/// How a served connection's process was ended, if nuage ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Itself,
    Idle,
    Timeout,
    Stopped,
}

impl Spawner {
    /// Fails only on a NUL byte in the command or environment (refused by the spec checks).
    pub fn new(
        program: Program,
        stats: Arc<Stats>,
        logs: Arc<LogRing>,
    ) -> std::io::Result<Spawner> {
        let path = program.path.as_os_str().as_bytes();
        let argv = std::iter::once(path).chain(program.args.iter().map(|a| a.as_bytes()));
        let env = program
            .environment()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>();
        let prepared = Arc::new(Prepared::new(path, argv, env)?);
        let dispositions = Dispositions::current();
        let standby = Standby::start(prepared.clone(), dispositions.clone())?;
        Ok(Spawner {
            program,
            prepared,
            standby,
            dispositions,
            backoff: Mutex::new(Backoff::default()),
            stats,
            logs,
        })
    }

    /// No more processes started ahead (the function stops).
    pub fn close(&self) {
        self.standby.close();
    }

    fn backoff(&self) -> MutexGuard<'_, Backoff> {
        self.backoff.lock().expect("spawn backoff lock poisoned")
    }

    /// Whether the function crash-loops, and why.
    pub fn failing(&self) -> Option<String> {
        let b = self.backoff();
        b.failing()
            .then(|| b.last_failure.clone().unwrap_or_default())
    }

    /// The refusal line while a crash-looping function is backed off.
    fn refusal(&self) -> Option<String> {
        let b = self.backoff();
        if !b.failing() {
            return None;
        }
        let wait = b.wait(Instant::now())?;
        Some(format!(
            "function failing ({}); next start in {:.1}s",
            b.last_failure.as_deref().unwrap_or("crashes"),
            wait.as_secs_f64()
        ))
    }

    /// Serves one connection with a fresh process, until it exits (or is ended: idle,
    /// unanswered past the timeout, answered while the function drains, or `stop`).
    pub async fn serve(
        &self,
        socket: std::net::TcpStream,
        client: SocketAddr,
        limits: &Limits,
        idle_timeout: Duration,
        draining: &CancellationToken,
        stop: &CancellationToken,
    ) {
        debug_assert!(
            !nix::fcntl::OFlag::from_bits_truncate(
                nix::fcntl::fcntl(&socket, nix::fcntl::FcntlArg::F_GETFL).unwrap_or(0)
            )
            .contains(nix::fcntl::OFlag::O_NONBLOCK),
            "the process gets a blocking socket"
        );
        if let Some(why) = self.refusal() {
            self.stats.error(ErrorKind::Failing);
            sockopt::send_now(socket.as_fd(), format!("ERR {why}\n").as_bytes());
            let _ = socket.shutdown(std::net::Shutdown::Write);
            return;
        }
        let (stderr, stderr_child) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(function = %self.program.function, "cannot make a stderr pipe: {e}");
                return;
            }
        };
        let client_env =
            CString::new(format!("{CLIENT_ENV}={client}")).expect("an address has no NUL");
        let started = Instant::now();
        let stdio = launch::Stdio {
            stdin: socket.as_fd(),
            stdout: socket.as_fd(),
            stderr: stderr_child.as_fd(),
        };
        let launched = match self.standby.take(stdio, client_env.as_bytes()) {
            Some(ready) => Ok(ready),
            None => {
                let options = Options {
                    extra_env: std::slice::from_ref(&client_env),
                    ..Options::default()
                };
                launch::launch(&self.prepared, stdio, &self.dispositions, &options)
            }
        };
        drop(stderr_child);
        let mut child = match launched {
            Ok(child) => child,
            Err(e) => return self.start_failed(&socket, started, &e),
        };
        let pid = child.id();
        self.stats.starts.inc();
        self.stats.cold_starts.inc();
        let _instance = GaugeGuard::new(&self.stats.instances);
        let _in_flight = GaugeGuard::new(&self.stats.in_flight);
        // The process's stderr is looked at by this task (at each watch tick and at the
        // end) and read by it once it has something: most processes write nothing, and a
        // pipe handed to tokio costs a fifth of nuage's CPU per connection (stderr.rs).
        let mut stderr = ProcessStderr::new(stderr, self.logs.clone(), pid);

        let mut watch =
            tokio::time::interval_at(tokio::time::Instant::now() + WATCH_PERIOD, WATCH_PERIOD);
        let mut ended = Ended::Itself;
        let mut requests = sockopt::Pending::default();
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                () = async { stderr.reading().expect("guarded").await }, if stderr.reading().is_some() => stderr = ProcessStderr::Done,
                _ = stop.cancelled(), if ended == Ended::Itself => {
                    ended = Ended::Stopped;
                    break process::terminate(&mut child).await.ok_or_else(|| std::io::Error::other("no status"));
                }
                _ = watch.tick(), if ended == Ended::Itself => {
                    stderr.look();
                    let Some(activity) = sockopt::activity(socket.as_fd()) else { continue };
                    let unanswered = requests.update(&activity);
                    if draining.is_cancelled() && !unanswered {
                        // Removal: the last request was answered; end the conversation.
                        ended = Ended::Stopped;
                    } else if unanswered && activity.since_recv >= limits.timeout() {
                        ended = Ended::Timeout;
                        self.stats.error(ErrorKind::Timeout);
                        sockopt::send_now(
                            socket.as_fd(),
                            format!("ERR timeout after {}s\n", limits.timeout_secs).as_bytes(),
                        );
                        self.logs.push(pid, "nuage", &format!("killed: request over the timeout of {}s", limits.timeout_secs));
                    } else if activity.since_recv.min(activity.since_sent) >= idle_timeout {
                        ended = Ended::Idle;
                    } else {
                        continue;
                    }
                    // End the conversation for whoever else may hold the socket, then
                    // the process group.
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                    process::signal_group(pid, Signal::SIGKILL);
                }
            }
        };
        if let Some(e) = child.start_error() {
            // A process started ahead could not exec the program.
            return self.start_failed(&socket, started, &e);
        }
        drop(socket);
        stderr.finish();
        let took = started.elapsed();
        self.stats.latency.observe(took.as_secs_f64());
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(function = %self.program.function, pid, "cannot reap: {e}");
                return;
            }
        };
        let how = describe(status);
        tracing::debug!(function = %self.program.function, pid, ?ended, "process ended with {how} after {took:?}");
        match ended {
            Ended::Itself if status.success() => {
                self.stats.requests.inc();
                self.backoff().success();
                self.logs.push(
                    pid,
                    "nuage",
                    &format!("exited with {how} after {:.3}s", took.as_secs_f64()),
                );
            }
            Ended::Itself => {
                self.stats.error(ErrorKind::ExitStatus);
                let why = format!("exited with {how} after {:.3}s", took.as_secs_f64());
                self.logs.push(pid, "nuage", &why);
                tracing::info!(function = %self.program.function, pid, "process {why}");
                self.backoff().failure(started, Instant::now(), why);
            }
            Ended::Idle => {
                self.logs.push(
                    pid,
                    "nuage",
                    &format!("closed: idle for {}s", idle_timeout.as_secs()),
                );
            }
            Ended::Timeout | Ended::Stopped => {}
        }
    }

    /// A process that could not start: counted, backed off, logged, and told to the client.
    fn start_failed(&self, socket: &std::net::TcpStream, started: Instant, e: &std::io::Error) {
        let why = format!("{}: {e}", self.program.path.display());
        self.stats.error(ErrorKind::StartFailed);
        self.backoff().failure(started, Instant::now(), why.clone());
        self.logs.push(0, "nuage", &format!("cannot start: {why}"));
        sockopt::send_now(
            socket.as_fd(),
            format!("ERR cannot start the function: {why}\n").as_bytes(),
        );
    }

    /// Runs one process on `input` (HTTP gateway): its whole output, or why not.
    pub async fn run_once(
        &self,
        input: &[u8],
        limits: &Limits,
        max_output: usize,
    ) -> Result<Vec<u8>, RunError> {
        if let Some(why) = self.refusal() {
            self.stats.error(ErrorKind::Failing);
            return Err(RunError::Failing(why));
        }
        let result = self.run_once_inner(input, limits, max_output).await;
        match &result {
            Ok(_) => self.stats.requests.inc(),
            Err(e) => self.stats.error(e.kind()),
        }
        result
    }

    async fn run_once_inner(
        &self,
        input: &[u8],
        limits: &Limits,
        max_output: usize,
    ) -> Result<Vec<u8>, RunError> {
        let mut cmd = self.program.command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            let why = format!("{}: {e}", self.program.path.display());
            self.backoff().failure(started, Instant::now(), why.clone());
            RunError::StartFailed(why)
        })?;
        let pid = child.id().expect("a child just spawned has a pid");
        self.stats.starts.inc();
        self.stats.cold_starts.inc();
        let _instance = GaugeGuard::new(&self.stats.instances);
        let _in_flight = GaugeGuard::new(&self.stats.in_flight);
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(collect_stderr(self.logs.clone(), pid, stderr));
        }
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let exchange = async {
            let write = async {
                let _ = stdin.write_all(input).await;
                drop(stdin); // end of input: the function answers and exits
            };
            let read = async {
                let mut out = Vec::new();
                let n = stdout
                    .take(max_output as u64 + 1)
                    .read_to_end(&mut out)
                    .await
                    .unwrap_or(0);
                (out, n)
            };
            let ((), (out, n)) = tokio::join!(write, read);
            if n > max_output {
                return Err(RunError::TooMuchOutput(max_output));
            }
            let status = child
                .wait()
                .await
                .map_err(|e| RunError::Exited(format!("unknown status ({e})")))?;
            if status.success() {
                Ok(out)
            } else {
                Err(RunError::Exited(describe(status)))
            }
        };
        let result = match tokio::time::timeout(limits.timeout(), exchange).await {
            Ok(r) => r,
            Err(_) => Err(RunError::Timeout(limits.timeout_secs)),
        };
        if matches!(
            result,
            Err(RunError::Timeout(_) | RunError::TooMuchOutput(_))
        ) {
            // Not reaped yet (the wait never finished), so the group is still its own.
            process::signal_group(pid, Signal::SIGKILL);
        }
        self.stats.latency.observe_since(started);
        match &result {
            Ok(_) => self.backoff().success(),
            Err(RunError::Exited(how)) => {
                let why = format!("exited with {how}");
                self.logs.push(pid, "nuage", &why);
                self.backoff().failure(started, Instant::now(), why);
            }
            Err(e) => self.logs.push(pid, "nuage", &e.message()),
        }
        result
    }
}
