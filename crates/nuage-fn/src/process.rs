//! Starting a function's processes and ending them.
//!
//! Each process gets its own process group, so a function that starts helpers is stopped
//! whole. The command is run directly (never through a shell). Pool mode and the HTTP
//! gateway start it with tokio's `Command`: with an absolute program path and no
//! `pre_exec` hook, std uses `posix_spawn` (vfork-like), whose cost does not grow with the
//! size of the nuage process. Spawn mode, where a start is on the path of every
//! connection, uses [`nuage_core::launch`] instead.
//!
//! Like inetd's servers, functions get a small, fixed environment rather than the node's:
//! `PATH` (the node's), `NUAGE_FUNCTION`, in spawn mode `NUAGE_CLIENT`, and the function's
//! `--env` values. It keeps the node's own variables (credentials, `NUAGE_API`, …) out of
//! the functions, and programs start faster: with the node's `LANG=C.UTF-8`, every C
//! program that calls `setlocale` (cat, most of coreutils) opens and maps the locale's
//! files at each start (74 more system calls for `/bin/cat`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long a process may take to exit once asked (stdin closed or SIGTERM) before it
/// is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Environment variable telling a spawned process its client's address (`ip:port`).
pub const CLIENT_ENV: &str = "NUAGE_CLIENT";
/// Environment variable telling a process which function it is.
pub const FUNCTION_ENV: &str = "NUAGE_FUNCTION";
/// `PATH` of a function when the node has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What to run for a function on this machine.
#[derive(Debug, Clone)]
pub struct Program {
    pub function: String,
    /// Resolved on this machine (absolute, or as given with a `/`).
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl Program {
    /// A command with the program, its arguments and environment, in its own process
    /// group. The caller sets stdio.
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.environment())
            .process_group(0);
        cmd
    }

    /// The environment of the function's processes (spawn mode adds [`CLIENT_ENV`]):
    /// `PATH` (the node's), [`FUNCTION_ENV`], then the function's own values, which win.
    pub fn environment(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned());
        env.insert("PATH".to_owned(), path);
        env.insert(FUNCTION_ENV.to_owned(), self.function.clone());
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}

/// `status 3`, `signal 9`: how a process ended, for messages.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "unknown status".to_owned(),
    }
}

/// Sends `signal` to the process group led by `pid` (every function process leads one).
pub fn signal_group(pid: u32, signal: Signal) {
    assert!(pid > 1, "refusing to signal process group {pid}");
    let _ = killpg(Pid::from_raw(pid as i32), signal);
}

/// A process nuage started and reaps: a tokio child (pool mode, gateway) or a launched
/// one (spawn mode, [`nuage_core::launch`]).
pub trait Reap {
    /// Its pid, while it has not been reaped.
    fn pid(&self) -> Option<u32>;
    /// Waits for it to end and reaps it.
    fn reap(&mut self) -> impl Future<Output = std::io::Result<ExitStatus>> + Send;
}

impl Reap for tokio::process::Child {
    fn pid(&self) -> Option<u32> {
        self.id()
    }
    fn reap(&mut self) -> impl Future<Output = std::io::Result<ExitStatus>> + Send {
        self.wait()
    }
}

impl Reap for nuage_core::launch::Launched {
    fn pid(&self) -> Option<u32> {
        Some(self.id())
    }
    fn reap(&mut self) -> impl Future<Output = std::io::Result<ExitStatus>> + Send {
        self.wait()
    }
}

/// Asks `child` to stop (SIGTERM to its group), kills it after [`STOP_GRACE`], and reaps
/// it. Returns how it ended.
pub async fn terminate(child: &mut impl Reap) -> Option<ExitStatus> {
    let pid = child.pid()?;
    signal_group(pid, Signal::SIGTERM);
    match tokio::time::timeout(STOP_GRACE, child.reap()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            signal_group(pid, Signal::SIGKILL);
            child.reap().await.ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn terminate_stops_the_whole_group() {
        let program = Program {
            function: "t".into(),
            path: "/bin/sh".into(),
            // A shell that ignores SIGTERM: it takes the SIGKILL after the grace time.
            args: vec!["-c".into(), "trap '' TERM; sleep 30 & wait".into()],
            env: BTreeMap::new(),
        };
        let mut child = program.command().spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let status = terminate(&mut child).await.unwrap();
        assert_eq!(describe(status), "signal 9");
        assert!(started.elapsed() >= STOP_GRACE);
    }

    #[tokio::test]
    async fn the_environment_is_small_and_fixed() {
        let program = Program {
            function: "envf".into(),
            path: "/usr/bin/env".into(),
            args: vec![],
            env: [("GREETING".to_owned(), "hello".to_owned())].into(),
        };
        let out = program
            .command()
            .stdout(std::process::Stdio::piped())
            .output()
            .await
            .unwrap();
        let mut lines: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split('=').next().unwrap().to_owned())
            .collect();
        lines.sort();
        assert_eq!(lines, ["GREETING", "NUAGE_FUNCTION", "PATH"]);
    }

    #[test]
    fn exit_descriptions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "status 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal 9");
    }
}
