//! The launcher's side of the snapshot run.

use std::time::Duration;

use anyhow::bail;

use super::{INITIAL_UNITS, Mode};
use crate::launch::{Launched, ToLauncher, ToProcess};
use crate::ring::{LINK_TIMEOUT, RUN_TIMEOUT};
use crate::rng::SplitMix64;

/// One snapshot's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub snapshot: u64,
    pub initiator: u32,
    /// Units recorded in process states, and in flight on channels.
    pub held: u64,
    pub in_flight: u64,
    pub expected: u64,
}

impl Taken {
    pub fn total(&self) -> u64 {
        self.held + self.in_flight
    }
}

/// Runs `count` snapshots, one after the other, each started by a random process;
/// `on_taken` sees each.
pub async fn run(
    launched: &mut Launched,
    mode: Mode,
    count: u64,
    max_delay: Duration,
    dir: &std::path::Path,
    seed: u64,
    mut on_taken: impl FnMut(&Taken),
) -> anyhow::Result<Vec<Taken>> {
    let n = launched.members.len();
    let result = async {
        if n < 2 {
            bail!("a snapshot needs at least 2 processes (the hosts file has {n})");
        }
        let members: Vec<_> = launched.members.iter().map(|m| m.addr).collect();
        for i in 0..n as u32 {
            let order = ToProcess::Snapshots {
                members: members.clone(),
                mode,
                max_delay_us: max_delay.as_micros() as u64,
                dir: dir.to_path_buf(),
            };
            launched.send(i, &order).await?;
        }
        // The go-ahead comes once every process has connected to all the others.
        for _ in 0..n {
            match launched.hear(LINK_TIMEOUT * 2).await? {
                (_, ToLauncher::Ready) => {}
                (i, other) => bail!("process {i} said {other:?} before it was connected"),
            }
        }
        for i in 0..n as u32 {
            launched.send(i, &ToProcess::Go).await?;
        }
        let mut rng = SplitMix64::new(seed);
        let expected = n as u64 * INITIAL_UNITS;
        let mut all = Vec::new();
        for snapshot in 1..=count {
            // Let the application move units for a moment between snapshots.
            tokio::time::sleep(Duration::from_millis(rng.below(20) as u64)).await;
            let initiator = rng.below(n) as u32;
            launched
                .send(initiator, &ToProcess::SnapshotStart { snapshot })
                .await?;
            let (mut held, mut in_flight, mut got) = (0, 0, 0);
            while got < n {
                match launched.hear(RUN_TIMEOUT).await? {
                    (
                        _,
                        ToLauncher::Recorded {
                            snapshot: s,
                            units,
                            in_flight: f,
                        },
                    ) if s == snapshot => {
                        held += units;
                        in_flight += f;
                        got += 1;
                    }
                    (i, other) => bail!("process {i} said {other:?} during snapshot {snapshot}"),
                }
            }
            let taken = Taken {
                snapshot,
                initiator,
                held,
                in_flight,
                expected,
            };
            on_taken(&taken);
            all.push(taken);
        }
        Ok(all)
    }
    .await;
    launched.stop_all().await;
    result
}
