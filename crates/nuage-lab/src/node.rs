//! Running `nuage up` on lab machines: one node per machine, configured to know the
//! others as peers, its data and log in the machine's directory.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::lab::{Lab, Machine};

/// Port of the node API on every lab machine.
pub const NODE_API_PORT: u16 = 7070;
/// How long a started node may take to answer `GET /v1/node`.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Machine {
    /// `http://<addr>:7070`, the machine's node API as the host reaches it.
    pub fn api_url(&self) -> String {
        format!("http://{}:{NODE_API_PORT}", self.addr)
    }
    pub fn node_config_path(&self) -> PathBuf {
        self.dir.join("nuage.toml")
    }
    pub fn node_log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }
}

impl Lab {
    /// The `nuage.toml` of `machine`'s node: its name and address, its data dir, its API
    /// on every interface of the machine, and every other machine as a peer.
    pub fn node_config(&self, machine: &str) -> anyhow::Result<String> {
        let m = self.machine(machine)?;
        let mut toml = String::new();
        let _ = writeln!(
            toml,
            "# Written by `nuage lab` for machine {} of lab {}.",
            m.name,
            self.name()
        );
        let _ = writeln!(toml, "name = \"{}\"", m.name);
        let _ = writeln!(toml, "address = \"{}\"", m.addr);
        let _ = writeln!(toml, "data_dir = \"{}\"", m.dir.join("data").display());
        let _ = writeln!(
            toml,
            "\n[listen]\napi = \"0.0.0.0:{NODE_API_PORT}\"\n\n[peers]"
        );
        for peer in self.machines().iter().filter(|p| p.name != m.name) {
            let _ = writeln!(toml, "{} = \"{}\"", peer.name, peer.addr);
        }
        Ok(toml)
    }

    /// Starts `nuage up` on `machine` in the background (its own session, so a Ctrl-C at
    /// the terminal does not reach it), without waiting for it to be ready.
    pub fn start_node(&self, machine: &str, nuage: &Path) -> anyhow::Result<()> {
        let m = self.machine(machine)?;
        if api_answers(m) {
            bail!(
                "{machine} already runs a node ({}); restart it with `nuage lab restart {machine}`",
                m.api_url()
            );
        }
        let config = m.node_config_path();
        std::fs::write(&config, self.node_config(machine)?)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.node_log_path())
            .with_context(|| format!("cannot open {}", m.node_log_path().display()))?;
        let mut cmd = self.command(machine, nuage)?;
        cmd.arg("up")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} in {machine}", nuage.display()))?;
        self.children
            .lock()
            .expect("children lock poisoned")
            .push(child);
        Ok(())
    }

    /// Waits until `machine`'s node answers `GET /v1/node`.
    pub fn wait_node(&self, machine: &str, timeout: Duration) -> anyhow::Result<()> {
        let m = self.machine(machine)?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if api_answers(m) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the node on {machine} did not answer at {} within {timeout:?}; its log ends with: {}",
            m.api_url(),
            log_tail(&m.node_log_path())
        )
    }

    /// Starts a node on every machine and waits until all answer.
    pub fn start_nodes(&self, nuage: &Path) -> anyhow::Result<()> {
        for m in self.machines() {
            self.start_node(&m.name, nuage)?;
        }
        for m in self.machines() {
            self.wait_node(&m.name, NODE_READY_TIMEOUT)?;
        }
        Ok(())
    }

    /// Kills every process of `machine`, then starts its node again and waits for it.
    pub fn restart(&self, machine: &str, nuage: &Path) -> anyhow::Result<()> {
        self.kill(machine)?;
        self.start_node(machine, nuage)?;
        self.wait_node(machine, NODE_READY_TIMEOUT)
    }
}

/// Whether the node API on `m` answers `GET /v1/node` with 200 (a plain HTTP/1.1 request,
/// so this crate needs no HTTP client).
fn api_answers(m: &Machine) -> bool {
    let addr = SocketAddr::from((m.addr, NODE_API_PORT));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /v1/node HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// The last lines of a log, on one line, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        return format!("nothing ({})", path.display());
    }
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    format!("{} ({})", tail.join(" | "), path.display())
}
