//! Token-ring mutual exclusion, with a lost token detected and regenerated.
//!
//! One token goes around the ring; only its holder may enter the critical section (here:
//! append one record to a shared file), then it passes the token on. Process 0 creates
//! the token once every process knows the ring order (gathered by one `members` round and
//! one `ring_order` round). A process that has written all its records reports it and
//! keeps passing the token until the launcher says stop.
//!
//! **A process dies.** Its successor Q sees its incoming link close. Q walks the ring
//! order backwards to the nearest live process P, connects to it and sends `adopt`; P
//! makes that connection its successor link, answers `hello`, and sends on it what it
//! could not send to the dead process. Then Q sends `probe(Q)` once around the repaired
//! ring. Links are FIFO and every process handles one message at a time, so when the
//! probe starts every live token is ahead of it (nothing is left on the new link P → Q):
//! a live token reaches Q before the probe comes back. So Q regenerates the token — with
//! the next generation — exactly when its probe returns without a token having reached Q
//! since it was sent. Only the process that repaired the ring probes, so only it can
//! regenerate; and a token of an older generation is dropped wherever it appears, in
//! case a stale one ever resurfaces. Limits: one failure at a time (a second death before
//! the first repair's probe is back may leave two probers), at least 2 live processes,
//! and deaths are detected by connections closing (a process killed, its machine's
//! kernel alive), not by a silent partition.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::{LINK_TIMEOUT, Link, Links, RUN_TIMEOUT, Task};
use crate::frame::{FrameReader, write_frame};
use crate::launch::{ToLauncher, ToProcess};

/// Most records one process may be asked to write, and most lines per record.
pub const MAX_RECORDS: u32 = 100_000;
pub const MAX_LINES: u32 = 1_000;

/// One process of the token ring, as a state machine.
#[derive(Debug, Clone)]
pub struct TokenProcess {
    records: u32,
    written: u32,
    visits: u64,
    /// The highest token generation seen.
    generation: u64,
    /// While this process's probe is out: has a token reached it since?
    probe: Option<bool>,
}

/// What to do with one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// A token of an older generation: drop it.
    Stale,
    /// Enter the critical section first if `enter`; report if `finished_now`; then pass
    /// the token (generation `generation`).
    Pass {
        enter: bool,
        finished_now: bool,
        generation: u64,
    },
}

impl TokenProcess {
    pub fn new(records: u32) -> Self {
        TokenProcess {
            records,
            written: 0,
            visits: 0,
            generation: 1,
            probe: None,
        }
    }

    pub fn written(&self) -> u32 {
        self.written
    }
    pub fn visits(&self) -> u64 {
        self.visits
    }
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The token of generation `generation` arrives.
    pub fn on_token(&mut self, generation: u64) -> Visit {
        if generation < self.generation {
            return Visit::Stale;
        }
        self.generation = generation;
        self.visits += 1;
        if let Some(seen) = &mut self.probe {
            *seen = true;
        }
        let enter = self.written < self.records;
        if enter {
            self.written += 1;
        }
        Visit::Pass {
            enter,
            finished_now: (enter && self.written == self.records)
                || (self.visits == 1 && self.records == 0),
            generation,
        }
    }

    /// This process repaired the ring and sends its probe.
    pub fn probe_sent(&mut self) {
        self.probe = Some(false);
    }

    /// Its probe came back: `Some(generation)` if the token is lost and must be regenerated
    /// with that generation, `None` if a token reached this process meanwhile.
    pub fn probe_returned(&mut self) -> Option<u64> {
        match self.probe.take() {
            Some(false) => {
                self.generation += 1;
                Some(self.generation)
            }
            _ => None,
        }
    }
}

/// One process's token-ring run.
pub struct Run<'a> {
    pub task: &'a Task,
    pub file: &'a Path,
    pub records: u32,
    pub lines: u32,
}

/// The successor link, or what waits for one.
struct Succ {
    link: Option<OwnedWriteHalf>,
    pending: Vec<Link>,
}

impl Succ {
    async fn send(&mut self, msg: Link) {
        if let Some(w) = &mut self.link {
            if write_frame(w, &msg).await.is_ok() {
                return;
            }
            self.link = None;
        }
        self.pending.push(msg);
    }

