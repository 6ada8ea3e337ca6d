//! `nuage launch`: programs started through daemonized agents, locally and in lab machines
//! (as root; CI runs as root); statuses, logs, stopping them all, and errors.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn hosts_file(dir: &Path, hosts: &[&str]) -> String {
    let path = dir.join("hosts");
    std::fs::write(&path, format!("# hosts\n{}\n", hosts.join("\n"))).unwrap();
    path.display().to_string()
}

/// (process, host, agent pid) from the launch table.
fn agents(out: &str) -> Vec<(u32, String, u32)> {
    out.lines()
        .skip_while(|l| !l.starts_with("PROCESS  HOST  PID    ADDRESS"))
        .skip(1)
        .take_while(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (
                w[0].parse().unwrap(),
                w[1].to_owned(),
                w[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn local_programs_report_their_status_and_log_to_their_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = hosts_file(dir.path(), &["a", "b", "c"]);
    let logs = dir.path().join("logs");
    // Each program prints its number, the launch size, its parent (the agent) and the
    // agent's session id: a daemonized agent leads its own session.
    let script = "echo \"index $NUAGE_LAUNCH_INDEX of $NUAGE_LAUNCH_SIZE parent $PPID session $(cut -d' ' -f6 /proc/$PPID/stat)\"";
    let out = run(&[
        "launch",
        "--hosts",
        &hosts,
        "--log-dir",
        logs.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let agents = agents(&text);
    assert_eq!(agents.len(), 3, "{text}");
    for (i, host, pid) in &agents {
        let log = std::fs::read_to_string(logs.join(format!("{i}-{host}.log"))).unwrap();
        let expected = format!("index {i} of 3 parent {pid} session {pid}");
        assert!(log.contains(&expected), "{expected} not in {log}");
    }
    assert_eq!(text.matches(" exit 0 ").count(), 3, "{text}");
    // A failing program is reported, and the launch fails.
    let out = run(&[
        "launch",
        "--hosts",
        &hosts,
        "--log-dir",
        logs.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "exit $NUAGE_LAUNCH_INDEX",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(" exit 2 "), "{}", stdout(&out));
    assert!(stderr(&out).contains("2 of 3 programs did not exit with status 0"));
}

#[test]
fn timeout_stops_every_program_and_agent() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = hosts_file(dir.path(), &["a", "a", "b"]);
    let logs = dir.path().join("logs");
    let out = run(&[
        "launch",
        "--hosts",
        &hosts,
        "--log-dir",
        logs.to_str().unwrap(),
        "--timeout",
        "1",
        "--",
        "sleep",
        "300",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        stderr(&out).contains("3 of 3 programs were stopped"),
        "{}",
        stderr(&out)
    );
    let program_pids: Vec<u32> = text
        .lines()
        .skip_while(|l| !l.starts_with("PROCESS  HOST  PID    RESULT"))
        .skip(1)
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(program_pids.len(), 3, "{text}");
    // Nothing is left running: neither the programs nor the agents.
    let mut all: Vec<u32> = program_pids;
    all.extend(agents(&text).iter().map(|a| a.2));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for pid in all {
        let stat = format!("/proc/{pid}/stat");
        while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
            assert!(std::time::Instant::now() < deadline, "pid {pid} still runs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_program_that_cannot_run_is_an_error_naming_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = hosts_file(dir.path(), &["a", "b"]);
    let out = run(&[
        "launch",
        "--hosts",
        &hosts,
        "--log-dir",
        dir.path().join("l").to_str().unwrap(),
        "--",
        "/nonexistent/program",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot run `/nonexistent/program`"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn lab_programs_run_in_the_machines_their_lines_name() {
    let name = format!("ln-{}", std::process::id());
    let lab = nuage_lab::Lab::create(&name, 3).expect("create lab (needs root)");
    let dir = tempfile::tempdir().unwrap();
    let hosts = hosts_file(dir.path(), &["n3", "n1", "n3"]);
    let logs = dir.path().join("logs");
    let out = run(&[
        "launch",
        "--hosts",
        &hosts,
        "--via",
        "lab",
        "--lab",
        &name,
        "--log-dir",
        logs.to_str().unwrap(),
        "--",
        "hostname",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (i, host) in ["n3", "n1", "n3"].iter().enumerate() {
        let log = std::fs::read_to_string(logs.join(format!("{i}-{host}.log"))).unwrap();
        assert!(log.lines().any(|l| l == *host), "{log}");
    }
    lab.down().unwrap();
}
