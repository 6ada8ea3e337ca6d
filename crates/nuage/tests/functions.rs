//! Functions, end to end: the real `nuage up`, the real reference functions and shell
//! scripts, real sockets.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// The directory of the nuage binary, where the normal build puts the functions.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_nuage"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the reference functions if this test run did not (`cargo test -p nuage`).
fn functions_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if bin_dir().join("toupper").exists() && bin_dir().join("echo").exists() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "fn-toupper", "-p", "fn-echo"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the reference functions failed");
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node on a temp data dir, stopped when dropped.
struct Node {
    up: Option<UpNode>,
    dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        functions_built();
        let dir = tempfile::tempdir().unwrap();
        let mut node = Node { up: None, dir };
        node.restart();
        node
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn api(&self) -> String {
        self.up.as_ref().unwrap().api.clone()
    }

    fn restart(&mut self) {
        self.stop();
        let data = self.data();
        self.up = Some(start_up(&[
            "--api",
            "127.0.0.1:0",
            "--data",
            &data,
            "--name",
            "t1",
        ]));
    }

    fn stop(&mut self) {
        if let Some(mut up) = self.up.take() {
            signal(&up.child, nix::sys::signal::Signal::SIGTERM);
            let status = wait_exit(&mut up.child, Duration::from_secs(20));
            assert!(status.success(), "node stopped with {status}");
        }
    }

    /// `nuage fn ARGS… --api <this node>`.
    fn fn_cmd(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = nuage();
        cmd.arg("fn").arg("--api").arg(self.api()).args(args);
        cmd.stdin(Stdio::null()).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.fn_cmd(args);
        assert!(out.status.success(), "nuage fn {args:?}: {}", stderr(&out));
        stdout(&out)
    }

    fn err(&self, args: &[&str]) -> String {
        let out = self.fn_cmd(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "nuage fn {args:?} should fail: {}",
            stdout(&out)
        );
        let err = stderr(&out);
        assert!(err.starts_with("nuage: error: "), "{err}");
        err
    }

    /// The `fn ls` row of `name`, split in columns.
    fn ls_row(&self, name: &str) -> Vec<String> {
        let out = self.ok(&["ls"]);
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in fn ls:\n{out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut up) = self.up.take() {
            let _ = up.child.kill();
            let _ = up.child.wait();
        }
    }
}

/// A shell script function in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// A connection to a function: send lines, read lines.
struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }
    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }
    fn line(&mut self) -> String {
        let mut l = Vec::new();
        self.reader.read_until(b'\n', &mut l).unwrap();
        String::from_utf8_lossy(&l)
            .trim_end_matches('\n')
            .to_owned()
    }
    fn ask(&mut self, line: &str) -> String {
        self.send(format!("{line}\n").as_bytes());
        self.line()
    }
    /// Ends input and reads the rest.
    fn finish(mut self) -> String {
        self.writer.shutdown(Shutdown::Write).unwrap();
        let mut rest = String::new();
        self.reader.read_to_string(&mut rest).unwrap();
        rest
    }
}

