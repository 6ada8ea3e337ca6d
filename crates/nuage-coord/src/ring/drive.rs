//! The launcher's side of a ring run: hand out the bootstrap addresses, wait until every
//! process has its links, say go, collect the reports, stop everyone.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;

use super::{LINK_TIMEOUT, RUN_TIMEOUT};
use crate::election::{self, Kind};
use crate::launch::{Algorithm, Bootstrap, ElectionReport, Launched, ToLauncher, ToProcess};

/// Builds the ring over `launched` and has every process report ready.
async fn build(
    launched: &mut Launched,
    bootstrap: Bootstrap,
    algorithm: impl Fn(u32) -> Algorithm,
) -> anyhow::Result<()> {
    let n = launched.members.len() as u32;
    if n < 2 {
        bail!("a ring needs at least 2 processes (the hosts file has {n})");
    }
    for i in 0..n {
        let contact = match (bootstrap, i) {
            (_, 0) => None,
            (Bootstrap::Chain, i) => Some(launched.members[i as usize - 1].addr),
            (Bootstrap::First, _) => Some(launched.members[0].addr),
        };
        let order = ToProcess::Ring {
            n,
            bootstrap,
            contact,
            algorithm: algorithm(i),
        };
        launched.send(i, &order).await?;
    }
    let mut ready = 0;
    // Building takes at most a few link steps per process.
    let limit = LINK_TIMEOUT * 3;
    while ready < n {
        match launched.hear(limit).await? {
            (_, ToLauncher::Ready) => ready += 1,
            (i, other) => bail!("process {i} said {other:?} before the ring was up"),
        }
    }
    for i in 0..n {
        launched.send(i, &ToProcess::Go).await?;
    }
    Ok(())
}

/// Builds the ring and circulates the pid message; returns (host, pid) of every process
/// in ring order from process 0.
pub async fn circulate(
    launched: &mut Launched,
    bootstrap: Bootstrap,
) -> anyhow::Result<Vec<(String, u32)>> {
    let result = async {
        build(launched, bootstrap, |_| Algorithm::Circulate).await?;
        match launched.hear(RUN_TIMEOUT + Duration::from_secs(5)).await? {
            (0, ToLauncher::Circulated { pids }) => Ok(pids),
            (i, other) => bail!("process {i} said {other:?} during the pid message"),
        }
    }
    .await;
    launched.stop_all().await;
    result
}

/// The outcome of an election over real processes.
#[derive(Debug, Clone)]
pub struct ElectionResult {
    /// Per process (in launch order): its report.
    pub reports: Vec<ElectionReport>,
    /// Messages sent, per kind, over all processes.
    pub counts: BTreeMap<Kind, usize>,
    /// Wall time from go to the last report.
    pub elapsed: Duration,
}

impl ElectionResult {
    pub fn leader(&self) -> &ElectionReport {
        self.reports
            .iter()
            .find(|r| r.leader == r.id)
            .expect("checked in elect")
    }
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }
}

/// Builds the ring and runs the election; `ids[i]` is process i's id, `initiators` the
/// processes that start. Checks the outcome: one leader (the largest id), known to all,
/// ranks 0..N−1 without gap or repeat, the leader knows N.
pub async fn elect(
    launched: &mut Launched,
    bootstrap: Bootstrap,
    ids: &[election::Id],
    initiators: &[u32],
) -> anyhow::Result<ElectionResult> {
    let n = launched.members.len();
    assert_eq!(ids.len(), n);
    let result = async {
        build(launched, bootstrap, |i| Algorithm::Election {
            id: ids[i as usize],
            initiator: initiators.contains(&i),
        })
        .await?;
        let start = std::time::Instant::now();
        let mut reports: Vec<Option<ElectionReport>> = vec![None; n];
        let mut left = n;
        while left > 0 {
            match launched.hear(RUN_TIMEOUT + Duration::from_secs(5)).await? {
                (i, ToLauncher::Elected(r)) if reports[i as usize].is_none() => {
                    reports[i as usize] = Some(r);
                    left -= 1;
                }
                (i, other) => bail!("process {i} said {other:?} during the election"),
            }
        }
        let elapsed = start.elapsed();
        let reports: Vec<ElectionReport> = reports.into_iter().map(Option::unwrap).collect();
        check(&reports)?;
        let mut counts = BTreeMap::new();
        for r in &reports {
            for m in &r.sent {
                *counts.entry(m.kind()).or_insert(0) += 1;
            }
        }
        Ok(ElectionResult {
            reports,
            counts,
            elapsed,
        })
    }
    .await;
    launched.stop_all().await;
    result
}

