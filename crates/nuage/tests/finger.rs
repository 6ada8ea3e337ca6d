//! `nuage finger …` end to end: the real binary over loopback against a fake system (its
//! own passwd, login records and home directories, given by option), and, as root, the
//! standard finger(1) client in a lab machine asking nuage's server on port 79 and the
//! system's fingerd about the same system, which must answer the same.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use nuage_coord::finger::records::{
    LASTLOG_RECORD, Login, encode_lastlog_record, encode_utmp_record,
};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write(path: &Path, text: impl AsRef<[u8]>, mode: u32) {
    std::fs::write(path, text).unwrap();
    chmod(path, mode);
}

fn set_times(path: &Path, atime: i64, mtime: i64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let t = |s: i64| UNIX_EPOCH + Duration::from_secs(s as u64);
    f.set_times(
        std::fs::FileTimes::new()
            .set_accessed(t(atime))
            .set_modified(t(mtime)),
    )
    .unwrap();
}

/// A system to finger, in a temporary directory anyone may enter (fingerd runs finger(1)
/// as `nobody`): `passwd`, `utmp`, `wtmp`, `lastlog`, `mail/`, `pts/` (terminals) and
/// `home/<user>/`. Every time shown is fixed, or stable for half an hour, so two servers
/// asked a few seconds apart answer the same.
struct FakeSystem {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

/// Alice is logged in twice (one terminal idle for days, messages off) and has a plan
/// and a project; Bob is logged in, has unread mail and forwards it; Carol last logged
/// in 200 days ago; Dave never did and his plan holds an escape sequence; Erin hides
/// behind ~/.nofinger; Frank is on an X display. (Not here: a login whose terminal
/// device is gone, which `Server::start` adds. finger(1) 0.17-17 segfaults listing four
/// logins when one is like that, and fingerd then sends nothing.)
fn fake_system(passwd_prefix: &str) -> FakeSystem {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    chmod(&root, 0o755);
    let now = now();
    let home = root.join("home");
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        std::fs::create_dir_all(home.join(user)).unwrap();
        chmod(&home.join(user), 0o755);
    }
    chmod(&home, 0o755);
    let h = home.display();
    write(
        &root.join("passwd"),
        format!(
            "{passwd_prefix}\
             alice:x:1001:1001:Alice Liddell,Room 12,555-1234,5559876:{h}/alice:/bin/bash\n\
             bob:x:1002:1002:& Builder:{h}/bob:/bin/sh\n\
             carol:x:1003:1003:Carol,,5551234567,:{h}/carol:\n\
             dave:x:1004:1004::{h}/dave:/bin/bash\n\
             erin:x:1005:1005:Erin Liddell:{h}/erin:/bin/bash\n\
             frank:x:1006:1006:Frank Zappa:{h}/frank:/bin/sh\n"
        ),
        0o644,
    );
    let login = |user: &str, line: &str, host: &str, time: i64| Login {
        user: user.into(),
        line: line.into(),
        host: host.into(),
        time,
    };
    let mut utmp = encode_utmp_record(&login("alice", "pts/5", "10.0.0.9", now - 3600), 100);
    utmp.extend(encode_utmp_record(
        &login("alice", "pts/3", "", now - 7200),
        101,
    ));
    utmp.extend(encode_utmp_record(
        &login("bob", "pts/6", "", now - 600),
        102,
    ));
    utmp.extend(encode_utmp_record(
        &login("frank", ":0", "", now - 900),
        104,
    ));
    // Logged in but without an account: shown by nobody.
    utmp.extend(encode_utmp_record(
        &login("ghost", "pts/7", "", now - 60),
        103,
    ));
    write(&root.join("utmp"), utmp, 0o644);
    let mut lastlog = vec![0u8; LASTLOG_RECORD * 1007];
    lastlog[LASTLOG_RECORD * 1003..LASTLOG_RECORD * 1004].copy_from_slice(&encode_lastlog_record(
        now - 86_400 * 200,
        "pts/9",
        "old.example",
    ));
    write(&root.join("lastlog"), lastlog, 0o644);
    write(&root.join("wtmp"), b"", 0o644);
    let pts = root.join("pts");
    std::fs::create_dir_all(&pts).unwrap();
    chmod(&pts, 0o755);
    // Terminals touched in the future read as not idle at all; pts/3 has been idle for
    // 3 days, 5 hours and 30 minutes.
    for (tty, mode, atime) in [
        ("5", 0o620, now + 86_400),
        ("3", 0o600, now - (86_400 * 3 + 5 * 3600 + 1800)),
        ("6", 0o620, now + 86_400),
    ] {
        let p = pts.join(tty);
        write(&p, b"", mode);
        set_times(&p, atime, atime);
    }
    let mail = root.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    chmod(&mail, 0o755);
    write(&mail.join("bob"), "From alice\n", 0o644);
    set_times(&mail.join("bob"), now - 5000, now - 1000);
    write(
        &home.join("alice/.plan"),
        "Write a finger daemon.\n\tThen mail.",
        0o644,
    );
    write(&home.join("alice/.project"), "nuage\n", 0o644);
    write(&home.join("bob/.forward"), "bob@elsewhere.example\n", 0o644);
    write(&home.join("carol/.plan"), "private\n", 0o600);
    write(&home.join("dave/.plan"), "red: \x1b[31mred\n", 0o644);
    write(&home.join("erin/.nofinger"), "", 0o644);
    FakeSystem { _dir: dir, root }
}