/// POST /function/NAME; status and body.
fn gateway(api: &str, name: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /function/{name} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn toupper_answers_each_line_then_exits_at_end_of_input() {
    functions_built();
    let mut child = Command::new(bin_dir().join("toupper"))
        .env("TOUPPER_DELAY_MS", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello22\nbonjour12\n")
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let pid = child.id();
    assert_eq!(
        out,
        format!("{0} {pid} HELLO22\n{0} {pid} BONJOUR12\n", host.trim())
    );
    // The shell function does the same job in sh.
    let count = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../functions/count/count.sh");
    let out = Command::new(count)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"a\nb")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(stdout(&out), "1 a\n2 b\n");
}

#[test]
fn spawn_mode_serves_connections_concurrently_on_the_socket_itself() {
    let node = Node::start();
    let port = free_port();
    let out = node.ok(&["deploy", "toupper", "--port", &port.to_string()]);
    assert!(out.contains("listening on port"), "{out}");

    // Ten clients at once, each 3 s of work: about 3 s in all, not 30.
    let started = Instant::now();
    let clients: Vec<_> = (0..10)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Conn::open(port);
                c.send(format!("hello{i}\n").as_bytes());
                c.finish()
            })
        })
        .collect();
    let answers: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(12), "10 clients took {took:?}");
    let mut pids = std::collections::BTreeSet::new();
    for (i, a) in answers.iter().enumerate() {
        let words: Vec<&str> = a.split_whitespace().collect();
        assert_eq!(words.len(), 3, "{a:?}");
        assert_eq!(words[2], format!("HELLO{i}"));
        pids.insert(words[1].to_owned());
    }
    assert_eq!(pids.len(), 10, "a process per connection");
    wait_for(
        "processes reaped and counted",
        Duration::from_secs(10),
        || {
            let row = node.ls_row("toupper");
            row[4] == "0" && row[6] == "10"
        },
    );

    // The function's stdin and stdout are the socket itself, not pipes to a relay.
    let tmp = tempfile::tempdir().unwrap();
    let fds = script(
        tmp.path(),
        "fds",
        "read l; readlink /proc/$$/fd/0 /proc/$$/fd/1",
    );
    let port2 = free_port();
    node.ok(&["deploy", "fds", "--port", &port2.to_string(), "--", &fds]);
    let mut c = Conn::open(port2);
    c.send(b"x\n");
    let out = c.finish();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("socket:[") && lines[0] == lines[1],
        "{out}"
    );

    // Each process's end is logged with its status and duration.
    let logs = node.ok(&["logs", "toupper"]);
    assert_eq!(
        logs.matches("nuage: exited with status 0 after ").count(),
        10,
        "{logs}"
    );

    // Metrics count them.
    let (_, metrics) = http_get(&node.api(), "/metrics");
    assert!(
        metrics.contains("nuage_fn_requests_total{function=\"toupper\"} 10"),
        "{metrics}"
    );
    assert!(metrics.contains("nuage_fn_cold_starts_total{function=\"toupper\"} 10"));
}

#[test]
fn pool_mode_scales_from_zero_up_to_max_and_back_down() {
    let node = Node::start();
    let port = free_port();
    node.ok(&[
        "deploy",
        "up",
        "--port",
        &port.to_string(),
        "--mode",
        "pool",
        "--max",
        "3",
        "--idle-timeout",
        "2",
        "-e",
        "TOUPPER_DELAY_MS=1000",
        "--",
        "toupper",
    ]);
    assert_eq!(
        node.ls_row("up")[4],
        "0",
        "no instance before the first request"
    );
    let mut c = Conn::open(port);
    let first = c.ask("a");
    assert!(first.ends_with(" A"), "{first}");
    assert_eq!(node.ls_row("up")[4], "1", "scaled from zero");
    // A connection may send many lines; sequential ones reuse the warm instance.
    let second = c.ask("b");
    let pid = |s: &str| s.split(' ').nth(1).unwrap().to_owned();
    assert_eq!(pid(&first), pid(&second));

    // Six requests at once: the pool grows to --max 3, no further.
    let clients: Vec<_> = (0..6)
        .map(|i| std::thread::spawn(move || Conn::open(port).ask(&format!("c{i}"))))
        .collect();
    let pids: std::collections::BTreeSet<String> = clients
        .into_iter()
        .map(|c| pid(&c.join().unwrap()))
        .collect();
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert_eq!(node.ls_row("up")[4], "3");
    // Idle past --idle-timeout: back to --min (0).
    wait_for("shrink to --min", Duration::from_secs(15), || {
        node.ls_row("up")[4] == "0"
    });

    // scale --min 2 keeps two warm.
    node.ok(&["scale", "up", "--min", "2"]);
    wait_for("grow to --min", Duration::from_secs(10), || {
        node.ls_row("up")[4] == "2"
    });
    let err = node.err(&["scale", "up", "--min", "5"]);
    assert!(err.contains("--min 5 is more than --max 3"), "{err}");
}

