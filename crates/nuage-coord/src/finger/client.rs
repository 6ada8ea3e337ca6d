//! The finger client: sends one query and copies the answer until the server closes,
//! whatever its length, making control characters visible as finger(1) does.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::query::MAX_QUERY;
use crate::net::connect_tcp;

/// How long the client waits for the server's next bytes.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks `host:port` about `query` (`""` for everyone logged in; `long` adds `/W`) and
/// writes `[host]`, once connected, then the answer to `out` as it arrives.
pub async fn finger(
    host: &str,
    port: u16,
    query: &str,
    long: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if query.chars().any(char::is_control) {
        bail!("the login must not contain control characters");
    }
    if query.len() > MAX_QUERY {
        bail!("the query is longer than {MAX_QUERY} bytes");
    }
    let mut stream = connect_tcp(host, port).await?;
    writeln!(out, "[{host}]").context("writing the answer")?;
    let line = format!("{}{query}\r\n", if long { "/W " } else { "" });
    stream
        .write_all(line.as_bytes())
        .await
        .with_context(|| format!("sending the query to {host}"))?;
    let mut printer = Printer::default();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
            Err(_) => bail!("{host} sent nothing for {}s", READ_TIMEOUT.as_secs()),
            Ok(r) => r.with_context(|| format!("reading the answer of {host}"))?,
        };
        if n == 0 {
            break;
        }
        out.write_all(&printer.feed(&buf[..n]))
            .context("writing the answer")?;
    }
    out.write_all(&printer.finish())
        .context("writing the answer")?;
    out.flush().context("writing the answer")?;
    Ok(())
}

/// Turns the server's bytes into text for a terminal: CR, LF and CRLF end lines; valid
/// UTF-8 passes; control characters become `^X` / `M-^X`; invalid bytes become U+FFFD.
/// UTF-8 sequences cut between two reads are joined.
#[derive(Debug, Default)]
pub struct Printer {
    carry: Vec<u8>,
    saw_cr: bool,
    at_line_start: bool,
    started: bool,
}

impl Printer {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut input = std::mem::take(&mut self.carry);
        input.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(input.len());
        let mut rest = &input[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.text(s, &mut out);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    self.text(std::str::from_utf8(good).expect("checked"), &mut out);
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for the next read.
                        None => {
                            self.carry = bad.to_vec();
                            break;
                        }
                        Some(k) => {
                            self.text("\u{fffd}", &mut out);
                            rest = &bad[k..];
                        }
                    }
                }
            }
        }
        out
    }

    /// Whatever is left, and a final newline if the answer did not end with one.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.carry.is_empty() {
            self.carry.clear();
            self.text("\u{fffd}", &mut out);
        }
        if self.started && !self.at_line_start {
            out.push(b'\n');
        }
        out
    }

    fn text(&mut self, s: &str, out: &mut Vec<u8>) {
        for c in s.chars() {
            self.started = true;
            let cr = self.saw_cr;
            self.saw_cr = false;
            self.at_line_start = false;
            match c {
                '\r' => {
                    self.saw_cr = true;
                    self.at_line_start = true;
                    out.push(b'\n');
                }
                '\n' if cr => self.at_line_start = true,
                '\n' => {
                    self.at_line_start = true;
                    out.push(b'\n');
                }
                '\t' => out.push(b'\t'),
                c if (c as u32) < 0x20 => out.extend_from_slice(&[b'^', c as u8 + b'@']),
                '\u{7f}' => out.extend_from_slice(b"^?"),
                c if (0x80..0xa0).contains(&(c as u32)) => {
                    out.extend_from_slice(&[b'M', b'-', b'^', (c as u32 as u8 & 0x7f) + b'@']);
                }
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(chunks: &[&[u8]]) -> String {
        let mut p = Printer::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.feed(c));
        }
        out.extend(p.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn line_ends_and_controls() {
        assert_eq!(print(&[b"a\r\nb\rc\nd"]), "a\nb\nc\nd\n");
        assert_eq!(print(&[b"a\r", b"\nb\r\n"]), "a\nb\n");
        assert_eq!(print(&[b"\x1b[31mred"]), "^[[31mred\n");
        assert_eq!(print(&[]), "");
    }

    #[test]
    fn utf8_split_between_reads_is_joined() {
        let e = "é".as_bytes();
        assert_eq!(print(&[b"caf", &e[..1], &e[1..], b"\r\n"]), "café\n");
        assert_eq!(print(&[b"x\xffy"]), "x\u{fffd}y\n");
        assert_eq!(print(&["\u{9b}".as_bytes()]), "M-^[\n");
    }

    proptest::proptest! {
        /// However the answer is cut into reads, the printed text is the same.
        #[test]
        fn output_does_not_depend_on_how_reads_are_cut(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..8),
        ) {
            let whole = print(&[&bytes]);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let chunks: Vec<&[u8]> = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            proptest::prop_assert_eq!(print(&chunks), whole);
        }
    }
}
