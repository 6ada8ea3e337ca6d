//! `nuage ring` and `nuage election`: a ring of launched processes, the pid message, and
//! Chang-Roberts election with numbering (library: nuage_coord::ring).

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use nuage_coord::election::Kind;
use nuage_coord::launch::Bootstrap;
use nuage_coord::ring::drive;

use crate::launch_cmd::{self, LaunchArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootstrapArg {
    /// Each process knows its predecessor; the last address travels back to the first
    Chain,
    /// Every process is given the first one's address and joins there
    First,
}

impl From<BootstrapArg> for Bootstrap {
    fn from(b: BootstrapArg) -> Self {
        match b {
            BootstrapArg::Chain => Bootstrap::Chain,
            BootstrapArg::First => Bootstrap::First,
        }
    }
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RingArgs {
    #[command(subcommand)]
    cmd: Option<RingCmd>,
    #[command(flatten)]
    launch: Option<LaunchArgs>,
    /// How the ring is built
    #[arg(long, value_enum, default_value_t = BootstrapArg::Chain)]
    bootstrap: BootstrapArg,
}

#[derive(Subcommand, Debug)]
enum RingCmd {
    /// Token-ring mutual exclusion: each process appends records to a shared file
    Mutex(RingMutexArgs),
}

#[derive(Args, Debug)]
struct RingMutexArgs {
    #[command(flatten)]
    launch: LaunchArgs,
    /// How the ring is built
    #[arg(long, value_enum, default_value_t = BootstrapArg::Chain)]
    bootstrap: BootstrapArg,
    /// The shared file (on a file system every process sees)
    #[arg(long, value_name = "FILE")]
    file: std::path::PathBuf,
    /// Records each process appends, one per token visit
    #[arg(long, value_name = "N")]
    records: u32,
    /// Lines per record (each line its own append)
    #[arg(long, value_name = "L", default_value_t = 5)]
    lines: u32,
    /// Silence of a predecessor (no token, probe or heartbeat) after which it is
    /// excluded and a lost token regenerated
    #[arg(long, value_name = "MS", default_value_t = nuage_coord::ring::token::DEFAULT_TOKEN_TIMEOUT.as_millis() as u64)]
    token_timeout_ms: u64,
}

#[derive(Args, Debug)]
pub struct ElectionArgs {
    #[command(flatten)]
    launch: LaunchArgs,
    /// How the ring is built
    #[arg(long, value_enum, default_value_t = BootstrapArg::Chain)]
    bootstrap: BootstrapArg,
    /// This many processes, chosen at random, start the election
    #[arg(long, value_name = "K", conflicts_with = "initiator_ids")]
    initiators: Option<usize>,
    /// These processes start it: their numbers (0-based, in hosts-file order)
    #[arg(long, value_name = "A,B,…", value_delimiter = ',')]
    initiator_ids: Vec<u32>,
    /// Each process's id: its pid (as in the classic lab; pids grow in launch order, so
    /// ids decrease along a chain-built ring: Chang-Roberts' worst case), or random
    /// distinct numbers (a random order along the ring)
    #[arg(long, value_enum, default_value_t = IdsArg::Pid)]
    ids: IdsArg,
    /// Seed for the random choices (initiators, random ids); printed, so a run's choices
    /// can be replayed
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IdsArg {
    /// The process's pid
    Pid,
    /// Distinct random numbers below 1 000 000
    Random,
}

/// Random ids are below this, so they stay readable.
const RANDOM_ID_BOUND: u64 = 1_000_000;

pub async fn ring(args: RingArgs) -> anyhow::Result<()> {
    if let Some(RingCmd::Mutex(m)) = args.cmd {
        return ring_mutex(m).await;
    }
    let Some(launch) = args.launch else {
        bail!("`nuage ring` needs --hosts FILE");
    };
    let mut launched = launch_cmd::launch(&launch).await?;
    let pids = drive::circulate(&mut launched, args.bootstrap.into()).await?;
    let how = match args.bootstrap {
        BootstrapArg::Chain => "chain",
        BootstrapArg::First => "first",
    };
    println!("ring built ({how} bootstrap); the pid message came back to process 0:");
    let mut path: Vec<String> = pids.iter().map(|(h, p)| format!("{h}[{p}]")).collect();
    if let Some(first) = path.first().cloned() {
        path.push(first);
    }
    println!("{}", path.join(" -> "));
    Ok(())
}

pub async fn election(args: ElectionArgs) -> anyhow::Result<()> {
    let mut launched = launch_cmd::launch(&args.launch).await?;
    let n = launched.members.len();
    let seed = args
        .seed
        .unwrap_or_else(|| nuage_coord::rng::SplitMix64::from_entropy().next_u64());
    let mut rng = nuage_coord::rng::SplitMix64::new(seed);
    let initiators: Vec<u32> = if !args.initiator_ids.is_empty() {
        if let Some(bad) = args.initiator_ids.iter().find(|i| **i as usize >= n) {
            launched.stop_all().await;
            bail!(
                "--initiator-ids: there is no process {bad} (processes are 0..{})",
                n - 1
            );
        }
        args.initiator_ids.clone()
    } else {
        let k = args.initiators.unwrap_or(1);
        if k == 0 || k > n {
            launched.stop_all().await;
            bail!("--initiators must be between 1 and the number of processes ({n})");
        }
        let mut all: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut all);
        all.truncate(k);
        all.sort_unstable();
        all
    };
    let ids: Vec<u64> = match args.ids {
        // Pids repeat only across hosts (checked below).
        IdsArg::Pid => launched.members.iter().map(|m| u64::from(m.pid)).collect(),
        IdsArg::Random => {
            let mut pool: Vec<u64> = Vec::with_capacity(n);
            while pool.len() < n {
                let id = 1 + rng.next_u64() % (RANDOM_ID_BOUND - 1);
                if !pool.contains(&id) {
                    pool.push(id);
                }
            }
            pool
        }
    };
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        launched.stop_all().await;
        bail!("two processes have the same pid (on different hosts); run again");
    }
    let result = drive::elect(&mut launched, args.bootstrap.into(), &ids, &initiators).await?;
    println!("seed: {seed}; initiators: {initiators:?}");
    println!("messages sent:");
    for (m, r) in launched.members.iter().zip(&result.reports) {
        let sent: Vec<String> = r.sent.iter().map(ToString::to_string).collect();
        println!("  process {} (id {}): {}", m.index, r.id, sent.join(" "));
    }
    let leader = result.leader();
    let leader_index = result
        .reports
        .iter()
        .position(|r| r.id == leader.id)
        .unwrap_or(0);
    println!(
        "leader: id {} (process {} on {}); N = {}",
        leader.id,
        leader_index,
        launched.members[leader_index].host,
        leader.size.unwrap_or(0)
    );
    let mut t = crate::table::Table::new(&["PROCESS", "HOST", "ID", "RANK", "SENT"]);
    for (m, r) in launched.members.iter().zip(&result.reports) {
        t.row(vec![
            m.index.to_string(),
            m.host.clone(),
            r.id.to_string(),
            r.rank.to_string(),
            r.sent.len().to_string(),
        ]);
    }
    print!("{}", t.render());
    let count = |k| result.counts.get(&k).copied().unwrap_or(0);
    println!(
        "messages: {} (election {}, elected {}, token {}); election time {} ms",
        result.total(),
        count(Kind::Election),
        count(Kind::Elected),
        count(Kind::Token),
        result.elapsed.as_millis()
    );
    Ok(())
}

async fn ring_mutex(args: RingMutexArgs) -> anyhow::Result<()> {
    use nuage_coord::ring::token::{MAX_LINES, MAX_RECORDS};
    if args.records > MAX_RECORDS || args.lines == 0 || args.lines > MAX_LINES {
        bail!("--records must be at most {MAX_RECORDS} and --lines 1..={MAX_LINES}");
    }
    use nuage_coord::ring::token::{MAX_TOKEN_TIMEOUT, MIN_TOKEN_TIMEOUT};
    let token_timeout = std::time::Duration::from_millis(args.token_timeout_ms);
    if !(MIN_TOKEN_TIMEOUT..=MAX_TOKEN_TIMEOUT).contains(&token_timeout) {
        bail!(
            "--token-timeout-ms must be {}..={}",
            MIN_TOKEN_TIMEOUT.as_millis(),
            MAX_TOKEN_TIMEOUT.as_millis()
        );
    }
    // Processes open the file by this path, wherever they run.
    let file = std::path::absolute(&args.file)?;
    let mut launched = launch_cmd::launch(&args.launch).await?;
    let start = std::time::Instant::now();
    let ends = drive::token_mutex(
        &mut launched,
        args.bootstrap.into(),
        &file,
        args.records,
        args.lines,
        token_timeout,
        |note| println!("{note}"),
    )
    .await?;
    let mut t = crate::table::Table::new(&["PROCESS", "HOST", "RECORDS", "TOKEN VISITS"]);
    let mut total = 0u64;
    for (m, end) in launched.members.iter().zip(&ends) {
        let (records, visits) = match end {
            drive::TokenEnd::Done { records, visits } => {
                total += u64::from(*records);
                (records.to_string(), visits.to_string())
            }
            drive::TokenEnd::Died => ("died".to_owned(), "-".to_owned()),
            drive::TokenEnd::Excluded => ("excluded".to_owned(), "-".to_owned()),
        };
        t.row(vec![m.index.to_string(), m.host.clone(), records, visits]);
    }
    print!("{}", t.render());
    println!(
        "{total} records appended to {} by the live processes in {} ms",
        file.display(),
        start.elapsed().as_millis()
    );
    Ok(())
}
