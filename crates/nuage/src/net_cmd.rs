//! `nuage net …`: the UDP and TCP client/server tools (library: nuage_coord::net).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use nuage_coord::net::{self, Event, EventSink, tcp, udp};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Subcommand, Debug)]
pub enum NetCmd {
    /// Print every datagram with its source address and answer it OK, until stopped
    UdpServer(ServerArgs),
    /// Send one datagram and wait for the server's answer
    UdpClient {
        /// Server host name or IP address
        host: String,
        /// Server UDP port
        port: u16,
        /// The message (one datagram, at most 65507 bytes)
        message: String,
        /// Seconds to wait for the answer
        #[arg(long, default_value_t = udp::DEFAULT_ANSWER_TIMEOUT.as_secs_f64(), value_name = "SECS")]
        timeout: f64,
        /// Send and exit without waiting for an answer (UDP never says whether it arrived)
        #[arg(long)]
        no_wait: bool,
    },
    /// Accept clients forever: print each one, answer OK to every message (line)
    TcpServer(ServerArgs),
    /// Send this machine's hostname (or MESSAGE) and print the server's answer
    TcpClient {
        /// Server host name or IP address
        host: String,
        /// Server TCP port
        port: u16,
        /// What to send instead of the hostname (each line is one message)
        message: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Port to listen on (0: any free port, printed at start)
    #[arg(long, short = 'p')]
    port: u16,
    /// Address to listen on
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    bind: IpAddr,
}

pub async fn run(cmd: NetCmd) -> anyhow::Result<()> {
    match cmd {
        NetCmd::UdpServer(args) => {
            let stop = stop_on_signal()?;
            let server = udp::UdpServer::bind(SocketAddr::new(args.bind, args.port)).await?;
            println!("listening on udp {}", server.local_addr());
            server.run(printer(), stop).await
        }
        NetCmd::TcpServer(args) => {
            let stop = stop_on_signal()?;
            let server = tcp::TcpServer::bind(SocketAddr::new(args.bind, args.port)).await?;
            println!("listening on tcp {}", server.local_addr());
            server.run(printer(), stop).await
        }
        NetCmd::UdpClient {
            host,
            port,
            message,
            timeout,
            no_wait,
        } => {
            anyhow::ensure!(
                timeout.is_finite() && timeout > 0.0 && timeout <= 3600.0,
                "--timeout must be between 0 and 3600 seconds"
            );
            let wait = (!no_wait).then(|| Duration::from_secs_f64(timeout));
            if let Some(answer) = udp::send(&host, port, message.as_bytes(), wait).await? {
                print_answer(&answer)?;
            }
            Ok(())
        }
        NetCmd::TcpClient {
            host,
            port,
            message,
        } => {
            let message = match message {
                Some(m) => m,
                None => net::hostname()?,
            };
            let answer = tcp::send(&host, port, message.as_bytes()).await?;
            print_answer(&answer)
        }
    }
}

/// Prints server events on stdout, one line each.
fn printer() -> EventSink {
    Arc::new(|event: Event| println!("{event}"))
}

fn print_answer(answer: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(answer).context("writing to stdout")?;
    if answer.last() != Some(&b'\n') {
        out.write_all(b"\n").context("writing to stdout")?;
    }
    Ok(())
}

/// A token cancelled at the first SIGINT or SIGTERM: servers stop cleanly (sockets
/// closed, state flushed) and the command exits 0.
pub fn stop_on_signal() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        cancel.cancel();
    });
    Ok(token)
}
