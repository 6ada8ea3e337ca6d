//! The stream pair: `tcp-server` accepts clients forever and answers [`ANSWER`] to
//! every message (one line); `tcp-client` sends one message and prints the answers.
//!
//! A message is a line ended by `\n` (a `\r` before it is dropped), or the bytes before
//! the end of the stream. Lines longer than a read buffer are read whole, up to
//! [`MAX_MESSAGE`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connect::{connect_tcp, target};
use super::{ANSWER, Event, EventSink};

/// Longest message a server reads (bytes, end of line excluded).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Size of one read from a socket; longer messages take several reads.
pub const READ_BUFFER: usize = 4096;
/// Clients served at once; more are told to come back later.
pub const MAX_CONNECTIONS: usize = 256;
/// A client silent this long is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the client waits for the server's next bytes.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of answers the client keeps.
pub const MAX_ANSWER: usize = 1 << 20;

/// A bound TCP server.
pub struct TcpServer {
    listener: TcpListener,
}

impl TcpServer {
    /// Binds `addr` (errors say "in use", "permission denied", … and name `--port`).
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpServer> {
        let listener = nuage_core::net::bind_tcp(addr, "the TCP server", "--port").await?;
        Ok(TcpServer { listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Accepts clients until `shutdown` is cancelled, then closes every connection.
    pub async fn run(self, events: EventSink, shutdown: CancellationToken) -> anyhow::Result<()> {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut sessions = JoinSet::new();
        loop {
            let (mut stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    // Out of file descriptors and the like: wait and go on accepting.
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            while sessions.try_join_next().is_some() {}
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                let refusal =
                    format!("ERR too many clients ({MAX_CONNECTIONS}); try again later\n");
                tokio::spawn(async move { close_with(&mut stream, refusal.as_bytes()).await });
                continue;
            };
            let events = events.clone();
            let shutdown = shutdown.clone();
            sessions.spawn(async move {
                events(Event::Connected { peer });
                let end = tokio::select! {
                    _ = shutdown.cancelled() => Ok(None),
                    r = session(&mut stream, peer, &events) => r.map(Some),
                };
                match end {
                    Ok(Some(messages)) => events(Event::Closed { peer, messages }),
                    Ok(None) => {}
                    Err(e) => events(Event::Error {
                        peer,
                        error: format!("{e:#}"),
                    }),
                }
                drop(permit);
            });
        }
        sessions.shutdown().await;
        Ok(())
    }
}

/// Serves one client: answers each message, and returns how many there were once the
/// client has closed its side (this side is then closed too).
async fn session(
    stream: &mut TcpStream,
    peer: SocketAddr,
    events: &EventSink,
) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut pending: Vec<u8> = Vec::new();
    let mut messages = 0u64;
    loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)).await {
            Err(_) => {
                let _ = stream
                    .write_all(
                        format!("ERR idle for {}s; closing\n", IDLE_TIMEOUT.as_secs()).as_bytes(),
                    )
                    .await;
                bail!("idle for {}s; closed", IDLE_TIMEOUT.as_secs());
            }
            Ok(r) => r.context("reading")?,
        };
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = pending.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            messages += 1;
            events(Event::Message { peer, data: line });
            stream.write_all(ANSWER).await.context("answering")?;
        }
        if pending.len() > MAX_MESSAGE {
            let refusal = format!("ERR message longer than {MAX_MESSAGE} bytes; closing\n");
            close_with(stream, refusal.as_bytes()).await;
            bail!("message longer than {MAX_MESSAGE} bytes; closed the connection");
        }
    }
    if !pending.is_empty() {
        messages += 1;
        events(Event::Message {
            peer,
            data: pending,
        });
        stream.write_all(ANSWER).await.context("answering")?;
    }
    stream.shutdown().await.context("closing")?;
    Ok(messages)
}

/// How long a refused client is given to stop sending before the socket is closed.
pub const LINGER: Duration = Duration::from_secs(2);

