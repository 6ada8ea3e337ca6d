//! Functions across machines, in a lab of real network namespaces (as root; CI is root):
//! cluster-wide deploy, round-robin placement, failover when a machine dies or stops
//! answering, and its return.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nuage_lab::Lab;

const PORT: u16 = 8888;

fn nuage_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nuage"))
}

/// Builds the reference functions if this test run did not (`cargo test -p nuage`).
fn functions_built() {
    let dir = nuage_bin().parent().unwrap();
    if dir.join("toupper").exists() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "-p", "fn-toupper", "-p", "fn-echo"])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `nuage fn --api <machine> ARGS…`, which must succeed.
fn fn_ok(lab: &Lab, machine: &str, args: &[&str]) -> String {
    let api = format!("{}:7070", lab.addr(machine).unwrap());
    let out = nuage()
        .args(["fn", "--api", &api])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nuage fn {args:?} on {machine}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// One connection to `machine`'s port: a line in, toupper's answer out. The hostname
/// that answered, or the error.
fn ask(lab: &Lab, machine: &str, text: &str) -> Result<String, String> {
    let addr = (lab.addr(machine).unwrap(), PORT);
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("{text}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let words: Vec<&str> = answer.split_whitespace().collect();
    match words.as_slice() {
        [host, _pid, upper] if *upper == text.to_uppercase() => Ok(host.to_string()),
        _ => Err(format!("unexpected answer {answer:?}")),
    }
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The STATE column of `fn ls` for toupper, seen from `machine`.
fn state_seen_from(lab: &Lab, machine: &str) -> String {
    let ls = fn_ok(lab, machine, &["ls"]);
    ls.lines()
        .find(|l| l.starts_with("toupper "))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("")
        .to_owned()
}

#[test]
fn round_robin_over_two_machines_with_failover_and_return() {
    functions_built();
    let lab = Lab::create(&format!("fn-{}", std::process::id()), 2).unwrap();
    lab.start_nodes(nuage_bin()).unwrap();
    let dump_logs = |why: &str| {
        for m in ["n1", "n2"] {
            let log = std::fs::read_to_string(lab.machine(m).unwrap().node_log_path())
                .unwrap_or_default();
            eprintln!("--- {m} node.log ({why}) ---\n{log}");
        }
    };

    // Deployed through n2, it runs on both.
    let out = fn_ok(
        &lab,
        "n2",
        &[
            "deploy",
            "toupper",
            "--port",
            "8888",
            "-e",
            "TOUPPER_DELAY_MS=0",
        ],
    );
    assert!(out.contains("n1") && out.contains("n2"), "{out}");
    wait_for(
        "both machines see toupper running everywhere",
        Duration::from_secs(15),
        || state_seen_from(&lab, "n1") == "running" && state_seen_from(&lab, "n2") == "running",
    );
    let ls = fn_ok(&lab, "n1", &["ls"]);
    assert!(ls.contains("n1,n2") && ls.contains("n1:0 n2:0"), "{ls}");

    // Ten sequential connections to n1: both machines answer, in turn.
    let hosts: Vec<String> = (0..10)
        .map(|i| ask(&lab, "n1", &format!("hello{i}")).unwrap())
        .collect();
    for pair in hosts.windows(2) {
        if pair[0] == pair[1] {
            dump_logs("no alternation");
        }
        assert_ne!(pair[0], pair[1], "not alternating: {hosts:?}");
    }
    assert!(hosts.contains(&"n1".to_owned()) && hosts.contains(&"n2".to_owned()));

    // The HTTP gateway of a machine that does not run a function passes requests on.
    fn_ok(
        &lab,
        "n1",
        &[
            "deploy",
            "only2",
            "--port",
            "8890",
            "--on",
            "n2",
            "-e",
            "TOUPPER_DELAY_MS=0",
            "--",
            "toupper",
        ],
    );
    let api1 = format!("{}:7070", lab.addr("n1").unwrap());
    let mut answer = String::new();
    wait_for(
        "n1's gateway reaches only2 on n2",
        Duration::from_secs(15),
        || {
            let out = nuage()
                .args(["fn", "--api", &api1, "invoke", "only2", "via"])
                .output()
                .unwrap();
            answer = stdout(&out);
            out.status.success()
        },
    );
    assert!(
        answer.starts_with("n2 ") && answer.ends_with(" VIA\n"),
        "{answer}"
    );
    fn_ok(&lab, "n1", &["rm", "only2"]);

    // n2 dies: every later request still succeeds, on n1.
    lab.kill("n2").unwrap();
    for i in 0..8 {
        assert_eq!(ask(&lab, "n1", &format!("after{i}")).as_deref(), Ok("n1"));
    }
    // n2 comes back (its registry brings toupper back): it is used again.
    lab.start_node("n2", nuage_bin()).unwrap();
    lab.wait_node("n2", Duration::from_secs(20)).unwrap();
    wait_for("n2 used again", Duration::from_secs(20), || {
        (0..2).any(|i| ask(&lab, "n1", &format!("back{i}")).as_deref() == Ok("n2"))
    });

    // n2 stops answering (SIGSTOP) without closing anything: still every request
    // succeeds, on n1, and n2 is skipped soon.
    lab.pause("n2").unwrap();
    let started = Instant::now();
    for i in 0..6 {
        assert_eq!(ask(&lab, "n1", &format!("paused{i}")).as_deref(), Ok("n1"));
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    lab.resume("n2").unwrap();
    wait_for(
        "n2 used again after the pause",
        Duration::from_secs(20),
        || (0..2).any(|i| ask(&lab, "n1", &format!("resumed{i}")).as_deref() == Ok("n2")),
    );

    // Logs come tagged by machine; removal goes everywhere.
    fn_ok(&lab, "n1", &["rm", "toupper"]);
    wait_for("port closed on both", Duration::from_secs(15), || {
        ["n1", "n2"].iter().all(|m| ask(&lab, m, "x").is_err())
    });
}
