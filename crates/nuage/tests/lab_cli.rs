//! `nuage lab` from the command line, as root (CI runs as root): machines running real
//! nodes, faults through the CLI, and teardown.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn lab_name() -> String {
    format!("cli-{}", std::process::id())
}

fn lab(args: &[&str]) -> std::process::Output {
    let mut full = vec!["lab", "--name"];
    let name = lab_name();
    full.push(&name);
    full.extend_from_slice(args);
    run(&full)
}

/// Removes the lab even when an assertion fails midway.
struct Cleanup;
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = lab(&["down"]);
    }
}

/// The rows of `nuage lab ls` that belong to this test's lab (other tests' labs may be
/// listed too): from the row naming it to the next row naming another lab.
fn our_rows(ls: &str) -> Vec<String> {
    let name = lab_name();
    let mut rows = Vec::new();
    let mut inside = false;
    for line in ls.lines().skip(1) {
        if !line.starts_with(' ') {
            inside = line.starts_with(&format!("{name} "));
        }
        if inside {
            rows.push(line.to_owned());
        }
    }
    assert!(!rows.is_empty(), "lab {name} not listed: {ls}");
    rows
}

#[test]
fn lab_of_three_nodes_through_the_cli() {
    let _cleanup = Cleanup;
    let up = ok(lab(&["up", "3", "--start"]));
    assert!(up.contains("3 machines on 10.213."), "{up}");

    // Every machine runs a node that knows the two others as peers.
    let ls = our_rows(&ok(run(&["lab", "ls"])));
    let mut addrs = Vec::new();
    for m in ["n1", "n2", "n3"] {
        let line = up
            .lines()
            .find(|l| l.starts_with(&format!("{m} ")))
            .unwrap();
        let addr = line.split_whitespace().nth(1).unwrap().to_owned();
        let listed = ls
            .iter()
            .find(|l| l.contains(&format!(" {addr} ")))
            .unwrap();
        assert!(listed.contains("nuage["), "no node in {m}: {ls:?}");
        let info = json(&http_get(&format!("{addr}:7070"), "/v1/node").1);
        assert_eq!(info["name"], m);
        assert_eq!(info["address"], addr.as_str());
        let peers: Vec<&str> = info["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(peers.len(), 2, "{info}");
        assert!(!peers.contains(&m));
        addrs.push(addr);
    }

    // exec: hostname, stdin and exit status pass through.
    assert_eq!(ok(lab(&["exec", "n2", "--", "hostname"])).trim(), "n2");
    let mut child = nuage()
        .args(["lab", "--name", &lab_name(), "exec", "n1", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"through\n").unwrap();
    assert_eq!(
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap(),
        "through\n"
    );
    assert_eq!(
        lab(&["exec", "n1", "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );

    // The node CLI inside n1 reaches n3's node, until a partition separates them.
    let bin = env!("CARGO_BIN_EXE_nuage");
    let n3_api = format!("{}:7070", addrs[2]);
    ok(lab(&[
        "exec", "n1", "--", bin, "node", "info", "--api", &n3_api,
    ]));
    ok(lab(&["partition", "n1", "n2,n3"]));
    assert!(ok(run(&["lab", "ls"])).contains("{n1} | {n2,n3}"));
    let cut = lab(&["exec", "n1", "--", bin, "node", "info", "--api", &n3_api]);
    assert_eq!(cut.status.code(), Some(1), "partition let n1 reach n3");
    ok(lab(&[
        "exec", "n2", "--", bin, "node", "info", "--api", &n3_api,
    ]));
    ok(lab(&["heal"]));
    ok(lab(&[
        "exec", "n1", "--", bin, "node", "info", "--api", &n3_api,
    ]));

    // pause / resume / kill / restart.
    // At least the node; a service may have a short-lived child at that instant.
    let paused = ok(lab(&["pause", "n2"]));
    assert!(
        paused.contains("n2: paused ") && !paused.contains("paused 0 "),
        "{paused}"
    );
    // A stop signal takes effect when the process next runs: allow a few seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !our_rows(&ok(run(&["lab", "ls"])))
        .iter()
        .any(|l| l.contains("(paused)"))
    {
        assert!(Instant::now() < deadline, "`lab ls` never showed n2 paused");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(lab(&["resume", "n2"]));
    assert!(ok(lab(&["kill", "n3"])).contains("killed 1 process"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&n3_api).is_ok() {
        assert!(
            Instant::now() < deadline,
            "n3's node still answers after kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(lab(&["restart", "n3"]));
    assert_eq!(
        json(&http_get(&n3_api, "/v1/node").1)["runs"],
        2,
        "restart keeps the node's data"
    );

    // Errors name the problem.
    let out = lab(&["exec", "n9", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no machine `n9`"), "{}", stderr(&out));
    let out = lab(&["up", "2"]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    // Teardown removes everything, and again is harmless.
    assert!(ok(lab(&["down"])).contains("removed"));
    assert!(ok(lab(&["down"])).contains("nothing to remove"));
    let netns = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !netns.contains(&format!("nuage-{}-", lab_name())),
        "{netns}"
    );
}

#[test]
fn lab_without_root_says_so_in_one_line() {
    let out = nuage()
        .args(["lab", "up", "2", "--name", "nonroot"])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("needs root"), "{err}");
}

#[test]
fn unknown_lab_is_explained() {
    let out = run(&["lab", "--name", "no-such-lab", "heal"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no lab named `no-such-lab`"),
        "{}",
        stderr(&out)
    );
}
