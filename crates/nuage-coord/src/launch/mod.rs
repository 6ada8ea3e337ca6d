//! The launcher: starts one process per line of a hosts file, each of which daemonizes,
//! connects back to the launcher on a port the launcher bound (port 0, discovered, then
//! passed on the process's command line) and reports in.
//!
//! How a process is started on a host is the caller's choice (a [`Spawner`]: locally, in
//! a lab machine, over ssh); the command it runs is `nuage agent …` ([`agent`]), which
//! forks, lets its parent exit (that exit is the launcher's sign the start worked), logs to
//! its own file, and then obeys the launcher over one framed TCP connection. A process
//! whose launcher connection ends exits: nothing is left running when a launcher dies.
//!
//! Bounds: [`SPAWN_TIMEOUT`] for the start command, [`REPORT_TIMEOUT`] for every process
//! to report in; at most [`hosts::MAX_PROCESSES`] processes.

pub mod agent;
pub mod exec;
pub mod hosts;
pub mod proto;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::frame::{FrameReader, write_frame};
pub use hosts::HostLine;
pub use proto::{Algorithm, Bootstrap, ElectionReport, ToLauncher, ToProcess};

/// How long the command that starts one process may take (an ssh login included).
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, after the last start, every process has to report in.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(20);

/// Makes the command that runs `nuage ARGS…` on `host`.
pub type Spawner = dyn Fn(&str, &[String]) -> std::process::Command + Send + Sync;

/// One launched process, as it reported in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub index: u32,
    pub line: usize,
    pub host: String,
    /// Its host name as it sees it.
    pub hostname: String,
    pub pid: u32,
    /// Where its ring listener is reached.
    pub addr: SocketAddr,
    pub log: PathBuf,
}

/// What a process said, or that its connection ended (`None`).
pub type Heard = (u32, Option<ToLauncher>);

/// The running processes and the launcher's connections to them.
pub struct Launched {
    pub members: Vec<Member>,
    writers: Vec<OwnedWriteHalf>,
    heard: mpsc::Receiver<Heard>,
}

impl Launched {
    /// Sends `msg` to process `index`.
    pub async fn send(&mut self, index: u32, msg: &ToProcess) -> anyhow::Result<()> {
        let m = &self.members[index as usize];
        let what = format!("process {index} on {} (line {})", m.host, m.line);
        write_frame(&mut self.writers[index as usize], msg)
            .await
            .with_context(|| format!("{what} is gone"))
    }

    /// The next thing a process said, within `limit`. A process whose connection ended
    /// or that failed is an error naming it.
    pub async fn hear(&mut self, limit: Duration) -> anyhow::Result<(u32, ToLauncher)> {
        let heard = tokio::time::timeout(limit, self.heard.recv())
            .await
            .map_err(|_| anyhow!("no news from the processes within {}s", limit.as_secs()))?;
        let (index, msg) = heard.ok_or_else(|| anyhow!("every process is gone"))?;
        let m = &self.members[index as usize];
        match msg {
            None => bail!(
                "process {index} on {} (line {}, pid {}) died or closed its connection; see {}",
                m.host,
                m.line,
                m.pid,
                m.log.display()
            ),
            Some(ToLauncher::Failed { error }) => bail!(
                "process {index} on {} (line {}) failed: {error}",
                m.host,
                m.line
            ),
            Some(msg) => Ok((index, msg)),
        }
    }

    /// The next thing a process said, or `None` for a process whose connection ended;
    /// for callers that expect some processes to end.
    pub async fn hear_raw(&mut self, limit: Duration) -> anyhow::Result<Heard> {
        tokio::time::timeout(limit, self.heard.recv())
            .await
            .map_err(|_| anyhow!("no news from the processes within {}s", limit.as_secs()))?
            .ok_or_else(|| anyhow!("every process is gone"))
    }

    /// Tells every process to stop (those already gone are skipped).
    pub async fn stop_all(&mut self) {
        for w in &mut self.writers {
            let _ = write_frame(w, &ToProcess::Stop).await;
        }
    }
}

/// Where the launcher listens and what it tells processes.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// The address processes use to reach the launcher.
    pub advertise: IpAddr,
    /// Directory for the processes' log files (must exist where they run).
    pub log_dir: PathBuf,
}

