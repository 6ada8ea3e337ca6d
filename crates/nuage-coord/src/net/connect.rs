//! Reaching a server, with errors that say what went wrong.

use std::io;
use std::net::SocketAddr;

use anyhow::{anyhow, bail};
use tokio::net::TcpStream;

use super::{CONNECT_TIMEOUT, RESOLVE_TIMEOUT};

/// The addresses of `host:port` (a name or an IP; IPv6 may be bracketed).
pub async fn resolve(host: &str, port: u16) -> anyhow::Result<Vec<SocketAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        bail!("empty host name");
    }
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let lookup = tokio::net::lookup_host((bare, port));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Err(_) => bail!(
            "cannot resolve host `{bare}`: no answer within {}s",
            RESOLVE_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) => bail!("cannot resolve host `{bare}`: {}", resolve_reason(&e)),
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                bail!("cannot resolve host `{bare}`: it has no address");
            }
            Ok(addrs)
        }
    }
}

fn resolve_reason(e: &io::Error) -> String {
    let text = e.to_string();
    if text.contains("Name or service not known") || text.contains("not known") {
        "no such host".to_owned()
    } else {
        text
    }
}

/// Connects to `host:port`, trying each address in turn, within [`CONNECT_TIMEOUT`]
/// each. The error names the target and the reason in words.
pub async fn connect_tcp(host: &str, port: u16) -> anyhow::Result<TcpStream> {
    let addrs = resolve(host, port).await?;
    let mut last = None;
    for addr in &addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(connect_error(host, port, &e)),
            Err(_) => {
                last = Some(anyhow!(
                    "cannot connect to {}: no answer within {}s (the host is down, unreachable or filtered)",
                    target(host, port),
                    CONNECT_TIMEOUT.as_secs()
                ))
            }
        }
    }
    Err(last.expect("resolve returns at least one address"))
}

pub(crate) fn target(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One line saying why a connection (or a datagram) could not reach `host:port`.
pub(crate) fn connect_error(host: &str, port: u16, e: &io::Error) -> anyhow::Error {
    let t = target(host, port);
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            anyhow!("cannot reach {t}: connection refused (nothing listens on port {port} there)")
        }
        io::ErrorKind::HostUnreachable => {
            anyhow!("cannot reach {t}: the host is unreachable (no route to it)")
        }
        io::ErrorKind::NetworkUnreachable => {
            anyhow!("cannot reach {t}: the network is unreachable (no route to it)")
        }
        io::ErrorKind::TimedOut => anyhow!("cannot reach {t}: timed out"),
        io::ErrorKind::PermissionDenied => {
            anyhow!("cannot reach {t}: permission denied (a firewall rule or a broadcast address?)")
        }
        _ => anyhow!("cannot reach {t}: {e}"),
    }
}