fn check(reports: &[ElectionReport]) -> anyhow::Result<()> {
    let n = reports.len();
    let max = reports.iter().map(|r| r.id).max().expect("n > 0");
    let leaders: Vec<_> = reports.iter().filter(|r| r.leader == r.id).collect();
    if leaders.len() != 1 || leaders[0].id != max {
        bail!("the election went wrong: leaders {leaders:?}, largest id {max}");
    }
    if let Some(r) = reports.iter().find(|r| r.leader != max) {
        bail!(
            "process with id {} believes the leader is {}",
            r.id,
            r.leader
        );
    }
    if leaders[0].size != Some(n as u32) {
        bail!(
            "the leader counted {:?} processes, not {n}",
            leaders[0].size
        );
    }
    let mut ranks: Vec<u32> = reports.iter().map(|r| r.rank).collect();
    ranks.sort_unstable();
    if ranks != (0..n as u32).collect::<Vec<_>>() {
        bail!("ranks are not 0..{n} without gap or repeat: {ranks:?}");
    }
    Ok(())
}

/// How one process ended a token-ring run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenEnd {
    /// It wrote all its records, having seen the token this many times by then.
    Done { records: u32, visits: u64 },
    /// It died (or was killed) before writing all its records.
    Died,
    /// It stayed silent longer than the token timeout and was excluded from the ring.
    Excluded,
}

/// Builds the ring and runs token-ring mutual exclusion: each process appends `records`
/// records of `lines` lines to `file`. Processes that die are tolerated (the ring is
/// repaired, a lost token regenerated); `on_note` sees what the processes report about
/// that. Ends when every live process has written all its records.
pub async fn token_mutex(
    launched: &mut Launched,
    bootstrap: Bootstrap,
    file: &std::path::Path,
    records: u32,
    lines: u32,
    token_timeout: Duration,
    mut on_note: impl FnMut(&str),
) -> anyhow::Result<Vec<TokenEnd>> {
    let n = launched.members.len();
    let result = async {
        build(launched, bootstrap, |_| Algorithm::TokenMutex {
            file: file.to_path_buf(),
            records,
            lines,
            token_timeout_ms: token_timeout.as_millis() as u64,
        })
        .await?;
        // Longest silence of the whole ring while a failure is repaired: a detection,
        // a repair, a probe round.
        let quiet = RUN_TIMEOUT.max(token_timeout * 3) + Duration::from_secs(5);
        let mut ends: Vec<Option<TokenEnd>> = vec![None; n];
        while ends.iter().any(Option::is_none) {
            match launched.hear_raw(quiet).await? {
                (i, Some(ToLauncher::TokenDone { records, visits })) => {
                    if ends[i as usize].is_none() {
                        ends[i as usize] = Some(TokenEnd::Done { records, visits });
                    }
                }
                (_, Some(ToLauncher::TokenExcluded { index })) if (index as usize) < n => {
                    if ends[index as usize].is_none() {
                        ends[index as usize] = Some(TokenEnd::Excluded);
                    }
                }
                (_, Some(ToLauncher::TokenNote { text })) => on_note(&text),
                (i, Some(ToLauncher::Failed { error })) => {
                    bail!("process {i} failed: {error}")
                }
                (i, None) => {
                    if ends[i as usize].is_none() {
                        let m = &launched.members[i as usize];
                        on_note(&format!(
                            "process {i} on {} (pid {}) died before writing all its records",
                            m.host, m.pid
                        ));
                        ends[i as usize] = Some(TokenEnd::Died);
                    }
                }
                (i, Some(other)) => bail!("process {i} said {other:?} during token-ring mutex"),
            }
        }
        if !ends
            .iter()
            .any(|e| matches!(e, Some(TokenEnd::Done { .. })))
        {
            bail!("every process died or was excluded");
        }
        Ok(ends.into_iter().map(Option::unwrap).collect())
    }
    .await;
    launched.stop_all().await;
    result
}
