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
//! The placing machine sends none of the client's bytes before the `+`, so a refusal or a
//! silent machine costs the client nothing: the connection goes to the next machine. The
//! header is read with exact reads, so after it the socket can be handed to a spawned
//! process as is.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sockopt;

/// First bytes of a relay header (format version 1).
pub const MAGIC: &[u8; 3] = b"NR1";
/// How long connecting to another machine's relay may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the other machine may take to accept or refuse.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a receiver waits for the header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Connects to the relay at `host:port` and asks it to serve a connection of `function`
/// from `client`. On success the returned stream carries the conversation.
pub async fn connect(
    host: &str,
    port: u16,
    function: &str,
    client: SocketAddr,
) -> Result<TcpStream, RelayError> {
    let unreachable = |message: String| RelayError {
        unreachable: true,
        message,
    };
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (idle, interval, count) = KEEPALIVE;
    sockopt::keepalive(stream.as_fd(), idle, interval, count);
    stream
        .write_all(&header(function, client))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let answer = async {
        let mut sign = [0u8; 1];
        stream.read_exact(&mut sign).await?;
        if sign[0] == b'+' {
            return Ok(None);
        }
        let mut len = [0u8; 1];
        stream.read_exact(&mut len).await?;
        let mut message = vec![0u8; len[0] as usize];
        stream.read_exact(&mut message).await?;
        Ok::<_, std::io::Error>(Some(String::from_utf8_lossy(&message).into_owned()))
    };
    match tokio::time::timeout(ACK_TIMEOUT, answer).await {
        Err(_) => Err(unreachable(format!("no answer within {ACK_TIMEOUT:?}"))),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Ok(Ok(Some(refusal))) => Err(RelayError {
            unreachable: false,
            message: refusal,
        }),
        Ok(Ok(None)) => Ok(stream),
    }
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

/// Accepts a relayed connection (`Ok`) or refuses it with a message.
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
            stream.write_all(&out).await
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

    #[tokio::test]
    async fn handshake_accepts_refuses_and_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client: SocketAddr = "10.0.0.9:4242".parse().unwrap();
        tokio::spawn(async move {
            // First: accept and echo; second: refuse; third: never answer.
            let (mut s, _) = listener.accept().await.unwrap();
            assert_eq!(
                read_header(&mut s).await.unwrap(),
                ("toupper".to_owned(), "10.0.0.9:4242".parse().unwrap())
            );
            answer(&mut s, Ok(())).await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            let (mut s, _) = listener.accept().await.unwrap();
            read_header(&mut s).await.unwrap();
            answer(&mut s, Err("function `x` does not run on n2"))
                .await
                .unwrap();
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let mut s = connect("127.0.0.1", port, "toupper", client).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        let e = connect("127.0.0.1", port, "x", client).await.unwrap_err();
        assert_eq!(
            e,
            RelayError {
                unreachable: false,
                message: "function `x` does not run on n2".into()
            }
        );
        let e = connect("127.0.0.1", port, "y", client).await.unwrap_err();
        assert!(e.unreachable, "{e:?}");
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
