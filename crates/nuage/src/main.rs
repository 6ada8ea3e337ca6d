//! The `nuage` command: a thin layer that parses arguments, calls the library crates and
//! prints. Every user mistake ends as one line on stderr and a non-zero status.

mod fd_cmd;
mod finger_cmd;
mod lab_cmd;
mod launch_cmd;
mod launch_run_cmd;
mod mutex_cmd;
mod net_cmd;
mod node_cmd;
mod ring_cmd;
mod snapshot_cmd;
mod table;
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
    /// Several machines on this host, with faults on demand (needs root)
    Lab(lab_cmd::LabArgs),
    /// Ask a finger server who is logged in or about a user; `finger serve` runs one
    Finger(finger_cmd::FingerArgs),
    /// UDP and TCP client/server tools (datagrams, streams, OK answers)
    Net {
        #[command(subcommand)]
        cmd: net_cmd::NetCmd,
    },
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
    init_logging(matches!(cli.command, Command::Up(_) | Command::Agent(_)));
    let result = match cli.command {
        // The lab runs without an async runtime: `lab exec` must still be single-threaded
        // when it enters a machine's namespaces and replaces itself with the command.
        Command::Lab(args) => lab_cmd::run(args),
        // The agent forks to daemonize, which must happen before any thread exists.
        Command::Agent(args) => launch_cmd::agent(args),
        command => runtime().and_then(|rt| {
            rt.block_on(async {
                match command {
                    Command::Up(args) => up::run(args).await,
                    Command::Node { cmd, api } => node_cmd::run(cmd, api).await,
                    Command::Net { cmd } => net_cmd::run(cmd).await,
                    Command::Finger(args) => finger_cmd::run(args).await,
                    Command::Mutex { cmd } => mutex_cmd::run(cmd).await,
                    Command::Launch(args) => launch_run_cmd::run(args).await,
                    Command::Fd(args) => fd_cmd::run(args).await,
                    Command::Snapshot(args) => snapshot_cmd::run(args).await,
                    Command::Ring(args) => ring_cmd::ring(args).await,
                    Command::Election(args) => ring_cmd::election(args).await,
                    Command::Lab(_) | Command::Agent(_) => unreachable!("handled above"),
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
