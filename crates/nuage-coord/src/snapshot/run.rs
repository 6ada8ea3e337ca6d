//! A process of the snapshot run: complete graph, the conserving application, and the
//! recorder on real channels.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{ChannelMsg, Checkpoint, Effect, INITIAL_UNITS, MAX_TRANSFER, Mode, Recorder};
use crate::frame::{FrameReader, write_frame};
use crate::launch::{ToLauncher, ToProcess};
use crate::ring::LINK_TIMEOUT;
use crate::rng::SplitMix64;

/// The application's wait on its channels before each transfer: up to this long.
pub const APP_TICK_MAX: Duration = Duration::from_millis(5);
/// Messages queued per outgoing channel before the application waits.
const CHANNEL_QUEUE: usize = 1024;

/// What a process is told for a snapshot run.
#[derive(Debug, Clone)]
pub struct Setup {
    pub index: u32,
    pub members: Vec<SocketAddr>,
    pub mode: Mode,
    /// Each message on a channel waits a random 0..=max_delay before it is sent.
    pub max_delay: Duration,
    /// Where checkpoint files go.
    pub dir: PathBuf,
}

pub async fn run_member(
    setup: Setup,
    listener: TcpListener,
    from_launcher: &mut FrameReader<OwnedReadHalf, ToProcess>,
    to_launcher: &mut OwnedWriteHalf,
) -> anyhow::Result<()> {
    let me = setup.index;
    let n = setup.members.len() as u32;
    anyhow::ensure!(n >= 2, "a snapshot needs at least 2 processes");
    let peers: Vec<u32> = (0..n).filter(|&j| j != me).collect();
    // Complete graph: one outgoing connection per peer, one incoming from each.
    let acceptor = tokio::spawn(accept_all(listener, n - 1));
    let mut outgoing = BTreeMap::new();
    for &j in &peers {
        let addr = setup.members[j as usize];
        let s = tokio::time::timeout(LINK_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("process {j} at {addr} does not answer"))?
            .with_context(|| format!("cannot connect to process {j} at {addr}"))?;
        let _ = s.set_nodelay(true);
        let (_, mut w) = s.into_split();
        write_frame(&mut w, &ChannelMsg::Hello { from: me }).await?;
        outgoing.insert(j, w);
    }
    let incoming = acceptor.await.context("accepting channels")??;
    write_frame(to_launcher, &ToLauncher::Ready).await?;
    match tokio::time::timeout(LINK_TIMEOUT, from_launcher.read()).await {
        Ok(Ok(Some(ToProcess::Go))) => {}
        Ok(Ok(Some(ToProcess::Stop))) | Ok(Ok(None)) => return Ok(()),
        other => bail!("expected `go` from the launcher, got {other:?}"),
    }
    let mut rng = SplitMix64::from_entropy();
    // One writer task per outgoing channel keeps it FIFO while delaying each message.
    let mut senders: BTreeMap<u32, mpsc::Sender<ChannelMsg>> = BTreeMap::new();
    for (j, mut w) in outgoing {
        let (tx, mut rx) = mpsc::channel::<ChannelMsg>(CHANNEL_QUEUE);
        let max = setup.max_delay.as_micros() as usize;
        let mut delay_rng = SplitMix64::new(rng.next_u64());
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if max > 0 {
                    let d = delay_rng.below(max + 1) as u64;
                    tokio::time::sleep(Duration::from_micros(d)).await;
                }
                if write_frame(&mut w, &msg).await.is_err() {
                    return;
                }
            }
        });
        senders.insert(j, tx);
    }
    let (in_tx, mut inbox) = mpsc::channel::<(u32, Option<ChannelMsg>)>(CHANNEL_QUEUE);
    for (from, mut reader) in incoming {
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            loop {
                match reader.read().await {
                    Ok(Some(m)) => {
                        if in_tx.send((from, Some(m))).await.is_err() {
                            return;
                        }
                    }
                    _ => {
                        let _ = in_tx.send((from, None)).await;
                        return;
                    }
                }
            }
        });
    }
    let mut units = INITIAL_UNITS;
    let mut recorder = Recorder::new(me, peers.clone());
    let tick_max = APP_TICK_MAX.as_micros() as usize;
    loop {
        let wait = Duration::from_micros(1 + rng.below(tick_max) as u64);
        let effect = tokio::select! {
            // The application: wait on the channels with a timeout, then move units.
            () = tokio::time::sleep(wait) => {
                let blocked = setup.mode == Mode::Blocking && recorder.recording();
                if !blocked && units > 0 {
                    let to = peers[rng.below(peers.len())];
                    let amount = (1 + rng.below(MAX_TRANSFER as usize) as u64).min(units);
                    units -= amount;
                    send(&senders, to, ChannelMsg::Transfer { units: amount }).await?;
                }
                Effect::None
            }
            got = inbox.recv() => match got {
                Some((from, Some(ChannelMsg::Transfer { units: u }))) => {
                    units += u;
                    recorder.transfer(from, u);
                    Effect::None
                }
                Some((from, Some(ChannelMsg::Marker { snapshot }))) => recorder
                    .marker(from, snapshot, units)
                    .map_err(anyhow::Error::msg)?,
                Some((from, Some(ChannelMsg::Hello { .. }))) => {
                    bail!("process {from} sent hello twice")
                }
                Some((from, None)) => bail!(
                    "process {from} closed its channel (it died?); snapshots cannot complete"
                ),
                None => bail!("every channel is gone"),
            },
            order = from_launcher.read() => match order? {
                Some(ToProcess::SnapshotStart { snapshot }) => recorder
                    .initiate(snapshot, units)
                    .map_err(anyhow::Error::msg)?,
                Some(ToProcess::Stop) | None => return Ok(()),
                Some(other) => bail!("unexpected {other:?} from the launcher"),
            },
        };
        let done = match effect {
            Effect::None => None,
            Effect::SendMarkers(s) => {
                markers(&senders, s).await?;
                None
            }
            Effect::SendMarkersAndDone(s, cp) => {
                markers(&senders, s).await?;
                Some(cp)
            }
            Effect::Done(cp) => Some(cp),
        };
        if let Some(cp) = done {
            save(&setup.dir, &cp).await?;
            write_frame(
                to_launcher,
                &ToLauncher::Recorded {
                    snapshot: cp.snapshot,
                    units: cp.units,
                    in_flight: cp.in_flight(),
                },
            )
            .await?;
        }
    }
}

