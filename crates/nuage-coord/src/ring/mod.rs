//! A unidirectional ring over launched processes, and what runs on it: the pid message
//! (each process appends its pid; the origin prints the whole) and Chang-Roberts election
//! with numbering ([`crate::election`]).
//!
//! Each process has one TCP link to its successor (it only writes there) and one from its
//! predecessor (it only reads there); messages are [`Link`] frames. The two bootstrap
//! methods of [`Bootstrap`] build the same kind of ring. Every wait is bounded by
//! [`LINK_TIMEOUT`] or [`RUN_TIMEOUT`], so a process that dies never hangs the others
//! forever: they fail with an error naming what they waited for, and the launcher reports
//! the dead process.

mod build;
pub mod drive;
pub mod token;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::election::{self, Process};
use crate::frame::{FrameReader, write_frame};
use crate::launch::proto::{Algorithm, Bootstrap, ElectionReport, ToLauncher, ToProcess};

/// How long one step of building the ring may take (a connection, a join, an answer).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process waits for the next message while an algorithm runs.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// What travels between ring neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// First message on a link to the successor: who is the predecessor.
    Hello { index: u32 },
    /// (bootstrap first) A process joins at the first one, giving its address.
    Join { index: u32, addr: SocketAddr },
    /// (bootstrap first) The first tells a joiner its successor.
    Next { addr: SocketAddr },
    /// (bootstrap chain) The last process's address, going back to the first.
    Closing { addr: SocketAddr },
    /// The pid message: (host, pid) of each process so far.
    Pids { pids: Vec<(String, u32)> },
    /// A message of the election.
    Election(election::Message),
    /// The token of token-ring mutual exclusion, of generation `generation` (a regenerated
    /// token has a higher one; older ones are dropped on sight).
    Token { generation: u64 },
    /// (token ring) Ring order being gathered: (process, address) from process 0 on.
    Members { ring: Vec<(u32, SocketAddr)> },
    /// (token ring) The whole ring order, sent once around.
    RingOrder { ring: Vec<(u32, SocketAddr)> },
    /// (token ring) Sent by a process whose predecessor died to the live process before
    /// it: "send to me from now on".
    Adopt {
        index: u32,
        /// Processes the sender has excluded (silent too long): refused if they ever
        /// come back and ask to be adopted.
        #[serde(default)]
        excluded: Vec<u32>,
    },
    /// (token ring) Answer to an `adopt` from a process that was excluded: it must leave.
    Excluded,
    /// (token ring) "I am alive": sent to the successor every heartbeat period, so that
    /// silence means a stalled predecessor, not a token far away.
    Alive,
    /// (token ring) Does a token still exist? Sent once around by `origin`.
    Probe { origin: u32 },
}

/// What one process is asked to do.
#[derive(Debug, Clone)]
pub struct Task {
    pub index: u32,
    pub n: u32,
    pub bootstrap: Bootstrap,
    pub contact: Option<SocketAddr>,
    pub algorithm: Algorithm,
    /// This process's ring address.
    pub own: SocketAddr,
}

/// The two links of a process.
pub struct Links {
    pub succ: OwnedWriteHalf,
    pub pred: FrameReader<OwnedReadHalf, Link>,
}

impl Links {
    async fn send(&mut self, msg: &Link) -> anyhow::Result<()> {
        write_frame(&mut self.succ, msg)
            .await
            .context("the successor is gone")
    }
    async fn recv(&mut self) -> anyhow::Result<Link> {
        match tokio::time::timeout(RUN_TIMEOUT, self.pred.read()).await {
            Err(_) => bail!(
                "nothing from the predecessor within {}s",
                RUN_TIMEOUT.as_secs()
            ),
            Ok(Err(e)) => Err(e.context("the predecessor's link broke")),
            Ok(Ok(None)) => bail!("the predecessor closed its link (it died?)"),
            Ok(Ok(Some(m))) => Ok(m),
        }
    }
}

