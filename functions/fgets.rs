//! The line reading nuage's Rust functions share (included by each with `#[path]`, so
//! every function stays one self-contained binary without a library crate of its own).

use std::io::{self, BufRead};

/// Reads up to `max` bytes, stopping after a newline, like `fgets`. Returns 0 at end of
/// input.
pub fn read_piece(input: &mut impl BufRead, out: &mut Vec<u8>, max: usize) -> io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_stop_at_newline_or_buffer() {
        let mut input: &[u8] = b"ab\ncdefg\nh";
        let mut out = Vec::new();
        assert_eq!(read_piece(&mut input, &mut out, 4).unwrap(), 3);
        assert_eq!(out, b"ab\n");
        out.clear();
        assert_eq!(read_piece(&mut input, &mut out, 4).unwrap(), 4);
        assert_eq!(out, b"cdef");
        out.clear();
        assert_eq!(read_piece(&mut input, &mut out, 4).unwrap(), 2);
        assert_eq!(out, b"g\n");
        out.clear();
        assert_eq!(read_piece(&mut input, &mut out, 4).unwrap(), 1);
        assert_eq!(out, b"h");
        out.clear();
        assert_eq!(read_piece(&mut input, &mut out, 4).unwrap(), 0);
    }
}