#[test]
fn pool_mode_reports_crashes_timeouts_and_long_lines_and_keeps_serving() {
    let node = Node::start();
    let tmp = tempfile::tempdir().unwrap();
    let f = script(
        tmp.path(),
        "moody",
        r#"while IFS= read -r l; do
  case "$l" in crash) echo "crashing" >&2; exit 3;; slow) sleep 30;; esac
  printf '%s\n' "ok $l"
done"#,
    );
    let port = free_port();
    node.ok(&[
        "deploy",
        "moody",
        "--port",
        &port.to_string(),
        "--mode",
        "pool",
        "--max",
        "1",
        "--timeout",
        "1",
        "--",
        &f,
    ]);
    let mut c = Conn::open(port);
    assert_eq!(c.ask("x"), "ok x");
    assert_eq!(c.ask("crash"), "ERR instance exited (status 3)");
    assert_eq!(c.ask("y"), "ok y", "the instance was replaced");
    assert_eq!(c.ask("slow"), "ERR timeout after 1s");
    assert_eq!(c.ask("z"), "ok z");
    // Too long: an error line, and the connection stays usable.
    let long = "a".repeat(2000);
    assert_eq!(c.ask(&long), "ERR request too long (max 1024 bytes)");
    assert_eq!(c.ask("w"), "ok w");

    let row = node.ls_row("moody");
    assert_eq!(row[7], "3", "crash, timeout, too long: {row:?}");
    let (_, metrics) = http_get(&node.api(), "/metrics");
    for kind in ["instance_exited", "timeout", "too_long"] {
        let series = format!("nuage_fn_errors_total{{function=\"moody\",kind=\"{kind}\"}} 1");
        assert!(metrics.contains(&series), "{series}");
    }
    // The function's stderr, tagged with its pid, and what nuage said about it.
    let logs = node.ok(&["logs", "moody"]);
    assert!(logs.contains(" stderr: crashing"), "{logs}");
    assert!(logs.contains("nuage: exited with status 3"), "{logs}");
    assert!(
        logs.contains("killed: request over the timeout of 1s"),
        "{logs}"
    );
}

#[test]
fn http_gateway_answers_with_the_right_codes() {
    let node = Node::start();
    let api = node.api();
    let tmp = tempfile::tempdir().unwrap();
    let f = script(
        tmp.path(),
        "gw",
        r#"while IFS= read -r l; do
  case "$l" in crash) exit 4;; slow) sleep 30;; esac
  printf '%s\n' "got $l"
done"#,
    );
    node.ok(&[
        "deploy",
        "gw",
        "--port",
        &free_port().to_string(),
        "--mode",
        "pool",
        "--max",
        "2",
        "--timeout",
        "2",
        "--max-conns",
        "1",
        "--",
        &f,
    ]);
    assert_eq!(
        gateway(&api, "gw", b"a\nb\n"),
        (200, "got a\ngot b\n".into())
    );
    assert_eq!(gateway(&api, "nope", b"a\n").0, 404);
    let long = vec![b'x'; 1100];
    assert_eq!(gateway(&api, "gw", &long).0, 413);
    assert_eq!(gateway(&api, "gw", b"crash\n").0, 502);
    let (code, body) = gateway(&api, "gw", b"slow\n");
    assert_eq!(code, 504);
    assert!(body.contains("timeout after 2s"), "{body}");
    // One request in flight is --max-conns 1: the next one is refused.
    let slow = {
        let api = api.clone();
        std::thread::spawn(move || gateway(&api, "gw", b"slow\n").0)
    };
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(gateway(&api, "gw", b"a\n").0, 429);
    assert_eq!(slow.join().unwrap(), 504);
    let out = node.fn_cmd(&["invoke", "gw", "crash"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "ERR instance exited (status 4)\nnuage: error: 1 requests to `gw` failed\n"
    );

    // Spawn mode: one process gets the body.
    node.ok(&[
        "deploy",
        "sp",
        "--port",
        &free_port().to_string(),
        "-e",
        "TOUPPER_DELAY_MS=0",
        "--",
        "toupper",
    ]);
    let (code, body) = gateway(&api, "sp", b"a\nb\n");
    assert_eq!(code, 200);
    assert_eq!(body.lines().count(), 2, "{body}");
    assert!(
        body.lines().all(|l| l.ends_with(" A") || l.ends_with(" B")),
        "{body}"
    );
    // `nuage fn invoke` goes through the gateway: one request per argument, in order.
    let out = node.ok(&["invoke", "sp", "p", "q", "r"]);
    let ends: Vec<&str> = out.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert_eq!(ends, ["P", "Q", "R"], "{out}");
}