    async fn replace(&mut self, mut w: OwnedWriteHalf, me: u32) -> anyhow::Result<()> {
        write_frame(&mut w, &Link::Hello { index: me }).await?;
        for m in self.pending.drain(..) {
            write_frame(&mut w, &m).await?;
        }
        self.link = Some(w);
        Ok(())
    }
}

impl Run<'_> {
    pub async fn run(
        self,
        links: Links,
        listener: TcpListener,
        from_launcher: &mut FrameReader<OwnedReadHalf, ToProcess>,
        to_launcher: &mut OwnedWriteHalf,
    ) -> anyhow::Result<()> {
        if self.records > MAX_RECORDS || self.lines == 0 || self.lines > MAX_LINES {
            bail!("records must be 0..={MAX_RECORDS} and lines 1..={MAX_LINES}");
        }
        let me = self.task.index;
        let (host, pid) = super::me();
        let mut succ = Succ {
            link: Some(links.succ),
            pending: Vec::new(),
        };
        let mut pred = links.pred;
        let ring = self.gather(&mut succ, &mut pred).await?;
        let mut pred_index = predecessor(&ring, me);
        let mut dead: Vec<u32> = Vec::new();
        let mut p = TokenProcess::new(self.records);
        // The writer half of a link this process opened to adopt a predecessor: kept
        // open, as closing it would end the link.
        let mut _adopted: Option<OwnedWriteHalf> = None;
        if me == 0 {
            succ.send(Link::Token { generation: 1 }).await;
        }
        loop {
            tokio::select! {
                got = tokio::time::timeout(RUN_TIMEOUT, pred.read()) => {
                    let msg = match got {
                        Err(_) => bail!(
                            "no token or message for {}s (is a process paused?)",
                            RUN_TIMEOUT.as_secs()
                        ),
                        Ok(Ok(Some(m))) => m,
                        Ok(Ok(None)) | Ok(Err(_)) => {
                            // The predecessor died: link from the live one before it.
                            dead.push(pred_index);
                            let (reader, w, from) = adopt(&ring, me, &dead).await?;
                            note(to_launcher, format!(
                                "process {me}: predecessor {} died; process {from} now sends to it",
                                pred_index
                            )).await?;
                            pred = reader;
                            pred_index = from;
                            _adopted = Some(w);
                            p.probe_sent();
                            succ.send(Link::Probe { origin: me }).await;
                            continue;
                        }
                    };
                    let generation = match msg {
                        Link::Token { generation } => generation,
                        Link::Probe { origin } if origin == me => match p.probe_returned() {
                            Some(generation) => {
                                note(to_launcher, format!(
                                    "process {me}: probe back without the token: token lost; regenerated (generation {generation})"
                                )).await?;
                                generation
                            }
                            None => {
                                note(to_launcher, format!("process {me}: probe back; the token is alive")).await?;
                                continue;
                            }
                        },
                        Link::Probe { origin } => {
                            succ.send(Link::Probe { origin }).await;
                            continue;
                        }
                        other => bail!("unexpected {other:?} on the ring"),
                    };
                    match p.on_token(generation) {
                        Visit::Stale => {
                            note(to_launcher, format!("process {me}: dropped a token of old generation {generation}")).await?;
                        }
                        Visit::Pass { enter, finished_now, generation } => {
                            if enter {
                                // The critical section: one record, written line by line.
                                let record = p.written() - 1;
                                for l in 1..=self.lines {
                                    append(self.file, &format!("{host} {pid} {me} {record} {l}\n")).await?;
                                }
                            }
                            if finished_now {
                                write_frame(to_launcher, &ToLauncher::TokenDone {
                                    records: p.written(),
                                    visits: p.visits(),
                                }).await?;
                            }
                            succ.send(Link::Token { generation }).await;
                        }
                    }
                }
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    let _ = stream.set_nodelay(true);
                    let (r, w) = stream.into_split();
                    let mut r = FrameReader::<_, Link>::new(r);
                    match tokio::time::timeout(LINK_TIMEOUT, r.read()).await {
                        Ok(Ok(Some(Link::Adopt { index }))) => {
                            note(to_launcher, format!("process {me}: now sends to process {index}")).await?;
                            succ.replace(w, me).await?;
                        }
                        other => tracing::warn!("a stranger's connection began with {other:?}; dropped"),
                    }
                }
                order = from_launcher.read() => match order? {
                    Some(ToProcess::Stop) | None => return Ok(()),
                    Some(other) => bail!("unexpected {other:?} from the launcher"),
                },
            }
        }
    }

    /// The ring order: process 0 gathers it with one round and hands it out with another.
    async fn gather(
        &self,
        succ: &mut Succ,
        pred: &mut FrameReader<OwnedReadHalf, Link>,
    ) -> anyhow::Result<Vec<(u32, SocketAddr)>> {
        let me = (self.task.index, self.task.own);
        if me.0 == 0 {
            succ.send(Link::Members { ring: vec![me] }).await;
            let ring = match next(pred).await? {
                Link::Members { ring } => ring,
                other => bail!("expected the members back, got {other:?}"),
            };
            succ.send(Link::RingOrder { ring: ring.clone() }).await;
            match next(pred).await? {
                Link::RingOrder { .. } => {}
                other => bail!("expected the ring order back, got {other:?}"),
            }
            check_order(&ring, self.task.n)?;
            Ok(ring)
        } else {
            match next(pred).await? {
                Link::Members { mut ring } => {
                    ring.push(me);
                    succ.send(Link::Members { ring }).await;
                }
                other => bail!("expected the members, got {other:?}"),
            }
            match next(pred).await? {
                Link::RingOrder { ring } => {
                    succ.send(Link::RingOrder { ring: ring.clone() }).await;
                    check_order(&ring, self.task.n)?;
                    Ok(ring)
                }
                other => bail!("expected the ring order, got {other:?}"),
            }
        }
    }
}

