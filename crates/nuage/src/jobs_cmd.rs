//! `nuage jobs …`: the FIFO job scheduler. The manager and the worker run until
//! SIGINT/SIGTERM; the other commands talk to the manager over gRPC and print.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use nuage_jobs::client::{self, Client};
use nuage_jobs::config::{self, ManagerOptions, format_duration, parse_duration};
use nuage_jobs::manager::Manager;
use nuage_jobs::manager::store::{parse_state, state_name};
use nuage_jobs::proto::{Job, JobState, OutputStream};
use nuage_jobs::timefmt::{between, clock, timestamp};
use nuage_jobs::trace::{self, Span};
use nuage_jobs::worker::{self, WorkerOptions};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::table::Table;

#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub cmd: JobsCmd,
}

impl JobsArgs {
    /// The manager and the worker log at info level, like `nuage up`.
    pub fn is_daemon(&self) -> bool {
        matches!(self.cmd, JobsCmd::Manager { .. } | JobsCmd::Worker { .. })
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
        Client::connect(&self.url()?).await
    }
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// Run the manager: the FIFO queue (SQLite) and the gRPC services (default port 50051)
    Manager {
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
    },
    /// Run a worker: register with the manager and run one task at a time
    Worker {
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
    },
    /// Queue a job and print its id: `submit tache45` (the default task) or `submit NAME -- CMD ARG…`
    Submit {
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
    },
    /// List jobs (queued, running, done) with their times
    Ls {
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
    },
    /// Show one job with its history
    Show {
        #[command(flatten)]
        manager: ManagerArg,
        id: u64,
    },
    /// Cancel a job: a queued job leaves the queue; a running one's process group is killed
    Cancel {
        #[command(flatten)]
        manager: ManagerArg,
        id: u64,
    },
    /// List the workers the manager knows
    Workers {
        #[command(flatten)]
        manager: ManagerArg,
    },
    /// Print a job's output (stdout, then stderr); with --follow, until the job ends
    Logs {
        #[command(flatten)]
        manager: ManagerArg,
        id: u64,
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// A three-tier demo (client → app server → auth server) with slow spots, to find with `nuage trace analyze`
    DemoAuth {
        #[command(subcommand)]
        cmd: DemoCmd,
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

#[derive(Subcommand, Debug)]
pub enum DemoCmd {
    /// The authentication server (users alice/wonderland and bob/builder)
    Auth {
        #[arg(long, default_value = "127.0.0.1:50061", value_name = "IP:PORT")]
        listen: SocketAddr,
        /// A slow spot: time spent in each check
        #[arg(long, default_value = "0s", value_parser = duration_arg, value_name = "DURATION")]
        slow: Duration,
        /// Record traces under this directory
        #[arg(long, value_name = "DIR")]
        trace: Option<PathBuf>,
    },
    /// The application server, which asks the authentication server
    App {
        #[arg(long, default_value = "127.0.0.1:50062", value_name = "IP:PORT")]
        listen: SocketAddr,
        /// The authentication server
        #[arg(long, default_value = "http://127.0.0.1:50061", value_name = "URL")]
        auth: String,
        /// A slow spot: time spent in each login before asking the authentication server
        #[arg(long, default_value = "0s", value_parser = duration_arg, value_name = "DURATION")]
        slow: Duration,
        /// Record traces under this directory
        #[arg(long, value_name = "DIR")]
        trace: Option<PathBuf>,
    },
    /// The client: log in N times through the application server and print the latency
    Client {
        /// The application server
        #[arg(long, default_value = "http://127.0.0.1:50062", value_name = "URL")]
        app: String,
        #[arg(long, default_value_t = 100, value_name = "N")]
        requests: u32,
        #[arg(long, default_value = "alice")]
        user: String,
        #[arg(long, default_value = "wonderland")]
        password: String,
        /// A slow spot: time spent before each call
        #[arg(long, default_value = "0s", value_parser = duration_arg, value_name = "DURATION")]
        slow: Duration,
        /// Record traces under this directory
        #[arg(long, value_name = "DIR")]
        trace: Option<PathBuf>,
    },
}

async fn demo(cmd: DemoCmd) -> anyhow::Result<()> {
    use nuage_jobs::demo;
    match cmd {
        DemoCmd::Auth {
            listen,
            slow,
            trace,
        } => {
            if let Some(dir) = &trace {
                trace::install(dir, "auth")?;
            }
            let shutdown = stop_on_signal()?;
            let listener = demo::bind(listen, "the demo authentication server").await?;
            println!("demo auth server listening on {}", listener.local_addr()?);
            std::io::stdout().flush()?;
            let r = demo::serve_auth(listener, slow, shutdown).await;
            trace::finish();
            r
        }
        DemoCmd::App {
            listen,
            auth,
            slow,
            trace,
        } => {
            if let Some(dir) = &trace {
                trace::install(dir, "app")?;
            }
            let shutdown = stop_on_signal()?;
            let listener = demo::bind(listen, "the demo application server").await?;
            println!("demo app server listening on {}", listener.local_addr()?);
            std::io::stdout().flush()?;
            let r = demo::serve_app(listener, &config::normalize_url(&auth)?, slow, shutdown).await;
            trace::finish();
            r
        }
        DemoCmd::Client {
            app,
            requests,
            user,
            password,
            slow,
            trace,
        } => {
            if let Some(dir) = &trace {
                trace::install(dir, "client")?;
            }
            let r = demo::run_client(
                &config::normalize_url(&app)?,
                &user,
                &password,
                requests,
                slow,
            )
            .await;
            trace::finish();
            let s = r?;
            println!(
                "{} login(s), {} accepted; latency p50 {} p99 {}",
                s.requests,
                s.accepted,
                format_duration(s.p50),
                format_duration(s.p99)
            );
            Ok(())
        }
    }
}

/// Cancelled at the first SIGINT or SIGTERM.
fn stop_on_signal() -> anyhow::Result<CancellationToken> {
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

pub async fn run(args: JobsArgs) -> anyhow::Result<()> {
    match args.cmd {
        JobsCmd::Manager {
            listen,
            data,
            max_attempts,
            worker_timeout,
            max_output,
            kill_grace,
            max_queued,
            trace,
        } => {
            let opts = ManagerOptions {
                listen,
                max_attempts,
                worker_timeout,
                max_output_bytes: max_output,
                kill_grace,
                max_queued,
                trace_dir: trace.clone(),
                ..ManagerOptions::default()
            };
            opts.validate()?;
            if let Some(dir) = &trace {
                trace::install(dir, "manager")?;
            }
            let shutdown = stop_on_signal()?;
            std::fs::create_dir_all(&data)
                .with_context(|| format!("cannot create the data directory {}", data.display()))?;
            let manager = Manager::open(&data, opts)
                .with_context(|| format!("jobs manager in {}", data.display()))?;
            let listener = Manager::bind(listen, "--listen").await?;
            println!(
                "jobs manager listening on {} (data {})",
                listener.local_addr()?,
                data.display()
            );
            std::io::stdout().flush()?;
            let result = manager.serve(listener, shutdown).await;
            trace::finish();
            result
        }
        JobsCmd::Worker {
            manager,
            name,
            workdir,
            default_task_duration,
            trace,
        } => {
            let name = match name {
                Some(n) => n,
                None => nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .context("cannot read the host name; pass --name")?,
            };
            if let Some(dir) = &trace {
                trace::install(dir, "worker")?;
            }
            let opts = WorkerOptions {
                manager: manager.url()?,
                name,
                workdir,
                program: std::env::current_exe().context("finding the nuage binary")?,
                default_task_duration,
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
        JobsCmd::Submit {
            manager,
            name,
            wait,
            array,
            timeout,
            trace,
            command,
        } => {
            // `submit NAME --` with nothing after: an empty command, not the default task.
            if command.is_empty()
                && std::env::args()
                    .skip_while(|a| a != "submit")
                    .any(|a| a == "--")
            {
                anyhow::bail!(
                    "the command after `--` is empty; give a program to run, or drop `--` for the default task"
                );
            }
            if let Some(dir) = &trace {
                trace::install(dir, "client")?;
            }
            let result = match array {
                Some(n) => submit_array(&manager, &name, n, wait, timeout, command).await,
                None => submit(&manager, &name, wait, timeout, command).await,
            };
            trace::finish();
            let status = result?;
            if status != 0 {
                std::process::exit(status);
            }
            Ok(())
        }
        JobsCmd::Ls {
            manager,
            state,
            limit,
            tsv,
        } => {
            let states = state
                .iter()
                .map(|s| {
                    parse_state(s).with_context(|| {
                        format!(
                            "unknown state `{s}`; use queued, running, succeeded, failed or cancelled"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (jobs, total) = manager.connect().await?.list(&states, limit).await?;
            if tsv {
                let mut out = std::io::stdout().lock();
                for j in &jobs {
                    let exit = j
                        .exit_code
                        .map_or_else(|| "-".to_owned(), |c| c.to_string());
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{exit}",
                        j.id,
                        j.name,
                        state_name(j.state()),
                        j.worker,
                        j.attempts,
                        j.submitted_at_us,
                        j.dispatched_at_us,
                        j.started_at_us,
                        j.finished_at_us
                    )?;
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
        JobsCmd::Show { manager, id } => {
            let job = manager.connect().await?.get(id, true).await?;
            print!("{}", render_job(&job));
            Ok(())
        }
        JobsCmd::Cancel { manager, id } => {
            let job = manager.connect().await?.cancel(id).await?;
            match job.state() {
                JobState::Cancelled => println!("job {id} cancelled"),
                _ => println!("job {id}: cancel sent to worker {}", job.worker),
            }
            Ok(())
        }
        JobsCmd::Workers { manager } => {
            let workers = manager.connect().await?.workers().await?;
            let mut t = Table::new(&[
                "NAME",
                "STATE",
                "JOB",
                "DONE",
                "ADDRESS",
                "SINCE",
                "HEARTBEAT",
            ]);
            for w in workers {
                t.row(vec![
                    w.name,
                    w.state,
                    if w.job_id == 0 {
                        "-".into()
                    } else {
                        w.job_id.to_string()
                    },
                    w.tasks_done.to_string(),
                    w.address,
                    clock(w.registered_at_us),
                    clock(w.last_heartbeat_us),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
        JobsCmd::Logs {
            manager,
            id,
            follow,
        } => {
            let client = manager.connect().await?;
            let job = client.logs(id, follow, print_output).await?;
            for note in client::truncation_notes(&job) {
                eprintln!("{note}");
            }
            Ok(())
        }
        JobsCmd::DemoAuth { cmd } => demo(cmd).await,
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

fn print_output(stream: OutputStream, data: &[u8]) {
    // A closed stdout (`| head`) is not an error worth a message.
    let _ = match stream {
        OutputStream::Stderr => {
            let mut e = std::io::stderr().lock();
            e.write_all(data).and_then(|()| e.flush())
        }
        _ => {
            let mut o = std::io::stdout().lock();
            o.write_all(data).and_then(|()| o.flush())
        }
    };
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

/// `job 12 (tache45) succeeded on w1 after 1 attempt: exit 0, ran 1.002s`.
fn summary(job: &Job) -> String {
    let how = match (job.exit_code, job.signal) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => job.reason.clone(),
    };
    let mut s = format!(
        "job {} ({}) {} on {} after {} attempt(s): {how}",
        job.id,
        job.name,
        state_name(job.state()),
        if job.worker.is_empty() {
            "-"
        } else {
            &job.worker
        },
        job.attempts
    );
    if !job.reason.is_empty() && job.exit_code.is_some() {
        s.push_str(&format!(" ({})", job.reason));
    }
    let ran = between(job.started_at_us, job.finished_at_us);
    if ran != "-" {
        s.push_str(&format!(", ran {ran}"));
    }
    s
}

fn command_text(job: &Job) -> String {
    if job.argv.is_empty() {
        "(default task)".to_owned()
    } else {
        job.argv.join(" ")
    }
}

fn render_list(jobs: &[Job]) -> String {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "STATE",
        "WORKER",
        "TRIES",
        "SUBMITTED",
        "WAITED",
        "RAN",
        "EXIT",
        "COMMAND",
    ]);
    for j in jobs {
        let exit = match (j.exit_code, j.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("sig{s}"),
            _ => "-".into(),
        };
        let waited_until = if j.dispatched_at_us > 0 {
            j.dispatched_at_us
        } else {
            nuage_jobs::now_us()
        };
        t.row(vec![
            j.id.to_string(),
            j.name.clone(),
            state_name(j.state()).to_owned(),
            if j.worker.is_empty() {
                "-".into()
            } else {
                j.worker.clone()
            },
            j.attempts.to_string(),
            clock(j.submitted_at_us),
            between(j.submitted_at_us, waited_until),
            between(
                j.started_at_us,
                if j.finished_at_us > 0 {
                    j.finished_at_us
                } else {
                    nuage_jobs::now_us()
                },
            ),
            exit,
            command_text(j),
        ]);
    }
    t.render()
}

fn render_job(j: &Job) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<10} {v}\n"));
    line("id", j.id.to_string());
    line("name", j.name.clone());
    line("command", command_text(j));
    if let Some(i) = j.array_index {
        line("array", format!("index {i}"));
    }
    line("state", state_name(j.state()).to_owned());
    if !j.reason.is_empty() {
        line("reason", j.reason.clone());
    }
    if j.cancel_requested {
        line("cancel", "requested".into());
    }
    line(
        "worker",
        if j.worker.is_empty() {
            "-".into()
        } else {
            j.worker.clone()
        },
    );
    line("attempts", j.attempts.to_string());
    if j.pid != 0 {
        line("pid", j.pid.to_string());
    }
    line("submitted", timestamp(j.submitted_at_us));
    line("dispatched", timestamp(j.dispatched_at_us));
    line("started", timestamp(j.started_at_us));
    line("finished", timestamp(j.finished_at_us));
    if let Some(c) = j.exit_code {
        line("exit", c.to_string());
    }
    if let Some(s) = j.signal {
        line(
            "signal",
            format!("{s} ({})", nuage_jobs::manager::signal_name(s)),
        );
    }
    line(
        "stdout",
        format!("{} bytes ({} kept)", j.stdout_total, j.stdout_kept),
    );
    line(
        "stderr",
        format!("{} bytes ({} kept)", j.stderr_total, j.stderr_kept),
    );
    if !j.trace_id.is_empty() {
        line("trace", j.trace_id.clone());
    }
    out.push_str("history\n");
    let mut t = Table::new(&["  TIME", "EVENT", "ATTEMPT", "WORKER", "DETAIL"]);
    for h in &j.history {
        t.row(vec![
            format!("  {}", clock(h.at_us)),
            h.event.clone(),
            h.attempt.to_string(),
            if h.worker.is_empty() {
                "-".into()
            } else {
                h.worker.clone()
            },
            h.detail.clone(),
        ]);
    }
    out.push_str(&t.render());
    out
}
