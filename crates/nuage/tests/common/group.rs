//! What the group tests share: a group daemon (`nuage group daemon`) alone in its
//! configuration, on a free port, with its sockets in a temporary directory.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nuage_group::client::ConnectOptions;
use nuage_group::client::blocking::Mailbox;

/// A daemon alone in its configuration, on a free port, with its sockets in a temp dir.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

/// A TCP port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    pub fn start(extra_conf: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("spread.conf");
        std::fs::write(
            &conf,
            format!("Spread_Segment 127.0.0.255:{port} {{\n  d1 127.0.0.1\n}}\n{extra_conf}"),
        )
        .unwrap();
        let mut cmd = super::nuage();
        cmd.args(["group", "daemon", "-c"])
            .arg(&conf)
            .arg("--runtime-dir")
            .arg(dir.path());
        let mut child = spawn_ready(cmd, Stdio::piped());
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Daemon {
            child,
            port,
            dir,
            stderr,
        }
    }

    pub fn opts(&self) -> ConnectOptions {
        ConnectOptions {
            runtime_dir: Some(self.dir.path().to_path_buf()),
            ..ConnectOptions::default()
        }
    }

    /// A client over the Unix socket.
    pub fn unix(&self, name: &str) -> Mailbox {
        Mailbox::connect(&self.port.to_string(), name, &self.opts()).unwrap()
    }

    /// A client over TCP.
    pub fn tcp(&self, name: &str) -> Mailbox {
        Mailbox::connect(&format!("{}@127.0.0.1", self.port), name, &self.opts()).unwrap()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(self.port.to_string())
    }

    pub fn log_contains(&self, what: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.stderr.lock().unwrap().contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Starts a `nuage group daemon …` command and waits for the line saying it serves.
pub fn spawn_ready(mut cmd: std::process::Command, stderr: Stdio) -> Child {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("group daemon `"), "{line}");
    child
}
