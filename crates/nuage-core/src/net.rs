//! Binding listening sockets with errors a person can act on.

use std::io;
use std::net::SocketAddr;

use anyhow::anyhow;

/// Binds a TCP listener for `what` (e.g. "the node API"); `flag` names the option that
/// changes the address, so the error says how to fix it.
pub async fn bind_tcp(
    addr: SocketAddr,
    what: &str,
    flag: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(&e, addr, what, flag))
}

/// Binds a UDP socket with the same error messages as [`bind_tcp`].
pub async fn bind_udp(
    addr: SocketAddr,
    what: &str,
    flag: &str,
) -> anyhow::Result<tokio::net::UdpSocket> {
    tokio::net::UdpSocket::bind(addr)
        .await
        .map_err(|e| bind_error(&e, addr, what, flag))
}

/// One line saying why `addr` could not be bound and what to do about it.
pub fn bind_error(e: &io::Error, addr: SocketAddr, what: &str, flag: &str) -> anyhow::Error {
    match e.kind() {
        io::ErrorKind::AddrInUse => anyhow!(
            "cannot listen on {addr} for {what}: the address is already in use (another program or nuage node holds it); stop it or choose another address with {flag}"
        ),
        io::ErrorKind::PermissionDenied => anyhow!(
            "cannot listen on {addr} for {what}: permission denied (ports below 1024 need root); choose a port of 1024 or more with {flag}"
        ),
        io::ErrorKind::AddrNotAvailable => anyhow!(
            "cannot listen on {addr} for {what}: no interface of this machine has that address; choose another with {flag}"
        ),
        _ => anyhow!("cannot listen on {addr} for {what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn address_in_use_is_explained() {
        let first = bind_tcp("127.0.0.1:0".parse().unwrap(), "a test", "--x")
            .await
            .unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind_tcp(addr, "the node API", "--api")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("already in use"), "{err}");
        assert!(err.contains("--api"), "{err}");
    }

    #[tokio::test]
    async fn foreign_address_is_explained() {
        let err = bind_tcp("192.0.2.1:7070".parse().unwrap(), "the node API", "--api")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no interface"), "{err}");
    }
}
