//! The launcher's side of the failure detector: start it, relay the detectors' lists,
//! stop it.

use std::time::Duration;

use crate::launch::{Launched, ToLauncher, ToProcess};

/// What the launcher sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdEvent {
    /// Detector `detector`'s lists changed.
    Lists {
        detector: u32,
        alive: Vec<u32>,
        dead: Vec<u32>,
    },
    /// Process `index`'s launcher connection ended (it died, or was killed).
    Gone { index: u32 },
    /// A process failed (its error).
    Failed { index: u32, error: String },
}

/// Runs the detector over `launched` until `stop` fires; every event goes to `on_event`.
pub async fn run(
    launched: &mut Launched,
    period: Duration,
    threshold: u64,
    mut on_event: impl FnMut(FdEvent),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let members: Vec<std::net::SocketAddr> = launched.members.iter().map(|m| m.addr).collect();
    anyhow::ensure!(
        members.len() >= 3,
        "the failure detector needs at least 3 processes (2 detectors and 1 watched); the hosts file has {}",
        members.len()
    );
    let order = ToProcess::Detect {
        members,
        period_ms: period.as_millis() as u64,
        threshold,
    };
    for i in 0..launched.members.len() as u32 {
        launched.send(i, &order).await?;
    }
    tokio::pin!(stop);
    let mut gone = vec![false; launched.members.len()];
    loop {
        let heard = tokio::select! {
            () = &mut stop => break,
            h = launched.hear_raw(Duration::from_secs(24 * 3600)) => h?,
        };
        match heard {
            (i, Some(ToLauncher::Lists { alive, dead })) => on_event(FdEvent::Lists {
                detector: i,
                alive,
                dead,
            }),
            (i, Some(ToLauncher::Failed { error })) => {
                on_event(FdEvent::Failed { index: i, error })
            }
            (i, None) if !gone[i as usize] => {
                gone[i as usize] = true;
                on_event(FdEvent::Gone { index: i });
            }
            _ => {}
        }
    }
    launched.stop_all().await;
    Ok(())
}
