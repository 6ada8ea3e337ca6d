//! `nuage jobs submit`: queue a job (or an array) and, with `--wait`, follow it to its end.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use nuage_jobs::client;
use nuage_jobs::config::{self, format_duration};
use nuage_jobs::proto::{Job, JobState};
use nuage_jobs::trace::{self, Span};

use super::render::{print_output, summary};
use super::{ManagerArg, duration_arg};

#[derive(Args, Debug)]
pub struct SubmitCmd {
    #[command(flatten)]
    manager: ManagerArg,
    /// A name for people, e.g. tache45
    name: String,
    /// Wait for the job to end; print its output and exit with its status
    #[arg(long)]
    wait: bool,
    /// Queue N copies (a job array); each gets NUAGE_ARRAY_TASK_ID=0…N-1
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=config::MAX_ARRAY as i64))]
    array: Option<u32>,
    /// With --wait: give up after this long (the job keeps running)
    #[arg(long, value_parser = duration_arg, value_name = "DURATION", requires = "wait")]
    timeout: Option<Duration>,
    /// Record this request's trace (CTF and Trace Event JSON) under this directory
    #[arg(long, value_name = "DIR")]
    trace: Option<PathBuf>,
    /// The command (no shell), after `--`; without it the worker's default task runs
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

pub async fn run(cmd: SubmitCmd) -> anyhow::Result<()> {
    // `submit NAME --` with nothing after: an empty command, not the default task.
    if cmd.command.is_empty()
        && std::env::args()
            .skip_while(|a| a != "submit")
            .any(|a| a == "--")
    {
        anyhow::bail!(
            "the command after `--` is empty; give a program to run, or drop `--` for the default task"
        );
    }
    if let Some(dir) = &cmd.trace {
        trace::install(dir, "client")?;
    }
    let result = match cmd.array {
        Some(n) => {
            submit_array(
                &cmd.manager,
                &cmd.name,
                n,
                cmd.wait,
                cmd.timeout,
                cmd.command,
            )
            .await
        }
        None => submit(&cmd.manager, &cmd.name, cmd.wait, cmd.timeout, cmd.command).await,
    };
    trace::finish();
    let status = result?;
    if status != 0 {
        std::process::exit(status);
    }
    Ok(())
}

/// Submits; with `wait`, streams the output and returns the job's exit status.
async fn submit(
    manager: &ManagerArg,
    name: &str,
    wait: bool,
    timeout: Option<Duration>,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    let span = Span::root("client.submit", "client", format!("job {name}"));
    let client = manager.connect().await?;
    let argv = (!command.is_empty()).then_some(command);
    let id = client.submit(name, argv, None, span.context()).await?;
    if !wait {
        println!("{id}");
        span.end();
        return Ok(0);
    }
    eprintln!("nuage: job {id} queued");
    let follow = client.logs(id, true, print_output);
    let job = match timeout {
        Some(t) => tokio::time::timeout(t, follow).await.map_err(|_| {
            anyhow::anyhow!(
                "job {id} did not end within {} (it goes on; see `nuage jobs show {id}`)",
                format_duration(t)
            )
        })??,
        None => follow.await?,
    };
    span.end();
    for note in client::truncation_notes(&job) {
        eprintln!("{note}");
    }
    eprintln!("nuage: {}", summary(&job));
    Ok(client::exit_status(&job))
}

/// Queues `n` copies, printing each id; with `wait`, waits for all and returns 0 if
/// every one succeeded, else 1.
async fn submit_array(
    manager: &ManagerArg,
    name: &str,
    n: u32,
    wait: bool,
    timeout: Option<Duration>,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    let span = Span::root("client.submit", "client", format!("array {name} of {n}"));
    let client = manager.connect().await?;
    let argv = (!command.is_empty()).then_some(command);
    let mut ids = Vec::with_capacity(n as usize);
    let mut out = std::io::stdout().lock();
    for i in 0..n {
        let id = client
            .submit(name, argv.clone(), Some(i), span.context())
            .await?;
        writeln!(out, "{id}")?;
        ids.push(id);
    }
    out.flush()?;
    drop(out);
    if !wait {
        return Ok(0);
    }
    let done = client.wait(&ids, timeout, |_| {}).await?;
    let failed: Vec<&Job> = done
        .iter()
        .filter(|j| j.state() != JobState::Succeeded)
        .collect();
    for j in &failed {
        eprintln!("nuage: {}", summary(j));
    }
    eprintln!("nuage: {} of {n} jobs succeeded", n as usize - failed.len());
    span.end();
    Ok(i32::from(!failed.is_empty()))
}
