//! One warm instance of a pool: a long-lived process with pipes on its stdin and stdout,
//! answering one line per request line.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::line::{self, Line};
use crate::logs::{LogRing, collect_stderr};
use crate::process::{self, Program, describe};

/// How long an instance that closed its stdout may take to exit before it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(1);

pub struct Instance {
    pub pid: u32,
    pub started: Instant,
    /// When it last finished a request (or started).
    pub idle_since: Instant,
    pub served: u64,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// Why a call did not produce an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum CallError {
    /// The deadline passed.
    Timeout,
    /// The process exited (or closed its stdout): how it ended.
    Exited(String),
    /// It answered with a line over the limit, or wrote output nobody asked for.
    BadResponse(String),
}

impl Instance {
    /// Starts a process of `program`; its stderr goes to `logs`.
    pub fn start(program: &Program, logs: &Arc<LogRing>) -> std::io::Result<Instance> {
        let mut cmd = program.command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A safety net: an instance dropped on any path is killed, never leaked.
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().expect("a child just spawned has a pid");
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(collect_stderr(logs.clone(), pid, stderr));
        let now = Instant::now();
        Ok(Instance {
            pid,
            started: now,
            idle_since: now,
            served: 0,
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
        })
    }

    /// Sends one request line and reads the one answer line (newline removed), until
    /// `deadline`. On an error other than a late answer, the instance is unusable.
    pub async fn call(
        &mut self,
        request: &[u8],
        deadline: tokio::time::Instant,
        max_response: usize,
    ) -> Result<Vec<u8>, CallError> {
        if !self.stdout.buffer().is_empty() {
            return Err(CallError::BadResponse(
                "the instance wrote output nobody asked for (a function answers each line with exactly one line)".into(),
            ));
        }
        let exchange = async {
            let Some(stdin) = self.stdin.as_mut() else {
                return Err(CallError::Exited("stdin closed".into()));
            };
            let mut framed = Vec::with_capacity(request.len() + 1);
            framed.extend_from_slice(request);
            framed.push(b'\n');
            if stdin.write_all(&framed).await.is_err() || stdin.flush().await.is_err() {
                return Err(CallError::Exited(String::new()));
            }
            match line::read_line(&mut self.stdout, max_response).await {
                Ok(Line::Full(answer)) => Ok(answer),
                Ok(Line::TooLong) => Err(CallError::BadResponse(format!(
                    "answer longer than {max_response} bytes"
                ))),
                Ok(Line::End) | Err(_) => Err(CallError::Exited(String::new())),
            }
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) => Err(CallError::Timeout),
            Ok(Err(CallError::Exited(_))) => Err(CallError::Exited(self.exit_status().await)),
            Ok(other) => other,
        }
    }

    /// How the process ended, once it has closed its output: waits a little, then kills.
    pub async fn exit_status(&mut self) -> String {
        match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(Ok(status)) => describe(status),
            Ok(Err(e)) => format!("unknown status ({e})"),
            Err(_) => {
                self.kill();
                match self.child.wait().await {
                    Ok(status) => format!("closed its output, then {}", describe(status)),
                    Err(e) => format!("unknown status ({e})"),
                }
            }
        }
    }

    /// Whether the process has exited while idle, and how.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(describe(status)),
            Ok(None) => None,
            Err(e) => Some(format!("unknown status ({e})")),
        }
    }

    /// Kills the process group now.
    pub fn kill(&mut self) {
        if let Some(pid) = self.child.id() {
            process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Stops the instance politely: end of input first (a function exits at end of
    /// input), then SIGTERM and SIGKILL if it lingers. Returns how it ended.
    pub async fn stop(mut self) -> String {
        drop(self.stdin.take());
        match tokio::time::timeout(process::STOP_GRACE, self.child.wait()).await {
            Ok(Ok(status)) => describe(status),
            _ => process::terminate(&mut self.child)
                .await
                .map_or_else(|| "unknown status".to_owned(), describe),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn program(script: &str) -> Program {
        Program {
            function: "t".into(),
            path: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
        }
    }

    fn soon(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn answers_exits_and_timeouts() {
        let logs = Arc::new(LogRing::default());
        let mut cat = Instance::start(&program("exec cat"), &logs).unwrap();
        assert_eq!(cat.call(b"a\0b", soon(5000), 64).await.unwrap(), b"a\0b");
        assert_eq!(cat.call(b"", soon(5000), 64).await.unwrap(), b"");
        assert!(matches!(
            cat.call(&[b'x'; 100], soon(5000), 64).await,
            Err(CallError::BadResponse(_))
        ));
        assert_eq!(cat.stop().await, "status 0");

        let mut crash = Instance::start(&program("read l; echo oops >&2; exit 3"), &logs).unwrap();
        assert_eq!(
            crash.call(b"x", soon(5000), 64).await,
            Err(CallError::Exited("status 3".into()))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(logs.after(0).0.iter().any(|l| l.text == "oops"));

        let mut slow = Instance::start(&program("read l; sleep 30"), &logs).unwrap();
        assert_eq!(
            slow.call(b"x", soon(300), 64).await,
            Err(CallError::Timeout)
        );
        slow.kill();
        assert_eq!(slow.exit_status().await, "signal 9");
    }
}
