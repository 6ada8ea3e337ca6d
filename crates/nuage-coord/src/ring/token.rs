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
//! case a stale one ever resurfaces.
//!
//! **A process stalls** (paused, cut off; no connection closes). Every process sends its
//! successor a heartbeat every `token_timeout / 5`; a predecessor silent longer than the
//! token timeout is excluded and handled as dead (adopt around it, probe). The adopter
//! tells the excluded process `excluded` on the old link, so that it leaves when it
//! resumes. A stalled holder may wake up holding a token, even inside the critical
//! section: the shared file is fenced ([`fenced_append`]) — a line of an older generation
//! than one that already wrote is refused. Limits: one failure at a time (a second death
//! before the first repair's probe is back may leave two probers), at least 2 live
//! processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::{LINK_TIMEOUT, Link, Links, Task};
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

    /// The shared resource has seen generation `newest` (its fence refused this process's
    /// token): tokens older than it are stale here from now on.
    pub fn saw_generation(&mut self, newest: u64) {
        self.generation = self.generation.max(newest);
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

/// Default of `--token-timeout-ms`: how long a predecessor may stay silent (no token, no
/// probe, no heartbeat) before its successor excludes it. A live process sends at least a
/// heartbeat every `timeout / 5` except while it is in the critical section, so the
/// timeout must exceed the longest critical section plus a heartbeat period; 10 s leaves
/// a wide margin over a record of 1000 lines on a loaded machine.
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long telling a replaced successor that it is excluded may take.
const EXCLUDED_WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// Bounds of the token timeout.
pub const MIN_TOKEN_TIMEOUT: Duration = Duration::from_millis(200);
pub const MAX_TOKEN_TIMEOUT: Duration = Duration::from_secs(3600);

/// One process's token-ring run.
pub struct Run<'a> {
    pub task: &'a Task,
    pub file: &'a Path,
    pub records: u32,
    pub lines: u32,
    /// Silence of the predecessor after which it is excluded.
    pub token_timeout: Duration,
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

    /// A heartbeat: only over a working link (never queued).
    async fn beat(&mut self) {
        if let Some(w) = &mut self.link {
            if write_frame(w, &Link::Alive).await.is_err() {
                self.link = None;
            }
        }
    }

    /// A process adopted this one: its link becomes the successor link. The old
    /// successor, if its link is still open, is one that was excluded (the adopter only
    /// skips dead or excluded processes): it is told so, in case it resumes.
    async fn replace(&mut self, mut w: OwnedWriteHalf, me: u32) -> anyhow::Result<()> {
        if let Some(mut old) = self.link.take() {
            // Bounded: the excluded process may be paused with a full socket buffer.
            let _ = tokio::time::timeout(
                EXCLUDED_WRITE_TIMEOUT,
                write_frame(&mut old, &Link::Excluded),
            )
            .await;
        }
        write_frame(&mut w, &Link::Hello { index: me }).await?;
        for m in self.pending.drain(..) {
            write_frame(&mut w, &m).await?;
        }
        self.link = Some(w);
        Ok(())
    }
}

/// What woke the run loop.
enum Event {
    Beat,
    Msg(Link),
    Lost(Loss),
    Accepted(TcpStream),
}

