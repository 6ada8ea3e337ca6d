//! `nuage group`: the real daemon binary, with clients of the nuage-group library (the
//! same wire protocol as Spread's) and raw sockets for protocol abuse.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nuage_group::client::blocking::Mailbox;
use nuage_group::client::{
    Cause, ConnectOptions, Membership, MembershipKind, Message, Received, Service,
};
use nuage_group::wire::{self, code, service};

use common::group::{Daemon, free_port};

const WAIT: Duration = Duration::from_secs(10);

fn next(mb: &Mailbox) -> Received {
    mb.receive_timeout(WAIT)
        .unwrap()
        .expect("a message within 10 s")
}

fn next_message(mb: &Mailbox) -> Message {
    match next(mb) {
        Received::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn next_membership(mb: &Mailbox) -> Membership {
    match next(mb) {
        Received::Membership(m) => m,
        other => panic!("expected a membership, got {other:?}"),
    }
}

fn assert_regular(m: &Membership, group: &str, cause: Cause, members: &[&str]) {
    assert_eq!(m.group, group);
    match &m.kind {
        MembershipKind::Regular { cause: c, .. } => assert_eq!(*c, cause, "{m:?}"),
        k => panic!("expected a regular membership, got {k:?}"),
    }
    assert_eq!(m.members, members);
}

#[test]
fn clients_join_multicast_leave_and_disconnect() {
    let d = Daemon::start("");
    let alice = d.unix("alice");
    assert_eq!(alice.private_group(), "#alice#d1");
    let bob = d.tcp("bob");
    assert_eq!(bob.private_group(), "#bob#d1");

    alice.join("g").unwrap();
    let m = next_membership(&alice);
    assert_regular(&m, "g", Cause::Join, &["#alice#d1"]);
    assert_eq!(m.my_index, Some(0));
    bob.join("g").unwrap();
    let ma = next_membership(&alice);
    let mb = next_membership(&bob);
    assert_regular(&ma, "g", Cause::Join, &["#alice#d1", "#bob#d1"]);
    assert_eq!(ma.members, mb.members);
    assert_eq!(ma.group_id, mb.group_id, "one group id at every member");
    assert_ne!(ma.group_id, m.group_id, "a new view, a new id");
    assert_eq!((ma.my_index, mb.my_index), (Some(0), Some(1)));
    assert_eq!(ma.vs_sets, [vec!["#bob#d1".to_string()]]);

    // Every service level; both members receive every message, in one order.
    let levels = [
        Service::Unreliable,
        Service::Reliable,
        Service::Fifo,
        Service::Causal,
        Service::Agreed,
        Service::Safe,
    ];
    for (i, s) in levels.iter().enumerate() {
        alice
            .multicast(*s, &["g"], i as i16 - 3, format!("body {i}").as_bytes())
            .unwrap();
    }
    for who in [&alice, &bob] {
        for (i, s) in levels.iter().enumerate() {
            let m = next_message(who);
            assert_eq!(m.service(), Some(*s));
            assert_eq!(m.sender, "#alice#d1");
            assert_eq!(m.groups, ["g"]);
            assert_eq!(m.mess_type, i as i16 - 3);
            assert_eq!(&m.data[..], format!("body {i}").as_bytes());
            assert!(!m.endian_mismatch);
        }
    }

    // SELF_DISCARD: bob gets it, alice does not (her next message is the marker).
    alice
        .multicast_bits(
            service::AGREED_MESS | service::SELF_DISCARD,
            &["g"],
            0,
            b"not for me",
        )
        .unwrap();
    alice
        .multicast(Service::Agreed, &["g"], 0, b"marker")
        .unwrap();
    assert_eq!(&next_message(&bob).data[..], b"not for me");
    assert_eq!(&next_message(&bob).data[..], b"marker");
    assert_eq!(&next_message(&alice).data[..], b"marker");

    // To a private group, and to several groups at once: one copy each.
    alice
        .multicast(Service::Fifo, &["#bob#d1", "g"], 7, b"direct")
        .unwrap();
    let m = next_message(&bob);
    assert_eq!((m.groups.len(), &m.data[..]), (2, &b"direct"[..]));
    assert_eq!(&next_message(&alice).data[..], b"direct");
    alice
        .multicast(Service::Fifo, &["#bob#d1"], 7, b"only bob")
        .unwrap();
    alice.multicast(Service::Fifo, &["g"], 7, b"sync").unwrap();
    assert_eq!(&next_message(&bob).data[..], b"only bob");
    assert_eq!(&next_message(&bob).data[..], b"sync");
    assert_eq!(&next_message(&alice).data[..], b"sync");

    // The largest body fits; one byte more is refused by the library.
    let big = vec![7u8; wire::MAX_MESSAGE_BODY_LEN - wire::HEADER_LEN - wire::MAX_GROUP_NAME];
    alice.multicast(Service::Safe, &["g"], 1, &big).unwrap();
    assert_eq!(next_message(&bob).data.len(), big.len());
    assert_eq!(next_message(&alice).data.len(), big.len());
    let too_big = vec![7u8; big.len() + 1];
    let e = alice
        .multicast(Service::Safe, &["g"], 1, &too_big)
        .unwrap_err();
    assert_eq!(e.code, code::MESSAGE_TOO_LONG);

    // Leave: bob is told he left; alice sees the LEAVE.
    bob.leave("g").unwrap();
    let m = next_membership(&bob);
    assert_eq!((m.kind, m.group.as_str()), (MembershipKind::SelfLeave, "g"));
    let m = next_membership(&alice);
    assert_regular(&m, "g", Cause::Leave, &["#alice#d1"]);
    assert_eq!(m.vs_sets, [vec!["#bob#d1".to_string()]]);

    // A client that vanishes without a word is a DISCONNECT.
    bob.join("g").unwrap();
    assert_regular(
        &next_membership(&alice),
        "g",
        Cause::Join,
        &["#alice#d1", "#bob#d1"],
    );
    drop(bob);
    let m = next_membership(&alice);
    assert_regular(&m, "g", Cause::Disconnect, &["#alice#d1"]);
    // So is SP_disconnect; the name is free again afterwards.
    let carol = d.unix("carol");
    carol.join("g").unwrap();
    assert_regular(
        &next_membership(&alice),
        "g",
        Cause::Join,
        &["#alice#d1", "#carol#d1"],
    );
    carol.disconnect().unwrap();
    assert_regular(
        &next_membership(&alice),
        "g",
        Cause::Disconnect,
        &["#alice#d1"],
    );
    let deadline = Instant::now() + WAIT;
    loop {
        match Mailbox::connect(&d.port.to_string(), "carol", &d.opts()) {
            Ok(_) => break,
            Err(e) if e.code == code::REJECT_NOT_UNIQUE && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn names_are_checked_and_unique() {
    let d = Daemon::start("");
    let _a = d.unix("same");
    let e = Mailbox::connect(&d.port.to_string(), "same", &d.opts())
        .err()
        .unwrap();
    assert_eq!(e.code, code::REJECT_NOT_UNIQUE);
    let e = Mailbox::connect(&d.port.to_string(), "elevenchars", &d.opts())
        .err()
        .unwrap();
    assert_eq!(e.code, code::REJECT_ILLEGAL_NAME);
    // An empty name: the daemon invents one.
    let anon = d.unix("");
    assert!(
        anon.private_group().ends_with("#d1"),
        "{}",
        anon.private_group()
    );
    let e = anon.join(&"g".repeat(32)).unwrap_err();
    assert_eq!(e.code, code::ILLEGAL_GROUP);
    // Nobody there.
    let e = Mailbox::connect("1@127.0.0.1", "x", &d.opts())
        .err()
        .unwrap();
    assert_eq!(e.code, code::COULD_NOT_CONNECT);
}

/// Reads until the daemon closes the connection (a reset counts: it closed with our
/// bytes unread).
fn assert_closed(s: &mut std::os::unix::net::UnixStream) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected the daemon to close the session: {e}"),
    }
}

/// Connects by hand; returns the stream after the daemon accepted.
fn raw_connect(path: &Path, name: &str) -> std::os::unix::net::UnixStream {
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&wire::encode_connect(wire::PROTOCOL_VERSION, name, 0, true))
        .unwrap();
    let mut auth = [0u8; 6];
    s.read_exact(&mut auth).unwrap();
    assert_eq!(&auth, b"\x05NULL ");
    s.write_all(&wire::encode_auth_choice("NULL")).unwrap();
    let mut accept = vec![0u8; 5 + name.len() + 4];
    s.read_exact(&mut accept).unwrap();
    assert_eq!(accept[0], 1, "ACCEPT_SESSION");
    s
}

#[test]
fn raw_protocol_abuse_ends_only_that_session() {
    let d = Daemon::start("");
    let alice = d.unix("alice");
    alice.join("g").unwrap();
    next_membership(&alice);

    // The exact bytes of Spread 5.0.1's accept.
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.write_all(b"\x05\x00\x01\x01\x04raw1").unwrap();
    let mut auth = [0u8; 6];
    s.read_exact(&mut auth).unwrap();
    s.write_all(&wire::encode_auth_choice("NULL")).unwrap();
    let mut accept = [0u8; 13];
    s.read_exact(&mut accept).unwrap();
    assert_eq!(&accept, b"\x01\x05\x00\x01\x08#raw1#d1");

    // A header with two service bits: the daemon ends the session and says why.
    let mut frame = wire::encode_message(
        service::SAFE_MESS,
        "#raw1#d1",
        &["g"],
        wire::hint_for(0),
        b"x",
    )
    .to_vec();
    frame[0] |= service::AGREED_MESS as u8;
    s.write_all(&frame).unwrap();
    assert_closed(&mut s);
    assert!(d.log_contains("#raw1#d1"), "a log line names the client");

    // A header naming someone else as sender.
    let mut s = raw_connect(&d.socket(), "raw2");
    let forged = wire::encode_message(
        service::SAFE_MESS,
        "#alice#d1",
        &["g"],
        wire::hint_for(0),
        b"x",
    );
    s.write_all(&forged).unwrap();
    assert_closed(&mut s);

    // A header announcing a body over the limit.
    let mut s = raw_connect(&d.socket(), "raw3");
    let mut frame = wire::encode_message(
        service::SAFE_MESS,
        "#raw3#d1",
        &["g"],
        wire::hint_for(0),
        b"",
    )
    .to_vec();
    frame[44..48].copy_from_slice(&1_000_000i32.to_le_bytes());
    s.write_all(&frame).unwrap();
    assert_closed(&mut s);

    // A client version that is too old gets REJECT_VERSION; garbage names are refused.
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.write_all(b"\x03\x00\x01\x01x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b[0] as i8 as i32, code::REJECT_VERSION);
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.write_all(b"\x05\x00\x01\x01\x03a b").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(b[0] as i8 as i32, code::REJECT_ILLEGAL_NAME);
    // A connection that says nothing is closed after the connect timeout.
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(s.read(&mut b).unwrap(), 0);

    // None of it harmed the daemon or alice: no trace of the bad senders in g.
    alice
        .multicast(Service::Agreed, &["g"], 0, b"still here")
        .unwrap();
    assert_eq!(&next_message(&alice).data[..], b"still here");
}

#[test]
fn a_client_that_does_not_read_is_disconnected() {
    let d = Daemon::start("MaxSessionMessages = 20\n");
    let fast = d.unix("fast");
    let slow = d.unix("slow");
    slow.join("g").unwrap();
    fast.join("g").unwrap();
    while next_membership(&fast).members.len() < 2 {}
    // 40 MB: more than any socket buffer, so the daemon's queue for `slow` fills.
    let body = vec![1u8; 100_000];
    for _ in 0..400 {
        if fast
            .multicast(Service::Reliable, &["#slow#d1"], 0, &body)
            .is_err()
        {
            break;
        }
    }
    assert!(d.log_contains("#slow#d1 has more than 20 unread messages"));
    let m = next_membership(&fast);
    assert_regular(&m, "g", Cause::Disconnect, &["#fast#d1"]);
    // `slow` reads what was buffered, then finds the connection closed.
    let deadline = Instant::now() + WAIT;
    loop {
        match slow.receive_timeout(WAIT) {
            Ok(Some(_)) => assert!(Instant::now() < deadline, "never closed"),
            Ok(None) => panic!("neither a message nor the end"),
            Err(e) => {
                assert_eq!(e.code, code::CONNECTION_CLOSED);
                break;
            }
        }
    }
}

#[test]
fn bad_configuration_is_one_line_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("spread.conf");
    std::fs::write(
        &conf,
        "Spread_Segment 127.0.0.255:4803 {\n  d1 127.0.0.\n}\n",
    )
    .unwrap();
    let out = common::nuage()
        .args(["group", "daemon", "-c"])
        .arg(&conf)
        .arg("--runtime-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(err.starts_with("nuage: error: "), "{err}");
    assert!(
        err.contains("spread.conf:2: `127.0.0.` is not an IP address"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // A name that is not in the file.
    std::fs::write(
        &conf,
        "Spread_Segment 127.0.0.255:4803 {\n  d1 127.0.0.1\n}\n",
    )
    .unwrap();
    let out = common::nuage()
        .args(["group", "daemon", "-n", "d9", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(common::stderr(&out).contains("no daemon named `d9`"));
}

#[test]
fn shell_speaks_like_spuser_and_status_shows_the_groups() {
    let d = Daemon::start("");
    let mut sh = common::nuage()
        .args([
            "group",
            "shell",
            "-u",
            "alice",
            "-s",
            &d.port.to_string(),
            "--runtime-dir",
        ])
        .arg(d.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = sh.stdin.take().unwrap();
    let stdout = sh.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = tx.send(all.clone());
        }
    });
    let mut last = String::new();
    let mut wait_for = |what: &str| -> String {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(s) = rx.recv_timeout(Duration::from_millis(100)) {
                last = s;
            }
            if last.contains(what) {
                return last.clone();
            }
        }
        panic!("the shell never printed {what:?}; it printed:\n{last}");
    };
    wait_for("User: connected to");
    wait_for("\tm <group> -- send a multiline message to group. Terminate with empty line\n");
    writeln!(stdin, "j g").unwrap();
    wait_for(
        "Received REGULAR membership for group g with 1 members, where I am member 0:\n\t#alice#d1\ngrp id is ",
    );
    wait_for("Due to the JOIN of #alice#d1\n");
    let bob = d.unix("bob");
    bob.join("g").unwrap();
    wait_for("with 2 members, where I am member 0:\n\t#alice#d1\n\t#bob#d1\n");
    writeln!(stdin, "s g").unwrap();
    writeln!(stdin, "hello from alice").unwrap();
    next_membership(&bob);
    let m = next_message(&bob);
    assert_eq!((m.service(), m.mess_type), (Some(Service::Safe), 1));
    assert_eq!(
        &m.data[..],
        b"hello from alice\n",
        "spuser sends the line with its newline"
    );
    wait_for(
        "received SAFE message from #alice#d1, of type 1, (endian 0) to 1 groups \n(17 bytes): hello from alice\n",
    );
    bob.multicast(Service::Agreed, &["g"], 9, b"hi alice")
        .unwrap();
    assert_eq!(&next_message(&bob).data[..], b"hi alice");
    wait_for(
        "received AGREED message from #bob#d1, of type 9, (endian 0) to 1 groups \n(8 bytes): hi alice\n",
    );
    writeln!(stdin, "b g").unwrap();
    writeln!(stdin, "30").unwrap();
    wait_for("sending 10 messages of 30 bytes\n");
    wait_for("sent message 10 (total 11)\n");
    for i in 0..10 {
        let m = next_message(&bob);
        assert_eq!(
            (m.service(), m.mess_type, m.data.len()),
            (Some(Service::Fifo), 2, 30)
        );
        assert!(
            m.data
                .starts_with(format!("mess num {} ", i + 2).as_bytes())
        );
    }
    // Alice's own burst comes back; then, with asynchronous reading off, `r` reads one
    // message and spuser's prompt comes twice (after the message, after the command).
    wait_for("(30 bytes): mess num 11 \n");
    writeln!(stdin, "d").unwrap();
    // `p` answers only once `d` has been read: bob's message must not reach the shell
    // while it still reads asynchronously (it would print it, and `r` would wait forever).
    writeln!(stdin, "p").unwrap();
    wait_for("Polling sais: 0\n");
    bob.multicast(Service::Reliable, &["g"], 3, b"ping")
        .unwrap();
    assert_eq!(&next_message(&bob).data[..], b"ping");
    writeln!(stdin, "r").unwrap();
    wait_for(
        "received RELIABLE message from #bob#d1, of type 3, (endian 0) to 1 groups \n(4 bytes): ping\n\nUser> \nUser> ",
    );
    writeln!(stdin, "e").unwrap();
    // Errors print as Spread's SP_error does, word for word.
    writeln!(stdin, "j {}", "x".repeat(40)).unwrap();
    wait_for("SP_error: (-14) Illegal group\n");

    let status = common::run(&[
        "group",
        "status",
        "-s",
        &d.port.to_string(),
        "--runtime-dir",
        d.dir.path().to_str().unwrap(),
    ]);
    let text = common::stdout(&status);
    assert!(status.status.success(), "{}", common::stderr(&status));
    assert!(text.contains("daemon      d1"), "{text}");
    assert!(text.contains("(operational)"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("g ") && l.contains("#alice#d1 #bob#d1")),
        "{text}"
    );

    writeln!(stdin, "l g").unwrap();
    wait_for("received membership message that left group g\n");
    writeln!(stdin, "q").unwrap();
    wait_for("\nBye.\n");
    assert!(sh.wait().unwrap().success());
    let m = next_membership(&bob);
    assert_regular(&m, "g", Cause::Leave, &["#bob#d1"]);
}

/// Three daemons on loopback (one port each), a ring over UDP.
struct Trio {
    dir: tempfile::TempDir,
    conf: PathBuf,
    ports: [u16; 3],
    children: Vec<Option<Child>>,
}

impl Trio {
    fn start() -> Trio {
        let dir = tempfile::tempdir().unwrap();
        let ports = [free_port(), free_port(), free_port()];
        let mut text = String::from("TokenTimeout = 1000\nHurryTimeout = 300\n");
        for (i, p) in ports.iter().enumerate() {
            text.push_str(&format!(
                "Spread_Segment 127.0.0.255:{p} {{\n  d{} 127.0.0.1\n}}\n",
                i + 1
            ));
        }
        let conf = dir.path().join("spread.conf");
        std::fs::write(&conf, text).unwrap();
        let mut t = Trio {
            dir,
            conf,
            ports,
            children: Vec::new(),
        };
        for i in 0..3 {
            let c = t.spawn(i);
            t.children.push(Some(c));
        }
        t
    }

    fn spawn(&self, i: usize) -> Child {
        let mut cmd = common::nuage();
        cmd.args([
            "group",
            "daemon",
            "-l",
            "n",
            "-n",
            &format!("d{}", i + 1),
            "-c",
        ])
        .arg(&self.conf)
        .arg("--runtime-dir")
        .arg(self.dir.path());
        common::group::spawn_ready(cmd, Stdio::null())
    }

    fn client(&self, i: usize, name: &str) -> Mailbox {
        let opts = ConnectOptions {
            runtime_dir: Some(self.dir.path().to_path_buf()),
            ..ConnectOptions::default()
        };
        Mailbox::connect(&self.ports[i].to_string(), name, &opts).unwrap()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Trio {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

/// Waits for the membership of `group` with exactly `n` members (skipping others).
fn wait_members(mb: &Mailbox, group: &str, n: usize) -> Membership {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no view of {n} members in time");
        if let Some(Received::Membership(m)) = mb.receive_timeout(Duration::from_secs(30)).unwrap()
            && m.group == group
            && m.members.len() == n
            && matches!(m.kind, MembershipKind::Regular { .. })
        {
            return m;
        }
    }
}

#[test]
fn three_daemons_agree_and_survive_a_daemon_crash() {
    let mut t = Trio::start();
    let clients: Vec<Mailbox> = (0..3)
        .map(|i| t.client(i, &format!("c{}", i + 1)))
        .collect();
    // The daemons find each other; a member's view grows to all three clients.
    for c in &clients {
        c.join("g").unwrap();
    }
    let views: Vec<Membership> = clients.iter().map(|c| wait_members(c, "g", 3)).collect();
    let expected = ["#c1#d1", "#c2#d2", "#c3#d3"];
    for v in &views {
        assert_eq!(v.members, expected, "ordered by daemon, then name");
        assert_eq!(v.group_id, views[0].group_id);
    }
    assert_eq!(
        views.iter().map(|v| v.my_index).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );

    // Everyone sends AGREED and SAFE at once; everyone receives all, in one order.
    const EACH: usize = 30;
    std::thread::scope(|s| {
        for (i, c) in clients.iter().enumerate() {
            s.spawn(move || {
                for k in 0..EACH {
                    let svc = if k % 2 == 0 {
                        Service::Agreed
                    } else {
                        Service::Safe
                    };
                    c.multicast(svc, &["g"], i as i16, format!("{i}:{k}").as_bytes())
                        .unwrap();
                }
            });
        }
    });
    let mut orders = Vec::new();
    for c in &clients {
        let mut got = Vec::new();
        while got.len() < 3 * EACH {
            let m = next_message(c);
            got.push(String::from_utf8(m.data.to_vec()).unwrap());
        }
        // FIFO per sender.
        for i in 0..3 {
            let ks: Vec<usize> = got
                .iter()
                .filter_map(|s| s.strip_prefix(&format!("{i}:")))
                .map(|k| k.parse().unwrap())
                .collect();
            assert_eq!(ks, (0..EACH).collect::<Vec<_>>());
        }
        orders.push(got);
    }
    assert_eq!(orders[0], orders[1], "one total order");
    assert_eq!(orders[0], orders[2], "one total order");

    // d3 crashes: c1 and c2 see TRANSITIONAL, then a network view without c3.
    t.kill(2);
    for c in &clients[..2] {
        let m = next_membership(c);
        assert_eq!(m.kind, MembershipKind::Transitional, "{m:?}");
        let m = next_membership(c);
        assert_regular(&m, "g", Cause::Network, &["#c1#d1", "#c2#d2"]);
        assert_eq!(
            m.vs_sets,
            [vec!["#c1#d1".to_string(), "#c2#d2".to_string()]]
        );
    }
    let e = clients[2].receive_timeout(WAIT).unwrap_err();
    assert_eq!(e.code, code::CONNECTION_CLOSED);
    clients[0]
        .multicast(Service::Safe, &["g"], 0, b"after")
        .unwrap();
    assert_eq!(&next_message(&clients[1]).data[..], b"after");
    assert_eq!(&next_message(&clients[0]).data[..], b"after");

    // d3 comes back; its new client joins the others' group.
    let c = t.spawn(2);
    t.children[2] = Some(c);
    let c3 = t.client(2, "c3");
    c3.join("g").unwrap();
    let v = wait_members(&c3, "g", 3);
    assert_eq!(v.members, expected);
    let v1 = wait_members(&clients[0], "g", 3);
    assert_eq!(v1.group_id, v.group_id);
}

/// `nuage up -c CONFIG` as an operator runs it: without the test helpers'
/// `NUAGE_GROUP_ENABLED=false`, so the group daemon's default applies.
fn up_as_operator(config: &Path) -> std::process::Command {
    let mut cmd = common::nuage();
    cmd.env_remove(nuage_group::service::ENABLED_ENV)
        .args(["up", "--config"])
        .arg(config)
        .stdin(Stdio::null());
    cmd
}

/// Starts `cmd` (a `nuage up`) and reads its stdout up to the API line.
fn start_node(mut cmd: std::process::Command) -> common::UpNode {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    std::thread::spawn(move || for _ in reader.lines() {});
    common::UpNode {
        child,
        api,
        stdout_lines: lines,
    }
}

#[test]
fn nuage_up_runs_a_group_daemon_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = tmp.path().join("nuage.toml");
    // No `enabled` key: on by default. (A free port, as tests on a shared host must.)
    std::fs::write(
        &config,
        format!(
            "name = \"solo\"\naddress = \"127.0.0.1\"\ndata_dir = \"state\"\n[listen]\napi = \"127.0.0.1:0\"\n[group]\nport = {port}\nruntime_dir = \"{}\"\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let mut node = start_node(up_as_operator(&config));
    let info: serde_json::Value =
        serde_json::from_str(&common::http_get(&node.api, "/v1/node").1).unwrap();
    let services = info["services"].to_string();
    assert!(services.contains("group"), "{services}");
    assert!(
        services.contains(&format!("127.0.0.1:{port}")),
        "{services}"
    );
    let opts = ConnectOptions {
        runtime_dir: Some(tmp.path().to_path_buf()),
        ..ConnectOptions::default()
    };
    let mb = Mailbox::connect(&port.to_string(), "u", &opts).unwrap();
    assert_eq!(mb.private_group(), "#u#solo");
    mb.join("g").unwrap();
    next_membership(&mb);
    mb.multicast(Service::Safe, &["g"], 0, b"via nuage up")
        .unwrap();
    assert_eq!(&next_message(&mb).data[..], b"via nuage up");
    let (code, body) = common::http_get(&node.api, "/v1/group/status");
    assert_eq!(code, 200, "{body}");
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["daemon"], "solo");
    assert_eq!(st["groups"][0]["group"], "g");
    assert_eq!(st["groups"][0]["members"][0], "#u#solo");
    common::signal(&node.child, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        common::wait_exit(&mut node.child, Duration::from_secs(15)).code(),
        Some(0)
    );
    assert!(
        !tmp.path().join(port.to_string()).exists(),
        "the socket is removed"
    );
}

#[test]
fn nuage_up_refuses_to_start_when_the_group_port_is_taken_and_can_turn_the_daemon_off() {
    let tmp = tempfile::tempdir().unwrap();
    // Another program (say, a Spread daemon) holds the port.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let config = tmp.path().join("nuage.toml");
    let write = |group_extra: &str| {
        std::fs::write(
            &config,
            format!(
                "name = \"solo\"\naddress = \"127.0.0.1\"\ndata_dir = \"state\"\n[listen]\napi = \"127.0.0.1:0\"\n[group]\nport = {port}\nruntime_dir = \"{}\"\n{group_extra}",
                tmp.path().display()
            ),
        )
        .unwrap();
    };
    write("");
    let out = up_as_operator(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("nuage: error: "), "{err}");
    for part in [
        "group",
        &format!("127.0.0.1:{port}"),
        "already in use",
        "[group] port",
        "enabled = false",
    ] {
        assert!(last.contains(part), "`{part}` missing from: {err}");
    }

    // `enabled = false`: the node starts without it.
    write("enabled = false\n");
    let mut node = start_node(up_as_operator(&config));
    let info: serde_json::Value =
        serde_json::from_str(&common::http_get(&node.api, "/v1/node").1).unwrap();
    let services = info["services"].to_string();
    assert!(!services.contains("\"group\""), "{services}");
    assert_eq!(common::http_get(&node.api, "/v1/group/status").0, 404);
    common::signal(&node.child, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        common::wait_exit(&mut node.child, Duration::from_secs(15)).code(),
        Some(0)
    );

    // So does NUAGE_GROUP_ENABLED=false when nuage.toml does not say; a value that is
    // not a boolean is an error.
    write("");
    let mut cmd = up_as_operator(&config);
    cmd.env(nuage_group::service::ENABLED_ENV, "false");
    let mut node = start_node(cmd);
    common::signal(&node.child, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        common::wait_exit(&mut node.child, Duration::from_secs(15)).code(),
        Some(0)
    );
    let mut cmd = up_as_operator(&config);
    cmd.env(nuage_group::service::ENABLED_ENV, "maybe");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("NUAGE_GROUP_ENABLED=`maybe` is neither true nor false"),
        "{}",
        common::stderr(&out)
    );
    drop(holder);
}
