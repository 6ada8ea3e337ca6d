//! `nuage mutex …`: the central lock server and the client that runs a command while
//! holding the lock (library: nuage_coord::mutex).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use nuage_coord::mutex::{self, MutexServer};

#[derive(Subcommand, Debug)]
pub enum MutexCmd {
    /// Run the lock server: grants one lock first come, first served, and logs each step
    Serve(ServeArgs),
    /// Wait for the lock, run CMD while holding it, release it; exits with CMD's status
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Port to listen on
    #[arg(long, short = 'p', default_value_t = mutex::DEFAULT_PORT)]
    port: u16,
    /// Address to listen on
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    bind: IpAddr,
    /// Also append the log lines to this file
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The lock server, HOST:PORT
    #[arg(long, value_name = "HOST:PORT")]
    server: String,
    /// Name shown in the server's log (default: hostname/pid)
    #[arg(long)]
    name: Option<String>,
    /// The command and its arguments (run directly, not through a shell)
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub async fn run(cmd: MutexCmd) -> anyhow::Result<()> {
    match cmd {
        MutexCmd::Serve(args) => serve(args).await,
        MutexCmd::Run(args) => {
            let (host, port) = split_host_port(&args.server)?;
            let name = match args.name {
                Some(n) => n,
                None => format!(
                    "{}/{}",
                    nuage_coord::net::hostname().unwrap_or_else(|_| "?".into()),
                    std::process::id()
                ),
            };
            let (program, rest) = args.command.split_first().expect("required by clap");
            let status = mutex::run_locked(&host, port, &name, program, rest).await?;
            if !status.success() {
                // The command's own status, as a shell would give it.
                let code = status.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
                });
                std::process::exit(code);
            }
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let stop = crate::net_cmd::stop_on_signal()?;
    let mut file = match &args.log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the log file {}", path.display()))?,
        ),
        None => None,
    };
    let server = MutexServer::bind(SocketAddr::new(args.bind, args.port)).await?;
    println!("mutex server listening on {}", server.local_addr());
    let sink = move |event: mutex::Event| {
        let line = format!(
            "{} {event}",
            nuage_core::time::rfc3339(nuage_core::time::unix_now())
        );
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
        if let Some(f) = file.as_mut() {
            if let Err(e) = writeln!(f, "{line}") {
                tracing::warn!("cannot write the mutex log: {e}");
            }
        }
    };
    server.run(stop, wrap(sink)).await
}

/// Makes a `FnMut` printer usable as the server's shared sink (the server already calls
/// it with its queue locked; this lock only satisfies the types).
fn wrap(f: impl FnMut(mutex::Event) + Send + 'static) -> Arc<dyn Fn(mutex::Event) + Send + Sync> {
    let f = Mutex::new(f);
    Arc::new(move |e| (f.lock().unwrap_or_else(|p| p.into_inner()))(e))
}

/// `HOST:PORT`, the host possibly a bracketed IPv6 address.
pub fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let Some((host, port)) = s.rsplit_once(':') else {
        bail!("`{s}` is not HOST:PORT");
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("`{port}` in `{s}` is not a port (1-65535)"))?;
    if host.is_empty() {
        bail!("`{s}` has no host before the port");
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parses() {
        assert_eq!(
            split_host_port("10.0.0.1:7941").unwrap(),
            ("10.0.0.1".into(), 7941)
        );
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("[::1]".into(), 80));
        assert!(split_host_port("host").is_err());
        assert!(split_host_port(":80").is_err());
        assert!(split_host_port("h:0").is_err());
        assert!(split_host_port("h:99999").is_err());
    }
}
