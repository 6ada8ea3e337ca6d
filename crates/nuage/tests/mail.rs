//! `nuage mail …` end to end: real servers and clients over loopback, and three servers
//! on three lab machines (as root) with a slow link, in both order modes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A running `nuage mail serve`.
struct MailServer {
    child: Child,
    port: u16,
}

impl MailServer {
    /// Starts `cmd` (a `nuage mail serve …` command) and waits for its listening line.
    fn start(mut cmd: Command) -> MailServer {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nuage mail serve");
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        assert!(first.contains("listening on"), "server said: {first:?}");
        let port = first.trim().rsplit(':').next().unwrap().parse().unwrap();
        std::thread::spawn(move || for _ in reader.lines() {});
        MailServer { child, port }
    }

    fn stop(mut self) {
        signal(&self.child, nix::sys::signal::Signal::SIGTERM);
        let status = wait_exit(&mut self.child, Duration::from_secs(15));
        assert!(status.success(), "mail server exit status {status}");
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nuage mail serve` on loopback for `domain`.
fn serve(dir: &Path, domain: &str, port: u16, extra: &[&str]) -> MailServer {
    let mut cmd = nuage();
    cmd.args(["mail", "serve", "--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--domain", domain, "--servers"])
        .arg(dir.join("servers"))
        .arg("--data-dir")
        .arg(dir.join(format!("data-{domain}")))
        .args(extra);
    MailServer::start(cmd)
}

/// Ports nobody listens on now (bound, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A temp dir with a servers file for `domains` on loopback ports.
fn setup(domains: &[&str]) -> (tempfile::TempDir, Vec<u16>) {
    let tmp = tempfile::tempdir().unwrap();
    let ports = free_ports(domains.len());
    let mut text = String::from("# loopback test\n\n");
    for (d, p) in domains.iter().zip(&ports) {
        text.push_str(&format!("127.0.0.1:{p}:{d}   # the server of {d}\n"));
    }
    std::fs::write(tmp.path().join("servers"), text).unwrap();
    (tmp, ports)
}

/// `nuage up` failing: other services may have logged their start before the error, so
/// the error must be the last line, and the only error line.
fn up_fails_with(out: std::process::Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("nuage: error: "), "{err}");
    assert!(last.contains(needle), "expected `{needle}` in: {err}");
    assert_eq!(err.matches("nuage: error: ").count(), 1, "{err}");
}

fn send(port: u16, from: &str, to: &str, text: &str) -> String {
    let server = format!("127.0.0.1:{port}");
    ok(run(&[
        "mail", "send", "--server", &server, "--from", from, "--to", to, text,
    ]))
}

/// The `(id, sender)` of each message of a mailbox, in the order `mail read` prints.
fn mailbox(port: u16, owner: &str) -> Vec<(String, String)> {
    let server = format!("127.0.0.1:{port}");
    parse_mailbox(&ok(run(&["mail", "read", "--server", &server, owner])))
}

fn parse_mailbox(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            let words: Vec<&str> = l.split(' ').collect();
            assert_eq!(words[2], "from", "{l}");
            (words[1].to_owned(), words[3].to_owned())
        })
        .collect()
}

/// Polls `check` every 100 ms until it returns `Some`, at most `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The three-domain scenario on loopback. Returns Nabilla's mailbox as the senders
/// appear in it, and whether Brandon's reply was ever seen before Afida's message.
fn scenario(order: &str) -> (Vec<String>, bool) {
    let (tmp, ports) = setup(&["a", "b", "n"]);
    let dir = tmp.path();
    let delay = "n=6000";
    let a = serve(dir, "a", ports[0], &["--order", order, "--delay-to", delay]);
    let b = serve(dir, "b", ports[1], &["--order", order]);
    let n = serve(dir, "n", ports[2], &["--order", order]);
    send(
        a.port,
        "afida@a",
        "brandon@b,nabilla@n",
        "Meeting at 10:30?",
    );
    let brandon = wait_for(Duration::from_secs(10), "Afida's message at b", || {
        let m = mailbox(b.port, "brandon@b");
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(brandon[0].1, "afida@a");
    send(b.port, "brandon@b", "afida@a,nabilla@n", "Yes: 10:30 works");
    let mut wrong_order_seen = false;
    let mut held_seen = false;
    let server = format!("127.0.0.1:{}", n.port);
    let nabilla = wait_for(Duration::from_secs(20), "both messages at n", || {
        let out = ok(run(&["mail", "read", "--server", &server, "nabilla@n"]));
        held_seen |= out.contains("1 more held back");
        let m = parse_mailbox(&out);
        if m.first().is_some_and(|(_, from)| from == "brandon@b") {
            wrong_order_seen = true;
        }
        (m.len() == 2).then_some(m)
    });
    // In causal mode the reply did reach n first, and was held back.
    assert_eq!(held_seen, order == "causal");
    // Afida sees her own message's reply.
    assert_eq!(mailbox(a.port, "afida@a")[0].1, "brandon@b");
    for s in [a, b, n] {
        s.stop();
    }
    (
        nabilla.into_iter().map(|(_, from)| from).collect(),
        wrong_order_seen,
    )
}

#[test]
fn causal_order_holds_the_reply_back_on_loopback() {
    let (senders, wrong) = scenario("causal");
    assert_eq!(senders, ["afida@a", "brandon@b"]);
    assert!(!wrong, "Nabilla saw the reply before the message");
}

#[test]
fn fifo_order_shows_the_reply_first_on_loopback() {
    let (senders, wrong) = scenario("fifo");
    assert!(wrong);
    assert_eq!(senders, ["brandon@b", "afida@a"]);
}

#[test]
fn mail_to_a_down_server_is_queued_across_restarts_and_delivered() {
    let (tmp, ports) = setup(&["a", "b"]);
    let dir = tmp.path();
    let a = serve(dir, "a", ports[0], &[]);
    // b is down: the message is accepted and queued.
    let text = "sent while b was down\nline two: @ and « UTF-8 »";
    let id = send(a.port, "afida@a", "brandon@b", text);
    assert_eq!(id, "sent a-1\n");
    // The queue shows the copy and why it is still there.
    let server_a = format!("127.0.0.1:{}", a.port);
    let status = wait_for(Duration::from_secs(10), "a failed attempt", || {
        let out = ok(run(&["mail", "queue", "--server", &server_a]));
        out.contains("failed attempt").then_some(out)
    });
    assert!(status.contains("queued for b: 1 message(s)"), "{status}");
    assert!(status.contains("connection refused"), "{status}");
    // a crashes (SIGKILL: its queue is on disk), restarts, then b comes up.
    drop(a);
    let a = serve(dir, "a", ports[0], &[]);
    send(a.port, "afida@a", "brandon@b,afida@a", "second");
    let b = serve(dir, "b", ports[1], &[]);
    let mail = wait_for(Duration::from_secs(20), "queued mail at b", || {
        let m = mailbox(b.port, "brandon@b");
        (m.len() == 2).then_some(m)
    });
    assert_eq!(
        mail,
        [
            ("a-1".to_owned(), "afida@a".to_owned()),
            ("a-2".to_owned(), "afida@a".to_owned())
        ]
    );
    let server = format!("127.0.0.1:{}", b.port);
    let out = ok(run(&["mail", "read", "--server", &server, "brandon@b"]));
    assert!(
        out.contains("    sent while b was down\n    line two: @ and « UTF-8 »\n"),
        "{out}"
    );
    // Mailboxes persist across a restart of b.
    b.stop();
    let b = serve(dir, "b", ports[1], &[]);
    assert_eq!(mailbox(b.port, "brandon@b").len(), 2);
    assert_eq!(mailbox(a.port, "afida@a").len(), 1);
    // a's kept connection to the old b is dead: the next forward still gets through.
    send(a.port, "afida@a", "brandon@b", "third");
    wait_for(Duration::from_secs(20), "the third message at b", || {
        (mailbox(b.port, "brandon@b").len() == 3).then_some(())
    });
    let status = ok(run(&["mail", "queue", "--server", &server_a]));
    assert!(status.contains("outbound queue: empty"), "{status}");
    assert!(status.contains("held back: 0 message(s)"), "{status}");
    a.stop();
    b.stop();
}

#[test]
fn a_destination_killed_mid_stream_loses_and_duplicates_nothing() {
    let (tmp, ports) = setup(&["a", "b"]);
    let dir = tmp.path();
    let a = serve(dir, "a", ports[0], &[]);
    let b = serve(dir, "b", ports[1], &[]);
    // Bursts of messages, each in one session (the interactive client reads a script).
    const COUNT: usize = 60;
    let burst = |from: usize, to: usize| {
        let mut script = String::from("from afida@a\n");
        for i in from..=to {
            script.push_str(&format!("send brandon@b\nmessage {i}\n.\n"));
        }
        script.push_str("quit\n");
        let mut child = nuage()
            .args(["mail", "client", "127.0.0.1", &a.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child
    };
    let first = burst(1, COUNT / 2);
    // Kill b (SIGKILL) as soon as mail arrives there, likely with copies in flight.
    wait_for(Duration::from_secs(20), "some mail at b", || {
        (!mailbox(b.port, "brandon@b").is_empty()).then_some(())
    });
    drop(b);
    let out = ok(first.wait_with_output().unwrap());
    assert_eq!(out.matches("sent a-").count(), COUNT / 2, "{out}");
    // The second half certainly finds b down: it waits in a's queue.
    let out = ok(burst(COUNT / 2 + 1, COUNT).wait_with_output().unwrap());
    assert_eq!(out.matches("sent a-").count(), COUNT / 2, "{out}");
    let server_a = format!("127.0.0.1:{}", a.port);
    let status = ok(run(&["mail", "queue", "--server", &server_a]));
    assert!(status.contains("queued for b: "), "{status}");
    let b = serve(dir, "b", ports[1], &[]);
    let mail = wait_for(Duration::from_secs(30), "every message at b", || {
        let m = mailbox(b.port, "brandon@b");
        (m.len() >= COUNT).then_some(m)
    });
    // Every message exactly once, in the order sent.
    let ids: Vec<String> = mail.into_iter().map(|(id, _)| id).collect();
    let expected: Vec<String> = (1..=COUNT).map(|i| format!("a-{i}")).collect();
    assert_eq!(ids, expected);
    a.stop();
    b.stop();
}

#[test]
fn bad_input_gets_clear_errors() {
    let (tmp, ports) = setup(&["a", "b"]);
    let dir = tmp.path();
    // A malformed servers file: the error names the file and the line.
    let bad = dir.join("bad-servers");
    std::fs::write(&bad, "# ok\n127.0.0.1:2525:a\n127.0.0.1:25x:b\n").unwrap();
    let out = run(&[
        "mail",
        "serve",
        "--port",
        "0",
        "--domain",
        "a",
        "--servers",
        bad.to_str().unwrap(),
        "--data-dir",
        dir.join("x").to_str().unwrap(),
    ]);
    fails_with(out, "line 3: `25x` is not a port number");
    let servers = dir.join("servers");
    let out = run(&[
        "mail",
        "serve",
        "--port",
        "0",
        "--domain",
        "q",
        "--servers",
        servers.to_str().unwrap(),
        "--data-dir",
        dir.join("q").to_str().unwrap(),
    ]);
    fails_with(out, "domain `q` (--domain) is not in the servers file");

    let a = serve(dir, "a", ports[0], &[]);
    let server = format!("127.0.0.1:{}", a.port);
    // Unknown domain: the error comes back to the sender and nothing is sent.
    fails_with(
        run(&[
            "mail",
            "send",
            "--server",
            &server,
            "--from",
            "afida@a",
            "--to",
            "brandon@b,x@nowhere",
            "hi",
        ]),
        "unknown domain `nowhere`",
    );
    fails_with(
        run(&[
            "mail",
            "send",
            "--server",
            &server,
            "--from",
            "brandon@b",
            "--to",
            "afida@a",
            "hi",
        ]),
        "from the server of `b`",
    );
    fails_with(
        run(&[
            "mail", "send", "--server", &server, "--from", "afida", "--to", "afida@a", "hi",
        ]),
        "--from: `afida` is not an address",
    );
    // An over-long message from stdin is refused by the client.
    let mut child = nuage()
        .args([
            "mail", "send", "--server", &server, "--from", "afida@a", "--to", "afida@a",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&vec![b'x'; 300 * 1024]);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    fails_with(out, "exceeds the limit of 262144 bytes");

    // Raw frames: an over-long header line, then an over-large frame, each end their
    // session with an ERR, and the server goes on.
    let raw = |bytes: &[u8]| -> String {
        let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let answer = raw(&vec![b'S'; 5000]);
    assert!(answer.starts_with("ERR "), "{answer}");
    assert!(answer.contains("over-long line"), "{answer}");
    let answer = raw(b"SEND 7 99999999 7\n");
    assert!(
        answer.contains("exceeds the limit of 1048576 bytes"),
        "{answer}"
    );
    // A well-framed but wrong request ends only that request.
    let answer = raw(b"READ 6\nnobodyQUIT\n");
    assert!(answer.contains("is not an address"), "{answer}");
    assert!(answer.ends_with("OK 3\nbye"), "{answer}");
    let big = "x".repeat(262_145);
    let frame = format!("SEND 7 {} 7\nafida@a{big}afida@aQUIT\n", big.len());
    let answer = raw(frame.as_bytes());
    assert!(
        answer.contains("exceeds the limit of 262144 bytes"),
        "{answer}"
    );
    // Any text survives: the framing is by length.
    let text = "SEND 1 2\n: colons, @, newlines\n.\nand non-ASCII: ñ 漢字 🎉";
    send(a.port, "afida@a", "afida@a", text);
    let out = ok(run(&["mail", "read", "--server", &server, "afida@a"]));
    let body: Vec<&str> = out
        .lines()
        .skip(2)
        .map(|l| l.strip_prefix("    ").unwrap())
        .collect();
    assert_eq!(body.join("\n"), text);
    // Reading another domain's mailbox points to its server.
    fails_with(
        run(&["mail", "read", "--server", &server, "brandon@b"]),
        &format!("at the server of `b` (127.0.0.1:{})", ports[1]),
    );
    // Nobody there.
    let nobody = format!("127.0.0.1:{}", free_ports(1)[0]);
    fails_with(
        run(&["mail", "read", "--server", &nobody, "afida@a"]),
        "connection refused",
    );
    a.stop();
}

#[test]
fn interactive_client_sends_and_reads() {
    let (tmp, ports) = setup(&["a"]);
    let a = serve(tmp.path(), "a", ports[0], &[]);
    let long = "y".repeat(300 * 1024);
    let script = format!(
        "help\n{long}\nsend brandon@a\nbefore from\n.\nfrom afida@a\nsend brandon@a, afida@a\nfirst line\n..\n.\nbogus\nsend nobody@zz\nx\n.\nread brandon@a\nread\nquit\n"
    );
    let mut child = nuage()
        .args(["mail", "client", "127.0.0.1", &a.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = ok(child.wait_with_output().unwrap());
    assert!(out.contains("commands:"), "{out}");
    assert!(
        out.contains("error: line longer than 262144 bytes; ignored"),
        "{out}"
    );
    assert!(out.contains("error: say who you are first"), "{out}");
    assert!(out.contains("you are afida@a"), "{out}");
    assert!(out.contains("sent a-1"), "{out}");
    assert!(out.contains("error: unknown command `bogus`"), "{out}");
    assert!(out.contains("error: unknown domain `zz`"), "{out}");
    assert!(
        out.contains("brandon@a: 1 message\n#1 a-1 from afida@a to brandon@a, afida@a, "),
        "{out}"
    );
    assert!(out.contains("    first line\n    .\n"), "{out}");
    assert!(out.contains("afida@a: 1 message\n"), "{out}");
    a.stop();
}

// ---------------------------------------------------------------------------------
// Three lab machines.

/// Three mail servers, one per lab machine: domain a on n1, b on n2, n on n3, port 2525.
struct LabMail {
    lab: nuage_lab::Lab,
    procs: Vec<MailServer>,
    _tmp: tempfile::TempDir,
}

impl LabMail {
    const MACHINES: [(&'static str, &'static str); 3] = [("n1", "a"), ("n2", "b"), ("n3", "n")];

    /// Creates the lab `name` and starts the servers, each with `serve_args` added (and
    /// `a_args` for a's server only).
    fn start(name: &str, serve_args: &[&str], a_args: &[&str]) -> LabMail {
        let lab = nuage_lab::Lab::create(name, 3).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut text = String::from("# three lab machines\n");
        for (m, d) in Self::MACHINES {
            text.push_str(&format!("{}:2525:{d}\n", lab.addr(m).unwrap()));
        }
        let servers: PathBuf = tmp.path().join("servers");
        std::fs::write(&servers, text).unwrap();
        let mut procs = Vec::new();
        for (m, d) in Self::MACHINES {
            let mut cmd = lab.command(m, env!("CARGO_BIN_EXE_nuage")).unwrap();
            cmd.args(["mail", "serve", "--port", "2525", "--domain", d])
                .args(serve_args)
                .arg("--servers")
                .arg(&servers)
                .arg("--data-dir")
                .arg(tmp.path().join(d));
            if d == "a" {
                cmd.args(a_args);
            }
            procs.push(MailServer::start(cmd));
        }
        LabMail {
            lab,
            procs,
            _tmp: tmp,
        }
    }

    /// Runs `nuage mail ARGS… --server <m's server>` on machine `m`; its stdout.
    fn client(&self, m: &str, args: &[&str]) -> String {
        let server = format!("{}:2525", self.lab.addr(m).unwrap());
        let mut all = vec!["mail", args[0], "--server", &server];
        all.extend_from_slice(&args[1..]);
        ok(self.lab.exec(m, env!("CARGO_BIN_EXE_nuage"), &all).unwrap())
    }

    fn send(&self, m: &str, from: &str, to: &str, text: &str) {
        self.client(m, &["send", "--from", from, "--to", to, text]);
    }

    /// `mail read` of `owner`'s mailbox on machine `m`: the raw output.
    fn read(&self, m: &str, owner: &str) -> String {
        self.client(m, &["read", owner])
    }

    /// Afida writes to Brandon and Nabilla; once Brandon has it, he replies to both.
    fn afida_then_brandon(&self) {
        self.send("n1", "afida@a", "brandon@b,nabilla@n", "Lunch at noon?");
        wait_for(Duration::from_secs(10), "Afida's message at b", || {
            (!parse_mailbox(&self.read("n2", "brandon@b")).is_empty()).then_some(())
        });
        self.send("n2", "brandon@b", "afida@a,nabilla@n", "Yes, see you");
    }

    fn stop(self) {
        for p in self.procs {
            p.stop();
        }
    }
}

/// The scenario with each server on its own lab machine and the a→n link slowed.
fn lab_scenario(order: &str) -> Option<(Vec<String>, bool)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return None;
    }
    let tag = if order == "fifo" { "mf" } else { "mc" };
    let mail = LabMail::start(
        &format!("{tag}-{}", std::process::id()),
        &["--order", order],
        &["--delay-to", "n=8000"],
    );
    mail.afida_then_brandon();
    let mut wrong = false;
    let mut held_seen = false;
    let nabilla = wait_for(Duration::from_secs(30), "both messages at n", || {
        let out = mail.read("n3", "nabilla@n");
        held_seen |= out.contains("1 more held back");
        let m = parse_mailbox(&out);
        if m.first().is_some_and(|(_, from)| from == "brandon@b") {
            wrong = true;
        }
        (m.len() == 2).then_some(m)
    });
    // In causal mode the reply did reach n first, and was held back.
    assert_eq!(held_seen, order == "causal");
    mail.stop();
    Some((nabilla.into_iter().map(|(_, f)| f).collect(), wrong))
}

#[test]
fn lab_three_servers_causal_order_never_shows_the_reply_first() {
    if let Some((senders, wrong)) = lab_scenario("causal") {
        assert!(!wrong, "Nabilla saw the reply before the message");
        assert_eq!(senders, ["afida@a", "brandon@b"]);
    }
}

#[test]
fn lab_three_servers_fifo_order_shows_the_reply_first() {
    if let Some((senders, wrong)) = lab_scenario("fifo") {
        assert!(wrong);
        assert_eq!(senders, ["brandon@b", "afida@a"]);
    }
}

/// A real network fault instead of a delay: the link between a's and n's machines is
/// cut (nftables). Afida's copy for n waits in a's queue, Brandon's reply waits in n's
/// hold-back, and once the link heals both arrive, in causal order.
#[test]
fn lab_partitioned_link_queues_mail_and_keeps_causal_order() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let mut mail = LabMail::start(&format!("mp-{}", std::process::id()), &[], &[]);
    mail.lab.partition(&[vec!["n1"], vec!["n3"]]).unwrap();
    mail.afida_then_brandon();
    // The reply is at n, held back; Afida's copy is queued at a.
    wait_for(Duration::from_secs(10), "the reply held back at n", || {
        let out = mail.read("n3", "nabilla@n");
        assert!(parse_mailbox(&out).is_empty(), "{out}");
        out.contains("1 more held back").then_some(())
    });
    let queue = mail.client("n1", &["queue"]);
    assert!(queue.contains("queued for n: 1 message(s)"), "{queue}");
    mail.lab.heal().unwrap();
    let nabilla = wait_for(
        Duration::from_secs(40),
        "both messages at n after healing",
        || {
            let m = parse_mailbox(&mail.read("n3", "nabilla@n"));
            (m.len() == 2).then_some(m)
        },
    );
    let senders: Vec<&str> = nabilla.iter().map(|(_, f)| f.as_str()).collect();
    assert_eq!(senders, ["afida@a", "brandon@b"]);
    mail.stop();
}

/// `[mail] enabled = true` in nuage.toml: `nuage up` runs the mail server of the node,
/// keeps its mailboxes in the node's data dir, and stops it cleanly.
#[test]
fn mail_runs_as_a_service_of_nuage_up() {
    let (tmp, ports) = setup(&["a"]);
    let dir = tmp.path();
    let config = dir.join("nuage.toml");
    std::fs::write(
        &config,
        format!(
            "[mail]\nenabled = true\ndomain = \"a\"\nservers = \"{}\"\nport = {}\nbind = \"127.0.0.1\"\norder = \"causal\"\n",
            dir.join("servers").display(),
            ports[0]
        ),
    )
    .unwrap();
    let data = dir.join("node");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--api",
        "127.0.0.1:0",
        "--name",
        "mailnode",
    ];
    // The node prints its API line once every service has started.
    let mut node = start_up(&args);
    send(ports[0], "afida@a", "afida@a", "kept by the node");
    assert_eq!(mailbox(ports[0], "afida@a").len(), 1);
    assert!(data.join("mail").join("mail.db").exists());
    signal(&node.child, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut node.child, Duration::from_secs(15));
    assert!(status.success(), "nuage up exit status {status}");

    // A mistake in the table is reported with its line, and the node does not start.
    std::fs::write(&config, "[mail]\nenabled = true\ndomian = \"a\"\n").unwrap();
    let out = run(&[&["up"], &args[..]].concat());
    up_fails_with(out, "nuage.toml:3: key `mail.domian`: unknown key");
    std::fs::write(&config, "[mail]\nenabled = true\ndomain = \"a\"\n").unwrap();
    let out = run(&[&["up"], &args[..]].concat());
    up_fails_with(out, "[mail] servers is missing");
}
