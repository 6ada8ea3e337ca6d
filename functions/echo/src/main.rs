//! `echo`, a nuage function that answers each line with the line itself, at once: the
//! smallest function there is, used by the benchmarks.
//!
//! Lines are read in a buffer of 1024 bytes, newline included (a longer line is answered
//! in pieces); any byte, NUL included, is sent back unchanged. Exit at end of input.

use std::io::{self, BufRead, Write};

/// Size of the line buffer, newline included (nuage's default line limit).
const BUFFER: usize = 1024;

fn main() {
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    let mut line = Vec::with_capacity(BUFFER);
    loop {
        line.clear();
        match read_piece(&mut input, &mut line, BUFFER) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                eprintln!("echo: reading stdin: {e}");
                std::process::exit(1);
            }
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        if output
            .write_all(&line)
            .and_then(|()| output.flush())
            .is_err()
        {
            return; // the reader has gone
        }
    }
}

/// Reads up to `max` bytes, stopping after a newline, like `fgets`. Returns 0 at end of
/// input.
fn read_piece(input: &mut impl BufRead, out: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    while out.len() < max {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        let room = max - out.len();
        let take = match available.iter().take(room).position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => available.len().min(room),
        };
        out.extend_from_slice(&available[..take]);
        input.consume(take);
        if out.last() == Some(&b'\n') {
            break;
        }
    }
    Ok(out.len())
}