fn check_order(ring: &[(u32, SocketAddr)], n: u32) -> anyhow::Result<()> {
    let mut ids: Vec<u32> = ring.iter().map(|r| r.0).collect();
    ids.sort_unstable();
    if ids != (0..n).collect::<Vec<_>>() {
        bail!("the ring order {ids:?} is not every process once");
    }
    Ok(())
}

/// The process before `p` in ring order.
fn predecessor(ring: &[(u32, SocketAddr)], p: u32) -> u32 {
    let pos = ring.iter().position(|r| r.0 == p).expect("in the ring");
    ring[(pos + ring.len() - 1) % ring.len()].0
}

/// Links from the nearest live process before the dead ones: connects, sends `adopt`,
/// waits for its `hello`. Returns the new predecessor link and who it is.
async fn adopt(
    ring: &[(u32, SocketAddr)],
    me: u32,
    dead: &[u32],
) -> anyhow::Result<(FrameReader<OwnedReadHalf, Link>, OwnedWriteHalf, u32)> {
    let mut candidate = me;
    for _ in 0..ring.len() {
        candidate = predecessor(ring, candidate);
        if candidate == me {
            break;
        }
        if dead.contains(&candidate) {
            continue;
        }
        let addr = ring.iter().find(|r| r.0 == candidate).expect("in ring").1;
        let Ok(Ok(stream)) = tokio::time::timeout(LINK_TIMEOUT, TcpStream::connect(addr)).await
        else {
            continue; // dead too (or unreachable): try the one before
        };
        let _ = stream.set_nodelay(true);
        let (r, mut w) = stream.into_split();
        if write_frame(&mut w, &Link::Adopt { index: me })
            .await
            .is_err()
        {
            continue;
        }
        let mut reader = FrameReader::new(r);
        match tokio::time::timeout(LINK_TIMEOUT, reader.read()).await {
            Ok(Ok(Some(Link::Hello { .. }))) => return Ok((reader, w, candidate)),
            _ => continue,
        }
    }
    bail!("no other live process is left in the ring")
}

async fn note(to_launcher: &mut OwnedWriteHalf, text: String) -> anyhow::Result<()> {
    tracing::info!("{text}");
    write_frame(to_launcher, &ToLauncher::TokenNote { text })
        .await
        .context("the launcher is gone")
}

/// One append: open, write, close (so a record of several lines is several writes, which
/// would interleave with other writers without mutual exclusion).
async fn append(file: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .await
        .with_context(|| format!("cannot open the shared file {}", file.display()))?;
    f.write_all(line.as_bytes())
        .await
        .with_context(|| format!("cannot write to {}", file.display()))?;
    f.flush().await?;
    Ok(())
}

async fn next(pred: &mut FrameReader<OwnedReadHalf, Link>) -> anyhow::Result<Link> {
    match tokio::time::timeout(LINK_TIMEOUT, pred.read()).await {
        Ok(Ok(Some(m))) => Ok(m),
        other => Err(anyhow::anyhow!(
            "the ring broke while learning its order: {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests;
