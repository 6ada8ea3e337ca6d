//! `nuage jobs manager` and `nuage jobs worker`: run until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nuage_core::metrics::Metrics;
use nuage_jobs::config::{self, ManagerOptions};
use nuage_jobs::manager::{Manager, metrics};
use nuage_jobs::trace;
use nuage_jobs::worker::{self, WorkerOptions};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::{ManagerArg, duration_arg};

#[derive(Args, Debug)]
pub struct ManagerCmd {
    /// Address to listen on
    #[arg(long, default_value_t = config::DEFAULT_LISTEN, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// Directory of the manager's database (jobs.db)
    #[arg(long, default_value = "nuage-data/jobs", value_name = "DIR")]
    data: PathBuf,
    /// Times a job is given to a worker before it is marked failed (1-100)
    #[arg(long, default_value_t = config::DEFAULT_MAX_ATTEMPTS, value_name = "N")]
    max_attempts: u32,
    /// Silence after which a worker is lost and its task requeued (e.g. 10s)
    #[arg(long, default_value = "10s", value_parser = duration_arg, value_name = "DURATION")]
    worker_timeout: Duration,
    /// Output kept per stream of each job, in bytes; the rest is counted and dropped
    #[arg(long, default_value_t = config::DEFAULT_MAX_OUTPUT_BYTES, value_name = "BYTES")]
    max_output: u64,
    /// Between SIGTERM and SIGKILL when a running job is cancelled
    #[arg(long, default_value = "2s", value_parser = duration_arg, value_name = "DURATION")]
    kill_grace: Duration,
    /// Jobs waiting in the queue at most
    #[arg(long, default_value_t = config::DEFAULT_MAX_QUEUED, value_name = "N")]
    max_queued: usize,
    /// Record traces (CTF and Trace Event JSON) under this directory
    #[arg(long, value_name = "DIR")]
    trace: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (off by default; under
    /// `nuage up` they are on the node API's /metrics)
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,
}

#[derive(Args, Debug)]
pub struct WorkerCmd {
    #[command(flatten)]
    manager: ManagerArg,
    /// Name of this worker, unique among the manager's workers (default: the host name)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Directory tasks run in (default: the current directory)
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// How long the default task (a job submitted with a bare name) works
    #[arg(long, default_value = "1s", value_parser = duration_arg, value_name = "DURATION")]
    default_task_duration: Duration,
    /// Record traces (CTF and Trace Event JSON) under this directory
    #[arg(long, value_name = "DIR")]
    trace: Option<PathBuf>,
}

/// Cancelled at the first SIGINT or SIGTERM.
pub fn stop_on_signal() -> anyhow::Result<CancellationToken> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        t.cancel();
    });
    Ok(token)
}

pub async fn manager(cmd: ManagerCmd) -> anyhow::Result<()> {
    let opts = ManagerOptions {
        listen: cmd.listen,
        max_attempts: cmd.max_attempts,
        worker_timeout: cmd.worker_timeout,
        max_output_bytes: cmd.max_output,
        kill_grace: cmd.kill_grace,
        max_queued: cmd.max_queued,
        trace_dir: cmd.trace.clone(),
        ..ManagerOptions::default()
    };
    opts.validate()?;
    if let Some(dir) = &cmd.trace {
        trace::install(dir, "manager")?;
    }
    let shutdown = stop_on_signal()?;
    let data = cmd.data;
    std::fs::create_dir_all(&data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let registry = Metrics::new();
    let manager = Manager::open(&data, opts, &registry)
        .with_context(|| format!("jobs manager in {}", data.display()))?;
    let listener = Manager::bind(cmd.listen, "--listen").await?;
    let metrics_listener = match cmd.metrics {
        Some(addr) => {
            Some(nuage_core::net::bind_tcp(addr, "the jobs manager's metrics", "--metrics").await?)
        }
        None => None,
    };
    // The first line is the one scripts read the address from.
    println!(
        "jobs manager listening on {} (data {})",
        listener.local_addr()?,
        data.display()
    );
    let metrics_server = match metrics_listener {
        Some(l) => {
            println!("jobs manager metrics on http://{}/metrics", l.local_addr()?);
            Some(tokio::spawn(metrics::serve_http(
                l,
                registry,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    std::io::stdout().flush()?;
    let mut result = manager.serve(listener, shutdown.clone()).await;
    if let Some(task) = metrics_server {
        shutdown.cancel();
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = result.and(Err(e)),
            Err(e) => result = result.and(Err(anyhow::anyhow!("metrics server panicked: {e}"))),
        }
    }
    trace::finish();
    result
}

pub async fn worker(cmd: WorkerCmd) -> anyhow::Result<()> {
    let name = match cmd.name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .context("cannot read the host name; pass --name")?,
    };
    if let Some(dir) = &cmd.trace {
        trace::install(dir, "worker")?;
    }
    let opts = WorkerOptions {
        manager: cmd.manager.url()?,
        name,
        workdir: cmd.workdir,
        program: std::env::current_exe().context("finding the nuage binary")?,
        default_task_duration: cmd.default_task_duration,
    };
    let shutdown = stop_on_signal()?;
    println!(
        "jobs worker {} using the manager at {}",
        opts.name, opts.manager
    );
    std::io::stdout().flush()?;
    let result = worker::run(opts, shutdown).await;
    trace::finish();
    result
}
