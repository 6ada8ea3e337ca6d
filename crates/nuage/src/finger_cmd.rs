//! `nuage finger …`: the finger client, and `nuage finger serve` (library:
//! nuage_coord::finger).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use nuage_coord::finger::{self, FingerServer, ServerConfig, Sources};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FingerArgs {
    #[command(subcommand)]
    cmd: Option<FingerCmd>,
    /// `login@host`, `@host` (everyone logged in there) or `login` (on this machine)
    #[arg(value_name = "[LOGIN][@HOST]")]
    target: Option<String>,
    /// Login (or real name word) to ask about; without it, everyone logged in
    #[arg(long, conflicts_with = "target")]
    login: Option<String>,
    /// Server to ask
    #[arg(long, conflicts_with = "target")]
    host: Option<String>,
    /// Server port (79 for a system's fingerd)
    #[arg(long, short = 'p', default_value_t = finger::DEFAULT_PORT)]
    port: u16,
    /// Long format even for the list of logged-in users (sends /W)
    #[arg(long, short = 'l')]
    long: bool,
}

#[derive(Subcommand, Debug)]
enum FingerCmd {
    /// Run a finger server (RFC 1288) answering from this machine's users and logins
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Port to listen on (79 is finger's standard port and needs root)
    #[arg(long, short = 'p', default_value_t = finger::DEFAULT_PORT)]
    port: u16,
    /// Address to listen on
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    bind: IpAddr,
    /// Write the server's pid here at start; removed at exit
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Append one line per query here: time, client, query, result
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// User database
    #[arg(long, value_name = "FILE", default_value = "/etc/passwd")]
    passwd: PathBuf,
    /// Current logins
    #[arg(long, value_name = "FILE", default_value = "/var/run/utmp")]
    utmp: PathBuf,
    /// Login history (last logins where lastlog has none)
    #[arg(long, value_name = "FILE", default_value = "/var/log/wtmp")]
    wtmp: PathBuf,
    /// Last login of each user
    #[arg(long, value_name = "FILE", default_value = "/var/log/lastlog")]
    lastlog: PathBuf,
    /// Where terminals are (idle time is a terminal's access time)
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    dev: PathBuf,
    /// Mail spool: one mailbox per login
    #[arg(long, value_name = "DIR", default_value = "/var/mail")]
    mail_dir: PathBuf,
    /// Seconds a client has to send its query (1 to 3600)
    #[arg(long, value_name = "SECS", default_value_t = finger::server::QUERY_TIMEOUT.as_secs())]
    query_timeout: u64,
}

pub async fn run(args: FingerArgs) -> anyhow::Result<()> {
    if let Some(FingerCmd::Serve(s)) = args.cmd {
        return serve(s).await;
    }
    let (login, host) = match (&args.target, args.login, args.host) {
        (Some(target), _, _) => match target.rsplit_once('@') {
            Some((login, host)) => (login.to_owned(), host.to_owned()),
            None => (target.clone(), "127.0.0.1".to_owned()),
        },
        (None, login, host) => (
            login.unwrap_or_default(),
            host.unwrap_or_else(|| "127.0.0.1".into()),
        ),
    };
    if host.is_empty() {
        bail!("no host after `@`; write login@host or @host");
    }
    finger::client::finger(
        &host,
        args.port,
        &login,
        args.long,
        &mut std::io::stdout().lock(),
    )
    .await
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let stop = crate::net_cmd::stop_on_signal()?;
    let config = ServerConfig {
        listen: SocketAddr::new(args.bind, args.port),
        pid_file: args.pid_file,
        log: args.log,
        sources: Sources {
            passwd: args.passwd,
            utmp: args.utmp,
            wtmp: args.wtmp,
            lastlog: args.lastlog,
            dev: args.dev,
            mail_dir: args.mail_dir,
        },
        query_timeout: Duration::from_secs(args.query_timeout),
    };
    let server = FingerServer::start(config).await?;
    println!("finger server listening on {}", server.local_addr());
    server.run(stop).await
}
