//! The datagram pair: `udp-server` prints every datagram with its source and answers
//! each with [`ANSWER`]; `udp-client` sends one datagram and waits for that answer.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::connect::{connect_error, resolve, target};
use super::{ANSWER, Event, EventSink};

/// The largest UDP payload over IPv4 (65535 − 8 bytes of UDP header − 20 of IP header).
pub const MAX_DATAGRAM: usize = 65_507;
/// How long `udp-client` waits for the answer by default.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A bound UDP server.
pub struct UdpServer {
    socket: UdpSocket,
}

impl UdpServer {
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<UdpServer> {
        let socket = nuage_core::net::bind_udp(addr, "the UDP server", "--port").await?;
        Ok(UdpServer { socket })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// Receives datagrams until `shutdown` is cancelled. The receive buffer holds the
    /// largest datagram there is, so every datagram is read whole.
    pub async fn run(self, events: EventSink, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let (n, from) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    // An ICMP error for an earlier answer (the client left): not ours to fail on.
                    Err(e) => {
                        tracing::debug!("receive: {e}");
                        continue;
                    }
                },
            };
            events(Event::Datagram {
                from,
                data: buf[..n].to_vec(),
            });
            if let Err(e) = self.socket.send_to(ANSWER, from).await {
                events(Event::Error {
                    peer: from,
                    error: format!("cannot answer: {e}"),
                });
            }
        }
    }
}

/// Sends `message` as one datagram to `host:port`. With `wait` set, waits that long
/// for the server's answer and returns it; a refusal (ICMP port unreachable) or
/// silence is an error, since UDP itself says nothing about delivery.
pub async fn send(
    host: &str,
    port: u16,
    message: &[u8],
    wait: Option<Duration>,
) -> anyhow::Result<Option<Vec<u8>>> {
    if message.len() > MAX_DATAGRAM {
        bail!(
            "message of {} bytes does not fit in one UDP datagram (at most {MAX_DATAGRAM} bytes)",
            message.len()
        );
    }
    let t = target(host, port);
    let addr = resolve(host, port).await?[0];
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let socket = UdpSocket::bind(local)
        .await
        .context("opening a UDP socket")?;
    // Connected, so the kernel reports an ICMP "port unreachable" as a refused receive.
    socket
        .connect(addr)
        .await
        .map_err(|e| connect_error(host, port, &e))?;
    socket
        .send(message)
        .await
        .map_err(|e| connect_error(host, port, &e))?;
    let Some(wait) = wait else {
        return Ok(None);
    };
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
        Err(_) => bail!(
            "no answer from {t} within {}s (nobody answers there, or a datagram was lost: UDP does not say; --no-wait sends without waiting)",
            wait.as_secs_f64()
        ),
        Ok(Err(e)) => Err(connect_error(host, port, &e)),
        Ok(Ok(n)) => Ok(Some(buf[..n].to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn datagrams_arrive_whole_and_are_answered() {
        let server = UdpServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let port = server.local_addr().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let events: EventSink = Arc::new(move |e| sink.lock().unwrap().push(e));
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(events, stop.clone()));
        let big = vec![b'z'; MAX_DATAGRAM];
        for msg in [b"hello".as_slice(), &big] {
            let answer = send("127.0.0.1", port, msg, Some(Duration::from_secs(5)))
                .await
                .unwrap();
            assert_eq!(answer.as_deref(), Some(ANSWER));
        }
        stop.cancel();
        task.await.unwrap().unwrap();
        let seen = seen.lock().unwrap();
        assert!(matches!(&seen[0], Event::Datagram { data, .. } if data == b"hello"));
        assert!(matches!(&seen[1], Event::Datagram { data, .. } if data.len() == MAX_DATAGRAM));
    }

    #[tokio::test]
    async fn refusal_and_size_are_explained() {
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let err = send("127.0.0.1", port, b"x", Some(Duration::from_secs(5)))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("connection refused"), "{err}");
        let err = send("127.0.0.1", port, &vec![0; MAX_DATAGRAM + 1], None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not fit"), "{err}");
    }
}