/// Starts one process per host line and waits until all have reported in. On any
/// failure the processes already started are stopped, and the error names the line.
pub async fn launch(
    hosts: &[HostLine],
    config: &LaunchConfig,
    spawner: &Spawner,
) -> anyhow::Result<Launched> {
    let bind = match config.advertise {
        IpAddr::V4(ip) if ip.is_loopback() => config.advertise,
        IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    };
    let listener = TcpListener::bind(SocketAddr::new(bind, 0))
        .await
        .context("cannot open the launcher's port")?;
    let port = listener.local_addr()?.port();
    let callback = SocketAddr::new(config.advertise, port);
    let (hello_tx, mut hello_rx) = mpsc::channel(hosts.len());
    let acceptor = tokio::spawn(accept_hellos(listener, hello_tx));
    let mut pending: BTreeMap<u32, &HostLine> = BTreeMap::new();
    let mut arrived = Vec::new();
    let result = async {
        for (i, h) in hosts.iter().enumerate() {
            let index = i as u32;
            let log = log_path(&config.log_dir, index, &h.host);
            let args: Vec<String> = vec![
                "agent".into(),
                "--launcher".into(),
                callback.to_string(),
                "--index".into(),
                index.to_string(),
                "--log".into(),
                log.display().to_string(),
            ];
            start_one(spawner(&h.host, &args), h).await?;
            pending.insert(index, h);
        }
        let deadline = tokio::time::Instant::now() + REPORT_TIMEOUT;
        while !pending.is_empty() {
            let got = tokio::time::timeout_at(deadline, hello_rx.recv()).await;
            let Ok(Some(hello)) = got else {
                let missing: Vec<String> = pending
                    .iter()
                    .map(|(i, h)| format!("{i} on {} (line {})", h.host, h.line))
                    .collect();
                bail!(
                    "processes {} did not report in within {}s (see their logs in {})",
                    missing.join(", "),
                    REPORT_TIMEOUT.as_secs(),
                    config.log_dir.display()
                );
            };
            let hello: Hello = hello;
            if pending.remove(&hello.index).is_some() {
                arrived.push(hello);
            }
        }
        anyhow::Ok(())
    }
    .await;
    acceptor.abort();
    if let Err(e) = result {
        // Stop those that reported in; the others exit when they find no launcher.
        for h in &mut arrived {
            let _ = write_frame(&mut h.writer, &ToProcess::Stop).await;
        }
        return Err(e);
    }
    arrived.sort_by_key(|h| h.index);
    let (tx, heard) = mpsc::channel(4 * hosts.len() + 16);
    let mut members = Vec::new();
    let mut writers = Vec::new();
    for h in arrived {
        let line = &hosts[h.index as usize];
        members.push(Member {
            index: h.index,
            line: line.line,
            host: line.host.clone(),
            hostname: h.hostname,
            pid: h.pid,
            addr: h.addr,
            log: log_path(&config.log_dir, h.index, &line.host),
        });
        writers.push(h.writer);
        let tx = tx.clone();
        let mut reader = h.reader;
        let index = h.index;
        tokio::spawn(async move {
            loop {
                match reader.read().await {
                    Ok(Some(msg)) => {
                        if tx.send((index, Some(msg))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => {
                        let _ = tx.send((index, None)).await;
                        return;
                    }
                }
            }
        });
    }
    Ok(Launched {
        members,
        writers,
        heard,
    })
}

/// The log file of process `index` on `host`.
pub fn log_path(dir: &Path, index: u32, host: &str) -> PathBuf {
    let safe: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{index}-{safe}.log"))
}

async fn start_one(cmd: std::process::Command, h: &HostLine) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let what = format!("line {}: cannot start a process on {}", h.line, h.host);
    let child = cmd.spawn().with_context(|| what.clone())?;
    let out = tokio::time::timeout(SPAWN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("{what}: no answer within {}s", SPAWN_TIMEOUT.as_secs()))?
        .with_context(|| what.clone())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim().lines().last().unwrap_or("").to_owned();
        bail!("{what}: {} {err}", out.status);
    }
    Ok(())
}

struct Hello {
    index: u32,
    pid: u32,
    hostname: String,
    addr: SocketAddr,
    reader: FrameReader<tokio::net::tcp::OwnedReadHalf, ToLauncher>,
    writer: OwnedWriteHalf,
}

async fn accept_hellos(listener: TcpListener, tx: mpsc::Sender<Hello>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of descriptors or similar: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, writer) = stream.into_split();
            let mut reader = FrameReader::new(read);
            let first = tokio::time::timeout(REPORT_TIMEOUT, reader.read()).await;
            if let Ok(Ok(Some(ToLauncher::Hello {
                index,
                pid,
                host,
                port,
            }))) = first
            {
                let _ = tx
                    .send(Hello {
                        index,
                        pid,
                        hostname: host,
                        addr: SocketAddr::new(peer.ip(), port),
                        reader,
                        writer,
                    })
                    .await;
            }
        });
    }
}
