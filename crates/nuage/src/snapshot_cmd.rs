//! `nuage snapshot`: Chandy-Lamport snapshots over a complete graph of launched processes
//! (library: nuage_coord::snapshot).

use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};
use nuage_coord::snapshot::{self, Mode};

use crate::launch_cmd::{self, LaunchArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// A process sends nothing between recording its state and its last marker
    Blocking,
    /// The classic algorithm: the application never stops
    Nonblocking,
}

/// Most snapshots in one run.
const MAX_COUNT: u64 = 100_000;
/// Longest random delay of a channel message, in milliseconds.
const MAX_DELAY_MS: u64 = 1_000;

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    launch: LaunchArgs,
    /// Snapshot variant
    #[arg(long, value_enum, default_value_t = ModeArg::Nonblocking)]
    mode: ModeArg,
    /// How many snapshots, one after the other
    #[arg(long, value_name = "N", default_value_t = 10)]
    count: u64,
    /// Each channel message waits a random time up to this before it is sent
    #[arg(long, value_name = "MS", default_value_t = 2)]
    max_delay_ms: u64,
    /// Seed for the choice of initiators (printed)
    #[arg(long)]
    seed: Option<u64>,
}

pub async fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    if args.count == 0 || args.count > MAX_COUNT {
        bail!("--count must be 1..={MAX_COUNT}");
    }
    if args.max_delay_ms > MAX_DELAY_MS {
        bail!("--max-delay-ms must be at most {MAX_DELAY_MS}");
    }
    let mut launched = launch_cmd::launch(&args.launch).await?;
    let dir = launched
        .members
        .first()
        .and_then(|m| m.log.parent())
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let seed = args
        .seed
        .unwrap_or_else(|| nuage_coord::rng::SplitMix64::from_entropy().next_u64());
    let mode = match args.mode {
        ModeArg::Blocking => Mode::Blocking,
        ModeArg::Nonblocking => Mode::Nonblocking,
    };
    println!(
        "{} snapshots ({:?}), seed {seed}; checkpoints in {}",
        args.count,
        args.mode,
        dir.display()
    );
    let taken = snapshot::drive::run(
        &mut launched,
        mode,
        args.count,
        Duration::from_millis(args.max_delay_ms),
        &dir,
        seed,
        |t| {
            let ok = if t.total() == t.expected {
                "ok"
            } else {
                "WRONG"
            };
            println!(
                "snapshot {}: initiator {}, recorded {} (held {} + in flight {}), expected {} {ok}",
                t.snapshot,
                t.initiator,
                t.total(),
                t.held,
                t.in_flight,
                t.expected
            );
        },
    )
    .await?;
    let wrong = taken.iter().filter(|t| t.total() != t.expected).count();
    if wrong > 0 {
        bail!(
            "{wrong} of {} snapshots recorded a wrong total",
            taken.len()
        );
    }
    let with_flight = taken.iter().filter(|t| t.in_flight > 0).count();
    println!(
        "all {} snapshots recorded the conserved total ({with_flight} caught units in flight)",
        taken.len()
    );
    Ok(())
}
