//! Starting a function's processes and ending them.
//!
//! Each process gets its own process group, so a function that starts helpers is stopped
//! whole. The command is run directly (never through a shell). With an absolute program
//! path and no `pre_exec` hook, std starts it with `posix_spawn` (vfork-like), whose cost
//! does not grow with the size of the nuage process.

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
            .envs(&self.env)
            .env(FUNCTION_ENV, &self.function)
            .process_group(0);
        cmd
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

/// Asks `child` to stop (SIGTERM to its group), kills it after [`STOP_GRACE`], and reaps
/// it. Returns how it ended.
pub async fn terminate(child: &mut tokio::process::Child) -> Option<ExitStatus> {
    let pid = child.id()?;
    signal_group(pid, Signal::SIGTERM);
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            signal_group(pid, Signal::SIGKILL);
            child.wait().await.ok()
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

    #[test]
    fn exit_descriptions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "status 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal 9");
    }
}
