//! `nuage jobs`: the real binary as manager, workers and clients on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{nuage, signal, stderr, stdout, wait_exit};
use nix::sys::signal::Signal;

/// A process that is killed when the test ends, pass or fail.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `nuage ARGS…` and returns it with its first stdout line.
fn start(args: &[&str]) -> (Proc, String) {
    let (p, mut lines) = start_lines(args, 1);
    (p, lines.remove(0))
}

/// Starts `nuage ARGS…` and returns it with its first `n` stdout lines.
fn start_lines(args: &[&str], n: usize) -> (Proc, Vec<String>) {
    let mut child = nuage()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nuage");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::with_capacity(n);
    for _ in 0..n {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            !line.is_empty(),
            "nuage {args:?} exited before its line {}",
            lines.len() + 1
        );
        lines.push(line.trim_end().to_owned());
    }
    std::thread::spawn(move || for _ in reader.lines() {});
    (Proc(child), lines)
}

/// For tests of behaviour without faults: a worker timeout long enough that a loaded
/// machine never makes a worker look lost (which would requeue its task).
const CALM: [&str; 2] = ["--worker-timeout", "10s"];

/// A manager on a free loopback port; returns it and its address.
fn manager(data: &Path, listen: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "jobs",
        "manager",
        "--listen",
        listen,
        "--data",
        data.to_str().unwrap(),
    ];
    if !extra.contains(&"--worker-timeout") {
        args.extend_from_slice(&["--worker-timeout", "2s"]);
    }
    args.extend_from_slice(extra);
    let (p, line) = start(&args);
    let addr = line
        .split_whitespace()
        .nth(4)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (p, addr)
}

fn worker(manager: &str, name: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "jobs",
        "worker",
        "--manager",
        manager,
        "--name",
        name,
        "--default-task-duration",
        "100ms",
    ];
    args.extend_from_slice(extra);
    start(&args).0
}

