//! `nuage net …` end to end: the real binary over loopback, and between lab machines
//! (as root) for the unreachable cases.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// A running `nuage net …-server`, its port, and its stdout lines as they come.
struct Server {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(kind: &str) -> Server {
        let mut child = nuage()
            .args(["net", kind, "--port", "0", "--bind", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (port, lines) = read_lines(child.stdout.take().unwrap());
        Server { child, port, lines }
    }

    /// The next line the server prints, within 10 s.
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the server printed nothing within 10 s")
    }

    fn stop(mut self) {
        signal(&self.child, nix::sys::signal::Signal::SIGTERM);
        let status = wait_exit(&mut self.child, Duration::from_secs(10));
        assert!(status.success(), "server exit status {status}");
    }
}

/// Reads the "listening on … ADDR:PORT" line, then forwards every other line.
fn read_lines(stdout: ChildStdout) -> (u16, mpsc::Receiver<String>) {
    let mut reader = BufReader::new(stdout);
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("listening on "), "{first}");
    let port = first.trim().rsplit(':').next().unwrap().parse().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (port, rx)
}

#[test]
fn udp_datagrams_are_printed_with_their_source_and_answered() {
    let server = Server::start("udp-server");
    let port = server.port.to_string();
    let answer = ok(run(&[
        "net",
        "udp-client",
        "127.0.0.1",
        &port,
        "hello, world",
    ]));
    assert_eq!(answer, "OK\n");
    let line = server.next_line();
    assert!(line.starts_with("127.0.0.1:"), "{line}");
    assert!(line.ends_with(": hello, world"), "{line}");

    // A datagram far bigger than a typical read buffer arrives whole; control
    // characters are shown escaped so each datagram stays on one line.
    let big = "u".repeat(60_000);
    ok(run(&["net", "udp-client", "127.0.0.1", &port, &big]));
    assert!(server.next_line().ends_with(&format!(": {big}")));
    ok(run(&[
        "net",
        "udp-client",
        "127.0.0.1",
        &port,
        "two\nlines",
    ]));
    assert!(server.next_line().ends_with(": two\\nlines"));

    let too_big = "u".repeat(70_000);
    fails_with(
        run(&["net", "udp-client", "127.0.0.1", &port, &too_big]),
        "does not fit in one UDP datagram",
    );
    server.stop();

    // Nobody listens any more: the ICMP refusal is reported.
    fails_with(
        run(&["net", "udp-client", "127.0.0.1", &port, "x"]),
        "connection refused",
    );
    // --no-wait only reports local errors.
    ok(run(&[
        "net",
        "udp-client",
        "127.0.0.1",
        &port,
        "x",
        "--no-wait",
    ]));
}

#[test]
fn tcp_server_answers_ok_and_reports_each_client() {
    let server = Server::start("tcp-server");
    let port = server.port.to_string();
    let hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();

    assert_eq!(ok(run(&["net", "tcp-client", "127.0.0.1", &port])), "OK\n");
    let connected = server.next_line();
    assert!(
        connected.starts_with("127.0.0.1:") && connected.ends_with(" connected"),
        "{connected}"
    );
    let peer = connected.trim_end_matches(" connected").to_owned();
    assert_eq!(server.next_line(), format!("{peer}: {hostname}"));
    assert_eq!(server.next_line(), format!("{peer} closed (1 message)"));

    // A message much bigger than one read buffer is read whole and answered once.
    let big = "t".repeat(100_000);
    assert_eq!(
        ok(run(&["net", "tcp-client", "127.0.0.1", &port, &big])),
        "OK\n"
    );
    server.next_line();
    assert!(server.next_line().ends_with(&format!(": {big}")));
    server.next_line();

    // Each line is a message, each gets its answer.
    assert_eq!(
        ok(run(&["net", "tcp-client", "127.0.0.1", &port, "a\nb\nc"])),
        "OK\nOK\nOK\n"
    );
    server.stop();
    fails_with(
        run(&["net", "tcp-client", "127.0.0.1", &port]),
        "connection refused",
    );
}

#[test]
fn server_errors_are_one_clear_line() {
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    fails_with(
        run(&["net", "tcp-server", "--port", &port, "--bind", "127.0.0.1"]),
        "already in use",
    );
    let taken_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken_udp.local_addr().unwrap().port().to_string();
    fails_with(
        run(&["net", "udp-server", "--port", &port, "--bind", "127.0.0.1"]),
        "already in use",
    );

    // A privileged port as a user who is not root.
    for kind in ["tcp-server", "udp-server"] {
        let mut cmd = nuage();
        cmd.args(["net", kind, "--port", "23"]).stdin(Stdio::null());
        if nix::unistd::geteuid().is_root() {
            cmd.uid(65534).gid(65534);
        }
        fails_with(cmd.output().unwrap(), "permission denied");
    }

    fails_with(
        run(&["net", "tcp-client", "no-such-host.invalid", "7"]),
        "cannot resolve host",
    );
}

/// Between lab machines: the tools across a real network, and the two ways a peer is
/// unreachable (no route at all; a host that does not answer on the subnet).
#[test]
fn net_tools_across_lab_machines() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = nuage_lab::Lab::create(&format!("net-{}", std::process::id()), 2).unwrap();
    let bin = env!("CARGO_BIN_EXE_nuage");
    let mut server = lab
        .command("n1", bin)
        .unwrap()
        .args(["net", "tcp-server", "--port", "7000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (_, lines) = read_lines(server.stdout.take().unwrap());
    let n1 = lab.addr("n1").unwrap().to_string();
    let out = lab
        .exec("n2", bin, &["net", "tcp-client", &n1, "7000"])
        .unwrap();
    assert_eq!(ok(out), "OK\n");
    let _connected = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    // n2's hostname is its machine name.
    assert!(
        lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .ends_with(": n2")
    );

    // No route: lab machines have none beyond their subnet.
    let out = lab
        .exec("n2", bin, &["net", "tcp-client", "192.0.2.1", "7"])
        .unwrap();
    fails_with(out, "network is unreachable");
    // On the subnet but nobody there: ARP gets no answer.
    let subnet_host = lab.addr("n1").unwrap().octets();
    let nobody = format!(
        "{}.{}.{}.250",
        subnet_host[0], subnet_host[1], subnet_host[2]
    );
    let out = lab
        .exec("n2", bin, &["net", "tcp-client", &nobody, "7"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("unreachable") || err.contains("no answer within"),
        "{err}"
    );
    let out = lab
        .exec("n2", bin, &["net", "udp-client", "192.0.2.1", "7", "x"])
        .unwrap();
    fails_with(out, "network is unreachable");
    let _ = server.kill();
    let _ = server.wait();
}
