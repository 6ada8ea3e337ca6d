//! `nuage group …`: the Spread-compatible group daemon, spuser's shell, and status.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use nuage_group::client::{ConnectOptions, Mailbox, MembershipKind, Received, Service};
use nuage_group::conf::SpreadConf;
use nuage_group::daemon::{Daemon, DaemonConfig};
use nuage_group::wire;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct GroupArgs {
    #[command(subcommand)]
    cmd: GroupCmd,
}

impl GroupArgs {
    /// Whether this command is a daemon that logs at info level.
    pub fn daemon_logs(&self) -> bool {
        matches!(&self.cmd, GroupCmd::Daemon(d) if d.log != "n")
    }
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// Run a group daemon (reads spread.conf; stops on SIGINT/SIGTERM)
    Daemon(DaemonArgs),
    /// An interactive client with spuser's commands and output
    Shell(ShellArgs),
    /// Show a daemon's configuration, members, groups and counters
    Status(StatusArgs),
}

#[derive(Args, Debug)]
struct DaemonArgs {
    /// Configuration file (default ./spread.conf, then /etc/spread.conf; without any, a
    /// daemon alone on 127.0.0.1:4803)
    #[arg(short = 'c', value_name = "FILE")]
    conf: Option<PathBuf>,
    /// This daemon's name in the configuration (default: the one with a local address)
    #[arg(short = 'n', value_name = "NAME")]
    name: Option<String>,
    /// Log configuration changes and sessions (y) or only problems (n)
    #[arg(short = 'l', value_name = "y|n", default_value = "y", value_parser = ["y", "n"])]
    log: String,
    /// Directory of the client Unix socket <port> (default $NUAGE_GROUP_RUNTIME_DIR or /tmp)
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ShellArgs {
    /// Private name (at most 10 characters; unique at its daemon)
    #[arg(short = 'u', value_name = "NAME", default_value = "user")]
    user: String,
    /// Daemon: PORT (Unix socket) or PORT@HOST (TCP)
    #[arg(short = 's', value_name = "PORT|PORT@HOST", default_value = "4803")]
    spread: String,
    /// Let the daemon choose a random private name
    #[arg(short = 'r')]
    random: bool,
    /// Directory of the daemon's Unix socket (default $NUAGE_GROUP_RUNTIME_DIR or /tmp)
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The daemon's port (its status socket is <runtime dir>/<port>.status)
    #[arg(short = 's', value_name = "PORT", default_value_t = wire::DEFAULT_PORT)]
    port: u16,
    /// Directory of the daemon's sockets (default $NUAGE_GROUP_RUNTIME_DIR or /tmp)
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// Print the raw JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: GroupArgs) -> anyhow::Result<()> {
    match args.cmd {
        GroupCmd::Daemon(a) => daemon(a).await,
        GroupCmd::Shell(a) => shell(a).await,
        GroupCmd::Status(a) => status(a).await,
    }
}

/// The configuration used when no spread.conf exists: one daemon on loopback.
const ALONE_CONF: &str = "Spread_Segment 127.0.0.255:4803 {\n\tlocalhost 127.0.0.1\n}\n";

async fn daemon(a: DaemonArgs) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let conf = match a.conf.clone().or_else(SpreadConf::find_default) {
        Some(path) => SpreadConf::load(&path)?,
        None => {
            tracing::info!("no spread.conf found; running alone as `localhost` on 127.0.0.1:4803");
            SpreadConf::parse(ALONE_CONF, "built-in configuration")?
        }
    };
    for w in &conf.warnings {
        tracing::warn!("{w}");
    }
    let cfg = DaemonConfig::new(conf, a.name.as_deref(), a.runtime_dir)?;
    let name = cfg.name().to_owned();
    let n = cfg.conf.daemons.len();
    let d = Daemon::bind(cfg).await?;
    let endpoints: Vec<String> = d.endpoints().iter().map(ToString::to_string).collect();
    println!(
        "group daemon `{name}` ({n} configured): {}",
        endpoints.join(", ")
    );
    let _ = std::io::stdout().flush();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(d.run(shutdown.clone()));
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
    shutdown.cancel();
    task.await.context("the daemon task")??;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The shell

const MENU: &str = "
==========
User Menu:
----------

\tj <group> -- join a group
\tl <group> -- leave a group

\ts <group> -- send a message
\tm <group> -- send a multiline message to group. Terminate with empty line
\tb <group> -- send a burst of messages

\tr -- receive a message (stuck) 
\tp -- poll for a message 
\te -- enable asynchonous read (default)
\td -- disable asynchronous read 

\tq -- quit
";

/// Most groups one `s` or `m` command sends to (as spuser).
const SHELL_MAX_GROUPS: usize = 10;
/// Largest message of a burst (as spuser).
const SHELL_MAX_MESSLEN: usize = 102_400;

struct Shell {
    mb: Mailbox,
    /// Lines of standard input, read by a thread (end of input closes the channel).
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    sent: u64,
    previous_len: usize,
}

/// Standard input, line by line, from a thread (blocking reads stay off the runtime).
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn out(s: &str) {
    print!("{s}");
    let _ = std::io::stdout().flush();
}

async fn shell(a: ShellArgs) -> anyhow::Result<()> {
    let name = if a.random {
        String::new()
    } else {
        a.user.clone()
    };
    let opts = ConnectOptions {
        runtime_dir: a.runtime_dir.clone(),
        ..ConnectOptions::default()
    };
    let v = wire::PROTOCOL_VERSION;
    out(&format!(
        "Spread library version is {}.{}.{}\n",
        v.major, v.minor, v.patch
    ));
    let mb = Mailbox::connect(&a.spread, &name, &opts)
        .await
        .with_context(|| format!("connecting to {}", a.spread))?;
    out(&format!(
        "User: connected to {} with private group {}\n",
        a.spread,
        mb.private_group()
    ));
    out(MENU);
    out("\nUser> ");
    let mut sh = Shell {
        mb,
        lines: stdin_lines(),
        sent: 0,
        previous_len: 0,
    };
    let mut async_read = true;
    loop {
        let line = if async_read {
            tokio::select! {
                r = sh.mb.receive() => {
                    if !print_received(r) {
                        return Ok(());
                    }
                    continue;
                }
                l = sh.lines.recv() => l,
            }
        } else {
            sh.lines.recv().await
        };
        let Some(line) = line else {
            return sh.bye().await;
        };
        // As spuser: the first character is the command, its arguments start at the
        // third (so `j g` and `jxg` both join g; an empty line is an unknown command).
        let cmd = line.chars().next().unwrap_or('\n');
        let args: Vec<&str> = line
            .get(2..)
            .or_else(|| line.char_indices().nth(2).map(|(i, _)| &line[i..]))
            .unwrap_or("")
            .split_whitespace()
            .collect();
        match cmd {
            'j' | 'l' => match args.first() {
                None => out(" invalid group \n"),
                Some(g) => {
                    let r = if cmd == 'j' {
                        sh.mb.join(g).await
                    } else {
                        sh.mb.leave(g).await
                    };
                    if let Err(e) = r {
                        sp_error(&e);
                    }
                }
            },
            's' | 'm' => {
                let groups: Vec<&str> = args.iter().take(SHELL_MAX_GROUPS).copied().collect();
                if groups.is_empty() {
                    out(" invalid group \n");
                } else {
                    out("enter message: ");
                    let mut mess = String::new();
                    loop {
                        let Some(l) = sh.lines.recv().await else {
                            return sh.bye().await;
                        };
                        if cmd == 'm' && l.is_empty() {
                            break;
                        }
                        mess.push_str(&l);
                        mess.push('\n');
                        if cmd == 's' {
                            break;
                        }
                    }
                    if let Err(e) = sh
                        .mb
                        .multicast(Service::Safe, &groups, 1, mess.as_bytes())
                        .await
                    {
                        sp_error(&e);
                        return sh.bye().await;
                    }
                    sh.sent += 1;
                }
            }
            'b' => {
                let group = args.first().copied().unwrap_or("dummy_group_name");
                out("enter size of each message: ");
                let Some(l) = sh.lines.recv().await else {
                    return sh.bye().await;
                };
                let len = leading_number(&l)
                    .unwrap_or(sh.previous_len)
                    .min(SHELL_MAX_MESSLEN);
                sh.previous_len = len;
                out(&format!("sending 10 messages of {len} bytes\n"));
                for i in 0..10 {
                    sh.sent += 1;
                    let mut mess = format!("mess num {} ", sh.sent).into_bytes();
                    mess.resize(len, 0);
                    if let Err(e) = sh.mb.multicast(Service::Fifo, &[group], 2, &mess).await {
                        sp_error(&e);
                        return sh.bye().await;
                    }
                    out(&format!("sent message {} (total {})\n", i + 1, sh.sent));
                }
            }
            'r' => {
                // spuser prints the prompt twice here: once after the message, once
                // after the command.
                if !print_received(sh.mb.receive().await) {
                    return Ok(());
                }
            }
            'p' => match sh.mb.poll().await {
                Ok(n) => out(&format!("Polling sais: {n}\n")),
                Err(e) => out(&format!("Polling sais: {}\n", e.code)),
            },
            'e' => async_read = true,
            'd' => async_read = false,
            'q' => return sh.bye().await,
            _ => {
                out("\nUnknown commnad\n");
                out(MENU);
            }
        }
        out("\nUser> ");
    }
}

impl Shell {
    async fn bye(self) -> anyhow::Result<()> {
        out("\nBye.\n");
        let _ = self.mb.disconnect().await;
        Ok(())
    }
}

/// What C's `sscanf(s, "%u")` reads: leading blanks, then digits (the rest ignored).
fn leading_number(s: &str) -> Option<usize> {
    let s = s.trim_start();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

fn sp_error(e: &nuage_group::client::SpError) {
    out(&format!(
        "SP_error: ({}) {}\n",
        e.code,
        wire::code_text(e.code)
    ));
}

/// Prints a received message as spuser does; false once the connection is gone.
fn print_received(r: Result<Received, nuage_group::client::SpError>) -> bool {
    out("\n============================\n");
    let m = match r {
        Ok(m) => m,
        Err(e) => {
            sp_error(&e);
            out("\n============================\n");
            out("\nBye.\n");
            return false;
        }
    };
    match m {
        Received::Message(m) => {
            let svc = m.service().map_or("", |s| s.name());
            out(&format!(
                "received {svc} message from {}, of type {}, (endian {}) to {} groups \n({} bytes): {}\n",
                m.sender,
                m.mess_type,
                u8::from(m.endian_mismatch),
                m.groups.len(),
                m.data.len(),
                String::from_utf8_lossy(m.data.split(|b| *b == 0).next().unwrap_or(&[]))
            ));
        }
        Received::Membership(m) => match &m.kind {
            MembershipKind::Regular { cause, changed } => {
                let mut s = format!(
                    "Received REGULAR membership for group {} with {} members, where I am member {}:\n",
                    m.group,
                    m.members.len(),
                    m.my_index.map_or(-1, |i| i as i64)
                );
                for member in &m.members {
                    s.push_str(&format!("\t{member}\n"));
                }
                if let Some(id) = m.group_id {
                    s.push_str(&format!("grp id is {} {} {}\n", id.0[0], id.0[1], id.0[2]));
                }
                use nuage_group::client::Cause;
                let who = changed.as_deref().unwrap_or("");
                match cause {
                    Cause::Join => s.push_str(&format!("Due to the JOIN of {who}\n")),
                    Cause::Leave => s.push_str(&format!("Due to the LEAVE of {who}\n")),
                    Cause::Disconnect => s.push_str(&format!("Due to the DISCONNECT of {who}\n")),
                    Cause::Network => {
                        s.push_str(&format!(
                            "Due to NETWORK change with {} VS sets\n",
                            m.vs_sets.len()
                        ));
                        for (i, set) in m.vs_sets.iter().enumerate() {
                            let kind = if i == m.my_vs_set { "LOCAL" } else { "OTHER" };
                            s.push_str(&format!("{kind} VS set {i} has {} members:\n", set.len()));
                            for member in set {
                                s.push_str(&format!("\t{member}\n"));
                            }
                        }
                    }
                }
                out(&s);
            }
            MembershipKind::Transitional => out(&format!(
                "received TRANSITIONAL membership for group {}\n",
                m.group
            )),
            MembershipKind::SelfLeave => out(&format!(
                "received membership message that left group {}\n",
                m.group
            )),
        },
    }
    out("\nUser> ");
    true
}

// ---------------------------------------------------------------------------------------
// Status

async fn status(a: StatusArgs) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let dir = a
        .runtime_dir
        .unwrap_or_else(nuage_group::daemon::default_runtime_dir);
    let path = nuage_group::daemon::status_path(&dir, a.port);
    let mut s = tokio::net::UnixStream::connect(&path)
        .await
        .with_context(|| {
            format!(
                "no group daemon answers on {} (is one running on port {}?)",
                path.display(),
                a.port
            )
        })?;
    let mut text = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        s.read_to_string(&mut text),
    )
    .await
    .context("the daemon did not answer within 5 s")??;
    let v: serde_json::Value = serde_json::from_str(&text).context("the daemon's answer")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list = |k: &str| -> String {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!(
        "daemon      {} (port {})",
        v["daemon"].as_str().unwrap_or("?"),
        v["port"]
    );
    println!(
        "ring        {} ({})",
        v["ring"].as_str().unwrap_or("?"),
        v["ring_state"]["state"].as_str().unwrap_or("?")
    );
    println!("members     {}", list("members"));
    let configured: Vec<String> = v["configured_daemons"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    format!(
                        "{} {}",
                        d["name"].as_str().unwrap_or("?"),
                        d["address"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!("configured  {}", configured.join(", "));
    println!("clients     {}", list("clients"));
    println!("groups:");
    for g in v["groups"].as_array().into_iter().flatten() {
        let members: Vec<&str> = g["members"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        println!(
            "  {:<31} {}",
            g["group"].as_str().unwrap_or("?"),
            members.join(" ")
        );
    }
    let st = &v["ring_state"]["stats"];
    let gs = &v["group_stats"];
    println!(
        "counters    delivered {} messages, {} memberships; ring: {} frames sent, {} received, {} retransmitted, {} rings formed; {} clients disconnected for unread messages",
        gs["messages_delivered"],
        gs["memberships_delivered"],
        st["frames_sent"],
        st["frames_received"],
        st["retransmissions"],
        st["rings_formed"],
        v["clients_disconnected_for_unread_messages"]
    );
    Ok(())
}