fn jobs(manager: &str, args: &[&str]) -> Output {
    nuage()
        .arg("jobs")
        .args(args)
        .env("NUAGE_MANAGER", manager)
        .stdin(Stdio::null())
        .output()
        .expect("run nuage jobs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// `nuage jobs ls` as rows of columns (the command's arguments are joined in the last).
fn ls(manager: &str) -> Vec<Vec<String>> {
    ok(&jobs(manager, &["ls"]))
        .lines()
        .skip(1)
        .map(|l| {
            let mut cols: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            let rest = cols.split_off(9.min(cols.len()));
            cols.push(rest.join(" "));
            cols
        })
        .collect()
}

/// The pid (and process group) of job `id`'s task, as `jobs show` gives it.
fn task_pid(addr: &str, id: u64) -> i32 {
    ok(&jobs(addr, &["show", &id.to_string()]))
        .lines()
        .find_map(|l| l.strip_prefix("pid"))
        .expect("a pid line")
        .trim()
        .parse()
        .expect("a pid")
}

fn state_of(manager: &str, id: u64) -> String {
    ls(manager)
        .into_iter()
        .find(|r| r[0] == id.to_string())
        .map(|r| r[2].clone())
        .unwrap_or_default()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn submit(manager: &str, args: &[&str]) -> u64 {
    let mut a = vec!["submit"];
    a.extend_from_slice(args);
    ok(&jobs(manager, &a)).trim().parse().expect("a job id")
}

#[test]
fn submit_wait_runs_the_default_task_and_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let (_m, addr) = manager(tmp.path(), "127.0.0.1:0", &CALM);
    let _w = worker(&addr, "w1", &[]);

    let out = jobs(&addr, &["submit", "tache45", "--wait"]);
    let text = ok(&out);
    assert!(text.contains("task tache45 done by worker w1"), "{text}");
    assert!(stderr(&out).contains("succeeded on w1"), "{}", stderr(&out));

    // Exit status, stdout and stderr pass through.
    let out = jobs(
        &addr,
        &[
            "submit",
            "t2",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "out\n");
    assert!(stderr(&out).contains("err\n"), "{}", stderr(&out));
    assert!(stderr(&out).contains("failed on w1"), "{}", stderr(&out));

    // A program that does not exist: the job fails with a reason, the worker lives on.
    let out = jobs(
        &addr,
        &["submit", "t3", "--wait", "--", "/nonexistent/prog"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot start `/nonexistent/prog`"),
        "{}",
        stderr(&out)
    );

    // A job array: NUAGE_ARRAY_TASK_ID is 0 and 1; --wait waits for all (Watch).
    let out = jobs(
        &addr,
        &[
            "submit",
            "arr",
            "--array",
            "2",
            "--wait",
            "--",
            "sh",
            "-c",
            "exit $NUAGE_ARRAY_TASK_ID",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("1 of 2 jobs succeeded"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("exit 1"), "{}", stderr(&out));

    // Without --wait: the id; then ls, show and logs know it.
    let id = submit(&addr, &["t4", "--", "echo", "hello"]);
    wait_for("t4 to succeed", Duration::from_secs(30), || {
        state_of(&addr, id) == "succeeded"
    });
    assert_eq!(ok(&jobs(&addr, &["logs", &id.to_string()])), "hello\n");
    let show = ok(&jobs(&addr, &["show", &id.to_string()]));
    for needle in [
        "echo hello",
        "succeeded",
        "submitted",
        "dispatched",
        "started",
        "finished",
    ] {
        assert!(show.contains(needle), "{needle} not in {show}");
    }
    let workers = ok(&jobs(&addr, &["workers"]));
    assert!(
        workers.contains("w1") && workers.contains("idle"),
        "{workers}"
    );
}

#[test]
fn the_queue_is_fifo_and_a_worker_runs_one_task_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("order");
    let (_m, addr) = manager(tmp.path(), "127.0.0.1:0", &CALM);
    // Queue first, then start the workers: nothing can run early.
    let script = format!(
        "echo start $NUAGE_JOB_ID $NUAGE_WORKER >> {0}; sleep 0.2; echo end $NUAGE_JOB_ID $NUAGE_WORKER >> {0}",
        log.display()
    );
    let submit_n = |n: usize| -> Vec<u64> {
        (0..n)
            .map(|i| submit(&addr, &[&format!("j{i}"), "--", "sh", "-c", &script]))
            .collect()
    };
    let all_done = |n: usize| {
        wait_for("all jobs to succeed", Duration::from_secs(60), || {
            ls(&addr).iter().filter(|r| r[2] == "succeeded").count() == n
        })
    };
    let started = |text: &str, worker: Option<&str>| -> Vec<u64> {
        text.lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .filter(|l| l[0] == "start" && worker.is_none_or(|w| w == l[2]))
            .map(|l| l[1].parse().unwrap())
            .collect()
    };
    // One worker: the jobs start exactly in submission order.
    let first = submit_n(4);
    assert!(first.windows(2).all(|w| w[0] < w[1]));
    let _w1 = worker(&addr, "w1", &[]);
    all_done(4);
    assert_eq!(
        started(&std::fs::read_to_string(&log).unwrap(), None),
        first
    );
    // Two workers: each takes the oldest queued job whenever it is idle, so each one's
    // jobs are in submission order too.
    let second = submit_n(8);
    let _w2 = worker(&addr, "w2", &[]);
    all_done(12);
    let text = std::fs::read_to_string(&log).unwrap();
    let mut seen = Vec::new();
    for w in ["w1", "w2"] {
        let mine = started(&text, Some(w));
        assert!(mine.windows(2).all(|p| p[0] < p[1]), "{text}");
        seen.extend(mine);
    }
    seen.sort_unstable();
    let mut expected = [first, second].concat();
    expected.sort_unstable();
    assert_eq!(seen, expected, "{text}");
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    // Never two tasks at once on one worker: each start follows its worker's last end.
    let mut running: std::collections::HashMap<&str, &str> = Default::default();
    for l in &lines {
        match l[0] {
            "start" => assert!(running.insert(l[2], l[1]).is_none(), "{text}"),
            _ => assert_eq!(running.remove(l[2]), Some(l[1]), "{text}"),
        }
    }
}

#[test]
fn cancel_logs_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let (_m, addr) = manager(
        tmp.path(),
        "127.0.0.1:0",
        &["--max-output", "100", "--worker-timeout", "10s"],
    );

    // Errors: one line, status 1.
    let out = jobs(&addr, &["show", "999"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "nuage: error: no job 999 (see `nuage jobs ls`)\n"
    );
    let out = jobs(&addr, &["submit", "x", "--"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("command after `--` is empty"),
        "{}",
        stderr(&out)
    );
    let out = jobs(&addr, &["submit", "", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("name is empty"), "{}", stderr(&out));
    let out = nuage()
        .args(["jobs", "ls", "--manager", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the jobs manager at http://127.0.0.1:1"),
        "{}",
        stderr(&out)
    );

    // A queued job cancelled before any worker exists never runs.
    let queued = submit(&addr, &["q", "--", "true"]);
    assert!(ok(&jobs(&addr, &["cancel", &queued.to_string()])).contains("cancelled"));
    let out = jobs(&addr, &["cancel", &queued.to_string()]);
    assert!(
        stderr(&out).contains("already cancelled"),
        "{}",
        stderr(&out)
    );

    let _w = worker(&addr, "w1", &[]);
    // A running job's whole process group is killed (the shell ignores SIGTERM; its
    // child would outlive a plain kill of the shell).
    let pidfile = tmp.path().join("child.pid");
    let script = format!(
        "trap '' TERM; sleep 300 & echo $! > {}; echo started; wait",
        pidfile.display()
    );
    let id = submit(&addr, &["long", "--", "sh", "-c", &script]);
    // logs --follow shows output while the job runs, and ends with it.
    let mut follow = nuage()
        .args([
            "jobs",
            "logs",
            "--follow",
            &id.to_string(),
            "--manager",
            &addr,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(follow.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "started\n");
    ok(&jobs(&addr, &["cancel", &id.to_string()]));
    wait_for("the cancel", Duration::from_secs(30), || {
        state_of(&addr, id) == "cancelled"
    });
    assert!(wait_exit(&mut follow, Duration::from_secs(10)).success());
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for("the task's child to die", Duration::from_secs(10), || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_err()
    });

    // Output over the bound is cut, with a note.
    let out = jobs(
        &addr,
        &[
            "submit",
            "big",
            "--wait",
            "--",
            "sh",
            "-c",
            "head -c 1000 /dev/zero | tr '\\0' x",
        ],
    );
    assert_eq!(stdout(&out).len(), 100);
    assert!(
        stderr(&out).contains("stdout truncated: kept the first 100 of 1000 bytes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_silent_worker_loses_its_task_to_another_which_runs_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (_m, addr) = manager(tmp.path(), "127.0.0.1:0", &[]);
    let mut w1 = worker(&addr, "w1", &[]);
    let marks = tmp.path().join("marks");
    let script = format!("echo $NUAGE_WORKER >> {}; sleep 3", marks.display());
    let id = submit(&addr, &["slow", "--", "sh", "-c", &script]);
    wait_for("w1 to start it", Duration::from_secs(30), || {
        std::fs::read_to_string(&marks).is_ok_and(|t| t == "w1\n")
    });
    // A hang: the worker and its task stop (as the lab's pause does to a machine).
    let task_pid = task_pid(&addr, id);
    signal(&w1.0, Signal::SIGSTOP);
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(task_pid), Signal::SIGSTOP);
    let _w2 = worker(&addr, "w2", &[]);
    wait_for("the job to succeed on w2", Duration::from_secs(60), || {
        ls(&addr)
            .iter()
            .any(|r| r[0] == id.to_string() && r[2] == "succeeded" && r[3] == "w2")
    });
    // w1 wakes up: it must stop its copy rather than report it.
    signal(&w1.0, Signal::SIGCONT);
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(task_pid), Signal::SIGCONT);
    std::thread::sleep(Duration::from_secs(3));
    let show = ok(&jobs(&addr, &["show", &id.to_string()]));
    assert_eq!(show.matches(" finished ").count(), 1, "{show}");
    assert!(show.contains("requeued"), "{show}");
    assert!(show.contains("state      succeeded"), "{show}");
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "w1\nw2\n");
    // w1 registered again and is usable.
    wait_for("w1 to come back", Duration::from_secs(30), || {
        let w = ok(&jobs(&addr, &["workers"]));
        w.lines()
            .any(|l| l.starts_with("w1 ") && l.contains("idle"))
    });
    drop(w1.0.kill());
}

#[test]
fn a_job_fails_after_its_last_attempt_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let (_m, addr) = manager(tmp.path(), "127.0.0.1:0", &["--max-attempts", "1"]);
    let mut w1 = worker(&addr, "w1", &[]);
    let id = submit(&addr, &["doomed", "--", "sleep", "300"]);
    wait_for("it to run", Duration::from_secs(30), || {
        state_of(&addr, id) == "running"
    });
    let task_pid = task_pid(&addr, id);
    w1.0.kill().unwrap();
    w1.0.wait().unwrap();
    // A worker that dies takes its task with it (death signal): no orphan keeps running
    // a task the manager will give to someone else.
    wait_for(
        "the task to die with its worker",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(format!("/proc/{task_pid}/stat"))
                .map_or(true, |s| s.contains(") Z "))
        },
    );
    wait_for("it to fail", Duration::from_secs(30), || {
        state_of(&addr, id) == "failed"
    });
    let show = ok(&jobs(&addr, &["show", &id.to_string()]));
    assert!(show.contains("lost on all 1 attempts"), "{show}");
}

#[test]
fn a_manager_restart_keeps_the_queue_and_adopts_running_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    // Workers keep their task through a manager restart shorter than the lease (half
    // the worker timeout).
    let long = ["--worker-timeout", "10s"];
    let (mut m, addr) = manager(tmp.path(), "127.0.0.1:0", &long);
    let _w = worker(&addr, "w1", &[]);
    let marks = tmp.path().join("marks");
    let script = format!(
        "echo $NUAGE_JOB_ID >> {}; sleep 3; echo done",
        marks.display()
    );
    let running = submit(&addr, &["a", "--", "sh", "-c", &script]);
    let queued = submit(&addr, &["b", "--", "sh", "-c", &script]);
    wait_for("a to run", Duration::from_secs(30), || {
        std::fs::read_to_string(&marks).is_ok_and(|t| t == format!("{running}\n"))
    });
    // A crash of the manager, and a new one on the same address and data.
    m.0.kill().unwrap();
    m.0.wait().unwrap();
    let (_m2, addr2) = manager(tmp.path(), &addr, &long);
    assert_eq!(addr2, addr);
    wait_for("both to succeed", Duration::from_secs(60), || {
        let rows = ls(&addr);
        [running, queued].iter().all(|id| {
            rows.iter()
                .any(|r| r[0] == id.to_string() && r[2] == "succeeded")
        })
    });
    // Each ran once: the running task was adopted, not started again.
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        format!("{running}\n{queued}\n")
    );
    let show = ok(&jobs(&addr, &["show", &running.to_string()]));
    assert!(show.contains("adopted"), "{show}");
    assert_eq!(ok(&jobs(&addr, &["logs", &running.to_string()])), "done\n");
}

#[test]
fn nuage_up_runs_the_manager_and_a_worker_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("nuage.toml");
    std::fs::write(
        &config,
        "name = \"n1\"\n[listen]\napi = \"127.0.0.1:0\"\n\n[jobs]\nmanager = \"n1\"\nlisten = \"127.0.0.1:0\"\nworker = true\ndefault_task_duration = \"100ms\"\n",
    )
    .unwrap();
    let data = tmp.path().join("data");
    let mut node = common::start_up(&[
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    // The node lists the manager's endpoint.
    let (status, body) = common::http_get(&node.api, "/v1/node");
    assert_eq!(status, 200, "{body}");
    let info = common::json(&body);
    let addr = info["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "jobs")
        .and_then(|s| s["endpoints"][0]["address"].as_str())
        .unwrap_or_else(|| panic!("no jobs endpoint in {body}"))
        .to_owned();
    let out = jobs(&addr, &["submit", "tache45", "--wait"]);
    assert!(
        ok(&out).contains("task tache45 done by worker n1"),
        "{}",
        stdout(&out)
    );
    assert!(data.join("jobs").join("jobs.db").exists());
    // The manager's metrics are on the node's /metrics.
    let (status, text) = common::http_get(&node.api, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_eq!(metric(&text, "nuage_jobs_submitted_total"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "nuage_jobs_finished_total{state=\"succeeded\"}"),
        1.0
    );
    assert_eq!(metric(&text, "nuage_jobs_workers{state=\"idle\"}"), 1.0);
    assert_eq!(
        metric(&text, "nuage_jobs_queue_to_start_seconds_count"),
        1.0
    );
    signal(&node.child, Signal::SIGTERM);
    assert!(wait_exit(&mut node.child, Duration::from_secs(20)).success());

    // A mistake in [jobs] stops the node with the line and key.
    std::fs::write(&config, "name = \"n1\"\n[jobs]\nmanagr = \"n1\"\n").unwrap();
    let out = nuage()
        .args([
            "up",
            "--config",
            config.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nuage.toml:3"), "{}", stderr(&out));
}

#[test]
fn a_worker_stopped_cleanly_gives_its_task_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (_m, addr) = manager(tmp.path(), "127.0.0.1:0", &[]);
    let mut w1 = worker(&addr, "w1", &[]);
    let id = submit(&addr, &["long", "--", "sleep", "300"]);
    wait_for("it to start", Duration::from_secs(30), || {
        ok(&jobs(&addr, &["show", &id.to_string()])).contains("\npid ")
    });
    signal(&w1.0, Signal::SIGTERM);
    assert!(wait_exit(&mut w1.0, Duration::from_secs(20)).success());
    // Given back (not failed), whether its report or the worker timeout got there first.
    wait_for("it to be queued again", Duration::from_secs(20), || {
        state_of(&addr, id) == "queued"
    });
    let _w2 = worker(&addr, "w2", &[]);
    wait_for("w2 to take it", Duration::from_secs(30), || {
        ls(&addr)
            .iter()
            .any(|r| r[0] == id.to_string() && r[2] == "running" && r[3] == "w2")
    });
}

/// A client streaming from the manager: its stdout is read line by line in a thread.
struct Streaming {
    child: Child,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Streaming {
    fn start(manager: &str, args: &[&str]) -> Streaming {
        let mut child = nuage()
            .arg("jobs")
            .args(args)
            .env("NUAGE_MANAGER", manager)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nuage jobs");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        Streaming {
            child,
            stdout: rx,
            stderr,
        }
    }

    fn line(&self, limit: Duration) -> String {
        self.stdout
            .recv_timeout(limit)
            .expect("a line of output in time")
    }

    /// Waits for the end; the rest of stdout (lines), stderr and the exit code.
    fn finish(mut self, limit: Duration) -> (Vec<String>, String, Option<i32>) {
        let status = wait_exit(&mut self.child, limit);
        let rest = self.stdout.iter().collect();
        (rest, self.stderr.join().unwrap(), status.code())
    }
}

#[test]
fn submit_wait_and_logs_follow_survive_a_manager_restart() {
    let tmp = tempfile::tempdir().unwrap();
    // A restart shorter than the workers' lease: the task keeps running.
    let long = ["--worker-timeout", "10s"];
    let (mut m, addr) = manager(tmp.path(), "127.0.0.1:0", &long);
    let _w1 = worker(&addr, "w1", &[]);
    let _w2 = worker(&addr, "w2", &[]);
    let script = "echo before; echo err-before >&2; sleep 5; echo after; exit 7";
    let waiter = Streaming::start(&addr, &["submit", "r", "--wait", "--", "sh", "-c", script]);
    assert_eq!(waiter.line(Duration::from_secs(30)), "before");
    let follower = Streaming::start(&addr, &["logs", "1", "--follow"]);
    assert_eq!(follower.line(Duration::from_secs(30)), "before");
    let array = Streaming::start(
        &addr,
        &["submit", "a", "--array", "2", "--wait", "--", "sleep", "2"],
    );
    assert_eq!(array.line(Duration::from_secs(30)), "2");
    assert_eq!(array.line(Duration::from_secs(30)), "3");

    // The manager crashes mid-task and comes back on the same address and data.
    m.0.kill().unwrap();
    m.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (_m2, addr2) = manager(tmp.path(), &addr, &long);
    assert_eq!(addr2, addr);

    // Each client gets the rest of the output once, and the task's exit status.
    let (rest, err, code) = waiter.finish(Duration::from_secs(60));
    assert_eq!(rest, ["after"], "stderr: {err}");
    assert_eq!(code, Some(7), "stderr: {err}");
    assert_eq!(err.matches("err-before").count(), 1, "{err}");
    assert!(err.contains("lost the jobs manager at"), "{err}");
    assert!(err.contains("again"), "{err}");
    assert!(err.contains("job 1 (r) failed on w"), "{err}");
    assert!(err.contains("exit 7"), "{err}");
    let (rest, err, code) = follower.finish(Duration::from_secs(60));
    assert_eq!(rest, ["after"], "stderr: {err}");
    assert_eq!(err.matches("err-before").count(), 1, "{err}");
    assert_eq!(code, Some(0), "{err}");
    let (rest, err, code) = array.finish(Duration::from_secs(60));
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("2 of 2 jobs succeeded"), "{err}");

    // The task ran once: adopted by the new manager, not started again.
    let show = ok(&jobs(&addr, &["show", "1"]));
    assert!(show.contains("adopted"), "{show}");
    let started = show
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("started"))
        .count();
    assert_eq!(started, 1, "{show}");
}

/// The value of the series `series` (name and labels, as rendered) in Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn the_manager_serves_its_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().to_str().unwrap();
    let args = [
        "jobs",
        "manager",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data,
        "--worker-timeout",
        "10s",
        "--metrics",
        "127.0.0.1:0",
    ];
    let (_m, lines) = start_lines(&args, 2);
    let addr = lines[0].split_whitespace().nth(4).unwrap().to_owned();
    let http = lines[1]
        .strip_prefix("jobs manager metrics on http://")
        .and_then(|l| l.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {lines:?}"))
        .to_owned();
    let scrape = || {
        let (status, text) = common::http_get(&http, "/metrics");
        assert_eq!(status, 200, "{text}");
        text
    };
    // Nothing to run them yet: two jobs wait.
    let ok_id = submit(&addr, &["ok", "--", "true"]);
    let bad_id = submit(&addr, &["bad", "--", "false"]);
    let text = scrape();
    assert_eq!(metric(&text, "nuage_jobs_submitted_total"), 2.0);
    assert_eq!(metric(&text, "nuage_jobs_queued"), 2.0);
    assert_eq!(metric(&text, "nuage_jobs_running"), 0.0);
    assert_eq!(metric(&text, "nuage_jobs_workers{state=\"idle\"}"), 0.0);
    // A worker runs both; a third job stays running.
    let _w = worker(&addr, "w1", &[]);
    let long = submit(&addr, &["long", "--", "sleep", "300"]);
    wait_for("the long job to start", Duration::from_secs(30), || {
        ok(&jobs(&addr, &["show", &long.to_string()])).contains("\npid ")
    });
    let text = scrape();
    assert_eq!(metric(&text, "nuage_jobs_submitted_total"), 3.0);
    assert_eq!(metric(&text, "nuage_jobs_queued"), 0.0);
    assert_eq!(metric(&text, "nuage_jobs_running"), 1.0);
    assert_eq!(metric(&text, "nuage_jobs_workers{state=\"busy\"}"), 1.0);
    assert_eq!(
        metric(&text, "nuage_jobs_finished_total{state=\"succeeded\"}"),
        1.0,
        "job {ok_id}"
    );
    assert_eq!(
        metric(&text, "nuage_jobs_finished_total{state=\"failed\"}"),
        1.0,
        "job {bad_id}"
    );
    assert_eq!(
        metric(&text, "nuage_jobs_queue_to_start_seconds_count"),
        3.0
    );
    ok(&jobs(&addr, &["cancel", &long.to_string()]));
    wait_for("the cancel", Duration::from_secs(30), || {
        metric(&scrape(), "nuage_jobs_finished_total{state=\"cancelled\"}") == 1.0
    });
    let text = scrape();
    assert_eq!(metric(&text, "nuage_jobs_running"), 0.0);
    assert_eq!(metric(&text, "nuage_jobs_workers{state=\"idle\"}"), 1.0);
    // Anything but /metrics is a 404.
    assert_eq!(common::http_get(&http, "/").0, 404);
}