/// Why the predecessor is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Its link closed: it died.
    Died,
    /// It stayed silent longer than the token timeout (paused, cut off): excluded.
    Silent,
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
        if !(MIN_TOKEN_TIMEOUT..=MAX_TOKEN_TIMEOUT).contains(&self.token_timeout) {
            bail!(
                "the token timeout must be {}..={} ms",
                MIN_TOKEN_TIMEOUT.as_millis(),
                MAX_TOKEN_TIMEOUT.as_millis()
            );
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
        // Processes excluded for silence, by this process or by those that adopted it.
        let mut excluded: Vec<u32> = Vec::new();
        let mut p = TokenProcess::new(self.records);
        let fence = fence_path(self.file);
        // The writer half of a link this process opened to adopt a predecessor: kept
        // open, as closing it would end the link.
        let mut _adopted: Option<OwnedWriteHalf> = None;
        let timeout = self.token_timeout;
        let beat_every = timeout / 5;
        let mut beats = tokio::time::interval(beat_every);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut last_beat = Instant::now();
        if me == 0 {
            succ.send(Link::Token { generation: 1 }).await;
        }
        loop {
            let event = tokio::select! {
                _ = beats.tick() => Event::Beat,
                got = pred.read() => match got {
                    Ok(Some(m)) => Event::Msg(m),
                    Ok(None) | Err(_) => Event::Lost(Loss::Died),
                },
                accepted = listener.accept() => Event::Accepted(accepted?.0),
                order = from_launcher.read() => match order? {
                    Some(ToProcess::Stop) | None => return Ok(()),
                    Some(other) => bail!("unexpected {other:?} from the launcher"),
                },
            };
            let msg = match event {
                Event::Beat => {
                    let now = Instant::now();
                    // This process itself stalled (paused, or a long critical section):
                    // the silence it measured is its own; give the predecessor a fresh
                    // period rather than accuse it.
                    if now - last_beat > timeout / 2 {
                        last_heard = now;
                    }
                    last_beat = now;
                    succ.beat().await;
                    if now - last_heard <= timeout {
                        continue;
                    }
                    self.exclude(pred_index, to_launcher).await?;
                    excluded.push(pred_index);
                    Event::Lost(Loss::Silent)
                }
                other => other,
            };
            let msg = match msg {
                Event::Lost(loss) => {
                    // Link from the live process before the lost one, then probe.
                    dead.push(pred_index);
                    let Some((reader, w, from)) = adopt(&ring, me, &dead, &excluded).await? else {
                        note(to_launcher, format!(
                            "process {me}: excluded from the ring (it was silent longer than the token timeout); it leaves"
                        )).await?;
                        return Ok(()); // the agent then waits for the launcher's stop
                    };
                    note(to_launcher, format!(
                        "process {me}: predecessor {pred_index} {}; process {from} now sends to it",
                        if loss == Loss::Died { "died" } else { "excluded" }
                    )).await?;
                    pred = reader;
                    pred_index = from;
                    _adopted = Some(w);
                    last_heard = Instant::now();
                    p.probe_sent();
                    succ.send(Link::Probe { origin: me }).await;
                    continue;
                }
                Event::Accepted(stream) => {
                    let _ = stream.set_nodelay(true);
                    let (r, mut w) = stream.into_split();
                    let mut r = FrameReader::<_, Link>::new(r);
                    match tokio::time::timeout(LINK_TIMEOUT, r.read()).await {
                        Ok(Ok(Some(Link::Adopt { index, .. }))) if excluded.contains(&index) => {
                            note(to_launcher, format!(
                                "process {me}: excluded process {index} asked to be adopted; refused"
                            )).await?;
                            let _ = write_frame(&mut w, &Link::Excluded).await;
                        }
                        Ok(Ok(Some(Link::Adopt {
                            index,
                            excluded: theirs,
                        }))) => {
                            note(
                                to_launcher,
                                format!("process {me}: now sends to process {index}"),
                            )
                            .await?;
                            for x in theirs {
                                if !excluded.contains(&x) {
                                    excluded.push(x);
                                }
                            }
                            succ.replace(w, me).await?;
                        }
                        other => {
                            tracing::warn!("a stranger's connection began with {other:?}; dropped")
                        }
                    }
                    continue;
                }
                Event::Msg(m) => {
                    last_heard = Instant::now();
                    m
                }
                Event::Beat => unreachable!("handled above"),
            };
            let generation = match msg {
                Link::Alive => continue,
                Link::Excluded => {
                    // Its predecessor was adopted by another process: this one was
                    // excluded while silent. Whatever token it held is stale.
                    note(to_launcher, format!(
                        "process {me}: excluded from the ring (it was silent longer than the token timeout); it leaves"
                    )).await?;
                    return Ok(()); // the agent then waits for the launcher's stop
                }
                Link::Token { generation } => generation,
                Link::Probe { origin } if origin == me => match p.probe_returned() {
                    Some(generation) => {
                        note(to_launcher, format!(
                            "process {me}: probe back without the token: token lost; regenerated (generation {generation})"
                        )).await?;
                        generation
                    }
                    None => {
                        note(
                            to_launcher,
                            format!("process {me}: probe back; the token is alive"),
                        )
                        .await?;
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
                    note(
                        to_launcher,
                        format!("process {me}: dropped a token of old generation {generation}"),
                    )
                    .await?;
                }
                Visit::Pass {
                    enter,
                    finished_now,
                    generation,
                } => {
                    if enter {
                        // The critical section: one record, written line by line, each
                        // line checked against the fence.
                        let record = p.written() - 1;
                        let mut refused = None;
                        for l in 1..=self.lines {
                            let line = format!("{host} {pid} {me} {record} {l}\n");
                            if let Fenced::Refused { newest } =
                                fenced_append(self.file, &fence, generation, &line).await?
                            {
                                refused = Some(newest);
                                break;
                            }
                        }
                        if let Some(newest) = refused {
                            p.saw_generation(newest);
                            note(to_launcher, format!(
                                "process {me}: the fence refused its token of generation {generation} (the shared file has seen generation {newest}); stale token dropped"
                            )).await?;
                            continue;
                        }
                    }
                    if finished_now {
                        write_frame(
                            to_launcher,
                            &ToLauncher::TokenDone {
                                records: p.written(),
                                visits: p.visits(),
                            },
                        )
                        .await?;
                    }
                    succ.send(Link::Token { generation }).await;
                }
            }
        }
    }

    /// The predecessor stayed silent too long: reported to the launcher as excluded, so
    /// that it no longer waits for it.
    async fn exclude(&self, pred: u32, to_launcher: &mut OwnedWriteHalf) -> anyhow::Result<()> {
        note(
            to_launcher,
            format!(
                "process {}: predecessor {pred} silent for more than {} ms; excluded",
                self.task.index,
                self.token_timeout.as_millis()
            ),
        )
        .await?;
        write_frame(to_launcher, &ToLauncher::TokenExcluded { index: pred })
            .await
            .context("the launcher is gone")
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
/// `None` if the candidate answers that this process was excluded.
async fn adopt(
    ring: &[(u32, SocketAddr)],
    me: u32,
    dead: &[u32],
    excluded: &[u32],
) -> anyhow::Result<Option<(FrameReader<OwnedReadHalf, Link>, OwnedWriteHalf, u32)>> {
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
        let adopt = Link::Adopt {
            index: me,
            excluded: excluded.to_vec(),
        };
        if write_frame(&mut w, &adopt).await.is_err() {
            continue;
        }
        let mut reader = FrameReader::new(r);
        match tokio::time::timeout(LINK_TIMEOUT, reader.read()).await {
            Ok(Ok(Some(Link::Hello { .. }))) => return Ok(Some((reader, w, candidate))),
            Ok(Ok(Some(Link::Excluded))) => return Ok(None),
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

/// The fence file beside the shared file: the highest token generation that wrote to it.
pub fn fence_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".fence");
    PathBuf::from(name)
}

/// What the fence said about one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    Written,
    /// A token of generation `newest` (newer than the writer's) has written already.
    Refused {
        newest: u64,
    },
}

/// One fenced append. Under an exclusive lock of the fence file (held for this one line
/// only): read the highest generation that wrote; refuse if the writer's is older; else
/// record it and append the line (open, write, close — so a record of several lines is
/// several writes, which would interleave with other writers without mutual exclusion).
/// This is the check a fencing token needs at the resource: once a regenerated token has
/// written, a stale holder that wakes up can no longer write.
pub async fn fenced_append(
    file: &Path,
    fence: &Path,
    generation: u64,
    line: &str,
) -> anyhow::Result<Fenced> {
    let (file, fence, line) = (file.to_owned(), fence.to_owned(), line.to_owned());
    tokio::task::spawn_blocking(move || fenced_append_blocking(&file, &fence, generation, &line))
        .await
        .context("the writer task panicked")?
}

fn fenced_append_blocking(
    file: &Path,
    fence: &Path,
    generation: u64,
    line: &str,
) -> anyhow::Result<Fenced> {
    use std::io::{Read, Seek, Write};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(fence)
        .with_context(|| format!("cannot open the fence file {}", fence.display()))?;
    // Unlocked when `f` is dropped, after the line is appended.
    let mut f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("cannot lock the fence file {}", fence.display()))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    let newest: u64 = match text.trim() {
        "" => 0,
        t => t
            .parse()
            .with_context(|| format!("the fence file {} is corrupt", fence.display()))?,
    };
    if generation < newest {
        return Ok(Fenced::Refused { newest });
    }
    if generation > newest {
        f.set_len(0)?;
        f.rewind()?;
        f.write_all(format!("{generation}\n").as_bytes())?;
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("cannot open the shared file {}", file.display()))?;
    out.write_all(line.as_bytes())
        .with_context(|| format!("cannot write to {}", file.display()))?;
    Ok(Fenced::Written)
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
