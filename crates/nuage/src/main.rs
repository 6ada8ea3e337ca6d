//! The `nuage` command: a thin layer that parses arguments, calls the library crates and
//! prints. Every user mistake ends as one line on stderr and a non-zero status.

mod fd_cmd;
mod finger_cmd;
mod fn_cmd;
mod group_cmd;
mod jobs_cmd;
mod lab_cmd;
mod launch_cmd;
mod launch_run_cmd;
mod mail_cmd;
mod mutex_cmd;
mod net_cmd;
mod node_cmd;
mod ring_cmd;
mod snapshot_cmd;
mod storage_cmd;
mod table;
mod trace_cmd;
mod up;

use clap::{Parser, Subcommand};

/// nuage: a mini-cloud in one binary.
///
/// Start a node with `nuage up`, then talk to it with the other commands. Run several
/// machines on one host with `nuage lab`. Documentation: docs/ in the source tree.
#[derive(Parser, Debug)]
#[command(
    name = "nuage",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start this machine's node with all its services (stops cleanly on SIGINT/SIGTERM)
    Up(up::UpArgs),
    /// Ask a running node about itself
    Node {
        #[command(subcommand)]
        cmd: node_cmd::NodeCmd,
        #[command(flatten)]
        api: node_cmd::ApiArg,
    },
    /// Functions: stdin/stdout programs served on network connections (FaaS)
    Fn {
        #[command(subcommand)]
        cmd: fn_cmd::FnCmd,
        #[command(flatten)]
        api: node_cmd::ApiArg,
    },
    /// Several machines on this host, with faults on demand (needs root)
    Lab(lab_cmd::LabArgs),
    /// Ask a finger server who is logged in or about a user; `finger serve` runs one
    Finger(finger_cmd::FingerArgs),
    /// UDP and TCP client/server tools (datagrams, streams, OK answers)
    Net {
        #[command(subcommand)]
        cmd: net_cmd::NetCmd,
    },
    /// Mail between domains, delivered in causal order (matrix clocks)
    Mail {
        #[command(subcommand)]
        cmd: mail_cmd::MailCmd,
    },
    /// A FIFO job scheduler over gRPC: manager, workers, submit, ls, cancel, logs
    Jobs(jobs_cmd::JobsArgs),
    /// Analyze traces recorded with --trace: time per component, bottleneck, critical path
    Trace(trace_cmd::TraceArgs),
    /// Group communication: a Spread-compatible daemon, its shell and status
    Group(group_cmd::GroupArgs),
    /// Storage: the trusted pool's members
    Peer {
        #[command(subcommand)]
        cmd: storage_cmd::PeerCmd,
        #[command(flatten)]
        api: node_cmd::ApiArg,
    },
    /// Storage: list the trusted pool
    Pool {
        #[command(subcommand)]
        cmd: storage_cmd::PoolCmd,
        #[command(flatten)]
        api: node_cmd::ApiArg,
    },
    /// Storage: create, start, stop, delete and inspect volumes
    Volume {
        #[command(subcommand)]
        cmd: storage_cmd::VolumeCmd,
        #[command(flatten)]
        api: node_cmd::ApiArg,
    },
    /// Storage: mount a volume with FUSE (HOST:/VOLUME MOUNTPOINT)
    Mount(storage_cmd::MountArgs),
    /// Storage: unmount a mounted volume
    Umount(storage_cmd::UmountArgs),
    /// Central mutual exclusion: a lock server, and a client that runs a command holding it
    Mutex {
        #[command(subcommand)]
        cmd: mutex_cmd::MutexCmd,
    },
    /// Run a program once per line of a hosts file (locally, in lab machines, over ssh)
    Launch(launch_run_cmd::LaunchRunArgs),
    /// Launch processes on the hosts of a file, build a ring, circulate a pid message
    Ring(ring_cmd::RingArgs),
    /// Chang-Roberts election and numbering over a ring of launched processes
    Election(ring_cmd::ElectionArgs),
    /// A failure detector: two detectors watch half the processes each, with heartbeats
    Fd(fd_cmd::FdArgs),
    /// Chandy-Lamport snapshots of processes moving units between them (total conserved)
    Snapshot(snapshot_cmd::SnapshotArgs),
    /// A process started by a launcher (daemonizes, reports in); not for direct use
    #[command(hide = true)]
    Agent(launch_cmd::AgentArgs),
}

/// Environment variable setting the log level (error, warn, info, debug, trace).
const LOG_ENV: &str = "NUAGE_LOG";

fn main() {
    let cli = Cli::parse();
    let daemon = match &cli.command {
        Command::Up(_) => true,
        Command::Mail {
            cmd: mail_cmd::MailCmd::Serve(_),
        } => true,
        Command::Jobs(args) => args.is_daemon(),
        Command::Group(g) => g.daemon_logs(),
        Command::Agent(_) => true,
        _ => false,
    };
    init_logging(daemon);
    let result = match cli.command {
        // The lab runs without an async runtime: `lab exec` must still be single-threaded
        // when it enters a machine's namespaces and replaces itself with the command.
        Command::Lab(args) => lab_cmd::run(args),
        Command::Trace(args) => trace_cmd::run(args),
        // The agent forks to daemonize, which must happen before any thread exists.
        Command::Agent(args) => launch_cmd::agent(args),
        command => runtime().and_then(|rt| {
            rt.block_on(async {
                match command {
                    Command::Up(args) => up::run(args).await,
                    Command::Node { cmd, api } => node_cmd::run(cmd, api).await,
                    Command::Net { cmd } => net_cmd::run(cmd).await,
                    Command::Finger(args) => finger_cmd::run(args).await,
                    Command::Mail { cmd } => mail_cmd::run(cmd).await,
                    Command::Fn { cmd, api } => fn_cmd::run(cmd, api).await,
                    Command::Jobs(args) => jobs_cmd::run(args).await,
                    Command::Group(args) => group_cmd::run(args).await,
                    Command::Peer { cmd, api } => storage_cmd::peer(cmd, api).await,
                    Command::Pool { cmd, api } => storage_cmd::pool(cmd, api).await,
                    Command::Volume { cmd, api } => storage_cmd::volume(cmd, api).await,
                    Command::Mount(args) => storage_cmd::mount(args).await,
                    Command::Umount(args) => storage_cmd::umount(args),
                    Command::Mutex { cmd } => mutex_cmd::run(cmd).await,
                    Command::Launch(args) => launch_run_cmd::run(args).await,
                    Command::Fd(args) => fd_cmd::run(args).await,
                    Command::Snapshot(args) => snapshot_cmd::run(args).await,
                    Command::Ring(args) => ring_cmd::ring(args).await,
                    Command::Election(args) => ring_cmd::election(args).await,
                    Command::Lab(_) | Command::Trace(_) | Command::Agent(_) => {
                        unreachable!("handled above")
                    }
                }
            })
        }),
    };
    if let Err(e) = result {
        let message = format!("{e:#}").replace('\n', " ");
        eprintln!("nuage: error: {message}");
        std::process::exit(1);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging(daemon: bool) {
    let default = if daemon {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    let level = std::env::var(LOG_ENV)
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(default);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_help() {
        fn walk(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "`{path}` has no help text");
                walk(sub, &path);
            }
        }
        walk(&Cli::command(), "nuage");
    }
}
