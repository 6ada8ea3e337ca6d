//! The launcher's command-line side, shared by `nuage ring` and `nuage election`:
//! where processes run (`--via`), and `nuage agent`, the launched process itself
//! (library: nuage_coord::launch).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use nuage_coord::launch::{self, HostLine, LaunchConfig, Launched};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Every process on this machine (the host names are only labels)
    Local,
    /// Each process in the lab machine its line names (`nuage lab exec`)
    Lab,
    /// Each process on its host through the ssh client (BatchMode: keys, no passwords)
    Ssh,
}

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Hosts file: one host per line, a line per process (`#` comments, blank lines ok)
    #[arg(long, value_name = "FILE")]
    hosts: PathBuf,
    /// How processes are started
    #[arg(long, value_enum, default_value_t = Via::Local)]
    via: Via,
    /// The lab, with --via lab
    #[arg(long, env = "NUAGE_LAB", default_value = "lab")]
    lab: String,
    /// The address processes reach the launcher on (required with --via ssh)
    #[arg(long, value_name = "IP")]
    advertise: Option<IpAddr>,
    /// The nuage program on the remote hosts, with --via ssh
    #[arg(long, value_name = "PATH", default_value = "nuage")]
    remote_nuage: String,
    /// An ssh client configuration file (ssh -F), with --via ssh: identity, known hosts,
    /// port, user…
    #[arg(long, value_name = "FILE")]
    ssh_config: Option<PathBuf>,
    /// Directory for the processes' logs (default: a new /tmp/nuage-launch-PID)
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
}

/// Reads the hosts file, starts one agent per line and waits for all to report in; prints
/// who runs where.
pub async fn launch(args: &LaunchArgs) -> anyhow::Result<Launched> {
    let text = std::fs::read_to_string(&args.hosts)
        .with_context(|| format!("cannot read the hosts file {}", args.hosts.display()))?;
    let hosts: Vec<HostLine> = launch::hosts::parse(&text, &args.hosts.display().to_string())?;
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/nuage-launch-{}", std::process::id())));
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create the log directory {}", log_dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the nuage program")?;
    let (advertise, spawner): (IpAddr, Box<launch::Spawner>) = match args.via {
        Via::Local => (
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Box::new(move |_host: &str, a: &[String]| {
                let mut c = std::process::Command::new(&exe);
                c.args(a);
                c
            }),
        ),
        Via::Lab => {
            let lab = nuage_lab::Lab::open(&args.lab)?;
            for h in &hosts {
                lab.machine(&h.host)
                    .with_context(|| format!("{}:{}", args.hosts.display(), h.line))?;
            }
            let name = args.lab.clone();
            (
                IpAddr::V4(lab.host_addr()),
                Box::new(move |host: &str, a: &[String]| {
                    let mut c = std::process::Command::new(&exe);
                    c.args(["lab", "--name", &name, "exec", host, "--"])
                        .arg(&exe)
                        .args(a);
                    c
                }),
            )
        }
        Via::Ssh => {
            let Some(advertise) = args.advertise else {
                bail!("--via ssh needs --advertise IP: the address remote hosts reach this one on");
            };
            let remote = args.remote_nuage.clone();
            let ssh_config = args.ssh_config.clone();
            (
                advertise,
                Box::new(move |host: &str, a: &[String]| {
                    let mut c = std::process::Command::new("ssh");
                    if let Some(f) = &ssh_config {
                        c.arg("-F").arg(f);
                    }
                    // ssh joins its arguments into one remote shell line: quote each.
                    let line: Vec<String> = std::iter::once(&remote)
                        .chain(a)
                        .map(|s| sh_quote(s))
                        .collect();
                    c.args([
                        "-o",
                        "BatchMode=yes",
                        "-o",
                        "ConnectTimeout=10",
                        "--",
                        host,
                        &line.join(" "),
                    ]);
                    c
                }),
            )
        }
    };
    let config = LaunchConfig { advertise, log_dir };
    let launched = launch::launch(&hosts, &config, spawner.as_ref()).await?;
    let mut t = crate::table::Table::new(&["PROCESS", "HOST", "PID", "ADDRESS", "LOG"]);
    for m in &launched.members {
        t.row(vec![
            m.index.to_string(),
            m.host.clone(),
            m.pid.to_string(),
            m.addr.to_string(),
            m.log.display().to_string(),
        ]);
    }
    println!("launched {} processes", launched.members.len());
    print!("{}", t.render());
    Ok(launched)
}

/// A word for a POSIX shell, single-quoted.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `nuage agent`: a process started by a launcher.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The launcher's address
    #[arg(long, value_name = "IP:PORT")]
    launcher: SocketAddr,
    /// This process's number
    #[arg(long)]
    index: u32,
    /// Log file (appended to)
    #[arg(long, value_name = "FILE")]
    log: PathBuf,
}

/// Daemonizes (fork; the parent exits 0 once the child runs; the child starts a session
/// and logs to its file), then runs the agent. Must run before any thread exists.
pub fn agent(args: AgentArgs) -> anyhow::Result<()> {
    // On a remote host the launcher's log directory may not exist yet.
    if let Some(dir) = args.log.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the log directory {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .with_context(|| format!("cannot open the log file {}", args.log.display()))?;
    let devnull = std::fs::File::open("/dev/null").context("cannot open /dev/null")?;
    // SAFETY: no other thread exists yet (this runs before the async runtime starts).
    match unsafe { nix::unistd::fork() }.context("cannot fork")? {
        nix::unistd::ForkResult::Parent { .. } => std::process::exit(0),
        nix::unistd::ForkResult::Child => {}
    }
    nix::unistd::setsid().context("setsid")?;
    nix::unistd::dup2_stdin(&devnull).context("dup2")?;
    nix::unistd::dup2_stdout(&log).context("dup2")?;
    nix::unistd::dup2_stderr(&log).context("dup2")?;
    let rt = crate::runtime()?;
    rt.block_on(nuage_coord::launch::agent::run(args.launcher, args.index))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting_keeps_words_whole() {
        assert_eq!(super::sh_quote("a b"), "'a b'");
        assert_eq!(super::sh_quote("it's"), "'it'\\''s'");
    }
}
