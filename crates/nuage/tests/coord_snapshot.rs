//! `nuage snapshot`: Chandy-Lamport over a complete graph of processes in lab machines
//! (as root; CI runs as root), both variants, 100 snapshots each under random delays;
//! the checkpoint files are summed independently of the launcher.

mod common;

use std::collections::BTreeMap;

use common::*;

const PROCESSES: u64 = 6;
const COUNT: u64 = 100;

fn check_checkpoints(dir: &std::path::Path) {
    // snapshot -> (files, units + in flight)
    let mut sums: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.starts_with("snapshot-") {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let in_flight: u64 = v["channels"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|c| c.as_array().unwrap().iter().map(|u| u.as_u64().unwrap()))
            .sum();
        let e = sums.entry(v["snapshot"].as_u64().unwrap()).or_default();
        e.0 += 1;
        e.1 += v["units"].as_u64().unwrap() + in_flight;
    }
    assert_eq!(sums.len() as u64, COUNT);
    for (s, (files, total)) in sums {
        assert_eq!(files, PROCESSES, "snapshot {s}");
        assert_eq!(total, PROCESSES * 1000, "snapshot {s}");
    }
}

#[test]
fn lab_snapshots_record_the_conserved_total_both_modes() {
    let name = format!("sn-{}", std::process::id());
    let lab = nuage_lab::Lab::create(&name, 4).expect("create lab (needs root)");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "n1\nn2\nn3\nn4\nn1\nn2\n").unwrap();
    for mode in ["nonblocking", "blocking"] {
        let logs = dir.path().join(mode);
        let out = run(&[
            "snapshot",
            "--hosts",
            hosts.to_str().unwrap(),
            "--via",
            "lab",
            "--lab",
            &name,
            "--mode",
            mode,
            "--count",
            &COUNT.to_string(),
            "--max-delay-ms",
            "3",
            "--log-dir",
            logs.to_str().unwrap(),
        ]);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}{}", stderr(&out));
        assert_eq!(text.matches(" ok\n").count() as u64, COUNT, "{text}");
        let summary = text.lines().last().unwrap();
        assert!(
            summary.starts_with(&format!(
                "all {COUNT} snapshots recorded the conserved total"
            )),
            "{summary}"
        );
        // The test can fail: units were caught in flight, so channel recording matters.
        let caught: u64 = summary
            .split('(')
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(caught > 0, "{summary}");
        check_checkpoints(&logs);
    }
    lab.down().unwrap();
}

#[test]
fn bad_snapshot_options_are_errors() {
    let out = run(&["snapshot", "--hosts", "/nonexistent", "--count", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--count"), "{}", stderr(&out));
}

/// A process killed in the middle of a run of snapshots: the launcher ends with an error
/// naming a process, within seconds (the others see its channels close), and nothing is
/// left running.
#[test]
fn a_process_dying_mid_snapshot_ends_the_run_with_an_error() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "a\nb\nc\nd\n").unwrap();
    let mut child = nuage()
        .args(["snapshot", "--hosts"])
        .arg(&hosts)
        .args(["--count", "100000", "--log-dir"])
        .arg(dir.path().join("l"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut pids = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() == 5 && w[0].chars().all(|c| c.is_ascii_digit()) {
            pids.push(w[2].parse::<i32>().unwrap());
        }
        if line.starts_with("snapshot 5:") {
            break;
        }
    }
    assert_eq!(pids.len(), 4);
    let started = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[2]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::spawn(move || for _ in lines {});
    let status = wait_exit(&mut child, std::time::Duration::from_secs(60));
    assert_eq!(status.code(), Some(1));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.starts_with("nuage: error: process "), "{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for pid in pids {
        let stat = format!("/proc/{pid}/stat");
        while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} still runs"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