/// A running `nuage finger serve` on loopback, answering from a fake system.
struct Server {
    child: Child,
    port: u16,
    sys: FakeSystem,
    pid_file: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start() -> Server {
        let sys = fake_system("root:x:0:0:root:/root:/bin/bash\n");
        // Frank is also on a terminal whose device is gone.
        let gone = Login {
            user: "frank".into(),
            line: "pts/44".into(),
            host: String::new(),
            time: now() - 800,
        };
        std::fs::OpenOptions::new()
            .append(true)
            .open(sys.root.join("utmp"))
            .unwrap()
            .write_all(&encode_utmp_record(&gone, 105))
            .unwrap();
        let pid_file = sys.root.join("finger.pid");
        let log = sys.root.join("queries.log");
        let r = &sys.root;
        let mut child = nuage()
            .args(["finger", "serve", "--port", "0", "--bind", "127.0.0.1"])
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--log")
            .arg(&log)
            .arg("--passwd")
            .arg(r.join("passwd"))
            .arg("--utmp")
            .arg(r.join("utmp"))
            .arg("--wtmp")
            .arg(r.join("wtmp"))
            .arg("--lastlog")
            .arg(r.join("lastlog"))
            .arg("--dev")
            .arg(r)
            .arg("--mail-dir")
            .arg(r.join("mail"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.starts_with("finger server listening on "), "{first}");
        let port = first.trim().rsplit(':').next().unwrap().parse().unwrap();
        Server {
            child,
            port,
            sys,
            pid_file,
            log,
        }
    }

    /// Sends raw bytes as the query and returns the whole answer.
    fn raw(&self, query: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(query).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        String::from_utf8(answer).unwrap()
    }

    fn finger(&self, args: &[&str]) -> std::process::Output {
        let port = self.port.to_string();
        let mut all = vec!["finger", "--port", &port];
        all.extend_from_slice(args);
        run(&all)
    }
}

/// A test's server ends with the test (else every run left a daemon behind).
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The query log once it has at least `lines` lines (within 10 s).
fn read_log(path: &Path, lines: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.lines().count() >= lines {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the log has not {lines} lines: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn server_answers_users_the_logged_in_list_and_w() {
    let server = Server::start();
    let home = server.sys.root.join("home");

    // A user, both ways of asking.
    let out = ok(server.finger(&["alice@127.0.0.1"]));
    let expected_head = format!(
        "[127.0.0.1]\nLogin: alice          \t\t\tName: Alice Liddell\n\
         Directory: {:<25}\tShell: /bin/bash\n\
         Office: Room 12, 555-1234\t\tHome Phone: 555-9876\n",
        home.join("alice").display()
    );
    assert!(out.starts_with(&expected_head), "{out}");
    assert!(out.contains("on pts/5 from 10.0.0.9\n"), "{out}");
    assert!(
        out.contains("on pts/3   3 days 5 hours idle\n     (messages off)\n"),
        "{out}"
    );
    assert!(
        out.ends_with("No mail.\nProject:\nnuage\nPlan:\nWrite a finger daemon.\n\tThen mail.\n"),
        "{out}"
    );
    let out2 = ok(server.finger(&["--login", "alice", "--host", "127.0.0.1"]));
    assert_eq!(out, out2);

    // By a word of the real name; private plans stay private; escapes are made visible.
    let out = ok(server.finger(&["liddell@127.0.0.1"]));
    assert!(out.contains("Login: alice"), "{out}");
    assert!(!out.contains("Login: erin"), "erin has ~/.nofinger: {out}");
    let out = ok(server.finger(&["carol@127.0.0.1"]));
    assert!(out.contains("Last login "), "{out}");
    assert!(out.contains(" on pts/9 from old.example\n"), "{out}");
    assert!(
        out.ends_with("No Plan.\n") && !out.contains("private"),
        "{out}"
    );
    let out = ok(server.finger(&["dave@127.0.0.1"]));
    assert!(out.contains("Never logged in.\n"), "{out}");
    assert!(out.contains("Plan:\nred: ^[[31mred\n"), "{out}");
    assert!(!out.contains('\x1b'));
    let out = ok(server.finger(&["bob@127.0.0.1"]));
    assert!(
        out.contains("Mail forwarded to bob@elsewhere.example\n"),
        "{out}"
    );
    assert!(out.contains("New mail received "), "{out}");

    // A terminal finger(1) cannot look at: "messages off" in the long form.
    let out = ok(server.finger(&["frank@127.0.0.1"]));
    assert!(out.contains(" on :0 (messages off)\n"), "{out}");
    assert!(out.contains(" on pts/44 (messages off)\n"), "{out}");

    // Unknown users are named.
    let out = ok(server.finger(&["zed@127.0.0.1"]));
    assert_eq!(out, "[127.0.0.1]\nfinger: zed: no such user.\n");

    // The empty query: who is logged in, one line per login.
    let out = ok(server.finger(&["@127.0.0.1"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    assert_eq!(
        lines[1],
        "Login     Name            Tty      Idle  Login Time   Office     Office Phone"
    );
    assert!(
        lines[2].starts_with("alice     Alice Liddell   pts/5   "),
        "{out}"
    );
    assert!(lines[2].ends_with(" (10.0.0.9)"), "{out}");
    assert!(
        lines[3].starts_with("alice     Alice Liddell  *pts/3      3d  "),
        "{out}"
    );
    assert!(
        lines[4].starts_with("bob       Bob Builder     pts/6   "),
        "{out}"
    );
    // An X display is starred (finger(1) takes it as not writable); a terminal without
    // a device is not.
    assert!(
        lines[5].starts_with("frank     Frank Zappa    *:0      "),
        "{out}"
    );
    assert!(
        lines[6].starts_with("frank     Frank Zappa     pts/44  "),
        "{out}"
    );
    // /W (`-l`): the long form for everyone logged in.
    let out = ok(server.finger(&["-l", "@127.0.0.1"]));
    assert!(out.starts_with("[127.0.0.1]\nLogin: alice"), "{out}");
    assert!(out.contains("\n\nLogin: bob "), "{out}");
    // `/W name` on the wire, as finger(1) sends it.
    let raw = server.raw(b"/W alice\r\n");
    assert!(raw.starts_with("Login: alice"), "{raw}");
    assert!(raw.contains("\r\n") && !raw.replace("\r\n", "").contains('\n'));
}

#[test]
fn bad_queries_get_one_error_line_and_are_logged() {
    let server = Server::start();
    // Forwarding is refused (RFC 1288 §3.2.1), whether asked raw or by the client.
    assert_eq!(
        server.raw(b"alice@elsewhere\r\n"),
        "finger: forwarding service denied\r\n"
    );
    let out = ok(server.finger(&["alice@elsewhere@127.0.0.1"]));
    assert_eq!(out, "[127.0.0.1]\nfinger: forwarding service denied\n");
    // Control characters, over-long queries, options, non-text.
    assert_eq!(
        server.raw(b"alice\x1b[2J\r\n"),
        "finger: query contains control characters\r\n"
    );
    let mut long = vec![b'a'; 100_000];
    long.extend_from_slice(b"\r\n");
    assert_eq!(
        server.raw(&long),
        "finger: query too long (at most 512 bytes)\r\n"
    );
    assert!(server.raw(b"-l alice\r\n").contains("not a login name"));
    assert_eq!(
        server.raw(b"\xff\r\n"),
        "finger: query is not UTF-8 text\r\n"
    );
    // A query ended by LF alone, or by the client closing, is answered too.
    assert!(server.raw(b"alice\n").starts_with("Login: alice"));
    {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.write_all(b"bob").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("Login: bob"), "{answer}");
    }
    // The daemon survived all of it.
    assert!(server.raw(b"\r\n").starts_with("Login "));

    // Every query is in the log: time, client address, query, result.
    // (A connection is logged once it is closed, just after the client has its answer.)
    let log = read_log(&server.log, 9);
    let lines: Vec<&str> = log.lines().collect();
    let first = lines[0];
    assert!(first.contains("client=127.0.0.1:"), "{first}");
    assert!(
        first.contains("query=\"alice@elsewhere\" result=forwarding-refused"),
        "{first}"
    );
    let time = first.split(' ').next().unwrap();
    assert!(time.starts_with("20") && time.ends_with('Z'), "{first}");
    assert!(log.contains("result=too-long"), "{log}");
    assert!(
        log.contains("query=\"alice\\u{1b}[2J\" result=control-characters"),
        "{log}"
    );
    assert!(log.contains("query=\"bob\" result=ok (1 shown)"), "{log}");
    assert!(log.contains("query=\"\" result=ok (3 shown)"), "{log}");
}

#[test]
fn more_clients_at_once_than_slots_are_all_answered() {
    // 100 clients connected before any is answered: 64 are served at once (the
    // server's MAX_CONNECTIONS), the others wait to be accepted, and all get their answer.
    let server = Server::start();
    let streams: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"alice\r\n").unwrap();
            s
        })
        .collect();
    let answers: Vec<String> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut answer = String::new();
                s.read_to_string(&mut answer).unwrap();
                answer
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(answers.iter().all(|a| a.starts_with("Login: alice")));
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn a_silent_client_is_told_and_dropped() {
    let sys = fake_system("");
    let mut child = nuage()
        .args(["finger", "serve", "--port", "0", "--bind", "127.0.0.1"])
        .args(["--query-timeout", "1", "--passwd"])
        .arg(sys.root.join("passwd"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port: u16 = first.trim().rsplit(':').next().unwrap().parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "finger: no query within 1s\r\n");
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    fails_with(
        run(&["finger", "serve", "--port", "0", "--query-timeout", "0"]),
        "between 1 and 3600 seconds",
    );
}

#[test]
fn long_answers_are_read_whole_and_the_pid_file_lives_with_the_server() {
    let mut server = Server::start();
    // The pid file names the server while it runs.
    let pid = std::fs::read_to_string(&server.pid_file).unwrap();
    assert_eq!(pid.trim(), server.child.id().to_string());
    // A second server on the same pid file refuses to start, and says why.
    let other = run(&[
        "finger",
        "serve",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--pid-file",
        server.pid_file.to_str().unwrap(),
    ]);
    fails_with(other, "names a running process");
    // And on the same port: in use.
    let port = server.port.to_string();
    let other = run(&["finger", "serve", "--port", &port, "--bind", "127.0.0.1"]);
    fails_with(other, "in use");
    assert_eq!(
        std::fs::read_to_string(&server.pid_file).unwrap(),
        pid,
        "a refused start leaves the pid file alone"
    );

    // ~150 KB of plan and project: far more than one read.
    let home = server.sys.root.join("home/alice");
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
    let big: String = line.repeat(60 << 10 >> 6);
    std::fs::write(home.join(".plan"), &big).unwrap();
    std::fs::write(home.join(".project"), &big).unwrap();
    let out = ok(server.finger(&["alice@127.0.0.1"]));
    assert!(out.len() > 2 * big.len(), "{}", out.len());
    assert!(
        out.ends_with(&format!("Project:\n{big}Plan:\n{big}")),
        "answer cut short"
    );

    // SIGTERM: a clean exit, and the pid file is gone.
    signal(&server.child, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut server.child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!server.pid_file.exists());
}

#[test]
fn client_errors_are_one_clear_line() {
    // Nobody listening: refused.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port().to_string();
    drop(free);
    let out = run(&["finger", "--port", &port, "alice@127.0.0.1"]);
    assert_eq!(
        stdout(&out),
        "",
        "nothing on stdout when there is no answer"
    );
    fails_with(out, "refused");
    fails_with(
        run(&["finger", "alice@no-such-host.invalid"]),
        "cannot resolve host",
    );
    fails_with(run(&["finger", "alice@"]), "no host after `@`");
    fails_with(
        run(&["finger", "--login", "a\x07b", "--host", "127.0.0.1"]),
        "control characters",
    );
    // A log file that cannot be opened: the server does not start (and writes no pid).
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("f.pid");
    fails_with(
        run(&[
            "finger",
            "serve",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--log",
            dir.path().join("no/such/dir/log").to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ]),
        "cannot open the log file",
    );
    assert!(!pid_file.exists());
    // Nor with a user database it cannot read.
    fails_with(
        run(&[
            "finger",
            "serve",
            "--port",
            "0",
            "--passwd",
            dir.path().join("no-passwd").to_str().unwrap(),
        ]),
        "the user database (--passwd): cannot read",
    );
}

// ---------------------------------------------------------------------------------------
// finger(1) against nuage and against fingerd, in a lab machine.

/// Runs `program args…` inside the namespaces of `holder` (mount, network, UTS).
fn in_ns(holder: u32, program: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.args([
        "--target",
        &holder.to_string(),
        "--mount",
        "--net",
        "--uts",
        "--",
    ])
    .arg(program)
    .args(args);
    cmd
}

fn run_ok(mut cmd: std::process::Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
    stdout(&out)
}

fn mount_ns(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap()
}

/// Waits until `addr:79` accepts connections.
fn wait_port(addr: std::net::Ipv4Addr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&(addr, 79).into(), Duration::from_secs(1)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}:79");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill_and_wait(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The standard finger(1) client on n2 asks n1 on port 79, first the system's fingerd
/// (run by socat as inetd would, as `nobody`), then `nuage finger serve --port 79`: for
/// a user, `/W user` (`finger -l`), several users, a real-name word, the empty query and
/// `/W` alone, the answers are the same, byte for byte. n1 sees the fake system through
/// its own mount namespace, where it is mounted over /etc/passwd, /run (utmp),
/// /var/log, /var/mail and /dev/pts.
#[test]
fn standard_finger_client_gets_what_fingerd_gives() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let sys = fake_system(&passwd);
    let lab = nuage_lab::Lab::create(&format!("fg-{}", std::process::id()), 2).unwrap();
    let n1 = lab.addr("n1").unwrap();
    let bin = env!("CARGO_BIN_EXE_nuage");

    // A process that holds n1's private mount namespace for the fake system.
    let mut holder = lab
        .command("n1", "unshare")
        .unwrap()
        .args(["--mount", "--propagation", "private", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let hp = holder.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while mount_ns(hp) == mount_ns(std::process::id()) {
        assert!(Instant::now() < deadline, "unshare made no mount namespace");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = |p: &str| sys.root.join(p).to_str().unwrap().to_owned();
    let mounts: Vec<Vec<String>> = vec![
        vec!["--bind".into(), r("passwd"), "/etc/passwd".into()],
        vec![
            "-t".into(),
            "tmpfs".into(),
            "fake-run".into(),
            "/run".into(),
        ],
        vec![
            "-t".into(),
            "tmpfs".into(),
            "fake-log".into(),
            "/var/log".into(),
        ],
        vec!["--bind".into(), r("mail"), "/var/mail".into()],
        vec!["--bind".into(), r("pts"), "/dev/pts".into()],
    ];
    for m in &mounts {
        let args: Vec<&str> = m.iter().map(String::as_str).collect();
        run_ok(in_ns(hp, "mount", &args));
    }
    for (from, to) in [
        ("utmp", "/run/utmp"),
        ("wtmp", "/var/log/wtmp"),
        ("lastlog", "/var/log/lastlog"),
    ] {
        run_ok(in_ns(hp, "cp", &["--preserve=mode", &r(from), to]));
    }

    let target = |q: &str| format!("{q}@{n1}");
    let queries: Vec<Vec<String>> = vec![
        vec![target("alice")],
        vec!["-l".into(), target("alice")],
        vec![target("bob carol")],
        vec![target("liddell")],
        vec![target("dave")],
        vec![target("")],
        vec!["-l".into(), target("")],
        vec![target("zed")],
        vec![target("alice@elsewhere.example")],
    ];
    let ask_all = || -> Vec<String> {
        queries
            .iter()
            .map(|q| {
                let args: Vec<&str> = q.iter().map(String::as_str).collect();
                let out = lab.exec("n2", "finger", &args).unwrap();
                assert!(out.status.success(), "finger {q:?}: {}", stderr(&out));
                stdout(&out)
            })
            .collect()
    };

    let mut fingerd = in_ns(
        hp,
        "socat",
        &[
            "TCP-LISTEN:79,reuseaddr,fork",
            "EXEC:/usr/sbin/in.fingerd,nofork,su=nobody",
        ],
    )
    .stdin(Stdio::null())
    .spawn()
    .unwrap();
    wait_port(n1);
    let from_fingerd = ask_all();
    kill_and_wait(&mut fingerd);
    // socat's listening socket is gone once it has exited.
    std::thread::sleep(Duration::from_millis(200));

    let pid_file = sys.root.join("n1-finger.pid");
    let log = sys.root.join("n1-finger.log");
    let mut nuage = in_ns(
        hp,
        bin,
        &[
            "finger",
            "serve",
            "--port",
            "79",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    wait_port(n1);
    let from_nuage = ask_all();

    let (same, differ) = queries.split_at(queries.len() - 2);
    for ((q, d), n) in same.iter().zip(&from_fingerd).zip(&from_nuage) {
        assert_eq!(d, n, "finger {q:?}: fingerd said\n{d}\nnuage said\n{n}");
    }
    // Where nuage says more, on purpose: fingerd sends nothing for an unknown user (the
    // message goes to finger(1)'s stderr, not the socket), nor for a refused forward,
    // so finger(1) prints nothing at all.
    assert_eq!(from_fingerd[same.len()..], ["", ""], "{differ:?}");
    assert_eq!(
        from_nuage[same.len()..],
        [
            "finger: zed: no such user.\n",
            "finger: forwarding service denied\n"
        ]
    );
    // The answers are about the fake system, not empty or the host's.
    assert!(
        from_nuage[0].contains("Plan:\nWrite a finger daemon."),
        "{}",
        from_nuage[0]
    );
    assert!(from_nuage[2].contains("Login: carol") && from_nuage[2].contains("Login: bob"));
    assert!(from_nuage[5].contains("*pts/3"), "{}", from_nuage[5]);
    assert!(
        from_nuage[6].contains("on :0 (messages off)"),
        "{}",
        from_nuage[6]
    );

    // The nuage server wrote its pid (nsenter became it), logged every query with n2's
    // address, and removes the pid file when stopped.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(pid.trim(), nuage.id().to_string());
    let n2 = lab.addr("n2").unwrap().to_string();
    // (The readiness probe from the host is logged too, as a client that hung up.)
    let logged = read_log(&log, queries.len() + 1);
    let from_n2 = logged
        .lines()
        .filter(|l| l.contains(&format!("client={n2}:")))
        .count();
    assert_eq!(from_n2, queries.len(), "{logged}");
    assert!(logged.contains("query=- result=hung-up"), "{logged}");
    assert!(logged.contains("query=\"/W alice\""), "{logged}");
    signal(&nuage, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut nuage, Duration::from_secs(10)).success());
    assert!(!pid_file.exists());
    kill_and_wait(&mut holder);
}
