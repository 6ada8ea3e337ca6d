//! `nuage mail …`: the causal mail server and its clients (library: nuage_mail).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use nuage_mail::client::{Client, Mailbox, parse_server};
use nuage_mail::protocol::{MAX_TEXT, Submission};
use nuage_mail::server::{MailServer, ServerConfig, SettingNames};
use nuage_mail::{Address, Directory, Order, address};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

#[derive(Subcommand, Debug)]
pub enum MailCmd {
    /// Run the mail server of one domain (stops cleanly on SIGINT/SIGTERM)
    Serve(ServeArgs),
    /// Interactive client: `from ADDR`, `send ADDR[,ADDR…]` then the text and a `.` line, `read [ADDR]`, `quit`
    Client {
        /// Server host name or IP address
        host: String,
        /// Server port
        port: u16,
        /// Your address (or say `from ADDR` in the session)
        #[arg(long, value_name = "ADDR")]
        from: Option<String>,
    },
    /// Send one message (the text from the argument, or from stdin without it)
    Send {
        /// The mail server of the sender's domain
        #[arg(long, value_name = "HOST:PORT")]
        server: String,
        /// Sender address (user@domain)
        #[arg(long, value_name = "ADDR")]
        from: String,
        /// Recipients, comma-separated
        #[arg(long, value_name = "ADDR[,ADDR…]")]
        to: String,
        /// The message (any text; read from stdin when absent)
        text: Option<String>,
    },
    /// Show a server's outbound queues (with the last error) and held-back mail
    Queue {
        /// The mail server
        #[arg(long, value_name = "HOST:PORT")]
        server: String,
    },
    /// Print a mailbox in causal order, each message with its sender
    Read {
        /// The mail server of the mailbox's domain
        #[arg(long, value_name = "HOST:PORT")]
        server: String,
        /// The mailbox (user@domain)
        address: String,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Port to listen on (0: any free port, printed at start)
    #[arg(long, short = 'p')]
    port: u16,
    /// The domain whose mail this server keeps (must be in the servers file)
    #[arg(long, value_name = "DOMAIN")]
    domain: String,
    /// The servers file: lines `host:port:domain`, blank lines and # comments allowed
    #[arg(long, value_name = "FILE")]
    servers: PathBuf,
    /// Where mailboxes and queues persist (default ./nuage-mail-DOMAIN)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Delivery order of mail from other servers: causal (matrix clocks) or fifo
    #[arg(long, default_value = "causal", value_name = "causal|fifo")]
    order: Order,
    /// Slow down the link to DOMAIN by MS milliseconds (repeatable; for experiments)
    #[arg(long, value_name = "DOMAIN=MS", value_parser = parse_delay)]
    delay_to: Vec<(String, Duration)>,
    /// Address to listen on
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    bind: IpAddr,
}

fn parse_delay(text: &str) -> Result<(String, Duration), String> {
    let (domain, ms) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not DOMAIN=MS"))?;
    let domain = address::parse_domain(domain)?;
    let ms: u64 = ms
        .parse()
        .map_err(|_| format!("`{ms}` is not a number of milliseconds"))?;
    Ok((domain, Duration::from_millis(ms)))
}

pub async fn run(cmd: MailCmd) -> anyhow::Result<()> {
    match cmd {
        MailCmd::Serve(args) => serve(args).await,
        MailCmd::Send {
            server,
            from,
            to,
            text,
        } => {
            let (host, port) = parse_server(&server)?;
            let from = Address::parse(&from).map_err(|e| anyhow!("--from: {e}"))?;
            let to = address::parse_list(&to).map_err(|e| anyhow!("--to: {e}"))?;
            let text = match text {
                Some(t) => t,
                None => read_stdin_text().await?,
            };
            let submission = Submission::new(from, to, text).map_err(|e| anyhow!("{e}"))?;
            let mut client = Client::connect(&host, port).await?;
            let id = client.send(submission).await?;
            println!("sent {id}");
            client.quit().await
        }
        MailCmd::Read { server, address } => {
            let (host, port) = parse_server(&server)?;
            let owner = Address::parse(&address).map_err(|e| anyhow!("{e}"))?;
            let mut client = Client::connect(&host, port).await?;
            let mailbox = client.read(&owner).await?;
            print_mailbox(&owner, &mailbox)?;
            client.quit().await
        }
        MailCmd::Queue { server } => {
            let (host, port) = parse_server(&server)?;
            let mut client = Client::connect(&host, port).await?;
            println!("{}", client.status().await?);
            client.quit().await
        }
        MailCmd::Client { host, port, from } => {
            let from = from
                .map(|f| Address::parse(&f).map_err(|e| anyhow!("--from: {e}")))
                .transpose()?;
            interactive(&host, port, from).await
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let stop = crate::net_cmd::stop_on_signal()?;
    let directory = Directory::load(&args.servers)?;
    let data_dir = args.data_dir.unwrap_or_else(|| {
        PathBuf::from(format!("nuage-mail-{}", args.domain.to_ascii_lowercase()))
    });
    let server = MailServer::bind(ServerConfig {
        listen: SocketAddr::new(args.bind, args.port),
        domain: args.domain.clone(),
        directory,
        data_dir,
        order: args.order,
        delays: args.delay_to,
        names: SettingNames::CLI,
    })
    .await?;
    println!(
        "mail server of `{}` ({} order) listening on {}",
        args.domain.to_ascii_lowercase(),
        args.order,
        server.local_addr()
    );
    std::io::stdout().flush().ok();
    server.run(stop).await
}

/// Reads the whole of stdin as the message text, refusing more than the limit.
async fn read_stdin_text() -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    tokio::io::stdin()
        .take(MAX_TEXT as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .context("reading the message from stdin")?;
    if bytes.len() > MAX_TEXT {
        bail!("message text exceeds the limit of {MAX_TEXT} bytes");
    }
    String::from_utf8(bytes).map_err(|_| anyhow!("the message on stdin is not UTF-8 text"))
}

fn print_mailbox(owner: &Address, mailbox: &Mailbox) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    render_mailbox(&mut out, owner, mailbox).context("writing to stdout")
}

/// One header line per message (`#N ID from SENDER to …, TIME`), then its text
/// indented by four spaces, so any text stays readable and unambiguous.
fn render_mailbox(out: &mut impl Write, owner: &Address, mailbox: &Mailbox) -> std::io::Result<()> {
    match mailbox.messages.len() {
        0 => writeln!(out, "{owner}: no messages")?,
        1 => writeln!(out, "{owner}: 1 message")?,
        n => writeln!(out, "{owner}: {n} messages")?,
    }
    for m in &mailbox.messages {
        let to: Vec<String> = m.to.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "#{} {} from {} to {}, {}",
            m.number,
            m.id,
            m.from,
            to.join(", "),
            nuage_core::time::rfc3339(m.sent_at_ms as f64 / 1000.0)
        )?;
        for line in m.text.lines() {
            writeln!(out, "    {line}")?;
        }
    }
    if mailbox.held_back > 0 {
        writeln!(
            out,
            "({} more held back until the mail they depend on arrives)",
            mailbox.held_back
        )?;
    }
    Ok(())
}

const CLIENT_HELP: &str = "commands:
  from ADDR              who you are (user@domain)
  send ADDR[,ADDR…]      then the text, ended by a line with a single `.` (`..` for a `.` line)
  read [ADDR]            print a mailbox (yours by default) in causal order
  help                   this text
  quit                   leave";

/// The interactive client: reads commands from stdin (prompts only on a terminal).
async fn interactive(host: &str, port: u16, mut from: Option<Address>) -> anyhow::Result<()> {
    let mut client = Client::connect(host, port).await?;
    let prompt = std::io::IsTerminal::is_terminal(&std::io::stdin());
    if prompt {
        println!("connected to the mail server at {host}:{port}; `help` for commands");
    }
    let mut input = BufReader::new(tokio::io::stdin());
    // A person at a terminal is asked who they are once; a script says `from` itself.
    while prompt && from.is_none() {
        print!("your address (user@domain): ");
        std::io::stdout().flush().ok();
        let Some(line) = read_line(&mut input).await? else {
            return client.quit().await;
        };
        match line.map(|l| Address::parse(l.trim())) {
            Ok(Ok(a)) => from = Some(a),
            Ok(Err(e)) | Err(e) => println!("error: {e}"),
        }
    }
    loop {
        if prompt {
            print!("mail> ");
            std::io::stdout().flush().ok();
        }
        let Some(line) = read_line(&mut input).await? else {
            break;
        };
        let line = match line {
            Ok(l) => l,
            Err(why) => {
                println!("error: {why}");
                continue;
            }
        };
        let (command, arg) = match line.trim().split_once(char::is_whitespace) {
            Some((c, a)) => (c, a.trim()),
            None => (line.trim(), ""),
        };
        match command {
            "" => {}
            "quit" | "exit" => break,
            "help" => println!("{CLIENT_HELP}"),
            "from" | "user" => match Address::parse(arg) {
                Ok(a) => {
                    println!("you are {a}");
                    from = Some(a);
                }
                Err(e) => println!("error: {e}"),
            },
            "read" => {
                let owner = if arg.is_empty() {
                    match &from {
                        Some(a) => Ok(a.clone()),
                        None => Err("read whose mail? `read user@domain`, or `from` first".into()),
                    }
                } else {
                    Address::parse(arg)
                };
                match owner {
                    Err(e) => println!("error: {e}"),
                    Ok(owner) => match client.read(&owner).await {
                        Ok(mailbox) => print_mailbox(&owner, &mailbox)?,
                        Err(e) => println!("error: {e:#}"),
                    },
                }
            }
            "send" => {
                let to = match address::parse_list(arg) {
                    Ok(to) => to,
                    Err(e) => {
                        println!("error: {e}");
                        continue;
                    }
                };
                if prompt {
                    println!("text, then a line with a single `.`:");
                }
                let Some(text) = read_text(&mut input).await? else {
                    bail!(
                        "input ended before the line with a single `.`; the message was not sent"
                    );
                };
                let Some(sender) = from.clone() else {
                    println!("error: say who you are first: `from user@domain`; not sent");
                    continue;
                };
                match Submission::new(sender, to, text) {
                    Err(e) => println!("error: {e}; not sent"),
                    Ok(sub) => match client.send(sub).await {
                        Ok(id) => println!("sent {id}"),
                        Err(e) => println!("error: {e:#}"),
                    },
                }
            }
            other => println!("error: unknown command `{other}` (`help` lists them)"),
        }
        std::io::stdout().flush().ok();
    }
    client.quit().await
}

/// One line of input without its end of line: `None` at the end of input, `Some(Err)`
/// for a line over the limit (skipped whole) or not UTF-8.
async fn read_line(
    input: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> anyhow::Result<Option<Result<String, String>>> {
    let mut buf = Vec::new();
    let n = (&mut *input)
        .take(MAX_TEXT as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await
        .context("reading stdin")?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && buf.len() > MAX_TEXT {
        // Skip the rest of the over-long line.
        loop {
            let mut rest = Vec::new();
            let k = (&mut *input)
                .take(64 * 1024)
                .read_until(b'\n', &mut rest)
                .await
                .context("reading stdin")?;
            if k == 0 || rest.last() == Some(&b'\n') {
                break;
            }
        }
        return Ok(Some(Err(format!(
            "line longer than {MAX_TEXT} bytes; ignored"
        ))));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Some(String::from_utf8(buf).map_err(|_| {
        "the line is not UTF-8 text; ignored".to_owned()
    })))
}

/// Message text up to a line with a single `.` (a line `..` stands for `.`). `None` if
/// the input ends first. A text over the limit is still read to its end, then refused
/// by `Submission::new`.
async fn read_text(
    input: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> anyhow::Result<Option<String>> {
    let mut text = String::new();
    let mut first = true;
    loop {
        let Some(line) = read_line(input).await? else {
            return Ok(None);
        };
        let line = match line {
            Ok(l) => l,
            Err(why) => {
                println!("error: {why}");
                continue;
            }
        };
        if line == "." {
            return Ok(Some(text));
        }
        let line = line
            .strip_prefix('.')
            .filter(|l| l.starts_with('.'))
            .unwrap_or(&line);
        if !first {
            text.push('\n');
        }
        if text.len() <= MAX_TEXT {
            text.push_str(line);
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse() {
        assert_eq!(
            parse_delay("N=1500").unwrap(),
            ("n".to_owned(), Duration::from_millis(1500))
        );
        assert!(parse_delay("n").is_err());
        assert!(parse_delay("n=x").is_err());
        assert!(parse_delay("bad_domain=1").is_err());
    }

    #[tokio::test]
    async fn text_ends_at_a_dot_line() {
        let mut input = &b"line one\n..\n..x\n.\nnext command\n"[..];
        let text = read_text(&mut input).await.unwrap().unwrap();
        assert_eq!(text, "line one\n.\n.x");
        let mut input = &b"no end\n"[..];
        assert_eq!(read_text(&mut input).await.unwrap(), None);
    }

    #[tokio::test]
    async fn over_long_lines_are_skipped_whole() {
        let mut bytes = vec![b'x'; MAX_TEXT + 100];
        bytes.extend(b"\nread\n");
        let mut input = bytes.as_slice();
        assert!(read_line(&mut input).await.unwrap().unwrap().is_err());
        assert_eq!(
            read_line(&mut input).await.unwrap().unwrap().unwrap(),
            "read"
        );
        assert!(read_line(&mut input).await.unwrap().is_none());
    }

    #[test]
    fn mailboxes_render_with_indented_text() {
        let owner = Address::parse("nabilla@n").unwrap();
        let mailbox = Mailbox {
            messages: vec![nuage_mail::protocol::Message {
                number: 1,
                id: "a-1".into(),
                from: Address::parse("afida@a").unwrap(),
                to: vec![owner.clone()],
                sent_at_ms: 0,
                text: "hi\n#2 from x".into(),
            }],
            held_back: 1,
        };
        let mut out = Vec::new();
        render_mailbox(&mut out, &owner, &mailbox).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "nabilla@n: 1 message\n#1 a-1 from afida@a to nabilla@n, 1970-01-01T00:00:00Z\n    hi\n    #2 from x\n(1 more held back until the mail they depend on arrives)\n"
        );
    }
}
