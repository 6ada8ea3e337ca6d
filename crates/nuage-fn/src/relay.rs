//! The relay: how one machine hands a connection to another machine that runs the same
//! function. The receiving machine serves it itself, never forwarding it again.
//!
//! Wire format, on a TCP connection to the receiving machine's relay port:
//!
//! ```text
//! placing machine → receiver:  "NR1" <len: u8> <function name> " " <client ip:port>
//! receiver → placing machine:  "+"                          accepted: bytes flow both ways
//!                              "-" <len: u8> <message>      refused (unknown, full, stopping)
//! ```
//!
//! The placing machine sends the client's first bytes right after the header, without
//! waiting for the `+`, but it only *peeks* them: they leave the client's socket only once
//! the `+` arrives. So a refusal or a silent machine costs the client nothing: the
//! connection goes to the next machine (or to a local process) intact. The header is read
//! with exact reads, so after it the socket can be handed to a spawned process as is.
//!
//! The placing machine opens connections ahead of need and keeps a few idle per peer
//! ([`crate::ready`]): the receiver waits up to [`IDLE_BEFORE_HEADER`] for a header to
//! start, then [`HEADER_TIMEOUT`] for the rest.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ready::Ready;
use crate::sockopt;

/// First bytes of a relay header (format version 1).
pub const MAGIC: &[u8; 3] = b"NR1";
/// How long connecting to another machine's relay may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the other machine may take to accept or refuse.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a receiver waits for the header once its first byte came.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a receiver keeps a connection on which nothing came yet: a connection kept
/// ready by the other machine (see [`crate::ready`]; longer than its
/// [`crate::ready::READY_MAX_AGE`]).
pub const IDLE_BEFORE_HEADER: Duration = Duration::from_secs(30);
/// Keep-alive on relayed connections: a machine that vanished mid-connection is noticed
/// after about idle + interval × count seconds.
pub const KEEPALIVE: (Duration, Duration, u32) =
    (Duration::from_secs(10), Duration::from_secs(3), 3);

/// Why a connection could not be placed on a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayError {
    /// The machine did not answer (down, paused, cut off): skip it until it answers.
    pub unreachable: bool,
    pub message: String,
}

/// Most bytes of the client's first data sent ahead, before the receiver accepts.
pub const AHEAD_MAX: usize = 4096;

/// Connects to the relay at `host:port` and asks it to serve `stream`, a connection of
/// `function` from `client`. On success `stream`'s conversation continues on the returned
/// stream (splice them).
///
/// A connection kept ready to that relay ([`Ready`]) is used when there is one (no
/// handshake to wait for); if it turns out closed before answering (the other node
/// restarted since), a fresh connection is opened in its place. Either way the ready
/// connections to that relay are replenished in the background.
///
/// The client's first bytes go along with the header without waiting for the `+` (one
/// round trip saved), but they are only *peeked*: on a refusal or a silent machine the
/// client's socket is untouched, so the connection can go to the next machine, or be
/// handed as is to a local process. Once accepted, the bytes sent ahead are consumed.
pub async fn connect(
    host: &str,
    port: u16,
    function: &str,
    client: SocketAddr,
    stream: &mut TcpStream,
    ready: &Arc<Ready>,
) -> Result<TcpStream, RelayError> {
    let taken = ready.take(host, port);
    ready.replenish(host, port);
    if let Some(upstream) = taken {
        match handshake(upstream, function, client, stream).await {
            Ok(upstream) => return Ok(upstream),
            Err(Failure::Closed(_)) => {} // stale: try a fresh connection
            Err(Failure::Other(e)) => return Err(e),
        }
    }
    let upstream = open(host, port).await?;
    handshake(upstream, function, client, stream)
        .await
        .map_err(|f| match f {
            Failure::Closed(e) | Failure::Other(e) => e,
        })
}

/// Opens a connection to the relay at `host:port` (no header sent yet).
pub async fn open(host: &str, port: u16) -> Result<TcpStream, RelayError> {
    let upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = upstream.set_nodelay(true);
    let (idle, interval, count) = KEEPALIVE;
    sockopt::keepalive(upstream.as_fd(), idle, interval, count);
    Ok(upstream)
}

fn unreachable(message: String) -> RelayError {
    RelayError {
        unreachable: true,
        message,
    }
}

