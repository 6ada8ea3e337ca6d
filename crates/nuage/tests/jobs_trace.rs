//! Tracing end to end with the real binary: a traced job across client, manager and
//! worker that babeltrace2 (the reference CTF reader, a Debian package CI installs)
//! reads, Trace Event JSON with real pids, and the analyzer finding the slow tier of
//! the three-tier demo.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::{nuage, stderr, stdout};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// Starts `nuage ARGS…`; returns it, its pid and the address in its first line.
fn start(args: &[&str]) -> (Proc, u32, String) {
    let mut child = nuage()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    std::thread::spawn(move || for _ in reader.lines() {});
    let addr = line
        .split_whitespace()
        .find_map(|w| w.trim_start_matches("http://").strip_prefix("127.0.0.1:"))
        .map(|port| format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let pid = child.id();
    (Proc(child), pid, addr)
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

fn babeltrace2(path: &Path) -> String {
    let out = Command::new("babeltrace2")
        .arg("--clock-date")
        .arg("--clock-gmt")
        .arg(path)
        .output()
        .expect("babeltrace2 is installed (Debian package babeltrace2, listed in .ci/packages)");
    assert!(
        out.status.success(),
        "babeltrace2 {}: {}",
        path.display(),
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn a_traced_job_is_read_by_babeltrace2_perfetto_json_and_the_analyzer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("trace");
    let d = dir.to_str().unwrap();
    let data = tmp.path().join("m");
    let (m, manager_pid, addr) = start(&[
        "jobs",
        "manager",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
        "--trace",
        d,
    ]);
    let (w, worker_pid, _) = start(&[
        "jobs",
        "worker",
        "--manager",
        &addr,
        "--name",
        "w1",
        "--trace",
        d,
        "--default-task-duration",
        "300ms",
    ]);
    for name in ["tache1", "tache2"] {
        ok(nuage()
            .args([
                "jobs",
                "submit",
                name,
                "--wait",
                "--manager",
                &addr,
                "--trace",
                d,
            ])
            .output()
            .unwrap());
    }
    // Stop them cleanly: their traces are flushed and closed.
    drop(w);
    drop(m);

    // CTF: every process's trace, and all of them merged, read by babeltrace2.
    let ctf = dir.join("ctf");
    let traces: Vec<_> = std::fs::read_dir(&ctf)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(traces.len(), 4, "{traces:?}"); // manager, worker, two clients
    let merged = babeltrace2(&ctf);
    for span in [
        "client.submit",
        "manager.submit",
        "manager.enqueue",
        "manager.dispatch",
        "worker.run",
        "\"task\"",
        "manager.report",
    ] {
        assert!(
            merged.contains(span),
            "{span} not in babeltrace2's output:\n{merged}"
        );
    }
    assert!(
        merged.contains(&format!("vpid = {manager_pid}")),
        "{merged}"
    );
    assert!(merged.contains(&format!("vpid = {worker_pid}")), "{merged}");
    // Absolute clock: the events are dated today, not at the epoch.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let today = &nuage_core::time::rfc3339(now)[..10];
    assert!(
        merged.lines().all(|l| l.starts_with(&format!("[{today} "))),
        "{merged}"
    );

    // Trace Event JSON: real pids, absolute microsecond timestamps.
    let json_dir = dir.join("json");
    let mut pids = Vec::new();
    for f in std::fs::read_dir(&json_dir).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).expect("closed, valid JSON");
        for e in v.as_array().unwrap() {
            if e["ph"] == "X" {
                pids.push(e["pid"].as_u64().unwrap() as u32);
                assert!(e["ts"].as_f64().unwrap() > 1.6e15, "{e}"); // after 2020, in µs
            }
        }
    }
    assert!(
        pids.contains(&manager_pid) && pids.contains(&worker_pid),
        "{pids:?}"
    );

    // The analyzer joins the four processes into two requests; the task dominates.
    let merged_json = tmp.path().join("all.json");
    let report = ok(nuage()
        .args([
            "trace",
            "analyze",
            d,
            "--merge-json",
            merged_json.to_str().unwrap(),
        ])
        .output()
        .unwrap());
    assert!(report.contains("from 4 process(es)"), "{report}");
    assert!(report.contains("2 request(s)"), "{report}");
    assert!(report.contains("bottleneck: task"), "{report}");
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&merged_json).unwrap()).unwrap();
    assert!(all.as_array().unwrap().len() > 10);
}

/// Runs the demo with a slow spot in `slow_tier` and returns the analyzer's report.
fn demo_report(slow_tier: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap().to_owned();
    let slow = |tier: &str| if tier == slow_tier { "40ms" } else { "0s" };
    let (auth, _, auth_addr) = start(&[
        "jobs",
        "demo-auth",
        "auth",
        "--listen",
        "127.0.0.1:0",
        "--slow",
        slow("auth"),
        "--trace",
        &d,
    ]);
    let (app, _, app_addr) = start(&[
        "jobs",
        "demo-auth",
        "app",
        "--listen",
        "127.0.0.1:0",
        "--auth",
        &auth_addr,
        "--slow",
        slow("app"),
        "--trace",
        &d,
    ]);
    let out = ok(nuage()
        .args([
            "jobs",
            "demo-auth",
            "client",
            "--app",
            &app_addr,
            "--requests",
            "20",
            "--slow",
            slow("client"),
            "--trace",
            &d,
        ])
        .output()
        .unwrap());
    assert!(out.contains("20 login(s), 20 accepted"), "{out}");
    drop(app);
    drop(auth);
    ok(nuage().args(["trace", "analyze", &d]).output().unwrap())
}

/// The share the report gives to `component`, in percent.
fn share(report: &str, component: &str) -> f64 {
    report
        .lines()
        .skip_while(|l| !l.starts_with("COMPONENT"))
        .find(|l| l.split_whitespace().next() == Some(component))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|s| s.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no share for {component} in {report}"))
}

#[test]
fn the_analyzer_names_the_tier_made_slow() {
    for tier in ["auth", "app", "client"] {
        let report = demo_report(tier);
        assert!(
            report.contains(&format!("bottleneck: {tier} (")),
            "{report}"
        );
        // 40 ms of a login that otherwise takes a few: well over half of the time.
        assert!(share(&report, tier) > 50.0, "{report}");
        assert!(report.contains("60 span(s) from 3 process(es)"), "{report}");
    }
}
