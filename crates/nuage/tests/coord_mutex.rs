//! `nuage mutex`: the real binary, on loopback and on five lab machines (as root; CI runs
//! as root).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

const RECORDS_PER_CLIENT: usize = 50;
const LINES_PER_RECORD: usize = 5;

/// Starts `nuage mutex serve` with `cmd` (a prepared command) and returns the child and
/// the address it listens on.
fn start_server(mut cmd: std::process::Command) -> (Child, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mutex server");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("mutex server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, addr)
}

/// The tickets of the `grant #N` lines of a server log, in log order.
fn grants(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split_once(" grant #"))
        .map(|(_, rest)| rest.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn a_client_killed_while_holding_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mutex.log");
    let mut cmd = nuage();
    cmd.args([
        "mutex",
        "serve",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--log",
    ])
    .arg(&log);
    let (mut server, addr) = start_server(cmd);
    let marker = dir.path().join("holder-ran");
    // The holder runs a long command; kill the client (SIGKILL) while it holds.
    let mut holder = nuage()
        .args(["mutex", "run", "--server", &addr, "--name", "holder", "--"])
        .args([
            "sh",
            "-c",
            "echo $$ > \"$0.tmp\"; mv \"$0.tmp\" \"$0\"; exec sleep 60",
        ])
        .arg(&marker)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(std::time::Instant::now() < deadline, "holder never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let command_pid = std::fs::read_to_string(&marker).unwrap().trim().to_owned();
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The command dies with its client: it never runs on without the lock.
    let proc_dir = std::path::Path::new("/proc").join(&command_pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proc_dir.exists()
        && !std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|s| s.contains(") Z "))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the command outlived its client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next client gets the lock at once, and runs its command.
    let out = run(&[
        "mutex", "run", "--server", &addr, "--name", "next", "--", "true",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A failing command's status comes back.
    let out = run(&[
        "mutex", "run", "--server", &addr, "--", "sh", "-c", "exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("release #1") && text.contains("connection lost while holding"),
        "{text}"
    );
    assert_eq!(grants(&text), vec![1, 2, 3]);
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let out = run(&["mutex", "run", "--server", "nohost", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not HOST:PORT"), "{}", stderr(&out));
    // Nobody listens on port 1 of loopback.
    let out = run(&["mutex", "run", "--server", "127.0.0.1:1", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("nuage: error: cannot reach 127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Five clients on five lab machines each append 50 multi-line records to one shared file,
/// each record under the lock, written line by line (so without the lock they could
/// interleave): no record is interleaved, and grants follow the order of requests.
#[test]
fn five_machines_share_one_file_without_interleaving() {
    let name = format!("mx-{}", std::process::id());
    let lab = nuage_lab::Lab::create(&name, 5).expect("create lab (needs root)");
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared.txt");
    let log = dir.path().join("mutex.log");
    let nuage_bin = env!("CARGO_BIN_EXE_nuage");
    let mut cmd = lab.command("n1", nuage_bin).unwrap();
    cmd.args(["mutex", "serve", "--port", "7941", "--log"])
        .arg(&log);
    let (mut server, _) = start_server(cmd);
    let server_addr = format!("{}:7941", lab.addr("n1").unwrap());
    // One record: LINES_PER_RECORD appends, each its own open/write/close.
    let script =
        format!("for l in $(seq {LINES_PER_RECORD}); do echo \"$0 $1 $l\" >> \"$2\"; done");
    std::thread::scope(|s| {
        for m in 1..=5 {
            let (lab, shared, script, server_addr) = (&lab, &shared, &script, &server_addr);
            s.spawn(move || {
                let machine = format!("n{m}");
                for i in 0..RECORDS_PER_CLIENT {
                    let out = lab
                        .command(&machine, nuage_bin)
                        .unwrap()
                        .args(["mutex", "run", "--server", server_addr, "--name"])
                        .arg(&machine)
                        .args(["--", "sh", "-c", script, &machine, &i.to_string()])
                        .arg(shared)
                        .stdin(Stdio::null())
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{machine} record {i}: {}",
                        stderr(&out)
                    );
                }
            });
        }
    });
    let text = std::fs::read_to_string(&shared).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5 * RECORDS_PER_CLIENT * LINES_PER_RECORD);
    let mut seen = std::collections::BTreeSet::new();
    for record in lines.chunks(LINES_PER_RECORD) {
        let head: Vec<&str> = record[0].split(' ').collect();
        for (l, line) in record.iter().enumerate() {
            assert_eq!(
                *line,
                format!("{} {} {}", head[0], head[1], l + 1),
                "interleaved record: {record:?}"
            );
        }
        assert!(seen.insert((head[0].to_owned(), head[1].to_owned())));
    }
    assert_eq!(seen.len(), 5 * RECORDS_PER_CLIENT);
    // Grants in request order: tickets are numbered on arrival, granted 1, 2, 3, …
    let log_text = std::fs::read_to_string(&log).unwrap();
    let granted = grants(&log_text);
    assert_eq!(
        granted,
        (1..=(5 * RECORDS_PER_CLIENT) as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        log_text.matches("(released)").count(),
        5 * RECORDS_PER_CLIENT
    );
    server.kill().unwrap();
    server.wait().unwrap();
    lab.down().unwrap();
}
