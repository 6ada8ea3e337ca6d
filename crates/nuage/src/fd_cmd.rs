//! `nuage fd`: the two-detector failure detector over launched processes
//! (library: nuage_coord::detector).

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use nuage_coord::detector::{self, drive::FdEvent};

use crate::launch_cmd::{self, LaunchArgs};

#[derive(Args, Debug)]
pub struct FdArgs {
    #[command(flatten)]
    launch: LaunchArgs,
    /// Heartbeat period in milliseconds
    #[arg(long, value_name = "MS", default_value_t = detector::DEFAULT_PERIOD.as_millis() as u64)]
    period_ms: u64,
    /// Unanswered heartbeats tolerated before a process is suspected
    #[arg(long, value_name = "K", default_value_t = detector::DEFAULT_THRESHOLD)]
    threshold: u64,
    /// Stop after this many seconds (default: run until Ctrl-C)
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
}

pub async fn run(args: FdArgs) -> anyhow::Result<()> {
    if args.period_ms < detector::MIN_PERIOD.as_millis() as u64 {
        bail!(
            "--period-ms must be at least {}",
            detector::MIN_PERIOD.as_millis()
        );
    }
    let signal = crate::net_cmd::stop_on_signal()?;
    let mut launched = launch_cmd::launch(&args.launch).await?;
    println!(
        "detectors: process 0 watches {:?}, process 1 watches {:?}; period {} ms, threshold {}",
        detector::watched(0, launched.members.len().max(3) as u32, false),
        detector::watched(1, launched.members.len().max(3) as u32, false),
        args.period_ms,
        args.threshold
    );
    let duration = args.duration;
    let stop = async move {
        match duration {
            Some(s) => tokio::select! {
                _ = signal.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(s)) => {}
            },
            None => signal.cancelled().await,
        }
    };
    let start = Instant::now();
    let on_event = move |e: FdEvent| {
        let t = start.elapsed().as_secs_f64();
        match e {
            FdEvent::Lists {
                detector,
                alive,
                dead,
            } => println!("{t:8.3}s detector {detector}: alive {alive:?} dead {dead:?}"),
            FdEvent::Gone { index } => println!("{t:8.3}s process {index} is gone"),
            FdEvent::Failed { index, error } => {
                println!("{t:8.3}s process {index} failed: {error}")
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    };
    detector::drive::run(
        &mut launched,
        Duration::from_millis(args.period_ms),
        args.threshold,
        on_event,
        stop,
    )
    .await
}
