//! Load generator for bench/mail/run.sh: one client submits N messages back to back to
//! the server of domain `a`, addressed to brandon@b, and the run ends when all N are in
//! Brandon's mailbox at the server of domain `b`. Prints one line:
//! `submitted_per_s=… delivered_per_s=… seconds=…`.
//!
//! ```text
//! mail_load nuage A_HOST:PORT B_HOST:PORT N SIZE
//! mail_load smtp  A_HOST:PORT MAILDIR     N SIZE     (Postfix: SMTP in, Maildir out)
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nuage_mail::Address;
use nuage_mail::client::{Client, parse_server};
use nuage_mail::protocol::Submission;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest wait for the last message to be delivered.
const DELIVERY_LIMIT: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, submit_at, deliver_at, n, size] = args.as_slice() else {
        bail!("usage: mail_load nuage|smtp A_HOST:PORT (B_HOST:PORT|MAILDIR) N SIZE");
    };
    let n: usize = n.parse().context("N")?;
    let size: usize = size.parse().context("SIZE")?;
    let text: String = "x".repeat(size);
    let start = Instant::now();
    let submitted = match kind.as_str() {
        "nuage" => {
            let (host, port) = parse_server(submit_at)?;
            let mut client = Client::connect(&host, port).await?;
            let from = Address::parse("afida@a").map_err(anyhow::Error::msg)?;
            let to = Address::parse("brandon@b").map_err(anyhow::Error::msg)?;
            for i in 0..n {
                let sub = Submission::new(from.clone(), vec![to.clone()], format!("{i} {text}"))
                    .map_err(anyhow::Error::msg)?;
                client.send(sub).await?;
            }
            let submitted = start.elapsed();
            let (host, port) = parse_server(deliver_at)?;
            let mut reader = Client::connect(&host, port).await?;
            let deadline = Instant::now() + DELIVERY_LIMIT;
            while reader.read(&to).await?.messages.len() < n {
                check(deadline, n)?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            submitted
        }
        "smtp" => {
            smtp_submit(submit_at, n, &text).await?;
            let submitted = start.elapsed();
            let maildir = Path::new(deliver_at).join("new");
            let deadline = Instant::now() + DELIVERY_LIMIT;
            while std::fs::read_dir(&maildir).map_or(0, |d| d.count()) < n {
                check(deadline, n)?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            submitted
        }
        other => bail!("unknown kind {other}"),
    };
    let total = start.elapsed();
    println!(
        "submitted_per_s={:.1} delivered_per_s={:.1} seconds={:.3}",
        n as f64 / submitted.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        total.as_secs_f64()
    );
    Ok(())
}

fn check(deadline: Instant, n: usize) -> anyhow::Result<()> {
    if Instant::now() > deadline {
        bail!("the {n} messages were not all delivered within {DELIVERY_LIMIT:?}");
    }
    Ok(())
}

/// One SMTP session, N transactions back to back (what an MUA or a relay does).
async fn smtp_submit(server: &str, n: usize, text: &str) -> anyhow::Result<()> {
    let (host, port) = parse_server(server)?;
    let stream = TcpStream::connect((host.as_str(), port)).await?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    expect(&mut r, "220").await?;
    w.write_all(b"EHLO bench\r\n").await?;
    expect(&mut r, "250").await?;
    for i in 0..n {
        w.write_all(b"MAIL FROM:<afida@a>\r\n").await?;
        expect(&mut r, "250").await?;
        w.write_all(b"RCPT TO:<brandon@b>\r\n").await?;
        expect(&mut r, "250").await?;
        w.write_all(b"DATA\r\n").await?;
        expect(&mut r, "354").await?;
        let message =
            format!("From: afida@a\r\nTo: brandon@b\r\nSubject: {i}\r\n\r\n{i} {text}\r\n.\r\n");
        w.write_all(message.as_bytes()).await?;
        expect(&mut r, "250").await?;
    }
    w.write_all(b"QUIT\r\n").await?;
    expect(&mut r, "221").await?;
    Ok(())
}

/// Reads one (possibly multi-line) SMTP reply and checks its code.
async fn expect(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    code: &str,
) -> anyhow::Result<()> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            bail!("the SMTP server closed the connection");
        }
        if !line.starts_with(code) {
            bail!("expected {code}, got {}", line.trim_end());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}
