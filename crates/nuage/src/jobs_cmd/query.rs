//! `nuage jobs ls`, `show`, `cancel`, `workers`, `logs`: ask the manager and print.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use nuage_jobs::client;
use nuage_jobs::config;
use nuage_jobs::manager::store::parse_state;
use nuage_jobs::proto::JobState;

use super::ManagerArg;
use super::render::{print_output, render_job, render_list, render_workers, tsv_line};

#[derive(Args, Debug)]
pub struct LsCmd {
    #[command(flatten)]
    manager: ManagerArg,
    /// Only jobs in these states (queued, running, succeeded, failed, cancelled)
    #[arg(long, value_delimiter = ',', value_name = "STATE")]
    state: Vec<String>,
    /// The newest N jobs
    #[arg(long, default_value_t = config::DEFAULT_LIST_LIMIT, value_name = "N")]
    limit: u32,
    /// For scripts: tab-separated, no header, times in microseconds since the epoch
    /// (id, name, state, worker, attempts, submitted, dispatched, started, finished, exit)
    #[arg(long)]
    tsv: bool,
}

/// A command about one job.
#[derive(Args, Debug)]
pub struct IdCmd {
    #[command(flatten)]
    manager: ManagerArg,
    id: u64,
}

#[derive(Args, Debug)]
pub struct LogsCmd {
    #[command(flatten)]
    manager: ManagerArg,
    id: u64,
    #[arg(long, short = 'f')]
    follow: bool,
}

pub async fn ls(cmd: LsCmd) -> anyhow::Result<()> {
    let states = cmd
        .state
        .iter()
        .map(|s| {
            parse_state(s).with_context(|| {
                format!("unknown state `{s}`; use queued, running, succeeded, failed or cancelled")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (jobs, total) = cmd
        .manager
        .connect()
        .await?
        .list(&states, cmd.limit)
        .await?;
    if cmd.tsv {
        let mut out = std::io::stdout().lock();
        for j in &jobs {
            writeln!(out, "{}", tsv_line(j))?;
        }
        return Ok(());
    }
    print!("{}", render_list(&jobs));
    if total > jobs.len() as u64 {
        eprintln!(
            "nuage: showing the newest {} of {total} jobs (--limit)",
            jobs.len()
        );
    }
    Ok(())
}

pub async fn show(cmd: IdCmd) -> anyhow::Result<()> {
    let job = cmd.manager.connect().await?.get(cmd.id, true).await?;
    print!("{}", render_job(&job));
    Ok(())
}

pub async fn cancel(cmd: IdCmd) -> anyhow::Result<()> {
    let id = cmd.id;
    let job = cmd.manager.connect().await?.cancel(id).await?;
    match job.state() {
        JobState::Cancelled => println!("job {id} cancelled"),
        _ => println!("job {id}: cancel sent to worker {}", job.worker),
    }
    Ok(())
}

pub async fn workers(manager: &ManagerArg) -> anyhow::Result<()> {
    let workers = manager.connect().await?.workers().await?;
    print!("{}", render_workers(workers));
    Ok(())
}

pub async fn logs(cmd: LogsCmd) -> anyhow::Result<()> {
    let client = cmd.manager.connect().await?;
    let job = client.logs(cmd.id, cmd.follow, print_output).await?;
    for note in client::truncation_notes(&job) {
        eprintln!("{note}");
    }
    Ok(())
}