#[test]
fn the_registry_survives_a_restart_and_rm_closes_the_port() {
    let mut node = Node::start();
    let port = free_port();
    node.ok(&[
        "deploy",
        "echo",
        "--port",
        &port.to_string(),
        "--mode",
        "pool",
    ]);
    let mut c = Conn::open(port);
    assert_eq!(c.ask("before"), "before");
    // Bytes that are not text (NUL included) pass unharmed.
    c.send(b"\x00\xff\x01\n");
    let mut raw = Vec::new();
    c.reader.read_until(b'\n', &mut raw).unwrap();
    assert_eq!(raw, b"\x00\xff\x01\n");
    drop(c);
    node.restart();
    assert_eq!(Conn::open(port).ask("after"), "after", "listening again");
    let show = node.ok(&["show", "echo"]);
    assert!(show.contains("mode          pool"), "{show}");

    // Removal drains: the request in flight finishes, then the port closes.
    let port2 = free_port();
    node.ok(&[
        "deploy",
        "slow",
        "--port",
        &port2.to_string(),
        "-e",
        "TOUPPER_DELAY_MS=1500",
        "--",
        "toupper",
    ]);
    // Spawn mode keeps one process started ahead ("standby"), a child of the node.
    let node_pid = node.up.as_ref().unwrap().child.id();
    wait_for("one process waiting", Duration::from_secs(10), || {
        standby_processes(node_pid) == 1
    });
    let mut c = Conn::open(port2);
    c.send(b"drain\n");
    std::thread::sleep(Duration::from_millis(300));
    let removing = Instant::now();
    node.ok(&["rm", "slow"]);
    assert!(
        removing.elapsed() < Duration::from_secs(10),
        "drain waited for the idle client"
    );
    wait_for(
        "no process waiting after rm",
        Duration::from_secs(10),
        || standby_processes(node_pid) == 0,
    );
    assert!(c.finish().ends_with(" DRAIN\n"));
    assert!(
        TcpStream::connect(("127.0.0.1", port2)).is_err(),
        "port closed"
    );
    let err = node.err(&["show", "slow"]);
    assert!(err.contains("no function named `slow`"), "{err}");
    node.restart();
    assert!(!node.ok(&["ls"]).contains("slow"), "removed for good");
}

/// Children of `parent` that are processes started ahead and still waiting (not yet
/// exec'd: they carry the name of the thread that made them).
fn standby_processes(parent: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            let Some((name, rest)) = stat.split_once(") ") else {
                return false;
            };
            let ppid = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
            name.ends_with("(standby") && ppid == Some(parent) && !rest.starts_with('Z')
        })
        .count()
}