/// How a handshake failed: the connection closed (or was reset) before any answer, or
/// anything else (a refusal, no answer in time, the client gone).
enum Failure {
    Closed(RelayError),
    Other(RelayError),
}

async fn handshake(
    mut upstream: TcpStream,
    function: &str,
    client: SocketAddr,
    stream: &mut TcpStream,
) -> Result<TcpStream, Failure> {
    let closed = |message: String| Failure::Closed(unreachable(message));
    upstream
        .write_all(&header(function, client))
        .await
        .map_err(|e| closed(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    let mut ahead = vec![0u8; AHEAD_MAX];
    let mut sent_ahead = 0;
    let mut sign = [0u8; 1];
    let accepted = loop {
        tokio::select! {
            // Reading one byte is cancellation-safe: it either happened or not.
            r = upstream.read(&mut sign) => match r {
                Ok(1) => break sign[0] == b'+',
                Ok(_) => return Err(closed("closed without answering".into())),
                Err(e) => return Err(closed(e.to_string())),
            },
            // Once only: the first bytes the client sent (usually its first request).
            r = stream.peek(&mut ahead), if sent_ahead == 0 => match r {
                Ok(0) | Err(_) => sent_ahead = usize::MAX, // nothing to send ahead
                Ok(n) => {
                    upstream.write_all(&ahead[..n]).await.map_err(|e| closed(e.to_string()))?;
                    sent_ahead = n;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Failure::Other(unreachable(format!("no answer within {ACK_TIMEOUT:?}"))));
            }
        }
    };
    if !accepted {
        let refusal = async {
            let mut len = [0u8; 1];
            upstream.read_exact(&mut len).await?;
            let mut message = vec![0u8; len[0] as usize];
            upstream.read_exact(&mut message).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&message).into_owned())
        };
        let failure = match tokio::time::timeout_at(deadline, refusal).await {
            Ok(Ok(message)) => RelayError {
                unreachable: false,
                message,
            },
            Ok(Err(e)) => unreachable(e.to_string()),
            Err(_) => unreachable(format!("no answer within {ACK_TIMEOUT:?}")),
        };
        return Err(Failure::Other(failure));
    }
    if sent_ahead != 0 && sent_ahead != usize::MAX {
        // Accepted: the bytes sent ahead are the receiver's now; take them off the socket.
        stream
            .read_exact(&mut ahead[..sent_ahead])
            .await
            .map_err(|e| {
                Failure::Other(RelayError {
                    unreachable: false,
                    message: format!("client: {e}"),
                })
            })?;
    }
    Ok(upstream)
}

fn header(function: &str, client: SocketAddr) -> Vec<u8> {
    let body = format!("{function} {client}");
    assert!(body.len() <= 255, "a relay header fits in 255 bytes");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(MAGIC);
    out.push(body.len() as u8);
    out.extend_from_slice(body.as_bytes());
    out
}

/// Reads a relay header: the function and the original client.
pub async fn read_header(stream: &mut TcpStream) -> std::io::Result<(String, SocketAddr)> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if &head[..3] != MAGIC {
        return Err(bad("not a nuage relay connection"));
    }
    let mut body = vec![0u8; head[3] as usize];
    stream.read_exact(&mut body).await?;
    let body = String::from_utf8(body).map_err(|_| bad("relay header is not UTF-8"))?;
    let (function, client) = body
        .split_once(' ')
        .ok_or_else(|| bad("relay header without client"))?;
    let client = client
        .parse()
        .map_err(|_| bad("relay header with a bad client address"))?;
    Ok((function.to_owned(), client))
}

/// Accepts a relayed connection (`Ok`) or refuses it with a message. After a refusal the
/// bytes the placing machine sent ahead are read out until it closes (at most
/// [`ACK_TIMEOUT`]), so closing sends a FIN rather than a reset that could destroy the
/// refusal before it is read.
pub async fn answer(stream: &mut TcpStream, verdict: Result<(), &str>) -> std::io::Result<()> {
    match verdict {
        Ok(()) => stream.write_all(b"+").await,
        Err(message) => {
            let mut cut = message.len().min(255);
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            let mut out = vec![b'-', cut as u8];
            out.extend_from_slice(&message.as_bytes()[..cut]);
            stream.write_all(&out).await?;
            let _ = tokio::time::timeout(ACK_TIMEOUT, async {
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            })
            .await;
            Ok(())
        }
    }
}

