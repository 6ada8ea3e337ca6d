//! `toupper`, nuage's reference function.
//!
//! For each line read on stdin (in a buffer of 1024 bytes, newline included, as `fgets`
//! reads: a longer line is taken in several pieces), wait `TOUPPER_DELAY_MS` milliseconds
//! (3000 by default), turn the ASCII lowercase letters to uppercase, print
//! `<hostname> <pid> <TEXT>` and flush. Exit at end of input.
//!
//! ```text
//! $ printf 'hello22\nbonjour12\n' | TOUPPER_DELAY_MS=0 toupper
//! vm 4242 HELLO22
//! vm 4242 BONJOUR12
//! ```

#[path = "../../fgets.rs"]
mod fgets;

use std::io::{self, Write};

use fgets::read_piece;
use std::time::Duration;

/// Size of the line buffer, newline included (nuage's default line limit).
const BUFFER: usize = 1024;
/// Delay before each answer, unless `TOUPPER_DELAY_MS` says otherwise.
const DEFAULT_DELAY_MS: u64 = 3000;
const DELAY_ENV: &str = "TOUPPER_DELAY_MS";

fn main() {
    let delay = match std::env::var(DELAY_ENV) {
        Err(_) => Duration::from_millis(DEFAULT_DELAY_MS),
        Ok(v) => match v.parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => {
                eprintln!("toupper: {DELAY_ENV}={v:?} is not a number of milliseconds");
                std::process::exit(2);
            }
        },
    };
    let host = hostname();
    let pid = std::process::id();
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    let mut line = Vec::with_capacity(BUFFER);
    loop {
        line.clear();
        match read_piece(&mut input, &mut line, BUFFER) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                eprintln!("toupper: reading stdin: {e}");
                std::process::exit(1);
            }
        }
        std::thread::sleep(delay);
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        line.make_ascii_uppercase();
        let written = write!(output, "{host} {pid} ")
            .and_then(|()| output.write_all(&line))
            .and_then(|()| output.write_all(b"\n"))
            .and_then(|()| output.flush());
        if written.is_err() {
            // The reader has gone (the connection closed): nothing left to answer.
            return;
        }
    }
}

/// This machine's hostname (of its UTS namespace), without libc.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
