//! The processes of a machine: every process whose network namespace is the machine's,
//! found by scanning /proc (as `ip netns pids` does). Daemons that fork and detach stay
//! found, since they keep the namespace.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

/// How long `kill` waits for every process of a machine to be gone.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most rounds of scanning while signalling a machine whose processes keep forking.
const MAX_SIGNAL_ROUNDS: usize = 50;

/// One process of a machine.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    /// The command name (`/proc/<pid>/comm`).
    pub command: String,
    /// Stopped by a signal (state `T`): paused.
    pub stopped: bool,
}

/// Pids of live processes in the network namespace with inode `ns_ino`. Zombies have no
/// namespace left and are not listed.
pub fn pids_in_netns(ns_ino: u64) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let path = format!("/proc/{pid}/ns/net");
            crate::ns::ns_inode(std::path::Path::new(&path)) == Some(ns_ino)
        })
        .collect();
    pids.sort_unstable();
    pids
}

pub fn describe(pid: i32) -> Option<Process> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command, which may itself hold spaces or ')'.
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    Some(Process {
        pid,
        command: comm.trim_end().to_owned(),
        stopped: matches!(state, 'T' | 't'),
    })
}

/// Sends `sig` to every process of the namespace, rescanning until a round finds no
/// process it has not signalled (a process may fork while we work). Returns how many.
pub fn signal_all(ns_ino: u64, sig: Signal) -> usize {
    let mut done = BTreeSet::new();
    for _ in 0..MAX_SIGNAL_ROUNDS {
        let fresh: Vec<i32> = pids_in_netns(ns_ino)
            .into_iter()
            .filter(|p| !done.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            // ESRCH (gone meanwhile) is fine.
            let _ = kill(Pid::from_raw(pid), sig);
            done.insert(pid);
        }
    }
    done.len()
}

/// SIGKILLs every process of the namespace and waits until none is left.
pub fn kill_all(ns_ino: u64) -> anyhow::Result<usize> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    let mut killed = BTreeSet::new();
    loop {
        let pids = pids_in_netns(ns_ino);
        if pids.is_empty() {
            return Ok(killed.len());
        }
        if Instant::now() > deadline {
            bail!(
                "processes {pids:?} survived SIGKILL for {KILL_TIMEOUT:?} (stuck in the kernel?)"
            );
        }
        for pid in pids {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_this_process() {
        let me = describe(std::process::id() as i32).unwrap();
        assert!(!me.stopped);
        assert!(!me.command.is_empty());
    }
}
