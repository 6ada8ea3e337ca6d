//! `nuage fd`: two detectors over processes in lab machines (as root; CI runs as root):
//! a paused process is suspected by both and comes back when resumed; a killed detector
//! is suspected by the other, which takes over its half.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const PERIOD_MS: u64 = 100;
const THRESHOLD: u64 = 3;

struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    /// Waits (at most `limit`) for a line for which `want` holds; returns it.
    fn wait(&mut self, limit: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no such line within {limit:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Lines {
    /// Waits until both detectors have printed `lists` (in either order).
    fn both(&mut self, limit: Duration, lists: &str) {
        let mut by = Vec::new();
        while by.len() < 2 {
            let l = self.wait(limit, |l| l.ends_with(lists) && l.contains("detector "));
            let d: u32 = l.split("detector ").nth(1).unwrap()[..1].parse().unwrap();
            if !by.contains(&d) {
                by.push(d);
            }
        }
    }
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

#[test]
fn pause_resume_and_a_dead_detector_in_the_lab() {
    let name = format!("fd-{}", std::process::id());
    let lab = nuage_lab::Lab::create(&name, 5).expect("create lab (needs root)");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    // Ten processes, two per machine: detectors 0 and 1 watch four processes each.
    std::fs::write(&hosts, "n1\nn2\nn3\nn4\nn5\nn1\nn2\nn3\nn4\nn5\n").unwrap();
    let mut child = nuage()
        .args(["fd", "--hosts"])
        .arg(&hosts)
        .args(["--via", "lab", "--lab", &name, "--period-ms"])
        .arg(PERIOD_MS.to_string())
        .arg("--threshold")
        .arg(THRESHOLD.to_string())
        .args(["--duration", "120", "--log-dir"])
        .arg(dir.path().join("logs"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Lines {
        rx,
        seen: Vec::new(),
    };
    let launch = Duration::from_secs(30);
    // The launch table gives each process's pid.
    let mut pids = Vec::new();
    lines.wait(launch, |l| {
        header(l, &["PROCESS", "HOST", "PID", "ADDRESS", "LOG"])
    });
    for _ in 0..10 {
        let row = lines.wait(launch, |_| true);
        pids.push(
            row.split_whitespace()
                .nth(2)
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    let all_alive = "alive [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] dead []";
    lines.both(launch, all_alive);
    // Pause process 4 (watched by detector 0): both detectors list it dead, within
    // about threshold × period (a margin of seconds for this shared machine).
    let paused = Instant::now();
    signal(pids[4], Signal::SIGSTOP);
    lines.both(
        Duration::from_secs(10),
        "alive [0, 1, 2, 3, 5, 6, 7, 8, 9] dead [4]",
    );
    let detection = paused.elapsed();
    let bound = Duration::from_millis(PERIOD_MS * (THRESHOLD + 2)) + Duration::from_secs(5);
    assert!(detection < bound, "suspected after {detection:?}");
    // Resume it: alive again for both.
    signal(pids[4], Signal::SIGCONT);
    lines.both(Duration::from_secs(10), all_alive);
    // Kill detector 1: detector 0 suspects it and takes over its half, so the processes
    // detector 1 watched stay alive in detector 0's lists.
    signal(pids[1], Signal::SIGKILL);
    lines.wait(Duration::from_secs(10), |l| {
        l.ends_with("process 1 is gone")
    });
    lines.wait(Duration::from_secs(10), |l| {
        l.ends_with("detector 0: alive [0, 2, 3, 4, 5, 6, 7, 8, 9] dead [1]")
    });
    // And detector 0 now sees a process of the other half die by itself.
    signal(pids[7], Signal::SIGKILL);
    lines.wait(Duration::from_secs(10), |l| {
        l.ends_with("detector 0: alive [0, 2, 3, 4, 5, 6, 8, 9] dead [1, 7]")
    });
    // Stopping the launcher stops every process.
    signal(child.id(), Signal::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        let stat = format!("/proc/{pid}/stat");
        while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
            assert!(Instant::now() < deadline, "process {pid} still runs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    lab.down().unwrap();
}