/// Copies bytes both ways until both directions end (end of input is passed on).
pub async fn splice(mut client: TcpStream, mut upstream: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client connection: the client's end and the accepted end.
    async fn client_pair() -> (TcpStream, TcpStream) {
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let user = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        (user, accepted)
    }

    /// A relay that serves by function name: `toupper` is accepted and echoed, `x` is
    /// refused, `y` never answered. Connections kept ready wait for their header.
    async fn relay_by_name() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let Ok((function, client)) = read_header(&mut s).await else {
                        return;
                    };
                    assert_eq!(client, "10.0.0.9:4242".parse().unwrap());
                    match function.as_str() {
                        "toupper" => {
                            answer(&mut s, Ok(())).await.unwrap();
                            let mut buf = [0u8; 6];
                            s.read_exact(&mut buf).await.unwrap();
                            s.write_all(&buf).await.unwrap();
                        }
                        "x" => answer(&mut s, Err("function `x` does not run on n2"))
                            .await
                            .unwrap(),
                        _ => tokio::time::sleep(Duration::from_secs(5)).await,
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn handshake_accepts_refuses_and_times_out() {
        let port = relay_by_name().await;
        let ready = Arc::new(Ready::default());
        let client: SocketAddr = "10.0.0.9:4242".parse().unwrap();
        // Accepted (on a fresh connection, then on ready ones): the client's first line
        // went ahead and left its socket.
        for _ in 0..3 {
            let (mut user, mut accepted) = client_pair().await;
            user.write_all(b"hello\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut up = connect("127.0.0.1", port, "toupper", client, &mut accepted, &ready)
                .await
                .unwrap();
            let mut buf = [0u8; 6];
            up.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello\n");
            user.write_all(b"more").await.unwrap();
            let mut rest = [0u8; 4];
            accepted.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"more", "only the bytes sent ahead were consumed");
        }
        assert!(
            ready.count("127.0.0.1", port) > 0,
            "connections are kept ready"
        );

        // Refused, or no answer: the client's bytes are still all there.
        for (function, unreachable) in [("x", false), ("y", true)] {
            let (mut user, mut accepted) = client_pair().await;
            user.write_all(b"intact\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let e = connect("127.0.0.1", port, function, client, &mut accepted, &ready)
                .await
                .unwrap_err();
            assert_eq!(e.unreachable, unreachable, "{e:?}");
            if !unreachable {
                assert_eq!(e.message, "function `x` does not run on n2");
            }
            let mut buf = [0u8; 7];
            accepted.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"intact\n");
        }
    }

    /// The other node restarted: the connections kept ready to it close on their header
    /// without an answer. The connection goes through on a fresh one, intact.
    #[tokio::test]
    async fn a_stale_ready_connection_falls_back_to_a_fresh_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ready = Arc::new(Ready::default());
        ready.replenish("127.0.0.1", port);
        let mut stale = Vec::new();
        for _ in 0..crate::ready::READY_PER_PEER {
            stale.push(listener.accept().await.unwrap().0);
        }
        for _ in 0..100 {
            if ready.count("127.0.0.1", port) == crate::ready::READY_PER_PEER {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ready.count("127.0.0.1", port), crate::ready::READY_PER_PEER);
        tokio::spawn(async move {
            // The old connections: read the header, close without answering.
            for mut s in stale {
                tokio::spawn(async move {
                    let _ = read_header(&mut s).await;
                });
            }
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    if read_header(&mut s).await.is_ok() {
                        answer(&mut s, Ok(())).await.unwrap();
                        let mut buf = [0u8; 6];
                        s.read_exact(&mut buf).await.unwrap();
                        s.write_all(&buf).await.unwrap();
                    }
                });
            }
        });
        let (mut user, mut accepted) = client_pair().await;
        user.write_all(b"hello\n").await.unwrap();
        let client: SocketAddr = "10.0.0.9:4242".parse().unwrap();
        let mut up = connect("127.0.0.1", port, "toupper", client, &mut accepted, &ready)
            .await
            .unwrap();
        let mut buf = [0u8; 6];
        up.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello\n");
    }

    #[tokio::test]
    async fn garbage_is_not_a_header() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        });
        let (mut s, _) = listener.accept().await.unwrap();
        assert!(read_header(&mut s).await.is_err());
    }
}
