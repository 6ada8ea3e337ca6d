//! The failure detector on sockets: every process answers pings; processes 0 and 1 also
//! run a detector.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{Watch, lists, watched};
use crate::frame::{FrameReader, write_frame};
use crate::launch::{ToLauncher, ToProcess};

/// What travels between detectors and processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdMsg {
    /// First message of a connection: who opens it.
    Hello {
        index: u32,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// A detector's suspects, for the other detector.
    Report {
        dead: Vec<u32>,
    },
}

/// Runs process `index`'s part until the launcher says stop (or goes away).
#[allow(clippy::too_many_arguments)]
pub async fn run_member(
    index: u32,
    members: Vec<SocketAddr>,
    period: Duration,
    threshold: u64,
    listener: TcpListener,
    from_launcher: &mut FrameReader<OwnedReadHalf, ToProcess>,
    to_launcher: &mut OwnedWriteHalf,
) -> anyhow::Result<()> {
    let n = members.len() as u32;
    anyhow::ensure!(n >= 3, "the failure detector needs at least 3 processes");
    anyhow::ensure!(
        period >= super::MIN_PERIOD,
        "period under {:?}",
        super::MIN_PERIOD
    );
    let (report_tx, mut reports) = mpsc::channel::<(u32, Vec<u32>)>(64);
    let responder = tokio::spawn(respond(listener, report_tx));
    let result = if index < 2 {
        detect(
            index,
            &members,
            period,
            threshold,
            &mut reports,
            from_launcher,
            to_launcher,
        )
        .await
    } else {
        drop(reports);
        let _ = from_launcher.read().await;
        Ok(())
    };
    responder.abort();
    result
}

/// Answers every ping on every connection; hands reports to the detector.
async fn respond(listener: TcpListener, reports: mpsc::Sender<(u32, Vec<u32>)>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or similar: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let reports = reports.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut reader = FrameReader::<_, FdMsg>::new(r);
            let Ok(Some(FdMsg::Hello { index: from })) = reader.read().await else {
                return;
            };
            while let Ok(Some(msg)) = reader.read().await {
                match msg {
                    FdMsg::Ping { seq } => {
                        if write_frame(&mut w, &FdMsg::Pong { seq }).await.is_err() {
                            return;
                        }
                    }
                    FdMsg::Report { dead } => {
                        let _ = reports.try_send((from, dead));
                    }
                    FdMsg::Hello { .. } | FdMsg::Pong { .. } => return,
                }
            }
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn detect(
    me: u32,
    members: &[SocketAddr],
    period: Duration,
    threshold: u64,
    reports: &mut mpsc::Receiver<(u32, Vec<u32>)>,
    from_launcher: &mut FrameReader<OwnedReadHalf, ToProcess>,
    to_launcher: &mut OwnedWriteHalf,
) -> anyhow::Result<()> {
    let n = members.len() as u32;
    let other = 1 - me;
    let mut watch = Watch::default();
    let mut peer_report: Vec<u32> = Vec::new();
    let mut conns: BTreeMap<u32, OwnedWriteHalf> = BTreeMap::new();
    let (pong_tx, mut pongs) = mpsc::channel::<(u32, Option<u64>)>(1024);
    let mut shown: Option<(Vec<u32>, Vec<u32>)> = None;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let connect_limit = period.min(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let takeover = watch.suspected(other, threshold);
                for p in watched(me, n, takeover) {
                    if let std::collections::btree_map::Entry::Vacant(slot) = conns.entry(p) {
                        if let Some(w) = open(me, p, members[p as usize], connect_limit, &pong_tx).await {
                            slot.insert(w);
                        }
                    }
                    let seq = watch.next_ping(p);
                    if let Some(w) = conns.get_mut(&p) {
                        if write_frame(w, &FdMsg::Ping { seq }).await.is_err() {
                            conns.remove(&p);
                        }
                    }
                }
                // Tell the other detector what this one suspects of its own half.
                let mine: Vec<u32> = watched(me, n, false)
                    .into_iter()
                    .filter(|&p| p != other && watch.suspected(p, threshold))
                    .collect();
                if let Some(w) = conns.get_mut(&other) {
                    if write_frame(w, &FdMsg::Report { dead: mine }).await.is_err() {
                        conns.remove(&other);
                    }
                }
            }
            Some((p, pong)) = pongs.recv() => match pong {
                Some(seq) => watch.received(p, seq),
                None => { conns.remove(&p); }
            },
            Some((from, dead)) = reports.recv() => {
                if from == other {
                    peer_report = dead;
                }
            }
            _ = from_launcher.read() => return Ok(()),
        }
        let now = lists(me, n, &watch, threshold, &peer_report);
        if shown.as_ref() != Some(&now) {
            tracing::info!("detector {me}: alive {:?} dead {:?}", now.0, now.1);
            write_frame(
                to_launcher,
                &ToLauncher::Lists {
                    alive: now.0.clone(),
                    dead: now.1.clone(),
                },
            )
            .await
            .context("the launcher is gone")?;
            shown = Some(now);
        }
    }
}

/// Connects to process `p` and starts reading its pongs; `None` if it cannot be reached
/// now (tried again next period).
async fn open(
    me: u32,
    p: u32,
    addr: SocketAddr,
    limit: Duration,
    pongs: &mpsc::Sender<(u32, Option<u64>)>,
) -> Option<OwnedWriteHalf> {
    let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    write_frame(&mut w, &FdMsg::Hello { index: me })
        .await
        .ok()?;
    let pongs = pongs.clone();
    tokio::spawn(async move {
        let mut reader = FrameReader::<_, FdMsg>::new(r);
        while let Ok(Some(FdMsg::Pong { seq })) = reader.read().await {
            if pongs.send((p, Some(seq))).await.is_err() {
                return;
            }
        }
        let _ = pongs.send((p, None)).await;
    });
    Some(w)
}