/// One process's whole part: build the ring, report ready, wait for go, run the
/// algorithm, report.
pub async fn run_member(
    task: Task,
    listener: TcpListener,
    from_launcher: &mut FrameReader<OwnedReadHalf, ToProcess>,
    to_launcher: &mut OwnedWriteHalf,
) -> anyhow::Result<()> {
    if task.n < 2 {
        bail!("a ring needs at least 2 processes");
    }
    let mut links = build::build(&task, &listener).await?;
    tracing::info!("process {}: ring links up", task.index);
    write_frame(to_launcher, &ToLauncher::Ready).await?;
    match tokio::time::timeout(LINK_TIMEOUT, from_launcher.read()).await {
        Ok(Ok(Some(ToProcess::Go))) => {}
        Ok(Ok(Some(ToProcess::Stop))) | Ok(Ok(None)) => return Ok(()),
        other => bail!("expected `go` from the launcher, got {other:?}"),
    }
    if let Algorithm::TokenMutex {
        file,
        records,
        lines,
        token_timeout_ms,
    } = &task.algorithm
    {
        // The token ring keeps its listener: a repaired ring links through it.
        let (file, records, lines) = (file.clone(), *records, *lines);
        let run = token::Run {
            task: &task,
            file: &file,
            records,
            lines,
            token_timeout: Duration::from_millis(*token_timeout_ms),
        };
        return run.run(links, listener, from_launcher, to_launcher).await;
    }
    drop(listener);
    let report = match &task.algorithm {
        Algorithm::Circulate => circulate(&task, &mut links).await?,
        Algorithm::Election { id, initiator } => {
            ToLauncher::Elected(elect(&task, *id, *initiator, &mut links).await?)
        }
        Algorithm::TokenMutex { .. } => unreachable!("handled above"),
    };
    if let Some(report) = report_if_any(report) {
        write_frame(to_launcher, &report).await?;
    }
    Ok(())
}

fn report_if_any(r: ToLauncher) -> Option<ToLauncher> {
    match r {
        ToLauncher::Ready => None,
        other => Some(other),
    }
}

fn me() -> (String, u32) {
    (
        crate::net::hostname().unwrap_or_else(|_| "?".into()),
        std::process::id(),
    )
}

/// The pid message: process 0 starts it, each appends its pid, process 0 reports it.
/// Others report nothing (`Ready` stands for "nothing to report").
async fn circulate(task: &Task, links: &mut Links) -> anyhow::Result<ToLauncher> {
    if task.index == 0 {
        links.send(&Link::Pids { pids: vec![me()] }).await?;
        match links.recv().await? {
            Link::Pids { pids } => Ok(ToLauncher::Circulated { pids }),
            other => bail!("expected the pid message back, got {other:?}"),
        }
    } else {
        match links.recv().await? {
            Link::Pids { mut pids } => {
                if pids.len() >= task.n as usize {
                    bail!("the pid message already has {} entries", pids.len());
                }
                pids.push(me());
                tracing::info!("pid message: {pids:?}");
                links.send(&Link::Pids { pids }).await?;
                Ok(ToLauncher::Ready)
            }
            other => bail!("expected the pid message, got {other:?}"),
        }
    }
}

/// Chang-Roberts and numbering over the real links, with [`election::Process`].
async fn elect(
    task: &Task,
    id: election::Id,
    initiator: bool,
    links: &mut Links,
) -> anyhow::Result<ElectionReport> {
    let mut p = Process::new(id);
    let mut sent = Vec::new();
    if initiator {
        if let Some(m) = p.start() {
            tracing::info!("process {} (id {id}) starts: sends {m}", task.index);
            links.send(&Link::Election(m)).await?;
            sent.push(m);
        }
    }
    // At most N(N+1)/2 + 2N messages reach a process; more means a broken ring.
    let n = u64::from(task.n);
    let limit = n * (n + 1) / 2 + 2 * n + 4;
    let mut received = 0u64;
    while !p.is_done() {
        let msg = match links.recv().await? {
            Link::Election(m) => m,
            other => bail!("expected an election message, got {other:?}"),
        };
        received += 1;
        if received > limit {
            bail!("more than {limit} election messages: the ring is broken");
        }
        let out = p.receive(msg)?;
        match out {
            Some(m) => tracing::info!("received {msg}; sends {m}"),
            None => tracing::info!("received {msg}; sends nothing"),
        }
        if let Some(m) = out {
            links.send(&Link::Election(m)).await?;
            sent.push(m);
        }
    }
    Ok(ElectionReport {
        id,
        leader: p.leader().expect("done"),
        rank: p.rank().expect("done"),
        size: p.size(),
        sent,
    })
}

#[cfg(test)]
mod tests;
