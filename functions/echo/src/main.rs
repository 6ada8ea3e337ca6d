//! `echo`, a nuage function that answers each line with the line itself, at once: the
//! smallest function there is, used by the benchmarks.
//!
//! Lines are read in a buffer of 1024 bytes, newline included (a longer line is answered
//! in pieces); any byte, NUL included, is sent back unchanged. Exit at end of input.

#[path = "../../fgets.rs"]
mod fgets;

use std::io::{self, Write};

use fgets::read_piece;

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
