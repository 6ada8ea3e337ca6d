//! Helpers shared by the integration tests: they start the real `nuage` binary.

#![allow(dead_code)] // each test file uses a different subset

pub mod group;
pub mod storage;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn nuage() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nuage"));
    // `nuage up` runs a group daemon on the fixed port 4803 by default; nodes started by
    // tests in parallel on one host would collide there. Off unless a test's nuage.toml
    // says `[group] enabled = true` (docs/groups.md).
    cmd.env("NUAGE_GROUP_ENABLED", "false");
    cmd
}

pub fn run(args: &[&str]) -> Output {
    nuage()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nuage")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `nuage up` child and the API address it printed.
pub struct UpNode {
    pub child: Child,
    pub api: String,
    pub stdout_lines: Vec<String>,
}

/// Starts `nuage up ARGS…` and waits for the line that gives the API address.
pub fn start_up(args: &[&str]) -> UpNode {
    let mut child = nuage()
        .arg("up")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nuage up");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let api = loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("nuage up exited before printing its API address: {lines:?} {err}");
        }
        lines.push(line.trim_end().to_owned());
        if let Some(url) = line.strip_prefix("api").map(str::trim) {
            break url.strip_prefix("http://").unwrap().to_owned();
        }
    };
    // Keep draining stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    UpNode {
        child,
        api,
        stdout_lines: lines,
    }
}

/// Waits for a child to exit, at most `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Is `line` the header row of a table with these column names (whatever the padding)?
pub fn header(line: &str, columns: &[&str]) -> bool {
    line.split_whitespace().eq(columns.iter().copied())
}

/// The stdout of a command that must have succeeded (else both outputs, in the panic).
pub fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// A CLI failure as every command reports one: exit status 1 and a single
/// `nuage: error: …` line on stderr that contains `needle`.
pub fn fails_with(out: std::process::Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("nuage: error: "), "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

/// The table `nuage launch` (and the commands built on it) prints: (process, host, pid).
pub fn launch_table(out: &str) -> Vec<(u32, String, u32)> {
    out.lines()
        .skip_while(|l| !header(l, &["PROCESS", "HOST", "PID", "ADDRESS", "LOG"]))
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