async fn send(
    senders: &BTreeMap<u32, mpsc::Sender<ChannelMsg>>,
    to: u32,
    msg: ChannelMsg,
) -> anyhow::Result<()> {
    senders[&to]
        .send(msg)
        .await
        .map_err(|_| anyhow::anyhow!("the channel to process {to} is broken"))
}

async fn markers(
    senders: &BTreeMap<u32, mpsc::Sender<ChannelMsg>>,
    snapshot: u64,
) -> anyhow::Result<()> {
    for &j in senders.keys() {
        send(senders, j, ChannelMsg::Marker { snapshot }).await?;
    }
    Ok(())
}

/// Writes the checkpoint file `snapshot-S-process-P.json`.
async fn save(dir: &Path, cp: &Checkpoint) -> anyhow::Result<()> {
    let path = dir.join(format!(
        "snapshot-{}-process-{}.json",
        cp.snapshot, cp.process
    ));
    let body = serde_json::to_vec_pretty(cp)?;
    tokio::fs::write(&path, body)
        .await
        .with_context(|| format!("cannot write the checkpoint {}", path.display()))
}

async fn accept_all(
    listener: TcpListener,
    count: u32,
) -> anyhow::Result<Vec<(u32, FrameReader<OwnedReadHalf, ChannelMsg>)>> {
    let mut out = Vec::new();
    while out.len() < count as usize {
        let (s, _) = tokio::time::timeout(LINK_TIMEOUT, listener.accept())
            .await
            .context("a peer did not connect in time")??;
        let _ = s.set_nodelay(true);
        let (r, _) = s.into_split();
        let mut reader = FrameReader::new(r);
        match tokio::time::timeout(LINK_TIMEOUT, reader.read()).await {
            Ok(Ok(Some(ChannelMsg::Hello { from }))) => out.push((from, reader)),
            other => bail!("a peer began with {other:?} instead of hello"),
        }
    }
    Ok(out)
}