/// Sends a last line and closes gracefully: our side first, then whatever the client
/// still sends is read and dropped for at most [`LINGER`], so the client reads the line
/// instead of a reset (closing with unread input would send a TCP reset).
pub(crate) async fn close_with(stream: &mut TcpStream, last_line: &[u8]) {
    let _ = stream.write_all(last_line).await;
    let _ = stream.shutdown().await;
    let mut sink = vec![0u8; READ_BUFFER];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Sends `message` (one line; a `\n` is added if missing) to `host:port`, closes the
/// sending side, and returns everything the server answers until it closes.
pub async fn send(host: &str, port: u16, message: &[u8]) -> anyhow::Result<Vec<u8>> {
    if message.len() > MAX_MESSAGE {
        bail!(
            "message of {} bytes is longer than a server reads ({MAX_MESSAGE} bytes)",
            message.len()
        );
    }
    let t = target(host, port);
    let mut stream = connect_tcp(host, port).await?;
    stream
        .write_all(message)
        .await
        .with_context(|| format!("sending to {t}"))?;
    if message.last() != Some(&b'\n') {
        stream
            .write_all(b"\n")
            .await
            .with_context(|| format!("sending to {t}"))?;
    }
    stream
        .shutdown()
        .await
        .with_context(|| format!("closing the sending side to {t}"))?;
    let mut answer = Vec::new();
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = match tokio::time::timeout(ANSWER_TIMEOUT, stream.read(&mut buf)).await {
            Err(_) => bail!("{t} sent nothing for {}s", ANSWER_TIMEOUT.as_secs()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                bail!("{t} reset the connection")
            }
            Ok(r) => r.with_context(|| format!("reading the answer of {t}"))?,
        };
        if n == 0 {
            break;
        }
        if answer.len() + n > MAX_ANSWER {
            bail!("{t} answered more than {MAX_ANSWER} bytes");
        }
        answer.extend_from_slice(&buf[..n]);
    }
    if answer.is_empty() {
        bail!("{t} closed the connection without answering");
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    async fn server() -> (
        SocketAddr,
        Arc<Mutex<Vec<Event>>>,
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let server = TcpServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let events: EventSink = Arc::new(move |e| sink.lock().unwrap().push(e));
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(events, stop.clone()));
        (addr, seen, stop, task)
    }

    #[tokio::test]
    async fn answers_every_message_and_reads_long_ones_whole() {
        let (addr, seen, stop, task) = server().await;
        let long = "x".repeat(10 * READ_BUFFER + 7);
        let answer = send(
            "127.0.0.1",
            addr.port(),
            format!("one\r\n{long}\nthree").as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(answer, b"OK\nOK\nOK\n");
        stop.cancel();
        task.await.unwrap().unwrap();
        let seen = seen.lock().unwrap();
        let messages: Vec<&[u8]> = seen
            .iter()
            .filter_map(|e| match e {
                Event::Message { data, .. } => Some(data.as_slice()),
                _ => None,
            })
            .collect();
        assert_eq!(messages, [b"one".as_slice(), long.as_bytes(), b"three"]);
        assert!(
            matches!(seen.last(), Some(Event::Closed { messages: 3, .. })),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn an_over_long_message_ends_that_session_only() {
        let (addr, seen, stop, task) = server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let chunk = vec![b'y'; 64 * 1024];
        let mut written = 0;
        // The server closes once it has more than MAX_MESSAGE bytes without an end of line.
        while written <= MAX_MESSAGE {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
            written += chunk.len();
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        assert!(
            String::from_utf8_lossy(&answer).starts_with("ERR message longer than"),
            "{answer:?}"
        );
        drop(s);
        // The server still serves others.
        assert_eq!(
            send("127.0.0.1", addr.port(), b"next").await.unwrap(),
            b"OK\n"
        );
        // The refused session is reported once the client has gone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !seen
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Error { error, .. } if error.contains("longer than")))
        {
            assert!(tokio::time::Instant::now() < deadline, "no error event");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn refused_connection_is_explained() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = send("127.0.0.1", port, b"x").await.unwrap_err().to_string();
        assert!(err.contains("connection refused"), "{err}");
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    }
}
