//! `nuage jobs …`: the FIFO job scheduler. The manager and the worker run until
//! SIGINT/SIGTERM; the other commands talk to the manager over gRPC and print.
//!
//! One module per kind of command: `daemon` (manager, worker), `submit`, `query` (ls,
//! show, cancel, workers, logs), `demo` (the three-tier demo); `render` turns jobs into
//! text. This module only parses and dispatches.

mod daemon;
mod demo;
mod query;
mod render;
mod submit;

use std::time::Duration;

use clap::{Args, Subcommand};
use nuage_jobs::client::Client;
use nuage_jobs::config::{self, parse_duration};

#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub cmd: JobsCmd,
}

impl JobsArgs {
    /// The manager and the worker log at info level, like `nuage up`.
    pub fn is_daemon(&self) -> bool {
        matches!(self.cmd, JobsCmd::Manager(_) | JobsCmd::Worker(_))
    }
}

/// Where clients and workers find the manager.
#[derive(Args, Debug, Clone)]
pub struct ManagerArg {
    /// The manager (http://host:port or host[:port]; default http://127.0.0.1:50051)
    #[arg(long, env = config::MANAGER_ENV, value_name = "URL")]
    pub manager: Option<String>,
}

impl ManagerArg {
    fn url(&self) -> anyhow::Result<String> {
        config::manager_url(self.manager.as_deref())
    }
    async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.url()?).await?.with_notices(notice))
    }
}

/// What a streaming client says when it loses the manager and finds it again.
fn notice(text: &str) {
    eprintln!("nuage: {text}");
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// Run the manager: the FIFO queue (SQLite) and the gRPC services (default port 50051)
    Manager(daemon::ManagerCmd),
    /// Run a worker: register with the manager and run one task at a time
    Worker(daemon::WorkerCmd),
    /// Queue a job and print its id: `submit tache45` (the default task) or `submit NAME -- CMD ARG…`
    Submit(submit::SubmitCmd),
    /// List jobs (queued, running, done) with their times
    Ls(query::LsCmd),
    /// Show one job with its history
    Show(query::IdCmd),
    /// Cancel a job: a queued job leaves the queue; a running one's process group is killed
    Cancel(query::IdCmd),
    /// List the workers the manager knows
    Workers {
        #[command(flatten)]
        manager: ManagerArg,
    },
    /// Print a job's output (stdout, then stderr); with --follow, until the job ends
    Logs(query::LogsCmd),
    /// A three-tier demo (client → app server → auth server) with slow spots, to find with `nuage trace analyze`
    DemoAuth {
        #[command(subcommand)]
        cmd: demo::DemoCmd,
    },
    /// The worker's default task (run by the worker for a bare job name)
    #[command(hide = true)]
    DefaultTask {
        name: String,
        #[arg(long)]
        worker: String,
        #[arg(long, value_parser = duration_arg)]
        duration: Duration,
    },
}

pub async fn run(args: JobsArgs) -> anyhow::Result<()> {
    match args.cmd {
        JobsCmd::Manager(cmd) => daemon::manager(cmd).await,
        JobsCmd::Worker(cmd) => daemon::worker(cmd).await,
        JobsCmd::Submit(cmd) => submit::run(cmd).await,
        JobsCmd::Ls(cmd) => query::ls(cmd).await,
        JobsCmd::Show(cmd) => query::show(cmd).await,
        JobsCmd::Cancel(cmd) => query::cancel(cmd).await,
        JobsCmd::Workers { manager } => query::workers(&manager).await,
        JobsCmd::Logs(cmd) => query::logs(cmd).await,
        JobsCmd::DemoAuth { cmd } => demo::run(cmd).await,
        JobsCmd::DefaultTask {
            name,
            worker,
            duration,
        } => {
            let status = nuage_jobs::default_task::run(&name, &worker, duration);
            if status != 0 {
                std::process::exit(status);
            }
            Ok(())
        }
    }
}
