//! A client of a mail server: send, read, quit.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::address::Address;
use crate::frame::{Frame, read_frame, write_frame};
use crate::protocol::{Message, Request, Submission};

/// How long a client waits for the server's answer to one request.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A mailbox as READ returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// In delivery order, which is causal order.
    pub messages: Vec<Message>,
    /// Messages for this mailbox that arrived but wait for mail they depend on.
    pub held_back: u64,
}

pub struct Client {
    conn: BufReader<TcpStream>,
    server: String,
}

/// Splits `HOST:PORT` (IPv6 in brackets: `[::1]:2525`).
pub fn parse_server(text: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("`{text}` is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("`{text}`: `{port}` is not a port number (1 to 65535)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("`{text}` has no host");
    }
    Ok((host.to_owned(), port))
}

impl Client {
    pub async fn connect(host: &str, port: u16) -> anyhow::Result<Client> {
        let stream = nuage_coord::net::connect_tcp(host, port).await?;
        Ok(Client {
            conn: BufReader::new(stream),
            server: format!("{host}:{port}"),
        })
    }

    async fn next_frame(&mut self) -> anyhow::Result<Frame> {
        match tokio::time::timeout(ANSWER_TIMEOUT, read_frame(&mut self.conn)).await {
            Err(_) => bail!(
                "the mail server at {} did not answer within {} s",
                self.server,
                ANSWER_TIMEOUT.as_secs()
            ),
            Ok(r) => r.map_err(|e| anyhow!("mail server at {}: {e}", self.server)),
        }
    }

    async fn request(&mut self, request: &Request) -> anyhow::Result<()> {
        write_frame(self.conn.get_mut(), &request.to_frame())
            .await
            .with_context(|| format!("sending to the mail server at {}", self.server))
    }

    /// Expects `OK info` and returns the info; `ERR` becomes an error with its message.
    fn ok(frame: &Frame) -> anyhow::Result<String> {
        let info = frame.text(0, "answer").unwrap_or("").to_owned();
        match frame.verb.as_str() {
            "OK" => Ok(info),
            "ERR" => Err(anyhow!("{info}")),
            other => Err(anyhow!("unexpected answer {other} from the mail server")),
        }
    }

    /// Submits a message; returns its id.
    pub async fn send(&mut self, submission: Submission) -> anyhow::Result<String> {
        self.request(&Request::Send(submission)).await?;
        let answer = self.next_frame().await?;
        Client::ok(&answer)
    }

    /// The mailbox of `owner`, in causal order.
    pub async fn read(&mut self, owner: &Address) -> anyhow::Result<Mailbox> {
        self.request(&Request::Read(owner.clone())).await?;
        let mut messages = Vec::new();
        loop {
            let frame = self.next_frame().await?;
            if frame.verb == "MSG" {
                messages.push(Message::from_frame(&frame).map_err(|e| anyhow!("{e}"))?);
                continue;
            }
            let held = Client::ok(&frame)?;
            let held_back = held
                .parse()
                .map_err(|_| anyhow!("bad held-back count `{held}` from the mail server"))?;
            return Ok(Mailbox {
                messages,
                held_back,
            });
        }
    }

    /// The server's report on its queues and hold-back.
    pub async fn status(&mut self) -> anyhow::Result<String> {
        self.request(&Request::Status).await?;
        let answer = self.next_frame().await?;
        Client::ok(&answer)
    }

    /// Says goodbye and closes the connection.
    pub async fn quit(mut self) -> anyhow::Result<()> {
        self.request(&Request::Quit).await?;
        let answer = self.next_frame().await?;
        Client::ok(&answer).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(parse_server("h:25").unwrap(), ("h".into(), 25));
        assert_eq!(parse_server("[::1]:2525").unwrap(), ("::1".into(), 2525));
        for bad in ["h", "h:0", "h:x", ":25", "h:70000"] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }
}