#[test]
fn bad_deployments_are_refused_in_one_line() {
    let node = Node::start();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let err = node.err(&[
        "deploy",
        "ghost",
        "--port",
        &port,
        "--",
        "no-such-program-xyz",
    ]);
    assert!(
        err.contains("command `no-such-program-xyz` not found"),
        "{err}"
    );
    let plain = tmp.path().join("plain");
    std::fs::write(&plain, "x").unwrap();
    let err = node.err(&[
        "deploy",
        "plain",
        "--port",
        &port,
        "--",
        plain.to_str().unwrap(),
    ]);
    assert!(err.contains("is not executable"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let err = node.err(&["deploy", "echo", "--port", &taken_port]);
    assert!(err.contains("already in use"), "{err}");
    let err = node.err(&["deploy", "Bad", "--port", &port]);
    assert!(err.contains("not a function name"), "{err}");
    let err = node.err(&["deploy", "echo", "--port", &port, "--min", "2"]);
    assert!(err.contains("pool mode"), "{err}");
    node.ok(&["deploy", "echo", "--port", &port]);
    let err = node.err(&["deploy", "echo2", "--port", &port, "--", "echo"]);
    assert!(err.contains("already used by function `echo`"), "{err}");
    assert!(node.err(&["rm", "nothing"]).contains("no function named"));
}

#[test]
fn limits_refuse_extra_connections_and_crash_loops_back_off() {
    let node = Node::start();
    let port = free_port();
    node.ok(&[
        "deploy",
        "one",
        "--port",
        &port.to_string(),
        "--max-conns",
        "2",
        "--per-source",
        "1",
        "-e",
        "TOUPPER_DELAY_MS=0",
        "--",
        "toupper",
    ]);
    let mut first = Conn::open(port);
    assert!(first.ask("a").ends_with(" A"));
    let mut second = Conn::open(port);
    assert_eq!(
        second.line(),
        "ERR too many connections from 127.0.0.1 (max 1)"
    );
    drop(first);

    // A function that dies at once, in spawn mode: backed off, shown as failing.
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "dies", "exit 7");
    let port2 = free_port();
    node.ok(&["deploy", "dies", "--port", &port2.to_string(), "--", &f]);
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let c = Conn::open(port2);
        if c.finish().starts_with("ERR function failing") {
            refused += 1;
        }
    }
    assert!(refused > 0, "a crash loop is refused while backed off");
    let (_, metrics) = http_get(&node.api(), "/metrics");
    let starts: u64 = metrics
        .lines()
        .find(|l| l.starts_with("nuage_fn_process_starts_total{function=\"dies\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(starts < 30, "{starts} starts in 3 s: not backed off");
    assert_eq!(node.ls_row("dies")[8], "failing");
}

#[test]
fn the_functions_table_is_read_strictly_and_applied() {
    functions_built();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("nuage.toml");
    std::fs::write(&config, "name = \"c1\"\n\n[functions]\nmax_lien = 10\n").unwrap();
    // Its own data dir: the node takes it before the functions service reads its table.
    let refused_data = tmp.path().join("refused");
    std::fs::create_dir(&refused_data).unwrap();
    let out = run(&[
        "up",
        "--config",
        config.to_str().unwrap(),
        "--api",
        "127.0.0.1:0",
        "--data",
        refused_data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("nuage.toml:4") && err.contains("max_lien"),
        "{err}"
    );

    // A smaller max_line applies to the function's connections.
    let data = tmp.path().join("data");
    std::fs::write(
        &config,
        format!(
            "name = \"c1\"\ndata_dir = \"{}\"\n\n[functions]\nmax_line = 16\n",
            data.display()
        ),
    )
    .unwrap();
    let up = start_up(&["--config", config.to_str().unwrap(), "--api", "127.0.0.1:0"]);
    let port = free_port();
    let api = up.api.clone();
    let node = Node {
        up: Some(up),
        dir: tmp,
    };
    assert_eq!(api, node.api());
    node.ok(&[
        "deploy",
        "echo",
        "--port",
        &port.to_string(),
        "--mode",
        "pool",
    ]);
    let mut c = Conn::open(port);
    assert_eq!(
        c.ask("fifteen bytes!!"),
        "fifteen bytes!!",
        "15 bytes + newline fit"
    );
    assert_eq!(
        c.ask("sixteen bytes!!!"),
        "ERR request too long (max 16 bytes)"
    );
}

#[test]
fn functions_get_a_small_fixed_environment_and_the_values_deploy_passes() {
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let show_env = script(
        dir.path(),
        "show-env",
        "read -r line\necho \"$line g=$GREETING c=$FROM_CALLER f=$NUAGE_FUNCTION home=${HOME-unset} client=${NUAGE_CLIENT%:*}\"",
    );
    let port = free_port();
    let mut deploy = nuage();
    deploy
        .args(["fn", "--api", &node.api(), "deploy", "envf", "--port"])
        .arg(port.to_string())
        .args(["-e", "GREETING=hi", "-e", "FROM_CALLER", "--", &show_env])
        .env("FROM_CALLER", "there")
        .stdin(Stdio::null());
    let out = deploy.output().unwrap();
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    // Spawn mode: the node's own variables (HOME here) do not reach the process.
    assert_eq!(
        Conn::open(port).ask("x"),
        "x g=hi c=there f=envf home=unset client=127.0.0.1"
    );
    // `-e KEY` with KEY unset where `nuage fn deploy` runs is refused in one line.
    let err = node.err(&[
        "deploy",
        "envg",
        "--port",
        &free_port().to_string(),
        "-e",
        "NUAGE_TEST_SURELY_UNSET",
        "--",
        &show_env,
    ]);
    assert!(
        err.contains("NUAGE_TEST_SURELY_UNSET is not set here"),
        "{err}"
    );
}

#[test]
fn spawn_mode_logs_stderr_by_pid_even_after_the_process_exits() {
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    // The process exits at once; a descendant keeps stderr open and writes a second later.
    let f = script(
        dir.path(),
        "chatty",
        "read -r line\necho \"before $line\" >&2\necho \"$$\"\n( sleep 1; echo 'late from a descendant' >&2 ) >/dev/null &",
    );
    let port = free_port();
    node.ok(&["deploy", "chatty", "--port", &port.to_string(), "--", &f]);
    let mut c = Conn::open(port);
    let pid = c.ask("x");
    assert!(pid.parse::<u32>().is_ok(), "{pid}");
    assert_eq!(c.finish(), "");
    let mut logs = String::new();
    wait_for("the descendant's line", Duration::from_secs(20), || {
        logs = node.ok(&["logs", "chatty"]);
        logs.contains("stderr: late from a descendant")
    });
    for text in [
        "stderr: before x",
        "stderr: late from a descendant",
        "nuage: exited with status 0",
    ] {
        let line = logs
            .lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no `{text}` in:\n{logs}"));
        assert!(line.contains(&pid), "`{line}` is not tagged with pid {pid}");
    }
}

#[test]
fn spawn_mode_reads_a_stderr_flood_that_fills_the_pipe() {
    // nuage looks at a process's stderr pipe only at its watch ticks: a process that
    // writes more than the pipe holds (64 KiB) before the first tick must be read from
    // then on, not left blocked, and every line must reach the log.
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let f = script(
        dir.path(),
        "chatter",
        "read -r line\ni=0\nwhile [ $i -lt 3000 ]; do echo \"noise $i of a line long enough to fill the pipe of stderr quickly\" >&2; i=$((i+1)); done\necho \"done $line\"",
    );
    let port = free_port();
    node.ok(&["deploy", "chatter", "--port", &port.to_string(), "--", &f]);
    let mut c = Conn::open(port);
    assert_eq!(c.ask("x"), "done x");
    assert_eq!(c.finish(), "");
    wait_for("the last stderr line", Duration::from_secs(20), || {
        node.ok(&["logs", "chatter"])
            .contains("stderr: noise 2999 of a line")
    });
}

#[test]
fn spawn_mode_tells_the_client_when_the_program_vanished_after_deploy() {
    // A program removed after deploy cannot be started: the failure must reach the
    // client, the metrics and the logs.
    let node = Node::start();
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "gone", "cat");
    let port = free_port();
    node.ok(&["deploy", "gone", "--port", &port.to_string(), "--", &f]);
    let mut conn = Conn::open(port);
    assert_eq!(conn.ask("here"), "here", "it runs while the script exists");
    drop(conn);
    std::fs::remove_file(&f).unwrap();
    let answer = Conn::open(port).finish();
    assert!(
        answer.starts_with(&format!("ERR cannot start the function: {f}: No such file")),
        "{answer}"
    );
    let (_, metrics) = http_get(&node.api(), "/metrics");
    assert!(
        metrics.contains("nuage_fn_errors_total{function=\"gone\",kind=\"start_failed\"} 1"),
        "{metrics}"
    );
    let logs = node.ok(&["logs", "gone"]);
    assert!(logs.contains("cannot start:"), "{logs}");
}
